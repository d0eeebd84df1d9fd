"""Cheap-then-full against full training, replayed over the curve tables (benchmarks/curves.py) through the real
driver loop: search/loop.py's `Loop` on the in-process executor, a real Optuna study on SQLite, the gate, the reuse
of repeated plans, the budget in epochs and the rung rule as a sweep runs them; only the trial is a table lookup
that reports the table's learning curve at the experiment's rungs.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks import scales
from benchmarks.curves import (
    MAX_DROP_PT,
    ROOT,
    TASKS,
    TRIALS,
    Row,
    Table,
    Trained,
    enters_front,
    load,
    margins_text,
    recommend,
    space_of,
    study_rungs,
    table_path,
)
from benchmarks.hypervolume import Point, hypervolume
from benchmarks.replay import fast_disk, no_timer, offline_tracker
from benchmarks.tabular_grid import plan_key

STOPPED = "stopped at a rung"


@dataclass
class CurveTrial:
    """A trial answered from a curve table: stopped by the gate as search/trial.py stops one (before training,
    when its structure is slower and larger than a bar member), else trained in rungs: after each of ctx.rungs
    inside its training it reports the table's accuracy at that epoch with its structure's latency and size, and
    ends there when the report is answered False."""

    rows: dict[str, Row]
    calls: list[int] = field(default_factory=list)

    def __call__(self, number: int, plan: Any, ctx: Any, time_model: Any, bar: Any, report: Any) -> Any:
        from search.trial import TrialResult

        self.calls.append(number)
        row = self.rows[plan_key(plan)]
        if row.accuracy is None:
            return TrialResult(number, error="the table holds no result for this plan: its training failed")
        figures = {"latency_p50_ms": row.p50_ms, "size_mb": row.size_mb}
        if bar and not plan.weights_decide_structure() and (by := bar.dominator(row.p50_ms, row.size_mb)):
            info = {"skipped_training": True, "dominated_by": by.number, "latency_cache": "miss"}
            return TrialResult(number, metrics=dict(figures), info=info)
        planned = row.epochs_planned
        for i, epochs, acc in row.reports(tuple(getattr(ctx, "rungs", ()) or ())):
            metrics = {"accuracy": acc, "epochs": float(epochs), "epochs_planned": float(planned), **figures}
            if not report(i, metrics):
                info = {"skipped_training": False, "stopped_at_rung": i, "epochs_used": epochs}
                info["epochs_planned"] = planned
                return TrialResult(number, metrics={"accuracy_so_far": acc, **figures, "params": 0.0}, info=info)
        info = {"skipped_training": False, "epochs_used": planned, "epochs_planned": planned}
        metrics = {"accuracy": row.accuracy, **figures, "params": 0.0}
        return TrialResult(number, metrics=metrics, onnx=b"", info=info)


@dataclass(frozen=True)
class Event:
    """One plan as the loop answered it, with the compute spent so far."""

    number: int
    key: str
    kind: str  # trained, stopped (at a rung), gated (the gate, before training), reused, failed
    epochs: float  # this plan's training epochs
    seconds: float  # its CPU seconds (the table's training time, the share of it a stopped plan trained)
    rung: int | None = None


class _Recorder:
    """Listens to the loop and keeps every plan it answered, in order."""

    def __init__(self, rows: dict[str, Row]) -> None:
        self.rows, self.events, self.keys = rows, [], {}

    def drawer(self, space: Any) -> Any:
        from spaces.plan import sample

        def draw(trial: Any) -> Any:
            plan = sample(trial, space)
            self.keys[trial.number] = plan_key(plan)
            return plan

        return draw

    def trial_told(self, loop: Any, told: Any) -> None:
        if told.taken_over:
            return
        key, info = self.keys[told.number], told.result.info
        row = self.rows[key]
        full_s = row.train_s
        if not told.result.ok:
            self.events.append(Event(told.number, key, "failed", 0.0, 0.0))
        elif info.get("dominated_by") is not None:
            self.events.append(Event(told.number, key, "gated", 0.0, 0.0))
        elif info.get("stopped_at_rung") is not None:
            used = float(info["epochs_used"])
            share = used / row.epochs_planned if row.epochs_planned else 0.0
            self.events.append(Event(told.number, key, "stopped", used, full_s * share, info["stopped_at_rung"]))
        else:
            self.events.append(Event(told.number, key, "trained", float(row.epochs_planned), full_s))

    def trial_reused(self, loop: Any, number: int, rec: Any) -> None:
        kind = "gated" if rec.dominated_by is not None or rec.info.stopped_at_rung is not None else "reused"
        self.events.append(Event(number, self.keys.get(number, ""), kind, 0.0, 0.0))


@dataclass(frozen=True)
class Serving:
    """How a replay serves the pick: its bar (pick.max_accuracy_drop), whether the rung rule also stops plans that
    cannot reach it (early_stopping.serve_pick), and the constraint told to Optuna (constraints.max_accuracy_drop:
    TPE ranks an infeasible trial below every feasible one)."""

    pick_drop: float = MAX_DROP_PT
    serve_pick: bool = False
    constraint_drop: float = MAX_DROP_PT


def experiment_dict(
    folder: Path,
    *,
    seed: int,
    epochs: float,
    trials: int,
    rungs: tuple[int, ...],
    margins: tuple[float, ...],
    serving: Serving = Serving(),
) -> dict[str, Any]:
    """A replay's experiment file: the quickstart's objectives and constraint, TPE, a budget in epochs, and
    cheap-then-full with these rungs (none: full training); `serving` may tighten the pick and the constraint."""
    stopping: dict[str, Any] = {"rungs": list(rungs), **({"margin_pt": list(margins)} if rungs else {})}
    if rungs and serving.serve_pick:
        stopping["serve_pick"] = True
    search: dict[str, Any] = {
        "sampler": "tpe",
        "trials": trials,
        "parallel": 1,
        "seed": seed,
        "max_retries": 0,
        "budget": {"epochs": epochs},
        "early_stopping": stopping,
    }
    return {
        "name": "curves-replay",
        "objectives": ["accuracy", "latency_p50_ms", "size_mb"],
        "constraints": {"max_accuracy_drop": serving.constraint_drop},
        "pick": {"max_accuracy_drop": serving.pick_drop},
        "search": search,
        "output_dir": str(folder),
    }


def run(
    table: Table,
    space: Any,
    *,
    seed: int,
    epochs: float,
    trials: int,
    rungs: tuple[int, ...] = (),
    margins: tuple[float, ...] = (),
    n_val: int = 400,
    serving: Serving = Serving(),
) -> list[Event]:
    """One sweep over the table through the real loop, to a budget of `epochs` student epochs: every plan it
    answered, in order."""
    import optuna

    from search.config import parse
    from search.inprocess import InProcessExecutor
    from search.ledger import Ledger
    from search.loop import Loop, SweepSummary
    from search.study import new_driver_id, open_study
    from search.sweep import Heartbeat

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("slimsweep.sweep").setLevel(logging.ERROR)
    folder = Path(tempfile.mkdtemp(prefix="slimsweep-curves-", dir=fast_disk()))
    try:
        exp = parse(
            experiment_dict(
                folder, seed=seed, epochs=epochs, trials=trials, rungs=rungs, margins=margins, serving=serving
            )
        )
        study = open_study(exp)
        rows = {r.key: r for r in table.rows}
        executor = InProcessExecutor(exp.target.spec(), trial=CurveTrial(rows), slots=1, timer=no_timer)
        recorder = _Recorder(rows)
        driver = new_driver_id()
        unit, amount = exp.search.compute_budget()
        loop = Loop(
            exp,
            executor,
            study,
            offline_tracker(),
            SweepSummary(),
            teacher={"accuracy": table.teacher_accuracy},
            ctx_ref=SimpleNamespace(rungs=tuple(rungs)),
            driver=driver,
            ledger=Ledger(amount, list(study.directions), unit=unit, trials=trials),
            n_val=n_val,
            listeners=[recorder],
            plan_of=recorder.drawer(space),
        )
        with Heartbeat(study, driver, exp.search.heartbeat_s):
            loop.run()
        return recorder.events
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------- measure


def teacher_row(table: Table) -> Row:
    """The fp32 teacher's own row (the hypervolume's baseline)."""
    return next(r for r in table.rows if r.epochs_planned == 0 and r.accuracy == table.teacher_accuracy)


def hv_curve(table: Table, events: list[Event]) -> tuple[list[float], list[float]]:
    """Cumulative epochs after each event and the hypervolume of the plans trained to their end by then
    (benchmarks/hypervolume.py: within the accuracy constraint, faster and smaller than the teacher)."""
    rows = {r.key: r for r in table.rows}
    t = teacher_row(table)
    points: list[Point] = []
    spent, xs, ys = 0.0, [], []
    for e in events:
        spent += e.epochs
        if e.kind == "trained":
            r = rows[e.key]
            points.append(Point(table.teacher_accuracy - r.accuracy, r.p50_ms, r.size_mb, t.p50_ms, t.size_mb))
        xs.append(spent)
        ys.append(hypervolume(points, (MAX_DROP_PT, 1.0, 1.0)))
    return xs, ys


def false_stops(table: Table, events: list[Event]) -> tuple[int, int]:
    """(stopped plans that, trained to their end as the table did, would have entered the front of the plans
    trained before them; stopped plans)."""
    rows = {r.key: r for r in table.rows}
    trained, bad, stopped = Trained(len(events) + 1), 0, 0
    for e in events:
        if e.kind == "trained":
            trained.add(rows[e.key])
        elif e.kind == "stopped":
            stopped += 1
            bad += enters_front(rows[e.key], trained, table.floor)
    return bad, stopped


def compute_to_reach(xs: list[float], ys: list[float], target: float) -> float | None:
    """The epochs spent when the hypervolume first reaches `target` (None: never)."""
    return next((x for x, y in zip(xs, ys) if y >= target - 1e-12), None)


def median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


# ---------------------------------------------------------------------------------------------------------- report

GOAL_HV_SHARE, GOAL_COMPUTE_SHARE = 0.95, 0.40  # the goal: 95% of full training's final HV in <= 40% compute


@dataclass
class Arm:
    """One way of training (full, or cheap-then-full with rungs), over several seeds."""

    name: str
    rungs: tuple[int, ...]
    margins: tuple[float, ...]
    runs: dict[int, list[Event]] = field(default_factory=dict)
    serving: Serving = Serving()

    def tried(self, seed: int) -> list[Event]:
        """The plans this seed trained, whole or to a rung (the gate's, repeats and failures aside)."""
        return [e for e in self.runs[seed] if e.kind in ("trained", "stopped")]

    def per_cpu_hour(self, seed: int) -> float:
        """Plans tried per CPU-hour of training (the table's training times)."""
        seconds = sum(e.seconds for e in self.runs[seed])
        return len(self.tried(seed)) / (seconds / 3600.0) if seconds else float("nan")


def run_arms(
    table: Table, space: Any, arms: list[Arm], seeds: list[int], *, epochs: float, trials: int, n_val: int
) -> None:
    """Every arm at every seed, to the same budget in epochs."""
    for arm in arms:
        for seed in seeds:
            arm.runs[seed] = run(
                table,
                space,
                seed=seed,
                epochs=epochs,
                trials=trials,
                rungs=arm.rungs,
                margins=arm.margins,
                n_val=n_val,
                serving=arm.serving,
            )


def plot(table: Table, arms: list[Arm], title: str, path: Path) -> None:
    """Hypervolume against epochs spent, one line per arm and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, arm in enumerate(arms):
        colour = f"C{k}"
        for j, (seed, events) in enumerate(sorted(arm.runs.items())):
            xs, ys = hv_curve(table, events)
            label = f"{arm.name} (seeds {', '.join(map(str, sorted(arm.runs)))})" if j == 0 else None
            ax.step(xs, ys, where="post", color=colour, alpha=0.8, linewidth=1.2, label=label)
    ax.set(xlabel="student epochs spent (the budget's unit)", ylabel="hypervolume of the front", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass(frozen=True)
class Outcome:
    """One cheap-then-full arm against full training, over the seeds."""

    share: float  # median share of full training's epochs to reach GOAL_HV_SHARE of its final HV (inf: never)
    false_stops: int
    stopped: int

    @property
    def rate(self) -> float:
        return self.false_stops / self.stopped if self.stopped else 0.0

    @property
    def met(self) -> bool:
        return self.share <= GOAL_COMPUTE_SHARE and self.rate <= 0.1

    def words(self) -> str:
        share = "never" if self.share == float("inf") else f"{self.share:.0%}"
        return (
            f"{GOAL_HV_SHARE:.0%} of full training's final hypervolume with {share} of its compute (median of seeds; "
            f"goal <= {GOAL_COMPUTE_SHARE:.0%}), false stops {self.false_stops}/{self.stopped} = {self.rate:.0%} of "
            f"the stopped plans (goal <= 10%): **{'met' if self.met else 'not met'}**"
        )


def compare_text(table: Table, full: Arm, cheap: Arm, seeds: list[int]) -> tuple[list[str], Outcome]:
    """The per-seed table of one cheap-then-full arm against full training, and the outcome against the goals."""
    lines = [
        "| seed | full: plans trained / final HV / epochs | cheap-then-full: plans tried (stopped) / final HV / "
        f"epochs | epochs to {GOAL_HV_SHARE:.0%} of full's final HV (share of full's epochs): cheap-then-full / "
        "full itself | false stops | plans per CPU-hour: full / cheap-then-full |",
        "|---|---|---|---|---|---|",
    ]
    shares, own, bad_all, stopped_all = [], [], 0, 0
    for seed in seeds:
        fx, fy = hv_curve(table, full.runs[seed])
        cx, cy = hv_curve(table, cheap.runs[seed])
        full_spent = fx[-1] if fx else 0.0
        reach = compute_to_reach(cx, cy, GOAL_HV_SHARE * (fy[-1] if fy else 0.0))
        share = None if reach is None or not full_spent else reach / full_spent
        shares.append(float("inf") if share is None else share)
        # Full training's own way there: how much of the goal the sampler alone already meets.
        itself = compute_to_reach(fx, fy, GOAL_HV_SHARE * (fy[-1] if fy else 0.0))
        own.append(itself / full_spent if itself is not None and full_spent else float("inf"))
        bad, stopped = false_stops(table, cheap.runs[seed])
        bad_all, stopped_all = bad_all + bad, stopped_all + stopped
        n_stopped = sum(e.kind == "stopped" for e in cheap.runs[seed])
        lines.append(
            f"| {seed} | {len(full.tried(seed))} / {fy[-1] if fy else 0:.4f} / {full_spent:g} | "
            f"{len(cheap.tried(seed))} ({n_stopped}) / {cy[-1] if cy else 0:.4f} / {cx[-1] if cx else 0:g} | "
            f"{'never' if reach is None else f'{reach:g} ({share:.0%})'} / {itself:g} ({own[-1]:.0%}) | "
            f"{bad}/{stopped} | "
            f"{full.per_cpu_hour(seed):.0f} / {cheap.per_cpu_hour(seed):.0f} |"
        )
    outcome = Outcome(median(shares), bad_all, stopped_all)
    note = f"Full training itself reaches it with {median(own):.0%} of its epochs (median)."
    return lines + ["", f"{cheap.name}: {outcome.words()}. {note}"], outcome


ONECYCLE_NOTE = (
    "**What OneCycleLR does to the curves.** The student trains with OneCycleLR over its whole run "
    "(spaces/students.py): the learning rate starts at 1/25 of its peak, climbs for the first 30% of the steps and "
    "anneals to almost nothing at the end. So the first epoch is taken at a tiny learning rate (most digits "
    "students are still near chance, 10%, after it), the next ones at the peak (accuracy jumps about, a few points "
    "from epoch to epoch), and the last third gains little: the gain still to come after a rung depends on where "
    "the rung falls in the schedule, not on its epoch count. A margin measured for 12 epochs does not carry over "
    "to a plan of 6 or 40; pruning's recovery is a run of its own (its own OneCycle): accuracy drops when the "
    "channels go, then climbs back within its first epochs."
)


def _code_defaults() -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The rungs and margins an experiment file gets when it names none (search/config.py)."""
    from search.config import EarlyStopping

    es = EarlyStopping()
    return tuple(es.rungs), tuple(es.margins())


def _mean_epochs(table: Table) -> float:
    return float(np.mean([r.epochs_planned for r in table.rows if r.accuracy is not None]))


def section(out_dir: Path, quick: bool) -> str:
    """The report's section on cheap-then-full: the measured curves, the margins and rungs they give, and the rule
    against full training at equal compute through the real loop; writes its PNGs into out_dir."""
    start = time.perf_counter()
    scale = scales.of(quick).curves  # benchmarks/scales.py
    names = list(scale.tables) if scale.tables else [t for t in sorted(TASKS) if table_path(t).exists()]
    tables = {t: load(t) for t in names if table_path(t).exists()}
    if not tables:
        return "## Cheap-then-full\n\nSkipped: no curve table in benchmarks/data (python benchmarks/curves.py build).\n"
    orders = scale.orders
    studies = {name: study_rungs(t, orders=orders) for name, t in tables.items()}
    choices = recommend(tables, studies, orders=orders)
    best = choices[0] if choices else None
    # The full report also replays the best set in shares of a plan's epochs (they carry across plan lengths).
    shares = next((c for c in choices if c.rungs[0] < 1 and c is not best), None) if scale.shares else None
    seeds = list(scale.seeds)
    lines = [
        "## Cheap-then-full: stopping plans at rungs, from measured learning curves",
        "",
        "Curve tables (every plan of a small grid trained once by the project's trial, reporting its accuracy after "
        "every epoch before the last; the deployed model's figures at the end): "
        + "; ".join(
            f"`{table_path(n).relative_to(ROOT)}`, {len(t.rows)} plans, made by `{t.provenance.get('made by', '?')}` "
            f"({t.provenance.get('date', '?')})"
            for n, t in tables.items()
        )
        + ".",
        "",
        ONECYCLE_NOTE,
        "",
        "**Margins.** The rule after rung i (search/rungs.py): a plan's optimistic final accuracy is its accuracy "
        "there plus margin_pt[i]; it stops when that is below the feasibility floor (teacher less 1 point) or when a "
        "plan trained to its end is as fast, as small and more accurate. Below, each rung alone, replayed on the table "
        "in random orders: the smallest margin (in steps of one validation image) at which at most 1 in 10 of the "
        "plans it stops would have entered the front of the plans trained before it.",
        "",
        margins_text(tables, orders, studies=studies, choices=choices).rstrip(),
        "",
    ]
    defaults = _code_defaults()
    arms_by_table: dict[str, list[Arm]] = {}
    budgets: dict[str, tuple[float, int]] = {}
    default_name = ""
    for name, table in tables.items():
        trainings = TRIALS[name]
        epochs = round(trainings * _mean_epochs(table))
        full = Arm("full training", (), ())
        arms = [full]
        if best is not None:
            arms.append(Arm(f"recommended: rungs {list(best.rungs)}", best.rungs, best.margins))
        if shares is not None:
            arms.append(Arm(f"best in shares: rungs {list(shares.rungs)}", shares.rungs, shares.margins))
        if defaults[0] and (best is None or defaults != (best.rungs, best.margins)):
            arms.append(Arm(f"the code's default: rungs {list(defaults[0])}", *defaults))
        default_name = next((a.name for a in arms[1:] if (a.rungs, a.margins) == defaults), "")
        run_arms(table, space_of(name), arms, seeds, epochs=epochs, trials=trainings, n_val=table.n_val)
        arms_by_table[name], budgets[name] = arms, (epochs, trainings)
        png = out_dir / f"curves-{name}.png"
        out_dir.mkdir(parents=True, exist_ok=True)
        plot(table, arms, f"{name}: hypervolume against compute, {epochs} epochs each", png)
        lines += [
            f"**Through the real loop, {name}.** TPE, the gate on, a budget of {epochs} student epochs for each "
            f"({trainings} trainings of the table's mean {_mean_epochs(table):.1f} epochs), seeds {seeds}; "
            "hypervolume as benchmarks/hypervolume.py takes it (within 1 point of the teacher, faster and smaller than "
            "it). A false stop: a stopped plan whose figures trained to the end (the table's) would have entered the "
            "front of the plans trained before it. CPU-hours: the table's training time of each plan (a stopped plan "
            "its share).",
            "",
        ]
        for arm in arms[1:]:
            text, outcome = compare_text(table, full, arm, seeds)
            lines += [f"*{arm.name}, margins {list(arm.margins)} pt:*", "", *text, ""]
            lines.append(
                f"> Cheap-then-full on {name} ({arm.name}, margins {list(arm.margins)} pt): {outcome.words()}."
            )
            lines.append("")
        lines += [f"![hypervolume against epochs, {name}]({os.path.relpath(png, ROOT / 'docs')})", ""]
    if default_name:  # serving the pick is measured against the code's default rungs
        from benchmarks.curves_pick import section_lines

        spaces = {name: space_of(name) for name in tables}
        lines += section_lines(tables, spaces, arms_by_table, budgets, default_name, defaults, quick)
    lines.append(
        f"Command: `python benchmarks/curves.py replay{' --quick' if quick else ''}` "
        f"({time.perf_counter() - start:.0f} s here; the tables: `python benchmarks/curves.py build digits|mnist`)."
    )
    return "\n".join(lines) + "\n"
