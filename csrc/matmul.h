/* The matrix products y = x W^T of the engine, on the model's threads, and the portable micro-GEMM
 * the kernel levels build on.
 *
 * Two paths. The row kernels (decoding, short sequences) make one pass over the weights, each
 * weight row dotted with every activation row, the activations converted once into the row
 * kernel's format (8-bit blocks for quantized weights). Sequence mode dequantizes the weights
 * block by block into FP32 tiles that stay in cache while every token of the chunk passes over
 * them (a micro-GEMM). A row's result depends only on the path it takes, never on the other rows
 * of the product or on where it sits among them. */
#ifndef RWKV_MATMUL_H
#define RWKV_MATMUL_H

#include "dispatch.h"
#include "rwkv.h"
#include "threads.h"

/* A weight matrix: `rows` rows of `cols` elements each, y = W x produces `rows` outputs. */
typedef struct {
    const void *data;
    int type;
    int64_t rows, cols;
    size_t row_bytes;
} rwkv_matrix;

static inline rwkv_matrix rwkv_matrix_at(const void *data, int type, int64_t rows, int64_t cols) {
    return (rwkv_matrix){data, type, rows, cols, rwkv_row_bytes(type, cols)};
}

/* Several independent products of one step. The row kernels run them in one parallel pass, so the
 * threads meet once instead of once per product and small products run beside large ones. */
typedef struct {
    const rwkv_matrix *w;
    const float *x;
    float *y;
    /* Row kernels only; NULL, or where each output row goes (row t at y_rows[t], not y + t * rows):
     * the head writes each sequence's logits into the caller's buffer. */
    float *const *y_rows;
} rwkv_product;
#define RWKV_MAX_PRODUCTS 8

/* Sequences of up to this many new tokens take the row kernels, longer ones sequence mode: where
 * the two paths' speeds cross for a prompt, measured on 0.1B and 1.5B v7 models in FP16, Q8_0 and
 * Q5_1 with 2 threads on AVX2 (from 6 tokens for Q5_1 and FP16 to 12 for 1.5B Q8_0; the figures
 * are in benchmarks/README.md). */
#define RWKV_ROW_KERNEL_TOKENS 8

/* The activation rows a product runs over: T in all, of which the first `by_row` take the row
 * kernels (they belong to sequences of at most RWKV_ROW_KERNEL_TOKENS new tokens) and the rest
 * sequence mode. */
typedef struct {
    int64_t T, by_row;
} rwkv_rows;

/* What the products run on: the threads, and scratch carved by rwkv_matmul_scratch_carve. */
typedef struct {
    rwkv_pool *pool;
    float *tiles;  /* per thread: a dequantized weight tile of sequence mode */
    float *panels; /* sequence mode: a product's input tokens packed for the kernel (gemm.pack) */
    void *act;     /* row kernels: the products' activations in their formats */
} rwkv_matmul_ctx;

/* Bytes of scratch for products of up to T tokens at a time, of matrices at most `widest`
 * columns wide, on the pool's threads. */
size_t rwkv_matmul_scratch_bytes(const rwkv_pool *pool, int64_t T, int64_t widest);
/* Points the context's buffers into `scratch` (rwkv_matmul_scratch_bytes of it). */
void rwkv_matmul_scratch_carve(rwkv_matmul_ctx *ctx, rwkv_pool *pool, void *scratch, int64_t T, int64_t widest);

/* y (T x rows) = x (T x cols) W^T through the type's kernels, on the model's threads and scratch. */
void rwkv_matmul(rwkv_model *m, const rwkv_matrix *w, const float *x, rwkv_rows rows, float *y);
void rwkv_matmuls(rwkv_model *m, const rwkv_product *products, int n, rwkv_rows rows);

/* Converts an FP32 row into the activation format of a weight type, with the kernels in use. */
void rwkv_act_from_float(int act_type, const float *src, void *dst, int64_t n);

/* The portable micro-GEMM (an rwkv_gemm_f32_fn). */
void rwkv_gemm_f32_generic(const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt,
                           int64_t n, float *y, int64_t ys, int accumulate);

/* One register tile of a SIMD micro-GEMM, of a shape fixed by its kernel file. */
typedef void (*rwkv_gemm_tile_fn)(const float *w, int64_t ws, const float *x, int64_t xs, int64_t n, float *y,
                                  int64_t ys, int accumulate);
/* A micro-GEMM from tiles of rows x tokens: covers what the tiles can and hands the edge rows and
 * tokens, and every n that is not a multiple of k_step, to `rest` (the level below). */
void rwkv_gemm_tiled(rwkv_gemm_tile_fn tile, int rows, int tokens, int k_step, rwkv_gemm_f32_fn rest,
                     const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt, int64_t n,
                     float *y, int64_t ys, int accumulate);

#endif
