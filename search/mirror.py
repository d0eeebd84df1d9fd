"""The MLflow mirror: the one path that writes MLflow while the loop runs, as a listener of its events. Optuna's
study is the state of record; each finished trial is copied to its nested MLflow run off the trials' path, and a
copy that fails leaves the study marked for `slimsweep sync`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import Experiment
from search.study import TrialRecord, finished, owner, read, set_needs_sync
from search.telling import trial_path
from search.tracking import Tracker

if TYPE_CHECKING:
    from search.loop import Loop, SweepSummary, Told

log = logging.getLogger("slimsweep.sweep")


def sync_tracking(exp: Experiment, study: optuna.Study, tracker: Tracker, live: set[str]) -> int:
    """Log every finished trial MLflow lacks (a crash or an outage between Optuna and MLflow loses nothing), except
    those of live drivers (`live`), which log their own; return how many were logged."""
    logged = tracker.logged_trials(live)
    missing = [t for t in finished(study) if t.number not in logged and owner(t) not in live]
    for t in missing:
        if tracker.down:
            break
        log_trial(exp, tracker, t)
    return len(missing)


def log_trial(exp: Experiment, tracker: Tracker, t: FrozenTrial, *, full_traceback: str | None = None) -> None:
    """Mirror one finished trial, as Optuna holds it, to its nested MLflow run (the whole traceback when the
    driver still has it, else the end the trial kept)."""
    rec = read(t)
    path = trial_path(exp, t.number)
    stage_metrics = {f"stage_{k}_s": v for k, v in rec.stages.items()}
    tags = {
        "slimsweep.feasible": str(rec.feasible).lower(),
        "slimsweep.skipped_training": str(rec.skipped_training).lower(),
    }
    if "latency_cache" in rec.info:
        tags["slimsweep.latency_cache"] = rec.info["latency_cache"]
    if rec.reuse_of is not None:
        tags["slimsweep.reuse_of"] = str(rec.reuse_of)
    failed = t.state == TrialState.FAIL
    tracker.log_trial(
        # Optuna's own parameter names first (what optuna-dashboard shows), then every knob of the plan.
        t.number,
        {**t.params, **rec.plan},
        {**rec.metrics, **stage_metrics},
        onnx=path.read_bytes() if rec.metrics and path.is_file() else None,
        failed_reason=(rec.failure or "unknown error") if failed else None,
        traceback=(full_traceback or rec.traceback) if failed else None,
        tags=tags,
        start_ms=_ms(t.datetime_start),
        end_ms=_ms(t.datetime_complete),
        description=_trial_note(t.number, rec, failed),
    )


def _ms(moment: Any) -> int | None:
    """A trial's datetime as MLflow's epoch milliseconds (the run shows the trial's real start and end)."""
    return None if moment is None else int(moment.timestamp() * 1000)


def _trial_note(number: int, rec: TrialRecord, failed: bool) -> str:
    """The trial run's description: the plan in words, then its outcome."""
    if failed:
        return f"Trial {number}: {rec.describe}. Failed: {(rec.failure or 'unknown error').splitlines()[0][:300]}"
    m = rec.metrics
    reused = f" Answered from trial {rec.reuse_of} (the same plan)." if rec.reuse_of is not None else ""
    return (
        f"Trial {number}: {rec.describe}. Accuracy {m.get('accuracy', float('nan')):.2f}% "
        f"({m.get('accuracy_drop', float('nan')):.2f} pt below the teacher), p50 "
        f"{m.get('latency_p50_ms', float('nan')):.4f} ms, {m.get('size_mb', float('nan')):.3f} MB; "
        f"{'feasible' if rec.feasible else 'infeasible (breaks a constraint)'}.{reused}"
    )


def owe_sync(study: optuna.Study, summary: SweepSummary, numbers: list[int]) -> None:
    """Told trials whose MLflow run was not written (a failed write, or the driver stopping before it): the study
    says MLflow needs a sync (the next start back-fills them too; `slimsweep status` shows it meanwhile)."""
    if numbers:
        summary.unmirrored.extend(numbers)
        try:
            set_needs_sync(study, True)
        except Exception as err:  # noqa: BLE001 - the storage may be what failed; the next start syncs anyway
            log.warning("could not mark the study for a sync: %s", err)


class MlflowMirror:
    """Listener: each told trial's MLflow run, written once the next plans are submitted; a reused trial's at
    once; the parent run's end when the loop stops."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.owed: list[tuple[int, str | None]] = []  # told, run not yet written: number, full traceback

    def trial_told(self, loop: Loop, told: Told) -> None:
        if told.owed:
            self.owed.append((told.number, told.result.traceback))

    def made_on_the_way(self, loop: Loop, number: int) -> None:
        self.owed.append((number, None))

    def trial_reused(self, loop: Loop, number: int, rec: TrialRecord) -> None:
        if rec.dominated_by is not None or rec.info.stopped_at_rung is not None:
            return  # a plan stopped again: no MLflow run, as for a stopped plan told (the parent counts them)
        self._write(loop, number, None)

    def caught_up(self, loop: Loop) -> None:
        """The next plans run: write the runs owed (a driver that dies before this leaves them to sync_tracking)."""
        while self.owed:
            self._write(loop, *self.owed[0])
            self.owed.pop(0)  # after: a driver stopped mid-write still owes this one (stopping)

    def _write(self, loop: Loop, number: int, traceback: str | None) -> None:
        try:
            trial = loop.study.get_trials(deepcopy=False)[number]
            log_trial(loop.exp, self.tracker, trial, full_traceback=traceback)
            self.note_outage(loop.study, loop.summary)
        except Exception as err:  # noqa: BLE001 - the study holds the trial: a copy failing must not stop the sweep
            log.warning("trial %d: its MLflow run was not written (%s); `slimsweep sync` fills it", number, err)
            owe_sync(loop.study, loop.summary, [number])

    def note_outage(self, study: optuna.Study, summary: SweepSummary) -> None:
        """Once MLflow is lost, the study records that it needs `slimsweep sync` (also if this driver dies later)."""
        if self.tracker.down and not summary.tracking_down:
            summary.tracking_down = self.tracker.down_reason or "unreachable"
            set_needs_sync(study, True)

    def stopping(self, loop: Loop, interrupted: bool) -> None:
        """The loop stops early: the runs still owed are the study's to sync; Ctrl-C ends the parent run KILLED."""
        owe_sync(loop.study, loop.summary, [number for number, _ in self.owed])
        self.owed.clear()
        if interrupted:
            self.tracker.end("KILLED")
