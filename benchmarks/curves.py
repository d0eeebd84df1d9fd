"""Learning curves of real trials, and what they say about cheap-then-full (issue #20): which rungs, which margin.

Usage:
  python benchmarks/curves.py build digits|mnist [--work DIR]
      trains every plan of a small grid of the quickstart's space (digits: 25 students x 3 pruning ratios x 3
      schemes, 225 plans) or of experiments/mnist.yaml's space on a 3,000-image sample of the shipped MNIST (30
      plans) with the project's trial (search.trial.run_trial, reporting after every epoch before the last),
      re-times every model in one interleaved pass (one model per structure) and writes
      benchmarks/data/curves-<task>.csv. Resumable: trainings already in DIR/rows.csv are kept (default DIR:
      outputs/curves-<task>).
  python benchmarks/curves.py margins [digits|mnist ...]
      per rung (1, 2, 3 ... epochs, and shares of a plan's epochs): the distribution of final deployed accuracy
      minus accuracy at the rung, the smallest margin at which at most 1 in 10 plans the rule stops would have
      entered the front of the plans trained before them (the rule, with the gate, replayed on a sweep's worth of
      the table's plans in many random orders), and the recommended rungs and margins
  python benchmarks/curves.py replay [--quick] [--out docs/benchmarks]
      the margins, then cheap-then-full (the recommended rungs) against full training at equal epochs through the
      real loop (benchmarks/curves_replay.py), 5 seeds per table (--quick: digits alone, 3 seeds); then serving
      the pick (benchmarks/curves_pick.py): the fastest model within 1 and 0.25 pt of the teacher found against
      compute, for full training, the default rungs, and the default with serve_pick or with the pick's bar as the
      constraint (--quick: 2 seeds); prints the report's section and writes its PNGs

Plans that share a student and a pruning choice share one training (quantization follows training), as in
benchmarks/tabular_grid.py: a row's curve is its training's, its final figures are its own deployed model's.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout: import the project beside it
    sys.path.insert(0, str(ROOT))

from benchmarks.tabular_grid import read_rows  # noqa: E402
from spaces.plan import Space  # noqa: E402

DATA = ROOT / "benchmarks" / "data"

# The quickstart's space (experiments/digits.yaml) with its distillation ranges made short lists (their ends), so
# that a replay's every plan is in the table.
DIGITS_SPACE: dict[str, Any] = {
    "students": {
        "teacher": True,
        "cnn": {
            "width": [0.25, 0.5, 0.75],
            "depth": [1, 2],
            "temperature": [2.0, 6.0],
            "alpha": [0.5, 0.9],
            "epochs": 12,
        },
    },
    "pruning": {"ratio": [0.0, 0.25, 0.5], "recover_epochs": 4},
    "quantization": {"schemes": ["fp32", "int8_dynamic", "int8_static_qdq"]},
}
# experiments/mnist.yaml's space (its distillation ranges fixed as experiments/bench/ does), on the 3,000-image
# sample the quick report uses (benchmarks/realdata.py QUICK).
MNIST_SPACE: dict[str, Any] = {
    "students": {
        "teacher": True,
        "cnn": {"width": [0.25, 0.5], "depth": [1, 2], "temperature": 4.0, "alpha": 0.7, "epochs": 6},
    },
    "pruning": {"ratio": [0.0, 0.5], "recover_epochs": 2},
    "quantization": {"schemes": ["fp32", "int8_static_qdq", "int8_dynamic"]},
}
TASKS: dict[str, dict[str, Any]] = {
    "digits": {"name": "digits", "seed": 0, "teacher": {"width": 1.0, "depth": 2, "epochs": 30, "lr": 0.003}},
    "mnist": {
        "name": "mnist-idx",
        "seed": 0,
        "limit": 3000,
        "teacher": {"width": 1.0, "depth": 2, "epochs": 8, "lr": 0.003},
    },
}
SPACES = {"digits": DIGITS_SPACE, "mnist": MNIST_SPACE}
# Full training's budget: the experiment files' search.trials (experiments/digits.yaml, experiments/mnist.yaml) in
# trainings; cheap-then-full tries about half as many plans again in the same compute, so the margins are judged on
# sweeps of that many plans, where the front is still young and a wrong stop costs most.
TRIALS = {"digits": 24, "mnist": 16}
SWEEP_PLANS = {task: round(1.5 * n) for task, n in TRIALS.items()}
MAX_DROP_PT = 1.0  # both experiment files' constraints.max_accuracy_drop: the feasibility floor below the teacher
COLUMNS = [
    "key",
    "label",
    "group",
    "student",
    "pruning_ratio",
    "scheme",
    "epochs_planned",
    "curve",
    "accuracy",
    "latency_p50_ms",
    "size_mb",
    "train_s",
    "error",
]


def table_path(task: str) -> Path:
    """Where a task's curve table is kept."""
    return DATA / f"curves-{task}.csv"


