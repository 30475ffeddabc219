/* The machine's two limits, measured with the engine's own thread pool, so that the benchmark can
 * say how close the engine gets to them: memory read bandwidth (a decoded token costs one pass over
 * the weights) and the multiply-add peak of the kernels in use (a prompt token costs two
 * floating-point operations per weight). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dispatch.h"
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

/* ---- multiply-add peak ---------------------------------------------------------------------- */

/* The portable level's loop: eight chains of scalar multiply-adds (fused where the compiler may). */
double rwkv_fma_loop_portable(long rounds, float *sink) {
    const float x = *sink, y = 1e-6f;
    float a0 = 0.0f, a1 = 1.0f, a2 = 2.0f, a3 = 3.0f, a4 = 4.0f, a5 = 5.0f, a6 = 6.0f, a7 = 7.0f;
    for (long i = 0; i < rounds; i++) {
        a0 = a0 * x + y, a1 = a1 * x + y, a2 = a2 * x + y, a3 = a3 * x + y;
        a4 = a4 * x + y, a5 = a5 * x + y, a6 = a6 * x + y, a7 = a7 * x + y;
    }
    *sink = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    return (double)rounds * 8 * 2;
}

#define FMA_ROUNDS (1L << 21) /* per chunk of work: about 10 ms of AVX2 on one core */
#define FMA_CHUNKS_PER_THREAD 8 /* so that a thread held up by the system leaves its share to others */

typedef struct {
    double *flops; /* per chunk */
    float *sinks;  /* per chunk */
} fma_task;

static void fma_chunk(void *p, long chunk, int ith) {
    (void)ith;
    fma_task *task = p;
    task->sinks[chunk] = 0.999f; /* the loop's multiplier: a value the compiler cannot see */
    task->flops[chunk] = rwkv_kernels.fma_loop(FMA_ROUNDS, &task->sinks[chunk]);
}

double rwkv_fma_peak(int n_threads) {
    rwkv_dispatch_init();
    const int threads = n_threads > 0 ? n_threads : rwkv_default_threads();
    const long chunks = (long)threads * FMA_CHUNKS_PER_THREAD;
    rwkv_pool *pool = rwkv_pool_create(threads);
    fma_task task = {malloc((size_t)chunks * sizeof(double)), malloc((size_t)chunks * sizeof(float))};
    double best = 0.0;
    for (int round = 0; pool && task.flops && task.sinks && round < 3; round++) {
        double t = seconds();
        rwkv_pool_run(pool, chunks, fma_chunk, &task);
        t = seconds() - t;
        double flops = 0.0;
        for (long c = 0; c < chunks; c++) flops += task.flops[c];
        if (flops / t > best) best = flops / t;
    }
    free(task.flops);
    free(task.sinks);
    rwkv_pool_free(pool);
    return best / 1e9;
}
