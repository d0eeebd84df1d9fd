"""The driver: ask Optuna for plans, run them as Ray tasks, tell the results, log MLflow; resumable at any point."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Self

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from evaluators.errors import ConfigError
from evaluators.latency import TRIAL_TIMING, TimingSettings
from evaluators.secrets import mask_secrets
from evaluators.targets import settings_for
from experiments.tasks import load_task
from experiments.teacher import resolve_teacher, teacher_to_bytes
from search.artifacts import trial_onnx_path
from search.config import Experiment
from search.executor import MACHINERY, RayExecutor, Running
from search.gate import Bar, Candidate, bar
from search.progress import SweepProgress
from search.study import (
    Baseline,
    TrialRecord,
    beat,
    dominated,
    finished,
    give_way,
    keep_latency,
    latency_cache,
    live_drivers,
    new_driver_id,
    on_the_way,
    open_fixed,
    open_study,
    own,
    owner,
    past_budget,
    read,
    record,
    repair,
    requeue,
    retire,
    reusable,
    running,
    set_baseline,
    set_needs_sync,
    spent,
    stale,
    still_ours,
)
from search.tracking import Tracker
from search.trial import MadeOnTheWay, TrialContext, TrialResult, teacher_figures
from spaces.knobs import values
from spaces.plan import sample
from spaces.pruning_knobs import RATIO_KNOB
from spaces.quantization_knobs import SCHEME_KNOB
from spaces.students import suits

log = logging.getLogger("slimsweep.sweep")


@dataclass
class SweepSummary:
    """What a sweep did in this run and in total."""

    finished: int = 0
    failed: int = 0
    reused: int = 0  # trials answered from an earlier trial with the identical plan, not run again
    on_the_way: int = 0  # models trials made on their way (before pruning, before quantization); no trial of budget
    ran_now: int = 0
    reused_now: int = 0
    requeued: list[int] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    skipped_training: int = 0  # trials stopped by latency first, before training
    dominated: int = 0  # plans stopped before training as off the front (search/gate.py); they cost no trial
    out_of_plans: bool = False  # the sweep stopped asking: the sampler kept proposing plans already answered
    seconds_saved: float = 0.0  # their estimated training time (mean of the trials that trained)
    cache: dict[str, int] = field(default_factory=dict)  # latency-cache hits / misses at the station
    parallel: int = 0  # trials in flight at once, after the station took its cores
    retried: int = 0  # attempts run again in this run after a machinery failure
    failed_kinds: dict[str, int] = field(default_factory=dict)  # failed trials by kind: plan, timeout, worker_died..
    tracking_down: str = ""  # why MLflow stopped being written during this run, if it did
    unmirrored: list[int] = field(default_factory=list)  # trials whose MLflow run failed to write, MLflow being up


def trial_path(exp: Experiment, number: int) -> Path:
    """Where a trial's deployable ONNX file is kept (the driver writes it before telling Optuna)."""
    return exp.out / "trials" / f"trial-{number}.onnx"


def timing(exp: Experiment, **overrides: float) -> TimingSettings:
    """The target's timing settings: a trial's repeats, with any overrides."""
    return settings_for(exp.target.spec(), **{**TRIAL_TIMING, **overrides})


def prepare(exp: Experiment, say: Callable[[str], None] | None = None) -> TrialContext:
    """Load the task and get the cached (or newly trained) teacher: what every trial shares; `say` hears each step."""
    say = say or (lambda line: None)
    say(f"loading the task {exp.task.name!r}")
    task = load_task(exp.task)
    problem = exp.quantization_only_problem() if task.onnx_only else None
    if problem:  # a plugin may bring an ONNX model too
        raise ConfigError(f"space: {problem}")
    if not task.onnx_only:
        for kind in exp.space.students.kinds():
            reason = suits(kind, task.data.input_shape)
            if reason:  # refuse up front rather than fail every trial of that family
                raise ConfigError(f"space.students.{kind}: {reason}")
    blob = None
    if not task.onnx_only:
        start = time.perf_counter()
        say("teacher: loading it from the cache, or training it (once per task and settings; this can take minutes)")
        teacher, cached = resolve_teacher(task)
        say(f"teacher: {'loaded from the cache' if cached else 'ready'} in {time.perf_counter() - start:.0f} s")
        blob = teacher_to_bytes(teacher)
    ratios, schemes = set(values(exp.space.pruning.ratio)), set(exp.space.quantization.schemes)
    return TrialContext(
        data=task.data,
        teacher_blob=blob,
        onnx_model=task.onnx_model,
        timing=timing(exp),
        seed=exp.search.seed,
        max_latency_ms=exp.constraints.max_latency_ms,
        measure_unpruned=0.0 in ratios and len(ratios) > 1,
        measure_fp32="fp32" in schemes and len(schemes) > 1,
    )


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


