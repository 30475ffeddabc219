/* NEON kernels for 64-bit ARM (every AArch64 CPU has NEON, so this level is always available
 * there). Quantized dots multiply signed bytes into 16-bit pairs (vmull/vmlal) and widen once per
 * 16 values; all the formats fit in signed bytes once their offset is taken off. */
#include <arm_neon.h>
#include <string.h>

#include "../compiler.h"
#include "../rwkv.h"
#include "../dispatch.h"
#include "../matmul.h"

static inline float half_to_float(uint16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }

/* Weight elements i..i+3 as floats, and element i alone: what distinguishes FP32 from FP16 rows. */
static inline float32x4_t fp32_load4(const void *w, int64_t i) { return vld1q_f32((const float *)w + i); }
static inline float32x4_t fp16_load4(const void *w, int64_t i) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)w + i)));
}
static inline float fp32_at(const void *w, int64_t i) { return ((const float *)w)[i]; }
static inline float fp16_at(const void *w, int64_t i) { return half_to_float(((const uint16_t *)w)[i]); }

/* Four accumulators, so the FMAs of consecutive vectors do not wait on each other. */
static inline RWKV_ALWAYS_INLINE float float_dot(const void *w, const float *x, int64_t n,
                                                 float32x4_t (*load4)(const void *, int64_t),
                                                 float (*at)(const void *, int64_t)) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vfmaq_f32(a0, load4(w, i), vld1q_f32(x + i));
        a1 = vfmaq_f32(a1, load4(w, i + 4), vld1q_f32(x + i + 4));
        a2 = vfmaq_f32(a2, load4(w, i + 8), vld1q_f32(x + i + 8));
        a3 = vfmaq_f32(a3, load4(w, i + 12), vld1q_f32(x + i + 12));
    }
    for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, load4(w, i), vld1q_f32(x + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) sum += at(w, i) * x[i];
    return sum;
}

static float fp32_dot(const void *row, const void *act, int64_t n) {
    return float_dot(row, act, n, fp32_load4, fp32_at);
}
static float fp16_dot(const void *row, const void *act, int64_t n) {
    return float_dot(row, act, n, fp16_load4, fp16_at);
}

/* ---- quantized rows ----------------------------------------------------------------------------- */

/* A block's 32 values as signed bytes, elements 0-15 in lo and 16-31 in hi. */
typedef struct {
    int8x16_t lo, hi;
} block_values;

static inline block_values unpack_nibbles(const uint8_t *qs) {
    const uint8x16_t packed = vld1q_u8(qs);
    return (block_values){vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f))),
                          vreinterpretq_s8_u8(vshrq_n_u8(packed, 4))};
}

/* Adds 16 to the values whose bit in the 32-bit fifth-bit field is set. */
static inline block_values add_fifth_bits(block_values v, const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    const uint8x16_t field = vreinterpretq_u8_u32(vdupq_n_u32(bits));
    static const uint8_t spread_lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    static const uint8_t spread_hi[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t mask = vld1q_u8(bit), sixteen = vdupq_n_u8(0x10);
    const uint8x16_t lo = vandq_u8(vtstq_u8(vqtbl1q_u8(field, vld1q_u8(spread_lo)), mask), sixteen);
    const uint8x16_t hi = vandq_u8(vtstq_u8(vqtbl1q_u8(field, vld1q_u8(spread_hi)), mask), sixteen);
    return (block_values){vaddq_s8(v.lo, vreinterpretq_s8_u8(lo)), vaddq_s8(v.hi, vreinterpretq_s8_u8(hi))};
}

static inline block_values minus(block_values v, int8_t offset) {
    return (block_values){vsubq_s8(v.lo, vdupq_n_s8(offset)), vsubq_s8(v.hi, vdupq_n_s8(offset))};
}

/* Four int32 partial sums of the 32 products. Each 16-bit lane takes two products of at most
 * 127 * 127 in magnitude, which cannot overflow. */
static inline int32x4_t dot_block(block_values w, const int8_t *q) {
    const int8x16_t x_lo = vld1q_s8(q), x_hi = vld1q_s8(q + 16);
    int16x8_t lo = vmull_s8(vget_low_s8(w.lo), vget_low_s8(x_lo));
    lo = vmlal_high_s8(lo, w.lo, x_lo);
    int16x8_t hi = vmull_s8(vget_low_s8(w.hi), vget_low_s8(x_hi));
    hi = vmlal_high_s8(hi, w.hi, x_hi);
    return vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi));
}

