"""The rung board: where trials on Ray workers post their rung reports and wait for the driver's verdict.

One small threaded Ray actor per RayExecutor (search/dispatch.py describes rungs). A worker's `post` blocks until the
driver answers or REPORT_WAIT_S passes (then the trial goes on training: it never stops without a verdict); the
driver's `take` and `decide` run in a concurrency group of their own, so waiting workers never hold them up. Each
execution of a trial posts under its own attempt id, so a retried attempt never reads an answer meant for an
earlier one. The board is apart from the bench station: nothing here waits on it or blocks it.

A trial submitted while another ran (queued behind it, search/loop.py) starts once `settled` here says that one
ended, and reads the driver's gate bar (search/gate.py) posted once that result was told when it compares its
untrained structure (`NewestBar`), so that result can stop it before training, as it would have had the trial been
submitted after it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from search.dispatch import Report

log = logging.getLogger(__name__)

# How long a worker's report waits for the driver's verdict (the loop polls about once a second) before going on.
REPORT_WAIT_S = 120.0
# How long the driver waits for the board to hand over its reports before trying again at its next poll.
TAKE_WAIT_S = 10.0
# How long one `waiting` call lasts at most (the driver starts another when it ends).
WATCH_S = 30.0
# Threads for the driver's calls; the trials' group gets two per trial slot, at least MIN_TRIAL_THREADS.
DRIVER_THREADS, MIN_TRIAL_THREADS = 2, 32
MIN_QUEUE_THREADS = 4  # threads for queued trials' `settled` waits


@dataclass
class _Posted:
    """One report waiting at the board."""

    token: int  # the executor's token of the submission it belongs to
    report: Report
    taken: bool = False  # handed to the driver
    verdict: bool | None = None  # the driver's answer: False ends the trial at this rung


class RungBoard:
    """Holds reports of trials in flight until the driver decides on them."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._posted: dict[str, _Posted] = {}  # by attempt id
        self._bar: tuple[int, Any] = (-1, None)  # the driver's newest gate bar and its sequence number
        self._told: set[int] = set()  # trials whose results the newest bar has taken in

    @ray.method(concurrency_group="trials")
    def post(self, attempt: str, token: int, report: Report, wait_s: float) -> bool:
        """A worker's report: wait for the driver's verdict; True (go on) without one within wait_s."""
        posted = _Posted(token, report)
        with self._changed:
            self._posted[attempt] = posted
            self._changed.notify_all()  # the driver's `waiting`
            try:
                self._changed.wait_for(lambda: posted.verdict is not None, timeout=wait_s)
            finally:
                del self._posted[attempt]
        return posted.verdict is not False

    @ray.method(concurrency_group="driver")
    def take(self) -> list[tuple[str, int, Report]]:
        """Reports not yet handed to the driver: (attempt id, token, report) each."""
        with self._changed:
            fresh = [(attempt, p) for attempt, p in self._posted.items() if not p.taken]
            for _, posted in fresh:
                posted.taken = True
        return [(attempt, p.token, p.report) for attempt, p in fresh]

    @ray.method(concurrency_group="watch")
    def waiting(self, timeout_s: float) -> int:
        """Reports not yet handed to the driver, once there is one or `timeout_s` passed: the driver waits on this
        beside its trials, so a report wakes it at once and the trial waits milliseconds, not a poll's second."""
        with self._changed:
            self._changed.wait_for(lambda: any(not p.taken for p in self._posted.values()), timeout=timeout_s)
            return sum(not p.taken for p in self._posted.values())

    @ray.method(concurrency_group="driver")
    def post_bar(self, seq: int, bar: Any, told: list[int]) -> None:
        """The driver's newest gate bar, with the trials told by then; an older one arriving late is ignored."""
        with self._changed:
            if seq > self._bar[0]:
                self._bar = (seq, bar)
                self._told.update(told)
                self._changed.notify_all()  # queued trials waiting in newest_bar

    @ray.method(concurrency_group="trials")
    def newest_bar(self, seq: int, behind: list[int], wait_s: float) -> Any:
        """The newest gate bar when it is newer than the caller's (`seq`), else None; for a trial queued `behind`
        others, once the result of one of them is told (the one that freed its slot), or `wait_s` passed."""
        with self._changed:
            if behind:
                self._changed.wait_for(lambda: not self._told.isdisjoint(behind), timeout=wait_s)
            return self._bar[1] if self._bar[0] > seq else None

    @ray.method(concurrency_group="queue")
    def settled(self, refs: list[Any]) -> float:
        """Return once any of `refs` (trials in flight, in a list so that Ray does not wait for them all) has ended,
        however it ended. Its result is a queued trial's argument: Ray starts that trial only then. Without it, a
        queued trial could start whenever a running one waits in `ray.get` (at the bench station, or here for a
        verdict): Ray lends out a blocked task's CPU, and two trials would share one slot's cores. Here, not in a
        task of its own: such a task takes a worker process that a trial then lands on cold (torch not imported).
        Returns when (wall clock) it let the trial go, which the trial keeps beside its own stamps."""
        ray.wait(refs, num_returns=1, fetch_local=False)  # only that it ended: its result stays where it is
        return time.time()

    @ray.method(concurrency_group="driver")
    def decide(self, attempt: str, rung: int, go_on: bool) -> None:
        """Answer the attempt's report at `rung`; a report no longer waiting (timed out, worker gone) is ignored."""
        with self._changed:
            posted = self._posted.get(attempt)
            if posted is not None and posted.report.rung == rung:
                posted.verdict = go_on
                self._changed.notify_all()