class Heartbeat:
    """A thread recording that this driver is alive, so no other driver takes over its trials."""

    def __init__(self, study: optuna.Study, driver: str, every_s: float) -> None:
        self.study, self.driver, self.every_s = study, driver, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slimsweep-heartbeat", daemon=True)

    def __enter__(self) -> Self:
        beat(self.study, self.driver, every_s=self.every_s)  # alive before it owns any trial; judged by its interval
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            retire(self.study, self.driver)  # gone at once, not after missed beats: `sync` may take over its runs
        except Exception as err:  # noqa: BLE001 - its beat simply goes stale; never mask the sweep's own outcome
            log.warning("could not record the driver's end: %s", err)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                beat(self.study, self.driver)
            except Exception as err:  # noqa: BLE001 - a busy database must not kill the beat; the next one retries
                log.warning("heartbeat not recorded: %s", err)


def run_sweep(
    exp: Experiment, executor: RayExecutor, ctx: TrialContext, *, quiet: bool = False, offline: bool = False
) -> SweepSummary:
    """Run (or resume) the experiment's sweep until the study's budget of finished trials is reached."""
    start = time.perf_counter()
    executor.warm(exp.search.parallel)  # workers import torch while the study, MLflow and the teacher's timing open
    study = open_study(exp)
    driver = new_driver_id()
    with Heartbeat(study, driver, exp.search.heartbeat_s):
        # Trials a dead driver left RUNNING (its heartbeat stale) run again; a live driver's are left alone.
        summary = SweepSummary(requeued=repair(study) + requeue(study, stale(study, exp.search.heartbeat_s)))
        tracker = _open_tracking(exp, driver, offline)
        try:
            sync_tracking(exp, study, tracker, live_drivers(study, exp.search.heartbeat_s))
            executor.seed_latencies(latency_cache(study))  # structures timed by an earlier run are not timed again
            sweep = _Sweep(
                exp,
                executor,
                study,
                tracker,
                summary,
                driver=driver,
                teacher=_time_baseline(exp, executor, ctx, study, tracker),
                ctx_ref=executor.put(ctx),
                n_val=len(ctx.data.y_val),
            )
            _keep_latencies(sweep)
            _ask_and_tell(sweep, quiet)
            # A driver that died during this sweep may have told trials it never mirrored; the pick and the registry
            # need every finished trial's run, so they are filled now, not only at the next start.
            sync_tracking(exp, study, tracker, live_drivers(study, exp.search.heartbeat_s))
            _count(sweep, start)
            _log_statistics(tracker, summary)
            _note_outage(sweep)
            return summary
        except BaseException:
            tracker.end("FAILED")  # never leave the parent RUNNING; the study keeps every finished trial
            if tracker.down:
                set_needs_sync(study, True)
            raise


def _open_tracking(exp: Experiment, driver: str, offline: bool) -> Tracker:
    """The sweep's MLflow parent run, created or resumed, with the experiment file attached."""
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts", driver=driver, offline=offline)
    tracker.start_sweep(mask_secrets(yaml.safe_dump(exp.model_dump(), sort_keys=False)), _sweep_params(exp))
    return tracker


def _note_outage(sweep: _Sweep) -> None:
    """Once MLflow is lost, the study records that it needs `slimsweep sync` (also if this driver dies later)."""
    if sweep.tracker.down and not sweep.summary.tracking_down:
        sweep.summary.tracking_down = sweep.tracker.down_reason or "unreachable"
        set_needs_sync(sweep.study, True)


def _keep_latencies(sweep: _Sweep) -> None:
    """Keep the station's new measurements with the study (a resumed sweep reuses them)."""
    keep_latency(sweep.study, sweep.executor.new_latencies())


