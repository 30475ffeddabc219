"""Converting checkpoints (rwkvcpp.convert, `rwkvcpp convert`, python/convert_pytorch_to_ggml.py),
`rwkvcpp info`, and state files.

The expected .bin of a checkpoint is always `write_model` on the in-memory dict: a converted file
must equal it byte for byte, whatever the container (torch zip written by torch or by the
torch-free writer, safetensors, Hugging Face names and folders). Checkpoints are written both by
torch (when installed) and without it, so CI without torch still covers the whole path.
"""

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rwkvcpp

from support import pth_writer as pw  # noqa: E402
from support.checkpoints import ARCHES, make_checkpoint, save_pth  # noqa: E402
from support.reference import Reference  # noqa: E402

from rwkvcpp import format as fmt  # noqa: E402
from rwkvcpp.arch import get as get_arch  # noqa: E402
from rwkvcpp.cli import main as cli_main  # noqa: E402
from rwkvcpp.conversion import lazy  # noqa: E402
from rwkvcpp.conversion.pipeline import convert  # noqa: E402
from rwkvcpp.conversion.pth_write import save_safetensors  # noqa: E402
from rwkvcpp.conversion.schema import model_order  # noqa: E402
from rwkvcpp.conversion.state_file import load_state_file, save_state_file  # noqa: E402
from rwkvcpp.writer import write_model  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

ROOT = Path(__file__).resolve().parent.parent
N_LAYER, N_EMBED, N_VOCAB = 2, 128, 256
STATE_ARCHES = ("v5.1", "v5.2", "v6", "v7")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def checkpoints():
    return {arch: make_checkpoint(arch, N_LAYER, N_EMBED, N_VOCAB, seed=50 + i) for i, arch in enumerate(ARCHES)}


@pytest.fixture(scope="module")
def expected_bins(checkpoints, tmp_path_factory):
    """{(arch, dtype): bytes of write_model on the in-memory checkpoint}."""
    directory = tmp_path_factory.mktemp("expected")
    out = {}
    for arch, checkpoint in checkpoints.items():
        for dtype in ("FP16", "FP32"):
            path = directory / f"{arch}-{dtype}.bin"
            write_model(path, checkpoint, dtype)
            out[arch, dtype] = path.read_bytes()
    return out


def write_free_pth(path, checkpoint, dtype="bfloat16"):
    """A torch.save-style zip written without torch (tests/pth_writer.py)."""
    pw.write_pth(path, {name: pw.tensor(value, dtype) for name, value in checkpoint.items()})


def to_hf_names(checkpoint):
    """The forward renaming Hugging Face's RWKV ports applied (the inverse of rwkvcpp/conversion/hf.py)."""
    params = {"time_mix_k": "time_mix_key", "time_mix_v": "time_mix_value",
              "time_mix_r": "time_mix_receptance", "time_mix_g": "time_mix_gate"}
    parts_map = {"ln0": "pre_ln", "ln1": "ln1", "ln2": "ln2", "att": "attention", "ffn": "feed_forward"}
    out = {}
    for name, value in checkpoint.items():
        if name == "emb.weight":
            new = "rwkv.embeddings.weight"
        elif name.startswith("blocks."):
            _, layer, part, rest = name.split(".", 3)
            if part in ("att", "ffn"):
                rest = params.get(rest, rest)
            new = f"rwkv.blocks.{layer}.{parts_map[part]}.{rest}"
        elif name.startswith("ln_out."):
            new = "rwkv." + name
        else:
            new = name  # head.weight
        out[new] = value
    return out


