"""Checkpoint readers: torch zip and legacy files, safetensors, sharded folders, HF names, and
the restricted unpickler's refusals. Files are written both by torch (when installed) and by the
torch-free writer in pth_writer.py, so CI without torch still exercises the reader."""

import json
import os
import pickle
import re
import struct
import sys
import tracemalloc
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from support import pth_writer as pw  # noqa: E402

from rwkvcpp.conversion.hf import hf_to_native_name, is_hf_layout, to_native_names  # noqa: E402
from rwkvcpp.conversion.lazy import CheckpointError, LazyCheckpoint, LazyTensor, UnsafeCheckpointError  # noqa: E402
from rwkvcpp.conversion.load import load_checkpoint  # noqa: E402
from rwkvcpp.conversion.safetensors import read_safetensors  # noqa: E402
from rwkvcpp.conversion.schema import model_order  # noqa: E402

try:
    import torch
except ImportError:  # the reader must work without it; torch-written cases are skipped
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

DTYPES = ["float32", "float16", "bfloat16"]


def representable(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded to what ``dtype`` holds, so expected results are exact."""
    values = np.asarray(values, np.float32)
    if dtype == "float16":
        return values.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return (pw.to_bf16_bits(values).astype(np.uint32) << 16).view(np.float32)
    return values


def sample(shape, seed: int, dtype: str = "float32") -> np.ndarray:
    return representable(np.random.default_rng(seed).standard_normal(shape), dtype)


def assert_same(checkpoint, expected: dict, dtype=None):
    assert list(checkpoint) == list(expected)
    for name, want in expected.items():
        got = checkpoint[name]
        assert checkpoint.shape_of(name) == want.shape, name
        if dtype is not None:
            assert checkpoint.dtype_of(name) == dtype
        assert got.dtype == np.float32 and got.flags.c_contiguous, name
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


# ------------------------------------------------------------------------ torch-free writer


def writer_tensors(dtype: str):
    """(expected float32 arrays, WTensors to write): contiguous, transposed, offset, 0-d, empty."""
    expected = OrderedDict(
        [
            ("emb.weight", sample((16, 8), 1, dtype)),
            ("blocks.0.ln1.weight", sample((8,), 2, dtype)),
            ("blocks.0.att.time_mix_k", sample((1, 1, 8), 3, dtype)),
            ("blocks.0.att.key.weight", sample((8, 12), 4, dtype)),
            ("blocks.0.att.value.weight", sample((6, 8), 5, dtype)),
            ("scalar", sample((), 6, dtype)),
            ("empty", np.zeros((0, 4), np.float32)),
        ]
    )
    options = {
        "blocks.0.ln1.weight": {"parameter": True},
        "blocks.0.att.key.weight": {"transpose": True},
        "blocks.0.att.value.weight": {"offset": 5},
    }
    tensors = {n: pw.tensor(v, dtype, **options.get(n, {})) for n, v in expected.items()}
    return expected, tensors


@pytest.mark.parametrize("dtype", DTYPES)
def test_zip_from_torch_free_writer(tmp_path, dtype):
    expected, tensors = writer_tensors(dtype)
    assert tensors["blocks.0.att.key.weight"].strides == (1, 8)  # really non-contiguous
    path = tmp_path / "model.pth"
    pw.write_pth(path, tensors)
    checkpoint = load_checkpoint(path)
    assert isinstance(checkpoint, LazyCheckpoint)
    assert_same(checkpoint, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_legacy_from_torch_free_writer(tmp_path, dtype):
    expected, tensors = writer_tensors(dtype)
    path = tmp_path / "old.pth"
    pw.write_legacy_pth(path, tensors)
    assert_same(load_checkpoint(path), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_big_endian_zip(tmp_path, dtype):
    expected, tensors = writer_tensors(dtype)
    path = tmp_path / "be.pth"
    pw.write_pth(path, tensors, big_endian=True)
    assert_same(load_checkpoint(path), expected, dtype)


def test_shared_storage(tmp_path):
    # Two tensors viewing one storage at different offsets, as torch saves slices of one tensor.
    values = sample((20,), 7)
    storage = pw.encode(values, "float32")
    tensors = {
        "a": pw.WTensor(storage, "float32", (8,), (1,), 0, storage_key="s"),
        "b": pw.WTensor(storage, "float32", (3, 4), (4, 1), 8, storage_key="s"),
        "b_t": pw.WTensor(storage, "float32", (4, 3), (1, 4), 8, storage_key="s"),
    }
    path = tmp_path / "shared.pth"
    pw.write_pth(path, tensors)
    with zipfile.ZipFile(path) as zf:
        assert [n for n in zf.namelist() if "/data/" in n] == ["archive/data/s"]
    expected = {"a": values[:8], "b": values[8:].reshape(3, 4), "b_t": values[8:].reshape(3, 4).T}
    assert_same(load_checkpoint(path), expected)


def test_wrapped_state_dict(tmp_path):
    expected, tensors = writer_tensors("float32")
    path = tmp_path / "lightning.ckpt"
    pw.write_pth(path, tensors, wrap="state_dict")
    assert_same(load_checkpoint(path), expected)


def test_compressed_zip_members(tmp_path):
    # torch never compresses, but a re-zipped checkpoint may be; it is read through zipfile.
    expected, tensors = writer_tensors("bfloat16")
    path = tmp_path / "deflated.pth"
    pw.write_pth(path, tensors, compression=zipfile.ZIP_DEFLATED)
    assert_same(load_checkpoint(path), expected, "bfloat16")


def test_mapping_does_not_read_data(tmp_path, monkeypatch):
    expected, tensors = writer_tensors("bfloat16")
    path = tmp_path / "model.pth"
    pw.write_pth(path, tensors)

    def no_reading(self):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(LazyTensor, "numpy", no_reading)
    checkpoint = load_checkpoint(path)
    assert len(checkpoint) == len(expected)
    assert "emb.weight" in checkpoint and "nope" not in checkpoint
    assert list(checkpoint.keys()) == list(expected)
    assert checkpoint.shape_of("blocks.0.att.key.weight") == (8, 12)
    assert checkpoint.dtype_of("emb.weight") == "bfloat16"
    assert checkpoint.tensor("emb.weight").nbytes == 16 * 8 * 2


def test_items_give_float32_arrays(tmp_path):
    expected, tensors = writer_tensors("float16")
    path = tmp_path / "model.pth"
    pw.write_pth(path, tensors)
    materialised = dict(load_checkpoint(path).items())
    assert list(materialised) == list(expected)
    for name, array in materialised.items():
        assert isinstance(array, np.ndarray) and array.dtype == np.float32
        np.testing.assert_array_equal(array, expected[name])


@pytest.mark.parametrize("chunk", [6, 1000, 4096])
def test_chunked_conversion(tmp_path, monkeypatch, chunk):
    # Contiguous tensors are converted chunk by chunk, releasing source pages as they go; make
    # the chunks small (and not page-sized) so a few-KB tensor takes many of them.
    from rwkvcpp.conversion import lazy

    monkeypatch.setattr(lazy, "_CHUNK_BYTES", chunk)
    expected, tensors = writer_tensors("bfloat16")
    expected["big"] = sample((64, 100), 9, "bfloat16")
    tensors["big"] = pw.tensor(expected["big"], "bfloat16", offset=3)
    path = tmp_path / "model.pth"
    pw.write_pth(path, tensors)
    assert_same(load_checkpoint(path), expected, "bfloat16")


def test_memory_stays_at_one_tensor(tmp_path):
    # 8 bf16 tensors of 256 KiB each as float32: opening reads none, and reading them one after
    # the other never holds more than about one.
    tensors = {f"blocks.{i}.w": pw.tensor(sample((256, 256), i, "bfloat16"), "bfloat16")
               for i in range(8)}
    path = tmp_path / "big.pth"
    pw.write_pth(path, tensors)
    one_tensor = 256 * 256 * 4
    tracemalloc.start()
    try:
        checkpoint = load_checkpoint(path)
        _, peak = tracemalloc.get_traced_memory()
        assert peak < one_tensor // 4, f"opening allocated {peak} bytes"
        tracemalloc.reset_peak()
        for name in checkpoint:
            assert checkpoint[name].shape == (256, 256)
        _, peak = tracemalloc.get_traced_memory()
        assert peak < one_tensor * 1.25, f"reading allocated {peak} bytes at once"
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------ files torch writes


def torch_state_dict(dtype: str):
    tdt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, 8, generator=g).to(tdt)
    sd = OrderedDict()
    sd["emb.weight"] = torch.randn(16, 8, generator=g).to(tdt)
    sd["transposed"] = base.t()  # non-contiguous view
    sd["rows"] = base[3:7]  # storage offset into a shared storage
    sd["column"] = base[:, 2]  # strided 1-D
    sd["time_mix"] = torch.randn(1, 1, 8, generator=g).to(tdt)
    sd["param"] = torch.nn.Parameter(torch.randn(8, generator=g).to(tdt))
    sd["scalar"] = torch.tensor(1.5, dtype=tdt)
    sd["empty"] = torch.zeros(0, 4, dtype=tdt)
    sd["expanded"] = torch.randn(1, 8, generator=g).to(tdt).expand(3, 8)  # stride 0
    return sd


@needs_torch
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_save_roundtrip(tmp_path, dtype, legacy):
    sd = torch_state_dict(dtype)
    assert not sd["transposed"].is_contiguous()
    path = tmp_path / "model.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    expected = OrderedDict((k, v.detach().float().numpy()) for k, v in sd.items())
    assert_same(load_checkpoint(path), expected, dtype)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_module_state_dict(tmp_path, dtype):
    # A real module's state_dict carries an OrderedDict with _metadata set through BUILD.
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 6, bias=False)).to(getattr(torch, dtype))
    sd = model.state_dict()
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path)
    expected = OrderedDict((k, v.float().numpy()) for k, v in sd.items())
    assert_same(load_checkpoint(path), expected, dtype)


@needs_torch
def test_torch_reads_what_the_writer_writes(tmp_path):
    # The torch-free writer's files are real torch checkpoints (so its tests mean something).
    expected, tensors = writer_tensors("bfloat16")
    path = tmp_path / "model.pth"
    pw.write_pth(path, tensors)
    loaded = torch.load(path, weights_only=True)
    for name, want in expected.items():
        np.testing.assert_array_equal(loaded[name].detach().float().numpy(), want)
    legacy = tmp_path / "legacy.pth"
    pw.write_legacy_pth(legacy, tensors)
    loaded = torch.load(legacy, weights_only=True)
    for name, want in expected.items():
        np.testing.assert_array_equal(loaded[name].detach().float().numpy(), want)


# ------------------------------------------------------------------------ malicious pickles


def payloads(marker):
    """Pickle trees that would create ``marker`` if unpickled by the pickle module."""
    m = str(marker)
    code = f"open({m!r}, 'w').close()"
    shell = f'"{sys.executable}" -c "open(r\'{m}\', \'w\').close()"'
    return {
        "os.system": pw.Call(pw.Global("os", "system"), (shell,)),
        "posix.system": pw.Call(pw.Global("posix", "system"), (shell,)),
        "builtins.eval": pw.Call(pw.Global("builtins", "eval"), (code,)),
        "builtins.exec": pw.Call(pw.Global("builtins", "exec"), (code,)),
        "__builtin__.eval": pw.Call(pw.Global("__builtin__", "eval"), (code,)),
        "subprocess.Popen": pw.Call(pw.Global("subprocess", "Popen"), ([sys.executable, "-c", code],)),
        "torch.load": pw.Call(pw.Global("torch", "load"), (m,)),
    }


def test_payloads_are_live(tmp_path):
    # Guard for the refusal tests: the same pickle does run code under the plain pickle module.
    marker = tmp_path / "ran"
    pickle.loads(pw.dumps(payloads(marker)["builtins.eval"]))
    assert marker.exists()


def _good_entries(key_prefix="0"):
    t = pw.tensor(sample((4, 4), 0), "float32")
    return t, pw.tensor_node(t, key_prefix)


@pytest.mark.parametrize("placement", ["whole", "value", "hooks"])
@pytest.mark.parametrize("forbidden", list(payloads("x")))
def test_malicious_zip_is_refused(tmp_path, forbidden, placement):
    marker = tmp_path / "pwned"
    payload = payloads(marker)[forbidden]
    t, good = _good_entries()
    if placement == "whole":  # data.pkl is just the payload
        tree = payload
    elif placement == "value":  # next to real tensors in the state dict
        tree = {"emb.weight": good, "evil": payload}
    else:  # hidden in a tensor's backward_hooks argument
        tree = {"emb.weight": pw.Call(pw.Global("torch._utils", "_rebuild_tensor_v2"), (
            pw.storage_pid("0", "float32", 16), 0, (4, 4), (4, 1), False, payload))}
    path = tmp_path / "model.pth"
    pw.write_zip(path, {"data.pkl": pw.dumps(tree), "data/0": t.storage.tobytes(), "version": b"3\n"})
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith("model.pth: refusing to load")
    assert forbidden in message and info.value.forbidden == forbidden
    assert isinstance(info.value, ValueError)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, pickle.HIGHEST_PROTOCOL])
def test_pickle_module_payload_is_refused(tmp_path, protocol):
    # A payload pickled by the pickle module itself (STACK_GLOBAL and FRAME at protocol 4+).
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f'"{sys.executable}" -c "open(r\'{marker}\', \'w\').close()"',))

    data = pickle.dumps({"emb.weight": Evil()}, protocol=protocol)
    zipped = tmp_path / "model.pth"
    pw.write_zip(zipped, {"data.pkl": data})
    raw = tmp_path / "raw.pth"
    raw.write_bytes(data)
    for path in (zipped, raw) if protocol >= 2 else (zipped,):
        with pytest.raises(UnsafeCheckpointError, match=r"refusing to load: .*\bsystem\b"):
            load_checkpoint(path)
    assert not marker.exists()


def test_malicious_legacy_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "old.pth"
    t, _ = _good_entries()
    pw.write_legacy_pth(path, {"w": t}, main_tree={"w": payloads(marker)["subprocess.Popen"]})
    with pytest.raises(UnsafeCheckpointError, match="subprocess.Popen"):
        load_checkpoint(path)
    assert not marker.exists()


def test_copyreg_extension_codes_are_refused(tmp_path):
    # EXT opcodes name globals through the copyreg registry; they must hit the same allowlist.
    import copyreg

    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    copyreg.add_extension("builtins", "eval", 0xF1)
    try:
        data = pickle.PROTO + b"\x02" + pickle.EXT1 + b"\xf1" + pw.dumps((code,))[2:-1] \
            + pickle.REDUCE + pickle.STOP
        path = tmp_path / "model.pth"
        pw.write_zip(path, {"data.pkl": data})
        with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
            load_checkpoint(path)
    finally:
        copyreg.remove_extension("builtins", "eval", 0xF1)
    assert not marker.exists()


def test_build_on_a_tensor_is_refused(tmp_path):
    t, good = _good_entries()
    tree = {"w": pw.Build(good, {"shape": (1000000,)})}
    path = tmp_path / "model.pth"
    pw.write_zip(path, {"data.pkl": pw.dumps(tree), "data/0": t.storage.tobytes()})
    with pytest.raises(UnsafeCheckpointError, match="modify a tensor"):
        load_checkpoint(path)


def _reader_objects_state():
    """What a pickle could change in this process if the reader handed it its own objects."""
    from rwkvcpp.conversion import pth

    functions = [pth._rebuild_tensor, pth._rebuild_parameter]
    return ([(f.__defaults__, f.__kwdefaults__, dict(f.__dict__), f.__name__) for f in functions],
            sorted(vars(OrderedDict)), sorted(vars(pth)))


@pytest.mark.parametrize("target", [
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("collections", "OrderedDict"), ("torch", "FloatStorage"), ("torch", "float32"),
    ("rwkvcpp.conversion.pth", "_rebuild_tensor"), ("builtins", "object")])
@pytest.mark.parametrize("state", [
    (None, {"__defaults__": (1, 2), "__name__": "pwned", "dtype": "evil"}),  # slot state: setattr
    {"pwned": True, "__defaults__": (1, 2)},  # dict state: __dict__.update
])
def test_build_on_what_the_reader_hands_out_is_refused(tmp_path, target, state):
    """BUILD may only touch objects the pickle created itself: the reader's functions and classes
    (and the stand-ins it hands out for torch's) are not reachable, so a pickle cannot change the
    running process nor the reader's later behaviour."""
    before = _reader_objects_state()
    t, good = _good_entries()
    evil = pw.Build(pw.Global(*target), state)
    # the modified object is then used, as an attack would, next to a real tensor
    tree = {"emb.weight": good, "x": pw.Call(evil, (pw.storage_pid("0", "float32", 16), 0, (4, 4), (4, 1)))}
    path = tmp_path / "model.pth"
    pw.write_zip(path, {"data.pkl": pw.dumps(tree), "data/0": t.storage.tobytes()})
    with pytest.raises(UnsafeCheckpointError, match=r"^model\.pth: refusing to load: the pickle "):
        load_checkpoint(path)
    assert _reader_objects_state() == before
    pw.write_pth(path, {"w": t})  # and the reader still reads checkpoints as before
    assert_same(load_checkpoint(path), {"w": sample((4, 4), 0)})


def test_storage_type_cannot_be_modified(tmp_path):
    # A storage type stand-in rebuilt with another element type must not reach the storages.
    t = pw.tensor(sample((4, 4), 0))
    storage_type = pw.Build(pw.Global("torch", "FloatStorage"), (None, {"dtype": "evil"}))
    tree = {"w": pw.Call(pw.Global("torch._utils", "_rebuild_tensor_v2"), (
        pw.PersId(("storage", storage_type, "0", "cpu", 16)), 0, (4, 4), (4, 1), False, {}))}
    path = tmp_path / "model.pth"
    pw.write_zip(path, {"data.pkl": pw.dumps(tree), "data/0": t.storage.tobytes()})
    with pytest.raises(UnsafeCheckpointError, match="refusing to load: the pickle tries to modify torch.FloatStorage"):
        load_checkpoint(path)


@pytest.mark.parametrize("size, stride, offset, message", [
    ((2**64,), (1,), 0, "size"),
    ((4, 4), (2**63, 1), 0, "stride"),
    ((4, 4), (4, 1), 2**70, "offset"),
    ((1,) * 65, (1,) * 65, 0, "65 dimensions"),
])
def test_tensor_numbers_out_of_range_are_refused(tmp_path, size, stride, offset, message):
    # torch's sizes, strides and offsets are int64; a pickle's ints are not bounded (and
    # arithmetic on multi-megabyte ones would not end), so they are checked as they arrive.
    t = pw.tensor(sample((4, 4), 0))
    tree = {"w": pw.Call(pw.Global("torch._utils", "_rebuild_tensor_v2"), (
        pw.storage_pid("0", "float32", 16), offset, size, stride, False, {}))}
    path = tmp_path / "model.pth"
    pw.write_zip(path, {"data.pkl": pw.dumps(tree), "data/0": t.storage.tobytes()})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def _inflating_zip(path, member: str, nbytes: int, start: bytes = b"") -> None:
    """A zip whose ``member`` inflates to ``nbytes`` (zeros after ``start``), written a MiB at a
    time so that making it takes little memory."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        if member != "archive/data.pkl":
            zf.writestr("archive/data.pkl", pw.dumps({}))
        with zf.open(member, "w", force_zip64=True) as f:
            f.write(start)
            chunk = bytes(1 << 20)
            for done in range(len(start), nbytes, len(chunk)):
                f.write(chunk[: nbytes - done])


@pytest.mark.parametrize("member, nbytes, message", [
    ("archive/data.pkl", 100 << 20, "archive/data.pkl inflates to 104857600 bytes, more than the 67108864 "
                                    r"\(64 MiB\) allowed"),
    # under the size limit, but compressed as no pickle is
    ("archive/data.pkl", 4 << 20, r"archive/data.pkl inflates \d+ times \(\d+ to 4194304 bytes\), more than "
                                  "the 100 times"),
    ("archive/byteorder", 100 << 20, "archive/byteorder inflates to 104857600 bytes, more than the 16 "),
])
def test_zip_members_that_inflate_are_refused_before_reading(tmp_path, member, nbytes, message):
    path = tmp_path / "bomb.pth"
    start = pickle.PROTO + b"\x02" if member.endswith(".pkl") else b""
    _inflating_zip(path, member, nbytes, start)
    assert path.stat().st_size < nbytes // 200
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="^bomb\\.pth: " + message):
            load_checkpoint(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"refusing it allocated {peak} bytes"


def test_legacy_pickle_longer_than_the_limit_is_refused(tmp_path, monkeypatch):
    from rwkvcpp.conversion import pth

    expected, tensors = writer_tensors("float32")
    path = tmp_path / "old.pth"
    pw.write_legacy_pth(path, tensors)
    assert_same(load_checkpoint(path), expected)
    monkeypatch.setattr(pth, "MAX_PICKLE_BYTES", 200)
    with pytest.raises(CheckpointError, match="old.pth: the pickle is longer than 200 bytes"):
        load_checkpoint(path)


def test_module_persistent_id_is_refused(tmp_path):
    tree = {"w": pw.PersId(("module", "Linear", "x.py", "source"))}
    path = tmp_path / "model.pth"
    pw.write_zip(path, {"data.pkl": pw.dumps(tree)})
    with pytest.raises(CheckpointError, match="unexpected persistent id"):
        load_checkpoint(path)


@pytest.mark.parametrize("shape, strides, offset", [
    ((4, 5), (5, 1), 0),  # more elements than the storage holds
    ((4, 4), (4, 1), 1),  # in range but shifted past the end
    ((4, 4), (1, 5), 0),  # strides reaching past the end
    ((4, 4), (-4, 1), 12),  # negative stride
])
def test_tensor_outside_its_storage_is_refused(tmp_path, shape, strides, offset):
    # as_strided trusts the strides; the reader must check them against the storage first.
    t = pw.tensor(sample((4, 4), 0))
    bad = pw.WTensor(t.storage, "float32", shape, strides, offset)
    path = tmp_path / "model.pth"
    pw.write_pth(path, {"w": bad})
    with pytest.raises(CheckpointError, match="'w'"):
        load_checkpoint(path)


def test_storage_smaller_than_declared(tmp_path):
    t = pw.tensor(sample((4, 4), 0))
    tree = {"w": pw.tensor_node(t, "0")}
    path = tmp_path / "model.pth"
    pw.write_zip(path, {"data.pkl": pw.dumps(tree), "data/0": t.storage.tobytes()[:40]})
    with pytest.raises(CheckpointError, match="40 bytes, 64 expected"):
        load_checkpoint(path)


# ------------------------------------------------------------------------ unreadable files


@pytest.fixture
def good_pth(tmp_path):
    _, tensors = writer_tensors("bfloat16")
    path = tmp_path / "model.pth"
    pw.write_pth(path, tensors)
    return path


def test_truncated_zip(good_pth):
    data = good_pth.read_bytes()
    good_pth.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt zip"):
        load_checkpoint(good_pth)


def test_truncated_legacy(tmp_path):
    _, tensors = writer_tensors("float32")
    path = tmp_path / "old.pth"
    pw.write_legacy_pth(path, tensors)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    path.write_bytes(data[:100])  # cut inside the pickles
    with pytest.raises(CheckpointError, match="corrupt or truncated pickle"):
        load_checkpoint(path)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"hello, this is not a checkpoint at all" * 4, "not a recognised checkpoint"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "Git LFS pointer"),
    (struct.pack("<iiiiii", 0x67676D66, 101, 10, 8, 1, 1), "already an rwkv.cpp model file"),
    (b"GGUF\x03\x00\x00\x00" + bytes(32), "GGUF"),
    (pickle.dumps({"a": 1}, protocol=2), "not a torch checkpoint"),
    (b"\x80\x02\x8a\x0a", "corrupt or truncated pickle"),
])
def test_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_tar_format(tmp_path):
    import tarfile

    path = tmp_path / "ancient.pth"
    (tmp_path / "pickle").write_bytes(b"x")
    with tarfile.open(path, "w") as tf:
        tf.add(tmp_path / "pickle", arcname="pickle")
    with pytest.raises(CheckpointError, match="tar-based torch serialization"):
        load_checkpoint(path)


def test_zip_that_is_not_torch(tmp_path):
    path = tmp_path / "notes.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_checkpoint(path)
    pw.write_zip(path, {"data.pkl": pw.dumps({}), "constants.pkl": b"", "code/m.py": b""})
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_checkpoint(path)


@pytest.mark.parametrize("tree, message", [
    ([1, 2, 3], "holds a list, not a dict of tensors"),
    ({"epoch": 3}, "holds no tensors"),
])
def test_pickle_without_tensors(tmp_path, tree, message):
    path = tmp_path / "model.pth"
    pw.write_zip(path, {"data.pkl": pw.dumps(tree)})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_storage_member(tmp_path):
    t = pw.tensor(sample((4, 4), 0))
    path = tmp_path / "model.pth"
    pw.write_zip(path, {"data.pkl": pw.dumps({"w": pw.tensor_node(t, "0")})})
    with pytest.raises(CheckpointError, match="archive/data/0 is missing"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pth")


# ------------------------------------------------------------------------ safetensors

SAFETENSORS_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def write_safetensors(path, tensors: dict, metadata=None) -> None:
    """A minimal safetensors writer: {name: (float32 values, dtype)}."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (values, dtype) in tensors.items():
        raw = pw.encode(np.asarray(values, np.float32).reshape(-1), dtype).astype(
            {"bfloat16": "<u2", "float16": "<f2", "float32": "<f4"}[dtype]).tobytes()
        header[name] = {"dtype": SAFETENSORS_CODES[dtype], "shape": list(np.shape(values)),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


@pytest.mark.parametrize("dtype", DTYPES)
def test_safetensors_roundtrip(tmp_path, dtype):
    expected = OrderedDict([
        ("emb.weight", sample((16, 8), 1, dtype)),
        ("blocks.0.ln1.weight", sample((8,), 2, dtype)),
        ("blocks.0.att.time_mix_k", sample((1, 1, 8), 3, dtype)),
        ("blocks.0.att.key.weight", sample((8, 12), 4, dtype)),
        ("empty", np.zeros((0, 3), np.float32)),
    ])
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {n: (v, dtype) for n, v in expected.items()}, metadata={"format": "pt"})
    checkpoint = load_checkpoint(path)
    assert_same(checkpoint, {n: expected[n] for n in checkpoint}, dtype)
    assert set(checkpoint) == set(expected)


@pytest.mark.parametrize("padding", [0x80 - 8, 0x180 - 8])
def test_safetensors_whose_header_length_starts_like_a_pickle(tmp_path, padding):
    """A header length whose low byte is 0x80 (pickle's PROTO opcode) is still a safetensors file:
    formats are told apart by their whole signature, not by the first byte alone."""
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"emb.weight": (np.ones((2, 2)), "float32")}, metadata={"pad": "x" * padding})
    length = int.from_bytes(path.read_bytes()[:8], "little")
    pad = 0x80 - length % 256
    write_safetensors(path, {"emb.weight": (np.ones((2, 2)), "float32")},
                      metadata={"pad": "x" * (padding + pad)})
    assert path.read_bytes()[0] == 0x80
    np.testing.assert_array_equal(load_checkpoint(path)["emb.weight"], np.ones((2, 2)))


