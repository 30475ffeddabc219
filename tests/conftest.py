"""Shared fixtures: one small FP32 and one FP16 model file per architecture, built once per session.

The models are the random checkpoints of tests/checkpoints.py (n_layer=2, n_embed=128,
n_vocab=256), written with rwkvcpp.writer.write_model. Building all ten files takes well under a
second; the engine and model-file suites share them (and the checkpoints they came from).

Use them as

    @pytest.mark.parametrize("arch", ARCHES)
    def test_something(model_set):       # model_set picks up the `arch` parameter
        model_set.fp32, model_set.fp16, model_set.checkpoint ...

or through the session-wide ``model_files`` dict ({arch: ModelSet}).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from support.checkpoints import ARCHES, make_checkpoint

N_LAYER = 2
N_EMBED = 128
N_VOCAB = 256


@dataclass(frozen=True)
class ModelSet:
    arch: str
    checkpoint: dict  # raw checkpoint (PyTorch names and shapes), float32 bf16-exact values
    fp32: Path  # FP32 .bin file
    fp16: Path  # FP16 .bin file (2-D matrices FP16 per FORMAT.md, the rest FP32)

    @property
    def n_layer(self) -> int:
        return N_LAYER

    @property
    def n_embed(self) -> int:
        return N_EMBED

    @property
    def n_vocab(self) -> int:
        return N_VOCAB


def _seed(arch: str) -> int:
    # A different model per architecture, fixed across runs.
    return 1000 + ARCHES.index(arch)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, ModelSet]:
    """{arch: ModelSet} for every architecture, written once into a session tmp dir."""
    from rwkvcpp.writer import write_model

    directory = tmp_path_factory.mktemp("models")
    sets = {}
    for arch in ARCHES:
        checkpoint = make_checkpoint(arch, n_layer=N_LAYER, n_embed=N_EMBED, n_vocab=N_VOCAB, seed=_seed(arch))
        name = arch.replace(".", "_")
        fp32, fp16 = directory / f"{name}-fp32.bin", directory / f"{name}-fp16.bin"
        write_model(fp32, checkpoint, dtype="FP32")
        write_model(fp16, checkpoint, dtype="FP16")
        sets[arch] = ModelSet(arch, checkpoint, fp32, fp16)
    return sets


@pytest.fixture
def model_set(model_files, arch) -> ModelSet:
    """The ModelSet of the test's `arch` parameter."""
    return model_files[arch]


@pytest.fixture(scope="session")
def fixed_tokens():
    """A deterministic 40-token sequence (valid for N_VOCAB)."""
    return [int(t) for t in np.random.default_rng(4321).integers(0, N_VOCAB, 40)]


@pytest.fixture(scope="session")
def reference_runs(model_files, fixed_tokens):
    """Lazily computed float64 reference results on `fixed_tokens`: {arch: (logits (T,V), state)}."""
    from support.reference import Reference

    cache = {}

    class Runs:
        def __getitem__(self, arch):
            if arch not in cache:
                cache[arch] = Reference(model_files[arch].checkpoint).eval_sequence(fixed_tokens)
            return cache[arch]

    return Runs()


def pytest_configure(config):
    config.addinivalue_line("markers", "ray: starts a local Ray cluster (tests/test_scale_ray.py, about a minute and "
                                       "a half); -m 'not ray' leaves them out")
    config.addinivalue_line("markers", "wheel: builds the wheel and checks it in a fresh environment "
                                       "(tests/test_wheel.py, a few minutes); -m 'not wheel' leaves it out")
