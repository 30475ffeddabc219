/* Helpers shared by the x86 kernel files; each includes this under its own target flags. */
#ifndef RWKV_KERNELS_X86_H
#define RWKV_KERNELS_X86_H

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../compiler.h"
#include "../types.h"

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 load_half8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* Element i of an FP32 or FP16 row as a float (the tails of the float dot products). */
static inline float fp32_at(const void *w, int64_t i) { return ((const float *)w)[i]; }
static inline float fp16_at(const void *w, int64_t i) { return _cvtsh_ss(((const uint16_t *)w)[i]); }

/* The 32 4-bit values of a block as bytes: low nibbles are elements 0-15, high nibbles 16-31. */
static inline __m256i unpack_nibbles(const uint8_t *qs) {
    const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0f));
}

/* 0x10 in byte j where bit j of the 32-bit fifth-bit field is set, else 0. */
static inline __m256i unpack_fifth_bits(const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, /* low lane */
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i one_bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, one_bit), one_bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

/* The 32 values of a 5-bit block (0-31) as bytes. */
static inline __m256i unpack_q5(const uint8_t *qs, const uint8_t *qh) {
    return _mm256_or_si256(unpack_nibbles(qs), unpack_fifth_bits(qh));
}

/* Eight rows of eight floats transposed in registers: afterwards v[i] holds element i of each row. */
static inline void transpose8(__m256 v[8]) {
    __m256 t[8], s[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
        v[i + 4] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
    }
}

/* rwkv_pack_panel_fn for a panel of `panel` tokens (a multiple of 8): eight tokens by eight values
 * at a time through a register transpose. */
static inline void pack_panel(const float *x, int64_t T, int64_t n, int panel, int64_t p, float *xp) {
    xp += p * n * panel;
    for (int g = 0; g < panel; g += 8) {
        const int64_t t0 = p * panel + g;
        const int tokens = T - t0 >= 8 ? 8 : T - t0 > 0 ? (int)(T - t0) : 0;
        int64_t k = 0;
        for (; k + 8 <= n; k += 8) {
            __m256 v[8];
            for (int i = 0; i < 8; i++) v[i] = i < tokens ? _mm256_loadu_ps(x + (t0 + i) * n + k) : _mm256_setzero_ps();
            transpose8(v);
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(xp + (k + i) * panel + g, v[i]);
        }
        for (; k < n; k++)
            for (int i = 0; i < 8; i++) xp[k * panel + g + i] = i < tokens ? x[(t0 + i) * n + k] : 0.0f;
    }
}

/* A micro-GEMM tile's results, out[r * out_stride + t] for `rows` rows and `tokens` tokens, into y
 * as token-major rows (y[t * ys + r]), added to it or overwriting it. */
static inline void store_tile(const float *out, int out_stride, int rows, int tokens, float *y, int64_t ys,
                              int accumulate) {
    for (int t = 0; t < tokens; t++)
        for (int r = 0; r < rows; r++) {
            const float d = out[r * out_stride + t];
            y[t * ys + r] = accumulate ? y[t * ys + r] + d : d;
        }
}

/* One register tile of a packed-token micro-GEMM: `rows` weight rows times the first `vecs` vectors
 * of a panel's tokens, adding to or overwriting y for the panel's first `tokens` tokens. */
typedef void (*panel_tile_fn)(const float *w, int64_t ws, int rows, const float *xp, int vecs, int64_t n, float *y,
                              int64_t ys, int tokens, int accumulate);

/* rwkv_gemm_f32_fn from register tiles of 3 * `rows` accumulators, each a vector of `lanes` tokens;
 * a panel is 3 vectors. A full panel takes tiles of `rows` rows x 3 vectors. The chunk's last panel
 * may hold one or two vectors of tokens: it takes tiles of 3 * rows x 1 or 3 * rows / 2 x 2, so every
 * k still feeds all the accumulators (a rows x 1 tile runs at half speed and cost 6% on 128-token
 * chunks). Rows go in groups of 3 * rows, which every shape divides, each group against every panel
 * while its weights stay in L1; leftover rows go `rows` at a time, then one by one. The tile is
 * called with constant shapes so that each shape compiles into its own loop. */
