/* RWKV v5 time mixing: multi-head linear attention with a matrix-valued state per head. v5.1 and
 * v5.2 differ only in the gate (v5.2 has one) and in the name of the bonus u. */
#include <string.h>

#include "shared.h"

typedef struct {
    rwkv_lerp_mix mix;
    /* decay = exp(-exp(time_decay)), first = u; decay_per_head / first_per_head: one value per
     * head (rwkv.cpp v5.1, official 5.0 and 5.1) instead of one per channel (v5.2). */
    const float *decay, *first;
    int decay_per_head, first_per_head;
    rwkv_norm ln_x;
} v5_att;

static int detect_v5_1(const rwkv_file *file) { return rwkv_file_find(file, "blocks.0.att.ln_x.weight") != NULL; }

static int detect_v5_2(const rwkv_file *file) {
    return detect_v5_1(file) && rwkv_file_find(file, "blocks.0.att.gate.weight") != NULL;
}

/* u is time_faaaa or time_first, whichever the file has; a file with neither is told about the
 * version's own name, `missing_first`. */
static int load_att(rwkv_loader *ld, int i, v5_att *A, const char *missing_first) {
    const int64_t C = ld->model->info.n_embed, H = ld->model->info.n_head;
    TRY(rwkv_load_lerp_mix(ld, i, &A->mix));
    const char *decay = "att.time_decay";
    const char *first = rwkv_has_tensor(ld, i, "att.time_faaaa")  ? "att.time_faaaa"
                        : rwkv_has_tensor(ld, i, "att.time_first") ? "att.time_first"
                                                                   : missing_first;
    int status = RWKV_OK;
    const rwkv_record *rd = rwkv_need_tensor(ld, i, decay, &status);
    const rwkv_record *rf = rd ? rwkv_need_tensor(ld, i, first, &status) : NULL;
    if (!rd || !rf) return status;
    A->decay_per_head = rd->n_elements == H;
    A->first_per_head = rf->n_elements == H;
    TRY(rwkv_want_vector(ld, i, decay, A->decay_per_head ? H : C, &A->decay));
    TRY(rwkv_want_vector(ld, i, first, A->first_per_head ? H : C, &A->first));
    TRY(rwkv_want_norm(ld, i, "att.ln_x", C, &A->ln_x));
    return rwkv_load_lerp_gate(ld, i, &A->mix);
}

static int load_att_v5_1(rwkv_loader *ld, int i, void *att) { return load_att(ld, i, att, "att.time_first"); }
static int load_att_v5_2(rwkv_loader *ld, int i, void *att) { return load_att(ld, i, att, "att.time_faaaa"); }

size_t rwkv_wkv_state_floats(const rwkv_model_info *info) {
    return (size_t)info->n_embed + (size_t)info->n_head * (size_t)info->head_size * (size_t)info->head_size;
}

/* One head's recurrence over one segment's tokens (item: segment * H + head). Always inlined, so
 * that the instance for the released head size has N as a constant: loops of known length, as the
 * engine had before heads of other sizes, and the instance for any other size takes N from the
 * arguments. */
RWKV_ALWAYS_INLINE static inline void wkv5_head(const rwkv_wkv5_args *a, int64_t item, const int N) {
    const int64_t H = a->H, C = H * N, h = item % H;
    const rwkv_segment *seg = &a->pass->seg[item / H];
    float *S = seg->state + C + h * N * N; /* after the previous x */
    for (int64_t t = seg->start; t < seg->start + seg->len; t++) {
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

RWKV_SIMD_CLONES static void wkv5_head_released(void *p, int64_t item) { wkv5_head(p, item, RWKV_RELEASED_HEAD_SIZE); }

RWKV_SIMD_CLONES static void wkv5_head_any(void *p, int64_t item) {
    const rwkv_wkv5_args *a = p;
    wkv5_head(a, item, (int)a->N);
}

void rwkv_wkv5(rwkv_model *m, const rwkv_wkv5_args *args) {
    rwkv_parallel_for(m->pool, args->pass->n_seg * args->H,
                      args->N == RWKV_RELEASED_HEAD_SIZE ? wkv5_head_released : wkv5_head_any, (void *)args);
}

/* ln_x's eps. The official package uses 64e-5 (1e-5 times head_size_divisor 8 squared), and the
 * released v5 models (heads of 64) give its logits only with that; rwkv.cpp uses 1e-5, and the
 * logits recorded for its tiny test models (heads of 8) need that. A file does not say which, so
 * the head size decides; v6 and v7 use 64e-5 in both programs. */
static float ln_x_eps(int64_t N) { return N == RWKV_RELEASED_HEAD_SIZE ? 64e-5f : 1e-5f; }

void rwkv_wkv5_read_out(const rwkv_tokens *c, int64_t t, const rwkv_norm *ln_x, float eps, int gated) {
    const int64_t C = c->C, o = t * C;
    float *y = c->s->y + o;
    const float *gate = c->s->g + o;
    rwkv_group_norm(y, ln_x, 1, c->H, c->N, eps);
    if (gated)
        for (int64_t i = 0; i < C; i++) y[i] *= rwkv_silu(gate[i]);
}

static void finish_token(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const v5_att *A = c->weights;
    rwkv_wkv5_read_out(c, t, &A->ln_x, ln_x_eps(c->N), A->mix.gate.data != NULL);
}

/* state: att previous-x (C), then the H x N x N wkv matrices */
static void time_mix(rwkv_model *m, const rwkv_layer *L, int layer, const rwkv_pass *pass) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed, H = m->info.n_head, N = m->info.head_size, T = pass->rows.T;
    const v5_att *A = L->att;

    rwkv_lerp_projections(m, L, &A->mix, pass);

    rwkv_wkv5_args wkv = {s->r, s->k, s->v, A->decay, A->first, A->decay_per_head, A->first_per_head, 0,
                          s->y, pass, H, N};
    rwkv_wkv5(m, &wkv);
    const rwkv_tokens tokens = rwkv_tokens_of(m, L, A, layer, pass);
    rwkv_parallel_for(m->pool, T, finish_token, (void *)&tokens);

    rwkv_matmul(m, &L->output, s->y, pass->rows, s->wkv_out);
    rwkv_add(s->x, s->wkv_out, T * C);
}

#define V5_OPS(version, detect_fn, load_fn)                                                                 \
    {                                                                                                       \
        .name = version, .detect = detect_fn, .head_tensor = "att.time_decay", .att_size = sizeof(v5_att),   \
        .load_att = load_fn, .att_state_floats = rwkv_wkv_state_floats, .time_mix = time_mix,               \
        .channel_mix = {.mix_k = "ffn.time_mix_k", .mix_r = "ffn.time_mix_r", .lerp = 1},                   \
    }

const rwkv_arch_ops rwkv_arch_v5_1 = V5_OPS("v5.1", detect_v5_1, load_att_v5_1);
const rwkv_arch_ops rwkv_arch_v5_2 = V5_OPS("v5.2", detect_v5_2, load_att_v5_2);
