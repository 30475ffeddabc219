/* The versions of RWKV: one table of operations per version, each defined in its own file
 * (arch/v4.c, v5.c for v5.1 and v5.2, v6.c, v7.c), registered by the public enum in arch/arch.c.
 * The loader and the evaluation look the model's version up once, at load, and call through it;
 * nothing else knows which version it runs. A new version is one file defining its table and one
 * entry in arch/arch.c (plus its value in the public enum). */
#ifndef RWKV_ARCH_H
#define RWKV_ARCH_H

#include "../loader.h"

/* The channel-mixing block (arch/ffn.c) is shared; versions differ in its token shift only. */
typedef struct {
    const char *mix_k, *mix_r; /* the token-shift weights' names; mix_r NULL: no receptance gate */
    int lerp; /* mixed as xx * mix + prev * (1 - mix) (v4, v5), not xx + (prev - xx) * mix (v6 on) */
} rwkv_channel_mix_kind;

struct rwkv_arch_ops {
    const char *name; /* as rwkv_arch_name says it */
    /* Whether the file holds this version: whether it has the tensors the version introduced.
     * Versions are asked newest first, so an older version's detect may match newer files; the
     * first version has none and takes every file no later version claims. */
    int (*detect)(const rwkv_file *file);
    /* The attention tensor whose outermost size is the head count, as rwkv.cpp reads it (v5
     * "att.time_decay" (H, 1, 1) or (H, S, 1), v6 the same, v7 "att.r_k" (H, S)); the head size is
     * n_embed / H. NULL: no heads (v4). */
    const char *head_tensor;

    /* Time mixing beyond what every version has (rwkv_layer): att_size bytes of the version's own
     * struct per layer, zeroed, filled by load_att from layer `layer`'s tensors. */
    size_t att_size;
    int (*load_att)(rwkv_loader *ld, int layer, void *att);
    /* Floats of a layer's time-mixing state, and their initial values (NULL: zeros). */
    size_t (*att_state_floats)(const rwkv_model_info *info);
    void (*init_att_state)(const rwkv_model_info *info, float *state);
    /* x += att(ln1(x)) over the pass's rows in scratch, each segment's time-mixing state of the
     * layer updated. */
    void (*time_mix)(rwkv_model *m, const rwkv_layer *L, int layer, const rwkv_pass *pass);

    rwkv_channel_mix_kind channel_mix;

    /* Suffixes of 2-D tensors that quantization keeps in float, as rwkv.cpp does; NULL-terminated,
     * or NULL for none. */
    const char *const *float_tensors;
};

extern const rwkv_arch_ops rwkv_arch_v4, rwkv_arch_v5_1, rwkv_arch_v5_2, rwkv_arch_v6, rwkv_arch_v7;

/* The version of a model file (always one: v4 takes what no later version claims). */
rwkv_arch rwkv_arch_detect(const rwkv_file *file);
const rwkv_arch_ops *rwkv_arch_ops_of(rwkv_arch arch);

/* The channel-mixing block: its tensors (n_ffn comes from the first layer's key matrix), and
 * x += ffn(ln2(x)) with each segment's channel-mixing state (the previous token's normed x). */
int rwkv_load_channel_mix(rwkv_loader *ld, int layer, rwkv_channel_mix_weights *ffn);
void rwkv_channel_mix(rwkv_model *m, const rwkv_layer *L, const rwkv_pass *pass);

#endif
