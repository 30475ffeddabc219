/* Loading: find every tensor a layer needs, check its shape against the model's sizes, and point
 * the layer structs into the mapped file. Nothing is copied except small vectors stored in a
 * non-FP32 type and matrices stored in an unexpected orientation. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "types.h"


typedef struct {
    rwkv_model *model;
    char *err;
    size_t err_len;
    char name[RWKV_MAX_NAME + 64];
} loader;

static const char *tensor_name(loader *ld, int layer, const char *suffix) {
    if (layer < 0) snprintf(ld->name, sizeof ld->name, "%s", suffix);
    else snprintf(ld->name, sizeof ld->name, "blocks.%d.%s", layer, suffix);
    return ld->name;
}

static void *own(rwkv_model *m, size_t bytes) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **grown = realloc(m->owned, (size_t)cap * sizeof *grown);
        if (!grown) return NULL;
        m->owned = grown;
        m->cap_owned = cap;
    }
    void *p = malloc(bytes ? bytes : 1);
    if (p) m->owned[m->n_owned++] = p;
    return p;
}

static void shape_str(const rwkv_record *r, char *buf, size_t n) {
    /* PyTorch order (outermost first), which is how users know their tensors */
    if (r->n_dims == 1) snprintf(buf, n, "(%lld)", (long long)r->ne[0]);
    else if (r->n_dims == 2) snprintf(buf, n, "(%lld, %lld)", (long long)r->ne[1], (long long)r->ne[0]);
    else snprintf(buf, n, "(%lld, %lld, %lld)", (long long)r->ne[2], (long long)r->ne[1], (long long)r->ne[0]);
}

static const rwkv_record *need(loader *ld, int layer, const char *suffix, int *status) {
    const char *name = tensor_name(ld, layer, suffix);
    const rwkv_record *r = rwkv_file_find(&ld->model->file, name);
    if (!r)
        *status = rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT, "%s: missing tensor '%s' (needed by %s)",
                            ld->model->path, name, rwkv_arch_name(ld->model->info.arch));
    return r;
}

/* The whole tensor as floats, row by row through its type's decoder. */
static void record_to_float(const rwkv_record *r, float *out) {
    const rwkv_type_traits *t = rwkv_traits(r->type);
    const size_t row = rwkv_row_bytes(r->type, r->ne[0]);
    for (int64_t i = 0; i < r->n_elements / r->ne[0]; i++)
        t->to_float((const uint8_t *)r->data + (size_t)i * row, out + i * r->ne[0], r->ne[0]);
}

/* A vector of n floats, stored in any shape with n elements. */
static int want_vector(loader *ld, int layer, const char *suffix, int64_t n, const float **out) {
    int status = RWKV_OK;
    const rwkv_record *r = need(ld, layer, suffix, &status);
    if (!r) return status;
    if (r->n_elements != n) {
        char shape[96];
        shape_str(r, shape, sizeof shape);
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                         "%s: tensor '%s' has shape %s (%lld elements); expected %lld elements", ld->model->path,
                         r->name, shape, (long long)r->n_elements, (long long)n);
    }
    if (r->type == RWKV_TYPE_FP32) {
        *out = r->data;
        return RWKV_OK;
    }
    float *copy = own(ld->model, (size_t)n * sizeof(float));
    if (!copy) return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_ALLOC, "%s: out of memory", ld->model->path);
    record_to_float(r, copy);
    *out = copy;
    return RWKV_OK;
}

static void set_matrix(rwkv_matrix *m, const void *data, int type, int64_t rows, int64_t cols) {
    m->data = data;
    m->type = type;
    m->rows = rows;
    m->cols = cols;
    m->row_bytes = rwkv_row_bytes(type, cols);
}

static int bad_matrix(loader *ld, const rwkv_record *r, int64_t rows, int64_t cols) {
    char shape[96], want_rows[32], want_cols[32];
    shape_str(r, shape, sizeof shape);
    snprintf(want_rows, sizeof want_rows, rows > 0 ? "%lld" : "any", (long long)rows);
    snprintf(want_cols, sizeof want_cols, cols > 0 ? "%lld" : "any", (long long)cols);
    return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT, "%s: tensor '%s' has shape %s; expected (%s, %s)",
                     ld->model->path, r->name, shape, want_rows, want_cols);
}

