"""The package is typed: ``mypy --strict`` passes on the library (pyproject's ``[tool.mypy]``), and
a user's program is checked against rwkvcpp's annotations (``py.typed``, the stub of the C binding):
right uses of the public API pass, wrong argument types are reported on their lines. Skipped when
mypy is not installed (the ``test`` extra has it)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parents[1]

# A program as a user writes it, with the types rwkvcpp's annotations give (assert_type fails the
# check when a call's type differs).
GOOD_PROGRAM = '''
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import rwkvcpp
from rwkvcpp import BatchGenerator, Generation, Generator, Model, SamplingParams, Tokenizer
from rwkvcpp.constrain import Grammar
from rwkvcpp.conversion.pipeline import ConvertSummary
from rwkvcpp.quantization import QuantizeSummary


def use(path: str) -> None:
    with Model(path, threads=2) as model:
        assert_type(model.generate("Hello", max_tokens=8, temperature=0.0), str)
        assert_type(model.generate(["a", "b"], max_tokens=4), list[str])
        assert_type(model.generate("Hi", stream=True), Iterator[str])
        assert_type(model.chat("Hello"), str)
        assert_type(model.complete("x", max_tokens=3), Generation)
        assert_type(model.tokenize("text"), list[int])
        assert_type(model.detokenize([1, 2, 3]), str)
        state = model.init_state()
        assert_type(state, NDArray[np.float32])
        logits, state = model.eval(5, state)
        assert_type(logits, NDArray[np.float32])
        logits, state = model.eval_sequence([1, 2, 3], state)
        vector, _ = model.eval_embedding([1, 2], normalize=True)
        model.save_state("chat.safetensors", state)
        state = model.load_state("chat.safetensors", strict=False)
        response = model.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4)
        if isinstance(response, dict):
            print(response["choices"][0]["message"]["content"])

        params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=16, stop=["\\n"], seed=1)
        generation = Generator(model).complete("Once", params)
        print(generation.text, generation.finish_reason, generation.usage["total_tokens"])
        for chunk in Generator(model, "world").stream("Once", params):
            print(chunk.text, end="")

        batch = BatchGenerator(model, max_batch=4)
        ids: list[int] = batch.add("a", params) + batch.add([1, 2, 3], [params, params])
        for event in batch.run():
            print(ids, event.choice, event.chunk.text)

        tokenizer = Tokenizer.from_name("world")
        assert_type(tokenizer.encode("hi"), list[int])
        grammar = Grammar.json_schema({"type": "object"})
        SamplingParams(grammar=grammar)

    summary = rwkvcpp.convert("model.pth", "model.bin", dtype="FP16")
    assert_type(summary, ConvertSummary)
    assert_type(rwkvcpp.quantize("model.bin", "model-q5.bin", "Q5_1"), QuantizeSummary)
'''

# Each line marked "# wrong" must be reported, and no other.
BAD_PROGRAM = '''
from rwkvcpp import Model, SamplingParams

model = Model(threads="4")  # wrong
model.generate(42)  # wrong
SamplingParams(temperature="hot")  # wrong
state = model.init_state()
model.eval("a", state)  # wrong
text: int = model.generate("hi")  # wrong
model.load_state("x.safetensors", strict="yes")  # wrong
model.no_such_method()  # wrong
'''


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy_cache")


def run_mypy(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-color-output", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=900)


def test_the_package_ships_its_type_information() -> None:
    package = ROOT / "src" / "rwkvcpp"
    assert (package / "py.typed").is_file()
    stub = (package / "_core.pyi").read_text()
    # every name the binding defines at module level is in the stub
    binding = (package / "_core.pyx").read_text()
    defined = set(re.findall(r"^(?:def|class|cdef class) (\w+)", binding, re.M))
    public = {name for name in defined if not name.startswith("_")}
    missing = sorted(name for name in public if not re.search(rf"^(?:def|class) {name}\b", stub, re.M))
    assert not missing, f"_core.pyi lacks {missing}"


def test_the_library_passes_mypy_strict(mypy_cache: Path) -> None:
    result = run_mypy([], ROOT, mypy_cache)  # files and strictness from pyproject's [tool.mypy]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_a_users_program_is_checked_against_the_api(tmp_path: Path, mypy_cache: Path) -> None:
    good = tmp_path / "good.py"
    bad = tmp_path / "bad.py"
    good.write_text(textwrap.dedent(GOOD_PROGRAM))
    bad.write_text(textwrap.dedent(BAD_PROGRAM))
    # Outside the checkout: rwkvcpp is found where it is installed, as for a user.
    result = run_mypy(["--strict", "--python-executable", sys.executable, good.name, bad.name], tmp_path, mypy_cache)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith(good.name)], result.stdout
    reported = {int(e.split(":")[1]) for e in errors if e.startswith(bad.name)}
    wrong = {n for n, line in enumerate(bad.read_text().splitlines(), 1) if line.endswith("# wrong")}
    assert reported == wrong, result.stdout
