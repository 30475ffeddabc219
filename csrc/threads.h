/* A persistent pool of worker threads that lives as long as the model. */
#ifndef RWKV_THREADS_H
#define RWKV_THREADS_H

#include <stdint.h>

/* Runs chunk `chunk` of a job; `ith` (in [0, pool size)) identifies the thread, for per-thread
 * scratch. The caller's thread is 0. */
typedef void (*rwkv_chunk_fn)(void *ctx, long chunk, int ith);

typedef struct rwkv_pool rwkv_pool;

rwkv_pool *rwkv_pool_create(int n_threads);
void rwkv_pool_free(rwkv_pool *pool);
int rwkv_pool_size(const rwkv_pool *pool);
/* Runs fn for every chunk in [0, n_chunks) on whichever threads claim them, and returns when all
 * are done. Threads claim chunks one at a time, so a worker that the OS has descheduled never holds
 * up the others: the caller does the work it did not claim. Not reentrant: callers serialise. */
void rwkv_pool_run(rwkv_pool *pool, long n_chunks, rwkv_chunk_fn fn, void *ctx);

/* Runs fn(ctx, item) for items [0, n) split across the pool's threads. */
typedef void (*rwkv_item_fn)(void *ctx, int64_t item);
void rwkv_parallel_for(rwkv_pool *pool, int64_t n, rwkv_item_fn fn, void *ctx);

int rwkv_default_threads(void);

#endif
