"""rwkvcpp.writer builds .bin files that rwkvcpp.format reads back as docs/FORMAT.md describes.

Expected names, shapes and types are derived here from docs/FORMAT.md directly (not from the writer's
own transform code), and values are checked against the raw checkpoint.
"""

import os
import struct

import numpy as np
import pytest

from support.checkpoints import ARCHES, HEAD_SIZE, make_checkpoint, v7_lora_dims
from rwkvcpp import format as fmt
from rwkvcpp.arch import detect
from rwkvcpp.conversion.transform import transform_checkpoint
from rwkvcpp.writer import BinWriter, write_model

C, V, L = 128, 256, 2
H = C // HEAD_SIZE

V7_MIXES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
V7_LORA = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
FP32_FRAGMENTS = (".time_", ".k_k", ".k_a", ".r_k", ".x_rwkvag", ".x_k", ".w0", ".a0", ".v0")


@pytest.fixture(scope="module")
def checkpoints():
    return {arch: make_checkpoint(arch, n_layer=L, n_embed=C, n_vocab=V) for arch in ARCHES}


def expected_records(arch, checkpoint):
    """(name, shape) of every record, in file order, per docs/FORMAT.md."""
    records = []
    for name, value in checkpoint.items():
        shape = tuple(value.shape)
        leaf = name.split(".att.")[-1] if ".att." in name else None
        if ".time_" in name:
            shape = tuple(s for s in shape if s != 1)
        if arch == "v5.1" and leaf in ("time_decay", "time_first"):
            shape = (H, 1, 1)
        elif arch == "v5.2" and leaf in ("time_decay", "time_faaaa"):
            shape = (H, 64, 1)
        elif arch == "v6":
            if leaf in ("time_decay", "time_faaaa"):
                shape = (H, 64, 1)
            elif leaf in ("time_maa_w1", "time_decay_w1", "time_decay_w2"):  # w2: see arch/v6.py
                shape = shape[::-1]
            elif leaf == "time_maa_w2":
                shape = (shape[0], shape[2], shape[1])
        elif arch == "v7":
            if leaf in V7_MIXES:
                if leaf != "x_r":
                    continue
                name, shape = name.replace(".x_r", ".x_rwkvag"), (6, 1, C)
            elif leaf in V7_LORA:
                shape = shape[::-1]
        records.append((name, shape))
    return records


def expected_type(name, shape, dtype):
    if dtype == "FP32" or len(shape) != 2 or any(f in name for f in FP32_FRAGMENTS):
        return fmt.FP32
    return fmt.FP16


@pytest.mark.parametrize("dtype", ["FP16", "FP32"])
@pytest.mark.parametrize("arch", ARCHES)
def test_write_model_round_trip(arch, dtype, checkpoints, tmp_path):
    checkpoint = checkpoints[arch]
    path = tmp_path / "model.bin"
    write_model(path, checkpoint, dtype=dtype)

    assert sorted(os.listdir(tmp_path)) == ["model.bin"], "temporary file left behind"
    header = fmt.read_header(path)
    assert header == fmt.Header(fmt.VERSION, V, C, L, fmt.type_id(dtype))

    records = fmt.load_records(path)
    expected = expected_records(arch, checkpoint)
    assert [r.name for r in records] == [name for name, _ in expected]
    assert [r.shape for r in records] == [shape for _, shape in expected]
    assert [r.type_id for r in records] == [expected_type(n, s, dtype) for n, s in expected]
    # Records are packed back to back up to EOF.
    assert records[-1].offset + records[-1].nbytes == os.path.getsize(path)

    transformed = dict(transform_checkpoint(checkpoint))
    with open(path, "rb") as f:
        data = f.read()
    for record in records:
        stored = fmt.read_tensor_f32(path, record)
        want = transformed[record.name]
        assert stored.dtype == np.float32 and stored.shape == record.shape
        if record.type_id == fmt.FP16:
            want = want.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(stored, want, err_msg=record.name)
        # Reading from a buffer gives the same as reading from the path.
        np.testing.assert_array_equal(fmt.read_tensor_f32(data, record), stored)


