"""Stage progress: a rich bar on a terminal; in a log file (nohup, Slurm, a pipe) a plain line at least every
FACTORY_PROGRESS_INTERVAL seconds (default 30) per stage — stage, done/total, rows, tokens/s or rows/s, elapsed,
ETA. FACTORY_PROGRESS=bar forces the bar, =log the lines, =0 turns progress off.

Summary lines printed through `console` never wrap in a log file (soft wrap, no width limit off a terminal).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

DEFAULT_INTERVAL_S = 30.0


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# Off a terminal rich would wrap at 80 columns, splitting "… in \n outputs/demo/generate": soft wrap keeps each
# printed line whole.
console = Console(stderr=True, soft_wrap=not _is_terminal())


def mode() -> str:
    """'bar', 'log' or 'off': FACTORY_PROGRESS if set (1/true/bar, log, 0/false/off), else bar on a terminal and
    log lines elsewhere."""
    flag = os.environ.get("FACTORY_PROGRESS")
    if flag is not None:
        flag = flag.strip().lower()
        if flag in ("0", "false", "off", "no", ""):
            return "off"
        return "log" if flag == "log" else "bar"
    return "bar" if _is_terminal() else "log"


def interval_s() -> float:
    try:
        return max(0.05, float(os.environ.get("FACTORY_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class LogTicker:
    """Writes `name: done/total label (pct), rows, rate, elapsed, ETA` to stderr every `interval` seconds from a
    daemon thread (so a long unit still shows the stage is alive), once at the start and once at the end."""

    def __init__(self, name: str, total: int, done: int, label: str, interval: float | None = None,
                 items_total: int | None = None, items_label: str = "prompts"):
        self.name, self.total, self.label = name, total, label
        self.start_done = self.done = done
        self.rows = self.tokens = 0
        self.items_total, self.items_label = items_total, items_label
        self.items = self.live_tokens = 0  # finer than units: e.g. prompts back from the teacher, their tokens
        self.info = ""
        self.interval = interval if interval is not None else interval_s()
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-{name}", daemon=True)

    def line(self, final: bool = False) -> str:
        elapsed = time.perf_counter() - self.started
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        fields = [f"{self.name}: {self.done:,}/{self.total:,} {self.label}{pct}"]
        if self.items_total:
            fields.append(f"{self.items:,}/{self.items_total:,} {self.items_label}")
        if self.rows:
            fields.append(f"{self.rows:,} rows")
        tokens = max(self.tokens, self.live_tokens)
        if self.info:
            fields.append(self.info)
        elif tokens:
            fields.append(f"{tokens / max(elapsed, 1e-9):,.0f} tok/s")
        elif self.rows:
            fields.append(f"{self.rows / max(elapsed, 1e-9):,.1f} rows/s")
        fields.append(f"elapsed {_duration(elapsed)}")
        if final:
            fields.append("done" if self.done >= self.total else "stopped")
        else:
            progressed = self.done - self.start_done
            eta = elapsed / progressed * (self.total - self.done) if progressed > 0 else None
            if self.items_total and self.items and self.done < self.total:  # the finer count, where there is one
                eta = elapsed / self.items * (self.items_total - self.items)
            fields.append(f"ETA {_duration(eta)}" if eta is not None else "ETA unknown")
        return ", ".join(fields)

    def emit(self, final: bool = False) -> None:
        stream = sys.stderr
        stream.write(f"[{time.strftime('%H:%M:%S')}] {self.line(final)}\n")
        stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.emit()

    def __enter__(self) -> LogTicker:
        self.emit()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.emit(final=True)


class StageProgress:
    """Counts units, rows and generated tokens; shows them on a bar (`progress`) or a log ticker (`ticker`)."""

    def __init__(self, progress: Progress | None, task: int | None, start_units: int,
                 ticker: LogTicker | None = None):
        self._progress = progress
        self._task = task
        self._ticker = ticker
        self.units = start_units
        self.rows = 0
        self.tokens = 0
        self.started = time.perf_counter()

    def advance(self, units: int = 1, rows: int = 0, tokens: int = 0) -> None:
        self.units += units
        self.rows += rows
        self.tokens += tokens
        if self._ticker is not None:
            self._ticker.done, self._ticker.rows, self._ticker.tokens = self.units, self.rows, self.tokens
        if self._progress is not None and self._task is not None:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self._progress.update(self._task, advance=units, rows=self.rows,
                                  rate=f"{self.tokens / elapsed:,.0f} tok/s" if self.tokens else "")

    def note(self, items: int = 1, tokens: int = 0) -> None:
        """Progress inside the open units (e.g. a prompt's samples came back before its shard commits): counted on
        the log line and in its tokens/s and ETA; `advance` still counts what is committed."""
        if self._ticker is not None:
            self._ticker.items += items
            self._ticker.live_tokens += tokens

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@contextmanager
def stage_progress(name: str, total_units: int, done_units: int = 0, unit_label: str = "shards",
                   items_total: int | None = None, items_label: str = "prompts") -> Iterator[StageProgress]:
    """Progress of a stage over `total_units` (`done_units` of them committed before); `items_total`: the finer
    count that `StageProgress.note` advances (prompts of this invocation), shown on log lines."""
    shown = mode()
    if shown == "off":
        yield StageProgress(None, None, done_units)
        return
    if shown == "log":
        with LogTicker(name, total_units, done_units, unit_label, items_total=items_total,
                       items_label=items_label) as ticker:
            yield StageProgress(None, None, done_units, ticker)
        return
    columns = [TextColumn(f"[bold]{name}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn(unit_label),
               TextColumn("{task.fields[rows]:,} rows"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(name, total=total_units, completed=done_units, rows=0, rate="")
        yield StageProgress(progress, task, done_units)


class _TickerSteps:
    """The slice of rich's `Progress` a step loop uses (`with`, `update(task, completed=, info=)`), as log lines."""

    def __init__(self, ticker: LogTicker):
        self.ticker = ticker

    def __enter__(self):
        self.ticker.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.ticker.__exit__(*exc)

    def update(self, task: int, completed: int | None = None, info: str | None = None, **_) -> None:
        if completed is not None:
            self.ticker.done = completed
        if info is not None:
            self.ticker.info = info


def step_progress(name: str, enabled: bool, total: int, start: int, label: str = "steps"):
    """(progress, task) for a training-style loop calling `progress.update(task, completed=…, info=…)`: a rich bar
    on a terminal, log lines elsewhere, nothing when not `enabled` or FACTORY_PROGRESS=0."""
    shown = mode() if enabled else "off"
    if shown == "log":
        return _TickerSteps(LogTicker(name, total, start, label)), 0
    progress = Progress(TextColumn(name), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeRemainingColumn(), console=console, disable=shown == "off")
    task = progress.add_task(name, total=total, completed=start, info="")
    return progress, task
