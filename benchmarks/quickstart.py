"""Time the quickstart (`slimsweep run experiments/digits.yaml`) end to end and report the pick against the teacher.

Usage: python benchmarks/quickstart.py [--keep-cache]
Runs in a fresh temporary folder (and, unless --keep-cache, a fresh teacher cache), as a new user would.
`section()` is the same run for benchmarks/report.py, with the pick timed side by side against the teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: import the project from this checkout

from benchmarks import sweeps  # noqa: E402
from benchmarks.sidebyside import side_by_side  # noqa: E402


def section(out_dir: Path, quick: bool, *, work: Path, env: dict[str, str]) -> str:
    """The quickstart as a user runs it (the same in --quick), its pick timed side by side with the fp32 teacher."""
    run = sweeps.run(ROOT / "experiments" / "digits.yaml", work / "quickstart", {}, env)
    lines = ["## The quickstart", "", f"Command: `{run.command}` (fresh folder, fresh teacher cache).", ""]
    card = run.card()
    if run.returncode != 0 or card is None:
        tail = (run.stderr.strip().splitlines() or run.stdout.strip().splitlines() or [""])[-1]
        return "\n".join(lines + [f"The sweep failed (exit {run.returncode}): {tail}", ""])
    m, t = card["measured"], card["teacher"]
    models = [(run.folder / "teacher.onnx").read_bytes(), (run.folder / "deployable.onnx").read_bytes()]
    sp = side_by_side(models, ["teacher fp32", "pick"])[1]
    verdict = (
        f"the interval is clear of 1.0: the pick is {'faster' if sp.ci_low > 1 else 'slower'} beyond the noise"
        if sp.clear_of_one
        else "**the interval includes 1.0: on this machine the pick is not measurably faster than the teacher**"
    )
    lines += [
        f"* {sweeps.summary_line(run)}; {run.seconds:.0f} s in all, teacher training included.",
        f"* Pick: `{card['plan_summary']}`, {m['accuracy']:.2f}% against the teacher's {t['accuracy']:.2f}% "
        f"({-m['accuracy_drop']:+.2f} pt), {m['size_mb']:.3f} MB against {t['size_mb']:.3f} MB.",
        f"* Latency: teacher {t['latency_p50_ms_verified']:.4f} ms, pick "
        f"{m['latency_p50_ms_verified']:.4f} ms (verified side by side at the bench station at the end of the sweep); "
        f"side by side ({sp.method}): speed-up {sp.text()}.",
        "",
        f"> Quickstart: the pick `{card['plan_summary']}` ({-m['accuracy_drop']:+.2f} pt against the teacher) "
        f"runs {sp.text()} "
        f"as fast as the fp32 teacher side by side; {verdict}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep-cache", action="store_true", help="reuse the user's teacher cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if not args.keep_cache:
            env["SLIMSWEEP_CACHE"] = str(Path(tmp) / "cache")
        start = time.perf_counter()
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "slimsweep"),
                "run",
                str(ROOT / "experiments" / "digits.yaml"),
                "--output-dir",
                "outputs",
                "--quiet",
            ],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
            return proc.returncode
        card = json.loads((Path(tmp) / "outputs" / "digits" / "model_card.json").read_text())
    m, t = card["measured"], card["teacher"]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "wall_seconds": round(seconds, 1),
        "summary_line": next((line for line in proc.stdout.splitlines() if "trials finished" in line), ""),
        "picked": card["plan_summary"],
        "accuracy": m["accuracy"],
        "teacher_accuracy": t["accuracy"],
        "accuracy_drop": m["accuracy_drop"],
        "p50_ms_verified": m["latency_p50_ms_verified"],
        "teacher_p50_ms_verified": t["latency_p50_ms_verified"],
        "speedup": round(card["speedup_vs_teacher"], 2),
        "size_mb": m["size_mb"],
        "teacher_size_mb": t["size_mb"],
        "size_ratio": round(card["size_ratio_vs_teacher"], 2),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
