/* Finding tensors and checking their shapes. Nothing is copied except small vectors stored in a
 * non-FP32 type and matrices stored in an unexpected orientation. */
#include "loader.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch/arch.h"
#include "dispatch.h"

static const char *tensor_name(rwkv_loader *ld, int layer, const char *suffix) {
    if (layer < 0) snprintf(ld->name, sizeof ld->name, "%s", suffix);
    else snprintf(ld->name, sizeof ld->name, "blocks.%d.%s", layer, suffix);
    return ld->name;
}

void *rwkv_loader_alloc(rwkv_loader *ld, size_t bytes) {
    rwkv_model *m = ld->model;
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **grown = realloc(m->owned, (size_t)cap * sizeof *grown);
        if (!grown) return NULL;
        m->owned = grown;
        m->cap_owned = cap;
    }
    void *p = calloc(1, bytes ? bytes : 1);
    if (p) m->owned[m->n_owned++] = p;
    return p;
}

static int out_of_memory(rwkv_loader *ld) {
    return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_ALLOC, "%s: out of memory", ld->model->path);
}

void rwkv_shape_text(const rwkv_record *r, char *buf, size_t n) {
    if (r->n_dims == 1) snprintf(buf, n, "(%lld)", (long long)r->ne[0]);
    else if (r->n_dims == 2) snprintf(buf, n, "(%lld, %lld)", (long long)r->ne[1], (long long)r->ne[0]);
    else snprintf(buf, n, "(%lld, %lld, %lld)", (long long)r->ne[2], (long long)r->ne[1], (long long)r->ne[0]);
}

int rwkv_has_tensor(rwkv_loader *ld, int layer, const char *suffix) {
    return rwkv_file_find(&ld->model->file, tensor_name(ld, layer, suffix)) != NULL;
}

const rwkv_record *rwkv_need_tensor(rwkv_loader *ld, int layer, const char *suffix, int *status) {
    const char *name = tensor_name(ld, layer, suffix);
    const rwkv_record *r = rwkv_file_find(&ld->model->file, name);
    if (!r)
        *status = rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT, "%s: missing tensor '%s' (needed by %s)",
                            ld->model->path, name, ld->model->arch->name);
    return r;
}

/* The whole tensor as floats, row by row through its type's decoder. */
static void record_to_float(const rwkv_record *r, float *out) {
    const rwkv_to_float_fn to_float = rwkv_kernels.to_float[r->type];
    const size_t row = rwkv_row_bytes(r->type, r->ne[0]);
    for (int64_t i = 0; i < r->n_elements / r->ne[0]; i++)
        to_float((const uint8_t *)r->data + (size_t)i * row, out + i * r->ne[0], r->ne[0]);
}

int rwkv_want_vector(rwkv_loader *ld, int layer, const char *suffix, int64_t n, const float **out) {
    int status = RWKV_OK;
    const rwkv_record *r = rwkv_need_tensor(ld, layer, suffix, &status);
    if (!r) return status;
    if (r->n_elements != n) {
        char shape[96];
        rwkv_shape_text(r, shape, sizeof shape);
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                         "%s: tensor '%s' has shape %s (%lld elements); expected %lld elements", ld->model->path,
                         r->name, shape, (long long)r->n_elements, (long long)n);
    }
    /* Used in place when it can be: the format does not align data, and a float read from an
     * address that is not a multiple of 4 is undefined behaviour in C (memcpy'd instead). */
    if (r->type == RWKV_TYPE_FP32 && (uintptr_t)r->data % _Alignof(float) == 0) {
        *out = r->data;
        return RWKV_OK;
    }
    float *copy = rwkv_loader_alloc(ld, (size_t)n * sizeof(float));
    if (!copy) return out_of_memory(ld);
    record_to_float(r, copy);
    *out = copy;
    return RWKV_OK;
}

