/* Element-wise steps shared by the architectures. */
#include "ops.h"

#include <string.h>

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

typedef struct {
    float *out;
    const float *x;
    const rwkv_norm *norm;
    int64_t C;
} layer_norm_task;

static void layer_norm_row(void *p, int64_t t) {
    const layer_norm_task *task = p;
    rwkv_layer_norm(task->out + t * task->C, task->x + t * task->C, task->norm, 1, task->C);
}

void rwkv_layer_norm_rows(rwkv_pool *pool, float *out, const float *x, const rwkv_norm *norm, int64_t T, int64_t C) {
    layer_norm_task task = {out, x, norm, C};
    rwkv_parallel_for(pool, T, layer_norm_row, &task);
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

void rwkv_token_shift(float *prev, const float *xx, const rwkv_pass *pass, int64_t C) {
    const size_t row = (size_t)C * sizeof(float);
    for (int i = 0; i < pass->n_seg; i++) {
        const rwkv_segment *seg = &pass->seg[i];
        memcpy(prev + seg->start * C, seg->state, row);
        memcpy(prev + (seg->start + 1) * C, xx + seg->start * C, (size_t)(seg->len - 1) * row);
        memcpy(seg->state, xx + (seg->start + seg->len - 1) * C, row);
    }
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

void rwkv_sub(float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] -= b[i];
}

/* x * 0 is 0 for every finite x and NaN otherwise, so one vectorised sum tells whether there is
 * any; the search runs only then. */
int64_t rwkv_first_nonfinite(const float *v, size_t n) {
    float any = 0.0f;
#pragma omp simd reduction(+ : any)
    for (size_t i = 0; i < n; i++) any += v[i] * 0.0f;
    if (any == 0.0f) return -1;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return (int64_t)i;
    return -1;
}
