"""Merging a LoRA into a model file (rwkvcpp.conversion.lora.merge_lora, `rwkvcpp merge-lora`,
python/merge_lora_into_ggml.py).

A merged file must equal, tensor for tensor and byte for byte:
* for LoRA pairs, a numpy merge of the same tensors written here: W + B @ A * alpha / r, with
  the product and the scaled product rounded to the LoRA's type and an FP16 tensor rounded to
  FP16, as rwkv.cpp's script does in torch;
* for tensors the LoRA replaces, the file converted from the checkpoint holding them.
LoRA files are written without torch (tests/support/pth_writer.py), in bf16, fp16 and fp32.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkvcpp import format as fmt
from rwkvcpp.cli import main as cli_main
from rwkvcpp.conversion.lora import merge_lora
from rwkvcpp.writer import write_model

from support import pth_writer as pw
from support.checkpoints import ARCHES, make_checkpoint, round_to_bf16

ROOT = Path(__file__).resolve().parent.parent
ALPHA = 24
RANK = 8
#: rwkv.cpp's script's version names
SCRIPT_ARCH = {"v4": "v4", "v5.1": "v5.1", "v5.2": "v5.2", "v6": "v6.0", "v7": "v7"}


@pytest.fixture(scope="module")
def checkpoints():
    return {arch: make_checkpoint(arch, 2, 128, 256, seed=90 + i) for i, arch in enumerate(ARCHES)}


def linear_weights(checkpoint):
    """The Linear layers a LoRA adapts: every 2-D '....weight' of the attention and FFN."""
    return [n for n, v in checkpoint.items() if v.ndim == 2 and n.endswith(".weight") and (".att." in n or ".ffn." in n)]


def replaced_tensors(arch):
    """Tensors a LoRA trains in full (time_* / v7's mixes and low-rank factors, norms; one
    Linear weight that also has a pair: replaced first, then merged)."""
    return ["blocks.0.att.key.weight"] + {
        "v4": ["blocks.1.att.time_decay", "blocks.1.att.time_first", "blocks.0.ffn.time_mix_k", "blocks.1.ln1.weight"],
        "v5.1": ["blocks.1.att.time_decay", "blocks.1.att.time_first", "blocks.1.att.ln_x.weight"],
        "v5.2": ["blocks.1.att.time_decay", "blocks.1.att.time_faaaa", "blocks.0.att.time_mix_g"],
        "v6": ["blocks.1.att.time_decay", "blocks.1.att.time_maa_w1", "blocks.1.att.time_maa_w2", "blocks.0.att.time_faaaa"],
        "v7": ["blocks.1.att.x_a", "blocks.1.att.x_g", "blocks.1.att.w1", "blocks.1.att.v0", "blocks.0.att.k_k"],
    }[arch]


def make_lora(checkpoint, arch, dtype, seed=5, pairs=True, replace=True):
    """(values as float32 arrays exact in ``dtype``, the dtype) of a LoRA for this checkpoint."""
    rng = np.random.default_rng(seed)
    exact = {"bfloat16": round_to_bf16, "float16": lambda a: a.astype(np.float16).astype(np.float32),
             "float32": lambda a: a.astype(np.float32)}[dtype]
    lora = {}
    if pairs:
        for name in linear_weights(checkpoint):
            out_features, in_features = checkpoint[name].shape
            base = name[: -len(".weight")]
            lora[base + ".lora_A"] = exact(rng.standard_normal((RANK, in_features)) * 0.2)
            lora[base + ".lora_B"] = exact(rng.standard_normal((out_features, RANK)) * 0.05)
    if replace:
        for name in replaced_tensors(arch):
            lora[name] = exact(checkpoint[name] + rng.standard_normal(checkpoint[name].shape) * 0.02)
    return lora


def save_lora(path, lora, dtype):
    pw.write_pth(path, {name: pw.tensor(value, dtype) for name, value in lora.items()})


def round_as(values, dtype):
    if dtype == "bfloat16":
        return round_to_bf16(values)
    return values.astype(np.float16).astype(np.float32) if dtype == "float16" else values.astype(np.float32)


def numpy_merge(weight, lora_a, lora_b, dtype, fp16):
    """rwkv.cpp's `parameter + lora_B @ lora_A * (alpha / r)` with torch's roundings."""
    product = round_as((lora_b.astype(np.float64) @ lora_a.astype(np.float64)).astype(np.float32), dtype)
    scaled = round_as(product * np.float32(ALPHA / lora_a.shape[0]), dtype)
    merged = weight.astype(np.float32) + scaled
    return merged.astype(np.float16).astype(np.float32) if fp16 else merged


def tensors(path):
    return {r.name: (r.type_id, np.array(fmt.read_tensor_f32(path, r))) for r in fmt.iter_records(path)}


# ----------------------------------------------------------------------------- merging


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("file_type", ["FP32", "FP16"])
@pytest.mark.parametrize("arch", ARCHES)
def test_merge_equals_numpy_merge(arch, file_type, dtype, checkpoints, tmp_path):
    check_merge(checkpoints[arch], arch, file_type, dtype, tmp_path)


@pytest.mark.parametrize("arch", ["v5.1", "v5.2", "v6", "v7"])
def test_merge_with_heads_of_8(arch, tmp_path):
    """Per-head tensors the LoRA replaces take the model's own head size."""
    check_merge(make_checkpoint(arch, 2, 64, 256, seed=7, head_size=8), arch, "FP16", "bfloat16", tmp_path)


