/* platform.h on Windows: paths are UTF-8 (converted to the UTF-16 Windows takes), files are mapped
 * through CreateFileMapping, reads at an offset go through ReadFile with an OVERLAPPED offset. */
#include "platform.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <windows.h>

wchar_t *rwkv_utf16(const char *utf8) {
    int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, utf8, -1, NULL, 0);
    if (n <= 0) {
        errno = EINVAL;
        return NULL;
    }
    wchar_t *wide = malloc((size_t)n * sizeof *wide);
    if (!wide) {
        errno = ENOMEM;
        return NULL;
    }
    MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, utf8, -1, wide, n);
    return wide;
}

int rwkv_open_read(const char *path) {
    wchar_t *wide = rwkv_utf16(path);
    if (!wide) return -1;
    int fd = _wopen(wide, _O_RDONLY | _O_BINARY | _O_NOINHERIT);
    free(wide);
    return fd;
}

/* The mapping object can be closed at once: the view keeps the mapping alive until unmapped. */
const void *rwkv_map_read(int fd, size_t size) {
    HANDLE file = (HANDLE)_get_osfhandle(fd);
    HANDLE mapping = CreateFileMappingW(file, NULL, PAGE_READONLY, 0, 0, NULL);
    if (!mapping) {
        errno = EACCES;
        return NULL;
    }
    const void *view = MapViewOfFile(mapping, FILE_MAP_READ, 0, 0, size);
    CloseHandle(mapping);
    if (!view) errno = ENOMEM;
    return view;
}

void rwkv_unmap(const void *map, size_t size) {
    (void)size;
    UnmapViewOfFile(map);
}

rwkv_ssize rwkv_pread(int fd, void *buf, size_t n, uint64_t offset) {
    OVERLAPPED at = {0};
    at.Offset = (DWORD)offset;
    at.OffsetHigh = (DWORD)(offset >> 32);
    DWORD got = 0;
    const DWORD want = n > 0x40000000u ? 0x40000000u : (DWORD)n; /* ReadFile takes 32-bit counts */
    if (!ReadFile((HANDLE)_get_osfhandle(fd), buf, want, &got, &at)) {
        if (GetLastError() == ERROR_HANDLE_EOF) return 0;
        errno = EIO;
        return -1;
    }
    return (rwkv_ssize)got;
}

struct timespec rwkv_stat_mtime(const struct stat *st) {
    struct timespec t = {st->st_mtime, 0};
    return t;
}

int rwkv_cpu_count(void) {
    DWORD n = GetActiveProcessorCount(ALL_PROCESSOR_GROUPS);
    return n > 0 ? (int)n : 1;
}
