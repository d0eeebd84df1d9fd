"""How fast does the search get there? A tabular benchmark: every plan of a grid trained and measured once, then
Optuna's samplers replayed over the table.

Usage:
  python benchmarks/tabular.py build [--work outputs/tabular-digits] [--rounds 9]
      trains and measures every plan of the grid (benchmarks/tabular_grid.py) on the digits task with the project's
      trial code (resumable: rows are appended as they finish), then re-times all of them in one interleaved pass
      and writes benchmarks/data/tabular-digits.csv
  python benchmarks/tabular.py replay [--out docs] [--quick] [--workers N]
      replays TPE, NSGA-II, GP and random (10 seeds each; --quick: 3, without GP) over the table, writes the plot
      into --out and prints the markdown section the report includes (section() below)

The replay runs the driver's own loop (benchmarks/replay.py: search/loop.py on the in-process executor) with a
trial that answers each plan from the table; plans come from the same space as the grid (spaces.plan.sample over
GRID). A plan proposed again in the same run is answered by the loop from the earlier trial, so it costs no
training: the curves count distinct plans, and the asks are reported beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout: import the project beside it
    sys.path.insert(0, str(ROOT))

from benchmarks import scales  # noqa: E402 - after the path set-up above
from benchmarks.replay import Shuffled, Step, TableTrial  # noqa: E402
from benchmarks.replay import replay as loop_replay  # noqa: E402
from benchmarks.tabular_grid import (  # noqa: E402
    TABLE,
    build,
    enumerate_space,
    grid_space,
    plan_key,
    read_rows,
)
from spaces.plan import CompressionPlan, Space, sample  # noqa: E402

# --------------------------------------------------------------------------------------------------------- replay

# How many points below the teacher's accuracy the hypervolume still counts: the pick allows 1, so 5 keeps every
# plan a user could deploy and leaves out the ones no policy would choose.
ACCURACY_FLOOR_PT = 5.0
TARGET_SHARE = 0.95  # "reaching the front": 95% of the grid's true front hypervolume
SWEEP_TRIALS = 100  # the sweep size the samplers are configured for (search.samplers.make_sampler) and the plot's axis
MAX_ASKS = 3 * SWEEP_TRIALS  # a replay gives up after this many proposals, repeats included
DIGITS_VALIDATION = 400  # images in the digits task's validation split (experiments/tasks.py): the accuracy's noise


@dataclass(frozen=True)
class Table:
    """The grid as a lookup: plan key -> (accuracy %, p50 ms, size MB), None for a plan that failed."""

    rows: dict[str, tuple[float, float, float] | None]
    teacher: tuple[float, float, float]  # the fp32 teacher, unpruned: the hypervolume's reference

    def lookup(self, plan: CompressionPlan) -> tuple[float, float, float] | None:
        """The measured objectives of exactly this plan (KeyError for a plan outside the grid)."""
        return self.rows[plan_key(plan)]


def load_table(path: Path = TABLE) -> Table:
    """Read the table; the teacher row is the unpruned, unquantized teacher."""
    rows, teacher = {}, None
    for r in read_rows(path):
        values = None if r["error"] else (float(r["accuracy"]), float(r["latency_p50_ms"]), float(r["size_mb"]))
        rows[r["key"]] = values
        if r["student"] == "teacher" and float(r["pruning_ratio"]) == 0 and r["scheme"] == "fp32":
            teacher = values
    if teacher is None:
        raise ValueError(f"{path} has no row for the fp32 teacher (student teacher, pruning 0, scheme fp32)")
    return Table(rows, teacher)


@dataclass(frozen=True)
class Normalisation:
    """Maps (accuracy, latency, size) to losses in [0, 1] where the grid's best is 0 and the reference point is 1:
    accuracy linearly, latency and size on a log scale (speed-ups and shrink factors are ratios)."""

    best: tuple[float, float, float]  # (highest accuracy, lowest p50, smallest size) over the grid
    ref: tuple[float, float, float]  # (teacher accuracy - floor, teacher p50, teacher size)

    @staticmethod
    def of(table: Table) -> Normalisation:
        ok = [v for v in table.rows.values() if v is not None]
        t = table.teacher
        return Normalisation(
            best=(max(v[0] for v in ok), min(v[1] for v in ok), min(v[2] for v in ok)),
            ref=(t[0] - ACCURACY_FLOOR_PT, t[1], t[2]),
        )

    def __call__(self, values: tuple[float, float, float]) -> np.ndarray:
        (ba, bl, bs), (ra, rl, rs) = self.best, self.ref
        acc, lat, size = values
        return np.array(
            [(ba - acc) / (ba - ra), np.log(lat / bl) / np.log(rl / bl), np.log(size / bs) / np.log(rs / bs)]
        )


def hypervolume(losses: Iterable[np.ndarray], ref: np.ndarray) -> float:
    """Optuna's hypervolume of the points (all minimised) that are strictly better than the reference point."""
    from search import optuna_store

    inside = [p for p in losses if np.all(p < ref)]
    return optuna_store.hypervolume(np.array(inside), ref) if inside else 0.0