def _time_baseline(
    exp: Experiment, executor: RayExecutor, ctx: TrialContext, study: optuna.Study, tracker: Tracker
) -> dict[str, float]:
    """Time the fp32 teacher at the station like every candidate, before any trial trains; store and log it."""
    executor.warmed()  # workers importing torch beside the station would slow the teacher, and flatter every speed-up
    teacher_onnx, teacher = teacher_figures(ctx, lambda m: executor.time_model(m, ctx.timing, use_cache=False))
    (exp.out / "teacher.onnx").write_bytes(teacher_onnx)
    station = {"node": executor.where[0], "cores": executor.where[1]}
    set_baseline(study, Baseline(teacher=teacher, input_shape=list(ctx.data.input_shape), station=station))
    tracker.log_parent(
        metrics={f"teacher_{k}": v for k, v in teacher.items()},
        tags={
            "slimsweep.target": json.dumps(executor.describe_target(), default=str)[:5000],
            "slimsweep.station": json.dumps(station),
        },
    )
    return teacher


@dataclass
class _Sweep:
    """What the ask/tell loop works with, and the trials it has in flight."""

    exp: Experiment
    executor: RayExecutor
    study: optuna.Study
    tracker: Tracker
    summary: SweepSummary
    teacher: dict[str, float]
    ctx_ref: Any
    n_val: int = 0  # validation images: the accuracy's noise, for the gate
    asks: int = 0  # plans this run asked Optuna for (the ask cap's count)
    driver: str = ""
    refreshed: float = 0.0  # when the progress line last re-read the study (time.monotonic)
    running: list[Running] = field(default_factory=list)
    asked: dict[int, tuple[optuna.Trial, Any, dict, str]] = field(default_factory=dict)  # -> trial, plan, params, words
    attempts: dict[int, list[str]] = field(default_factory=dict)  # number -> machinery failures of earlier attempts
    told: list[tuple[int, TrialResult, bool]] = field(default_factory=list)  # told, MLflow run not yet written


def _ask_and_tell(sweep: _Sweep, quiet: bool) -> None:
    """Keep `parallel` trials in flight until the study's budget is finished (counting every driver's trials);
    Ctrl-C or any error queues the ones in flight again."""
    budget, heartbeat_s = sweep.exp.search.trials, sweep.exp.search.heartbeat_s

    # More trials in flight than the cluster's slots (its live nodes' CPUs and GPUs for trials, after the
    # station's share) would only queue inside Ray; a node that joins or dies changes them mid-sweep.
    def slots() -> int:
        return max(1, min(sweep.exp.search.parallel, sweep.executor.trial_slots()))

    sweep.summary.parallel = slots()
    progress = SweepProgress(budget, quiet=quiet)
    next_check = time.monotonic() + heartbeat_s
    try:
        with progress:
            while True:
                if time.monotonic() >= next_check:  # a driver that died meanwhile: its trials run again here
                    sweep.summary.requeued += requeue(sweep.study, stale(sweep.study, heartbeat_s))
                    next_check = time.monotonic() + heartbeat_s
                asked = sweep.asks
                _fill(sweep, progress, slots())
                if sweep.asks > asked or time.monotonic() - sweep.refreshed >= IDLE_REFRESH_S:
                    _refresh(progress, sweep)
                if not sweep.running:
                    if len(spent(sweep.study)) >= budget or _out_of_plans(sweep):
                        break
                    time.sleep(1.0)  # the rest of the budget runs at another driver; wait for it, or for it to die
                    continue
                for item, result in sweep.executor.wait(sweep.running, timeout=1.0):
                    sweep.running.remove(item)
                    if _run_again(sweep, item.number, result):
                        continue
                    # When the driver let it go and got it back, beside the worker's own stamps (benchmarks/stages.py)
                    clock = result.info.setdefault("clock", {})
                    clock.update(submitted=item.submitted, received=time.time())
                    describe, metrics, owed = _tell(sweep, item.number, result)
                    sweep.told.append((item.number, result, owed))
                    _refresh(progress, sweep)
                    if not metrics and not result.error:
                        continue  # taken over by another driver: its copy is the one that counts, and it says so
                    progress.trial_done(
                        item.number,
                        describe,
                        metrics,
                        result.error,
                        skipped=bool(result.info.get("skipped_training")),
                        dominated_by=result.info.get("dominated_by"),
                    )
                if sweep.told:  # the next plans start first: the MLflow mirror is off the trials' path
                    _fill(sweep, progress, slots())
                while sweep.told:
                    _mirror(sweep, *sweep.told[0])
                    sweep.told.pop(0)  # after: a driver stopped mid-mirror still owes this one (_leave)
    except KeyboardInterrupt:
        _leave(sweep)
        _stop_in_flight(sweep)
        sweep.summary.interrupted = True
        sweep.tracker.end("KILLED")
    except BaseException:
        _leave(sweep)
        _stop_in_flight(sweep)  # the caller closes the parent run
        raise


