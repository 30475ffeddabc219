#include "file.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "platform.h"
#include "rwkv.h"
#include "types.h"

int rwkv_fail(char *err, size_t err_len, int status, const char *fmt, ...) {
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return status;
}

static int32_t read_i32(const uint8_t *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

/* Strict UTF-8: no overlongs, no surrogates, nothing above U+10FFFF, no NUL. */
static int valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp;
        if (c == 0) return 0;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return 0;
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += len;
    }
    return 1;
}

static int compare_record_names(const void *a, const void *b) {
    return strcmp((*(const rwkv_record *const *)a)->name, (*(const rwkv_record *const *)b)->name);
}

/* Sorted, so that a file of many small records is checked in n log n, not n^2. */
static int check_unique_names(const rwkv_file *f, char *err, size_t err_len) {
    if (f->n_records < 2) return RWKV_OK;
    const rwkv_record **sorted = malloc((size_t)f->n_records * sizeof *sorted);
    if (!sorted) return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", f->path);
    for (int i = 0; i < f->n_records; i++) sorted[i] = &f->records[i];
    qsort(sorted, (size_t)f->n_records, sizeof *sorted, compare_record_names);
    int status = RWKV_OK;
    for (int i = 1; i < f->n_records && status == RWKV_OK; i++)
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0)
            status = rwkv_fail(err, err_len, RWKV_ERR_FORMAT, "%s: tensor '%s' appears twice", f->path,
                               sorted[i]->name);
    free(sorted);
    return status;
}

static int parse_records(rwkv_file *f, char *err, size_t err_len) {
    const char *path = f->path;
    size_t pos = 24;
    int cap = 0;
    while (pos < f->size) {
        int index = f->n_records;
        if (f->size - pos < 12)
            return rwkv_fail(err, err_len, RWKV_ERR_FORMAT,
                             "%s: truncated record header for tensor #%d at offset %zu", path, index, pos);
        int32_t n_dims = read_i32(f->map + pos), name_len = read_i32(f->map + pos + 4),
                type = read_i32(f->map + pos + 8);
        pos += 12;
        if (n_dims < 1 || n_dims > 3)
            return rwkv_fail(err, err_len, RWKV_ERR_FORMAT,
                             "%s: tensor #%d has %d dimensions; expected 1 to 3", path, index, n_dims);
        if (name_len < 1 || name_len > RWKV_MAX_NAME)
            return rwkv_fail(err, err_len, RWKV_ERR_FORMAT,
                             "%s: tensor #%d has a name length of %d bytes; expected 1 to %d", path, index,
                             name_len, RWKV_MAX_NAME);
        const rwkv_type_traits *traits = rwkv_traits(type);
        if (!traits) {
            return rwkv_fail(err, err_len, RWKV_ERR_UNSUPPORTED,
                             "%s: tensor #%d has unknown type id %d (known: 0 FP32, 1 FP16, 2 Q4_0, 3 Q4_1, "
                             "7 Q5_0, 8 Q5_1, 9 Q8_0, 13 Q4_K, 14 Q5_K)",
                             path, index, type);
        }
        if ((size_t)n_dims * 4 + (size_t)name_len > f->size - pos)
            return rwkv_fail(err, err_len, RWKV_ERR_FORMAT, "%s: truncated record for tensor #%d", path, index);
        rwkv_record r = {0};
        r.type = type;
        r.n_dims = n_dims;
        r.ne[0] = r.ne[1] = r.ne[2] = 1;
        r.n_elements = 1;
        for (int d = 0; d < n_dims; d++) {
            int32_t size = read_i32(f->map + pos + 4 * (size_t)d);
            if (size < 1)
                return rwkv_fail(err, err_len, RWKV_ERR_FORMAT, "%s: tensor #%d has size %d in dimension %d",
                                 path, index, size, d);
            r.ne[d] = size;
            /* checked before multiplying, so that the product can never wrap */
            if (r.n_elements > RWKV_MAX_ELEMENTS / size)
                return rwkv_fail(err, err_len, RWKV_ERR_FORMAT,
                                 "%s: tensor #%d is implausibly large (more than 2^40 elements)", path, index);
            r.n_elements *= size;
        }
        pos += (size_t)n_dims * 4;
        const uint8_t *name = f->map + pos;
        if (!valid_utf8(name, (size_t)name_len))
            return rwkv_fail(err, err_len, RWKV_ERR_FORMAT, "%s: the name of tensor #%d is not valid UTF-8",
                             path, index);
        pos += (size_t)name_len;
        r.name = malloc((size_t)name_len + 1);
        if (!r.name) return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", path);
        memcpy(r.name, name, (size_t)name_len);
        r.name[name_len] = 0;
        if (f->n_records == cap) {
            cap = cap ? cap * 2 : 256;
            rwkv_record *grown = realloc(f->records, (size_t)cap * sizeof *grown);
            if (!grown) {
                free(r.name);
                return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory", path);
            }
            f->records = grown;
        }
        f->records[f->n_records++] = r; /* owned by the file from here on */
        if (traits->quantized && f->header.version == 100)
            return rwkv_fail(err, err_len, RWKV_ERR_UNSUPPORTED,
                             "%s: tensor '%s' is %s in a version 100 file, whose quantized blocks use an "
                             "older layout; re-quantize it from the FP16 or FP32 model",
                             path, r.name, traits->name);
        if (r.ne[0] % traits->block_len != 0)
            return rwkv_fail(err, err_len, RWKV_ERR_FORMAT,
                             "%s: tensor '%s' is %s but its innermost size %lld is not a multiple of %d%s", path,
                             r.name, traits->name, (long long)r.ne[0], traits->block_len,
                             traits->block_len == RWKV_QK_K
                                 ? " (rwkv.cpp's quantizer writes such tensors with super-blocks running across "
                                   "rows, which no reader can use; quantize the FP16/FP32 model to a 32-value format)"
                                 : "");
        /* at most 2^40 elements of at most 4 bytes each: no overflow in 64 bits, checked for 32 */
        if (rwkv_mul_overflow(rwkv_row_bytes(type, r.ne[0]), (size_t)r.ne[1], &r.nbytes) ||
            rwkv_mul_overflow(r.nbytes, (size_t)r.ne[2], &r.nbytes))
            return rwkv_fail(err, err_len, RWKV_ERR_FORMAT, "%s: tensor '%s' is too large for this machine", path,
                             r.name);
        if (r.nbytes > f->size - pos)
            return rwkv_fail(err, err_len, RWKV_ERR_FORMAT,
                             "%s: tensor '%s' needs %zu bytes of data but only %zu remain (truncated file?)",
                             path, r.name, r.nbytes, f->size - pos);
        r.offset = pos;
        r.data = f->map + pos;
        f->records[f->n_records - 1] = r;
        pos += r.nbytes;
    }
    return check_unique_names(f, err, err_len);
}

