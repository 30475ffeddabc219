/* Checking a model file's numbers: every tensor decoded row by row through its type's decoder, so
 * that a non-finite block scale shows as the non-finite values it produces. */
#include <math.h>
#include <stdlib.h>

#include "dispatch.h"
#include "file.h"
#include "rwkv.h"
#include "types.h"

typedef struct {
    int64_t n_bad, first_bad;
} finite_count;

static void count_row(const float *row, int64_t n, int64_t offset, finite_count *count) {
    for (int64_t i = 0; i < n; i++) {
        if (isfinite(row[i])) continue;
        if (count->n_bad++ == 0) count->first_bad = offset + i;
    }
}

static finite_count check_record(const rwkv_record *r, float *row) {
    const rwkv_to_float_fn to_float = rwkv_kernels.to_float[r->type];
    const int64_t n = r->ne[0], rows = r->n_elements / n;
    const size_t row_bytes = rwkv_row_bytes(r->type, n);
    finite_count count = {0, -1};
    for (int64_t i = 0; i < rows; i++) {
        to_float((const uint8_t *)r->data + (size_t)i * row_bytes, row, n);
        count_row(row, n, i * n, &count);
    }
    return count;
}

rwkv_status rwkv_verify_file(const char *path, rwkv_verify_fn report, void *user, char *err, size_t err_len) {
    rwkv_dispatch_init();
    rwkv_file file;
    int status = rwkv_file_open(&file, path, 0, err, err_len);
    if (status != RWKV_OK) return status;
    int64_t widest = 1;
    for (int i = 0; i < file.n_records; i++)
        if (file.records[i].ne[0] > widest) widest = file.records[i].ne[0];
    float *row = malloc((size_t)widest * sizeof(float));
    if (!row) status = rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", path);
    for (int i = 0; i < file.n_records && status == RWKV_OK; i++) {
        const finite_count count = check_record(&file.records[i], row);
        if (count.n_bad && report) report(user, file.records[i].name, count.n_bad, count.first_bad);
    }
    free(row);
    rwkv_file_close(&file);
    return status;
}
