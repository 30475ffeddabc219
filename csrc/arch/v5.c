/* RWKV v5 time mixing: multi-head linear attention with a matrix-valued state per head. */
#include <string.h>

#include "../ops.h"

RWKV_SIMD_CLONES static void wkv5_head(void *p, int64_t h) {
    enum { N = RWKV_HEAD_SIZE };
    const rwkv_wkv5_args *a = p;
    const int64_t C = a->H * N;
    float *S = a->state + h * N * N;
    for (int64_t t = 0; t < a->T; t++) {
        const float *r = a->r + t * C + h * N, *k = a->k + t * C + h * N, *v = a->v + t * C + h * N;
        const float *w = a->w + t * a->w_token_stride;
        float *y = a->y + t * C + h * N;
        memset(y, 0, (size_t)N * sizeof(float));
        for (int i = 0; i < N; i++) {
            const float ki = k[i], ri = r[i];
            const float ui = a->u_per_head ? a->u[h] : a->u[h * N + i];
            const float wi = a->w_per_head ? w[h] : w[h * N + i];
            float *Si = S + i * N;
#pragma omp simd
            for (int j = 0; j < N; j++) {
                const float kv = ki * v[j];
                y[j] += ri * (ui * kv + Si[j]);
                Si[j] = kv + wi * Si[j];
            }
        }
    }
}

void rwkv_wkv5(rwkv_model *m, const rwkv_wkv5_args *args) {
    rwkv_parallel_for(m, args->H, wkv5_head, (void *)args);
}

/* state: att previous-x (C), then the H x N x N wkv matrices */
void rwkv_time_mix_v5(rwkv_model *m, const rwkv_layer *L, float *state, int64_t T) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed, H = m->info.n_head, N = m->info.head_size;

    rwkv_lerp_projections(m, L, state, T);

    rwkv_wkv5_args wkv = {s->r, s->k, s->v, L->decay, L->first, L->decay_per_head, L->first_per_head, 0,
                          s->y, state + C, T, H};
    rwkv_wkv5(m, &wkv);
    rwkv_group_norm(s->y, &L->ln_x, T, H, N, 64e-5f);
    if (L->gate.data)
        for (int64_t i = 0; i < T * C; i++) s->y[i] *= rwkv_silu(s->g[i]);

    rwkv_matmul(m, &L->output, s->y, T, s->wkv_out);
    rwkv_add(s->x, s->wkv_out, T * C);
}
