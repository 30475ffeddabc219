"""``rwkvcpp convert SRC DST [--dtype FP16|FP32] [--quantize TYPE] [--quantize-head]``: turn a
PyTorch / safetensors / Hugging Face checkpoint into an rwkv.cpp model file."""

from __future__ import annotations

import sys

from ..conversion import convert
from ..quantization import QUANTIZED_TYPES
from . import CommandError


def add_arguments(parser) -> None:
    parser.add_argument("src", metavar="SRC",
                        help="checkpoint: .pth/.pt, .safetensors, a sharded *.index.json or a Hugging Face folder")
    parser.add_argument("dst", metavar="DST", help="output .bin file (replaced if it exists)")
    parser.add_argument("--dtype", default="FP16", type=str.upper, choices=["FP16", "FP32"],
                        help="FP16 (default: matrices FP16, the rest FP32, as rwkv.cpp writes) or FP32")
    # Not argparse choices: names are case-insensitive, and a bad one gets a one-line error.
    parser.add_argument("--quantize", metavar="TYPE",
                        help=f"quantize the result in the same step: {', '.join(QUANTIZED_TYPES)}")
    parser.add_argument("--quantize-head", action="store_true",
                        help="with --quantize, quantize head.weight too (faster, slightly less accurate)")


class _Progress:
    """A progress bar over tensors on stderr: tqdm when installed and stderr is a terminal, a
    self-rewriting line on a terminal without tqdm, and otherwise (logs, pipes) a plain line
    every tenth of the way, so a long conversion still shows signs of life."""

    def __init__(self, stream=None):
        self._stream = stream if stream is not None else sys.stderr
        self._tty = hasattr(self._stream, "isatty") and self._stream.isatty()
        self._bar = None
        self._width = 0
        self._next_tenth = 1
        self._tqdm = None
        if self._tty:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            self._tqdm = tqdm

    def __call__(self, done: int, total: int, name: str) -> None:
        if self._tqdm is not None:
            if self._bar is None:
                self._bar = self._tqdm(total=total, unit="tensor", desc="converting", file=self._stream, leave=False)
            self._bar.total = total  # grows once when quantizing starts
            self._bar.set_postfix_str(name, refresh=False)
            self._bar.update(done - self._bar.n)
        elif self._tty:
            line = f"\rconverting: {done}/{total} tensors  {name}"
            self._stream.write(line.ljust(self._width))
            self._width = max(self._width, len(line))
            self._stream.flush()
        elif total and done * 10 >= self._next_tenth * total:
            self._next_tenth = done * 10 // total + 1
            self._stream.write(f"converting: {done}/{total} tensors ({100 * done // total}%)\n")
            self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()


def run(args) -> int:
    if args.quantize_head and not args.quantize:
        raise CommandError("--quantize-head needs --quantize TYPE")
    progress = _Progress()
    try:
        convert(args.src, args.dst, dtype=args.dtype, quantize=args.quantize,
                quantize_head=args.quantize_head, progress=progress, log=lambda line: print(line, flush=True))
    finally:
        progress.close()
    return 0