static inline RWKV_ALWAYS_INLINE void gemm_panels(panel_tile_fn tile, int rows, int panel, int lanes,
                                                  const float *w, int64_t ws, int64_t nr, const float *x,
                                                  int64_t xs, int64_t nt, int64_t n, float *y, int64_t ys,
                                                  int accumulate) {
    const int wide = 3 * rows, half = 3 * rows / 2;
    for (int64_t r = 0; r < nr;) {
        const int group = nr - r >= wide ? wide : nr - r >= rows ? rows : 1;
        for (int64_t t = 0; t < nt; t += panel) {
            const int tokens = nt - t < panel ? (int)(nt - t) : panel, vecs = (tokens + lanes - 1) / lanes;
            const float *xp = x + t / panel * xs;
            float *yt = y + t * ys + r;
#define TILE(R, V, first) tile(w + (r + (first)) * ws, ws, R, xp, V, n, yt + (first), ys, tokens, accumulate)
            if (group == wide) {
                if (vecs == 3) {
                    TILE(rows, 3, 0);
                    TILE(rows, 3, rows);
                    TILE(rows, 3, 2 * rows);
                } else if (vecs == 2) {
                    TILE(half, 2, 0);
                    TILE(half, 2, half);
                } else {
                    TILE(wide, 1, 0);
                }
            } else if (group == rows) {
                if (vecs == 3) TILE(rows, 3, 0);
                else if (vecs == 2) TILE(rows, 2, 0);
                else TILE(rows, 1, 0);
            } else {
                if (vecs == 3) TILE(1, 3, 0);
                else if (vecs == 2) TILE(1, 2, 0);
                else TILE(1, 1, 0);
            }
#undef TILE
        }
        r += group;
    }
}

/* The integer part of one block's dot product: 8 int32 partial sums of weight values times the
 * block's 32 activation bytes. The format's own code; everything else is shared. */
typedef __m256i (*block_sums_fn)(const void *block, const int8_t *q);
enum { NO_TERM = -1 };

/* One block of sum_blocks below into its accumulators. The term's accumulator is a float: its
 * value is one number per block, which a vector would carry eight times. */
static inline RWKV_ALWAYS_INLINE void add_block(const uint8_t *row, size_t block_bytes, rwkv_q8_row y,
                                                int64_t b, block_sums_fn sums, int term, __m256 *acc,
                                                float *term_acc) {
    const uint8_t *block = row + b * block_bytes;
    uint16_t d;
    memcpy(&d, block, 2);
    const __m256 scale = _mm256_set1_ps(rwkv_fp16_table[d] * y.d[b]);
    *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums(block, y.q[b])), *acc);
    if (term >= 0) {
        uint16_t h;
        memcpy(&h, block + 2 * term, 2);
        /* term 0 is the block's own d (an offset times d: exact d * sum(q) wanted), else its m */
        const float *x_sums = term == 0 ? y.dsum : y.s;
        *term_acc = fmaf(rwkv_fp16_table[h], x_sums[b], *term_acc);
    }
}

/* sum over blocks of d_w * d_x * (integer dot product), plus, when the format has one, `factor` times
 * its FP16 block term (the "+ m" of q*d + m formats, at half `term` of the block; or a constant
 * offset times d) times the activation block's sum. The scales are multiplied as scalars, from the
 * FP16 table by plain loads, and broadcast once: that keeps the vector ports free for the block
 * arithmetic (eight lane inserts per eight blocks cost Q4_0 a fifth of its time; two broadcasts
 * and a vector multiply per block cost Q8_0 7% and Q5_1 13%). Two accumulators of each kind keep
 * consecutive blocks off one chain of FMA latencies. */
