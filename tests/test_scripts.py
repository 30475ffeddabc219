"""Every script of rwkv.cpp's python/ folder has a namesake here, taking rwkv.cpp's arguments.

rwkv.cpp (github.com/RWKV/rwkv.cpp, python/ at 4358e709) ships these scripts; its other .py
files are modules they import (sampling.py, tokenizer_util.py, the rwkv_cpp package) and its
own converter test (convert_pytorch_to_ggml.test.py). The misspelt measure_pexplexity.py is
rwkv.cpp's name; measure_perplexity.py is the same script.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILTIN = REPO / "src" / "rwkvcpp" / "data" / "builtin-v7-byte.bin"

#: rwkv.cpp's scripts and their positional arguments as usage lines show them (an argument with
#: choices shows them), in order.
RWKV_CPP_SCRIPTS = {
    "chat_with_bot.py": ["model_path"],
    "convert_pytorch_to_ggml.py": ["src_path", "dest_path", "{FP16,FP32,float16,float32}"],
    "generate_completions.py": ["model_path"],
    "inference_example.py": ["model_path"],
    "measure_pexplexity.py": ["model_path", "text_path", "ignore_first_n_tokens", "token_limit"],
    "merge_lora_into_ggml.py": ["src_path", "{v4,v5.1,v5.2,v6.0,v7}", "lora_path", "lora_alpha", "dest_path"],
    "quantize.py": ["src_path", "dest_path", "format_name"],
}
#: The scripts rwkv.cpp gives a GPU-layers flag (-ngl), accepted here and ignored.
GPU_FLAG = ("chat_with_bot.py", "generate_completions.py", "inference_example.py")


def script(name, *args, stdin=""):
    return subprocess.run([sys.executable, str(REPO / "python" / name), *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("name", sorted(RWKV_CPP_SCRIPTS))
def test_help(name):
    run = script(name, "--help")
    assert run.returncode == 0, run.stderr
    usage = " ".join(run.stdout.split("\n\n")[0].split())
    assert usage.startswith(f"usage: {name} "), usage
    positions = [usage.find(arg) for arg in RWKV_CPP_SCRIPTS[name]]
    assert -1 not in positions and positions == sorted(positions), usage
    if name in GPU_FLAG:
        assert "-ngl" in usage


def test_gpu_flag_is_accepted():
    run = script("chat_with_bot.py", BUILTIN, "-ngl", "99", stdin="")
    assert run.returncode == 0, run.stderr


def test_misspelt_perplexity_script(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The for statement in Python iterates over the items of any sequence. " * 4)
    runs = [script(name, BUILTIN, text, 0, 100, "--threads", 1) for name in ("measure_pexplexity.py", "measure_perplexity.py")]
    for run in runs:
        assert run.returncode == 0, run.stderr
    perplexities = [re.search(r"perplexity[^\d]*([\d.]+)", run.stdout).group(1) for run in runs]
    assert perplexities[0] == perplexities[1]
