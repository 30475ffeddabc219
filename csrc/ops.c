#include "ops.h"

#include <string.h>

#include "types.h"

void rwkv_layer_norm(float *out, const float *x, const rwkv_norm *norm, int64_t T, int64_t C) {
    for (int64_t t = 0; t < T; t++, x += C, out += C) {
        float mean = 0.0f, var = 0.0f;
        for (int64_t i = 0; i < C; i++) mean += x[i];
        mean /= (float)C;
        for (int64_t i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
        const float inv = 1.0f / sqrtf(var / (float)C + 1e-5f);
        for (int64_t i = 0; i < C; i++) out[i] = (x[i] - mean) * inv * norm->weight[i] + norm->bias[i];
    }
}

void rwkv_group_norm(float *x, const rwkv_norm *norm, int64_t T, int64_t H, int64_t N, float eps) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            float *g = x + (t * H + h) * N;
            const float *w = norm->weight + h * N, *b = norm->bias + h * N;
            float mean = 0.0f, var = 0.0f;
            for (int64_t i = 0; i < N; i++) mean += g[i];
            mean /= (float)N;
            for (int64_t i = 0; i < N; i++) var += (g[i] - mean) * (g[i] - mean);
            const float inv = 1.0f / sqrtf(var / (float)N + eps);
            for (int64_t i = 0; i < N; i++) g[i] = (g[i] - mean) * inv * w[i] + b[i];
        }
}

void rwkv_token_shift(float *prev, const float *xx, float *state, int64_t T, int64_t C) {
    memcpy(prev, state, (size_t)C * sizeof(float));
    memcpy(prev + C, xx, (size_t)(T - 1) * (size_t)C * sizeof(float));
    memcpy(state, xx + (T - 1) * C, (size_t)C * sizeof(float));
}

void rwkv_lerp(float *out, const float *xx, const float *prev, const float *mix, int64_t T, int64_t C) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < C; i++) {
            int64_t j = t * C + i;
            out[j] = xx[j] * mix[i] + prev[j] * (1.0f - mix[i]);
        }
}

void rwkv_maa(float *out, const float *xx, const float *sx, const float *mix, const float *mix2, int64_t T,
              int64_t C) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < C; i++) {
            int64_t j = t * C + i;
            out[j] = xx[j] + sx[j] * (mix2 ? mix[i] + mix2[j] : mix[i]);
        }
}

void rwkv_lerp_projections(rwkv_model *m, const rwkv_layer *L, float *state_x, int64_t T) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed;
    float *xr = s->mix[0], *xk = s->mix[2], *xv = s->mix[3], *xg = s->mix[5];
    rwkv_layer_norm(s->xx, s->x, &L->ln1, T, C);
    rwkv_token_shift(s->prev, s->xx, state_x, T, C);
    rwkv_lerp(xk, s->xx, s->prev, L->mix_k, T, C);
    rwkv_lerp(xv, s->xx, s->prev, L->mix_v, T, C);
    rwkv_lerp(xr, s->xx, s->prev, L->mix_r, T, C);
    const rwkv_product products[4] = {
        {&L->receptance, xr, s->r}, {&L->key, xk, s->k}, {&L->value, xv, s->v}, {&L->gate, xg, s->g}};
    if (L->gate.data) rwkv_lerp(xg, s->xx, s->prev, L->mix_g, T, C);
    rwkv_matmuls(m, products, L->gate.data ? 4 : 3, T);
}

void rwkv_add(float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] += b[i];
}

void rwkv_sub(float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] -= b[i];
}

/* ---- threads -------------------------------------------------------------------------------- */

typedef struct {
    rwkv_item_fn fn;
    void *ctx;
} parallel_for_task;

static void parallel_for_chunk(void *p, long item, int ith) {
    (void)ith;
    parallel_for_task *task = p;
    task->fn(task->ctx, item);
}

void rwkv_parallel_for(rwkv_model *m, int64_t n, rwkv_item_fn fn, void *ctx) {
    parallel_for_task task = {fn, ctx};
    rwkv_pool_run(m->pool, (long)n, parallel_for_chunk, &task);
}

/* ---- the matrix product ------------------------------------------------------------------------ */

/* Decode (few tokens): one pass over the weights, each row dotted with the activations converted
 * once for the row kernel. Sequence mode: the weights are dequantized block by block into FP32
 * tiles that stay in cache while every token of the chunk passes over them. */
#define SMALL_MATRIX (64 * 1024) /* elements below which a product is one chunk of work */
#define TILE_ROWS RWKV_TILE_ROWS
#define TILE_K RWKV_TILE_K

typedef struct {
    const rwkv_matrix *w;
    const rwkv_type_traits *traits;
    const float *x;
    int64_t T;
    float *y;
    float *tiles;         /* TILE_ROWS rows of RWKV_TILE_STRIDE floats per thread */
    int64_t xs, x_k_step; /* how the sequence-mode kernel steps through x: per token (or panel), per k */
} matmul_task;