def write_raw_safetensors(path, arrays):
    """A safetensors file of numpy arrays of any dtype (for the non-float case)."""
    names = {np.dtype("float32"): "F32", np.dtype("int64"): "I64", np.dtype("int32"): "I32"}
    header, offset, blobs = {}, 0, []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        header[name] = {"dtype": names[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        blobs.append(array.tobytes())
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def run_cli(*args):
    """`rwkvcpp ...` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "rwkvcpp", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def assert_one_line_error(text: str, prefix: str, *needles: str):
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert lines[0].startswith(prefix), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


# ----------------------------------------------------------------------------- conversions


@needs_torch
@pytest.mark.parametrize("arch", ARCHES)
def test_torch_written_pth(arch, checkpoints, expected_bins, tmp_path):
    save_pth(checkpoints[arch], tmp_path / "model.pth")
    convert(tmp_path / "model.pth", tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == expected_bins[arch, "FP16"]
    assert sorted(os.listdir(tmp_path)) == ["model.bin", "model.pth"]


@pytest.mark.parametrize("arch", ARCHES)
def test_torch_free_pth(arch, checkpoints, expected_bins, tmp_path):
    write_free_pth(tmp_path / "model.pth", checkpoints[arch])
    lines, calls = [], []
    summary = convert(tmp_path / "model.pth", tmp_path / "model.bin", log=lines.append,
                      progress=lambda *a: calls.append(a))
    assert (tmp_path / "model.bin").read_bytes() == expected_bins[arch, "FP16"]
    assert sorted(os.listdir(tmp_path)) == ["model.bin", "model.pth"]

    # The architecture and sizes are logged first; progress counts every tensor once, in order.
    assert lines[0].startswith(f"{tmp_path / 'model.pth'}: RWKV {arch}, n_layer {N_LAYER}, n_embed {N_EMBED}")
    assert f"n_vocab {N_VOCAB}" in lines[0]
    n = len(checkpoints[arch])
    assert [c[:2] for c in calls] == [(i, n) for i in range(1, n + 1)]
    assert sorted(c[2] for c in calls) == sorted(checkpoints[arch])
    assert summary.shape.arch == arch and summary.type == "FP16"
    assert summary.n_tensors == len(fmt.load_records(tmp_path / "model.bin"))


@pytest.mark.parametrize("arch", ["v4", "v7"])
def test_fp32_and_float16_input(arch, checkpoints, expected_bins, tmp_path):
    write_free_pth(tmp_path / "model.pth", checkpoints[arch], dtype="float16")
    # float16 keeps fewer exponent bits than bf16, so tiny values may round: expect the values
    # as stored.
    stored = {n: v.astype(np.float16).astype(np.float32) for n, v in checkpoints[arch].items()}
    write_model(tmp_path / "expected.bin", stored, "FP32")
    convert(tmp_path / "model.pth", tmp_path / "model.bin", dtype="fp32")
    assert (tmp_path / "model.bin").read_bytes() == (tmp_path / "expected.bin").read_bytes()


def test_cli_subprocess(checkpoints, expected_bins, tmp_path):
    write_free_pth(tmp_path / "model.pth", checkpoints["v6"])
    proc = run_cli("convert", tmp_path / "model.pth", tmp_path / "model.bin", "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model.bin").read_bytes() == expected_bins["v6", "FP32"]
    first = proc.stdout.splitlines()[0]
    assert "RWKV v6" in first and f"n_layer {N_LAYER}" in first and f"n_embed {N_EMBED}" in first
    assert "converting:" in proc.stderr  # the progress lines of a non-terminal stderr


def test_rwkv_cpp_script(checkpoints, expected_bins, tmp_path):
    write_free_pth(tmp_path / "model.pth", checkpoints["v5.2"])
    script = ROOT / "python" / "convert_pytorch_to_ggml.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "model.pth"), str(tmp_path / "model.bin"),
                           "FP16"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model.bin").read_bytes() == expected_bins["v5.2", "FP16"]


@pytest.mark.parametrize("arch", ARCHES)
def test_safetensors_and_hf_layouts(arch, checkpoints, expected_bins, tmp_path):
    checkpoint = checkpoints[arch]
    expected = expected_bins[arch, "FP16"]
    # The canonical order is the order of the released .pth files (which make_checkpoint follows).
    assert model_order(list(checkpoint), get_arch(arch)) == list(checkpoint)

    save_safetensors(tmp_path / "model.safetensors", checkpoint)  # sorted by name on reading
    convert(tmp_path / "model.safetensors", tmp_path / "st.bin")
    assert (tmp_path / "st.bin").read_bytes() == expected

    hf = to_hf_names(checkpoint)
    hf_st, hf_torch = tmp_path / "hf-st", tmp_path / "hf-torch"
    hf_st.mkdir()
    hf_torch.mkdir()
    save_safetensors(hf_st / "model.safetensors", hf)
    # HF's pytorch_model.bin keeps the HF module order, which differs from BlinkDL's: reversed here.
    write_free_pth(hf_torch / "pytorch_model.bin", dict(reversed(list(hf.items()))))
    for folder in (hf_st, hf_torch):
        convert(folder, tmp_path / "hf.bin")
        assert (tmp_path / "hf.bin").read_bytes() == expected, folder.name


def test_sharded_hf_safetensors(checkpoints, expected_bins, tmp_path):
    hf = to_hf_names(checkpoints["v6"])
    names = list(hf)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, shard_names in shards.items():
        save_safetensors(tmp_path / shard, {n: hf[n] for n in shard_names})
    index = {"weight_map": {n: shard for shard, shard_names in shards.items() for n in shard_names}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    convert(tmp_path, tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == expected_bins["v6", "FP16"]


@pytest.mark.parametrize("arch", ["v5.2", "v7"])
def test_quantize_in_one_step(arch, checkpoints, tmp_path, capsys):
    from rwkvcpp.quantization import quantize

    write_free_pth(tmp_path / "model.pth", checkpoints[arch])
    out = tmp_path / "out"
    out.mkdir()
    assert cli_main(["convert", str(tmp_path / "model.pth"), str(out / "q.bin"), "--quantize", "q8_0"]) == 0
    assert os.listdir(out) == ["q.bin"]  # the temporary FP16 file is gone

    convert(tmp_path / "model.pth", tmp_path / "fp16.bin")
    quantize(tmp_path / "fp16.bin", tmp_path / "q.bin", "Q8_0")
    assert (out / "q.bin").read_bytes() == (tmp_path / "q.bin").read_bytes()
    assert fmt.read_header(out / "q.bin").data_type == fmt.Q8_0
    assert f"RWKV {arch}" in capsys.readouterr().out

    # --quantize-head too, through the Python API, with progress over both passes.
    calls = []
    convert(tmp_path / "model.pth", out / "qh.bin", quantize="Q8_0", quantize_head=True,
            progress=lambda *a: calls.append(a))
    quantize(tmp_path / "fp16.bin", tmp_path / "qh.bin", "Q8_0", quantize_head=True)
    assert (out / "qh.bin").read_bytes() == (tmp_path / "qh.bin").read_bytes()
    totals = {c[1] for c in calls}
    assert len(totals) == 1 and calls[-1][0] == calls[-1][1]
    assert totals.pop() == len(checkpoints[arch]) + len(fmt.load_records(out / "qh.bin"))


@pytest.mark.parametrize("quantize_type", [None, "Q5_1"])
@pytest.mark.parametrize("stop_at", [5, -1])  # while reading; at the last step (quantizing, if any)
def test_interrupted_conversion_leaves_nothing(quantize_type, stop_at, checkpoints, tmp_path):
    write_free_pth(tmp_path / "model.pth", checkpoints["v6"])
    (tmp_path / "old.bin").write_bytes(b"previous")

    def progress(done, total, name):
        if done == (stop_at if stop_at > 0 else total):
            raise KeyboardInterrupt

    for dst in ("new.bin", "old.bin"):
        with pytest.raises(KeyboardInterrupt):
            convert(tmp_path / "model.pth", tmp_path / dst, quantize=quantize_type, progress=progress)
    assert sorted(os.listdir(tmp_path)) == ["model.pth", "old.bin"]
    assert (tmp_path / "old.bin").read_bytes() == b"previous"


# ----------------------------------------------------------------------------- refusals


def payload(marker: Path):
    """A pickle tree that creates ``marker`` when unpickled by the pickle module."""
    return pw.Call(pw.Global("builtins", "exec"), (f"open({str(marker)!r}, 'w').close()",))


def test_malicious_pickle_is_refused(checkpoints, tmp_path):
    marker = tmp_path / "pwned"
    # The payload is live: plain pickle would run it.
    pickle.loads(pw.dumps(payload(tmp_path / "live")))
    assert (tmp_path / "live").exists()

    entries = {name: pw.tensor(value, "bfloat16") for name, value in checkpoints["v4"].items()}
    tree, storages = pw._layout(entries, legacy=False)
    tree["blocks.0.att.time_decay"] = payload(marker)  # hidden among real tensors
    records = {"data.pkl": pw.dumps(pw.Call(pw.Global("collections", "OrderedDict"), (list(tree.items()),))),
               "byteorder": b"little", "version": b"3\n"}
    records.update({f"data/{key}": t.storage.tobytes() for key, t in storages.items()})
    src = tmp_path / "evil.pth"
    pw.write_zip(src, records)

    proc = run_cli("convert", src, tmp_path / "out.bin")
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "rwkvcpp convert: error: ", "evil.pth", "builtins.exec", "refusing")
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == ["evil.pth", "live"]


def _drop(checkpoint, *names):
    return {n: v for n, v in checkpoint.items() if n not in names}


def _replace(checkpoint, name, value):
    return {n: (value if n == name else v) for n, v in checkpoint.items()}


def bad_inputs(checkpoints):
    """(case id, writer(path), words the message must contain)."""
    v6, v4, v7 = checkpoints["v6"], checkpoints["v4"], checkpoints["v7"]
    rng = np.random.default_rng(0)

    def pth(checkpoint):
        return lambda path: write_free_pth(path, checkpoint)

    unknown = {n: v for n, v in v4.items() if ".att." not in n}
    unknown.update({f"blocks.{i}.att.mystery.weight": np.ones((N_EMBED, N_EMBED), np.float32) for i in range(N_LAYER)})
    # Layers 0 and 3: layer 1 (and 2) missing.
    gap = {n.replace("blocks.1.", "blocks.3."): v for n, v in v6.items()}
    return [
        ("not-a-zip", lambda path: path.write_bytes(rng.bytes(1000)), ["not a recognised checkpoint"]),
        ("truncated-zip", lambda path: (write_free_pth(path, v4), path.write_bytes(path.read_bytes()[:5000])),
         ["zip"]),
        ("missing-emb", pth(_drop(v6, "emb.weight")), ["emb.weight"]),
        ("unknown-arch", pth(unknown), ["unknown architecture", "mystery.weight"]),
        ("missing-layer", pth(gap), ["layer 1 is missing", "0, 3"]),
        ("missing-tensor", pth(_drop(v7, "blocks.1.att.v2")), ["blocks.1.att.v2", "missing"]),
        ("wrong-n-embed", pth(_replace(v6, "blocks.1.att.key.weight", np.ones((N_EMBED, 64), np.float32))),
         ["blocks.1.att.key.weight", "(128, 64)", "(128, 128)"]),
        ("wrong-head", pth(_replace(v4, "head.weight", np.ones((N_VOCAB + 1, N_EMBED), np.float32))),
         ["head.weight", "(257, 128)"]),
        ("ffn-width", pth(_replace(v4, "blocks.1.ffn.value.weight", np.ones((N_EMBED, 256), np.float32))),
         ["blocks.1.ffn.value.weight"]),
        ("lora-mismatch", pth(_replace(v7, "blocks.0.att.w2", np.ones((48, N_EMBED), np.float32))),
         ["blocks.0.att.w2", "(48, 128)"]),
        ("vector-size", pth(_replace(v6, "blocks.0.att.time_maa_k", np.ones((1, 1, 96), np.float32))),
         ["blocks.0.att.time_maa_k", "96"]),
        ("head-size", pth(make_checkpoint("v4", N_LAYER, 96, N_VOCAB) | {"blocks.0.att.ln_x.weight": np.ones(96, np.float32)}),
         ["multiple of the head size"]),
        ("non-float", lambda path: write_raw_safetensors(path, {**{n: np.asarray(v) for n, v in v6.items()},
                                                               "blocks.0.att.steps": np.arange(4, dtype=np.int64)}),
         ["blocks.0.att.steps", "int64"]),
    ]


BAD_IDS = ["not-a-zip", "truncated-zip", "missing-emb", "unknown-arch", "missing-layer", "missing-tensor",
           "wrong-n-embed", "wrong-head", "ffn-width", "lora-mismatch", "vector-size", "head-size", "non-float"]


@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_checkpoints(case, checkpoints, tmp_path, capsys):
    (_, write, words), = [c for c in bad_inputs(checkpoints) if c[0] == case]
    src = tmp_path / f"bad-{case}.pth"
    write(src)
    before = sorted(os.listdir(tmp_path))

    # The command: exit code 2, one line naming the file and the problem, nothing written.
    assert cli_main(["convert", str(src), str(tmp_path / "out.bin"), "--quantize", "Q5_1"]) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, "rwkvcpp convert: error: ", src.name, *words)
    assert captured.out == ""  # nothing was logged: the checkpoint is checked before anything else
    # The function: a one-line ValueError naming the file.
    with pytest.raises(ValueError) as info:
        convert(src, tmp_path / "out.bin")
    assert "\n" not in str(info.value) and src.name in str(info.value)
    assert sorted(os.listdir(tmp_path)) == before


def test_bad_arguments(checkpoints, tmp_path, capsys):
    write_free_pth(tmp_path / "model.pth", checkpoints["v4"])
    src = str(tmp_path / "model.pth")
    cases = [
        (["convert", src, str(tmp_path / "o.bin"), "--quantize", "Q9_9"], "unknown quantization type"),
        (["convert", src, str(tmp_path / "o.bin"), "--quantize-head"], "--quantize-head needs --quantize"),
        (["convert", src, str(tmp_path / "no" / "o.bin")], "does not exist"),
        (["convert", src, str(tmp_path)], "is a directory"),
        (["convert", src, src], "is the source"),
        (["convert", str(tmp_path / "missing.pth"), str(tmp_path / "o.bin")], "missing.pth"),
    ]
    for argv, words in cases:
        assert cli_main(argv) == 2, argv
        assert_one_line_error(capsys.readouterr().err, "rwkvcpp convert: error: ", words)
    assert sorted(os.listdir(tmp_path)) == ["model.pth"]
    with pytest.raises(ValueError, match="FP16 or FP32"):
        convert(src, tmp_path / "o.bin", dtype="Q5_1")


# ----------------------------------------------------------------------------- rwkvcpp info


@pytest.fixture
def no_tensor_data(monkeypatch):
    """Fails any attempt to read tensor data from a checkpoint or a .bin."""

    def refuse(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(lazy.LazyTensor, "numpy", refuse)
    monkeypatch.setattr(fmt, "read_tensor", refuse)


def test_info_bin(checkpoints, tmp_path, capsys, no_tensor_data):
    path = tmp_path / "model.bin"
    write_model(path, checkpoints["v6"], "FP16")
    assert cli_main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "rwkv.cpp model" in text and "version 101" in text and "data type FP16" in text
    assert "RWKV v6" in text and f"n_layer {N_LAYER}, n_embed {N_EMBED}, n_head 2" in text
    assert "blocks.1.att.time_maa_w2" in text
    assert f"engine:       kernels {rwkvcpp.system_info()['kernels']} " in text

    assert cli_main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["engine"] == rwkvcpp.system_info()
    records = fmt.load_records(path)
    assert (info["arch"], info["n_vocab"], info["n_embed"], info["n_layer"], info["n_head"]) == ("v6", N_VOCAB,
                                                                                                   N_EMBED, N_LAYER, 2)
    assert info["version"] == 101 and info["data_type"] == "FP16" and info["file_size"] == path.stat().st_size
    assert [t["name"] for t in info["tensors"]] == [r.name for r in records]
    assert [(t["type"], tuple(t["shape"]), t["bytes"]) for t in info["tensors"]] == [
        (r.type_name, r.shape, r.nbytes) for r in records]
    assert info["n_params"] == sum(int(np.prod(r.shape)) for r in records)


def test_info_checkpoint(checkpoints, tmp_path, capsys, no_tensor_data):
    checkpoint = checkpoints["v7"]
    path = tmp_path / "model.pth"
    write_free_pth(path, checkpoint)
    assert cli_main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "RWKV v7" in text and "bfloat16" in text and "blocks.0.att.x_r" in text

    assert cli_main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "v7" and info["n_layer"] == N_LAYER and info["n_ffn"] == 4 * N_EMBED
    assert info["problem"] is None and info["layout"] == "BlinkDL"
    assert [(t["name"], tuple(t["shape"]), t["dtype"]) for t in info["tensors"]] == [
        (n, v.shape, "bfloat16") for n, v in checkpoint.items()]
    assert info["n_params"] == sum(v.size for v in checkpoint.values())

    # A Hugging Face folder; and a checkpoint that cannot be converted still shows its tensors.
    folder = tmp_path / "hf"
    folder.mkdir()
    save_safetensors(folder / "model.safetensors", to_hf_names(checkpoints["v4"]))
    assert cli_main(["info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "v4" and info["layout"] == "Hugging Face" and info["format"] == "safetensors"
    write_free_pth(tmp_path / "partial.pth", _drop(checkpoint, "head.weight"))
    assert cli_main(["info", str(tmp_path / "partial.pth")]) == 0
    assert "cannot be converted" in capsys.readouterr().out


# ----------------------------------------------------------------------------- state files


def random_wkv_state(model, seed=0):
    """A state with random wkv matrices and zero token-shift parts (what a state file holds)."""
    rng = np.random.default_rng(seed)
    state = model.init_state()
    C, H = model.n_embed, model.n_embed // 64
    per_layer = 2 * C + H * 64 * 64
    for i in range(model.n_layer):
        start = i * per_layer + 2 * C
        state[start:start + H * 64 * 64] = rng.normal(0, 0.3, H * 64 * 64)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("arch", STATE_ARCHES)
def test_state_file_round_trip(arch, suffix, model_files, tmp_path):
    from rwkvcpp import Model

    model = Model(model_files[arch].fp32)
    state = random_wkv_state(model)
    path = tmp_path / f"state{suffix}"
    model.save_tuned_state(path, state)
    assert os.listdir(tmp_path) == [path.name]
    loaded = model.load_tuned_state(path)
    assert loaded.dtype == np.float32 and loaded.shape == (model.state_len,)
    np.testing.assert_array_equal(loaded, state)
    np.testing.assert_array_equal(load_state_file(path, model), state)


@needs_torch
@pytest.mark.parametrize("arch", ["v6", "v7"])
def test_state_file_orientation_in_torch(arch, model_files, tmp_path):
    """torch reads the file, and finds the matrices [head][value][key]: the official package's
    v5/v6 state ([head][key][value]) is the file's transpose(1, 2), its v7 state is the file."""
    from rwkvcpp import Model

    model = Model(model_files[arch].fp32)
    state = random_wkv_state(model, seed=1)
    save_state_file(tmp_path / "state.pth", state, model)
    loaded = torch.load(tmp_path / "state.pth", weights_only=True)
    assert list(loaded) == [f"blocks.{i}.att.time_state" for i in range(model.n_layer)]
    ref = Reference(model_files[arch].checkpoint)
    for i in range(model.n_layer):
        matrix = loaded[f"blocks.{i}.att.time_state"]
        assert matrix.dtype == torch.float32 and tuple(matrix.shape) == (2, 64, 64)
        official = matrix.transpose(1, 2) if arch != "v7" else matrix
        np.testing.assert_array_equal(official.numpy(), ref._layer_views(state, i)[2])


@pytest.mark.parametrize("arch", STATE_ARCHES)
def test_model_from_state_file_matches_reference(arch, model_files, tmp_path):
    """The engine started from a loaded state file computes what the numpy reference computes
    from the same state, built here from the file's tensors with the official convention."""
    from rwkvcpp import Model

    model = Model(model_files[arch].fp32)
    rng = np.random.default_rng(7)
    H = model.n_embed // 64
    tensors = {f"blocks.{i}.att.time_state": rng.normal(0, 0.5, (H, 64, 64)).astype(np.float32)
               for i in range(model.n_layer)}
    save_safetensors(tmp_path / "tuned.safetensors", tensors)
    state = model.load_tuned_state(tmp_path / "tuned.safetensors")

    ref = Reference(model_files[arch].checkpoint)
    ref_state = ref.init_state()
    for i in range(model.n_layer):
        matrix = tensors[f"blocks.{i}.att.time_state"].astype(np.float64)
        ref._layer_views(ref_state, i)[2][...] = matrix if arch == "v7" else matrix.transpose(0, 2, 1)
    tokens = [5, 17, 200, 3, 99, 42]
    logits, new_state = model.eval_sequence(tokens, state, all_logits=True)
    expected_logits, expected_state = ref.eval_sequence(tokens, ref_state)
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-4)
    np.testing.assert_allclose(new_state, expected_state, rtol=0, atol=1e-4 * max(1, np.abs(expected_state).max()))
    # And the state matters: a fresh start gives other logits.
    assert np.abs(model.eval_sequence(tokens, all_logits=True)[0] - logits).max() > 1e-2


def test_state_file_matches_official_package(tmp_path):
    """The official `rwkv` package starts a v5/v6 model from `blocks.N.att.time_state` tensors
    merged into its weights; our engine started from the same tensors as a state file gives the
    same logits (and would not with the matrices the other way round)."""
    from support.official import require_official, run_official

    from rwkvcpp import Model

    require_official()
    checkpoint = make_checkpoint("v6", N_LAYER, N_EMBED, N_VOCAB, seed=3)
    rng = np.random.default_rng(1)
    tensors = {f"blocks.{i}.att.time_state": rng.normal(0, 0.5, (2, 64, 64)).astype(np.float32)
               for i in range(N_LAYER)}
    save_pth({**checkpoint, **tensors}, tmp_path / "tuned.pth", dtype="fp32")
    tokens = [5, 17, 200, 3]
    official = run_official(tmp_path / "tuned.pth", "v6", tokens)["logits_serial"]

    write_model(tmp_path / "model.bin", checkpoint, "FP32")
    save_safetensors(tmp_path / "state.safetensors", tensors)
    model = Model(tmp_path / "model.bin")
    logits, _ = model.eval_sequence(tokens, model.load_tuned_state(tmp_path / "state.safetensors"), all_logits=True)
    np.testing.assert_allclose(logits, official, rtol=0, atol=1e-4)

    transposed = {n: np.ascontiguousarray(t.transpose(0, 2, 1)) for n, t in tensors.items()}
    save_safetensors(tmp_path / "transposed.safetensors", transposed)
    wrong, _ = model.eval_sequence(tokens, model.load_tuned_state(tmp_path / "transposed.safetensors"),
                                   all_logits=True)
    assert np.abs(wrong - official).max() > 0.1


def test_model_with_merged_state(model_files, tmp_path):
    """A state-tuned model with its time_state merged in converts (the tensors are copied and
    a hint logged), and load_state_file picks the state out of the same checkpoint."""
    from rwkvcpp import Model

    checkpoint = model_files["v7"].checkpoint
    tensors = {f"blocks.{i}.att.time_state": np.full((2, 64, 64), i + 0.5, np.float32) for i in range(N_LAYER)}
    write_free_pth(tmp_path / "tuned.pth", {**checkpoint, **tensors}, dtype="float32")
    lines = []
    convert(tmp_path / "tuned.pth", tmp_path / "tuned.bin", log=lines.append)
    assert any("load_state_file" in line for line in lines)
    model = Model(tmp_path / "tuned.bin")
    state = model.load_tuned_state(tmp_path / "tuned.pth")
    assert set(np.unique(state)) == {0.0, 0.5, 1.5}


def test_state_file_errors(model_files, tmp_path):
    from rwkvcpp import Model

    v6 = Model(model_files["v6"].fp32)
    good = {f"blocks.{i}.att.time_state": np.zeros((2, 64, 64), np.float32) for i in range(N_LAYER)}

    def load(tensors, name):
        path = tmp_path / name
        save_safetensors(path, tensors)
        with pytest.raises(ValueError) as info:
            v6.load_tuned_state(path)
        message = str(info.value)
        assert "\n" not in message and name in message
        return message

    wider = {n: np.zeros((4, 64, 64), np.float32) for n in good}
    assert "(4, 64, 64)" in load(wider, "wide.safetensors") and "(2, 64, 64)" in load(wider, "wide2.safetensors")
    deeper = dict(good, **{"blocks.2.att.time_state": np.zeros((2, 64, 64), np.float32)})
    assert "3 layers" in load(deeper, "deep.safetensors") and "2 layers" in load(deeper, "deep2.safetensors")
    assert "2 layers" in load({"blocks.0.att.time_state": good["blocks.0.att.time_state"]}, "one.safetensors")
    assert "not a state file" in load({"emb.weight": np.zeros((4, 4), np.float32)}, "model.safetensors")
    nan = dict(good, **{"blocks.1.att.time_state": np.full((2, 64, 64), np.nan, np.float32)})
    assert "NaN" in load(nan, "nan.safetensors")

    v4 = Model(model_files["v4"].fp32)
    save_safetensors(tmp_path / "ok.safetensors", good)
    with pytest.raises(ValueError, match="v4"):
        v4.load_tuned_state(tmp_path / "ok.safetensors")
    with pytest.raises(ValueError, match="v4"):
        save_state_file(tmp_path / "v4.pth", v4.init_state(), v4)
    with pytest.raises(ValueError, match=r"state has shape \(3,\)"):
        save_state_file(tmp_path / "short.pth", np.zeros(3, np.float32), v6)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["wide.safetensors", "wide2.safetensors", "deep.safetensors", "deep2.safetensors", "one.safetensors",
         "model.safetensors", "nan.safetensors", "ok.safetensors"])