/* A block's values as signed bytes; every block format starts with its FP16 scale d. */
typedef block_values (*block_values_fn)(const void *block);

static inline block_values q4_0_values(const void *p) { return minus(unpack_nibbles(((const block_q4_0 *)p)->qs), 8); }
static inline block_values q4_1_values(const void *p) { return unpack_nibbles(((const block_q4_1 *)p)->qs); }
static inline block_values q5_0_values(const void *p) {
    const block_q5_0 *x = p;
    return minus(add_fifth_bits(unpack_nibbles(x->qs), x->qh), 16);
}
static inline block_values q5_1_values(const void *p) {
    const block_q5_1 *x = p;
    return add_fifth_bits(unpack_nibbles(x->qs), x->qh);
}
static inline block_values q8_0_values(const void *p) {
    const block_q8_0 *x = p;
    return (block_values){vld1q_s8(x->qs), vld1q_s8(x->qs + 16)};
}

/* sum over blocks of d_w * d_x * (integer dot product), plus m * s for the "q*d + m" formats, whose
 * m (FP16) sits right after d. */
static inline RWKV_ALWAYS_INLINE float sum_blocks(const uint8_t *row, size_t block_bytes, const void *act,
                                                  int64_t n, block_values_fn values, int has_min) {
    const rwkv_q8_row y = rwkv_q8_row_at(act, n);
    float32x4_t acc = vdupq_n_f32(0.0f);
    float offsets = 0.0f;
    for (int64_t b = 0; b < n / RWKV_QK; b++) {
        const uint8_t *block = row + (size_t)b * block_bytes;
        const uint16_t *dm = (const uint16_t *)block;
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(dot_block(values(block), y.q[b])), half_to_float(dm[0]) * y.d[b]);
        if (has_min) offsets += half_to_float(dm[1]) * y.s[b];
    }
    return has_min ? vaddvq_f32(acc) + offsets : vaddvq_f32(acc);
}

static float q4_0_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q4_0), act, n, q4_0_values, 0);
}
static float q4_1_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q4_1), act, n, q4_1_values, 1);
}
static float q5_0_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q5_0), act, n, q5_0_values, 0);
}
static float q5_1_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q5_1), act, n, q5_1_values, 1);
}
static float q8_0_dot(const void *row, const void *act, int64_t n) {
    return sum_blocks(row, sizeof(block_q8_0), act, n, q8_0_values, 0);
}

/* ---- the K formats: super-blocks of eight 32-value sub-blocks ---------------------------------- */

/* The 32 levels of sub-block j of a Q4_K or Q5_K super-block: the low (even j) or high (odd j)
 * nibbles of the 32 bytes the pair j / 2 shares. */
static inline block_values k_nibbles(const uint8_t *qs, int j) {
    const uint8x16_t lo = vld1q_u8(qs + 32 * (j / 2)), hi = vld1q_u8(qs + 32 * (j / 2) + 16);
    if (j % 2) return (block_values){vreinterpretq_s8_u8(vshrq_n_u8(lo, 4)), vreinterpretq_s8_u8(vshrq_n_u8(hi, 4))};
    const uint8x16_t low_nibble = vdupq_n_u8(0x0f);
    return (block_values){vreinterpretq_s8_u8(vandq_u8(lo, low_nibble)), vreinterpretq_s8_u8(vandq_u8(hi, low_nibble))};
}

