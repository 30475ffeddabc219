"""Random-weight models with the exact shapes of released RWKV models, for benchmarking.

    python benchmarks/make_models.py --out /tmp/rwkv-bench [--sizes 0.1b,1.5b] [--archs v7,v6,v5.2,v4]

writes <arch>-<size>-FP16.bin and its Q8_0 and Q5_1 quantizations. Speed does not depend on the
values, only on the shapes and formats, so these stand in for released models (which cannot be
downloaded here). The 1.5B shapes need about 8 GB of memory while generating.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from support.checkpoints import make_checkpoint  # noqa: E402  (the tests' generator of release-shaped checkpoints)

import rwkvcpp  # noqa: E402
from rwkvcpp.writer import write_model  # noqa: E402

# (n_layer, n_embed) of the released sizes; vocabularies as released (v4 Pile models: 50277)
SIZES = {"0.1b": (12, 768), "0.4b": (24, 1024), "1.5b": (24, 2048), "3b": (32, 2560)}
VOCAB = {"v4": 50277, "v5.2": 65536, "v6": 65536, "v7": 65536}


def make(out_dir: str, arch: str, size: str, formats, pth: bool = False) -> list[str]:
    n_layer, n_embed = SIZES[size]
    fp16 = os.path.join(out_dir, f"{arch}-{size}-FP16.bin")
    written = []
    if not os.path.exists(fp16) or (pth and not os.path.exists(fp16[: -len("-FP16.bin")] + ".pth")):
        start = time.perf_counter()
        checkpoint = make_checkpoint(arch, n_layer=n_layer, n_embed=n_embed, n_vocab=VOCAB[arch], seed=0)
        write_model(fp16, checkpoint, dtype="FP16")
        if pth:  # the same weights for the official package (benchmarks/run_bench.py --official)
            from support.checkpoints import save_pth

            save_pth(checkpoint, fp16[: -len("-FP16.bin")] + ".pth", dtype="bf16")
        del checkpoint
        print(f"{fp16}: {os.path.getsize(fp16) / 2**20:.0f} MiB in {time.perf_counter() - start:.0f} s", flush=True)
    written.append(fp16)
    for fmt in formats:
        path = os.path.join(out_dir, f"{arch}-{size}-{fmt}.bin")
        if not os.path.exists(path):
            print(rwkvcpp.quantize(fp16, path, fmt), flush=True)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/rwkv-bench")
    parser.add_argument("--sizes", default="0.1b,1.5b")
    parser.add_argument("--archs", default="v7")
    parser.add_argument("--formats", default="Q8_0,Q5_1")
    parser.add_argument("--pth", action="store_true", help="also save a .pth for the official package (needs torch)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for arch in args.archs.split(","):
        for size in args.sizes.split(","):
            make(args.out, arch, size, [f for f in args.formats.split(",") if f], args.pth)


if __name__ == "__main__":
    main()
