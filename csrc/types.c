/* The table of block formats, half precision, and the portable FP32 and FP16 codecs. */
#include "types.h"

#include "quant.h"

#include <math.h>
#include <string.h>

#include "rwkv_testing.h"

/* ---- half precision ---------------------------------------------------------------------- */

float rwkv_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (mant << 13); /* inf or nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else { /* subnormal: value = mant * 2^-24 */
        float f = (float)mant * 0x1p-24f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

uint16_t rwkv_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t abs = x & 0x7fffffff;
    if (abs > 0x7f800000) return (uint16_t)(sign | 0x7e00); /* nan */
    if (abs >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds to inf */
    if (abs < 0x38800000) { /* result is subnormal or zero: round mant * 2^24 to an integer */
        float a;
        memcpy(&a, &abs, 4);
        float scaled = a * 0x1p24f; /* exact: a is a multiple of 2^-149 */
        uint32_t q = (uint32_t)nearbyintf(scaled); /* default rounding mode: nearest even */
        return (uint16_t)(sign | q);
    }
    /* normal: drop 13 mantissa bits with round to nearest even */
    uint32_t rounded = abs + 0xfff + ((abs >> 13) & 1);
    return (uint16_t)(sign | ((rounded - (112u << 23)) >> 13));
}

/* ---- FP32 and FP16 rows ------------------------------------------------------------------- */

static void fp32_to_float(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * sizeof(float)); }
static void fp32_from_float(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * sizeof(float)); }

float rwkv_fp16_table[65536];

static void fp16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; i++) dst[i] = rwkv_fp16_table[h[i]];
}

static void fp16_from_float(const float *src, void *dst, int64_t n) {
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++) h[i] = rwkv_fp32_to_fp16(src[i]);
}

static float fp16_dot(const void *row, const void *act, int64_t n) {
    const uint16_t *w = row;
    const float *x = act;
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += rwkv_fp16_table[w[i + j]] * x[i + j];
    float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) sum += rwkv_fp16_table[w[i]] * x[i];
    return sum;
}

/* ---- the table ---------------------------------------------------------------------------- */

/* A quantized format: blocks of `len` values of its block struct, its reference codecs in quant.c
 * or quant_k.c, and 8-bit activations `act`. */
#define QUANTIZED(NAME, fmt, len, act)                                                                      \
    {.name = #NAME, .block_len = len, .block_bytes = sizeof(block_##fmt), .quantized = 1,                   \
     .to_float = rwkv_##fmt##_to_float, .from_float = rwkv_##fmt##_from_float, .act_type = act,              \
     .vec_dot = rwkv_##fmt##_dot}

static const rwkv_type_traits table[RWKV_N_TYPE_IDS] = {
    [RWKV_TYPE_FP32] = {.name = "FP32", .block_len = 1, .block_bytes = sizeof(float), .to_float = fp32_to_float,
                        .from_float = fp32_from_float, .act_type = RWKV_TYPE_FP32, .vec_dot = rwkv_fp32_dot},
    [RWKV_TYPE_FP16] = {.name = "FP16", .block_len = 1, .block_bytes = sizeof(uint16_t), .to_float = fp16_to_float,
                        .from_float = fp16_from_float, .act_type = RWKV_TYPE_FP32, .vec_dot = fp16_dot},
    [RWKV_TYPE_Q4_0] = QUANTIZED(Q4_0, q4_0, RWKV_QK, RWKV_ACT_Q8),
    [RWKV_TYPE_Q4_1] = QUANTIZED(Q4_1, q4_1, RWKV_QK, RWKV_ACT_Q8),
    [RWKV_TYPE_Q5_0] = QUANTIZED(Q5_0, q5_0, RWKV_QK, RWKV_ACT_Q8),
    [RWKV_TYPE_Q5_1] = QUANTIZED(Q5_1, q5_1, RWKV_QK, RWKV_ACT_Q8),
    [RWKV_TYPE_Q8_0] = QUANTIZED(Q8_0, q8_0, RWKV_QK, RWKV_ACT_Q8),
    [RWKV_TYPE_Q4_K] = QUANTIZED(Q4_K, q4_k, RWKV_QK_K, RWKV_ACT_Q8_FLOAT_SCALES),
    [RWKV_TYPE_Q5_K] = QUANTIZED(Q5_K, q5_k, RWKV_QK_K, RWKV_ACT_Q8_FLOAT_SCALES),
};

void rwkv_types_init(void) {
    for (uint32_t i = 0; i < 65536; i++) rwkv_fp16_table[i] = rwkv_fp16_to_fp32((uint16_t)i);
}

const rwkv_type_traits *rwkv_traits(int type_id) {
    if (type_id < 0 || type_id >= RWKV_N_TYPE_IDS || table[type_id].name == NULL) return NULL;
    return &table[type_id];
}

size_t rwkv_row_bytes(int type_id, int64_t n) {
    const rwkv_type_traits *t = rwkv_traits(type_id);
    return (size_t)(n / t->block_len) * t->block_bytes;
}

size_t rwkv_act_row_bytes(int act_type, int64_t n) {
    if (act_type != RWKV_TYPE_FP32) return (size_t)(n / RWKV_QK) * RWKV_ACT_Q8_BLOCK_BYTES;
    return (size_t)n * sizeof(float);
}

const char *rwkv_type_name(int type_id) {
    const rwkv_type_traits *t = rwkv_traits(type_id);
    return t ? t->name : NULL;
}

size_t rwkv_type_row_size(int type_id, int64_t n) {
    const rwkv_type_traits *t = rwkv_traits(type_id);
    if (!t || n % t->block_len != 0) return 0;
    return rwkv_row_bytes(type_id, n);
}