def true_hypervolume(table: Table, norm: Normalisation) -> float:
    """The hypervolume of every plan in the grid: what a search that tried them all would find."""
    return hypervolume([norm(v) for v in table.rows.values() if v is not None], np.ones(3))


def trials_to_reach(curve: list[float], target: float) -> int | None:
    """The first trial count (1-based) at which the curve reaches the target, None if it never does."""
    return next((i + 1 for i, hv in enumerate(curve) if hv >= target), None)


@dataclass
class Run:
    """One sampler's replay: hypervolume after each distinct plan, and how many asks each distinct plan took."""

    curve: list[float]
    asks: list[int]  # asks (distinct plans + repeats answered from the table) when each distinct plan came
    keys: list[str]  # the distinct plans, in the order they came


def _sampler(name: str, seed: int) -> Any:
    import optuna

    from search.samplers import make_sampler

    variants: dict[str, Callable[[], Any]] = {
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False),
        "tpe-independent": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=10),
        "tpe-optuna-default": lambda: optuna.samplers.TPESampler(seed=seed),
    }
    return variants[name]() if name in variants else make_sampler(name, seed, SWEEP_TRIALS)


def replay(
    name: str,
    seed: int,
    table: Table,
    norm: Normalisation,
    *,
    stop_at: float,
    min_trials: int,
    max_asks: int | None = None,
    space: Space | None = None,
) -> Run:
    """Run one sampler over the table through the driver's own loop (benchmarks/replay.py) until it reaches
    `stop_at` hypervolume (and min_trials plans run), has run every plan, or made max_asks asks. A repeated plan
    is answered by the loop from the earlier trial (search/reuse.py) and trains nothing.

    A name ending in "+fresh" answers a repeat the same way and then enqueues an unseen plan drawn at random, so
    the sampler's next ask trains something new. A name ending in "+gate" turns the sweep's latency first against
    the front on (search/gate.py, as the loop and the trial run it): a new plan whose latency and size (known
    before training: the table's, which its structure decides) are both above a trained plan's within the noise of
    the best accuracy is told PRUNED and trains nothing. "uniform" is random search without replacement over the
    grid's plans (Optuna's random sampler instead draws each knob uniformly, so it favours the plans of the smaller
    branches of the space, such as the teacher's).
    """
    space = space or grid_space()
    gated = name.endswith("+gate")
    name = name.removesuffix("+gate")
    fresh, uniform = name.endswith("+fresh"), name == "uniform"
    grid = enumerate_space(space)
    sampler = (
        Shuffled([params for _, params in grid.values()], seed)
        if uniform
        else _sampler(name.removesuffix("+fresh"), seed)
    )
    run, ran, losses = Run([], [], []), set(), []

    def enough(steps: list[Step]) -> bool:
        step = steps[-1]
        if step.kind in ("trained", "failed") and step.key not in ran:  # a plan trained for the first time
            ran.add(step.key)
            if step.figures is not None:
                losses.append(norm(step.figures))
            run.curve.append(hypervolume(losses, np.ones(3)))
            run.asks.append(step.asks)
            run.keys.append(step.key)
        there = bool(run.curve) and run.curve[-1] >= stop_at and len(run.curve) >= min_trials
        return there or len(ran) >= len(grid)

    trial = TableTrial(
        lambda plan: table.rows[plan_key(plan)], faithful=lambda plan: not plan.weights_decide_structure()
    )
    loop_replay(
        trial,
        lambda t: sample(t, space),
        teacher_accuracy=table.teacher[0],
        n_val=DIGITS_VALIDATION,
        sampler=sampler,
        seed=seed,
        trials=SWEEP_TRIALS,
        gate=gated,
        max_asks=max_asks or 5 * len(table.rows),
        enough=enough,
        listeners=[_Fresh(grid, ran, random.Random(seed))] if fresh else [],
    )
    return run


