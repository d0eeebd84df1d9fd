"""Ray dispatch: trials run as Ray tasks on a local Ray or a cluster; the driver keeps all state. RayExecutor is
search.dispatch.Executor's implementation for users' sweeps."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import re
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import ray

from evaluators.compare import CompareSettings, Comparison
from evaluators.errors import ConfigError
from evaluators.latency import LatencyStats, TimingSettings
from evaluators.targets import TargetSpec, make_target
from search.dispatch import MACHINERY, Report, Running
from search.gate import Bar
from search.raystart import start_ray
from search.rungboard import TAKE_WAIT_S, WATCH_S, NewestBar, ask, start_board
from search.station import free_cores, start_station
from search.trial import TrialContext, TrialResult, run_trial

log = logging.getLogger(__name__)


def _run_on_node(
    number: int,
    plan: Any,
    ctx: TrialContext,
    station: Any,
    where: tuple[str, list[int]],
    threads: int = 1,
    bar: Bar | None = None,
    board: Any = None,
    token: int = 0,
    bar_seq: int = -1,
    behind: float | None = None,
    waited: tuple[int, ...] = (),
) -> TrialResult:
    """run_trial on a worker: off the station's cores, training on the CPUs it asked for, timing through the
    station, reporting its rungs at the driver's board (search/rungboard.py) and gated by the newest bar posted
    there (`bar_seq`: the one it was submitted with), noting the node. `behind`: the board's `settled` result
    (when it let this queued trial go), which Ray waits for before it starts the task; None when not queued;
    `waited`: the numbers of the trials it was queued behind."""
    began = time.time()
    free_cores(*where)  # the driver's latest view of the station's place (RayExecutor._refresh_where)
    if threads != ctx.train_threads:
        ctx = dataclasses.replace(ctx, train_threads=threads)  # a shallow copy: the data stays the shared one

    def time_model(model: bytes):
        return _at_station(lambda: station.measure.remote(model, ctx.timing))

    # This execution's own id: Ray runs a task again after a lost worker with the same arguments, and the retry
    # must not read a verdict meant for the execution before it.
    attempt = f"{token}:{uuid.uuid4().hex}"

    def report(rung: int, metrics: dict[str, float]) -> bool:
        return ask(board, attempt, token, Report(number, rung, dict(metrics)))

    # Only a queued trial's bar can be older than the driver's: one started at once was submitted with the newest.
    queued = board is not None and bar is not None and waited
    gate = NewestBar(board, bar_seq, bar, list(waited)) if queued else bar
    result = run_trial(number, plan, ctx, time_model, gate, report if board is not None else None)
    result.info["clock"] = {"worker_began": began, "worker_ended": time.time()}  # benchmarks/stages.py
    if behind is not None:
        result.info["clock"]["released"] = behind
    result.info["ray_node"] = ray.get_runtime_context().get_node_id()
    result.info["cores"] = sorted(os.sched_getaffinity(0))
    result.info["resources"] = ray.get_runtime_context().get_assigned_resources()  # what Ray reserved for it
    return result


def _warm() -> None:
    """Nothing: a worker that runs it has imported this module (torch, the trial code) and stays in Ray's pool."""


# How long the teacher's timing waits for the warm-up workers' imports (seconds each) before it times anyway.
WARM_WAIT_S = 60.0
# How long a trial waits for its bench station to come back when the station's node died: Ray notices a dead node
# after some 15-30 s and restarts the station (max_restarts) on a live one. A station lost is not the plan's fault.
STATION_GRACE_S = 180.0
# How often the driver asks the station where it runs (it moves when Ray restarts it on another node).
WHERE_EVERY_S = 10.0


def _at_station(call: Callable[[], Any], grace_s: float = STATION_GRACE_S) -> Any:
    """ray.get of a station call, called again while the station is down and being restarted elsewhere."""
    deadline, pause = time.monotonic() + grace_s, 1.0
    while True:
        try:
            return ray.get(call())
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.ActorDiedError):
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


def ray_failure(number: int, exc: BaseException) -> TrialResult:
    """A failed result for a task Ray could not run: its kind and cause in one line, Ray's whole report kept."""
    cause = getattr(exc, "cause", None) or exc.__cause__
    if cause is not None and cause is not exc:
        error = f"{type(exc).__name__}: {type(cause).__name__}: {_first_line(cause)}"
    else:
        error = f"{type(exc).__name__}: {_first_line(exc)}"
    # Ray's message holds the worker's own traceback (RayTaskError) or why the worker or node went away.
    result = TrialResult(number=number, error=error, traceback=_ANSI.sub("", "".join(traceback.format_exception(exc))))
    kind = machinery_kind(exc)
    if kind is not None:
        result.info[MACHINERY] = kind
    return result


