"""Progress of `harness report` and `harness compare` (issue 21): over thousands of cells they
take seconds, so their stages are shown as a rich bar on stderr, as `harness run` shows its
cells. Nothing is shown when stderr is not a terminal (a pipe, CI logs) or with --quiet, so
the documents and stdout are the same either way."""
from __future__ import annotations

import sys
from typing import Optional


class Stages:
    """A bar over named stages; `stage(name)` finishes the current one and starts the next."""

    def __init__(self, total: int, quiet: bool = False, stream=None):
        self.total = total
        stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet and hasattr(stream, "isatty") and stream.isatty()
        self._bar = None
        self._task = None
        self._started = False
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(file=stream), transient=True)
            self._task = self._bar.add_task("starting", total=total)

    def __enter__(self) -> "Stages":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def stage(self, description: str) -> None:
        if self._bar is None:
            return
        if self._started:
            self._bar.advance(self._task)
        self._started = True
        self._bar.update(self._task, description=description)


def stage(progress: Optional[Stages], description: str) -> None:
    """progress.stage(description), where progress may be None (library callers, tests)."""
    if progress is not None:
        progress.stage(description)
