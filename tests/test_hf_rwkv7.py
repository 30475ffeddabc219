"""RWKV-7 from Hugging Face: fla's layout (fla-hub/rwkv7-*, RWKV/RWKV7-Goose-*-HF), transformers'
Rwkv7ForCausalLM (and its first port's names) and RWKV-block's folders convert to the .bin the
native checkpoint converts to, record for record, and so to the same logits.

The folders are made from a random native checkpoint by the publishers' forward mappings
(tests/support/hf_rwkv7.py); that those mappings are fla's is checked here against fla's module
semantics (Linear(x) = x @ W.T + b), not against the converter.
"""

import json
import shutil

import numpy as np
import pytest

import rwkvcpp
from rwkvcpp import format as fmt
from rwkvcpp.cli import main as cli_main
from rwkvcpp.conversion.pipeline import convert
from rwkvcpp.writer import write_model

from support.checkpoints import make_checkpoint
from support.hf_rwkv7 import (MIXES, fla_config, rwkv_block_config, to_fla, to_transformers_rwkv7,
                              transformers_rwkv7_config, write_hf_folder)

N_LAYER, N_EMBED, N_VOCAB = 3, 128, 256
TOKENS = [3, 141, 59, 26, 5, 35, 89, 79, 32, 38]


@pytest.fixture(scope="module")
def native():
    return make_checkpoint("v7", N_LAYER, N_EMBED, N_VOCAB, seed=715)


@pytest.fixture(scope="module")
def native_bins(native, tmp_path_factory):
    folder = tmp_path_factory.mktemp("native")
    out = {}
    for dtype in ("FP16", "FP32"):
        write_model(folder / f"{dtype}.bin", native, dtype)
        out[dtype] = folder / f"{dtype}.bin"
    return out


def records(path):
    """{name: (type, shape, data bytes)} of a .bin, and its header."""
    data = path.read_bytes()
    return fmt.read_header(path), {r.name: (r.type_id, r.shape, data[r.offset:r.offset + r.nbytes])
                                   for r in fmt.iter_records(path)}


def logits(path):
    with rwkvcpp.Model(path, threads=1) as model:
        out, _ = model.eval_sequence(TOKENS)
    return out


def assert_same_model(converted, expected, extra=()):
    """Same header and records (``extra``: records only the converted file has, unused by the
    engine) and the same logits."""
    header, got = records(converted)
    want_header, want = records(expected)
    assert header == want_header
    assert sorted(set(got) - set(want)) == sorted(extra)
    assert sorted(set(want) - set(got)) == []
    for name, record in want.items():
        assert got[name] == record, name
    assert np.max(np.abs(logits(converted) - logits(expected))) == 0.0


# ----------------------------------------------------------------------------- the test helper


def test_fla_mapping_computes_the_native_expressions(native):
    """fla's modules on the fla tensors compute BlinkDL's expressions on the native ones."""
    fla = to_fla(native)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, N_EMBED)).astype(np.float32)

    def linear(name, inputs):  # torch.nn.Linear: x @ W.T (+ b)
        out = inputs @ fla[name + ".weight"].T
        return out + fla[name + ".bias"] if name + ".bias" in fla else out

    def lora(layer, pair, activation):
        prefix = f"model.layers.{layer}.attn.{pair}_lora.lora."
        return linear(prefix + "2", activation(linear(prefix + "0", x)))

    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for layer in range(N_LAYER):
        att = {k[len(f"blocks.{layer}.att."):]: v for k, v in native.items() if k.startswith(f"blocks.{layer}.att.")}
        checks = [
            (lora(layer, "w", np.tanh), np.tanh(x @ att["w1"]) @ att["w2"] + att["w0"].reshape(-1)),
            (lora(layer, "a", lambda v: v), x @ att["a1"] @ att["a2"] + att["a0"].reshape(-1)),
            (lora(layer, "g", sigmoid), sigmoid(x @ att["g1"]) @ att["g2"]),
            (linear(f"model.layers.{layer}.attn.r_proj", x), x @ att["receptance.weight"].T),
            (linear(f"model.layers.{layer}.attn.o_proj", x), x @ att["output.weight"].T),
        ]
        if layer:
            checks.append((lora(layer, "v", lambda v: v), x @ att["v1"] @ att["v2"] + att["v0"].reshape(-1)))
        for got, want in checks:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not any(name.startswith("model.layers.0.attn.v_lora") for name in fla)


# ----------------------------------------------------------------------------- fla


