/* The matrix products: decoding's matrix-vector passes and sequence mode's tiled micro-GEMM, the
 * scratch they need, and the same two paths for the kernel tests (rwkv_testing.h). */
#include "matmul.h"

#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "rwkv_testing.h"

#define SMALL_MATRIX (64 * 1024) /* elements below which a product is one chunk of work */

/* Sequence mode's weight tile: TILE_ROWS x TILE_K floats, dequantized once per chunk of tokens. */
#define TILE_ROWS 48 /* a multiple of the micro-GEMM's row groups (12 for AVX2, 24 for AVX-512) */
/* A multiple of every block length. Each k-block ends with the tile's results added into y, so long
 * blocks pay off: 1024 gave 15% faster prompts than 256 on 0.1B shapes (a 192 KiB tile per thread,
 * still in L2). */
#define TILE_K 1024
/* Floats from one tile row to the next. At 1024 the rows would be 4 KiB apart, all in one L1 set,
 * and a micro-GEMM reading 12 rows at once (more than the 8 ways) would evict its own weights. */
#define TILE_STRIDE (TILE_K + 16)

/* ---- scratch -------------------------------------------------------------------------------- */

static size_t tile_floats(const rwkv_pool *pool) {
    return (size_t)rwkv_pool_size(pool) * TILE_ROWS * TILE_STRIDE;
}

static size_t panel_floats(int64_t T, int64_t widest) { return (size_t)(T + RWKV_MAX_PANEL) * (size_t)widest; }

/* The row kernels convert the activations of up to RWKV_MAX_PRODUCTS products of T rows at once. */
static size_t act_bytes(int64_t T, int64_t widest) {
    return (size_t)(RWKV_MAX_PRODUCTS * T) * (size_t)((widest + RWKV_QK - 1) / RWKV_QK) * RWKV_ACT_Q8_BLOCK_BYTES;
}

size_t rwkv_matmul_scratch_bytes(const rwkv_pool *pool, int64_t T, int64_t widest) {
    return (tile_floats(pool) + panel_floats(T, widest)) * sizeof(float) + act_bytes(T, widest);
}

void rwkv_matmul_scratch_carve(rwkv_matmul_ctx *ctx, rwkv_pool *pool, void *scratch, int64_t T, int64_t widest) {
    float *p = scratch;
    ctx->pool = pool;
    ctx->tiles = p;
    p += tile_floats(pool);
    ctx->panels = p;
    p += panel_floats(T, widest);
    ctx->act = p;
}

