/* libFuzzer target for the engine's loader (tools/fuzz/run.py builds it with ASan and UBSan).
 *
 * Each input is a whole model file. It goes through what a user can do with one: load it (mapped,
 * then read into memory), evaluate a token and a short sequence, verify every tensor's values,
 * and quantize it. Errors are the expected outcome for most inputs; what the fuzzer looks for is a
 * crash, a sanitizer report, a leak or a hang. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rwkv.h"

static char output_path[256];

/* The input as a file with a path, without touching the disk. */
static int input_file(const uint8_t *data, size_t size, char *path, size_t path_len) {
    int fd = memfd_create("fuzz-model", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return -1;
    }
    snprintf(path, path_len, "/proc/self/fd/%d", fd);
    return fd;
}

static void evaluate(rwkv_model *model) {
    rwkv_model_info info;
    rwkv_get_info(model, &info);
    float *state = malloc(info.state_len * sizeof(float));
    float *logits = malloc((size_t)info.n_vocab * 3 * sizeof(float));
    char err[512];
    if (state && logits) {
        const int32_t one = 0, three[3] = {0, info.n_vocab - 1, info.n_vocab / 2};
        rwkv_init_state(model, state);
        rwkv_eval(model, &one, 1, state, logits, 0, err, sizeof err);
        rwkv_eval(model, three, 3, state, logits, 1, err, sizeof err);
    }
    free(state);
    free(logits);
}

static void count_bad(void *user, const char *name, int64_t n_bad, int64_t first_bad) {
    (void)name;
    (void)first_bad;
    *(int64_t *)user += n_bad;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!output_path[0]) snprintf(output_path, sizeof output_path, "/tmp/rwkvcpp-fuzz-%d.bin", (int)getpid());
    char path[64], err[512];
    int fd = input_file(data, size, path, sizeof path);
    if (fd < 0) return 0;
    for (int flags = 0; flags <= RWKV_LOAD_NO_MMAP; flags += RWKV_LOAD_NO_MMAP) {
        rwkv_model *model = NULL;
        if (rwkv_load_ex(path, 1, flags, &model, err, sizeof err) == RWKV_OK) {
            evaluate(model);
            rwkv_free(model);
        }
    }
    int64_t bad = 0;
    rwkv_verify_file(path, count_bad, &bad, err, sizeof err);
    rwkv_quantize_file(path, output_path, RWKV_TYPE_Q8_0, 1, NULL, NULL, err, sizeof err);
    close(fd);
    return 0;
}
