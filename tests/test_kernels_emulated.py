"""Kernel levels this CPU lacks, checked anyway against the portable C kernels:

- AVX-512 (VNNI): the kernels compiled against SIMDe (portable implementations of the Intel
  intrinsics) and run on any x86-64 CPU;
- NEON: the engine cross-compiled for AArch64 and run under qemu-aarch64, kernel by kernel and on a
  whole model in every block format.

The checks (tests/emulated/) are CMake targets of the project's own build, configured here with
RWKV_BUILD_CHECKS=ON. On a CPU that has the level, test_kernels.py also runs it natively inside the
engine. Each check skips when its tools are missing (cmake; Debian: libsimde-dev;
gcc-aarch64-linux-gnu, qemu-user)."""

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from rwkvcpp.data import builtin_model_path

ROOT = Path(__file__).resolve().parent.parent
AARCH64_TOOLCHAIN = ROOT / "tests" / "emulated" / "aarch64-toolchain.cmake"

pytestmark = pytest.mark.skipif(not (ROOT / "CMakeLists.txt").is_file(), reason="needs the source tree")


def _tool(*names):
    for name in names:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(f"{names[0]} is not installed")


def _checked(cmd, timeout=900):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _configure(build_dir, *options):
    """Configures the checks' build; returns its CMake cache as text."""
    cmake = _tool("cmake")
    _checked([cmake, "-S", ROOT, "-B", build_dir, "-DRWKV_BUILD_CHECKS=ON", *options])
    return (build_dir / "CMakeCache.txt").read_text()


def _build(build_dir, *targets):
    _checked([_tool("cmake"), "--build", build_dir, "--target", *targets, "--parallel", "2"])


def _run(cmd, timeout=300):
    out = _checked(cmd, timeout)
    assert "0 mismatches" in out
    return out


# Every format at four sizes, its row kernels at two and its decoder, the activation quantizer,
# every GEMM shape (x2).
KERNEL_CHECKS = 9 * 4 + 9 * 2 + 9 + 1 + 10


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="AVX-512 is x86-64 code")
def test_avx512_kernels_match_portable_kernels(tmp_path):
    cache = _configure(tmp_path)
    if "RWKV_HAVE_SIMDE:INTERNAL=1" not in cache:
        pytest.skip("SIMDe headers are not installed (Debian: libsimde-dev)")
    _build(tmp_path, "avx512_check")
    assert _run([tmp_path / "avx512_check"]).count(" ok") == KERNEL_CHECKS


@pytest.fixture(scope="module")
def arm_build(tmp_path_factory):
    """The checks built for AArch64, and the emulator to run them."""
    _tool("aarch64-linux-gnu-gcc")
    qemu = _tool("qemu-aarch64", "qemu-aarch64-static")
    build_dir = tmp_path_factory.mktemp("aarch64")
    _configure(build_dir, f"-DCMAKE_TOOLCHAIN_FILE={AARCH64_TOOLCHAIN}")
    _build(build_dir, "neon_check", "model_check")
    return build_dir, qemu


def test_neon_kernels_match_portable_kernels(arm_build):
    build_dir, qemu = arm_build
    assert _run([qemu, build_dir / "neon_check"]).count(" ok") == KERNEL_CHECKS


def test_neon_engine_matches_portable_engine_on_a_model(arm_build, tmp_path):
    """The whole engine built for AArch64 (dispatch, threads, every architecture file): the built-in
    model and its quantized versions give the portable path's logits with the NEON level."""
    build_dir, qemu = arm_build
    types = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
    out = _run([qemu, build_dir / "model_check", builtin_model_path(), tmp_path, *types])
    assert out.startswith("kernel level: neon")
    assert out.count(" ok") == 3 * 6  # serial, sequence and batch, for the file and five block formats


def test_neon_engine_runs_k_formats_and_quantizes_them_as_x86_does(arm_build, tmp_path):
    """The K formats need rows of 256: a random v7 model 256 wide, quantized under AArch64 to Q4_K
    and Q5_K, gives the portable path's logits with the NEON level, and the files it writes are
    byte-identical to this machine's (the reference rounding does not depend on the CPU)."""
    from rwkvcpp import quantize
    from rwkvcpp.writer import write_model
    from support.checkpoints import make_checkpoint

    build_dir, qemu = arm_build
    model = tmp_path / "v7-256.bin"
    write_model(model, make_checkpoint("v7", n_layer=2, n_embed=256, n_vocab=300, seed=5), "FP16")
    out = _run([qemu, build_dir / "model_check", model, tmp_path, "Q4_K", "Q5_K"])
    assert out.count(" ok") == 3 * 3, out
    for name in ("Q4_K", "Q5_K"):
        here = tmp_path / f"{name}-x86.bin"
        quantize(model, here, name, quantize_head=True)
        assert (tmp_path / f"{name}.bin").read_bytes() == here.read_bytes(), f"{name} files differ"