/* A matrix of rows x cols (PyTorch order); a size of 0 means "whatever the file says". */
static int want_matrix(loader *ld, int layer, const char *suffix, int64_t rows, int64_t cols, rwkv_matrix *out) {
    int status = RWKV_OK;
    const rwkv_record *r = need(ld, layer, suffix, &status);
    if (!r) return status;
    if (r->n_dims != 2 || (rows && r->ne[1] != rows) || (cols && r->ne[0] != cols))
        return bad_matrix(ld, r, rows, cols);
    set_matrix(out, r->data, r->type, r->ne[1], r->ne[0]);
    return RWKV_OK;
}

/* A low-rank factor that may be stored either way round: files from some converters keep the
 * PyTorch (in, out) orientation. The matrix must end up as rows x cols; a transposed one is copied. */
static int want_either_way(loader *ld, int layer, const char *suffix, int64_t rows, int64_t cols,
                           rwkv_matrix *out) {
    int status = RWKV_OK;
    const rwkv_record *r = need(ld, layer, suffix, &status);
    if (!r) return status;
    if (r->n_dims == 2 && r->ne[1] == rows && r->ne[0] == cols) {
        set_matrix(out, r->data, r->type, rows, cols);
        return RWKV_OK;
    }
    if (r->n_dims != 2 || r->ne[1] != cols || r->ne[0] != rows) return bad_matrix(ld, r, rows, cols);
    float *plain = malloc((size_t)rows * (size_t)cols * sizeof(float));
    float *t = own(ld->model, (size_t)rows * (size_t)cols * sizeof(float));
    if (!plain || !t) {
        free(plain);
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_ALLOC, "%s: out of memory", ld->model->path);
    }
    record_to_float(r, plain);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) t[i * cols + j] = plain[j * rows + i];
    free(plain);
    set_matrix(out, t, RWKV_TYPE_FP32, rows, cols);
    return RWKV_OK;
}

static int want_norm(loader *ld, int layer, const char *name, int64_t n, rwkv_norm *out) {
    char suffix[64];
    snprintf(suffix, sizeof suffix, "%s.weight", name);
    int status = want_vector(ld, layer, suffix, n, &out->weight);
    if (status) return status;
    snprintf(suffix, sizeof suffix, "%s.bias", name);
    return want_vector(ld, layer, suffix, n, &out->bias);
}

static int has(loader *ld, int layer, const char *suffix) {
    return rwkv_file_find(&ld->model->file, tensor_name(ld, layer, suffix)) != NULL;
}

static void note_lora(rwkv_model *m, int64_t width) {
    if (width > m->lora_width) m->lora_width = width;
}

#define TRY(call)                                                                                           \
    do {                                                                                                    \
        int status_ = (call);                                                                               \
        if (status_ != RWKV_OK) return status_;                                                             \
    } while (0)

/* The channel-mixing block: n_ffn comes from the first layer's key matrix. */
static int load_ffn(loader *ld, int i, rwkv_layer *L) {
    rwkv_model *m = ld->model;
    int64_t C = m->info.n_embed;
    TRY(want_matrix(ld, i, "ffn.key.weight", m->info.n_ffn, C, &L->ffn_key));
    m->info.n_ffn = (int32_t)L->ffn_key.rows;
    TRY(want_matrix(ld, i, "ffn.value.weight", C, m->info.n_ffn, &L->ffn_value));
    switch (m->info.arch) {
    case RWKV_ARCH_V7:
        return want_vector(ld, i, "ffn.x_k", C, &L->ffn_mix_k);
    case RWKV_ARCH_V6:
        TRY(want_vector(ld, i, "ffn.time_maa_k", C, &L->ffn_mix_k));
        TRY(want_vector(ld, i, "ffn.time_maa_r", C, &L->ffn_mix_r));
        break;
    default:
        TRY(want_vector(ld, i, "ffn.time_mix_k", C, &L->ffn_mix_k));
        TRY(want_vector(ld, i, "ffn.time_mix_r", C, &L->ffn_mix_r));
    }
    return want_matrix(ld, i, "ffn.receptance.weight", C, C, &L->ffn_receptance);
}

