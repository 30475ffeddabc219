"""Logits from the official `rwkv` pip package, for comparing our engines against it.

Each call runs tests/support/official_runner.py in a fresh interpreter (the package configures itself
from environment variables at import time, differently for v7). Callers should first skip when
torch or rwkv are missing, e.g. with ``pytest.importorskip("rwkv.model")`` -- or use
``require_official()``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUNNER = Path(__file__).with_name("official_runner.py")


def require_official() -> None:
    """Skips the calling test when torch or the official rwkv package is not installed."""
    import importlib.util

    import pytest

    for module in ("torch", "rwkv"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")


def run_official(pth_path, arch: str, tokens, modes=("serial",), timeout: float = 600) -> dict[str, np.ndarray]:
    """Runs the official package on `tokens` from a fresh state, once per mode.

    Modes: "serial" (one token per forward call) and "sequence" (all tokens in one call). Returns
    {"logits_<mode>": (T, V) float32, "state_<mode>": flat final state in FORMAT.md's layout}.
    """
    tokens = [int(t) for t in tokens]
    if not tokens:
        raise ValueError("need at least one token")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "official.npz")
        cmd = [sys.executable, str(RUNNER), arch, str(pth_path), out, *map(str, tokens), "--modes", ",".join(modes)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(
                f"official rwkv run failed (exit {proc.returncode}) for {arch} {pth_path}:\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        with np.load(out) as data:
            return {name: data[name] for name in data.files}


def official_logits(pth_path, arch: str, tokens) -> np.ndarray:
    """Logits (T, V) of the official package fed one token at a time from a fresh state."""
    return run_official(pth_path, arch, tokens, modes=("serial",))["logits_serial"]
