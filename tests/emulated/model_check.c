/* Whole-model check for a foreign architecture: evaluates a model with the portable kernels and
 * with the best level this build has, one token at a time and as a sequence, in the model's own
 * format and quantized to the block formats named (into SCRATCH_DIR/TYPE.bin), and compares the
 * logits; and several sequences at once against each alone. Built by CMake for AArch64 (RWKV_BUILD_CHECKS) and run under qemu by
 * tests/test_kernels_emulated.py.
 * Usage: model_check MODEL.bin SCRATCH_DIR [TYPE...] (TYPE: Q4_0, Q5_K...) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rwkv.h"
#include "rwkv_testing.h"

/* More than the row kernels take (RWKV_ROW_KERNEL_TOKENS), so that the sequence is sequence mode. */
#define N_TOKENS 40

/* The last token's logits (n_vocab of them, malloc'd), or NULL on an error. */
static float *eval_logits(const char *path, int serial, int *n_vocab) {
    char err[512];
    rwkv_model *model;
    if (rwkv_load(path, 2, &model, err, sizeof err) != RWKV_OK) {
        fprintf(stderr, "%s\n", err);
        return NULL;
    }
    rwkv_model_info info;
    rwkv_get_info(model, &info);
    *n_vocab = info.n_vocab;
    float *logits = malloc((size_t)info.n_vocab * sizeof(float));
    float *state = malloc(info.state_len * sizeof(float));
    rwkv_init_state(model, state);
    int32_t tokens[N_TOKENS];
    for (int i = 0; i < N_TOKENS; i++) tokens[i] = (i * 37 + 11) % info.n_vocab;
    int ok = 1;
    if (serial)
        for (int i = 0; i < N_TOKENS && ok; i++) ok = rwkv_eval(model, &tokens[i], 1, state, logits, 0, err, sizeof err) == RWKV_OK;
    else
        ok = rwkv_eval(model, tokens, N_TOKENS, state, logits, 0, err, sizeof err) == RWKV_OK;
    if (!ok) fprintf(stderr, "%s\n", err);
    free(state);
    rwkv_free(model);
    if (!ok) free(logits);
    return ok ? logits : NULL;
}

/* Float-order differences between levels can move an activation across a rounding boundary of the
 * 8-bit activation blocks that quantized decoding uses; one such flip moves logits by up to ~1% of
 * their range, so that path gets a looser bound. Sequence mode and float weights use FP32
 * activations and agree to float precision. */
static int compare(const char *path, const char *label, const char *best, int quantized) {
    int failures = 0;
    for (int serial = 0; serial <= 1; serial++) {
        int n_vocab = 0;
        rwkv_set_kernel_level("generic");
        float *want = eval_logits(path, serial, &n_vocab);
        rwkv_set_kernel_level(best);
        float *got = want ? eval_logits(path, serial, &n_vocab) : NULL;
        if (!got) {
            free(want);
            return 1;
        }
        float worst = 0.0f, range = 0.0f;
        for (int i = 0; i < n_vocab; i++) {
            worst = fmaxf(worst, fabsf(got[i] - want[i]));
            range = fmaxf(range, fabsf(want[i]));
        }
        const int ok = worst <= (quantized && serial ? 3e-2f : 1e-4f) * range;
        printf("%-5s %-8s %s vs generic: max |dlogit| %.2e (logits up to %.2f) %s\n", label, serial ? "serial" : "sequence",
               best, worst, range, ok ? "ok" : "MISMATCH");
        failures += !ok;
        free(want), free(got);
    }
    return failures;
}

/* Three sequences of 1, 5 and N_TOKENS tokens evaluated together (rwkv_eval_batch, the level in
 * use) give the logits and states each gives alone, to the last bit: its rows take the same
 * kernels either way. */
static int check_batch(const char *path, const char *label) {
    enum { B = 3 };
    static const size_t lengths[B] = {1, 5, N_TOKENS};
    char err[512];
    rwkv_model *model;
    if (rwkv_load(path, 2, &model, err, sizeof err) != RWKV_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    rwkv_model_info info;
    rwkv_get_info(model, &info);
    const size_t V = (size_t)info.n_vocab, S = info.state_len;
    float *logits = malloc(4 * B * V * sizeof(float)), *states = malloc(2 * B * S * sizeof(float));
    int32_t tokens[B][N_TOKENS];
    rwkv_sequence seqs[B];
    int ok = 1;
    for (int i = 0; i < B; i++) {
        for (size_t t = 0; t < lengths[i]; t++) tokens[i][t] = (int32_t)((t * 53 + 7 * (size_t)i + 3) % V);
        seqs[i] = (rwkv_sequence){tokens[i], lengths[i], NULL, states + i * S, logits + i * V, 0, NULL};
        float *alone = states + (B + i) * S;
        rwkv_init_state(model, alone);
        ok &= rwkv_eval(model, tokens[i], lengths[i], alone, logits + (B + i) * V, 0, err, sizeof err) == RWKV_OK;
    }
    ok &= rwkv_eval_batch(model, seqs, B, err, sizeof err) == RWKV_OK;
    if (!ok) fprintf(stderr, "%s\n", err);
    const int equal = ok && memcmp(logits, logits + B * V, B * V * sizeof(float)) == 0 &&
                      memcmp(states, states + B * S, B * S * sizeof(float)) == 0;
    printf("%-5s batch    1, 5 and %d tokens at once equal one by one: %s\n", label, N_TOKENS, equal ? "ok" : "MISMATCH");
    free(logits), free(states);
    rwkv_free(model);
    return !equal;
}

/* The type id of a name such as "Q5_1", or -1. */
static int type_id(const char *name) {
    for (int id = 0; id < 256; id++)
        if (rwkv_type_name(id) && strcmp(rwkv_type_name(id), name) == 0) return id;
    return -1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.bin SCRATCH_DIR [TYPE...]\n", argv[0]);
        return 2;
    }
    char best[32];
    snprintf(best, sizeof best, "%s", rwkv_kernel_level());
    printf("kernel level: %s (features: %s)\n", best, rwkv_cpu_features());
    int failures = compare(argv[1], "file", best, 0) + check_batch(argv[1], "file");
    for (int i = 3; i < argc; i++) {
        const int type = type_id(argv[i]);
        char path[4096], err[512];
        snprintf(path, sizeof path, "%s/%s.bin", argv[2], argv[i]);
        if (type < 0 || rwkv_quantize_file(argv[1], path, type, 1, NULL, NULL, err, sizeof err) != RWKV_OK) {
            fprintf(stderr, "%s: %s\n", argv[i], type < 0 ? "not a type name" : err);
            return 1;
        }
        failures += compare(path, argv[i], best, 1) + check_batch(path, argv[i]);
    }
    printf("%d mismatches\n", failures);
    return failures != 0;
}
