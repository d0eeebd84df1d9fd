"""The driver's loop: ask Optuna for a plan, run it on an executor, tell the result; resumable at any point.

One trial's way through the loop, each step a method of `Loop`:
  ask     -> `_draw`: a plan from Optuna, owned by this driver; one past the budget gives way. While trials run,
             `_ask_ahead` draws the next free slot's plan and submits it at once, queued at the executor behind the
             trials in flight, so a slot that frees starts it without waiting for the driver to receive and tell
             the result before (`_queueable`: only where `parallel` fills the executor's slots, and not a plan a
             trial in flight may answer, its own student at its pruning ratio or none: that one waits for the
             result). A queued plan is gated by the bar posted once the result it waited behind was told.
  reuse   -> `_answered`, with search/reuse.py: an identical plan already answered is told that answer, not run
             (one drawn ahead at once, and the next plan drawn in its place).
  gate    -> `gate_bar`: the trained models a new plan's untrained structure must not be slower and larger than
             (search/gate.py); the trial stops before training (PRUNED, no trial of the budget) if it is.
  run     -> `executor.submit`; rung reports come back on the way (`_rungs`: a listener may stop the trial there).
  retry   -> `_run_again`: a machinery failure runs the same plan again, up to search.max_retries.
  tell    -> `_tell`: ONNX on disk, then Optuna (the state of record).
  made    -> `_record_made`: models made on the way become trials of their own (search/ontheway.py), outside the
             budget, once the next plans are submitted (their SQLite writes are off the trials' path).
The budget's counts live in one `Ledger` (search/ledger.py). What happens around the loop (the MLflow mirror,
progress, the station's timings) listens to its events: trial_told, trial_reused, made_on_the_way, caught_up
(the next plans are submitted), rung, stopping."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from evaluators.errors import SlimsweepError
from search.budget import Spending
from search.config import Experiment
from search.dispatch import MACHINERY, Executor, Report, Running
from search.gate import Bar, bar
from search.interrupts import Held
from search.ledger import Ledger, plan_key
from search.ontheway import plan_on_the_way, record_on_the_way
from search.reuse import answer_from, still_answers
from search.rungs import RungRule
from search.study import TrialRecord, give_way, keep_latency, own, read, record, requeue, stale, still_ours
from search.telling import record_metrics, write_onnx
from search.tracking import Tracker
from search.trial import TrialResult
from spaces.plan import sample

log = logging.getLogger("slimsweep.sweep")

# The objectives the gate compares: a structure's p50 and size are known untrained; other latency percentiles and
# parameter counts are not what it compares, so with those objectives every plan trains.
GATED_OBJECTIVES = {"accuracy", "latency_p50_ms", "size_mb"}
# Plans drawn at most while trials run, repeats answered on the way (each a sampler ask and a few commits).
ASK_AHEAD_DRAWS = 8


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
    compute: Spending | None = None  # the compute the study spent (search/budget.py), every driver's trials


@dataclass
class InFlight:
    """A trial this driver asked for and runs: its Optuna trial, its plan, and the attempts the machinery lost."""

    trial: optuna.Trial
    plan: Any  # spaces.plan.CompressionPlan
    params: dict[str, Any]
    describe: str
    running: Running
    attempts: list[str] = field(default_factory=list)  # machinery failures of earlier attempts

    @property
    def number(self) -> int:
        return self.trial.number


@dataclass(frozen=True)
class Told:
    """One result as the loop told it: its words, its metrics, and whether an MLflow run is owed for it."""

    number: int
    result: TrialResult
    describe: str
    metrics: dict[str, float]
    owed: bool
    taken_over: bool = False  # another driver queued the plan again; its copy counts and says so


class Listener(Protocol):
    """What listens to the loop; every method is optional (the loop calls those a listener has)."""

    def trial_told(self, loop: Loop, told: Told) -> None: ...
    def trial_reused(self, loop: Loop, number: int, rec: TrialRecord) -> None: ...
    def made_on_the_way(self, loop: Loop, number: int) -> None: ...
    def caught_up(self, loop: Loop) -> None: ...
    def rung(self, loop: Loop, report: Report) -> bool: ...  # False: stop the trial at this rung
    def tick(self, loop: Loop, asked: bool) -> None: ...
    def stopping(self, loop: Loop, interrupted: bool) -> None: ...


@dataclass
class Loop:
    """The ask/run/tell loop and its state."""

    exp: Experiment
    executor: Executor
    study: optuna.Study
    tracker: Tracker
    summary: SweepSummary
    teacher: dict[str, float]
    ctx_ref: Any
    driver: str
    ledger: Ledger
    n_val: int = 0  # validation images: the accuracy's noise, for the gate
    listeners: list[Any] = field(default_factory=list)
    # How a plan is drawn from a trial: the experiment's space by default; a replay over another kind of table
    # (benchmarks/) passes its own (the plan needs params() and describe(), and its executor's trial runs it).
    plan_of: Callable[[optuna.Trial], Any] | None = None
    flights: dict[int, InFlight] = field(default_factory=dict)  # this driver's trials in flight, by number
    stops: dict[int, Any] = field(default_factory=dict)  # trials told to stop at a rung: the answer that stopped them
    ready: list[tuple[optuna.Trial, Any]] = field(default_factory=list)  # asked ahead while trials run (`_ask_ahead`)
    # Whether to ask ahead; None: where trials run beside the driver (an executor without `on_report`, as Ray's).
    ask_ahead: bool | None = None
    # Told trials whose models made on the way are not recorded yet: parent, result, where it ran (`_record_made`).
    made_later: list[tuple[optuna.Trial, TrialResult, dict[str, Any]]] = field(default_factory=list)
    # Ctrl-C waits for a step that would otherwise leave a trial known to no one (asked, or out of flight untold).
    held: Held = field(default_factory=Held)

    def emit(self, event: str, *args: Any) -> list[Any]:
        """Call `event` on every listener that has it; their answers."""
        return [getattr(lst, event)(self, *args) for lst in self.listeners if hasattr(lst, event)]

    def slots(self) -> int:
        """More trials in flight than the executor's slots would only queue there; nodes come and go mid-sweep."""
        return max(1, min(self.exp.search.parallel, self.executor.trial_slots()))

    def run(self) -> None:
        """Keep `parallel` trials in flight until the study's budget is finished (counting every driver's trials);
        Ctrl-C or any error queues the ones in flight again."""
        heartbeat_s = self.exp.search.heartbeat_s
        if hasattr(self.executor, "on_report"):  # an executor that runs trials inside wait() asks between rungs
            self.executor.on_report = self._rungs
        if self.exp.search.early_stopping.rungs and not any(isinstance(x, RungRule) for x in self.listeners):
            gated = set(self.exp.objectives) <= GATED_OBJECTIVES
            self.listeners.append(RungRule.for_experiment(self.exp, self.teacher["accuracy"], dominance=gated))
        self.summary.parallel = self.slots()
        with self.held.installed():
            self._run(heartbeat_s)

    def _run(self, heartbeat_s: float) -> None:
        next_check = time.monotonic()  # at once: a driver that died here before this one started left trials
        try:
            while True:
                if time.monotonic() >= next_check:  # a driver that died meanwhile: its trials run again here
                    # Never its own: this driver is alive, whatever a late heartbeat (a busy database) says.
                    mine = set(self.flights) | {trial.number for trial, _ in self.ready}
                    gone = [n for n in stale(self.study, heartbeat_s) if n not in mine]
                    with self.held.step():
                        self.summary.requeued += requeue(self.study, gone)
                    next_check = time.monotonic() + heartbeat_s
                asks = (self.ledger.asks, len(self.ready))
                self._fill()
                self.emit("tick", (self.ledger.asks, len(self.ready)) != asks)  # a plan asked or started
                if not self.flights:
                    self.ledger.sync(self.study)
                    if self.ledger.done():
                        self._give_back()
                        break
                    time.sleep(1.0)  # the rest of the budget runs at another driver; wait for it, or for it to die
                    continue
                self._ask_ahead()  # the driver is idle until a result arrives: the next plan's ask is off its path
                results = self.executor.wait([f.running for f in self.flights.values()], timeout=1.0)
                self._rungs()
                told: list[Told] = []
                # Every result of this wait is told before a Ctrl-C is raised, and before the listeners (the MLflow
                # mirror) hear of any: a Ctrl-C there would otherwise drop the results not yet told, run again later.
                with self.held.step():
                    for item, result in results:
                        flight = self.flights.pop(item.number)
                        if self._run_again(flight, result):
                            continue
                        # When the driver let it go and got it back, beside the worker's own stamps
                        # (benchmarks/stages.py)
                        result.info.setdefault("clock", {}).update(submitted=item.submitted, received=time.time())
                        told.append(self._tell(flight, result))
                    if results:
                        self._promote()
                # Before the mirror: a trial queued behind these compares soon, and waits for their numbers (told,
                # or run again after a machinery failure).
                if results and hasattr(self.executor, "post_bar"):
                    self.executor.post_bar(self.gate_bar(), [item.number for item, _ in results])
                for told_now in told:
                    self.emit("trial_told", told_now)
                if told:  # the next plans start first: what follows (models made on the way, MLflow) is off their path
                    self._fill(synced=True)
                    # And the plan after them is queued: a short trial (one the gate stops) may end before the
                    # driver is back from the work below. The sampler sees the models made on the way at the next ask.
                    self._ask_ahead()
                    self._record_made()
                    self._keep_timings()
                    self.emit("caught_up")
        except KeyboardInterrupt:
            self._leave(interrupted=True)
            self.summary.interrupted = True
        except BaseException:
            self._leave(interrupted=False)  # the caller closes the parent run
            raise

    # --- ask ----------------------------------------------------------------------------------------------------

    def _fill(self, *, synced: bool = False) -> None:
        """Start plans until `slots` trials are in flight or the budget is spoken for: a plan asked ahead first (it
        counts as in flight already), then new asks. `synced`: the ledger has just read the study (a tell did)."""
        parallel = self.slots()
        if not synced:
            self.ledger.sync(self.study)
        while len(self.flights) < parallel and (self.ready or self.ledger.wanted() > 0):
            with self.held.step():
                ahead = bool(self.ready)
                drawn = self.ready.pop(0) if self.ready else self._draw()
                if drawn is not None and ahead and not self._still_to_run(drawn[0]):
                    drawn = None
                if drawn is not None:
                    self._start(*drawn)
            if len(self.flights) < parallel:  # another plan to start: what changed meanwhile (a full read's cost
                self.ledger.sync(self.study)  # on the next trial's path is spared once the slots are full)

    def _still_to_run(self, trial: optuna.Trial) -> bool:
        """Whether a plan asked ahead may start now: another driver may have queued it again meanwhile (this one's
        heartbeat late), and with another driver's trials since, the budget may hold no more plans: then this one,
        not yet training, gives way, whatever its number (past_budget picks the newest, maybe already training)."""
        if not still_ours(self.study, trial):
            log.warning("trial %d, asked ahead, was taken over by another driver; not started here", trial.number)
            return False
        if self.ledger.room() < 0:
            give_way(self.study, trial)
            return False
        return True

    def _ask_ahead(self) -> None:
        """While trials run, ask for the plan the next free slot will take (TPE's ask costs tens of ms and grows with
        the study): one at a time, only when the budget holds a plan beyond those in flight, and only where trials
        run beside the driver (an executor that runs them inside wait() would sample without the last result)."""
        beside = self.ask_ahead if self.ask_ahead is not None else not hasattr(self.executor, "on_report")
        if not beside or self.ready or len(self.flights) != self.slots():  # one plan ahead: none yet, none queued
            return
        self.ledger.sync(self.study)
        # A repeat of a plan already answered is answered now, off the next trial's path, and the sampler asks again;
        # ASK_AHEAD_DRAWS times at most here: results in flight wait to be told, and rung reports answered, meanwhile.
        for _ in range(ASK_AHEAD_DRAWS):
            with self.held.step():
                if self.ledger.wanted() <= 0 or (drawn := self._draw()) is None:
                    return
                if not self._answered(*drawn):
                    if self._queueable(drawn[1]):
                        self._submit(*drawn, queued=True)
                    else:
                        self.ready.append(drawn)
                    return

    def _queueable(self, plan: Any) -> bool:
        """Whether a plan asked ahead may wait at the executor to start the moment a slot frees: only where the
        executor holds it until then (Ray would start it at once on a slot that `parallel` leaves free), and only
        when no trial in flight may answer it: a trial of the same student answers plans of its own pruning ratio
        or none, in any scheme (itself, and the models made on its way: search/ontheway.py), and with
        space.pruning.from_trained its kept student spares this plan's distillation."""
        if not hasattr(self.executor, "started") or self.exp.search.parallel < self.executor.trial_slots():
            return False
        student = _student_of(plan)
        for f in self.flights.values():
            if _student_of(f.plan) != student:
                continue
            ratio, theirs = getattr(plan, "pruning", None), getattr(f.plan, "pruning", None)
            if ratio is None or theirs is None or self.exp.space.pruning.from_trained:
                return False
            if ratio.ratio in (0.0, theirs.ratio):
                return False
        return True

    def _promote(self) -> None:
        """Queued trials start as slots free, oldest first: their time limit counts from now. One that another
        driver took over meanwhile, or that the budget no longer holds, is stopped here instead."""
        busy = sum(not f.running.queued for f in self.flights.values())
        for flight in [f for f in self.flights.values() if f.running.queued]:
            if busy >= self.slots():
                return
            if not flight.attempts and not self._still_to_run(flight.trial):
                self.executor.cancel([flight.running])
                del self.flights[flight.number]
                continue
            if hasattr(self.executor, "started"):
                self.executor.started(flight.running)
            flight.running.queued = False
            busy += 1

    def _give_back(self) -> None:
        """Plans asked ahead and never started: PRUNED, counting nowhere (as an ask past the budget); its sampled
        knobs stay on the trial, which a sampler reads as a poor region, so only a sweep at its end gives one back."""
        while self.ready:
            with self.held.step():
                give_way(self.study, self.ready[0][0])
                self.ready.pop(0)

    def _draw(self) -> tuple[optuna.Trial, Any] | None:
        """Ask Optuna for a trial and its plan; None when that ask takes the study past its budget."""
        trial = self.study.ask()
        own(self.study, trial, self.driver)
        self.ledger.sync(self.study)
        if self.ledger.past_budget(trial.number):
            give_way(self.study, trial)  # another driver asked for the last trial at the same moment
            return None
        self.ledger.asks += 1
        return trial, self.plan_of(trial) if self.plan_of is not None else sample(trial, self.exp.space)

    def _start(self, trial: optuna.Trial, plan: Any) -> None:
        """Answer a plan already run from its result, else submit it (unless the budget was spent meanwhile)."""
        if self.ledger.past_budget(trial.number):
            give_way(self.study, trial)  # asked ahead, and the trials since spent the budget (a compute budget)
            return
        if not self._answered(trial, plan):
            self._submit(trial, plan)

    def _submit(self, trial: optuna.Trial, plan: Any, *, queued: bool = False) -> None:
        """Hand a new plan to the executor (`_hand`) and keep it in flight."""
        running = self._hand(trial.number, plan, queued=queued)
        self.flights[trial.number] = InFlight(trial, plan, plan.params(), plan.describe(), running)

    def _hand(self, number: int, plan: Any, *, queued: bool) -> Running:
        """Submit one attempt, gated by the bar of the trials trained so far; `queued`: behind the trials in flight,
        started by `_promote` when a slot frees."""
        behind = [f.running for f in self.flights.values()] if queued else None
        running = self.executor.submit(number, plan, self.ctx_ref, self.gate_bar(), behind)
        running.queued = queued
        return running

    def _answered(self, trial: optuna.Trial, plan: Any) -> bool:
        """Answer a plan already run (or stopped) from its earlier trial's result; False when it has to run."""
        params, describe = plan.params(), plan.describe()
        if self.made_later and plan_key(params) in self._made_plans():
            self._record_made()  # a model made on the way answers this plan: recorded now, it is not trained again
            self.ledger.sync(self.study)
        bar_now = self.gate_bar()
        earlier, dominated_by = still_answers(self.ledger.reusable(self.study, params), bar_now)
        if earlier is not None and not self._stop_holds(earlier):
            earlier = None  # stopped at a rung under settings or floors that would not stop it today: run it
        if earlier is not None:
            try:
                rec = answer_from(self.exp, self.study, self.tracker, trial, params, describe, earlier, dominated_by)
            except SlimsweepError as err:  # its ONNX file is on another machine and MLflow cannot give it: run it
                log.warning(
                    "trial %d: not answered from trial %d (%s); running its plan", trial.number, earlier.number, err
                )
                earlier = None
        if earlier is None:
            return False
        if rec.dominated_by is None:
            self.summary.reused_now += 1
        self.ledger.sync(self.study)
        self.emit("trial_reused", trial.number, rec)
        return True

    def gate_bar(self) -> Bar | None:
        """What a new plan must not be slower and larger than (search/gate.py), from the trials trained so far."""
        if not self.exp.search.skip_dominated or not set(self.exp.objectives) <= GATED_OBJECTIVES:
            return None
        # Only a feasible model may stop others: one that breaks a constraint is no pick and no front member.
        return bar(self.ledger.trained, self.teacher["accuracy"], self.n_val)

    # --- run ----------------------------------------------------------------------------------------------------

    def _rungs(self) -> None:
        """Pass trials' rung reports to the listeners and answer each: a trial any of them would stop stops there
        (the first stopping answer is kept for its record)."""
        for report in self.executor.reports():
            stops = [a for a in self.emit("rung", report) if not a] if report.number in self.flights else []
            if stops:
                self.stops[report.number] = stops[0]
            self.executor.decide(report.number, report.rung, not stops)

    def _run_again(self, flight: InFlight, result: TrialResult) -> bool:
        """After a machinery failure, start the same plan again if retries are left; a plan's own error never is."""
        kind = result.info.get(MACHINERY)
        if kind is None:
            return False
        flight.attempts.append(f"{kind}: {result.error}")
        retries = self.exp.search.max_retries
        if len(flight.attempts) > retries:
            result.error = f"{kind}: failed {len(flight.attempts)} attempts, the last: {result.error}"
            return False
        log.warning(
            "trial %d: %s; running the same plan again (attempt %d of %d)",
            flight.number,
            result.error,
            len(flight.attempts) + 1,
            retries + 1,
        )
        self.summary.retried += 1
        # Every slot taken (a plan queued for the slot this attempt freed counts): it waits behind them, and
        # `_promote` starts its time limit when a slot frees; else it starts now.
        flight.running = self._hand(flight.number, flight.plan, queued=len(self.flights) >= self.slots())
        self.flights[flight.number] = flight
        return True

    # --- tell ---------------------------------------------------------------------------------------------------

    def _tell(self, flight: InFlight, result: TrialResult) -> Told:
        """Record one result: ONNX on disk first, then Optuna (the state of record)."""
        number, trial = flight.number, flight.trial
        if not still_ours(self.study, trial):
            # Another driver thought this one gone (its heartbeat was late) and queued the plan again: that copy counts.
            log.warning("trial %d was taken over by another driver; its result here is dropped", number)
            self.ledger.sync(self.study)
            return Told(number, result, flight.describe, {}, False, taken_over=True)
        info = dict(result.info)
        if flight.attempts:
            info["machinery_attempts"] = flight.attempts  # earlier attempts the machinery lost
        rec = TrialRecord(plan=flight.params, describe=flight.describe, stages=result.stages, info=info)
        owed = True
        if not result.ok:
            rec.failure, rec.traceback = result.error or "unknown error", result.traceback
            record(self.study, trial, rec)
        elif rec.dominated_by is not None or rec.info.stopped_at_rung is not None:
            # Stopped before training (the gate) or at a rung: the structure's latency and size, the accuracy so far
            # at a rung; nothing to deploy.
            rec.metrics = dict(result.metrics)
            verdict = self.stops.pop(number, None)
            if rec.info.stopped_at_rung is not None and verdict is not None:
                for kept in (rec.info, result.info):  # the record, and what the listeners are told
                    kept.stopped_by = getattr(verdict, "stopped_by", None)
                    kept.stop_reason = getattr(verdict, "reason", "") or "a listener of the loop stopped it"
            record(self.study, trial, rec)
            # Not an MLflow run: a sweep may stop many such plans, which would crowd the runs list; the parent counts
            # them and the study keeps each with its reason.
            owed = False
            self.made_later.append((trial, result, info))  # stopped in pruning's recovery: its trained student counts
        else:
            rec.metrics = dict(result.metrics, accuracy_drop=self.teacher["accuracy"] - result.metrics["accuracy"])
            write_onnx(self.exp, number, result.onnx or b"")
            record_metrics(self.exp, self.study, trial, rec)
            self.made_later.append((trial, result, info))
        if owed:
            self.summary.ran_now += 1
        self.ledger.sync(self.study)
        return Told(number, result, flight.describe, rec.metrics, owed)

    def _stop_holds(self, earlier: Any) -> bool:
        """Whether an earlier trial still answers a repeat: one stopped at a rung does only while today's rule
        would stop it there too (early stopping may be off now, or its margins or floors changed)."""
        rec = read(earlier)
        if rec.info.stopped_at_rung is None or earlier.state != TrialState.PRUNED:
            return True
        rule = next((x for x in self.listeners if isinstance(x, RungRule)), None)
        return rule is not None and rule.still_stops(rec.metrics, rec.info.stopped_at_rung, self.ledger.trained)

    def _record_made(self) -> None:
        """Record the models made on the way of the trials told since the last call (after the next submits)."""
        while self.made_later:
            self._made_on_the_way(*self.made_later.pop(0))

    def _made_plans(self) -> set[str]:
        """The plans (as `plan_key`s) that the models made on the way, not yet recorded, answer."""
        made = [(parent, m) for parent, result, _ in self.made_later for m in result.on_the_way]
        try:
            drawn = [plan_on_the_way(self.exp, parent, m) for parent, m in made]
            return {plan_key(d[1].params()) for d in drawn if d is not None}
        except Exception as err:  # noqa: BLE001 - an extra candidate's plan unknown must not stop the sweep
            log.warning("the plans of models made on the way could not be read (%s)", err)
            return set()

    def _made_on_the_way(self, parent: optuna.Trial, result: TrialResult, info: dict[str, Any]) -> None:
        """Record the models the trial made on its way, each a trial outside the budget."""
        where = {k: info[k] for k in ("ray_node", "cores", "resources") if k in info}  # made where its trial ran
        for made in result.on_the_way:
            try:
                with self.held.step():  # its trial opens RUNNING: a Ctrl-C waits until it is recorded
                    number = record_on_the_way(
                        self.exp, self.study, self.ledger, self.driver, self.teacher["accuracy"], parent, made, where
                    )
            except Exception as err:  # noqa: BLE001 - an extra candidate lost must not stop the sweep
                log.warning("trial %d: a model made on its way was not recorded (%s)", parent.number, err)
                continue
            if number is not None:
                self.emit("made_on_the_way", number)

    def _keep_timings(self) -> None:
        """Keep the station's new measurements with the study (a resumed sweep reuses them)."""
        try:
            keep_latency(self.study, self.executor.new_latencies())
        except Exception as err:  # noqa: BLE001 - the executor or the storage may be what failed; the sweep goes on
            log.warning("the latest timings were not kept with the study: %s", err)

    # --- stop ---------------------------------------------------------------------------------------------------

    def _leave(self, *, interrupted: bool) -> None:
        """A driver stopping: keep the station's newest timings, tell the listeners (the mirror says which trials
        MLflow lacks), cancel this driver's trials in flight and queue their plans again (and those asked ahead)."""
        self._keep_timings()
        # A plan asked ahead is queued again as one in flight is: it runs when the sweep resumes, as it would have.
        numbers = list(self.flights) + [trial.number for trial, _ in self.ready]
        self.ready.clear()
        try:
            self.executor.cancel([f.running for f in self.flights.values()])
        finally:
            self.flights.clear()
            requeue(self.study, numbers)
            try:
                self._record_made()  # told trials' extra candidates; one that fails to record is only logged
            finally:
                self.emit("stopping", interrupted)


def _student_of(plan: Any) -> str:
    """The student a plan trains, as a key (a plan without one, a table's row, is its own student)."""
    student = getattr(plan, "student", None)
    return plan_key(student.params() if student is not None else plan.params())