void rwkv_act_from_float(int act_type, const float *src, void *dst, int64_t n) {
    if (act_type == RWKV_TYPE_FP32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    rwkv_kernels.q8_act_from_float(src, dst, n);
    const rwkv_q8_row y = rwkv_q8_row_at(dst, n);
    for (int64_t b = 0; b < n / RWKV_QK; b++) {
        if (act_type == RWKV_ACT_Q8) {
            /* ggml's rounding: d to half precision after the values were rounded with the float
             * d, and s = d * sum(q), computed with the float d, rounded on its own */
            y.d[b] = rwkv_fp16_table[rwkv_fp32_to_fp16(y.d[b])];
            y.s[b] = rwkv_fp16_table[rwkv_fp32_to_fp16(y.s[b])];
        }
        int32_t sum = 0;
        for (int j = 0; j < RWKV_QK; j++) sum += y.q[b][j];
        y.dsum[b] = y.d[b] * (float)sum;
    }
}

/* ---- row kernels -------------------------------------------------------------------------- */

/* Activation rows one call of a rows_dot kernel takes. */
#define ROWS_PER_CALL 32

/* The products' weight rows cut into chunks, numbered one product after another. */
typedef struct {
    const rwkv_product *products;
    int n;
    int64_t T;
    const uint8_t *act[RWKV_MAX_PRODUCTS]; /* each product's activations in its row kernel's format */
    size_t act_bytes[RWKV_MAX_PRODUCTS];
    int64_t chunk_rows[RWKV_MAX_PRODUCTS];
    long first_chunk[RWKV_MAX_PRODUCTS + 1];
} matvec_task;

static float *output_row(const rwkv_product *product, int64_t t) {
    return product->y_rows ? product->y_rows[t] : product->y + t * product->w->rows;
}

/* Each weight row of the chunk against every activation row, while the row is in L1. */
static void matvec_chunk(void *p, long chunk, int ith) {
    (void)ith;
    const matvec_task *task = p;
    int i = 0;
    while (chunk >= task->first_chunk[i + 1]) i++;
    const rwkv_product *product = &task->products[i];
    const rwkv_matrix *w = product->w;
    const rwkv_vec_dot_fn dot = rwkv_kernels.vec_dot[w->type];
    const rwkv_rows_dot_fn rows_dot = rwkv_kernels.rows_dot[w->type];
    const int64_t begin = (chunk - task->first_chunk[i]) * task->chunk_rows[i];
    const int64_t end = begin + task->chunk_rows[i] < w->rows ? begin + task->chunk_rows[i] : w->rows;
    const uint8_t *rows = w->data, *act = task->act[i];
    const size_t stride = task->act_bytes[i];
    if (task->T == 1) {
        float *y = output_row(product, 0);
        for (int64_t r = begin; r < end; r++) y[r] = dot(rows + (size_t)r * w->row_bytes, act, w->cols);
        return;
    }
    for (int64_t r = begin; r < end; r++) {
        const uint8_t *row = rows + (size_t)r * w->row_bytes;
        for (int64_t t0 = 0; t0 < task->T; t0 += ROWS_PER_CALL) {
            const int nt = task->T - t0 < ROWS_PER_CALL ? (int)(task->T - t0) : ROWS_PER_CALL;
            float out[ROWS_PER_CALL];
            if (rows_dot) rows_dot(row, act + (size_t)t0 * stride, stride, nt, w->cols, out);
            else
                for (int t = 0; t < nt; t++) out[t] = dot(row, act + (size_t)(t0 + t) * stride, w->cols);
            for (int t = 0; t < nt; t++) output_row(product, t0 + t)[r] = out[t];
        }
    }
}

/* Up to RWKV_MAX_PRODUCTS products in one parallel pass. */
static void matvecs(const rwkv_matmul_ctx *ctx, const rwkv_product *products, int n, int64_t T) {
    matvec_task task = {products, n, T, {0}, {0}, {0}, {0}};
    uint8_t *act = ctx->act;
    for (int i = 0; i < n; i++) {
        const rwkv_matrix *w = products[i].w;
        const int act_type = rwkv_traits(w->type)->act_type;
        /* About 8 chunks per thread: small enough to balance, big enough that claiming is cheap. */
        const int64_t per = w->rows / (8 * rwkv_pool_size(ctx->pool));
        task.chunk_rows[i] = w->rows * w->cols < SMALL_MATRIX ? w->rows : per < 16 ? 16 : (per + 15) / 16 * 16;
        task.first_chunk[i + 1] = task.first_chunk[i] + (long)((w->rows + task.chunk_rows[i] - 1) / task.chunk_rows[i]);
        if (act_type == RWKV_TYPE_FP32) {
            task.act[i] = (const uint8_t *)products[i].x;
            task.act_bytes[i] = (size_t)w->cols * sizeof(float);
            continue;
        }
        task.act[i] = act;
        task.act_bytes[i] = rwkv_act_row_bytes(act_type, w->cols);
        for (int64_t t = 0; t < T; t++, act += task.act_bytes[i])
            rwkv_act_from_float(act_type, products[i].x + t * w->cols, act, w->cols);
    }
    rwkv_pool_run(ctx->pool, task.first_chunk[n], matvec_chunk, &task);
}

/* ---- sequence mode -------------------------------------------------------------------------- */

typedef struct {
    const rwkv_matrix *w;
    rwkv_to_float_fn to_float; /* the weight type's decoder in use */
    const float *x;
    int64_t T;
    float *y;
    float *tiles;         /* TILE_ROWS rows of TILE_STRIDE floats per thread */
    int64_t xs, x_k_step; /* how the sequence-mode kernel steps through x: per token (or panel), per k */
} gemm_task;

/* One chunk is TILE_ROWS weight rows times every token of the chunk of tokens. */
static void gemm_chunk(void *p, long chunk, int ith) {
    const gemm_task *task = p;
    const rwkv_matrix *w = task->w;
    float *tile = task->tiles + (size_t)ith * TILE_ROWS * TILE_STRIDE;
    const int64_t r0 = chunk * TILE_ROWS;
    const int64_t nr = w->rows - r0 < TILE_ROWS ? w->rows - r0 : TILE_ROWS;
    for (int64_t k0 = 0; k0 < w->cols; k0 += TILE_K) {
        const int64_t nk = w->cols - k0 < TILE_K ? w->cols - k0 : TILE_K;
        const float *wt = tile;
        int64_t ws = TILE_STRIDE;
        if (w->type == RWKV_TYPE_FP32) { /* already floats: use the rows in place */
            wt = (const float *)w->data + r0 * w->cols + k0;
            ws = w->cols;
        } else {
            const size_t offset = rwkv_row_bytes(w->type, k0);
            for (int64_t r = 0; r < nr; r++)
                task->to_float((const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes + offset, tile + r * ws, nk);
        }
        rwkv_kernels.gemm.run(wt, ws, nr, task->x + k0 * task->x_k_step, task->xs, task->T, nk, task->y + r0, w->rows,
                              k0 > 0);
    }
}

typedef struct {
    const float *x;
    int64_t T, n;
    float *packed;
} pack_task;

static void pack_chunk(void *p, int64_t panel) {
    const pack_task *task = p;
    rwkv_kernels.gemm.pack(task->x, task->T, task->n, panel, task->packed);
}

static void gemm(const rwkv_matmul_ctx *ctx, const rwkv_matrix *w, const float *x, int64_t T, float *y) {
    gemm_task task = {w, rwkv_kernels.to_float[w->type], x, T, y, ctx->tiles, w->cols, 1};
    const int panel = rwkv_kernels.gemm.panel;
    if (panel > 0) { /* packed once here, read by every row tile */
        pack_task pack = {x, T, w->cols, ctx->panels};
        rwkv_parallel_for(ctx->pool, (T + panel - 1) / panel, pack_chunk, &pack);
        task.x = ctx->panels;
        task.xs = w->cols * panel;
        task.x_k_step = panel;
    }
    rwkv_pool_run(ctx->pool, (long)((w->rows + TILE_ROWS - 1) / TILE_ROWS), gemm_chunk, &task);
}

/* ---- the engine's entry points -------------------------------------------------------------- */

void rwkv_matmul(rwkv_model *m, const rwkv_matrix *w, const float *x, rwkv_rows rows, float *y) {
    const rwkv_product product = {w, x, y, NULL};
    rwkv_matmuls(m, &product, 1, rows);
}

void rwkv_matmuls(rwkv_model *m, const rwkv_product *products, int n, rwkv_rows rows) {
    const rwkv_matmul_ctx *ctx = &m->scratch.matmul;
    if (rows.by_row > 0)
        for (int i = 0; i < n; i += RWKV_MAX_PRODUCTS)
            matvecs(ctx, products + i, n - i < RWKV_MAX_PRODUCTS ? n - i : RWKV_MAX_PRODUCTS, rows.by_row);
    const int64_t rest = rows.T - rows.by_row;
    if (rest > 0)
        for (int i = 0; i < n; i++) {
            const rwkv_matrix *w = products[i].w;
            gemm(ctx, w, products[i].x + rows.by_row * w->cols, rest, products[i].y + rows.by_row * w->rows);
        }
}

/* ---- the portable micro-GEMM ---------------------------------------------------------------- */

void rwkv_gemm_f32_generic(const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt,
                           int64_t n, float *y, int64_t ys, int accumulate) {
    for (int64_t t = 0; t < nt; t++)
        for (int64_t r = 0; r < nr; r++) {
            const float d = rwkv_fp32_dot(w + r * ws, x + t * xs, n);
            y[t * ys + r] = accumulate ? y[t * ys + r] + d : d;
        }
}

void rwkv_gemm_tiled(rwkv_gemm_tile_fn tile, int rows, int tokens, int k_step, rwkv_gemm_f32_fn rest,
                     const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt, int64_t n,
                     float *y, int64_t ys, int accumulate) {
    if (n % k_step != 0) {
        rest(w, ws, nr, x, xs, nt, n, y, ys, accumulate);
        return;
    }
    const int64_t nr_tiled = nr - nr % rows, nt_tiled = nt - nt % tokens;
    for (int64_t t = 0; t < nt_tiled; t += tokens)
        for (int64_t r = 0; r < nr_tiled; r += rows) tile(w + r * ws, ws, x + t * xs, xs, n, y + t * ys + r, ys, accumulate);
    if (nr_tiled < nr) rest(w + nr_tiled * ws, ws, nr - nr_tiled, x, xs, nt_tiled, n, y + nr_tiled, ys, accumulate);
    if (nt_tiled < nt) rest(w, ws, nr, x + nt_tiled * xs, xs, nt - nt_tiled, n, y + nt_tiled * ys, ys, accumulate);
}

/* ---- the same paths for the kernel tests (rwkv_testing.h) ----------------------------------- */

/* Runs the product on one thread with scratch of its own: the row kernels when `by_row`, sequence
 * mode otherwise, whatever T is. */
static rwkv_status test_product(const rwkv_matrix *w, const float *x, int64_t T, float *y, int by_row) {
    rwkv_pool *pool = rwkv_pool_create(1);
    void *scratch = pool ? malloc(rwkv_matmul_scratch_bytes(pool, T, w->cols)) : NULL;
    if (scratch) {
        rwkv_matmul_ctx ctx;
        rwkv_matmul_scratch_carve(&ctx, pool, scratch, T, w->cols);
        const rwkv_product product = {w, x, y, NULL};
        if (by_row) matvecs(&ctx, &product, 1, T);
        else gemm(&ctx, w, x, T, y);
    }
    free(scratch);
    rwkv_pool_free(pool);
    return scratch ? RWKV_OK : RWKV_ERR_ALLOC;
}

rwkv_status rwkv_matmul_rows(int type_id, const void *w, int64_t rows, int64_t cols, const float *x, int64_t T,
                             float *y) {
    rwkv_dispatch_init();
    const rwkv_type_traits *t = rwkv_traits(type_id);
    if (!t || rows < 0 || cols < 0 || T <= 0 || cols % t->block_len != 0) return RWKV_ERR_ARGS;
    if (rows == 0) return RWKV_OK;
    const rwkv_matrix matrix = rwkv_matrix_at(w, type_id, rows, cols);
    return test_product(&matrix, x, T, y, 1);
}

rwkv_status rwkv_matvec(int type_id, const void *w, int64_t rows, int64_t cols, const float *x, float *y) {
    return rwkv_matmul_rows(type_id, w, rows, cols, x, 1, y);
}

rwkv_status rwkv_matmul_f32(const float *w, int64_t rows, int64_t cols, const float *x, int64_t T, float *y) {
    rwkv_dispatch_init();
    if (rows <= 0 || cols <= 0 || T <= 0) return RWKV_ERR_ARGS;
    const rwkv_matrix matrix = rwkv_matrix_at(w, RWKV_TYPE_FP32, rows, cols);
    return test_product(&matrix, x, T, y, 0);
}