def _leave(sweep: _Sweep) -> None:
    """A driver stopping: keep the station's newest timings with the study (a resumed sweep must not time those
    structures again; the trials told but not yet mirrored had not kept theirs) and say which trials MLflow lacks."""
    try:
        _keep_latencies(sweep)
    except Exception as err:  # noqa: BLE001 - Ray or the storage may be what failed; stopping goes on
        log.warning("the latest timings were not kept with the study: %s", err)
    _owe_sync(sweep, [number for number, _, _ in sweep.told])


def _owe_sync(sweep: _Sweep, numbers: list[int]) -> None:
    """Told trials whose MLflow run was not written (a failed write, or the driver stopping before it): the study
    says MLflow needs a sync (the next start back-fills them too; `slimsweep status` shows it meanwhile)."""
    if numbers:
        sweep.summary.unmirrored.extend(numbers)
        try:
            set_needs_sync(sweep.study, True)
        except Exception as err:  # noqa: BLE001 - the storage may be what failed; the next start syncs anyway
            log.warning("could not mark the study for a sync: %s", err)


# Proposals that cost no trial (plans dominated before training, search/gate.py) may run to this many times the
# budget; past it the sampler finds nothing left in the space that could reach the front.
MAX_ASKS_PER_TRIAL = 10


def _fill(sweep: _Sweep, progress: SweepProgress, parallel: int) -> None:
    """Ask for plans until `parallel` trials are in flight or the budget is spoken for."""
    while len(sweep.running) < parallel and _wanted(sweep) > 0:
        _ask(sweep, progress)


def _out_of_plans(sweep: _Sweep) -> bool:
    """Whether this run has asked as many plans as a sweep of this budget may, with the budget still unmet."""
    out = sweep.asks >= MAX_ASKS_PER_TRIAL * sweep.exp.search.trials
    out = out and len(spent(sweep.study)) < sweep.exp.search.trials
    sweep.summary.out_of_plans |= out
    return out


def _wanted(sweep: _Sweep) -> int:
    """Trials still to start: the budget less those finished (by any driver) and those in flight."""
    left = sweep.exp.search.trials - len(spent(sweep.study)) - len(running(sweep.study))
    return 0 if left <= 0 or _out_of_plans(sweep) else left


# The objectives the gate compares: a structure's p50 and size are known untrained; other latency percentiles and
# parameter counts are not what it compares, so with those objectives every plan trains.
GATED_OBJECTIVES = {"accuracy", "latency_p50_ms", "size_mb"}


def _bar(sweep: _Sweep) -> Bar | None:
    """What a new plan must not be slower and larger than (search/gate.py), from the trials trained so far."""
    if not sweep.exp.search.skip_dominated or not set(sweep.exp.objectives) <= GATED_OBJECTIVES:
        return None
    trained = []
    for t in finished(sweep.study):
        rec = read(t)
        # Only a feasible model may stop others: one that breaks a constraint is no pick and no front member.
        if t.state == TrialState.COMPLETE and rec.feasible and not rec.skipped_training and rec.reuse_of is None:
            m = rec.metrics
            trained.append(Candidate(t.number, m["accuracy"], m["latency_p50_ms"], m["size_mb"]))
    return bar(trained, sweep.teacher["accuracy"], sweep.n_val)


