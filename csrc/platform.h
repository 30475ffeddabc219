/* The calls that differ between POSIX systems and Windows: opening a file by a UTF-8 path, mapping
 * it, reading at an offset, a file's modification time, and the processor count. On POSIX they
 * are the system's own calls, defined here; on Windows platform_win32.c defines them (output
 * files have their own Windows file, output_win32.c). */
#ifndef RWKV_PLATFORM_H
#define RWKV_PLATFORM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#ifdef _WIN32

#include <io.h>
#include <wchar.h>

typedef long long rwkv_ssize;

#ifdef _MSC_VER
/* MSVC's <sys/stat.h> has the _S_IF* bits but neither mode_t nor the S_IS* tests (MinGW has both). */
typedef unsigned short mode_t;
#define S_ISREG(m) (((m) & _S_IFMT) == _S_IFREG)
#define S_ISDIR(m) (((m) & _S_IFMT) == _S_IFDIR)
#define S_ISFIFO(m) (((m) & _S_IFMT) == _S_IFIFO)
#define S_ISCHR(m) (((m) & _S_IFMT) == _S_IFCHR)
/* Its struct stat holds a 32-bit size; _stat64 (struct and function alike) is the same with a
 * 64-bit one, what MinGW gives every struct stat under _FILE_OFFSET_BITS=64. */
#define stat _stat64
#define fstat _fstat64
#endif

/* The UTF-16 form Windows takes of a UTF-8 string (malloc'd), or NULL with errno set. */
wchar_t *rwkv_utf16(const char *utf8);
/* Read-only, not inherited by child processes; -1 with errno set on failure. */
int rwkv_open_read(const char *path);
/* The whole file, read-only, or NULL with errno set. */
const void *rwkv_map_read(int fd, size_t size);
void rwkv_unmap(const void *map, size_t size);
rwkv_ssize rwkv_pread(int fd, void *buf, size_t n, uint64_t offset);
struct timespec rwkv_stat_mtime(const struct stat *st);
int rwkv_cpu_count(void);

#else

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

typedef ssize_t rwkv_ssize;

/* O_NONBLOCK: opening a FIFO would otherwise wait for a writer; regular files ignore it. */
static inline int rwkv_open_read(const char *path) { return open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); }

static inline const void *rwkv_map_read(int fd, size_t size) {
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    return map == MAP_FAILED ? NULL : map;
}

static inline void rwkv_unmap(const void *map, size_t size) { munmap((void *)map, size); }

static inline rwkv_ssize rwkv_pread(int fd, void *buf, size_t n, uint64_t offset) {
    return pread(fd, buf, n, (off_t)offset);
}

#ifdef __APPLE__
static inline struct timespec rwkv_stat_mtime(const struct stat *st) { return st->st_mtimespec; }
#else
static inline struct timespec rwkv_stat_mtime(const struct stat *st) { return st->st_mtim; }
#endif

static inline int rwkv_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

#endif
#endif