static int load_att_v4_v5(loader *ld, int i, rwkv_layer *L) {
    rwkv_model *m = ld->model;
    int64_t C = m->info.n_embed, H = m->info.n_head;
    rwkv_arch arch = m->info.arch;
    TRY(want_vector(ld, i, "att.time_mix_k", C, &L->mix_k));
    TRY(want_vector(ld, i, "att.time_mix_v", C, &L->mix_v));
    TRY(want_vector(ld, i, "att.time_mix_r", C, &L->mix_r));
    if (arch == RWKV_ARCH_V4) {
        TRY(want_vector(ld, i, "att.time_decay", C, &L->decay));
        TRY(want_vector(ld, i, "att.time_first", C, &L->first));
    } else {
        /* one decay per head (rwkv.cpp v5.1, official 5.0 and 5.1) or per channel (v5.2) */
        const char *decay = "att.time_decay";
        const char *first = has(ld, i, "att.time_faaaa") || (arch == RWKV_ARCH_V5_2 && !has(ld, i, "att.time_first"))
                                ? "att.time_faaaa"
                                : "att.time_first";
        int status = RWKV_OK;
        const rwkv_record *rd = need(ld, i, decay, &status), *rf = rd ? need(ld, i, first, &status) : NULL;
        if (!rd || !rf) return status;
        L->decay_per_head = rd->n_elements == H;
        L->first_per_head = rf->n_elements == H;
        TRY(want_vector(ld, i, decay, L->decay_per_head ? H : C, &L->decay));
        TRY(want_vector(ld, i, first, L->first_per_head ? H : C, &L->first));
        TRY(want_norm(ld, i, "att.ln_x", C, &L->ln_x));
    }
    if (has(ld, i, "att.gate.weight")) {
        TRY(want_vector(ld, i, "att.time_mix_g", C, &L->mix_g));
        TRY(want_matrix(ld, i, "att.gate.weight", C, C, &L->gate));
    }
    return RWKV_OK;
}

static int load_att_v6(loader *ld, int i, rwkv_layer *L) {
    rwkv_model *m = ld->model;
    int64_t C = m->info.n_embed;
    TRY(want_vector(ld, i, "att.time_maa_x", C, &L->maa_x));
    TRY(want_vector(ld, i, "att.time_maa_w", C, &L->maa_w));
    TRY(want_vector(ld, i, "att.time_maa_k", C, &L->maa_k));
    TRY(want_vector(ld, i, "att.time_maa_v", C, &L->maa_v));
    TRY(want_vector(ld, i, "att.time_maa_r", C, &L->maa_r));
    TRY(want_vector(ld, i, "att.time_maa_g", C, &L->maa_g));
    TRY(want_matrix(ld, i, "att.time_maa_w1", 0, C, &L->maa_w1));
    if (L->maa_w1.rows % 5 != 0)
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                         "%s: tensor 'blocks.%d.att.time_maa_w1' has %lld outputs; expected a multiple of 5",
                         m->path, i, (long long)L->maa_w1.rows);
    int64_t D = L->maa_w1.rows / 5;
    int status = RWKV_OK;
    const rwkv_record *w2 = need(ld, i, "att.time_maa_w2", &status);
    if (!w2) return status;
    if (w2->n_dims != 3 || w2->ne[0] != D || w2->ne[1] != C || w2->ne[2] != 5) {
        char shape[96];
        shape_str(w2, shape, sizeof shape);
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                         "%s: tensor '%s' has shape %s; expected (5, %lld, %lld)", m->path, w2->name, shape,
                         (long long)C, (long long)D);
    }
    for (int j = 0; j < 5; j++)
        set_matrix(&L->maa_w2[j], (const uint8_t *)w2->data + (size_t)j * rwkv_row_bytes(w2->type, D) * (size_t)C,
                   w2->type, C, D);
    TRY(want_vector(ld, i, "att.time_decay", C, &L->decay));
    TRY(want_matrix(ld, i, "att.time_decay_w1", 0, C, &L->decay_w1));
    TRY(want_either_way(ld, i, "att.time_decay_w2", C, L->decay_w1.rows, &L->decay_w2));
    TRY(want_vector(ld, i, "att.time_faaaa", C, &L->first));
    TRY(want_matrix(ld, i, "att.gate.weight", C, C, &L->gate));
    TRY(want_norm(ld, i, "att.ln_x", C, &L->ln_x));
    note_lora(m, L->maa_w1.rows);
    note_lora(m, L->decay_w1.rows);
    return RWKV_OK;
}

