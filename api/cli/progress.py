"""Progress of long CLI commands (rebuild, catch-up, verify, rescore, import), on stderr.

`tracking()` picks how, from the command's `--progress/--no-progress` option:

- default, stderr a terminal: a rich progress bar (bar, percentage, done/total, rate, time
  left), redrawn in place and left on screen when done;
- default, stderr not a terminal (a log file, CI, a pipe): no bar; a plain line every few
  seconds while it runs and one when it ends (`ProgressBar`), so logs stay readable;
- `--progress`: the rich bar even when stderr is not a terminal;
- `--no-progress`: nothing.

Progress never goes to stdout, so `--json` output stays one document.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

BAR_WIDTH = 28


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(
    label: str,
    done: int,
    total: int,
    elapsed: float,
    *,
    width: int = BAR_WIDTH,
    unit: str = "events",
) -> str:
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
    return f"{label} [{bar}] {fraction:4.0%} {done:,}/{total:,} {unit}  {rate:,.0f} {unit}/s  {eta}"


class ProgressBar:
    """The plain reporter: on a terminal one line redrawn in place, at most ten times a
    second; elsewhere a plain line every few seconds (what `tracking()` uses off a terminal).
    """

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        interactive: bool | None = None,
        unit: str = "events",
    ) -> None:
        self.label = label
        self.unit = unit
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
        self._draw(render(self.label, done, total, now - self.started, unit=self.unit))

    def finish(self, done: int, total: int) -> None:
        """Draw the final state and end the line."""
        self._draw(render(self.label, done, total, self.clock() - self.started, unit=self.unit))
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


# --- What the commands use ---


class Tracker:
    """Counts done out of a total, for one phase of a command; the base class shows nothing."""

    def __init__(self, total: int | None = None) -> None:
        self.done = 0
        self.total = total

    def update(self, done: int, total: int | None = None) -> None:
        """`done` so far (and a new total, when the work has grown)."""
        self.done = done
        if total is not None:
            self.total = total
        self._show()

    def advance(self, count: int) -> None:
        """`count` more done."""
        self.update(self.done + count)

    def _show(self) -> None:
        pass

    def close(self) -> None:
        pass


class _PlainTracker(Tracker):
    def __init__(self, bar: ProgressBar, total: int | None) -> None:
        super().__init__(total)
        self.bar = bar

    def _show(self) -> None:
        bar = self.bar
        if bar.clock() - bar.started < bar.interval:
            return  # a short run writes only its final line
        bar.update(self.done, max(self.total or 0, self.done))

    def close(self) -> None:
        if self.done:
            self.bar.finish(self.done, max(self.total or 0, self.done))


class RateColumn(ProgressColumn):
    """`1,234 events/s`, from rich's own speed estimate (a moving window)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.elapsed:  # too few updates for rich's estimate yet
            speed = task.completed / task.elapsed
        rate = "?" if speed is None else f"{speed:,.0f}"
        return Text(f"{rate} {self.unit}/s", style="progress.data.speed")


class _RichTracker(Tracker):
    def __init__(self, progress: Progress, label: str, total: int | None) -> None:
        super().__init__(total)
        self.progress = progress
        self.task = progress.add_task(label, total=total)

    def _show(self) -> None:
        self.progress.update(self.task, completed=self.done, total=self.total)

    def close(self) -> None:
        total = max(self.total or 0, self.done)
        self.progress.update(self.task, completed=self.done, total=total)


def rich_progress(stream: TextIO, unit: str, *, force: bool) -> Progress:
    console = Console(file=stream, force_terminal=True if force else None)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        RateColumn(unit),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=8,
        # stdout is the command's (its report, or its one JSON document): never the bar's
        redirect_stdout=False,
        redirect_stderr=False,
    )


def shows_bar(option: bool | None, stream: TextIO) -> bool:
    """Whether the rich bar is drawn: forced by --progress, else when `stream` is a terminal."""
    if option is not None:
        return option
    return stream.isatty()


@contextmanager
def tracking(
    label: str,
    *,
    option: bool | None,
    total: int | None = None,
    unit: str = "events",
    stream: TextIO | None = None,
) -> Iterator[Tracker]:
    """A tracker for one phase of work, shown as `option` says (the module docstring); the
    final state stays on stderr when the block ends, unless nothing was shown at all."""
    stream = stream if stream is not None else sys.stderr
    tracker: Tracker
    if option is False:
        tracker = Tracker(total)
        yield tracker
        return
    if not shows_bar(option, stream):
        tracker = _PlainTracker(ProgressBar(label, stream, interactive=False, unit=unit), total)
        try:
            yield tracker
        finally:
            tracker.close()
        return
    with rich_progress(stream, unit, force=option is True) as progress:
        tracker = _RichTracker(progress, label, total)
        try:
            yield tracker
        finally:
            tracker.close()
