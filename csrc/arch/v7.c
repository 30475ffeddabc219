/* RWKV v7 ("Goose") time mixing: the state is updated by a generalised delta rule,
 * S = S diag(w) - (S kk) (kk * a)^T + v k^T, read out with r. */
#include <string.h>

#include "../ops.h"

typedef struct {
    const float *r, *w, *k, *v, *kk, *a;
    float *y, *state;
    int64_t T, H;
} wkv7_task;

RWKV_SIMD_CLONES static void wkv7_head(void *p, int64_t h) {
    enum { N = RWKV_HEAD_SIZE };
    const wkv7_task *a = p;
    const int64_t C = a->H * N;
    float *S = a->state + h * N * N; /* [value i][key j] */
    float b[N];                      /* kk * a for one head */
    for (int64_t t = 0; t < a->T; t++) {
        const int64_t o = t * C + h * N;
        const float *r = a->r + o, *w = a->w + o, *k = a->k + o, *v = a->v + o, *kk = a->kk + o, *aa = a->a + o;
        for (int j = 0; j < N; j++) b[j] = kk[j] * aa[j];
        for (int i = 0; i < N; i++) {
            float *Si = S + i * N;
            const float vi = v[i];
            float sa = 0.0f, y = 0.0f;
#pragma omp simd reduction(+ : sa)
            for (int j = 0; j < N; j++) sa += Si[j] * kk[j];
#pragma omp simd reduction(+ : y)
            for (int j = 0; j < N; j++) {
                Si[j] = Si[j] * w[j] - sa * b[j] + vi * k[j];
                y += Si[j] * r[j];
            }
            a->y[o + i] = y;
        }
    }
}

/* state: att previous-x (C), then the H x N x N wkv matrices */
void rwkv_time_mix_v7(rwkv_model *m, const rwkv_layer *L, int layer, float *state, int64_t T) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed, H = m->info.n_head, N = m->info.head_size;
    float *sx = s->prev;

    rwkv_layer_norm(s->xx, s->x, &L->ln1, T, C);
    rwkv_token_shift(s->prev, s->xx, state, T, C);
    rwkv_sub(sx, s->xx, T * C);
    for (int j = 0; j < 6; j++) rwkv_maa(s->mix[j], s->xx, sx, L->x_rwkvag + j * C, NULL, T, C);

    /* The projections and the low-rank networks' first halves, then their second halves: two
     * passes. The value residual's network (every layer but the first) goes along. */
    const int value_lora = layer > 0;
    float **h = s->lora;
    const rwkv_product down[7] = {{&L->receptance, s->mix[0], s->r}, {&L->key, s->mix[2], s->k},
                                  {&L->value, s->mix[3], s->v},      {&L->w1, s->mix[1], h[0]},
                                  {&L->a1, s->mix[4], h[1]},         {&L->g1, s->mix[5], h[2]},
                                  {&L->v1, s->mix[3], h[3]}};
    rwkv_matmuls(m, down, 6 + value_lora, T);
    for (int64_t i = 0; i < T * L->w1.rows; i++) h[0][i] = tanhf(h[0][i]);
    for (int64_t i = 0; i < T * L->g1.rows; i++) h[2][i] = rwkv_sigmoid(h[2][i]);
    const rwkv_product up[4] = {{&L->w2, h[0], s->w}, {&L->a2, h[1], s->a}, {&L->g2, h[2], s->g}, {&L->v2, h[3], s->wkv_out}};
    rwkv_matmuls(m, up, 3 + value_lora, T);

    float *a = s->a, *k = s->k, *kk = s->kk, *w = s->w; /* locals: stores through s could alias s's fields */
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < C; i++) {
            const int64_t j = t * C + i;
            a[j] = rwkv_sigmoid(L->a0[i] + a[j]);
            kk[j] = k[j] * L->k_k[i];
            k[j] = k[j] * (1.0f + (a[j] - 1.0f) * L->k_a[i]);
            w[j] = expf(-0.606531f * rwkv_sigmoid(L->w0[i] + w[j]));
        }
    for (int64_t g = 0; g < T * H; g++) { /* kk: unit length per head */
        float *row = kk + g * N, norm = 0.0f;
        for (int64_t i = 0; i < N; i++) norm += row[i] * row[i];
        norm = fmaxf(sqrtf(norm), 1e-12f);
        for (int64_t i = 0; i < N; i++) row[i] /= norm;
    }
    /* value residual: every layer mixes in the first layer's values */
    if (layer == 0) {
        memcpy(s->v_first, s->v, (size_t)(T * C) * sizeof(float));
    } else {
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < C; i++) {
                const int64_t j = t * C + i;
                s->v[j] += (s->v_first[j] - s->v[j]) * rwkv_sigmoid(L->v0[i] + s->wkv_out[j]);
            }
    }

    wkv7_task task = {s->r, s->w, s->k, s->v, s->kk, s->a, s->y, state + C, T, H};
    rwkv_parallel_for(m, H, wkv7_head, &task);
    rwkv_group_norm(s->y, &L->ln_x, T, H, N, 64e-5f);

    float *y = s->y;
    const float *r = s->r, *v = s->v, *gate = s->g;
    for (int64_t g = 0; g < T * H; g++) { /* a per-head bonus for the current token */
        const int64_t o = g * N, h = g % H;
        float rk = 0.0f;
        for (int64_t i = 0; i < N; i++) rk += r[o + i] * k[o + i] * L->r_k[h * N + i];
        for (int64_t i = 0; i < N; i++) y[o + i] += rk * v[o + i];
    }
    for (int64_t i = 0; i < T * C; i++) y[i] *= gate[i];

    rwkv_matmul(m, &L->output, s->y, T, s->wkv_out);
    rwkv_add(s->x, s->wkv_out, T * C);
}
