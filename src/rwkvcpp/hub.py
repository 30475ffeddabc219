"""Models by name from the Hugging Face Hub: ``Model.from_pretrained(repo_id, filename=...)`` and
the commands' ``--hf REPO[:FILE]``.

The file comes through ``huggingface-hub`` (an optional dependency) and its cache, so the usual
settings apply (``HF_TOKEN``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1`` for the cache alone). An
rwkv.cpp ``.bin`` is used as it is; a ``.pth``, ``.safetensors``, GGUF file or a Transformers
folder (``config.json`` and safetensors shards) is converted once to an FP16 ``.bin`` kept
beside the download, under the rwkvcpp cache (``RWKVCPP_CACHE``, default
``~/.cache/rwkvcpp``), named by the repository, revision and file; later calls find it there.
"""

from __future__ import annotations

import hashlib
import os
import re
from types import ModuleType
from typing import Callable, Optional

from .format import MAGIC

__all__ = ["resolve", "download", "split_spec"]

MODEL_SUFFIXES = (".bin", ".pth", ".pt", ".safetensors", ".gguf")
# What a Transformers-format repository needs for conversion (no other files are fetched).
FOLDER_PATTERNS = ["*.json", "*.safetensors"]


def split_spec(spec: str) -> tuple[str, Optional[str]]:
    """``"org/name:file.pth"`` -> ``("org/name", "file.pth")``; no file part -> None."""
    repo, _, filename = spec.partition(":")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ValueError(f"{spec!r} is not a Hugging Face model name: expected ORG/NAME or ORG/NAME:FILE")
    return repo, filename or None


def _hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError("models by name need the huggingface-hub package: pip install huggingface-hub") from None
    return huggingface_hub


def _repo_files(hub: ModuleType, repo_id: str, revision: Optional[str]) -> tuple[list[str], Optional[str]]:
    """The repository's files and, when only the cache answers, its cached snapshot folder."""
    try:
        return list(hub.HfApi().list_repo_files(repo_id, revision=revision)), None
    except Exception as online_error:  # offline, no network, or unknown: what does the cache hold?
        try:
            folder = str(hub.snapshot_download(repo_id, revision=revision, local_files_only=True))
        except Exception:
            raise FileNotFoundError(f"{repo_id}: not found on the Hub ({online_error.__class__.__name__}: "
                                    f"{online_error}) nor in the local cache") from None
        files = [os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")
                 for d, _, names in os.walk(folder) for f in names]
        return files, folder


def _choose(repo_id: str, files: list[str]) -> Optional[str]:
    """The one model file of a repository (None: a Transformers folder); an error listing the
    candidates when there are several."""
    candidates = [f for f in files if f.endswith(MODEL_SUFFIXES) and not f.endswith(".index.json")
                  and not re.search(r"(^|/)(pytorch_model|model)(-\d+-of-\d+)?\.(bin|safetensors)$", f)]
    if "config.json" in files and any(f.endswith(".safetensors") for f in files) and not any(
            f.endswith((".pth", ".gguf")) for f in candidates):
        return None  # a Transformers-format model: the folder is converted
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FileNotFoundError(f"{repo_id} has no model file ({', '.join(MODEL_SUFFIXES)})")
    shown = ", ".join(sorted(candidates)[:12]) + (", ..." if len(candidates) > 12 else "")
    raise ValueError(f"{repo_id} has {len(candidates)} model files; name one as {repo_id}:FILE "
                     f"(or filename=...): {shown}")


def _is_rwkv_bin(path: str) -> bool:
    with open(path, "rb") as f:
        return int.from_bytes(f.read(4), "little") == MAGIC


def cache_dir() -> str:
    return os.environ.get("RWKVCPP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rwkvcpp")


def download(repo_id: str, filename: Optional[str] = None, *, revision: Optional[str] = None) -> str:
    """The local path of ``filename`` of ``repo_id`` as the Hub gives it, unconverted (None: the
    repository's one model file, or its Transformers folder), fetched once into the Hub's cache."""
    return _download(_hub(), repo_id, filename, revision)[0]


def _download(hub: ModuleType, repo_id: str, filename: Optional[str],
              revision: Optional[str]) -> tuple[str, Optional[str]]:
    folder: Optional[str] = None
    if filename is None:
        files, folder = _repo_files(hub, repo_id, revision)
        filename = _choose(repo_id, files)
    if filename is not None:
        return str(hub.hf_hub_download(repo_id, filename, revision=revision)), filename
    return folder or str(hub.snapshot_download(repo_id, revision=revision, allow_patterns=FOLDER_PATTERNS)), None


def resolve(repo_id: str, filename: Optional[str] = None, *, revision: Optional[str] = None,
            log: Optional[Callable[[str], None]] = None) -> str:
    """The path of a ready ``.bin`` for ``repo_id`` (and ``filename`` in it; None: the
    repository's one model file, or its Transformers folder), downloading and converting once."""
    source, filename = _download(_hub(), repo_id, filename, revision)
    if filename is not None and _is_rwkv_bin(source):
        return source
    # The snapshot folder's name is the commit: a new revision converts anew.
    snapshot = re.search(r"snapshots[/\\]([^/\\]+)", source)
    commit = snapshot.group(1) if snapshot else str(os.stat(source).st_mtime_ns)
    key = hashlib.sha256(f"{repo_id}\0{commit}\0{filename}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^\w.-]+", "_", f"{repo_id.replace('/', '--')}--{filename or 'model'}")
    out = os.path.join(cache_dir(), "models", f"{stem}-{key}.bin")
    if not os.path.exists(out):
        from .conversion.pipeline import convert

        os.makedirs(os.path.dirname(out), exist_ok=True)
        if log is not None:
            log(f"converting {repo_id}:{filename or '(Transformers folder)'} to {out}")
        convert(source, out, log=log)
    return out
