"""The K formats, Q4_K and Q5_K (rwkv.cpp's type ids 13 and 14; docs/FORMAT.md): rounding, products,
model files and whole models.

The expected bytes come from two sources independent of the engine: rows that ggml's reference
quantizer encoded (tests/data/ggml_k_quants, with its README), and the tests' own numpy
implementation of FORMAT.md's rounding (tests/support/k_quants.py), which must reproduce those
rows too. Files quantized to K formats must be byte-identical to what rwkv.cpp's quantizer writes,
which is ggml's rounding applied to each 2-D tensor as one flat array: the same thing, row by row,
when rows are a multiple of 256, and a file no reader can use otherwise, so such tensors are
refused.
"""

from __future__ import annotations

import functools
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import k_quants as kq
from support.checkpoints import make_checkpoint
from support.reference import Reference
from rwkvcpp import Model, _core
from rwkvcpp import format as fmt
from rwkvcpp.quantization import quantize
from rwkvcpp.writer import write_model

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "data" / "ggml_k_quants" / "ggml_k_quants.npz"
F32 = np.float32
NAMES = ("Q4_K", "Q5_K")
TYPE_ID = {"Q4_K": fmt.Q4_K, "Q5_K": fmt.Q5_K}


def kernel_levels() -> list[str]:
    best, levels = _core.kernel_level(), []
    for name in ("generic", "avx2", "avx512", "neon"):
        try:
            _core.set_kernel_level(name)
        except _core.ArgumentError:
            continue
        levels.append(name)
    _core.set_kernel_level(best)
    return levels


LEVELS = kernel_levels()


@pytest.fixture
def level_guard():
    best = _core.kernel_level()
    yield
    _core.set_kernel_level(best)


def engine_quantize(name: str, x) -> bytes:
    x = np.ascontiguousarray(x, F32).reshape(-1)
    out = np.zeros(_core.row_size(TYPE_ID[name], x.size), np.uint8)
    _core.quantize_row(TYPE_ID[name], x, out)
    return out.tobytes()


def engine_decode(name: str, data: bytes) -> np.ndarray:
    n = len(data) // kq.BLOCK_BYTES[name] * kq.SUPER
    out = np.zeros(n, F32)
    _core.dequantize_row(TYPE_ID[name], np.frombuffer(data, np.uint8).copy(), out)
    return out


def varied_rows(rng, n_blocks: int) -> np.ndarray:
    """Super-blocks of several distributions, each at its own scale from 1e-8 to 1e4."""
    n = n_blocks * kq.SUPER
    kinds = [rng.standard_normal(n), rng.standard_t(2, n), rng.uniform(0, 1, n), -rng.uniform(0, 1, n),
             np.round(rng.standard_normal(n) * 4) / 4]
    pick = np.repeat(rng.integers(0, len(kinds), n_blocks), kq.SUPER)
    x = np.choose(pick, kinds) * np.repeat(10.0 ** rng.uniform(-8, 4, n_blocks), kq.SUPER)
    return x.astype(F32)


# ---- rows ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_rows_quantized_by_ggml(name, level_guard):
    """The engine and the tests' numpy implementation give ggml's bytes, and every kernel level
    decodes them to ggml's values."""
    data = np.load(FIXTURE)
    x, expected = data["x"], data[name.lower()].tobytes()
    block = kq.BLOCK_BYTES[name]
    for label, got in (("engine", engine_quantize(name, x)), ("numpy reference", kq.quantize(name, x))):
        if got != expected:
            bad = np.flatnonzero((np.frombuffer(got, np.uint8) != data[name.lower()].reshape(-1)).reshape(-1, block).any(1))
            pytest.fail(f"{name} {label}: super-blocks {[str(data['names'][i]) for i in bad]} differ from ggml's")
    np.testing.assert_array_equal(kq.decode(name, expected)[0], data[name.lower() + "_values"])
    for level in LEVELS:
        _core.set_kernel_level(level)
        np.testing.assert_array_equal(engine_decode(name, expected), data[name.lower() + "_values"].reshape(-1),
                                      err_msg=f"{name} decoded at level {level}")


