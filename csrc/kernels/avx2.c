/* AVX2 + FMA + F16C kernels. Compiled with those flags on their own; called only when the CPU
 * has them (dispatch.c). */
#include <immintrin.h>
#include <string.h>

#include "../rwkv.h"
#include "../dispatch.h"
#include "x86.h"
#include "x86_rows.h"

/* Weight elements i..i+7 as floats: with fp32_at/fp16_at, what distinguishes FP32 from FP16 rows. */
static inline __m256 fp32_load8(const void *w, int64_t i) { return _mm256_loadu_ps((const float *)w + i); }
static inline __m256 fp16_load8(const void *w, int64_t i) { return load_half8((const uint16_t *)w + i); }

/* Four accumulators of 8 lanes, so the FMAs of consecutive vectors do not wait on each other. */
static inline RWKV_ALWAYS_INLINE float float_dot(const void *w, const float *x, int64_t n,
                                                 __m256 (*load8)(const void *, int64_t),
                                                 float (*at)(const void *, int64_t)) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load8(w, i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load8(w, i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load8(w, i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load8(w, i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load8(w, i), _mm256_loadu_ps(x + i), a0);
    float sum = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += at(w, i) * x[i];
    return sum;
}

static float fp32_dot(const void *row, const void *act, int64_t n) {
    return float_dot(row, act, n, fp32_load8, fp32_at);
}
static float fp16_dot(const void *row, const void *act, int64_t n) {
    return float_dot(row, act, n, fp16_load8, fp16_at);
}

/* ---- quantized rows against 8-bit activation blocks ---------------------------------------- */

/* Sums of products of signed bytes, as 8 int32 lanes. maddubs needs one unsigned operand, so the
 * sign of x moves onto y. */
static inline __m256i dot_i8(__m256i x, __m256i y) {
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

/* Unsigned bytes (at most 31) times signed bytes. */
static inline __m256i dot_u8_i8(__m256i x, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}


static inline __m256i load_q(const int8_t *q) { return _mm256_loadu_si256((const __m256i *)q); }

/* A block's 32 values as bytes, what both the dot products and the dequantizers start from:
 * signed for the "q*d" formats, unsigned (0-15, 0-31) for the "q*d + m" ones. */
static inline __m256i q4_0_values(const block_q4_0 *x) {
    return _mm256_sub_epi8(unpack_nibbles(x->qs), _mm256_set1_epi8(8));
}
static inline __m256i q4_1_values(const block_q4_1 *x) { return unpack_nibbles(x->qs); }
static inline __m256i q5_0_values(const block_q5_0 *x) {
    return _mm256_sub_epi8(unpack_q5(x->qs, x->qh), _mm256_set1_epi8(16));
}
static inline __m256i q5_1_values(const block_q5_1 *x) { return unpack_q5(x->qs, x->qh); }
static inline __m256i q8_0_values(const block_q8_0 *x) { return _mm256_loadu_si256((const __m256i *)x->qs); }

static inline __m256i q4_0_sums(const void *x, const int8_t *q) { return dot_i8(q4_0_values(x), load_q(q)); }
static inline __m256i q4_1_sums(const void *x, const int8_t *q) { return dot_u8_i8(q4_1_values(x), load_q(q)); }
static inline __m256i q5_0_sums(const void *x, const int8_t *q) { return dot_i8(q5_0_values(x), load_q(q)); }
static inline __m256i q5_1_sums(const void *x, const int8_t *q) { return dot_u8_i8(q5_1_values(x), load_q(q)); }
static inline __m256i q8_0_sums(const void *x, const int8_t *q) { return dot_i8(q8_0_values(x), load_q(q)); }

static float q4_0_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q4_0), act, n, q4_0_sums, NO_TERM, 0.0f);
}

static float q4_1_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q4_1), act, n, q4_1_sums, 1, 1.0f);
}

static float q5_0_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q5_0), act, n, q5_0_sums, NO_TERM, 0.0f);
}

