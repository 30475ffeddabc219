"""Compiling C programs written for rwkv.cpp's rwkv.h against the librwkv this package ships."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rwkvcpp.c_api import librwkv_path

HEADER_DIR = Path(__file__).resolve().parents[2] / "csrc" / "librwkv" / "include"


def compile_against_librwkv(source: Path, exe: Path, include: Path = HEADER_DIR) -> None:
    """Builds a C program written for rwkv.cpp's rwkv.h, linked with the shipped librwkv."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    lib = Path(librwkv_path())
    subprocess.run([cc, "-O1", f"-I{include}", str(source), str(lib), f"-Wl,-rpath,{lib.parent}", "-lm",
                    "-o", str(exe)], check=True)
