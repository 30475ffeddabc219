"""Quantizes an rwkv.cpp model file from FP32 or FP16 to Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K or Q5_K.

A drop-in for rwkv.cpp's python/quantize.py, with its argument order:

    python python/quantize.py C:\\rwkv.cpp-169M-FP16.bin C:\\rwkv.cpp-169M-Q5_1.bin Q5_1

The format is a name (any case) or, as very old rwkv.cpp versions took, its numeric type id
(2 Q4_0, 3 Q4_1, 7 Q5_0, 8 Q5_1, 9 Q8_0, 13 Q4_K, 14 Q5_K). It is a thin wrapper over ``rwkvcpp.quantize``; the
``rwkvcpp quantize`` command does the same with a progress bar.
"""

import argparse
import sys

try:
    from rwkvcpp.quantization import QUANTIZED_TYPES, quantize
except ImportError as e:  # a checkout without the package installed
    sys.exit(f"quantize.py needs the rwkvcpp package (pip install rwkvcpp, or pip install -e . here): {e}")


def parse_args():
    parser = argparse.ArgumentParser(description="Quantize rwkv.cpp model file from FP32 or FP16")
    parser.add_argument("src_path", help="Path to FP32/FP16 checkpoint file")
    parser.add_argument("dest_path", help="Path to resulting checkpoint file, will be overwritten")
    parser.add_argument("format_name", help="Format name, one of " + ", ".join(QUANTIZED_TYPES))
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    fmt_name = args.format_name.strip()
    fmt_arg = int(fmt_name) if fmt_name.isdigit() else fmt_name
    try:
        summary = quantize(args.src_path, args.dest_path, fmt_arg)
    except (ValueError, OSError) as e:
        print(f"quantize.py: error: {e}", file=sys.stderr)
        return 2
    print(summary)
    print("Done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