static inline RWKV_ALWAYS_INLINE float sum_blocks(const uint8_t *row, size_t block_bytes, const void *act,
                                                  int64_t n, block_sums_fn sums, int term, float factor) {
    const rwkv_q8_row y = rwkv_q8_row_at(act, n);
    const int64_t nb = n / RWKV_QK;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    float t0 = 0.0f, t1 = 0.0f;
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        add_block(row, block_bytes, y, b, sums, term, &a0, &t0);
        add_block(row, block_bytes, y, b + 1, sums, term, &a1, &t1);
    }
    if (b < nb) add_block(row, block_bytes, y, b, sums, term, &a0, &t0);
    return hsum256(_mm256_add_ps(a0, a1)) + factor * (t0 + t1);
}

/* ---- the K formats: super-blocks of eight 32-value sub-blocks ------------------------------- */

/* The 32 levels of sub-block j of a Q4_K or Q5_K super-block as bytes: the low (even j) or high
 * (odd j) nibbles of the 32 bytes the pair j / 2 shares. */
static inline __m256i k_nibbles(const uint8_t *qs, int j) {
    const __m256i packed = _mm256_loadu_si256((const __m256i *)(qs + 32 * (j / 2)));
    return _mm256_and_si256(j % 2 ? _mm256_srli_epi16(packed, 4) : packed, _mm256_set1_epi8(0x0f));
}

/* 0x10 in byte i where bit j of qh[i] is set: the fifth bits of Q5_K's sub-block j. */
static inline __m256i k_fifth_bits(const uint8_t *qh, int j) {
    const __m256i bit = _mm256_set1_epi8((char)(1 << j));
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)qh), bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

/* Sub-block j's levels (0-15, 0-31) as unsigned bytes. */
typedef __m256i (*k_levels_fn)(const void *block, int j);
static inline __m256i q4_k_levels(const void *block, int j) { return k_nibbles(((const block_q4_k *)block)->qs, j); }
static inline __m256i q5_k_levels(const void *block, int j) {
    const block_q5_k *x = block;
    return _mm256_or_si256(k_nibbles(x->qs, j), k_fifth_bits(x->qh, j));
}

/* Unsigned bytes times an activation block's 32 signed bytes, as 8 int32 partial sums: the
 * level's own instructions. */
typedef __m256i (*u8_i8_sums_fn)(__m256i u, const int8_t *q);

/* A super-block's eight sc[j] or m[j] as floats. */
static inline __m256 k_scales_ps(const uint8_t v[8]) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)v)));
}

/* sum over sub-blocks of d * sc * d_x * (integer dot product) - dmin * m * s_x. The activation
 * blocks line up with the sub-blocks, so a super-block's eight d_x and s_x are consecutive: the
 * eight scales and the minimum terms come in one vector each. */
static inline RWKV_ALWAYS_INLINE float k_dot(const uint8_t *row, size_t block_bytes, const void *act,
                                             int64_t n, k_levels_fn levels, u8_i8_sums_fn sums) {
    const rwkv_q8_row y = rwkv_q8_row_at(act, n);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, mins = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / RWKV_QK_K; b++) {
        const uint8_t *block = row + (size_t)b * block_bytes;
        const block_k_head *head = (const block_k_head *)block;
        const int64_t a = b * (RWKV_QK_K / RWKV_QK); /* its first activation block */
        uint8_t sc[8], m[8];
        rwkv_k_scales(head->scales, sc, m);
        float scale[8];
        _mm256_storeu_ps(scale, _mm256_mul_ps(_mm256_mul_ps(_mm256_broadcast_ss(&rwkv_fp16_table[head->d]), k_scales_ps(sc)),
                                              _mm256_loadu_ps(y.d + a)));
        mins = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_broadcast_ss(&rwkv_fp16_table[head->dmin]), k_scales_ps(m)),
                               _mm256_loadu_ps(y.s + a), mins);
        for (int j = 0; j < 8; j++)
            acc[j % 2] = _mm256_fmadd_ps(_mm256_broadcast_ss(&scale[j]), _mm256_cvtepi32_ps(sums(levels(block, j), y.q[a + j])),
                                         acc[j % 2]);
    }
    return hsum256(_mm256_add_ps(acc[0], acc[1])) - hsum256(mins);
}

#endif
