"""Accuracy bars: each search's fastest front member within 0.1, 0.25, 0.5 and 1.0 point of the teacher, timed side by
side with the teacher (one comparison per seed and deployment holding every search's models at every bar, so the
speed-ups are comparable), the tables per bar and the goals of issue 20 per seed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.scales import BARS as BARS  # points below the teacher's accuracy (the bars of the tables)
from benchmarks.scales import GOAL_BAR  # where joint must be GOAL_RATIO x the best other search
from benchmarks.sidebyside import Speedup
from evaluators.compare import CompareSettings, compare

GOAL_RATIO = 1.5
JOINT = "joint"


@dataclass(frozen=True)
class BarPick:
    """One search's fastest front member within one bar, at one seed."""

    search: str
    seed: int
    bar: float
    plan: str
    accuracy_drop: float
    p50_ms: float
    onnx: Path | None  # the model's file, to time it side by side (None: not on this machine)


def fastest_within(front: Iterable[dict[str, Any]], bar: float) -> dict[str, Any] | None:
    """The front member with the lowest p50 whose accuracy drop is at most `bar` points; None when none is."""
    within = [r for r in front if r["accuracy_drop"] <= bar + 1e-9]
    return min(within, key=lambda r: (r["p50_ms"], r["accuracy_drop"]), default=None)


def picks_at_bars(search: str, seed: int, front: Sequence[dict[str, Any]], bars: Sequence[float]) -> list[BarPick]:
    """The search's pick at each bar it reaches (a bar no front member reaches has no pick)."""
    out = []
    for bar in bars:
        row = fastest_within(front, bar)
        if row is not None:
            out.append(BarPick(search, seed, bar, row["plan"], row["accuracy_drop"], row["p50_ms"], row.get("onnx")))
    return out


def time_seed(picks: Sequence[BarPick], teacher: Path, batch_size: int = 1) -> dict[tuple[str, float], Speedup]:
    """One side-by-side comparison for one seed: the teacher and each distinct model picked at any bar by any search;
    (search, bar) -> its speed-up over the teacher."""
    files = sorted({p.onnx for p in picks if p.onnx is not None and p.onnx.is_file()})
    if not files:
        return {}
    settings = CompareSettings(batch_size=batch_size, max_seconds=30.0)
    names = ["teacher fp32"] + [f"{i}:{f.parent.parent.name}/{f.name}" for i, f in enumerate(files)]
    result = compare([teacher.read_bytes()] + [f.read_bytes() for f in files], settings, names=names)
    by_file = {
        f: Speedup(m.name, m.p50_ms, m.speedup, m.speedup_ci_low, m.speedup_ci_high)
        for f, m in zip(files, result.models[1:])
    }
    return {(p.search, p.bar): by_file[p.onnx] for p in picks if p.onnx in by_file}


def verdicts(
    speed: dict[tuple[str, float], Speedup], searches: Sequence[str], bars: Sequence[float]
) -> tuple[bool, float | None]:
    """For one seed: whether joint is at least as fast as every other search at every bar (it loses a bar where
    another search's model is measurably faster, its interval above joint's, as the pick's tie rule reads them, or
    where joint has no model and another has), and joint's median ratio to the best other search at GOAL_BAR."""
    others = [s for s in searches if s != JOINT]
    every = True
    for bar in bars:
        rivals = [speed[(s, bar)] for s in others if (s, bar) in speed]
        mine = speed.get((JOINT, bar))
        if rivals and (mine is None or any(r.ci_low > mine.ci_high for r in rivals)):
            every = False
    ratio = None
    rivals = [speed[(s, GOAL_BAR)].speedup for s in others if (s, GOAL_BAR) in speed]
    if (JOINT, GOAL_BAR) in speed and rivals:
        ratio = speed[(JOINT, GOAL_BAR)].speedup / max(rivals)
    return every, ratio


def goal_lines(
    deployment: str,
    per_seed: dict[int, dict[tuple[str, float], Speedup]],
    searches: Sequence[str],
    bars: Sequence[float],
) -> list[str]:
    """The headline lines: per seed, joint >= every other search at every bar, and joint >= 1.5x at GOAL_BAR."""
    lines = []
    for seed, speed in sorted(per_seed.items()):
        every, ratio = verdicts(speed, searches, bars)
        shown = ", ".join(f"{b:g}" for b in bars)
        met = "**met**" if every else "**not met**"
        head = f"> MNIST {deployment}, seed {seed}: joint"
        lines.append(f"{head} >= every other search at bars {shown} pt (overlapping intervals tie): {met}.")
        goal = f"{head} >= {GOAL_RATIO:g}x the best other search at {GOAL_BAR:g} pt"
        if ratio is None:
            lines.append(f"{goal}: **not measurable** (joint or every other search had no model at that bar).")
        else:
            lines.append(f"{goal}: ratio {ratio:.2f}: {'**met**' if ratio >= GOAL_RATIO else '**not met**'}.")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def tables(
    picks: Sequence[BarPick],
    per_seed: dict[int, dict[tuple[str, float], Speedup]],
    searches: Sequence[str],
    bars: Sequence[float],
) -> list[str]:
    """A table per bar: each search's pick per seed, its sweep p50 and its side-by-side speed-up with interval."""
    by_key = {(p.search, p.seed, p.bar): p for p in picks}
    seeds = sorted({p.seed for p in picks} | set(per_seed))
    lines: list[str] = []
    for bar in bars:
        lines += [
            f"#### Within {bar:g} point of the teacher",
            "",
            "| search | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|" + "---|" * len(seeds),
        ]
        for search in searches:
            cells = []
            for seed in seeds:
                p = by_key.get((search, seed, bar))
                if p is None:
                    cells.append("no model within the bar")
                    continue
                s = per_seed.get(seed, {}).get((search, bar))
                timed = s.text() if s else "not timed"
                cells.append(f"{_cell(p.plan)} ({-p.accuracy_drop:+.2f} pt): **{timed}**")
            lines.append(f"| {search} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
