/* Finding a model's tensors in its file and checking their shapes: what model.c and each
 * version's load_att (arch/vN.c) build the layers from. Every function returns an rwkv_status and
 * writes the loader's error message on failure; names are a layer's suffixes ("att.time_decay"),
 * or whole names when layer < 0. */
#ifndef RWKV_LOADER_H
#define RWKV_LOADER_H

#include "model.h"

typedef struct {
    rwkv_model *model;
    char *err;
    size_t err_len;
    char name[RWKV_MAX_NAME + 64];
} rwkv_loader;

#define TRY(call)                                                                                           \
    do {                                                                                                    \
        int status_ = (call);                                                                               \
        if (status_ != RWKV_OK) return status_;                                                             \
    } while (0)

/* Zeroed memory that lives as long as the model; NULL when out of memory. */
void *rwkv_loader_alloc(rwkv_loader *ld, size_t bytes);

/* A tensor's shape as "(rows, cols)", in PyTorch order (outermost first), which is how users
 * know their tensors. */
void rwkv_shape_text(const rwkv_record *r, char *buf, size_t n);

int rwkv_has_tensor(rwkv_loader *ld, int layer, const char *suffix);
/* The tensor, or NULL with *status set and the error written. */
const rwkv_record *rwkv_need_tensor(rwkv_loader *ld, int layer, const char *suffix, int *status);

/* A vector of n floats, stored in any shape with n elements (copied when not FP32). */
int rwkv_want_vector(rwkv_loader *ld, int layer, const char *suffix, int64_t n, const float **out);
/* A layer norm's weight and bias of n floats each: `name`.weight and `name`.bias. */
int rwkv_want_norm(rwkv_loader *ld, int layer, const char *name, int64_t n, rwkv_norm *out);
/* A matrix of rows x cols (PyTorch order); a size of 0 means "whatever the file says". */
int rwkv_want_matrix(rwkv_loader *ld, int layer, const char *suffix, int64_t rows, int64_t cols, rwkv_matrix *out);
/* The same for a low-rank factor that may be stored either way round: files from some converters
 * keep the PyTorch (in, out) orientation. A transposed one is copied into rows x cols FP32. */
int rwkv_want_either_way(rwkv_loader *ld, int layer, const char *suffix, int64_t rows, int64_t cols,
                         rwkv_matrix *out);
/* A 3-D tensor of shape (count, rows, cols) as `count` matrices of rows x cols. */
int rwkv_want_matrices(rwkv_loader *ld, int layer, const char *suffix, int count, int64_t rows, int64_t cols,
                       rwkv_matrix *out);

/* Records the width of a low-rank network's hidden layer, which the scratch must hold. */
void rwkv_note_lora(rwkv_loader *ld, int64_t width);

#endif