def _nested(opener: str, closer: str, depth: int) -> bytes:
    return (opener * depth + "1" + closer * depth).encode()


@pytest.mark.parametrize("header", [
    _nested('{"a":', "}", 100_000),
    b'{"w":' + _nested("[", "]", 100_000) + b"}",
    _nested('{"a":', "}", 9),  # just past what is allowed
], ids=["objects", "arrays", "nine-levels"])
def test_safetensors_header_nested_deeply(tmp_path, header):
    # The format's header is flat (name -> {dtype, shape, data_offsets}); json's parser recurses
    # once per level, so depth is checked before parsing.
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointError, match=r"^model\.safetensors: corrupt safetensors header "
                                              r"\(JSON nested at least \d+ levels deep; at most 8 are accepted\)"):
        load_checkpoint(path)


def test_safetensors_header_brackets_inside_strings(tmp_path):
    # Brackets and escaped quotes inside strings are not nesting.
    path = tmp_path / "model.safetensors"
    tricky = '{[ \\" {{{{[[[[ \\\\' * 200 + "]]"
    write_safetensors(path, {"emb.weight": (np.ones((2, 2)), "float32")}, metadata={"note": tricky})
    raw = path.read_bytes()
    assert json.loads(raw[8: 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["note"] == tricky
    np.testing.assert_array_equal(load_checkpoint(path)["emb.weight"], np.ones((2, 2)))


@pytest.mark.parametrize("name", ["model.safetensors.index.json", "config.json"])
def test_json_files_nested_deeply(tmp_path, name):
    hf_name = "rwkv.embeddings.weight"  # a Hugging Face layout, whose config.json is read
    write_safetensors(tmp_path / "a.safetensors", {hf_name: (np.ones(2), "float32")})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {hf_name: "a.safetensors"}}))
    (tmp_path / name).write_bytes(_nested('{"a":', "}", 100_000))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(name)}: .*nested at least 100000 levels deep"):
        to_native_names(load_checkpoint(tmp_path))


