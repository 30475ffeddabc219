/* RWKV v4 time mixing: a per-channel weighted average of past values, kept in a numerically safe
 * form (aa, bb scaled by exp(-pp)) so that exp never overflows. */
#include "../ops.h"

typedef struct {
    const rwkv_layer *L;
    const float *k, *v, *r;
    float *y, *aa, *bb, *pp;
    int64_t T, C;
} wkv4_task;

static void wkv4_channel(void *p, int64_t c) {
    wkv4_task *a = p;
    float aa = a->aa[c], bb = a->bb[c], pp = a->pp[c];
    const float first = a->L->first[c], decay = a->L->decay[c];
    for (int64_t t = 0; t < a->T; t++) {
        const int64_t j = t * a->C + c;
        const float k = a->k[j], v = a->v[j];
        float ww = first + k, p = fmaxf(pp, ww);
        float e1 = expf(pp - p), e2 = expf(ww - p);
        a->y[j] = rwkv_sigmoid(a->r[j]) * (e1 * aa + e2 * v) / (e1 * bb + e2);
        ww = decay + pp;
        p = fmaxf(ww, k);
        e1 = expf(ww - p);
        e2 = expf(k - p);
        aa = e1 * aa + e2 * v;
        bb = e1 * bb + e2;
        pp = p;
    }
    a->aa[c] = aa;
    a->bb[c] = bb;
    a->pp[c] = pp;
}

/* state: att previous-x, aa, bb, pp (C each) */
void rwkv_time_mix_v4(rwkv_model *m, const rwkv_layer *L, float *state, int64_t T) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed;

    rwkv_lerp_projections(m, L, state, T);

    wkv4_task task = {L, s->k, s->v, s->r, s->y, state + C, state + 2 * C, state + 3 * C, T, C};
    rwkv_parallel_for(m, C, wkv4_channel, &task);

    rwkv_matmul(m, &L->output, s->y, T, s->wkv_out);
    rwkv_add(s->x, s->wkv_out, T * C);
}
