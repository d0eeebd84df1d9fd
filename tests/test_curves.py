"""The margin analysis of cheap-then-full (benchmarks/curves.py) on a small hand-written curve table: no training."""

from __future__ import annotations

import pytest

from benchmarks.curves import (
    Row,
    Rule,
    Table,
    Trained,
    enters_front,
    gains,
    replay_rule,
    rung_epoch,
    smallest_margin,
)

pytestmark = pytest.mark.fast

TEACHER = Row("teacher", "teacher", "t", (), 0, 98.0, 1.0, 1.0)
# Four 4-epoch plans (accuracy after epochs 1, 2, 3; the deployed model's at the end), against a teacher of 98%:
# the feasibility floor is 97%.
A = Row("a", "fast, accurate", "a", (50.0, 90.0, 96.0), 4, 98.0, 0.2, 0.2)  # on every front
B = Row("b", "slow", "b", (40.0, 80.0, 90.0), 4, 97.5, 0.5, 0.5)  # dominated by A and by D
C = Row("c", "never feasible", "c", (20.0, 60.0, 85.0), 4, 90.0, 0.3, 0.3)
D = Row("d", "late bloomer", "d", (10.0, 50.0, 80.0), 4, 97.5, 0.1, 0.1)  # the fastest: on every front
TABLE = Table((TEACHER, A, B, C, D), teacher_accuracy=98.0)


def _trained(*rows: Row) -> Trained:
    out = Trained(8)
    for r in rows:
        out.add(r)
    return out


def test_gains_are_final_accuracy_less_accuracy_at_the_rung() -> None:
    assert sorted(gains(TABLE, 2)) == [8.0, 17.5, 30.0, 47.5]  # A, B, C, D; the teacher trains nothing
    assert gains(TABLE, 4) == []  # the last epoch is the plan's end, not a rung


def test_the_late_bloomer_sets_the_margin() -> None:
    # D, on every front, reads 50% after 2 epochs: any margin under 97 - 50 = 47 points stops it at the floor, and it
    # is the only plan such a stop gets wrong every time; from 47 points on nothing is stopped wrongly.
    assert smallest_margin(TABLE, 2, orders=5) == 47.0
    assert smallest_margin(TABLE, 3, orders=5) == 17.0  # 97 - 80, D again
    at_47 = replay_rule(TABLE, Rule((2,), (47.0,), TABLE.floor), orders=5)
    assert at_47.false_stops == 0
    below = replay_rule(TABLE, Rule((2,), (46.75,), TABLE.floor), orders=5)
    assert below.false_stops >= 5  # D, in every order


def test_a_plan_stops_at_the_floor_or_under_a_better_trained_plan() -> None:
    e = Row("e", "dominated", "e", (60.0, 95.0, 96.0), 4, 97.25, 0.3, 0.3)
    assert Rule((2,), (5.0,), 97.0).stop(e, _trained(A)) is None  # 95 + 5 = 100: A's 98% cannot beat that
    assert Rule((2,), (2.5,), 97.0).stop(e, _trained(A)) == (0, True, 2)  # 97.5 < 98, and A is faster and smaller
    assert Rule((2,), (2.5,), 97.0).stop(e, _trained(D)) is None  # D is faster, but not more accurate than 97.5
    assert Rule((2,), (1.0,), 97.0).stop(e, _trained()) == (0, False, 2)  # 96 < the floor
    assert not enters_front(e, _trained(A), 97.0)
    assert enters_front(e, _trained(B), 97.0)  # faster and smaller than B: on the front of what was trained


def test_a_share_rung_falls_where_the_trial_reports() -> None:
    from search.trial import rung_epochs

    for planned in (2, 4, 6, 12, 16):
        rungs = (0.125, 0.25, 0.5, 0.75)
        assert tuple(rung_epoch(r, planned) for r in rungs) == rung_epochs(rungs, planned)
    # A 4-epoch plan: 0.125 and 0.25 both fall after epoch 1 (reported once, under the first), 0.5 after epoch 2.
    assert A.reports((0.125, 0.25, 0.5)) == [(0, 1, 50.0), (2, 2, 90.0)]
    assert Rule((0.5,), (1.0,), 97.0).stop(A, _trained()) == (0, False, 2)  # 90 + 1 < 97 after 2 of 4 epochs


