/* What a version takes over from an earlier one: v5 keeps v4's lerped inputs (arch/v4.c), v6 and
 * v7 keep v5's state layout and v6 its recurrence (arch/v5.c). */
#ifndef RWKV_ARCH_SHARED_H
#define RWKV_ARCH_SHARED_H

#include "../matmul.h"
#include "../ops.h"
#include "arch.h"

/* The per-token steps of a block (norms, mixes, activations, gates): tokens do not depend on each
 * other there, so a pass's rows are split across the threads a token at a time with
 * rwkv_parallel_for (one token, when decoding, runs inline). This is what they read. */
typedef struct {
    const rwkv_layer *L;
    const void *weights; /* the version's own weights the step needs */
    rwkv_scratch *s;
    int64_t T; /* the pass's rows */
    int64_t C, H, N;
    int layer;
} rwkv_tokens;

static inline rwkv_tokens rwkv_tokens_of(rwkv_model *m, const rwkv_layer *L, const void *weights, int layer,
                                         const rwkv_pass *pass) {
    const rwkv_model_info *info = &m->info;
    return (rwkv_tokens){L, weights, &m->scratch, pass->rows.T, info->n_embed, info->n_head, info->head_size, layer};
}

/* Token t's token-shift mixes of v6 and later (time and channel mixing): sx = prev - xx, left in
 * prev, then out[j] = xx + sx * mix[j] for the n mixes. */
static inline void rwkv_shift_mixes(rwkv_scratch *s, int64_t t, int64_t C, int n, const float *const *mix,
                                    float *const *out) {
    const int64_t o = t * C;
    rwkv_sub(s->prev + o, s->xx + o, C);
    for (int j = 0; j < n; j++) rwkv_maa(out[j] + o, s->xx + o, s->prev + o, mix[j], NULL, 1, C);
}

/* v4 and v5: the token shift's lerp weights of k, v, r, and of g with the gate (v5.2). */
typedef struct {
    const float *k, *v, *r, *g;
    rwkv_matrix gate; /* data NULL without a gate */
} rwkv_lerp_mix;
int rwkv_load_lerp_mix(rwkv_loader *ld, int layer, rwkv_lerp_mix *mix);
/* g's weight and the gate, when the layer has a gate (loaded after the version's own tensors). */
int rwkv_load_lerp_gate(rwkv_loader *ld, int layer, rwkv_lerp_mix *mix);
/* Time mixing's inputs: ln1, token shift against each segment's state (its first C floats), then
 * r, k, v (and g when the layer has a gate) projected from lerped inputs into scratch r, k, v, g. */
void rwkv_lerp_projections(rwkv_model *m, const rwkv_layer *L, const rwkv_lerp_mix *mix, const rwkv_pass *pass);

/* The state of v5, v6 and v7 time mixing: the previous x (C), then the H x N x N wkv matrices. */
size_t rwkv_wkv_state_floats(const rwkv_model_info *info);

/* The wkv recurrence of v5 and v6, per head: S = k v^T + w S, out = r (u k v^T + S).
 * Decay w and bonus u have one value per head or per channel; v6's decay also changes per token
 * (w_token_stride = C), v5's does not (0). The pass's rows, each segment with its state: the
 * previous x (C floats), then H x N x N (N the head size), indexed [head][key][value]. */
typedef struct {
    const float *r, *k, *v, *w, *u;
    int w_per_head, u_per_head;
    int64_t w_token_stride;
    float *y;
    const rwkv_pass *pass;
    int64_t H, N;
} rwkv_wkv5_args;
void rwkv_wkv5(rwkv_model *m, const rwkv_wkv5_args *args);
/* Token t's read-out of the v5/v6 recurrence, in place in scratch y: the group norm ln_x, then
 * times silu(g) when the layer is gated. */
void rwkv_wkv5_read_out(const rwkv_tokens *c, int64_t t, const rwkv_norm *ln_x, float eps, int gated);

#endif