@pytest.mark.parametrize("arch", ARCHES)
def test_transform_values(arch, checkpoints):
    """The value transforms of docs/FORMAT.md, checked against the raw checkpoint."""
    raw = checkpoints[arch]
    out = dict(transform_checkpoint(raw))
    assert all(a.dtype == np.float32 for a in out.values())
    p = "blocks.1.att."
    if arch == "v4":
        np.testing.assert_allclose(out[p + "time_decay"], -np.exp(raw[p + "time_decay"]), rtol=1e-6)
        np.testing.assert_array_equal(out[p + "time_first"], raw[p + "time_first"])
        np.testing.assert_array_equal(out[p + "time_mix_k"], raw[p + "time_mix_k"].reshape(C))
    elif arch == "v5.1":
        np.testing.assert_allclose(out[p + "time_decay"].ravel(), np.exp(-np.exp(raw[p + "time_decay"])), rtol=1e-6)
        np.testing.assert_allclose(out[p + "time_first"].ravel(), np.exp(raw[p + "time_first"]), rtol=1e-6)
    elif arch == "v5.2":
        np.testing.assert_allclose(
            out[p + "time_decay"][:, :, 0], np.exp(-np.exp(raw[p + "time_decay"])), rtol=1e-6
        )
        np.testing.assert_array_equal(out[p + "time_faaaa"][:, :, 0], raw[p + "time_faaaa"])
    elif arch == "v6":
        np.testing.assert_array_equal(out[p + "time_decay"].ravel(), raw[p + "time_decay"].ravel())
        np.testing.assert_array_equal(out[p + "time_maa_w1"], raw[p + "time_maa_w1"].T)
        np.testing.assert_array_equal(out[p + "time_decay_w1"], raw[p + "time_decay_w1"].T)
        np.testing.assert_array_equal(out[p + "time_decay_w2"], raw[p + "time_decay_w2"].T)
        np.testing.assert_array_equal(out[p + "time_maa_w2"], raw[p + "time_maa_w2"].transpose(0, 2, 1))
        np.testing.assert_array_equal(out["blocks.0.ffn.time_maa_k"], raw["blocks.0.ffn.time_maa_k"].ravel())
    elif arch == "v7":
        mixes = np.concatenate([raw[p + m] for m in V7_MIXES], axis=0)
        np.testing.assert_array_equal(out[p + "x_rwkvag"], mixes)
        assert not any(name.endswith(V7_MIXES) for name in out if ".att." in name)
        for m in V7_LORA:
            np.testing.assert_array_equal(out[p + m], raw[p + m].T)
        assert "blocks.0.att.v0" not in out and "blocks.1.att.v0" in out
        np.testing.assert_array_equal(out[p + "r_k"], raw[p + "r_k"])
        dims = v7_lora_dims(C)
        assert out[p + "w1"].shape == (dims["w"], C)
    # Untouched tensors pass through unchanged.
    np.testing.assert_array_equal(out["head.weight"], raw["head.weight"])
    np.testing.assert_array_equal(out["blocks.0.ln0.weight"], raw["blocks.0.ln0.weight"])


def test_detect_arch(checkpoints):
    for arch, checkpoint in checkpoints.items():
        assert detect(checkpoint).name == arch


def test_input_dtypes_are_widened(tmp_path, checkpoints):
    """float16/float64 inputs give the same file as float32 ones."""
    checkpoint = checkpoints["v5.2"]
    write_model(tmp_path / "a.bin", checkpoint)
    as_f64 = {k: v.astype(np.float64) for k, v in checkpoint.items()}
    write_model(tmp_path / "b.bin", as_f64)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    small = dict(checkpoint, **{"head.weight": checkpoint["head.weight"].astype(np.float16)})
    write_model(tmp_path / "c.bin", small)  # head is FP16 in the file either way
    assert (tmp_path / "c.bin").read_bytes() == (tmp_path / "a.bin").read_bytes()


# ------------------------------------------------------------------------------ failures