static float q5_1_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q5_1), act, n, q5_1_sums, 1, 1.0f);
}

static float q8_0_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q8_0), act, n, q8_0_sums, NO_TERM, 0.0f);
}

static inline __m256i k_sums(__m256i u, const int8_t *q) { return dot_u8_i8(u, load_q(q)); }

static float q4_k_dot(const void *row, const void *act, int64_t n) {
    return k_dot(row, sizeof(block_q4_k), act, n, q4_k_levels, k_sums);
}

static float q5_k_dot(const void *row, const void *act, int64_t n) {
    return k_dot(row, sizeof(block_q5_k), act, n, q5_k_levels, k_sums);
}

/* ---- row kernels: one weight row against several activation rows ------------------------- */

/* float_dot for R activation rows (R <= 3: 12 accumulators), each weight vector loaded (and
 * converted) once for all of them; for each row the operations of float_dot, in its order. */
static inline RWKV_ALWAYS_INLINE void float_rows_group(const void *w, const uint8_t *act, size_t stride,
                                                       const int R, int64_t n,
                                                       __m256 (*load8)(const void *, int64_t),
                                                       float (*at)(const void *, int64_t), float *y) {
    const float *x[3];
    __m256 a[3][4];
    for (int t = 0; t < R; t++) {
        x[t] = (const float *)(act + (size_t)t * stride);
        for (int j = 0; j < 4; j++) a[t][j] = _mm256_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int j = 0; j < 4; j++) {
            const __m256 wj = load8(w, i + 8 * j);
            for (int t = 0; t < R; t++) a[t][j] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(x[t] + i + 8 * j), a[t][j]);
        }
    for (; i + 8 <= n; i += 8) {
        const __m256 wi = load8(w, i);
        for (int t = 0; t < R; t++) a[t][0] = _mm256_fmadd_ps(wi, _mm256_loadu_ps(x[t] + i), a[t][0]);
    }
    for (int t = 0; t < R; t++) {
        float sum = hsum256(_mm256_add_ps(_mm256_add_ps(a[t][0], a[t][1]), _mm256_add_ps(a[t][2], a[t][3])));
        for (int64_t k = i; k < n; k++) sum += at(w, k) * x[t][k];
        y[t] = sum;
    }
}

static inline RWKV_ALWAYS_INLINE void float_rows(const void *w, const uint8_t *act, size_t stride, int T,
                                                 int64_t n, __m256 (*load8)(const void *, int64_t),
                                                 float (*at)(const void *, int64_t), float *y) {
    int t = 0;
    for (; t + 3 <= T; t += 3) float_rows_group(w, act + (size_t)t * stride, stride, 3, n, load8, at, y + t);
    if (T - t == 2) float_rows_group(w, act + (size_t)t * stride, stride, 2, n, load8, at, y + t);
    if (T - t == 1) float_rows_group(w, act + (size_t)t * stride, stride, 1, n, load8, at, y + t);
}

static void fp32_rows(const void *row, const void *act, size_t stride, int T, int64_t n, float *y) {
    float_rows(row, act, stride, T, n, fp32_load8, fp32_at, y);
}
static void fp16_rows(const void *row, const void *act, size_t stride, int T, int64_t n, float *y) {
    float_rows(row, act, stride, T, n, fp16_load8, fp16_at, y);
}

/* dot_i8 with the weights' absolute values and signs taken once per block. */
static inline unpacked_block signed_block(__m256i v) { return (unpacked_block){_mm256_sign_epi8(v, v), v}; }
static inline __m256i signed_sums(unpacked_block w, const int8_t *q) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w.u, _mm256_sign_epi8(load_q(q), w.sign)), _mm256_set1_epi16(1));
}
static inline __m256i unsigned_sums(unpacked_block w, const int8_t *q) { return dot_u8_i8(w.u, load_q(q)); }

