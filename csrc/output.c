/* Writing an output file atomically (output.h). The steps: resolve a symbolic link to its target,
 * check the target, create an unnamed (or temporary) file beside it, write, then sync, name and
 * rename it over the target and sync the directory, as SQLite and careful editors do. */
#include "output.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "file.h"
#include "platform_threads.h"
#include "rwkv.h"

#define OUTPUT_BUFFER_BYTES ((size_t)1 << 20)
#define NAME_ATTEMPTS 100

static void output_free(rwkv_output *out) {
    free(out->name);
    free(out->target);
    free(out->temp);
    free(out->buf);
    out->name = out->target = out->temp = NULL;
    out->buf = NULL;
}

/* ---- the destination ------------------------------------------------------------------------ */

/* A symbolic link is written through: the new file replaces its target, so that the link keeps
 * pointing at the model. A link to nothing is refused, as GNU cp does, rather than guessed at. */
static int resolve_target(rwkv_output *out, const char *dst, char *err, size_t err_len) {
    struct stat st;
    if (lstat(dst, &st) != 0 || !S_ISLNK(st.st_mode)) {
        out->target = strdup(dst);
        return out->target ? RWKV_OK : rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", dst);
    }
    out->target = realpath(dst, NULL);
    if (!out->target)
        return rwkv_fail(err, err_len, RWKV_ERR_IO,
                         "%s: a symbolic link whose target cannot be reached (%s); not writing through it: remove "
                         "the link or give another path",
                         dst, strerror(errno));
    return RWKV_OK;
}

/* The target does not exist, or is a regular file this process may replace. A read-only file is
 * refused even for root, who could replace it: its mode says the user wants it kept. A file with
 * several hard links is refused too: replacing it would leave the other names with the old file,
 * and writing into it in place could not be atomic. */
static int check_target(rwkv_output *out, char *err, size_t err_len) {
    const char *name = out->name;
    out->exists = 0;
    if (stat(out->target, &out->existing) != 0) {
        if (errno == ENOENT) return RWKV_OK;
        return rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot check the destination: %s", name, strerror(errno));
    }
    out->exists = 1;
    const struct stat *st = &out->existing;
    if (!S_ISREG(st->st_mode))
        return rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: the destination is a %s, not a regular file; give a file path",
                         name, rwkv_file_kind(st->st_mode));
    if ((st->st_mode & 0222) == 0 || access(out->target, W_OK) != 0)
        return rwkv_fail(err, err_len, RWKV_ERR_IO,
                         "%s: the destination is read-only (mode %04o); make it writable or remove it first", name,
                         (unsigned)(st->st_mode & 07777));
    if (st->st_nlink > 1)
        return rwkv_fail(err, err_len, RWKV_ERR_IO,
                         "%s: the destination has %lu hard links; replacing it would leave the other names with the "
                         "old file: remove it first or give another path",
                         name, (unsigned long)st->st_nlink);
    return RWKV_OK;
}

/* ---- the file being written ----------------------------------------------------------------- */

static char *parent_directory(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* `target`.tmp-XXXXXXXX with a suffix no other writer picks at the same time. */
static void temp_name(char *buf, size_t n, const char *target) {
    static rwkv_atomic_int counter;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    const unsigned suffix = (unsigned)now.tv_nsec ^ ((unsigned)getpid() << 12) ^
                            ((unsigned)rwkv_atomic_fetch_add(&counter, 1) * 2654435761u);
    snprintf(buf, n, "%s.tmp-%08x", target, suffix);
}

/* Gives an unnamed file a name: through its descriptor where the process may (AT_EMPTY_PATH needs
 * CAP_DAC_READ_SEARCH), else through /proc, which some sandboxes do not allow across. */
static int link_unnamed(int fd, const char *name) {
#ifdef AT_EMPTY_PATH
    if (linkat(fd, "", AT_FDCWD, name, AT_EMPTY_PATH) == 0) return 0;
#endif
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, link, AT_FDCWD, name, AT_SYMLINK_FOLLOW);
}

/* Links `fd` beside the target under a fresh temporary name, returned in a malloc'd *temp; 0 or an
 * errno. */
