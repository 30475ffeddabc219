"""atheris target for the Python readers of untrusted files (tools/fuzz/run.py runs it).

Each input is written to a file and read the ways the package reads files it is given: the
``.bin`` record reader (rwkvcpp.format), the checkpoint readers (torch pickles and zips,
safetensors) with every tensor's data read, and the GGUF reader. A refusal is a ValueError or an
OSError (CheckpointError and GGUFError are ValueErrors); any other exception is a finding, and so
is a crash or a timeout.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

from rwkvcpp import format as fmt
from rwkvcpp.conversion.gguf_file import GGUFFile
from rwkvcpp.conversion.load import load_checkpoint

REFUSALS = (ValueError, OSError)
_FOLDER = tempfile.mkdtemp(prefix="rwkvcpp-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
_PATH = os.path.join(_FOLDER, "input")


def _read_bin() -> None:
    fmt.load_records(_PATH)


def _read_checkpoint() -> None:
    checkpoint = load_checkpoint(_PATH)
    for name in checkpoint:
        checkpoint[name]


def _read_gguf() -> None:
    with GGUFFile(_PATH) as gguf:
        for tensor in gguf.tensors.values():
            gguf.data(tensor)


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    for read in (_read_bin, _read_checkpoint, _read_gguf):
        try:
            read()
        except REFUSALS:
            pass


def main() -> None:
    # Every function loaded by now, the readers among them (an import hook would miss the
    # editable install's modules).
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
