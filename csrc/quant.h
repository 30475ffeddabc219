/* The reference block codecs (quant.c; the K formats in quant_k.c), referenced by the table of
 * formats in types.c. */
#ifndef RWKV_QUANT_H
#define RWKV_QUANT_H

#include <stdint.h>

void rwkv_q4_0_from_float(const float *src, void *dst, int64_t n);
void rwkv_q4_0_to_float(const void *src, float *dst, int64_t n);
float rwkv_q4_0_dot(const void *row, const void *act, int64_t n);
void rwkv_q4_1_from_float(const float *src, void *dst, int64_t n);
void rwkv_q4_1_to_float(const void *src, float *dst, int64_t n);
float rwkv_q4_1_dot(const void *row, const void *act, int64_t n);
void rwkv_q5_0_from_float(const float *src, void *dst, int64_t n);
void rwkv_q5_0_to_float(const void *src, float *dst, int64_t n);
float rwkv_q5_0_dot(const void *row, const void *act, int64_t n);
void rwkv_q5_1_from_float(const float *src, void *dst, int64_t n);
void rwkv_q5_1_to_float(const void *src, float *dst, int64_t n);
float rwkv_q5_1_dot(const void *row, const void *act, int64_t n);
void rwkv_q8_0_from_float(const float *src, void *dst, int64_t n);
void rwkv_q8_0_to_float(const void *src, float *dst, int64_t n);
float rwkv_q8_0_dot(const void *row, const void *act, int64_t n);
void rwkv_q4_k_from_float(const float *src, void *dst, int64_t n);
void rwkv_q4_k_to_float(const void *src, float *dst, int64_t n);
float rwkv_q4_k_dot(const void *row, const void *act, int64_t n);
void rwkv_q5_k_from_float(const float *src, void *dst, int64_t n);
void rwkv_q5_k_to_float(const void *src, float *dst, int64_t n);
float rwkv_q5_k_dot(const void *row, const void *act, int64_t n);

#endif
