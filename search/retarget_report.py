"""How a retargeted front is shown: rows for JSON, front.csv, and the terminal table (search/retarget.py builds it)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from search.pareto import Candidate
from search.retarget import TargetFront

FRONT_COLUMNS = (
    "trial",
    "plan",
    "accuracy",
    "accuracy_host",
    "accuracy_drop",
    "latency_p50_ms",
    "latency_p95_ms",
    "throughput_per_s",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "size_mb",
)


def rows(view: TargetFront, members: list[Candidate] | None = None) -> list[dict[str, Any]]:
    """The front (or `members`) as plain rows: the target's figures and, beside the accuracy, the host's."""
    return [
        {
            "trial": c.trial,
            "plan": c.plan,
            "accuracy": c.accuracy,
            "accuracy_host": view.host_accuracy.get(c.trial),
            "accuracy_drop": c.accuracy_drop,
            "latency_p50_ms": c.latency_p50_ms,
            "latency_p95_ms": c.latency_p95_ms,
            "throughput_per_s": c.throughput_per_s,
            "speedup": c.speedup,
            "speedup_ci_low": c.speedup_ci_low,
            "speedup_ci_high": c.speedup_ci_high,
            "size_mb": c.size_mb,
            "knobs": dict(c.params_dict),
        }
        for c in (view.front if members is None else members)
    ]


def write_csv(view: TargetFront, path: Path, *, pick: int | None) -> Path:
    """The target's front as front.csv, the pick marked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*FRONT_COLUMNS, "picked"])
        for row in rows(view):
            writer.writerow(
                [*("" if row[k] is None else row[k] for k in FRONT_COLUMNS), str(row["trial"] == pick).lower()]
            )
    return path


def table(view: TargetFront, *, pick: int | None = None):
    """A rich table of a target's front: accuracy there (and the host's where it differs), p50, p95, throughput,
    speed-up over the teacher on that target with its interval, size."""
    from rich.table import Table

    device = view.accuracy_on == "device"
    t = Table(
        title=f"Pareto front on {view.slug}",
        caption=(f"* = the pick (trial {pick}); " if pick is not None else "")
        + "p50, p95: each model timed alone; speed-up: side by side with the teacher on this target, for the members "
        "the pick can reach (-: out of its reach, not timed side by side)"
        + ("; accuracy scored on the device, the host's beside it where it differs" if device else ""),
    )
    columns = ["", "trial", "plan", "accuracy %", *(["host %"] if device else []), "p50 ms", "p95 ms"]
    for name in (*columns, "items/s", "speed-up [interval]", "size MB"):
        t.add_column(name, justify="left" if name in {"", "plan"} else "right")
    teacher = view.teacher
    t.add_row(
        "",
        "teacher",
        "fp32 teacher",
        f"{teacher['accuracy']:.2f}",
        *([""] if device else []),
        f"{teacher['latency_p50_ms']:.4f}",
        f"{teacher['latency_p95_ms']:.4f}",
        f"{teacher['throughput_per_s']:.1f}",
        "1x",
        f"{teacher['size_mb']:.3f}",
        style="dim",
    )
    for c in view.front:
        host = view.host_accuracy.get(c.trial)
        t.add_row(
            "*" if c.trial == pick else "",
            str(c.trial),
            c.plan,
            f"{c.accuracy:.2f}",
            *([("" if host is None or host == c.accuracy else f"{host:.2f}")] if device else []),
            f"{c.latency_p50_ms:.4f}",
            f"{c.latency_p95_ms:.4f}",
            f"{c.throughput_per_s:.1f}",
            "-" if c.speedup is None else f"{c.speedup:.2f}x [{c.speedup_ci_low:.2f}, {c.speedup_ci_high:.2f}]",
            f"{c.size_mb:.3f}",
            style="bold green" if c.trial == pick else None,
        )
    return t