@pytest.mark.parametrize("command", ["info", "convert"])
def test_nested_safetensors_header_in_the_commands(tmp_path, capsys, command):
    from rwkvcpp.cli import main

    path = tmp_path / "model.safetensors"
    header = _nested('{"a":', "}", 100_000)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    argv = [command, str(path)] + ([str(tmp_path / "out.bin")] if command == "convert" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rwkvcpp {command}: error: ") and "\n" not in err
    assert "model.safetensors: corrupt safetensors header (JSON nested at least 100000 levels deep" in err
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


@pytest.mark.parametrize("shape, message", [
    ([0, 2**70], "malformed header entry"),  # no data, but no array can have that shape
    ([1] * 65, "malformed header entry"),
])
def test_safetensors_shapes_out_of_range(tmp_path, shape, message):
    head = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0 if 0 in shape else 4]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + bytes(4))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_safetensors_model_order(tmp_path):
    names = ["head.weight", "blocks.10.ln1.weight", "ln_out.weight", "blocks.2.att.key.weight",
             "blocks.2.ln1.weight", "emb.weight", "extra"]
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {n: (np.ones(2), "float32") for n in sorted(names)})
    assert list(read_safetensors(path)) == [
        "emb.weight", "blocks.2.ln1.weight", "blocks.2.att.key.weight", "blocks.10.ln1.weight",
        "ln_out.weight", "head.weight", "extra"]


