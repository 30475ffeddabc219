"""``rwkvcpp merge-lora SRC LORA DST --alpha ALPHA [--arch VERSION]``: merge a LoRA checkpoint
(RWKV-LM-LoRA / RWKV-PEFT layout, .pth or .safetensors) into an FP32/FP16 model file."""

from __future__ import annotations

from ..conversion.lora import ARCH_NAMES, merge_lora
from ._progress import Progress, step_callback


def add_arguments(parser) -> None:
    parser.add_argument("src", metavar="SRC", help="FP32 or FP16 .bin model (quantize after merging)")
    parser.add_argument("lora", metavar="LORA", help="LoRA checkpoint: .pth or .safetensors")
    parser.add_argument("dst", metavar="DST", help="output .bin file (replaced if it exists)")
    parser.add_argument("--alpha", type=float, required=True, metavar="ALPHA",
                        help="the lora_alpha the LoRA was trained with (each pair is scaled by alpha / rank)")
    parser.add_argument("--arch", metavar="VERSION",
                        help=f"check that the model is this RWKV version ({', '.join(ARCH_NAMES)}); "
                             "it is read from the file either way")


def run(args) -> int:
    progress = step_callback(lambda total: Progress(total, "tensor", "merging"))
    try:
        summary = merge_lora(args.src, args.lora, args.dst, args.alpha, arch=args.arch, progress=progress)
    finally:
        progress.close()
    print(f"RWKV {summary.arch}: {summary}")
    if summary.unused:
        shown = ", ".join(summary.unused[:4]) + (", ..." if len(summary.unused) > 4 else "")
        print(f"  warning: {len(summary.unused)} LoRA tensors match nothing in the model and were ignored: {shown}")
    return 0
