/* The type-traits table: everything the engine knows about a block format lives in one entry.
 *
 * A matrix product y = W x works on rows of W. Before the product, the activation vector x is
 * converted once into the format the row kernel wants (`act_type`): FP32 for float weights, 8-bit
 * blocks for quantized ones, so the inner loop is an integer dot product. Adding a format is one
 * entry here plus its codecs in quant.c and, optionally, faster kernels in kernels/<isa>.c.
 */
#ifndef RWKV_TYPES_H
#define RWKV_TYPES_H

#include <stddef.h>
#include <stdint.h>

#define RWKV_QK 32 /* elements per quantized block */

/* The file's block formats (FORMAT.md): FP16 scale d (and minimum m), then the values; 5-bit
 * formats keep the fifth bits of all 32 values in qh. */
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

/* The activation format of quantized products: a row of n values in 32-value blocks, each with
 * int8 values q and a float scale d, plus s = d * sum(q), which lets "q*d + m" formats add
 * m * sum(x) without touching x again. The row is stored as three arrays, d[nb], s[nb], then
 * q[nb][32], so that kernels can load the scales of eight blocks at once. */
#define RWKV_ACT_Q8_BLOCK_BYTES (2 * sizeof(float) + RWKV_QK)

typedef struct {
    float *d, *s;
    int8_t (*q)[RWKV_QK];
} rwkv_q8_row;

/* The arrays of an activation row of n values starting at `act` (kernels only read through it). */
static inline rwkv_q8_row rwkv_q8_row_at(const void *act, int64_t n) {
    float *base = (float *)act;
    const int64_t nb = n / RWKV_QK;
    return (rwkv_q8_row){base, base + nb, (int8_t(*)[RWKV_QK])(base + 2 * nb)};
}

/* Internal id for the activation format above; not a file type. */
#define RWKV_ACT_Q8 100

typedef void (*rwkv_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*rwkv_from_float_fn)(const float *src, void *dst, int64_t n);
/* Dot product of one weight row of n elements with an activation row in act_type format. */
typedef float (*rwkv_vec_dot_fn)(const void *row, const void *act, int64_t n);
/* Sequence mode's micro-GEMM, the same for every weight type (weights are dequantized to FP32 tiles
 * first): y[t * ys + r] (+)= sum over k < n of w[r * ws + k] * x_t[k], for nr rows and nt tokens.
 * `accumulate` adds to y instead of overwriting it (the k dimension is processed in blocks).
 * Token t's values x_t[k] are x[t * xs + k], or, for a kernel that reads the tokens packed
 * (rwkv_gemm.panel > 0), x[(t / panel) * xs + k * panel + t % panel]: see rwkv_pack_panel_fn. */
typedef void (*rwkv_gemm_f32_fn)(const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt,
                                 int64_t n, float *y, int64_t ys, int accumulate);

/* Lays out panel p of T tokens of n values (rows of x) for a packed-token kernel: tokens
 * p * panel onwards, k-major, token j of the panel at xp[p * n * panel + k * panel + j], zeros
 * after the last token. A broadcast-style kernel then reads all the panel's tokens at one k with
 * contiguous loads. */
typedef void (*rwkv_pack_panel_fn)(const float *x, int64_t T, int64_t n, int64_t p, float *xp);

typedef struct {
    rwkv_gemm_f32_fn run;
    rwkv_pack_panel_fn pack; /* NULL when the kernel reads tokens as rows */
    int panel;               /* tokens per packed panel; 0 when not packed */
} rwkv_gemm_kernel;
#define RWKV_MAX_PANEL 64

typedef struct {
    const char *name;
    int block_len;
    size_t block_bytes;
    int quantized;
    rwkv_to_float_fn to_float;
    rwkv_from_float_fn from_float; /* reference rounding (the file format's truth) */
    int act_type;                  /* RWKV_TYPE_FP32 or RWKV_ACT_Q8 */
    rwkv_vec_dot_fn vec_dot;       /* replaced by the best kernel at start-up */
} rwkv_type_traits;

/* One register tile of a SIMD micro-GEMM, of a shape fixed by its kernel file. */
typedef void (*rwkv_gemm_tile_fn)(const float *w, int64_t ws, const float *x, int64_t xs, int64_t n, float *y,
                                  int64_t ys, int accumulate);
/* A micro-GEMM from tiles of rows x tokens: covers what the tiles can and hands the edge rows and
 * tokens, and every n that is not a multiple of k_step, to `rest` (the level below). */
void rwkv_gemm_tiled(rwkv_gemm_tile_fn tile, int rows, int tokens, int k_step, rwkv_gemm_f32_fn rest,
                     const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt, int64_t n,
                     float *y, int64_t ys, int accumulate);

/* The micro-GEMM and the activation quantizer in use (dispatch.c installs the best ones). */
extern rwkv_gemm_kernel rwkv_gemm;
extern rwkv_from_float_fn rwkv_q8_act_from_float;
void rwkv_gemm_f32_generic(const float *w, int64_t ws, int64_t nr, const float *x, int64_t xs, int64_t nt,
                           int64_t n, float *y, int64_t ys, int accumulate);

/* NULL for ids that are not valid file types. */
const rwkv_type_traits *rwkv_traits(int type_id);
size_t rwkv_row_bytes(int type_id, int64_t n);
size_t rwkv_act_row_bytes(int act_type, int64_t n);
/* Converts an FP32 row into the activation format of a weight type. */
void rwkv_act_from_float(int act_type, const float *src, void *dst, int64_t n);

/* Every FP16 value as a float, indexed by its bits (filled by rwkv_types_init). */
extern float rwkv_fp16_table[65536];

/* Half precision, portable (round to nearest even). */
float rwkv_fp16_to_fp32(uint16_t h);
uint16_t rwkv_fp32_to_fp16(float f);

/* 8-bit activation blocks (quant.c). */
void rwkv_quantize_row_q8_act(const float *src, void *dst, int64_t n);

/* Fills the fp16 lookup table; called once by dispatch.c before kernels are installed. */
void rwkv_types_init(void);
/* The table is writable only by dispatch.c, which installs SIMD kernels at start-up. */
rwkv_type_traits *rwkv_traits_mut(int type_id);
/* Idempotent, thread-safe: initialises the table and picks the kernel level. */
void rwkv_dispatch_init(void);

#endif
