"""Short evaluations against decoding: is reading T new tokens in one call (a short prompt, a chat
turn's few tokens) ever slower per token than reading them one at a time?

    python benchmarks/short_evals.py MODEL.bin [MODEL.bin ...] [--threads 2] [--rounds 3]
        [--lengths 2,3,4,6,8,12,16]

For each model, in every round: four tokens decoded one by one (`Model.eval`), then one
`Model.eval_sequence` call per length T, each from the same state. Prints a markdown table of
milliseconds per token (median over the rounds) and each length's ratio to decoding: below 1 is
faster than decoding. Lengths up to the row kernels' limit (8) take them, longer ones sequence mode.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import rwkvcpp

DECODE_TOKENS = 4


def measure(path: str, threads: int, rounds: int, lengths: list[int], seed: int = 0) -> tuple[float, dict[int, float]]:
    """Median ms per token of decoding and of each length's single call."""
    model = rwkvcpp.Model(path, threads=threads)
    tokens = np.random.default_rng(seed).integers(0, model.n_vocab, max(lengths + [DECODE_TOKENS])).astype(np.int32)
    start_state = model.init_state()
    model.eval_sequence(tokens[:4], start_state, state_out=start_state)  # warm-up: pages the weights in
    decode, per_length = [], {T: [] for T in lengths}
    for _ in range(rounds):
        state = start_state.copy()
        t = time.perf_counter()
        for token in tokens[:DECODE_TOKENS]:
            model.eval(int(token), state, state_out=state)
        decode.append((time.perf_counter() - t) / DECODE_TOKENS)
        for T in lengths:
            state = start_state.copy()
            t = time.perf_counter()
            model.eval_sequence(tokens[:T], state, state_out=state)
            per_length[T].append((time.perf_counter() - t) / T)
    model.close()
    return float(np.median(decode)) * 1e3, {T: float(np.median(v)) * 1e3 for T, v in per_length.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lengths", default="2,3,4,6,8,12,16", help="comma-separated token counts, each >= 2")
    args = parser.parse_args(argv)
    try:
        lengths = [int(v) for v in args.lengths.split(",")]
    except ValueError:
        parser.error(f"--lengths must be comma-separated integers, not {args.lengths!r}")
    if any(T < 2 for T in lengths) or args.rounds < 1 or args.threads < 1:
        parser.error("--lengths must all be at least 2, --rounds and --threads at least 1")
    for path in args.models:
        if not os.path.isfile(path):
            parser.error(f"{path}: no such model file")
    print(f"| model | decode ms/token | " + " | ".join(f"T={T}" for T in lengths) + " |")
    print("|---|---|" + "---|" * len(lengths))
    for path in args.models:
        decode, per_length = measure(path, args.threads, args.rounds, lengths)
        cells = " | ".join(f"{per_length[T]:.3g} ({per_length[T] / decode:.2f}x)" for T in lengths)
        print(f"| {os.path.basename(path)} | {decode:.3g} | {cells} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
