/* RWKV v4 time mixing: a per-channel weighted average of past values, kept in a numerically safe
 * form (aa, bb scaled by exp(-pp)) so that exp never overflows. */
#include "shared.h"

typedef struct {
    rwkv_lerp_mix mix;
    const float *decay, *first; /* per channel; the file stores decay as -exp(time_decay) */
} v4_att;

/* ---- the lerped inputs, which v5 keeps ------------------------------------------------------- */

int rwkv_load_lerp_mix(rwkv_loader *ld, int i, rwkv_lerp_mix *mix) {
    const int64_t C = ld->model->info.n_embed;
    TRY(rwkv_want_vector(ld, i, "att.time_mix_k", C, &mix->k));
    TRY(rwkv_want_vector(ld, i, "att.time_mix_v", C, &mix->v));
    return rwkv_want_vector(ld, i, "att.time_mix_r", C, &mix->r);
}

int rwkv_load_lerp_gate(rwkv_loader *ld, int i, rwkv_lerp_mix *mix) {
    const int64_t C = ld->model->info.n_embed;
    if (!rwkv_has_tensor(ld, i, "att.gate.weight")) return RWKV_OK;
    TRY(rwkv_want_vector(ld, i, "att.time_mix_g", C, &mix->g));
    return rwkv_want_matrix(ld, i, "att.gate.weight", C, C, &mix->gate);
}

static void lerp_token(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const rwkv_lerp_mix *mix = c->weights;
    rwkv_scratch *s = c->s;
    const int64_t C = c->C, o = t * C;
    const float *xx = s->xx + o, *prev = s->prev + o;
    rwkv_lerp(s->mix[2] + o, xx, prev, mix->k, 1, C);
    rwkv_lerp(s->mix[3] + o, xx, prev, mix->v, 1, C);
    rwkv_lerp(s->mix[0] + o, xx, prev, mix->r, 1, C);
    if (mix->gate.data) rwkv_lerp(s->mix[5] + o, xx, prev, mix->g, 1, C);
}

void rwkv_lerp_projections(rwkv_model *m, const rwkv_layer *L, const rwkv_lerp_mix *mix, const rwkv_pass *pass) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed, T = pass->rows.T;
    rwkv_layer_norm_rows(m->pool, s->xx, s->x, &L->ln1, T, C);
    rwkv_token_shift(s->prev, s->xx, pass, C);
    const rwkv_tokens tokens = rwkv_tokens_of(m, L, mix, 0, pass);
    rwkv_parallel_for(m->pool, T, lerp_token, (void *)&tokens);
    const rwkv_product products[4] = {{&L->receptance, s->mix[0], s->r, NULL},
                                      {&L->key, s->mix[2], s->k, NULL},
                                      {&L->value, s->mix[3], s->v, NULL},
                                      {&mix->gate, s->mix[5], s->g, NULL}};
    rwkv_matmuls(m, products, mix->gate.data ? 4 : 3, pass->rows);
}

/* ---- v4 ------------------------------------------------------------------------------------- */

static int load_att(rwkv_loader *ld, int i, void *att) {
    v4_att *A = att;
    const int64_t C = ld->model->info.n_embed;
    TRY(rwkv_load_lerp_mix(ld, i, &A->mix));
    TRY(rwkv_want_vector(ld, i, "att.time_decay", C, &A->decay));
    TRY(rwkv_want_vector(ld, i, "att.time_first", C, &A->first));
    return rwkv_load_lerp_gate(ld, i, &A->mix);
}

/* state: att previous-x, aa, bb, pp (C each) */
static size_t att_state_floats(const rwkv_model_info *info) { return 4 * (size_t)info->n_embed; }

static void init_att_state(const rwkv_model_info *info, float *state) {
    const size_t C = (size_t)info->n_embed;
    for (size_t c = 0; c < C; c++) state[3 * C + c] = -1e30f; /* pp */
}

typedef struct {
    const v4_att *A;
    const float *k, *v, *r;
    float *y;
    const rwkv_pass *pass;
    int64_t C;
} wkv4_task;

/* One channel of one segment: items are segment * C + channel. */
static void wkv4_channel(void *p, int64_t item) {
    const wkv4_task *a = p;
    const int64_t C = a->C, c = item % C;
    const rwkv_segment *seg = &a->pass->seg[item / C];
    float *aa = seg->state + C + c, *bb = aa + C, *pp = bb + C; /* after the previous x */
    float sa = *aa, sb = *bb, sp = *pp;
    const float first = a->A->first[c], decay = a->A->decay[c];
    for (int64_t t = seg->start; t < seg->start + seg->len; t++) {
        const int64_t j = t * C + c;
        const float k = a->k[j], v = a->v[j];
        float ww = first + k, q = fmaxf(sp, ww);
        float e1 = expf(sp - q), e2 = expf(ww - q);
        a->y[j] = rwkv_sigmoid(a->r[j]) * (e1 * sa + e2 * v) / (e1 * sb + e2);
        ww = decay + sp;
        q = fmaxf(ww, k);
        e1 = expf(ww - q);
        e2 = expf(k - q);
        sa = e1 * sa + e2 * v;
        sb = e1 * sb + e2;
        sp = q;
    }
    *aa = sa;
    *bb = sb;
    *pp = sp;
}

static void time_mix(rwkv_model *m, const rwkv_layer *L, int layer, const rwkv_pass *pass) {
    (void)layer;
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed;
    const v4_att *A = L->att;

    rwkv_lerp_projections(m, L, &A->mix, pass);

    wkv4_task task = {A, s->k, s->v, s->r, s->y, pass, C};
    rwkv_parallel_for(m->pool, pass->n_seg * C, wkv4_channel, &task);

    rwkv_matmul(m, &L->output, s->y, pass->rows, s->wkv_out);
    rwkv_add(s->x, s->wkv_out, pass->rows.T * C);
}

const rwkv_arch_ops rwkv_arch_v4 = {
    .name = "v4", /* no detect: the first version */
    .att_size = sizeof(v4_att),
    .load_att = load_att,
    .att_state_floats = att_state_floats,
    .init_att_state = init_att_state,
    .time_mix = time_mix,
    .channel_mix = {.mix_k = "ffn.time_mix_k", .mix_r = "ffn.time_mix_r", .lerp = 1},
};
