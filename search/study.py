"""The Optuna study: created or resumed on real storage, with a named sampler; the driver's record of every trial.

This is the only module that reads or writes Optuna `user_attrs` (and the retry `system_attrs`): what a trial
stores is one typed, versioned `TrialRecord` (its layout in search/record.py, its `info` a typed `TrialInfo`), and
what the study stores is read through the functions below. Optuna's private API is reached only through
search/optuna_store.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from evaluators.errors import ConfigError
from evaluators.secrets import mask_secrets
from search import liveness, localdb, optuna_store
from search.config import METRIC_DIRECTIONS, Experiment
from search.fingerprint import changes, describe, fingerprint
from search.record import (  # noqa: F401 - the record's layout, importable from here as before
    FAILURE_CHARS,
    KEYS,
    RECORD_VERSION,
    TRACEBACK_CHARS,
    VERSION,
    TrialInfo,
    TrialRecord,
    check_version,
    truncate,
)
from search.samplers import make_sampler

_KEYS = KEYS  # the name releases before search/record.py used
_LEGACY_INTERRUPTED = "slimsweep.interrupted"  # how releases before Optuna's retry convention marked a left trial
_LEGACY_RETRY_OF = "slimsweep.retry_of"


def read(trial: FrozenTrial) -> TrialRecord:
    """The record stored on a trial, its info typed (`TrialInfo`); refuse one written by a newer release."""
    return TrialRecord.from_attrs(trial.user_attrs, f"trial {trial.number}")


def open_study(exp: Experiment) -> optuna.Study:
    """Create the experiment's study, or load it to resume; refuse a resume with other objectives or record version."""
    optuna.logging.set_verbosity(logging.WARNING)
    directions = [METRIC_DIRECTIONS[o] for o in exp.objectives]
    exp.out.mkdir(parents=True, exist_ok=True)
    study = _create_or_load(exp, directions)
    check_version(study.user_attrs.get(VERSION, RECORD_VERSION), f"the stored study {exp.name!r} in {_shown(exp)}")
    check_made_for(study, exp)
    if VERSION not in study.user_attrs:
        study.set_user_attr(VERSION, RECORD_VERSION)
    if study.metric_names != list(exp.objectives):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable in use since 3.2
            study.set_metric_names(list(exp.objectives))  # optuna-dashboard's axes read these names
    stored = study.user_attrs.get("objectives")
    if stored is None:
        study.set_user_attr("objectives", list(exp.objectives))
    elif stored != list(exp.objectives):
        raise ConfigError(
            f"objectives: {list(exp.objectives)} differs from {stored}, which the stored study {exp.name!r} "
            f"in {_shown(exp)} was created with; restore them, or give the experiment a new name"
        )
    return study


_MADE_FOR = "slimsweep.fingerprint"


def check_made_for(study: optuna.Study, exp: Experiment, *, stamp: bool = True) -> None:
    """Refuse a study made for another task, data, space, target, objectives or constraints (its trials would answer
    this file's plans and compete in its front); stamp one made before fingerprints existed, or just created."""
    current = fingerprint(exp)
    stored = study.user_attrs.get(_MADE_FOR)
    if stored is None:
        if stamp:
            study.set_user_attr(_MADE_FOR, current)
        return
    changed = changes(stored, current)
    if changed:
        raise ConfigError(
            f"the stored study {exp.name!r} in {_shown(exp)} was made for another "
            f"{' and '.join(changed)}; changed: {describe(changed)}. Its trials would answer this file's plans and "
            "compete in its front. Changing search.trials, search.parallel or pick resumes a sweep; to change what it "
            "is for, start over with `slimsweep run FILE --fresh`, or give the experiment a new `name:`"
        )


def _shown(exp: Experiment) -> str:
    """The study's storage URL as messages show it (a password masked)."""
    return mask_secrets(exp.storage_url)


