/* Evaluation: embed the tokens, run every layer over the whole chunk, then the head. */
#include <string.h>

#include "arch/arch.h"
#include "dispatch.h"
#include "ops.h"

static size_t layer_state_len(const rwkv_model_info *info) { return info->state_len / (size_t)info->n_layer; }

/* Per layer: the channel mix's previous x (C), then the time mix's state. */
void rwkv_init_state(const rwkv_model *m, float *state) {
    const rwkv_model_info *info = &m->info;
    memset(state, 0, info->state_len * sizeof(float));
    if (!m->arch->init_att_state) return;
    const size_t C = (size_t)info->n_embed, per_layer = layer_state_len(info);
    for (int i = 0; i < info->n_layer; i++) m->arch->init_att_state(info, state + (size_t)i * per_layer + C);
}

static void embed(rwkv_model *m, const int32_t *tokens, int64_t T) {
    const int64_t C = m->info.n_embed;
    const rwkv_to_float_fn to_float = rwkv_kernels.to_float[m->emb.type];
    for (int64_t t = 0; t < T; t++)
        to_float((const uint8_t *)m->emb.data + (size_t)tokens[t] * m->emb.row_bytes, m->scratch.x + t * C, C);
    rwkv_layer_norm(m->scratch.x, m->scratch.x, &m->ln0, T, C);
}

static void run_layers(rwkv_model *m, float *state, int64_t T) {
    const int64_t C = m->info.n_embed;
    const size_t per_layer = layer_state_len(&m->info);
    for (int i = 0; i < m->info.n_layer; i++) {
        const rwkv_layer *L = &m->layers[i];
        float *ffn_x = state + (size_t)i * per_layer, *att = ffn_x + C;
        m->arch->time_mix(m, L, i, att, T);
        rwkv_channel_mix(m, L, ffn_x, T);
    }
}

static int check_args(rwkv_model *m, const int32_t *tokens, size_t n, const float *state, char *err,
                      size_t err_len) {
    if (!m || !tokens || !state) return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "model, tokens and state are required");
    if (n == 0) return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "no tokens to evaluate");
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->info.n_vocab)
            return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "token %d at position %zu is out of range [0, %d)",
                             tokens[i], i, m->info.n_vocab);
    return RWKV_OK;
}

/* Runs the tokens chunk by chunk; `finish` is called for every chunk with its rows in scratch.x. */
typedef void (*finish_fn)(rwkv_model *m, size_t start, int64_t T, int last, void *out, int all);

static rwkv_status run(rwkv_model *m, const int32_t *tokens, size_t n, float *state, finish_fn finish,
                       void *out, int all, char *err, size_t err_len) {
    int status = check_args(m, tokens, n, state, err, err_len);
    if (status != RWKV_OK) return status;
    pthread_mutex_lock(&m->lock);
    const int64_t chunk = n < RWKV_CHUNK ? (int64_t)n : RWKV_CHUNK;
    if (!rwkv_scratch_reserve(m, chunk)) {
        pthread_mutex_unlock(&m->lock);
        return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "out of memory for a chunk of %lld tokens", (long long)chunk);
    }
    for (size_t start = 0; start < n; start += (size_t)chunk) {
        const int64_t T = n - start < (size_t)chunk ? (int64_t)(n - start) : chunk;
        embed(m, tokens + start, T);
        run_layers(m, state, T);
        if (finish) finish(m, start, T, start + (size_t)T == n, out, all);
    }
    pthread_mutex_unlock(&m->lock);
    return RWKV_OK;
}

static void finish_logits(rwkv_model *m, size_t start, int64_t T, int last, void *out, int all) {
    const int64_t C = m->info.n_embed;
    float *logits = out;
    if (all) {
        rwkv_layer_norm(m->scratch.xx, m->scratch.x, &m->ln_out, T, C);
        rwkv_matmul(m, &m->head, m->scratch.xx, T, logits + start * (size_t)m->info.n_vocab);
    } else if (last) {
        rwkv_layer_norm(m->scratch.xx, m->scratch.x + (T - 1) * C, &m->ln_out, 1, C);
        rwkv_matmul(m, &m->head, m->scratch.xx, 1, logits);
    }
}

static void finish_embedding(rwkv_model *m, size_t start, int64_t T, int last, void *out, int all) {
    (void)start;
    (void)all;
    const int64_t C = m->info.n_embed;
    if (last) rwkv_layer_norm(out, m->scratch.x + (T - 1) * C, &m->ln_out, 1, C);
}

rwkv_status rwkv_eval(rwkv_model *m, const int32_t *tokens, size_t n, float *state, float *logits, int all_logits,
                      char *err, size_t err_len) {
    return run(m, tokens, n, state, logits ? finish_logits : NULL, logits, all_logits, err, err_len);
}

rwkv_status rwkv_eval_embedding(rwkv_model *m, const int32_t *tokens, size_t n, float *state, float *embedding,
                                char *err, size_t err_len) {
    if (!embedding) return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "no buffer for the embedding");
    return run(m, tokens, n, state, finish_embedding, embedding, 0, err, err_len);
}
