/* The reference block codecs: the truth that every SIMD kernel is tested against.
 *
 * Rounding follows docs/FORMAT.md exactly, so files quantized here are byte-identical to
 * rwkv.cpp's. Dot products take the weight row in its block format and the activations as an
 * 8-bit row (rwkv_q8_row). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "rwkv.h"
#include "quant.h"
#include "types.h"

#define FP16 rwkv_fp32_to_fp16
#define FP32 rwkv_fp16_to_fp32

/* The element of largest magnitude, sign kept; the first one wins ties. */
static float signed_absmax(const float *x) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < RWKV_QK; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    return max;
}

static void block_min_max(const float *x, float *min, float *max) {
    *min = FLT_MAX;
    *max = -FLT_MAX;
    for (int j = 0; j < RWKV_QK; j++) {
        if (x[j] < *min) *min = x[j];
        if (x[j] > *max) *max = x[j];
    }
}

static inline uint32_t load_qh(const uint8_t qh[4]) {
    uint32_t v;
    memcpy(&v, qh, 4); /* little-endian in the file; all supported hosts are little-endian */
    return v;
}

/* Element i (0-31) of a 4-bit block: low nibbles hold elements 0-15, high nibbles 16-31. */
static inline int q4_at(const uint8_t qs[16], int i) { return i < 16 ? qs[i] & 0xf : qs[i - 16] >> 4; }

/* Element i of a 5-bit block: the nibble plus bit i of qh as the fifth bit. */
static inline int q5_at(const uint8_t qs[16], uint32_t qh, int i) { return q4_at(qs, i) | (int)((qh >> i) & 1) << 4; }

static void pack_q4(uint8_t qs[16], const int q[RWKV_QK]) {
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((q[j] & 0xf) | ((q[j + 16] & 0xf) << 4));
}

static void pack_q5(uint8_t qs[16], uint8_t qh[4], const int q[RWKV_QK]) {
    uint32_t bits = 0;
    for (int i = 0; i < RWKV_QK; i++) bits |= (uint32_t)((q[i] & 0x10) >> 4) << i;
    pack_q4(qs, q);
    memcpy(qh, &bits, 4);
}

/* ---- quantize (reference rounding) -------------------------------------------------------- */

/* (int8_t)v and (uint8_t)v where v is in the type's range, as the reference rounding does; beyond
 * it (a scale whose inverse overflows) clamped, and NaN 0, since converting those is undefined. */
static int to_int8(float v) { return isnan(v) ? 0 : (int8_t)(v > 127.0f ? 127.0f : v < -128.0f ? -128.0f : v); }
static int to_uint8(float v) { return isnan(v) ? 0 : (uint8_t)(v > 255.0f ? 255.0f : v < 0.0f ? 0.0f : v); }

/* "q*d" formats: the element of largest magnitude maps to -half (d keeps its sign), values are
 * offset by +half and clamped to 2*half - 1. Returns d. */
static float round_symmetric(const float *x, int half, int q[RWKV_QK]) {
    const float d = signed_absmax(x) / (float)-half;
    const float id = d ? 1.0f / d : 0.0f;
    for (int i = 0; i < RWKV_QK; i++) {
        const int v = to_int8(x[i] * id + ((float)half + 0.5f));
        q[i] = v < 2 * half - 1 ? v : 2 * half - 1;
    }
    return d;
}

/* "q*d + m" formats: min..max in `levels` steps; values clamped to `top`. Returns d, sets *min. */
static float round_min_max(const float *x, int levels, int top, float *min, int q[RWKV_QK]) {
    float max;
    block_min_max(x, min, &max);
    const float d = (max - *min) / (float)levels;
    const float id = d ? 1.0f / d : 0.0f;
    for (int i = 0; i < RWKV_QK; i++) {
        const int v = to_uint8((x[i] - *min) * id + 0.5f);
        q[i] = v < top ? v : top;
    }
    return d;
}

