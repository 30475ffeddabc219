/* Element-wise steps shared by the architectures. All work on T rows of C values. */
#ifndef RWKV_OPS_H
#define RWKV_OPS_H

#include <math.h>

#include "compiler.h" /* RWKV_SIMD_CLONES, RWKV_ALWAYS_INLINE for the recurrences */
#include "model.h"

static inline float rwkv_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float rwkv_silu(float x) { return x / (1.0f + expf(-x)); }

/* out[t] = layer_norm(x[t]) * weight + bias, eps 1e-5 */
void rwkv_layer_norm(float *out, const float *x, const rwkv_norm *norm, int64_t T, int64_t C);
/* rwkv_layer_norm with the rows split across the pool's threads. */
void rwkv_layer_norm_rows(rwkv_pool *pool, float *out, const float *x, const rwkv_norm *norm, int64_t T, int64_t C);
/* In place: each group of N channels normalised on its own, then scaled per channel. */
void rwkv_group_norm(float *x, const rwkv_norm *norm, int64_t T, int64_t H, int64_t N, float eps);
/* Per segment of the pass: prev[t] = xx[t-1], prev[first row] = the segment's state (C floats);
 * then that state becomes the segment's last row of xx. */
void rwkv_token_shift(float *prev, const float *xx, const rwkv_pass *pass, int64_t C);
/* v4/v5 mixing: out = xx * mix + prev * (1 - mix) */
void rwkv_lerp(float *out, const float *xx, const float *prev, const float *mix, int64_t T, int64_t C);
/* v6/v7 mixing with sx = prev - xx: out = xx + sx * mix (mix2 added to mix when not NULL; it has T rows) */
void rwkv_maa(float *out, const float *xx, const float *sx, const float *mix, const float *mix2, int64_t T,
              int64_t C);
/* The index of the first NaN or infinity among n floats, or -1. */
int64_t rwkv_first_nonfinite(const float *v, size_t n);
/* a[i] += b[i] and a[i] -= b[i] over n */
void rwkv_add(float *a, const float *b, int64_t n);
void rwkv_sub(float *a, const float *b, int64_t n);

#endif