def test_missing_emb_weight(tmp_path, checkpoints):
    checkpoint = {k: v for k, v in checkpoints["v4"].items() if k != "emb.weight"}
    with pytest.raises(ValueError, match="emb.weight"):
        write_model(tmp_path / "m.bin", checkpoint)
    assert os.listdir(tmp_path) == []


def test_failure_midway_leaves_nothing(tmp_path, checkpoints):
    """A tensor that cannot be converted (ints) stops the write after some records were written."""
    checkpoint = dict(checkpoints["v6"])
    checkpoint["blocks.1.att.key.weight"] = np.zeros((C, C), dtype=np.int32)
    dst = tmp_path / "m.bin"
    with pytest.raises(ValueError, match=r"blocks\.1\.att\.key\.weight.*int32"):
        write_model(dst, checkpoint)
    assert os.listdir(tmp_path) == []

    # An existing destination is left exactly as it was.
    dst.write_bytes(b"old contents")
    with pytest.raises(ValueError):
        write_model(dst, checkpoint)
    assert os.listdir(tmp_path) == ["m.bin"]
    assert dst.read_bytes() == b"old contents"


def test_exception_inside_writer_block(tmp_path):
    dst = tmp_path / "m.bin"
    with pytest.raises(RuntimeError):
        with BinWriter(dst, 4, 32, 1, "FP32") as w:
            w.write_tensor("emb.weight", np.ones((4, 32), np.float32))
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_write_model_errors(tmp_path, checkpoints):
    checkpoint = checkpoints["v4"]
    with pytest.raises(ValueError, match="Q4_0"):
        write_model(tmp_path / "m.bin", checkpoint, dtype="Q4_0")
    with pytest.raises(ValueError, match="valid names"):
        write_model(tmp_path / "m.bin", checkpoint, dtype="fp8")
    no_layers = {k: v for k, v in checkpoint.items() if not k.startswith("blocks.")}
    with pytest.raises(ValueError, match="ln1"):
        write_model(tmp_path / "m.bin", no_layers)
    with pytest.raises(ValueError, match="FP16 range"):
        write_model(tmp_path / "m.bin", dict(checkpoint, **{"head.weight": checkpoint["head.weight"] * 1e6}))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------- BinWriter and format


def test_bin_writer_bytes_are_little_endian(tmp_path):
    dst = tmp_path / "m.bin"
    with BinWriter(dst, 10, 32, 1, "fp16") as w:
        w.write_tensor("a", np.arange(6, dtype=np.float32).reshape(2, 3))
        w.write_tensor("b", np.array([1.5, -2.0], dtype=np.float16))
    data = dst.read_bytes()
    assert data[:4] == b"fmgg"
    assert struct.unpack("<6i", data[:24]) == (fmt.MAGIC, 101, 10, 32, 1, fmt.FP16)
    # Record a: n_dims 2, name_len 1, FP32, sizes innermost first (3, 2), name, data row-major.
    assert struct.unpack("<5i", data[24:44]) == (2, 1, fmt.FP32, 3, 2)
    assert data[44:45] == b"a"
    assert data[45:69] == np.arange(6, dtype="<f4").tobytes()
    assert struct.unpack("<4i", data[69:85]) == (1, 1, fmt.FP16, 2)
    assert data[86:90] == np.array([1.5, -2.0], dtype="<f2").tobytes()
    assert len(data) == 90


def test_write_raw_quantized(tmp_path):
    dst = tmp_path / "m.bin"
    blocks = bytes(range(34)) * 4  # 2 rows of 64 Q8_0 elements = 4 blocks
    with BinWriter(dst, 10, 64, 1, "Q8_0") as w:
        w.write_raw("blocks.0.ffn.key.weight", "Q8_0", (2, 64), blocks)
        with pytest.raises(ValueError, match="needs 136 bytes"):
            w.write_raw("x", fmt.Q8_0, (2, 64), blocks[:-1])
        with pytest.raises(ValueError, match="multiple of 32"):
            w.write_raw("y", fmt.Q4_0, (2, 48), b"")
        with pytest.raises(ValueError, match="write_raw"):
            w.write_tensor("z", np.zeros((2, 64), np.float32), "Q4_0")
        with pytest.raises(ValueError, match="twice"):
            w.write_tensor("blocks.0.ffn.key.weight", np.zeros(3, np.float32))
    (record,) = fmt.load_records(dst)
    assert record == fmt.Record("blocks.0.ffn.key.weight", fmt.Q8_0, (2, 64), record.offset, 136)
    assert record.type_name == "Q8_0"
    assert fmt.read_tensor(dst, record).tobytes() == blocks
    with pytest.raises(ValueError, match="only FP32/FP16"):
        fmt.read_tensor_f32(dst, record)


