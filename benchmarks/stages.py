"""Where a trial's time goes: worker stages from the stored trial record, the rest from Optuna's clock and the driver's.

Worker side, each trial stores the seconds of its stages (distill, prune, export, quantize, latency - which includes
the wait at the bench station -, accuracy, latency_first). Optuna stamps a trial when it is asked for and when it is
told. So, for a sweep that runs one trial at a time:
* inside a trial, outside its stages: Optuna's sampling of the plan, Ray's dispatch and transfer, the teacher copied
  on the worker, the ONNX file written and the result told to Optuna (split by the stamps each trial keeps in
  its record's `info.clock`: submitted and received by the driver, began and ended on the worker);
* between one trial's tell and the next one's ask: the MLflow mirror of the trial and the progress line;
* before the first trial: loading the task, the teacher (trained or from cache), starting Ray, timing the teacher;
* after the last: re-timing the front, the pick, the MLflow registry, the model card.
slimsweep's own overhead is the first two, as a share of the trials' span.

The driver asks for the next plan while a trial runs and submits it at once, queued behind it (search/loop.py), so
Optuna's ask stamp no longer marks where a trial's critical path begins. Where every trial that ran keeps its clock
stamps, the breakdown follows them instead: the overhead is the time a slot is idle between one trial's end on its
worker and the next one's start, and the worker's time outside its stages; the driver's own share is the gap from
one result's arrival to the next submit, where the next plan was not queued (`driver_side`); records without
stamps fall back to Optuna's stamps.

Not seen here: a trial waits at each rung for the driver's verdict (search/rungboard.py), inside its training stage;
while the driver writes the MLflow mirror or asks ahead, that wait is the driver's, and no stamp splits it off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from optuna.trial import FrozenTrial

from benchmarks import sweeps
from search.study import read

STAGES = ("distill", "prune", "export", "quantize", "latency", "accuracy", "latency_first", "on_the_way")
LABELS = {
    "distill": "training (distillation)",
    "prune": "pruning and recovery",
    "export": "export to ONNX",
    "quantize": "quantization",
    "latency": "latency, incl. station queueing",
    "accuracy": "accuracy",
    "latency_first": "latency first (untrained structure)",
    "on_the_way": "measuring models made on the way (before pruning, before quantization)",
}


@dataclass(frozen=True)
class Breakdown:
    """Seconds per part of a sweep, from its stored trials and the driver's clock."""

    stages: dict[str, float]  # worker stages, summed over trials
    in_trial_other: float  # Optuna sampling + Ray + teacher copy + tell, every trial but the first
    first_trial_other: float  # the same for the first trial, which also starts a Ray worker (imports torch): setup
    between_trials: float  # MLflow mirror + progress
    before_first: float  # task, teacher, Ray start, teacher timing
    after_last: float  # verify, pick, register
    span: float  # first ask to last tell
    driver: float  # the whole `slimsweep run`
    trials: int  # finished (complete or failed)
    parallel_ok: bool  # trials ran one at a time, so gaps between them are the driver's alone
    dominated: int = 0  # stopped before training by latency first (PRUNED): probed, then told, in the span too
    in_trial_parts: dict[str, float] = field(default_factory=dict)  # in_trial_other split by the trials' clocks
    between_parts: dict[str, float] = field(default_factory=dict)  # between_trials split (driver_side only)
    driver_side: bool = False  # measured from the trials' clock stamps: result received to the next submit
    queued: int = 0  # trials submitted before the result of the one before arrived (driver_side only)
    ran: int = 0  # trials that ran on a worker (driver_side only; repeats answered from an earlier plan did not)

    @property
    def overhead(self) -> float:
        """slimsweep's own seconds while trials run."""
        return self.in_trial_other + self.between_trials

    @property
    def overhead_share(self) -> float:
        """That overhead as a share of the trials' span."""
        return self.overhead / self.span if self.span > 0 else 0.0


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.astimezone(timezone.utc)  # Optuna stamps naive local time


