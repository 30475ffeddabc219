/* Entry points for tests and tools, outside the engine's API: the block codecs of single rows, the
 * two kinds of matrix product through the engine's own code and the kernels in use, and forcing a
 * kernel level. The Python binding exposes them for tests/test_kernels.py and test_quantize.py. */
#ifndef RWKV_TESTING_H
#define RWKV_TESTING_H

#include "rwkv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Block codecs of one type: n must be a multiple of the block length. */
size_t rwkv_type_row_size(int type_id, int64_t n);
rwkv_status rwkv_quantize_row(int type_id, const float *src, void *dst, int64_t n);
rwkv_status rwkv_dequantize_row(int type_id, const void *src, float *dst, int64_t n);

/* y[rows] = W[rows x cols] x[cols]: decoding's matrix-vector product. */
rwkv_status rwkv_matvec(int type_id, const void *w, int64_t rows, int64_t cols, const float *x,
                        float *y);
/* y[T x rows] = x[T x cols] W^T through the row kernels (each weight row against every activation
 * row: batched decoding, short sequences), whatever T is. */
rwkv_status rwkv_matmul_rows(int type_id, const void *w, int64_t rows, int64_t cols, const float *x,
                             int64_t T, float *y);
/* y[T x rows] = x[T x cols] W^T for FP32 W: sequence mode's product (packed tokens, row tiles,
 * k in blocks of the engine's tile length), whatever T is. */
rwkv_status rwkv_matmul_f32(const float *w, int64_t rows, int64_t cols, const float *x, int64_t T,
                            float *y);

/* Installs a kernel level at or below the best the CPU supports. Not safe while a model is
 * evaluating. */
rwkv_status rwkv_set_kernel_level(const char *name);

#ifdef __cplusplus
}
#endif
#endif