def _stop_in_flight(sweep: _Sweep) -> None:
    """Cancel this driver's trials in flight and queue their plans again."""
    numbers = [r.number for r in sweep.running]
    sweep.executor.cancel(sweep.running)
    sweep.running.clear()
    requeue(sweep.study, numbers)


def _run_again(sweep: _Sweep, number: int, result: TrialResult) -> bool:
    """After a machinery failure, start the same plan again if retries are left; a plan's own error never is."""
    kind = result.info.get(MACHINERY)
    if kind is None:
        return False
    attempts = sweep.attempts.setdefault(number, [])
    attempts.append(f"{kind}: {result.error}")
    if len(attempts) > sweep.exp.search.max_retries:
        result.error = f"{kind}: failed {len(attempts)} attempts, the last: {result.error}"
        return False
    log.warning(
        "trial %d: %s; running the same plan again (attempt %d of %d)",
        number,
        result.error,
        len(attempts) + 1,
        sweep.exp.search.max_retries + 1,
    )
    sweep.summary.retried += 1
    _, plan, _, _ = sweep.asked[number]
    sweep.running.append(sweep.executor.submit(number, plan, sweep.ctx_ref, _bar(sweep)))
    return True


def _ask(sweep: _Sweep, progress: SweepProgress) -> None:
    """Ask Optuna for a plan; answer a plan already run from its result, else start it as a Ray task."""
    trial = sweep.study.ask()
    own(sweep.study, trial, sweep.driver)
    if past_budget(sweep.study, trial.number, sweep.exp.search.trials):
        give_way(sweep.study, trial)  # another driver asked for the last trial at the same moment
        return
    sweep.asks += 1
    plan = sample(trial, sweep.exp.space)
    earlier = reusable(sweep.study, plan.params())
    bar_now, dominated_by = _bar(sweep), None
    if earlier is not None and earlier.state == TrialState.PRUNED:
        # Stopped before: still stopped only if the bar today still covers its structure (the floor moves as more
        # accurate models arrive, and the gate may have been turned off since).
        m = read(earlier).metrics
        now = bar_now.dominator(m["latency_p50_ms"], m["size_mb"]) if bar_now else None
        earlier = earlier if now is not None else None
        dominated_by = now.number if now is not None else None
    if earlier is not None:
        rec = _reuse(sweep, trial, plan.params(), plan.describe(), earlier, dominated_by)
        _refresh(progress, sweep)
        progress.trial_done(
            trial.number,
            rec.describe,
            rec.metrics,
            None,
            skipped=rec.skipped_training,
            reused_from=rec.reuse_of,
            dominated_by=rec.dominated_by,
        )
        return
    sweep.asked[trial.number] = (trial, plan, plan.params(), plan.describe())
    sweep.running.append(sweep.executor.submit(trial.number, plan, sweep.ctx_ref, bar_now))


def _tell(sweep: _Sweep, number: int, result: TrialResult) -> tuple[str, dict[str, float], bool]:
    """Record one result: ONNX on disk first, then Optuna (the state of record). Returns its words, its metrics and
    whether an MLflow run is owed for it (see `_mirror`)."""
    trial, _, params, describe = sweep.asked.pop(number)
    if not still_ours(sweep.study, trial):
        # Another driver thought this one gone (its heartbeat was late) and queued the plan again: that copy counts.
        log.warning("trial %d was taken over by another driver; its result here is dropped", number)
        sweep.attempts.pop(number, None)
        return describe, {}, False
    info = dict(result.info)
    if sweep.attempts.get(number):
        info["machinery_attempts"] = sweep.attempts.pop(number)  # earlier attempts the machinery lost
    rec = TrialRecord(plan=params, describe=describe, stages=result.stages, info=info)
    if not result.ok:
        rec.failure, rec.traceback = result.error or "unknown error", result.traceback
        record(sweep.study, trial, rec)
    elif rec.dominated_by is not None:
        rec.metrics = dict(result.metrics)  # the structure's latency and size; no accuracy, nothing to deploy
        record(sweep.study, trial, rec)
        # Not an MLflow run: a sweep may stop many such plans, which would crowd the runs list; the parent counts
        # them and the study keeps each with its reason.
        return describe, rec.metrics, False
    else:
        rec.metrics = dict(result.metrics, accuracy_drop=sweep.teacher["accuracy"] - result.metrics["accuracy"])
        path = trial_path(sweep.exp, number)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(result.onnx or b"")
        _record_metrics(sweep, trial, rec)
        where = {k: info[k] for k in ("ray_node", "cores", "resources") if k in info}  # made where its trial ran
        for made in result.on_the_way:
            try:
                _record_on_the_way(sweep, trial, made, where)
            except Exception as err:  # noqa: BLE001 - an extra candidate lost must not stop the sweep
                log.warning("trial %d: a model made on its way was not recorded (%s)", number, err)
    sweep.summary.ran_now += 1
    return describe, rec.metrics, True