/* ---- opening -------------------------------------------------------------------------------- */

const char *rwkv_file_kind(mode_t mode) {
    if (S_ISREG(mode)) return "regular file";
    if (S_ISDIR(mode)) return "directory";
    if (S_ISFIFO(mode)) return "FIFO";
    if (S_ISCHR(mode)) return "character device";
#ifndef _WIN32 /* Windows has neither */
    if (S_ISBLK(mode)) return "block device";
    if (S_ISSOCK(mode)) return "socket";
#endif
    return "special file";
}

static int open_regular(rwkv_file *f, char *err, size_t err_len) {
    f->fd = rwkv_open_read(f->path);
    if (f->fd < 0) return rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot open: %s", f->path, strerror(errno));
    struct stat st;
    if (fstat(f->fd, &st) != 0)
        return rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot stat: %s", f->path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: a %s, not a regular file; give a model file", f->path,
                         rwkv_file_kind(st.st_mode));
    f->size = (size_t)st.st_size;
    f->mtime = rwkv_stat_mtime(&st);
    if (f->size < 24)
        return rwkv_fail(err, err_len, RWKV_ERR_FORMAT,
                         "%s: too short for a model file (%zu bytes; the header alone is 24)", f->path, f->size);
    return RWKV_OK;
}

static int map_file(rwkv_file *f, char *err, size_t err_len) {
    const void *map = rwkv_map_read(f->fd, f->size);
    if (!map) return rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot map: %s", f->path, strerror(errno));
    f->map = map;
    return RWKV_OK;
}

