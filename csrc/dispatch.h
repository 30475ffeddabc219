/* The kernel table: the dots and decoders of every type, the micro-GEMM and the activation
 * quantizer in use, chosen once per process (dispatch.c) from the levels the CPU supports. A level
 * (kernels/<isa>.c) is a table of its own, installed on top of the level below it. */
#ifndef RWKV_DISPATCH_H
#define RWKV_DISPATCH_H

#include "types.h"

/* Sequence mode's micro-GEMM, the same for every weight type (weights are dequantized to FP32 tiles
 * first): y[t * ys + r] (+)= sum over k < n of w[r * ws + k] * x_t[k], for nr rows and nt tokens.
 * `accumulate` adds to y instead of overwriting it (the k dimension is processed in blocks).
 * Token t's values x_t[k] are x[t * xs + k], or, for a kernel that reads the tokens packed
 * (panel > 0), x[(t / panel) * xs + k * panel + t % panel]: see rwkv_pack_panel_fn. */
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

/* The row kernels' product for several activation rows: one weight row against T activation rows
 * (in the type's activation format, act_stride bytes apart), y[t] for t < T. The weight blocks are
 * read and unpacked once for all the rows, and each y[t] is exactly what the level's vec_dot gives
 * for row t (the same operations in the same order), so a sequence's results do not depend on the
 * other sequences evaluated with it. */
typedef void (*rwkv_rows_dot_fn)(const void *row, const void *act, size_t act_stride, int T, int64_t n, float *y);

/* `rounds` rounds of the level's widest float multiply-adds in as many independent chains as keep
 * its multiply-add units busy: what rwkv_fma_peak times. *sink holds the multiplier on entry and a
 * result on return, so the compiler can neither fold the loop nor drop it. Returns the operations
 * done, a multiply-add counting two. */
typedef double (*rwkv_fma_loop_fn)(long rounds, float *sink);
double rwkv_fma_loop_portable(long rounds, float *sink);

/* The kernels of a level, by type id where they are per type. */
typedef struct {
    rwkv_vec_dot_fn vec_dot[RWKV_N_TYPE_IDS];   /* decoding: a weight row times activations */
    rwkv_to_float_fn to_float[RWKV_N_TYPE_IDS]; /* rows into floats: sequence mode's weight tiles */
    rwkv_gemm_kernel gemm;
    rwkv_from_float_fn q8_act_from_float; /* FP32 rows into 8-bit activations, float scales */
    /* Several activation rows at once, the level's vec_dot of the same type row by row. Installed
     * with that vec_dot: where a level has none, its vec_dot takes the rows one at a time. */
    rwkv_rows_dot_fn rows_dot[RWKV_N_TYPE_IDS];
    rwkv_fma_loop_fn fma_loop;
} rwkv_kernel_table;

/* The kernels in use: written at start-up and by rwkv_set_kernel_level, read everywhere else. */
extern rwkv_kernel_table rwkv_kernels;

/* Idempotent, thread-safe: fills the FP16 table and installs the best kernel level. */
void rwkv_dispatch_init(void);

/* The levels beyond the portable one, each in its own file compiled with its instruction set:
 * what it does faster than the level below. Entries it leaves NULL keep the level below's. */
extern const rwkv_kernel_table rwkv_avx2_kernels, rwkv_avx512_kernels, rwkv_neon_kernels;
/* Puts a level's kernels in use over the ones in use, entry by entry. */
void rwkv_install_kernels(const rwkv_kernel_table *level);

#endif
