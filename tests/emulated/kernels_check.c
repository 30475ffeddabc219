/* Runs a kernel level this CPU lacks and compares it with the portable C kernels, for every weight
 * format (dot products and decoders), odd sizes, the activation quantizer and the sequence-mode
 * micro-GEMM. Built by CMake (RWKV_BUILD_CHECKS) for tests/test_kernels_emulated.py in one of two
 * ways:
 *   avx512_check (-DCHECK_AVX512): the AVX-512 kernels compiled against SIMDe (portable
 *                implementations of the Intel intrinsics), run on any x86-64 CPU;
 *   neon_check (-DCHECK_NEON): the NEON kernels cross-compiled for AArch64, run under qemu-aarch64.
 * The level's file is included here, and the rest of the engine linked. Exits non-zero on a
 * mismatch. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(CHECK_AVX512)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>

/* Intrinsics this SIMDe release lacks, written with ones it has. */
#ifndef _cvtsh_ss
static float _cvtsh_ss(unsigned short h) { return simde_mm_cvtss_f32(simde_mm_cvtph_ps(simde_mm_cvtsi32_si128(h))); }
#endif
#ifndef _mm512_cvtph_ps
static simde__m512 _mm512_cvtph_ps(simde__m256i h) {
    simde__m512 out = simde_mm512_castps256_ps512(simde_mm256_cvtph_ps(simde_mm256_castsi256_si128(h)));
    return simde_mm512_insertf32x8(out, simde_mm256_cvtph_ps(simde_mm256_extracti128_si256(h, 1)), 1);
}
#endif
#ifndef _mm512_reduce_add_ps
static float _mm512_reduce_add_ps(simde__m512 v) {
    float lanes[16], sum = 0.0f;
    simde_mm512_storeu_ps(lanes, v);
    for (int i = 0; i < 16; i++) sum += lanes[i];
    return sum;
}
#endif

#define _IMMINTRIN_H_INCLUDED /* SIMDe provides every name the kernels use */
#include "../../csrc/kernels/avx512.c"
#define LEVEL "avx512"
#define LEVEL_KERNELS rwkv_avx512_kernels
#define LEVEL_BELOW rwkv_avx2_kernels /* installed first, as on a CPU with AVX-512 */
#elif defined(CHECK_NEON)
#include "../../csrc/kernels/neon.c"
#define LEVEL "neon"
#define LEVEL_KERNELS rwkv_neon_kernels
#else
#error "define CHECK_AVX512 or CHECK_NEON"
#endif

#include "../../csrc/matmul.h"
#include "../../csrc/rwkv_testing.h"

static const int formats[] = {RWKV_TYPE_FP32, RWKV_TYPE_FP16, RWKV_TYPE_Q4_0, RWKV_TYPE_Q4_1, RWKV_TYPE_Q5_0,
                              RWKV_TYPE_Q5_1, RWKV_TYPE_Q8_0, RWKV_TYPE_Q4_K, RWKV_TYPE_Q5_K};
#define N_FORMATS (sizeof formats / sizeof formats[0])
/* Row lengths in blocks of the format (one block, odd counts, a long row). */
static const int64_t sizes_in_blocks[] = {1, 3, 5, 129};
#define N_SIZES (sizeof sizes_in_blocks / sizeof sizes_in_blocks[0])
#define MAX_N (129 * RWKV_QK_K)

static float uniform(void) { return (float)rand() / (float)RAND_MAX * 2.0f - 1.0f; }

/* Random weights of n values (with a per-row offset, so the minimums of "q*d + m" formats matter)
 * in the format, through its portable quantizer. */
static void random_row(const rwkv_type_traits *t, float *w, uint8_t *row, int64_t n) {
    const float offset = uniform() * 0.5f;
    for (int64_t i = 0; i < n; i++) w[i] = uniform() + offset;
    t->from_float(w, row, n);
}

