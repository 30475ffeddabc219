/* Channel mixing (the feed-forward block), the same idea in every version:
 * k = relu(W_k mix(x))^2, out = W_v k, gated by sigmoid(W_r mix(x)) before v7. */
#include "shared.h"

int rwkv_load_channel_mix(rwkv_loader *ld, int i, rwkv_channel_mix_weights *ffn) {
    rwkv_model *m = ld->model;
    const rwkv_channel_mix_kind *kind = &m->arch->channel_mix;
    const int64_t C = m->info.n_embed;
    TRY(rwkv_want_matrix(ld, i, "ffn.key.weight", m->info.n_ffn, C, &ffn->key));
    m->info.n_ffn = (int32_t)ffn->key.rows;
    TRY(rwkv_want_matrix(ld, i, "ffn.value.weight", C, m->info.n_ffn, &ffn->value));
    TRY(rwkv_want_vector(ld, i, kind->mix_k, C, &ffn->mix_k));
    if (!kind->mix_r) return RWKV_OK;
    TRY(rwkv_want_vector(ld, i, kind->mix_r, C, &ffn->mix_r));
    return rwkv_want_matrix(ld, i, "ffn.receptance.weight", C, C, &ffn->receptance);
}

/* The per-token steps (split across the threads as arch/shared.h says): the mixes of the key's
 * (and the gate's) input, the key's squared ReLU, and the residual add through the gate. */
typedef struct {
    const rwkv_channel_mix_weights *W;
    rwkv_scratch *s;
    int64_t C, F;
    int lerp;
} ffn_tokens;

static void mix_token(void *p, int64_t t) {
    const ffn_tokens *c = p;
    const rwkv_channel_mix_weights *W = c->W;
    rwkv_scratch *s = c->s;
    const int64_t C = c->C, o = t * C;
    const int gated = W->receptance.data != NULL;
    float *xk = s->mix[2] + o, *xr = s->mix[0] + o, *prev = s->prev + o;
    const float *xx = s->xx + o;
    if (c->lerp) {
        rwkv_lerp(xk, xx, prev, W->mix_k, 1, C);
        if (gated) rwkv_lerp(xr, xx, prev, W->mix_r, 1, C);
    } else {
        const float *mix[2] = {W->mix_k, W->mix_r};
        float *const out[2] = {s->mix[2], s->mix[0]};
        rwkv_shift_mixes(s, t, C, gated ? 2 : 1, mix, out);
    }
}

static void square_token(void *p, int64_t t) {
    const ffn_tokens *c = p;
    float *k = c->s->ffn + t * c->F;
    for (int64_t i = 0; i < c->F; i++) k[i] = k[i] > 0.0f ? k[i] * k[i] : 0.0f;
}

static void residual_token(void *p, int64_t t) {
    const ffn_tokens *c = p;
    const rwkv_channel_mix_weights *W = c->W;
    rwkv_scratch *s = c->s;
    const int64_t C = c->C, o = t * C;
    float *x = s->x + o;
    const float *y = s->y + o, *r = s->r + o;
    if (!W->receptance.data) {
        rwkv_add(x, y, C);
        return;
    }
    for (int64_t i = 0; i < C; i++) x[i] += rwkv_sigmoid(r[i]) * y[i];
}

void rwkv_channel_mix(rwkv_model *m, const rwkv_layer *L, const rwkv_pass *pass) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed, T = pass->rows.T;
    const rwkv_channel_mix_weights *W = &L->ffn;
    ffn_tokens tokens = {W, s, C, m->info.n_ffn, m->arch->channel_mix.lerp};
    void *ctx = &tokens;

    rwkv_layer_norm_rows(m->pool, s->xx, s->x, &L->ln2, T, C);
    rwkv_token_shift(s->prev, s->xx, pass, C);
    rwkv_parallel_for(m->pool, T, mix_token, ctx);

    /* with a gate, its product is independent of the key's: one pass for both */
    const rwkv_product products[2] = {{&W->key, s->mix[2], s->ffn, NULL}, {&W->receptance, s->mix[0], s->r, NULL}};
    rwkv_matmuls(m, products, W->receptance.data ? 2 : 1, pass->rows);
    rwkv_parallel_for(m->pool, T, square_token, ctx);
    rwkv_matmul(m, &W->value, s->ffn, pass->rows, s->y);
    rwkv_parallel_for(m->pool, T, residual_token, ctx);
}
