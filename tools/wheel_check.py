"""Checks a built rwkvcpp wheel the way a user meets it: installed, with no C compiler around.

    python tools/wheel_check.py dist/rwkvcpp-*.whl     # a fresh venv, the wheel, then the checks
    python tools/wheel_check.py --installed             # the checks, on the rwkvcpp importable here

The wheel is installed into a new virtual environment with binary packages only, and the checks
run there with PATH holding nothing but the environment's bin folder and CC/CXX set to a program
that fails, so nothing can be compiled on the way. The checks: `rwkvcpp chat` on the built-in
model with its input piped in; the built-in model converted to GGUF and back (the same logits),
quantized to Q8_0 and generating; librwkv loading the model through ctypes. cibuildwheel runs
the second form as its test command.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path


def run_cli(*args: str, stdin: str | None = None) -> str:
    """Runs `rwkvcpp ARGS` as a user would (the console script beside this Python)."""
    script = Path(sys.executable).parent / ("rwkvcpp.exe" if os.name == "nt" else "rwkvcpp")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "rwkvcpp.cli"]
    run = subprocess.run([*command, *args], input=stdin, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"rwkvcpp {' '.join(args)} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    return run.stdout


def check_installed() -> None:
    import rwkvcpp
    from rwkvcpp import _core
    from rwkvcpp.data import builtin_model_path

    core = Path(_core.__file__)
    print(f"rwkvcpp {rwkvcpp.__version__} from {core.parent}; kernels: {rwkvcpp.system_info()}")

    reply = run_cli("chat", "--max-tokens", "12", "--seed", "1", stdin="What does a for loop do?\n")
    if not reply.strip():
        raise SystemExit("rwkvcpp chat printed nothing")
    print(f"chat: {reply.strip()[:120]!r}")

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        builtin = Path(builtin_model_path())
        run_cli("convert", str(builtin), str(work / "builtin.gguf"))
        run_cli("convert", str(work / "builtin.gguf"), str(work / "back.bin"))
        tokens = list(b"The for statement")
        with rwkvcpp.Model(builtin) as original, rwkvcpp.Model(work / "back.bin") as back:
            if not (original.eval_sequence(tokens)[0] == back.eval_sequence(tokens)[0]).all():
                raise SystemExit("the built-in model converted to GGUF and back gives other logits")
        run_cli("quantize", str(builtin), str(work / "q8_0.bin"), "Q8_0")
        text = run_cli("generate", str(work / "q8_0.bin"), "--prompt", "The for statement",
                       "--max-tokens", "12", "--seed", "1")
        if not text.strip():
            raise SystemExit("the quantized model generated nothing")
        print(f"GGUF round trip: the same logits; Q8_0 generates {text.strip()[:80]!r}")

    lib = ctypes.CDLL(rwkvcpp.librwkv_path())
    lib.rwkv_init_from_file.restype = ctypes.c_void_p
    lib.rwkv_init_from_file.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32]
    lib.rwkv_get_n_vocab.restype = ctypes.c_size_t
    lib.rwkv_get_n_vocab.argtypes = [ctypes.c_void_p]
    lib.rwkv_free.argtypes = [ctypes.c_void_p]
    ctx = lib.rwkv_init_from_file(str(builtin_model_path()).encode(), 1, 0)
    if not ctx or lib.rwkv_get_n_vocab(ctx) != 256:
        raise SystemExit("librwkv did not load the built-in model")
    lib.rwkv_free(ctx)
    print(f"librwkv: {rwkvcpp.librwkv_path()} loads the built-in model")


def check_wheel(wheel: Path) -> None:
    """Installs the wheel into a fresh venv and runs the checks there, with no compiler reachable."""
    with tempfile.TemporaryDirectory() as folder:
        env_dir = Path(folder) / "venv"
        venv.create(env_dir, with_pip=True)
        bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
        python = bin_dir / ("python.exe" if os.name == "nt" else "python")
        no_compiler = {**os.environ, "PATH": str(bin_dir), "CC": "/bin/false", "CXX": "/bin/false",
                       "VIRTUAL_ENV": str(env_dir)}
        no_compiler.pop("PYTHONPATH", None)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--only-binary", ":all:", str(wheel)],
                       env=no_compiler, check=True)
        # From the temporary folder, so that a source checkout cannot be imported instead.
        subprocess.run([str(python), str(Path(__file__).resolve()), "--installed"], env=no_compiler,
                       cwd=folder, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", nargs="?", type=Path, help="the wheel to install into a fresh virtual environment")
    parser.add_argument("--installed", action="store_true", help="check the rwkvcpp installed in this Python")
    args = parser.parse_args()
    if args.installed == (args.wheel is not None):
        parser.error("give a wheel or --installed")
    if args.installed:
        check_installed()
    else:
        check_wheel(args.wheel)
    print("wheel check: ok")


if __name__ == "__main__":
    main()
