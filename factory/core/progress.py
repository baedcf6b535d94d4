"""Progress bars for long stages (rich), quiet when output is not a terminal unless FACTORY_PROGRESS=1."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class StageProgress:
    """Counts units, rows and generated tokens; shows a bar with rows and tokens/s."""

    def __init__(self, progress: Progress | None, task: int | None, start_units: int):
        self._progress = progress
        self._task = task
        self.units = start_units
        self.rows = 0
        self.tokens = 0
        self.started = time.perf_counter()

    def advance(self, units: int = 1, rows: int = 0, tokens: int = 0) -> None:
        self.units += units
        self.rows += rows
        self.tokens += tokens
        if self._progress is not None and self._task is not None:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self._progress.update(self._task, advance=units, rows=self.rows,
                                  rate=f"{self.tokens / elapsed:,.0f} tok/s" if self.tokens else "")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def _enabled() -> bool:
    flag = os.environ.get("FACTORY_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "")
    return sys.stderr.isatty()


@contextmanager
def stage_progress(name: str, total_units: int, done_units: int = 0, unit_label: str = "shards") -> Iterator[StageProgress]:
    if not _enabled():
        yield StageProgress(None, None, done_units)
        return
    columns = [TextColumn(f"[bold]{name}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn(unit_label),
               TextColumn("{task.fields[rows]:,} rows"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(name, total=total_units, completed=done_units, rows=0, rate="")
        yield StageProgress(progress, task, done_units)