/* Adds 16 to the values of Q5_K's sub-block j whose bit j of qh[i] is set. */
static inline block_values k_add_fifth_bits(block_values v, const uint8_t *qh, int j) {
    const uint8x16_t bit = vdupq_n_u8((uint8_t)(1 << j)), sixteen = vdupq_n_u8(0x10);
    const uint8x16_t lo = vandq_u8(vtstq_u8(vld1q_u8(qh), bit), sixteen);
    const uint8x16_t hi = vandq_u8(vtstq_u8(vld1q_u8(qh + 16), bit), sixteen);
    return (block_values){vaddq_s8(v.lo, vreinterpretq_s8_u8(lo)), vaddq_s8(v.hi, vreinterpretq_s8_u8(hi))};
}

typedef block_values (*k_levels_fn)(const void *block, int j);
static inline block_values q4_k_levels(const void *block, int j) { return k_nibbles(((const block_q4_k *)block)->qs, j); }
static inline block_values q5_k_levels(const void *block, int j) {
    const block_q5_k *x = block;
    return k_add_fifth_bits(k_nibbles(x->qs, j), x->qh, j);
}

/* A super-block's eight sc[j] or m[j] as floats, four and four. */
static inline void k_scales_f32(const uint8_t v[8], float32x4_t out[2]) {
    const uint16x8_t wide = vmovl_u8(vld1_u8(v));
    out[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(wide)));
    out[1] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(wide)));
}

/* sum over sub-blocks of d * sc * d_x * (integer dot product) - dmin * m * s_x; a super-block's
 * eight d_x and s_x are consecutive, so its scales and minimum terms are two vectors each. */
static inline RWKV_ALWAYS_INLINE float k_dot(const uint8_t *row, size_t block_bytes, const void *act,
                                             int64_t n, k_levels_fn levels) {
    const rwkv_q8_row y = rwkv_q8_row_at(act, n);
    float32x4_t acc = vdupq_n_f32(0.0f), mins = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < n / RWKV_QK_K; b++) {
        const uint8_t *block = row + (size_t)b * block_bytes;
        const block_k_head *head = (const block_k_head *)block;
        const int64_t a = b * (RWKV_QK_K / RWKV_QK);
        uint8_t sc[8], m[8];
        rwkv_k_scales(head->scales, sc, m);
        float32x4_t scf[2], mf[2];
        k_scales_f32(sc, scf);
        k_scales_f32(m, mf);
        const float d = half_to_float(head->d), dmin = half_to_float(head->dmin);
        float scale[8];
        for (int h = 0; h < 2; h++) {
            vst1q_f32(scale + 4 * h, vmulq_f32(vmulq_n_f32(scf[h], d), vld1q_f32(y.d + a + 4 * h)));
            mins = vfmaq_f32(mins, vmulq_n_f32(mf[h], dmin), vld1q_f32(y.s + a + 4 * h));
        }
        for (int j = 0; j < 8; j++)
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(dot_block(levels(block, j), y.q[a + j])), scale[j]);
    }
    return vaddvq_f32(acc) - vaddvq_f32(mins);
}

static float q4_k_dot(const void *row, const void *act, int64_t n) {
    return k_dot(row, sizeof(block_q4_k), act, n, q4_k_levels);
}
static float q5_k_dot(const void *row, const void *act, int64_t n) {
    return k_dot(row, sizeof(block_q5_k), act, n, q5_k_levels);
}

/* Sixteen levels times scale minus offset, stored as floats. */
static inline void k_store16(int8x16_t v, float scale, float offset, float *y) {
    const int16x8_t halves[2] = {vmovl_s8(vget_low_s8(v)), vmovl_s8(vget_high_s8(v))};
    const float32x4_t minus_offset = vdupq_n_f32(-offset);
    for (int h = 0; h < 2; h++) {
        vst1q_f32(y + 8 * h, vfmaq_n_f32(minus_offset, vcvtq_f32_s32(vmovl_s16(vget_low_s16(halves[h]))), scale));
        vst1q_f32(y + 8 * h + 4, vfmaq_n_f32(minus_offset, vcvtq_f32_s32(vmovl_s16(vget_high_s16(halves[h]))), scale));
    }
}

