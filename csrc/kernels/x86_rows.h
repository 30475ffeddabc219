/* The x86 levels' row kernels of the 32-value quantized formats (rwkv_rows_dot_fn): one weight row
 * against several activation rows. Each block is loaded and unpacked once for a group of rows;
 * for each row the arithmetic is sum_blocks' (x86.h), operation for operation, so that every
 * result equals the level's single-row dot exactly. Included after x86.h, under each level's
 * flags. */
#ifndef RWKV_KERNELS_X86_ROWS_H
#define RWKV_KERNELS_X86_ROWS_H

#include "x86.h"

/* A block's values, unpacked once for every row: `u` what the level's integer product takes,
 * `sign` the signed values where AVX2's product needs their signs (unused elsewhere). */
typedef struct {
    __m256i u, sign;
} unpacked_block;
typedef unpacked_block (*unpack_block_fn)(const void *block);
/* The integer part of the block's dot product with one activation block, as block_sums_fn. */
typedef __m256i (*unpacked_sums_fn)(unpacked_block w, const int8_t *q);

#define ROWS_GROUP_MAX 8

/* add_block's integer and scale part for `R` rows: block b of the row into accumulator `acc`
 * (0 or 1, as sum_blocks alternates them) of each. */
static inline RWKV_ALWAYS_INLINE void add_block_rows(const uint8_t *row, size_t block_bytes,
                                                     const rwkv_q8_row *x, int64_t b, const int R,
                                                     unpack_block_fn unpack, unpacked_sums_fn sums,
                                                     __m256 acc[][2], const int which) {
    const uint8_t *block = row + b * block_bytes;
    uint16_t d;
    memcpy(&d, block, 2);
    const unpacked_block w = unpack(block);
    for (int t = 0; t < R; t++) {
        const __m256 scale = _mm256_set1_ps(rwkv_fp16_table[d] * x[t].d[b]);
        acc[t][which] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums(w, x[t].q[b])), acc[t][which]);
    }
}

/* add_block's term part for one row: the block's FP16 term times the activation block's sum. */
static inline RWKV_ALWAYS_INLINE float add_term(const uint8_t *row, size_t block_bytes, int64_t b,
                                                int term, const float *x_sums, float acc) {
    uint16_t h;
    memcpy(&h, row + b * block_bytes + 2 * term, 2);
    return fmaf(rwkv_fp16_table[h], x_sums[b], acc);
}

/* sum_blocks for `R` activation rows (R <= ROWS_GROUP_MAX, a constant where it is inlined). The
 * block terms are accumulated in a loop of their own, row by row, in sum_blocks' order. */
static inline RWKV_ALWAYS_INLINE void rows_group(const uint8_t *row, size_t block_bytes,
                                                 const uint8_t *act, size_t act_stride, const int R,
                                                 int64_t n, unpack_block_fn unpack, unpacked_sums_fn sums,
                                                 int term, float factor, float *y) {
    const int64_t nb = n / RWKV_QK;
    rwkv_q8_row x[ROWS_GROUP_MAX];
    __m256 acc[ROWS_GROUP_MAX][2];
    for (int t = 0; t < R; t++) {
        x[t] = rwkv_q8_row_at(act + (size_t)t * act_stride, n);
        acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    }
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        add_block_rows(row, block_bytes, x, b, R, unpack, sums, acc, 0);
        add_block_rows(row, block_bytes, x, b + 1, R, unpack, sums, acc, 1);
    }
    if (b < nb) add_block_rows(row, block_bytes, x, b, R, unpack, sums, acc, 0);
    for (int t = 0; t < R; t++) {
        float t0 = 0.0f, t1 = 0.0f;
        if (term >= 0) {
            const float *x_sums = term == 0 ? x[t].dsum : x[t].s; /* as add_block takes them */
            for (b = 0; b + 2 <= nb; b += 2) {
                t0 = add_term(row, block_bytes, b, term, x_sums, t0);
                t1 = add_term(row, block_bytes, b + 1, term, x_sums, t1);
            }
            if (b < nb) t0 = add_term(row, block_bytes, b, term, x_sums, t0);
        }
        y[t] = hsum256(_mm256_add_ps(acc[t][0], acc[t][1])) + factor * (t0 + t1);
    }
}

/* T rows in groups of `R_max` (4 or 8), the rest in groups of 4, 2 and 1. */
static inline RWKV_ALWAYS_INLINE void rows_blocks(const uint8_t *row, size_t block_bytes,
                                                  const uint8_t *act, size_t act_stride, int T, int64_t n,
                                                  const int R_max, unpack_block_fn unpack,
                                                  unpacked_sums_fn sums, int term, float factor, float *y) {
    int t = 0;
    for (; t + R_max <= T; t += R_max)
        rows_group(row, block_bytes, act + (size_t)t * act_stride, act_stride, R_max, n, unpack, sums, term, factor, y + t);
    if (R_max > 4 && T - t >= 4) {
        rows_group(row, block_bytes, act + (size_t)t * act_stride, act_stride, 4, n, unpack, sums, term, factor, y + t);
        t += 4;
    }
    if (T - t >= 2) {
        rows_group(row, block_bytes, act + (size_t)t * act_stride, act_stride, 2, n, unpack, sums, term, factor, y + t);
        t += 2;
    }
    if (T - t == 1) rows_group(row, block_bytes, act + (size_t)t * act_stride, act_stride, 1, n, unpack, sums, term, factor, y + t);
}

#endif
