"""The progress bar of the long-running commands (quantize, convert, perplexity, bench)."""

from __future__ import annotations

import sys


class Progress:
    """A progress bar on stderr: tqdm when installed, else one self-rewriting line. When stderr is
    not a terminal (a log file), a plain line at every tenth instead. Silent if not ``enabled``."""

    def __init__(self, total: int, unit: str, desc: str, enabled: bool = True):
        self.total = total
        self.unit = unit
        self.desc = desc
        self.n = 0
        self._on = enabled and _isatty(sys.stderr)
        self._log = enabled and not self._on
        self._next_tenth = 1
        self._bar = None
        self._width = 0
        if self._on:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=False, unit_scale=True)

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total

    def update(self, n: int, postfix: str = "") -> None:
        self.n += n
        if self._log and self.total and self.n * 10 >= self._next_tenth * self.total:
            self._next_tenth = self.n * 10 // self.total + 1
            print(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n // self.total}%)", file=sys.stderr,
                  flush=True)
        if not self._on:
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
            return
        line = f"\r{self.desc}: {self.n}/{self.total} {self.unit}s  {postfix}"
        sys.stderr.write(line.ljust(self._width))
        self._width = max(self._width, len(line))
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def step_callback(progress_factory):
    """Adapts Progress to the ``progress(done, total, name)`` callbacks of quantize() and convert():
    the bar is made on the first call (when the total is known) and follows ``done``; the total may
    grow (convert --quantize runs two passes)."""
    state = {}

    def callback(done: int, total: int, name: str = "") -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = progress_factory(total)
        if total != bar.total:
            bar.set_total(total)
        bar.update(done - bar.n, postfix=name)

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    callback.close = close
    return callback
