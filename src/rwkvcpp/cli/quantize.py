"""``rwkvcpp quantize SRC DST TYPE [--quantize-head]``: quantize an FP32/FP16 model file."""

from __future__ import annotations

import sys

from ..quantization import QUANTIZED_TYPES, format_size, quantize


def add_arguments(parser) -> None:
    parser.add_argument("src", metavar="SRC", help="FP32 or FP16 .bin model")
    parser.add_argument("dst", metavar="DST", help="output .bin file (replaced if it exists)")
    # Not argparse choices: names are case-insensitive, and a bad one gets quantize()'s one-line error.
    parser.add_argument("type", metavar="TYPE", help=f"one of {', '.join(QUANTIZED_TYPES)} (any case)")
    parser.add_argument(
        "--quantize-head",
        action="store_true",
        help="also quantize head.weight: faster, slightly less accurate (emb.weight always stays as it is)",
    )


class _Progress:
    """A progress bar over tensors: tqdm when installed, else one self-rewriting stderr line.

    Both stay silent when stderr is not a terminal, so logs and pipes get only the summary.
    """

    def __init__(self):
        self._bar = None
        self._tty = sys.stderr.isatty()
        self._width = 0

    def __call__(self, done: int, total: int, name: str) -> None:
        if not self._tty:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            line = f"\rquantizing: {done}/{total} tensors  {name}"
            sys.stderr.write(line.ljust(self._width))
            self._width = max(self._width, len(line))
            sys.stderr.flush()
            return
        if self._bar is None:
            self._bar = tqdm(total=total, unit="tensor", desc="quantizing", file=sys.stderr, leave=False)
        self._bar.set_postfix_str(name, refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()


def run(args) -> int:
    progress = _Progress()
    try:
        summary = quantize(args.src, args.dst, args.type, quantize_head=args.quantize_head, progress=progress)
    finally:
        progress.close()
    print(f"{summary.dst}: {summary.type}, quantized from {summary.src_type} in {summary.seconds:.1f} s")
    print(
        f"  size:    {format_size(summary.src_bytes)} -> {format_size(summary.dst_bytes)} "
        f"({summary.ratio:.1%} of {summary.src})"
    )
    note = "" if args.quantize_head else " (head.weight kept; --quantize-head to quantize it)"
    print(f"  tensors: {summary.n_quantized} of {summary.n_tensors} quantized{note}")
    return 0
