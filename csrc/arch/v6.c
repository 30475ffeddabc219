/* RWKV v6 time mixing: v5's recurrence with a data-dependent token shift and decay, both produced
 * by small low-rank networks (the "maa" and "decay" LoRAs). */
#include <string.h>

#include "../ops.h"

/* state: att previous-x (C), then the H x N x N wkv matrices */
void rwkv_time_mix_v6(rwkv_model *m, const rwkv_layer *L, float *state, int64_t T) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed, H = m->info.n_head, N = m->info.head_size;
    const int64_t D = L->maa_w1.rows / 5;
    float *sx = s->prev;

    rwkv_layer_norm(s->xx, s->x, &L->ln1, T, C);
    rwkv_token_shift(s->prev, s->xx, state, T, C);
    rwkv_sub(sx, s->xx, T * C);

    /* five data-dependent mixes from one shared projection: w, k, v, r, g in that order */
    rwkv_maa(s->mix[4], s->xx, sx, L->maa_x, NULL, T, C);
    rwkv_matmul(m, &L->maa_w1, s->mix[4], T, s->lora[0]);
    for (int64_t i = 0; i < T * 5 * D; i++) s->lora[0][i] = tanhf(s->lora[0][i]);
    const float *base[5] = {L->maa_w, L->maa_k, L->maa_v, L->maa_r, L->maa_g};
    float *target[5] = {s->mix[1], s->mix[2], s->mix[3], s->mix[0], s->mix[5]};
    for (int j = 0; j < 5; j++) {
        for (int64_t t = 0; t < T; t++)
            memcpy(s->lora[1] + t * D, s->lora[0] + t * 5 * D + j * D, (size_t)D * sizeof(float));
        rwkv_matmul(m, &L->maa_w2[j], s->lora[1], T, s->wkv_out);
        rwkv_maa(target[j], s->xx, sx, base[j], s->wkv_out, T, C);
    }

    const rwkv_product products[5] = {{&L->receptance, s->mix[0], s->r},
                                      {&L->key, s->mix[2], s->k},
                                      {&L->value, s->mix[3], s->v},
                                      {&L->gate, s->mix[5], s->g},
                                      {&L->decay_w1, s->mix[1], s->lora[0]}};
    rwkv_matmuls(m, products, 5, T);
    for (int64_t i = 0; i < T * L->decay_w1.rows; i++) s->lora[0][i] = tanhf(s->lora[0][i]);
    rwkv_matmul(m, &L->decay_w2, s->lora[0], T, s->w);
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < C; i++) s->w[t * C + i] = expf(-expf(L->decay[i] + s->w[t * C + i]));

    rwkv_wkv5_args wkv = {s->r, s->k, s->v, s->w, L->first, 0, 0, C, s->y, state + C, T, H};
    rwkv_wkv5(m, &wkv);
    rwkv_group_norm(s->y, &L->ln_x, T, H, N, 64e-5f);
    for (int64_t i = 0; i < T * C; i++) s->y[i] *= rwkv_silu(s->g[i]);

    rwkv_matmul(m, &L->output, s->y, T, s->wkv_out);
    rwkv_add(s->x, s->wkv_out, T * C);
}
