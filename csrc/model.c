/* Loading: the model's version, sizes and layers, pointed into the mapped file; and the scratch
 * memory of its evaluations. */
#include <stdlib.h>
#include <string.h>

#include "arch/arch.h"
#include "compiler.h"
#include "dispatch.h"
#include "loader.h"

/* The head count a layer's head tensor gives: its outermost size when it has two or three
 * dimensions (rwkv.cpp's rule), its length when it is a vector of one value per head (fewer than
 * n_embed); 0 when it does not say (a flat vector of n_embed values, from some converters). */
static int64_t heads_in(const rwkv_record *r, int64_t C) {
    if (r->n_dims > 1) return r->ne[r->n_dims - 1];
    return r->n_elements < C ? r->n_elements : 0;
}

/* n_head and head_size from layer 0's head tensor; files that do not say get heads of the
 * released size. */
static int count_heads(rwkv_loader *ld) {
    rwkv_model *m = ld->model;
    rwkv_model_info *info = &m->info;
    const int64_t C = info->n_embed;
    int status = RWKV_OK;
    const rwkv_record *r = rwkv_need_tensor(ld, 0, m->arch->head_tensor, &status);
    if (!r) return status;
    char shape[96];
    rwkv_shape_text(r, shape, sizeof shape);
    const int64_t H = heads_in(r, C);
    if (H == 0) {
        if (C % RWKV_RELEASED_HEAD_SIZE != 0)
            return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                             "%s: tensor '%s' has shape %s, which does not give the head count, and n_embed %lld "
                             "is not a multiple of the head size %d such files have",
                             m->path, r->name, shape, (long long)C, RWKV_RELEASED_HEAD_SIZE);
        info->head_size = RWKV_RELEASED_HEAD_SIZE;
        info->n_head = (int32_t)(C / RWKV_RELEASED_HEAD_SIZE);
        return RWKV_OK;
    }
    if (C % H != 0)
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                         "%s: tensor '%s' has shape %s: %lld heads, which do not divide n_embed %lld", m->path,
                         r->name, shape, (long long)H, (long long)C);
    info->n_head = (int32_t)H;
    info->head_size = (int32_t)(C / H);
    return RWKV_OK;
}

/* Every layer's head tensor agrees with layer 0's (a vector of n_embed values agrees with any). */
static int check_heads(rwkv_loader *ld, int i) {
    rwkv_model *m = ld->model;
    int status = RWKV_OK;
    const rwkv_record *r = rwkv_need_tensor(ld, i, m->arch->head_tensor, &status);
    if (!r) return status;
    const int64_t H = heads_in(r, m->info.n_embed);
    if (H == 0 || H == m->info.n_head) return RWKV_OK;
    char shape[96];
    rwkv_shape_text(r, shape, sizeof shape);
    return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                     "%s: tensor '%s' has shape %s: %lld heads, but layer 0 has %d", m->path, r->name, shape,
                     (long long)H, m->info.n_head);
}

static int load_layer(rwkv_loader *ld, int i) {
    rwkv_model *m = ld->model;
    rwkv_layer *L = &m->layers[i];
    const int64_t C = m->info.n_embed;
    TRY(rwkv_want_norm(ld, i, "ln1", C, &L->ln1));
    TRY(rwkv_want_norm(ld, i, "ln2", C, &L->ln2));
    TRY(rwkv_want_matrix(ld, i, "att.receptance.weight", C, C, &L->receptance));
    TRY(rwkv_want_matrix(ld, i, "att.key.weight", C, C, &L->key));
    TRY(rwkv_want_matrix(ld, i, "att.value.weight", C, C, &L->value));
    TRY(rwkv_want_matrix(ld, i, "att.output.weight", C, C, &L->output));
    void *att = rwkv_loader_alloc(ld, m->arch->att_size);
    if (!att) return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_ALLOC, "%s: out of memory", m->path);
    L->att = att;
    TRY(m->arch->load_att(ld, i, att));
    if (m->arch->head_tensor) TRY(check_heads(ld, i));
    return rwkv_load_channel_mix(ld, i, &L->ffn);
}

