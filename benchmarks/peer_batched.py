"""Decoding several sequences at once: llama.cpp's llama-batched-bench beside `rwkvcpp bench --batch`
on the same weights, and prints a table per model.

    python benchmarks/peer_batched.py /path/to/llama-batched-bench MODEL.bin [MODEL.bin ...]
        [--threads 2] [--batch 1,2,4,8,16] [--tokens 32] [--prompt 16]

Each .bin (or every .bin of a folder) is converted to GGUF as compare.py does (same blocks,
same bytes; kept in --gguf-dir). llama.cpp runs
`llama-batched-bench -m GGUF -t T -tb T -npp PROMPT -ntg TOKENS -npl B,B,... -c CTX --output-format jsonl`:
for each B it reads B prompts of PROMPT random tokens, then decodes TOKENS steps of B tokens, one
per sequence, each step one llama_decode call with the logits of every sequence; its S_TG column
(B x TOKENS / decode time) is the decode figure here. It sizes its recurrent-state memory to the
largest B by itself (n_seq_max); CTX is B x (PROMPT + TOKENS) for the largest B, since it skips
any B whose prompts and tokens do not fit. rwkvcpp decodes the same B sequences the same number
of steps (rwkvcpp.benchmark.run_batch_benchmark: Model.eval_batch, one token each per step, from
a warm-up step instead of a prompt: an RWKV state costs the same whatever it has read).

Columns: decode tokens/s of all B sequences together and that over B = first's, for each engine;
then the share of CPU time other processes took (Linux; rerun rows where it is not ~0).
llama-batched-bench is built like llama-bench (see compare.py), target llama-batched-bench.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

from compare import OtherCpu, to_gguf  # the script beside this one

from rwkvcpp import format as F
from rwkvcpp.benchmark import run_batch_benchmark
from rwkvcpp.model import Model


def batch_sizes(text: str) -> list:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes such as 1,2,4,8,16, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1: {text!r}")
    return sizes


def llama_batched(binary: str, gguf: str, threads: int, prompt: int, tokens: int, sizes: list) -> dict:
    """{B: decode tokens/s of all B sequences} from one llama-batched-bench run."""
    cmd = [binary, "-m", gguf, "-t", str(threads), "-tb", str(threads), "-npp", str(prompt), "-ntg", str(tokens),
           "-npl", ",".join(map(str, sizes)), "-c", str(max(sizes) * (prompt + tokens)), "--output-format", "jsonl"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    speeds = {}
    for line in (run.stdout + run.stderr).splitlines():  # its rows are log lines: stdout or stderr by version
        if line.startswith("{") and '"speed_tg"' in line:
            row = json.loads(line)
            speeds[row["pl"]] = row["speed_tg"]
    missing = [b for b in sizes if b not in speeds]
    if missing:
        raise RuntimeError(f"{' '.join(cmd)} gave no row for B = {missing}:\n{run.stderr[-2000:]}")
    return speeds


def model_paths(items: list) -> list:
    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.bin")))
            if not found:
                sys.exit(f"error: no .bin files in {item}; make some with benchmarks/make_models.py")
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            sys.exit(f"error: {item} is neither a .bin model nor a folder of them")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("llama_batched_bench", help="path of a llama-batched-bench binary")
    parser.add_argument("models", nargs="+", help=".bin models, or folders of them")
    parser.add_argument("--gguf-dir", default="/tmp/rwkv-bench-gguf", help="where the converted files go")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=batch_sizes, default=[1, 2, 4, 8, 16], metavar="B,B,...",
                        help="numbers of sequences decoded together (default 1,2,4,8,16)")
    parser.add_argument("--tokens", type=int, default=32, help="decoding steps per batch size (default 32)")
    parser.add_argument("--prompt", type=int, default=16, help="llama.cpp's prompt tokens per sequence (default 16)")
    args = parser.parse_args()
    if not (os.path.isfile(args.llama_batched_bench) and os.access(args.llama_batched_bench, os.X_OK)):
        sys.exit(f"error: {args.llama_batched_bench} is not an executable llama-batched-bench")
    if args.tokens < 1 or args.prompt < 1 or args.threads < 1:
        sys.exit("error: --tokens, --prompt and --threads must be at least 1")
    first = args.batch[0]

    for path in model_paths(args.models):
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            gguf = to_gguf(path, args.gguf_dir)
        except ValueError as e:
            print(f"skipped {name}: {e}", file=sys.stderr, flush=True)
            continue
        other = OtherCpu()
        other.start()
        theirs = llama_batched(args.llama_batched_bench, gguf, args.threads, args.prompt, args.tokens, args.batch)
        with Model(path, threads=args.threads) as model:
            ours = {r.batch: r.tokens_per_second for r in run_batch_benchmark(model, args.batch, args.tokens)}
        busy = other.stop()
        fmt = F.type_name(F.read_header(path).data_type)
        print(f"\n{name} ({fmt}), {args.threads} threads, {args.tokens} steps; decode tokens/s of all B sequences")
        print(f"| B | llama.cpp | vs {first} | rwkvcpp | vs {first} | rwkvcpp / llama.cpp |")
        print("|---|---|---|---|---|---|")
        for b in args.batch:
            print(f"| {b} | {theirs[b]:.1f} | {theirs[b] / theirs[first]:.2f} | {ours[b]:.1f} | "
                  f"{ours[b] / ours[first]:.2f} | {ours[b] / theirs[b]:.2f} |")
        print(f"(others' CPU: {'-' if busy is None else f'{busy:.0f}%'})", flush=True)


if __name__ == "__main__":
    main()
