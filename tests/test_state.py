"""Saved states (rwkvcpp.state, Model.save_state / load_state): the whole state comes back bit
for bit on every architecture, with the model's identity checked, and damaged files are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest

from support.checkpoints import ARCHES, make_checkpoint
from rwkvcpp import Model, RWKVError, StateFileError
from rwkvcpp.conversion.pth_write import save_safetensors
from rwkvcpp.writer import write_model

PROMPT = [5, 17, 200, 3, 99, 42, 7, 7, 130]
MORE = [11, 250, 64]


def _used_state(model: Model) -> np.ndarray:
    """A state after some tokens: every part (token shift, wkv or v4's aa/bb/pp) non-trivial."""
    return model.eval_sequence(PROMPT)[1]


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("arch", ARCHES)
def test_round_trip_is_exact(arch, dtype, model_set, tmp_path):
    model = Model(getattr(model_set, dtype), threads=1)
    state = _used_state(model)
    path = tmp_path / "conversation.state"
    model.save_state(path, state)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind
    loaded = model.load_state(path)
    assert loaded.dtype == np.float32 and loaded.shape == (model.state_len,) and loaded.flags.writeable
    assert loaded.tobytes() == state.tobytes()
    # and the conversation goes on exactly as it would have
    expected = model.eval_sequence(MORE, state, all_logits=True)[0]
    np.testing.assert_array_equal(model.eval_sequence(MORE, loaded, all_logits=True)[0], expected)


@pytest.mark.parametrize("arch", [a for a in ARCHES if a != "v4"])
def test_tuned_state_pair_keeps_only_the_wkv_matrices(arch, model_set, tmp_path):
    """What the old save_state_file did, now under its own name: the token-shift parts are
    lost, so continuing gives other logits; the whole-state pair keeps them."""
    model = Model(model_set.fp32, threads=1)
    state = _used_state(model)
    model.save_tuned_state(tmp_path / "tuned.safetensors", state)
    tuned = model.load_tuned_state(tmp_path / "tuned.safetensors")
    C = model.n_embed
    for layer in range(model.n_layer):
        start = layer * (model.state_len // model.n_layer)
        assert not tuned[start:start + 2 * C].any() and state[start:start + 2 * C].any()
    expected = model.eval_sequence(MORE, state)[0]
    assert np.abs(model.eval_sequence(MORE, tuned)[0] - expected).max() > 1e-3
    with pytest.raises(StateFileError, match="state-tuning file; load it with Model.load_tuned_state"):
        model.load_state(tmp_path / "tuned.safetensors")


def test_file_is_plain_safetensors_with_the_identity(model_files, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    model = Model(model_files["v6"].fp16, threads=1)
    state = _used_state(model)
    model.save_state(tmp_path / "s.safetensors", state)
    np.testing.assert_array_equal(safetensors_numpy.load_file(str(tmp_path / "s.safetensors"))["state"], state)
    with open(tmp_path / "s.safetensors", "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        metadata = json.loads(f.read(length))["__metadata__"]
    assert metadata["format"] == "rwkvcpp-state" and metadata["arch"] == "v6"
    assert (metadata["n_layer"], metadata["n_embed"], metadata["state_len"]) == ("2", "128", str(model.state_len))
    assert metadata["model_hash"] == model.model_hash and metadata["model_dtype"] == "FP16"


def test_model_hash_reads_the_table_not_the_weights(model_files, tmp_path):
    fp32, fp16 = model_files["v7"].fp32, model_files["v7"].fp16
    copy = tmp_path / "copy.bin"
    shutil.copyfile(fp32, copy)
    assert Model(copy, threads=1).model_hash == Model(fp32, threads=1).model_hash != Model(fp16, threads=1).model_hash
    # another tensor table: one more layer
    deeper = tmp_path / "deeper.bin"
    write_model(deeper, make_checkpoint("v7", n_layer=3, n_embed=128, n_vocab=256, seed=1), dtype="FP32")
    assert Model(deeper, threads=1).model_hash != Model(fp32, threads=1).model_hash

    # the file changed on disk after loading: no identity is made up from the new one
    model = Model(copy, threads=1)
    shutil.copyfile(deeper, copy)
    with pytest.raises(RWKVError, match="changed on disk"):
        model.save_state(tmp_path / "s.state", model.init_state())


def test_another_model_is_refused_naming_what_differs(model_files, tmp_path):
    v6 = Model(model_files["v6"].fp32, threads=1)
    v7 = Model(model_files["v7"].fp32, threads=1)
    path = tmp_path / "v6.state"
    v6.save_state(path, _used_state(v6))
    with pytest.raises(StateFileError) as info:
        v7.load_state(path)
    message = str(info.value)
    assert str(path) in message and "arch v6 (this model: v7)" in message and "\n" not in message

    deeper_path = tmp_path / "deeper.bin"
    write_model(deeper_path, make_checkpoint("v7", n_layer=3, n_embed=128, n_vocab=256, seed=1), dtype="FP32")
    deeper = Model(deeper_path, threads=1)
    v7_path = _save(v7, tmp_path / "v7.state")
    with pytest.raises(StateFileError, match=r"n_layer 2 \(this model: 3\), state_len"):
        deeper.load_state(v7_path)
    with pytest.raises(StateFileError, match="differs in n_layer"):
        deeper.load_state(v7_path, strict=False)  # sizes are never waived


def _save(model: Model, path) -> os.PathLike:
    model.save_state(path, _used_state(model))
    return path


def test_same_sizes_other_file_needs_strict_false(model_files, tmp_path):
    """A state saved with the FP16 file and loaded by the FP32 one: same sizes, another tensor
    table. Refused by default, naming both files; loaded exactly with strict=False."""
    fp16 = Model(model_files["v5.2"].fp16, threads=1)
    fp32 = Model(model_files["v5.2"].fp32, threads=1)
    state = _used_state(fp16)
    path = _save(fp16, tmp_path / "s.state")
    with pytest.raises(StateFileError) as info:
        fp32.load_state(path)
    message = str(info.value)
    assert "v5_2-fp16.bin" in message and "v5_2-fp32.bin" in message and "strict=False" in message
    assert fp32.load_state(path, strict=False).tobytes() == state.tobytes()


def test_saving_checks_the_state(model_files, tmp_path):
    model = Model(model_files["v7"].fp32, threads=1)
    with pytest.raises(RWKVError, match=r"shape \(3,\)"):
        model.save_state(tmp_path / "s.state", np.zeros(3, np.float32))
    with pytest.raises(RWKVError, match="float32"):
        model.save_state(tmp_path / "s.state", model.init_state().astype(np.float64))
    assert os.listdir(tmp_path) == []


def test_an_interrupted_save_keeps_the_old_file(model_files, tmp_path, monkeypatch):
    model = Model(model_files["v7"].fp32, threads=1)
    path = _save(model, tmp_path / "s.state")
    before = path.read_bytes()

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        model.save_state(path, model.init_state())
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["s.state"]


@pytest.fixture
def saved(model_files, tmp_path):
    model = Model(model_files["v7"].fp32, threads=1)
    path = _save(model, tmp_path / "good.state")
    return model, path.read_bytes()


def _header_end(raw: bytes) -> int:
    return 8 + struct.unpack("<Q", raw[:8])[0]


def _rewrite_header(raw: bytes, change) -> bytes:
    header = json.loads(raw[8:_header_end(raw)])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[_header_end(raw):]


def _flip_data_bit(raw: bytes) -> bytes:
    at = _header_end(raw) + 100
    return raw[:at] + bytes([raw[at] ^ 0x10]) + raw[at + 1:]


DAMAGE = {
    "empty": (lambda raw: b"", "not a saved state: the file is 0 bytes long"),
    "cut in the length": (lambda raw: raw[:5], "not a saved state: the file is 5 bytes long"),
    "cut in the header": (lambda raw: raw[:40], "or truncated"),
    "cut in the data": (lambda raw: raw[:len(raw) // 2], "truncated: the state needs"),
    "one byte short": (lambda raw: raw[:-1], "truncated: the state needs"),
    "bytes after the state": (lambda raw: raw + b"\0\0\0\0", "damaged: the state needs"),
    "a flipped bit": (_flip_data_bit, "the state data is damaged"),
    "garbage": (lambda raw: b"\x10\0\0\0\0\0\0\0" + b"{not json}" * 4, "no readable safetensors header"),
    "a model file": (lambda raw: b"fmgg" + b"\0" * 100, "not a saved state, or truncated"),
    "another format": (lambda raw: _rewrite_header(raw, lambda h: h["__metadata__"].update(format="x")),
                       "not a state saved by Model.save_state"),
    "a newer version": (lambda raw: _rewrite_header(raw, lambda h: h["__metadata__"].update(format_version="2")),
                        "format version '2'"),
    "float16 data": (lambda raw: _rewrite_header(raw, lambda h: h["state"].update(dtype="F16")),
                     "expected one float32 tensor 'state'"),
    "another tensor": (lambda raw: _rewrite_header(raw, lambda h: h.update(extra=h["state"])),
                       "expected one float32 tensor 'state'"),
    "wrong offsets": (lambda raw: _rewrite_header(raw, lambda h: h["state"].update(data_offsets=[4, 4 + 4 * int(
        h["__metadata__"]["state_len"])])), "damaged: the state needs"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_files_are_refused(case, saved, tmp_path):
    model, raw = saved
    damage, expected = DAMAGE[case]
    path = tmp_path / "bad.state"
    path.write_bytes(damage(raw))
    with pytest.raises(StateFileError) as info:
        model.load_state(path)
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_a_tuned_state_file_from_elsewhere_is_not_a_saved_state(model_files, tmp_path):
    model = Model(model_files["v7"].fp32, threads=1)
    save_safetensors(tmp_path / "peft.safetensors", {f"blocks.{i}.att.time_state": np.zeros((2, 64, 64), np.float32)
                                                     for i in range(2)})
    with pytest.raises(StateFileError, match="load it with Model.load_tuned_state"):
        model.load_state(tmp_path / "peft.safetensors")
    with pytest.raises(FileNotFoundError):
        model.load_state(tmp_path / "missing.state")


def test_closed_model_refuses_states(model_files, tmp_path):
    model = Model(model_files["v7"].fp32, threads=1)
    state = _used_state(model)
    path = _save(model, tmp_path / "s.state")
    model.close()
    for call in (lambda: model.save_state(path, state), lambda: model.load_state(path),
                 lambda: model.load_tuned_state(path), lambda: model.save_tuned_state(path, state)):
        with pytest.raises(RWKVError, match="is closed"):
            call()