@pytest.mark.parametrize("container, dtype, shards", [
    ("safetensors", "bfloat16", 1), ("safetensors", "float32", 3), ("pytorch", "bfloat16", 1),
    ("safetensors", "float16", 1),
])
def test_fla_folder_equals_native(container, dtype, shards, native, native_bins, tmp_path):
    expected = native_bins
    if dtype == "float16":  # not lossless for bf16 values: compare with the same rounding
        rounded = {name: value.astype(np.float16).astype(np.float32) for name, value in native.items()}
        expected = {t: tmp_path / f"expected-{t}.bin" for t in ("FP16", "FP32")}
        for out_type, path in expected.items():
            write_model(path, rounded, out_type)
    folder = write_hf_folder(tmp_path / "fla", to_fla(native), fla_config(native), container, dtype, shards)
    for out_type in ("FP16", "FP32"):
        convert(folder, tmp_path / f"{out_type}.bin", dtype=out_type)
        assert_same_model(tmp_path / f"{out_type}.bin", expected[out_type])


def test_fla_heads_of_32(tmp_path):
    native = make_checkpoint("v7", 2, 128, N_VOCAB, seed=716, head_size=32)
    write_model(tmp_path / "expected.bin", native)
    folder = write_hf_folder(tmp_path / "fla", to_fla(native), fla_config(native))
    assert json.loads((folder / "config.json").read_text())["head_dim"] == 32
    convert(folder, tmp_path / "out.bin")
    assert_same_model(tmp_path / "out.bin", tmp_path / "expected.bin")


def test_fla_fused_mixes_of_early_fla(native, native_bins, tmp_path):
    folder = write_hf_folder(tmp_path / "fla", to_fla(native, fused_mixes=True), fla_config(native))
    convert(folder, tmp_path / "out.bin")
    assert_same_model(tmp_path / "out.bin", native_bins["FP16"])


def test_fla_tied_head(native, tmp_path):
    tied = dict(native, **{"head.weight": native["emb.weight"]})
    write_model(tmp_path / "expected.bin", tied)
    fla = to_fla(tied)
    del fla["lm_head.weight"]
    folder = write_hf_folder(tmp_path / "fla", fla, fla_config(native, tie_word_embeddings=True))
    convert(folder, tmp_path / "out.bin")
    assert_same_model(tmp_path / "out.bin", tmp_path / "expected.bin")


def test_fla_cli_and_info(native, native_bins, tmp_path, capsys):
    folder = write_hf_folder(tmp_path / "fla", to_fla(native), fla_config(native))
    assert cli_main(["convert", str(folder), str(tmp_path / "out.bin")]) == 0
    assert "RWKV v7" in capsys.readouterr().out
    assert_same_model(tmp_path / "out.bin", native_bins["FP16"])
    assert cli_main(["info", str(folder)]) == 0
    assert "v7" in capsys.readouterr().out


def test_fla_quantized_in_one_step(native, native_bins, tmp_path):
    from rwkvcpp.quantization import quantize

    folder = write_hf_folder(tmp_path / "fla", to_fla(native), fla_config(native))
    convert(folder, tmp_path / "q.bin", quantize="Q5_1")
    quantize(native_bins["FP16"], tmp_path / "expected.bin", "Q5_1")
    assert (tmp_path / "q.bin").read_bytes() == (tmp_path / "expected.bin").read_bytes()


def _fla_folder_with(native, tmp_path, config=None, edit=None):
    tensors = to_fla(native)
    if edit:
        edit(tensors)
    return write_hf_folder(tmp_path / "bad", tensors, fla_config(native, **(config or {})))


