"""A one-line progress bar on stderr (no dependency): case count, elapsed time, ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``step(label)`` before each item; ``close()`` at the end.

    On a terminal the bar redraws in place; otherwise (a log file, CI) one line per item.
    """

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 24) -> None:
        self.total = total
        self.stream = stream
        self.width = width
        self.done = -1
        self.start = time.perf_counter()
        self.tty = stream.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        self._draw(label)

    def _draw(self, label: str) -> None:
        elapsed = time.perf_counter() - self.start
        filled = self.width * self.done // max(1, self.total)
        bar = "#" * filled + "." * (self.width - filled)
        eta = f" eta {elapsed / self.done * (self.total - self.done):4.0f}s" if self.done else ""
        line = f"[{bar}] {self.done}/{self.total} {elapsed:4.0f}s{eta}  {label}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.done = self.total - 1
        self.step("done")
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()
