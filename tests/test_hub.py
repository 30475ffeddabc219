"""Models by name (rwkvcpp.hub, Model.from_pretrained) from a local folder laid out as the Hugging
Face Hub's cache, with HF_HUB_OFFLINE=1: no network. Each case runs in a fresh interpreter,
because huggingface-hub reads its settings when it is imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("huggingface_hub")

from support.checkpoints import make_checkpoint, save_pth  # noqa: E402

from rwkvcpp.writer import write_model  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_repo(cache, repo_id: str, files: dict) -> None:
    """A repository in the hub cache's layout: refs/main names a snapshot holding the files."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)


def run(tmp_path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "RWKVCPP_CACHE": str(tmp_path / "rwkvcpp")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def hub(tmp_path):
    ck = make_checkpoint("v7", n_layer=1, n_embed=64, n_vocab=256, seed=5)
    write_model(tmp_path / "m.bin", ck, dtype="FP16")
    save_pth(ck, tmp_path / "m.pth")
    cache = tmp_path / "hub"
    cached_repo(cache, "someone/rwkv-bin", {"rwkv-tiny.bin": tmp_path / "m.bin", "README.md": tmp_path / "m.bin"})
    cached_repo(cache, "someone/rwkv-pth", {"a.pth": tmp_path / "m.pth", "b.pth": tmp_path / "m.pth"})
    return tmp_path


def test_from_pretrained_offline(hub):
    done = run(hub, f"""
import numpy as np, os
from rwkvcpp import Model
from rwkvcpp.hub import resolve
reference = Model({str(hub / 'm.bin')!r})
want = reference.eval_sequence([1, 2, 3])[0]
m = Model.from_pretrained("someone/rwkv-bin", threads=1)       # the one .bin, used in place
assert m.path.endswith("rwkv-tiny.bin") and m.threads == 1, m.path
assert np.array_equal(m.eval_sequence([1, 2, 3])[0], want)
p = Model.from_pretrained("someone/rwkv-pth", "b.pth")           # converted once, then found
assert p.path.startswith(os.environ["RWKVCPP_CACHE"]) and p.path.endswith(".bin"), p.path
np.testing.assert_allclose(p.eval_sequence([1, 2, 3])[0], want, atol=2e-2)
stamp = os.stat(p.path).st_mtime_ns
assert resolve("someone/rwkv-pth", "b.pth") == p.path and os.stat(p.path).st_mtime_ns == stamp
try:
    Model.from_pretrained("someone/rwkv-pth")
except ValueError as e:
    assert "has 2 model files; name one as someone/rwkv-pth:FILE" in str(e), e
else:
    raise AssertionError("two candidates must be an error")
try:
    Model.from_pretrained("someone/missing")
except FileNotFoundError as e:
    assert "someone/missing" in str(e) and "local cache" in str(e), e
print("ok")
""")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_split_spec():
    from rwkvcpp.hub import split_spec

    assert split_spec("org/name:sub/file.pth") == ("org/name", "sub/file.pth")
    assert split_spec("org/name") == ("org/name", None)
    with pytest.raises(ValueError, match="not a Hugging Face model name"):
        split_spec("just-a-name")


def cli(tmp_path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "RWKVCPP_CACHE": str(tmp_path / "rwkvcpp")}
    return subprocess.run([sys.executable, "-m", "rwkvcpp", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_commands_take_models_by_name(hub):
    from rwkvcpp import Model

    local = cli(hub, "generate", hub / "m.bin", "--prompt", "ab", "-n", 4, "--temperature", 0, "--tokenizer", "bytes")
    assert local.returncode == 0, local.stderr
    by_name = cli(hub, "generate", "--hf", "someone/rwkv-bin", "--prompt", "ab", "-n", 4, "--temperature", 0,
                  "--tokenizer", "bytes")
    assert by_name.returncode == 0 and by_name.stdout == local.stdout, by_name.stderr

    converted = cli(hub, "generate", "--hf", "someone/rwkv-pth:a.pth", "--prompt", "ab", "-n", 1,
                    "--tokenizer", "bytes")
    assert converted.returncode == 0 and "converting someone/rwkv-pth:a.pth" in converted.stderr, converted.stderr

    out = hub / "out.bin"
    done = cli(hub, "convert", "--hf", "someone/rwkv-pth:b.pth", out, "--dtype", "FP32")
    assert done.returncode == 0, done.stderr
    reference = Model(hub / "m.bin")
    np.testing.assert_allclose(Model(out).eval_sequence([1, 2, 3])[0], reference.eval_sequence([1, 2, 3])[0],
                               atol=2e-2)


@pytest.mark.parametrize("args, first_line", [
    (["generate", "--hf", "no-slash", "-n", "1", "--prompt", "x"],
     "rwkvcpp generate: error: --hf no-slash: 'no-slash' is not a Hugging Face model name: expected ORG/NAME or ORG/NAME:FILE"),
    (["generate", "--hf", "someone/rwkv-pth", "-n", "1", "--prompt", "x"],
     "rwkvcpp generate: error: --hf someone/rwkv-pth: someone/rwkv-pth has 2 model files; name one as someone/rwkv-pth:FILE"),
    (["generate", "M.bin", "--hf", "someone/rwkv-bin", "--prompt", "x"],
     "rwkvcpp generate: error: give MODEL (M.bin) or --hf someone/rwkv-bin, not both"),
    (["convert", "--hf", "someone/rwkv-bin"], "rwkvcpp convert: error: give SRC and DST (or --hf REPO[:FILE] and DST)"),
])
def test_commands_name_a_bad_model_name(hub, args, first_line):
    done = cli(hub, *args)
    assert done.returncode == 2 and done.stderr.splitlines()[0].startswith(first_line), done.stderr
    assert "Traceback" not in done.stderr
