/* The type-traits table and the portable float kernels. */
#include "types.h"

#include "quant.h"

#include <math.h>
#include <string.h>

#include "rwkv.h"

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

static void fp32_to_float(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }
static void fp32_from_float(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

float rwkv_fp16_table[65536];

static void fp16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; i++) dst[i] = rwkv_fp16_table[h[i]];
}

static void fp16_from_float(const float *src, void *dst, int64_t n) {
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++) h[i] = rwkv_fp32_to_fp16(src[i]);
}

/* Eight independent sums let the compiler vectorise without reassociating one long chain. */
static float fp32_dot(const void *row, const void *act, int64_t n) {
    const float *w = row, *x = act;
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += w[i + j] * x[i + j];
    float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) sum += w[i] * x[i];
    return sum;
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

void rwkv_gemm_f32_generic(const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt,
                           int64_t n, float *y, int64_t ys, int accumulate) {
    for (int64_t t = 0; t < nt; t++)
        for (int64_t r = 0; r < nr; r++) {
            const float d = fp32_dot(w + r * ws, x + t * xs, n);
            y[t * ys + r] = accumulate ? y[t * ys + r] + d : d;
        }
}

void rwkv_gemm_tiled(rwkv_gemm_tile_fn tile, int rows, int tokens, int k_step, rwkv_gemm_f32_fn rest,
                     const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt, int64_t n,
                     float *y, int64_t ys, int accumulate) {
    if (n % k_step != 0) {
        rest(w, ws, nr, x, xs, nt, n, y, ys, accumulate);
        return;
    }
    const int64_t nr_tiled = nr - nr % rows, nt_tiled = nt - nt % tokens;
    for (int64_t t = 0; t < nt_tiled; t += tokens)
        for (int64_t r = 0; r < nr_tiled; r += rows) tile(w + r * ws, ws, x + t * xs, xs, n, y + t * ys + r, ys, accumulate);
    if (nr_tiled < nr) rest(w + nr_tiled * ws, ws, nr - nr_tiled, x, xs, nt_tiled, n, y + nr_tiled, ys, accumulate);
    if (nt_tiled < nt) rest(w, ws, nr, x + nt_tiled * xs, xs, nt - nt_tiled, n, y + nt_tiled * ys, ys, accumulate);
}

rwkv_gemm_kernel rwkv_gemm = {rwkv_gemm_f32_generic, NULL, 0};
rwkv_from_float_fn rwkv_q8_act_from_float = rwkv_quantize_row_q8_act;

/* ---- the table ---------------------------------------------------------------------------- */

#define N_TYPE_IDS 10

#define Q_ENTRY(NAME, fmt, block)                                                                  \
    {NAME, RWKV_QK, sizeof(block), 1, rwkv_##fmt##_to_float, rwkv_##fmt##_from_float, RWKV_ACT_Q8,  \
     rwkv_##fmt##_dot}

/* Bytes per block: half d (+ half m) (+ 4 bytes of fifth bits) + the packed values. */
static rwkv_type_traits table[N_TYPE_IDS] = {
    [RWKV_TYPE_FP32] = {"FP32", 1, 4, 0, fp32_to_float, fp32_from_float, RWKV_TYPE_FP32, fp32_dot},
    [RWKV_TYPE_FP16] = {"FP16", 1, 2, 0, fp16_to_float, fp16_from_float, RWKV_TYPE_FP32, fp16_dot},
    [RWKV_TYPE_Q4_0] = Q_ENTRY("Q4_0", q4_0, uint8_t[18]),
    [RWKV_TYPE_Q4_1] = Q_ENTRY("Q4_1", q4_1, uint8_t[20]),
    [RWKV_TYPE_Q5_0] = Q_ENTRY("Q5_0", q5_0, uint8_t[22]),
    [RWKV_TYPE_Q5_1] = Q_ENTRY("Q5_1", q5_1, uint8_t[24]),
    [RWKV_TYPE_Q8_0] = Q_ENTRY("Q8_0", q8_0, uint8_t[34]),
};

void rwkv_types_init(void) {
    for (uint32_t i = 0; i < 65536; i++) rwkv_fp16_table[i] = rwkv_fp16_to_fp32((uint16_t)i);
}

const rwkv_type_traits *rwkv_traits(int type_id) {
    if (type_id < 0 || type_id >= N_TYPE_IDS || table[type_id].name == NULL) return NULL;
    return &table[type_id];
}

rwkv_type_traits *rwkv_traits_mut(int type_id) { return (rwkv_type_traits *)rwkv_traits(type_id); }

size_t rwkv_row_bytes(int type_id, int64_t n) {
    const rwkv_type_traits *t = rwkv_traits(type_id);
    return (size_t)(n / t->block_len) * t->block_bytes;
}

size_t rwkv_act_row_bytes(int act_type, int64_t n) {
    if (act_type == RWKV_ACT_Q8) return (size_t)(n / RWKV_QK) * RWKV_ACT_Q8_BLOCK_BYTES;
    return (size_t)n * sizeof(float);
}

void rwkv_act_from_float(int act_type, const float *src, void *dst, int64_t n) {
    if (act_type == RWKV_ACT_Q8) rwkv_q8_act_from_float(src, dst, n);
    else memcpy(dst, src, (size_t)n * sizeof(float));
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
