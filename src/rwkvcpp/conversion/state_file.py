"""State files: initial states made by state tuning (RWKV-PEFT, RWKV Runner's "state" models).

A state file is a ``.pth`` (or ``.safetensors``) holding, for every layer N, one tensor
``blocks.N.att.time_state`` of shape (n_head, head_size, head_size) ((n_head, 64, 64) for every
released model): the layer's starting wkv matrices. It holds nothing else: the token-shift parts
of the state start at zero, as for a fresh state. The model's head count and size are its own
(``Model.n_head``, ``Model.head_size``: the engine reads them from the model file).

Orientation. The files store each head's matrix as [value][key], the layout of the training
kernels that learn them (thread i of RWKV-PEFT's state-tuning CUDA kernels owns value channel i and
keeps its row over the key channels). The official ``rwkv`` package therefore loads v5/v6 states
with ``.transpose(1, 2)`` into its [key][value] matrices, and v7 states as they are, since its v7
state is [value][key] already (``S = S*w + S@ab + v k^T``). This package's flat state (docs/FORMAT.md
"State", the same as rwkv.cpp's) uses exactly those two layouts: [head][key][value] for v5/v6,
[head][value][key] for v7. So v5/v6 matrices are transposed on the way in and out, v7 ones are not
(each version's ``state_value_major`` and ``wkv_views`` in :mod:`rwkvcpp.arch`).

Neither the official package nor rwkv.cpp has state files for v4 (its state is three vectors per
layer, not a matrix), so v4 models are refused.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import numpy as np

from .._typing import FloatArray, StrPath
from ..arch import get as get_arch
from ..arch.base import Architecture
from .hf import is_hf_layout, to_native_names
from .load import load_checkpoint
from .pth_write import save_pth, save_safetensors

if TYPE_CHECKING:
    from ..model import Model

__all__ = ["load_state_file", "save_state_file", "STATE_TENSOR"]

#: The name of layer N's tensor in a state file.
STATE_TENSOR = "blocks.{}.att.time_state"
_STATE_NAME = re.compile(r"^blocks\.(\d+)\.att\.time_state$")
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

PathLike = StrPath


def _layout(model: Model, where: str) -> tuple[Architecture, int, int, int, int]:
    """(version, n_layer, n_embed, n_head, head size) of a model whose state has wkv matrices;
    ValueError for one without (v4)."""
    arch = get_arch(model.arch)
    if not arch.head_tensor:
        raise ValueError(f"{where}: state files hold wkv matrices; a {arch.name} model's state has none")
    return arch, int(model.n_layer), int(model.n_embed), int(model.n_head), int(model.head_size)


def load_state_file(path: PathLike, model: Model) -> FloatArray:
    """Reads a state file into a full state for ``model`` (a :class:`rwkvcpp.Model`): a new
    float32 array of ``model.state_len`` holding the file's wkv matrices and a fresh state's
    values everywhere else. Pass it to ``model.eval_sequence(tokens, state)``.

    The file is read without torch and without running code from it. Raises ValueError (naming
    the file) when it is not a state file or does not fit the model: another number of layers,
    another width (heads), a v4 model.
    """
    path = os.fspath(path)
    arch, n_layer, n_embed, n_head, head_size = _layout(model, path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    checkpoint = load_checkpoint(path)
    if is_hf_layout(checkpoint):
        checkpoint = to_native_names(checkpoint)

    names = {}
    for name in checkpoint:
        match = _STATE_NAME.match(name)
        if match:
            names[int(match.group(1))] = name
    if not names:
        sample = ", ".join(repr(n) for n in list(checkpoint)[:3])
        raise ValueError(f"{path}: not a state file: it has no 'blocks.N.att.time_state' tensors "
                         f"(it holds {sample}{', ...' if len(checkpoint) > 3 else ''})")
    layers = sorted(names)
    if len(layers) != n_layer or layers[-1] != n_layer - 1:
        raise ValueError(f"{path}: the state file has time_state for {len(layers)} layers "
                         f"(blocks {layers[0]}..{layers[-1]}); this model has {n_layer} layers")

    # Check every shape and dtype before reading any data.
    wanted = (n_head, head_size, head_size)
    for i in layers:
        shape = tuple(checkpoint.shape_of(names[i]))
        if shape != wanted:
            square = len(shape) == 3 and shape[1] == shape[2]
            file_heads = f" ({shape[0]} heads of {shape[1]}, n_embed {shape[0] * shape[1]})" if square else ""
            raise ValueError(f"{path}: {names[i]} has shape {shape}{file_heads}; this model "
                             f"(n_embed {n_embed}, {n_head} heads of {head_size}) needs {wanted}")
        dtype = checkpoint.dtype_of(names[i])
        if dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{path}: {names[i]} has dtype {dtype}; expected floating point")

    state = np.array(model.init_state(), dtype=np.float32, copy=True)
    for i, view in enumerate(arch.wkv_views(state, n_embed, n_layer, n_head, head_size)):
        values = checkpoint[names[i]]
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{path}: {names[i]} holds NaN or infinite values")
        view[...] = values
    return state


def save_state_file(path: PathLike, state: FloatArray, model: Model) -> None:
    """Writes the wkv matrices of ``state`` (a full state of ``model``) as a state file:
    ``blocks.N.att.time_state`` (n_head, head_size, head_size) float32 tensors in the orientation state-tuning
    tools write. ``.safetensors`` paths get a safetensors file, anything else a ``torch.save``
    zip (``.pth``), written without torch and atomically.

    Only the wkv matrices are saved (that is all the format holds): the token-shift parts of the
    state are dropped, and come back as zeros from :func:`load_state_file`.
    """
    path = os.fspath(path)
    state = np.asarray(state)
    if state.dtype.kind != "f":
        raise ValueError(f"{path}: state must be a float array, not {state.dtype}")
    arch, n_layer, n_embed, n_head, head_size = _layout(model, path)
    expected = n_layer * arch.layer_state_len(n_embed, n_head, head_size)
    if state.ndim != 1 or state.shape[0] != expected:
        raise ValueError(f"{path}: state has shape {state.shape}; this {model.arch} model's state is ({expected},)")
    tensors = {
        STATE_TENSOR.format(i): np.ascontiguousarray(view, dtype=np.float32)
        for i, view in enumerate(arch.wkv_views(state, n_embed, n_layer, n_head, head_size))
    }
    if path.lower().endswith(".safetensors"):
        save_safetensors(path, tensors)
    else:
        save_pth(path, tensors)
