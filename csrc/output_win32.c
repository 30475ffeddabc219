/* output.h on Windows. The new file is written under a temporary name beside the destination,
 * flushed to disk, closed (Windows cannot move an open file) and moved over the destination with
 * MoveFileEx(REPLACE_EXISTING | WRITE_THROUGH); every error path deletes it. Windows has no
 * O_TMPFILE, so a process killed mid-write leaves its `DST.tmp-XXXXXXXX` behind. Paths are UTF-8. */
#include "output.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <windows.h>

#include "file.h"
#include "platform.h"
#include "platform_threads.h"
#include "rwkv.h"

#define OUTPUT_BUFFER_BYTES ((size_t)1 << 20)
#define NAME_ATTEMPTS 100

_Static_assert(sizeof(struct stat) == sizeof(struct _stat64), "build with _FILE_OFFSET_BITS=64: sizes over 2 GiB");

static void output_free(rwkv_output *out) {
    free(out->name);
    free(out->temp);
    free(out->buf);
    out->name = out->target = out->temp = NULL;
    out->buf = NULL;
}

/* The destination does not exist, or is a regular file that is not read-only. */
static int check_target(rwkv_output *out, char *err, size_t err_len) {
    wchar_t *wide = rwkv_utf16(out->target);
    if (!wide) return rwkv_fail(err, err_len, RWKV_ERR_ARGS, "%s: not a valid UTF-8 path", out->name);
    const int found = _wstat64(wide, (struct _stat64 *)&out->existing) == 0;
    const int stat_errno = errno;
    free(wide);
    out->exists = found;
    if (!found) {
        if (stat_errno == ENOENT) return RWKV_OK;
        return rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot check the destination: %s", out->name,
                         strerror(stat_errno));
    }
    if (!S_ISREG(out->existing.st_mode))
        return rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: the destination is a %s, not a regular file; give a file path",
                         out->name, rwkv_file_kind(out->existing.st_mode));
    if (!(out->existing.st_mode & _S_IWRITE))
        return rwkv_fail(err, err_len, RWKV_ERR_IO,
                         "%s: the destination is read-only; make it writable or remove it first", out->name);
    return RWKV_OK;
}

/* A new file named `target`.tmp-XXXXXXXX, a suffix no other writer picks at the same time. */
static int open_temp(rwkv_output *out) {
    static rwkv_atomic_int counter;
    const size_t n = strlen(out->target) + 32;
    out->temp = malloc(n);
    if (!out->temp) return -1;
    for (int attempt = 0; attempt < NAME_ATTEMPTS; attempt++) {
        const unsigned suffix = (unsigned)GetTickCount64() ^ ((unsigned)GetCurrentProcessId() << 12) ^
                                ((unsigned)rwkv_atomic_fetch_add(&counter, 1) * 2654435761u);
        snprintf(out->temp, n, "%s.tmp-%08x", out->target, suffix);
        wchar_t *wide = rwkv_utf16(out->temp);
        if (!wide) return -1;
        int fd = _wopen(wide, _O_WRONLY | _O_CREAT | _O_EXCL | _O_BINARY | _O_NOINHERIT, _S_IREAD | _S_IWRITE);
        free(wide);
        if (fd >= 0 || errno != EEXIST) return fd;
    }
    return -1;
}

static void remove_temp(rwkv_output *out) {
    wchar_t *wide = out->temp ? rwkv_utf16(out->temp) : NULL;
    if (wide) _wunlink(wide);
    free(wide);
}

int rwkv_output_open(rwkv_output *out, const char *dst, char *err, size_t err_len) {
    memset(out, 0, sizeof *out);
    out->fd = -1;
    out->name = strdup(dst);
    out->buf = malloc(OUTPUT_BUFFER_BYTES);
    if (!out->name || !out->buf) {
        output_free(out);
        return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", dst);
    }
    out->target = out->name; /* no links to resolve: the file goes where it is named */
    int status = check_target(out, err, err_len);
    if (status == RWKV_OK) {
        out->fd = open_temp(out);
        if (out->fd < 0)
            status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot create a file beside it: %s", dst,
                               strerror(errno));
    }
    if (status != RWKV_OK) rwkv_output_abort(out);
    return status;
}

static void write_all(rwkv_output *out, const uint8_t *p, size_t n) {
    while (n > 0 && !out->write_errno) {
        const unsigned piece = n > 0x40000000u ? 0x40000000u : (unsigned)n; /* _write takes 32-bit counts */
        int k = _write(out->fd, p, piece);
        if (k <= 0) {
            out->write_errno = k < 0 ? errno : ENOSPC;
            return;
        }
        p += k;
        n -= (size_t)k;
    }
}

static void flush_buffer(rwkv_output *out) {
    write_all(out, out->buf, out->used);
    out->used = 0;
}

int rwkv_output_write(rwkv_output *out, const void *data, size_t n) {
    if (out->used + n > OUTPUT_BUFFER_BYTES) flush_buffer(out);
    if (n >= OUTPUT_BUFFER_BYTES) write_all(out, data, n);
    else if (!out->write_errno) {
        memcpy(out->buf + out->used, data, n);
        out->used += n;
    }
    return !out->write_errno;
}

int rwkv_output_commit(rwkv_output *out, char *err, size_t err_len) {
    const char *name = out->name;
    int status = RWKV_OK;
    flush_buffer(out);
    if (out->write_errno)
        status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: write failed: %s", name, strerror(out->write_errno));
    else if (_commit(out->fd) != 0)
        status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: write failed: %s", name, strerror(errno));
    _close(out->fd);
    out->fd = -1;
    /* The destination may have changed while the file was written. */
    if (status == RWKV_OK) status = check_target(out, err, err_len);
    if (status == RWKV_OK) {
        wchar_t *from = rwkv_utf16(out->temp), *to = rwkv_utf16(out->target);
        if (!from || !to || !MoveFileExW(from, to, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH))
            status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot move the new file into place (Windows error %lu)",
                               name, (unsigned long)GetLastError());
        free(from);
        free(to);
    }
    if (status != RWKV_OK) remove_temp(out);
    output_free(out);
    return status;
}

void rwkv_output_abort(rwkv_output *out) {
    if (out->fd >= 0) { /* only a file this writer created is removed */
        _close(out->fd);
        remove_temp(out);
    }
    out->fd = -1;
    output_free(out);
}
