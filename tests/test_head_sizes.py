"""Models whose heads are not 64 wide: the head count and size come from the file.

Released models all have heads of 64, which the rest of the suite uses; rwkv.cpp's tiny test models
have heads of 8 (tests/test_rwkv_cpp_models.py). Here random checkpoints with heads of 8, 16 and 32
and n_embed 96 (not a multiple of 64) go through the writer, the converter, the engine (FP32 and
Q8_0, token by token and as a sequence) and state files, checked against the float64 reference,
which reads the head count from the checkpoint as the converter does, and against the official
`rwkv` package where it is installed.
"""

from __future__ import annotations

import numpy as np
import pytest

import rwkvcpp
from rwkvcpp import _core
from rwkvcpp import format as fmt
from rwkvcpp.cli.info import describe_model_file
from rwkvcpp.conversion.pipeline import convert
from rwkvcpp.conversion.pth_write import save_pth, save_safetensors
from rwkvcpp.conversion.schema import inspect_checkpoint
from rwkvcpp.writer import write_model

from support.checkpoints import make_checkpoint
from support.reference import Reference

N_LAYER, N_EMBED, N_VOCAB = 2, 96, 256
HEAD_SIZES = (8, 16, 32)
ARCHES = ("v5.1", "v5.2", "v6", "v7")
TOKENS = [int(t) for t in np.random.default_rng(11).integers(0, N_VOCAB, 12)]
LOGIT_TOLERANCE = 1e-4  # FP32 file against the float64 reference, as tests/test_engine.py
STATE_TOLERANCE = 1e-4  # relative to the largest state value (at least 1)
# More tokens than the row kernels take (RWKV_ROW_KERNEL_TOKENS), so that a call is sequence mode.
SEQUENCE_TOKENS = TOKENS + [int(t) for t in np.random.default_rng(12).integers(0, N_VOCAB, 28)]
# Q8_0 files in sequence mode (weight tiles dequantized, activations float)
# against the reference on the dequantized weights, as FP32 files; token by token (matrix-vector
# products with 8-bit activations) the RMS error as a fraction of the logit range (seen: 0.0015 to
# 0.0033, the same as for heads of 64). A wrong head layout gives errors of the order of 1.
Q8_0_SERIAL_RMS_TOLERANCE = 0.005