def check_merge(checkpoint, arch, file_type, dtype, tmp_path):
    lora = make_lora(checkpoint, arch, dtype)
    save_lora(tmp_path / "lora.pth", lora, dtype)
    write_model(tmp_path / "model.bin", checkpoint, file_type)
    # What the replaced tensors must become: the conversion of a checkpoint holding them.
    replaced = dict(checkpoint, **{name: lora[name] for name in replaced_tensors(arch)})
    write_model(tmp_path / "replaced.bin", replaced, file_type)

    summary = merge_lora(tmp_path / "model.bin", tmp_path / "lora.pth", tmp_path / "merged.bin", ALPHA,
                         arch=SCRIPT_ARCH[arch])
    assert sorted(summary.merged) == sorted(linear_weights(checkpoint))
    assert summary.unused == ()

    merged, base = tensors(tmp_path / "merged.bin"), tensors(tmp_path / "replaced.bin")
    assert fmt.read_header(tmp_path / "merged.bin") == fmt.read_header(tmp_path / "model.bin")
    assert list(merged) == list(base)
    for name, (type_id, value) in base.items():
        assert merged[name][0] == type_id, name
        want = value
        if name in summary.merged:
            stem = name[: -len(".weight")]
            want = numpy_merge(value, lora[stem + ".lora_A"], lora[stem + ".lora_B"], dtype, type_id == fmt.FP16)
        np.testing.assert_array_equal(merged[name][1], want, err_msg=name)


def test_v7_pairs_and_mixes(checkpoints, tmp_path):
    """RWKV-7's LoRA: pairs on receptance/key/value/output and the FFN's key/value; x_* mixes
    replace their row of x_rwkvag and nothing else."""
    checkpoint = checkpoints["v7"]
    lora = make_lora(checkpoint, "v7", "float32")
    save_lora(tmp_path / "lora.pth", lora, "float32")
    write_model(tmp_path / "model.bin", checkpoint, "FP32")
    summary = merge_lora(tmp_path / "model.bin", tmp_path / "lora.pth", tmp_path / "merged.bin", ALPHA)
    assert summary.arch == "v7"
    leaves = {name.split(".", 3)[3] for name in summary.merged}
    assert leaves == {"receptance.weight", "key.weight", "value.weight", "output.weight"}
    assert {n.split(".")[2] for n in summary.merged} == {"att", "ffn"}
    mixes = tensors(tmp_path / "merged.bin")["blocks.1.att.x_rwkvag"][1]
    before = tensors(tmp_path / "model.bin")["blocks.1.att.x_rwkvag"][1]
    np.testing.assert_array_equal(mixes[4].reshape(-1), lora["blocks.1.att.x_a"].reshape(-1))
    np.testing.assert_array_equal(mixes[5].reshape(-1), lora["blocks.1.att.x_g"].reshape(-1))
    np.testing.assert_array_equal(mixes[:4], before[:4])
    assert "blocks.1.att.x_rwkvag" in summary.replaced