def test_safetensors_library_files(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    arrays = {"a": sample((3, 5), 1), "b": sample((7,), 2).astype(np.float16)}
    path = tmp_path / "lib.safetensors"
    safetensors_numpy.save_file(arrays, str(path))
    checkpoint = load_checkpoint(path)
    assert checkpoint.dtype_of("b") == "float16"
    assert_same(checkpoint, {"a": arrays["a"], "b": arrays["b"].astype(np.float32)})


@needs_torch
def test_safetensors_bf16_from_torch(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    g = torch.Generator().manual_seed(0)
    tensors = {"emb.weight": torch.randn(6, 4, generator=g).to(torch.bfloat16),
               "head.weight": torch.randn(6, 4, generator=g).to(torch.float16),
               "ln_out.weight": torch.randn(4, generator=g)}
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(tensors, str(path))
    checkpoint = load_checkpoint(path)
    assert checkpoint.dtype_of("emb.weight") == "bfloat16"
    assert_same(checkpoint, {n: tensors[n].float().numpy() for n in ["emb.weight", "ln_out.weight", "head.weight"]})


def test_safetensors_corrupt(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": (np.ones(4), "float32")})
    data = path.read_bytes()
    path.write_bytes(data[:-4])  # data cut short
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}" + bytes(6))
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors header"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 8) + b"{not js}")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        load_checkpoint(path)
    head = json.dumps({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + bytes(8))
    with pytest.raises(CheckpointError, match="unsupported dtype 'C64'"):
        load_checkpoint(path)
    head = json.dumps({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + bytes(8))
    with pytest.raises(CheckpointError, match="malformed header entry for 'w'"):
        load_checkpoint(path)
    head = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + bytes(8))
    with pytest.raises(CheckpointError, match="8 bytes for shape"):
        load_checkpoint(path)


# ------------------------------------------------------------------------ Hugging Face names


def native_names(version: int, n_layer: int = 2):
    att = {
        4: ["time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r",
            "key.weight", "value.weight", "receptance.weight", "output.weight"],
        5: ["time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g", "time_decay", "time_faaaa",
            "receptance.weight", "key.weight", "value.weight", "output.weight", "gate.weight",
            "ln_x.weight", "ln_x.bias"],
        6: ["time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g",
            "time_maa_w1", "time_maa_w2", "time_decay", "time_decay_w1", "time_decay_w2",
            "time_faaaa", "receptance.weight", "key.weight", "value.weight", "output.weight",
            "gate.weight", "ln_x.weight", "ln_x.bias"],
    }[version]
    ffn = (["time_maa_k", "time_maa_r"] if version == 6 else ["time_mix_k", "time_mix_r"]) + [
        "key.weight", "receptance.weight", "value.weight"]
    names = ["emb.weight"]
    for i in range(n_layer):
        if i == 0:
            names += ["blocks.0.ln0.weight", "blocks.0.ln0.bias"]
        names += [f"blocks.{i}.ln1.weight", f"blocks.{i}.ln1.bias",
                  f"blocks.{i}.ln2.weight", f"blocks.{i}.ln2.bias"]
        names += [f"blocks.{i}.att.{a}" for a in att] + [f"blocks.{i}.ffn.{f}" for f in ffn]
    return names + ["ln_out.weight", "ln_out.bias", "head.weight"]


def to_hf_name(name: str, prefix: str = "rwkv.") -> str:
    """The renaming the HF conversion scripts apply (written out independently here)."""
    parts = name.split(".")
    if parts[0] == "emb":
        parts[0] = "embeddings"
    if parts[0] == "blocks":
        parts[2] = {"ln0": "pre_ln", "att": "attention", "ffn": "feed_forward"}.get(parts[2], parts[2])
    long_names = {"time_mix_k": "time_mix_key", "time_mix_v": "time_mix_value",
                  "time_mix_r": "time_mix_receptance", "time_mix_g": "time_mix_gate"}
    parts[-1] = long_names.get(parts[-1], parts[-1])
    hf = ".".join(parts)
    return hf if hf == "head.weight" else prefix + hf


@pytest.mark.parametrize("prefix", ["rwkv.", ""], ids=["causal_lm", "base_model"])
@pytest.mark.parametrize("version", [4, 5, 6])
def test_hf_names_to_native(version, prefix):
    native = native_names(version)
    hf = {to_hf_name(n, prefix): np.full(2, i, np.float32) for i, n in enumerate(native)}
    assert "rwkv.blocks.0.pre_ln.weight" in hf or prefix == ""
    if version in (4, 5):
        assert f"{prefix}blocks.1.attention.time_mix_key" in hf
    else:
        assert f"{prefix}blocks.1.attention.time_maa_k" in hf
    assert is_hf_layout(hf) and not is_hf_layout(native)
    converted = to_native_names(hf)
    assert list(converted) == native
    for i, name in enumerate(native):
        assert converted[name][0] == i


def test_native_checkpoint_is_returned_as_is():
    native = {n: np.zeros(1) for n in native_names(5)}
    assert to_native_names(native) is native


def test_fla_layout_is_mapped():
    # fla's RWKV-7 layout is undone by rwkvcpp.conversion.fla (tests/test_hf_rwkv7.py covers it).
    emb, r = np.ones((4, 2), np.float32), np.zeros((2, 2), np.float32)
    native = to_native_names({"model.embeddings.weight": emb, "model.layers.0.attn.r_proj.weight": r})
    assert list(native) == ["emb.weight", "blocks.0.att.receptance.weight"]
    assert np.array_equal(native["emb.weight"], emb) and np.array_equal(native["blocks.0.att.receptance.weight"], r)


def test_hf_name_collision():
    with pytest.raises(CheckpointError, match="would both be named 'ln_out.weight'"):
        to_native_names({"rwkv.ln_out.weight": 1, "ln_out.weight": 2, "rwkv.embeddings.weight": 3})


@pytest.mark.parametrize("dtype", DTYPES)
def test_hf_lazy_checkpoint(tmp_path, dtype):
    native = native_names(6, n_layer=1)
    values = {n: sample((3,), i, dtype) for i, n in enumerate(native)}
    path = tmp_path / "pytorch_model.bin"
    pw.write_pth(path, {to_hf_name(n): pw.tensor(values[n], dtype) for n in native})
    checkpoint = to_native_names(load_checkpoint(path))
    assert isinstance(checkpoint, LazyCheckpoint)
    assert checkpoint.shape_of("blocks.0.att.time_maa_w1") == (3,)
    assert_same(checkpoint, values, dtype)


# ------------------------------------------------------------------------ shards and folders


def shard_split(dtype="float32"):
    names = native_names(4, n_layer=2)
    values = OrderedDict((n, sample((2, 3), i, dtype)) for i, n in enumerate(names))
    first = [n for n in names if n == "emb.weight" or n.startswith("blocks.0.")]
    return values, first


def test_sharded_safetensors(tmp_path):
    values, first = shard_split("bfloat16")
    shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    shards = ({n: v for n, v in values.items() if n in first},
              {n: v for n, v in values.items() if n not in first})
    weight_map = {}
    for shard_name, shard in zip(shard_names, shards):
        write_safetensors(tmp_path / shard_name, {n: (v, "bfloat16") for n, v in shard.items()})
        weight_map.update({n: shard_name for n in shard})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}))
    by_index = load_checkpoint(index)
    by_folder = load_checkpoint(tmp_path)
    # Shard by shard, each in model order (safetensors files have no order of their own).
    assert list(by_index) == list(by_folder) == model_order(values)
    assert_same(by_folder, {n: values[n] for n in by_folder}, "bfloat16")