/* The level's dots against the portable ones (types.c), on activations converted as decoding does. */
static int check_dots(void) {
    int failures = 0;
    float *w = malloc(MAX_N * sizeof(float)), *x = malloc(MAX_N * sizeof(float));
    uint8_t *row = malloc(MAX_N * 4), *act = malloc(MAX_N * 4);
    for (size_t f = 0; f < N_FORMATS; f++)
        for (size_t s = 0; s < N_SIZES; s++) {
            const rwkv_type_traits *generic = rwkv_traits(formats[f]);
            const int64_t n = sizes_in_blocks[s] * (generic->block_len > 1 ? generic->block_len : RWKV_QK);
            random_row(generic, w, row, n);
            for (int64_t i = 0; i < n; i++) x[i] = uniform() * 3.0f;
            rwkv_act_from_float(generic->act_type, x, act, n);
            const float want = generic->vec_dot(row, act, n);
            const float got = rwkv_kernels.vec_dot[formats[f]](row, act, n);
            const float tolerance = 1e-5f * (float)n;
            const int ok = fabsf(got - want) <= tolerance;
            printf("%-4s dot n=%-5lld generic %+.6f " LEVEL " %+.6f %s\n", generic->name, (long long)n, want, got,
                   ok ? "ok" : "MISMATCH");
            failures += !ok;
        }
    free(w), free(x), free(row), free(act);
    return failures;
}

/* The row kernels' product (several activation rows at once: batched decoding) against the
 * level's single-row product, row by row: equal to the last bit, for every group size. */
static int check_rows(void) {
    enum { ROWS = 5, MAX_T = 13 };
    static const int counts[] = {2, 3, 5, 7, 9, 13};
    int failures = 0;
    float *w = malloc(MAX_N * sizeof(float)), *x = malloc((size_t)MAX_T * MAX_N * sizeof(float));
    float *want = malloc(MAX_T * ROWS * sizeof(float)), *got = malloc(MAX_T * ROWS * sizeof(float));
    uint8_t *rows = malloc((size_t)ROWS * MAX_N * 4);
    for (size_t f = 0; f < N_FORMATS; f++)
        for (size_t s = 1; s < N_SIZES; s += 2) {
            const rwkv_type_traits *t = rwkv_traits(formats[f]);
            const int64_t n = sizes_in_blocks[s] * (t->block_len > 1 ? t->block_len : RWKV_QK);
            const size_t row_bytes = rwkv_type_row_size(formats[f], n);
            for (int r = 0; r < ROWS; r++) random_row(t, w, rows + r * row_bytes, n);
            for (int64_t i = 0; i < MAX_T * n; i++) x[i] = uniform() * 3.0f;
            int bad = 0;
            for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
                const int T = counts[c];
                rwkv_matmul_rows(formats[f], rows, ROWS, n, x, T, got);
                for (int i = 0; i < T; i++) rwkv_matvec(formats[f], rows, ROWS, n, x + i * n, want + i * ROWS);
                bad += memcmp(want, got, (size_t)(T * ROWS) * sizeof(float)) != 0;
            }
            printf("%-4s rows n=%-5lld %s kernel, 2 to 13 rows equal to the single-row dot: %s\n", t->name,
                   (long long)n, rwkv_kernels.rows_dot[formats[f]] ? "own" : "no", bad ? "MISMATCH" : "ok");
            failures += bad != 0;
        }
    free(w), free(x), free(want), free(got), free(rows);
    return failures;
}

/* The level's decoders (sequence mode's weight tiles) against the portable ones. */
static int check_to_float(void) {
    int failures = 0;
    float *w = malloc(MAX_N * sizeof(float)), *want = malloc(MAX_N * sizeof(float)), *got = malloc(MAX_N * sizeof(float));
    uint8_t *row = malloc(MAX_N * 4);
    for (size_t f = 0; f < N_FORMATS; f++) {
        const rwkv_type_traits *generic = rwkv_traits(formats[f]);
        const int64_t n = 5 * (generic->block_len > 1 ? generic->block_len : RWKV_QK);
        random_row(generic, w, row, n);
        generic->to_float(row, want, n);
        rwkv_kernels.to_float[formats[f]](row, got, n);
        float worst = 0.0f;
        for (int64_t i = 0; i < n; i++) worst = fmaxf(worst, fabsf(got[i] - want[i]) / (1.0f + fabsf(want[i])));
        const int ok = worst <= 1e-6f;
        printf("%-4s to_float n=%-5lld worst relative error %.2e %s\n", generic->name, (long long)n, worst,
               ok ? "ok" : "MISMATCH");
        failures += !ok;
    }
    free(w), free(want), free(got), free(row);
    return failures;
}