def _record_on_the_way(sweep: _Sweep, parent: optuna.Trial, made: MadeOnTheWay, where: dict[str, Any]) -> None:
    """Record a model the trial made on its way as a complete trial of its own (made_by the parent, no trial of
    the budget), when its plan is a plan of the space that no trial has answered yet."""
    params, dists = dict(parent.params), parent.distributions
    for key, value in ((RATIO_KNOB, made.ratio), (SCHEME_KNOB, made.scheme)):
        if params.get(key) == value:
            continue
        d = dists.get(key)
        if d is None or not d._contains(d.to_internal_repr(value)):
            return  # a fixed knob, or a value the space does not offer: not a plan of this search
        params[key] = value
    fixed = optuna.trial.FixedTrial(params)
    plan = sample(fixed, sweep.exp.space)
    earlier = reusable(sweep.study, plan.params())
    if earlier is not None and earlier.state == TrialState.COMPLETE:
        return
    trial = open_fixed(sweep.study, fixed.params, fixed.distributions, sweep.driver)
    info = {**where, **made.info, "made_by": parent.number, "skipped_training": False}
    accuracy_drop = sweep.teacher["accuracy"] - made.metrics["accuracy"]
    rec = TrialRecord(plan=plan.params(), describe=plan.describe(), info=info)
    rec.metrics = dict(made.metrics, accuracy_drop=accuracy_drop)
    path = trial_path(sweep.exp, trial.number)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(made.onnx)
    _record_metrics(sweep, trial, rec)
    sweep.told.append((trial.number, TrialResult(number=trial.number), True))  # its MLflow run, off the path


def _mirror(sweep: _Sweep, number: int, result: TrialResult, owed: bool) -> None:
    """After a told trial: keep the station's new timings with the study and, if owed, mirror the trial to its
    MLflow run. A driver that dies before this leaves the run to the next start (sync_tracking)."""
    try:
        _keep_latencies(sweep)
        if owed:
            trial = sweep.study.get_trials(deepcopy=False)[number]
            log_trial(sweep.exp, sweep.tracker, trial, full_traceback=result.traceback)
            _note_outage(sweep)
    except Exception as err:  # noqa: BLE001 - the study already holds the trial: a copy failing must not stop the sweep
        log.warning("trial %d: its MLflow run or timings were not written (%s); `slimsweep sync` fills it", number, err)
        _owe_sync(sweep, [number])


def _reuse(
    sweep: _Sweep,
    trial: optuna.Trial,
    params: dict,
    describe: str,
    earlier: FrozenTrial,
    dominated_by: int | None = None,
) -> TrialRecord:
    """Tell an identical plan the values of the COMPLETE trial that ran it, without running it again; or, for a
    plan stopped before (PRUNED) that the bar still covers, stop it again, naming today's dominator."""
    old = read(earlier)
    origin = old.reuse_of if old.reuse_of is not None else earlier.number
    # The earlier trial's stamps are not this one's, and a proposal answered from a model made on a trial's way is
    # a repeat of the budget like any other, not a model made on the way itself.
    info = {k: v for k, v in old.info.items() if k not in ("clock", "made_by")}
    rec = TrialRecord(plan=params, describe=describe, info=info, metrics=dict(old.metrics), reuse_of=origin)
    if earlier.state == TrialState.PRUNED:
        rec.info["dominated_by"] = dominated_by
        record(sweep.study, trial, rec)  # not an MLflow run, as in _tell
        return rec
    shutil.copyfile(trial_onnx_path(sweep.exp, sweep.tracker, earlier.number), trial_path(sweep.exp, trial.number))
    _record_metrics(sweep, trial, rec)
    log_trial(sweep.exp, sweep.tracker, sweep.study.get_trials(deepcopy=False)[trial.number])
    _note_outage(sweep)
    sweep.summary.reused_now += 1
    return rec