def test_sharded_torch_bins(tmp_path):
    values, first = shard_split()
    hf = OrderedDict((to_hf_name(n), v) for n, v in values.items())
    shard_names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    weight_map = {}
    for shard_name, keep in zip(shard_names, (True, False)):
        part = {n: v for n, v in hf.items() if (hf_to_native_name(n) in first) == keep}
        pw.write_pth(tmp_path / shard_name, {n: pw.tensor(v) for n, v in part.items()})
        weight_map.update({n: shard_name for n in part})
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    checkpoint = to_native_names(load_checkpoint(tmp_path))
    assert_same(checkpoint, values)


def test_sharded_index_errors(tmp_path):
    write_safetensors(tmp_path / "a.safetensors", {"x": (np.ones(2), "float32")})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "a.safetensors", "y": "a.safetensors"}}))
    with pytest.raises(CheckpointError, match="does not hold 'y'"):
        load_checkpoint(index)
    index.write_text(json.dumps({"weight_map": {"x": "../a.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        load_checkpoint(index)
    index.write_text(json.dumps({"weight_map": {"x": "b.safetensors"}}))
    with pytest.raises(CheckpointError, match="b.safetensors is missing"):
        load_checkpoint(index)
    index.write_text(json.dumps({"architectures": ["RwkvForCausalLM"]}))
    with pytest.raises(CheckpointError, match="without a weight_map"):
        load_checkpoint(index)


def test_folder_resolution(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    expected, tensors = writer_tensors("float16")
    pw.write_pth(tmp_path / "RWKV-x060-World-1B6.pth", tensors)
    (tmp_path / "config.json").write_text("{}")
    assert_same(load_checkpoint(tmp_path), expected)
    pw.write_pth(tmp_path / "other.pth", tensors)
    with pytest.raises(CheckpointError, match="several checkpoints"):
        load_checkpoint(tmp_path)
