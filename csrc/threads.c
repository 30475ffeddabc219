/* The thread pool. Workers spin briefly after each task, because during decoding the next task
 * arrives within microseconds, then sleep on a condition variable so an idle model costs nothing. */
#include "threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_ROUNDS 20000

struct rwkv_pool {
    int n_threads;
    pthread_t *workers;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    atomic_int generation; /* bumped once per task */
    atomic_int pending;    /* workers still running the current task */
    atomic_int sleeping;   /* workers blocked on `wake` */
    atomic_int stop;
    rwkv_task_fn fn;
    void *ctx;
};

typedef struct {
    rwkv_pool *pool;
    int ith;
} worker_arg;

static int wait_for_task(rwkv_pool *pool, int seen) {
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (atomic_load(&pool->generation) != seen || atomic_load(&pool->stop)) return 1;
        cpu_relax();
    }
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add(&pool->sleeping, 1);
    while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
        pthread_cond_wait(&pool->wake, &pool->mutex);
    atomic_fetch_sub(&pool->sleeping, 1);
    pthread_mutex_unlock(&pool->mutex);
    return 1;
}

static void *worker_main(void *p) {
    worker_arg *arg = p;
    rwkv_pool *pool = arg->pool;
    int ith = arg->ith;
    free(arg);
    /* Not the current generation: a task may already have been posted before this thread ran. */
    int seen = 0;
    for (;;) {
        wait_for_task(pool, seen);
        if (atomic_load(&pool->stop)) break;
        seen = atomic_load(&pool->generation);
        pool->fn(pool->ctx, ith, pool->n_threads);
        atomic_fetch_sub(&pool->pending, 1);
    }
    return NULL;
}

rwkv_pool *rwkv_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    rwkv_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->workers = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!pool->workers) {
        free(pool);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *arg = malloc(sizeof *arg);
        if (arg) {
            arg->pool = pool;
            arg->ith = i;
        }
        if (!arg || pthread_create(&pool->workers[i], NULL, worker_main, arg) != 0) {
            free(arg);
            pool->n_threads = i; /* run with the threads we got */
            break;
        }
    }
    return pool;
}

void rwkv_pool_free(rwkv_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mutex);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->workers[i], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    free(pool->workers);
    free(pool);
}

int rwkv_pool_size(const rwkv_pool *pool) { return pool->n_threads; }

void rwkv_pool_run(rwkv_pool *pool, rwkv_task_fn fn, void *ctx) {
    if (pool->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store(&pool->pending, pool->n_threads - 1);
    atomic_fetch_add(&pool->generation, 1);
    if (atomic_load(&pool->sleeping) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
    }
    fn(ctx, 0, pool->n_threads);
    for (long spins = 0; atomic_load(&pool->pending) > 0; spins++) {
        if (spins < SPIN_ROUNDS) cpu_relax();
        else sched_yield();
    }
}

void rwkv_split(long n, int ith, int nth, long align, long *begin, long *end) {
    long units = (n + align - 1) / align;
    long per = units / nth, extra = units % nth;
    long b = ith * per + (ith < extra ? ith : extra);
    long e = b + per + (ith < extra ? 1 : 0);
    b *= align;
    e *= align;
    *begin = b < n ? b : n;
    *end = e < n ? e : n;
}

int rwkv_default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
