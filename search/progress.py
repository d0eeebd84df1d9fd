"""What the terminal shows while a sweep runs: trials done / failed / running, the front's size, an ETA."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from search.optuna_store import trial_by_number
from search.study import read


class SweepProgress:
    """A progress bar on a terminal, one line per finished trial everywhere (CI logs included)."""

    def __init__(
        self, budget: float, *, quiet: bool = False, console: Console | None = None, unit: str = "trainings"
    ) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        # The budget in its unit (search/budget.py): trainings (a plan stopped at a rung counts its share), epochs
        # or seconds; `done` is what the finished trials cost of it.
        self.quiet, self.budget, self.unit = quiet, budget, unit
        self._start, self._done_at_start = time.monotonic(), None
        self._done = 0
        self.failed = self.running = self.front = 0
        self._bar = Progress(
            TextColumn(unit),
            BarColumn(),
            TextColumn("{task.completed:.4g}/{task.total:g}"),
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
        seconds = (time.monotonic() - self._start) / ran * max(0.0, self.budget - self._done)
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"

    def update(self, *, done: float, failed: int, running: int, front: int) -> None:
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
        made_by: int | None = None,
        stopped: Any = None,
    ) -> None:
        """One line for a finished trial (or a model a trial made on its way)."""
        if self.quiet:
            return
        counts = (
            f"[{self._done:.4g}/{self.budget:g} {self.unit} spent, {self.failed} failed, {self.running} running, "
            f"front {self.front}, ETA {self.eta()}]"
        )
        if made_by is not None:
            line = (
                f"trial {number:>3} made on trial {made_by}'s way (measured, not trained; no trial of the budget): "
                f"{describe}: accuracy {metrics['accuracy']:.2f}% (drop {metrics['accuracy_drop']:+.2f} pt), "
                f"p50 {metrics['latency_p50_ms']:.4f} ms, {metrics['size_mb']:.3f} MB"
            )
        elif stopped is not None and stopped.stopped_at_rung is not None:
            again = f", as trial {reused_from} was" if reused_from is not None else ""
            line = (
                f"trial {number:>3} stopped after {stopped.epochs_used} of {stopped.epochs_planned} epochs (rung "
                f"{stopped.stopped_at_rung}{again}; costs only those): {describe}: "
                f"{metrics.get('accuracy_so_far', float('nan')):.2f}% so far; {stopped.stop_reason or ''}"
            )
        elif dominated_by is not None:
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


# While its trials run, the driver refreshes the progress line this often (other drivers' trials): every second,
# the reads took CPU from the trial training beside it.
IDLE_REFRESH_S = 5.0


class ProgressListener:
    """Listener of the driver's loop (search/loop.py): the counts from its ledger, one line per trial told."""

    def __init__(self, progress: SweepProgress) -> None:
        self.progress = progress
        self.refreshed = 0.0  # time.monotonic() of the last refresh
        self.made: list[int] = []  # models made on a trial's way, shown right after that trial's own line

    def refresh(self, loop: Any) -> None:
        self.refreshed = time.monotonic()
        ledger = loop.ledger
        front = len(ledger.front) if ledger.spent else 0
        running = sum(not f.running.queued for f in loop.flights.values())  # not one queued behind them
        self.progress.update(done=ledger.cost, failed=ledger.failed, running=running, front=front)

    def tick(self, loop: Any, asked: bool) -> None:
        if asked or time.monotonic() - self.refreshed >= IDLE_REFRESH_S:
            self.refresh(loop)

    def trial_reused(self, loop: Any, number: int, rec: Any) -> None:
        self.refresh(loop)
        self.progress.trial_done(
            number,
            rec.describe,
            rec.metrics,
            None,
            skipped=rec.skipped_training,
            reused_from=rec.reuse_of,
            dominated_by=rec.dominated_by,
            stopped=rec.info,
        )

    def trial_told(self, loop: Any, told: Any) -> None:
        self.refresh(loop)
        if told.taken_over and not told.result.error:
            return  # another driver's copy is the one that counts, and it says so
        info = told.result.info
        self.progress.trial_done(
            told.number,
            told.describe,
            told.metrics,
            told.result.error,
            skipped=bool(info.get("skipped_training")),
            dominated_by=info.get("dominated_by"),
            stopped=info if info.stopped_at_rung is not None else None,
        )
        made, self.made = self.made, []
        for number in made:  # the log names these trials later (the front, the pick): each gets its line
            rec = read(trial_by_number(loop.study, number))
            self.progress.trial_done(number, rec.describe, rec.metrics, None, made_by=rec.made_by)

    def made_on_the_way(self, loop: Any, number: int) -> None:
        self.made.append(number)

    def caught_up(self, loop: Any) -> None:
        """The loop records models made on the way after the next plans start: their lines come here."""
        made, self.made = self.made, []
        for number in made:
            rec = read(trial_by_number(loop.study, number))
            self.progress.trial_done(number, rec.describe, rec.metrics, None, made_by=rec.made_by)
