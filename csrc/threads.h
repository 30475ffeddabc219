/* A persistent pool of worker threads that lives as long as the model. */
#ifndef RWKV_THREADS_H
#define RWKV_THREADS_H

/* Runs on every thread of the pool: ith in [0, nth). The caller's thread is ith 0. */
typedef void (*rwkv_task_fn)(void *ctx, int ith, int nth);

typedef struct rwkv_pool rwkv_pool;

rwkv_pool *rwkv_pool_create(int n_threads);
void rwkv_pool_free(rwkv_pool *pool);
int rwkv_pool_size(const rwkv_pool *pool);
/* Runs fn on all threads and returns when all are done. Not reentrant: callers serialise. */
void rwkv_pool_run(rwkv_pool *pool, rwkv_task_fn fn, void *ctx);

/* The share [*begin, *end) of n items that thread ith of nth takes, in whole multiples of `align`. */
void rwkv_split(long n, int ith, int nth, long align, long *begin, long *end);

int rwkv_default_threads(void);

#endif