def test_stops_save_the_epochs_after_the_rung() -> None:
    everything = replay_rule(TABLE, Rule((1,), (0.0,), TABLE.floor), orders=3, gate=False)
    assert everything.stopped == 3 * 4  # every plan that trains is below the floor after one epoch
    assert everything.saved == pytest.approx(0.75)  # 1 epoch of 4 each
    assert everything.false_stops >= 3 * 2  # A and D, in every order
    nothing = replay_rule(TABLE, Rule((1,), (100.0,), TABLE.floor), orders=3, gate=False)
    assert (nothing.stopped, nothing.saved, nothing.false_rate) == (0, 0.0, 0.0)


def test_the_replayed_rule_decides_as_the_drivers_rule() -> None:
    from search.gate import Candidate
    from search.rungs import Floors, judge

    e = Row("e", "dominated", "e", (60.0, 95.0, 96.0), 4, 97.25, 0.3, 0.3)
    for margin in (0.0, 1.0, 2.5, 3.0, 5.0):
        for trained in ((), (A,), (B,), (D,), (A, B, D)):
            ours = Rule((2,), (margin,), 97.0).stop(e, _trained(*trained))
            theirs = judge(
                95.0,
                margin,
                e.p50_ms,
                e.size_mb,
                Floors(feasible=97.0),
                [Candidate(i, r.accuracy, r.p50_ms, r.size_mb) for i, r in enumerate(trained) if r.accuracy >= 97.0],
            )
            assert (ours is None) == theirs.go_on, (margin, [r.key for r in trained])


def test_the_pick_is_the_fastest_trained_plan_within_the_bar_as_compute_is_spent() -> None:
    from benchmarks.curves_pick import best_in_table, pick_curve, to_pick
    from benchmarks.curves_replay import Event

    # B (0.5 pt below the teacher, 2x), C (infeasible), D stopped at a rung, A (0 pt, 5x), then D trained (0.5 pt, 10x).
    events = [
        Event(0, "b", "trained", 4, 0),
        Event(1, "c", "trained", 4, 0),
        Event(2, "d", "stopped", 2, 0, 0),
        Event(3, "a", "trained", 4, 0),
        Event(4, "d", "trained", 4, 0),
    ]
    assert pick_curve(TABLE, events, 1.0) == ([4, 8, 10, 14, 18], [2.0, 2.0, 2.0, 5.0, 10.0])
    # At 0.25 pt B and D are under the bar (97.5 < 97.75): only A counts, from when it was trained.
    assert pick_curve(TABLE, events, 0.25)[1] == [0.0, 0.0, 0.0, 5.0, 5.0]
    assert to_pick(TABLE, events, 1.0) == (10.0, 18)
    assert to_pick(TABLE, events, 0.25) == (5.0, 14)
    assert to_pick(TABLE, events[:3], 0.25) == (0.0, None)  # nothing within the bar yet
    # The table's own best at each bar (what a search can at most find): D at 1 point, A at 0.25.
    assert (best_in_table(TABLE, 1.0), best_in_table(TABLE, 0.25), best_in_table(TABLE, -1.0)) == (10.0, 5.0, 0.0)


def test_a_stop_costs_the_pick_only_when_the_plan_would_have_been_the_fastest_within_the_bar() -> None:
    from benchmarks.curves_pick import pick_false_stops
    from benchmarks.curves_replay import Event

    events = [Event(0, "b", "trained", 4, 0), Event(1, "d", "stopped", 2, 0, 0), Event(2, "a", "stopped", 2, 0, 0)]
    # D (97.5%, 0.1 ms) would have been within 1 point and faster than B: a false stop for the pick; A (98%, 0.2 ms)
    # too. At 0.25 pt D is under the bar and A, the only plan within it, had nothing faster before it.
    assert pick_false_stops(TABLE, events, 1.0) == 2
    assert pick_false_stops(TABLE, events, 0.25) == 1
    slow_after_fast = [Event(0, "d", "trained", 4, 0), Event(1, "b", "stopped", 2, 0, 0)]
    assert pick_false_stops(TABLE, slow_after_fast, 1.0) == 0  # B is slower than D: the pick loses nothing