def _create_or_load(exp: Experiment, directions: list[str], attempts: int = 10) -> optuna.Study:
    """create_study(load_if_exists=True), again when another driver created the schema or the study at the same
    instant (`table ... already exists`, a duplicate study name, a locked database): the second try loads it."""
    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=exp.name,
                storage=_storage(exp),
                directions=directions,
                load_if_exists=True,
                sampler=make_sampler(exp.search.sampler, exp.search.seed, exp.search.trials),
            )
        except (SQLAlchemyError, optuna.exceptions.DuplicatedStudyError, KeyError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.3 * (attempt + 1))  # the other driver's schema creation finishes meanwhile
    raise AssertionError("unreachable")


def _storage(exp: Experiment) -> str | optuna.storages.BaseStorage:
    """The study file slimsweep makes in the output folder, in WAL (search/localdb.py); a storage the user names, as
    given."""
    if exp.search.storage is None:
        return localdb.storage((exp.out / "study.db").resolve())
    return exp.storage_url


# --- what the study holds: the baseline and the verified timings -------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """What every trial is held to: the fp32 teacher's figures, the input shape, and where timing happens."""

    teacher: dict[str, float]
    input_shape: list[int]
    station: dict[str, Any]  # {"node": Ray node id, "cores": cores the bench station keeps}


def set_baseline(study: optuna.Study, baseline: Baseline) -> None:
    """Store the sweep's baseline on the study."""
    study.set_user_attr("teacher", baseline.teacher)
    study.set_user_attr("input_shape", list(baseline.input_shape))
    study.set_user_attr("station", baseline.station)


def baseline(study: optuna.Study) -> Baseline | None:
    """The stored baseline, or None before a sweep has timed its teacher."""
    attrs = study.user_attrs
    if "teacher" not in attrs:
        return None
    return Baseline(
        teacher=dict(attrs["teacher"]),
        input_shape=list(attrs.get("input_shape", [])),
        station=dict(attrs.get("station", {})),
    )


def teacher(study: optuna.Study) -> dict[str, float]:
    """The fp32 teacher's figures measured at the start of the sweep."""
    return dict(study.user_attrs["teacher"])


def verified(study: optuna.Study) -> dict[str, float]:
    """Latencies re-timed in isolation before the pick: trial number (as text) or 'teacher' -> p50 ms."""
    return dict(study.user_attrs.get("verified", {}))


