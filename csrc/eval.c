/* Evaluation: one or more sequences in passes of at most RWKV_CHUNK rows. Each pass embeds its
 * tokens, runs every layer over all its rows (segment after segment, one per sequence), then the
 * head. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
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

/* ---- checking the sequences ----------------------------------------------------------------- */

/* Whether a sequence's rows take the row kernels: decoding and short prompts. Decided by its own
 * length, so that its results do not depend on what else is evaluated with it. */
static int by_row(const rwkv_sequence *seq) { return seq->n_tokens <= RWKV_ROW_KERNEL_TOKENS; }

static int overlaps(const float *a, const float *b, size_t n) { return a && b && a < b + n && b < a + n; }

/* `name` says which sequence, in messages: "" when there is one (rwkv_eval). */
static int check_sequence(const rwkv_model *m, const rwkv_sequence *seq, const char *name, char *err, size_t err_len) {
    if (!seq->tokens || !seq->state_out)
        return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "%stokens and state are required", name);
    if (seq->n_tokens == 0) return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "%sno tokens to evaluate", name);
    if (seq->state_in != seq->state_out && overlaps(seq->state_in, seq->state_out, m->info.state_len))
        return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "%sstate_in and state_out overlap without being the same", name);
    for (size_t i = 0; i < seq->n_tokens; i++)
        if (seq->tokens[i] < 0 || seq->tokens[i] >= m->info.n_vocab)
            return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "%stoken %d at position %zu is out of range [0, %d)", name,
                             seq->tokens[i], i, m->info.n_vocab);
    return RWKV_OK;
}

static int check_sequences(const rwkv_model *m, const rwkv_sequence *seqs, size_t n, char *err, size_t err_len) {
    if (!m || !seqs) return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "model and sequences are required");
    if (n == 0) return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "no sequences to evaluate");
    char name[48] = "";
    for (size_t i = 0; i < n; i++) {
        if (n > 1) snprintf(name, sizeof name, "sequence %zu: ", i);
        TRY(check_sequence(m, &seqs[i], name, err, err_len));
    }
    /* Each state_out is written while the others are still being read. */
    const size_t len = m->info.state_len;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            if (i != j && (overlaps(seqs[i].state_out, seqs[j].state_out, len) ||
                           overlaps(seqs[i].state_out, seqs[j].state_in, len)))
                return rwkv_fail(err, err_len, RWKV_ERR_ARGS,
                                 "sequence %zu: its state_out overlaps the state %s of sequence %zu", i,
                                 overlaps(seqs[i].state_out, seqs[j].state_out, len) ? "out" : "in", j);
    return RWKV_OK;
}

/* ---- passes --------------------------------------------------------------------------------- */

/* A segment's sequence and the position of its first token in it. */
typedef struct {
    const rwkv_sequence *seq;
    size_t first;
} segment_source;

/* What a call works with, allocated once for all its passes. */
typedef struct {
    const rwkv_sequence **order; /* row-kernel sequences first, so that their rows come first in a pass */
    rwkv_segment *att, *ffn;     /* the segments of a pass, with the states of the block being run */
    segment_source *source;
    float **logit_rows; /* where the rows of the head's row-kernel product go */
} batch;

static void *batch_alloc(batch *b, const rwkv_sequence *seqs, size_t n) {
    const size_t max_seg = n < RWKV_CHUNK ? n : RWKV_CHUNK;
    char *p = malloc(n * sizeof *b->order + max_seg * (2 * sizeof(rwkv_segment) + sizeof(segment_source)) +
                     RWKV_CHUNK * sizeof(float *));
    if (!p) return NULL;
    b->order = (const rwkv_sequence **)p;
    b->att = (rwkv_segment *)(p + n * sizeof *b->order);
    b->ffn = b->att + max_seg;
    b->source = (segment_source *)(b->ffn + max_seg);
    b->logit_rows = (float **)(b->source + max_seg);
    size_t k = 0;
    for (int rowwise = 1; rowwise >= 0; rowwise--)
        for (size_t i = 0; i < n; i++)
            if (by_row(&seqs[i]) == rowwise) b->order[k++] = &seqs[i];
    return p;
}