class _Fresh:
    """After a repeat is answered, an unseen plan drawn at random is enqueued: the sampler's next ask trains it."""

    def __init__(self, grid: dict[str, tuple[CompressionPlan, dict[str, Any]]], seen: set[str], rng: random.Random):
        self.grid, self.seen, self.rng = grid, seen, rng  # `seen`: the plans run so far, kept by the replay

    def trial_reused(self, loop: Any, number: int, rec: Any) -> None:
        unseen = [k for k in self.grid if k not in self.seen]
        if unseen:
            loop.study.enqueue_trial(self.grid[self.rng.choice(unseen)][1])


# --------------------------------------------------------------------------------------------------------- report

SAMPLERS = {  # name -> how it is configured, for the report
    "tpe+gate": "slimsweep's default search: the TPE below, with latency first against the front (search/gate.py: "
    "a plan slower and larger than a trained one within the noise of the best accuracy trains nothing)",
    "tpe": f"slimsweep's default: TPESampler(n_startup_trials=10, multivariate=True, group=True), as "
    f"search.samplers.make_sampler for {SWEEP_TRIALS} trials",
    "nsgaii": f"NSGAIISampler(population_size=33), as search.samplers.make_sampler for {SWEEP_TRIALS} trials",
    "gp": f"GPSampler() (Optuna's defaults: 10 start-up trials); stops at the target or {SWEEP_TRIALS} asks, as its "
    "asks cost seconds each here",
    "random": "RandomSampler() over the space: each knob drawn uniformly",
    "uniform": "random search over the grid: an unseen plan drawn uniformly at every ask",
}
VARIANTS = {  # tried beside the defaults: what changes how fast TPE gets there
    "random+gate": "RandomSampler() with latency first against the front, as tpe+gate",
    "tpe-independent": "TPESampler(n_startup_trials=10): one model per knob (slimsweep's default before this table)",
    "tpe+fresh": "slimsweep's TPE; after a repeat, an unseen plan drawn at random is enqueued",
    "tpe-independent+fresh": "independent TPE as above, with an unseen plan enqueued after a repeat",
}
GOAL_SHARE_OF_RANDOM = 0.30  # issue 20: 95% of the front in at most 30% of random search's plans (it was 40%)


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, med, q3 = np.percentile(xs, [25, 50, 75])
    return float(q1), float(med), float(q3)


def _reached(runs: list[Run], target: float) -> tuple[list[int | None], list[int | None]]:
    """Per seed: distinct plans, and asks, until the target hypervolume (None: never, within the replay)."""
    trials = [trials_to_reach(r.curve, target) for r in runs]
    return trials, [None if n is None else r.asks[n - 1] for r, n in zip(runs, trials)]