static int load_att_v7(loader *ld, int i, rwkv_layer *L) {
    rwkv_model *m = ld->model;
    int64_t C = m->info.n_embed;
    TRY(want_vector(ld, i, "att.x_rwkvag", 6 * C, &L->x_rwkvag));
    TRY(want_vector(ld, i, "att.w0", C, &L->w0));
    TRY(want_vector(ld, i, "att.a0", C, &L->a0));
    TRY(want_vector(ld, i, "att.k_k", C, &L->k_k));
    TRY(want_vector(ld, i, "att.k_a", C, &L->k_a));
    TRY(want_vector(ld, i, "att.r_k", C, &L->r_k));
    struct {
        const char *down, *up;
        rwkv_matrix *m1, *m2;
    } lora[4] = {{"att.w1", "att.w2", &L->w1, &L->w2},
                 {"att.a1", "att.a2", &L->a1, &L->a2},
                 {"att.g1", "att.g2", &L->g1, &L->g2},
                 {"att.v1", "att.v2", &L->v1, &L->v2}};
    int n_lora = i == 0 ? 3 : 4; /* layer 0 sets v_first and has no value residual */
    if (i > 0) TRY(want_vector(ld, i, "att.v0", C, &L->v0));
    for (int j = 0; j < n_lora; j++) {
        TRY(want_matrix(ld, i, lora[j].down, 0, C, lora[j].m1));
        TRY(want_matrix(ld, i, lora[j].up, C, lora[j].m1->rows, lora[j].m2));
        note_lora(m, lora[j].m1->rows);
    }
    TRY(want_norm(ld, i, "att.ln_x", C, &L->ln_x));
    return RWKV_OK;
}

static int load_layer(loader *ld, int i) {
    rwkv_model *m = ld->model;
    rwkv_layer *L = &m->layers[i];
    int64_t C = m->info.n_embed;
    TRY(want_norm(ld, i, "ln1", C, &L->ln1));
    TRY(want_norm(ld, i, "ln2", C, &L->ln2));
    TRY(want_matrix(ld, i, "att.receptance.weight", C, C, &L->receptance));
    TRY(want_matrix(ld, i, "att.key.weight", C, C, &L->key));
    TRY(want_matrix(ld, i, "att.value.weight", C, C, &L->value));
    TRY(want_matrix(ld, i, "att.output.weight", C, C, &L->output));
    switch (m->info.arch) {
    case RWKV_ARCH_V7: TRY(load_att_v7(ld, i, L)); break;
    case RWKV_ARCH_V6: TRY(load_att_v6(ld, i, L)); break;
    default: TRY(load_att_v4_v5(ld, i, L));
    }
    return load_ffn(ld, i, L);
}

static rwkv_arch detect_arch(const rwkv_file *f) {
    if (rwkv_file_find(f, "blocks.0.att.r_k")) return RWKV_ARCH_V7;
    if (rwkv_file_find(f, "blocks.0.att.time_maa_x")) return RWKV_ARCH_V6;
    if (rwkv_file_find(f, "blocks.0.att.ln_x.weight"))
        return rwkv_file_find(f, "blocks.0.att.gate.weight") ? RWKV_ARCH_V5_2 : RWKV_ARCH_V5_1;
    return RWKV_ARCH_V4;
}

