"""Data files shipped with rwkvcpp: a small built-in model that works with nothing downloaded.

``builtin-v7-byte.bin`` is a byte-level RWKV v7 (vocabulary 256: raw UTF-8 bytes) trained on
CPython's own help topics by ``tools/train_builtin.py``; ``MODEL_CARD.md`` next to it describes it.

    >>> import rwkvcpp
    >>> from rwkvcpp.data import builtin_model_path
    >>> model = rwkvcpp.Model(builtin_model_path())
    >>> logits, state = model.eval_sequence(list("The ".encode("utf-8")))
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUILTIN_MODEL", "BUILTIN_MODEL_NAME", "builtin_model_path"]

BUILTIN_MODEL_NAME = "builtin-v7-byte.bin"
# Where the file belongs (it may be missing: builtin_model_path() checks).
BUILTIN_MODEL = Path(__file__).resolve().parent / BUILTIN_MODEL_NAME


def builtin_model_path() -> Path:
    """The path of the built-in model file (``builtin-v7-byte.bin``).

    Raises FileNotFoundError if the file is missing, e.g. from a source checkout where it was not
    built (``python tools/train_builtin.py`` makes it) or a package installed without its data.
    """
    path = BUILTIN_MODEL
    if not path.is_file():
        raise FileNotFoundError(
            f"rwkvcpp's built-in model is missing: {path} does not exist. Reinstall rwkvcpp with its "
            "package data, or rebuild the file with `python tools/train_builtin.py` from a source checkout."
        )
    return path