static int name_file(int fd, const char *target, char **temp) {
    size_t n = strlen(target) + 32;
    *temp = malloc(n);
    if (!*temp) return ENOMEM;
    for (int attempt = 0; attempt < NAME_ATTEMPTS; attempt++) {
        temp_name(*temp, n, target);
        if (link_unnamed(fd, *temp) == 0) return 0;
        if (errno != EEXIST) break;
    }
    int error = errno;
    free(*temp);
    *temp = NULL;
    return error;
}

/* An O_TMPFILE file in the target's directory, or -1 where the system or the file system has none,
 * or where such a file cannot be named afterwards: an empty one is tried first, its name present
 * for the moment between link and unlink. */
static int open_unnamed(const char *directory, const char *target) {
#ifdef O_TMPFILE
    int probe = open(directory, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
    if (probe < 0) return -1;
    char *name = NULL;
    int error = name_file(probe, target, &name);
    close(probe);
    if (error) return -1;
    unlink(name);
    free(name);
    return open(directory, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
#else
    (void)directory;
    (void)target;
    return -1;
#endif
}

/* A new file under a temporary name beside the target (mode 0666 less the umask, as open() gives). */
static int open_named(rwkv_output *out) {
    size_t n = strlen(out->target) + 32;
    out->temp = malloc(n);
    if (!out->temp) return -1;
    for (int attempt = 0; attempt < NAME_ATTEMPTS; attempt++) {
        temp_name(out->temp, n, out->target);
        int fd = open(out->temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 || errno != EEXIST) return fd;
    }
    return -1;
}

int rwkv_output_open(rwkv_output *out, const char *dst, char *err, size_t err_len) {
    memset(out, 0, sizeof *out);
    out->fd = -1;
    out->name = strdup(dst);
    if (!out->name) return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", dst);
    int status = resolve_target(out, dst, err, err_len);
    if (status == RWKV_OK) status = check_target(out, err, err_len);
    char *directory = status == RWKV_OK ? parent_directory(out->target) : NULL;
    out->buf = malloc(OUTPUT_BUFFER_BYTES);
    if (status == RWKV_OK && (!directory || !out->buf))
        status = rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", dst);
    if (status == RWKV_OK) {
        out->fd = open_unnamed(directory, out->target);
        if (out->fd < 0) out->fd = open_named(out);
        if (out->fd < 0)
            status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot create a file in %s: %s", dst, directory,
                               strerror(errno));
    }
    /* A replaced file keeps its permissions, as an editor's save does. */
    if (status == RWKV_OK && out->exists) fchmod(out->fd, out->existing.st_mode & 0777);
    free(directory);
    if (status != RWKV_OK) rwkv_output_abort(out);
    return status;
}

/* ---- writing -------------------------------------------------------------------------------- */

static void write_all(rwkv_output *out, const uint8_t *p, size_t n) {
    while (n > 0 && !out->write_errno) {
        ssize_t k = write(out->fd, p, n);
        if (k < 0 && errno == EINTR) continue;
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

/* ---- finishing ------------------------------------------------------------------------------ */

/* The rename is durable only once the directory is synced; a failure here loses nothing. */
static void sync_directory(const char *target) {
    char *directory = parent_directory(target);
    int fd = directory ? open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(directory);
}

int rwkv_output_commit(rwkv_output *out, char *err, size_t err_len) {
    const char *name = out->name;
    int status = RWKV_OK;
    flush_buffer(out);
    if (out->write_errno)
        status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: write failed: %s", name, strerror(out->write_errno));
    else if (fsync(out->fd) != 0)
        status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: write failed: %s", name, strerror(errno));
    /* The destination may have changed while the file was written. */
    if (status == RWKV_OK) status = check_target(out, err, err_len);
    if (status == RWKV_OK && !out->temp) {
        int error = name_file(out->fd, out->target, &out->temp);
        if (error)
            status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot name the new file: %s", name, strerror(error));
    }
    if (status == RWKV_OK && rename(out->temp, out->target) != 0)
        status = rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot move the new file into place: %s", name,
                           strerror(errno));
    if (status != RWKV_OK) {
        rwkv_output_abort(out);
        return status;
    }
    sync_directory(out->target);
    close(out->fd);
    output_free(out);
    return RWKV_OK;
}

void rwkv_output_abort(rwkv_output *out) {
    if (out->temp && out->fd >= 0) unlink(out->temp);
    if (out->fd >= 0) close(out->fd);
    out->fd = -1;
    output_free(out);
}