def space_of(task: str) -> Space:
    """The task's grid as the project's search space."""
    return Space.model_validate(SPACES[task])


# -------------------------------------------------------------------------------------------------------- margins


@dataclass(frozen=True)
class Row:
    """One plan of a curve table."""

    key: str
    label: str
    group: str  # the training it shares with the other schemes of its student and pruning
    curve: tuple[float, ...]  # accuracy % after epochs 1, 2, ... before the last (the torch model)
    epochs_planned: int
    accuracy: float | None  # the deployed model's; None: the plan failed
    p50_ms: float
    size_mb: float
    train_s: float = 0.0

    def at(self, rung: float) -> float | None:
        """The accuracy the trial reports at a rung (an epoch count, or a share of its epochs below 1); None where it
        reports nothing (at or past its last epoch, or no training at all)."""
        epochs = rung_epoch(rung, self.epochs_planned)
        return self.curve[epochs - 1] if 1 <= epochs <= len(self.curve) and epochs < self.epochs_planned else None

    def reports(self, rungs: tuple[float, ...]) -> list[tuple[int, int, float]]:
        """(rung index, epochs, accuracy) of each report the trial makes, as search/trial.py makes them: once per
        epoch that is a rung, under the first rung that falls there."""
        out, seen = [], set()
        for i, r in enumerate(rungs):
            epochs, acc = rung_epoch(r, self.epochs_planned), self.at(r)
            if acc is not None and epochs not in seen:
                seen.add(epochs)
                out.append((i, epochs, acc))
        return out


def rung_epoch(rung: float, planned: int) -> int:
    """A rung's epoch in a training of `planned` epochs (search.trial.rung_epochs): a rung below 1 is that share of
    them, at least one."""
    return max(1, round(rung * planned)) if rung < 1 else int(rung)


@dataclass(frozen=True)
class Table:
    """A task's curve table and its teacher's accuracy (the feasibility floor is MAX_DROP_PT below it)."""

    rows: tuple[Row, ...]
    teacher_accuracy: float
    provenance: dict[str, str] = dataclasses.field(default_factory=dict)
    # Plans a sweep of the task tries (the rule is judged on that many from a random order); None: all of them.
    sweep: int | None = None

    @property
    def floor(self) -> float:
        """The feasibility floor: the experiment files' max_accuracy_drop below the teacher."""
        return self.teacher_accuracy - MAX_DROP_PT

    @property
    def n_val(self) -> int:
        """Validation images (the gate's accuracy noise); 400, the digits task's, for a table that does not say."""
        return int(self.provenance.get("validation images", 400))


