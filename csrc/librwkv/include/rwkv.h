/* librwkv: rwkv.cpp's C API, served by the rwkvcpp engine.
 *
 * Programs written against rwkv.cpp's rwkv.h compile against this header and link with librwkv
 * (librwkv.so, librwkv.dylib, rwkv.dll) unchanged. The functions keep rwkv.cpp's names, arguments
 * and meaning; where this engine differs it is said below. The engine's own API is csrc/rwkv.h.
 *
 * Errors: functions returning bool return false (and those returning a context NULL) on failure,
 * record what failed as rwkv_error_flags (a category OR-ed with a detail), and print a message to
 * stderr unless printing was turned off. Loading and quantizing record into a per-thread global
 * value; evaluation into the context.
 */
#ifndef RWKV_CPP_API_H
#define RWKV_CPP_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#    if defined(RWKV_BUILD)
#        define RWKV_API __declspec(dllexport)
#    else
#        define RWKV_API
#    endif
#elif defined(__GNUC__)
#    define RWKV_API __attribute__((visibility("default")))
#else
#    define RWKV_API
#endif

/* The model file format: magic 'ggmf', versions 100 and 101 (files are written as 101). */
#define RWKV_FILE_MAGIC 0x67676d66
#define RWKV_FILE_VERSION_0 100
#define RWKV_FILE_VERSION_1 101
#define RWKV_FILE_VERSION_MIN RWKV_FILE_VERSION_0
#define RWKV_FILE_VERSION_MAX RWKV_FILE_VERSION_1
#define RWKV_FILE_VERSION RWKV_FILE_VERSION_MAX

