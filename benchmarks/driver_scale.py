"""Does the driver's loop stay flat as a study grows? The real loop (search/loop.py) on the in-process executor, a
trivial trial (no training, fixed figures), a real Optuna study on SQLite, one trial at a time, MLflow off: the gap
between one result reaching the driver and the next plan's submit, around 100, 1,000 and 3,000 trials.

Beside it, what one full read of the study costs at each size (search.study.spent: the driver before the ledger read
the study this way several times per step, so its gap grew with the study).

    .venv/bin/python benchmarks/driver_scale.py [--sizes 100,1000,3000] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluators.latency import LatencyStats  # noqa: E402
from search.config import load  # noqa: E402
from search.inprocess import InProcessExecutor  # noqa: E402
from search.study import spent  # noqa: E402
from search.sweep import prepare, sweep  # noqa: E402
from search.trial import TrialResult, teacher_figures  # noqa: E402

WINDOW = 50  # trials whose gaps make each row's median


def _stats() -> LatencyStats:
    return LatencyStats(
        1.0, 1.0, 1.0, 1.0, 1.0, cv=0.0, ci_rel=0.0, throughput=1e3, repeats=10, stable=True, retried=False
    )


class Stopwatch(InProcessExecutor):
    """The in-process executor, noting when each result left `wait` and when the next trial was submitted."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received: float | None = None
        self.gaps: list[tuple[int, float]] = []  # (trials submitted so far, seconds from the last result)

    def wait(self, running, timeout):
        out = super().wait(running, timeout)
        if out:
            self.received = time.perf_counter()
        return out

    def submit(self, number, plan, context_ref, bar=None, behind=None):
        if self.received is not None:
            self.gaps.append((len(self.submitted), time.perf_counter() - self.received))
            self.received = None
        return super().submit(number, plan, context_ref, bar, behind)


class FullReads:
    """Listener: what one full read of the study (search.study.spent) costs when the study reaches each size."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes, self.ms = set(sizes), {}

    def trial_told(self, loop, told) -> None:
        size = loop.ledger.spent
        if size in self.sizes and size not in self.ms:
            t0 = time.perf_counter()
            spent(loop.study)
            self.ms[size] = (time.perf_counter() - t0) * 1000


def experiment(folder: Path, trials: int) -> Path:
    """A space with a continuous knob (the learning rate), so thousands of proposals are thousands of plans."""
    data = {
        "name": "scale",
        "task": {"name": "digits", "seed": 0, "teacher": {"epochs": 2}},
        "space": {
            "students": {
                "teacher": False,
                "cnn": {"width": [0.5], "depth": [1], "epochs": 1, "lr": {"low": 1e-4, "high": 1e-1}},
            },
            "pruning": {"ratio": [0.0]},
            "quantization": {"schemes": ["fp32"]},
        },
        "constraints": {"max_accuracy_drop": 100.0},
        "search": {"sampler": "random", "trials": trials, "parallel": 1, "seed": 0, "skip_dominated": True},
        "output_dir": str(folder / "outputs"),
    }
    path = folder / "scale.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,3000")
    parser.add_argument("--out", type=Path, default=None, help="folder for the study (default: a temporary one)")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    folder = args.out or Path(tempfile.mkdtemp(prefix="driver-scale-"))
    exp = load(experiment(folder, sizes[-1]))
    ctx = prepare(exp)
    onnx_bytes, _ = teacher_figures(ctx, lambda m: (_stats(), False))
    metrics = {"accuracy": 90.0, "latency_p50_ms": 1.0, "size_mb": 1.0, "params": 1.0}

    def trivial(number, plan, ctx, time_model, bar, report):
        return TrialResult(number, metrics=dict(metrics), onnx=onnx_bytes, info={"skipped_training": False})

    executor = Stopwatch(exp.target.spec(), trial=trivial, timer=lambda m, s: _stats())
    start = time.perf_counter()
    reads = FullReads(sizes)
    swept = sweep(exp, executor, ctx, quiet=True, offline=True, listeners=[reads])
    total = time.perf_counter() - start
    study = swept.study
    print(f"{len(spent(study))} trials in {total:.0f} s; gap = a result reaching the driver to the next submit")
    print(f"{'trials':>8} {'median gap ms':>14} {'p90 gap ms':>11} {'one full read ms':>17}")
    for size in sizes:
        window = [g for n, g in executor.gaps if size - WINDOW < n <= size]
        if not window:
            continue
        window.sort()
        p90 = window[int(0.9 * (len(window) - 1))]
        read_ms = reads.ms.get(size, float("nan"))
        print(f"{size:>8} {statistics.median(window) * 1000:>14.1f} {p90 * 1000:>11.1f} {read_ms:>17.1f}")
    print("(before the ledger, the driver read the whole study several times per step: spent, running, the bar)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
