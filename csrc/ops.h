/* Element-wise steps shared by the architectures, and the matrix product. All work on T rows. */
#ifndef RWKV_OPS_H
#define RWKV_OPS_H

#include <math.h>

#include "model.h"

/* Hot element-wise loops outside the kernel table (the wkv recurrences) get an AVX2 + FMA clone
 * (x86-64-v3) that the loader picks when the CPU has it; the baseline build only vectorises with
 * SSE2. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define RWKV_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define RWKV_SIMD_CLONES
#endif

static inline float rwkv_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float rwkv_silu(float x) { return x / (1.0f + expf(-x)); }

/* out[t] = layer_norm(x[t]) * weight + bias, eps 1e-5 */
void rwkv_layer_norm(float *out, const float *x, const rwkv_norm *norm, int64_t T, int64_t C);
/* In place: each group of N channels normalised on its own, then scaled per channel. */
void rwkv_group_norm(float *x, const rwkv_norm *norm, int64_t T, int64_t H, int64_t N, float eps);
/* prev[t] = xx[t-1], prev[0] = *state; then the state becomes the last row of xx. */
void rwkv_token_shift(float *prev, const float *xx, float *state, int64_t T, int64_t C);
/* v4/v5 mixing: out = xx * mix + prev * (1 - mix) */
void rwkv_lerp(float *out, const float *xx, const float *prev, const float *mix, int64_t T, int64_t C);
/* v6/v7 mixing with sx = prev - xx: out = xx + sx * mix (mix2 added to mix when not NULL; it has T rows) */
void rwkv_maa(float *out, const float *xx, const float *sx, const float *mix, const float *mix2, int64_t T,
              int64_t C);
/* a[i] += b[i] and a[i] -= b[i] over n */
void rwkv_add(float *a, const float *b, int64_t n);
void rwkv_sub(float *a, const float *b, int64_t n);

/* Sequence mode's weight tile: rows x k-block floats, dequantized once per chunk of tokens. */
#define RWKV_TILE_ROWS 48 /* a multiple of the micro-GEMM's row groups (12 for AVX2, 24 for AVX-512) */
/* A multiple of every block length. Each k-block ends with the tile's results added into y, so long
 * blocks pay off: 1024 gave 15% faster prompts than 256 on 0.1B shapes (a 192 KiB tile per thread,
 * still in L2). */
#define RWKV_TILE_K 1024
/* Floats from one tile row to the next. At 1024 the rows would be 4 KiB apart, all in one L1 set,
 * and a micro-GEMM reading 12 rows at once (more than the 8 ways) would evict its own weights. */
#define RWKV_TILE_STRIDE (RWKV_TILE_K + 16)

/* y (T x rows) = x (T x cols) W^T through the type's kernels, on the model's threads. */
void rwkv_matmul(rwkv_model *m, const rwkv_matrix *w, const float *x, int64_t T, float *y);

/* Several independent products of one step. Decoding runs them in one parallel pass, so the
 * threads meet once instead of once per product and small products run beside large ones. */
typedef struct {
    const rwkv_matrix *w;
    const float *x;
    float *y;
} rwkv_product;
#define RWKV_MAX_PRODUCTS 8
#define RWKV_DECODE_MAX_TOKENS 3 /* up to this many tokens a product is matrix-vector, row by row */
void rwkv_matmuls(rwkv_model *m, const rwkv_product *products, int n, int64_t T);

/* Runs fn(ctx, item) for items [0, n) split across the model's threads. */
typedef void (*rwkv_item_fn)(void *ctx, int64_t item);
void rwkv_parallel_for(rwkv_model *m, int64_t n, rwkv_item_fn fn, void *ctx);

/* The channel-mixing block (feed-forward) of every architecture: x += ffn(ln2(x)). */
void rwkv_channel_mix(rwkv_model *m, const rwkv_layer *L, float *state_x, int64_t T);

/* The wkv recurrence of v5 and v6, per head: S = k v^T + w S, out = r (u k v^T + S).
 * Decay w and bonus u have one value per head or per channel; v6's decay also changes per token
 * (w_token_stride = C), v5's does not (0). state: H x N x N (N = RWKV_HEAD_SIZE), indexed
 * [head][key][value]. */
typedef struct {
    const float *r, *k, *v, *w, *u;
    int w_per_head, u_per_head;
    int64_t w_token_stride;
    float *y, *state;
    int64_t T, H;
} rwkv_wkv5_args;
void rwkv_wkv5(rwkv_model *m, const rwkv_wkv5_args *args);

/* v4 and v5 time mixing's inputs: ln1, token shift against *state_x, then r, k, v (and g when the
 * layer has a gate) projected from lerped inputs into scratch r, k, v, g. */
void rwkv_lerp_projections(rwkv_model *m, const rwkv_layer *L, float *state_x, int64_t T);

/* The time-mixing blocks, one per architecture family: x += att(ln1(x)). */
void rwkv_time_mix_v4(rwkv_model *m, const rwkv_layer *L, float *state, int64_t T);
void rwkv_time_mix_v5(rwkv_model *m, const rwkv_layer *L, float *state, int64_t T);
void rwkv_time_mix_v6(rwkv_model *m, const rwkv_layer *L, float *state, int64_t T);
void rwkv_time_mix_v7(rwkv_model *m, const rwkv_layer *L, int layer, float *state, int64_t T);

#endif
