"""A plain progress bar on stderr, no dependencies.

    with ProgressBar(24, "sweep") as bar:
        for ...:
            bar.update(ok=n_ok, failed=n_failed)

draws ``sweep [##########----------] 12/24  50%  ok 11  failed 1  0:12 left 0:12`` on one
line, redrawn in place at most ten times a second. It draws only when the stream is a
terminal (``enabled=None``), so logs, pipes and tests stay clean; pass ``enabled=True`` to
force it.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """A one-line bar: ``update()`` after each finished item, ``close()`` at the end."""

    def __init__(self, total: int, label: str = "", *, stream: TextIO | None = None,
                 enabled: bool | None = None, width: int = 30, min_interval: float = 0.1):
        self.total = max(0, int(total))
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.width = width
        self.min_interval = min_interval
        self.done = 0
        self.status: dict[str, int] = {}
        self._start = time.monotonic()
        self._last = 0.0
        self._closed = False

    def update(self, n: int = 1, **status: int) -> None:
        """``n`` more items finished; ``status`` replaces the counters shown after the bar."""
        self.done += n
        self.status.update(status)
        now = time.monotonic()
        if self.done >= self.total or now - self._last >= self.min_interval:
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The bar as text (what is drawn)."""
        now = time.monotonic() if now is None else now
        frac = self.done / self.total if self.total else 1.0
        frac = min(1.0, frac)
        fill = int(round(frac * self.width))
        elapsed = now - self._start
        parts = [f"{self.label} " if self.label else "",
                 f"[{'#' * fill}{'-' * (self.width - fill)}] {self.done}/{self.total} "
                 f"{100 * frac:3.0f}%"]
        for k, v in self.status.items():
            parts.append(f"  {k} {v}")
        parts.append(f"  {_clock(elapsed)}")
        if 0 < self.done < self.total:
            parts.append(f" left {_clock(elapsed / self.done * (self.total - self.done))}")
        return "".join(parts)

    def _draw(self, now: float) -> None:
        self._last = now
        if self.enabled and not self._closed:
            self.stream.write("\r" + self.line(now) + "\033[K")
            self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._closed:
            return
        self._draw(time.monotonic())
        self._closed = True
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "ProgressBar":
        self._draw(time.monotonic())
        return self

    def __exit__(self, *exc) -> None:
        self.close()
