"""Kernel levels this CPU lacks, checked anyway against the portable C kernels:

- AVX-512 (VNNI): the kernels compiled against SIMDe (portable implementations of the Intel
  intrinsics) and run on any x86-64 CPU;
- NEON: the engine cross-compiled for AArch64 and run under qemu-aarch64, kernel by kernel and on a
  whole model in every block format.

On a CPU that has the level, test_kernels.py also runs it natively inside the engine. Each check
skips when its tools are missing (Debian: libsimde-dev; gcc-aarch64-linux-gnu, qemu-user)."""

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from rwkvcpp.data import builtin_model_path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
EMULATED = ROOT / "tests" / "emulated"
ENGINE_SOURCES = sorted(CSRC.glob("*.c")) + sorted((CSRC / "arch").glob("*.c"))

pytestmark = pytest.mark.skipif(not CSRC.is_dir(), reason="needs the source tree (csrc/)")


def _tool(*names):
    for name in names:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(f"{names[0]} is not installed")


def _build(cmd):
    build = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr


def _run(cmd, timeout=300):
    run = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 mismatches" in run.stdout
    return run.stdout


KERNEL_CHECKS = 7 * 4 + 1 + 10  # every format and size, the activation quantizer, every GEMM shape (x2)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="AVX-512 is x86-64 code")
def test_avx512_kernels_match_portable_kernels(tmp_path):
    cc = _tool("cc", "gcc", "clang")
    probe = subprocess.run([cc, "-E", "-x", "c", "-", "-o", "/dev/null"], input="#include <simde/x86/avx512.h>\n",
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("SIMDe headers are not installed (Debian: libsimde-dev)")
    exe = tmp_path / "avx512_check"
    _build([cc, "-O1", "-std=gnu11", "-Wno-psabi", "-DCHECK_AVX512", f"-I{CSRC}", EMULATED / "kernels_check.c",
            CSRC / "types.c", CSRC / "quant.c", "-lm", "-o", exe])
    assert _run([exe]).count(" ok") == KERNEL_CHECKS


@pytest.fixture(scope="module")
def arm_tools():
    return _tool("aarch64-linux-gnu-gcc"), _tool("qemu-aarch64", "qemu-aarch64-static")


def test_neon_kernels_match_portable_kernels(arm_tools, tmp_path):
    cc, qemu = arm_tools
    exe = tmp_path / "neon_check"
    _build([cc, "-O1", "-std=gnu11", "-static", "-DCHECK_NEON", f"-I{CSRC}", EMULATED / "kernels_check.c",
            CSRC / "types.c", CSRC / "quant.c", "-lm", "-o", exe])
    assert _run([qemu, exe]).count(" ok") == KERNEL_CHECKS


def test_neon_engine_matches_portable_engine_on_a_model(arm_tools, tmp_path):
    """The whole engine built for AArch64 (dispatch, threads, every architecture file): the built-in
    model and its quantized versions give the portable path's logits with the NEON level."""
    cc, qemu = arm_tools
    exe = tmp_path / "model_check"
    _build([cc, "-O2", "-std=gnu11", "-D_GNU_SOURCE", "-fopenmp-simd", "-static", f"-I{CSRC}",
            EMULATED / "model_check.c", *ENGINE_SOURCES, CSRC / "kernels" / "neon.c", "-lm", "-lpthread", "-o", exe])
    out = _run([qemu, exe, builtin_model_path(), tmp_path])
    assert out.startswith("kernel level: neon")
    assert out.count(" ok") == 2 * 6  # serial and sequence, for the file and five block formats