@pytest.mark.parametrize("name", NAMES)
def test_random_rows_match_the_numpy_reference(name):
    rng = np.random.default_rng(TYPE_ID[name])
    x = varied_rows(rng, 600)
    assert engine_quantize(name, x) == kq.quantize(name, x)


@pytest.mark.parametrize("name", NAMES)
def test_scaling_by_a_power_of_two_scales_only_d_and_dmin(name):
    """Every step of the rounding commutes with exact scaling, so x * 2^k has the same levels and
    6-bit scales, and d and dmin times 2^k (while they stay in half precision's normal range:
    here d and dmin are about 2^-8)."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(40 * kq.SUPER) * np.repeat(rng.uniform(0.5, 2, 40), kq.SUPER)).astype(F32)
    _, levels, step, offset, sc = kq.decode(name, engine_quantize(name, x))
    for k in (-4, 3, 9):
        _, levels_k, step_k, offset_k, sc_k = kq.decode(name, engine_quantize(name, x * F32(2.0**k)))
        np.testing.assert_array_equal(levels_k, levels)
        np.testing.assert_array_equal(sc_k, sc)
        np.testing.assert_array_equal(step_k, step * F32(2.0**k))
        np.testing.assert_array_equal(offset_k, offset * F32(2.0**k))


def test_rows_are_independent():
    """Quantizing rows one by one gives the bytes of one call over all of them: rwkv.cpp's
    whole-tensor call and the engine's row-by-row one agree when rows are a multiple of 256."""
    rng = np.random.default_rng(6)
    rows = rng.standard_normal((3, 2 * kq.SUPER)).astype(F32)
    for name in NAMES:
        assert b"".join(engine_quantize(name, r) for r in rows) == engine_quantize(name, rows)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_error_and_ranges(name):
    """Levels stay in range, the 6-bit scales of a super-block reach 63, and the rounding error is
    what 4 and 5 bits give: RMS error per super-block at most 9% (Q4_K) or 4.5% (Q5_K) of the
    values' RMS on Gaussian data (measured: about 7% and 3.5%)."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(300 * kq.SUPER) * np.repeat(10.0 ** rng.uniform(-3, 3, 300), kq.SUPER)).astype(F32)
    data = engine_quantize(name, x)
    values, levels, _, _, sc = kq.decode(name, data)
    assert levels.min() >= 0 and levels.max() == kq.SEARCH[name][0]
    assert np.all(sc.max(axis=1) == 63)
    blocks = x.reshape(-1, kq.SUPER).astype(np.float64)
    rms_error = np.sqrt(np.mean((values - blocks) ** 2, axis=1)) / np.sqrt(np.mean(blocks**2, axis=1))
    assert rms_error.max() <= (0.09 if name == "Q4_K" else 0.045), rms_error.max()


def test_constant_and_zero_rows():
    """A zero super-block decodes to zeros; a negative constant is all minimum (level 0, d = 0),
    kept to the precision of dmin = half(c / 63) times m = 63."""
    for name in NAMES:
        assert np.all(engine_decode(name, engine_quantize(name, np.zeros(kq.SUPER, F32))) == 0)
        data = engine_quantize(name, np.full(kq.SUPER, -3.25, F32))
        _, levels, step, _, _ = kq.decode(name, data)
        assert np.all(levels == 0) and np.all(step == 0)
        np.testing.assert_allclose(engine_decode(name, data), -3.25, rtol=2.0**-11)


def test_row_codec_arguments():
    assert _core.row_size(fmt.Q4_K, 256) == 144 and _core.row_size(fmt.Q5_K, 512) == 352
    assert _core.row_size(fmt.Q4_K, 288) == 0  # not a whole number of super-blocks
    with pytest.raises(_core.ArgumentError):
        _core.quantize_row(fmt.Q5_K, np.zeros(288, F32), np.zeros(1000, np.uint8))


# ---- products --------------------------------------------------------------------------------


def q8_activations(x: np.ndarray) -> np.ndarray:
    """The activations as the quantized kernels see them: 32-value blocks, d = amax/127, q = roundf(x/d)."""
    blocks = x.reshape(-1, 32).astype(F32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / F32(127)
    scaled = np.divide(blocks, d, out=np.zeros_like(blocks), where=d > 0).astype(np.float64)
    return (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) * d).reshape(-1)


@pytest.mark.parametrize("cols", (256, 768, 17 * 256))
@pytest.mark.parametrize("name", NAMES)
def test_matvec_adds_only_activation_rounding(name, cols, level_guard):
    """y = W x at every kernel level equals the decoded weights times the 8-bit activations, to
    float precision: the kernels add no error of their own."""
    rng = np.random.default_rng(cols + TYPE_ID[name])
    rows = 19
    w = (rng.standard_normal((rows, cols)) * 0.05 + 0.01).astype(F32)
    x = (rng.standard_normal(cols) * np.repeat(rng.uniform(0.1, 3, cols // 32), 32)).astype(F32)
    x[:32] = 0  # an all-zero activation block
    data = np.frombuffer(kq.quantize(name, w), np.uint8).copy()
    values, _, _, offset, _ = kq.decode(name, data.tobytes())
    values = values.reshape(rows, cols).astype(np.float64)
    act = q8_activations(x)
    expected = values @ act
    magnitude = np.abs(values) @ np.abs(act) + np.repeat(offset.reshape(rows, -1), 32, axis=1) @ np.abs(act)
    tolerance = (cols // 32 + 5) * 1.2e-7 * magnitude + 1e-30
    for level in LEVELS:
        _core.set_kernel_level(level)
        y = np.full(rows, np.nan, F32)
        _core.matvec(TYPE_ID[name], data, rows, x, y)
        assert np.all(np.abs(y - expected) <= tolerance), f"{name} cols={cols} level={level}"


# ---- model files -----------------------------------------------------------------------------

# Widths whose every quantized matrix has rows of a multiple of 256 (v5.2's FFN is 3.5 x n_embed).
WIDTH = {"v4": 256, "v5.1": 256, "v5.2": 512, "v7": 256}
NOT_QUANTIZED = re.compile(r"^blocks\.\d+\.att\.(w1|w2|a1|a2|v1|v2|g1|g2|r_k)$")


@pytest.fixture(scope="module")
def k_models(tmp_path_factory):
    """{arch: (checkpoint, {dtype: path})} with n_embed from WIDTH and 2 layers, plus one layer
    ones ({"FP32-1", "FP16-1"}) for the byte comparisons, whose numpy rounding takes a while."""
    root = tmp_path_factory.mktemp("k-models")
    models = {}
    for arch, width in WIDTH.items():
        paths = {}
        for n_layer, suffix in ((2, ""), (1, "-1")):
            checkpoint = make_checkpoint(arch, n_layer=n_layer, n_embed=width, n_vocab=256, seed=width + len(arch))
            for dtype in ("FP32", "FP16"):
                paths[dtype + suffix] = root / f"{arch}-{dtype}{suffix}.bin"
                write_model(paths[dtype + suffix], checkpoint, dtype)
            if n_layer == 2:
                models[arch] = (checkpoint, paths)
    return models


def record_header(name: str, type_id: int, shape) -> bytes:
    sizes = tuple(reversed(shape))
    raw = name.encode()
    return struct.pack(f"<3i{len(sizes)}i", len(sizes), len(raw), type_id, *sizes) + raw


@functools.lru_cache(maxsize=None)
def reference_file(src, name: str, quantize_head: bool = False) -> bytes:
    """The quantized file as FORMAT.md describes it, built with the numpy rounding: 2-D float
    tensors but emb.weight, head.weight (unless asked), the v7 LoRA matrices and att.r_k."""
    header = fmt.read_header(src)
    out = [struct.pack("<6i", fmt.MAGIC, 101, header.n_vocab, header.n_embed, header.n_layer, TYPE_ID[name])]
    for r in fmt.load_records(src):
        keep = (len(r.shape) != 2 or r.name == "emb.weight" or NOT_QUANTIZED.match(r.name)
                or (r.name == "head.weight" and not quantize_head))
        if keep:
            out.append(record_header(r.name, r.type_id, r.shape) + fmt.read_tensor(src, r).tobytes())
        else:
            out.append(record_header(r.name, TYPE_ID[name], r.shape) + kq.quantize(name, fmt.read_tensor_f32(src, r)))
    return b"".join(out)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arch,dtype", [("v4", "FP32"), ("v5.1", "FP16"), ("v5.2", "FP16"), ("v7", "FP32")])
def test_quantize_model_file(k_models, tmp_path, arch, dtype, name):
    src, dst = k_models[arch][1][dtype + "-1"], tmp_path / "out.bin"
    summary = quantize(src, dst, name.lower())
    assert summary.type == name and summary.n_quantized > 0
    assert dst.read_bytes() == reference_file(src, name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_quantize_head(k_models, tmp_path):
    src, dst = k_models["v7"][1]["FP16-1"], tmp_path / "out.bin"
    quantize(src, dst, "Q5_K", quantize_head=True)
    assert dst.read_bytes() == reference_file(src, "Q5_K", quantize_head=True)


@pytest.mark.parametrize("name", NAMES)
def test_rows_not_a_multiple_of_256_are_refused(k_models, tmp_path, name):
    """The first matrix whose rows do not fit is named with its row length; nothing is written."""
    cases = [("v7", 128, "blocks.0.att.receptance.weight", 128),  # n_embed 128
             ("v5.2", 256, "blocks.0.ffn.value.weight", 896),  # FFN 3.5 x 256
             ("v6", 256, "blocks.0.att.time_decay_w2", 64)]  # the decay LoRA's rows of 64
    for arch, width, tensor, row in cases:
        src, dst = tmp_path / f"{arch}.bin", tmp_path / "out.bin"
        write_model(src, make_checkpoint(arch, n_layer=1, n_embed=width, n_vocab=256), "FP16")
        with pytest.raises(ValueError) as info:
            quantize(src, dst, name)
        message = str(info.value)
        assert f"'{tensor}'" in message and f"{row} values" in message and "256" in message, message
        assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == [f"{arch}.bin"]
        src.unlink()


def test_k_records_with_rows_not_a_multiple_of_256_are_refused(k_models, tmp_path):
    """A K tensor whose rows are not whole super-blocks (what rwkv.cpp's quantizer writes for
    such tensors) is refused by the engine and by the Python reader, naming the tensor."""
    good = tmp_path / "good.bin"
    quantize(k_models["v7"][1]["FP16"], good, "Q4_K")
    record = next(r for r in fmt.load_records(good) if r.name == "blocks.0.att.key.weight")
    data = bytearray(good.read_bytes())
    name_at = record.offset - len(record.name)
    sizes_at = name_at - 8
    assert struct.unpack_from("<2i", data, sizes_at) == (256, 256)
    struct.pack_into("<2i", data, sizes_at, 128, 512)  # same number of values: only the rows are wrong
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data)
    with pytest.raises(_core.RWKVError, match=r"blocks\.0\.att\.key\.weight.*Q4_K.*128.*256"):
        Model(bad)
    with pytest.raises(ValueError, match=r"blocks\.0\.att\.key\.weight.*Q4_K.*256"):
        fmt.load_records(bad)


def run_command(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_command_line(k_models, tmp_path):
    """`rwkvcpp quantize`, rwkv.cpp's python/quantize.py (by name or type id) and `rwkvcpp info`."""
    src = k_models["v7"][1]["FP32-1"]
    result = run_command("-m", "rwkvcpp", "quantize", src, tmp_path / "a.bin", "q4_k")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.bin").read_bytes() == reference_file(src, "Q4_K")
    for arg, name in (("Q5_K", "Q5_K"), ("14", "Q5_K"), ("13", "Q4_K")):
        dst = tmp_path / f"{arg}.bin"
        result = run_command(REPO / "python" / "quantize.py", src, dst, arg)
        assert result.returncode == 0, result.stderr
        assert dst.read_bytes() == reference_file(src, name)
    result = run_command("-m", "rwkvcpp", "info", tmp_path / "14.bin")
    assert result.returncode == 0, result.stderr
    assert "Q5_K" in result.stdout, result.stdout