/* 8-bit symmetric rounding (Q8_0 weights and activations): amax maps to 127. Returns d. */
static float round_q8(const float *x, int8_t q[RWKV_QK]) {
    float amax = 0.0f;
    for (int j = 0; j < RWKV_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f;
    const float id = d ? 1.0f / d : 0.0f;
    for (int j = 0; j < RWKV_QK; j++) q[j] = (int8_t)to_int8(roundf(x[j] * id));
    return d;
}

void rwkv_q4_0_from_float(const float *x, void *dst, int64_t n) {
    block_q4_0 *y = dst;
    int q[RWKV_QK];
    for (int64_t b = 0; b < n / RWKV_QK; b++, x += RWKV_QK) {
        y[b].d = FP16(round_symmetric(x, 8, q));
        pack_q4(y[b].qs, q);
    }
}

void rwkv_q4_1_from_float(const float *x, void *dst, int64_t n) {
    block_q4_1 *y = dst;
    int q[RWKV_QK];
    for (int64_t b = 0; b < n / RWKV_QK; b++, x += RWKV_QK) {
        float min;
        y[b].d = FP16(round_min_max(x, 15, 15, &min, q));
        y[b].m = FP16(min);
        pack_q4(y[b].qs, q);
    }
}

void rwkv_q5_0_from_float(const float *x, void *dst, int64_t n) {
    block_q5_0 *y = dst;
    int q[RWKV_QK];
    for (int64_t b = 0; b < n / RWKV_QK; b++, x += RWKV_QK) {
        y[b].d = FP16(round_symmetric(x, 16, q));
        pack_q5(y[b].qs, y[b].qh, q);
    }
}

void rwkv_q5_1_from_float(const float *x, void *dst, int64_t n) {
    block_q5_1 *y = dst;
    int q[RWKV_QK];
    for (int64_t b = 0; b < n / RWKV_QK; b++, x += RWKV_QK) {
        float min;
        y[b].d = FP16(round_min_max(x, 31, 255, &min, q)); /* 255: no clamp, as rwkv.cpp */
        y[b].m = FP16(min);
        pack_q5(y[b].qs, y[b].qh, q);
    }
}

void rwkv_q8_0_from_float(const float *x, void *dst, int64_t n) {
    block_q8_0 *y = dst;
    for (int64_t b = 0; b < n / RWKV_QK; b++, x += RWKV_QK) y[b].d = FP16(round_q8(x, y[b].qs));
}

void rwkv_quantize_row_q8_act(const float *x, void *dst, int64_t n) {
    const rwkv_q8_row y = rwkv_q8_row_at(dst, n);
    for (int64_t b = 0; b < n / RWKV_QK; b++, x += RWKV_QK) {
        const float d = round_q8(x, y.q[b]);
        int sum = 0;
        for (int j = 0; j < RWKV_QK; j++) sum += y.q[b][j];
        y.d[b] = d;
        y.s[b] = d * (float)sum;
    }
}

/* ---- reading blocks: dequantize and dot products ------------------------------------------- */

/* Each format's block as 32 integer values v (all fit in a signed byte), a scale d and (for "q*d + m" formats) a minimum m:
 * element i is v[i] * d (+ m). The loops below are the same for every format. */
typedef void (*read_block_fn)(const void *block, int8_t v[RWKV_QK], float *d, float *m);

static void read_q4_0(const void *p, int8_t v[RWKV_QK], float *d, float *m) {
    const block_q4_0 *x = p;
    for (int i = 0; i < RWKV_QK; i++) v[i] = (int8_t)(q4_at(x->qs, i) - 8);
    *d = FP32(x->d), *m = 0.0f;
}

static void read_q4_1(const void *p, int8_t v[RWKV_QK], float *d, float *m) {
    const block_q4_1 *x = p;
    for (int i = 0; i < RWKV_QK; i++) v[i] = (int8_t)q4_at(x->qs, i);
    *d = FP32(x->d), *m = FP32(x->m);
}

static void read_q5_0(const void *p, int8_t v[RWKV_QK], float *d, float *m) {
    const block_q5_0 *x = p;
    const uint32_t qh = load_qh(x->qh);
    for (int i = 0; i < RWKV_QK; i++) v[i] = (int8_t)(q5_at(x->qs, qh, i) - 16);
    *d = FP32(x->d), *m = 0.0f;
}

static void read_q5_1(const void *p, int8_t v[RWKV_QK], float *d, float *m) {
    const block_q5_1 *x = p;
    const uint32_t qh = load_qh(x->qh);
    for (int i = 0; i < RWKV_QK; i++) v[i] = (int8_t)q5_at(x->qs, qh, i);
    *d = FP32(x->d), *m = FP32(x->m);
}

static void read_q8_0(const void *p, int8_t v[RWKV_QK], float *d, float *m) {
    const block_q8_0 *x = p;
    for (int i = 0; i < RWKV_QK; i++) v[i] = x->qs[i];
    *d = FP32(x->d), *m = 0.0f;
}

/* has_min: the format adds m (the others skip the term, so results are exactly v * d). */
static inline void blocks_to_float(const uint8_t *src, size_t block_bytes, read_block_fn read, int has_min, float *y,
                                   int64_t n) {
    int8_t v[RWKV_QK];
    float d, m;
    for (int64_t b = 0; b < n / RWKV_QK; b++, y += RWKV_QK) {
        read(src + (size_t)b * block_bytes, v, &d, &m);
        for (int i = 0; i < RWKV_QK; i++) y[i] = has_min ? v[i] * d + m : v[i] * d;
    }
}

/* With 8-bit activations: d_w * d_x * sum(v * q) per block, plus m * s where the format has m. */
static inline float blocks_dot(const uint8_t *row, size_t block_bytes, read_block_fn read, int has_min,
                               const void *act, int64_t n) {
    const rwkv_q8_row y = rwkv_q8_row_at(act, n);
    int8_t v[RWKV_QK];
    float d, m, sum = 0.0f;
    for (int64_t b = 0; b < n / RWKV_QK; b++) {
        read(row + (size_t)b * block_bytes, v, &d, &m);
        int acc = 0;
        for (int i = 0; i < RWKV_QK; i++) acc += v[i] * y.q[b][i];
        sum += has_min ? d * y.d[b] * (float)acc + m * y.s[b] : d * y.d[b] * (float)acc;
    }
    return sum;
}

#define BLOCK_CODECS(fmt, has_min)                                                                   \
    void rwkv_##fmt##_to_float(const void *src, float *y, int64_t n) {                               \
        blocks_to_float(src, sizeof(block_##fmt), read_##fmt, has_min, y, n);                         \
    }                                                                                                \
    float rwkv_##fmt##_dot(const void *row, const void *act, int64_t n) {                            \
        return blocks_dot(row, sizeof(block_##fmt), read_##fmt, has_min, act, n);                     \
    }

BLOCK_CODECS(q4_0, 0)
BLOCK_CODECS(q4_1, 1)
BLOCK_CODECS(q5_0, 0)
BLOCK_CODECS(q5_1, 1)
BLOCK_CODECS(q8_0, 0)
