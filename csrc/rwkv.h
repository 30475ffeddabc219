/* rwkvcpp: the public C API of the engine.
 *
 * A model is loaded from an rwkv.cpp `.bin` file (mapped, not copied) and evaluated one token or a
 * sequence of tokens at a time. The recurrent state is a flat float array owned by the caller, so it
 * can be saved, copied and forked freely; its layout is the one rwkv.cpp uses (see docs/FORMAT.md).
 *
 * Every function that can fail returns an rwkv_status and, when `err` is not NULL, writes a
 * human-readable message into it (at most err_len bytes, always NUL-terminated).
 */
#ifndef RWKV_H
#define RWKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* librwkv (csrc/librwkv/) exports rwkv.cpp's C API from this engine, and rwkv.cpp has functions
 * of these three names too; the engine's are linked under rwkv_engine_* names so both can live in
 * one library. Code that includes this header calls them by the names below as usual. */
#define rwkv_eval rwkv_engine_eval
#define rwkv_init_state rwkv_engine_init_state
#define rwkv_free rwkv_engine_free

typedef enum {
    RWKV_OK = 0,
    RWKV_ERR_IO,          /* the file cannot be opened, mapped, read or written */
    RWKV_ERR_FORMAT,      /* the file is not a valid model file */
    RWKV_ERR_UNSUPPORTED, /* valid, but uses something this build cannot run */
    RWKV_ERR_ARGS,        /* a bad argument: token id, state length, type name... */
    RWKV_ERR_ALLOC,       /* out of memory */
    RWKV_ERR_CANCELLED,   /* a callback asked to stop */
    RWKV_ERR_NONFINITE,   /* an evaluation gave NaN or infinite results (bad weights or state) */
} rwkv_status;

typedef enum {
    RWKV_ARCH_V4 = 0,
    RWKV_ARCH_V5_1,
    RWKV_ARCH_V5_2,
    RWKV_ARCH_V6,
    RWKV_ARCH_V7,
} rwkv_arch;

/* Type ids as stored in the file. */
typedef enum {
    RWKV_TYPE_FP32 = 0,
    RWKV_TYPE_FP16 = 1,
    RWKV_TYPE_Q4_0 = 2,
    RWKV_TYPE_Q4_1 = 3,
    RWKV_TYPE_Q5_0 = 7,
    RWKV_TYPE_Q5_1 = 8,
    RWKV_TYPE_Q8_0 = 9,
    RWKV_TYPE_Q4_K = 13, /* ggml's K formats: 256-value super-blocks */
    RWKV_TYPE_Q5_K = 14,
} rwkv_type;

typedef struct rwkv_model rwkv_model;

typedef struct {
    rwkv_arch arch;
    int32_t n_vocab;
    int32_t n_embed;
    int32_t n_layer;
    int32_t n_head;    /* 0 for v4 */
    int32_t head_size; /* 0 for v4 */
    int32_t n_ffn;     /* inner size of the channel-mixing block */
    int32_t data_type; /* the header's type id */
    int32_t file_version;
    size_t state_len;  /* floats in a state */
    size_t file_size;
    int32_t n_threads;
} rwkv_model_info;

/* n_threads: 0 for one per core; at most RWKV_THREADS_PER_CORE per core (RWKV_ERR_ARGS beyond:
 * more threads than that only add switching). */
#define RWKV_THREADS_PER_CORE 4
rwkv_status rwkv_load(const char *path, int n_threads, rwkv_model **out, char *err, size_t err_len);

/* rwkv_load with flags. RWKV_LOAD_NO_MMAP reads the file into memory instead of mapping it: the
 * model then no longer depends on the file (which may be changed, truncated or deleted), at the
 * cost of the file's size in private memory and a slower load. A mapped model checks before each
 * evaluation that its file's size and modification time are unchanged (RWKV_ERR_IO otherwise),
 * which catches a truncation or rewrite made between evaluations, not one made during one. */
#define RWKV_LOAD_NO_MMAP 1
rwkv_status rwkv_load_ex(const char *path, int n_threads, int flags, rwkv_model **out, char *err,
                         size_t err_len);
void rwkv_free(rwkv_model *model);
void rwkv_get_info(const rwkv_model *model, rwkv_model_info *info);

/* Writes the initial state (state_len floats). */
void rwkv_init_state(const rwkv_model *model, float *state);

