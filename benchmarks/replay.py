"""Replays of a table through the real driver loop: search/loop.py's `Loop` on the in-process executor, a real
Optuna study on SQLite in a temporary folder, the gate and the reuse of repeated plans as a sweep runs them; only
the trial itself is a table lookup (or any function with InProcessExecutor's trial signature).

A benchmark gives `replay` a plan drawer (how a plan is drawn from an Optuna trial: a compression plan from a space,
or a NAS-Bench-201 cell), a trial function (`TableTrial` answers each plan from a lookup), a sampler and a rule for
when it has seen enough; it gets back every step the loop took, in order (`Step`), and the study.
"""

from __future__ import annotations

import functools
import logging
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna

from evaluators.errors import ConfigError
from search.config import METRIC_DIRECTIONS, Experiment, parse
from search.inprocess import InProcessExecutor, ReportRung, TrialFn
from search.ledger import Ledger
from search.ledger import plan_key as ledger_key
from search.loop import Loop, SweepSummary, Told
from search.samplers import make_sampler
from search.study import TrialRecord, new_driver_id, open_study
from search.sweep import Heartbeat
from search.tracking import Tracker
from search.trial import TimeModel, TrialResult

# A table's answer for one plan: (accuracy %, p50 ms, size MB), or None for a plan whose training failed.
Figures = tuple[float, float, float] | None
OBJECTIVES = ["accuracy", "latency_p50_ms", "size_mb"]  # the gate compares these (search/loop.py GATED_OBJECTIVES)
FAILED = "the table holds no result for this plan: its training failed when the table was made"


@dataclass
class TableTrial:
    """A trial that answers its plan from a table, stopped by the gate as search/trial.py's `_run` stops one: a
    plan whose structure the bar's member is faster and smaller than trains nothing (PRUNED, its figures kept)."""

    lookup: Callable[[Any], Figures]
    # Whether the untrained structure has the trained model's graph (search/trial.py _probe_is_faithful): only then
    # does the real trial probe it, so only then can the gate stop it.
    faithful: Callable[[Any], bool] = lambda plan: True
    onnx: bytes = b""  # what the loop writes as the trial's ONNX file: nothing is deployed from a replay
    calls: list[int] = field(default_factory=list)  # the trial numbers run, in order

    def __call__(
        self, number: int, plan: Any, ctx: Any, time_model: TimeModel, bar: Any, report: ReportRung
    ) -> TrialResult:
        self.calls.append(number)
        figures = self.lookup(plan)
        if figures is None:
            return TrialResult(number, error=FAILED)
        accuracy, p50, size = figures
        if bar and self.faithful(plan) and (by := bar.dominator(p50, size)) is not None:
            info = {"skipped_training": True, "dominated_by": by.number, "latency_cache": "miss"}
            return TrialResult(number, metrics={"latency_p50_ms": p50, "size_mb": size}, info=info)
        metrics = {"accuracy": accuracy, "latency_p50_ms": p50, "size_mb": size, "params": 0.0}
        return TrialResult(number, metrics=metrics, onnx=self.onnx, info={"skipped_training": False})


@dataclass(frozen=True)
class Step:
    """One proposal as the loop answered it."""

    number: int
    asks: int  # proposals this replay had asked for when this one was answered (this one included)
    key: str  # the plan's identity: its params as the study keeps them
    kind: str  # "trained" (run by the trial; its figures below), "failed", "stopped" (the gate) or "reused"
    figures: Figures = None
    reuse_of: int | None = None


@dataclass
class Replay:
    """What a replay did: every step in order, and the study it left."""

    steps: list[Step]
    study: optuna.Study
    summary: SweepSummary

    def ran(self) -> list[Step]:
        """The steps the trial function ran (a training each in a real sweep): trained and failed."""
        return [s for s in self.steps if s.kind in ("trained", "failed")]

    def distinct(self) -> list[Step]:
        """The first run of each plan, in order (a failed plan is run again when proposed again, as a sweep does)."""
        seen: set[str] = set()
        return [s for s in self.ran() if not (s.key in seen or seen.add(s.key))]


# Decides, after each step, whether the replay has seen enough.
Enough = Callable[[list[Step]], bool]


