/* Choosing kernels at run time: one build runs on any x86-64 (or ARM) CPU and uses the best
 * instruction set it has. RWKV_KERNELS=generic|avx2|avx512|neon forces a lower level, for testing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"
#include "dispatch.h"
#include "matmul.h"
#include "platform_threads.h"
#include "rwkv_testing.h"

typedef struct {
    const char *name;
    int (*supported)(void);
    const rwkv_kernel_table *kernels; /* NULL for the portable level */
} kernel_level;

rwkv_kernel_table rwkv_kernels;

static int always(void) { return 1; }

/* The portable level: every type's reference codecs (types.c), the portable micro-GEMM. */
static void install_generic(void) {
    for (int id = 0; id < RWKV_N_TYPE_IDS; id++) {
        const rwkv_type_traits *t = rwkv_traits(id);
        rwkv_kernels.vec_dot[id] = t ? t->vec_dot : NULL;
        rwkv_kernels.to_float[id] = t ? t->to_float : NULL;
        rwkv_kernels.rows_dot[id] = NULL;
    }
    rwkv_kernels.gemm = (rwkv_gemm_kernel){rwkv_gemm_f32_generic, NULL, 0};
    rwkv_kernels.q8_act_from_float = rwkv_quantize_row_q8_act;
    rwkv_kernels.fma_loop = rwkv_fma_loop_portable;
}

void rwkv_install_kernels(const rwkv_kernel_table *level) {
    for (int id = 0; id < RWKV_N_TYPE_IDS; id++) {
        if (level->vec_dot[id]) {
            rwkv_kernels.vec_dot[id] = level->vec_dot[id];
            rwkv_kernels.rows_dot[id] = level->rows_dot[id]; /* never a lower level's, whose order differs */
        }
        if (level->to_float[id]) rwkv_kernels.to_float[id] = level->to_float[id];
    }
    if (level->gemm.run) rwkv_kernels.gemm = level->gemm;
    if (level->q8_act_from_float) rwkv_kernels.q8_act_from_float = level->q8_act_from_float;
    if (level->fma_loop) rwkv_kernels.fma_loop = level->fma_loop;
}

#if RWKV_HAS_CPUID
/* The x86 features that the kernel levels need or rwkv_cpu_features names, in its order. */
enum { SSE3, SSSE3, AVX, F16C, FMA, AVX2, AVX512F, AVX512BW, AVX512VL, AVX512VNNI, N_FEATURES };
static const char *const feature_names[N_FEATURES] = {"sse3", "ssse3", "avx", "f16c", "fma", "avx2",
                                                      "avx512f", "avx512bw", "avx512vl", "avx512vnni"};

static int bit(unsigned reg, int n) { return (int)(reg >> n & 1); }

/* From CPUID, each instruction set only where the OS also saves the registers it uses (XCR0:
 * the SSE and AVX state for 256-bit ones; also the opmask and upper ZMM state for AVX-512). */
static void x86_features(int have[N_FEATURES]) {
    unsigned l1[4], l7[4];
    rwkv_cpuid(1, 0, l1);
    rwkv_cpuid(7, 0, l7);
    const unsigned long long xcr0 = bit(l1[2], 27) ? rwkv_xcr0() : 0; /* 27: OSXSAVE */
    const int avx_state = (xcr0 & 0x6) == 0x6, avx512_state = (xcr0 & 0xe6) == 0xe6;
    have[SSE3] = bit(l1[2], 0);
    have[SSSE3] = bit(l1[2], 9);
    have[AVX] = avx_state && bit(l1[2], 28);
    have[F16C] = avx_state && bit(l1[2], 29);
    have[FMA] = avx_state && bit(l1[2], 12);
    have[AVX2] = avx_state && bit(l7[1], 5);
    have[AVX512F] = avx512_state && bit(l7[1], 16);
    have[AVX512BW] = avx512_state && bit(l7[1], 30);
    have[AVX512VL] = avx512_state && bit(l7[1], 31);
    have[AVX512VNNI] = avx512_state && bit(l7[2], 11);
}

static int avx2_level(const int have[N_FEATURES]) { return have[AVX2] && have[FMA] && have[F16C]; }

static int has_avx2(void) {
    int have[N_FEATURES];
    x86_features(have);
    return avx2_level(have);
}
/* The quantized dots are built on VNNI, so it is required: AVX-512 CPUs without it (Skylake-X)
 * use the AVX2 level. */
static int has_avx512(void) {
    int have[N_FEATURES];
    x86_features(have);
    return avx2_level(have) && have[AVX512F] && have[AVX512BW] && have[AVX512VL] && have[AVX512VNNI];
}
#endif

static const kernel_level levels[] = {
    {"generic", always, NULL},
#if RWKV_HAS_CPUID
    {"avx2", has_avx2, &rwkv_avx2_kernels},
    {"avx512", has_avx512, &rwkv_avx512_kernels},
#elif defined(__aarch64__) || defined(_M_ARM64)
    {"neon", always, &rwkv_neon_kernels}, /* NEON is part of AArch64 */
#endif
};
#define N_LEVELS ((int)(sizeof levels / sizeof levels[0]))

static int current = 0;
static rwkv_once once = RWKV_ONCE_INIT;

static void install(int level) {
    install_generic();
    for (int i = 1; i <= level; i++) rwkv_install_kernels(levels[i].kernels);
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
    int level = best_level();
    const char *forced = getenv("RWKV_KERNELS");
    if (forced && *forced) {
        int wanted = find_level(forced);
        if (wanted < 0) fprintf(stderr, "rwkvcpp: RWKV_KERNELS=%s is not a known kernel level; ignored\n", forced);
        else if (wanted < level) level = wanted;
    }
    install(level);
}

void rwkv_dispatch_init(void) { rwkv_call_once(&once, init_once); }

const char *rwkv_kernel_level(void) {
    rwkv_dispatch_init();
    return levels[current].name;
}

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
#if RWKV_HAS_CPUID
    int have[N_FEATURES];
    x86_features(have);
    for (int i = 0; i < N_FEATURES; i++)
        if (have[i]) {
            strcat(buf, buf[0] ? " " : "");
            strcat(buf, feature_names[i]);
        }
#elif defined(__aarch64__) || defined(_M_ARM64)
    strcpy(buf, "neon");
#endif
    return buf;
}
