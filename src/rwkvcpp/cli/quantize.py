"""``rwkvcpp quantize SRC DST TYPE [--quantize-head]``: quantize an FP32/FP16 model file."""

from __future__ import annotations

from ..quantization import QUANTIZED_TYPES, format_size, quantize
from ._progress import Progress, step_callback


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


def run(args) -> int:
    progress = step_callback(lambda total: Progress(total, "tensor", "quantizing"))
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
