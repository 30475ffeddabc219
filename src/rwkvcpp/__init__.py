"""rwkvcpp: run RWKV language models fast on CPUs.

The native engine (``rwkvcpp._core``) is imported lazily so that the pure-Python
parts (writer, tokenizers, converters) work and import quickly on their own.
"""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy imports below give, for type checkers and editors
    from .batch import BatchGenerator as BatchGenerator
    from .conversion.pipeline import convert as convert
    from .generate import Generation as Generation
    from .generate import Generator as Generator
    from .model import Model as Model
    from .model import RWKVError as RWKVError
    from .model import system_info as system_info
    from .quantization import quantize as quantize
    from .sampling import SamplingParams as SamplingParams
    from .state import StateFileError as StateFileError
    from .tokenizer import Tokenizer as Tokenizer

_LAZY = {
    "Model": ("rwkvcpp.model", "Model"),
    "RWKVError": ("rwkvcpp.model", "RWKVError"),
    "StateFileError": ("rwkvcpp.state", "StateFileError"),
    "system_info": ("rwkvcpp.model", "system_info"),
    "quantize": ("rwkvcpp.quantization", "quantize"),
    "convert": ("rwkvcpp.conversion.pipeline", "convert"),
    "Generator": ("rwkvcpp.generate", "Generator"),
    "Generation": ("rwkvcpp.generate", "Generation"),
    "BatchGenerator": ("rwkvcpp.batch", "BatchGenerator"),
    "Tokenizer": ("rwkvcpp.tokenizer", "Tokenizer"),
    "SamplingParams": ("rwkvcpp.sampling", "SamplingParams"),
    "librwkv_path": ("rwkvcpp.c_api", "librwkv_path"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rwkvcpp' has no attribute {name!r}")


__all__ = list(_LAZY)