static int load_model(rwkv_loader *ld) {
    rwkv_model *m = ld->model;
    const rwkv_header *h = &m->file.header;
    rwkv_model_info *info = &m->info;
    info->n_vocab = h->n_vocab;
    info->n_embed = h->n_embed;
    info->n_layer = h->n_layer;
    info->data_type = h->data_type;
    info->file_version = h->version;
    info->file_size = m->file.size;
    info->arch = rwkv_arch_detect(&m->file);
    m->arch = rwkv_arch_ops_of(info->arch);
    const int64_t C = info->n_embed;
    /* Check the last layer exists before allocating per-layer structs for a header that may lie. */
    if (!rwkv_has_tensor(ld, info->n_layer - 1, "ln1.weight"))
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                         "%s: the header says n_layer = %d but there is no tensor 'blocks.%d.ln1.weight'", m->path,
                         info->n_layer, info->n_layer - 1);
    if (rwkv_has_tensor(ld, info->n_layer, "ln1.weight"))
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                         "%s: the file has tensors of layer %d but its header says n_layer = %d", m->path,
                         info->n_layer, info->n_layer);
    if (m->arch->head_tensor) TRY(count_heads(ld));
    TRY(rwkv_want_matrix(ld, -1, "emb.weight", info->n_vocab, C, &m->emb));
    TRY(rwkv_want_norm(ld, 0, "ln0", C, &m->ln0));
    TRY(rwkv_want_norm(ld, -1, "ln_out", C, &m->ln_out));
    TRY(rwkv_want_matrix(ld, -1, "head.weight", info->n_vocab, C, &m->head));
    m->layers = calloc((size_t)info->n_layer, sizeof *m->layers);
    if (!m->layers) return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_ALLOC, "%s: out of memory", m->path);
    for (int i = 0; i < info->n_layer; i++) TRY(load_layer(ld, i));
    /* per layer: the channel mix's previous x (C), then the time mix's state */
    info->state_len = ((size_t)C + m->arch->att_state_floats(info)) * (size_t)info->n_layer;
    return RWKV_OK;
}

/* ---- scratch -------------------------------------------------------------------------------- */

static void scratch_free(rwkv_scratch *s) {
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
    const size_t n_vectors = 3 + 6 + 10; /* x, xx, prev; mix[6]; r k v w a g kk v_first y wkv_out */
    /* The sizes come from tensors the file holds, so they fit; checked anyway, as a wrap would
     * give a small buffer that the passes overrun. */
    size_t per_token, bytes;
    if (rwkv_mul_overflow((size_t)C, n_vectors, &per_token) ||
        rwkv_add_overflow(per_token, (size_t)F + 4 * (size_t)W, &per_token) ||
        rwkv_mul_overflow(per_token, (size_t)T * sizeof(float), &bytes) ||
        rwkv_add_overflow(bytes, rwkv_matmul_scratch_bytes(m->pool, T, widest) + 64, &bytes))
        return 0;
    float *base = malloc(bytes);
    if (!base) return 0;
    scratch_free(s);
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
    rwkv_matmul_scratch_carve(&s->matmul, m->pool, p, T, widest);
    s->capacity = T;
    return 1;
}

/* ---- the public API ------------------------------------------------------------------------- */

static int check_threads(int n_threads, char *err, size_t err_len) {
    const int cores = rwkv_default_threads(), most = RWKV_THREADS_PER_CORE * cores;
    if (n_threads <= most) return RWKV_OK;
    return rwkv_fail(err, err_len, RWKV_ERR_ARGS,
                     "%d threads is more than %d per core on this machine's %d cores (at most %d); more only add "
                     "switching",
                     n_threads, RWKV_THREADS_PER_CORE, cores, most);
}

rwkv_status rwkv_load(const char *path, int n_threads, rwkv_model **out, char *err, size_t err_len) {
    return rwkv_load_ex(path, n_threads, 0, out, err, err_len);
}

rwkv_status rwkv_load_ex(const char *path, int n_threads, int flags, rwkv_model **out, char *err, size_t err_len) {
    *out = NULL;
    rwkv_dispatch_init();
    TRY(check_threads(n_threads, err, err_len));
    rwkv_model *m = calloc(1, sizeof *m);
    if (!m) return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", path);
    m->file.fd = -1;
    m->path = strdup(path);
    if (!m->path) {
        free(m);
        return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", path);
    }
    int status = rwkv_file_open(&m->file, m->path, (flags & RWKV_LOAD_NO_MMAP) != 0, err, err_len);
    if (status == RWKV_OK) {
        rwkv_loader ld = {.model = m, .err = err, .err_len = err_len};
        status = load_model(&ld);
    }
    if (status == RWKV_OK) {
        if (n_threads <= 0) n_threads = rwkv_default_threads();
        m->pool = rwkv_pool_create(n_threads);
        rwkv_mutex_init(&m->lock);
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
        rwkv_mutex_destroy(&m->lock);
    }
    scratch_free(&m->scratch);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    rwkv_file_close(&m->file);
    free(m->path);
    free(m);
}

void rwkv_get_info(const rwkv_model *m, rwkv_model_info *info) { *info = m->info; }
