"""rwkv.cpp's own code on librwkv: its C tests and its Python wrapper, unchanged.

rwkv.cpp's sources are not part of this project. Point RWKVCPP_RWKV_CPP_DIR at a checkout of
rwkv.cpp (its tests/ and python/ folders are used; nothing is written there); without it these
tests skip. The C tests that use only rwkv.h are compiled against csrc/librwkv/include/rwkv.h,
linked with the shipped librwkv and run in a folder holding the checkout's model files, as
rwkv.cpp's CMake runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rwkvcpp
from rwkvcpp.c_api import LIBRARY_NAME, librwkv_path
from support.librwkv_build import STRICT_TESTS, check_tiny_rwkv_log, compile_against_librwkv

CHECKOUT = Path(os.environ["RWKVCPP_RWKV_CPP_DIR"]) if os.environ.get("RWKVCPP_RWKV_CPP_DIR") else None
pytestmark = pytest.mark.skipif(CHECKOUT is None, reason="RWKVCPP_RWKV_CPP_DIR (an rwkv.cpp checkout) is not set")

@pytest.fixture(scope="module")
def test_dir(tmp_path_factory) -> Path:
    """A folder with the checkout's model files and expected logits, as its tests expect them."""
    work = tmp_path_factory.mktemp("rwkv_cpp_tests")
    for path in (CHECKOUT / "tests").glob("*.bin"):
        shutil.copy(path, work)
    return work


def run_c_test(name: str, test_dir: Path) -> subprocess.CompletedProcess:
    exe = test_dir / name
    compile_against_librwkv(CHECKOUT / "tests" / f"{name}.c", exe)
    return subprocess.run([str(exe)], cwd=test_dir, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", STRICT_TESTS)
def test_rwkv_cpp_c_test(name, test_dir):
    run = run_c_test(name, test_dir)
    assert run.returncode == 0, run.stderr[-4000:]


def test_rwkv_cpp_tiny_rwkv(test_dir):
    """Every version and format within rwkv.cpp's bounds, except the known case and models whose
    files the checkout lacks (a copy without large files has no v6 FP32/FP16)."""
    run = run_c_test("test_tiny_rwkv", test_dir)
    missing = check_tiny_rwkv_log(run.stderr, run.returncode, test_dir)
    if missing:
        pytest.xfail(f"the checkout lacks the FP32/FP16 files of {', '.join(sorted(missing))}: those cases failed "
                     "to load; every other case passed")


@pytest.fixture(scope="module")
def wrapper():
    """rwkv.cpp's Python package (python/rwkv_cpp), imported from the checkout."""
    sys.path.insert(0, str(CHECKOUT / "python"))
    try:
        from rwkv_cpp import rwkv_cpp_model, rwkv_cpp_shared_library
    finally:
        sys.path.remove(str(CHECKOUT / "python"))
    return rwkv_cpp_shared_library, rwkv_cpp_model


def test_rwkv_cpp_python_wrapper(wrapper):
    """rwkv.cpp's RWKVModel on librwkv gives the logits of this package's Python API."""
    shared_library, model_module = wrapper
    library = shared_library.RWKVSharedLibrary(librwkv_path())
    path = Path(__file__).resolve().parent / "data" / "rwkv_cpp" / "tiny-rwkv-7v0-834K-FP32.bin"
    model = model_module.RWKVModel(library, str(path), thread_count=2, gpu_layer_count=99)
    tokens = list(b"The for statement")
    try:
        assert (model.n_vocab, model.n_layer) == (256, rwkvcpp.Model(path).n_layer)
        logits, state = model.eval_sequence_in_chunks(tokens, None, None, None, use_numpy=True)
        logits_serial, state_serial = None, None
        for token in tokens:
            logits_serial, state_serial = model.eval(token, state_serial, state_serial, logits_serial, use_numpy=True)
    finally:
        model.free()
    with rwkvcpp.Model(path, threads=2) as ours:
        expected_logits, expected_state = ours.eval_sequence(tokens)
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(logits, logits_serial)
    np.testing.assert_array_equal(state, state_serial)


def test_rwkv_cpp_inference_example(tmp_path):
    """python/inference_example.py, unchanged, generates with a World-vocabulary model: it finds
    librwkv where rwkv.cpp's loader looks (beside the python/ folder)."""
    from rwkvcpp.writer import write_model
    from support.checkpoints import make_checkpoint

    shutil.copytree(CHECKOUT / "python", tmp_path / "python")
    (tmp_path / LIBRARY_NAME).symlink_to(librwkv_path())
    model = tmp_path / "world-v7.bin"
    write_model(model, make_checkpoint("v7", n_layer=1, n_embed=64, n_vocab=65536, seed=5), dtype="FP16")
    run = subprocess.run([sys.executable, "inference_example.py", str(model), "world", "-ngl", "0"],
                         cwd=tmp_path / "python", capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "One upon a time," in run.stdout
    assert len(run.stdout.split("One upon a time,", 1)[1]) > 0
