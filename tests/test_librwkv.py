"""librwkv: rwkv.cpp's C API over this engine, as C programs and ctypes bindings use it.

tests/c/librwkv_check.c is compiled against csrc/librwkv/include/rwkv.h and linked with the
library the package ships (rwkvcpp.librwkv_path()); through ctypes, the library's logits are the
Python API's. rwkv.cpp's own tests and Python wrapper run on it in tests/test_rwkv_cpp_code.py.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rwkvcpp
from rwkvcpp.c_api import librwkv_path
from support.librwkv_build import HEADER_DIR, compile_against_librwkv

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "rwkv_cpp"
MODEL = DATA / "tiny-rwkv-5v2-730K-FP32.bin"
EXPORTED = {
    "rwkv_set_print_errors", "rwkv_get_print_errors", "rwkv_get_last_error", "rwkv_init_from_file",
    "rwkv_clone_context", "rwkv_eval", "rwkv_eval_sequence", "rwkv_eval_sequence_in_chunks", "rwkv_get_n_vocab",
    "rwkv_get_n_embed", "rwkv_get_n_layer", "rwkv_get_state_len", "rwkv_get_logits_len", "rwkv_init_state",
    "rwkv_free", "rwkv_quantize_model_file", "rwkv_get_system_info_string",
    "rwkv_get_state_buffer_element_count", "rwkv_get_logits_buffer_element_count",
}


def test_librwkv_path_is_in_the_package():
    from rwkvcpp import _core

    path = Path(rwkvcpp.librwkv_path())
    assert path.is_file() and path.parent == Path(_core.__file__).parent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the ELF symbol table with nm")
def test_exports_rwkv_cpp_api_only():
    """The engine's own functions stay inside: only rwkv.cpp's names are exported."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm")
    out = subprocess.run([nm, "-D", "--defined-only", librwkv_path()], capture_output=True, text=True, check=True)
    assert {line.split()[-1] for line in out.stdout.splitlines()} == EXPORTED


def test_c_program(tmp_path):
    exe = tmp_path / "librwkv_check"
    compile_against_librwkv(ROOT / "tests" / "c" / "librwkv_check.c", exe)
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("not a model file, but long enough to have a header\n")
    run = subprocess.run([str(exe), str(MODEL), str(not_a_model), str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok"
    assert (tmp_path / "modèle-Ω-Q5_1.bin").is_file()


@pytest.fixture(scope="module")
def lib():
    lib = ctypes.CDLL(librwkv_path())
    lib.rwkv_init_from_file.restype = ctypes.c_void_p
    lib.rwkv_init_from_file.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32]
    floats = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
    lib.rwkv_eval_sequence.restype = ctypes.c_bool
    lib.rwkv_eval_sequence.argtypes = [ctypes.c_void_p, np.ctypeslib.ndpointer(np.uint32), ctypes.c_size_t,
                                       ctypes.c_void_p, floats, floats]
    lib.rwkv_get_state_len.restype = ctypes.c_size_t
    lib.rwkv_get_state_len.argtypes = [ctypes.c_void_p]
    lib.rwkv_free.argtypes = [ctypes.c_void_p]
    return lib


@pytest.mark.parametrize("name", ["tiny-rwkv-4v0-660K-FP32.bin", "tiny-rwkv-6v0-3m-Q5_1.bin",
                                  "tiny-rwkv-7v0-834K-FP32.bin"])
def test_same_logits_and_state_as_the_python_api(lib, name):
    """librwkv is the engine: its results are Model.eval's, token by token, to the bit."""
    tokens = np.frombuffer(b"The for statement", np.uint8).astype(np.uint32)
    ctx = lib.rwkv_init_from_file(str(DATA / name).encode(), 2, 0)
    assert ctx
    try:
        state = np.zeros(lib.rwkv_get_state_len(ctx), np.float32)
        logits = np.zeros(256, np.float32)
        assert lib.rwkv_eval_sequence(ctx, tokens, len(tokens), None, state, logits)
    finally:
        lib.rwkv_free(ctx)
    with rwkvcpp.Model(DATA / name, threads=2) as model:
        expected_logits, expected_state = None, None
        for token in tokens:
            expected_logits, expected_state = model.eval(int(token), expected_state)
    assert np.array_equal(logits, expected_logits)
    assert np.array_equal(state, expected_state)