def _record_metrics(sweep: _Sweep, trial: optuna.Trial, rec: TrialRecord) -> None:
    """Tell Optuna a candidate's objective values and its constraints (<= 0 is feasible)."""
    m, c = rec.metrics, sweep.exp.constraints
    constraints = {"accuracy_drop": m["accuracy_drop"] - c.max_accuracy_drop}
    if c.max_latency_ms is not None:
        constraints["latency_p50_ms"] = m["latency_p50_ms"] - c.max_latency_ms
    if c.max_size_mb is not None:
        constraints["size_mb"] = m["size_mb"] - c.max_size_mb
    rec.feasible = all(v <= 0 for v in constraints.values())
    record(sweep.study, trial, rec, values=[m[o] for o in sweep.exp.objectives], constraints=constraints)


def _count(sweep: _Sweep, start: float) -> None:
    """The sweep's totals: finished, failed, reused, skipped by latency first and the training time that saved."""
    summary, made = sweep.summary, on_the_way(sweep.study)
    done = spent(sweep.study)
    records = {t.number: read(t) for t in done}
    summary.finished = len(done)
    summary.on_the_way = len(made)
    summary.failed = sum(t.state == TrialState.FAIL for t in done)
    kinds: dict[str, int] = {}
    for t in done:
        if t.state == TrialState.FAIL:
            kind = records[t.number].info.get(MACHINERY, "plan")
            kinds[kind] = kinds.get(kind, 0) + 1
    summary.failed_kinds = kinds
    summary.reused = sum(r.reuse_of is not None for r in records.values())
    summary.seconds = time.perf_counter() - start
    skipped = [n for n, r in records.items() if r.skipped_training and r.reuse_of is None]
    trained = [
        r
        for t in done
        if t.state == TrialState.COMPLETE
        for r in [records[t.number]]
        if not r.skipped_training and r.reuse_of is None
    ]
    train_s = [sum(r.stages.get(k, 0.0) for k in ("distill", "prune")) for r in trained]
    summary.skipped_training = len(skipped)
    summary.dominated = len(dominated(sweep.study))
    summary.seconds_saved = len(skipped) * (sum(train_s) / len(train_s) if train_s else 0.0)
    summary.cache = sweep.executor.station_counts()


def _log_statistics(tracker: Tracker, summary: SweepSummary) -> None:
    """The totals on the MLflow parent run."""
    tracker.log_parent(
        metrics={
            "trials_finished": summary.finished,
            "trials_failed": summary.failed,
            "trials_reused": summary.reused,
            "models_on_the_way": summary.on_the_way,
            "trials_skipped_training": summary.skipped_training,
            "trials_dominated": summary.dominated,
            "training_seconds_saved_estimate": summary.seconds_saved,
            **summary.cache,
            **{f"trials_failed_{k}": v for k, v in summary.failed_kinds.items()},
        }
    )


# While its trials run, the driver re-reads the study this often for the progress line (other drivers' trials):
# every second, the reads took CPU from the trial training beside it.
IDLE_REFRESH_S = 5.0


def _refresh(progress: SweepProgress, sweep: _Sweep) -> None:
    sweep.refreshed = time.monotonic()
    done = spent(sweep.study)
    progress.update(
        done=len(done),
        failed=sum(t.state == TrialState.FAIL for t in done),
        running=len(sweep.running),
        front=len(sweep.study.best_trials) if done else 0,
    )


def _sweep_params(exp: Experiment) -> dict[str, str]:
    return {
        "task": exp.task.name,
        "objectives": ",".join(exp.objectives),
        "sampler": exp.search.sampler,
        "trials": str(exp.search.trials),
        "parallel": str(exp.search.parallel),
        "seed": str(exp.search.seed),
        "target": f"{exp.target.kind} threads={exp.target.threads} batch={exp.target.batch_size}",
        "max_accuracy_drop": str(exp.constraints.max_accuracy_drop),
        "storage": mask_secrets(exp.storage_url),
        "pick_policy": exp.pick.policy,
    }
