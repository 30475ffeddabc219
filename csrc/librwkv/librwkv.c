/* librwkv: rwkv.cpp's C API (include/rwkv.h) over the engine's (../rwkv.h).
 *
 * A context is a reference to a shared model plus what rwkv.cpp keeps per context: the error
 * flags, whether to print them, and a state buffer for calls that ask for no state back.
 * Evaluation goes through rwkv_eval_batch with one sequence, which already takes a state to start
 * from (or none: the initial state) and a separate state to write.
 */
#include "rwkv.h" /* the engine's API; rwkv_eval, rwkv_init_state, rwkv_free are rwkv_engine_* */
#undef rwkv_eval
#undef rwkv_init_state
#undef rwkv_free
#include "include/rwkv.h" /* from here on those names are rwkv.cpp's */
#include "matmul.h"         /* RWKV_ROW_KERNEL_TOKENS */
#include "platform_threads.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(_MSC_VER)
#define THREAD_LOCAL __declspec(thread)
#else
#define THREAD_LOCAL _Thread_local
#endif

typedef struct {
    rwkv_model *model;
    rwkv_model_info info;
    rwkv_atomic_int contexts; /* the model is freed with the last context using it */
} shared_model;

struct rwkv_context {
    shared_model *shared;
    float *spare_state; /* written when the caller passes no state_out */
    enum rwkv_error_flags last_error;
    bool print_errors;
};

/* rwkv.cpp keeps these per thread: loading and quantizing report here. */
static THREAD_LOCAL enum rwkv_error_flags global_error = RWKV_ERROR_NONE;
static THREAD_LOCAL bool global_print_errors = true;

/* ---- errors --------------------------------------------------------------------------------- */

