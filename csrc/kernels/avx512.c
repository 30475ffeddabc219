/* AVX-512 kernels (F, BW, VL and VNNI): Ice Lake, Sapphire Rapids, Zen 4 and later. Installed on top
 * of the AVX2 level, replacing what is faster here: the float dots at 16 lanes, the micro-GEMM with
 * 32 registers, and the quantized dots with VNNI.
 *
 * VNNI's vpdpbusd multiplies unsigned bytes by signed bytes and sums four products into each int32
 * lane in one instruction, where AVX2 needs three (sign, maddubs, madd). Every weight format is
 * read as unsigned values u with sum(w * x) = d * sum(u * x) + c * sum(x): the offset of the signed
 * formats (-8, -16, -128 times d) and the minimum m of the "q*d + m" ones become the c term, paid
 * once per block from the activations' precomputed sums. */
#include <immintrin.h>

#include "../rwkv.h"
#include "../dispatch.h"
#include "x86.h"
#include "x86_rows.h"

static inline __m256i dot_u8_i8_vnni(__m256i u, const int8_t *q) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, _mm256_loadu_si256((const __m256i *)q));
}

/* ---- float rows ----------------------------------------------------------------------------- */

static inline __m512 fp32_load16(const void *w, int64_t i) { return _mm512_loadu_ps((const float *)w + i); }
static inline __m512 fp16_load16(const void *w, int64_t i) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i)));
}

static inline RWKV_ALWAYS_INLINE float float_dot(const void *w, const float *x, int64_t n,
                                                 __m512 (*load16)(const void *, int64_t),
                                                 float (*at)(const void *, int64_t)) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(load16(w, i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(load16(w, i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(load16(w, i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(load16(w, i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(load16(w, i), _mm512_loadu_ps(x + i), a0);
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; i++) sum += at(w, i) * x[i];
    return sum;
}

static float fp32_dot(const void *row, const void *act, int64_t n) {
    return float_dot(row, act, n, fp32_load16, fp32_at);
}
static float fp16_dot(const void *row, const void *act, int64_t n) {
    return float_dot(row, act, n, fp16_load16, fp16_at);
}

/* ---- quantized rows against 8-bit activation blocks ------------------------------------------- */

static inline __m256i q4_0_sums(const void *p, const int8_t *q) {
    return dot_u8_i8_vnni(unpack_nibbles(((const block_q4_0 *)p)->qs), q);
}

static inline __m256i q4_1_sums(const void *p, const int8_t *q) {
    return dot_u8_i8_vnni(unpack_nibbles(((const block_q4_1 *)p)->qs), q);
}

static inline __m256i q5_0_sums(const void *p, const int8_t *q) {
    const block_q5_0 *x = p;
    return dot_u8_i8_vnni(unpack_q5(x->qs, x->qh), q);
}

static inline __m256i q5_1_sums(const void *p, const int8_t *q) {
    const block_q5_1 *x = p;
    return dot_u8_i8_vnni(unpack_q5(x->qs, x->qh), q);
}

/* Flipping the top bit of a signed byte adds 128: the value as unsigned. */
static inline __m256i q8_0_sums(const void *p, const int8_t *q) {
    const block_q8_0 *x = p;
    return dot_u8_i8_vnni(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)x->qs), _mm256_set1_epi8((char)0x80)), q);
}

static float q4_0_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q4_0), act, n, q4_0_sums, 0, -8.0f);
}

static float q4_1_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q4_1), act, n, q4_1_sums, 1, 1.0f);
}

static float q5_0_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q5_0), act, n, q5_0_sums, 0, -16.0f);
}

static float q5_1_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q5_1), act, n, q5_1_sums, 1, 1.0f);
}

static float q8_0_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q8_0), act, n, q8_0_sums, 0, -128.0f);
}

/* The K formats' levels are unsigned already: VNNI takes them as they are. */
static float q4_k_dot(const void *row, const void *act, int64_t n) {
    return k_dot(row, sizeof(block_q4_k), act, n, q4_k_levels, dot_u8_i8_vnni);
}

static float q5_k_dot(const void *row, const void *act, int64_t n) {
    return k_dot(row, sizeof(block_q5_k), act, n, q5_k_levels, dot_u8_i8_vnni);
}

/* ---- row kernels: one weight row against several activation rows ------------------------- */

