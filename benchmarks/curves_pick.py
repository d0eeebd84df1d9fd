"""A search that serves the pick (issue #20, deliverable 3), replayed over the curve tables through the real loop
(benchmarks/curves_replay.py): at each point of compute, the fastest model within the pick's bar found so far, and
what serving the pick (the rung rule's `serve_pick`, or the pick's bar told to TPE as the constraint) costs the
front's hypervolume. Speed-ups are the tables' latencies (teacher p50 over the model's p50, each timed in the
table's interleaved pass), not a side-by-side timing of the pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks import scales
from benchmarks.curves import MAX_DROP_PT, Table
from benchmarks.curves_replay import (
    Arm,
    Event,
    Serving,
    compute_to_reach,
    false_stops,
    hv_curve,
    median,
    run_arms,
    teacher_row,
)

PICK_BARS = (MAX_DROP_PT, 0.25)  # pick.max_accuracy_drop: the quickstart's 1 point, and the tight bar
SERVED_BAR = 0.25  # the bar the serving arms serve (at 1 point the pick's bar is the feasibility floor: no change)


def pick_curve(table: Table, events: list[Event], drop: float) -> tuple[list[float], list[float]]:
    """Cumulative epochs after each event and the speed-up over the teacher (table latencies) of the fastest plan
    trained to its end so far within `drop` points of the teacher; 0.0 while there is none."""
    rows = {r.key: r for r in table.rows}
    teacher_ms, bar = teacher_row(table).p50_ms, table.teacher_accuracy - drop
    spent, best, xs, ys = 0.0, 0.0, [], []
    for e in events:
        spent += e.epochs
        r = rows[e.key] if e.kind == "trained" else None
        if r is not None and r.accuracy is not None and r.accuracy >= bar - 1e-9:
            best = max(best, teacher_ms / r.p50_ms)
        xs.append(spent)
        ys.append(best)
    return xs, ys


def to_pick(table: Table, events: list[Event], drop: float) -> tuple[float, float | None]:
    """(the final pick's speed-up over the teacher, 0.0: none within the bar; the epochs spent when it was trained)."""
    xs, ys = pick_curve(table, events, drop)
    final = ys[-1] if ys else 0.0
    return final, compute_to_reach(xs, ys, final) if final > 0 else None


def pick_false_stops(table: Table, events: list[Event], drop: float) -> int:
    """Stopped plans that, trained to their end, would have been within the bar and faster than every plan within it
    trained before them: stops that cost the pick a model."""
    rows = {r.key: r for r in table.rows}
    bar, fastest, bad = table.teacher_accuracy - drop, float("inf"), 0
    for e in events:
        r = rows[e.key]
        within = r.accuracy is not None and r.accuracy >= bar - 1e-9
        if e.kind == "trained" and within:
            fastest = min(fastest, r.p50_ms)
        elif e.kind == "stopped" and within and r.p50_ms < fastest:
            bad += 1
    return bad


def best_in_table(table: Table, drop: float) -> float:
    """The table's own best: the speed-up of its fastest plan within `drop` points of the teacher (0.0: none)."""
    teacher_ms, bar = teacher_row(table).p50_ms, table.teacher_accuracy - drop
    ups = [teacher_ms / r.p50_ms for r in table.rows if r.accuracy is not None and r.accuracy >= bar - 1e-9]
    return max(ups, default=0.0)


def serving_arms(defaults: tuple[tuple[float, ...], tuple[float, ...]]) -> list[Arm]:
    """The two ways of serving the pick at SERVED_BAR, both on the code's default rungs: the rung rule's serve_pick,
    and the pick's bar as the experiment's constraint (the sampler ranks plans under it infeasible)."""
    rungs, margins = defaults
    return [
        Arm(f"default + serve_pick ({SERVED_BAR:g} pt)", rungs, margins, serving=Serving(SERVED_BAR, True)),
        Arm(
            f"default + constraints.max_accuracy_drop {SERVED_BAR:g}",
            rungs,
            margins,
            serving=Serving(SERVED_BAR, False, SERVED_BAR),
        ),
    ]


@dataclass(frozen=True)
class ArmFigures:
    """One arm over the seeds: medians of what a user of the pick and of the front notices."""

    tried: float
    stopped: float
    hv: float
    hv_ratio: float  # median over seeds of the final HV over full training's in the same seed
    false_stops: int
    stopped_all: int
    picks: dict[float, tuple[float, float, float, float | None, int]]  # bar -> median, min, max speed-up, epochs, bad


def figures(table: Table, arm: Arm, full: Arm, seeds: list[int]) -> ArmFigures:
    """The arm's figures at these seeds, against full training's."""
    hvs, ratios, bad, stopped = [], [], 0, 0
    for s in seeds:
        y = hv_curve(table, arm.runs[s])[1]
        fy = hv_curve(table, full.runs[s])[1]
        hvs.append(y[-1] if y else 0.0)
        ratios.append(hvs[-1] / fy[-1] if fy and fy[-1] else float("nan"))
        b, n = false_stops(table, arm.runs[s])
        bad, stopped = bad + b, stopped + n
    picks = {}
    for drop in PICK_BARS:
        got = [to_pick(table, arm.runs[s], drop) for s in seeds]
        ups = [g[0] for g in got]
        spent = [g[1] for g in got if g[1] is not None]
        wrong = sum(pick_false_stops(table, arm.runs[s], drop) for s in seeds)
        picks[drop] = (median(ups), min(ups), max(ups), median(spent) if spent else None, wrong)
    return ArmFigures(
        median([len(arm.tried(s)) for s in seeds]),
        median([sum(e.kind == "stopped" for e in arm.runs[s]) for s in seeds]),
        median(hvs),
        median(ratios),
        bad,
        stopped,
        picks,
    )


def table_lines(table: Table, arms: list[Arm], seeds: list[int]) -> tuple[list[str], dict[str, ArmFigures]]:
    """The markdown table of every arm (the first is full training) and each arm's figures by name."""
    full = arms[0]
    out = {arm.name: figures(table, arm, full, seeds) for arm in arms}
    head = " | ".join(
        f"pick at {d:g} pt: speed-up median [min, max] / epochs to it / pick's false stops" for d in PICK_BARS
    )
    lines = [
        f"| arm | plans tried (stopped) | final HV (ratio to full's) | front's false stops | {head} |",
        "|---|---|---|---|" + "---|" * len(PICK_BARS),
    ]
    for arm in arms:
        f = out[arm.name]
        cells = [
            f"{up:.2f}x [{lo:.2f}, {hi:.2f}] / {'none' if at is None else f'{at:g}'} / {bad}"
            for up, lo, hi, at, bad in f.picks.values()
        ]
        lines.append(
            f"| {arm.name} | {f.tried:g} ({f.stopped:g}) | {f.hv:.4f} ({f.hv_ratio:.0%}) | "
            f"{f.false_stops}/{f.stopped_all} | " + " | ".join(cells) + " |"
        )
    return lines, out


def decide(per_table: dict[str, dict[str, ArmFigures]], default: str, served: str) -> str:
    """One sentence: serve_pick on by default when, on every table, its median pick at the served bar is at least as
    fast, found with no more epochs, at >= 95% of full training's hypervolume and within the false-stop goal, and on
    some table faster or sooner; off otherwise (a tie is no reason to change what stops)."""
    never_worse, better, costs = True, False, []
    for name, figs in per_table.items():
        d, s = figs[default].picks[SERVED_BAR], figs[served].picks[SERVED_BAR]
        at_d, at_s = d[3] if d[3] is not None else float("inf"), s[3] if s[3] is not None else float("inf")
        f = figs[served]
        rate = f.false_stops / f.stopped_all if f.stopped_all else 0.0
        never_worse &= s[0] >= d[0] and at_s <= at_d and f.hv_ratio >= 0.95 and rate <= 0.1
        better |= s[0] > d[0] or at_s < at_d
        costs.append(
            f"{name}: pick {s[0]:.2f}x after {at_s:g} epochs against {d[0]:.2f}x after {at_d:g}, HV "
            f"{f.hv_ratio:.0%} of full training's against {figs[default].hv_ratio:.0%}, front's false stops "
            f"{f.false_stops}/{f.stopped_all}"
        )
    verdict = "on" if never_worse and better else "off"
    return (
        f"**Decision: `serve_pick` {verdict} by default** (on only if, on every table, the median pick at "
        f"{SERVED_BAR:g} pt is at least as fast and found with no more epochs, at >= 95% of full training's "
        f"hypervolume and <= 10% false stops, and on one table faster or sooner; {'; '.join(costs)})."
    )


def section_lines(
    tables: dict[str, Table],
    spaces: dict[str, Any],
    arms_by_table: dict[str, list[Arm]],
    budgets: dict[str, tuple[float, int]],
    default_name: str,
    defaults: tuple[tuple[float, ...], tuple[float, ...]],
    quick: bool,
) -> list[str]:
    """The report's lines on serving the pick: the serving arms run beside full training and the default
    (`arms_by_table[name]`, already run), each table's figures and the decision."""
    lines = [
        "### Serving the pick",
        "",
        f"The pick (`fastest_within`) takes the fastest front member within `pick.max_accuracy_drop` of the teacher. "
        f"Two ways to spend the trainings where it can land, at a bar of {SERVED_BAR:g} pt, both on the default "
        f"rungs: `early_stopping.serve_pick: true` (the rung rule also stops a plan whose accuracy so far plus the "
        f"margin is under the pick's bar), and `constraints.max_accuracy_drop: {SERVED_BAR:g}` (Optuna's constraint: "
        "TPE ranks plans under the bar below every feasible one; it also moves the rule's floor and the gate's "
        "members to the bar, and **it changes the front a user sees**: members between the bar and 1 point are "
        "infeasible there, while the hypervolume below is still the 1-point front's, the one `serve_pick` keeps). "
        "Speed-ups are table figures (teacher p50 over the model's p50, both from the table's interleaved timing), "
        "not a side-by-side timing; 'epochs to it': the compute spent when the final pick was trained (median); a "
        "pick's false stop: a stopped plan that would have been within the bar and the fastest there so far.",
        "",
    ]
    per_table: dict[str, dict[str, ArmFigures]] = {}
    served = ""
    for name, table in tables.items():
        base = arms_by_table[name]
        seeds = sorted(base[0].runs)[: scales.of(quick).curves.pick_seeds]  # benchmarks/scales.py (None: all)
        extra = serving_arms(defaults)
        epochs, trials = budgets[name]
        run_arms(table, spaces[name], extra, seeds, epochs=epochs, trials=trials, n_val=table.n_val)
        served = extra[0].name
        default = next(a for a in base if a.name == default_name)
        text, per_table[name] = table_lines(table, [base[0], default, *extra], seeds)
        wide, tight = best_in_table(table, MAX_DROP_PT), best_in_table(table, SERVED_BAR)
        binds = (
            f"the table's fastest model within {MAX_DROP_PT:g} pt is {wide:.2f}x, within {SERVED_BAR:g} pt "
            f"{tight:.2f}x"
            + (
                ": the tight bar does not bind here, so serving it can only change how soon the pick is found"
                if tight >= wide
                else ""
            )
        )
        lines += [f"*{name}, {epochs:g} epochs each, seeds {seeds}* ({binds}):", "", *text, ""]
    lines += [decide(per_table, default_name, served), ""]
    return lines