#ifdef __cplusplus
extern "C" {
#endif

/* An error is one category (the high byte) OR-ed with at most one detail (the low byte). */
enum rwkv_error_flags {
    RWKV_ERROR_NONE = 0,

    /* categories */
    RWKV_ERROR_ARGS = 1 << 8,         /* a bad argument: token id, length, format name */
    RWKV_ERROR_FILE = 2 << 8,         /* the file: opening, reading, writing, its header */
    RWKV_ERROR_MODEL = 3 << 8,        /* the model as a whole: architecture, data type */
    RWKV_ERROR_MODEL_PARAMS = 4 << 8, /* a tensor: missing, wrong shape or type */
    RWKV_ERROR_GRAPH = 5 << 8,        /* kept for rwkv.cpp's numbering; this engine has no graphs */
    RWKV_ERROR_CTX = 6 << 8,          /* a context: allocation, evaluation */

    /* details */
    RWKV_ERROR_ALLOC = 1,
    RWKV_ERROR_FILE_OPEN = 2,
    RWKV_ERROR_FILE_STAT = 3,
    RWKV_ERROR_FILE_READ = 4,
    RWKV_ERROR_FILE_WRITE = 5,
    RWKV_ERROR_FILE_MAGIC = 6,
    RWKV_ERROR_FILE_VERSION = 7,
    RWKV_ERROR_DATA_TYPE = 8,
    RWKV_ERROR_UNSUPPORTED = 9,
    RWKV_ERROR_SHAPE = 10,
    RWKV_ERROR_DIMENSION = 11,
    RWKV_ERROR_KEY = 12,
    RWKV_ERROR_DATA = 13,
    RWKV_ERROR_PARAM_MISSING = 14
};

/* A loaded model and what one caller needs to evaluate it. Contexts made by rwkv_clone_context
 * share the model (its mapped weights and its thread pool); the model is freed with the last
 * context. A context may be used from any thread, one call at a time; calls on contexts sharing a
 * model may be made from several threads at once and are run one after another. */
struct rwkv_context;

/* Whether failures print a message to stderr (the default: yes). ctx NULL: the setting for
 * rwkv_init_from_file, rwkv_quantize_model_file and the contexts created afterwards, per thread. */
RWKV_API void rwkv_set_print_errors(struct rwkv_context *ctx, bool print_errors);
RWKV_API bool rwkv_get_print_errors(const struct rwkv_context *ctx);

/* Returns the error flags recorded since the last call and clears them. ctx NULL: the calling
 * thread's flags from loading and quantizing. */
RWKV_API enum rwkv_error_flags rwkv_get_last_error(struct rwkv_context *ctx);

/* Loads a model file (every format and architecture the engine reads). n_threads: threads of the
 * evaluation (0: one per core). n_gpu_layers is accepted and ignored: everything runs on the CPU.
 * Returns NULL on failure. */
RWKV_API struct rwkv_context *rwkv_init_from_file(const char *model_file_path, uint32_t n_threads,
                                                  uint32_t n_gpu_layers);

/* A new context on ctx's model, without loading it again. n_threads is ignored: the clone uses the
 * model's thread pool. Both contexts must be freed, in any order. */
RWKV_API struct rwkv_context *rwkv_clone_context(struct rwkv_context *ctx, uint32_t n_threads);

/* Evaluates one token (0 <= token < n_vocab).
 * state_in: rwkv_get_state_len() floats, or NULL to start from the initial state.
 * state_out: where the state after the token is written (may be state_in), or NULL.
 * logits_out: rwkv_get_logits_len() floats, or NULL to skip computing the logits. */
RWKV_API bool rwkv_eval(struct rwkv_context *ctx, uint32_t token, const float *state_in, float *state_out,
                        float *logits_out);

/* Evaluates sequence_len >= 1 tokens, giving the state and logits (of the last token) that
 * rwkv_eval gives one token after another, to the bit: the tokens go through the engine in pieces
 * of 8, each piece one pass over the weights. tokens NULL: nothing is evaluated (rwkv.cpp builds
 * its graph then; there is nothing to prepare here) and the call succeeds. */
RWKV_API bool rwkv_eval_sequence(struct rwkv_context *ctx, const uint32_t *tokens, size_t sequence_len,
                                 const float *state_in, float *state_out, float *logits_out);

/* rwkv_eval_sequence over consecutive pieces of at most chunk_size (>= 1) tokens, for prompts of
 * any length; the state and logits are those of the whole sequence. */
RWKV_API bool rwkv_eval_sequence_in_chunks(struct rwkv_context *ctx, const uint32_t *tokens, size_t sequence_len,
                                           size_t chunk_size, const float *state_in, float *state_out,
                                           float *logits_out);

RWKV_API size_t rwkv_get_n_vocab(const struct rwkv_context *ctx);
RWKV_API size_t rwkv_get_n_embed(const struct rwkv_context *ctx);
RWKV_API size_t rwkv_get_n_layer(const struct rwkv_context *ctx);
/* Floats in a state. */
RWKV_API size_t rwkv_get_state_len(const struct rwkv_context *ctx);
/* Floats in the logits: n_vocab. */
RWKV_API size_t rwkv_get_logits_len(const struct rwkv_context *ctx);

/* Writes the initial state: passing it as state_in is the same as passing NULL. */
RWKV_API void rwkv_init_state(const struct rwkv_context *ctx, float *state);

/* Frees the context (NULL is allowed), and the model with the last context using it. */
RWKV_API void rwkv_free(struct rwkv_context *ctx);

/* Quantizes an FP32 or FP16 model file into format_name: "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
 * or the K formats "Q4_K", "Q5_K". The output is byte-identical to rwkv.cpp's; it is written to a
 * temporary file and renamed, so model_file_path_out is never left half-written. */
RWKV_API bool rwkv_quantize_model_file(const char *model_file_path_in, const char *model_file_path_out,
                                       const char *format_name);

/* The CPU's features in rwkv.cpp's "NAME=0|1 ..." form, followed by the kernel level in use
 * ("KERNELS=avx2"). */
RWKV_API const char *rwkv_get_system_info_string(void);

#ifdef __cplusplus
}
#endif
#endif
