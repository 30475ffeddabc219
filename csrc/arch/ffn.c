/* Channel mixing (the feed-forward block), the same idea in every version:
 * k = relu(W_k mix(x))^2, out = W_v k, gated by sigmoid(W_r mix(x)) before v7. */
#include "../ops.h"

void rwkv_channel_mix(rwkv_model *m, const rwkv_layer *L, float *state_x, int64_t T) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed, F = m->info.n_ffn;
    const rwkv_arch arch = m->info.arch;
    float *xk = s->mix[2], *xr = s->mix[0];

    rwkv_layer_norm(s->xx, s->x, &L->ln2, T, C);
    rwkv_token_shift(s->prev, s->xx, state_x, T, C);
    if (arch == RWKV_ARCH_V6 || arch == RWKV_ARCH_V7) {
        rwkv_sub(s->prev, s->xx, T * C);
        rwkv_maa(xk, s->xx, s->prev, L->ffn_mix_k, NULL, T, C);
        if (arch == RWKV_ARCH_V6) rwkv_maa(xr, s->xx, s->prev, L->ffn_mix_r, NULL, T, C);
    } else {
        rwkv_lerp(xk, s->xx, s->prev, L->ffn_mix_k, T, C);
        rwkv_lerp(xr, s->xx, s->prev, L->ffn_mix_r, T, C);
    }

    /* before v7 the gate's product is independent of the key's: one pass for both */
    const rwkv_product products[2] = {{&L->ffn_key, xk, s->ffn}, {&L->ffn_receptance, xr, s->r}};
    rwkv_matmuls(m, products, arch == RWKV_ARCH_V7 ? 1 : 2, T);
    float *ffn = s->ffn; /* a local pointer: through s, every store might move s->ffn */
    for (int64_t i = 0; i < T * F; i++) ffn[i] = ffn[i] > 0.0f ? ffn[i] * ffn[i] : 0.0f;
    rwkv_matmul(m, &L->ffn_value, s->ffn, T, s->y);
    if (arch == RWKV_ARCH_V7) {
        rwkv_add(s->x, s->y, T * C);
        return;
    }
    for (int64_t i = 0; i < T * C; i++) s->x[i] += rwkv_sigmoid(s->r[i]) * s->y[i];
}