def machinery_kind(exc: BaseException) -> str | None:
    """The kind of machinery failure behind a Ray error (a dead worker or node, memory), or None when the plan's
    own code raised (RayTaskError): that is the plan's failure, not the machinery's."""
    errors = ray.exceptions
    if isinstance(exc, errors.RayTaskError):
        # Raised inside the task (a runtime the plan's model crashed included), but for a queued trial's wait at the
        # rung board lost with the board: that argument failed before the trial began (the trial's own code catches
        # every Ray error it meets).
        return "worker_died" if isinstance(getattr(exc, "cause", None), errors.RayActorError) else None
    for cause in (exc, getattr(exc, "cause", None)):
        if isinstance(cause, errors.OutOfMemoryError):
            return "out_of_memory"
        if isinstance(cause, errors.NodeDiedError):
            return "node_died"
        if isinstance(
            cause,
            (
                errors.WorkerCrashedError,
                errors.LocalRayletDiedError,
                errors.ObjectLostError,
                errors.OwnerDiedError,
                errors.ActorDiedError,
                errors.ActorUnavailableError,
            ),
        ):
            return "worker_died"
    return "worker_died" if isinstance(exc, errors.RayError) else None


def timed_out(number: int, limit_s: float) -> TrialResult:
    """A failed result for an attempt the driver stopped at the experiment's time limit."""
    return TrialResult(
        number=number, error=f"timed out: ran past search.trial_timeout_s = {limit_s:g} s", info={MACHINERY: "timeout"}
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its messages for a terminal


def _first_line(exc: BaseException) -> str:
    lines = [line for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[0].strip() if lines else "(no message)"


def _station_share(spec: TargetSpec, reserve_cores: bool) -> dict[str, float]:
    """What the bench station holds of its node (as station.start_station asks for it)."""
    share: dict[str, float] = {}
    if reserve_cores and make_target(spec).local_cpu():
        share["CPU"] = spec.threads
    if make_target(spec).uses_gpu:
        share["GPU"] = 1
    return share


def _live_nodes(station_share: dict[str, float], station_node: str | None = None) -> list[dict[str, float]]:
    """Each live node's CPUs and GPUs for trials, less the station's share on the station's node (before the
    station starts: on the largest node that can hold it)."""
    live = [n for n in ray.nodes() if n.get("Alive")]
    nodes = {n["NodeID"]: {k: float(v) for k, v in n["Resources"].items() if k in {"CPU", "GPU"}} for n in live}
    for key, amount in station_share.items():
        holder = nodes.get(station_node or "")
        if holder is None:
            holders = [n for n in nodes.values() if n.get(key, 0) >= amount]
            holder = max(holders, key=lambda n: n.get(key, 0)) if holders else None
        if holder is not None:
            holder[key] = holder.get(key, 0) - amount
    return list(nodes.values())


class RayExecutor:
    """Submits trials as Ray tasks, each asking for the CPUs and GPUs the experiment names, and hands back results
    as they finish."""

    def __init__(
        self,
        *,
        address: str | None,
        num_cpus: int = 1,
        num_gpus: float = 0.0,
        trial_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trial_timeout_s, self.clock = trial_timeout_s, clock
        if not ray.is_initialized():
            try:
                start_ray(address)  # workers in a folder of slimsweep's own; a local Ray on loopback only
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"--ray-address {address!r}: cannot connect to a Ray cluster there: {exc}") from None
        # A node that dies takes its tasks with it; Ray runs them again elsewhere (max_retries), which is safe
        # because a trial holds no state outside its result.
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self._task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=2, retry_exceptions=False)(
            _run_on_node
        )
        self.station_share: dict[str, float] = {}
        self.where: tuple[str, list[int]] = ("", [])  # the station's node and cores, once it runs
        self._where_ref: Any = None  # a question to the station about its place, in flight
        self._where_next = 0.0
        self._warming: list[Any] = []  # warm-up tasks in flight (kept: their results are never needed)
        self.board: Any = None  # the rung board (search/rungboard.py), started with the station
        self._watch: Any = None  # the board's `waiting` call in flight, waited on beside the trials
        self._tokens = itertools.count()
        self._live: dict[Any, int] = {}  # each submitted task in flight (its ref) -> its token
        self._bar_seq = -1  # the newest gate bar posted to the board (post_bar)
        self._asked: dict[tuple[int, int], str] = {}  # (number, rung) handed to the loop -> the attempt that waits

    def open_station(self, spec: TargetSpec, *, reserve_cores: bool) -> None:
        """Start the target's bench station; fails now, not mid-sweep, when the target cannot run here."""
        total = int(ray.cluster_resources().get("CPU", 0))
        if reserve_cores and make_target(spec).local_cpu() and spec.threads >= total:
            raise ConfigError(
                f"target.threads: {spec.threads} reserved for timing would leave none of Ray's {total} CPUs for "
                f"trials; use fewer threads, more CPUs (a cluster), or target.reserve_cores: false"
            )
        self.station_share = _station_share(spec, reserve_cores)
        self._check_fits()
        self.station = start_station(spec, reserve_cores=reserve_cores)
        self.board = start_board(self.trial_slots())
        try:
            self.where = ray.get(self.station.where.remote())
        except ray.exceptions.RayActorError as exc:
            cause = exc.__cause__ or exc
            raise ConfigError(f"target {spec.kind!r}: {str(cause).strip().splitlines()[-1]}") from None

    def time_model(
        self, model: bytes, settings: TimingSettings, *, use_cache: bool = True
    ) -> tuple[LatencyStats, bool]:
        """Time one model at the station (used by the driver for the teacher and for verification)."""
        return _at_station(lambda: self.station.measure.remote(model, settings, use_cache))

    def compare(self, models: list[bytes], names: list[str], settings: CompareSettings) -> Comparison:
        """Time models side by side at the station, on its reserved cores (the pick's verification)."""
        return ray.get(self.station.compare.remote(models, names, settings))

    def reports(self) -> list[Report]:
        """Rung reports waiting at the board for a verdict, taken without waiting on any trial; a report of a task
        this executor no longer runs is answered "go on" and not handed back."""
        if self.board is None:
            return []
        try:
            posted = ray.get(self.board.take.remote(), timeout=TAKE_WAIT_S)
        except ray.exceptions.RayError as err:  # busy or gone: the reports wait (or time out to "go on")
            log.warning("rung reports could not be read from the board: %s", err)
            return []
        live = set(self._live.values())
        out = []
        for attempt, token, report in posted:
            if token in live:
                self._asked[(report.number, report.rung)] = attempt
                out.append(report)
            else:
                self.board.decide.remote(attempt, report.rung, True)
        return out

    def decide(self, number: int, rung: int, go_on: bool) -> None:
        """Answer a report that reports() handed back; the waiting trial goes on or ends at that rung."""
        attempt = self._asked.pop((number, rung), None)
        if attempt is not None and self.board is not None:
            self.board.decide.remote(attempt, rung, go_on)  # not awaited: the driver never waits on a worker

    def _forget(self, r: Running) -> None:
        """A task ended or given up: its late reports are not handed back, nor answered from what it was asked."""
        self._live.pop(r.ref, None)
        for key in [key for key in self._asked if key[0] == r.number]:
            del self._asked[key]

    def new_latencies(self) -> dict[str, dict]:
        """Latency measurements the station took since the last call (to keep with the study)."""
        return ray.get(self.station.take_new.remote())

    def seed_latencies(self, entries: dict[str, dict]) -> None:
        """Give the station measurements kept from an earlier run of the sweep."""
        if entries:
            ray.get(self.station.seed.remote(entries))

    def station_counts(self) -> dict[str, int]:
        """The station's latency-cache hits and misses."""
        return _at_station(lambda: self.station.counts.remote())

    def describe_target(self) -> dict:
        """The target as the station reports it."""
        return ray.get(self.station.describe.remote())

    @staticmethod
    def trial_cpus() -> int:
        """CPUs left for trials once the station holds its share."""
        return int(ray.available_resources().get("CPU", 0))

    def trial_slots(self) -> int:
        """How many trials the cluster's live nodes hold at once, after the station's share: a node that joins
        adds its slots, a node that dies takes them away."""
        self._refresh_where()
        return sum(self._slots(resources) for resources in _live_nodes(self.station_share, self.where[0] or None))

    def _refresh_where(self) -> None:
        """Follow the station when Ray restarts it on another node (its old node died), without waiting on it: a
        question is sent every WHERE_EVERY_S and its answer read once the station, busy timing, gets to it."""
        if getattr(self, "station", None) is None:
            return
        if self._where_ref is not None and ray.wait([self._where_ref], timeout=0)[0]:
            try:
                self.where = ray.get(self._where_ref)
            except ray.exceptions.RayError:
                pass  # down or restarting: the last known place stands until it answers
            self._where_ref = None
        if self._where_ref is None and self.clock() >= self._where_next:
            self._where_ref, self._where_next = self.station.where.remote(), self.clock() + WHERE_EVERY_S

    def _slots(self, resources: dict[str, float]) -> int:
        # A trial runs on one node: count per node what it asks for, never the cluster's sum.
        fits = math.floor(resources.get("CPU", 0) / self.num_cpus + 1e-9)
        if self.num_gpus:
            fits = min(fits, math.floor(resources.get("GPU", 0) / self.num_gpus + 1e-9))
        return max(fits, 0)

    def _check_fits(self) -> None:
        """Refuse, before any trial, resources no live node has: Ray would queue such a trial forever."""
        nodes = _live_nodes(self.station_share)
        if not any(self._slots(r) for r in nodes):
            have = "; ".join(f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU" for r in nodes) or "no live node"
            raise ConfigError(
                f"search.resources: a trial asks for num_cpus={self.num_cpus}, num_gpus={self.num_gpus:g}, but no "
                f"node of the Ray cluster has that much free for trials (after the bench station's share: {have}); "
                f"ask for less, or add a node that has it"
            )

    def warm(self, workers: int) -> None:
        """Start `workers` trial workers now, so that their imports overlap the driver's setup instead of delaying
        the first trials (seconds per worker: a worker imports torch)."""
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_warm)
        # No more than fit now: one that waits in Ray's queue would only hold up warmed() for nothing.
        self._warming = [task.remote() for _ in range(min(workers, self.trial_slots()))]

    def warmed(self, timeout_s: float = WARM_WAIT_S) -> None:
        """Wait for the warm-up workers to finish starting, so their imports do not share the station's cores
        while it times a model; a worker that failed to start says why here (its trials would fail the same)."""
        if not self._warming:
            return
        ready, _ = ray.wait(self._warming, num_returns=len(self._warming), timeout=timeout_s)
        for ref in ready:
            try:
                ray.get(ref)
            except Exception as err:  # noqa: BLE001 - a warning: the trials themselves report their own failure
                log.warning("a trial worker failed to start: %s", err)
        self._warming = []

    @staticmethod
    def put(obj: Any) -> Any:
        """Place a shared object (the task data and teacher) in the object store once."""
        return ray.put(obj)

    def submit(
        self, number: int, plan: Any, context_ref: Any, bar: Bar | None = None, behind: list[Running] | None = None
    ) -> Running:
        """Start one trial; `context_ref` is the object-store reference, so the teacher and data travel to each
        node once, not once per trial; `bar` stops a plan that cannot reach the front before training; `behind`:
        trials in flight it is queued behind (it starts once one of them has ended)."""
        token = next(self._tokens)
        self.post_bar(bar)  # the board holds the newest bar, this one included
        # Without the board (not started, or gone) a queued trial is a plain submit: it may share a slot a while.
        after = self.board.settled.remote([r.ref for r in behind]) if behind and self.board is not None else None
        task = self._task.remote(
            number,
            plan,
            context_ref,
            self.station,
            self.where,
            self.num_cpus,
            bar,
            self.board,
            token,
            self._bar_seq,
            after,
            tuple(r.number for r in behind) if after is not None else (),
        )
        self._live[task] = token
        return Running(number, task, self.clock())

    def started(self, running: Running) -> None:
        """A queued trial's slot is free (Ray starts it as the trial before it ends): its time limit counts now."""
        running.queued, running.started = False, self.clock()

    def post_bar(self, bar: Bar | None, told: list[int] | None = None) -> None:
        """Post the newest gate bar to the board, with the trials `told` since the last, not awaited: a queued trial
        reads it when it compares its structure (search/rungboard.py)."""
        if self.board is None or bar is None:
            return
        self._bar_seq += 1
        self.board.post_bar.remote(self._bar_seq, bar, list(told or []))

    def wait(self, running: list[Running], timeout: float) -> list[tuple[Running, TrialResult]]:
        """Results of the trials that finished within `timeout`; a task Ray could not run becomes a failed result,
        and one past the time limit is stopped and becomes a failed result too."""
        if not running:
            return []
        refs = [r.ref for r in running]
        if self.board is not None:
            # A rung report wakes the driver at once (its trial waits for the verdict), not at the next poll.
            if self._watch is None:
                self._watch = self.board.waiting.remote(WATCH_S)
            refs.append(self._watch)
        done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if self._watch is not None and self._watch in done:
            watch, self._watch = self._watch, None  # the loop reads the reports right after this returns
            try:
                ray.get(watch)
            except ray.exceptions.RayError as err:  # the board died: trials go on without verdicts (rungboard.ask)
                log.warning("the rung board is gone (%s); trials train on without rung verdicts", err)
                self.board = None
        finished = []
        now = self.clock()
        for r in running:
            if r.ref in done:
                self._forget(r)
                try:
                    result = ray.get(r.ref)
                except ray.exceptions.RayError as exc:  # worker died, out of memory, node lost
                    result = ray_failure(r.number, exc)
                finished.append((r, result))
            elif self.trial_timeout_s is not None and not r.queued and now - r.started > self.trial_timeout_s:
                self._forget(r)
                ray.cancel(r.ref, force=True)
                finished.append((r, timed_out(r.number, self.trial_timeout_s)))
        return finished

    def cancel(self, running: list[Running]) -> None:
        """Stop trials in flight (Ctrl-C, or the driver failing)."""
        for r in running:
            self._forget(r)
            with contextlib.suppress(Exception):  # the driver is stopping; a task Ray already lost needs no cancel
                ray.cancel(r.ref, force=True)