/* Evaluates n_tokens tokens starting from `state`, which is updated in place.
 * logits: NULL, or room for n_vocab floats (last token only) or n_tokens * n_vocab when all_logits.
 * Logits (or an embedding) that hold a NaN or an infinity give RWKV_ERR_NONFINITE: the weights or
 * the state are bad, and no sampler can use such numbers.
 * One model may be used from several threads at once; calls are serialised internally.
 * n_tokens == 1 is the single-token (decode) path. */
rwkv_status rwkv_eval(rwkv_model *model, const int32_t *tokens, size_t n_tokens, float *state,
                      float *logits, int all_logits, char *err, size_t err_len);

/* One sequence of rwkv_eval_batch: its new tokens, its state, and what to write for it. */
typedef struct {
    const int32_t *tokens; /* n_tokens (at least 1) new tokens: one to decode, more to ingest */
    size_t n_tokens;
    const float *state_in; /* state_len floats to start from; NULL: the initial state */
    float *state_out;      /* state_len floats: the state after the tokens; may be state_in */
    float *logits;         /* NULL, or n_vocab floats (last token) or n_tokens * n_vocab when all_logits */
    int all_logits;
    float *embedding;      /* NULL, or n_embed floats: as rwkv_eval_embedding writes */
} rwkv_sequence;

/* Evaluates several sequences in one pass over the weights: every matrix product runs once over
 * the new tokens of all of them (in passes of at most 256 tokens in all), the token shifts and
 * recurrences run per sequence on the thread pool. Each sequence gets the results rwkv_eval gives
 * it alone, to the last bit on x86-64: its rows take the same kernels whatever else is in the
 * pass (sequences of up to 8 new tokens the row kernels, longer ones sequence mode).
 * A state_out must not overlap another sequence's state_in or state_out. An error names the
 * sequence ("sequence 3: token ..."); nothing is written then. */
rwkv_status rwkv_eval_batch(rwkv_model *model, const rwkv_sequence *seqs, size_t n_seqs, char *err,
                            size_t err_len);

/* Like rwkv_eval, but writes the final hidden state (after ln_out, before the head: n_embed floats)
 * of the last token instead of logits: RWKV's free sentence embedding. */
rwkv_status rwkv_eval_embedding(rwkv_model *model, const int32_t *tokens, size_t n_tokens,
                                float *state, float *embedding, char *err, size_t err_len);

/* Quantizes an FP32/FP16 model file into `dst_path` with the given type (a Q type id). The output is
 * written to a temporary file next to dst_path and renamed at the end, so dst_path is either left as
 * it was or replaced whole. quantize_head: also quantize head.weight. progress (may be NULL) is
 * called after each tensor; returning non-zero cancels the run (RWKV_ERR_CANCELLED). */
typedef int (*rwkv_progress_fn)(void *user, int done, int total, const char *tensor_name);
rwkv_status rwkv_quantize_file(const char *src_path, const char *dst_path, int type_id,
                               int quantize_head, rwkv_progress_fn progress, void *user,
                               char *err, size_t err_len);

/* Decodes every tensor of a model file and counts its values that are NaN or infinite (from bad
 * floats or non-finite block scales). report is called for each tensor that has any, with the
 * count and the index (flat, in file order) of the first; the call fails only when the file cannot
 * be read. */
typedef void (*rwkv_verify_fn)(void *user, const char *tensor_name, int64_t n_bad, int64_t first_bad);
rwkv_status rwkv_verify_file(const char *path, rwkv_verify_fn report, void *user, char *err, size_t err_len);

/* The name of a type id ("FP16", "Q5_1"...), or NULL for an unknown id. */
const char *rwkv_type_name(int type_id);

/* Kernel levels: "generic", "avx2", "avx512"... The level in use is the best the CPU supports,
 * unless the environment variable RWKV_KERNELS names a lower one. */
const char *rwkv_kernel_level(void);
const char *rwkv_cpu_features(void);

const char *rwkv_arch_name(rwkv_arch arch);

/* Read bandwidth in GB/s over a buffer of `bytes` (best of five passes) with n_threads threads
 * (0: one per core). 0.0 when the memory cannot be had. */
double rwkv_read_bandwidth(int n_threads, size_t bytes);
/* Floating-point operations per second, in billions, of the kernels in use with n_threads threads
 * (0: one per core): their widest multiply-adds in enough independent chains to keep every
 * multiply-add unit busy (best of three runs, about a tenth of a second each). The ceiling of
 * sequence mode, whose micro-GEMM is made of these. 0.0 when the threads or memory cannot be had. */
double rwkv_fma_peak(int n_threads);

#ifdef __cplusplus
}
#endif
#endif
