"""Runs the official `rwkv` pip package on a .pth checkpoint; used through tests/support/official.py.

Run as a separate process because the official package reads RWKV_V7_ON, RWKV_JIT_ON and
RWKV_CUDA_ON when it is imported, so v7 and v4-v6 models cannot share one interpreter.

    python official_runner.py ARCH PTH_PATH OUT_NPZ TOKEN [TOKEN ...] [--modes serial,sequence]

Writes OUT_NPZ with, for each mode, `logits_<mode>` (T, V) float32 and `state_<mode>`, the final
state flattened in FORMAT.md's layout (per layer: ffn x, att x, then aa/bb/pp or the wkv matrix).
"""

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("arch", choices=["v4", "v5.1", "v5.2", "v6", "v7"])
    parser.add_argument("pth")
    parser.add_argument("out")
    parser.add_argument("tokens", type=int, nargs="+")
    parser.add_argument("--modes", default="serial", help="comma-separated: serial, sequence")
    args = parser.parse_args(argv)

    # Must be set before `rwkv.model` is imported.
    os.environ["RWKV_JIT_ON"] = "0"
    os.environ["RWKV_CUDA_ON"] = "0"
    if args.arch == "v7":
        os.environ["RWKV_V7_ON"] = "1"
    else:
        os.environ.pop("RWKV_V7_ON", None)

    import numpy as np
    import torch

    torch.set_num_threads(1)  # tiny models; do not compete for the shared cores
    from rwkv.model import RWKV

    # Both official loaders append ".pth" themselves (v7 unconditionally).
    base = args.pth[: -len(".pth")] if args.pth.endswith(".pth") else args.pth
    model = RWKV(base, strategy="cpu fp32")

    def flat_state(state):
        """The official per-layer state list in FORMAT.md's order."""
        per_layer = 5 if args.arch == "v4" else 3
        parts = []
        for i in range(len(state) // per_layer):
            s = state[i * per_layer : (i + 1) * per_layer]
            if args.arch == "v4":  # official: att x, aa, bb, pp, ffn x
                ordered = [s[4], s[0], s[1], s[2], s[3]]
            else:  # official: att x, wkv matrices, ffn x
                ordered = [s[2], s[0], s[1]]
            parts += [t.detach().float().reshape(-1).numpy() for t in ordered]
        return np.concatenate(parts)

    results = {}
    with torch.no_grad():
        for mode in args.modes.split(","):
            if mode == "serial":
                state, rows = None, []
                for token in args.tokens:
                    logits, state = model.forward([token], state)
                    rows.append(logits.detach().float().numpy().copy())
                logits = np.stack(rows)
            elif mode == "sequence":
                logits, state = model.forward(list(args.tokens), None, full_output=True)
                logits = logits.detach().float().numpy().reshape(len(args.tokens), -1)
            else:
                raise SystemExit(f"unknown mode {mode!r}")
            results[f"logits_{mode}"] = logits.astype(np.float32)
            results[f"state_{mode}"] = flat_state(state)
    np.savez(args.out, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