# The parts of a trial outside its stages, from the stamps a trial keeps (`TrialInfo.clock`, wall-clock seconds): the
# driver's when it submitted the plan and received the result, the worker's when it began and ended (on a cluster,
# the split between Ray and the worker is as good as the nodes' clocks agree).
PARTS = {
    "sampling": "Optuna's sampling and the driver's checks (ask to submit)",
    "ray": "Ray: dispatch, the context copied to the worker, the result back (a queued trial: the one before's "
    "end on the worker to its start)",
    "worker": "the worker outside its stages",
    "recording": "recording the result in the study (received to told)",
    "unstamped": "trials without stamps (answered from an earlier plan, or recorded by an older release)",
}
GAPS = {  # the driver's gap between a result's arrival and the next submit (driver_side)
    "telling": "the result told to Optuna (received to told)",
    "next": "the next plan: asked (unless asked ahead), answered from an earlier plan or gated, submitted",
}
_STAMPS = ("submitted", "received", "worker_began", "worker_ended")


def _parts(t: FrozenTrial, other: float) -> dict[str, float]:
    """A trial's seconds outside its stages, split by its clock stamps where it has them."""
    rec = read(t)
    clock = rec.info.clock or {}
    if not {"submitted", "received", "worker_began", "worker_ended"} <= set(clock):
        return {"unstamped": other}
    asked, told = _utc(t.datetime_start).timestamp(), _utc(t.datetime_complete).timestamp()
    if not asked <= clock["submitted"] <= clock["received"] <= told:
        return {"unstamped": other}  # stamps from another trial (a copied record), not this one's
    worker = clock["worker_ended"] - clock["worker_began"] - sum(rec.stages.values())
    there, back = clock["worker_began"] - clock["submitted"], clock["received"] - clock["worker_ended"]
    return {
        "sampling": max(0.0, clock["submitted"] - asked),
        "ray": max(0.0, there) + max(0.0, back),
        "worker": max(0.0, worker),
        "recording": max(0.0, told - clock["received"]),
    }


def breakdown(trials: Sequence[FrozenTrial], started: datetime, ended: datetime) -> Breakdown:
    """The parts of one sweep from its finished trials and the driver's start and end."""
    # Models made on a trial's way are recorded by the driver after it; their measuring is the trial's own stage.
    done = sorted(
        (t for t in trials if t.datetime_start and t.datetime_complete and read(t).made_by is None),
        key=lambda t: t.datetime_start,
    )
    ran = [t for t in done if read(t).reuse_of is None]  # a repeat answered from an earlier plan never ran
    if len(ran) > 1 and all(set(_STAMPS) <= set(read(t).info.clock or {}) for t in ran):
        return _driver_side(ran, len(done) - len(ran), started, ended)
    stages = {k: 0.0 for k in STAGES}
    in_trial_other = between = 0.0
    parts = {k: 0.0 for k in PARTS}
    overlap = False
    for i, t in enumerate(done):
        spent = read(t).stages
        for k, v in spent.items():
            stages[k] = stages.get(k, 0.0) + v
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        if i:
            in_trial_other += max(0.0, wall - sum(spent.values()))
            for k, v in _parts(t, max(0.0, wall - sum(spent.values()))).items():
                parts[k] += v
            gap = (t.datetime_start - done[i - 1].datetime_complete).total_seconds()
            overlap |= gap < 0
            between += max(0.0, gap)
    first, last = (_utc(done[0].datetime_start), _utc(done[-1].datetime_complete)) if done else (started, started)
    first_other = (
        max(
            0.0,
            (done[0].datetime_complete - done[0].datetime_start).total_seconds() - sum(read(done[0]).stages.values()),
        )
        if done
        else 0.0
    )
    return Breakdown(
        stages=stages,
        in_trial_other=in_trial_other,
        first_trial_other=first_other,
        between_trials=between,
        before_first=(first - started).total_seconds(),
        after_last=(ended - last).total_seconds(),
        span=(last - first).total_seconds(),
        driver=(ended - started).total_seconds(),
        trials=sum(not _gated(t) for t in done),
        dominated=sum(_gated(t) for t in done),
        parallel_ok=not overlap,
        in_trial_parts={k: v for k, v in parts.items() if v},
    )