/* The whole file in memory: later changes to the file cannot reach the model. */
static int copy_file(rwkv_file *f, char *err, size_t err_len) {
    uint8_t *copy = malloc(f->size);
    if (!copy)
        return rwkv_fail(err, err_len, RWKV_ERR_ALLOC, "%s: out of memory for a copy of %zu bytes", f->path, f->size);
    f->map = copy;
    f->copied = 1;
    size_t done = 0;
    while (done < f->size) {
        rwkv_ssize n = rwkv_pread(f->fd, copy + done, f->size - done, done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: read failed: %s", f->path, strerror(errno));
        if (n == 0)
            return rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: the file shrank to %zu bytes while it was read", f->path,
                             done);
        done += (size_t)n;
    }
    return RWKV_OK;
}

static int parse_header(rwkv_file *f, char *err, size_t err_len) {
    const char *path = f->path;
    rwkv_header *h = &f->header;
    h->magic = read_i32(f->map);
    h->version = read_i32(f->map + 4);
    h->n_vocab = read_i32(f->map + 8);
    h->n_embed = read_i32(f->map + 12);
    h->n_layer = read_i32(f->map + 16);
    h->data_type = read_i32(f->map + 20);
    if (h->magic != RWKV_FILE_MAGIC)
        return rwkv_fail(err, err_len, RWKV_ERR_FORMAT,
                         "%s: not an rwkv.cpp model file (magic 0x%08x, expected 0x%08x)", path, (unsigned)h->magic,
                         RWKV_FILE_MAGIC);
    if (h->version != 100 && h->version != 101)
        return rwkv_fail(err, err_len, RWKV_ERR_UNSUPPORTED,
                         "%s: file version %d is not supported (expected 100 or 101)", path, h->version);
    if (h->n_vocab < 1 || h->n_embed < 1 || h->n_layer < 1)
        return rwkv_fail(err, err_len, RWKV_ERR_FORMAT,
                         "%s: header sizes must be positive (n_vocab %d, n_embed %d, n_layer %d)", path, h->n_vocab,
                         h->n_embed, h->n_layer);
    if (!rwkv_traits(h->data_type))
        return rwkv_fail(err, err_len, RWKV_ERR_UNSUPPORTED, "%s: header data type %d is not a known type id", path,
                         h->data_type);
    return RWKV_OK;
}

int rwkv_file_open(rwkv_file *f, const char *path, int copy, char *err, size_t err_len) {
    memset(f, 0, sizeof *f);
    f->path = path;
    int status = open_regular(f, err, err_len);
    if (status == RWKV_OK) status = copy ? copy_file(f, err, err_len) : map_file(f, err, err_len);
    if (status == RWKV_OK) status = parse_header(f, err, err_len);
    if (status == RWKV_OK) status = parse_records(f, err, err_len);
    if (status != RWKV_OK) rwkv_file_close(f);
    else if (f->copied) {
        close(f->fd); /* nothing is read from the file again */
        f->fd = -1;
    }
    return status;
}

int rwkv_file_check_unchanged(const rwkv_file *f, char *err, size_t err_len) {
    if (f->copied) return RWKV_OK;
    struct stat st;
    if (fstat(f->fd, &st) != 0)
        return rwkv_fail(err, err_len, RWKV_ERR_IO, "%s: cannot stat the model file: %s", f->path, strerror(errno));
    const struct timespec mtime = rwkv_stat_mtime(&st);
    if ((size_t)st.st_size == f->size && mtime.tv_sec == f->mtime.tv_sec && mtime.tv_nsec == f->mtime.tv_nsec)
        return RWKV_OK;
    return rwkv_fail(err, err_len, RWKV_ERR_IO,
                     "%s: the model file was %s after it was loaded (%zu bytes then, %lld now); load it again, or "
                     "load with mmap=False (--no-mmap) to keep a private copy",
                     f->path, (size_t)st.st_size < f->size ? "truncated" : "modified", f->size,
                     (long long)st.st_size);
}

void rwkv_file_close(rwkv_file *f) {
    for (int i = 0; i < f->n_records; i++) free(f->records[i].name);
    free(f->records);
    if (f->map && f->copied) free((void *)f->map);
    else if (f->map) rwkv_unmap(f->map, f->size);
    if (f->fd >= 0) close(f->fd);
    f->records = NULL;
    f->n_records = 0;
    f->map = NULL;
    f->copied = 0;
    f->fd = -1;
}

const rwkv_record *rwkv_file_find(const rwkv_file *f, const char *name) {
    for (int i = 0; i < f->n_records; i++)
        if (strcmp(f->records[i].name, name) == 0) return &f->records[i];
    return NULL;
}
