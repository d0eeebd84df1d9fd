"""The equal-compute comparison at accuracy bars (issue 20): the hand-chained pipeline's runs per seed, and per
deployment the fastest model of every search within each bar, timed side by side with the teacher, with the goals.
Run alone: python -m benchmarks.equalcompute --quick --work DIR (prints the realdata section's markdown).

One search again against a finished report's others: copy the report's work folder, delete that search's folders in
the copy (e.g. COPY/realdata/joint and COPY/realdata-throughput/joint), and run
`python -m benchmarks.equalcompute --work COPY --reuse --no-reach`: the other sweeps are read back, the deleted ones
run on this checkout, and every side-by-side timing is taken again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import bars, chained, realdata, sweeps


def run_chains(
    work: Path, scale: realdata.Scale, env: dict[str, str], deployment: str
) -> dict[int, dict[float, chained.Chain]]:
    """The hand-chained pipeline per seed, at each bar, at the searches' epochs."""

    def read_run(run: sweeps.SweepRun) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        r = realdata._result("chained", 0, run)
        return r.front, r.trained

    overrides = {**scale.overrides, **realdata.DEPLOYMENTS[deployment]}
    return {
        seed: chained.run_chain(
            realdata.folder_of(work, deployment) / "chained" / f"seed{seed}",
            seed,
            scale.bars,
            scale.epochs,
            overrides,
            env,
            read_run,
        )
        for seed in scale.seeds
    }


def validation_images(scale: realdata.Scale) -> int:
    """The validation split's size at a scale (experiments/tasks.py holds VAL_SHARE of the MNIST test set out)."""
    from experiments.tasks import VAL_SHARE

    return round(VAL_SHARE * int(scale.overrides.get("task.limit") or 10000))


def _median_text(values: list[float]) -> str:
    return realdata._fmt(realdata._median(values), ".3g")


def bar_lines(
    results: list[realdata.SearchResult],
    chains: dict[int, dict[float, chained.Chain]],
    scale: realdata.Scale,
    deployment: str,
) -> list[str]:
    """The accuracy bars of one deployment: compute spent, the chain's stages, a table per bar, the goals per seed."""
    batch = int(realdata.DEPLOYMENTS[deployment].get("target.batch_size", 1))
    picks: list[bars.BarPick] = []
    for r in results:
        picks += bars.picks_at_bars(r.search, r.seed, r.front, scale.bars)
    for seed, by_bar in chains.items():
        for bar, chain in by_bar.items():
            if chain.final is not None:
                picks += bars.picks_at_bars("chained", seed, [chain.final], (bar,))
    per_seed = {}
    for seed in scale.seeds:
        teacher = next((r.run.folder / "teacher.onnx" for r in results if r.seed == seed), None)
        if teacher is not None and teacher.is_file():
            per_seed[seed] = bars.time_seed([p for p in picks if p.seed == seed], teacher, batch)
    searches = scale.searches_in(deployment)
    bar_searches = (*searches, "chained")  # joint first, as the scale lists it
    title = "batch 1, p50 latency" if batch == 1 else f"batch {batch}, throughput (items/s) as the objective"
    lines = [
        f"### Accuracy bars: {deployment} deployment ({title})",
        "",
        f"Equal compute: every search had {scale.epochs:g} student epochs (`search.budget.epochs`; a repeat answered "
        f"from an earlier plan costs nothing); quantization alone trains nothing and ran its whole space "
        f"({realdata.QUANTIZATION_PLANS} schemes of the teacher). The hand-chained pipeline: {chained.SPLIT_TEXT}; "
        "stage 3 (quantization schemes of the pruned student) trains nothing a user pays for; each stage keeps the "
        "fastest model of its front within the bar. Student epochs spent (median over seeds): "
        + ", ".join(f"{k} {_median_text([r.epochs_spent for r in results if r.search == k])}" for k in searches)
        + f", chained {_median_text([c.charged_epochs for by in chains.values() for c in by.values()])}"
        + " (charged as a user pays it).",
        "",
        f"Each cell: the search's fastest front member within the bar, its accuracy against the teacher, and its "
        f"speed-up over the fp32 teacher at batch {batch}, timed side by side in one interleaved comparison per seed "
        "holding every search's models at every bar (median per-round ratio [95% interval]). "
        f"One validation image is {100 / validation_images(scale):.3g} pt of accuracy at this scale.",
        "",
    ]
    lines += bars.tables(picks, per_seed, bar_searches, scale.bars)
    lines += [
        "The hand-chained pipeline's stages, per seed and bar:",
        "",
        "| seed | bar | stage 1 student | stage 2 pruned | stage 3 quantized | epochs charged |",
        "|---|---|---|---|---|---|",
    ]
    for seed, by_bar in chains.items():
        for bar, c in by_bar.items():
            stage = [realdata._cell(x["plan"]) if x else "none within the bar" for x in (c.student, c.pruned, c.final)]
            lines.append(f"| {seed} | {bar:g} | " + " | ".join(stage) + f" | {c.charged_epochs:g} |")
    lines += [""]
    lines += [x for g in bars.goal_lines(deployment, per_seed, bar_searches, scale.bars) for x in (g, "")]
    return lines


def main() -> None:
    """Run this section alone and print its markdown (nothing in docs/ is written but the fronts' plot, elsewhere)."""
    import argparse
    import os
    import time

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the quick scale (the full one otherwise)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the sweeps and the plot")
    parser.add_argument("--reuse", action="store_true", help="read back sweeps that finished in --work")
    parser.add_argument(
        "--no-reach", action="store_true", help="leave out what the joint space can reach (it trains models alone)"
    )
    args = parser.parse_args()
    sweeps.REUSE["finished"] = args.reuse
    if args.no_reach:
        realdata.QUICK = replace(realdata.QUICK, reach=False)
        realdata.FULL = replace(realdata.FULL, reach=False)
    env = {
        "PYTHONPATH": str(sweeps.ROOT),
        "SLIMSWEEP_CACHE": os.environ.get("SLIMSWEEP_CACHE", str(args.work / "cache")),
    }
    start = time.perf_counter()
    text = realdata.section(args.work, args.quick, work=args.work, env=env)
    print(text)
    print(f"[realdata] {'quick' if args.quick else 'full'} scale in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
