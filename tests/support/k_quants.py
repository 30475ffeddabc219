"""An independent numpy implementation of the K formats (Q4_K, Q5_K) as docs/FORMAT.md describes
them, for byte-exact checks of the engine's quantizer.

Every operation is done in np.float32, and sums add one term after another as the C loops do, so
the rounding is the same as ggml's reference quantizer (and the engine's), without fused
multiply-adds; each step works on all sub-blocks at once.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
SUPER = 256  # values per super-block
SUB = 32  # values per sub-block

# Per format: top level, and the trial inverse scales (top + rmin + rdelta * i) / (max - min),
# i = 0..steps.
SEARCH = {"Q4_K": (15, F32(-1.0), F32(0.1), 20), "Q5_K": (31, F32(-0.5), F32(0.1), 15)}
BLOCK_BYTES = {"Q4_K": 144, "Q5_K": 176}


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's rounding: add 1.5 * 2^23 in float32 and read the low mantissa bits (ties to even)."""
    shifted = (np.asarray(v, F32) + F32(12582912.0)).astype(F32)
    return (shifted.view(np.int32).astype(np.int64) & 0x007FFFFF) - 0x00400000


def half_bits(v) -> np.ndarray:
    return np.asarray(v, F32).astype(np.float16).view(np.uint16)


def half_value(bits) -> np.ndarray:
    return np.asarray(bits, np.uint16).view(np.float16).astype(F32)


def _running_sum(terms: np.ndarray) -> np.ndarray:
    """Sum over the last axis one term after another, in float32, as a C loop adds them (numpy's
    sum would add pairwise; its cumulative sum does not)."""
    return np.cumsum(terms, axis=-1, dtype=F32)[..., -1]


def _fit(x: np.ndarray, w: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-blocks x (S, 32) with weights w: (levels (S, 32), scale (S,), -min (S,))."""
    top, rmin, rdelta, steps = SEARCH[name]
    lo, hi = x.min(axis=1), x.max(axis=1)
    sum_w, sum_x = _running_sum(w), _running_sum(w * x)
    lo = np.where(lo > 0, F32(0), lo)
    flat, flat_min = hi == lo, lo
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(top) / (hi - lo)
        scale = F32(1) / iscale
        levels = np.clip(nearest_int(iscale[:, None] * (x - lo[:, None])), 0, top)
        diff = scale[:, None] * levels.astype(F32) + lo[:, None] - x
        best = _running_sum(w * (diff * diff))
        for step in range(steps + 1):
            # `lo` is the best fit's minimum so far, as in the C loop
            iscale = (rmin + rdelta * F32(step) + F32(top)) / (hi - lo)
            trial = np.clip(nearest_int(iscale[:, None] * (x - lo[:, None])), 0, top)
            wl = w * trial.astype(F32)
            sum_l, sum_l2, sum_xl = _running_sum(wl), _running_sum(wl * trial.astype(F32)), _running_sum(wl * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_min = np.where(positive, F32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            diff = this_scale[:, None] * trial.astype(F32) + this_min[:, None] - x
            error = _running_sum(w * (diff * diff))
            better = (det > 0) & (error < best)
            levels = np.where(better[:, None], trial, levels)
            best = np.where(better, error, best)
            scale = np.where(better, this_scale, scale)
            lo = np.where(better, this_min, lo)
    levels = np.where(flat[:, None], 0, levels)
    scale = np.where(flat, F32(0), scale).astype(F32)
    return levels, scale, (-np.where(flat, flat_min, lo)).astype(F32)


def unpack_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12 bytes per super-block (B, 12) -> 6-bit sc (B, 8) and m (B, 8)."""
    s = packed.astype(np.int64)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | (s[:, 0:4] >> 6) << 4], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | (s[:, 4:8] >> 6) << 4], axis=1)
    return sc, m


def pack_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    out = np.zeros((len(sc), 12), np.int64)
    out[:, 0:4] = sc[:, 0:4] | (sc[:, 4:8] >> 4) << 6
    out[:, 4:8] = m[:, 0:4] | (m[:, 4:8] >> 4) << 6
    out[:, 8:12] = (sc[:, 4:8] & 0xF) | (m[:, 4:8] & 0xF) << 4
    return out.astype(np.uint8)


