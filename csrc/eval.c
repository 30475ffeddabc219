/* Evaluation: embed the tokens, run every layer over the whole chunk, then the head. */
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "types.h"

void rwkv_scratch_free(rwkv_scratch *s) {
    free(s->x);
    memset(s, 0, sizeof *s);
}

/* One allocation carved into named buffers; grows to the largest chunk seen, never shrinks. */
int rwkv_scratch_reserve(rwkv_model *m, int64_t T) {
    rwkv_scratch *s = &m->scratch;
    if (T <= s->capacity) return 1;
    const int64_t C = m->info.n_embed, F = m->info.n_ffn, W = m->lora_width > 0 ? m->lora_width : 1;
    int64_t widest = C > F ? C : F;
    if (W > widest) widest = W;
    const size_t act_bytes = (size_t)((widest + RWKV_QK - 1) / RWKV_QK) * RWKV_ACT_Q8_BLOCK_BYTES;
    const size_t n_vectors = 3 + 6 + 10; /* x, xx, prev; mix[6]; r k v w a g kk v_first y wkv_out */
    size_t floats = (size_t)T * ((size_t)C * n_vectors + (size_t)F + 4 * (size_t)W);
    const size_t tile_floats = (size_t)rwkv_pool_size(m->pool) * RWKV_TILE_ROWS * RWKV_TILE_STRIDE;
    const size_t panel_floats = (size_t)(T + RWKV_MAX_PANEL) * (size_t)widest;
    floats += tile_floats + panel_floats;
    /* decoding converts the activations of up to RWKV_MAX_PRODUCTS products at once */
    const int64_t act_rows = T > RWKV_MAX_PRODUCTS * RWKV_DECODE_MAX_TOKENS ? T : RWKV_MAX_PRODUCTS * RWKV_DECODE_MAX_TOKENS;
    size_t bytes = floats * sizeof(float) + (size_t)act_rows * act_bytes + 64;
    float *base = malloc(bytes);
    if (!base) return 0;
    rwkv_scratch_free(s);
    float *p = base;
#define CARVE(field, n) (s->field = p, p += (size_t)T * (size_t)(n))
    CARVE(x, C);
    CARVE(xx, C);
    CARVE(prev, C);
    for (int j = 0; j < 6; j++) CARVE(mix[j], C);
    CARVE(r, C);
    CARVE(k, C);
    CARVE(v, C);
    CARVE(w, C);
    CARVE(a, C);
    CARVE(g, C);
    CARVE(kk, C);
    CARVE(v_first, C);
    CARVE(y, C);
    CARVE(wkv_out, C);
    CARVE(ffn, F);
    for (int j = 0; j < 4; j++) CARVE(lora[j], W);
#undef CARVE
    s->tiles = p;
    p += tile_floats;
    s->panels = p;
    p += panel_floats;
    s->act = p;
    s->capacity = T;
    return 1;
}

static size_t layer_state_len(const rwkv_model_info *info) { return info->state_len / (size_t)info->n_layer; }

void rwkv_init_state(const rwkv_model *m, float *state) {
    const rwkv_model_info *info = &m->info;
    memset(state, 0, info->state_len * sizeof(float));
    if (info->arch != RWKV_ARCH_V4) return;
    const size_t C = (size_t)info->n_embed, per_layer = layer_state_len(info);
    for (int i = 0; i < info->n_layer; i++)
        for (size_t c = 0; c < C; c++) state[(size_t)i * per_layer + 4 * C + c] = -1e30f; /* pp */
}

static void embed(rwkv_model *m, const int32_t *tokens, int64_t T) {
    const int64_t C = m->info.n_embed;
    const rwkv_type_traits *traits = rwkv_traits(m->emb.type);
    for (int64_t t = 0; t < T; t++)
        traits->to_float((const uint8_t *)m->emb.data + (size_t)tokens[t] * m->emb.row_bytes, m->scratch.x + t * C, C);
    rwkv_layer_norm(m->scratch.x, m->scratch.x, &m->ln0, T, C);
}

static void run_layers(rwkv_model *m, float *state, int64_t T) {
    const int64_t C = m->info.n_embed;
    const size_t per_layer = layer_state_len(&m->info);
    for (int i = 0; i < m->info.n_layer; i++) {
        const rwkv_layer *L = &m->layers[i];
        float *ffn_x = state + (size_t)i * per_layer, *att = ffn_x + C;
        switch (m->info.arch) {
        case RWKV_ARCH_V4: rwkv_time_mix_v4(m, L, att, T); break;
        case RWKV_ARCH_V5_1:
        case RWKV_ARCH_V5_2: rwkv_time_mix_v5(m, L, att, T); break;
        case RWKV_ARCH_V6: rwkv_time_mix_v6(m, L, att, T); break;
        case RWKV_ARCH_V7: rwkv_time_mix_v7(m, L, i, att, T); break;
        }
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
