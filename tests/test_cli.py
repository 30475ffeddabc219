"""The command line's edges, run as a user runs it: a subprocess, its exit code and the exact
first line of stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import rwkvcpp
from rwkvcpp.cli import build_parser
from rwkvcpp.data import builtin_model_path

MODEL = os.fspath(builtin_model_path())
BUILTIN_NOTE = f"using the built-in model {MODEL} (a tiny byte-level model trained on Python's docs)"


def rwkvcpp_cli(*args, env=None, stdin="", shell_pipe=None, timeout=120):
    environ = dict(os.environ, **(env or {}))
    if shell_pipe:  # `rwkvcpp ARGS | shell_pipe`, the exit code of rwkvcpp
        command = " ".join([sys.executable, "-m", "rwkvcpp", *args]) + f" | {shell_pipe}; exit ${{PIPESTATUS[0]}}"
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=environ, timeout=timeout)
    return subprocess.run([sys.executable, "-m", "rwkvcpp", *args], input=stdin, capture_output=True, text=True,
                          env=environ, timeout=timeout)


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def test_version():
    r = rwkvcpp_cli("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"rwkvcpp {rwkvcpp.__version__}")


def test_help_lists_every_command():
    r = rwkvcpp_cli("--help")
    assert r.returncode == 0
    for name in ("convert", "quantize", "merge-lora", "info", "chat", "generate", "perplexity", "bench", "serve"):
        assert f"    {name}" in r.stdout, name


def test_every_command_help_has_one_style():
    """A one-line description ending in a full stop, and every option with a default shows it."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert sub.description and "\n" not in sub.description and sub.description.endswith("."), name
        for action in sub._actions:
            if action.help in (None, "==SUPPRESS==") or action.dest in ("help", "debug"):
                continue
            if action.default not in (None, False, [], "==SUPPRESS==") and action.nargs != 0:
                assert "default" in action.help, f"{name} {action.option_strings or action.dest}: {action.help}"


@pytest.mark.parametrize("command", [["generate", MODEL, "--prompt", "hi", "-n", "1"],
                                     ["chat", MODEL, "-n", "1"]])
def test_20b_tokenizer_without_tokenizers_is_one_line(tmp_path, command):
    (tmp_path / "tokenizers.py").write_text("raise ImportError('tokenizers made unavailable by the test')\n")
    r = rwkvcpp_cli(*command, "--tokenizer", "20b", env={"PYTHONPATH": str(tmp_path)}, stdin="hello\n")
    assert r.returncode == 2, r.stderr
    assert first_line(r.stderr) == (f"rwkvcpp {command[0]}: error: the 20B (GPT-NeoX) tokenizer needs the "
                                    "'tokenizers' package; install it with: pip install tokenizers")
    assert len(r.stderr.splitlines()) == 1


