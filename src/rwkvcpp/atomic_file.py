"""Writing output files so that the destination is either left as it was or replaced whole, and
nothing else is left behind: the rules of the engine's own writer (csrc/output.c), for the files
Python writes (models, GGUF, checkpoints, saved states).

* The destination must be a regular file or not exist yet: a directory, device, FIFO or socket is
  refused, and so is a read-only file (even for root, who could replace it) and a file with
  several hard links (replacing it would leave the other names with the old content).
* A symbolic link is written through: the new file replaces its target, beside the target, and the
  link keeps pointing at it. A link whose target cannot be reached is refused.
* On Linux the data goes into an unnamed file (``O_TMPFILE``) that gets a name only once it is
  complete and synced, so even SIGKILL leaves nothing behind; elsewhere, or where the file system
  refuses ``O_TMPFILE``, into ``DST.tmp-XXXXXXXX`` beside the destination, removed on every error
  (and on SIGTERM in the command line, which turns it into an exception).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import BinaryIO, Callable

from ._typing import StrPath

__all__ = ["AtomicFile", "check_destination", "write_atomically"]

_NAME_ATTEMPTS = 100
_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000  # Linux's values, for linkat through ctypes


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def _resolve(name: str) -> str:
    """The file a new output replaces: ``name``, or a symbolic link's target."""
    if not os.path.islink(name):
        return name
    target = os.path.realpath(name)
    if not os.path.exists(target):
        raise FileNotFoundError(f"{name}: a symbolic link whose target cannot be reached; not writing through it: "
                                "remove the link or give another path")
    return target


def check_destination(name: str, target: str | None = None) -> os.stat_result | None:
    """Raises OSError naming ``name`` unless its target can be replaced; its stat, or None when
    there is no such file yet."""
    try:
        st = os.stat(target or name)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        error = IsADirectoryError if stat.S_ISDIR(st.st_mode) else OSError
        raise error(f"{name}: the destination is a {_kind(st.st_mode)}, not a regular file; give a file path")
    if not st.st_mode & 0o222 or not os.access(target or name, os.W_OK):
        raise PermissionError(f"{name}: the destination is read-only (mode {stat.S_IMODE(st.st_mode):04o}); "
                              "make it writable or remove it first")
    if st.st_nlink > 1:
        raise OSError(f"{name}: the destination has {st.st_nlink} hard links; replacing it would leave the other "
                      "names with the old file: remove it first or give another path")
    return st


def _temp_name(target: str) -> str:
    return f"{target}.tmp-{secrets.token_hex(4)}"


def _link_fd(fd: int, name: str) -> None:
    """Gives an unnamed file a name: through /proc, or (where a sandbox refuses that) through the
    descriptor itself, which needs CAP_DAC_READ_SEARCH."""
    try:
        os.link(f"/proc/self/fd/{fd}", name, follow_symlinks=True)
        return
    except FileExistsError:
        raise
    except OSError as error:
        first = error
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(name), _AT_EMPTY_PATH) != 0:
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), name)
        raise first


def _name_fd(fd: int, target: str) -> str:
    """Links ``fd`` beside ``target`` under a fresh temporary name, and returns the name."""
    for _ in range(_NAME_ATTEMPTS):
        temp = _temp_name(target)
        try:
            _link_fd(fd, temp)
            return temp
        except FileExistsError:
            continue
    raise FileExistsError(f"{target}: no free temporary name beside it")


def _open_unnamed(directory: str, target: str) -> int | None:
    """An O_TMPFILE file descriptor in ``directory``, or None where there is none to be had or it
    could not be named afterwards (an empty one is tried first, named for a moment)."""
    if not hasattr(os, "O_TMPFILE"):
        return None
    try:
        probe = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666)
    except OSError:
        return None
    try:
        os.unlink(_name_fd(probe, target))
    except OSError:
        return None
    finally:
        os.close(probe)
    return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666)


def _open_named(target: str) -> tuple[int, str]:
    for _ in range(_NAME_ATTEMPTS):
        temp = _temp_name(target)
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"{target}: no free temporary name beside it")


class AtomicFile:
    """``file``: a binary file to write; ``commit()`` puts it in place of the destination,
    ``abort()`` discards it. As a context manager: committed when the block ends normally,
    aborted on an exception."""

    def __init__(self, path: StrPath):
        self.name = os.fspath(path)
        self.target = _resolve(self.name)
        existing = check_destination(self.name, self.target)
        directory = os.path.dirname(self.target) or "."
        self._temp: str | None = None
        fd = _open_unnamed(directory, self.target)
        if fd is None:
            try:
                fd, self._temp = _open_named(self.target)
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.name}: the destination directory {directory} does not exist") from None
        if existing is not None:
            os.fchmod(fd, stat.S_IMODE(existing.st_mode) & 0o777)  # a replaced file keeps its permissions
        self.file: BinaryIO | None = os.fdopen(fd, "wb")

    def __enter__(self) -> BinaryIO:
        return self._open_file()

    def _open_file(self) -> BinaryIO:
        if self.file is None:
            raise ValueError(f"{self.name}: the file is already committed or discarded")
        return self.file

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        """Syncs the file and moves it over the destination; on any failure removes it and raises."""
        file = self._open_file()
        try:
            file.flush()
            os.fsync(file.fileno())
            check_destination(self.name, self.target)  # it may have changed while the file was written
            if self._temp is None:
                self._temp = _name_fd(file.fileno(), self.target)
            os.replace(self._temp, self.target)
            self._temp = None
        except BaseException:
            self.abort()
            raise
        self._sync_directory()
        file.close()
        self.file = None

    def _sync_directory(self) -> None:
        try:
            fd = os.open(os.path.dirname(self.target) or ".", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass  # the file is in place; only its durability across a crash is less sure
        finally:
            os.close(fd)

    def abort(self) -> None:
        """Discards the file; the destination is left as it was. Never raises for the file's own
        failures (a full disk shows again when its buffer is closed): the cleanup goes first."""
        file, self.file = self.file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass
        if self._temp is not None:
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass
            self._temp = None


def write_atomically(path: StrPath, write: Callable[[BinaryIO], None]) -> None:
    """Runs ``write(file)`` and puts the result in place of ``path`` (see the module's rules)."""
    with AtomicFile(path) as file:
        write(file)
