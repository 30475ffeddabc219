"""Benchmarks every model in a folder with `rwkvcpp bench`'s measurements and prints a table.

    python benchmarks/run_bench.py /tmp/rwkv-bench [--threads 2] [--tokens 64] [--prompt 512] [--official]

With --official (needs torch and the `rwkv` package, and the .pth that make_models.py --pth saves),
the official implementation is timed on the same weights (fp32 on the CPU) for comparison.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys

from rwkvcpp.benchmark import run_benchmark


OFFICIAL_TIMER = r"""
import os, sys, time
import numpy as np
arch, pth, tokens, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.environ["RWKV_JIT_ON"] = "1"
os.environ["RWKV_CUDA_ON"] = "0"
os.environ["RWKV_V7_ON"] = "1" if arch == "v7" else "0"
from rwkv.model import RWKV
model = RWKV(pth[:-4] if arch == "v7" else pth, strategy="cpu fp32", verbose=False)
toks = np.random.default_rng(0).integers(0, 50000, size=max(tokens, prompt)).tolist()
out, state = model.forward([toks[0]], None)
start = time.perf_counter()
for t in toks[:tokens]:
    out, state = model.forward([t], state)
decode = (time.perf_counter() - start) / tokens * 1000
start = time.perf_counter()
model.forward(toks[:prompt], None)
print(decode, prompt / (time.perf_counter() - start))
"""


def official_speed(arch: str, pth: str, tokens: int, prompt: int):
    """Decode ms/token and prompt tokens/s of the official package (in its own process: its
    architecture switch is an environment variable read at import)."""
    out = subprocess.run([sys.executable, "-c", OFFICIAL_TIMER, arch, pth, str(tokens), str(prompt)],
                         capture_output=True, text=True, check=True)
    decode, prompt_tps = map(float, out.stdout.split()[-2:])
    return decode, prompt_tps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--official", action="store_true", help="also time the official rwkv package")
    args = parser.parse_args()
    paths = sorted(glob.glob(os.path.join(args.folder, "*.bin")))
    if not paths:
        sys.exit(f"no .bin files in {args.folder}; make some with benchmarks/make_models.py")
    print("| model | format | decode ms/token | decode tok/s | % of bandwidth limit | prompt tok/s | load ms | RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        r = run_benchmark(path, threads=args.threads, decode_tokens=args.tokens, prompt_tokens=args.prompt)
        name = os.path.basename(path).rsplit("-", 1)[0]
        print(f"| {name} | {r.dtype} | {r.decode_ms_per_token:.2f} | {r.decode_tokens_per_second:.1f} | "
              f"{r.percent_of_limit:.0f}% | {r.prompt_tokens_per_second:.0f} | {r.load_seconds * 1000:.0f} | "
              f"{r.rss_bytes / 2**20:.0f} |", flush=True)
        pth = path[: -len("-FP16.bin")] + ".pth"
        if args.official and r.dtype == "FP16" and os.path.exists(pth):
            decode, prompt = official_speed(r.arch, pth, args.tokens, args.prompt)
            print(f"| {name} (official rwkv, torch CPU fp32) | - | {decode:.2f} | {1000 / decode:.1f} | - | "
                  f"{prompt:.0f} | - | - |", flush=True)


if __name__ == "__main__":
    main()