def test_generate_stats_on_their_own_line_on_stderr():
    r = subprocess.run(["bash", "-c", f"{sys.executable} -m rwkvcpp generate {MODEL} --prompt hi -n 5 --stats "
                        "--temperature 0 2>&1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    stats = r.stdout.splitlines()[-1]
    assert stats.startswith("2 prompt tokens in ") and stats.endswith("finish reason: length"), r.stdout
    separate = rwkvcpp_cli("generate", MODEL, "--prompt", "hi", "-n", "5", "--stats", "--temperature", "0")
    assert first_line(separate.stderr).startswith("2 prompt tokens in ")
    assert "prompt tokens" not in separate.stdout


@pytest.mark.parametrize("args", [["info", MODEL], ["info", MODEL, "--json"]])
def test_closed_pipe_exits_quietly(args):
    r = rwkvcpp_cli(*args, shell_pipe="head -1")
    assert r.returncode in (0, 141)  # 141 = 128 + SIGPIPE, when the pipe closed before the end
    assert r.stderr == ""
    assert len(r.stdout.splitlines()) == 1


def test_info_on_a_non_model_bin(tmp_path):
    path = tmp_path / "notes.bin"
    path.write_bytes(b"not a model at all")
    r = rwkvcpp_cli("info", str(path))
    assert r.returncode == 2
    assert first_line(r.stderr) == (f"rwkvcpp info: error: {path}: not an rwkv.cpp model file "
                                    f"(bad magic 6e6f7420, expected 666d6767)")


@pytest.mark.parametrize("command", [["info"], ["perplexity", "TEXT", "--limit", "20"],
                                     ["bench", "--tokens", "2", "--prompt", "4"]])
def test_info_perplexity_bench_default_to_the_builtin_model(tmp_path, command):
    text = tmp_path / "text.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 4)
    r = rwkvcpp_cli(*[str(text) if a == "TEXT" else a for a in command])
    assert r.returncode == 0, r.stderr
    assert MODEL in r.stdout + r.stderr or "builtin-v7-byte.bin" in r.stdout


def test_perplexity_still_needs_its_text_file():
    r = rwkvcpp_cli("perplexity")
    assert r.returncode == 2
    assert "TEXTFILE" in r.stderr


def test_serve_without_fastapi_names_an_installable_command(tmp_path):
    (tmp_path / "fastapi.py").write_text("raise ImportError('fastapi made unavailable by the test')\n")
    r = rwkvcpp_cli("serve", MODEL, env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2
    assert first_line(r.stderr) == (
        "rwkvcpp serve: error: the rwkvcpp server needs fastapi, which is not installed; install the server "
        'extra with: pip install "/path/to/rwkvcpp[server]" (the source checkout or wheel), '
        "or: pip install fastapi uvicorn")


def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.bin")
    r = rwkvcpp_cli("generate", missing, "--prompt", "hi")
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("rwkvcpp generate: error: "), r.stderr
    for args in (["--debug", "generate", missing, "--prompt", "hi"], ["generate", missing, "--prompt", "hi", "--debug"]):
        r = rwkvcpp_cli(*args)
        assert r.returncode == 1 and first_line(r.stderr) == "Traceback (most recent call last):", r.stderr


@pytest.fixture(scope="module")
def state_files(tmp_path_factory):
    """A saved state and a state-tuning file of the built-in model after a prompt, and a saved
    state of another model (other sizes)."""
    from rwkvcpp import Model

    folder = tmp_path_factory.mktemp("states")
    with Model(MODEL) as model:
        state = model.ingest(model.tokenizer.encode("def hello_world(x):\n    return"))
        model.save_state(folder / "saved.safetensors", state)
        model.save_tuned_state(folder / "tuned.safetensors", state)
    other = os.path.join(os.path.dirname(__file__), "data", "rwkv_cpp", "tiny-rwkv-5v2-730K-FP32.bin")
    with Model(other) as model:
        model.save_state(folder / "other.safetensors", model.ingest([1, 2, 3]))
    return folder


def generated(*extra):
    r = rwkvcpp_cli("generate", MODEL, "--prompt", " x", "-n", "12", "--temperature", "0", *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_generate_state_starts_from_a_saved_or_tuned_state(state_files):
    from rwkvcpp import Model
    from rwkvcpp.generate import Generator
    from rwkvcpp.sampling import SamplingParams

    with Model(MODEL) as model:
        saved = model.load_state(state_files / "saved.safetensors")
        expected = Generator(model).generate(" x", SamplingParams(temperature=0, max_tokens=12), saved).text
    assert generated("--state", str(state_files / "saved.safetensors")) == expected
    assert generated() != expected
    assert generated("--state", str(state_files / "tuned.safetensors")) not in ("", generated())


@pytest.mark.parametrize("command", [["generate", MODEL, "--prompt", "hi"], ["chat", MODEL], ["serve", MODEL]])
def test_mismatching_state_is_one_line(state_files, command):
    r = rwkvcpp_cli(*command, "--state", str(state_files / "other.safetensors"))
    assert r.returncode == 2, r.stderr
    assert first_line(r.stderr).startswith(f"rwkvcpp {command[0]}: error: --state: {state_files / 'other.safetensors'}")
    assert len(r.stderr.splitlines()) == 1