/* Decoding: the products' rows cut into chunks, numbered one product after another. */
typedef struct {
    const rwkv_product *products;
    int n;
    int64_t T;
    const uint8_t *act[RWKV_MAX_PRODUCTS]; /* each product's activations in its row kernel's format */
    size_t act_bytes[RWKV_MAX_PRODUCTS];
    int64_t chunk_rows[RWKV_MAX_PRODUCTS];
    long first_chunk[RWKV_MAX_PRODUCTS + 1];
} matvec_task;

static void matvec_chunk(void *p, long chunk, int ith) {
    (void)ith;
    const matvec_task *task = p;
    int i = 0;
    while (chunk >= task->first_chunk[i + 1]) i++;
    const rwkv_matrix *w = task->products[i].w;
    const rwkv_vec_dot_fn dot = rwkv_traits(w->type)->vec_dot;
    const int64_t begin = (chunk - task->first_chunk[i]) * task->chunk_rows[i];
    const int64_t end = begin + task->chunk_rows[i] < w->rows ? begin + task->chunk_rows[i] : w->rows;
    const uint8_t *rows = w->data;
    for (int64_t t = 0; t < task->T; t++) {
        const uint8_t *act = task->act[i] + (size_t)t * task->act_bytes[i];
        float *y = task->products[i].y + t * w->rows;
        for (int64_t r = begin; r < end; r++) y[r] = dot(rows + (size_t)r * w->row_bytes, act, w->cols);
    }
}

static void matvecs(rwkv_model *m, const rwkv_product *products, int n, int64_t T) {
    matvec_task task = {products, n, T, {0}, {0}, {0}, {0}};
    uint8_t *act = m->scratch.act;
    for (int i = 0; i < n; i++) {
        const rwkv_matrix *w = products[i].w;
        const int act_type = rwkv_traits(w->type)->act_type;
        /* About 8 chunks per thread: small enough to balance, big enough that claiming is cheap. */
        const int64_t per = w->rows / (8 * rwkv_pool_size(m->pool));
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
    rwkv_pool_run(m->pool, task.first_chunk[n], matvec_chunk, &task);
}

/* One chunk is TILE_ROWS weight rows times every token of the chunk of tokens. */
static void gemm_chunk(void *p, long chunk, int ith) {
    const matmul_task *task = p;
    const rwkv_matrix *w = task->w;
    const rwkv_type_traits *traits = task->traits;
    float *tile = task->tiles + (size_t)ith * TILE_ROWS * RWKV_TILE_STRIDE;
    const int64_t r0 = chunk * TILE_ROWS;
    const int64_t nr = w->rows - r0 < TILE_ROWS ? w->rows - r0 : TILE_ROWS;
    for (int64_t k0 = 0; k0 < w->cols; k0 += TILE_K) {
        const int64_t nk = w->cols - k0 < TILE_K ? w->cols - k0 : TILE_K;
        const float *wt = tile;
        int64_t ws = RWKV_TILE_STRIDE;
        if (w->type == RWKV_TYPE_FP32) { /* already floats: use the rows in place */
            wt = (const float *)w->data + r0 * w->cols + k0;
            ws = w->cols;
        } else {
            const size_t offset = rwkv_row_bytes(w->type, k0);
            for (int64_t r = 0; r < nr; r++)
                traits->to_float((const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes + offset, tile + r * ws, nk);
        }
        rwkv_gemm.run(wt, ws, nr, task->x + k0 * task->x_k_step, task->xs, task->T, nk, task->y + r0, w->rows, k0 > 0);
    }
}

typedef struct {
    const float *x;
    int64_t T, n;
    float *packed;
} pack_task;

static void pack_chunk(void *p, int64_t panel) {
    const pack_task *task = p;
    rwkv_gemm.pack(task->x, task->T, task->n, panel, task->packed);
}

void rwkv_matmul(rwkv_model *m, const rwkv_matrix *w, const float *x, int64_t T, float *y) {
    const rwkv_product product = {w, x, y};
    if (T <= RWKV_DECODE_MAX_TOKENS) {
        matvecs(m, &product, 1, T);
        return;
    }
    matmul_task task = {w, rwkv_traits(w->type), x, T, y, m->scratch.tiles, w->cols, 1};
    const int panel = rwkv_gemm.panel;
    if (panel > 0) { /* packed once here, read by every row tile */
        pack_task pack = {x, T, w->cols, m->scratch.panels};
        rwkv_parallel_for(m, (T + panel - 1) / panel, pack_chunk, &pack);
        task.x = m->scratch.panels;
        task.xs = w->cols * panel;
        task.x_k_step = panel;
    }
    rwkv_pool_run(m->pool, (long)((w->rows + TILE_ROWS - 1) / TILE_ROWS), gemm_chunk, &task);
}

void rwkv_matmuls(rwkv_model *m, const rwkv_product *products, int n, int64_t T) {
    if (T <= RWKV_DECODE_MAX_TOKENS) {
        for (int i = 0; i < n; i += RWKV_MAX_PRODUCTS)
            matvecs(m, products + i, n - i < RWKV_MAX_PRODUCTS ? n - i : RWKV_MAX_PRODUCTS, T);
        return;
    }
    for (int i = 0; i < n; i++) rwkv_matmul(m, products[i].w, products[i].x, T, products[i].y);
}
