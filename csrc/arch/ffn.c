/* Channel mixing (the feed-forward block), the same idea in every version:
 * k = relu(W_k mix(x))^2, out = W_v k, gated by sigmoid(W_r mix(x)) before v7. */
#include "../ops.h"
#include "arch.h"

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

void rwkv_channel_mix(rwkv_model *m, const rwkv_layer *L, const rwkv_pass *pass) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed, F = m->info.n_ffn, T = pass->rows.T;
    const rwkv_channel_mix_weights *W = &L->ffn;
    const int lerp = m->arch->channel_mix.lerp, gated = W->receptance.data != NULL;
    float *xk = s->mix[2], *xr = s->mix[0];

    rwkv_layer_norm(s->xx, s->x, &L->ln2, T, C);
    rwkv_token_shift(s->prev, s->xx, pass, C);
    if (lerp) {
        rwkv_lerp(xk, s->xx, s->prev, W->mix_k, T, C);
        if (gated) rwkv_lerp(xr, s->xx, s->prev, W->mix_r, T, C);
    } else {
        rwkv_sub(s->prev, s->xx, T * C);
        rwkv_maa(xk, s->xx, s->prev, W->mix_k, NULL, T, C);
        if (gated) rwkv_maa(xr, s->xx, s->prev, W->mix_r, NULL, T, C);
    }

    /* with a gate, its product is independent of the key's: one pass for both */
    const rwkv_product products[2] = {{&W->key, xk, s->ffn, NULL}, {&W->receptance, xr, s->r, NULL}};
    rwkv_matmuls(m, products, gated ? 2 : 1, pass->rows);
    float *ffn = s->ffn; /* a local pointer: through s, every store might move s->ffn */
    for (int64_t i = 0; i < T * F; i++) ffn[i] = ffn[i] > 0.0f ? ffn[i] * ffn[i] : 0.0f;
    rwkv_matmul(m, &W->value, s->ffn, pass->rows, s->y);
    if (!gated) {
        rwkv_add(s->x, s->y, T * C);
        return;
    }
    for (int64_t i = 0; i < T * C; i++) s->x[i] += rwkv_sigmoid(s->r[i]) * s->y[i];
}
