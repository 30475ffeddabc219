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

void rwkv_add(float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] += b[i];
}

/* ---- threads -------------------------------------------------------------------------------- */

typedef struct {
    int64_t n;
    rwkv_item_fn fn;
    void *ctx;
} parallel_for_task;

static void parallel_for_worker(void *p, int ith, int nth) {
    parallel_for_task *task = p;
    long begin, end;
    rwkv_split((long)task->n, ith, nth, 1, &begin, &end);
    for (long i = begin; i < end; i++) task->fn(task->ctx, i);
}

void rwkv_parallel_for(rwkv_model *m, int64_t n, rwkv_item_fn fn, void *ctx) {
    parallel_for_task task = {n, fn, ctx};
    rwkv_pool_run(m->pool, parallel_for_worker, &task);
}

/* ---- the matrix product ------------------------------------------------------------------------ */

#define ROW_TILE 8   /* weight rows kept hot while a tile of tokens passes over them */
#define TOKEN_TILE 32

typedef struct {
    const rwkv_matrix *w;
    const rwkv_type_traits *traits;
    const uint8_t *act;
    size_t act_bytes;
    int64_t T;
    float *y;
} matmul_task;

static void matmul_worker(void *p, int ith, int nth) {
    const matmul_task *task = p;
    const rwkv_matrix *w = task->w;
    long begin, end;
    rwkv_split((long)w->rows, ith, nth, ROW_TILE, &begin, &end);
    const uint8_t *rows = w->data;
    for (int64_t t0 = 0; t0 < task->T; t0 += TOKEN_TILE) {
        int64_t nt = task->T - t0 < TOKEN_TILE ? task->T - t0 : TOKEN_TILE;
        const uint8_t *act = task->act + (size_t)t0 * task->act_bytes;
        float *y = task->y + t0 * w->rows;
        for (int64_t r0 = begin; r0 < end; r0 += ROW_TILE) {
            int64_t nr = end - r0 < ROW_TILE ? end - r0 : ROW_TILE;
            const uint8_t *row = rows + (size_t)r0 * w->row_bytes;
            if (task->traits->gemm_tile) {
                task->traits->gemm_tile(row, w->row_bytes, nr, act, task->act_bytes, nt, w->cols, y + r0, w->rows);
                continue;
            }
            for (int64_t t = 0; t < nt; t++)
                for (int64_t r = 0; r < nr; r++)
                    y[t * w->rows + r0 + r] =
                        task->traits->vec_dot(row + (size_t)r * w->row_bytes, act + (size_t)t * task->act_bytes, w->cols);
        }
    }
}

void rwkv_matmul(rwkv_model *m, const rwkv_matrix *w, const float *x, int64_t T, float *y) {
    const rwkv_type_traits *traits = rwkv_traits(w->type);
    matmul_task task = {w, traits, (const uint8_t *)x, (size_t)w->cols * sizeof(float), T, y};
    if (traits->act_type != RWKV_TYPE_FP32) {
        task.act_bytes = rwkv_act_row_bytes(traits->act_type, w->cols);
        for (int64_t t = 0; t < T; t++)
            rwkv_act_from_float(traits->act_type, x + t * w->cols, (uint8_t *)m->scratch.act + (size_t)t * task.act_bytes,
                                w->cols);
        task.act = m->scratch.act;
    }
    rwkv_pool_run(m->pool, matmul_worker, &task);
}
