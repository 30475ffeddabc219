/* The thread pool. Workers spin briefly after each job, because during decoding the next job
 * arrives within microseconds, then sleep on a condition variable so an idle model costs nothing.
 *
 * A job lives on the caller's stack. A worker announces itself in `active` before it looks at the
 * job pointer, and the caller clears the pointer and waits for `active` to drain before returning,
 * so no worker can touch a finished job. */
#include "threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "platform.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_ROUNDS 20000 /* a worker's wait before it sleeps */
#define YIELD_AFTER 256   /* the caller's spins before it lets a descheduled worker run here */

typedef struct {
    rwkv_chunk_fn fn;
    void *ctx;
    long n_chunks;
    atomic_long next; /* the next unclaimed chunk */
    atomic_long done; /* chunks finished */
} pool_job;

struct rwkv_pool {
    int n_threads;
    pthread_t *workers;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    _Atomic(pool_job *) job;
    atomic_int generation; /* bumped once per job */
    atomic_int active;     /* workers that may be looking at `job` */
    atomic_int sleeping;   /* workers blocked on `wake` */
    atomic_int stop;
};

typedef struct {
    rwkv_pool *pool;
    int ith;
} worker_arg;

static void run_chunks(pool_job *job, int ith) {
    for (;;) {
        long chunk = atomic_fetch_add(&job->next, 1);
        if (chunk >= job->n_chunks) return;
        job->fn(job->ctx, chunk, ith);
        atomic_fetch_add(&job->done, 1);
    }
}

static void wait_for_job(rwkv_pool *pool, int seen) {
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (atomic_load(&pool->generation) != seen || atomic_load(&pool->stop)) return;
        cpu_relax();
    }
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add(&pool->sleeping, 1);
    while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
        pthread_cond_wait(&pool->wake, &pool->mutex);
    atomic_fetch_sub(&pool->sleeping, 1);
    pthread_mutex_unlock(&pool->mutex);
}

static void *worker_main(void *p) {
    worker_arg *arg = p;
    rwkv_pool *pool = arg->pool;
    int ith = arg->ith;
    free(arg);
    int seen = 0; /* not the current generation: a job may have been posted before this thread ran */
    for (;;) {
        wait_for_job(pool, seen);
        if (atomic_load(&pool->stop)) break;
        seen = atomic_load(&pool->generation);
        atomic_fetch_add(&pool->active, 1);
        pool_job *job = atomic_load(&pool->job);
        if (job) run_chunks(job, ith);
        atomic_fetch_sub(&pool->active, 1);
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

/* One round of the caller's wait: spin first, then let a descheduled worker have this core. */
static void back_off(long spins) {
    if (spins < YIELD_AFTER) cpu_relax();
    else sched_yield();
}

void rwkv_pool_run(rwkv_pool *pool, long n_chunks, rwkv_chunk_fn fn, void *ctx) {
    pool_job job = {fn, ctx, n_chunks, 0, 0};
    if (pool->n_threads == 1 || n_chunks <= 1) {
        run_chunks(&job, 0);
        return;
    }
    atomic_store(&pool->job, &job);
    atomic_fetch_add(&pool->generation, 1);
    if (atomic_load(&pool->sleeping) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
    }
    run_chunks(&job, 0);
    for (long spins = 0; atomic_load(&job.done) < n_chunks; spins++) back_off(spins);
    atomic_store(&pool->job, NULL);
    for (long spins = 0; atomic_load(&pool->active) > 0; spins++) back_off(spins);
}

typedef struct {
    rwkv_item_fn fn;
    void *ctx;
} parallel_for_task;

static void parallel_for_chunk(void *p, long item, int ith) {
    (void)ith;
    parallel_for_task *task = p;
    task->fn(task->ctx, item);
}

void rwkv_parallel_for(rwkv_pool *pool, int64_t n, rwkv_item_fn fn, void *ctx) {
    parallel_for_task task = {fn, ctx};
    rwkv_pool_run(pool, (long)n, parallel_for_chunk, &task);
}

int rwkv_default_threads(void) { return rwkv_cpu_count(); }
