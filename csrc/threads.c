/* The thread pool. Workers spin briefly after each job, because during decoding the next job
 * arrives within microseconds, then sleep on a condition variable so an idle model costs nothing.
 *
 * A job lives on the caller's stack. A worker announces itself in `active` before it looks at the
 * job pointer, and the caller clears the pointer and waits for `active` to drain before returning,
 * so no worker can touch a finished job. */
#include "threads.h"

#include <stdlib.h>

#include "platform.h"
#include "platform_threads.h"

#define SPIN_ROUNDS 20000 /* a worker's wait before it sleeps */
#define YIELD_AFTER 256   /* the caller's spins before it lets a descheduled worker run here */

typedef struct {
    rwkv_chunk_fn fn;
    void *ctx;
    long n_chunks;
    rwkv_atomic_long next; /* the next unclaimed chunk */
    rwkv_atomic_long done; /* chunks finished */
} pool_job;

struct rwkv_pool {
    int n_threads;
    rwkv_thread *workers;
    rwkv_mutex mutex;
    rwkv_cond wake;
    rwkv_atomic_ptr job;        /* the running pool_job, or NULL */
    rwkv_atomic_int generation; /* bumped once per job */
    rwkv_atomic_int active;     /* workers that may be looking at `job` */
    rwkv_atomic_int sleeping;   /* workers blocked on `wake` */
    rwkv_atomic_int stop;
};

typedef struct {
    rwkv_pool *pool;
    int ith;
} worker_arg;

static void run_chunks(pool_job *job, int ith) {
    for (;;) {
        long chunk = rwkv_atomic_fetch_add(&job->next, 1);
        if (chunk >= job->n_chunks) return;
        job->fn(job->ctx, chunk, ith);
        rwkv_atomic_fetch_add(&job->done, 1);
    }
}

static void wait_for_job(rwkv_pool *pool, int seen) {
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (rwkv_atomic_load(&pool->generation) != seen || rwkv_atomic_load(&pool->stop)) return;
        rwkv_cpu_relax();
    }
    rwkv_mutex_lock(&pool->mutex);
    rwkv_atomic_fetch_add(&pool->sleeping, 1);
    while (rwkv_atomic_load(&pool->generation) == seen && !rwkv_atomic_load(&pool->stop))
        rwkv_cond_wait(&pool->wake, &pool->mutex);
    rwkv_atomic_fetch_sub(&pool->sleeping, 1);
    rwkv_mutex_unlock(&pool->mutex);
}

static RWKV_THREAD_RESULT worker_main(void *p) {
    worker_arg *arg = p;
    rwkv_pool *pool = arg->pool;
    int ith = arg->ith;
    free(arg);
    int seen = 0; /* not the current generation: a job may have been posted before this thread ran */
    for (;;) {
        wait_for_job(pool, seen);
        if (rwkv_atomic_load(&pool->stop)) break;
        seen = rwkv_atomic_load(&pool->generation);
        rwkv_atomic_fetch_add(&pool->active, 1);
        pool_job *job = rwkv_atomic_load_ptr(&pool->job);
        if (job) run_chunks(job, ith);
        rwkv_atomic_fetch_sub(&pool->active, 1);
    }
    return 0;
}

rwkv_pool *rwkv_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    rwkv_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    rwkv_mutex_init(&pool->mutex);
    rwkv_cond_init(&pool->wake);
    pool->workers = calloc((size_t)n_threads, sizeof(rwkv_thread));
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
        if (!arg || rwkv_thread_create(&pool->workers[i], worker_main, arg) != 0) {
            free(arg);
            pool->n_threads = i; /* run with the threads we got */
            break;
        }
    }
    return pool;
}

void rwkv_pool_free(rwkv_pool *pool) {
    if (!pool) return;
    rwkv_mutex_lock(&pool->mutex);
    rwkv_atomic_store(&pool->stop, 1);
    rwkv_cond_broadcast(&pool->wake);
    rwkv_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->n_threads; i++) rwkv_thread_join(pool->workers[i]);
    rwkv_cond_destroy(&pool->wake);
    rwkv_mutex_destroy(&pool->mutex);
    free(pool->workers);
    free(pool);
}

int rwkv_pool_size(const rwkv_pool *pool) { return pool->n_threads; }

/* One round of the caller's wait: spin first, then let a descheduled worker have this core. */
static void back_off(long spins) {
    if (spins < YIELD_AFTER) rwkv_cpu_relax();
    else rwkv_thread_yield();
}

void rwkv_pool_run(rwkv_pool *pool, long n_chunks, rwkv_chunk_fn fn, void *ctx) {
    pool_job job = {fn, ctx, n_chunks, 0, 0};
    if (pool->n_threads == 1 || n_chunks <= 1) {
        run_chunks(&job, 0);
        return;
    }
    rwkv_atomic_store_ptr(&pool->job, &job);
    rwkv_atomic_fetch_add(&pool->generation, 1);
    if (rwkv_atomic_load(&pool->sleeping) > 0) {
        rwkv_mutex_lock(&pool->mutex);
        rwkv_cond_broadcast(&pool->wake);
        rwkv_mutex_unlock(&pool->mutex);
    }
    run_chunks(&job, 0);
    for (long spins = 0; rwkv_atomic_load(&job.done) < n_chunks; spins++) back_off(spins);
    rwkv_atomic_store_ptr(&pool->job, NULL);
    for (long spins = 0; rwkv_atomic_load(&pool->active) > 0; spins++) back_off(spins);
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
