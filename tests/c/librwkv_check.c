/* librwkv's C API as a C program uses it: run by tests/test_librwkv.py.
 *
 * usage: librwkv_check MODEL.bin NOT_A_MODEL OUT_DIR
 * MODEL.bin: an FP32 byte-level model (rwkv.cpp's tiny v5.2); NOT_A_MODEL: any file that is not a
 * model; OUT_DIR: where a quantized copy may be written. Prints "ok" and exits 0 when every check
 * holds; otherwise names the first check that failed and exits 1.
 */
#include <rwkv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "librwkv_check.c:%d: check failed: %s\n", __LINE__, #cond);                                \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

static const uint32_t PROMPT[] = {'T', 'h', 'e', ' ', 'f', 'o', 'r', ' ', 's', 't', 'a', 't', 'e', 'm', 'e', 'n', 't'};
#define N_PROMPT (sizeof PROMPT / sizeof PROMPT[0])

typedef struct {
    float *state, *logits;
} result;

static result new_result(const struct rwkv_context *ctx) {
    result r = {calloc(rwkv_get_state_len(ctx), sizeof(float)), calloc(rwkv_get_logits_len(ctx), sizeof(float))};
    CHECK(r.state && r.logits);
    return r;
}

static int same(const struct rwkv_context *ctx, result a, result b) {
    return memcmp(a.state, b.state, rwkv_get_state_len(ctx) * sizeof(float)) == 0 &&
           memcmp(a.logits, b.logits, rwkv_get_logits_len(ctx) * sizeof(float)) == 0;
}

/* The prompt token by token, the first from no state (NULL). */
static result serial(struct rwkv_context *ctx) {
    result r = new_result(ctx);
    CHECK(rwkv_eval(ctx, PROMPT[0], NULL, r.state, r.logits));
    for (size_t i = 1; i < N_PROMPT; i++) CHECK(rwkv_eval(ctx, PROMPT[i], r.state, r.state, r.logits));
    return r;
}

static void check_errors(const char *not_a_model) {
    rwkv_set_print_errors(NULL, false);
    CHECK(!rwkv_get_print_errors(NULL));
    CHECK(rwkv_init_from_file("/nonexistent/model.bin", 1, 0) == NULL);
    CHECK(rwkv_get_last_error(NULL) == (RWKV_ERROR_FILE | RWKV_ERROR_FILE_OPEN));
    CHECK(rwkv_get_last_error(NULL) == RWKV_ERROR_NONE); /* reading clears */
    CHECK(rwkv_init_from_file(not_a_model, 1, 0) == NULL);
    CHECK(rwkv_get_last_error(NULL) == (RWKV_ERROR_FILE | RWKV_ERROR_FILE_MAGIC));
    CHECK(!rwkv_quantize_model_file(not_a_model, "/nonexistent/out.bin", "Q6_0"));
    CHECK(rwkv_get_last_error(NULL) == (RWKV_ERROR_ARGS | RWKV_ERROR_DATA_TYPE));
    CHECK(!rwkv_quantize_model_file(not_a_model, "/nonexistent/out.bin", "FP16")); /* not a quantized format */
    CHECK(rwkv_get_last_error(NULL) == (RWKV_ERROR_ARGS | RWKV_ERROR_DATA_TYPE));
    CHECK(!rwkv_quantize_model_file(not_a_model, "/nonexistent/out.bin", "Q5_1"));
    CHECK(rwkv_get_last_error(NULL) == (RWKV_ERROR_FILE | RWKV_ERROR_FILE_MAGIC));
}