BAD_FLA = {
    "hybrid attention": ({"attn": {"layers": [1], "num_heads": 2}}, None, ["config.json", "attention layers"]),
    "value_dim": ({"value_dim": 2 * N_EMBED}, None, ["value_dim 256", "hidden_size 128"]),
    "activation": ({"hidden_act": "swish"}, None, ["hidden_act", "swish"]),
    "no pre-norm": ({"norm_first": False}, None, ["norm_first", "ln0"]),
    "norm eps": ({"norm_eps": 1e-6}, None, ["norm_eps", "1e-05"]),
    "head_dim": ({"head_dim": 32}, None, ["head_dim 32", "64 channels per head"]),
    "attention layer tensor": ({}, lambda t: t.update({"model.layers.1.attn.q_proj.weight": t["lm_head.weight"]}),
                               ["model.layers.1.attn.q_proj.weight", "hybrid"]),
    "stray tensor": ({}, lambda t: t.update({"model.extra.weight": t["lm_head.weight"]}),
                     ["model.extra.weight", "not part of fla's RWKV-7"]),
    "transposed lora": ({}, lambda t: t.update({"model.layers.0.attn.w_lora.lora.0.weight":
                                                t["model.layers.0.attn.w_lora.lora.0.weight"].reshape(-1)}),
                        ["model.layers.0.attn.w_lora.lora.0.weight", "expected a matrix"]),
    "fused mixes": ({}, lambda t: t.update({"model.layers.0.attn.x_x": np.zeros((5, N_EMBED), np.float32)}),
                    ["model.layers.0.attn.x_r", "model.layers.0.attn.x_x", "would both be"]),
    "fused mixes shape": ({}, lambda t: [t.pop(f"model.layers.0.attn.{m}") for m in MIXES] and t.update(
        {"model.layers.0.attn.x_x": np.zeros((5, N_EMBED), np.float32)}),
        ["model.layers.0.attn.x_x", "(5, 128)", "expected (6, C)"]),
    "no head, not tied": ({}, lambda t: t.pop("lm_head.weight"), ["'head.weight' is missing"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FLA))
def test_fla_refusals(case, native, tmp_path, capsys):
    config, edit, needles = BAD_FLA[case]
    folder = _fla_folder_with(native, tmp_path, config, edit)
    assert cli_main(["convert", str(folder), str(tmp_path / "out.bin")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"rwkvcpp convert: error: {folder}"), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "out.bin").exists()


def test_fla_bad_config_json(native, tmp_path, capsys):
    folder = write_hf_folder(tmp_path / "fla", to_fla(native), None)
    (folder / "config.json").write_text("{not json")
    assert cli_main(["convert", str(folder), str(tmp_path / "out.bin")]) == 2
    assert "config.json: not valid JSON" in capsys.readouterr().err


def test_fla_without_config(native, native_bins, tmp_path):
    """A lone fla safetensors file converts from its tensor names alone."""
    folder = write_hf_folder(tmp_path / "fla", to_fla(native), None)
    convert(folder / "model.safetensors", tmp_path / "out.bin")
    assert_same_model(tmp_path / "out.bin", native_bins["FP16"])


# ----------------------------------------------------------------------------- transformers, RWKV-block


@pytest.mark.parametrize("first_port", [False, True], ids=["rwkv7", "first-port"])
def test_transformers_rwkv7_equals_native(first_port, native, native_bins, tmp_path):
    tensors = to_transformers_rwkv7(native, first_port)
    folder = write_hf_folder(tmp_path / "hf", tensors, transformers_rwkv7_config(native))
    convert(folder, tmp_path / "out.bin")
    assert_same_model(tmp_path / "out.bin", native_bins["FP16"])


def test_transformers_rwkv7_from_fla_keeps_layer0_value_pair(native, native_bins, tmp_path):
    """transformers' converter fills layer 0's unused v0/v1/v2 when it comes from fla: they
    are copied as unused records and change nothing."""
    with_pair = dict(native)
    width = native["blocks.1.att.v1"].shape[1]
    with_pair.update({"blocks.0.att.v0": np.zeros((1, 1, N_EMBED), np.float32),
                      "blocks.0.att.v1": np.zeros((N_EMBED, width), np.float32),
                      "blocks.0.att.v2": np.zeros((width, N_EMBED), np.float32)})
    folder = write_hf_folder(tmp_path / "hf", to_transformers_rwkv7(with_pair), transformers_rwkv7_config(native))
    convert(folder, tmp_path / "out.bin")
    assert_same_model(tmp_path / "out.bin", native_bins["FP16"],
                      extra=("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"))


def test_transformers_rwkv7_tied_head(native, tmp_path):
    tied = dict(native, **{"head.weight": native["emb.weight"]})
    write_model(tmp_path / "expected.bin", tied)
    tensors = to_transformers_rwkv7(native)
    del tensors["head.weight"]
    folder = write_hf_folder(tmp_path / "hf", tensors, transformers_rwkv7_config(native, tie_word_embeddings=True))
    convert(folder, tmp_path / "out.bin")
    assert_same_model(tmp_path / "out.bin", tmp_path / "expected.bin")


def test_transformers_rwkv7_deep_embed_refused(native, tmp_path, capsys):
    config = transformers_rwkv7_config(native, use_deep_embed=True)
    folder = write_hf_folder(tmp_path / "hf", to_transformers_rwkv7(native), config)
    assert cli_main(["convert", str(folder), str(tmp_path / "out.bin")]) == 2
    assert "use_deep_embed" in capsys.readouterr().err


def test_rwkv_block_folder_equals_native(native, native_bins, tmp_path):
    folder = write_hf_folder(tmp_path / "block", native, rwkv_block_config(native), shards=2)
    convert(folder, tmp_path / "out.bin")
    assert_same_model(tmp_path / "out.bin", native_bins["FP16"])


def test_folder_helper_config_is_fla_complete(native, tmp_path):
    """The fla folder carries what fla's RWKV7Config (and llama.cpp's converter) read."""
    folder = write_hf_folder(tmp_path / "fla", to_fla(native), fla_config(native))
    config = json.loads((folder / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "head_dim", "intermediate_size", "vocab_size",
                "decay_low_rank_dim", "a_low_rank_dim", "v_low_rank_dim", "gate_low_rank_dim", "norm_eps"):
        assert key in config, key
    assert config["architectures"] == ["RWKV7ForCausalLM"]
    shutil.rmtree(folder)
