/* Reading the rwkv.cpp `.bin` format: header, tensor records, mmap. Every field is checked before
 * it is used, so a damaged file gives an error message, never an out-of-bounds read. */
#ifndef RWKV_FILE_H
#define RWKV_FILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "compiler.h"

#define RWKV_FILE_MAGIC 0x67676d66
#define RWKV_MAX_NAME 1024
/* More elements than any model has (a 1T-parameter tensor), and few enough that every size
 * computed from them fits in 64 bits. */
#define RWKV_MAX_ELEMENTS ((int64_t)1 << 40)

typedef struct {
    char *name;         /* NUL-terminated copy of the UTF-8 name */
    int type;           /* type id */
    int n_dims;
    int64_t ne[3];      /* sizes, innermost first; unused dims are 1 */
    int64_t n_elements;
    size_t offset;      /* of the data, from the start of the file */
    size_t nbytes;
    const void *data;   /* into the mapping */
} rwkv_record;

typedef struct {
    int32_t magic, version, n_vocab, n_embed, n_layer, data_type;
} rwkv_header;

typedef struct {
    const char *path;
    int fd;
    const uint8_t *map; /* the file's bytes: mapped, or read into memory (`copied`) */
    int copied;
    size_t size;
    struct timespec mtime; /* at load, to notice a file changed under the mapping */
    rwkv_header header;
    rwkv_record *records;
    int n_records;
} rwkv_file;

/* Maps (or, with `copy`, reads into memory) and parses the whole file. Only regular files are
 * opened, without blocking on a FIFO. On failure returns an rwkv_status and writes `err`. */
int rwkv_file_open(rwkv_file *file, const char *path, int copy, char *err, size_t err_len);
/* RWKV_ERR_IO when a mapped file's size or modification time is no longer what it was at load:
 * truncated, its pages would raise SIGBUS; rewritten, they would hold other numbers. */
int rwkv_file_check_unchanged(const rwkv_file *file, char *err, size_t err_len);
void rwkv_file_close(rwkv_file *file);
const rwkv_record *rwkv_file_find(const rwkv_file *file, const char *name);

/* "directory", "FIFO", "character device"...: what a file that is not regular is, for messages. */
const char *rwkv_file_kind(mode_t mode);

/* snprintf into err, prefixed with nothing; returns `status`. */
int rwkv_fail(char *err, size_t err_len, int status, const char *fmt, ...) RWKV_PRINTF(4, 5);

#endif
