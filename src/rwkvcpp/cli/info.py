"""``rwkvcpp info [FILE] [--json]``: what a model file or a checkpoint holds, from headers alone.

For an rwkv.cpp ``.bin``: the header (magic, version, data type), the architecture, sizes,
parameter count, file size and one row per tensor (name, type, shape, bytes). For a llama.cpp
GGUF: its version, metadata (long arrays such as the vocabulary summarized) and tensors (ggml
types). For a checkpoint
(``.pth``, ``.safetensors``, a Hugging Face folder or index): the format, architecture, sizes and
one row per tensor (name, dtype, shape, bytes). No tensor data is read, so this is instant even
for large models; shapes are given in PyTorch order (outermost first) for both.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter

from .. import format as fmt
from ..arch import detect
from ..conversion.gguf import describe as describe_gguf, is_gguf
from ..quantization import format_size
from . import _common

_FILE_KINDS = {b"PK\x03\x04": "PyTorch zip (torch.save)", b"\x80": "legacy PyTorch pickle"}


def add_arguments(parser) -> None:
    parser.add_argument("file", metavar="FILE", nargs="?",
                        help="rwkv.cpp .bin model, a llama.cpp .gguf, or a .pth / .safetensors checkpoint or "
                        "Hugging Face folder (default: the built-in model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--verify", action="store_true",
                        help="also decode every tensor of a .bin model and report NaN or infinite values (bad "
                             "floats, or quantized blocks with non-finite scales); exit code 1 if there are any")


def _is_model_file(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == fmt.MAGIC.to_bytes(4, "little")


def describe_model_file(path: str) -> dict:
    """Header and tensor records of a ``.bin`` (validated as the engine would, data unread)."""
    header = fmt.read_header(path)
    records = fmt.load_records(path)
    arch = detect(r.name for r in records)
    by_name = {r.name: r for r in records}
    ffn_key = by_name.get("blocks.0.ffn.key.weight")
    return {
        "path": path,
        "kind": "rwkv.cpp model",
        "magic": f"0x{fmt.MAGIC:08x}",
        "version": header.version,
        "data_type": fmt.type_name(header.data_type),
        "arch": arch.name if arch else None,
        "n_vocab": header.n_vocab,
        "n_embed": header.n_embed,
        "n_layer": header.n_layer,
        "n_head": (arch.file_heads({r.name: r.shape for r in records}, header.n_embed)[0] if arch else 0) or None,
        "n_ffn": int(ffn_key.shape[0]) if ffn_key else None,
        "n_params": sum(math.prod(r.shape) for r in records),
        "file_size": os.path.getsize(path),
        "type_counts": dict(Counter(r.type_name for r in records).most_common()),
        "tensors": [{"name": r.name, "type": r.type_name, "shape": list(r.shape), "bytes": r.nbytes}
                    for r in records],
    }


def _checkpoint_files(source: str) -> list:
    """The files a checkpoint is read from: the file itself, or an index and its shards."""
    if not source.endswith(".index.json"):
        return [source]
    with open(source, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    folder = os.path.dirname(os.path.abspath(source))
    return [source] + [os.path.join(folder, s) for s in shards]


def _file_kind(source: str) -> str:
    if source.endswith(".index.json"):
        return "sharded checkpoint (index)"
    with open(source, "rb") as f:
        head = f.read(4)
    for magic, kind in _FILE_KINDS.items():
        if head.startswith(magic):
            return kind
    return "safetensors"


def describe_checkpoint(path: str) -> dict:
    """Architecture, sizes and tensors of a checkpoint; ``problem`` says why it could not be
    converted, when it could not."""
    from ..conversion.hf import is_hf_layout, to_native_names
    from ..conversion.load import load_checkpoint
    from ..conversion.schema import inspect_checkpoint

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    checkpoint = load_checkpoint(path)
    hf = is_hf_layout(checkpoint)
    info = {
        "path": path,
        "kind": "checkpoint",
        "format": _file_kind(checkpoint.source),
        "layout": "Hugging Face" if hf else "BlinkDL",
        "problem": None,
    }
    try:
        shape = inspect_checkpoint(to_native_names(checkpoint), path)
    except ValueError as exc:  # still worth showing the tensors of a checkpoint we cannot convert
        info["problem"] = str(exc)
    else:
        info.update(arch=shape.arch, n_vocab=shape.n_vocab, n_embed=shape.n_embed, n_layer=shape.n_layer,
                    n_head=shape.n_head or None, n_ffn=shape.n_ffn, dtype=shape.dtype,
                    unused=list(shape.unused))
    tensors = []
    for name, tensor in checkpoint.lazy_items():
        tensors.append({"name": name, "dtype": tensor.dtype, "shape": list(tensor.shape), "bytes": tensor.nbytes})
    info["n_params"] = sum(math.prod(t["shape"]) for t in tensors)
    info["file_size"] = sum(os.path.getsize(f) for f in _checkpoint_files(checkpoint.source))
    info["tensors"] = tensors
    return info


def _size(n: int) -> str:
    return f"{format_size(n)} ({n:,} bytes)"


def _sizes_line(info: dict) -> str:
    parts = [f"{key} {info[key]}" for key in ("n_layer", "n_embed", "n_head", "n_ffn", "n_vocab")
             if info.get(key) is not None]
    return ", ".join(parts)


def _table(rows: list, type_key: str) -> list:
    header = ("name", type_key, "shape", "bytes")
    cells = [(r["name"], r[type_key], "(" + ", ".join(map(str, r["shape"])) + ")", f"{r['bytes']:,}") for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = []
    for row in [header] + cells:
        lines.append("  " + "  ".join(cell.rjust(w) if i == 3 else cell.ljust(w)
                                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    return lines


def _text(info: dict) -> str:
    from ..conversion.schema import format_count

    lines = [f"{info['path']}: {info['kind']}"]
    if info["kind"] == "GGUF model":
        lines.append(f"  header:       GGUF version {info['version']}, llama.cpp architecture {info['gguf_arch']}")
        lines.extend(f"  {key}: {value}" for key, value in info["metadata"].items())
        types = ", ".join(f"{n} {t}" for t, n in info["type_counts"].items())
        tensor_line = f"{len(info['tensors'])} ({types})"
    elif info["kind"] == "rwkv.cpp model":
        lines.append(f"  header:       magic {info['magic']}, version {info['version']}, "
                     f"data type {info['data_type']}")
        types = ", ".join(f"{n} {t}" for t, n in info["type_counts"].items())
        tensor_line = f"{len(info['tensors'])} ({types})"
    else:
        lines.append(f"  format:       {info['format']}, {info['layout']} names")
        if info.get("dtype"):
            lines.append(f"  dtype:        {info['dtype']}")
        tensor_line = str(len(info["tensors"]))
    if info.get("arch"):
        lines.append(f"  architecture: RWKV {info['arch']}")
        lines.append(f"  sizes:        {_sizes_line(info)}")
    if info.get("problem"):
        lines.append(f"  cannot be converted: {info['problem']}")
    lines.append(f"  parameters:   {format_count(info['n_params'])} ({info['n_params']:,})")
    lines.append(f"  file size:    {_size(info['file_size'])}")
    lines.append(f"  tensors:      {tensor_line}")
    if "engine" in info:
        engine = info["engine"]
        lines.append(f"  engine:       kernels {engine['kernels']} (CPU: {' '.join(engine['cpu_features']) or '-'}), "
                     f"{engine['default_threads']} threads by default")
    if info.get("unused"):
        lines.append(f"  not used by the engine: {', '.join(info['unused'])}")
    lines.extend(_table(info["tensors"], "dtype" if info["kind"] == "checkpoint" else "type"))
    if "non_finite" in info:
        lines.append(_verify_text(info))
    return "\n".join(lines)


def _verify_text(info: dict) -> str:
    shapes = {t["name"]: t["shape"] for t in info["tensors"]}
    if not info["non_finite"]:
        return f"  verified:     every value of the {len(shapes)} tensors is finite"
    lines = [f"  NOT FINITE:   {len(info['non_finite'])} tensors hold NaN or infinite values (bad floats, or "
             "quantized blocks whose scales are not finite); the model's logits will not be finite"]
    for problem in info["non_finite"]:
        row_len = shapes[problem["name"]][-1]
        row, column = divmod(problem["first_bad"], row_len)
        lines.append(f"    {problem['name']}: {problem['n_bad']:,} values, the first at row {row}, column {column}")
    return "\n".join(lines)


def run(args) -> int:
    path = os.fspath(args.file) if args.file is not None else _common.builtin_model_path()
    _common.require_regular_file(path)
    if _is_model_file(path):
        from ..model import system_info, verify_file

        info = dict(describe_model_file(path), engine=system_info())  # what running it would use
        if args.verify:
            info["non_finite"] = verify_file(path)
    elif args.verify:
        raise _common.CommandError(f"{path}: --verify checks rwkv.cpp .bin models; convert the checkpoint first")
    elif is_gguf(path):
        info = describe_gguf(path)
    elif path.endswith(".bin") and os.path.isfile(path):
        with open(path, "rb") as f:
            magic = f.read(4)
        raise ValueError(f"{path}: not an rwkv.cpp model file (bad magic {magic.hex() or 'none: empty file'}, "
                         f"expected {fmt.MAGIC.to_bytes(4, 'little').hex()})")
    else:
        info = describe_checkpoint(path)
    print(json.dumps(info, indent=1) if args.json else _text(info))
    return 1 if info.get("non_finite") else 0
