"""Random RWKV checkpoints shaped like BlinkDL's released models, for tests.

``make_checkpoint`` returns a dict with the exact key names, key order and tensor shapes of the
released ``.pth`` files of each architecture, filled with random values in the ranges trained
models have, so that a float32 evaluation over a few dozen tokens gives finite logits of moderate
size. Values are rounded to bfloat16 precision (releases are stored as bf16), so saving them as
bf16 and loading them back is exact.
"""

from __future__ import annotations

import numpy as np

ARCHES = ("v4", "v5.1", "v5.2", "v6", "v7")
HEAD_SIZE = 64  # the released models' (the default)

# Default FFN width per architecture, as a multiple of n_embed.
DEFAULT_FFN_MULT = {"v4": 4.0, "v5.1": 4.0, "v5.2": 3.5, "v6": 3.5, "v7": 4.0}

# Low-rank widths of v6 (the same in every released size).
V6_MIX_LORA = 32
V6_DECAY_LORA = 64


def round_to_bf16(array) -> np.ndarray:
    """float32 array whose values are rounded (to nearest, ties to even) to bfloat16 precision."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    bits = a.view(np.uint32).astype(np.uint64)
    lsb = (bits >> 16) & 1  # ties go to the even bf16 value
    rounded = ((bits + 0x7FFF + lsb) & 0xFFFF0000).astype(np.uint32)
    return rounded.view(np.float32).reshape(a.shape)


def ffn_width(arch: str, n_embed: int, ffn_mult: float | None = None) -> int:
    """FFN hidden size; 3.5x widths are rounded down to a multiple of 32 as in the releases."""
    mult = DEFAULT_FFN_MULT[arch] if ffn_mult is None else ffn_mult
    return int(n_embed * mult) // 32 * 32


def v7_lora_dims(n_embed: int) -> dict[str, int]:
    """Low-rank widths (decay w, in-context rate a, value residual v, gate g) for a v7 model.

    Follows how the releases scale them with the width (64/64/32/128 at n_embed 768), with a
    floor of 32, so small test models stay cheap.
    """

    def scaled(factor: float, power: float) -> int:
        return max(32, int(round(factor * n_embed**power / 32)) * 32)

    return {"w": scaled(1.8, 0.5), "a": scaled(1.8, 0.5), "v": scaled(1.3, 0.5), "g": scaled(0.6, 0.8)}


class _Draw:
    """Random tensors in the ranges of trained weights (float32 before bf16 rounding)."""

    def __init__(self, seed: int, n_embed: int, n_layer: int, head_size: int = HEAD_SIZE):
        self.rng = np.random.default_rng(seed)
        self.C = n_embed
        self.n_layer = n_layer
        self.S = head_size
        self.H = n_embed // head_size

    def normal(self, shape, std=1.0, mean=0.0):
        return mean + std * self.rng.standard_normal(shape)

    def linear(self, n_out, n_in, gain=1.0):
        # PyTorch Linear weight (out, in); std 1/sqrt(in) keeps activations O(1).
        return self.normal((n_out, n_in), gain / np.sqrt(n_in))

    def ln_weight(self, n=None):
        return self.normal(n or self.C, 0.1, 1.0)

    def ln_bias(self, n=None):
        return self.normal(n or self.C, 0.05)

    def mix(self, layer, power=1.0, offset=0.0):
        """A token-shift mix in [0, 1], (1, 1, C), smooth over channels like the training init."""
        ratio = 1.0 - layer / self.n_layer  # 1 at layer 0, towards 0 at the top
        ramp = np.arange(self.C) / self.C
        values = ramp ** (power * ratio) + offset * (layer / max(1, self.n_layer - 1))
        return np.clip(values + self.normal(self.C, 0.1), 0.0, 1.0).reshape(1, 1, self.C)

    def decay_speed(self, n, low, high, layer):
        """Values rising from `low` to `high` over n channels (or heads), with noise."""
        ratio = layer / max(1, self.n_layer - 1)
        ramp = np.arange(n) / max(1, n - 1)
        return low + (high - low) * ramp ** (0.7 + 1.3 * ratio) + self.normal(n, 0.1)


def _block_norms(d: _Draw, ck: dict, i: int) -> None:
    p = f"blocks.{i}."
    ck[p + "ln1.weight"] = d.ln_weight()
    ck[p + "ln1.bias"] = d.ln_bias()
    ck[p + "ln2.weight"] = d.ln_weight()
    ck[p + "ln2.bias"] = d.ln_bias()
    if i == 0:  # the embedding's layer norm lives in block 0, after ln1/ln2 as in the releases
        ck[p + "ln0.weight"] = d.ln_weight()
        ck[p + "ln0.bias"] = d.ln_bias()


def _att_v4(d: _Draw, ck: dict, i: int) -> None:
    C, p = d.C, f"blocks.{i}.att."
    ck[p + "time_decay"] = d.decay_speed(C, -5.0, 3.0, i)  # w = -exp(.) in [-20, -0.007]
    ck[p + "time_first"] = np.log(0.3) + 0.5 * ((np.arange(C) + 1) % 3 - 1) + d.normal(C, 0.1)
    ck[p + "time_mix_k"] = d.mix(i)
    ck[p + "time_mix_v"] = d.mix(i, offset=0.3)
    ck[p + "time_mix_r"] = d.mix(i, power=0.5)
    for m in ("key", "value", "receptance", "output"):
        ck[p + m + ".weight"] = d.linear(C, C)


def _att_v5(d: _Draw, ck: dict, i: int, gated: bool) -> None:
    C, p = d.C, f"blocks.{i}.att."
    H, S = d.H, d.S
    ck[p + "time_mix_k"] = d.mix(i)
    ck[p + "time_mix_v"] = d.mix(i, offset=0.3)
    ck[p + "time_mix_r"] = d.mix(i, power=0.5)
    if gated:  # v5.2: gate, decay and bonus per channel
        ck[p + "time_mix_g"] = d.mix(i, power=0.5)
        ck[p + "time_decay"] = d.decay_speed(C, -6.0, -1.0, i).reshape(H, S)
        bonus = (1 - np.arange(C) / (C - 1)) * (i / max(1, d.n_layer - 1)) + 0.1 * ((np.arange(C) + 1) % 3 - 1)
        ck[p + "time_faaaa"] = (bonus + d.normal(C, 0.05)).reshape(H, S)
    else:  # v5.1 (the official "5.0"): one decay and one bonus per head
        ck[p + "time_decay"] = d.decay_speed(H, -6.0, -1.0, i)
        ck[p + "time_first"] = d.normal(H, 0.3, -1.0)
    for m in ("receptance", "key", "value", "output"):
        ck[p + m + ".weight"] = d.linear(C, C)
    if gated:
        ck[p + "gate.weight"] = d.linear(C, C)
    ck[p + "ln_x.weight"] = d.ln_weight()
    ck[p + "ln_x.bias"] = d.ln_bias()


def _att_v6(d: _Draw, ck: dict, i: int) -> None:
    C, p = d.C, f"blocks.{i}.att."
    H, S = d.H, d.S
    ck[p + "time_maa_x"] = d.mix(i)
    ck[p + "time_maa_w"] = d.mix(i)
    ck[p + "time_maa_k"] = d.mix(i)
    ck[p + "time_maa_v"] = d.mix(i, offset=0.3)
    ck[p + "time_maa_r"] = d.mix(i, power=0.5)
    ck[p + "time_maa_g"] = d.mix(i, power=0.5)
    # Data-dependent mixes: tanh(x @ w1) (5*32) then one (32, C) map per target, shifting the
    # mixes by a few hundredths.
    ck[p + "time_maa_w1"] = d.normal((C, 5 * V6_MIX_LORA), 0.5 / np.sqrt(C))
    ck[p + "time_maa_w2"] = d.normal((5, V6_MIX_LORA, C), 0.1 / np.sqrt(V6_MIX_LORA))
    ck[p + "time_decay"] = d.decay_speed(C, -6.0, -1.0, i).reshape(1, 1, C)
    ck[p + "time_decay_w1"] = d.normal((C, V6_DECAY_LORA), 0.5 / np.sqrt(C))
    ck[p + "time_decay_w2"] = d.normal((V6_DECAY_LORA, C), 0.5 / np.sqrt(V6_DECAY_LORA))
    bonus = (1 - np.arange(C) / (C - 1)) * (i / max(1, d.n_layer - 1)) + 0.1 * ((np.arange(C) + 1) % 3 - 1)
    ck[p + "time_faaaa"] = (bonus + d.normal(C, 0.05)).reshape(H, S)
    for m in ("receptance", "key", "value", "output", "gate"):
        ck[p + m + ".weight"] = d.linear(C, C)
    ck[p + "ln_x.weight"] = d.ln_weight()
    ck[p + "ln_x.bias"] = d.ln_bias()


def _att_v7(d: _Draw, ck: dict, i: int) -> None:
    C, p = d.C, f"blocks.{i}.att."
    H, S = d.H, d.S
    lora = v7_lora_dims(C)
    for m in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
        ck[p + m] = d.mix(i)
    # Decay w = exp(-e^-0.5 * sigmoid(w0 + tanh(x w1) w2)) lies in (0.545, 1) whatever the values.
    ck[p + "w0"] = d.decay_speed(C, -4.0, 2.0, i).reshape(1, 1, C)
    ck[p + "w1"] = d.normal((C, lora["w"]), 1.0 / np.sqrt(C))
    ck[p + "w2"] = d.normal((lora["w"], C), 0.5 / np.sqrt(lora["w"]))
    ck[p + "a0"] = d.normal((1, 1, C), 0.5)
    ck[p + "a1"] = d.normal((C, lora["a"]), 1.0 / np.sqrt(C))
    ck[p + "a2"] = d.normal((lora["a"], C), 0.5 / np.sqrt(lora["a"]))
    if i > 0:  # layer 0 provides v_first and has no value-residual mix
        ck[p + "v0"] = d.normal((1, 1, C), 0.3, 1.0)
        ck[p + "v1"] = d.normal((C, lora["v"]), 1.0 / np.sqrt(C))
        ck[p + "v2"] = d.normal((lora["v"], C), 0.5 / np.sqrt(lora["v"]))
    ck[p + "g1"] = d.normal((C, lora["g"]), 1.0 / np.sqrt(C))
    ck[p + "g2"] = d.normal((lora["g"], C), 2.0 / np.sqrt(lora["g"]))
    ck[p + "k_k"] = d.normal((1, 1, C), 0.1, 0.85)
    ck[p + "k_a"] = d.normal((1, 1, C), 0.1, 1.0)
    ck[p + "r_k"] = d.normal((H, S), 0.1)
    for m in ("receptance", "key", "value", "output"):
        ck[p + m + ".weight"] = d.linear(C, C)
    ck[p + "ln_x.weight"] = d.ln_weight()
    ck[p + "ln_x.bias"] = d.ln_bias()


def _ffn(d: _Draw, ck: dict, i: int, arch: str, n_ffn: int) -> None:
    C, p = d.C, f"blocks.{i}.ffn."
    if arch == "v7":
        ck[p + "x_k"] = d.mix(i)
        ck[p + "key.weight"] = d.linear(n_ffn, C)
        ck[p + "value.weight"] = d.linear(C, n_ffn)
        return
    mix_prefix = "time_maa_" if arch == "v6" else "time_mix_"
    ck[p + mix_prefix + "k"] = d.mix(i)
    ck[p + mix_prefix + "r"] = d.mix(i)
    ck[p + "key.weight"] = d.linear(n_ffn, C)
    ck[p + "receptance.weight"] = d.linear(C, C)
    ck[p + "value.weight"] = d.linear(C, n_ffn)


def make_checkpoint(
    arch: str,
    n_layer: int = 2,
    n_embed: int = 128,
    n_vocab: int = 256,
    ffn_mult: float | None = None,
    seed: int = 0,
    head_size: int = HEAD_SIZE,
) -> dict[str, np.ndarray]:
    """A random checkpoint of `arch` ("v4", "v5.1", "v5.2", "v6", "v7") as float32 bf16-exact arrays,
    with heads of `head_size` (n_embed / head_size of them; v4 has none)."""
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHES)}")
    if arch != "v4" and n_embed % head_size:
        raise ValueError(f"{arch} needs n_embed to be a multiple of the head size {head_size}")
    d = _Draw(seed, n_embed, n_layer, head_size)
    n_ffn = ffn_width(arch, n_embed, ffn_mult)

    ck: dict[str, np.ndarray] = {"emb.weight": d.normal((n_vocab, n_embed))}
    for i in range(n_layer):
        _block_norms(d, ck, i)
        if arch == "v4":
            _att_v4(d, ck, i)
        elif arch in ("v5.1", "v5.2"):
            _att_v5(d, ck, i, gated=arch == "v5.2")
        elif arch == "v6":
            _att_v6(d, ck, i)
        else:
            _att_v7(d, ck, i)
        _ffn(d, ck, i, arch, n_ffn)
    ck["ln_out.weight"] = d.ln_weight()
    ck["ln_out.bias"] = d.ln_bias()
    ck["head.weight"] = d.linear(n_vocab, n_embed, gain=3.0)  # logits with a spread of a few units
    return {name: round_to_bf16(value) for name, value in ck.items()}


def save_pth(checkpoint, path, dtype: str = "bf16") -> None:
    """Saves a checkpoint as a ``.pth`` of torch tensors (needs torch).

    ``dtype="bf16"`` stores bfloat16 like the releases (exact: the values are bf16-exact).
    ``dtype="fp32"`` holds the same values as float32; the official package then layer-norms the
    embedding in float32 instead of bf16, so its v4-v6 logits follow the exact math to ~1e-5
    instead of ~0.1 -- use it for tight comparisons against the official package.
    """
    import torch

    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    tensors = {
        name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).to(torch_dtype)
        for name, value in checkpoint.items()
    }
    torch.save(tensors, str(path))
