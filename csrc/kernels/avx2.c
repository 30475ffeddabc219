/* AVX2 + FMA + F16C kernels. Compiled with those flags on their own; called only when the CPU
 * has them (dispatch.c). */
#include <immintrin.h>
#include <string.h>

#include "../rwkv.h"
#include "../types.h"

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static float fp32_dot(const void *row, const void *act, int64_t n) {
    const float *w = row, *x = act;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    float sum = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += w[i] * x[i];
    return sum;
}

static inline __m256 load_half8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static float fp16_dot(const void *row, const void *act, int64_t n) {
    const uint16_t *w = row;
    const float *x = act;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_half8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load_half8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_half8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_half8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_half8(w + i), _mm256_loadu_ps(x + i), a0);
    float sum = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += _cvtsh_ss(w[i]) * x[i];
    return sum;
}

/* ---- quantized rows against 8-bit activation blocks ---------------------------------------- */

/* The 32 4-bit values of a block as bytes: low nibbles are elements 0-15, high nibbles 16-31. */
static inline __m256i unpack_nibbles(const uint8_t *qs) {
    const __m128i packed = _mm_loadu_si128((const __m128i *)qs);
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* 0x10 in byte j where bit j of the 32-bit fifth-bit field is set, else 0. */
static inline __m256i unpack_fifth_bits(const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, /* low lane */
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i one_bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, one_bit), one_bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

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

static inline __m256i load_act(const rwkv_block_q8 *y) { return _mm256_loadu_si256((const __m256i *)y->q); }

typedef struct { uint16_t d; uint8_t qs[16]; } block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[16]; } block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } block_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } block_q5_1;
typedef struct { uint16_t d; int8_t qs[32]; } block_q8_0;

static float q4_0_dot(const void *row, const void *act, int64_t n) {
    const block_q4_0 *x = row;
    const rwkv_block_q8 *y = act;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / RWKV_QK; b++) {
        const __m256i q = _mm256_sub_epi8(unpack_nibbles(x[b].qs), _mm256_set1_epi8(8));
        const __m256 scale = _mm256_set1_ps(_cvtsh_ss(x[b].d) * y[b].d);
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot_i8(q, load_act(&y[b]))), acc);
    }
    return hsum256(acc);
}

static float q4_1_dot(const void *row, const void *act, int64_t n) {
    const block_q4_1 *x = row;
    const rwkv_block_q8 *y = act;
    __m256 acc = _mm256_setzero_ps();
    float offsets = 0.0f;
    for (int64_t b = 0; b < n / RWKV_QK; b++) {
        const __m256 scale = _mm256_set1_ps(_cvtsh_ss(x[b].d) * y[b].d);
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot_u8_i8(unpack_nibbles(x[b].qs), load_act(&y[b]))), acc);
        offsets += _cvtsh_ss(x[b].m) * y[b].s;
    }
    return hsum256(acc) + offsets;
}

static float q5_0_dot(const void *row, const void *act, int64_t n) {
    const block_q5_0 *x = row;
    const rwkv_block_q8 *y = act;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / RWKV_QK; b++) {
        __m256i q = _mm256_or_si256(unpack_nibbles(x[b].qs), unpack_fifth_bits(x[b].qh));
        q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        const __m256 scale = _mm256_set1_ps(_cvtsh_ss(x[b].d) * y[b].d);
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot_i8(q, load_act(&y[b]))), acc);
    }
    return hsum256(acc);
}

static float q5_1_dot(const void *row, const void *act, int64_t n) {
    const block_q5_1 *x = row;
    const rwkv_block_q8 *y = act;
    __m256 acc = _mm256_setzero_ps();
    float offsets = 0.0f;
    for (int64_t b = 0; b < n / RWKV_QK; b++) {
        const __m256i q = _mm256_or_si256(unpack_nibbles(x[b].qs), unpack_fifth_bits(x[b].qh));
        const __m256 scale = _mm256_set1_ps(_cvtsh_ss(x[b].d) * y[b].d);
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot_u8_i8(q, load_act(&y[b]))), acc);
        offsets += _cvtsh_ss(x[b].m) * y[b].s;
    }
    return hsum256(acc) + offsets;
}

static float q8_0_dot(const void *row, const void *act, int64_t n) {
    const block_q8_0 *x = row;
    const rwkv_block_q8 *y = act;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / RWKV_QK; b++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256 scale = _mm256_set1_ps(_cvtsh_ss(x[b].d) * y[b].d);
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot_i8(q, load_act(&y[b]))), acc);
    }
    return hsum256(acc);
}

void rwkv_install_avx2(void) {
    rwkv_traits_mut(RWKV_TYPE_FP32)->vec_dot = fp32_dot;
    rwkv_traits_mut(RWKV_TYPE_FP16)->vec_dot = fp16_dot;
    rwkv_traits_mut(RWKV_TYPE_Q4_0)->vec_dot = q4_0_dot;
    rwkv_traits_mut(RWKV_TYPE_Q4_1)->vec_dot = q4_1_dot;
    rwkv_traits_mut(RWKV_TYPE_Q5_0)->vec_dot = q5_0_dot;
    rwkv_traits_mut(RWKV_TYPE_Q5_1)->vec_dot = q5_1_dot;
    rwkv_traits_mut(RWKV_TYPE_Q8_0)->vec_dot = q8_0_dot;
}