def median_or_none(xs: list[int | None]) -> float | None:
    """The median, counting a seed that never got there as worse than any that did; None if that is the median."""
    ordered = sorted(xs, key=lambda x: (x is None, x or 0))
    mid = ordered[(len(ordered) - 1) // 2], ordered[len(ordered) // 2]
    return None if None in mid else (mid[0] + mid[1]) / 2


def _plot(curves: dict[str, list[Run]], true_hv: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, runs in curves.items():
        x = np.arange(1, min(SWEEP_TRIALS, *(len(r.curve) for r in runs)) + 1)  # where every seed has a value
        share = np.array([[r.curve[i - 1] / true_hv for i in x] for r in runs])
        q1, med, q3 = np.percentile(share, [25, 50, 75], axis=0)
        (line,) = ax.plot(x, med, label=f"{name} (median of {len(runs)} seeds)")
        ax.fill_between(x, q1, q3, color=line.get_color(), alpha=0.2)
    ax.axhline(TARGET_SHARE, color="grey", linestyle="--", linewidth=1, label=f"{TARGET_SHARE:.0%} of the grid's front")
    ax.set(
        xlabel="distinct plans trained (repeats answered free)",
        ylabel="hypervolume / grid's true hypervolume",
        ylim=(0.5, 1.01),
        xlim=(1, SWEEP_TRIALS),
        title="Samplers replayed over the digits grid (band: quartiles)",
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def _met(share: float | None) -> str:
    return "met" if share is not None and share <= GOAL_SHARE_OF_RANDOM else "not met"


def _fmt(x: float | None) -> str:
    return "not reached" if x is None else f"{x:g}"


def _one_thread() -> None:
    import torch  # the GP sampler fits with torch: one thread per worker process, as the workers share the cores

    torch.set_num_threads(1)


def _replay_job(job: tuple[str, int, float]) -> Run:
    name, seed, target = job
    table = load_table()
    # GP stops at the target or a sweep's worth of asks: they cost seconds each here (a GP fit and an acquisition
    # search per ask); the others go on to the plot's full axis.
    gp = name.startswith("gp")
    return replay(
        name,
        seed,
        table,
        Normalisation.of(table),
        stop_at=target,
        min_trials=0 if gp else SWEEP_TRIALS,
        max_asks=SWEEP_TRIALS if gp else MAX_ASKS,
    )


def _replay_all(
    names: list[str], seeds: int, target: float, workers: int | None, log: Path, replay_missing: bool = True
) -> dict[str, list[Run]]:
    """Each (sampler, seed) replayed once: runs already in the log (for this table) are reused, the others are
    replayed and appended to it as each finishes, so an interrupted replay resumes where it stopped."""
    # Runs of the replay before it ran through the driver's loop are not reused: their random search drew otherwise.
    digest = hashlib.sha256(TABLE.read_bytes()).hexdigest()[:16] + "-loop"
    done: dict[tuple[str, int], Run] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            if r["table"] == digest:
                done[(r["name"], r["seed"])] = Run(r["curve"], r["asks"], [])
    jobs = [(n, s, target) for n in names for s in range(seeds) if (n, s) not in done]
    jobs.sort(key=lambda j: j[0] == "gp")  # the cheap samplers first, the GP's seconds-long asks last
    if replay_missing and jobs:
        with (
            ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, initializer=_one_thread) as pool,
            log.open("a") as f,
        ):
            futures = {pool.submit(_replay_job, job): job for job in jobs}
            for future in as_completed(futures):
                name, seed, _ = futures[future]
                run = done[(name, seed)] = future.result()
                f.write(
                    json.dumps({"table": digest, "name": name, "seed": seed, "curve": run.curve, "asks": run.asks})
                    + "\n"
                )
                f.flush()
    return {n: [done[(n, s)] for s in range(seeds) if (n, s) in done] for n in names}


def section(
    out_dir: Path,
    quick: bool,
    workers: int | None = None,
    seeds: int | None = None,
    replay_missing: bool = True,
    *,
    work: Path | None = None,
) -> str:
    """The report's section on how fast each sampler reaches the grid's front; writes its PNG into out_dir.

    Runs are kept in tabular-runs.jsonl and reused: in `work` when given (the report's own folder, so its figures
    are replayed by the code it runs), else in out_dir; replay_missing=False renders from those alone.
    """
    table = load_table()
    norm = Normalisation.of(table)
    true_hv = true_hypervolume(table, norm)
    target = TARGET_SHARE * true_hv
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    # The scale (benchmarks/scales.py): --quick leaves out the variants and GP (whose asks cost seconds each).
    scale = scales.of(quick).tabular
    names = list(scale.samplers) if scale.samplers else list(SAMPLERS) + list(VARIANTS)
    log = (work or out_dir) / "tabular-runs.jsonl"
    runs = _replay_all(names, seeds or scale.seeds, target, workers, log, replay_missing)
    names = [n for n in names if runs[n]]
    runs = {n: runs[n] for n in names}
    elapsed = time.perf_counter() - start
    seeds = max(len(rs) for rs in runs.values())
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "tabular-hypervolume.png"
    _plot(runs, true_hv, png)
    link = os.path.relpath(png, ROOT / "docs")

    header = [line[2:].strip() for line in TABLE.read_text().splitlines() if line.startswith("#")]
    provenance = {h.split(":", 1)[0]: h.split(":", 1)[1].strip() for h in header if ":" in h}
    ok = {k: v for k, v in table.rows.items() if v is not None}
    front = _front(ok, norm)
    labels = {
        r["key"]: r["label"] + (f" | T={float(r['temperature']):g}" if r["temperature"] else "")
        for r in read_rows(TABLE)
    }
    t = table.teacher
    lines = [
        "## How fast the search gets there: samplers replayed over a tabular benchmark",
        "",
        f"A grid of {len(table.rows)} plans on the digits task (students: the teacher and CNNs of width 0.25/0.5/0.75, "
        "depth 1/2, distillation temperature 2/6; structured pruning 0/0.25/0.5; fp32, fp16, int8 dynamic, int8 static "
        "QDQ and QOperator with and without reduce_range), each trained and measured once with the project's trial "
        f"code: `benchmarks/data/tabular-digits.csv`, made by `{provenance.get('made by', '?')}` on "
        f"{provenance.get('machine', '?')} ({provenance.get('date', '?')}). Latencies come from one interleaved pass "
        f"over all plans; {sum(v is None for v in table.rows.values())} plans failed.",
        "",
        "**Hypervolume.** Accuracy (max), p50 latency and size (min), each mapped so the grid's best value is 0 and "
        "the reference point is 1: accuracy linearly, latency and size on a log scale. Reference point: the fp32 "
        "teacher's "
        f"p50 ({t[1]:.4f} ms) and size ({t[2]:.4f} MB), and its accuracy minus {ACCURACY_FLOOR_PT:g} points "
        f"({t[0] - ACCURACY_FLOOR_PT:.2f}%); plans outside it count nothing. Computed by Optuna's "
        f"`optuna._hypervolume.compute_hypervolume`. The grid's true front has {len(front)} plans and hypervolume "
        f"{true_hv:.4f}; the target is {TARGET_SHARE:.0%} of it ({target:.4f}).",
        "",
        "**The loop.** Each replay runs slimsweep's own driver loop (benchmarks/replay.py: search/loop.py on the "
        "in-process executor, the study in Optuna's in-memory storage) with a trial that answers each plan from the "
        "table; the gate and the reuse of repeated plans are the driver's own. "
        "**Repeats.** A sampler that proposes a plan it already tried gets the earlier result back (the loop answers "
        "it from the earlier trial), so a repeat trains nothing: trials count distinct plans trained; asks count "
        "every proposal, the plans the gate stopped before training included (they train nothing either). "
        f"A replay stops once it has passed the target and {SWEEP_TRIALS} distinct plans (GP: once "
        f"it has passed the target, or after {SWEEP_TRIALS} asks), has seen every plan, or made {MAX_ASKS} asks. "
        "Each curve is drawn as far as all its seeds go.",
        "",
        f"| sampler | settings | distinct plans to {TARGET_SHARE:.0%} (median [quartiles]) | "
        f"asks to {TARGET_SHARE:.0%} (median) | seeds reaching | share of random's / uniform's plans | "
        "distinct plans to 90% (median) | "
        f"hypervolume share at 25 / 50 / {SWEEP_TRIALS} plans (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    reached = {n: _reached(r, target) for n, r in runs.items()}
    random_median = median_or_none(reached["random"][0])
    uniform_median = median_or_none(reached["uniform"][0])
    verdicts, versus_uniform = {}, {}
    for n in names:
        trials, asks = reached[n]
        med = median_or_none(trials)
        got = [x for x in trials if x is not None]
        spread = f" [{_quartiles(got)[0]:g}–{_quartiles(got)[2]:g}]" if len(got) == len(trials) else ""
        share = None if med is None or random_median is None else med / random_median
        verdicts[n] = share
        versus_uniform[n] = None if med is None or uniform_median is None else med / uniform_median
        at = [
            statistics.median(r.curve[k - 1] / true_hv for r in runs[n])
            if all(len(r.curve) >= k for r in runs[n])
            else None
            for k in (25, 50, SWEEP_TRIALS)
        ]
        to90 = median_or_none([trials_to_reach(r.curve, 0.9 * true_hv) for r in runs[n]])
        lines.append(
            f"| {n} | {(SAMPLERS | VARIANTS)[n]} | {_fmt(med)}{spread} | {_fmt(median_or_none(asks))} | "
            f"{len(got)}/{len(trials)} | {_pct(share)} / {_pct(versus_uniform[n])} | {_fmt(to90)} | "
            f"{' / '.join('–' if a is None else f'{a:.2f}' for a in at)} |"
        )
    best = [
        n for n, s in verdicts.items() if n not in ("random", "uniform") and s is not None and s <= GOAL_SHARE_OF_RANDOM
    ]
    tpe, tpe_u = verdicts["tpe+gate"], versus_uniform["tpe+gate"]
    lines += [
        "",
        f"**Goal:** slimsweep's default search (tpe+gate) reaches {TARGET_SHARE:.0%} of the front in at most "
        f"{GOAL_SHARE_OF_RANDOM:.0%} of random search's distinct plans trained. Against `sampler: random` "
        f"({_fmt(random_median)} plans) it needs {_pct(tpe)}: **{_met(tpe)}**; against random search without "
        f"replacement over the grid ({_fmt(uniform_median)} plans) {_pct(tpe_u)}: **{_met(tpe_u)}**. TPE without "
        f"the gate needs {_pct(verdicts['tpe'])} of random's. "
        f"Settings within {GOAL_SHARE_OF_RANDOM:.0%} of `sampler: random`: {', '.join(best) if best else 'none'}.",
        "",
        f"![hypervolume against distinct plans]({link})",
        "",
        "The grid's true front (best first by accuracy):",
        "",
        "| plan | accuracy % | p50 ms | size MB |",
        "|---|---|---|---|",
        *[
            f"| {labels[k]} | {ok[k][0]:.2f} | {ok[k][1]:.4f} | {ok[k][2]:.4f} |"
            for k in sorted(front, key=lambda k: (-ok[k][0], ok[k][1]))
        ],
        "",
        f"Command: `python benchmarks/tabular.py replay{' --quick' if quick else ''}` ({seeds} seeds per sampler"
        + ("; samplers " + ", ".join(names) if scale.samplers else "")
        + f", {elapsed:.0f} s of replaying here"
        + ("; runs kept in tabular-runs.jsonl are reused, not replayed)." if work is None else ")."),
    ]
    return "\n".join(lines) + "\n"


def _front(rows: dict[str, tuple[float, float, float]], norm: Normalisation) -> list[str]:
    """Keys of the plans no other plan dominates, inside the reference point."""
    from search import optuna_store

    keys = [k for k, v in rows.items() if np.all(norm(v) < 1)]
    mask = optuna_store.pareto_mask(np.array([norm(rows[k]) for k in keys]))
    return [k for k, m in zip(keys, mask) if m]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train and time the grid, write benchmarks/data/tabular-digits.csv")
    b.add_argument("--work", type=Path, default=ROOT / "outputs" / "tabular-digits")
    b.add_argument("--rounds", type=int, default=9)
    r = sub.add_parser("replay", help="replay the samplers over the table and print the markdown section")
    r.add_argument("--out", type=Path, default=ROOT / "docs")
    r.add_argument("--quick", action="store_true", help="3 seeds per sampler instead of 10, no GP, no variants")
    r.add_argument("--workers", type=int, default=None, help="processes replaying at once (default: one per core)")
    r.add_argument(
        "--no-replay",
        action="store_true",
        help="render from the runs kept in --out/tabular-runs.jsonl, replaying none that are missing",
    )
    args = parser.parse_args(argv)
    if args.cmd == "build":
        command = "python benchmarks/tabular.py build" + ("" if args.rounds == 9 else f" --rounds {args.rounds}")
        print(f"wrote {build(args.work, args.rounds, command)}")
        return 0
    print(section(args.out, args.quick, args.workers, replay_missing=not args.no_replay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
