"""Measuring a model: load time, resident memory, decode and prompt speed, how close decoding
comes to the memory-bandwidth limit (a token costs one pass over the weights), how close a prompt
comes to the multiply-add peak (two operations per weight and token), and decoding several
sequences at once (one pass over the weights for all of them)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import _core
from . import arch as architectures
from . import format as fmt
from ._typing import StrPath
from .model import Model


@dataclass
class BatchResult:
    """Decoding `batch` sequences together, one token each per step."""

    batch: int
    steps: int
    ms_per_step: float

    @property
    def tokens_per_second(self) -> float:
        """Aggregate: tokens of all the sequences."""
        return self.batch * 1000.0 / self.ms_per_step

    @property
    def ms_per_token(self) -> float:
        """What each sequence waits for its next token."""
        return self.ms_per_step

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self), tokens_per_second=self.tokens_per_second, ms_per_token=self.ms_per_token)


@dataclass
class BenchResult:
    path: str
    arch: str
    dtype: str
    n_layer: int
    n_embed: int
    n_vocab: int
    threads: int
    kernels: str
    file_bytes: int
    load_seconds: float
    rss_bytes: int
    bytes_per_token: int
    bandwidth_gbps: float
    decode_tokens: int
    decode_ms_per_token: float
    prompt_tokens: int
    prompt_tokens_per_second: float
    flops_per_token: int = 0
    fma_peak_gflops: float = 0.0
    batches: list[BatchResult] = field(default_factory=list)  # BatchResult per batch size asked for

    @property
    def decode_tokens_per_second(self) -> float:
        return 1000.0 / self.decode_ms_per_token

    @property
    def bandwidth_limit_ms(self) -> float:
        """The fastest a token could be with this many bytes to read at the measured bandwidth."""
        return self.bytes_per_token / (self.bandwidth_gbps * 1e9) * 1000.0

    @property
    def percent_of_limit(self) -> float:
        return 100.0 * self.bandwidth_limit_ms / self.decode_ms_per_token

    @property
    def compute_limit_tokens_per_second(self) -> float:
        """The most tokens per second the multiply-adds of a prompt allow at the measured peak."""
        return self.fma_peak_gflops * 1e9 / self.flops_per_token if self.flops_per_token else 0.0

    @property
    def prompt_percent_of_peak(self) -> float:
        limit = self.compute_limit_tokens_per_second
        return 100.0 * self.prompt_tokens_per_second / limit if limit else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(decode_tokens_per_second=self.decode_tokens_per_second, bandwidth_limit_ms=self.bandwidth_limit_ms,
                 percent_of_limit=self.percent_of_limit,
                 compute_limit_tokens_per_second=self.compute_limit_tokens_per_second,
                 prompt_percent_of_peak=self.prompt_percent_of_peak, batches=[b.as_dict() for b in self.batches])
        return d

    def summary(self) -> str:
        return (f"{os.path.basename(self.path)} ({self.arch} {self.dtype}, {self.threads} threads, {self.kernels}): "
                f"decode {self.decode_ms_per_token:.2f} ms/token ({self.decode_tokens_per_second:.1f} tok/s, "
                f"{self.percent_of_limit:.0f}% of the {self.bandwidth_limit_ms:.2f} ms bandwidth limit), "
                f"prompt {self.prompt_tokens_per_second:.1f} tok/s ({self.prompt_percent_of_peak:.0f}% of the "
                f"multiply-add peak), load {self.load_seconds * 1000:.0f} ms, "
                f"RSS {self.rss_bytes / 2**20:.0f} MiB for a {self.file_bytes / 2**20:.0f} MiB file")


def bytes_per_token(path: StrPath) -> int:
    """Bytes a decoded token reads: every weight once, but only one row of the embedding."""
    header = fmt.read_header(path)
    total = 0
    for record in fmt.load_records(path):
        if record.name == "emb.weight":
            total += record.nbytes // header.n_vocab
        else:
            total += record.nbytes
    return total


def flops_per_token(path: StrPath) -> int:
    """Floating-point operations of a token's matrix products: two per weight of every matrix
    (the tensors an FP16 file stores as FP16; the embedding is a lookup, not a product). The
    element-wise steps are left out: on every released shape they are well under 1% of the total."""
    records = fmt.load_records(path)
    arch = architectures.detect(r.name for r in records)
    total = 0
    for record in records:
        if record.name != "emb.weight" and (arch.stored_as_fp16(record.name, record.shape) if arch else
                                            len(record.shape) == 2):
            total += 2 * record.shape[0] * record.shape[1]
    return total


def resident_bytes() -> int:
    """This process's resident memory (Linux), 0 where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_batch_benchmark(model: Model, batch_sizes: Sequence[int], steps: int = 16,
                        progress: Optional[Callable[[str, int, int], None]] = None, seed: int = 0) -> list[BatchResult]:
    """Decodes ``batch`` sequences together for ``steps`` steps (after one warm-up step), for each
    batch size: what a server with that many users gets. Returns a BatchResult per size."""
    if steps < 1 or any(b < 1 for b in batch_sizes):
        raise ValueError("steps and batch sizes must be at least 1")
    rng = np.random.default_rng(seed)
    results = []
    for batch in batch_sizes:
        stage = f"batch {batch}"
        tokens = rng.integers(0, model.n_vocab, size=(steps + 1, batch))
        states = np.empty((batch, model.state_len), np.float32)
        model.eval_batch(tokens[0], None, states_out=states)  # warm-up, each sequence its own state
        start = time.perf_counter()
        for step in range(steps):
            model.eval_batch(tokens[step + 1], states, states_out=states)
            if progress:
                progress(stage, step + 1, steps)
        results.append(BatchResult(batch, steps, (time.perf_counter() - start) / steps * 1000.0))
    return results


