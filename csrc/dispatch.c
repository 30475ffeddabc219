/* Choosing kernels at run time: one build runs on any x86-64 (or ARM) CPU and uses the best
 * instruction set it has. RWKV_KERNELS=generic|avx2|avx512|neon forces a lower level, for testing. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rwkv.h"
#include "types.h"

typedef struct {
    const char *name;
    int (*supported)(void);
    void (*install)(void); /* overrides entries of the type table */
} kernel_level;

static int always(void) { return 1; }
static void install_generic(void) {}

#if defined(__x86_64__) || defined(__i386__)
void rwkv_install_avx2(void);
void rwkv_install_avx512(void);
static int has_avx2(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
/* The quantized dots are built on VNNI, so it is required: AVX-512 CPUs without it (Skylake-X)
 * use the AVX2 level. */
static int has_avx512(void) {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#elif defined(__aarch64__)
void rwkv_install_neon(void);
#endif

static const kernel_level levels[] = {
    {"generic", always, install_generic},
#if defined(__x86_64__) || defined(__i386__)
    {"avx2", has_avx2, rwkv_install_avx2},
    {"avx512", has_avx512, rwkv_install_avx512},
#elif defined(__aarch64__)
    {"neon", always, rwkv_install_neon}, /* NEON is part of AArch64 */
#endif
};
#define N_LEVELS ((int)(sizeof levels / sizeof levels[0]))

static rwkv_type_traits generic_table[10];
static int current = 0;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void install(int level) {
    for (int id = 0; id < 10; id++) {
        rwkv_type_traits *t = rwkv_traits_mut(id);
        if (t) *t = generic_table[id];
    }
    rwkv_gemm = (rwkv_gemm_kernel){rwkv_gemm_f32_generic, NULL, 0};
    rwkv_q8_act_from_float = rwkv_quantize_row_q8_act;
    for (int i = 1; i <= level; i++) levels[i].install();
    current = level;
}

static int best_level(void) {
    int best = 0;
    for (int i = 1; i < N_LEVELS; i++)
        if (levels[i].supported()) best = i;
    return best;
}

static int find_level(const char *name) {
    for (int i = 0; i < N_LEVELS; i++)
        if (strcmp(levels[i].name, name) == 0) return i;
    return -1;
}

static void init_once(void) {
    rwkv_types_init();
    for (int id = 0; id < 10; id++) {
        const rwkv_type_traits *t = rwkv_traits(id);
        if (t) generic_table[id] = *t;
    }
    int level = best_level();
    const char *forced = getenv("RWKV_KERNELS");
    if (forced && *forced) {
        int wanted = find_level(forced);
        if (wanted < 0) fprintf(stderr, "rwkvcpp: RWKV_KERNELS=%s is not a known kernel level; ignored\n", forced);
        else if (wanted < level) level = wanted;
    }
    install(level);
}

void rwkv_dispatch_init(void) { pthread_once(&once, init_once); }

const char *rwkv_kernel_level(void) {
    rwkv_dispatch_init();
    return levels[current].name;
}

/* Only for tests and benchmarks: not safe while a model is evaluating. */
rwkv_status rwkv_set_kernel_level(const char *name) {
    rwkv_dispatch_init();
    int level = find_level(name);
    if (level < 0 || level > best_level()) return RWKV_ERR_ARGS;
    install(level);
    return RWKV_OK;
}

const char *rwkv_cpu_features(void) {
    static char buf[128];
    buf[0] = 0;
#if defined(__x86_64__) || defined(__i386__)
    const char *names[] = {"sse3", "ssse3", "avx", "f16c", "fma", "avx2", "avx512f", "avx512bw", "avx512vl",
                           "avx512vnni"};
    int have[] = {__builtin_cpu_supports("sse3"),     __builtin_cpu_supports("ssse3"),
                  __builtin_cpu_supports("avx"),      __builtin_cpu_supports("f16c"),
                  __builtin_cpu_supports("fma"),      __builtin_cpu_supports("avx2"),
                  __builtin_cpu_supports("avx512f"),  __builtin_cpu_supports("avx512bw"),
                  __builtin_cpu_supports("avx512vl"), __builtin_cpu_supports("avx512vnni")};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (have[i]) {
            strcat(buf, buf[0] ? " " : "");
            strcat(buf, names[i]);
        }
#elif defined(__aarch64__)
    strcpy(buf, "neon");
#endif
    return buf;
}
