"""Bad model files: each must give ModelFileError (ModelIOError for files that cannot be opened)
whose message contains the file's path and names the problem.

The damaged files are byte-level edits of the valid small models of tests/conftest.py, located
with rwkvcpp.format's pure-Python reader (record offsets), so each edit hits exactly one field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rwkvcpp import format as fmt
from rwkvcpp.model import Model, ModelFileError, ModelIOError, RWKVError
from rwkvcpp.conversion.transform import transform_checkpoint
from rwkvcpp.writer import BinWriter

# Header field offsets (six little-endian int32).
MAGIC, VERSION, N_VOCAB, N_EMBED, N_LAYER, DATA_TYPE = (4 * i for i in range(6))

# docs/FORMAT.md: 2-D tensors become FP16 in an FP16 file, except these.
FP32_FRAGMENTS = (".time_", ".k_k", ".k_a", ".r_k", ".x_rwkvag", ".x_k", ".w0", ".a0", ".v0")


def fp16_in_file(name: str, shape) -> bool:
    return len(shape) == 2 and not any(f in name for f in FP32_FRAGMENTS)


@dataclass
class RecordAt:
    """Where one record's fields lie in the file."""

    name: str
    start: int  # offset of n_dims
    n_dims: int
    data_offset: int
    nbytes: int

    @property
    def name_len_at(self) -> int:
        return self.start + 4

    @property
    def type_at(self) -> int:
        return self.start + 8

    @property
    def sizes_at(self) -> int:
        return self.start + 12

    @property
    def name_at(self) -> int:
        return self.start + 12 + 4 * self.n_dims

    @property
    def end(self) -> int:
        return self.data_offset + self.nbytes


def locate(path) -> list[RecordAt]:
    out = []
    for r in fmt.load_records(path):
        n_name = len(r.name.encode("utf-8"))
        start = r.offset - n_name - 4 * len(r.shape) - 12
        out.append(RecordAt(r.name, start, len(r.shape), r.offset, r.nbytes))
    return out


class Damage:
    """A valid file's bytes to edit and write under a new name."""

    def __init__(self, source, tmp_path: Path):
        self.source = Path(source)
        self.blob = bytearray(self.source.read_bytes())
        self.records = {r.name: r for r in locate(self.source)}
        self.order = list(self.records)
        self.tmp_path = tmp_path

    def i32(self, offset: int, value: int) -> Damage:
        struct.pack_into("<i", self.blob, offset, value)
        return self

    def write(self, name: str, blob=None) -> Path:
        path = self.tmp_path / name
        path.write_bytes(bytes(self.blob if blob is None else blob))
        return path

    def without(self, tensor: str) -> bytes:
        r = self.records[tensor]
        return bytes(self.blob[: r.start] + self.blob[r.end :])

    def record_bytes(self, tensor: str) -> bytes:
        r = self.records[tensor]
        return bytes(self.blob[r.start : r.end])


def expect_file_error(path, *fragments, error=ModelFileError) -> str:
    """Loads `path`, expecting `error`; its message must contain the path and every fragment
    (case-insensitive; a tuple fragment means any one of its alternatives)."""
    with pytest.raises(error) as info:
        Model(path, threads=1)
    message = str(info.value)
    assert str(path) in message, f"message does not name the file: {message!r}"
    for fragment in fragments:
        options = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(o.lower() in message.lower() for o in options), f"{options} not in {message!r}"
    assert isinstance(info.value, RWKVError)
    return message


@pytest.fixture
def v7(model_files, tmp_path) -> Damage:
    return Damage(model_files["v7"].fp16, tmp_path)


@pytest.fixture
def v4(model_files, tmp_path) -> Damage:
    return Damage(model_files["v4"].fp32, tmp_path)


def test_the_undamaged_files_load(model_files):
    for s in model_files.values():
        for path in (s.fp32, s.fp16):
            model = Model(path, threads=1)
            assert model.arch == s.arch
            assert np.all(np.isfinite(model.eval(1)[0]))