static void embed(rwkv_model *m, const batch *b, const rwkv_pass *pass) {
    const int64_t C = m->info.n_embed;
    const rwkv_to_float_fn to_float = rwkv_kernels.to_float[m->emb.type];
    for (int i = 0; i < pass->n_seg; i++) {
        const int32_t *tokens = b->source[i].seq->tokens + b->source[i].first;
        for (int64_t t = 0; t < pass->seg[i].len; t++)
            to_float((const uint8_t *)m->emb.data + (size_t)tokens[t] * m->emb.row_bytes,
                     m->scratch.x + (pass->seg[i].start + t) * C, C);
    }
    rwkv_layer_norm_rows(m->pool, m->scratch.x, m->scratch.x, &m->ln0, pass->rows.T, C);
}

static void run_layers(rwkv_model *m, const batch *b, const rwkv_pass *att, const rwkv_pass *ffn) {
    const size_t C = (size_t)m->info.n_embed, per_layer = layer_state_len(&m->info);
    for (int i = 0; i < m->info.n_layer; i++) {
        for (int j = 0; j < att->n_seg; j++) {
            b->ffn[j].state = b->source[j].seq->state_out + (size_t)i * per_layer;
            b->att[j].state = b->ffn[j].state + C;
        }
        const rwkv_layer *L = &m->layers[i];
        m->arch->time_mix(m, L, i, att);
        rwkv_channel_mix(m, L, ffn);
    }
}

/* The head and the embeddings of the sequences whose rows are in the pass. Logits of sequences in
 * sequence mode that want every token's go straight into the caller's buffer through sequence
 * mode; every other row that needs logits (last tokens, short sequences' every token) is normed
 * into xx and goes through one row-kernel product, each row into its place. */
static void finish(rwkv_model *m, const batch *b, const rwkv_pass *pass) {
    rwkv_scratch *s = &m->scratch;
    const int64_t C = m->info.n_embed;
    const size_t V = (size_t)m->info.n_vocab;
    int64_t n_rows = 0;
    for (int i = 0; i < pass->n_seg; i++) {
        const rwkv_sequence *seq = b->source[i].seq;
        const size_t first = b->source[i].first;
        const int64_t start = pass->seg[i].start, len = pass->seg[i].len;
        const int last_in_pass = first + (size_t)len == seq->n_tokens;
        if (seq->embedding && last_in_pass) rwkv_layer_norm(seq->embedding, s->x + (start + len - 1) * C, &m->ln_out, 1, C);
        if (!seq->logits) continue;
        if (seq->all_logits && !by_row(seq)) {
            rwkv_layer_norm(s->prev + start * C, s->x + start * C, &m->ln_out, len, C);
            rwkv_matmul(m, &m->head, s->prev + start * C, (rwkv_rows){len, 0}, seq->logits + first * V);
            continue;
        }
        if (!seq->all_logits && !last_in_pass) continue;
        for (int64_t t = seq->all_logits ? 0 : len - 1; t < len; t++, n_rows++) {
            rwkv_layer_norm(s->xx + n_rows * C, s->x + (start + t) * C, &m->ln_out, 1, C);
            b->logit_rows[n_rows] = seq->logits + (seq->all_logits ? (first + (size_t)t) * V : 0);
        }
    }
    if (n_rows == 0) return;
    const rwkv_product head = {&m->head, s->xx, NULL, b->logit_rows};
    rwkv_matmuls(m, &head, 1, (rwkv_rows){n_rows, n_rows});
}

/* Fills the next pass, taking tokens in b->order from sequence *k, token *done on. */
static rwkv_pass next_pass(batch *b, size_t n, size_t *k, size_t *done) {
    rwkv_pass pass = {{0, 0}, 0, b->att};
    while (*k < n && pass.rows.T < RWKV_CHUNK) {
        const rwkv_sequence *seq = b->order[*k];
        const size_t left = seq->n_tokens - *done, room = (size_t)(RWKV_CHUNK - pass.rows.T);
        const int64_t len = (int64_t)(left < room ? left : room);
        b->att[pass.n_seg] = b->ffn[pass.n_seg] = (rwkv_segment){pass.rows.T, len, NULL};
        b->source[pass.n_seg++] = (segment_source){seq, *done};
        pass.rows.T += len;
        if (by_row(seq)) pass.rows.by_row += len;
        *done += (size_t)len;
        if (*done == seq->n_tokens) {
            *k += 1;
            *done = 0;
        }
    }
    return pass;
}

