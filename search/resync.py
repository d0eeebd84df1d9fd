"""`slimsweep sync`: rebuild MLflow from the study (the record of truth) after an outage; running it twice adds
nothing twice."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import yaml
from mlflow.exceptions import MlflowException

from evaluators.errors import SlimsweepError
from evaluators.secrets import mask_secrets
from search.config import Experiment
from search.deliver import deliver, publish_front, with_verified
from search.pareto import front
from search.pick import make_policy
from search.study import baseline, live_drivers, needs_sync, set_needs_sync, teacher
from search.sweep import _sweep_params, sync_tracking
from search.tracking import Tracker, unreachable


@dataclass
class SyncReport:
    """What one sync wrote to MLflow."""

    logged: int = 0  # trial runs written now
    present: int = 0  # trial runs MLflow already had
    live: int = 0  # drivers still running, whose runs were left to them
    front: bool = False  # whether the front (tags, table, charts) was written now
    registered: str = ""  # the model version registered now, if any
    was_needed: bool = False  # whether the study recorded an outage to make up for

    def describe(self) -> str:
        """The report in words."""
        parts = [f"{self.logged} trial runs logged, {self.present} already in MLflow"]
        parts.append("front written" if self.front else "front already up to date")
        parts.append(f"pick registered (version {self.registered})" if self.registered else "pick unchanged")
        if self.live:
            parts.append(f"{self.live} live drivers log their own trials")
        return "synced: " + "; ".join(parts)


def resync(exp: Experiment, study: optuna.Study) -> SyncReport:
    """Back-fill MLflow from the study: the parent run, each finished trial's run, the front and the pick; an MLflow
    that cannot take it (unreachable, answering errors) is a SlimsweepError saying so, and the study stays marked."""
    report = SyncReport(was_needed=needs_sync(study))
    live = live_drivers(study, exp.search.heartbeat_s)
    report.live = len(live)
    _answers(exp)
    try:
        tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
        _refused_if_down(exp, tracker)
        report.present, report.logged, status = rebuild(exp, study, tracker, live)
        if baseline(study) is not None:
            members = with_verified(study, front(study))
            numbers = ",".join(map(str, sorted(c.trial for c in members)))
            tags = tracker.client.get_run(tracker.parent_id).data.tags
            if tags.get("slimsweep.front") != numbers or report.logged:
                publish_front(exp, study, tracker, members)
                report.front = True
        report.registered = _register_pick(exp, study, tracker)
        if not live:  # leave the parent as it was (or FINISHED when sync made it); a live driver closes it itself
            tracker.end(status if status in {"FINISHED", "FAILED", "KILLED"} else "FINISHED")
    except MlflowException as exc:
        raise _refused(exp, exc) from None
    _refused_if_down(exp, tracker)
    set_needs_sync(study, False)
    return report


def rebuild(
    exp: Experiment, study: optuna.Study, tracker: Tracker, live: set[str] | None = None
) -> tuple[int, int, str | None]:
    """Make MLflow hold what the study holds: the sweep's parent run (with the teacher's figures when it is new) and
    every finished trial's run, except those live drivers (`live`) log themselves. Returns the trial runs MLflow
    already had, those logged now, and the parent's status before (None: there was no parent)."""
    live = live_drivers(study, exp.search.heartbeat_s) if live is None else live
    earlier = [] if tracker.down else tracker._parents()
    status = earlier[0].info.status if earlier else None
    tracker.start_sweep(mask_secrets(yaml.safe_dump(exp.model_dump(), sort_keys=False)), _sweep_params(exp))
    if status is None and baseline(study) is not None:  # the store never had this sweep: the parent is new
        tracker.log_parent(metrics={f"teacher_{k}": v for k, v in teacher(study).items()})
    present = len(tracker.trial_runs())
    return present, sync_tracking(exp, study, tracker, live), status


def _answers(exp: Experiment) -> None:
    """Refuse, before any write, an MLflow server whose health check fails (down, or answering 5xx)."""
    reason = unreachable(exp.tracking_uri)
    if reason is not None:
        raise SlimsweepError(
            f"tracking.uri: MLflow at {mask_secrets(exp.tracking_uri)} cannot take the sync ({mask_secrets(reason)}); "
            "nothing was written and the study still holds every trial: run `slimsweep sync` again once it answers"
        )


def _refused_if_down(exp: Experiment, tracker: Tracker) -> None:
    if tracker.down:
        raise SlimsweepError(
            f"tracking.uri: MLflow at {mask_secrets(exp.tracking_uri)} stopped answering during the sync "
            f"({mask_secrets(tracker.down_reason)[:300]}); the study still holds every trial and stays marked for a "
            "sync: run `slimsweep sync` again once MLflow answers"
        )


def _refused(exp: Experiment, exc: MlflowException) -> SlimsweepError:
    first = mask_secrets(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)[:300]
    return SlimsweepError(
        f"tracking.uri: MLflow at {mask_secrets(exp.tracking_uri)} refused the sync ({first}); the study still holds "
        "every trial: run `slimsweep sync` again once MLflow answers"
    )


def _register_pick(exp: Experiment, study: optuna.Study, tracker: Tracker) -> str:
    """Hand the pick over again when the registry lacks it (the pick ran while MLflow was down): the same policy on
    the same stored figures, so the same trial, now registered from its run."""
    if not (exp.out / "deployable.onnx").is_file() or tracker.down or tracker.alias_version() is not None:
        return ""
    return deliver(exp, study, tracker, make_policy(exp.pick), retime=None).registered_version
