"""Cheap-then-full replayed over a hand-written curve table through the real driver loop (benchmarks/curves_replay.py):
the rung rule stops the plans the table says it should, at the rung, for the epochs they trained; no training."""

from __future__ import annotations

from benchmarks.curves import Row, Table
from benchmarks.curves_replay import false_stops, hv_curve, run
from benchmarks.tabular_grid import enumerate_plans, plan_key
from spaces.plan import Space

SPACE = Space.model_validate(
    {
        "students": {
            "teacher": True,
            "cnn": {"width": [0.25, 0.5], "depth": 1, "temperature": 4.0, "alpha": 0.7, "epochs": 4},
        },
        "pruning": {"ratio": [0.0]},
        "quantization": {"schemes": ["fp32"]},
    }
)
# After epochs 1, 2, 3 of 4, then the deployed model (accuracy, p50, size); the teacher (98%) trains nothing.
FIGURES = {
    "teacher": ((), 0, 98.0, 1.0, 1.0),
    "0.25": ((10.0, 50.0, 80.0), 4, 97.5, 0.1, 0.1),  # a late bloomer: feasible, faster and smaller than the teacher
    "0.5": ((20.0, 60.0, 90.0), 4, 90.0, 0.2, 0.2),  # never within the point
}


def _table() -> Table:
    rows = []
    for plan in enumerate_plans(SPACE):
        name = "teacher" if not plan.student.distilled else f"{plan.student.width:g}"
        curve, planned, acc, p50, size = FIGURES[name]
        rows.append(Row(plan_key(plan), plan.describe(), name, curve, planned, acc, p50, size))
    return Table(tuple(rows), teacher_accuracy=98.0)


def test_a_plan_below_the_floor_with_its_margin_stops_at_the_rung_for_its_epochs() -> None:
    table = _table()
    # After 2 epochs, 50 + 30 and 60 + 30 are both under the floor (97%): both students stop there.
    # The budget (4 epochs) is what the two stops cost: the sweep ends when both have stopped.
    events = run(table, SPACE, seed=0, epochs=4, trials=3, rungs=(2,), margins=(30.0,))
    students = {r.key for r in table.rows if r.epochs_planned}
    stopped = [e for e in events if e.kind == "stopped"]
    assert sorted(e.key for e in stopped) == sorted(students)
    assert {e.epochs for e in stopped} == {2.0} and {e.rung for e in stopped} == {0}
    assert false_stops(table, events) == (1, 2)  # the late bloomer would have been on the front; the other not
    # With a margin of 50 points nothing is under the floor: nothing stops, and the late bloomer trains to its end
    # (the other student trains too, or the gate stops it before training once the late bloomer is in).
    events = run(table, SPACE, seed=0, epochs=8, trials=3, rungs=(2,), margins=(50.0,))
    bloomer = next(r.key for r in table.rows if r.group == "0.25")
    assert not [e for e in events if e.kind == "stopped"]
    assert any(e.key == bloomer and e.kind == "trained" and e.epochs == 4.0 for e in events)
    assert hv_curve(table, events)[1][-1] > 0  # the late bloomer adds volume


def test_serving_a_tighter_pick_stops_a_plan_the_front_keeps() -> None:
    from benchmarks.curves_pick import pick_false_stops
    from benchmarks.curves_replay import Serving

    table = _table()
    bloomer = next(r.key for r in table.rows if r.group == "0.25")
    # After 2 epochs the late bloomer reads 50%: 50 + 47.5 reaches the front's floor (97%), not a 0.25-point pick's
    # bar (97.75%). Without serving the pick it trains to its end (97.5%, on the front).
    plain = run(table, SPACE, seed=0, epochs=8, trials=3, rungs=(2,), margins=(47.5,))
    assert any(e.key == bloomer and e.kind == "trained" for e in plain)
    for serving in (Serving(0.25, serve_pick=True), Serving(0.25, constraint_drop=0.25)):
        events = run(table, SPACE, seed=0, epochs=8, trials=3, rungs=(2,), margins=(47.5,), serving=serving)
        stopped = [e for e in events if e.key == bloomer and e.kind == "stopped"]
        assert [(e.epochs, e.rung) for e in stopped] == [(2.0, 0)], serving
        assert false_stops(table, events)[0] == 1  # the front (1 point) lost it: what serving costs the front
        assert pick_false_stops(table, events, 0.25) == 0  # the 0.25-point pick could not have taken it
        assert hv_curve(table, events)[1][-1] == 0.0