def test_peft_suffix_and_unused_tensors(checkpoints, tmp_path, capsys):
    """`.lora_A.weight` names (peft's) work too; tensors that fit nothing are reported."""
    checkpoint = checkpoints["v5.2"]
    lora = make_lora(checkpoint, "v5.2", "float32", replace=False)
    lora = {name.replace(".lora_A", ".lora_A.weight").replace(".lora_B", ".lora_B.weight"): v for name, v in lora.items()}
    lora["blocks.7.att.time_decay"] = np.zeros(128, np.float32)
    save_lora(tmp_path / "lora.pth", lora, "float32")
    write_model(tmp_path / "model.bin", checkpoint, "FP16")
    assert cli_main(["merge-lora", str(tmp_path / "model.bin"), str(tmp_path / "lora.pth"),
                     str(tmp_path / "merged.bin"), "--alpha", str(ALPHA)]) == 0
    out = capsys.readouterr().out
    assert f"{len(linear_weights(checkpoint))} LoRA pairs merged" in out
    assert "1 LoRA tensors match nothing" in out and "blocks.7.att.time_decay" in out


def test_zero_lora_changes_nothing(checkpoints, tmp_path):
    checkpoint = checkpoints["v6"]
    lora = make_lora(checkpoint, "v6", "bfloat16", replace=False)
    lora = {name: np.zeros_like(v) if ".lora_B" in name else v for name, v in lora.items()}
    save_lora(tmp_path / "lora.pth", lora, "bfloat16")
    for file_type in ("FP32", "FP16"):
        write_model(tmp_path / "model.bin", checkpoint, file_type)
        merge_lora(tmp_path / "model.bin", tmp_path / "lora.pth", tmp_path / "merged.bin", ALPHA)
        assert (tmp_path / "merged.bin").read_bytes() == (tmp_path / "model.bin").read_bytes()


