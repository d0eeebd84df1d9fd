"""`slimsweep sync`: rebuild MLflow from the study (the record of truth) after an outage; running it twice adds
nothing twice."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import yaml

from search.config import Experiment
from search.deliver import deliver, publish_front, with_verified
from search.pareto import front
from search.pick import make_policy
from search.study import baseline, live_drivers, needs_sync, set_needs_sync, teacher
from search.sweep import _sweep_params, sync_tracking
from search.tracking import Tracker


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
    """Back-fill MLflow from the study: the parent run, each finished trial's run, the front and the pick."""
    report = SyncReport(was_needed=needs_sync(study))
    live = live_drivers(study, exp.search.heartbeat_s)
    report.live = len(live)
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    earlier = tracker._parents()
    status = earlier[0].info.status if earlier else None
    tracker.start_sweep(yaml.safe_dump(exp.model_dump(), sort_keys=False), _sweep_params(exp))
    if status is None and baseline(study) is not None:  # MLflow was down from the start: the parent is new
        tracker.log_parent(metrics={f"teacher_{k}": v for k, v in teacher(study).items()})
    report.present = len(tracker.trial_runs())
    report.logged = sync_tracking(exp, study, tracker, live)
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
    if not tracker.down:
        set_needs_sync(study, False)
    return report


def _register_pick(exp: Experiment, study: optuna.Study, tracker: Tracker) -> str:
    """Hand the pick over again when the registry lacks it (the pick ran while MLflow was down): the same policy on
    the same stored figures, so the same trial, now registered from its run."""
    if not (exp.out / "deployable.onnx").is_file() or tracker.down or tracker.alias_version() is not None:
        return ""
    return deliver(exp, study, tracker, make_policy(exp.pick), retime=None).registered_version
