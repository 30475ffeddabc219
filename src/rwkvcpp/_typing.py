"""The type aliases of the package's annotations, for users' own annotations too."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Union

import numpy as np
from numpy.typing import NDArray

__all__ = ["StrPath", "FloatArray", "TokenArray", "Array", "Checkpoint", "JSONObject"]

#: A file name: text or a path object.
StrPath = Union[str, "os.PathLike[str]"]
#: States, logits and embeddings: float32 numpy arrays.
FloatArray = NDArray[np.float32]
#: Token ids as the engine reads them.
TokenArray = NDArray[np.int32]
#: A tensor of any element type (checkpoints hold float16, bfloat16 as uint16, float32...).
Array = NDArray[Any]
#: A checkpoint: tensor names to tensors, which are numpy arrays, torch tensors or the lazy tensors
#: of :mod:`rwkvcpp.conversion.lazy` depending on the reader (hence ``Any``).
Checkpoint = Mapping[str, Any]
#: A JSON object: OpenAI-shaped requests and responses (messages, completions, chunks).
JSONObject = dict[str, Any]
