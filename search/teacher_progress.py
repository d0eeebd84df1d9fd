"""What the terminal shows while the teacher trains (53 s on MNIST, minutes on a real task): a bar with the epochs
and the validation accuracy on a terminal, as the trials get, and a line every few seconds in a log."""

from __future__ import annotations

import time
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from experiments.teacher import EpochReport


class TeacherProgress:
    """Hears each epoch of the teacher's training (experiments.teacher.get_teacher's `on_epoch`) and shows it; quiet
    shows nothing. Off a terminal (CI logs, pipes) it prints the first epoch, then one line every `every_s` seconds,
    and the last one."""

    def __init__(
        self,
        *,
        quiet: bool = False,
        console: Console | None = None,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.quiet, self.every_s, self.clock = quiet, every_s, clock
        self.lines: list[str] = []  # what was printed off a terminal
        self._last: float | None = None
        self._bar = Progress(
            TextColumn("teacher"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs · accuracy {task.fields[accuracy]} · loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=quiet or not self.console.is_terminal,
        )
        self._task = None

    def __enter__(self) -> TeacherProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def __call__(self, report: EpochReport) -> None:
        """One finished epoch: the bar moves, or a line is printed when it is due."""
        if self.quiet:
            return
        accuracy, loss = f"{report.accuracy:.2f}%", f"{report.loss:.4f}"
        if self._task is None:
            self._task = self._bar.add_task("teacher", total=report.epochs, accuracy="?", loss="?")
        self._bar.update(self._task, completed=report.epoch, accuracy=accuracy, loss=loss)
        if self.console.is_terminal:
            return
        now = self.clock()
        last = report.epoch == report.epochs
        if self._last is None or now - self._last >= self.every_s or last:
            self._last = now
            line = f"teacher: epoch {report.epoch}/{report.epochs}, validation accuracy {accuracy}, loss {loss}"
            self.lines.append(line)
            self.console.print(line, highlight=False, markup=False)
            self.console.file.flush()  # a log sees the teacher move as it trains, not at exit
