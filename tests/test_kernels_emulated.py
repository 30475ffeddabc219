"""Kernel levels this CPU lacks, checked anyway: the AVX-512 (VNNI) kernels compiled against SIMDe,
portable implementations of the Intel intrinsics, and compared with the portable C kernels for every
weight format, odd sizes and the sequence-mode micro-GEMM. On a CPU with AVX-512, test_kernels.py
also runs them natively inside the engine."""

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "emulated" / "avx512_check.c"
CSRC = ROOT / "csrc"

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the AVX-512 kernels are x86-64 code")


def _compiler():
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no C compiler")


def test_avx512_kernels_match_portable_kernels(tmp_path):
    if not CSRC.is_dir():
        pytest.skip("needs the source tree (csrc/)")
    cc = _compiler()
    probe = subprocess.run([cc, "-E", "-x", "c", "-", "-o", "/dev/null"], input="#include <simde/x86/avx512.h>\n",
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("SIMDe headers not installed (Debian: libsimde-dev)")
    exe = tmp_path / "avx512_check"
    build = subprocess.run([cc, "-O1", "-std=gnu11", "-Wno-psabi", f"-I{CSRC}", str(HARNESS), str(CSRC / "types.c"),
                            str(CSRC / "quant.c"), "-lm", "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 mismatches" in run.stdout
    assert run.stdout.count(" ok") == 7 * 4 + 8  # every format and size, every GEMM shape
