"""``rwkvcpp bench [MODEL] [--threads N] [--tokens N] [--prompt N] [--batch B,B,...] [--json]``."""

from __future__ import annotations

import json

from . import _common
from ._progress import Progress


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", nargs="?",
                        help=f"rwkv.cpp .bin model (default: the built-in model, {_common.BUILTIN_NOTE})")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default: one per core)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens to decode one by one (default 64)")
    parser.add_argument("--prompt", type=int, default=512, help="length of the prompt to ingest (default 512)")
    parser.add_argument("--batch", type=_batch_sizes, default=(), metavar="B,B,...",
                        help="also decode B sequences at once for each B given (e.g. 1,2,4,8,16): aggregate "
                             "tokens/s and each sequence's ms/token, --tokens steps each (default: none)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _batch_sizes(text: str) -> tuple:
    import argparse

    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes such as 1,2,4,8, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1: {text!r}")
    return sizes


def run(args) -> int:
    from ..benchmark import run_benchmark

    model_path = args.model if args.model is not None else _common.builtin_model_path()
    bars = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = Progress(total, "step" if stage in ("prompt", "bandwidth", "peak") else "token", stage)
        bars[stage].update(done - bars[stage].n)

    try:
        result = run_benchmark(model_path, threads=args.threads, decode_tokens=args.tokens,
                               prompt_tokens=args.prompt, progress=progress, batch_sizes=args.batch)
    finally:
        for bar in bars.values():
            bar.close()
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    print(f"model      {result.path}: {result.arch} {result.dtype}, {result.n_layer} x {result.n_embed}, "
          f"vocab {result.n_vocab}")
    print(f"threads    {result.threads} ({result.kernels} kernels)")
    print(f"load       {result.load_seconds * 1000:.0f} ms, resident +{result.rss_bytes / 2**20:.0f} MiB "
          f"(file {result.file_bytes / 2**20:.0f} MiB)")
    print(f"decode     {result.decode_ms_per_token:.2f} ms/token = {result.decode_tokens_per_second:.1f} tokens/s "
          f"over {result.decode_tokens} tokens")
    print(f"bandwidth  {result.bandwidth_gbps:.1f} GB/s measured; {result.bytes_per_token / 1e6:.0f} MB read per "
          f"token -> limit {result.bandwidth_limit_ms:.2f} ms/token; decode reaches {result.percent_of_limit:.0f}%")
    print(f"prompt     {result.prompt_tokens_per_second:.1f} tokens/s over {result.prompt_tokens} tokens")
    print(f"peak       {result.fma_peak_gflops:.1f} GFLOP/s measured ({result.kernels} multiply-adds); "
          f"{result.flops_per_token / 1e9:.3g} GFLOP per token -> limit {result.compute_limit_tokens_per_second:.1f} "
          f"tokens/s; prompt reaches {result.prompt_percent_of_peak:.0f}%")
    if result.batches:
        base = result.batches[0]
        print(f"batches    {'sequences':>9} {'tokens/s':>10} {'ms/token':>9} {'vs ' + str(base.batch):>7}  "
              f"(decoding, {base.steps} steps; tokens/s of all sequences, ms/token of each)")
        for b in result.batches:
            print(f"           {b.batch:9d} {b.tokens_per_second:10.1f} {b.ms_per_token:9.2f} "
                  f"{b.tokens_per_second / base.tokens_per_second:7.2f}")
    print(result.summary())
    return 0