def test_type_table():
    assert fmt.type_id("q5_1") == 8 and fmt.type_id("FP16") == 1 and fmt.type_id(" Fp32 ") == 0
    with pytest.raises(ValueError, match="FP32, FP16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0"):
        fmt.type_id("Q4_2")
    assert fmt.tensor_nbytes(fmt.FP32, (3, 5)) == 60
    assert fmt.tensor_nbytes(fmt.FP16, (7,)) == 14
    assert fmt.tensor_nbytes(fmt.Q4_0, (2, 64)) == 4 * 18
    assert fmt.tensor_nbytes(fmt.Q4_1, (32,)) == 20
    assert fmt.tensor_nbytes(fmt.Q5_0, (32,)) == 22
    assert fmt.tensor_nbytes(fmt.Q5_1, (32,)) == 24
    assert fmt.tensor_nbytes(fmt.Q8_0, (3, 32)) == 3 * 34
    with pytest.raises(ValueError):
        fmt.tensor_nbytes(fmt.Q8_0, (32, 3))


def _small_file(tmp_path, version=101, type_id=fmt.FP32):
    path = tmp_path / "small.bin"
    with open(path, "wb") as f:
        f.write(struct.pack("<6i", fmt.MAGIC, version, 4, 32, 1, type_id))
        f.write(struct.pack("<4i", 1, 3, type_id, 32) + b"abc")
        f.write(b"\0" * fmt.tensor_nbytes(type_id, (32,)))
    return path


def _corrupt(path, offset, value, fmt_="<i"):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt_, data, offset, value)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "offset, value, message",
    [
        (0, 0x12345678, "magic"),
        (4, 102, "version 102"),
        (12, 0, "n_embed"),
        (20, 5, "Q4_2"),  # header data_type: a retired format
        (24, 4, "n_dims 4"),
        (24, 0, "n_dims 0"),
        (28, 0, "name length 0"),
        (28, 1 << 20, "name length"),
        (32, 11, "type 11"),
        (36, -32, "non-positive sizes"),
        (36, 33, "truncated"),
    ],
)
def test_reader_rejects_corrupt_files(tmp_path, offset, value, message):
    path = _small_file(tmp_path)
    assert [r.name for r in fmt.load_records(path)] == ["abc"]
    _corrupt(path, offset, value)
    with pytest.raises(ValueError, match=message) as info:
        fmt.load_records(path)
    assert str(path) in str(info.value)


def test_reader_rejects_bad_names_and_truncation(tmp_path):
    path = _small_file(tmp_path)
    _corrupt(path, 40, 0xFF, "<B")  # first name byte: not UTF-8
    with pytest.raises(ValueError, match="UTF-8"):
        fmt.load_records(path)
    path = _small_file(tmp_path)
    path.write_bytes(path.read_bytes()[:30])  # cut inside a record header
    with pytest.raises(ValueError, match="truncated"):
        fmt.load_records(path)
    path.write_bytes(path.read_bytes()[:10])  # cut inside the file header
    with pytest.raises(ValueError, match="truncated"):
        fmt.read_header(path)


def test_reader_version_100(tmp_path):
    path = _small_file(tmp_path, version=100, type_id=fmt.FP16)
    (record,) = fmt.load_records(path)
    assert fmt.read_header(path).version == 100
    assert fmt.read_tensor_f32(path, record).shape == (32,)
    path = _small_file(tmp_path, version=100, type_id=fmt.Q4_0)
    with pytest.raises(ValueError, match="version-100"):
        fmt.load_records(path)
