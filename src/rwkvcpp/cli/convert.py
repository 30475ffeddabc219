"""``rwkvcpp convert SRC DST [--dtype FP16|FP32] [--quantize TYPE] [--quantize-head]``: turn a
PyTorch / safetensors / Hugging Face checkpoint or a llama.cpp GGUF into an rwkv.cpp model file,
or (DST ending in .gguf) a model into a GGUF file for llama.cpp."""

from __future__ import annotations

from ..conversion.pipeline import convert
from ..quantization import QUANTIZED_TYPES
from . import CommandError, _common
from ._progress import Progress, step_callback


def add_arguments(parser) -> None:
    parser.add_argument("src", metavar="SRC", nargs="?",
                        help="checkpoint: .pth/.pt, .safetensors, a sharded *.index.json or a Hugging Face folder; "
                        "a llama.cpp RWKV-6/7 .gguf; or, for a .gguf DST, an rwkv.cpp .bin")
    parser.add_argument("dst", metavar="DST", nargs="?",
                        help="output .bin file, or .gguf for llama.cpp (RWKV-6/7; replaced if it exists)")
    parser.add_argument("--dtype", default="FP16", type=str.upper, choices=["FP16", "FP32"],
                        help="for checkpoints: FP16 (default: matrices FP16, the rest FP32, as rwkv.cpp writes) or FP32; "
                        ".bin and GGUF tensors keep their types")
    _common.add_hf_argument(parser, "instead of SRC, a checkpoint from the Hugging Face Hub (the repository's one "
                                    "model file, or FILE; a Transformers repository's folder); needs huggingface-hub")
    # Not argparse choices: names are case-insensitive, and a bad one gets a one-line error.
    parser.add_argument("--quantize", metavar="TYPE",
                        help=f"quantize the result in the same step: {', '.join(QUANTIZED_TYPES)}")
    parser.add_argument("--quantize-head", action="store_true",
                        help="with --quantize, quantize head.weight too (faster, slightly less accurate)")


def run(args) -> int:
    if args.hf is not None:  # then the one positional argument is DST
        if args.dst is not None:
            raise CommandError(f"give SRC ({args.src}) or --hf {args.hf}, not both")
        args.src, args.dst = _common.hub_file(args.hf, convert=False), args.src
    if args.dst is None:
        raise CommandError("give SRC and DST (or --hf REPO[:FILE] and DST)")
    if args.quantize_head and not args.quantize:
        raise CommandError("--quantize-head needs --quantize TYPE")
    progress = step_callback(lambda total: Progress(total, "tensor", "converting"))
    try:
        convert(args.src, args.dst, dtype=args.dtype, quantize=args.quantize,
                quantize_head=args.quantize_head, progress=progress, log=lambda line: print(line, flush=True))
    finally:
        progress.close()
    return 0