/* float_dot for R activation rows (R <= 6: 24 accumulators), each weight vector loaded (and
 * converted) once for all of them; for each row the operations of float_dot, in its order. */
static inline RWKV_ALWAYS_INLINE void float_rows_group(const void *w, const uint8_t *act, size_t stride,
                                                       const int R, int64_t n,
                                                       __m512 (*load16)(const void *, int64_t),
                                                       float (*at)(const void *, int64_t), float *y) {
    const float *x[6];
    __m512 a[6][4];
    for (int t = 0; t < R; t++) {
        x[t] = (const float *)(act + (size_t)t * stride);
        for (int j = 0; j < 4; j++) a[t][j] = _mm512_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int j = 0; j < 4; j++) {
            const __m512 wj = load16(w, i + 16 * j);
            for (int t = 0; t < R; t++) a[t][j] = _mm512_fmadd_ps(wj, _mm512_loadu_ps(x[t] + i + 16 * j), a[t][j]);
        }
    for (; i + 16 <= n; i += 16) {
        const __m512 wi = load16(w, i);
        for (int t = 0; t < R; t++) a[t][0] = _mm512_fmadd_ps(wi, _mm512_loadu_ps(x[t] + i), a[t][0]);
    }
    for (int t = 0; t < R; t++) {
        float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[t][0], a[t][1]), _mm512_add_ps(a[t][2], a[t][3])));
        for (int64_t k = i; k < n; k++) sum += at(w, k) * x[t][k];
        y[t] = sum;
    }
}

/* Groups of 6 rows, the rest in groups of 4, 2 and 1. */
static inline RWKV_ALWAYS_INLINE void float_rows(const void *w, const uint8_t *act, size_t stride, int T,
                                                 int64_t n, __m512 (*load16)(const void *, int64_t),
                                                 float (*at)(const void *, int64_t), float *y) {
    int t = 0;
    for (; t + 6 <= T; t += 6) float_rows_group(w, act + (size_t)t * stride, stride, 6, n, load16, at, y + t);
    if (T - t >= 4) {
        float_rows_group(w, act + (size_t)t * stride, stride, 4, n, load16, at, y + t);
        t += 4;
    }
    if (T - t >= 2) {
        float_rows_group(w, act + (size_t)t * stride, stride, 2, n, load16, at, y + t);
        t += 2;
    }
    if (T - t == 1) float_rows_group(w, act + (size_t)t * stride, stride, 1, n, load16, at, y + t);
}

static void fp32_rows(const void *row, const void *act, size_t stride, int T, int64_t n, float *y) {
    float_rows(row, act, stride, T, n, fp32_load16, fp32_at, y);
}
static void fp16_rows(const void *row, const void *act, size_t stride, int T, int64_t n, float *y) {
    float_rows(row, act, stride, T, n, fp16_load16, fp16_at, y);
}

/* The blocks' values as the _sums functions above take them, unpacked once for every row. */
static inline unpacked_block unsigned_block(__m256i u) { return (unpacked_block){u, _mm256_setzero_si256()}; }
static inline unpacked_block q4_0_unpacked(const void *p) { return unsigned_block(unpack_nibbles(((const block_q4_0 *)p)->qs)); }
static inline unpacked_block q4_1_unpacked(const void *p) { return unsigned_block(unpack_nibbles(((const block_q4_1 *)p)->qs)); }
static inline unpacked_block q5_0_unpacked(const void *p) {
    const block_q5_0 *x = p;
    return unsigned_block(unpack_q5(x->qs, x->qh));
}
static inline unpacked_block q5_1_unpacked(const void *p) {
    const block_q5_1 *x = p;
    return unsigned_block(unpack_q5(x->qs, x->qh));
}
static inline unpacked_block q8_0_unpacked(const void *p) {
    const block_q8_0 *x = p;
    return unsigned_block(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)x->qs), _mm256_set1_epi8((char)0x80)));
}
static inline __m256i vnni_sums(unpacked_block w, const int8_t *q) { return dot_u8_i8_vnni(w.u, q); }

