/* The reference codecs of the K formats (Q4_K, Q5_K; block layout in types.h).
 *
 * Rounding follows ggml's reference quantizer, which rwkv.cpp's quantizer calls, operation for
 * operation in the same order (docs/FORMAT.md): files quantized here are byte-identical to
 * rwkv.cpp's. This file is compiled without floating-point contraction (CMakeLists.txt), so no
 * compiler fuses a multiply and an add into one rounding and the bytes are the same on every CPU.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "quant.h"
#include "types.h"

#define FP16 rwkv_fp32_to_fp16
#define FP32 rwkv_fp16_to_fp32
#define N_SUB (RWKV_QK_K / RWKV_QK) /* sub-blocks per super-block */

/* ggml's float-to-nearest-integer: adding 1.5 * 2^23 leaves the integer in the low mantissa bits,
 * rounded half to even (for |v| < 2^22; beyond that the result is what the same bits give). */
static inline int nearest_int(float v) {
    const float shifted = v + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}

static inline int clamp_level(int l, int top) { return l < 0 ? 0 : l > top ? top : l; }

/* The search of one format: levels 0..top, and the trial inverse scales (top + rmin + rdelta * i)
 * / (max - min) for i = 0..steps. */
typedef struct {
    int top;
    float rmin, rdelta;
    int steps;
} k_search;

static const k_search q4_k_search = {15, -1.0f, 0.1f, 20};
static const k_search q5_k_search = {31, -0.5f, 0.1f, 15};

/* Scale and minimum of one sub-block: levels L with x ~ scale * L + min (min <= 0), chosen by the
 * smallest weighted squared error among a plain min-max fit and the least-squares fits of every
 * trial scale. Returns the scale; *neg_min = -min. */
static float fit_sub_block(const float *x, const float *w, const k_search *s, uint8_t *L, float *neg_min) {
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < RWKV_QK; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, RWKV_QK);
        *neg_min = -min;
        return 0.0f;
    }
    float iscale = (float)s->top / (max - min), scale = 1 / iscale, best_error = 0;
    for (int i = 0; i < RWKV_QK; i++) {
        L[i] = (uint8_t)clamp_level(nearest_int(iscale * (x[i] - min)), s->top);
        const float diff = scale * L[i] + min - x[i];
        best_error += w[i] * (diff * diff);
    }
    for (int step = 0; step <= s->steps; step++) {
        iscale = (s->rmin + s->rdelta * (float)step + (float)s->top) / (max - min);
        uint8_t trial[RWKV_QK];
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < RWKV_QK; i++) {
            const int l = clamp_level(nearest_int(iscale * (x[i] - min)), s->top);
            trial[i] = (uint8_t)l;
            sum_l += w[i] * (float)l;
            sum_l2 += w[i] * (float)l * (float)l;
            sum_xl += w[i] * (float)l * x[i];
        }
        const float det = sum_w * sum_l2 - sum_l * sum_l;
        if (!(det > 0)) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float error = 0;
        for (int i = 0; i < RWKV_QK; i++) {
            const float diff = this_scale * trial[i] + this_min - x[i];
            error += w[i] * (diff * diff);
        }
        if (error < best_error) {
            memcpy(L, trial, RWKV_QK);
            best_error = error;
            scale = this_scale;
            min = this_min;
        }
    }
    *neg_min = -min;
    return scale;
}

/* One super-block: d, dmin and the packed 6-bit scales into `head`, the levels (0..top) of its
 * 256 values into L. */
static void round_super_block(const float *x, const k_search *s, block_k_head *head, uint8_t L[RWKV_QK_K]) {
    float scales[N_SUB], mins[N_SUB], max_scale = 0, max_min = 0;
    for (int j = 0; j < N_SUB; j++) {
        const float *xj = x + RWKV_QK * j;
        float sum_x2 = 0, w[RWKV_QK];
        for (int i = 0; i < RWKV_QK; i++) sum_x2 += xj[i] * xj[i];
        const float rms = sqrtf(sum_x2 / RWKV_QK);
        for (int i = 0; i < RWKV_QK; i++) w[i] = rms + fabsf(xj[i]);
        scales[j] = fit_sub_block(xj, w, s, L + RWKV_QK * j, &mins[j]);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float to_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f, to_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    uint8_t *packed = head->scales;
    for (int j = 0; j < N_SUB; j++) {
        /* through uint8_t, as ggml: a negative result wraps and is then capped at 63 */
        uint8_t sc = (uint8_t)nearest_int(to_scale * scales[j]), m = (uint8_t)nearest_int(to_min * mins[j]);
        sc = sc < 63 ? sc : 63;
        m = m < 63 ? m : 63;
        if (j < 4) {
            packed[j] = sc;
            packed[j + 4] = m;
        } else {
            packed[j + 4] = (uint8_t)((sc & 0xf) | (m & 0xf) << 4);
            packed[j - 4] |= (uint8_t)((sc >> 4) << 6);
            packed[j] |= (uint8_t)((m >> 4) << 6);
        }
    }
    head->d = FP16(max_scale / 63.0f);
    head->dmin = FP16(max_min / 63.0f);
    /* The values again, against the scales as stored; a sub-block whose stored scale is zero keeps
     * the levels of its search. */
    uint8_t sc[N_SUB], m[N_SUB];
    rwkv_k_scales(packed, sc, m);
    for (int j = 0; j < N_SUB; j++) {
        const float d = FP32(head->d) * sc[j];
        if (!d) continue;
        const float dm = FP32(head->dmin) * m[j];
        for (int i = 0; i < RWKV_QK; i++)
            L[RWKV_QK * j + i] = (uint8_t)clamp_level(nearest_int((x[RWKV_QK * j + i] + dm) / d), s->top);
    }
}

void rwkv_q4_k_from_float(const float *x, void *dst, int64_t n) {
    block_q4_k *y = dst;
    uint8_t L[RWKV_QK_K];
    for (int64_t b = 0; b < n / RWKV_QK_K; b++, x += RWKV_QK_K) {
        round_super_block(x, &q4_k_search, &y[b].head, L);
        for (int c = 0; c < 4; c++)
            for (int i = 0; i < RWKV_QK; i++) y[b].qs[32 * c + i] = (uint8_t)(L[64 * c + i] | L[64 * c + 32 + i] << 4);
    }
}

void rwkv_q5_k_from_float(const float *x, void *dst, int64_t n) {
    block_q5_k *y = dst;
    uint8_t L[RWKV_QK_K];
    for (int64_t b = 0; b < n / RWKV_QK_K; b++, x += RWKV_QK_K) {
        round_super_block(x, &q5_k_search, &y[b].head, L);
        memset(y[b].qh, 0, sizeof y[b].qh);
        for (int c = 0; c < 4; c++)
            for (int i = 0; i < RWKV_QK; i++) {
                const int lo = L[64 * c + i], hi = L[64 * c + 32 + i];
                y[b].qs[32 * c + i] = (uint8_t)((lo & 0xf) | (hi & 0xf) << 4);
                y[b].qh[i] |= (uint8_t)((lo >> 4) << (2 * c) | (hi >> 4) << (2 * c + 1));
            }
    }
}

/* ---- reading super-blocks: dequantize and dot products ------------------------------------ */

/* A super-block's 256 levels (0-15 or 0-31), in element order. */
typedef void (*read_levels_fn)(const void *block, uint8_t q[RWKV_QK_K]);

static void read_q4_k(const void *p, uint8_t q[RWKV_QK_K]) {
    const block_q4_k *x = p;
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < RWKV_QK; i++) {
            q[64 * c + i] = x->qs[32 * c + i] & 0xf;
            q[64 * c + 32 + i] = x->qs[32 * c + i] >> 4;
        }
}