def start_board(trial_slots: int) -> Any:
    """Start the board (no CPU of its own: it takes no trial's slot) with a thread for every trial that may wait."""
    groups = {
        "driver": DRIVER_THREADS,
        "watch": 1,
        "trials": max(MIN_TRIAL_THREADS, 2 * trial_slots),
        "queue": max(MIN_QUEUE_THREADS, 2 * trial_slots),  # `settled` of each queued trial (one per slot at most)
    }
    # On the driver's own node: a worker node that dies (a lost machine) must not take the board with it. The
    # groups are sized here, not where the class is declared (Ray refuses them in .options()).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0, concurrency_groups=groups, scheduling_strategy=here)(RungBoard).remote()


# How long a queued trial waits at its compare for the result it waited behind to be told (the driver tells a result
# within milliseconds unless busy, say with an MLflow server that does not answer) before it uses the newest bar.
BAR_WAIT_S = 5.0


class NewestBar:
    """A worker's side, for a trial queued behind others: the driver's newest gate bar, asked of the board while the
    trial times its structure (`ask`) and read when it compares it (a call). The board answers once the result of a
    trial it waited behind is told (the gate then judges by it, as it would have had the trial been submitted after
    that result), or after BAR_WAIT_S; the bar it was submitted with when the board has none newer or does not
    answer (the gate then judges by the trials trained when it was submitted)."""

    def __init__(self, board: Any, seq: int, submitted: Any, behind: list[int]) -> None:
        self.board, self.seq, self.submitted, self.behind = board, seq, submitted, behind
        self._ref: Any = None

    def ask(self) -> None:
        """Ask the board now; the answer is read by the call."""
        if self._ref is None:
            self._ref = self.board.newest_bar.remote(self.seq, self.behind, BAR_WAIT_S)

    def __call__(self) -> Any:
        self.ask()
        try:
            newer = ray.get(self._ref, timeout=BAR_WAIT_S + 30.0)
        except ray.exceptions.RayError as err:
            log.warning("the newest gate bar could not be read (%s); using the one submitted", err)
            return self.submitted
        return self.submitted if newer is None else newer


def ask(board: Any, attempt: str, token: int, report: Report, wait_s: float = REPORT_WAIT_S) -> bool:
    """A worker's side: post the report and wait for the verdict; True (go on training) when none comes, the
    board included: a trial is never stopped by a driver that did not answer."""
    try:
        return bool(ray.get(board.post.remote(attempt, token, report, wait_s), timeout=wait_s + 30.0))
    except ray.exceptions.RayError as err:  # the board gone with its node or driver, or no answer in time
        log.warning("trial %d: no verdict at rung %d (%s); training on", report.number, report.rung, err)
        return True