static void print_error(bool print, const char *fmt, va_list args) {
    if (!print) return;
    fputs("librwkv: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
}

static bool fail_global(enum rwkv_error_flags flags, const char *fmt, ...) {
    global_error = (enum rwkv_error_flags)(global_error | flags);
    va_list args;
    va_start(args, fmt);
    print_error(global_print_errors, fmt, args);
    va_end(args);
    return false;
}

static bool fail_ctx(struct rwkv_context *ctx, enum rwkv_error_flags flags, const char *fmt, ...) {
    ctx->last_error = (enum rwkv_error_flags)(ctx->last_error | flags);
    va_list args;
    va_start(args, fmt);
    print_error(ctx->print_errors, fmt, args);
    va_end(args);
    return false;
}

/* What is wrong with a model file at the level rwkv.cpp's flags name (opening, reading, magic,
 * version, the data type when quantizing), or RWKV_ERROR_NONE when its header looks right. Only
 * asked after the engine refused the file, to give its refusal rwkv.cpp's finer flags. */
static enum rwkv_error_flags header_problem(const char *path, bool need_float_type) {
    FILE *f = fopen(path, "rb");
    if (!f) return RWKV_ERROR_FILE_OPEN;
    uint32_t header[6]; /* magic, version, n_vocab, n_embed, n_layer, data type */
    const size_t got = fread(header, sizeof header[0], 6, f);
    fclose(f);
    if (got != 6) return RWKV_ERROR_FILE_READ;
    if (header[0] != RWKV_FILE_MAGIC) return RWKV_ERROR_FILE_MAGIC;
    if (header[1] < RWKV_FILE_VERSION_MIN || header[1] > RWKV_FILE_VERSION_MAX) return RWKV_ERROR_FILE_VERSION;
    if (need_float_type && header[5] != RWKV_TYPE_FP32 && header[5] != RWKV_TYPE_FP16) return RWKV_ERROR_DATA_TYPE;
    return RWKV_ERROR_NONE;
}

/* rwkv.cpp's flags for an engine failure that header_problem did not explain. */
static enum rwkv_error_flags status_flags(rwkv_status status) {
    switch (status) {
    case RWKV_ERR_IO: return (enum rwkv_error_flags)(RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ);
    case RWKV_ERR_FORMAT: return RWKV_ERROR_MODEL_PARAMS;
    case RWKV_ERR_UNSUPPORTED: return (enum rwkv_error_flags)(RWKV_ERROR_MODEL | RWKV_ERROR_UNSUPPORTED);
    case RWKV_ERR_ALLOC: return RWKV_ERROR_ALLOC;
    default: return RWKV_ERROR_ARGS;
    }
}

static enum rwkv_error_flags file_flags(const char *path, bool need_float_type, rwkv_status status) {
    const enum rwkv_error_flags detail = header_problem(path, need_float_type);
    return detail ? (enum rwkv_error_flags)(RWKV_ERROR_FILE | detail) : status_flags(status);
}

void rwkv_set_print_errors(struct rwkv_context *ctx, bool print_errors) {
    if (ctx) ctx->print_errors = print_errors;
    else global_print_errors = print_errors;
}

bool rwkv_get_print_errors(const struct rwkv_context *ctx) { return ctx ? ctx->print_errors : global_print_errors; }

enum rwkv_error_flags rwkv_get_last_error(struct rwkv_context *ctx) {
    enum rwkv_error_flags *flags = ctx ? &ctx->last_error : &global_error;
    const enum rwkv_error_flags value = *flags;
    *flags = RWKV_ERROR_NONE;
    return value;
}

/* ---- contexts ------------------------------------------------------------------------------- */

static struct rwkv_context *new_context(shared_model *shared) {
    struct rwkv_context *ctx = calloc(1, sizeof *ctx);
    float *spare = malloc(shared->info.state_len * sizeof(float));
    if (!ctx || !spare) {
        free(ctx);
        free(spare);
        fail_global((enum rwkv_error_flags)(RWKV_ERROR_CTX | RWKV_ERROR_ALLOC), "out of memory for a context");
        return NULL;
    }
    rwkv_atomic_fetch_add(&shared->contexts, 1);
    ctx->shared = shared;
    ctx->spare_state = spare;
    ctx->print_errors = global_print_errors;
    return ctx;
}

struct rwkv_context *rwkv_init_from_file(const char *path, uint32_t n_threads, uint32_t n_gpu_layers) {
    (void)n_gpu_layers; /* everything runs on the CPU */
    global_error = RWKV_ERROR_NONE;
    if (!path) {
        fail_global(RWKV_ERROR_ARGS, "no model file path given");
        return NULL;
    }
    if (n_threads > 4096) {
        fail_global(RWKV_ERROR_ARGS, "n_threads = %u is not a thread count", n_threads);
        return NULL;
    }
    shared_model *shared = calloc(1, sizeof *shared);
    if (!shared) {
        fail_global(RWKV_ERROR_ALLOC, "out of memory loading %s", path);
        return NULL;
    }
    char err[512];
    const rwkv_status status = rwkv_load(path, (int)n_threads, &shared->model, err, sizeof err);
    if (status != RWKV_OK) {
        free(shared);
        fail_global(file_flags(path, false, status), "%s", err);
        return NULL;
    }
    rwkv_get_info(shared->model, &shared->info);
    rwkv_atomic_store(&shared->contexts, 0);
    struct rwkv_context *ctx = new_context(shared);
    if (!ctx) {
        rwkv_engine_free(shared->model);
        free(shared);
    }
    return ctx;
}

struct rwkv_context *rwkv_clone_context(struct rwkv_context *ctx, uint32_t n_threads) {
    (void)n_threads; /* the clone shares the model's thread pool */
    if (!ctx) {
        fail_global(RWKV_ERROR_ARGS, "no context to clone");
        return NULL;
    }
    struct rwkv_context *clone = new_context(ctx->shared);
    if (clone) clone->print_errors = ctx->print_errors;
    return clone;
}

void rwkv_free(struct rwkv_context *ctx) {
    if (!ctx) return;
    shared_model *shared = ctx->shared;
    if (rwkv_atomic_fetch_sub(&shared->contexts, 1) == 1) {
        rwkv_engine_free(shared->model);
        free(shared);
    }
    free(ctx->spare_state);
    free(ctx);
}

size_t rwkv_get_n_vocab(const struct rwkv_context *ctx) { return ctx ? (size_t)ctx->shared->info.n_vocab : 0; }
size_t rwkv_get_n_embed(const struct rwkv_context *ctx) { return ctx ? (size_t)ctx->shared->info.n_embed : 0; }
size_t rwkv_get_n_layer(const struct rwkv_context *ctx) { return ctx ? (size_t)ctx->shared->info.n_layer : 0; }
size_t rwkv_get_state_len(const struct rwkv_context *ctx) { return ctx ? ctx->shared->info.state_len : 0; }
size_t rwkv_get_logits_len(const struct rwkv_context *ctx) { return rwkv_get_n_vocab(ctx); }

/* The names rwkv.cpp's library still exports for older callers (its Python wrapper uses them). */
RWKV_API uint32_t rwkv_get_state_buffer_element_count(const struct rwkv_context *ctx) {
    return (uint32_t)rwkv_get_state_len(ctx);
}
RWKV_API uint32_t rwkv_get_logits_buffer_element_count(const struct rwkv_context *ctx) {
    return (uint32_t)rwkv_get_logits_len(ctx);
}

void rwkv_init_state(const struct rwkv_context *ctx, float *state) {
    if (ctx && state) rwkv_engine_init_state(ctx->shared->model, state);
}

/* ---- evaluation ----------------------------------------------------------------------------- */

static bool check_tokens(struct rwkv_context *ctx, const uint32_t *tokens, size_t n) {
    const uint32_t n_vocab = (uint32_t)ctx->shared->info.n_vocab;
    for (size_t i = 0; i < n; i++)
        if (tokens[i] >= n_vocab)
            return fail_ctx(ctx, RWKV_ERROR_ARGS, "token at index %zu (%u) is out of range (0 .. %u)", i, tokens[i],
                            n_vocab - 1);
    return true;
}

/* Evaluates checked tokens. state_out NULL: the state goes to the context's spare buffer.
 *
 * rwkv.cpp's contract is that a sequence gives, bit for bit, the state and logits of evaluating its
 * tokens one by one (its tests compare them with memcmp). The engine gives that to sequences of up
 * to RWKV_ROW_KERNEL_TOKENS tokens, which take the row kernels of single tokens; longer ones take
 * the prompt GEMM, faster but summed in another order. So sequences run here in pieces of that
 * size; rwkvcpp's own API keeps the GEMM. */
static bool evaluate(struct rwkv_context *ctx, const uint32_t *tokens, size_t n, const float *state_in,
                     float *state_out, float *logits_out) {
    float *state = state_out ? state_out : ctx->spare_state;
    for (size_t done = 0; done < n; done += RWKV_ROW_KERNEL_TOKENS) {
        const size_t piece = n - done < RWKV_ROW_KERNEL_TOKENS ? n - done : RWKV_ROW_KERNEL_TOKENS;
        /* The ids are below n_vocab, so int32_t reads them unchanged (the types may alias). */
        const rwkv_sequence seq = {(const int32_t *)tokens + done, piece, done == 0 ? state_in : state, state,
                                   done + piece == n ? logits_out : NULL, 0, NULL};
        char err[256];
        const rwkv_status status = rwkv_eval_batch(ctx->shared->model, &seq, 1, err, sizeof err);
        if (status != RWKV_OK) {
            const int detail = status == RWKV_ERR_ALLOC ? RWKV_ERROR_ALLOC : 0;
            return fail_ctx(ctx, (enum rwkv_error_flags)(RWKV_ERROR_CTX | detail), "%s", err);
        }
    }
    return true;
}

/* The checks every evaluation starts with; false when the call must fail or has nothing to do. */
static bool start_eval(struct rwkv_context *ctx, const uint32_t *tokens, size_t n) {
    ctx->last_error = RWKV_ERROR_NONE;
    if (n == 0) return fail_ctx(ctx, RWKV_ERROR_ARGS, "sequence length is 0");
    return tokens == NULL || check_tokens(ctx, tokens, n);
}

bool rwkv_eval(struct rwkv_context *ctx, uint32_t token, const float *state_in, float *state_out, float *logits_out) {
    if (!ctx) return fail_global(RWKV_ERROR_ARGS, "rwkv_eval: no context");
    return start_eval(ctx, &token, 1) && evaluate(ctx, &token, 1, state_in, state_out, logits_out);
}

bool rwkv_eval_sequence(struct rwkv_context *ctx, const uint32_t *tokens, size_t sequence_len, const float *state_in,
                        float *state_out, float *logits_out) {
    if (!ctx) return fail_global(RWKV_ERROR_ARGS, "rwkv_eval_sequence: no context");
    if (!start_eval(ctx, tokens, sequence_len)) return false;
    return tokens == NULL || evaluate(ctx, tokens, sequence_len, state_in, state_out, logits_out);
}

bool rwkv_eval_sequence_in_chunks(struct rwkv_context *ctx, const uint32_t *tokens, size_t sequence_len,
                                  size_t chunk_size, const float *state_in, float *state_out, float *logits_out) {
    if (!ctx) return fail_global(RWKV_ERROR_ARGS, "rwkv_eval_sequence_in_chunks: no context");
    if (!start_eval(ctx, tokens, sequence_len)) return false;
    if (chunk_size == 0) return fail_ctx(ctx, RWKV_ERROR_ARGS, "chunk size is 0");
    if (tokens == NULL) return true;
    /* Every chunk continues from the state the one before left in `state`. */
    float *state = state_out ? state_out : ctx->spare_state;
    for (size_t done = 0; done < sequence_len; done += chunk_size) {
        const size_t n = sequence_len - done < chunk_size ? sequence_len - done : chunk_size;
        const bool last = done + n == sequence_len;
        if (!evaluate(ctx, tokens + done, n, done == 0 ? state_in : state, state, last ? logits_out : NULL))
            return false;
    }
    return true;
}

/* ---- files and the system ------------------------------------------------------------------- */

bool rwkv_quantize_model_file(const char *path_in, const char *path_out, const char *format_name) {
    global_error = RWKV_ERROR_NONE;
    if (!path_in || !path_out || !format_name)
        return fail_global(RWKV_ERROR_ARGS, "rwkv_quantize_model_file: a path or the format name is NULL");
    int type_id = -1;
    for (int id = RWKV_TYPE_Q4_0; id < 64 && type_id < 0; id++)
        if (rwkv_type_name(id) && strcmp(rwkv_type_name(id), format_name) == 0) type_id = id;
    if (type_id < 0)
        return fail_global((enum rwkv_error_flags)(RWKV_ERROR_ARGS | RWKV_ERROR_DATA_TYPE),
                           "unsupported format name '%s' (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K)", format_name);
    char err[512];
    const rwkv_status status = rwkv_quantize_file(path_in, path_out, type_id, 0, NULL, NULL, err, sizeof err);
    if (status == RWKV_OK) return true;
    return fail_global(status == RWKV_ERR_ARGS ? RWKV_ERROR_ARGS : file_flags(path_in, true, status), "%s", err);
}

static bool has_feature(const char *features, const char *name) {
    const size_t len = strlen(name);
    for (const char *p = features; (p = strstr(p, name)) != NULL; p += len)
        if ((p == features || p[-1] == ' ') && (p[len] == ' ' || p[len] == '\0')) return true;
    return false;
}

static char system_info[256];
static rwkv_once system_info_once = RWKV_ONCE_INIT;

static void describe_system(void) {
    const char *f = rwkv_cpu_features();
    const int neon = has_feature(f, "neon");
    snprintf(system_info, sizeof system_info,
             "AVX=%d AVX2=%d AVX512=%d FMA=%d NEON=%d ARM_FMA=%d F16C=%d FP16_VA=0 WASM_SIMD=0 SSE3=%d VSX=0 "
             "KERNELS=%s",
             has_feature(f, "avx"), has_feature(f, "avx2"), has_feature(f, "avx512f"), has_feature(f, "fma"), neon,
             neon, has_feature(f, "f16c"), has_feature(f, "sse3"), rwkv_kernel_level());
}

const char *rwkv_get_system_info_string(void) {
    rwkv_call_once(&system_info_once, describe_system);
    return system_info;
}