/* Eight rows at a time: sixteen of the 32 registers accumulate. */
#define QUANTIZED_ROWS(fmt, term, factor)                                                                        \
    static void fmt##_rows(const void *row, const void *act, size_t stride, int T, int64_t n, float *y) {       \
        rows_blocks(row, sizeof(block_##fmt), act, stride, T, n, 8, fmt##_unpacked, vnni_sums, term, factor, y); \
    }
QUANTIZED_ROWS(q4_0, 0, -8.0f)
QUANTIZED_ROWS(q4_1, 1, 1.0f)
QUANTIZED_ROWS(q5_0, 0, -16.0f)
QUANTIZED_ROWS(q5_1, 1, 1.0f)
QUANTIZED_ROWS(q8_0, 0, -128.0f)
#undef QUANTIZED_ROWS

/* ---- sequence mode: FP32 micro-GEMM on packed tokens ------------------------------------------------ */

/* The AVX2 level's scheme at 16 lanes with 32 registers: 8 weight rows x 48 tokens (3 vectors),
 * 24 accumulators; per k 3 loads and 8 broadcasts for 24 FMAs, no horizontal sums. Partial panels
 * take 12 rows x 2 vectors or 24 rows x 1. */
enum { PANEL = 48, ROWS = 8 };

static inline RWKV_ALWAYS_INLINE void panel_tile(const float *w, int64_t ws, int rows, const float *xp,
                                                 int vecs, int64_t n, float *y, int64_t ys, int tokens,
                                                 int accumulate) {
    __m512 acc[3 * ROWS][3];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vecs; v++) acc[r][v] = _mm512_setzero_ps();
    for (int64_t k = 0; k < n; k++) {
        __m512 xv[3];
        for (int v = 0; v < vecs; v++) xv[v] = _mm512_loadu_ps(xp + k * PANEL + 16 * v);
        for (int r = 0; r < rows; r++) {
            const __m512 wr = _mm512_set1_ps(w[r * ws + k]);
            for (int v = 0; v < vecs; v++) acc[r][v] = _mm512_fmadd_ps(wr, xv[v], acc[r][v]);
        }
    }
    float out[3 * ROWS][PANEL];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vecs; v++) _mm512_storeu_ps(out[r] + 16 * v, acc[r][v]);
    store_tile(out[0], PANEL, rows, tokens, y, ys, accumulate);
}

static void pack_tokens(const float *x, int64_t T, int64_t n, int64_t p, float *xp) {
    pack_panel(x, T, n, PANEL, p, xp);
}

static void gemm_f32(const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt, int64_t n,
                     float *y, int64_t ys, int accumulate) {
    gemm_panels(panel_tile, ROWS, PANEL, 16, w, ws, nr, x, xs, nt, n, y, ys, accumulate);
}

/* Twelve chains of 16 lanes: up to two FMA units with a latency of four cycles, and room to spare. */
static double fma_loop(long rounds, float *sink) {
    enum { CHAINS = 12 };
    const __m512 x = _mm512_set1_ps(*sink), y = _mm512_set1_ps(1e-6f);
    __m512 a[CHAINS];
    for (int j = 0; j < CHAINS; j++) a[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < rounds; i++)
        for (int j = 0; j < CHAINS; j++) a[j] = _mm512_fmadd_ps(a[j], x, y);
    for (int j = 1; j < CHAINS; j++) a[0] = _mm512_add_ps(a[0], a[j]);
    *sink = _mm512_reduce_add_ps(a[0]);
    return (double)rounds * CHAINS * 16 * 2;
}

const rwkv_kernel_table rwkv_avx512_kernels = {
    .vec_dot = {[RWKV_TYPE_FP32] = fp32_dot, [RWKV_TYPE_FP16] = fp16_dot, [RWKV_TYPE_Q4_0] = q4_0_dot,
                [RWKV_TYPE_Q4_1] = q4_1_dot, [RWKV_TYPE_Q5_0] = q5_0_dot, [RWKV_TYPE_Q5_1] = q5_1_dot,
                [RWKV_TYPE_Q8_0] = q8_0_dot, [RWKV_TYPE_Q4_K] = q4_k_dot, [RWKV_TYPE_Q5_K] = q5_k_dot},
    .gemm = {gemm_f32, pack_tokens, PANEL},
    .rows_dot = {[RWKV_TYPE_FP32] = fp32_rows, [RWKV_TYPE_FP16] = fp16_rows, [RWKV_TYPE_Q4_0] = q4_0_rows,
                 [RWKV_TYPE_Q4_1] = q4_1_rows, [RWKV_TYPE_Q5_0] = q5_0_rows, [RWKV_TYPE_Q5_1] = q5_1_rows,
                 [RWKV_TYPE_Q8_0] = q8_0_rows},
    .fma_loop = fma_loop,
};
