/* Quantizing a model file, tensor by tensor, and the codecs of single rows for tests. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "arch/arch.h"
#include "dispatch.h"
#include "file.h"
#include "loader.h"
#include "output.h"
#include "rwkv_testing.h"

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* The rule rwkv.cpp applies, so that quantized files are byte-identical to its own: float 2-D
 * tensors but the embedding, the head (unless asked) and those the version keeps in float. */
static int should_quantize(const rwkv_record *r, const rwkv_arch_ops *arch, int quantize_head) {
    if (r->n_dims != 2 || (r->type != RWKV_TYPE_FP32 && r->type != RWKV_TYPE_FP16)) return 0;
    if (strcmp(r->name, "emb.weight") == 0) return 0;
    if (strcmp(r->name, "head.weight") == 0) return quantize_head;
    for (const char *const *kept = arch->float_tensors; kept && *kept; kept++)
        if (ends_with(r->name, *kept)) return 0;
    return 1;
}

static int write_i32s(rwkv_output *out, const int32_t *v, int n) {
    uint8_t buf[64];
    for (int i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) buf[4 * i + b] = (uint8_t)((uint32_t)v[i] >> (8 * b));
    return rwkv_output_write(out, buf, 4 * (size_t)n);
}

typedef struct {
    rwkv_output *out;
    float *row;
    uint8_t *block_row;
} quant_buffers;

static int quantize_tensor(const rwkv_record *r, int type_id, quant_buffers *b) {
    const rwkv_to_float_fn to_float = rwkv_kernels.to_float[r->type];
    const rwkv_type_traits *dst = rwkv_traits(type_id);
    const int64_t n = r->ne[0], rows = r->ne[1] * r->ne[2];
    const size_t in_row = rwkv_row_bytes(r->type, n), out_row = rwkv_row_bytes(type_id, n);
    for (int64_t i = 0; i < rows; i++) {
        to_float((const uint8_t *)r->data + (size_t)i * in_row, b->row, n);
        dst->from_float(b->row, b->block_row, n);
        if (!rwkv_output_write(b->out, b->block_row, out_row)) return 0;
    }
    return 1;
}

static int write_record(const rwkv_record *r, int type, rwkv_output *out) {
    int32_t head[3 + 3] = {r->n_dims, (int32_t)strlen(r->name), type};
    for (int d = 0; d < r->n_dims; d++) head[3 + d] = (int32_t)r->ne[d];
    return write_i32s(out, head, 3 + r->n_dims) && rwkv_output_write(out, r->name, strlen(r->name));
}

/* Every tensor can be read as floats and, when it is to be quantized, cut into blocks. */
static int check_records(const rwkv_file *in, const rwkv_arch_ops *arch, int type_id, int quantize_head,
                         int64_t *widest, char *err, size_t err_len) {
    const rwkv_type_traits *dst = rwkv_traits(type_id);
    *widest = 1;
    for (int i = 0; i < in->n_records; i++) {
        const rwkv_record *r = &in->records[i];
        if (r->type != RWKV_TYPE_FP32 && r->type != RWKV_TYPE_FP16)
            return rwkv_fail(err, err_len, RWKV_ERR_ARGS,
                             "%s: tensor '%s' is already %s; quantize from an FP32 or FP16 model", in->path,
                             r->name, rwkv_type_name(r->type));
        if (should_quantize(r, arch, quantize_head) && r->ne[0] % dst->block_len != 0)
            return rwkv_fail(err, err_len, RWKV_ERR_FORMAT,
                             "%s: tensor '%s' cannot be quantized to %s: its rows have %lld values, not a multiple "
                             "of %d%s",
                             in->path, r->name, dst->name, (long long)r->ne[0], dst->block_len,
                             dst->block_len > RWKV_QK && r->ne[0] % RWKV_QK == 0
                                 ? " (a format with 32-value blocks, such as Q5_1 or Q8_0, can hold it)"
                                 : "");
        if (r->ne[0] > *widest) *widest = r->ne[0];
    }
    return RWKV_OK;
}

