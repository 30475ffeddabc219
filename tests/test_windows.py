"""The engine and librwkv built for Windows with MinGW-w64 and run under Wine.

The whole engine (tests/emulated/model_check.c: the built-in model in FP16 and quantized, one
token at a time, as a sequence and batched, every kernel level against the portable one) and
librwkv as C programs use it (tests/c/librwkv_check.c: loading, errors, sequences, cloning,
quantizing to a UTF-8 file name), cross-compiled with CMake's RWKV_BUILD_CHECKS and
tests/emulated/mingw-toolchain.cmake. Debian: gcc-mingw-w64-x86-64 and wine64 (or wine); skips
without them. Building takes about a minute on two cores; Wine's first start, about ten seconds.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import rwkvcpp
from rwkvcpp.data import builtin_model_path

ROOT = Path(__file__).resolve().parent.parent
TOOLCHAIN = ROOT / "tests" / "emulated" / "mingw-toolchain.cmake"
MODEL = ROOT / "tests" / "data" / "rwkv_cpp" / "tiny-rwkv-5v2-730K-FP32.bin"


def _tool(*names: str) -> str:
    for name in names:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(f"{names[0]} is not installed")


@pytest.fixture(scope="module")
def windows_build(tmp_path_factory):
    """The checks built for 64-bit Windows, and how to run a Windows program here."""
    _tool("x86_64-w64-mingw32-gcc-posix")
    wine = _tool("wine64", "wine")
    cmake = _tool("cmake")
    build = tmp_path_factory.mktemp("windows-build")
    for command in ([cmake, "-S", ROOT, "-B", build, "-DRWKV_BUILD_CHECKS=ON", f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}"],
                    [cmake, "--build", build, "--target", "model_check", "librwkv_check", "--parallel", "2"]):
        done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    env = {**os.environ, "WINEDEBUG": "-all", "WINEPREFIX": str(tmp_path_factory.mktemp("wineprefix"))}

    def run(program: str, *args) -> subprocess.CompletedProcess:
        # The DLL is found beside the program, as Windows looks there first.
        return subprocess.run([wine, str(build / program), *map(str, args)], capture_output=True, text=True,
                              timeout=600, env=env, cwd=build)

    return run


def test_engine_under_wine(windows_build, tmp_path):
    run = windows_build("model_check.exe", builtin_model_path(), tmp_path, "Q8_0", "Q5_1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(" ok") == 9 and "0 mismatches" in run.stdout, run.stdout
    # Quantized on Windows, written through its own output code: the same bytes as here.
    rwkvcpp.quantize(builtin_model_path(), tmp_path / "here-Q8_0.bin", "Q8_0", quantize_head=True)  # as model_check
    assert filecmp.cmp(tmp_path / "Q8_0.bin", tmp_path / "here-Q8_0.bin", shallow=False)


def test_librwkv_under_wine(windows_build, tmp_path):
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("not a model file, but long enough to have a header\n")
    run = windows_build("librwkv_check.exe", MODEL, not_a_model, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok"
    assert (tmp_path / "modèle-Ω-Q5_1.bin").is_file()
