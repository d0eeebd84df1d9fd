"""What the search finds on real data: the joint search against each knob alone, at equal compute, on MNIST.

Five experiment files in experiments/bench/ (joint, quantization, pruning, distillation, random), each run through
`slimsweep run` once per seed with the same budget in student epochs (quantization alone trains nothing: it gets its
whole space), and the hand-chained pipeline (benchmarks/chained.py) at the same epochs. For each: its front, its
hypervolume (benchmarks/hypervolume.py), duplicate plans, its pick timed side by side with the fp32 teacher, and its
fastest model at each accuracy bar (benchmarks/bars.py), at batch 1 (latency) and, in the full report, at batch 64
with throughput as the objective (a compute-bound deployment).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import bars, reach, scales, sweeps
from benchmarks.hypervolume import REFERENCE_TEXT, Point, hypervolume
from benchmarks.sidebyside import Speedup, side_by_side
from search.budget import trial_cost
from search.study import baseline, read
from search.study import dominated as study_dominated
from search.study import on_the_way as study_on_the_way
from search.study import teacher as study_teacher

SEARCHES = {
    "joint": "joint search, TPE (all three knobs)",
    "quantization": "quantization alone (schemes of the teacher)",
    "pruning": "pruning alone (teacher pruned, recovered by distillation)",
    "distillation": "distillation alone (students, fp32)",
    "random": "joint space, random sampler",
}
CHAINED = "hand-chained (distillation, then pruning, then quantization; benchmarks/chained.py)"
SINGLE_KNOB = ("quantization", "pruning", "distillation")
ALL_BARS = bars.BARS
QUANTIZATION_PLANS = scales.QUANTIZATION_PLANS
# The deployments: each search's file as it is (batch 1, latency), and a compute-bound one where int8 and pruning
# should pay on small students too (batch 64, throughput as the objective in place of latency).
DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "latency": {},
    "throughput": {"objectives": ["accuracy", "throughput_per_s", "size_mb"], "target.batch_size": 64},
}
JOINT = ("joint",)
MAX_DROP = 1.0  # points: the pick's allowance, and the experiment files' constraint
TEACHER_BAR_MS = 1.0  # the fp32 teacher's p50 the comparison asks for: below it, the picks differ by tens of µs
REACH_TRAINED = 4  # the fastest untried structures of a promising student the report trains alone (benchmarks/reach.py)
# report.py's choice: "seeds" instead of the scale's own.
OVERRIDE: dict[str, Any] = {}


# The scales (benchmarks/scales.py holds every section's, quick and full, in one place).
Scale = scales.Scale
FULL = scales.FULL.mnist
QUICK = scales.QUICK.mnist


@dataclass
class SearchResult:
    """One search at one seed."""

    search: str
    seed: int
    run: sweeps.SweepRun
    front: list[dict[str, Any]]
    hypervolume: float
    finished: int
    failed: int
    duplicates: int
    pick: dict[str, Any] | None  # the model card, when the pick is within MAX_DROP
    best_accuracy: float | None = None  # of any trial: says whether a search got near the teacher at all
    dominated: int = 0  # plans stopped before training by latency first (search/gate.py): no trial of the budget
    speedup: Speedup | None = None
    on_the_way: int = 0  # models trials made on their way, measured as candidates: no trial of the budget
    epochs_spent: float = 0.0  # student epochs of the budget it spent (search/budget.py's count)
    trained: list[dict[str, Any]] = field(default_factory=list)  # plans it trained: params and epochs charged


def _trial_rows(study, teacher: dict[str, float]) -> tuple[list[dict[str, Any]], int, int, int]:
    seen: set[str] = set()
    duplicates = finished = failed = 0
    for t in study.trials:
        if t.state.name not in ("COMPLETE", "FAIL"):
            continue
        if read(t).made_by is not None:
            seen.add(repr(sorted(t.params.items())))  # a model made on a trial's way: no trial of the budget
            continue
        finished += 1
        failed += t.state.name == "FAIL"
        key = repr(sorted(t.params.items()))
        duplicates += key in seen
        seen.add(key)
    front = []
    for t in study.best_trials:  # feasible and non-dominated, as Optuna judges them
        rec = read(t)
        m = rec.metrics
        front.append(
            {
                "trial": t.number,
                "plan": rec.describe,
                "params": rec.plan,
                "reuse_of": rec.reuse_of,
                "accuracy": m["accuracy"],
                "accuracy_drop": m["accuracy_drop"],
                "p50_ms": m["latency_p50_ms"],
                "size_mb": m["size_mb"],
                "p50_ratio": m["latency_p50_ms"] / teacher["latency_p50_ms"],
            }
        )
    return sorted(front, key=lambda r: r["p50_ms"]), duplicates, finished, failed


def _result(search: str, seed: int, run: sweeps.SweepRun) -> SearchResult:
    # A sweep whose front came out empty exits 1 after finishing its trials: its study still counts.
    if not (run.folder / "study.db").is_file():
        return SearchResult(search, seed, run, [], 0.0, 0, 0, 0, None)
    study = run.study()
    base = baseline(study)
    if base is None:
        return SearchResult(search, seed, run, [], 0.0, 0, 0, 0, None)
    teacher = base.teacher
    front, duplicates, finished, failed = _trial_rows(study, teacher)
    for row in front:  # the model's file, to time it side by side (a repeat's is its original's)
        files = [run.folder / "trials" / f"trial-{n}.onnx" for n in (row["trial"], row["reuse_of"]) if n is not None]
        row["onnx"] = next((f for f in files if f.is_file()), None)
    hv = hypervolume(
        [
            Point(r["accuracy_drop"], r["p50_ms"], r["size_mb"], teacher["latency_p50_ms"], teacher["size_mb"])
            for r in front
        ]
    )
    card = run.card()
    pick = card if card and card["measured"]["accuracy_drop"] <= MAX_DROP else None
    accuracies = [
        m["accuracy"] for t in study.trials if t.state.name == "COMPLETE" and "accuracy" in (m := read(t).metrics)
    ]
    dominated = len(study_dominated(study))
    best = max(accuracies) if accuracies else None
    made = len(study_on_the_way(study))
    trained = [
        {"params": read(t).plan, "epochs_used": trial_cost(read(t), t.state, "epochs")}
        for t in study.trials
        if t.state.is_finished()
    ]
    trained = [p for p in trained if p["epochs_used"] > 0]
    return SearchResult(
        search,
        seed,
        run,
        front,
        hv,
        finished,
        failed,
        duplicates,
        pick,
        best,
        dominated,
        on_the_way=made,
        epochs_spent=sum(p["epochs_used"] for p in trained),
        trained=trained,
    )


def budget_overrides(search: str, scale: Scale) -> dict[str, Any]:
    """Equal compute: the same student epochs for every search; quantization alone trains nothing, so its whole
    space (a budget in epochs would never be spent)."""
    if search == "quantization":
        return {"search.trials": QUANTIZATION_PLANS, "search.budget": None}
    return {"search.trials": scale.trials, "search.budget": {"epochs": scale.epochs}}


def folder_of(work: Path, deployment: str) -> Path:
    return work / ("realdata" if deployment == "latency" else f"realdata-{deployment}")  # stages.py reads realdata/


def run_all(work: Path, scale: Scale, env: dict[str, str], deployment: str = "latency") -> list[SearchResult]:
    """Every search at every seed, one after another (each sweep uses the machine's cores itself)."""
    root = sweeps.ROOT / "experiments" / "bench"
    results = []
    for seed in scale.seeds:
        for search in scale.searches_in(deployment):
            overrides = {
                "search.seed": seed,
                **scale.overrides,
                **DEPLOYMENTS[deployment],
                **budget_overrides(search, scale),
            }
            folder = folder_of(work, deployment) / search / f"seed{seed}"
            run = sweeps.run(root / f"{search}.yaml", folder, overrides, env)
            results.append(_result(search, seed, run))
    return results


def time_picks(results: list[SearchResult]) -> None:
    """Per seed: the fp32 teacher and every search's pick, timed interleaved in one process."""
    for seed in sorted({r.seed for r in results}):
        group = [r for r in results if r.seed == seed and r.pick is not None]
        teacher = next(
            (
                r.run.folder / "teacher.onnx"
                for r in results
                if r.seed == seed and (r.run.folder / "teacher.onnx").is_file()
            ),
            None,
        )
        if not group or teacher is None:
            continue
        models = [teacher.read_bytes()] + [(r.run.folder / "deployable.onnx").read_bytes() for r in group]
        rows = side_by_side(models, ["teacher fp32"] + [r.search for r in group])
        for r, row in zip(group, rows[1:]):
            r.speedup = row


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # plan labels use '|' between knobs; a table cell must escape it


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def ran(results: list[SearchResult]) -> list[str]:
    """The searches these results hold, in SEARCHES' order (a scale may leave some out)."""
    return [s for s in SEARCHES if any(r.search == s for r in results)]


def summarize(results: list[SearchResult]) -> dict[str, dict[str, Any]]:
    """Per search that ran: median hypervolume and median side-by-side speed-up of its pick over the seeds."""
    out = {}
    for search in ran(results):
        mine = [r for r in results if r.search == search]
        out[search] = {
            "hv": _median([r.hypervolume for r in mine]),
            "speedup": _median([r.speedup.speedup for r in mine if r.speedup]),
            "picks": sum(r.pick is not None for r in mine),
            "seeds": len(mine),
            "duplicates": sum(r.duplicates for r in mine),
            "finished": sum(r.finished for r in mine),
            "failed": sum(r.failed for r in mine),
            "dominated": sum(r.dominated for r in mine),
            "on_the_way": sum(r.on_the_way for r in mine),
            "best_accuracy": _median([r.best_accuracy for r in mine if r.best_accuracy is not None]),
        }
    return out


def goals(summary: dict[str, dict[str, Any]], key: str = "joint") -> list[str]:
    """The two goals the report is read against, met or not, with the figures, for one joint search."""
    joint = summary[key]
    singles = {k: summary[k] for k in SINGLE_KNOB if k in summary}
    best = best_single(summary) or (None, None)
    lines = []
    if joint["speedup"] is None or best[1] is None:
        lines.append(
            f"> MNIST, {key}: pick >= 1.5x faster than the best single-knob pick: **not measurable** "
            "(a search had no pick within 1 point)."
        )
    else:
        ratio = joint["speedup"] / best[1]
        lines.append(
            f"> MNIST, {key}: pick >= 1.5x faster than the best single-knob pick ({best[0]}, {best[1]:.2f}x): "
            f"{key} {joint['speedup']:.2f}x, ratio {ratio:.2f}: **{'met' if ratio >= 1.5 else 'not met'}**."
        )
    beaten = [k for k, v in singles.items() if (v["hv"] or 0.0) > (joint["hv"] or 0.0)]
    lines.append(
        f"> MNIST, {key}: hypervolume >= every single-knob one: {_fmt(joint['hv'], '.4f')} against "
        + ", ".join(f"{k} {_fmt(v['hv'], '.4f')}" for k, v in singles.items())
        + f": **{'met' if not beaten else 'not met (' + ', '.join(beaten) + ' higher)'}**."
    )
    return lines


def plot(results: list[SearchResult], path: Path) -> None:
    """Each search's fronts (all seeds): accuracy against p50 as a share of the teacher's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, search in enumerate(SEARCHES):
        rows = [row for r in results if r.search == search for row in r.front]
        if rows:
            ax.scatter(
                [row["p50_ratio"] for row in rows],
                [row["accuracy"] for row in rows],
                label=search,
                marker="os^vDP"[i % 6],
                alpha=0.75,
            )
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency / fp32 teacher's p50 (log)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Fronts on MNIST, every seed")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def best_single(summary: dict[str, dict[str, Any]]) -> tuple[str, float] | None:
    """The single-knob search whose pick ran fastest side by side (median over seeds), and that speed-up."""
    speeds = [(k, summary[k]["speedup"]) for k in SINGLE_KNOB if k in summary and summary[k]["speedup"] is not None]
    return max(speeds, key=lambda kv: kv[1], default=None)


def reach_lines(results: list[SearchResult], scale: Scale, env: dict[str, str]) -> list[str]:
    """benchmarks/reach.py's subsection: what the joint space's structures can reach, against what was trained."""
    studies = [(r.search, r.run.study()) for r in results if r.finished]
    if not studies:
        return []
    teacher_accuracy = study_teacher(studies[0][1])["accuracy"]
    overrides = {"search.seed": scale.seeds[0], **scale.overrides}
    experiment = sweeps.ROOT / "experiments" / "bench" / "joint.yaml"
    teacher_p50, structures = reach.time_structures(experiment, overrides, env)
    measured, single = reach.measured_accuracy(studies), best_single(summarize(results))
    alone = None
    if single is not None:  # would the fastest structures no sweep tried have made a 1.5x faster pick?
        bar = teacher_p50 / (1.5 * single[1])
        labels = reach.untrained_fastest(structures, measured, bar, REACH_TRAINED, teacher_accuracy - MAX_DROP)
        alone = reach.train_alone(experiment, overrides, env, labels)
    return reach.markdown(
        teacher_p50,
        structures,
        measured,
        teacher_accuracy,
        single,
        MAX_DROP,
        "benchmarks/reach.py, run by the report after the sweeps",
        alone,
    )


def teacher_shape() -> str:
    """The bench teacher's width and depth, as the experiment files state them."""
    import yaml

    spec = yaml.safe_load((sweeps.ROOT / "experiments" / "bench" / "joint.yaml").read_text())["task"]["teacher"]
    return f"width {spec['width']:g}, depth {spec['depth']}"


def teacher_goal(p50_ms: float) -> str:
    """The headline line on the teacher's size: is it a model worth compressing on this machine?"""
    met = "**met**" if p50_ms >= TEACHER_BAR_MS else "**not met** (a faster CPU than the teacher was sized for)"
    return f"MNIST: the fp32 teacher's p50 here is {p50_ms:.3f} ms (goal >= {TEACHER_BAR_MS:g} ms): {met}."


def markdown(
    results: list[SearchResult],
    scale: Scale,
    png: str,
    reach_text: list[str] | None = None,
    bar_text: list[str] | None = None,
) -> str:
    """The section's text: setup, summary table, goals, what the space can reach, fronts, picks."""
    summary = summarize(results)
    teacher = next((study_teacher(r.run.study()) for r in results if r.finished), None)
    lines = [
        "## What the search finds on real data (MNIST)",
        "",
        "Commands (one per search and seed, through the real `slimsweep run`): "
        + "; ".join(f"`slimsweep run experiments/bench/{s}.yaml`" for s in scale.searches_in("latency"))
        + f", each with `search.seed` set per seed. Scale: {scale.describe()}.",
        "",
    ]
    if teacher:
        lines += [
            f"fp32 teacher ({teacher_shape()}): {teacher['accuracy']:.2f}% on the validation split, "
            f"{teacher['latency_p50_ms']:.3f} ms p50 at the bench station, {teacher['size_mb']:.3f} MB.",
            "",
            f"> {teacher_goal(teacher['latency_p50_ms'])}",
            "",
        ]
    lines += [
        f"Hypervolume: Optuna's `compute_hypervolume` over each front; {REFERENCE_TEXT}.",
        "Speed-up: each search's pick (fastest within 1.0 point of the teacher, re-timed at the end of its "
        "sweep), then timed side by side with the fp32 teacher and the other picks of the same seed "
        f"({(results[0].speedup.method if results and results[0].speedup else 'interleaved')}); "
        "median per-round ratio and its 95% interval.",
        "",
        "A trial that prunes or quantizes a model also measures the models it made on its way when the space holds "
        "their plans (the trained student before pruning, the pruned model before quantization): they cost no "
        "training and no trial of the budget, and count as candidates.",
        "",
        "| search | trials finished (failed) | models made on the way | plans stopped untrained | exact repeats | "
        "best accuracy of any trial (median) | "
        "median hypervolume | picks within 1 pt | median speed-up of the pick |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for search, s in summary.items():
        label = SEARCHES[search]
        lines.append(
            f"| {label} | {s['finished']} ({s['failed']}) | {s['on_the_way']} | {s['dominated']} | "
            f"{s['duplicates']} | "
            f"{_fmt(s['best_accuracy'])}% | {_fmt(s['hv'], '.4f')} | "
            f"{s['picks']}/{s['seeds']} | {_fmt(s['speedup'])}x |"
        )
    lines += ["", "Goals:", ""] + [x for k in JOINT for g in goals(summary, k) for x in (g, "")]
    lines += bar_text or []
    lines += reach_text or []
    lines += [
        f"![fronts]({png})",
        "",
        "### Picks, per seed",
        "",
        "| seed | search | pick | accuracy (vs teacher) | p50 in sweep | side-by-side speed-up [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if not r.finished:
            lines.append(
                f"| {r.seed} | {r.search} | the sweep failed (exit {r.run.returncode}): "
                f"{_cell((r.run.stderr.strip().splitlines() or [''])[-1][:150])} | | | |"
            )
            continue
        if r.pick is None:
            lines.append(f"| {r.seed} | {r.search} | no model within 1 point of the teacher | | | |")
            continue
        m = r.pick["measured"]
        lines.append(
            f"| {r.seed} | {r.search} | {_cell(r.pick['plan_summary'])} | {m['accuracy']:.2f} "
            f"({-m['accuracy_drop']:+.2f} pt) | {m['latency_p50_ms']:.3f} ms | "
            f"{r.speedup.text() if r.speedup else '-'} |"
        )
    lines += [
        "",
        "### Fronts, per search and seed",
        "",
        "| search | seed | trial | plan | accuracy | p50 ms | size MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r.front:
            lines.append(
                f"| {r.search} | {r.seed} | {row['trial']} | {_cell(row['plan'])} | {row['accuracy']:.2f} | "
                f"{row['p50_ms']:.3f} | {row['size_mb']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def section(out_dir: Path, quick: bool, *, work: Path, env: dict[str, str]) -> str:
    """Run the five searches, time their picks side by side, write the plot into out_dir; the markdown."""
    scale = QUICK if quick else FULL
    if "seeds" in OVERRIDE:
        scale = replace(scale, seeds=OVERRIDE["seeds"])
    results = run_all(work, scale, env)
    time_picks(results)
    from benchmarks import equalcompute  # it reads this module's searches and results

    bar_text = equalcompute.bar_lines(results, equalcompute.run_chains(work, scale, env, "latency"), scale, "latency")
    for deployment in scale.deployments[1:]:
        others = run_all(work, scale, env, deployment)
        chains = equalcompute.run_chains(work, scale, env, deployment)
        bar_text += equalcompute.bar_lines(others, chains, scale, deployment)
    plot(results, out_dir / "realdata-fronts.png")
    # What the space can reach trains models alone: the full report's, to keep the subset within its 15 minutes.
    reach_text = reach_lines(results, scale, env) if scale.reach else []
    return markdown(results, scale, "benchmarks/realdata-fronts.png", reach_text, bar_text)
