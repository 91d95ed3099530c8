"""A progress bar for long CLI commands (rebuild, catch-up), written to stderr.

On a terminal it redraws one line in place, at most ten times a second. Elsewhere (a log
file, CI) it writes a plain line every few seconds instead, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 28


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(label: str, done: int, total: int, elapsed: float, *, width: int = BAR_WIDTH) -> str:
    """One line: label, bar, percentage, counts, events/s and the time left."""
    total = max(total, done)
    fraction = done / total if total else 1.0
    filled = int(fraction * width)
    bar = "#" * filled + "." * (width - filled)
    rate = done / elapsed if elapsed > 0 else 0.0
    if done >= total:
        eta = "done"
    elif rate > 0:
        eta = "ETA " + format_duration((total - done) / rate)
    else:
        eta = "ETA ?"
    return f"{label} [{bar}] {fraction:4.0%} {done:,}/{total:,} events  {rate:,.0f} events/s  {eta}"


class ProgressBar:
    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        interactive: bool | None = None,
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.interval = 0.1 if self.interactive else 5.0
        self.started = clock()
        self._last_drawn: float | None = None
        self._last_line = ""

    def update(self, done: int, total: int) -> None:
        now = self.clock()
        if self._last_drawn is not None and now - self._last_drawn < self.interval:
            return
        self._last_drawn = now
        self._draw(render(self.label, done, total, now - self.started))

    def finish(self, done: int, total: int) -> None:
        """Draw the final state and end the line."""
        self._draw(render(self.label, done, total, self.clock() - self.started))
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, line: str) -> None:
        if self.interactive:
            padding = " " * max(0, len(self._last_line) - len(line))
            self.stream.write("\r" + line + padding)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = line
