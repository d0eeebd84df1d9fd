"""The report's scales in one place: what `make bench` (full) and `make bench-quick` (quick) run in each section,
and the minutes each section was estimated to take on 2 idle cores when these scales were chosen.

benchmarks/report.py states both in the document, beside the minutes each section took; the sections read their
scale from here (realdata.py, equalcompute.py, tabular.py, nasbench201.py, curves_replay.py, curves_pick.py).
The goals fix what the full report keeps: 3 seeds of every MNIST search, the bars 0.1/0.25/0.5/1.0, equal compute,
the hand-chained pipeline, the batch-64 throughput deployment, NAS-Bench-201 at 10 seeds, the false-stop sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BARS = (0.1, 0.25, 0.5, 1.0)  # points below the teacher's accuracy (benchmarks/bars.py)
GOAL_BAR = 0.25
QUANTIZATION_PLANS = 4  # quantization alone: the teacher's schemes, its whole space (it trains nothing)
ALL_SEARCHES = ("joint", "quantization", "pruning", "distillation", "random")
# The MNIST searches train at the subset's scale in both reports: a 3,000-image stratified sample of the shipped
# 10,000 (one validation image is 0.17 pt, so the 0.1-point bar asks for no image lost), 3 epochs per student, 1 of
# pruning's recovery. At the files' own scale (10,000 images, 48 epochs) one sweep took ~6 minutes on 2 cores, at this
# one about 1.5; at 2,000 images and 2 student epochs no student came within the point.
TRAINING = {
    "task.limit": 3000,
    "task.teacher.epochs": 3,
    "space.students.cnn.epochs": 3,
    "space.pruning.recover_epochs": 1,
}


@dataclass(frozen=True)
class Scale:
    """The MNIST comparison's scale: each search's budget in student epochs, seeds, searches, bars, deployments."""

    epochs: float  # search.budget.epochs of every search but quantization alone (its whole space)
    seeds: tuple[int, ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    trials: int = 12  # search.trials: the budget's first guess at a plan's cost (budget / trials)
    bars: tuple[float, ...] = BARS
    deployments: tuple[str, ...] = ("latency", "throughput")
    searches: tuple[str, ...] = ALL_SEARCHES
    left_out: dict[str, tuple[str, ...]] = field(default_factory=dict)  # deployment -> searches it does not run
    reach: bool = True  # what the joint space can reach: every structure timed, the fastest untried trained alone

    def searches_in(self, deployment: str) -> tuple[str, ...]:
        """The searches one deployment runs (the hand-chained pipeline runs in every deployment)."""
        return tuple(s for s in self.searches if s not in self.left_out.get(deployment, ()))

    def describe(self) -> str:
        """One line for the report."""
        extra = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        left = [s for s in ALL_SEARCHES if s not in self.searches]
        partly = "".join(f"; {', '.join(v)} left out of the {k} deployment" for k, v in self.left_out.items() if v)
        return (
            f"{self.epochs:g} student epochs per search (quantization alone: its {QUANTIZATION_PLANS} plans) x seeds "
            f"{list(self.seeds)}; searches {', '.join(self.searches)} and the hand-chained pipeline"
            + (f" ({', '.join(left)} left out at this scale)" if left else "")
            + f"; bars {', '.join(f'{b:g}' for b in self.bars)} pt; deployments {', '.join(self.deployments)}"
            + partly
            + (f"; {extra}" if extra else "; as in the files")
        )


@dataclass(frozen=True)
class Replay:
    """A replayed benchmark's scale (tabular.py, nasbench201.py): seeds per sampler and which samplers run."""

    seeds: int
    samplers: tuple[str, ...] | None = None  # None: every sampler (and variant) the module lists


@dataclass(frozen=True)
class Curves:
    """Cheap-then-full's scale (curves_replay.py, curves_pick.py)."""

    tables: tuple[str, ...] | None  # curve tables replayed (None: every table in benchmarks/data)
    seeds: tuple[int, ...]  # TPE seeds per arm through the real loop
    orders: int  # random orders each rung is replayed in to measure its margin
    pick_seeds: int | None  # seeds of the serving-the-pick arms (None: as many as above)
    shares: bool  # also replay the best rung set in shares of a plan's epochs


