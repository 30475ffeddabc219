/* The table of versions, by the public enum. */
#include "arch.h"

static const rwkv_arch_ops *const versions[] = {
    [RWKV_ARCH_V4] = &rwkv_arch_v4,
    [RWKV_ARCH_V5_1] = &rwkv_arch_v5_1,
    [RWKV_ARCH_V5_2] = &rwkv_arch_v5_2,
    [RWKV_ARCH_V6] = &rwkv_arch_v6,
    [RWKV_ARCH_V7] = &rwkv_arch_v7,
};
#define N_VERSIONS ((int)(sizeof versions / sizeof versions[0]))

/* Newest first: a later version keeps most of the tensor names of the ones before it. */
rwkv_arch rwkv_arch_detect(const rwkv_file *file) {
    int arch = N_VERSIONS - 1;
    while (versions[arch]->detect && !versions[arch]->detect(file)) arch--;
    return (rwkv_arch)arch;
}

const rwkv_arch_ops *rwkv_arch_ops_of(rwkv_arch arch) { return versions[arch]; }

const char *rwkv_arch_name(rwkv_arch arch) {
    return (int)arch >= 0 && (int)arch < N_VERSIONS ? versions[arch]->name : "unknown";
}