/* Writes the quantized model into `out`; a failed write is reported by rwkv_output_commit. */
static int quantize_records(const rwkv_file *in, rwkv_output *out, int type_id, int quantize_head,
                            rwkv_progress_fn progress, void *user, char *err, size_t err_len) {
    const rwkv_arch_ops *arch = rwkv_arch_ops_of(rwkv_arch_detect(in));
    int64_t widest;
    TRY(check_records(in, arch, type_id, quantize_head, &widest, err, err_len));
    quant_buffers b = {out, malloc((size_t)widest * sizeof(float)), malloc(rwkv_row_bytes(RWKV_TYPE_FP32, widest))};
    int status = RWKV_OK;
    if (!b.row || !b.block_row) status = rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "out of memory");
    const rwkv_header *h = &in->header;
    const int32_t header[6] = {RWKV_FILE_MAGIC, 101, h->n_vocab, h->n_embed, h->n_layer, type_id};
    int written = status == RWKV_OK && write_i32s(out, header, 6);
    for (int i = 0; i < in->n_records && written && status == RWKV_OK; i++) {
        const rwkv_record *r = &in->records[i];
        const int q = should_quantize(r, arch, quantize_head);
        written = write_record(r, q ? type_id : r->type, out) &&
                  (q ? quantize_tensor(r, type_id, &b) : rwkv_output_write(out, r->data, r->nbytes));
        if (progress && written && progress(user, i + 1, in->n_records, r->name) != 0)
            status = rwkv_fail(err, err_len, RWKV_ERR_CANCELLED, "quantization cancelled");
    }
    free(b.row);
    free(b.block_row);
    return status;
}

static int same_file(const rwkv_file *in, const rwkv_output *out) {
    struct stat src;
    return out->exists && fstat(in->fd, &src) == 0 && src.st_dev == out->existing.st_dev &&
           src.st_ino == out->existing.st_ino;
}

rwkv_status rwkv_quantize_file(const char *src_path, const char *dst_path, int type_id, int quantize_head,
                               rwkv_progress_fn progress, void *user, char *err, size_t err_len) {
    rwkv_dispatch_init();
    const rwkv_type_traits *t = rwkv_traits(type_id);
    if (!t || !t->quantized)
        return rwkv_fail(err, err_len, RWKV_ERR_ARGS,
                         "type id %d is not a quantized type (Q4_0 2, Q4_1 3, Q5_0 7, Q5_1 8, Q8_0 9, Q4_K 13, "
                         "Q5_K 14)",
                         type_id);
    rwkv_file in;
    TRY(rwkv_file_open(&in, src_path, 0, err, err_len));
    rwkv_output out;
    int status = RWKV_OK;
    if (in.header.data_type != RWKV_TYPE_FP32 && in.header.data_type != RWKV_TYPE_FP16)
        status = rwkv_fail(err, err_len, RWKV_ERR_ARGS, "%s: the model is %s; quantize from an FP32 or FP16 model",
                           src_path, rwkv_type_name(in.header.data_type));
    else status = rwkv_output_open(&out, dst_path, err, err_len);
    if (status == RWKV_OK && same_file(&in, &out)) {
        rwkv_output_abort(&out);
        status = rwkv_fail(err, err_len, RWKV_ERR_ARGS, "%s: the destination is the source file itself", dst_path);
    } else if (status == RWKV_OK) {
        status = quantize_records(&in, &out, type_id, quantize_head, progress, user, err, err_len);
        if (status == RWKV_OK) status = rwkv_output_commit(&out, err, err_len);
        else rwkv_output_abort(&out);
    }
    rwkv_file_close(&in);
    return status;
}

/* ---- codecs of single rows, for tests and tools (rwkv_testing.h) ------------------------------ */

static const rwkv_type_traits *row_traits(int type_id, int64_t n) {
    rwkv_dispatch_init();
    const rwkv_type_traits *t = rwkv_traits(type_id);
    return t && n >= 0 && n % t->block_len == 0 ? t : NULL;
}

rwkv_status rwkv_quantize_row(int type_id, const float *src, void *dst, int64_t n) {
    const rwkv_type_traits *t = row_traits(type_id, n);
    if (!t) return RWKV_ERR_ARGS;
    t->from_float(src, dst, n);
    return RWKV_OK;
}

rwkv_status rwkv_dequantize_row(int type_id, const void *src, float *dst, int64_t n) {
    if (!row_traits(type_id, n)) return RWKV_ERR_ARGS;
    rwkv_kernels.to_float[type_id](src, dst, n);
    return RWKV_OK;
}
