/* The block formats: what each type id of the file is, as a const table of facts (types.c).
 *
 * A matrix product y = W x works on rows of W. Before the product, the activation vector x is
 * converted once into the format the row kernel wants (`act_type`): FP32 for float weights, 8-bit
 * blocks for quantized ones, so the inner loop is an integer dot product. Adding a format is one
 * entry in the table plus its reference codecs in quant.c and, optionally, faster kernels in
 * kernels/<isa>.c, entered in that level's kernel table (dispatch.h).
 */
#ifndef RWKV_TYPES_H
#define RWKV_TYPES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rwkv.h"

#define RWKV_QK 32    /* elements per quantized block, and per sub-block of a K super-block */
#define RWKV_QK_K 256 /* elements per super-block of the K formats */

/* Type ids are below this (the largest, Q5_K's, plus one): the table of formats and the kernel
 * table have an entry per id. */
#define RWKV_N_TYPE_IDS (RWKV_TYPE_Q5_K + 1)

/* The file's block formats (docs/FORMAT.md): FP16 scale d (and minimum m), then the values; 5-bit
 * formats keep the fifth bits of all 32 values in qh. The format does not align tensor data, so
 * blocks are read in place from any byte offset: packing makes that defined (alignment 1; the
 * same loads on x86-64 and AArch64, which allow unaligned ones). `#pragma pack` is the one form
 * GCC, clang and MSVC all take. */
#pragma pack(push, 1)
typedef struct { uint16_t d; uint8_t qs[16]; } block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[16]; } block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } block_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } block_q5_1;
typedef struct { uint16_t d; int8_t qs[32]; } block_q8_0;
_Static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");
_Static_assert(sizeof(block_q4_1) == 20, "Q4_1 block is 20 bytes");
_Static_assert(sizeof(block_q5_0) == 22, "Q5_0 block is 22 bytes");
_Static_assert(sizeof(block_q5_1) == 24, "Q5_1 block is 24 bytes");
_Static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");

/* The K formats (ggml's Q4_K, Q5_K): a super-block of 256 values is eight sub-blocks of 32, and
 * value i of sub-block j is d * sc[j] * q[i] - dmin * m[j], with FP16 d and dmin and 6-bit sc[j]
 * and m[j] packed into 12 bytes (rwkv_k_scales). The quants of sub-blocks 2c and 2c + 1 share
 * the 32 bytes qs[32c..32c+31], as low and high nibbles; Q5_K's fifth bits are bit j of qh[i]. */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; } block_k_head;
typedef struct { block_k_head head; uint8_t qs[128]; } block_q4_k;
typedef struct { block_k_head head; uint8_t qh[32]; uint8_t qs[128]; } block_q5_k;
#pragma pack(pop)
_Static_assert(sizeof(block_q4_k) == 144, "Q4_K super-block is 144 bytes");
_Static_assert(sizeof(block_q5_k) == 176, "Q5_K super-block is 176 bytes");
_Static_assert(_Alignof(block_q8_0) == 1 && _Alignof(block_q5_k) == 1, "blocks are read at any byte offset");

/* The 6-bit scales sc[j] and minimums m[j] of a K super-block. For j < 4, sub-block j has its sc
 * and m in the low six bits of bytes j and 4 + j, and sub-block 4 + j has the low four bits of
 * its sc and m in the low and high nibble of byte 8 + j and their top two bits in the top bits of
 * bytes j and 4 + j. Four bytes at a time, as little-endian words (the masks keep each byte's
 * bits from its neighbours'). */
static inline void rwkv_k_scales(const uint8_t s[12], uint8_t sc[8], uint8_t m[8]) {
    uint32_t w[3], out[4];
    memcpy(w, s, sizeof w);
    out[0] = w[0] & 0x3f3f3f3f;
    out[1] = (w[2] & 0x0f0f0f0f) | ((w[0] >> 6) & 0x03030303) << 4;
    out[2] = w[1] & 0x3f3f3f3f;
    out[3] = ((w[2] >> 4) & 0x0f0f0f0f) | ((w[1] >> 6) & 0x03030303) << 4;
    memcpy(sc, out, 8);
    memcpy(m, out + 2, 8);
}