def load(task_or_path: str | Path) -> Table:
    """Read a curve table; its teacher is the unpruned fp32 teacher's row."""
    path = table_path(task_or_path) if task_or_path in TASKS else Path(task_or_path)
    rows, teacher = [], None
    for r in read_rows(path):
        ok = not r["error"]
        row = Row(
            key=r["key"],
            label=r["label"],
            group=r["group"],
            curve=tuple(float(a) for a in r["curve"].split()),
            epochs_planned=int(r["epochs_planned"]),
            accuracy=float(r["accuracy"]) if ok else None,
            p50_ms=float(r["latency_p50_ms"]) if ok else float("inf"),
            size_mb=float(r["size_mb"]) if ok else float("inf"),
            train_s=float(r["train_s"] or 0),
        )
        rows.append(row)
        if r["student"] == "teacher" and float(r["pruning_ratio"]) == 0 and r["scheme"] == "fp32":
            teacher = row.accuracy
    if teacher is None:
        raise ValueError(f"{path} has no row for the fp32 teacher (student teacher, pruning 0, scheme fp32)")
    head = [line[2:] for line in path.read_text().splitlines() if line.startswith("# ")]
    provenance = {h.split(":", 1)[0]: h.split(":", 1)[1].strip() for h in head if ":" in h}
    sweep = SWEEP_PLANS.get(str(task_or_path)) if task_or_path in TASKS else None
    return Table(tuple(rows), teacher, provenance, sweep)


class Trained:
    """The plans trained to their end so far, as arrays: the rule and the front ask of every one at once."""

    def __init__(self, capacity: int) -> None:
        self.rows: list[Row] = []
        self.figures = np.empty((capacity, 3))  # accuracy, p50, size

    def add(self, row: Row) -> None:
        """One more plan trained to its end (a failed plan trains nothing that counts)."""
        if row.accuracy is not None:
            self.figures[len(self.rows)] = (row.accuracy, row.p50_ms, row.size_mb)
            self.rows.append(row)

    def feasible(self, floor: float) -> np.ndarray:
        """(accuracy, p50, size) of the trained plans at or above the floor."""
        f = self.figures[: len(self.rows)]
        return f[f[:, 0] >= floor]


@dataclass(frozen=True)
class Rule:
    """Cheap-then-full's rule as the lead's search/rungs.py states it: after rung i a plan's optimistic final
    accuracy is its accuracy there plus margins[i]; it stops when that is below the feasibility floor, or when a
    trained feasible plan is at least as fast (its p50 at most (1 + drift) times the plan's: timings taken apart
    tie within the drift), at least as small, and more accurate than that."""

    rungs: tuple[float, ...]  # epoch counts, or shares of a plan's epochs (all below 1)
    margins: tuple[float, ...]
    floor: float
    drift: float = 0.0

    def stop(self, row: Row, trained: Trained) -> tuple[int, bool, int] | None:
        """Where the rule stops `row` given the plans trained so far: (rung index, whether a trained plan stopped
        it rather than the floor, epochs trained); None when it trains to the end."""
        f = trained.feasible(self.floor)
        for i, epochs, acc in row.reports(self.rungs):
            hope = acc + self.margins[i]
            if hope < self.floor:
                return i, False, epochs
            over = (f[:, 0] > hope) & (f[:, 2] <= row.size_mb) & (f[:, 1] <= row.p50_ms * (1.0 + self.drift))
            if over.any():
                return i, True, epochs
        return None


def enters_front(row: Row, trained: Trained, floor: float) -> bool:
    """Whether the plan, trained to its end, would be on the front of the plans trained so far: feasible, and no
    trained feasible plan at least as good on all three objectives and better on one."""
    if row.accuracy is None or row.accuracy < floor:
        return False
    f = trained.feasible(floor)
    a, p, s = row.accuracy, row.p50_ms, row.size_mb
    weak = (f[:, 0] >= a) & (f[:, 1] <= p) & (f[:, 2] <= s)
    strict = (f[:, 0] > a) | (f[:, 1] < p) | (f[:, 2] < s)
    return not bool((weak & strict).any())


@dataclass
class RuleReplay:
    """The rule replayed over a table in random orders: what it stopped, what that cost and saved."""

    plans: int = 0
    stopped: int = 0
    false_stops: int = 0  # stopped plans that would have entered the front
    stopped_at: dict[int, int] = dataclasses.field(default_factory=dict)  # rung index -> plans stopped there
    epochs_used: float = 0.0
    epochs_full: float = 0.0  # what training every plan to its end would have cost

    @property
    def false_rate(self) -> float:
        """False stops among stopped plans (0 when none stopped)."""
        return self.false_stops / self.stopped if self.stopped else 0.0

    @property
    def saved(self) -> float:
        """The share of the epochs that the stops saved."""
        return 1.0 - self.epochs_used / self.epochs_full if self.epochs_full else 0.0