/* The level's activation quantizer (where it has one) against the portable one: same bytes. */
static int check_activations(void) {
    enum { N = 4128, NB = N / RWKV_QK };
    static float x[N];
    static uint8_t want_bytes[NB * RWKV_ACT_Q8_BLOCK_BYTES], got_bytes[NB * RWKV_ACT_Q8_BLOCK_BYTES];
    for (int i = 0; i < N; i++) x[i] = uniform() * 5.0f;
    x[0] = 127.0f, x[1] = 2.5f, x[2] = -2.5f, x[3] = 0.5f; /* ties round away from zero */
    rwkv_quantize_row_q8_act(x, want_bytes, N);
    rwkv_kernels.q8_act_from_float(x, got_bytes, N);
    const rwkv_q8_row want = rwkv_q8_row_at(want_bytes, N), got = rwkv_q8_row_at(got_bytes, N);
    int bad = 0;
    for (int b = 0; b < NB; b++)
        bad += memcmp(want.q[b], got.q[b], RWKV_QK) != 0 || want.d[b] != got.d[b] ||
               fabsf(want.s[b] - got.s[b]) > 1e-6f * fabsf(want.s[b]);
    printf("activations: %d of %d blocks differ %s\n", bad, NB, bad ? "MISMATCH" : "ok");
    return bad != 0;
}

static int check_gemm(void) {
    static const int64_t shapes[][3] = {{48, 128, 256}, {7, 13, 256}, {48, 6, 64}, {5, 9, 40}, {32, 100, 96}};
    int failures = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t nr = shapes[s][0], nt = shapes[s][1], n = shapes[s][2];
        float *w = malloc((size_t)(nr * n) * 4), *x = malloc((size_t)(nt * n) * 4);
        float *want = malloc((size_t)(nr * nt) * 4), *got = malloc((size_t)(nr * nt) * 4);
        for (int64_t i = 0; i < nr * n; i++) w[i] = uniform();
        for (int64_t i = 0; i < nt * n; i++) x[i] = uniform();
        for (int accumulate = 0; accumulate <= 1; accumulate++) {
            for (int64_t i = 0; i < nr * nt; i++) want[i] = got[i] = (float)i;
            rwkv_gemm_f32_generic(w, n, nr, x, n, nt, n, want, nr, accumulate);
            const rwkv_gemm_kernel gemm = rwkv_kernels.gemm;
            if (gemm.panel > 0) {
                const int p = gemm.panel;
                float *packed = malloc((size_t)((nt + p) * n) * 4);
                for (int64_t i = 0; i * p < nt; i++) gemm.pack(x, nt, n, i, packed);
                gemm.run(w, n, nr, packed, n * p, nt, n, got, nr, accumulate);
                free(packed);
            } else {
                gemm.run(w, n, nr, x, n, nt, n, got, nr, accumulate);
            }
            float worst = 0.0f;
            for (int64_t i = 0; i < nr * nt; i++) worst = fmaxf(worst, fabsf(got[i] - want[i]) / (1.0f + fabsf(want[i])));
            const int ok = worst <= 1e-5f;
            printf("gemm %lld rows x %lld tokens x %lld accumulate=%d: worst relative error %.2e %s\n", (long long)nr,
                   (long long)nt, (long long)n, accumulate, worst, ok ? "ok" : "MISMATCH");
            failures += !ok;
        }
        free(w), free(x), free(want), free(got);
    }
    return failures;
}

int main(void) {
    rwkv_set_kernel_level("generic"); /* the portable kernels, then the levels up to this one on top */
#ifdef LEVEL_BELOW
    rwkv_install_kernels(&LEVEL_BELOW);
#endif
    rwkv_install_kernels(&LEVEL_KERNELS);
    srand(7);
    const int failures = check_dots() + check_rows() + check_to_float() + check_activations() + check_gemm();
    printf("%d mismatches\n", failures);
    return failures != 0;
}