static inline unpacked_block q4_0_unpacked(const void *x) { return signed_block(q4_0_values(x)); }
static inline unpacked_block q4_1_unpacked(const void *x) { return (unpacked_block){q4_1_values(x), _mm256_setzero_si256()}; }
static inline unpacked_block q5_0_unpacked(const void *x) { return signed_block(q5_0_values(x)); }
static inline unpacked_block q5_1_unpacked(const void *x) { return (unpacked_block){q5_1_values(x), _mm256_setzero_si256()}; }
static inline unpacked_block q8_0_unpacked(const void *x) { return signed_block(q8_0_values(x)); }

/* Four rows at a time: eight accumulators, and room for the block and the products. */
#define QUANTIZED_ROWS(fmt, sums, term, factor)                                                                  \
    static void fmt##_rows(const void *row, const void *act, size_t stride, int T, int64_t n, float *y) {       \
        rows_blocks(row, sizeof(block_##fmt), act, stride, T, n, 4, fmt##_unpacked, sums, term, factor, y);      \
    }
QUANTIZED_ROWS(q4_0, signed_sums, NO_TERM, 0.0f)
QUANTIZED_ROWS(q4_1, unsigned_sums, 1, 1.0f)
QUANTIZED_ROWS(q5_0, signed_sums, NO_TERM, 0.0f)
QUANTIZED_ROWS(q5_1, unsigned_sums, 1, 1.0f)
QUANTIZED_ROWS(q8_0, signed_sums, NO_TERM, 0.0f)
#undef QUANTIZED_ROWS

/* 8-bit activation blocks, rounding half away from zero exactly as the portable roundf: adding
 * just under one half and truncating gives the same integers for |v| <= 127. */
static void q8_act_from_float(const float *x, void *dst, int64_t n) {
    const rwkv_q8_row y = rwkv_q8_row_at(dst, n);
    const __m256 sign_bit = _mm256_set1_ps(-0.0f), almost_half = _mm256_set1_ps(0.49999997f);
    for (int64_t b = 0; b < n / RWKV_QK; b++, x += RWKV_QK) {
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(x + 8 * i);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, v[i]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float d = _mm_cvtss_f32(m4) / 127.0f;
        const __m256 id = _mm256_set1_ps(d ? 1.0f / d : 0.0f);
        __m256i q[4];
        for (int i = 0; i < 4; i++) {
            const __m256 scaled_v = _mm256_mul_ps(v[i], id);
            const __m256 nudge = _mm256_or_ps(_mm256_and_ps(scaled_v, sign_bit), almost_half);
            q[i] = _mm256_cvttps_epi32(_mm256_add_ps(scaled_v, nudge));
        }
        const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        /* packs work within 128-bit lanes; the permute puts the 32 bytes back in order */
        const __m256i words = _mm256_packs_epi32(q[0], q[1]), words2 = _mm256_packs_epi32(q[2], q[3]);
        const __m256i bytes = _mm256_packs_epi16(words, words2);
        _mm256_storeu_si256((__m256i *)y.q[b], _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        y.d[b] = d;
        y.s[b] = d * (float)_mm_cvtsi128_si32(s4);
    }
}

/* ---- sequence mode: FP32 micro-GEMM on packed tokens ------------------------------------------------ */

enum { PANEL = 24, ROWS = 4 };

/* `rows` weight rows times the first 8 * vecs tokens of a panel, rows * vecs <= 12. At each k the
 * tokens' values are `vecs` contiguous loads and each row's weight one broadcast: for 4 rows x 3
 * vectors, 4 broadcasts and 3 loads for 12 FMAs into 12 accumulators, all 16 registers, and no
 * horizontal sums at the end (20% faster than a dot-product tile of 3 rows x 4 tokens, which needs
 * 12). In a loop of its own, this runs at the FMA units' peak. */
static inline RWKV_ALWAYS_INLINE void panel_tile(const float *w, int64_t ws, int rows, const float *xp,
                                                 int vecs, int64_t n, float *y, int64_t ys, int tokens,
                                                 int accumulate) {
    __m256 acc[3 * ROWS][3];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vecs; v++) acc[r][v] = _mm256_setzero_ps();
    for (int64_t k = 0; k < n; k++) {
        __m256 xv[3];
        for (int v = 0; v < vecs; v++) xv[v] = _mm256_loadu_ps(xp + k * PANEL + 8 * v);
        for (int r = 0; r < rows; r++) {
            const __m256 wr = _mm256_broadcast_ss(w + r * ws + k);
            for (int v = 0; v < vecs; v++) acc[r][v] = _mm256_fmadd_ps(wr, xv[v], acc[r][v]);
        }
    }
    float out[3 * ROWS][PANEL];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vecs; v++) _mm256_storeu_ps(out[r] + 8 * v, acc[r][v]);
    store_tile(out[0], PANEL, rows, tokens, y, ys, accumulate);
}