/* Each sub-block's levels times d * sc minus dmin * m. */
static inline RWKV_ALWAYS_INLINE void k_to_float(const uint8_t *src, size_t block_bytes, k_levels_fn levels,
                                                 float *y, int64_t n) {
    for (int64_t b = 0; b < n / RWKV_QK_K; b++) {
        const uint8_t *block = src + (size_t)b * block_bytes;
        const block_k_head *head = (const block_k_head *)block;
        uint8_t sc[8], m[8];
        rwkv_k_scales(head->scales, sc, m);
        const float d = half_to_float(head->d), dmin = half_to_float(head->dmin);
        for (int j = 0; j < 8; j++, y += RWKV_QK) {
            const block_values v = levels(block, j);
            k_store16(v.lo, d * sc[j], dmin * m[j], y);
            k_store16(v.hi, d * sc[j], dmin * m[j], y + 16);
        }
    }
}

static void q4_k_to_float(const void *src, float *y, int64_t n) { k_to_float(src, sizeof(block_q4_k), q4_k_levels, y, n); }
static void q5_k_to_float(const void *src, float *y, int64_t n) { k_to_float(src, sizeof(block_q5_k), q5_k_levels, y, n); }

/* 8-bit activation blocks; vcvtaq rounds half away from zero, as the portable roundf. */
static void q8_act_from_float(const float *x, void *dst, int64_t n) {
    const rwkv_q8_row y = rwkv_q8_row_at(dst, n);
    for (int64_t b = 0; b < n / RWKV_QK; b++, x += RWKV_QK) {
        float32x4_t v[8], amax = vdupq_n_f32(0.0f);
        for (int i = 0; i < 8; i++) {
            v[i] = vld1q_f32(x + 4 * i);
            amax = vmaxq_f32(amax, vabsq_f32(v[i]));
        }
        const float d = vmaxvq_f32(amax) / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;
        int32x4_t q[8], sum = vdupq_n_s32(0);
        for (int i = 0; i < 8; i++) {
            q[i] = vcvtaq_s32_f32(vmulq_n_f32(v[i], id));
            sum = vaddq_s32(sum, q[i]);
        }
        int8x8_t bytes[4];
        for (int i = 0; i < 4; i++) bytes[i] = vmovn_s16(vcombine_s16(vmovn_s32(q[2 * i]), vmovn_s32(q[2 * i + 1])));
        vst1q_s8(y.q[b], vcombine_s8(bytes[0], bytes[1]));
        vst1q_s8(y.q[b] + 16, vcombine_s8(bytes[2], bytes[3]));
        y.d[b] = d;
        y.s[b] = d * (float)vaddvq_s32(sum);
    }
}

/* ---- row kernels: one weight row against several activation rows ------------------------------ */

/* float_dot for R activation rows (R <= 6: 24 accumulators), each weight vector loaded (and
 * converted) once for all of them; for each row the operations of float_dot, in its order. */
static inline RWKV_ALWAYS_INLINE void float_rows_group(const void *w, const uint8_t *act, size_t stride,
                                                       const int R, int64_t n,
                                                       float32x4_t (*load4)(const void *, int64_t),
                                                       float (*at)(const void *, int64_t), float *y) {
    const float *x[6];
    float32x4_t a[6][4];
    for (int t = 0; t < R; t++) {
        x[t] = (const float *)(act + (size_t)t * stride);
        for (int j = 0; j < 4; j++) a[t][j] = vdupq_n_f32(0.0f);
    }
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 4; j++) {
            const float32x4_t wj = load4(w, i + 4 * j);
            for (int t = 0; t < R; t++) a[t][j] = vfmaq_f32(a[t][j], wj, vld1q_f32(x[t] + i + 4 * j));
        }
    for (; i + 4 <= n; i += 4) {
        const float32x4_t wi = load4(w, i);
        for (int t = 0; t < R; t++) a[t][0] = vfmaq_f32(a[t][0], wi, vld1q_f32(x[t] + i));
    }
    for (int t = 0; t < R; t++) {
        float sum = vaddvq_f32(vaddq_f32(vaddq_f32(a[t][0], a[t][1]), vaddq_f32(a[t][2], a[t][3])));
        for (int64_t k = i; k < n; k++) sum += at(w, k) * x[t][k];
        y[t] = sum;
    }
}