def quantize(name: str, x) -> bytes:
    """Encodes float32 values (a multiple of 256, row-major) in the K format `name`."""
    top = SEARCH[name][0]
    x = np.ascontiguousarray(x, F32).reshape(-1, SUPER)
    n = len(x)
    subs = x.reshape(-1, SUB)
    weights = np.sqrt(_running_sum(subs * subs) / F32(SUB))[:, None] + np.abs(subs)
    levels, scales, mins = _fit(subs, weights, name)
    levels, scales, mins = levels.reshape(n, 8, SUB), scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale, max_min = np.zeros(n, F32), np.zeros(n, F32)
    for j in range(8):  # strict comparisons from +0, as the C loop
        max_scale = np.where(scales[:, j] > max_scale, scales[:, j], max_scale)
        max_min = np.where(mins[:, j] > max_min, mins[:, j], max_min)
    with np.errstate(divide="ignore"):
        to_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        to_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    sc = np.minimum(nearest_int(to_scale[:, None] * scales) & 0xFF, 63)  # through uint8_t, then capped
    m = np.minimum(nearest_int(to_min[:, None] * mins) & 0xFF, 63)
    d, dmin = half_bits(max_scale / F32(63)), half_bits(max_min / F32(63))
    # Requantized against the stored scales, except where d * sc is zero.
    step = half_value(d)[:, None] * sc.astype(F32)
    offset = half_value(dmin)[:, None] * m.astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        again = nearest_int((x.reshape(n, 8, SUB) + offset[:, :, None]) / step[:, :, None])
    levels = np.where((step != 0)[:, :, None], np.clip(again, 0, top), levels).reshape(n, SUPER)
    head = [d.astype("<u2").view(np.uint8).reshape(n, 2), dmin.astype("<u2").view(np.uint8).reshape(n, 2),
            pack_scales(sc, m)]
    low = levels & 0xF
    pairs = low.reshape(n, 4, 2, SUB)  # chunk c holds sub-blocks 2c (low nibbles) and 2c + 1 (high)
    qs = (pairs[:, :, 0] | pairs[:, :, 1] << 4).reshape(n, 128)
    if name == "Q4_K":
        return np.concatenate(head + [qs.astype(np.uint8)], axis=1).tobytes()
    fifth = (levels >> 4).reshape(n, 8, SUB)  # bit j of qh[i]: fifth bit of element i of sub-block j
    qh = np.zeros((n, SUB), np.int64)
    for j in range(8):
        qh |= fifth[:, j] << j
    return np.concatenate(head + [qh.astype(np.uint8), qs.astype(np.uint8)], axis=1).tobytes()


def decode(name: str, data) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Super-blocks -> (values float32 (B, 256), levels (B, 256), d*sc (B, 8), dmin*m (B, 8),
    sc (B, 8)). Values are d*sc * level - dmin*m with both products rounded to float32 first."""
    raw = np.frombuffer(bytes(data), np.uint8).reshape(-1, BLOCK_BYTES[name])
    n = len(raw)
    d = half_value(raw[:, 0:2].copy().view("<u2")[:, 0])
    dmin = half_value(raw[:, 2:4].copy().view("<u2")[:, 0])
    sc, m = unpack_scales(raw[:, 4:16])
    qs = raw[:, -128:].astype(np.int64).reshape(n, 4, SUB)
    levels = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(n, 8, SUB)
    if name == "Q5_K":
        qh = raw[:, 16:48].astype(np.int64)
        levels = levels | ((qh[:, None, :] >> np.arange(8)[None, :, None]) & 1) << 4
    step = d[:, None] * sc.astype(F32)
    offset = dmin[:, None] * m.astype(F32)
    values = step[:, :, None] * levels.astype(F32) - offset[:, :, None]
    return values.reshape(n, SUPER), levels.reshape(n, SUPER), step, offset, sc
