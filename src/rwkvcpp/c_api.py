"""librwkv: rwkv.cpp's C API over this package's engine, a shared library inside the package.

Programs and bindings written for rwkv.cpp load it in place of rwkv.cpp's own library, for example
rwkv.cpp's Python wrapper: ``RWKVSharedLibrary(rwkvcpp.librwkv_path())``. Its header is
``include/rwkv.h`` beside it. (This module is not called ``librwkv``: Python would take the
library ``librwkv.so`` in the same folder for an extension module of that name.)
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The file names rwkv.cpp gives its library on each system.
LIBRARY_NAME = {"win32": "rwkv.dll", "cygwin": "rwkv.dll", "darwin": "librwkv.dylib"}.get(sys.platform, "librwkv.so")


def librwkv_path() -> str:
    """The path of librwkv (``librwkv.so``, ``librwkv.dylib`` or ``rwkv.dll``) in this installation."""
    from . import _core  # librwkv is installed beside the extension module

    folder = Path(_core.__file__).parent
    path = folder / LIBRARY_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{LIBRARY_NAME} is not in {folder}: this rwkvcpp was built without librwkv "
                                "(CMake option RWKV_BUILD_LIBRWKV=OFF)")
    return str(path)