static int load_model(loader *ld) {
    rwkv_model *m = ld->model;
    const rwkv_header *h = &m->file.header;
    rwkv_model_info *info = &m->info;
    info->n_vocab = h->n_vocab;
    info->n_embed = h->n_embed;
    info->n_layer = h->n_layer;
    info->data_type = h->data_type;
    info->file_version = h->version;
    info->file_size = m->file.size;
    info->arch = detect_arch(&m->file);
    int64_t C = info->n_embed;
    if (info->arch != RWKV_ARCH_V4) {
        if (C % RWKV_HEAD_SIZE != 0)
            return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                             "%s: n_embed %lld is not a multiple of the head size %d that %s uses", m->path,
                             (long long)C, RWKV_HEAD_SIZE, rwkv_arch_name(info->arch));
        info->head_size = RWKV_HEAD_SIZE;
        info->n_head = (int32_t)(C / RWKV_HEAD_SIZE);
    }
    /* Check the last layer exists before allocating per-layer structs for a header that may lie. */
    if (!has(ld, info->n_layer - 1, "ln1.weight"))
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                         "%s: the header says n_layer = %d but there is no tensor 'blocks.%d.ln1.weight'", m->path,
                         info->n_layer, info->n_layer - 1);
    if (has(ld, info->n_layer, "ln1.weight"))
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                         "%s: the file has tensors of layer %d but its header says n_layer = %d", m->path,
                         info->n_layer, info->n_layer);
    TRY(want_matrix(ld, -1, "emb.weight", info->n_vocab, C, &m->emb));
    TRY(want_norm(ld, 0, "ln0", C, &m->ln0));
    TRY(want_norm(ld, -1, "ln_out", C, &m->ln_out));
    TRY(want_matrix(ld, -1, "head.weight", info->n_vocab, C, &m->head));
    m->layers = calloc((size_t)info->n_layer, sizeof *m->layers);
    if (!m->layers) return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_ALLOC, "%s: out of memory", m->path);
    for (int i = 0; i < info->n_layer; i++) TRY(load_layer(ld, i));
    size_t per_layer = info->arch == RWKV_ARCH_V4 ? 5 * (size_t)C
                                                   : 2 * (size_t)C + (size_t)info->n_head * RWKV_HEAD_SIZE * RWKV_HEAD_SIZE;
    info->state_len = per_layer * (size_t)info->n_layer;
    return RWKV_OK;
}

rwkv_status rwkv_load(const char *path, int n_threads, rwkv_model **out, char *err, size_t err_len) {
    *out = NULL;
    rwkv_dispatch_init();
    rwkv_model *m = calloc(1, sizeof *m);
    if (!m) return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", path);
    m->file.fd = -1;
    m->path = strdup(path);
    if (!m->path) {
        free(m);
        return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", path);
    }
    int status = rwkv_file_open(&m->file, m->path, err, err_len);
    if (status == RWKV_OK) {
        loader ld = {.model = m, .err = err, .err_len = err_len};
        status = load_model(&ld);
    }
    if (status == RWKV_OK) {
        if (n_threads <= 0) n_threads = rwkv_default_threads();
        m->pool = rwkv_pool_create(n_threads);
        pthread_mutex_init(&m->lock, NULL);
        if (!m->pool) status = rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: cannot start threads", path);
        else m->info.n_threads = rwkv_pool_size(m->pool);
    }
    if (status == RWKV_OK) status = rwkv_scratch_reserve(m, 1) ? RWKV_OK : rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", path);
    if (status != RWKV_OK) {
        rwkv_free(m);
        return status;
    }
    *out = m;
    return RWKV_OK;
}

void rwkv_free(rwkv_model *m) {
    if (!m) return;
    if (m->pool) {
        rwkv_pool_free(m->pool);
        pthread_mutex_destroy(&m->lock);
    }
    rwkv_scratch_free(&m->scratch);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    rwkv_file_close(&m->file);
    free(m->path);
    free(m);
}

void rwkv_get_info(const rwkv_model *m, rwkv_model_info *info) { *info = m->info; }

const char *rwkv_arch_name(rwkv_arch arch) {
    switch (arch) {
    case RWKV_ARCH_V4: return "v4";
    case RWKV_ARCH_V5_1: return "v5.1";
    case RWKV_ARCH_V5_2: return "v5.2";
    case RWKV_ARCH_V6: return "v6";
    case RWKV_ARCH_V7: return "v7";
    }
    return "unknown";
}