static void read_q5_k(const void *p, uint8_t q[RWKV_QK_K]) {
    const block_q5_k *x = p;
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < RWKV_QK; i++) {
            q[64 * c + i] = (uint8_t)((x->qs[32 * c + i] & 0xf) | ((x->qh[i] >> (2 * c)) & 1) << 4);
            q[64 * c + 32 + i] = (uint8_t)((x->qs[32 * c + i] >> 4) | ((x->qh[i] >> (2 * c + 1)) & 1) << 4);
        }
}

/* Element values d * sc * q - dmin * m, with the products d * sc and dmin * m rounded first, as
 * ggml's dequantizer does. */
static inline void super_blocks_to_float(const uint8_t *src, size_t block_bytes, read_levels_fn read, float *y,
                                         int64_t n) {
    uint8_t q[RWKV_QK_K], sc[N_SUB], m[N_SUB];
    for (int64_t b = 0; b < n / RWKV_QK_K; b++) {
        const uint8_t *block = src + (size_t)b * block_bytes;
        const block_k_head *head = (const block_k_head *)block;
        read(block, q);
        rwkv_k_scales(head->scales, sc, m);
        const float d = FP32(head->d), dmin = FP32(head->dmin);
        for (int j = 0; j < N_SUB; j++, y += RWKV_QK) {
            const float scale = d * sc[j], offset = dmin * m[j];
            for (int i = 0; i < RWKV_QK; i++) y[i] = scale * q[RWKV_QK * j + i] - offset;
        }
    }
}

/* With 8-bit activations, whose 32-value blocks line up with the sub-blocks: per sub-block
 * d * sc * d_x * sum(q * q_x) - dmin * m * s_x. */
static inline float super_blocks_dot(const uint8_t *row, size_t block_bytes, read_levels_fn read, const void *act,
                                     int64_t n) {
    const rwkv_q8_row y = rwkv_q8_row_at(act, n);
    uint8_t q[RWKV_QK_K], sc[N_SUB], m[N_SUB];
    float sum = 0.0f;
    for (int64_t b = 0; b < n / RWKV_QK_K; b++) {
        const uint8_t *block = row + (size_t)b * block_bytes;
        const block_k_head *head = (const block_k_head *)block;
        read(block, q);
        rwkv_k_scales(head->scales, sc, m);
        const float d = FP32(head->d), dmin = FP32(head->dmin);
        for (int j = 0; j < N_SUB; j++) {
            const int64_t a = b * N_SUB + j; /* the activation block */
            int acc = 0;
            for (int i = 0; i < RWKV_QK; i++) acc += q[RWKV_QK * j + i] * y.q[a][i];
            sum += d * sc[j] * y.d[a] * (float)acc - dmin * m[j] * y.s[a];
        }
    }
    return sum;
}

void rwkv_q4_k_to_float(const void *src, float *y, int64_t n) {
    super_blocks_to_float(src, sizeof(block_q4_k), read_q4_k, y, n);
}
float rwkv_q4_k_dot(const void *row, const void *act, int64_t n) {
    return super_blocks_dot(row, sizeof(block_q4_k), read_q4_k, act, n);
}
void rwkv_q5_k_to_float(const void *src, float *y, int64_t n) {
    super_blocks_to_float(src, sizeof(block_q5_k), read_q5_k, y, n);
}
float rwkv_q5_k_dot(const void *row, const void *act, int64_t n) {
    return super_blocks_dot(row, sizeof(block_q5_k), read_q5_k, act, n);
}
