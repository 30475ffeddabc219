"""Every kernel level the CPU offers gives the results of the portable C path, for every weight
format, in decode (matrix-vector, one activation row or several) and sequence (tiled
matrix-matrix) mode, and on odd sizes.

Speed is measured by `rwkvcpp bench` and benchmarks/, never here."""

import os

import numpy as np
import pytest

import rwkvcpp
from rwkvcpp import _core
from rwkvcpp.quantization import quantize
from rwkvcpp.writer import write_model
from support.checkpoints import make_checkpoint

FORMATS = ["FP32", "FP16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K"]
TYPE_IDS = {"FP32": 0, "FP16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 7, "Q5_1": 8, "Q8_0": 9, "Q4_K": 13, "Q5_K": 14}
BLOCK_LEN = {name: 256 if name.endswith("_K") else 32 for name in FORMATS}
# The K formats' super-blocks need rows of a multiple of 256: their models are wider.
K_WIDTH = {"v7": 256, "v5.2": 512}  # v5.2's FFN is 3.5 x n_embed


def available_levels():
    best = _core.kernel_level()
    levels = []
    for name in ("generic", "avx2", "avx512", "neon"):
        try:
            _core.set_kernel_level(name)
        except ValueError:
            continue
        levels.append(name)
    _core.set_kernel_level(best)
    return levels


LEVELS = available_levels()


@pytest.fixture
def level_guard():
    best = _core.kernel_level()
    yield
    _core.set_kernel_level(best)


@pytest.fixture(scope="module")
def format_files(model_files, tmp_path_factory):
    """The v7 and v5.2 test models in every format (K formats from wider ones)."""
    out = tmp_path_factory.mktemp("formats")
    files = {}
    for arch in ("v7", "v5.2"):
        files[arch, "FP32"] = model_files[arch].fp32
        files[arch, "FP16"] = model_files[arch].fp16
        wide = out / f"{arch}-{K_WIDTH[arch]}.bin"
        write_model(wide, make_checkpoint(arch, n_layer=2, n_embed=K_WIDTH[arch], n_vocab=256, seed=9), "FP32")
        for fmt in FORMATS[2:]:
            path = out / f"{arch}-{fmt}.bin"
            quantize(wide if BLOCK_LEN[fmt] == 256 else model_files[arch].fp32, path, fmt)
            files[arch, fmt] = path
    return files


def run_model(path, tokens):
    model = rwkvcpp.Model(path, threads=2)
    seq_logits, _ = model.eval_sequence(tokens, all_logits=True)  # more than the row kernels take: tiles
    state, serial = None, []
    for token in tokens[:6]:  # one token at a time: the matrix-vector path
        logits, state = model.eval(token, state)
        serial.append(logits)
    return seq_logits, np.stack(serial)


def test_levels_are_listed():
    """The best level is in use, unless RWKV_KERNELS forces a lower one."""
    assert LEVELS[0] == "generic"
    forced = os.environ.get("RWKV_KERNELS")
    expected = forced if forced in LEVELS else LEVELS[-1]
    assert rwkvcpp.system_info()["kernels"] == expected


@pytest.mark.parametrize("level", LEVELS[1:] or ["(only generic here)"])
@pytest.mark.parametrize("arch", ["v7", "v5.2"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_model_logits_match_generic(level, arch, fmt, format_files, level_guard):
    if level not in LEVELS:
        pytest.skip("this CPU has no SIMD level beyond the portable one")
    tokens = list(np.random.default_rng(3).integers(0, 256, 40))
    _core.set_kernel_level("generic")
    ref_seq, ref_serial = run_model(format_files[arch, fmt], tokens)
    _core.set_kernel_level(level)
    seq, serial = run_model(format_files[arch, fmt], tokens)
    scale = max(1.0, float(np.abs(ref_seq).max()))
    # Only the order of float additions differs between levels.
    assert np.abs(seq - ref_seq).max() <= 2e-4 * scale
    if fmt.startswith("Q"):
        # Decoding rounds activations to 8 bits: a last-bit difference can move one activation to
        # the neighbouring step (already within the first token's layers), and later tokens carry
        # that on. Bounded, not bit-equal; the kernels themselves are compared exactly in
        # test_matvec_odd_sizes_match_float_math and test_kernels_emulated.py.
        assert np.abs(serial - ref_serial).max() <= 0.02 * float(np.ptp(ref_serial))
    else:
        assert np.abs(serial - ref_serial).max() <= 2e-4 * scale


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows,blocks", [(1, 1), (7, 3), (33, 129), (50, 8)])
def test_matvec_odd_sizes_match_float_math(level, fmt, rows, blocks, level_guard):
    """The row kernels against numpy on the dequantized weights (activation rounding included for
    the quantized formats, whose kernels take 8-bit activations), on rows of `blocks` blocks of
    the format (32 values, 256 for the K formats)."""
    cols = blocks * BLOCK_LEN[fmt]
    rng = np.random.default_rng(rows * 1000 + cols)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal(cols).astype(np.float32)
    tid = TYPE_IDS[fmt]
    encoded = np.empty(rows * _core.row_size(tid, cols), np.uint8)
    size = _core.row_size(tid, cols)
    dequant = np.empty_like(w)
    for r in range(rows):
        _core.quantize_row(tid, w[r], encoded[r * size:(r + 1) * size])
        _core.dequantize_row(tid, encoded[r * size:(r + 1) * size], dequant[r])
    expected = dequant.astype(np.float64) @ x.astype(np.float64)
    if tid >= 2:  # 8-bit blocks of the activations, as the kernels see them
        blocks = x.reshape(-1, 32)
        d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
        q = np.round(np.divide(blocks, d, out=np.zeros_like(blocks), where=d > 0))
        if fmt.endswith("_K"):  # float scales
            expected = dequant.astype(np.float64) @ (q * d).reshape(-1).astype(np.float64)
        else:  # d and s = d * sum(q) at half precision; "q*d + m" formats add m * s per block
            d_half = d.astype(np.float16).astype(np.float64)
            expected = dequant.astype(np.float64) @ (q * d_half).reshape(-1)
            if fmt in ("Q4_1", "Q5_1"):
                sums = q.sum(axis=1)
                s_half = (d[:, 0] * sums.astype(np.float32)).astype(np.float16).astype(np.float64)
                m = encoded.reshape(rows, cols // 32, -1)[:, :, 2:4].copy().view("<f2")[:, :, 0]
                expected += m.astype(np.float64) @ (s_half - d_half[:, 0] * sums)
    _core.set_kernel_level(level)
    y = np.empty(rows, np.float32)
    _core.matvec(tid, encoded, rows, x, y)
    assert np.allclose(y, expected, rtol=1e-4, atol=1e-3 * np.sqrt(cols))


def encoded_matrix(fmt, rows, cols, seed):
    """A random rows x cols matrix in the format's row encoding."""
    tid = TYPE_IDS[fmt]
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    size = _core.row_size(tid, cols)
    encoded = np.empty(rows * size, np.uint8)
    for r in range(rows):
        _core.quantize_row(tid, w[r], encoded[r * size:(r + 1) * size])
    return encoded


# Every group size of the levels' row kernels (up to 8 rows), and past the 32 rows of a call.
ROW_COUNTS = (2, 3, 4, 5, 7, 8, 9, 13, 16, 33, 40)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows,blocks", [(7, 3), (33, 129)])
def test_row_kernels_equal_the_single_row_dot(level, fmt, rows, blocks, level_guard):
    """Batched decoding's product (each weight row against several activation rows, each block
    unpacked once for all of them) gives every activation row exactly what the single-row dot
    gives it: a sequence's results do not depend on the others evaluated with it."""
    cols = blocks * BLOCK_LEN[fmt]
    tid = TYPE_IDS[fmt]
    encoded = encoded_matrix(fmt, rows, cols, rows + cols)
    _core.set_kernel_level(level)
    for T in ROW_COUNTS:
        x = (np.random.default_rng(T).standard_normal((T, cols)) * 3).astype(np.float32)
        y = np.full((T, rows), np.nan, np.float32)
        _core.matmul_rows(tid, encoded, rows, x, y)
        one_by_one = np.empty((T, rows), np.float32)
        for t in range(T):
            _core.matvec(tid, encoded, rows, x[t], one_by_one[t])
        assert np.array_equal(y, one_by_one), f"{T} rows: differs by {np.abs(y - one_by_one).max():.3g}"


@pytest.mark.parametrize("level", LEVELS[1:] or ["(only generic here)"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_row_kernels_match_generic(level, fmt, level_guard):
    """The row kernels of each level against the portable level's (the single-row dot, row by
    row), on 13 rows: only the order of float additions differs."""
    if level not in LEVELS:
        pytest.skip("this CPU has no SIMD level beyond the portable one")
    rows, cols, T = 33, 129 * BLOCK_LEN[fmt], 13
    tid = TYPE_IDS[fmt]
    encoded = encoded_matrix(fmt, rows, cols, 5)
    x = (np.random.default_rng(6).standard_normal((T, cols)) * 3).astype(np.float32)
    want, got = np.empty((T, rows), np.float32), np.empty((T, rows), np.float32)
    _core.set_kernel_level("generic")
    _core.matmul_rows(tid, encoded, rows, x, want)
    _core.set_kernel_level(level)
    _core.matmul_rows(tid, encoded, rows, x, got)
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(cols))


@pytest.mark.parametrize("level", LEVELS)
def test_activation_rounding_is_half_away_from_zero_on_every_level(level, level_guard):
    """Quantized products round activations to 8 bits like C's roundf: halves go away from zero, the
    same on every level (so decoding gives the same tokens whatever the CPU)."""
    cols = 64
    x = np.zeros(cols, np.float32)
    x[:12] = [127.0, 2.5, -2.5, 0.5, -0.5, 126.5, -126.5, 1.4999999, -1.5000001, 3.5, 0.49999997, -127.0]
    x[32:] = np.linspace(-40.25, 40.25, 32, dtype=np.float32)
    x[32] = 127.0  # each 32-value block has a scale of exactly 1
    w = np.eye(cols, dtype=np.float32)  # each output is one rounded activation
    size = _core.row_size(TYPE_IDS["Q8_0"], cols)
    encoded = np.empty(cols * size, np.uint8)
    for r in range(cols):
        _core.quantize_row(TYPE_IDS["Q8_0"], w[r], encoded[r * size:(r + 1) * size])
    _core.set_kernel_level(level)
    y = np.empty(cols, np.float32)
    _core.matvec(TYPE_IDS["Q8_0"], encoded, cols, x, y)
    one = np.empty(cols, np.float32)  # 1.0 as Q8_0 stores it (127 times an FP16 scale)
    _core.dequantize_row(TYPE_IDS["Q8_0"], encoded[:size], one)
    expected = one[0] * np.sign(x) * np.floor(np.abs(x.astype(np.float64)) + 0.5)
    assert np.allclose(y, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("rows,cols,tokens", [(48, 1024, 128), (7, 96, 13), (50, 2080, 25), (1, 40, 4),
                                              (9, 8, 47), (64, 3000, 130)])
def test_sequence_gemm_matches_float_math(level, rows, cols, tokens, level_guard):
    """Sequence mode's micro-GEMM on odd row, token and k counts (edges of its register tiles, of
    its token panels and of the engine's k-blocks), against numpy in float64."""
    rng = np.random.default_rng(rows * 7 + cols * 3 + tokens)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    _core.set_kernel_level(level)
    y = np.full((tokens, rows), np.nan, np.float32)
    _core.matmul_f32(w, x, y)
    expected = x.astype(np.float64) @ w.astype(np.float64).T
    assert np.allclose(y, expected, rtol=1e-4, atol=1e-4 * np.sqrt(cols))