@dataclass(frozen=True)
class Scales:
    """Everything one report runs, and its estimated minutes per section on 2 idle cores."""

    name: str
    mnist: Scale
    tabular: Replay
    nasbench201: Replay
    curves: Curves
    minutes: dict[str, float]  # section module -> estimate (benchmarks/report.py's table)

    def lines(self) -> list[str]:
        """The scale of each section, as the report states it."""
        cap = (
            f"the samplers {', '.join(self.tabular.samplers)}" if self.tabular.samplers else "every sampler and variant"
        )
        nas = f"the samplers {', '.join(self.nasbench201.samplers)}" if self.nasbench201.samplers else "every sampler"
        tables = ", ".join(self.curves.tables) if self.curves.tables else "every curve table"
        return [
            f"* MNIST searches (benchmarks/realdata.py, equalcompute.py, chained.py): {self.mnist.describe()}"
            + ("; what the space can reach, trained alone" if self.mnist.reach else "")
            + ".",
            f"* Tabular replay (benchmarks/tabular.py): {self.tabular.seeds} seeds, {cap}.",
            f"* NAS-Bench-201 (benchmarks/nasbench201.py): {self.nasbench201.seeds} seeds, {nas}.",
            f"* Cheap-then-full (benchmarks/curves.py): {tables}; seeds {list(self.curves.seeds)}; "
            f"{self.curves.orders} random orders per rung"
            + ("; the best rung set in shares of a plan's epochs too" if self.curves.shares else "")
            + (f"; serving the pick on {self.curves.pick_seeds} seeds" if self.curves.pick_seeds else "")
            + ".",
            "* The quickstart, where a trial's time goes and latency honesty: "
            + ("their own --quick subsets." if self.name == "quick" else "in full."),
        ]


# The estimates: each piece's CPU seconds measured on the 2-core EPYC this project runs on (2026-12-07, under other
# work's load, so with OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads inflate CPU time up to 3x on a loaded
# machine), turned into idle wall clock by how the piece uses the cores. A sweep runs one trial at a time on 2 cores
# (the bench station holds the other), so its trial, station and driver processes are its critical path: wall =
# 0.85 x CPU (quick MNIST sweeps: joint 155 s, quantization alone 42, pruning alone 95, distillation alone 104, random
# 148, the chain's stage 1 83, stage 2 126 with 4 plans (about 100 with the 3 it runs now), stage 3 (a saved model
# quantized, an ONNX task) 26; at batch 64 a joint sweep's station took 54 s against ~12, ~3 s more per model timed).
# Process pools (tabular 391 s full, NAS-Bench-201 190 s full, 40 quick) keep both cores busy: CPU / 2; the curve
# replays are one process: wall = CPU (203 s full, 43 quick). The full report's chain is taken as 2.5 stage-2 and 3
# stage-3 sweeps per seed and deployment (one per distinct choice over the 4 bars). The quickstart: 102 s; latency
# honesty: its own figure (65 s quick, 1.6 minutes full).
QUICK = Scales(
    name="quick",
    # One seed, the 0.25-point bar, the latency deployment; random search left out and 12 epochs per search (4
    # students' worth) instead of 15: the full report compares random search, at 15.
    mnist=Scale(
        epochs=12,
        seeds=(0,),
        trials=4,
        bars=(GOAL_BAR,),
        deployments=("latency",),
        searches=("joint", "quantization", "pruning", "distillation"),
        overrides=TRAINING,
        reach=False,
    ),
    tabular=Replay(seeds=3, samplers=("tpe+gate", "tpe", "nsgaii", "random", "uniform")),
    nasbench201=Replay(seeds=3, samplers=("tpe+gate", "random", "nsgaii")),
    curves=Curves(tables=("digits",), seeds=(0, 1, 2), orders=20, pick_seeds=2, shares=False),
    minutes={
        "quickstart": 1.5,
        "realdata": 9.1,  # 7 sweeps (4 searches, the chain's 3 stages) 8.0, the teacher 0.6, side-by-side timing 0.5
        "stages": 0.0,
        "tabular": 0.2,
        "nasbench201": 0.4,
        "honesty": 1.1,
        "curves": 0.7,
    },
)
FULL = Scales(
    name="full",
    # 3 seeds, every bar, both deployments, the subset's training and budget per sweep; random search in the latency
    # deployment only (it tests the sampler, as the tabular and NAS-Bench-201 replays do; the throughput deployment
    # asks whether int8 and pruning pay on compute-bound students: joint against each knob and the chain).
    mnist=Scale(epochs=15, seeds=(0, 1, 2), trials=5, overrides=TRAINING, left_out={"throughput": ("random",)}),
    tabular=Replay(seeds=10),
    nasbench201=Replay(seeds=10),
    curves=Curves(tables=None, seeds=(0, 1, 2, 3, 4), orders=40, pick_seeds=None, shares=True),
    minutes={
        "quickstart": 1.5,
        # per seed: latency 13.6 (5 searches, the chain), throughput 14.5 (4 searches, the chain, batch-64 timing);
        # x 3 seeds = 84.3; the teacher, side-by-side timings and what the space can reach 7.0
        "realdata": 91.0,
        "stages": 0.0,
        "tabular": 3.5,
        "nasbench201": 1.6,
        "honesty": 1.6,
        "curves": 3.4,
    },
)


def of(quick: bool) -> Scales:
    """The quick or the full scales."""
    return QUICK if quick else FULL