/* ---- checking the results ------------------------------------------------------------------ */

static int nonfinite(const char *name, const char *what, const float *v, int64_t at, size_t row, char *err,
                     size_t err_len) {
    return rwkv_fail(err, err_len, RWKV_ERR_NONFINITE,
                     "%sthe %s hold %s (token %zu of the call, index %zu): the model's weights or the state given "
                     "hold NaN/Inf values or out-of-range scales; check the file with `rwkvcpp info --verify`",
                     name, what, isnan(v[at]) ? "NaN" : "an infinity", (size_t)at / row, (size_t)at % row);
}

static int check_results(const rwkv_model *m, const rwkv_sequence *seqs, size_t n, char *err, size_t err_len) {
    const size_t V = (size_t)m->info.n_vocab, C = (size_t)m->info.n_embed;
    char name[48] = "";
    for (size_t i = 0; i < n; i++) {
        const rwkv_sequence *seq = &seqs[i];
        if (n > 1) snprintf(name, sizeof name, "sequence %zu: ", i);
        if (seq->logits) {
            const size_t count = (seq->all_logits ? seq->n_tokens : 1) * V;
            const int64_t at = rwkv_first_nonfinite(seq->logits, count);
            if (at >= 0) return nonfinite(name, "logits", seq->logits, at, V, err, err_len);
        }
        if (seq->embedding) {
            const int64_t at = rwkv_first_nonfinite(seq->embedding, C);
            if (at >= 0) return nonfinite(name, "embedding's values", seq->embedding, at, C, err, err_len);
        }
    }
    return RWKV_OK;
}

static rwkv_status run(rwkv_model *m, const rwkv_sequence *seqs, size_t n, char *err, size_t err_len) {
    int status = check_sequences(m, seqs, n, err, err_len);
    if (status != RWKV_OK) return status;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += seqs[i].n_tokens;
    const int64_t chunk = total < RWKV_CHUNK ? (int64_t)total : RWKV_CHUNK;
    batch b;
    void *memory = batch_alloc(&b, seqs, n);
    rwkv_mutex_lock(&m->lock);
    if (!memory || !rwkv_scratch_reserve(m, chunk)) {
        rwkv_mutex_unlock(&m->lock);
        free(memory);
        return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "out of memory for a pass of %lld tokens", (long long)chunk);
    }
    status = rwkv_file_check_unchanged(&m->file, err, err_len);
    if (status != RWKV_OK) {
        rwkv_mutex_unlock(&m->lock);
        free(memory);
        return status;
    }
    for (size_t i = 0; i < n; i++) {
        if (!seqs[i].state_in) rwkv_init_state(m, seqs[i].state_out);
        else if (seqs[i].state_in != seqs[i].state_out)
            memcpy(seqs[i].state_out, seqs[i].state_in, m->info.state_len * sizeof(float));
    }
    for (size_t k = 0, done = 0; k < n;) {
        const rwkv_pass att = next_pass(&b, n, &k, &done);
        const rwkv_pass ffn = {att.rows, att.n_seg, b.ffn};
        embed(m, &b, &att);
        run_layers(m, &b, &att, &ffn);
        finish(m, &b, &att);
    }
    rwkv_mutex_unlock(&m->lock);
    free(memory);
    return check_results(m, seqs, n, err, err_len);
}

rwkv_status rwkv_eval_batch(rwkv_model *m, const rwkv_sequence *seqs, size_t n, char *err, size_t err_len) {
    return run(m, seqs, n, err, err_len);
}

rwkv_status rwkv_eval(rwkv_model *m, const int32_t *tokens, size_t n, float *state, float *logits, int all_logits,
                      char *err, size_t err_len) {
    if (!m || !tokens || !state) return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "model, tokens and state are required");
    const rwkv_sequence seq = {tokens, n, state, state, logits, all_logits, NULL};
    return run(m, &seq, 1, err, err_len);
}

rwkv_status rwkv_eval_embedding(rwkv_model *m, const int32_t *tokens, size_t n, float *state, float *embedding,
                                char *err, size_t err_len) {
    if (!m || !tokens || !state) return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "model, tokens and state are required");
    if (!embedding) return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "no buffer for the embedding");
    const rwkv_sequence seq = {tokens, n, state, state, NULL, 0, embedding};
    return run(m, &seq, 1, err, err_len);
}