static void pack_tokens(const float *x, int64_t T, int64_t n, int64_t p, float *xp) {
    pack_panel(x, T, n, PANEL, p, xp);
}

static void gemm_f32(const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt, int64_t n,
                     float *y, int64_t ys, int accumulate) {
    gemm_panels(panel_tile, ROWS, PANEL, 8, w, ws, nr, x, xs, nt, n, y, ys, accumulate);
}

/* ---- dequantizing rows (sequence mode's weight tiles) ------------------------------------------------- */

static void fp16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_half8(h + i));
    for (; i < n; i++) dst[i] = _cvtsh_ss(h[i]);
}

/* 32 signed or unsigned bytes times a scale plus an offset, stored as floats. */
static inline void store_block(__m256i q, int is_signed, float d, float m, float *y) {
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    const __m128i halves[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
    for (int h = 0; h < 2; h++) {
        const __m128i part = halves[h];
        const __m256i lo = is_signed ? _mm256_cvtepi8_epi32(part) : _mm256_cvtepu8_epi32(part);
        const __m256i hi = is_signed ? _mm256_cvtepi8_epi32(_mm_srli_si128(part, 8)) : _mm256_cvtepu8_epi32(_mm_srli_si128(part, 8));
        _mm256_storeu_ps(y + 16 * h, _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), vd, vm));
        _mm256_storeu_ps(y + 16 * h + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), vd, vm));
    }
}

static void q4_0_to_float(const void *src, float *y, int64_t n) {
    const block_q4_0 *x = src;
    for (int64_t b = 0; b < n / RWKV_QK; b++, y += RWKV_QK)
        store_block(q4_0_values(&x[b]), 1, _cvtsh_ss(x[b].d), 0.0f, y);
}

static void q4_1_to_float(const void *src, float *y, int64_t n) {
    const block_q4_1 *x = src;
    for (int64_t b = 0; b < n / RWKV_QK; b++, y += RWKV_QK)
        store_block(q4_1_values(&x[b]), 0, _cvtsh_ss(x[b].d), _cvtsh_ss(x[b].m), y);
}

static void q5_0_to_float(const void *src, float *y, int64_t n) {
    const block_q5_0 *x = src;
    for (int64_t b = 0; b < n / RWKV_QK; b++, y += RWKV_QK)
        store_block(q5_0_values(&x[b]), 1, _cvtsh_ss(x[b].d), 0.0f, y);
}

static void q5_1_to_float(const void *src, float *y, int64_t n) {
    const block_q5_1 *x = src;
    for (int64_t b = 0; b < n / RWKV_QK; b++, y += RWKV_QK)
        store_block(q5_1_values(&x[b]), 0, _cvtsh_ss(x[b].d), _cvtsh_ss(x[b].m), y);
}

static void q8_0_to_float(const void *src, float *y, int64_t n) {
    const block_q8_0 *x = src;
    for (int64_t b = 0; b < n / RWKV_QK; b++, y += RWKV_QK)
        store_block(q8_0_values(&x[b]), 1, _cvtsh_ss(x[b].d), 0.0f, y);
}

