"""Time the quickstart (`slimsweep run experiments/digits.yaml`) end to end and report the pick against the teacher.

Usage: python benchmarks/quickstart.py [--keep-cache]
Runs in a fresh temporary folder (and, unless --keep-cache, a fresh teacher cache), as a new user would.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep-cache", action="store_true", help="reuse the user's teacher cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if not args.keep_cache:
            env["SLIMSWEEP_CACHE"] = str(Path(tmp) / "cache")
        start = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "slimsweep"), "run",
                               str(ROOT / "experiments" / "digits.yaml"), "--quiet"],
                              cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
            return proc.returncode
        card = json.loads((Path(tmp) / "outputs" / "digits" / "model_card.json").read_text())
    m, t = card["measured"], card["teacher"]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "wall_seconds": round(seconds, 1),
        "summary_line": next((l for l in proc.stdout.splitlines() if "trials finished" in l), ""),
        "picked": card["plan_summary"],
        "accuracy": m["accuracy"], "teacher_accuracy": t["accuracy"], "accuracy_drop": m["accuracy_drop"],
        "p50_ms_verified": m["latency_p50_ms_verified"], "teacher_p50_ms_verified": t["latency_p50_ms_verified"],
        "speedup": round(card["speedup_vs_teacher"], 2),
        "size_mb": m["size_mb"], "teacher_size_mb": t["size_mb"],
        "size_ratio": round(card["size_ratio_vs_teacher"], 2),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
