"""The two limits `rwkvcpp bench` measures a model against: the read bandwidth (decoding) and the
multiply-add peak of the kernels in use (prompts), with the work per token each is divided into."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from rwkvcpp import _core, benchmark
from rwkvcpp.data import builtin_model_path
from support.checkpoints import ffn_width, v7_lora_dims


def test_flops_per_token_counts_every_matrix_product_of_a_v7_token(model_files):
    """Written out from the architecture: per layer the four square time-mix matrices, the
    channel mix's two, the four low-rank pairs (no value residual in layer 0), then the head."""
    C, V, n_layer = 128, 256, 2
    F, lora = ffn_width("v7", C), v7_lora_dims(C)
    per_layer = 4 * C * C + 2 * C * F + 2 * C * (lora["w"] + lora["a"] + lora["g"])
    expected = 2 * (n_layer * per_layer + (n_layer - 1) * 2 * C * lora["v"] + V * C)
    assert benchmark.flops_per_token(model_files["v7"].fp32) == expected
    assert benchmark.flops_per_token(model_files["v7"].fp16) == expected  # the same products, other bytes


def test_flops_per_token_of_v4_leaves_out_the_embedding_and_the_vectors(model_files):
    C, V, n_layer = 128, 256, 2
    F = ffn_width("v4", C)
    # time mix: receptance, key, value, output; channel mix: key (C -> F), value (F -> C), receptance (C -> C)
    expected = 2 * (n_layer * (4 * C * C + 2 * C * F + C * C) + V * C)
    assert benchmark.flops_per_token(model_files["v4"].fp32) == expected


@pytest.mark.parametrize("threads", [1, 2])
def test_the_multiply_add_peak_is_a_positive_rate(threads):
    peak = _core.fma_peak(threads)
    assert math.isfinite(peak) and peak > 0


@pytest.mark.parametrize("threads", [-1, 4097])
def test_the_multiply_add_peak_refuses_a_thread_count_out_of_range(threads):
    with pytest.raises(ValueError, match="n_threads must be 0"):
        _core.fma_peak(threads)


def test_the_peak_is_measured_with_the_kernels_in_use():
    """Every level has its own loop; the portable one too (a level without one would crash)."""
    level = _core.kernel_level()
    try:
        _core.set_kernel_level("generic")
        assert _core.fma_peak(1) > 0
    finally:
        _core.set_kernel_level(level)


def test_bench_reports_the_prompt_against_the_peak():
    r = subprocess.run([sys.executable, "-m", "rwkvcpp", "bench", "--tokens", "2", "--prompt", "8", "--threads", "1",
                        "--json"], capture_output=True, text=True, check=True)
    result = json.loads(r.stdout)
    assert result["flops_per_token"] == benchmark.flops_per_token(builtin_model_path())
    assert result["fma_peak_gflops"] > 0
    limit = result["fma_peak_gflops"] * 1e9 / result["flops_per_token"]
    assert result["compute_limit_tokens_per_second"] == pytest.approx(limit)
    assert result["prompt_percent_of_peak"] == pytest.approx(100 * result["prompt_tokens_per_second"] / limit)
