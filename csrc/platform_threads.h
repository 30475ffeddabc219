/* Threads, locks and atomics. On POSIX systems, POSIX threads; on Windows its own threads, locks
 * and one-time initialisation, with MinGW-w64 too (tests/test_windows.py runs them under Wine),
 * rather than MinGW's winpthreads, which MSVC does not have. Atomics are C11's wherever the compiler
 * has them; MSVC's <stdatomic.h> is experimental, so there they are the Interlocked functions.
 *
 * Every atomic operation is sequentially consistent, as C11's are without an explicit order: the
 * pool's handshakes store a flag and then load another thread's (threads.c). Under MSVC a load is
 * ReadAcquire and a store InterlockedExchange, whose full barrier keeps a later load from being
 * satisfied before it: the usual mapping of sequential consistency on x86-64 and AArch64. */
#ifndef RWKV_PLATFORM_THREADS_H
#define RWKV_PLATFORM_THREADS_H

#include "compiler.h"

#ifdef _WIN32

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

typedef SRWLOCK rwkv_mutex;
typedef CONDITION_VARIABLE rwkv_cond;
typedef INIT_ONCE rwkv_once;
typedef HANDLE rwkv_thread;
#define RWKV_ONCE_INIT INIT_ONCE_STATIC_INIT
/* How a thread's entry point is declared: `static RWKV_THREAD_RESULT worker(void *arg)`, returning 0. */
#define RWKV_THREAD_RESULT DWORD WINAPI
typedef LPTHREAD_START_ROUTINE rwkv_thread_fn;

/* SRW locks and condition variables hold no resources: nothing to destroy. */
static inline void rwkv_mutex_init(rwkv_mutex *m) { InitializeSRWLock(m); }
static inline void rwkv_mutex_destroy(rwkv_mutex *m) { (void)m; }
static inline void rwkv_mutex_lock(rwkv_mutex *m) { AcquireSRWLockExclusive(m); }
static inline void rwkv_mutex_unlock(rwkv_mutex *m) { ReleaseSRWLockExclusive(m); }
static inline void rwkv_cond_init(rwkv_cond *c) { InitializeConditionVariable(c); }
static inline void rwkv_cond_destroy(rwkv_cond *c) { (void)c; }
static inline void rwkv_cond_wait(rwkv_cond *c, rwkv_mutex *m) { SleepConditionVariableSRW(c, m, INFINITE, 0); }
static inline void rwkv_cond_broadcast(rwkv_cond *c) { WakeAllConditionVariable(c); }

/* InitOnceExecuteOnce passes its callback a data pointer; the function to run goes inside one,
 * since C does not convert function pointers to data pointers. */
typedef struct {
    void (*fn)(void);
} rwkv_once_call;

static inline BOOL CALLBACK rwkv_run_once(PINIT_ONCE once, PVOID call, PVOID *context) {
    (void)once;
    (void)context;
    ((rwkv_once_call *)call)->fn();
    return TRUE;
}

static inline void rwkv_call_once(rwkv_once *once, void (*fn)(void)) {
    rwkv_once_call call = {fn};
    InitOnceExecuteOnce(once, rwkv_run_once, &call, NULL);
}

/* 0 on success, as pthread_create. */
static inline int rwkv_thread_create(rwkv_thread *t, rwkv_thread_fn fn, void *arg) {
    *t = CreateThread(NULL, 0, fn, arg, 0, NULL);
    return *t ? 0 : -1;
}

static inline void rwkv_thread_join(rwkv_thread t) {
    WaitForSingleObject(t, INFINITE);
    CloseHandle(t);
}

static inline void rwkv_thread_yield(void) { SwitchToThread(); }

#else

#include <pthread.h>
#include <sched.h>

typedef pthread_mutex_t rwkv_mutex;
typedef pthread_cond_t rwkv_cond;
typedef pthread_once_t rwkv_once;
typedef pthread_t rwkv_thread;
#define RWKV_ONCE_INIT PTHREAD_ONCE_INIT
#define RWKV_THREAD_RESULT void *
typedef void *(*rwkv_thread_fn)(void *arg);

static inline void rwkv_mutex_init(rwkv_mutex *m) { pthread_mutex_init(m, NULL); }
static inline void rwkv_mutex_destroy(rwkv_mutex *m) { pthread_mutex_destroy(m); }
static inline void rwkv_mutex_lock(rwkv_mutex *m) { pthread_mutex_lock(m); }
static inline void rwkv_mutex_unlock(rwkv_mutex *m) { pthread_mutex_unlock(m); }
static inline void rwkv_cond_init(rwkv_cond *c) { pthread_cond_init(c, NULL); }
static inline void rwkv_cond_destroy(rwkv_cond *c) { pthread_cond_destroy(c); }
static inline void rwkv_cond_wait(rwkv_cond *c, rwkv_mutex *m) { pthread_cond_wait(c, m); }
static inline void rwkv_cond_broadcast(rwkv_cond *c) { pthread_cond_broadcast(c); }
static inline void rwkv_call_once(rwkv_once *once, void (*fn)(void)) { pthread_once(once, fn); }
static inline int rwkv_thread_create(rwkv_thread *t, rwkv_thread_fn fn, void *arg) {
    return pthread_create(t, NULL, fn, arg);
}
static inline void rwkv_thread_join(rwkv_thread t) { pthread_join(t, NULL); }
static inline void rwkv_thread_yield(void) { sched_yield(); }

#endif

#if defined(_MSC_VER) && !defined(__clang__)

/* long and LONG are 32 bits on Windows: the Interlocked functions serve both kinds. */
typedef volatile LONG rwkv_atomic_int;
typedef volatile LONG rwkv_atomic_long;
typedef void *volatile rwkv_atomic_ptr;
#define rwkv_atomic_load(p) ReadAcquire(p)
#define rwkv_atomic_store(p, v) ((void)InterlockedExchange(p, v))
#define rwkv_atomic_fetch_add(p, v) InterlockedExchangeAdd(p, v)
#define rwkv_atomic_fetch_sub(p, v) InterlockedExchangeAdd(p, -(v))
#define rwkv_atomic_load_ptr(p) ReadPointerAcquire(p)
#define rwkv_atomic_store_ptr(p, v) ((void)InterlockedExchangePointer(p, v))

#else

#include <stdatomic.h>

typedef atomic_int rwkv_atomic_int;
typedef atomic_long rwkv_atomic_long;
typedef _Atomic(void *) rwkv_atomic_ptr;
#define rwkv_atomic_load(p) atomic_load(p)
#define rwkv_atomic_store(p, v) atomic_store(p, v)
#define rwkv_atomic_fetch_add(p, v) atomic_fetch_add(p, v)
#define rwkv_atomic_fetch_sub(p, v) atomic_fetch_sub(p, v)
#define rwkv_atomic_load_ptr(p) atomic_load(p)
#define rwkv_atomic_store_ptr(p, v) atomic_store(p, v)

#endif

/* One round of a spin wait: tells the core that this thread waits, so that it spends less power
 * and lets a sibling hyperthread run. */
#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
#include <immintrin.h>
#define rwkv_cpu_relax() _mm_pause()
#elif defined(_M_ARM64)
#include <intrin.h>
#define rwkv_cpu_relax() __yield()
#elif defined(__aarch64__) && RWKV_GNU
#define rwkv_cpu_relax() __asm__ __volatile__("yield")
#else
#define rwkv_cpu_relax() ((void)0)
#endif

#endif
