/* RWKV v6 time mixing: v5's recurrence with a data-dependent token shift and decay, both produced
 * by small low-rank networks (the "maa" and "decay" LoRAs). */
#include <string.h>

#include "shared.h"

typedef struct {
    const float *maa_x, *maa_w, *maa_k, *maa_v, *maa_r, *maa_g;
    rwkv_matrix maa_w1, maa_w2[5];
    const float *decay; /* time_decay, made data-dependent per token by the decay LoRA */
    rwkv_matrix decay_w1, decay_w2;
    const float *first; /* time_faaaa: the bonus u */
    rwkv_matrix gate;
    rwkv_norm ln_x;
} v6_att;

static int detect(const rwkv_file *file) { return rwkv_file_find(file, "blocks.0.att.time_maa_x") != NULL; }

static int load_att(rwkv_loader *ld, int i, void *att) {
    v6_att *A = att;
    rwkv_model *m = ld->model;
    const int64_t C = m->info.n_embed;
    TRY(rwkv_want_vector(ld, i, "att.time_maa_x", C, &A->maa_x));
    TRY(rwkv_want_vector(ld, i, "att.time_maa_w", C, &A->maa_w));
    TRY(rwkv_want_vector(ld, i, "att.time_maa_k", C, &A->maa_k));
    TRY(rwkv_want_vector(ld, i, "att.time_maa_v", C, &A->maa_v));
    TRY(rwkv_want_vector(ld, i, "att.time_maa_r", C, &A->maa_r));
    TRY(rwkv_want_vector(ld, i, "att.time_maa_g", C, &A->maa_g));
    TRY(rwkv_want_matrix(ld, i, "att.time_maa_w1", 0, C, &A->maa_w1));
    if (A->maa_w1.rows % 5 != 0)
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                         "%s: tensor 'blocks.%d.att.time_maa_w1' has %lld outputs; expected a multiple of 5",
                         m->path, i, (long long)A->maa_w1.rows);
    TRY(rwkv_want_matrices(ld, i, "att.time_maa_w2", 5, C, A->maa_w1.rows / 5, A->maa_w2));
    TRY(rwkv_want_vector(ld, i, "att.time_decay", C, &A->decay));
    TRY(rwkv_want_matrix(ld, i, "att.time_decay_w1", 0, C, &A->decay_w1));
    TRY(rwkv_want_either_way(ld, i, "att.time_decay_w2", C, A->decay_w1.rows, &A->decay_w2));
    TRY(rwkv_want_vector(ld, i, "att.time_faaaa", C, &A->first));
    TRY(rwkv_want_matrix(ld, i, "att.gate.weight", C, C, &A->gate));
    TRY(rwkv_want_norm(ld, i, "att.ln_x", C, &A->ln_x));
    rwkv_note_lora(ld, A->maa_w1.rows);
    rwkv_note_lora(ld, A->decay_w1.rows);
    return RWKV_OK;
}

/* state: att previous-x (C), then the H x N x N wkv matrices */
static void time_mix(rwkv_model *m, const rwkv_layer *L, int layer, const rwkv_pass *pass) {
    (void)layer;
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed, H = m->info.n_head, N = m->info.head_size, T = pass->rows.T;
    const rwkv_rows rows = pass->rows;
    const v6_att *A = L->att;
    const int64_t D = A->maa_w1.rows / 5;
    float *sx = s->prev;

    rwkv_layer_norm(s->xx, s->x, &L->ln1, T, C);
    rwkv_token_shift(s->prev, s->xx, pass, C);
    rwkv_sub(sx, s->xx, T * C);

    /* five data-dependent mixes from one shared projection: w, k, v, r, g in that order */
    rwkv_maa(s->mix[4], s->xx, sx, A->maa_x, NULL, T, C);
    rwkv_matmul(m, &A->maa_w1, s->mix[4], rows, s->lora[0]);
    for (int64_t i = 0; i < T * 5 * D; i++) s->lora[0][i] = tanhf(s->lora[0][i]);
    const float *base[5] = {A->maa_w, A->maa_k, A->maa_v, A->maa_r, A->maa_g};
    float *target[5] = {s->mix[1], s->mix[2], s->mix[3], s->mix[0], s->mix[5]};
    for (int j = 0; j < 5; j++) {
        for (int64_t t = 0; t < T; t++)
            memcpy(s->lora[1] + t * D, s->lora[0] + t * 5 * D + j * D, (size_t)D * sizeof(float));
        rwkv_matmul(m, &A->maa_w2[j], s->lora[1], rows, s->wkv_out);
        rwkv_maa(target[j], s->xx, sx, base[j], s->wkv_out, T, C);
    }

    const rwkv_product products[5] = {{&L->receptance, s->mix[0], s->r, NULL},
                                      {&L->key, s->mix[2], s->k, NULL},
                                      {&L->value, s->mix[3], s->v, NULL},
                                      {&A->gate, s->mix[5], s->g, NULL},
                                      {&A->decay_w1, s->mix[1], s->lora[0], NULL}};
    rwkv_matmuls(m, products, 5, rows);
    for (int64_t i = 0; i < T * A->decay_w1.rows; i++) s->lora[0][i] = tanhf(s->lora[0][i]);
    rwkv_matmul(m, &A->decay_w2, s->lora[0], rows, s->w);
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < C; i++) s->w[t * C + i] = expf(-expf(A->decay[i] + s->w[t * C + i]));

    rwkv_wkv5_args wkv = {s->r, s->k, s->v, s->w, A->first, 0, 0, C, s->y, pass, H, N};
    rwkv_wkv5(m, &wkv);
    rwkv_group_norm(s->y, &A->ln_x, T, H, N, 64e-5f);
    for (int64_t i = 0; i < T * C; i++) s->y[i] *= rwkv_silu(s->g[i]);

    rwkv_matmul(m, &L->output, s->y, rows, s->wkv_out);
    rwkv_add(s->x, s->wkv_out, T * C);
}

const rwkv_arch_ops rwkv_arch_v6 = {
    .name = "v6",
    .detect = detect,
    .head_tensor = "att.time_decay",
    .att_size = sizeof(v6_att),
    .load_att = load_att,
    .att_state_floats = rwkv_wkv_state_floats,
    .time_mix = time_mix,
    .channel_mix = {.mix_k = "ffn.time_maa_k", .mix_r = "ffn.time_maa_r"},
};