def gated(row: Row, trained: Trained, teacher_accuracy: float, n_val: int) -> bool:
    """Whether the sweep's gate (search/gate.py) stops the plan before training: its structure is slower and larger
    than a trained feasible plan within one standard error of the best accuracy (the teacher's included)."""
    from search.gate import CLEAR_MARGIN, SIZE_MARGIN, accuracy_noise_pt

    f = trained.figures[: len(trained.rows)]
    best = max([teacher_accuracy, *f[:, 0]])
    members = f[f[:, 0] >= best - accuracy_noise_pt(best, n_val)]
    p, s = row.p50_ms, row.size_mb
    clearly = (members[:, 1] < p * (1.0 - CLEAR_MARGIN)) | (members[:, 2] < (1.0 - SIZE_MARGIN) * s)
    return bool(((members[:, 1] <= p) & (members[:, 2] <= s) & clearly).any())


def replay_rule(
    table: Table, rule: Rule, orders: int = 40, seed: int = 0, plans: int | None = None, gate: bool = True
) -> RuleReplay:
    """Run the rule over the table's plans in `orders` random orders (the first `plans` of each, by default the
    table's sweep; None there: all): each plan is stopped at a rung or trained to its end and joins the trained
    plans. With `gate`, as in a sweep, a plan the gate stops before training is left out (it trains nothing)."""
    rng = random.Random(seed)
    out = RuleReplay()
    for _ in range(orders):
        order = list(table.rows)
        rng.shuffle(order)
        trained = Trained(len(order))
        for row in order[: plans or table.sweep]:
            if gate and gated(row, trained, table.teacher_accuracy, table.n_val):
                continue
            out.plans += 1
            out.epochs_full += row.epochs_planned
            verdict = rule.stop(row, trained)
            if verdict is None:
                out.epochs_used += row.epochs_planned
                trained.add(row)
                continue
            i = verdict[0]
            out.stopped += 1
            out.stopped_at[i] = out.stopped_at.get(i, 0) + 1
            out.epochs_used += verdict[2]
            out.false_stops += enters_front(row, trained, rule.floor)
    return out


def gains(table: Table, rung: float) -> list[float]:
    """Final deployed accuracy minus the accuracy at a rung, for every plan that reports there."""
    return [r.accuracy - a for r in table.rows if r.accuracy is not None and (a := r.at(rung)) is not None]


MARGIN_STEP = 0.25  # points: one image of a 400-image validation split
FALSE_STOP_GOAL = 0.1  # at most 1 in 10 stopped plans would have entered the front


def smallest_margin(
    table: Table, epochs: float, *, orders: int = 40, goal: float = FALSE_STOP_GOAL, drift: float = 0.0
) -> float:
    """The smallest margin (a multiple of MARGIN_STEP) at which a rule with this one rung keeps false stops at or
    under `goal`, at that margin and at every larger one tried (so that a lucky dip is not taken)."""
    top = max([0.0, *gains(table, epochs)]) + MARGIN_STEP  # past the largest gain nothing is stopped wrongly

    def ok(m: float) -> bool:
        return replay_rule(table, Rule((epochs,), (m,), table.floor, drift), orders).false_rate <= goal

    grid = [round(k * MARGIN_STEP, 4) for k in range(int(top / MARGIN_STEP) + 2)]
    # From the top down: the first margin that fails ends the run of margins that all pass.
    best = grid[-1]
    for m in reversed(grid):
        if not ok(m):
            break
        best = m
    return best


@dataclass(frozen=True)
class RungStudy:
    """One rung on one table: the gains after it, its smallest safe margin, and what that margin stops."""

    epochs: float  # an epoch count, or a share of a plan's epochs below 1
    gains: list[float]
    margin: float
    replay: RuleReplay


SHARES = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)  # rungs as shares of a plan's epochs (search/config.py)