def _seed(arch: str, head_size: int) -> int:
    return 300 + 10 * ARCHES.index(arch) + head_size


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{(arch, head_size): (checkpoint, FP32 file, its Q8_0 file, the reference's logits and state
    on TOKENS)}, made when first asked for."""
    directory = tmp_path_factory.mktemp("heads")
    cache = {}

    class Models:
        def __getitem__(self, key):
            if key not in cache:
                arch, head_size = key
                checkpoint = make_checkpoint(arch, N_LAYER, N_EMBED, N_VOCAB, seed=_seed(arch, head_size),
                                             head_size=head_size)
                stem = directory / f"{arch.replace('.', '_')}-{head_size}"
                fp32, q8_0 = stem.with_suffix(".bin"), stem.with_name(stem.name + "-Q8_0.bin")
                write_model(fp32, checkpoint, dtype="FP32")
                rwkvcpp.quantize(fp32, q8_0, "Q8_0")
                cache[key] = (checkpoint, fp32, q8_0, Reference(checkpoint).eval_sequence(TOKENS))
            return cache[key]

    return Models()


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _state_diff(state, expected) -> float:
    return _max_diff(state, expected) / max(1.0, float(np.max(np.abs(expected))))


def _serial(model, tokens, state=None):
    rows = []
    for token in tokens:
        logits, state = model.eval(token, state)
        rows.append(logits)
    return np.stack(rows), state


@pytest.mark.parametrize("head_size", HEAD_SIZES)
@pytest.mark.parametrize("arch", ARCHES)
def test_fp32_matches_reference(models, arch, head_size):
    _, fp32, _, (expected_logits, expected_state) = models[arch, head_size]
    model = rwkvcpp.Model(fp32, threads=1)
    assert (model.n_head, model.head_size) == (N_EMBED // head_size, head_size)
    assert model.state_len == N_LAYER * (2 * N_EMBED + N_EMBED * head_size)
    for mode in ("serial", "sequence"):
        if mode == "serial":
            logits, state = _serial(model, TOKENS)
        else:
            logits, state = model.eval_sequence(TOKENS, all_logits=True)
        diff = _max_diff(logits, expected_logits)
        assert diff <= LOGIT_TOLERANCE, f"{arch}, heads of {head_size}, {mode}: logits differ by {diff:.3g}"
        sdiff = _state_diff(state, expected_state)
        assert sdiff <= STATE_TOLERANCE, f"{arch}, heads of {head_size}, {mode}: state differs by {sdiff:.3g}"


def _dequantized(path, checkpoint) -> dict:
    """The checkpoint with each matrix the file quantized replaced by its dequantized values
    (transposed back where the file stores it transposed: v6's low-rank matrices)."""
    out = dict(checkpoint)
    for record in fmt.load_records(path):
        if fmt.TYPES[record.type_id].quantized:
            values = np.zeros(int(np.prod(record.shape)), np.float32)
            _core.dequantize_row(record.type_id, np.array(fmt.read_tensor(path, record)), values)
            values = values.reshape(record.shape)
            out[record.name] = values if checkpoint[record.name].shape == values.shape else values.T
    return out


@pytest.mark.parametrize("head_size", HEAD_SIZES)
@pytest.mark.parametrize("arch", ARCHES)
def test_q8_0_matches_reference(models, arch, head_size):
    checkpoint, _, q8_0, _ = models[arch, head_size]
    model = rwkvcpp.Model(q8_0, threads=1)
    assert (model.n_head, model.head_size) == (N_EMBED // head_size, head_size)
    expected, _ = Reference(_dequantized(q8_0, checkpoint)).eval_sequence(SEQUENCE_TOKENS)
    sequence, _ = model.eval_sequence(SEQUENCE_TOKENS, all_logits=True)
    diff = _max_diff(sequence, expected)
    assert diff <= LOGIT_TOLERANCE, f"{arch}, heads of {head_size}, Q8_0 sequence: logits differ by {diff:.3g}"
    serial, _ = _serial(model, TOKENS)
    expected = expected[: len(TOKENS)]
    rms = float(np.sqrt(np.mean((serial - expected) ** 2)) / (expected.max() - expected.min()))
    assert rms < Q8_0_SERIAL_RMS_TOLERANCE, f"{arch}, heads of {head_size}, Q8_0 serial: RMS {rms:.4f} of the range"


@pytest.mark.parametrize("arch", ARCHES)
def test_convert_reads_the_head_count(models, arch, tmp_path):
    """The converter takes the head count from the checkpoint (v5.1 time_decay (H), v5.2
    time_decay (H, S), v6 time_faaaa (H, S), v7 r_k (H, S)) and writes it into the file's shapes,
    where the engine and `rwkvcpp info` find it."""
    checkpoint, fp32, _, _ = models[arch, 16]
    shape = inspect_checkpoint(checkpoint, "checkpoint")
    assert (shape.n_head, shape.head_size) == (6, 16)
    assert "n_head 6 (of 16)" in shape.describe()
    save_pth(tmp_path / "model.pth", checkpoint)
    convert(tmp_path / "model.pth", tmp_path / "model.bin", dtype="FP32")
    assert (tmp_path / "model.bin").read_bytes() == fp32.read_bytes()
    assert describe_model_file(str(fp32))["n_head"] == 6


def test_checkpoint_whose_head_count_does_not_divide_n_embed(tmp_path):
    checkpoint = make_checkpoint("v7", N_LAYER, N_EMBED, N_VOCAB, head_size=16)
    checkpoint["blocks.0.att.r_k"] = np.zeros((5, 16), np.float32)  # 5 heads do not divide 96
    with pytest.raises(ValueError, match=r"'blocks\.0\.att\.r_k' has shape \(5, 16\): 5 heads, which do not divide "
                                         r"n_embed 96"):
        inspect_checkpoint(checkpoint, "model.pth")
    checkpoint = make_checkpoint("v5.2", N_LAYER, N_EMBED, N_VOCAB, head_size=16)
    checkpoint["blocks.1.att.time_decay"] = checkpoint["blocks.1.att.time_decay"].reshape(12, 8)
    with pytest.raises(ValueError, match=r"'blocks\.1\.att\.time_decay' has shape \(12, 8\): 12 heads, but layer 0 "
                                         r"has 6"):
        inspect_checkpoint(checkpoint, "model.pth")


# ---- state files -----------------------------------------------------------------------------------


def _random_wkv_state(model, seed):
    """A state whose wkv matrices are random and whose token-shift parts are zero (all a state file holds)."""
    rng = np.random.default_rng(seed)
    state = model.init_state()
    C, size = model.n_embed, model.n_head * model.head_size**2
    for i in range(model.n_layer):
        start = i * (2 * C + size) + 2 * C
        state[start:start + size] = rng.normal(0, 0.3, size)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("arch", ARCHES)
def test_tuned_state_file_round_trip(models, arch, suffix, tmp_path):
    _, fp32, _, _ = models[arch, 8]
    model = rwkvcpp.Model(fp32, threads=1)
    state = _random_wkv_state(model, seed=2)
    path = tmp_path / f"state{suffix}"
    model.save_tuned_state(path, state)
    np.testing.assert_array_equal(model.load_tuned_state(path), state)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("arch", ["v5.2", "v6", "v7"])
def test_state_tuned_file_matches_reference(models, arch, suffix, tmp_path):
    """A state-tuning file ((H, S, S) `time_state` per layer, stored [value][key]) for a model with
    heads of 16 starts the engine where the reference, given the same matrices, starts."""
    checkpoint, fp32, _, _ = models[arch, 16]
    model = rwkvcpp.Model(fp32, threads=1)
    rng = np.random.default_rng(5)
    tensors = {f"blocks.{i}.att.time_state": rng.normal(0, 0.5, (6, 16, 16)).astype(np.float32)
               for i in range(N_LAYER)}
    path = tmp_path / f"tuned{suffix}"
    (save_pth if suffix == ".pth" else save_safetensors)(path, tensors)
    state = model.load_tuned_state(path)

    ref = Reference(checkpoint)
    ref_state = ref.init_state()
    for i in range(N_LAYER):
        matrix = tensors[f"blocks.{i}.att.time_state"].astype(np.float64)
        ref._layer_views(ref_state, i)[2][...] = matrix if arch == "v7" else matrix.transpose(0, 2, 1)
    logits, _ = model.eval_sequence(TOKENS, state, all_logits=True)
    expected, _ = ref.eval_sequence(TOKENS, ref_state)
    assert _max_diff(logits, expected) <= LOGIT_TOLERANCE
    assert _max_diff(model.eval_sequence(TOKENS, all_logits=True)[0], logits) > 1e-2  # the state matters


def test_state_file_for_other_heads_is_refused(models, tmp_path):
    _, fp32, _, _ = models["v6", 16]
    model = rwkvcpp.Model(fp32, threads=1)
    released = {f"blocks.{i}.att.time_state": np.zeros((1, 64, 64), np.float32) for i in range(N_LAYER)}
    save_safetensors(tmp_path / "released.safetensors", released)
    with pytest.raises(ValueError, match=r"\(1, 64, 64\) \(1 heads of 64, n_embed 64\); this model \(n_embed 96, "
                                         r"6 heads of 16\) needs \(6, 16, 16\)"):
        model.load_tuned_state(tmp_path / "released.safetensors")


# ---- the official package ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["v6", "v7"])
def test_official_package_agrees(models, arch, tmp_path):
    """The official package reads the head count from the checkpoint too (v6 time_faaaa, v7 r_k).
    Not v5: for v5 with heads other than 64 the engine uses rwkv.cpp's ln_x eps (1e-5), the official
    package 64e-5 (csrc/arch/v5.c says why)."""
    from support.checkpoints import save_pth as save_torch_pth
    from support.official import require_official, run_official

    require_official()
    checkpoint, fp32, _, _ = models[arch, 16]
    save_torch_pth(checkpoint, tmp_path / "model.pth", dtype="fp32")
    official = run_official(tmp_path / "model.pth", arch, TOKENS)
    logits, state = _serial(rwkvcpp.Model(fp32, threads=1), TOKENS)
    assert _max_diff(logits, official["logits_serial"]) <= 2e-4
    assert _state_diff(state, official["state_serial"]) <= STATE_TOLERANCE
