/* Helpers shared by the x86 kernel files; each includes this under its own target flags. */
#ifndef RWKV_KERNELS_X86_H
#define RWKV_KERNELS_X86_H

#include <immintrin.h>
#include <string.h>

#include "../types.h"

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 load_half8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

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

static inline __m256i load_act(const rwkv_block_q8 *y) { return _mm256_loadu_si256((const __m256i *)y->q); }

/* Each block kernel adds one block's scaled integer dot product to an accumulator. The row loop
 * keeps two accumulators so consecutive blocks do not wait on one chain of FMA latencies. */
typedef __m256 (*block_dot_fn)(const void *x, const rwkv_block_q8 *y, __m256 acc);

static inline __m256 scaled(__m256i sums, float dx, const rwkv_block_q8 *y, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_set1_ps(dx * y->d), _mm256_cvtepi32_ps(sums), acc);
}

static inline __attribute__((always_inline)) float sum_blocks(const uint8_t *row, size_t block_bytes,
                                                              const rwkv_block_q8 *y, int64_t nb, block_dot_fn block) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        a0 = block(row + (size_t)b * block_bytes, y + b, a0);
        a1 = block(row + (size_t)(b + 1) * block_bytes, y + b + 1, a1);
    }
    if (b < nb) a0 = block(row + (size_t)b * block_bytes, y + b, a0);
    return hsum256(_mm256_add_ps(a0, a1));
}

/* Terms that scale the sum of a block's activations: the "+ m" of q*d + m formats, or the offset
 * that makes stored values unsigned. h points at the first block's FP16 factor, `stride` halfs
 * apart; y->s is the block's activation sum times its scale. */
static inline float sum_offsets(const uint16_t *h, size_t stride, float factor, const rwkv_block_q8 *y, int64_t nb) {
    float s0 = 0.0f, s1 = 0.0f;
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        s0 += _cvtsh_ss(h[b * stride]) * y[b].s;
        s1 += _cvtsh_ss(h[(b + 1) * stride]) * y[b + 1].s;
    }
    if (b < nb) s0 += _cvtsh_ss(h[b * stride]) * y[b].s;
    return factor * (s0 + s1);
}

#endif