def _driver_side(ran: list[FrozenTrial], repeats: int, started: datetime, ended: datetime) -> Breakdown:
    """The breakdown from the trials' clock stamps. Between one trial's end on its worker and the next one's start
    the slot is idle: when the next plan was submitted after the result arrived, that is Ray taking the result back,
    the driver's gap from the result's arrival to the next submit (repeats answered meanwhile inside it) and Ray's
    dispatch; when it was submitted before (queued behind it, search/loop.py), all of it is Ray's start of the queued
    trial, and the driver's telling and asking ran while trials did."""
    clocks = sorted(((read(t).info.clock, t) for t in ran), key=lambda ct: ct[0]["submitted"])
    stages = {k: 0.0 for k in STAGES}
    parts, gaps = {"ray": 0.0, "worker": 0.0}, {k: 0.0 for k in GAPS}
    first_other = 0.0
    overlap = False
    queued = 0
    for i, (clock, t) in enumerate(clocks):
        spent = read(t).stages
        for k, v in spent.items():
            stages[k] = stages.get(k, 0.0) + v
        worker = max(0.0, clock["worker_ended"] - clock["worker_began"] - sum(spent.values()))
        if not i:
            first_other = max(0.0, clock["worker_began"] - clock["submitted"]) + worker
            continue
        parts["worker"] += worker
        before, before_t = clocks[i - 1]
        overlap |= clock["worker_began"] < before["worker_ended"]  # two trials on workers at once
        if clock["submitted"] < before["received"]:  # queued behind it: the driver's work overlapped the trial
            queued += 1
            parts["ray"] += max(0.0, clock["worker_began"] - before["worker_ended"])
            continue
        back, there = before["received"] - before["worker_ended"], clock["worker_began"] - clock["submitted"]
        parts["ray"] += max(0.0, back) + max(0.0, there)
        gap = clock["submitted"] - before["received"]
        told = min(max(0.0, _utc(before_t.datetime_complete).timestamp() - before["received"]), gap)
        gaps["telling"] += told
        gaps["next"] += gap - told
    if len(clocks) > 1:  # the last result's way back: each trial before it had its own inside the gap after it
        parts["ray"] += max(0.0, clocks[-1][0]["received"] - clocks[-1][0]["worker_ended"])
    first, last = clocks[0][0]["submitted"], clocks[-1][0]["received"]
    return Breakdown(
        stages=stages,
        in_trial_other=sum(parts.values()),
        first_trial_other=first_other,
        between_trials=sum(gaps.values()),
        before_first=first - started.timestamp(),
        after_last=ended.timestamp() - last,
        span=last - first,
        driver=(ended - started).total_seconds(),
        trials=sum(not _gated(t) for _, t in clocks) + repeats,
        dominated=sum(_gated(t) for _, t in clocks),
        parallel_ok=not overlap,
        in_trial_parts={k: v for k, v in parts.items() if v},
        between_parts={k: v for k, v in gaps.items() if v},
        driver_side=True,
        queued=queued,
        ran=len(clocks),
    )