static void check_eval_errors(struct rwkv_context *ctx) {
    result r = new_result(ctx);
    const uint32_t bad[] = {1, 2, (uint32_t)rwkv_get_n_vocab(ctx)};
    CHECK(!rwkv_eval(ctx, (uint32_t)rwkv_get_n_vocab(ctx), NULL, r.state, r.logits));
    CHECK(rwkv_get_last_error(ctx) == RWKV_ERROR_ARGS);
    CHECK(rwkv_get_last_error(ctx) == RWKV_ERROR_NONE);
    CHECK(!rwkv_eval_sequence(ctx, bad, 3, NULL, r.state, r.logits));
    CHECK(rwkv_get_last_error(ctx) == RWKV_ERROR_ARGS);
    CHECK(!rwkv_eval_sequence(ctx, PROMPT, 0, NULL, r.state, r.logits));
    CHECK(rwkv_get_last_error(ctx) == RWKV_ERROR_ARGS);
    CHECK(!rwkv_eval_sequence_in_chunks(ctx, PROMPT, N_PROMPT, 0, NULL, r.state, r.logits));
    CHECK(rwkv_get_last_error(ctx) == RWKV_ERROR_ARGS);
    CHECK(rwkv_eval_sequence(ctx, NULL, 4, NULL, r.state, r.logits)); /* rwkv.cpp: prepare only */
    CHECK(rwkv_get_last_error(NULL) == RWKV_ERROR_NONE);                /* a context's errors stay there */
    free(r.state);
    free(r.logits);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: librwkv_check MODEL.bin NOT_A_MODEL OUT_DIR\n");
        return 2;
    }
    CHECK(strstr(rwkv_get_system_info_string(), "AVX2=") && strstr(rwkv_get_system_info_string(), "KERNELS="));
    check_errors(argv[2]);

    struct rwkv_context *ctx = rwkv_init_from_file(argv[1], 2, 99); /* GPU layers: ignored */
    CHECK(ctx != NULL);
    CHECK(!rwkv_get_print_errors(ctx)); /* new contexts take the thread's setting */
    CHECK(rwkv_get_n_vocab(ctx) == 256 && rwkv_get_logits_len(ctx) == 256);
    CHECK(rwkv_get_n_layer(ctx) > 0 && rwkv_get_n_embed(ctx) > 0);
    check_eval_errors(ctx);

    /* NULL state_in is the initial state. */
    const result expected = serial(ctx);
    result r = new_result(ctx);
    rwkv_init_state(ctx, r.state);
    CHECK(rwkv_eval(ctx, PROMPT[0], r.state, r.state, r.logits));
    for (size_t i = 1; i < N_PROMPT; i++) CHECK(rwkv_eval(ctx, PROMPT[i], r.state, r.state, r.logits));
    CHECK(same(ctx, expected, r));

    /* Sequences and chunks give the token-by-token state and logits, to the bit. */
    memset(r.state, 0, rwkv_get_state_len(ctx) * sizeof(float));
    CHECK(rwkv_eval_sequence(ctx, PROMPT, N_PROMPT, NULL, r.state, r.logits));
    CHECK(same(ctx, expected, r));
    const size_t chunk_sizes[] = {1, 3, 16, 64};
    for (size_t c = 0; c < 4; c++) {
        memset(r.logits, 0, rwkv_get_logits_len(ctx) * sizeof(float));
        CHECK(rwkv_eval_sequence_in_chunks(ctx, PROMPT, N_PROMPT, chunk_sizes[c], NULL, r.state, r.logits));
        CHECK(same(ctx, expected, r));
    }

    /* NULL logits_out: the same state; NULL state_out: the logits alone. */
    CHECK(rwkv_eval_sequence(ctx, PROMPT, N_PROMPT, NULL, r.state, NULL));
    CHECK(memcmp(expected.state, r.state, rwkv_get_state_len(ctx) * sizeof(float)) == 0);
    memset(r.logits, 0, rwkv_get_logits_len(ctx) * sizeof(float));
    CHECK(rwkv_eval_sequence(ctx, PROMPT, N_PROMPT, NULL, NULL, r.logits));
    CHECK(memcmp(expected.logits, r.logits, rwkv_get_logits_len(ctx) * sizeof(float)) == 0);

    /* A clone evaluates alike and outlives the context it was cloned from. */
    struct rwkv_context *clone = rwkv_clone_context(ctx, 1);
    CHECK(clone != NULL && clone != ctx);
    rwkv_free(ctx);
    const result cloned = serial(clone);
    CHECK(same(clone, expected, cloned));

    /* Quantizing with rwkv.cpp's format names gives a file that loads and runs; paths are UTF-8
     * (on Windows too, where the system's own calls take UTF-16). */
    char out[4096];
    snprintf(out, sizeof out, "%s/mod\xc3\xa8le-\xce\xa9-Q5_1.bin", argv[3]); /* "modèle-Ω-Q5_1.bin" */
    CHECK(rwkv_quantize_model_file(argv[1], out, "Q5_1"));
    CHECK(rwkv_get_last_error(NULL) == RWKV_ERROR_NONE);
    struct rwkv_context *quantized = rwkv_init_from_file(out, 1, 0);
    CHECK(quantized != NULL);
    const result q = serial(quantized);
    CHECK(!same(quantized, expected, q));
    rwkv_free(quantized);
    rwkv_free(clone);
    rwkv_free(NULL);
    puts("ok");
    return 0;
}