def run_benchmark(path: StrPath, threads: Optional[int] = None, decode_tokens: int = 64, prompt_tokens: int = 512,
                  progress: Optional[Callable[[str, int, int], None]] = None, seed: int = 0,
                  batch_sizes: Sequence[int] = ()) -> BenchResult:
    """Benchmarks one model file. ``progress(stage, done, total)`` is called during the runs.
    ``batch_sizes``: also decode that many sequences at once (run_batch_benchmark), for
    ``decode_tokens`` steps each."""
    if decode_tokens < 1 or prompt_tokens < 1:
        raise ValueError("decode_tokens and prompt_tokens must be at least 1")
    path = os.fspath(path)
    rss_before = resident_bytes()
    start = time.perf_counter()
    model = Model(path, threads=threads)
    load_seconds = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, model.n_vocab, size=max(decode_tokens, prompt_tokens)).astype(np.int32)

    # Decode: one warm-up token, then the timed ones, reusing the state and logits buffers.
    state = model.init_state()
    logits = np.empty(model.n_vocab, dtype=np.float32)
    model.eval(int(tokens[0]), state, state_out=state, logits_out=logits)
    start = time.perf_counter()
    for i in range(decode_tokens):
        model.eval(int(tokens[i]), state, state_out=state, logits_out=logits)
        if progress:
            progress("decode", i + 1, decode_tokens)
    decode_ms = (time.perf_counter() - start) / decode_tokens * 1000.0
    rss = max(0, resident_bytes() - rss_before)

    # Prompt ingestion: one sequence call, as a chat or server would make it.
    if progress:
        progress("prompt", 0, 1)
    start = time.perf_counter()
    model.eval_sequence(tokens[:prompt_tokens])
    prompt_tps = prompt_tokens / (time.perf_counter() - start)
    if progress:
        progress("prompt", 1, 1)

    batches = run_batch_benchmark(model, batch_sizes, decode_tokens, progress, seed) if batch_sizes else []

    if progress:
        progress("bandwidth", 0, 1)
    bandwidth = _core.read_bandwidth(model.threads, 1 << 30)
    if progress:
        progress("bandwidth", 1, 1)
        progress("peak", 0, 1)
    peak = _core.fma_peak(model.threads)
    if progress:
        progress("peak", 1, 1)

    return BenchResult(
        path=path, arch=model.arch, dtype=model.dtype, n_layer=model.n_layer, n_embed=model.n_embed,
        n_vocab=model.n_vocab, threads=model.threads, kernels=_core.kernel_level(), file_bytes=model.file_size,
        load_seconds=load_seconds, rss_bytes=rss, bytes_per_token=bytes_per_token(path), bandwidth_gbps=bandwidth,
        decode_tokens=decode_tokens, decode_ms_per_token=decode_ms, prompt_tokens=prompt_tokens,
        prompt_tokens_per_second=prompt_tps, flops_per_token=flops_per_token(path), fma_peak_gflops=peak,
        batches=batches,
    )