# -------------------------------------------------------------------------------- opening


def test_missing_file(tmp_path):
    path = tmp_path / "no-such-model.bin"
    message = expect_file_error(path, ("no such file", "cannot open", "not found"), error=ModelIOError)
    assert "no-such-model.bin" in message
    with pytest.raises(OSError):  # ModelIOError is an OSError
        Model(path)


def test_directory(tmp_path):
    expect_file_error(tmp_path, ("directory", "not a regular file", "cannot"), error=ModelIOError)


def test_empty_and_truncated_header(v7):
    expect_file_error(v7.write("empty.bin", b""), ("short", "truncated", "header", "empty"))
    for n in (1, 4, 10, 23):
        expect_file_error(v7.write(f"header{n}.bin", v7.blob[:n]), ("short", "truncated", "header"))


# --------------------------------------------------------------------------------- header


def test_wrong_magic(v7):
    expect_file_error(v7.i32(MAGIC, 0x67676D6C).write("magic.bin"), "magic", "rwkv.cpp")
    blob = b"PK\x03\x04" + bytes(v7.blob[4:])  # e.g. a .pth (zip) given by mistake
    expect_file_error(v7.write("zip.bin", blob), "magic")


@pytest.mark.parametrize("version", [99, 0, -1, 102, 1])
def test_unsupported_version(v7, version):
    expect_file_error(v7.i32(VERSION, version).write("version.bin"), "version", str(version))


def test_version_100_fp16_file_loads(v7, model_files):
    """FP32/FP16 tensors of version 100 files are read as in 101 (docs/FORMAT.md)."""
    model = Model(v7.i32(VERSION, 100).write("v100.bin"), threads=1)
    assert model.file_version == 100
    expected = Model(model_files["v7"].fp16, threads=1).eval(5)[0]
    np.testing.assert_array_equal(model.eval(5)[0], expected)


@pytest.mark.parametrize("type_id", [42, -1, 4, 5, 6, 10, 2**31 - 1])
def test_unknown_type_in_header(v7, type_id):
    expect_file_error(v7.i32(DATA_TYPE, type_id).write("htype.bin"), "type", str(type_id))


@pytest.mark.parametrize("field,value", [(N_VOCAB, 0), (N_VOCAB, -5), (N_EMBED, 0), (N_LAYER, 0), (N_LAYER, -1)])
def test_non_positive_header_sizes(v7, field, value):
    name = {N_VOCAB: "n_vocab", N_EMBED: "n_embed", N_LAYER: "n_layer"}[field]
    expect_file_error(v7.i32(field, value).write("hsize.bin"), name, str(value))


# -------------------------------------------------------------------------------- records


@pytest.mark.parametrize("type_id", [42, -1, 4, 5, 6, 10, 1000])
def test_unknown_type_in_record(v7, type_id):
    target = v7.records["blocks.0.att.key.weight"]
    message = expect_file_error(v7.i32(target.type_at, type_id).write("rtype.bin"), "type", str(type_id))
    assert "#" in message or "blocks.0.att.key.weight" in message  # which record


def test_truncated_record_header(v7):
    r = v7.records["blocks.1.ln1.weight"]
    for cut in (r.start + 1, r.start + 8, r.start + 11):
        expect_file_error(v7.write("rhdr.bin", v7.blob[:cut]), "truncated")
    # In the sizes or the name.
    for cut in (r.sizes_at + 2, r.name_at + 3):
        expect_file_error(v7.write("rname.bin", v7.blob[:cut]), "truncated")


def test_truncated_data(v7):
    last = v7.records[v7.order[-1]]
    for cut in (last.data_offset, last.data_offset + 1, last.end - 1):
        message = expect_file_error(v7.write("data.bin", v7.blob[:cut]), "truncated")
        assert "head.weight" in message  # the damaged tensor is named
    middle = v7.records["blocks.1.att.value.weight"]
    message = expect_file_error(v7.write("mid.bin", v7.blob[: middle.data_offset + 100]), "truncated")
    assert "blocks.1.att.value.weight" in message