int rwkv_want_norm(rwkv_loader *ld, int layer, const char *name, int64_t n, rwkv_norm *out) {
    char suffix[64];
    snprintf(suffix, sizeof suffix, "%s.weight", name);
    int status = rwkv_want_vector(ld, layer, suffix, n, &out->weight);
    if (status) return status;
    snprintf(suffix, sizeof suffix, "%s.bias", name);
    return rwkv_want_vector(ld, layer, suffix, n, &out->bias);
}

static int bad_matrix(rwkv_loader *ld, const rwkv_record *r, int64_t rows, int64_t cols) {
    char shape[96], want_rows[32], want_cols[32];
    rwkv_shape_text(r, shape, sizeof shape);
    snprintf(want_rows, sizeof want_rows, rows > 0 ? "%lld" : "any", (long long)rows);
    snprintf(want_cols, sizeof want_cols, cols > 0 ? "%lld" : "any", (long long)cols);
    return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT, "%s: tensor '%s' has shape %s; expected (%s, %s)",
                     ld->model->path, r->name, shape, want_rows, want_cols);
}

int rwkv_want_matrix(rwkv_loader *ld, int layer, const char *suffix, int64_t rows, int64_t cols, rwkv_matrix *out) {
    int status = RWKV_OK;
    const rwkv_record *r = rwkv_need_tensor(ld, layer, suffix, &status);
    if (!r) return status;
    if (r->n_dims != 2 || (rows && r->ne[1] != rows) || (cols && r->ne[0] != cols))
        return bad_matrix(ld, r, rows, cols);
    *out = rwkv_matrix_at(r->data, r->type, r->ne[1], r->ne[0]);
    return RWKV_OK;
}

int rwkv_want_either_way(rwkv_loader *ld, int layer, const char *suffix, int64_t rows, int64_t cols,
                         rwkv_matrix *out) {
    int status = RWKV_OK;
    const rwkv_record *r = rwkv_need_tensor(ld, layer, suffix, &status);
    if (!r) return status;
    if (r->n_dims == 2 && r->ne[1] == rows && r->ne[0] == cols) {
        *out = rwkv_matrix_at(r->data, r->type, rows, cols);
        return RWKV_OK;
    }
    if (r->n_dims != 2 || r->ne[1] != cols || r->ne[0] != rows) return bad_matrix(ld, r, rows, cols);
    float *plain = malloc((size_t)rows * (size_t)cols * sizeof(float));
    float *t = rwkv_loader_alloc(ld, (size_t)rows * (size_t)cols * sizeof(float));
    if (!plain || !t) {
        free(plain);
        return out_of_memory(ld);
    }
    record_to_float(r, plain);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) t[i * cols + j] = plain[j * rows + i];
    free(plain);
    *out = rwkv_matrix_at(t, RWKV_TYPE_FP32, rows, cols);
    return RWKV_OK;
}

int rwkv_want_matrices(rwkv_loader *ld, int layer, const char *suffix, int count, int64_t rows, int64_t cols,
                       rwkv_matrix *out) {
    int status = RWKV_OK;
    const rwkv_record *r = rwkv_need_tensor(ld, layer, suffix, &status);
    if (!r) return status;
    if (r->n_dims != 3 || r->ne[0] != cols || r->ne[1] != rows || r->ne[2] != count) {
        char shape[96];
        rwkv_shape_text(r, shape, sizeof shape);
        return rwkv_fail(ld->err, ld->err_len, RWKV_ERR_FORMAT,
                         "%s: tensor '%s' has shape %s; expected (%d, %lld, %lld)", ld->model->path, r->name, shape,
                         count, (long long)rows, (long long)cols);
    }
    const size_t matrix_bytes = rwkv_row_bytes(r->type, cols) * (size_t)rows;
    for (int j = 0; j < count; j++)
        out[j] = rwkv_matrix_at((const uint8_t *)r->data + (size_t)j * matrix_bytes, r->type, rows, cols);
    return RWKV_OK;
}

void rwkv_note_lora(rwkv_loader *ld, int64_t width) {
    if (width > ld->model->lora_width) ld->model->lora_width = width;
}