class _Recorder:
    """Listens to the loop: keeps each step, and ends the loop once `enough` says so."""

    def __init__(self, enough: Enough | None, key: Callable[[dict[str, Any]], str]) -> None:
        self.enough, self.key, self.steps = enough, key, []
        self.params: dict[int, dict[str, Any]] = {}  # each trial's plan, as drawn (see `drawer`)

    def drawer(self, plan_of: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
        """`plan_of`, noting each plan's params by trial number (reading them back from the study costs a scan)."""

        def draw(trial: optuna.Trial) -> Any:
            plan = plan_of(trial)
            self.params[trial.number] = plan.params()
            return plan

        return draw

    def trial_told(self, loop: Loop, told: Told) -> None:
        if told.taken_over:
            return
        result, asks, key = told.result, loop.ledger.asks, self.key(self.params[told.number])
        if not result.ok:
            step = Step(told.number, asks, key, "failed")
        elif result.info.get("dominated_by") is not None or result.info.stopped_at_rung is not None:
            step = Step(told.number, asks, key, "stopped")  # by the gate before training, or at a rung
        else:
            m = result.metrics
            step = Step(told.number, asks, key, "trained", (m["accuracy"], m["latency_p50_ms"], m["size_mb"]))
        self._add(loop, step)

    def trial_reused(self, loop: Loop, number: int, rec: TrialRecord) -> None:
        kind = "stopped" if rec.dominated_by is not None or rec.info.stopped_at_rung is not None else "reused"
        self._add(loop, Step(number, loop.ledger.asks, self.key(rec.plan), kind, reuse_of=rec.reuse_of))

    def _add(self, loop: Loop, step: Step) -> None:
        self.steps.append(step)
        if self.enough is not None and self.enough(self.steps):
            # The loop has no "stop now" of its own: the replay's ledger (_Capped) is done once its cap is reached.
            loop.ledger.cap = 0


def plan_key(params: dict[str, Any]) -> str:
    """A plan's identity: its params as canonical JSON, as search/ledger.py compares plans."""
    return ledger_key(params)


def experiment(
    folder: Path,
    *,
    sampler: str,
    seed: int,
    trials: int,
    gate: bool,
    parallel: int = 1,
    settings: dict[str, Any] | None = None,
) -> Experiment:
    """A replay's experiment: the digits quickstart's defaults (the task is never loaded), its study and outputs in
    `folder`, every model feasible (a replay's table decides what counts), the gate on or off; `settings` are
    merged in, section by section (e.g. {"search": {"early_stopping": {...}}} for training in rungs)."""
    return parse(
        _merged(
            {
                "name": "replay",
                "objectives": OBJECTIVES,
                "constraints": {"max_accuracy_drop": 100.0},
                "search": {
                    "sampler": sampler,
                    "trials": trials,
                    "parallel": parallel,
                    "seed": seed,
                    "skip_dominated": gate,
                    "max_retries": 0,
                },
                "output_dir": str(folder),
            },
            settings or {},
        ),
        "replay",
    )


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in, mappings key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def replay(
    trial: TrialFn,
    plan_of: Callable[[optuna.Trial], Any],
    *,
    teacher_accuracy: float,
    n_val: int,
    sampler: str | optuna.samplers.BaseSampler = "tpe",
    seed: int = 0,
    trials: int = 100,
    gate: bool = True,
    max_asks: int = 1000,
    enough: Enough | None = None,
    key: Callable[[dict[str, Any]], str] = plan_key,
    listeners: Sequence[Any] = (),
    folder: Path | None = None,
    storage: str = "memory",
    settings: dict[str, Any] | None = None,
    sweep_budget: bool = False,
) -> Replay:
    """Run the driver's loop with `trial` answering each plan `plan_of` draws, until `enough` (after any step) or
    `max_asks` proposals. `sampler`: a name of search/samplers.py (built for a sweep of `trials` trials, as a
    sweep builds it) or a sampler object. `storage`: "sqlite", the sweep's own (search/study.py open_study: SQLite
    in `folder`, a temporary folder if None), or "memory", Optuna's in-memory storage behind the same loop: the
    loop's rules read the study through Optuna's storage API alone, and a replay of thousands of proposals spends
    most of its time in SQLite's commits otherwise (tests/test_replay.py shows both give the same steps).
    `settings`: more of the experiment (see `experiment`); with `sweep_budget`, the replay also ends at the
    experiment's budget as a sweep would (search.trials or search.budget), in its unit."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    quiet = logging.getLogger("slimsweep.sweep")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the loop's notes on reuse and the gate, thousands of them; restored below
    own_folder = folder is None
    folder = Path(tempfile.mkdtemp(prefix="slimsweep-replay-", dir=fast_disk())) if folder is None else folder
    try:
        named = sampler if isinstance(sampler, str) else "random"
        exp = experiment(folder, sampler=named, seed=seed, trials=trials, gate=gate, settings=settings)
        study = open_study(exp) if storage == "sqlite" else _in_memory(exp)
        if not isinstance(sampler, str):
            study.sampler = sampler
        executor = InProcessExecutor(exp.target.spec(), trial=trial, slots=1, timer=no_timer)
        recorder = _Recorder(enough, key)
        driver = new_driver_id()
        loop = Loop(
            exp,
            executor,
            study,
            offline_tracker(),
            SweepSummary(),
            teacher={"accuracy": teacher_accuracy},
            ctx_ref=None,
            driver=driver,
            ledger=_ledger(exp, study, max_asks, sweep_budget),
            n_val=n_val,
            listeners=[recorder, *listeners],
            plan_of=recorder.drawer(plan_of),
        )
        with Heartbeat(study, driver, exp.search.heartbeat_s):
            loop.run()
        return Replay(recorder.steps, study, loop.summary)
    finally:
        quiet.setLevel(level)
        if own_folder:
            shutil.rmtree(folder, ignore_errors=True)


def _ledger(exp: Experiment, study: optuna.Study, cap: int, sweep_budget: bool) -> _Capped:
    """The sweep's ledger (search/sweep.py builds it the same way), capped at `cap` proposals; without the
    sweep's budget, the cap is its only budget."""
    unit, amount = exp.search.compute_budget() if sweep_budget else ("trainings", float(cap))
    return _Capped(amount, list(study.directions), unit=unit, trials=exp.search.trials, cap=cap)


def _in_memory(exp: Experiment) -> optuna.Study:
    """The experiment's study as open_study creates it, in Optuna's in-memory storage."""
    if exp.search.storage is not None:
        raise ConfigError(f"search.storage: a replay in memory takes none, got {exp.search.storage!r}")
    study = optuna.create_study(
        directions=[METRIC_DIRECTIONS[o] for o in exp.objectives],
        sampler=make_sampler(exp.search.sampler, exp.search.seed, exp.search.trials),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # as open_study does
        study.set_metric_names(list(exp.objectives))
    return study


@dataclass
class _Capped(Ledger):
    """The sweep's ledger with a cap on this replay's proposals: a replay ends at its budget (by default none but the
    cap), at the cap, or when `enough` sets the cap to 0."""

    cap: int = 0

    def done(self) -> bool:
        return self.asks >= self.cap or super().done()

    def wanted(self) -> int:
        return 0 if self.asks >= self.cap else super().wanted()


@functools.cache
def offline_tracker() -> Tracker:
    """One offline Tracker for every replay of this process, as a sweep run with --no-tracking has: it writes
    nothing, and the loop reads a repeat's ONNX file from the trials folder, never from MLflow. Its address is one
    that never resolves (an offline tracker opens no store), and MLflow's process-wide tracking URI is left as it
    was."""
    previous = mlflow.get_tracking_uri()
    try:
        return Tracker("http://mlflow.invalid", "replay", Path(tempfile.gettempdir()), offline=True)
    finally:
        mlflow.set_tracking_uri(previous)


def no_timer(model: bytes, settings: Any) -> Any:
    raise AssertionError("a replay times nothing: its trial answers from the table")


def fast_disk() -> str | None:
    """A memory-backed folder for the study where there is one: thousands of SQLite commits."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and _writable(shm) else None


def _writable(folder: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


class Shuffled(optuna.samplers.BaseSampler):
    """Random search without replacement: each new trial gets the next plan of a seeded shuffle of `plans` (the
    Optuna params that draw each one), so every proposal is a plan not proposed before until all have been; past
    the end, knobs are drawn at random. With seed None, the plans come in the order given (tests script a replay)."""

    def __init__(self, plans: Sequence[dict[str, Any]], seed: int | None) -> None:
        self.order = list(plans)
        if seed is not None:
            random.Random(seed).shuffle(self.order)
        self.given: dict[int, dict[str, Any]] = {}
        self.fallback = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: Any, name: str, distribution: Any) -> Any:
        if trial.number not in self.given and len(self.given) < len(self.order):
            self.given[trial.number] = self.order[len(self.given)]
        plan = self.given.get(trial.number, {})
        if name in plan:
            return plan[name]
        return self.fallback.sample_independent(study, trial, name, distribution)