def test_rwkv_cpp_script(checkpoints, tmp_path):
    """python/merge_lora_into_ggml.py with rwkv.cpp's argument order."""
    checkpoint = checkpoints["v4"]
    lora = make_lora(checkpoint, "v4", "bfloat16")
    save_lora(tmp_path / "lora.pth", lora, "bfloat16")
    write_model(tmp_path / "model.bin", checkpoint, "FP16")
    merge_lora(tmp_path / "model.bin", tmp_path / "lora.pth", tmp_path / "expected.bin", ALPHA)
    run = subprocess.run([sys.executable, str(ROOT / "python" / "merge_lora_into_ggml.py"), str(tmp_path / "model.bin"),
                          "v4", str(tmp_path / "lora.pth"), str(ALPHA), str(tmp_path / "merged.bin")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "merged.bin").read_bytes() == (tmp_path / "expected.bin").read_bytes()


def test_interrupted_merge_leaves_nothing(checkpoints, tmp_path):
    write_model(tmp_path / "model.bin", checkpoints["v7"], "FP16")
    save_lora(tmp_path / "lora.pth", make_lora(checkpoints["v7"], "v7", "bfloat16"), "bfloat16")
    (tmp_path / "merged.bin").write_bytes(b"old")

    def stop(done, total, name):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge_lora(tmp_path / "model.bin", tmp_path / "lora.pth", tmp_path / "merged.bin", ALPHA, progress=stop)
    assert (tmp_path / "merged.bin").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["lora.pth", "merged.bin", "model.bin"]


# ----------------------------------------------------------------------------- refusals


def _quantized(tmp_path, checkpoint):
    from rwkvcpp.quantization import quantize

    write_model(tmp_path / "fp16.bin", checkpoint, "FP16")
    quantize(tmp_path / "fp16.bin", tmp_path / "model.bin", "Q5_1")


def _edit_lora(edit):
    def prepare(tmp_path, checkpoint):
        write_model(tmp_path / "model.bin", checkpoint, "FP16")
        lora = make_lora(checkpoint, "v5.2", "float32")
        edit(lora)
        save_lora(tmp_path / "lora.pth", lora, "float32")
    return prepare


BAD = {
    "quantized model": (_quantized, [], ["model.bin", "Q5_1", "only FP32 and FP16 models"]),
    "missing lora_B": (_edit_lora(lambda lora: lora.pop("blocks.0.att.key.lora_B")), [],
                       ["lora.pth", "'blocks.0.att.key.lora_A'", "not 'blocks.0.att.key.lora_B'"]),
    "rank mismatch": (_edit_lora(lambda lora: lora.update({"blocks.0.att.key.lora_B": np.zeros((128, 4), np.float32)})),
                      [], ["'blocks.0.att.key.weight'", "(8, 128) and (128, 4)"]),
    "wrong size": (_edit_lora(lambda lora: lora.update({"blocks.0.ffn.key.lora_A": np.zeros((RANK, 64), np.float32)})),
                   [], ["'blocks.0.ffn.key.weight'", "(448, 64)", "(448, 128)"]),
    "replacement shape": (_edit_lora(lambda lora: lora.update({"blocks.0.ln1.weight": np.zeros(64, np.float32)})),
                          [], ["'blocks.0.ln1.weight'", "(64,)", "(128,)"]),
    "version": (_edit_lora(lambda lora: None), ["--arch", "v6.0"], ["an RWKV v5.2 model, not v6.0"]),
    "unknown version": (_edit_lora(lambda lora: None), ["--arch", "v9"], ["unknown RWKV version 'v9'"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_refusals(case, checkpoints, tmp_path, capsys):
    prepare, extra, needles = BAD[case]
    prepare(tmp_path, checkpoints["v5.2"])
    if not (tmp_path / "lora.pth").exists():
        save_lora(tmp_path / "lora.pth", make_lora(checkpoints["v5.2"], "v5.2", "float32"), "float32")
    code = cli_main(["merge-lora", str(tmp_path / "model.bin"), str(tmp_path / "lora.pth"),
                     str(tmp_path / "merged.bin"), "--alpha", "16", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("rwkvcpp merge-lora: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "merged.bin").exists()


def test_bad_paths_and_alpha(checkpoints, tmp_path):
    write_model(tmp_path / "model.bin", checkpoints["v4"], "FP32")
    save_lora(tmp_path / "lora.pth", make_lora(checkpoints["v4"], "v4", "float32"), "float32")
    model, lora = tmp_path / "model.bin", tmp_path / "lora.pth"
    with pytest.raises(ValueError, match="the destination is the source"):
        merge_lora(model, lora, model, 16)
    with pytest.raises(ValueError, match="the destination is the LoRA file"):
        merge_lora(model, lora, lora, 16)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        merge_lora(model, tmp_path / "nope.pth", tmp_path / "out.bin", 16)
    with pytest.raises(ValueError, match="lora_alpha must be a number"):
        merge_lora(model, lora, tmp_path / "out.bin", "many")
    with pytest.raises(ValueError, match="not an rwkv.cpp model file"):
        merge_lora(lora, lora, tmp_path / "out.bin", 16)