def _table(name: str, run: sweeps.SweepRun, b: Breakdown) -> list[str]:
    def row(label: str, seconds: float, whose: str) -> str:
        return f"| {label} | {seconds:.1f} | {100 * seconds / b.driver:.1f}% | {whose} |"

    lines = [
        f"### {name}",
        "",
        f"Command: `{run.command}`; {b.trials} trials"
        + (f" and {b.dominated} plans stopped before training (search/gate.py)" if b.dominated else "")
        + f"; driver wall clock {b.driver:.0f} s.",
        "",
        "| part | seconds | share of the run | kind |",
        "|---|---|---|---|",
    ]
    lines.append(
        row("before the first trial: task, teacher (train or cache), Ray start, teacher timed", b.before_first, "setup")
    )
    lines.append(
        row(
            "first trial, outside its stages: a Ray worker starts (imports torch), as above",
            b.first_trial_other,
            "setup",
        )
    )
    for k in STAGES:
        if b.stages.get(k):
            lines.append(row(LABELS[k], b.stages[k], "training and measuring"))
    inside = (
        "every later trial, outside its stages and the driver's gap: the result before it back, its dispatch, "
        "teacher copy"
        if b.driver_side
        else "every later trial, outside its stages: Optuna sampling, Ray dispatch, teacher copy, tell"
    )
    lines.append(row(inside, b.in_trial_other, "overhead"))
    for k, seconds in b.in_trial_parts.items():
        lines.append(row(f"of which {PARTS[k]}", seconds, "(overhead, above)"))
    between = (
        "between trials: the driver from a result's arrival to the next submit"
        if b.driver_side
        else "between trials: MLflow mirror, progress"
    )
    lines.append(row(between, b.between_trials, "overhead"))
    for k, seconds in b.between_parts.items():
        lines.append(row(f"of which {GAPS[k]}", seconds, "(overhead, above)"))
    lines.append(row("after the last trial: front re-timed, pick, registry, model card", b.after_last, "delivery"))
    verdict = "met" if b.overhead_share <= 0.03 else "not met"
    note = "" if b.parallel_ok else " (trials overlapped, so gaps between them are not the driver's alone)"
    if b.driver_side:
        note += f"; {b.queued} of {b.ran - 1} later trials queued behind the one before"
    lines += [
        "",
        f"> {name}: overhead while trials run: {b.overhead:.1f} s of a {b.span:.0f} s span = "
        f"**{100 * b.overhead_share:.1f}%** (goal <= 3%: **{verdict}**){note}; "
        f"{b.overhead / max(1, b.trials + b.dominated - 1):.2f} s per trial or stopped plan after the first.",
        "",
    ]
    return lines


def section(out_dir: Path, quick: bool, *, work: Path) -> str:
    """The breakdown for the quickstart and the MNIST joint sweep that the other sections ran in `work`."""
    lines = [
        "## Where a trial's time goes",
        "",
        "From each sweep's stored record: worker stages (`stages` on each trial), Optuna's ask and tell stamps, "
        "and the driver's wall clock. Station queueing is inside the latency stage. Each trial also keeps when the "
        "driver submitted it and received its result and when the worker began and ended it, which splits the "
        "in-trial overhead (the 'of which' rows). Where every trial has those stamps, the overhead is the time a "
        "slot is idle between one trial's end on its worker and the next one's start, and the worker's time "
        "outside its stages. The next plan is asked and submitted while the trial before runs, queued behind it; "
        "where it was not (its student in training there), the driver's share is the gap from the result's arrival "
        "to its submit, and models made on the way and the MLflow mirror wait until it is submitted.",
        "",
    ]
    sweeps_here = (
        ("Quickstart (experiments/digits.yaml)", work / "quickstart"),
        ("MNIST joint sweep (experiments/bench/joint.yaml, seed 0)", work / "realdata" / "joint" / "seed0"),
    )
    for name, folder in sweeps_here:
        run = sweeps.load_run(folder)
        if run is None or run.returncode != 0:
            lines += [f"### {name}", "", "Not measured: that sweep did not run or failed in this report.", ""]
            continue
        lines += _table(name, run, breakdown(run.study().trials, run.started, run.ended))
    return "\n".join(lines) + "\n"


def _gated(t: FrozenTrial) -> bool:
    """Stopped by the gate before training (a plan stopped at a rung trained, so it is a trial here)."""
    return t.state.name == "PRUNED" and read(t).info.stopped_at_rung is None
