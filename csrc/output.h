/* Writing an output file so that its destination is either left as it was or replaced whole, and
 * nothing else is left behind.
 *
 * The destination must be a regular, writable file with one name, or not exist yet; a symbolic
 * link is written through, the new file going beside its target. On Linux the data goes into an
 * unnamed file (O_TMPFILE) that is given a name only once complete, so that even a process killed
 * with SIGKILL leaves nothing; elsewhere, and on file systems that refuse O_TMPFILE, into a
 * temporary `DST.tmp-XXXXXX` beside the destination, deleted on every error path. */
#ifndef RWKV_OUTPUT_H
#define RWKV_OUTPUT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

typedef struct {
    char *name;        /* the destination as given, for messages */
    char *target;      /* the destination with symbolic links resolved: where the file will be */
    char *temp;        /* the temporary name, or NULL while writing into an unnamed file */
    int fd;
    int exists;        /* the target exists; `existing` is its stat */
    struct stat existing;
    uint8_t *buf;      /* write buffer */
    size_t used;
    int write_errno;   /* the first write's failure, reported by rwkv_output_commit */
} rwkv_output;

/* Checks the destination and creates the file to write. On failure returns an rwkv_status and
 * writes `err`; nothing is created then. */
int rwkv_output_open(rwkv_output *out, const char *dst, char *err, size_t err_len);

/* Buffered write; a failure is remembered and reported by rwkv_output_commit. Returns 0 once a
 * write has failed, so that callers can stop early. */
int rwkv_output_write(rwkv_output *out, const void *data, size_t n);

/* Flushes, syncs and moves the file over the target; on failure removes it. Either way frees `out`. */
int rwkv_output_commit(rwkv_output *out, char *err, size_t err_len);

/* Discards the file; the destination is left as it was. */
void rwkv_output_abort(rwkv_output *out);

#endif
