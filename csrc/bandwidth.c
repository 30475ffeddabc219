/* Measures memory read bandwidth with the engine's own thread pool, so that the benchmark can say
 * how close decoding gets to the limit: a token costs one pass over the weights. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rwkv.h"
#include "threads.h"

#define READ_CHUNK (1 << 18) /* floats: 1 MiB per chunk of work */

typedef struct {
    const float *data;
    size_t n;
    float sums[64];
} read_task;

static void read_chunk(void *p, long chunk, int ith) {
    read_task *task = p;
    const long begin = chunk * READ_CHUNK;
    const long end = begin + READ_CHUNK < (long)task->n ? begin + READ_CHUNK : (long)task->n;
    /* 32 independent sums: enough in flight that the loop is limited by memory, not by add latency */
    const float *data = task->data;
    float acc[32] = {0};
    for (long i = begin; i + 32 <= end; i += 32)
        for (int j = 0; j < 32; j++) acc[j] += data[i + j];
    float sum = 0.0f;
    for (int j = 0; j < 32; j++) sum += acc[j];
    task->sums[ith % 64] = sum; /* kept so the reads cannot be optimised away */
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double rwkv_read_bandwidth(int n_threads, size_t bytes) {
    if (bytes < (1u << 20)) bytes = 1u << 20;
    rwkv_pool *pool = rwkv_pool_create(n_threads > 0 ? n_threads : rwkv_default_threads());
    float *data = malloc(bytes);
    if (!pool || !data) {
        free(data);
        rwkv_pool_free(pool);
        return 0.0;
    }
    memset(data, 1, bytes); /* fault every page in before timing */
    read_task task = {data, bytes / sizeof(float), {0}};
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        double t = seconds();
        rwkv_pool_run(pool, (long)((task.n + READ_CHUNK - 1) / READ_CHUNK), read_chunk, &task);
        t = seconds() - t;
        if (t < best) best = t;
    }
    free(data);
    rwkv_pool_free(pool);
    return (double)bytes / best / 1e9;
}
