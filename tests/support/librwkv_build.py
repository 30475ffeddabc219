"""C programs written for rwkv.cpp's rwkv.h, on the librwkv this package ships: compiling them, and
what rwkv.cpp's own C tests are and how to read test_tiny_rwkv's log (tests/test_rwkv_cpp_code.py
runs them natively, tests/test_windows.py under Wine)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rwkvcpp.c_api import librwkv_path

# rwkv.cpp's C tests that use only rwkv.h. These pass or abort:
STRICT_TESTS = ["test_context_cloning", "test_eval_sequence_in_chunks", "test_logit_calculation_skipping",
                "test_quantization_format_compatibility"]
# test_tiny_rwkv checks every version and format, quantizing the FP32 and FP16 files itself; it
# records each failure and aborts at the end, so its log says which models failed.
VERSIONS = ["4v0-660K", "5v1-730K", "5v2-730K", "6v0-3m", "7v0-834K"]
# The one case outside rwkv.cpp's bound, explained in tests/test_rwkv_cpp_models.py (ggml rounds
# the activations of FP16 matrices to FP16; this engine keeps them in float).
KNOWN_DEVIATIONS = {"tiny-rwkv-7v0-834K-FP16-to-Q8_0.bin"}

HEADER_DIR = Path(__file__).resolve().parents[2] / "csrc" / "librwkv" / "include"


def compile_against_librwkv(source: Path, exe: Path, include: Path = HEADER_DIR) -> None:
    """Builds a C program written for rwkv.cpp's rwkv.h, linked with the shipped librwkv."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    lib = Path(librwkv_path())
    subprocess.run([cc, "-O1", f"-I{include}", str(source), str(lib), f"-Wl,-rpath,{lib.parent}", "-lm",
                    "-o", str(exe)], check=True)


def failed_models(log: str) -> dict[str, list[str]]:
    """The model files test_tiny_rwkv reported failures for, with the failure messages."""
    failures: dict[str, list[str]] = {}
    model = None
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Testing "):
            model = line.split()[1]
        elif line.startswith("*** Assertion failed ***"):
            failures.setdefault(model or "(before any model)", []).append(lines[i + 1] if i + 1 < len(lines) else "")
    return failures


def check_tiny_rwkv_log(log: str, returncode: int, test_dir: Path) -> set[str]:
    """Asserts that test_tiny_rwkv ran every case and failed none but the known deviation and those
    of models whose FP32/FP16 files test_dir lacks; returns those models' versions."""
    missing = {version for version in VERSIONS for kind in ("FP32", "FP16")
               if not (test_dir / f"tiny-rwkv-{version}-{kind}.bin").exists()}
    failures = failed_models(log)
    tested = set(re.findall(r"^Testing (\S+)", log, re.M))
    assert len(tested) == len(VERSIONS) * (2 + 2 * 5), log[-2000:]  # FP32, FP16, both to 5 formats
    unexplained = {model: why for model, why in failures.items()
                   if model not in KNOWN_DEVIATIONS and not any(f"-{v}-" in model for v in missing)}
    assert not unexplained, unexplained
    assert (returncode == 0) == (not failures), log[-2000:]
    return missing
