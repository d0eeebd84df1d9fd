"""Do latencies taken at the bench station while a sweep trains agree with the same models timed in isolation?

Usage: python benchmarks/isolation.py [--trials 16] [--rounds 3]

1. Runs a sweep of the quickstart experiment (the station times every candidate while other trials train).
2. Re-times every candidate in isolation, `--rounds` times, with the same method and settings.
3. For contrast, times them again while a training load runs on every core and nothing is reserved.
Reports Spearman rank correlation and median relative error of (2) against the sweep's figures and against (3),
and the spread of repeated isolated measurements (CV of p50 across rounds, and the mean within-run CV).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna
from scipy.stats import spearmanr

from evaluators.latency import TimingSettings, measure
from search.study import read

ROOT = Path(__file__).resolve().parent.parent
LOAD = """
import torch, time
torch.set_num_threads(1)
m = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3), torch.nn.Flatten(),
                        torch.nn.LazyLinear(10))
x = torch.randn(64, 1, 16, 16); opt = torch.optim.SGD(m.parameters(), lr=0.01)
while True:
    opt.zero_grad(); m(x).sum().backward(); opt.step()
"""


def _sweep(folder: Path, trials: int) -> optuna.Study:
    subprocess.run(
        [
            str(Path(sys.executable).parent / "slimsweep"),
            "run",
            str(ROOT / "experiments" / "digits.yaml"),
            "--trials",
            str(trials),
            "--output-dir",
            "outputs",
            "--quiet",
        ],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    return optuna.load_study(study_name="digits", storage=f"sqlite:///{folder / 'outputs' / 'digits' / 'study.db'}")


def _compare(reference: list[float], other: list[float]) -> dict[str, float]:
    ref, oth = np.array(reference), np.array(other)
    return {
        "spearman": round(float(spearmanr(ref, oth).statistic), 3),
        "median_rel_error": round(float(np.median(np.abs(oth - ref) / ref)), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = TimingSettings(threads=1, batch_size=1, warmup=20, min_repeats=50, max_seconds=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study = _sweep(folder, args.trials)
        trials = [t for t in study.trials if t.state.name == "COMPLETE"]
        models = {
            t.number: (folder / "outputs" / "digits" / "trials" / f"trial-{t.number}.onnx").read_bytes() for t in trials
        }
        in_sweep = [read(t).metrics["latency_p50_ms"] for t in trials]

        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[-1:])  # the core a station would keep
        rounds, cvs = [], []
        for _ in range(args.rounds):
            stats = [measure(models[t.number], settings) for t in trials]
            rounds.append([s.p50_ms for s in stats])
            cvs += [s.cv for s in stats]
        isolated = [statistics.median(r[i] for r in rounds) for i in range(len(trials))]
        spread = [statistics.pstdev(r[i] for r in rounds) / isolated[i] for i in range(len(trials))]

        os.sched_setaffinity(0, range(os.cpu_count() or 1))
        loads = [subprocess.Popen([sys.executable, "-c", LOAD]) for _ in range(os.cpu_count() or 1)]
        try:
            under_load = [measure(models[t.number], settings).p50_ms for t in trials]
        finally:
            for p in loads:
                p.kill()

    report = {
        "machine": f"{os.cpu_count()} cores",
        "candidates": len(trials),
        "station_during_sweep_vs_isolated": _compare(isolated, in_sweep),
        "unreserved_under_training_load_vs_isolated": _compare(isolated, under_load),
        "isolated_p50_cv_across_rounds_median": round(statistics.median(spread), 3),
        "within_run_cv_median": round(statistics.median(cvs), 3),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