# ---- whole models ----------------------------------------------------------------------------

TOKENS = np.random.default_rng(11).integers(0, 256, 12).tolist()
# More tokens than the row kernels take (RWKV_ROW_KERNEL_TOKENS), so that a call is sequence mode.
SEQUENCE_TOKENS = TOKENS + np.random.default_rng(12).integers(0, 256, 28).tolist()
MEASURED: dict = {}


def dequantized_checkpoint(checkpoint, path):
    """The checkpoint with each matrix the file holds in a K format replaced by its decoded values
    (the tests' own decoder); these matrices are stored untransformed in v4, v5.x and v7 files."""
    out = dict(checkpoint)
    for r in fmt.load_records(path):
        if r.type_name in NAMES:
            out[r.name] = kq.decode(r.type_name, fmt.read_tensor(path, r).tobytes())[0].reshape(r.shape)
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arch", WIDTH)
def test_logits_follow_the_reference_on_the_decoded_weights(k_models, tmp_path, arch, name):
    """A K-quantized model gives the logits of the float64 reference run on its decoded weights: as
    a sequence (tiles decoded to floats) to float precision; one token at a time, the kernels round
    activations to 8-bit blocks, as for every quantized format, which costs about 0.1-0.3% of the
    logits' range in RMS and up to 2% at single logits (the 32-value formats measure the same)."""
    checkpoint, paths = k_models[arch]
    path = tmp_path / f"{name}.bin"
    quantize(paths["FP32"], path, name)
    expected, _ = Reference(dequantized_checkpoint(checkpoint, path)).eval_sequence(SEQUENCE_TOKENS)
    model = Model(path, threads=2)
    sequence, _ = model.eval_sequence(SEQUENCE_TOKENS, all_logits=True)
    expected_serial = expected[: len(TOKENS)]
    state, serial = None, []
    for token in TOKENS:
        logits, state = model.eval(token, state)
        serial.append(logits)
    spread = float(np.ptp(expected_serial))
    sequence_diff = float(np.abs(sequence - expected).max())
    serial_error = np.abs(np.stack(serial) - expected_serial) / spread
    serial_max, serial_rms = float(serial_error.max()), float(np.sqrt(np.mean(serial_error**2)))
    MEASURED[arch, name] = (sequence_diff, serial_max, serial_rms, spread)
    assert sequence_diff <= 1e-4, f"{arch} {name}: sequence logits off by {sequence_diff:.3g}"
    assert serial_rms <= 0.005 and serial_max <= 0.04, (
        f"{arch} {name}: serial logits off by {serial_max:.2%} (max), {serial_rms:.2%} (RMS) of their range")


@pytest.fixture(scope="module", autouse=True)
def print_measured(request):
    """With -v, prints the whole-model differences (they go in reports)."""
    yield
    if MEASURED and request.config.option.verbose > 0:
        print()
        for (arch, name), (seq, ser_max, ser_rms, spread) in MEASURED.items():
            print(f"{arch:5} {name}: |logit - reference| sequence max {seq:.2e}; serial max {ser_max:.2%}, "
                  f"RMS {ser_rms:.2%} of the logit range {spread:.1f}")