@pytest.mark.parametrize("n_dims", [0, 4, -1, 2**31 - 1])
def test_bad_n_dims(v7, n_dims):
    r = v7.records["blocks.0.ln1.bias"]
    expect_file_error(v7.i32(r.start, n_dims).write("ndims.bin"), "dimensions", str(n_dims))


@pytest.mark.parametrize("name_len", [0, -1, 1 << 20, 2**31 - 1])
def test_bad_name_length(v7, name_len):
    r = v7.records["blocks.0.ln1.bias"]
    expect_file_error(v7.i32(r.name_len_at, name_len).write("namelen.bin"), "name", str(name_len))


@pytest.mark.parametrize("size", [0, -1, -(2**31)])
def test_bad_size(v7, size):
    r = v7.records["blocks.0.att.key.weight"]
    expect_file_error(v7.i32(r.sizes_at, size).write("size.bin"), "size", str(size))


def test_huge_sizes(v7):
    r = v7.records["blocks.0.att.key.weight"]
    v7.i32(r.sizes_at, 2**31 - 1).i32(r.sizes_at + 4, 2**31 - 1)
    expect_file_error(v7.write("huge.bin"), ("large", "truncated", "remain"))


@pytest.mark.parametrize("bad", [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\x00", b"\xe2\x82"])
def test_name_not_utf8(v7, bad):
    r = v7.records["blocks.0.att.key.weight"]
    v7.blob[r.name_at : r.name_at + len(bad)] = bad
    expect_file_error(v7.write("utf8.bin"), "utf-8")


def test_non_ascii_path_in_message(v7, tmp_path):
    path = v7.i32(MAGIC, 0).write("modèle-ü.bin")
    expect_file_error(path, "magic")


# ------------------------------------------------------------------------ tensors and shapes


@pytest.mark.parametrize(
    "tensor",
    ["emb.weight", "blocks.0.ln0.bias", "blocks.1.att.key.weight", "blocks.1.att.v2", "blocks.0.att.r_k",
     "blocks.1.ffn.x_k", "ln_out.weight", "head.weight"],
)
def test_missing_tensor(v7, tensor):
    message = expect_file_error(v7.write("missing.bin", v7.without(tensor)), "missing")
    if tensor == "blocks.0.att.r_k":  # without r_k the file reads as another architecture
        assert "blocks.0." in message
    else:
        assert f"'{tensor}'" in message


@pytest.mark.parametrize(
    "arch,tensor",
    [("v4", "blocks.0.att.time_first"), ("v5.1", "blocks.1.att.ln_x.bias"), ("v5.2", "blocks.0.att.time_faaaa"),
     ("v6", "blocks.1.att.time_maa_w2"), ("v6", "blocks.0.ffn.time_maa_r")],
)
def test_missing_tensor_other_arches(model_files, tmp_path, arch, tensor):
    d = Damage(model_files[arch].fp32, tmp_path)
    # Without its time_faaaa, a v5 file is looked at for the older time_first (message quality:
    # naming time_first for a v5.2 file is a little misleading, but still points at the bonus).
    names = (tensor, tensor.replace("time_faaaa", "time_first"))
    expect_file_error(d.write("missing.bin", d.without(tensor)), "missing", names)


def _write_with(path, checkpoint, replace: dict, dtype=fmt.FP16, n_layer=2, n_embed=None):
    """Writes a checkpoint's file with some (transformed) tensors replaced by other arrays."""
    tensors = list(transform_checkpoint(checkpoint))
    n_vocab, C = tensors[0][1].shape
    with BinWriter(path, n_vocab, n_embed or C, n_layer, dtype) as w:
        for name, array in tensors:
            array = replace.get(name, array)
            fp16 = dtype == fmt.FP16 and fp16_in_file(name, array.shape)
            w.write_tensor(name, array, fmt.FP16 if fp16 else fmt.FP32)
    return path


@pytest.mark.parametrize(
    "tensor,shape",
    [
        ("blocks.0.att.key.weight", (128, 192)),
        ("blocks.0.att.key.weight", (192, 128)),
        ("blocks.0.att.key.weight", (128 * 128,)),
        ("blocks.1.ln2.weight", (64,)),
        ("blocks.1.att.x_rwkvag", (5, 1, 128)),
        ("blocks.0.att.w2", (64, 64)),
        ("blocks.1.ffn.value.weight", (128, 256)),  # does not match ffn.key's 512
        ("emb.weight", (255, 128)),
        ("head.weight", (256, 64)),
    ],
)
def test_wrong_shape(model_files, tmp_path, tensor, shape):
    s = model_files["v7"]
    path = _write_with(tmp_path / "shape.bin", s.checkpoint, {tensor: np.zeros(shape, np.float32)})
    expect_file_error(path, tensor, ("shape", "elements"))


def test_wrong_shape_v6_lora(model_files, tmp_path):
    s = model_files["v6"]
    path = _write_with(tmp_path / "shape.bin", s.checkpoint, {"blocks.0.att.time_maa_w2": np.zeros((5, 32, 64), np.float32)})
    expect_file_error(path, "blocks.0.att.time_maa_w2", "shape")


def test_duplicate_tensor(v7):
    extra = v7.record_bytes("blocks.0.ln1.weight")
    message = expect_file_error(v7.write("dup.bin", bytes(v7.blob) + extra), ("twice", "duplicate"))
    assert "blocks.0.ln1.weight" in message
    # A duplicate in the middle, too.
    r = v7.records["blocks.1.att.key.weight"]
    blob = v7.blob[: r.end] + v7.record_bytes("blocks.1.att.key.weight") + v7.blob[r.end :]
    expect_file_error(v7.write("dup2.bin", blob), ("twice", "duplicate"), "blocks.1.att.key.weight")


def test_many_small_records_are_checked_in_linear_time(v7):
    """300,000 one-element records (10 MB) after a valid model: the duplicate-name check once
    compared every pair (over 120 s for this file); now it sorts. The load fails on the first
    extra tensor the model does not know, or on the duplicate planted last."""
    import subprocess
    import sys

    records = [struct.pack("<iii", 1, 10, 0) + struct.pack("<i", 1) + f"x{i:09d}".encode() + b"\0" * 4
               for i in range(300_000)]
    records.append(records[123_456])
    path = v7.write("many.bin", bytes(v7.blob) + b"".join(records))
    code = f"from rwkvcpp.model import Model\ntry:\n    Model({str(path)!r}, threads=1)\nexcept Exception as e:\n" \
           f"    print(e)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "x000123456' appears twice" in done.stdout, (done.stdout, done.stderr[-2000:])


def test_header_n_layer_disagrees(v7, v4):
    # Fewer layers than the file holds.
    expect_file_error(v7.i32(N_LAYER, 1).write("layers1.bin"), "n_layer")
    expect_file_error(v4.i32(N_LAYER, 1).write("layers1-v4.bin"), "n_layer")
    # More layers than the file holds: the first tensor of layer 2 is missing.
    for n_layer in (3, 100, 10**6):
        message = expect_file_error(v7.i32(N_LAYER, n_layer).write("layers.bin"), ("n_layer", "missing"))
        assert "n_layer" in message or "blocks.2." in message


@pytest.mark.parametrize("n_layer", [10**8, 2**31 - 1])
def test_header_n_layer_huge(v7, n_layer):
    message = expect_file_error(v7.i32(N_LAYER, n_layer).write("layers.bin"), ("n_layer", "missing"))
    assert "n_layer" in message or "blocks.2." in message


def test_header_n_vocab_or_n_embed_disagree(v7):
    for n_vocab in (255, 257, 2**31 - 1):
        expect_file_error(v7.i32(N_VOCAB, n_vocab).write("vocab.bin"), "emb.weight", "shape")
    for n_embed in (192, 64):
        expect_file_error(v7.i32(N_EMBED, n_embed).write("embed.bin"), ("shape", "elements"))


HEAD_TENSORS = {"v5.1": "att.time_decay", "v5.2": "att.time_decay", "v6": "att.time_decay", "v7": "att.r_k"}


@pytest.mark.parametrize("arch", ["v5.1", "v5.2", "v6", "v7"])
def test_n_embed_not_divisible_by_the_head_count(model_files, tmp_path, arch):
    """The files have 2 heads (the outermost size of the head tensor); a header n_embed they do
    not divide is refused naming that tensor."""
    d = Damage(model_files[arch].fp32, tmp_path)
    for n_embed in (127, 99, 129):
        expect_file_error(d.i32(N_EMBED, n_embed).write("embed.bin"), "n_embed", str(n_embed), "2 heads",
                          f"blocks.0.{HEAD_TENSORS[arch]}")


def _head_tensor(arch, n_head, size):
    """A head tensor of the file's shape for `n_head` heads of `size`: v5/v6 (H, S, 1), v7 (H, S)."""
    return np.full((n_head, size) if arch == "v7" else (n_head, size, 1), 0.5, np.float32)


@pytest.mark.parametrize("arch", ["v5.2", "v6", "v7"])
def test_head_tensor_that_does_not_fit(model_files, tmp_path, arch):
    s = model_files[arch]
    layer0, layer1 = f"blocks.0.{HEAD_TENSORS[arch]}", f"blocks.1.{HEAD_TENSORS[arch]}"
    # 3 heads of 43 = 129 values: 3 does not divide n_embed 128.
    path = _write_with(tmp_path / "three.bin", s.checkpoint, {layer0: _head_tensor(arch, 3, 43)}, fmt.FP32)
    expect_file_error(path, layer0, "3 heads", "n_embed 128")
    # Layer 1 with 4 heads of 32 (the right number of values) while layer 0 has 2 of 64.
    path = _write_with(tmp_path / "four.bin", s.checkpoint, {layer1: _head_tensor(arch, 4, 32)}, fmt.FP32)
    expect_file_error(path, layer1, "4 heads", "layer 0 has 2")


@pytest.mark.parametrize("arch", ["v5.2", "v6", "v7"])
def test_flat_head_tensor_means_heads_of_64(model_files, tmp_path, arch):
    """A head tensor stored flat, (n_embed), does not give the head count: heads of 64, the size of
    every released model, with the same logits as the file that says so."""
    s = model_files[arch]
    records = dict(transform_checkpoint(s.checkpoint))
    flat = {name: records[name].reshape(-1) for name in (f"blocks.{i}.{HEAD_TENSORS[arch]}" for i in range(2))}
    path = _write_with(tmp_path / "flat.bin", s.checkpoint, flat, fmt.FP32)
    model, original = Model(path, threads=1), Model(s.fp32, threads=1)
    assert (model.n_head, model.head_size) == (original.n_head, original.head_size) == (2, 64)
    np.testing.assert_array_equal(model.eval_sequence([1, 2, 3])[0], original.eval_sequence([1, 2, 3])[0])
    # With n_embed not a multiple of 64, a flat head tensor leaves the head count unknown.
    d = Damage(path, tmp_path)
    expect_file_error(d.i32(N_EMBED, 96).write("flat96.bin"), f"blocks.0.{HEAD_TENSORS[arch]}", "head count", "64")


def test_v4_n_embed_need_not_be_a_multiple_of_64(tmp_path):
    from support.checkpoints import make_checkpoint

    from rwkvcpp.writer import write_model

    path = tmp_path / "v4-96.bin"
    write_model(path, make_checkpoint("v4", n_layer=1, n_embed=96, n_vocab=64), dtype="FP32")
    model = Model(path, threads=1)
    assert (model.arch, model.n_embed) == ("v4", 96)
    assert np.all(np.isfinite(model.eval(3)[0]))


# ------------------------------------------------------------------------------ quantized


def _q8_0(array: np.ndarray) -> bytes:
    """Q8_0 blocks of a float array (rows along the last dimension): half d, then 32 int8."""
    blocks = array.astype(np.float32).reshape(-1, 32)
    amax = np.max(np.abs(blocks), axis=1, keepdims=True)
    d = amax / 127
    q = np.round(np.divide(blocks, d, out=np.zeros_like(blocks), where=d > 0)).astype(np.int8)
    out = np.empty((blocks.shape[0], 34), np.uint8)
    out[:, :2] = d.astype("<f2").view(np.uint8)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def _write_quantized(path, checkpoint, quantize=("att.key.weight", "att.value.weight", "ffn.key.weight")):
    tensors = list(transform_checkpoint(checkpoint))
    n_vocab, C = tensors[0][1].shape
    with BinWriter(path, n_vocab, C, 2, fmt.Q8_0) as w:
        for name, array in tensors:
            if name.endswith(quantize):
                w.write_raw(name, fmt.Q8_0, array.shape, _q8_0(array))
            else:
                w.write_tensor(name, array, fmt.FP16 if fp16_in_file(name, array.shape) else fmt.FP32)
    return path


@pytest.mark.parametrize("arch", ["v4", "v7"])
def test_quantized_tensor_in_version_100_file(model_files, tmp_path, arch):
    path = _write_quantized(tmp_path / "q8.bin", model_files[arch].checkpoint)
    # As version 101 it loads, and follows the FP32 model roughly.
    model = Model(path, threads=1)
    assert model.dtype == "Q8_0"
    logits = model.eval_sequence([1, 2, 3])[0]
    expected = Model(model_files[arch].fp32, threads=1).eval_sequence([1, 2, 3])[0]
    assert np.max(np.abs(logits - expected)) < 0.5
    # As version 100, its blocks would be in the older layout: refused, saying what to do.
    d = Damage(path, tmp_path)
    message = expect_file_error(d.i32(VERSION, 100).write("q8-v100.bin"), "re-quantize", "100")
    assert "Q8_0" in message and "blocks.0.att.key.weight" in message


def test_quantized_innermost_size_not_multiple_of_32(v7):
    # ln1.weight is (128,) FP32 = 512 bytes; as Q8_0 of 16 elements x 32 it would be 4 blocks, but
    # an innermost size of 100 is not a whole number of blocks.
    r = v7.records["blocks.0.ln1.weight"]
    v7.i32(r.sizes_at, 100).i32(r.type_at, fmt.Q8_0)
    expect_file_error(v7.write("q-not-32.bin"), "multiple of 32", "blocks.0.ln1.weight")


def test_v6_decay_w2_is_accepted_in_either_orientation(tmp_path):
    """rwkv.cpp's converter stores v6 time_decay_w2 transposed, (C, 64); files that kept the
    PyTorch (64, C) layout must run the same model."""
    from support.checkpoints import make_checkpoint
    from support.reference import Reference

    checkpoint = make_checkpoint("v6", n_layer=2, n_embed=128, n_vocab=256, seed=1)
    path = tmp_path / "w2-untransposed.bin"
    with BinWriter(path, 256, 128, 2, 0) as writer:
        for name, array in transform_checkpoint(checkpoint):
            if name.endswith("time_decay_w2"):
                assert array.shape == (128, 64)
                array = np.ascontiguousarray(array.T)
            writer.write_tensor(name, array)
    tokens = list(range(1, 33))
    logits, _ = Model(path, threads=2).eval_sequence(tokens, all_logits=True)
    reference = Reference(checkpoint)
    expected, _ = reference.eval_sequence(tokens, reference.init_state())
    assert np.abs(logits - expected).max() <= 1e-4  # float32 engine vs float64 reference