def study_rungs(table: Table, *, orders: int = 40, drift: float = 0.0) -> list[RungStudy]:
    """Every rung some plan of the table reports at (epoch counts, then the SHARES), each as the rule's only rung."""
    last = max(r.epochs_planned for r in table.rows)
    out = []
    for epochs in [*range(1, last), *SHARES]:
        g = gains(table, epochs)
        if not g:
            continue
        m = smallest_margin(table, epochs, orders=orders, drift=drift)
        out.append(RungStudy(epochs, g, m, replay_rule(table, Rule((epochs,), (m,), table.floor, drift), orders)))
    return out


@dataclass(frozen=True)
class Choice:
    """A set of rungs with their margins, and the rule's replay on each table."""

    rungs: tuple[float, ...]
    margins: tuple[float, ...]
    replays: dict[str, RuleReplay]

    def worst(self) -> tuple[float, float]:
        """(the smallest share of epochs saved, the largest false-stop rate) over the tables."""
        return min(r.saved for r in self.replays.values()), max(r.false_rate for r in self.replays.values())


TOP_SETS = 8  # rung sets replayed again on every order, and shown


def recommend(
    tables: dict[str, Table], studies: dict[str, list[RungStudy]], *, most: int = 3, orders: int = 40
) -> list[Choice]:
    """Sets of up to `most` rungs that every table reports at, each rung at the largest of its tables' smallest
    margins, replayed on every table; best first: within the false-stop goal on all, then most epochs saved on the
    table that saves least."""
    from itertools import combinations

    margins: dict[float, float] = {}
    for rungs in studies.values():
        for st in rungs:
            margins[st.epochs] = max(margins.get(st.epochs, 0.0), st.margin)
    common = sorted(set.intersection(*({st.epochs for st in rungs} for rungs in studies.values())))
    # Rungs that stop something alone; the others only add reports.
    useful = [e for e in common if all(st.replay.stopped for st in _pick(studies, e))]

    def choice(rungs: tuple[float, ...], n: int) -> Choice:
        ms = tuple(margins[e] for e in rungs)
        return Choice(rungs, ms, {name: replay_rule(t, Rule(rungs, ms, t.floor), n) for name, t in tables.items()})

    def rank(c: Choice) -> tuple[bool, float, int]:
        return c.worst()[1] > FALSE_STOP_GOAL, -c.worst()[0], len(c.rungs)

    # Every set scored on a quarter of the orders; the best few again on all of them (hundreds of sets).
    rough = sorted(
        (
            choice(rungs, max(1, orders // 4))
            for kind in ([e for e in useful if e >= 1], [e for e in useful if e < 1])  # counts, or shares: not both
            for k in range(1, most + 1)
            for rungs in combinations(kind, k)
        ),
        key=rank,
    )
    # The best sets overall, and the best in shares of a plan's epochs (which carry across plans of other lengths).
    kept = rough[:TOP_SETS] + [c for c in rough if c.rungs[0] < 1 and c not in rough[:TOP_SETS]][:2]
    return sorted((choice(c.rungs, orders) for c in kept), key=rank)


def _pick(studies: dict[str, list[RungStudy]], epochs: int) -> list[RungStudy]:
    return [st for rungs in studies.values() for st in rungs if st.epochs == epochs]


def margins_text(
    tables: dict[str, Table],
    orders: int = 40,
    *,
    studies: dict[str, list[RungStudy]] | None = None,
    choices: list[Choice] | None = None,
) -> str:
    """The margin analysis as markdown: per table and rung, the gains and the smallest safe margin; then the
    recommended rungs and margins."""
    studies = studies or {name: study_rungs(t, orders=orders) for name, t in tables.items()}
    lines = []
    for name, t in tables.items():
        lines += [
            f"**{name}** ({len(t.rows)} plans; teacher {t.teacher_accuracy:.2f}%, feasibility floor "
            f"{t.floor:.2f}%; the first {t.sweep or len(t.rows)} plans of {orders} random orders: a sweep's worth):",
            "",
            "| rung (epochs; below 1: share of a plan's epochs) | plans reporting | gain to the final deployed "
            "accuracy, pt: min / 10% / median / 90% / "
            "max | smallest margin, pt | at it: plans stopped | false stops | epochs saved |",
            "|---|---|---|---|---|---|---|",
        ]
        for st in studies[name]:
            q = np.percentile(st.gains, [0, 10, 50, 90, 100])
            r = st.replay
            lines.append(
                f"| {st.epochs:g} | {len(st.gains)} | {' / '.join(f'{x:.2f}' for x in q)} | {st.margin:g} | "
                f"{r.stopped / r.plans:.0%} | {r.false_stops}/{r.stopped} | {r.saved:.0%} |"
            )
        lines.append("")
    choices = choices if choices is not None else recommend(tables, studies, orders=orders)
    lines += [
        "Rung sets (every table reports there; each rung at the largest of the tables' smallest margins), best first:",
        "",
        "| rungs | margins, pt | " + " | ".join(f"{n}: stopped / false stops / epochs saved" for n in tables) + " |",
        "|---|---|" + "---|" * len(tables),
    ]
    for c in choices:
        cells = [f"{r.stopped / r.plans:.0%} / {r.false_stops}/{r.stopped} / {r.saved:.0%}" for r in c.replays.values()]
        lines.append(f"| {list(c.rungs)} | {list(c.margins)} | " + " | ".join(cells) + " |")
    if choices:
        best = choices[0]
        lines += [
            "",
            f"Recommended{' for every table' if len(tables) > 1 else ''}: `early_stopping: {{rungs: "
            f"{list(best.rungs)}, margin_pt: {list(best.margins)}}}` (saves at least {best.worst()[0]:.0%} of the "
            f"epochs, false stops at most {best.worst()[1]:.0%}).",
        ]
        shares = next((c for c in choices if c.rungs[0] < 1), None)
        if shares is not None:
            lines.append(
                f"Best in shares of a plan's epochs: `rungs: {list(shares.rungs)}, margin_pt: {list(shares.margins)}` "
                f"(saves at least {shares.worst()[0]:.0%}, false stops at most {shares.worst()[1]:.0%})."
            )
    if len(tables) > 1:  # rungs are epochs: a task whose plans train longer may do better with its own
        for name, t in tables.items():
            own = recommend({name: t}, {name: studies[name]}, orders=orders)
            if own:
                b, r = own[0], own[0].replays[name]
                lines.append(
                    f"For {name} alone: rungs {list(b.rungs)}, margin_pt {list(b.margins)} (stops "
                    f"{r.stopped / r.plans:.0%}, false stops {r.false_stops}/{r.stopped}, saves {r.saved:.0%} of "
                    "the epochs)."
                )
    return "\n".join(lines) + "\n"


def section(out_dir: Path, quick: bool) -> str:
    """The report's section on cheap-then-full (benchmarks/curves_replay.py); writes its PNGs into out_dir."""
    from benchmarks import curves_replay

    return curves_replay.section(out_dir, quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train and time a task's grid, write benchmarks/data/curves-<task>.csv")
    b.add_argument("task", choices=sorted(TASKS))
    b.add_argument("--work", type=Path, default=None, help="default: outputs/curves-<task>")
    b.add_argument("--rounds", type=int, default=5)
    m = sub.add_parser("margins", help="the gains after each rung, the smallest safe margins, the recommendation")
    m.add_argument("tasks", nargs="*", default=sorted(TASKS), help="tables by task name or path")
    m.add_argument("--orders", type=int, default=40, help="random orders the rule is replayed in per table")
    r = sub.add_parser("replay", help="margins, then cheap-then-full against full training through the real loop")
    r.add_argument("--quick", action="store_true", help="the digits table only, 3 seeds, fewer random orders")
    r.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks", help="where the PNGs go")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        command = f"python benchmarks/curves.py build {args.task}"
        command += "" if args.rounds == 5 else f" --rounds {args.rounds}"
        work = args.work or ROOT / "outputs" / f"curves-{args.task}"
        work.mkdir(parents=True, exist_ok=True)
        from benchmarks.curves_build import build

        print(f"wrote {build(args.task, work, args.rounds, command)}")
        return 0
    if args.cmd == "margins":
        print(margins_text({Path(t).stem.removeprefix("curves-"): load(t) for t in args.tasks}, args.orders))
        return 0
    print(section(args.out, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
