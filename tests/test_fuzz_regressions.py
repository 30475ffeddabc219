"""Every input the coverage-guided fuzzers (tools/fuzz/run.py) ever found a fault with, kept in
tests/data/fuzz/ and run through the public API: ``loader-*`` files as model files (loaded mapped
and copied, evaluated, verified, quantized), ``readers-*`` files through the ``.bin``, checkpoint
and GGUF readers. Each must be refused with the package's own errors or work; a crash, a hang or
another exception fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from rwkvcpp import _core
from rwkvcpp import format as fmt
from rwkvcpp.conversion.gguf_file import GGUFFile
from rwkvcpp.conversion.load import load_checkpoint
from rwkvcpp.model import Model, RWKVError

FINDINGS = Path(__file__).parent / "data" / "fuzz"


def findings(prefix: str) -> list:
    return sorted(FINDINGS.glob(f"{prefix}-*")) or [pytest.param(None, marks=pytest.mark.skip("none kept"))]


@pytest.mark.parametrize("path", findings("loader"), ids=lambda p: p.name if p else "none")
def test_loader_findings_are_refused_or_run(path, tmp_path):
    for mmap in (True, False):
        try:
            model = Model(path, threads=1, mmap=mmap)
        except RWKVError:
            continue
        for tokens in ([0], [0, model.n_vocab - 1, model.n_vocab // 2]):
            try:
                model.eval_sequence(tokens, all_logits=True)
            except RWKVError:
                pass
        model.close()
    try:
        _core.verify_file(path)
        _core.quantize_file(path, tmp_path / "q.bin", 9, quantize_head=True)
    except RWKVError:
        pass


@pytest.mark.parametrize("path", findings("readers"), ids=lambda p: p.name if p else "none")
def test_reader_findings_are_refused_or_read(path):
    def read_checkpoint():
        checkpoint = load_checkpoint(path)
        for name in checkpoint:
            checkpoint[name]

    def read_gguf():
        with GGUFFile(path) as gguf:
            for tensor in gguf.tensors.values():
                gguf.data(tensor)

    for read in (lambda: fmt.load_records(path), read_checkpoint, read_gguf):
        try:
            read()
        except (ValueError, OSError):  # CheckpointError and GGUFError are ValueErrors
            pass
