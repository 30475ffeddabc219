/* RWKV v7 ("Goose") time mixing: the state is updated by a generalised delta rule,
 * S = S diag(w) - (S kk) (kk * a)^T + v k^T, read out with r. */
#include <string.h>

#include "shared.h"

typedef struct {
    const float *x_rwkvag; /* 6 x n_embed: the mixes of r, w, k, v, a, g */
    const float *w0, *a0, *v0, *k_k, *k_a, *r_k;
    rwkv_matrix w1, w2, a1, a2, v1, v2, g1, g2; /* low-rank networks: decay, learning rate, value residual, gate */
    rwkv_norm ln_x;
} v7_att;

static int detect(const rwkv_file *file) { return rwkv_file_find(file, "blocks.0.att.r_k") != NULL; }

static int load_att(rwkv_loader *ld, int i, void *att) {
    v7_att *A = att;
    const int64_t C = ld->model->info.n_embed;
    TRY(rwkv_want_vector(ld, i, "att.x_rwkvag", 6 * C, &A->x_rwkvag));
    TRY(rwkv_want_vector(ld, i, "att.w0", C, &A->w0));
    TRY(rwkv_want_vector(ld, i, "att.a0", C, &A->a0));
    TRY(rwkv_want_vector(ld, i, "att.k_k", C, &A->k_k));
    TRY(rwkv_want_vector(ld, i, "att.k_a", C, &A->k_a));
    TRY(rwkv_want_vector(ld, i, "att.r_k", C, &A->r_k));
    struct {
        const char *down, *up;
        rwkv_matrix *m1, *m2;
    } lora[4] = {{"att.w1", "att.w2", &A->w1, &A->w2},
                 {"att.a1", "att.a2", &A->a1, &A->a2},
                 {"att.g1", "att.g2", &A->g1, &A->g2},
                 {"att.v1", "att.v2", &A->v1, &A->v2}};
    int n_lora = i == 0 ? 3 : 4; /* layer 0 sets v_first and has no value residual */
    if (i > 0) TRY(rwkv_want_vector(ld, i, "att.v0", C, &A->v0));
    for (int j = 0; j < n_lora; j++) {
        TRY(rwkv_want_matrix(ld, i, lora[j].down, 0, C, lora[j].m1));
        TRY(rwkv_want_matrix(ld, i, lora[j].up, C, lora[j].m1->rows, lora[j].m2));
        rwkv_note_lora(ld, lora[j].m1->rows);
    }
    return rwkv_want_norm(ld, i, "att.ln_x", C, &A->ln_x);
}

typedef struct {
    const float *r, *w, *k, *v, *kk, *a;
    float *y;
    const rwkv_pass *pass;
    int64_t H, N;
    float *b_any; /* wkv7_head_any's b, N floats per item: in scratch, as MSVC has no variable-length arrays */
} wkv7_task;

/* One head's recurrence over one segment's tokens (item: segment * H + head), with b (N floats)
 * for kk * a. Always inlined, so that the instance for the released head size has N as a constant
 * (loops of known length, b on the stack), and the instance for any other size takes N and b from
 * the task. */
RWKV_ALWAYS_INLINE static inline void wkv7_head(const wkv7_task *a, int64_t item, const int N, float *b) {
    const int64_t C = a->H * N, h = item % a->H;
    const rwkv_segment *seg = &a->pass->seg[item / a->H];
    float *S = seg->state + C + h * N * N; /* after the previous x; [value i][key j] */
    for (int64_t t = seg->start; t < seg->start + seg->len; t++) {
        const int64_t o = t * C + h * N;
        const float *r = a->r + o, *w = a->w + o, *k = a->k + o, *v = a->v + o, *kk = a->kk + o, *aa = a->a + o;
        for (int j = 0; j < N; j++) b[j] = kk[j] * aa[j];
        for (int i = 0; i < N; i++) {
            float *Si = S + i * N;
            const float vi = v[i];
            float sa = 0.0f, y = 0.0f;
#pragma omp simd reduction(+ : sa)
            for (int j = 0; j < N; j++) sa += Si[j] * kk[j];
#pragma omp simd reduction(+ : y)
            for (int j = 0; j < N; j++) {
                Si[j] = Si[j] * w[j] - sa * b[j] + vi * k[j];
                y += Si[j] * r[j];
            }
            a->y[o + i] = y;
        }
    }
}

RWKV_SIMD_CLONES static void wkv7_head_released(void *p, int64_t item) {
    float b[RWKV_RELEASED_HEAD_SIZE];
    wkv7_head(p, item, RWKV_RELEASED_HEAD_SIZE, b);
}

RWKV_SIMD_CLONES static void wkv7_head_any(void *p, int64_t item) {
    const wkv7_task *a = p;
    wkv7_head(a, item, (int)a->N, a->b_any + item * a->N);
}

/* The per-token steps (arch/shared.h), in the order time_mix runs them. */

static void mix_token(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const v7_att *A = c->weights;
    const float *mix[6];
    for (int j = 0; j < 6; j++) mix[j] = A->x_rwkvag + j * c->C;
    rwkv_shift_mixes(c->s, t, c->C, 6, mix, c->s->mix);
}

/* The activations of the decay's and the gate's hidden layers. */
static void hidden_token(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const v7_att *A = c->weights;
    float *w = c->s->lora[0] + t * A->w1.rows, *g = c->s->lora[2] + t * A->g1.rows;
    for (int64_t i = 0; i < A->w1.rows; i++) w[i] = tanhf(w[i]);
    for (int64_t i = 0; i < A->g1.rows; i++) g[i] = rwkv_sigmoid(g[i]);
}