/* Groups of 6 rows, the rest in groups of 4, 2 and 1. */
static inline RWKV_ALWAYS_INLINE void float_rows(const void *w, const uint8_t *act, size_t stride, int T,
                                                 int64_t n, float32x4_t (*load4)(const void *, int64_t),
                                                 float (*at)(const void *, int64_t), float *y) {
    int t = 0;
    for (; t + 6 <= T; t += 6) float_rows_group(w, act + (size_t)t * stride, stride, 6, n, load4, at, y + t);
    if (T - t >= 4) {
        float_rows_group(w, act + (size_t)t * stride, stride, 4, n, load4, at, y + t);
        t += 4;
    }
    if (T - t >= 2) {
        float_rows_group(w, act + (size_t)t * stride, stride, 2, n, load4, at, y + t);
        t += 2;
    }
    if (T - t == 1) float_rows_group(w, act + (size_t)t * stride, stride, 1, n, load4, at, y + t);
}

static void fp32_rows(const void *row, const void *act, size_t stride, int T, int64_t n, float *y) {
    float_rows(row, act, stride, T, n, fp32_load4, fp32_at, y);
}
static void fp16_rows(const void *row, const void *act, size_t stride, int T, int64_t n, float *y) {
    float_rows(row, act, stride, T, n, fp16_load4, fp16_at, y);
}

/* sum_blocks for R activation rows (R <= 8), each block unpacked once for all of them; for each
 * row the operations of sum_blocks, in its order. */
static inline RWKV_ALWAYS_INLINE void blocks_rows_group(const uint8_t *row, size_t block_bytes,
                                                        const uint8_t *act, size_t stride, const int R,
                                                        int64_t n, block_values_fn values, int has_min,
                                                        float *y) {
    rwkv_q8_row x[8];
    float32x4_t acc[8];
    float offsets[8];
    for (int t = 0; t < R; t++) {
        x[t] = rwkv_q8_row_at(act + (size_t)t * stride, n);
        acc[t] = vdupq_n_f32(0.0f);
        offsets[t] = 0.0f;
    }
    for (int64_t b = 0; b < n / RWKV_QK; b++) {
        const uint8_t *block = row + (size_t)b * block_bytes;
        const uint16_t *dm = (const uint16_t *)block;
        const block_values v = values(block);
        for (int t = 0; t < R; t++) {
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(dot_block(v, x[t].q[b])), half_to_float(dm[0]) * x[t].d[b]);
            if (has_min) offsets[t] += half_to_float(dm[1]) * x[t].s[b];
        }
    }
    for (int t = 0; t < R; t++) y[t] = has_min ? vaddvq_f32(acc[t]) + offsets[t] : vaddvq_f32(acc[t]);
}

/* Groups of 8 rows, the rest in groups of 4, 2 and 1. */
static inline RWKV_ALWAYS_INLINE void blocks_rows(const uint8_t *row, size_t block_bytes, const uint8_t *act,
                                                  size_t stride, int T, int64_t n, block_values_fn values,
                                                  int has_min, float *y) {
    int t = 0;
    for (; t + 8 <= T; t += 8) blocks_rows_group(row, block_bytes, act + (size_t)t * stride, stride, 8, n, values, has_min, y + t);
    if (T - t >= 4) {
        blocks_rows_group(row, block_bytes, act + (size_t)t * stride, stride, 4, n, values, has_min, y + t);
        t += 4;
    }
    if (T - t >= 2) {
        blocks_rows_group(row, block_bytes, act + (size_t)t * stride, stride, 2, n, values, has_min, y + t);
        t += 2;
    }
    if (T - t == 1) blocks_rows_group(row, block_bytes, act + (size_t)t * stride, stride, 1, n, values, has_min, y + t);
}