/* Each sub-block's levels times d * sc minus dmin * m. */
static inline RWKV_ALWAYS_INLINE void k_to_float(const uint8_t *src, size_t block_bytes, k_levels_fn levels,
                                                 float *y, int64_t n) {
    for (int64_t b = 0; b < n / RWKV_QK_K; b++) {
        const uint8_t *block = src + (size_t)b * block_bytes;
        const block_k_head *head = (const block_k_head *)block;
        uint8_t sc[8], m[8];
        rwkv_k_scales(head->scales, sc, m);
        const float d = rwkv_fp16_table[head->d], dmin = rwkv_fp16_table[head->dmin];
        for (int j = 0; j < 8; j++, y += RWKV_QK) store_block(levels(block, j), 0, d * sc[j], -(dmin * m[j]), y);
    }
}

static void q4_k_to_float(const void *src, float *y, int64_t n) { k_to_float(src, sizeof(block_q4_k), q4_k_levels, y, n); }
static void q5_k_to_float(const void *src, float *y, int64_t n) { k_to_float(src, sizeof(block_q5_k), q5_k_levels, y, n); }

/* Ten chains: two FMA units, each with a latency of four or five cycles. */
static double fma_loop(long rounds, float *sink) {
    enum { CHAINS = 10 };
    const __m256 x = _mm256_set1_ps(*sink), y = _mm256_set1_ps(1e-6f);
    __m256 a[CHAINS];
    for (int j = 0; j < CHAINS; j++) a[j] = _mm256_set1_ps((float)j);
    for (long i = 0; i < rounds; i++)
        for (int j = 0; j < CHAINS; j++) a[j] = _mm256_fmadd_ps(a[j], x, y);
    for (int j = 1; j < CHAINS; j++) a[0] = _mm256_add_ps(a[0], a[j]);
    *sink = hsum256(a[0]);
    return (double)rounds * CHAINS * 8 * 2;
}

const rwkv_kernel_table rwkv_avx2_kernels = {
    .vec_dot = {[RWKV_TYPE_FP32] = fp32_dot, [RWKV_TYPE_FP16] = fp16_dot, [RWKV_TYPE_Q4_0] = q4_0_dot,
                [RWKV_TYPE_Q4_1] = q4_1_dot, [RWKV_TYPE_Q5_0] = q5_0_dot, [RWKV_TYPE_Q5_1] = q5_1_dot,
                [RWKV_TYPE_Q8_0] = q8_0_dot, [RWKV_TYPE_Q4_K] = q4_k_dot, [RWKV_TYPE_Q5_K] = q5_k_dot},
    .to_float = {[RWKV_TYPE_FP16] = fp16_to_float, [RWKV_TYPE_Q4_0] = q4_0_to_float, [RWKV_TYPE_Q4_1] = q4_1_to_float,
                 [RWKV_TYPE_Q5_0] = q5_0_to_float, [RWKV_TYPE_Q5_1] = q5_1_to_float, [RWKV_TYPE_Q8_0] = q8_0_to_float,
                 [RWKV_TYPE_Q4_K] = q4_k_to_float, [RWKV_TYPE_Q5_K] = q5_k_to_float},
    .gemm = {gemm_f32, pack_tokens, PANEL},
    .q8_act_from_float = q8_act_from_float,
    .fma_loop = fma_loop,
    .rows_dot = {[RWKV_TYPE_FP32] = fp32_rows, [RWKV_TYPE_FP16] = fp16_rows, [RWKV_TYPE_Q4_0] = q4_0_rows,
                 [RWKV_TYPE_Q4_1] = q4_1_rows, [RWKV_TYPE_Q5_0] = q5_0_rows, [RWKV_TYPE_Q5_1] = q5_1_rows,
                 [RWKV_TYPE_Q8_0] = q8_0_rows},
};