/* Decay, in-context learning rate, the keys' two forms and the value residual. */
static void prepare_token(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const v7_att *A = c->weights;
    rwkv_scratch *s = c->s;
    const int64_t C = c->C, N = c->N, o = t * C;
    float *a = s->a + o, *k = s->k + o, *kk = s->kk + o, *w = s->w + o, *v = s->v + o;
    for (int64_t i = 0; i < C; i++) {
        a[i] = rwkv_sigmoid(A->a0[i] + a[i]);
        kk[i] = k[i] * A->k_k[i];
        k[i] = k[i] * (1.0f + (a[i] - 1.0f) * A->k_a[i]);
        w[i] = expf(-0.606531f * rwkv_sigmoid(A->w0[i] + w[i]));
    }
    for (int64_t h = 0; h < c->H; h++) { /* kk: unit length per head */
        float *row = kk + h * N, norm = 0.0f;
        for (int64_t i = 0; i < N; i++) norm += row[i] * row[i];
        norm = fmaxf(sqrtf(norm), 1e-12f);
        for (int64_t i = 0; i < N; i++) row[i] /= norm;
    }
    /* value residual: every layer mixes in the first layer's values */
    if (c->layer == 0) {
        memcpy(s->v_first + o, v, (size_t)C * sizeof(float));
    } else {
        const float *v_first = s->v_first + o, *gate = s->wkv_out + o;
        for (int64_t i = 0; i < C; i++) v[i] += (v_first[i] - v[i]) * rwkv_sigmoid(A->v0[i] + gate[i]);
    }
}

/* The read-out's group norm, a per-head bonus for the current token, and the gate. */
static void finish_token(void *p, int64_t t) {
    const rwkv_tokens *c = p;
    const v7_att *A = c->weights;
    rwkv_scratch *s = c->s;
    const int64_t C = c->C, N = c->N, o = t * C;
    float *y = s->y + o;
    const float *r = s->r + o, *k = s->k + o, *v = s->v + o, *gate = s->g + o;
    rwkv_group_norm(y, &A->ln_x, 1, c->H, N, 64e-5f);
    for (int64_t h = 0; h < c->H; h++) {
        const int64_t b = h * N;
        float rk = 0.0f;
        for (int64_t i = 0; i < N; i++) rk += r[b + i] * k[b + i] * A->r_k[b + i];
        for (int64_t i = 0; i < N; i++) y[b + i] += rk * v[b + i];
    }
    for (int64_t i = 0; i < C; i++) y[i] *= gate[i];
}

/* state: att previous-x (C), then the H x N x N wkv matrices */
static void time_mix(rwkv_model *m, const rwkv_layer *L, int layer, const rwkv_pass *pass) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed, H = m->info.n_head, N = m->info.head_size, T = pass->rows.T;
    const v7_att *A = L->att;
    const rwkv_tokens tokens = rwkv_tokens_of(m, L, A, layer, pass);
    void *ctx = (void *)&tokens;

    rwkv_layer_norm_rows(m->pool, s->xx, s->x, &L->ln1, T, C);
    rwkv_token_shift(s->prev, s->xx, pass, C);
    rwkv_parallel_for(m->pool, T, mix_token, ctx); /* prev becomes the shift's difference, sx */

    /* The projections and the low-rank networks' first halves, then their second halves: two
     * passes. The value residual's network (every layer but the first) goes along. */
    const int value_lora = layer > 0;
    float **h = s->lora;
    const rwkv_product down[7] = {{&L->receptance, s->mix[0], s->r, NULL}, {&L->key, s->mix[2], s->k, NULL},
                                  {&L->value, s->mix[3], s->v, NULL},      {&A->w1, s->mix[1], h[0], NULL},
                                  {&A->a1, s->mix[4], h[1], NULL},         {&A->g1, s->mix[5], h[2], NULL},
                                  {&A->v1, s->mix[3], h[3], NULL}};
    rwkv_matmuls(m, down, 6 + value_lora, pass->rows);
    rwkv_parallel_for(m->pool, T, hidden_token, ctx);
    const rwkv_product up[4] = {{&A->w2, h[0], s->w, NULL},
                                {&A->a2, h[1], s->a, NULL},
                                {&A->g2, h[2], s->g, NULL},
                                {&A->v2, h[3], s->wkv_out, NULL}};
    rwkv_matmuls(m, up, 3 + value_lora, pass->rows);

    rwkv_parallel_for(m->pool, T, prepare_token, ctx);
    /* b_any: mix[0], which the projections have read, has room for the N floats of every item
     * (n_seg * H * N <= T * C). */
    wkv7_task task = {s->r, s->w, s->k, s->v, s->kk, s->a, s->y, pass, H, N, s->mix[0]};
    rwkv_parallel_for(m->pool, pass->n_seg * H, N == RWKV_RELEASED_HEAD_SIZE ? wkv7_head_released : wkv7_head_any,
                      &task);
    rwkv_parallel_for(m->pool, T, finish_token, ctx);

    rwkv_matmul(m, &L->output, s->y, pass->rows, s->wkv_out);
    rwkv_add(s->x, s->wkv_out, T * C);
}

/* Kept in float by quantization, as rwkv.cpp does: the low-rank networks and r_k. */
static const char *const float_tensors[] = {".att.w1", ".att.w2", ".att.a1", ".att.a2", ".att.v1",
                                            ".att.v2", ".att.g1", ".att.g2", ".att.r_k", NULL};

const rwkv_arch_ops rwkv_arch_v7 = {
    .name = "v7",
    .detect = detect,
    .head_tensor = "att.r_k",
    .att_size = sizeof(v7_att),
    .load_att = load_att,
    .att_state_floats = rwkv_wkv_state_floats,
    .time_mix = time_mix,
    .channel_mix = {.mix_k = "ffn.x_k"},
    .float_tensors = float_tensors,
};
