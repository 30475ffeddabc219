"""A job's records in and out: inputs cut into shards, outputs written one whole shard at a time.

Inputs: a JSONL file (one JSON object per line, the text in a named field), a Parquet file (the
text in a named column; needs pyarrow), or a folder of ``.txt`` files (each file one record,
searched recursively, in sorted order). Records are numbered from 0 in input order; shard ``k``
holds records ``k * shard_size`` to ``(k + 1) * shard_size - 1``, so the same input and shard
size give the same shards on every run and every machine.

Planning reads the whole input once: a JSONL file is checked line by line (every line a JSON
object with the field, a string or null), which is also where each shard's byte offset is found;
a worker then reads only its shard. A record whose text cannot be used (null, an undecodable
file) is not an error of the job: it gets an ``error`` in the output and the others go on.

Outputs: ``part-00000.jsonl`` (or ``.parquet``) per shard in the output folder, each put in
place whole (:mod:`rwkvcpp.atomic_file`); a file with the final name is a finished shard.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

from ..atomic_file import write_atomically

__all__ = ["Shard", "Record", "open_input", "Output", "OUTPUT_FORMATS", "require_pyarrow",
           "write_bytes_atomically"]

OUTPUT_FORMATS = ("jsonl", "parquet")


class Record(NamedTuple):
    """One input record: its number in the input, its text (None when it has none to use, with
    ``error`` saying why), and the fields copied to the output (``--keep``; a folder's ``file``)."""

    index: int
    text: Optional[str]
    fields: dict
    error: Optional[str] = None


@dataclass(frozen=True)
class Shard:
    """Where one shard's records are: ``count`` records from number ``first``; for JSONL the
    byte offset and line number of its first record's line, for Parquet its first row, for a
    folder its files."""

    number: int
    first: int
    count: int
    offset: int = 0
    line: int = 0
    files: tuple = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Shard:
        values = json.loads(text)
        values["files"] = tuple(values["files"])
        return cls(**values)


def require_pyarrow(what: str):
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{what} needs pyarrow: pip install pyarrow") from None
    return pq


def open_input(path, field: str = "text", keep=()) -> "Input":
    """The input at ``path``: a folder (of .txt files), a .parquet file, or JSONL (any other
    file: .jsonl, .json, .ndjson, ...)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        if keep:
            raise ValueError(f"--keep {keep[0]}: the records of a folder have no fields to keep (each output record "
                             "names its file in 'file')")
        return FolderInput(path, field, ())
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.endswith(".parquet"):
        return ParquetInput(path, field, tuple(keep))
    return JsonlInput(path, field, tuple(keep))


class Input:
    kind = ""

    def __init__(self, path: str, field: str, keep: tuple):
        self.path = path
        self.field = field
        self.keep = keep

    def plan(self, shard_size: int) -> list[Shard]:
        """The shards, after checking the whole input; ValueError naming the first bad place."""
        raise NotImplementedError

    def read(self, shard: Shard) -> list[Record]:
        raise NotImplementedError

    @property
    def output_fields(self) -> tuple:
        """The names each output record copies from its input record."""
        return self.keep


class JsonlInput(Input):
    kind = "jsonl"

    def plan(self, shard_size: int) -> list[Shard]:
        starts = []  # (offset, line number) of each shard's first record
        count = 0
        offset = 0
        with open(self.path, "rb") as f:
            for line_number, line in enumerate(f, 1):
                if line.strip():
                    self._parse(line, line_number)
                    if count % shard_size == 0:
                        starts.append((offset, line_number))
                    count += 1
                offset += len(line)
        return [Shard(n, n * shard_size, min(shard_size, count - n * shard_size), offset, line)
                for n, (offset, line) in enumerate(starts)]

    def read(self, shard: Shard) -> list[Record]:
        records = []
        with open(self.path, "rb") as f:
            f.seek(shard.offset)
            line_number = shard.line
            for line in f:
                if len(records) == shard.count:
                    break
                if line.strip():
                    obj = self._parse(line, line_number)
                    text = obj[self.field]
                    error = None if text is not None else f"'{self.field}' is null"
                    records.append(Record(shard.first + len(records), text, {k: obj.get(k) for k in self.keep}, error))
                line_number += 1
        if len(records) != shard.count:
            raise ValueError(f"{self.path} has changed since the job was planned: shard {shard.number} should hold "
                             f"{shard.count} records from line {shard.line}, found {len(records)}")
        return records

    def _parse(self, line: bytes, line_number: int) -> dict:
        where = f"{self.path} line {line_number}"
        try:
            obj = json.loads(line)
        except UnicodeDecodeError:
            raise ValueError(f"{where}: not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: a JSON object is needed, not {type(obj).__name__}")
        if self.field not in obj:
            fields = ", ".join(list(obj)[:10]) or "none"
            raise ValueError(f"{where}: no field '{self.field}' (its fields: {fields}; choose one with --field)")
        text = obj[self.field]
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{where}: '{self.field}' must be a string, not {type(text).__name__}")
        return obj


class ParquetInput(Input):
    kind = "parquet"

    def plan(self, shard_size: int) -> list[Shard]:
        pq = require_pyarrow("Parquet input")
        import pyarrow as pa

        try:
            schema = pq.read_schema(self.path)
            rows = pq.ParquetFile(self.path).metadata.num_rows
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{self.path}: not a readable Parquet file ({e})") from None
        for name in (self.field, *self.keep):
            if name not in schema.names:
                flag = "--field" if name == self.field else "--keep"
                raise ValueError(f"{self.path}: no column '{name}' ({flag}; its columns: {', '.join(schema.names)})")
        kind = schema.field(self.field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ValueError(f"{self.path}: column '{self.field}' holds {kind}, not strings")
        return [Shard(n, first, min(shard_size, rows - first), offset=first)
                for n, first in enumerate(range(0, rows, shard_size))]

    def read(self, shard: Shard) -> list[Record]:
        pq = require_pyarrow("Parquet input")
        columns = [self.field, *[k for k in self.keep if k != self.field]]
        parquet = pq.ParquetFile(self.path)
        # Only the row groups that hold the shard's rows.
        groups, group_first, first_row = [], 0, None
        for g in range(parquet.metadata.num_row_groups):
            rows = parquet.metadata.row_group(g).num_rows
            if group_first + rows > shard.offset and group_first < shard.offset + shard.count:
                groups.append(g)
                first_row = group_first if first_row is None else first_row
            group_first += rows
        table = parquet.read_row_groups(groups, columns=columns)
        table = table.slice(shard.offset - (first_row or 0), shard.count)
        if table.num_rows != shard.count:
            raise ValueError(f"{self.path} has changed since the job was planned: shard {shard.number} should hold "
                             f"{shard.count} rows from row {shard.offset}")
        values = table.to_pydict()
        return [Record(shard.first + i, text, {k: json_value(values[k][i]) for k in self.keep},
                       None if text is not None else f"'{self.field}' is null")
                for i, text in enumerate(values[self.field])]


class FolderInput(Input):
    kind = "folder"

    def plan(self, shard_size: int) -> list[Shard]:
        root = Path(self.path)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.txt") if p.is_file())
        return [Shard(n, first, len(files[first:first + shard_size]), files=tuple(files[first:first + shard_size]))
                for n, first in enumerate(range(0, len(files), shard_size))]

    def read(self, shard: Shard) -> list[Record]:
        records = []
        for i, name in enumerate(shard.files):
            text, error = None, None
            try:
                text = Path(self.path, name).read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                error = f"not UTF-8 text ({e.reason} at byte {e.start})"
            except OSError as e:
                error = f"cannot be read ({e.strerror or e})"
            records.append(Record(shard.first + i, text, {"file": name}, error))
        return records

    @property
    def output_fields(self) -> tuple:
        return ("file",)


class Output:
    """The output folder: one file per finished shard, ``part-NNNNN.<format>``."""

    def __init__(self, folder, format: str = "jsonl"):
        if format not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, not {format!r}")
        self.folder = os.path.abspath(os.fspath(folder))
        self.format = format

    def shard_path(self, number: int) -> str:
        return os.path.join(self.folder, f"part-{number:05d}.{self.format}")

    def finished(self, number: int) -> bool:
        return os.path.isfile(self.shard_path(number))

    def remove_temporary(self) -> None:
        """Removes what killed writers left where files cannot be written unnamed (one run
        writes an output folder at a time)."""
        for name in os.listdir(self.folder):
            if re.fullmatch(r"(part-\d+\.\w+|job\.json)\.tmp-[0-9a-f]{8}", name):
                os.remove(os.path.join(self.folder, name))

    def write(self, number: int, rows: list[dict]) -> str:
        """Writes the shard under a temporary name, then renames it into place."""
        if self.format == "jsonl":
            data = b"".join(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n" for row in rows)
        else:
            data = _parquet_bytes(rows)
        return write_bytes_atomically(self.shard_path(number), data)

    def read(self, number: int) -> list[dict]:
        """A finished shard's records."""
        path = self.shard_path(number)
        if self.format == "jsonl":
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f]
        return require_pyarrow("Parquet output").read_table(path).to_pylist()


def write_bytes_atomically(path: str, data: bytes) -> str:
    """Puts ``data`` in place of ``path`` whole or not at all (:mod:`rwkvcpp.atomic_file`: an
    unnamed file linked in when complete on Linux, else a temporary name beside it): readers,
    and a rerun, see the whole file or none."""
    write_atomically(path, lambda f: f.write(data))
    return path


def _parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa

    pq = require_pyarrow("Parquet output")
    table = pa.Table.from_pylist(rows)
    if "embedding" in table.column_names:  # float32, as computed
        at = table.column_names.index("embedding")
        table = table.set_column(at, "embedding", table["embedding"].cast(pa.list_(pa.float32())))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def json_value(value: Any) -> Any:
    """A kept field's value as JSON can hold it (Parquet columns may hold dates, bytes...)."""
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return str(value)