def verified_speedups(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Side-by-side speed-ups over the teacher from the last verification: trial number (as text) -> median of
    per-round ratios, its 95% interval, whether it is clear of 1.0, the rounds."""
    return dict(study.user_attrs.get("verified_speedup", {}))


def set_verified(
    study: optuna.Study, figures: dict[str, float], speedups: dict[str, dict[str, Any]] | None = None
) -> None:
    """Store the re-timed latencies (and the side-by-side speed-ups, when the verification measured them)."""
    study.set_user_attr("verified", figures)
    if speedups is not None:
        study.set_user_attr("verified_speedup", speedups)


# --- trials: finished, retried, reused -----------------------------------------------------------------------------


def retry_of(trial: FrozenTrial) -> int | None:
    """The trial this one runs again after an interruption (Optuna's retry convention), if any."""
    original = optuna_store.retried_from(trial)
    return original if original is not None else trial.user_attrs.get(_LEGACY_RETRY_OF)


def retry_history(trial: FrozenTrial) -> list[int]:
    """Every interrupted trial this one runs again, oldest first (Optuna's `retry_history` system attribute)."""
    history = optuna_store.retry_history(trial)
    legacy = trial.user_attrs.get(_LEGACY_RETRY_OF)
    return history or ([legacy] if legacy is not None else [])


def interrupted(study: optuna.Study) -> set[int]:
    """Trials left unfinished by a stopped or dead driver, failed and run again under a new number."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in retry_history(t)}
    return retried | {t.number for t in trials if marked_interrupted(t)}


def marked_interrupted(trial: FrozenTrial) -> bool:
    """Whether this trial itself is marked as failed only to be run again (by `requeue`, or by a release before
    Optuna's retry convention); one whose retry names it is interrupted too (`retry_history` of the retry)."""
    return bool(trial.user_attrs.get(_LEGACY_INTERRUPTED)) or requeued(trial)


def requeued(trial: FrozenTrial) -> bool:
    """Whether `requeue` failed this trial to run its plan again."""
    return trial.state == TrialState.FAIL and bool(trial.system_attrs.get(_REQUEUED))


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran to an end (complete or failed on their own); these count toward the budget."""
    left = interrupted(study)
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        if t.number not in left
    ]


def spent(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials that count toward the budget: all but the models a trial made on its way (`made_by`) and the
    repeats answered from an earlier identical plan (`reuse_of`), which cost nothing (search/budget.py)."""
    return [t for t in finished(study) if (rec := read(t)).made_by is None and rec.reuse_of is None]


def repeats(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials answered from an earlier identical plan, without running it again."""
    return [t for t in finished(study) if (rec := read(t)).made_by is None and rec.reuse_of is not None]


def on_the_way(study: optuna.Study) -> list[FrozenTrial]:
    """Models a trial made on its way to its own plan, each recorded as a complete trial of its own."""
    return [t for t in finished(study) if read(t).made_by is not None]


def dominated(study: optuna.Study) -> list[FrozenTrial]:
    """Plans stopped before training because a trained one was faster and smaller (search/gate.py), each once:
    a repeat proposal answered from an earlier stop is not counted again."""
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    return [t for t in pruned if (rec := read(t)).dominated_by is not None and rec.reuse_of is None]


def requeue(study: optuna.Study, numbers: list[int] | None = None) -> list[int]:
    """Fail the given trials left running and queue their plans again, the way Optuna's
    RetryHeartbeatStaleTrialCallback does (so Optuna's tools and optuna-dashboard see retries); a trial that
    another driver finished or requeued first is left alone. Returns the trials this call requeued."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    chosen = []
    for number in list(by_number) if numbers is None else numbers:
        if number not in by_number:
            continue
        trial = by_number[number]
        try:
            # Marked first: a crash between the fail and the enqueue leaves a marked FAIL without a retry, which
            # the next driver's `repair` queues again, so the plan is never lost.
            optuna_store.set_trial_system_attr(study, trial, _REQUEUED, True)
            optuna_store.fail(study, trial)
        except (UpdateFinishedTrialError, SQLAlchemyError):
            continue  # it finished, or another driver won the race to requeue it
        _enqueue_retry(study, number)
        chosen.append(number)
    return chosen


def repair(study: optuna.Study) -> list[int]:
    """Queue again the plans of trials failed for requeueing whose retry was never enqueued (a crash in between)."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in retry_history(t)}
    lost = [t.number for t in trials if requeued(t) and t.number not in retried]
    for number in lost:
        _enqueue_retry(study, number)
    return lost


def _enqueue_retry(study: optuna.Study, number: int) -> None:
    failed = study.get_trials(deepcopy=True)[number]
    failed.user_attrs = {}  # the retry starts with a clean record; Optuna's callback would copy it
    # Ownership and the requeue mark belong to this attempt, not to its retry.
    failed.system_attrs = {k: v for k, v in failed.system_attrs.items() if not k.startswith("slimsweep.")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since Optuna 2.8
        RetryHeartbeatStaleTrialCallback(max_retry=None)(study, failed)  # an interruption is not the plan's fault


# --- drivers: who owns a running trial, and whether that driver is still alive -------------------------------------

_REQUEUED = "slimsweep.requeued"
_OWNER = "slimsweep.driver"
_BEAT = "slimsweep.driver_beat:"  # + driver id -> the driver's last heartbeat (Unix seconds; 0 once it retired)
# + driver id -> the seconds between that driver's beats. Kept apart from the beat, which stays a bare number, so a
# release that predates it still reads every driver's beat.
_EVERY = "slimsweep.driver_every:"
_WHERE = "slimsweep.driver_where:"  # + driver id -> where its process runs (search/liveness.py), if known
STALE_BEATS = 4  # a driver whose last beat is older than this many of its own heartbeat intervals is gone


def new_driver_id() -> str:
    """A name for this driver process, unique across machines and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def clock(study: optuna.Study) -> float:
    """Now, by the clock of the database that holds the study (Unix seconds): every driver of a PostgreSQL or MySQL
    study writes and judges beats by the server's one clock, whatever its own machine's says. SQLite has no server:
    its clock is this machine's."""
    engine = optuna_store.engine(study)
    query = {
        "postgresql": "SELECT EXTRACT(EPOCH FROM clock_timestamp())",
        "mysql": "SELECT UNIX_TIMESTAMP(NOW(6))",
    }.get(getattr(getattr(engine, "dialect", None), "name", ""))
    if query is None:
        return time.time()
    try:
        with engine.connect() as conn:
            return float(conn.execute(sqlalchemy.text(query)).scalar_one())
    except SQLAlchemyError:
        return time.time()  # the beat or the check that follows fails on its own if the server is gone


def beat(study: optuna.Study, driver: str, now: float | None = None, *, every_s: float | None = None) -> None:
    """Record that `driver` is alive (its trials are not to be taken over); `every_s`, the interval at which it
    beats, is recorded with its first beat, so other drivers judge it by its own interval, not theirs."""
    if every_s is not None:
        optuna_store.set_study_system_attr(study, _EVERY + driver, float(every_s))
        if (where := liveness.here()) is not None:  # a driver restarted here knows at once when this one is gone
            optuna_store.set_study_system_attr(study, _WHERE + driver, where)
    optuna_store.set_study_system_attr(study, _BEAT + driver, clock(study) if now is None else now)


def retire(study: optuna.Study, driver: str) -> None:
    """Record that `driver` has ended: nothing of it is live any more."""
    beat(study, driver, 0.0)


def live_drivers(study: optuna.Study, heartbeat_s: float, now: float | None = None) -> set[str]:
    """Drivers whose last heartbeat is recent by their own interval (`heartbeat_s`, the reader's, judges only the
    beats of releases that did not record theirs), by the database's clock."""
    now = clock(study) if now is None else now
    attrs = optuna_store.study_system_attrs(study)
    alive = set()
    for key, at in attrs.items():
        if not key.startswith(_BEAT) or not isinstance(at, (int, float)):
            continue
        driver = key[len(_BEAT) :]
        every = attrs.get(_EVERY + driver)
        every = float(every) if isinstance(every, (int, float)) and every > 0 else heartbeat_s
        if now - at <= STALE_BEATS * every and not liveness.gone(attrs.get(_WHERE + driver)):
            alive.add(driver)
    return alive


def own(study: optuna.Study, trial: optuna.Trial, driver: str) -> None:
    """Mark a trial as run by `driver`."""
    optuna_store.set_trial_system_attr(study, trial, _OWNER, driver)


def open_fixed(study: optuna.Study, params: dict[str, Any], distributions: dict[str, Any], driver: str) -> optuna.Trial:
    """A new RUNNING trial with the given params, not sampled: the way a model made on a trial's way enters the
    study (Optuna's enqueue would hand it to whichever driver asks next)."""
    trial = optuna_store.open_running(study, params, distributions)
    own(study, trial, driver)
    return trial


def owner(trial: FrozenTrial) -> str | None:
    """The driver that ran (or runs) a trial, if recorded."""
    return trial.system_attrs.get(_OWNER)


def stale(study: optuna.Study, heartbeat_s: float, now: float | None = None) -> list[int]:
    """RUNNING trials whose driver is gone: its heartbeat is stale, or (no owner recorded, as older releases left
    them) the trial started longer ago than a driver may go without a beat."""
    now = clock(study) if now is None else now
    alive = live_drivers(study, heartbeat_s, now)
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = owner(t)
        if who is None:
            started = t.datetime_start.timestamp() if t.datetime_start else 0.0
            if now - started > STALE_BEATS * heartbeat_s:
                out.append(t.number)
        elif who not in alive:
            out.append(t.number)
    return out


def still_ours(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether a trial this driver runs is still RUNNING (not taken over by a driver that thought this one gone)."""
    return optuna_store.state(study, trial) == TrialState.RUNNING


_GAVE_WAY = "slimsweep.gave_way"


def past_budget(study: optuna.Study, number: int, budget: int) -> bool:
    """Whether trial `number`, just asked, takes the study past its budget: two drivers that both saw one trial left
    both ask; the latest-numbered asks past the budget are the ones that give way."""
    flying = sorted(t.number for t in running(study))
    over = len(spent(study)) + len(flying) - budget
    return over > 0 and number in flying[-over:]


def give_way(study: optuna.Study, trial: optuna.Trial) -> None:
    """End a trial asked past the budget before it runs: PRUNED with no plan, so it counts nowhere and answers none."""
    optuna_store.set_trial_system_attr(study, trial, _GAVE_WAY, True)
    study.tell(trial, state=TrialState.PRUNED)


def running(study: optuna.Study) -> list[FrozenTrial]:
    """Trials in flight in the whole study, whichever driver runs them."""
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


# --- what MLflow is owed, and the latency cache ---------------------------------------------------------------------

_NEEDS_SYNC = "slimsweep.needs_sync"
_LATENCY = "slimsweep.latency:"  # + graph key -> the stored LatencyStats fields


def set_needs_sync(study: optuna.Study, needed: bool) -> None:
    """Record whether MLflow lacks part of the sweep (it was unreachable) until `slimsweep sync` back-fills it."""
    optuna_store.set_study_system_attr(study, _NEEDS_SYNC, needed)


def needs_sync(study: optuna.Study) -> bool:
    """Whether MLflow was unreachable for part of the sweep and has not been synced since."""
    return bool(optuna_store.study_system_attrs(study).get(_NEEDS_SYNC))


def latency_cache(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Latency measurements kept with the study: graph key -> the LatencyStats fields."""
    attrs = optuna_store.study_system_attrs(study)
    return {k[len(_LATENCY) :]: v for k, v in attrs.items() if k.startswith(_LATENCY)}


def keep_latency(study: optuna.Study, entries: dict[str, dict[str, Any]]) -> None:
    """Keep new latency measurements with the study, so a resumed sweep does not time a structure again."""
    for key, stats in entries.items():
        optuna_store.set_study_system_attr(study, _LATENCY + key, stats)


def reusable(study: optuna.Study, plan: dict[str, Any]) -> FrozenTrial | None:
    """The earliest COMPLETE trial that ran exactly this plan, else the earliest PRUNED one that stopped it (whose
    verdict the driver checks again), every knob compared, the fixed ones too (a resumed study whose file changed
    a fixed setting must not be answered from the old result); failed ones never are."""
    wanted = json.loads(json.dumps(plan))  # as the storage gives it back: tuples become lists
    for state in (TrialState.COMPLETE, TrialState.PRUNED):
        for t in study.get_trials(deepcopy=False, states=(state,)):
            if read(t).plan == wanted:
                return t
    return None


def record(
    study: optuna.Study,
    trial: optuna.Trial,
    rec: TrialRecord,
    *,
    values: list[float] | None = None,
    constraints: dict[str, float] | None = None,
) -> None:
    """Tell Optuna a trial's outcome with its record: values and constraints (<= 0 is feasible), or FAIL."""
    for key, value in rec.attrs().items():
        trial.set_user_attr(key, value)
    if rec.failure is not None:
        study.tell(trial, state=TrialState.FAIL)
        return
    if rec.dominated_by is not None or rec.info.stopped_at_rung is not None:
        # Stopped before training or at a rung: no final accuracy to tell; samplers read PRUNED as a poor region.
        study.tell(trial, state=TrialState.PRUNED)
        return
    for key, value in (constraints or {}).items():
        trial.set_constraint(key, value)
    if constraints:
        # optuna-dashboard (and samplers' older code path) read the list under the plain key, in a fixed order.
        optuna_store.set_constraints(study, trial, list(constraints.values()))
    study.tell(trial, values)