/* The activation format of quantized products: a row of n values in 32-value blocks, each with
 * int8 values q and a float scale d, plus s = d * sum(q), which lets "q*d + m" formats add
 * m * sum(x) without touching x again, and dsum = d * sum(q) with d exactly as stored, for kernels
 * that shift the weights' values into unsigned bytes and take the shift back out (s may be rounded
 * apart from d: see RWKV_ACT_Q8). The row is stored as four arrays, d[nb], s[nb], dsum[nb], then
 * q[nb][32], so that kernels can load the scales of eight blocks at once. Quantizers of a kernel
 * level fill d, s and q; rwkv_act_from_float (matmul.c) rounds and fills dsum. */
#define RWKV_ACT_Q8_BLOCK_BYTES (3 * sizeof(float) + RWKV_QK)

typedef struct {
    float *d, *s, *dsum;
    int8_t (*q)[RWKV_QK];
} rwkv_q8_row;

/* The arrays of an activation row of n values starting at `act` (kernels only read through it). */
static inline rwkv_q8_row rwkv_q8_row_at(const void *act, int64_t n) {
    float *base = (float *)act;
    const int64_t nb = n / RWKV_QK;
    return (rwkv_q8_row){base, base + nb, base + 2 * nb, (int8_t(*)[RWKV_QK])(base + 3 * nb)};
}

/* Internal ids for the activation formats above; not file types. Both have the layout above. The
 * 32-value formats take RWKV_ACT_Q8, whose d and s are then rounded to half precision, as ggml's
 * Q8_0 and Q8_1 activations are: rwkv.cpp's recorded logits follow that rounding (with float
 * scales its tiny v5.1 and v7 models ended outside its own 5% band). The K formats take
 * RWKV_ACT_Q8_FLOAT_SCALES, keeping d and s in float, as ggml's Q8_K does. */
#define RWKV_ACT_Q8 100
#define RWKV_ACT_Q8_FLOAT_SCALES 101

typedef void (*rwkv_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*rwkv_from_float_fn)(const float *src, void *dst, int64_t n);
/* Dot product of one weight row of n elements with an activation row in act_type format. */
typedef float (*rwkv_vec_dot_fn)(const void *row, const void *act, int64_t n);

/* One format. The functions are the portable reference codecs; a kernel level may install faster
 * decoders and dots in the kernel table (dispatch.h), never a different rounding. */
typedef struct {
    const char *name;
    int block_len;
    size_t block_bytes;
    int quantized;
    rwkv_to_float_fn to_float;
    rwkv_from_float_fn from_float; /* reference rounding (the file format's truth) */
    int act_type;                  /* RWKV_TYPE_FP32, RWKV_ACT_Q8 or RWKV_ACT_Q8_FLOAT_SCALES */
    rwkv_vec_dot_fn vec_dot;
} rwkv_type_traits;

/* NULL for ids that are not valid file types. */
const rwkv_type_traits *rwkv_traits(int type_id);
size_t rwkv_row_bytes(int type_id, int64_t n);
size_t rwkv_act_row_bytes(int act_type, int64_t n);

/* The portable FP32 dot: the FP32 format's vec_dot, and the inner loop of the portable micro-GEMM
 * (matmul.c), which inlines it. Eight independent sums let the compiler vectorise without
 * reassociating one long chain. */
static inline float rwkv_fp32_dot(const void *row, const void *act, int64_t n) {
    const float *w = row, *x = act;
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += w[i + j] * x[i + j];
    float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) sum += w[i] * x[i];
    return sum;
}

/* Every FP16 value as a float, indexed by its bits (filled by rwkv_types_init). */
extern float rwkv_fp16_table[65536];

/* Half precision, portable (round to nearest even). */
float rwkv_fp16_to_fp32(uint16_t h);
uint16_t rwkv_fp32_to_fp16(float f);

/* 8-bit activation blocks (quant.c). */
void rwkv_quantize_row_q8_act(const float *src, void *dst, int64_t n);

/* Fills the fp16 lookup table; called once by dispatch.c before kernels are installed. */
void rwkv_types_init(void);

#endif
