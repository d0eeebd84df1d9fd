"""What the terminal shows while a sweep runs: trials done / failed / running, the front's size, an ETA."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class SweepProgress:
    """A progress bar on a terminal, one line per finished trial everywhere (CI logs included)."""

    def __init__(self, budget: int, *, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.quiet, self.budget = quiet, budget
        self._start, self._done_at_start = time.monotonic(), None
        self._done = 0
        self.failed = self.running = self.front = 0
        self._bar = Progress(
            TextColumn("trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "failed {task.fields[failed]} · running {task.fields[running]} · front {task.fields[front]} "
                "· ETA {task.fields[eta]}"
            ),
            TimeElapsedColumn(),
            console=self.console,
            disable=quiet or not self.console.is_terminal,
        )
        self._task = self._bar.add_task("sweep", total=budget, failed=0, running=0, front=0, eta="?")

    def __enter__(self) -> "SweepProgress":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def eta(self) -> str:
        """Remaining time at this run's pace so far."""
        ran = self._done - (self._done_at_start or 0)
        if ran <= 0:
            return "?"
        seconds = (time.monotonic() - self._start) / ran * (self.budget - self._done)
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"

    def update(self, *, done: int, failed: int, running: int, front: int) -> None:
        """Refresh the counts."""
        if self._done_at_start is None:
            self._done_at_start = done
        self._done = done
        self.failed, self.running, self.front = failed, running, front
        self._bar.update(self._task, completed=done, failed=failed, running=running, front=front, eta=self.eta())

    def trial_done(
        self,
        number: int,
        describe: str,
        metrics: dict[str, float],
        error: str | None,
        skipped: bool = False,
        reused_from: int | None = None,
        dominated_by: int | None = None,
    ) -> None:
        """One line for a finished trial."""
        if self.quiet:
            return
        counts = (
            f"[{self._done}/{self.budget} done, {self.failed} failed, {self.running} running, "
            f"front {self.front}, ETA {self.eta()}]"
        )
        if dominated_by is not None:
            line = (
                f"trial {number:>3} not trained, slower and larger than trial {dominated_by} (off the front, costs "
                f"no trial): {describe}: p50 {metrics['latency_p50_ms']:.4f} ms, {metrics['size_mb']:.3f} MB"
            )
        elif reused_from is not None:
            line = (
                f"trial {number:>3} reused trial {reused_from}'s result (the same plan, not run again): {describe}: "
                f"p50 {metrics['latency_p50_ms']:.4f} ms"
            )
        elif error:
            line = f"trial {number:>3} failed {describe}: {error.splitlines()[0][:160]}"
        elif skipped:
            line = (
                f"trial {number:>3} over the latency budget untrained, not trained: {describe}: "
                f"p50 {metrics['latency_p50_ms']:.4f} ms"
            )
        else:
            line = (
                f"trial {number:>3} done   {describe}: accuracy {metrics['accuracy']:.2f}% "
                f"(drop {metrics['accuracy_drop']:+.2f} pt), p50 {metrics['latency_p50_ms']:.4f} ms, "
                f"{metrics['size_mb']:.3f} MB"
            )
        self.console.print(f"{line} {counts}", highlight=False, markup=False)
        self.console.file.flush()  # a pipe (a log, a supervisor) sees each trial as it ends, not at exit
