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

/* The per-token steps, in the order time_mix runs them. */

/* The shift's difference sx (in prev) and the input of the shared mix network. */
static void shift_token(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const v6_att *A = c->weights;
    rwkv_shift_mixes(c->s, t, c->C, 1, &A->maa_x, &c->s->mix[4]);
}

/* tanh of the shared network's hidden layer (T x 5D in lora[0]), laid out for the five up
 * projections: hidden j of token t goes to lora[1] + (j * T + t) * D. */
static void split_mix_hidden(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const v6_att *A = c->weights;
    rwkv_scratch *s = c->s;
    const int64_t D = A->maa_w1.rows / 5, T = c->T;
    const float *h = s->lora[0] + t * 5 * D;
    for (int64_t j = 0; j < 5; j++) {
        float *out = s->lora[1] + (j * T + t) * D;
        for (int64_t i = 0; i < D; i++) out[i] = tanhf(h[j * D + i]);
    }
}

/* The five mixes, each in its buffer where the up projection left its data-dependent part:
 * mix = xx + sx * (base + lora). */
static void mix_token(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const v6_att *A = c->weights;
    rwkv_scratch *s = c->s;
    const int64_t C = c->C, o = t * C;
    const float *base[5] = {A->maa_w, A->maa_k, A->maa_v, A->maa_r, A->maa_g};
    float *target[5] = {s->mix[1], s->mix[2], s->mix[3], s->mix[0], s->mix[5]};
    for (int j = 0; j < 5; j++) rwkv_maa(target[j] + o, s->xx + o, s->prev + o, base[j], target[j] + o, 1, C);
}

static void decay_hidden_token(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const v6_att *A = c->weights;
    const int64_t D = A->decay_w1.rows;
    float *h = c->s->lora[0] + t * D;
    for (int64_t i = 0; i < D; i++) h[i] = tanhf(h[i]);
}

static void decay_token(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const v6_att *A = c->weights;
    float *w = c->s->w + t * c->C;
    for (int64_t i = 0; i < c->C; i++) w[i] = expf(-expf(A->decay[i] + w[i]));
}

static void finish_token(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const v6_att *A = c->weights;
    rwkv_wkv5_read_out(c, t, &A->ln_x, 64e-5f, 1);
}

/* state: att previous-x (C), then the H x N x N wkv matrices */
static void time_mix(rwkv_model *m, const rwkv_layer *L, int layer, const rwkv_pass *pass) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed, H = m->info.n_head, N = m->info.head_size, T = pass->rows.T;
    const rwkv_rows rows = pass->rows;
    const v6_att *A = L->att;
    const int64_t D = A->maa_w1.rows / 5;
    const rwkv_tokens tokens = rwkv_tokens_of(m, L, A, layer, pass);
    void *ctx = (void *)&tokens;

    rwkv_layer_norm_rows(m->pool, s->xx, s->x, &L->ln1, T, C);
    rwkv_token_shift(s->prev, s->xx, pass, C);
    rwkv_parallel_for(m->pool, T, shift_token, ctx);

    /* five data-dependent mixes from one shared network: w, k, v, r, g in that order, their up
     * projections in one pass */
    rwkv_matmul(m, &A->maa_w1, s->mix[4], rows, s->lora[0]);
    rwkv_parallel_for(m->pool, T, split_mix_hidden, ctx);
    float *target[5] = {s->mix[1], s->mix[2], s->mix[3], s->mix[0], s->mix[5]};
    rwkv_product up[5];
    for (int j = 0; j < 5; j++) up[j] = (rwkv_product){&A->maa_w2[j], s->lora[1] + j * T * D, target[j], NULL};
    rwkv_matmuls(m, up, 5, rows);
    rwkv_parallel_for(m->pool, T, mix_token, ctx);

    const rwkv_product products[5] = {{&L->receptance, s->mix[0], s->r, NULL},
                                      {&L->key, s->mix[2], s->k, NULL},
                                      {&L->value, s->mix[3], s->v, NULL},
                                      {&A->gate, s->mix[5], s->g, NULL},
                                      {&A->decay_w1, s->mix[1], s->lora[0], NULL}};
    rwkv_matmuls(m, products, 5, rows);
    rwkv_parallel_for(m->pool, T, decay_hidden_token, ctx);
    rwkv_matmul(m, &A->decay_w2, s->lora[0], rows, s->w);
    rwkv_parallel_for(m->pool, T, decay_token, ctx);

    rwkv_wkv5_args wkv = {s->r, s->k, s->v, s->w, A->first, 0, 0, C, s->y, pass, H, N};
    rwkv_wkv5(m, &wkv);
    rwkv_parallel_for(m->pool, T, finish_token, ctx);

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
