/* What C11 leaves to each compiler. The engine is built by GCC and clang (MinGW-w64 on Windows)
 * and must stay buildable by MSVC, so a language extension is used only here, behind a test for the
 * compiler that has it, with a portable form beside it. tests/test_portable_c.py holds the rest of
 * csrc/ to that and compiles it with RWKV_NO_GNU_EXTENSIONS too, which takes the portable forms
 * under GCC, so that they are compiled on every machine that runs the tests. */
#ifndef RWKV_COMPILER_H
#define RWKV_COMPILER_H

#include <stddef.h>

#if (defined(__GNUC__) || defined(__clang__)) && !defined(RWKV_NO_GNU_EXTENSIONS)
#define RWKV_GNU 1
#else
#define RWKV_GNU 0
#endif

/* *out = a * b; nonzero when the product does not fit in a size_t. */
static inline int rwkv_mul_overflow(size_t a, size_t b, size_t *out) {
#if RWKV_GNU
    return __builtin_mul_overflow(a, b, out); /* one multiply and a flag test, no division */
#else
    *out = a * b;
    return a != 0 && *out / a != b;
#endif
}

/* *out = a + b; nonzero when the sum does not fit. Unsigned arithmetic wraps, so this needs no
 * extension. */
static inline int rwkv_add_overflow(size_t a, size_t b, size_t *out) {
    *out = a + b;
    return *out < a;
}

/* A printf-like function: argument `fmt` is the format, arguments from `first` on its values, so
 * the compiler checks them. MinGW builds use MinGW's C99 printf (__USE_MINGW_ANSI_STDIO), not
 * Windows' own, which lacks %zu. */
#if RWKV_GNU && defined(__MINGW32__)
#define RWKV_PRINTF(fmt, first) __attribute__((format(gnu_printf, fmt, first)))
#elif RWKV_GNU
#define RWKV_PRINTF(fmt, first) __attribute__((format(printf, fmt, first)))
#else
#define RWKV_PRINTF(fmt, first)
#endif

/* A function body the compiler must inline: the recurrences' and kernels' shared bodies,
 * instantiated with constants they are specialised for. Marks a `static inline` function. */
#if RWKV_GNU
#define RWKV_ALWAYS_INLINE __attribute__((always_inline))
#elif defined(_MSC_VER)
#define RWKV_ALWAYS_INLINE __forceinline
#else
#define RWKV_ALWAYS_INLINE
#endif

/* Hot element-wise loops outside the kernel table (the wkv recurrences) get an AVX2 + FMA clone
 * (x86-64-v3) that the loader picks when the CPU has it; the baseline build only vectorises with
 * SSE2. Only GCC on Linux makes clones that a loader picks. */
#if RWKV_GNU && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define RWKV_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define RWKV_SIMD_CLONES
#endif

/* x86 CPUID and XGETBV, for choosing kernels (dispatch.c): out = {eax, ebx, ecx, edx} of `leaf`,
 * `subleaf`; rwkv_xcr0() the register state the OS saves, which says whether AVX and AVX-512
 * registers survive a context switch. Without either compiler's access to them the engine keeps to
 * the portable kernels (RWKV_HAS_CPUID 0). */
#if (defined(__x86_64__) || defined(__i386__)) && RWKV_GNU
#include <cpuid.h>
#define RWKV_HAS_CPUID 1
static inline void rwkv_cpuid(unsigned leaf, unsigned subleaf, unsigned out[4]) {
    out[0] = out[1] = out[2] = out[3] = 0;
    __get_cpuid_count(leaf, subleaf, &out[0], &out[1], &out[2], &out[3]);
}
/* Only to be called when CPUID says OSXSAVE. As an instruction, not _xgetbv, which GCC allows only
 * in functions compiled for XSAVE. */
static inline unsigned long long rwkv_xcr0(void) {
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (unsigned long long)hi << 32 | lo;
}
#elif defined(_M_X64) || defined(_M_IX86)
#include <intrin.h>
#define RWKV_HAS_CPUID 1
static inline void rwkv_cpuid(unsigned leaf, unsigned subleaf, unsigned out[4]) {
    int regs[4];
    __cpuid(regs, 0);
    if ((unsigned)regs[0] < leaf) regs[0] = regs[1] = regs[2] = regs[3] = 0;
    else __cpuidex(regs, (int)leaf, (int)subleaf);
    for (int i = 0; i < 4; i++) out[i] = (unsigned)regs[i];
}
static inline unsigned long long rwkv_xcr0(void) { return _xgetbv(0); }
#else
#define RWKV_HAS_CPUID 0
#endif

#endif
