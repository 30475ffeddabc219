/* Quantizing a model file, tensor by tensor, and the codecs of single rows for tests. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arch/arch.h"
#include "dispatch.h"
#include "file.h"
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

/* mkstemp creates files readable by the owner only; a model file should get the usual mode. */
static void fchmod_like_umask(const char *path) {
    mode_t mask = umask(0);
    umask(mask);
    chmod(path, 0666 & ~mask);
}

static int write_i32s(FILE *out, const int32_t *v, int n) {
    uint8_t buf[64];
    for (int i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) buf[4 * i + b] = (uint8_t)((uint32_t)v[i] >> (8 * b));
    return fwrite(buf, 4, (size_t)n, out) == (size_t)n;
}

typedef struct {
    FILE *out;
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
        if (fwrite(b->block_row, 1, out_row, b->out) != out_row) return 0;
    }
    return 1;
}

static int write_record(const rwkv_record *r, int type, FILE *out) {
    int32_t head[3 + 3] = {r->n_dims, (int32_t)strlen(r->name), type};
    for (int d = 0; d < r->n_dims; d++) head[3 + d] = (int32_t)r->ne[d];
    return write_i32s(out, head, 3 + r->n_dims) && fwrite(r->name, 1, strlen(r->name), out) == strlen(r->name);
}

static int quantize_records(const rwkv_file *in, int fd, const char *tmp_path, int type_id, int quantize_head,
                            rwkv_progress_fn progress, void *user, char *err, size_t err_len) {
    const rwkv_arch_ops *arch = rwkv_arch_ops_of(rwkv_arch_detect(in));
    const rwkv_type_traits *dst = rwkv_traits(type_id);
    int64_t widest = 1;
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
        if (r->ne[0] > widest) widest = r->ne[0];
    }
    quant_buffers b = {fdopen(fd, "wb"), malloc((size_t)widest * sizeof(float)),
                       malloc(rwkv_row_bytes(RWKV_TYPE_FP32, widest))};
    int status = RWKV_OK;
    if (!b.out) status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot create: %s", tmp_path, strerror(errno));
    else if (!b.row || !b.block_row) status = rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "out of memory");
    if (status == RWKV_OK) {
        const rwkv_header *h = &in->header;
        int32_t header[6] = {RWKV_FILE_MAGIC, 101, h->n_vocab, h->n_embed, h->n_layer, type_id};
        if (!write_i32s(b.out, header, 6)) status = RWKV_ERR_IO;
        for (int i = 0; i < in->n_records && status == RWKV_OK; i++) {
            const rwkv_record *r = &in->records[i];
            int q = should_quantize(r, arch, quantize_head);
            if (!write_record(r, q ? type_id : r->type, b.out)) status = RWKV_ERR_IO;
            else if (q ? !quantize_tensor(r, type_id, &b) : fwrite(r->data, 1, r->nbytes, b.out) != r->nbytes)
                status = RWKV_ERR_IO;
            if (progress && status == RWKV_OK && progress(user, i + 1, in->n_records, r->name) != 0)
                status = rwkv_fail(err, err_len, RWKV_ERR_CANCELLED, "quantization cancelled");
        }
        if (status == RWKV_ERR_IO) rwkv_fail(err, err_len, status, "%s: write failed: %s", tmp_path, strerror(errno));
    }
    if (!b.out) close(fd);
    if (b.out && fclose(b.out) != 0 && status == RWKV_OK)
        status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: write failed: %s", tmp_path, strerror(errno));
    free(b.row);
    free(b.block_row);
    return status;
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
    int status = rwkv_file_open(&in, src_path, err, err_len);
    if (status != RWKV_OK) return status;
    if (in.header.data_type != RWKV_TYPE_FP32 && in.header.data_type != RWKV_TYPE_FP16) {
        status = rwkv_fail(err, err_len, RWKV_ERR_ARGS, "%s: the model is %s; quantize from an FP32 or FP16 model",
                           src_path, rwkv_type_name(in.header.data_type));
        rwkv_file_close(&in);
        return status;
    }
    struct stat src_st, dst_st;
    if (stat(dst_path, &dst_st) == 0 && fstat(in.fd, &src_st) == 0 && src_st.st_dev == dst_st.st_dev &&
        src_st.st_ino == dst_st.st_ino) {
        rwkv_file_close(&in);
        return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "%s: the destination is the source file itself", dst_path);
    }
    size_t n = strlen(dst_path) + 16;
    char *tmp_path = malloc(n);
    if (!tmp_path) {
        rwkv_file_close(&in);
        return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "out of memory");
    }
    snprintf(tmp_path, n, "%s.tmp-XXXXXX", dst_path);
    int fd = mkstemp(tmp_path); /* a fresh name: never follows a link, never shared with another run */
    if (fd < 0) status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot create a file there: %s", dst_path, strerror(errno));
    else status = quantize_records(&in, fd, tmp_path, type_id, quantize_head, progress, user, err, err_len);
    rwkv_file_close(&in);
    if (status == RWKV_OK) fchmod_like_umask(tmp_path);
    if (status == RWKV_OK && rename(tmp_path, dst_path) != 0)
        status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot rename into place: %s", dst_path, strerror(errno));
    if (status != RWKV_OK && fd >= 0) unlink(tmp_path);
    free(tmp_path);
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