#define QUANTIZED_ROWS(fmt, has_min)                                                                   \
    static void fmt##_rows(const void *row, const void *act, size_t stride, int T, int64_t n, float *y) { \
        blocks_rows(row, sizeof(block_##fmt), act, stride, T, n, fmt##_values, has_min, y);              \
    }
QUANTIZED_ROWS(q4_0, 0)
QUANTIZED_ROWS(q4_1, 1)
QUANTIZED_ROWS(q5_0, 0)
QUANTIZED_ROWS(q5_1, 1)
QUANTIZED_ROWS(q8_0, 0)
#undef QUANTIZED_ROWS

/* ---- sequence mode: FP32 micro-GEMM ------------------------------------------------------------ */

/* 4 weight rows x 4 tokens: 16 accumulators, 4 weight registers and one for the token. */
static void gemm_4x4(const float *w, int64_t ws, const float *x, int64_t xs, int64_t n, float *y, int64_t ys,
                     int accumulate) {
    float32x4_t acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < 4; t++) acc[r][t] = vdupq_n_f32(0.0f);
    for (int64_t k = 0; k < n; k += 4) {
        float32x4_t wr[4];
        for (int r = 0; r < 4; r++) wr[r] = vld1q_f32(w + r * ws + k);
        for (int t = 0; t < 4; t++) {
            const float32x4_t xt = vld1q_f32(x + t * xs + k);
            for (int r = 0; r < 4; r++) acc[r][t] = vfmaq_f32(acc[r][t], wr[r], xt);
        }
    }
    for (int t = 0; t < 4; t++)
        for (int r = 0; r < 4; r++) {
            const float d = vaddvq_f32(acc[r][t]);
            y[t * ys + r] = accumulate ? y[t * ys + r] + d : d;
        }
}

static void gemm_f32(const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt, int64_t n,
                     float *y, int64_t ys, int accumulate) {
    rwkv_gemm_tiled(gemm_4x4, 4, 4, 4, rwkv_gemm_f32_generic, w, ws, nr, x, xs, nt, n, y, ys, accumulate);
}

/* Sixteen chains of 4 lanes: up to four FMA units with a latency of four cycles (Apple's cores). */
static double fma_loop(long rounds, float *sink) {
    enum { CHAINS = 16 };
    const float32x4_t x = vdupq_n_f32(*sink), y = vdupq_n_f32(1e-6f);
    float32x4_t a[CHAINS];
    for (int j = 0; j < CHAINS; j++) a[j] = vdupq_n_f32((float)j);
    for (long i = 0; i < rounds; i++)
        for (int j = 0; j < CHAINS; j++) a[j] = vfmaq_f32(y, a[j], x);
    for (int j = 1; j < CHAINS; j++) a[0] = vaddq_f32(a[0], a[j]);
    *sink = vaddvq_f32(a[0]);
    return (double)rounds * CHAINS * 4 * 2;
}

const rwkv_kernel_table rwkv_neon_kernels = {
    .vec_dot = {[RWKV_TYPE_FP32] = fp32_dot, [RWKV_TYPE_FP16] = fp16_dot, [RWKV_TYPE_Q4_0] = q4_0_dot,
                [RWKV_TYPE_Q4_1] = q4_1_dot, [RWKV_TYPE_Q5_0] = q5_0_dot, [RWKV_TYPE_Q5_1] = q5_1_dot,
                [RWKV_TYPE_Q8_0] = q8_0_dot, [RWKV_TYPE_Q4_K] = q4_k_dot, [RWKV_TYPE_Q5_K] = q5_k_dot},
    .to_float = {[RWKV_TYPE_Q4_K] = q4_k_to_float, [RWKV_TYPE_Q5_K] = q5_k_to_float},
    .gemm = {gemm_f32, NULL, 0},
    .q8_act_from_float = q8_act_from_float,
    .fma_loop = fma_loop,
    .rows_dot = {[RWKV_TYPE_FP32] = fp32_rows, [RWKV_TYPE_FP16] = fp16_rows, [RWKV_TYPE_Q4_0] = q4_0_rows,
                 [RWKV_TYPE_Q4_1] = q4_1_rows, [RWKV_TYPE_Q5_0] = q5_0_rows, [RWKV_TYPE_Q5_1] = q5_1_rows,
                 [RWKV_TYPE_Q8_0] = q8_0_rows},
};
