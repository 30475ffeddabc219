/* The model's parts, named as in the checkpoints, and the scratch memory of an evaluation. */
#ifndef RWKV_MODEL_H
#define RWKV_MODEL_H

#include "file.h"
#include "matmul.h"
#include "platform_threads.h"
#include "rwkv.h"
#include "threads.h"

/* The head size of every released v5, v6 and v7 model. The loader takes the head count from the
 * file (arch.h, head_tensor) and this size only where the file does not say; the recurrences have
 * a specialisation for it, so that the released models keep loops of constant length. */
#define RWKV_RELEASED_HEAD_SIZE 64

typedef struct {
    const float *weight, *bias;
} rwkv_norm;

/* The channel-mixing block (feed-forward), the same in every version but for its token shift:
 * v4/v5 time_mix_k/r, v6 time_maa_k/r, v7 x_k alone (v7 has no receptance gate). */
typedef struct {
    const float *mix_k, *mix_r;
    rwkv_matrix key, value, receptance;
} rwkv_channel_mix_weights;

/* One layer: what every version has, and the rest of its time mixing in a struct of the version's
 * own (arch/vN.c), which only that version's code reads. */
typedef struct {
    rwkv_norm ln1, ln2;
    rwkv_matrix receptance, key, value, output; /* the projections of every version's time mixing */
    const void *att;
    rwkv_channel_mix_weights ffn;
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
    float *wkv_out; /* T x C */
    rwkv_matmul_ctx matmul; /* the products' threads and scratch */
} rwkv_scratch;

/* A pass runs the rows of one or more sequences (rwkv_eval_batch), one after another: segment i is
 * rows [start, start + len) of the scratch buffers, with its sequence's state for the block being
 * run (the time mix's state of the layer, or the channel mix's previous x). Matrix products and
 * per-token steps run over all rows at once; token shifts and recurrences run per segment. */
typedef struct {
    int64_t start, len;
    float *state;
} rwkv_segment;

typedef struct {
    rwkv_rows rows; /* all the rows, and which of them take the row kernels */
    int n_seg;
    const rwkv_segment *seg;
} rwkv_pass;

typedef struct rwkv_arch_ops rwkv_arch_ops;

struct rwkv_model {
    char *path;
    rwkv_file file;
    rwkv_model_info info;
    const rwkv_arch_ops *arch; /* the version's operations (arch/arch.h), looked up once at load */
    rwkv_matrix emb, head;
    rwkv_norm ln0, ln_out;
    rwkv_layer *layers;
    int64_t lora_width; /* widest low-rank intermediate, for scratch */

    void **owned; /* copies and structs made at load (vectors stored as FP16, transposed matrices) */
    int n_owned, cap_owned;

    rwkv_pool *pool;
    rwkv_mutex lock; /* one evaluation at a time: the pool and scratch are shared */
    rwkv_scratch scratch;
};

/* The rows of a pass: long prompts (or many sequences) are evaluated in pieces of this many tokens
 * to bound scratch (about 190 KB a token on 1.5B shapes). Each pass dequantizes every weight tile
 * once, so longer passes spread that over more tokens: 256 was 7% faster than 128 on 1.5B shapes. */
#define RWKV_CHUNK 256

/* Makes the scratch hold chunks of n_tokens; returns 0 when out of memory. */
int rwkv_scratch_reserve(rwkv_model *model, int64_t n_tokens);

#endif
