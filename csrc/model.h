/* The model's parts, named as in the checkpoints, and the scratch memory of an evaluation. */
#ifndef RWKV_MODEL_H
#define RWKV_MODEL_H

#include <pthread.h>

#include "file.h"
#include "rwkv.h"
#include "threads.h"

/* Every released v5, v6 and v7 model has 64-value heads; the loader refuses others, so the
 * recurrences can use it as a constant. */
#define RWKV_HEAD_SIZE 64

/* A weight matrix: `rows` rows of `cols` elements each, y = W x produces `rows` outputs. */
typedef struct {
    const void *data;
    int type;
    int64_t rows, cols;
    size_t row_bytes;
} rwkv_matrix;

typedef struct {
    const float *weight, *bias;
} rwkv_norm;

/* One layer. Which fields are set depends on the architecture; the rest stay NULL. */
typedef struct {
    rwkv_norm ln1, ln2;

    /* time mixing, v4 and v5: lerp weights between the token and the previous one */
    const float *mix_k, *mix_v, *mix_r, *mix_g;
    /* v4: decay = -exp(time_decay); v5: decay = exp(-exp(time_decay)), first = u;
     * v6: decay = time_decay (made data-dependent per token), first = time_faaaa.
     * decay_per_head / first_per_head: one value per head (v5.1) instead of one per channel. */
    const float *decay, *first;
    int decay_per_head, first_per_head;
    rwkv_matrix receptance, key, value, output, gate;
    rwkv_norm ln_x; /* group norm of v5, v6, v7 */

    /* v6: data-dependent token shift and decay */
    const float *maa_x, *maa_w, *maa_k, *maa_v, *maa_r, *maa_g;
    rwkv_matrix maa_w1, maa_w2[5], decay_w1, decay_w2;

    /* v7 */
    const float *x_rwkvag; /* 6 x n_embed: the mixes of r, w, k, v, a, g */
    const float *w0, *a0, *v0, *k_k, *k_a, *r_k;
    rwkv_matrix w1, w2, a1, a2, v1, v2, g1, g2;

    /* channel mixing: v4/v5 time_mix_k/r, v6 time_maa_k/r, v7 x_k (no receptance) */
    const float *ffn_mix_k, *ffn_mix_r;
    rwkv_matrix ffn_key, ffn_value, ffn_receptance;
} rwkv_layer;

/* Scratch for a chunk of up to `capacity` tokens; every buffer is capacity rows wide. */
typedef struct {
    int64_t capacity;
    float *x;       /* residual stream, T x C */
    float *xx;      /* normed input of the current block, T x C */
    float *prev;    /* the previous token's xx (token shift), T x C */
    float *mix[6];  /* mixed inputs: r, w, k, v, a, g; T x C each */
    float *r, *k, *v, *w, *a, *g, *kk, *v_first, *y; /* T x C each */
    float *ffn;     /* T x n_ffn */
    float *lora[4]; /* T x lora_width each: low-rank hidden layers */
    void *act;      /* activations converted for the weight type: T x act row */
    float *wkv_out; /* T x C */
    float *tiles;   /* per thread: a dequantized weight tile of sequence mode (not per token) */
    float *panels;  /* sequence mode: a product's input tokens packed for the kernel (rwkv_gemm.pack) */
} rwkv_scratch;

struct rwkv_model {
    char *path;
    rwkv_file file;
    rwkv_model_info info;
    rwkv_matrix emb, head;
    rwkv_norm ln0, ln_out;
    rwkv_layer *layers;
    int64_t lora_width; /* widest low-rank intermediate, for scratch */

    void **owned; /* FP32 copies made at load (vectors stored as FP16, transposed matrices) */
    int n_owned, cap_owned;

    rwkv_pool *pool;
    pthread_mutex_t lock; /* one evaluation at a time: the pool and scratch are shared */
    rwkv_scratch scratch;
};

/* Sequence chunk: long prompts are evaluated in pieces of this many tokens to bound scratch (about
 * 190 KB a token on 1.5B shapes). Each chunk dequantizes every weight tile once, so longer chunks
 * spread that over more tokens: 256 was 7% faster than 128 on 1.5B shapes. */
#define RWKV_CHUNK 256

int rwkv_scratch_reserve(rwkv_model *model, int64_t n_tokens);
void rwkv_scratch_free(rwkv_scratch *s);

#endif
