"""The Pareto front (Optuna's own helper), as rows, a CSV, a chart and a terminal table."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from evaluators.compare import SIDE_BY_SIDE_DRIFT
from search.study import finished, read

COLUMNS = (
    "trial",
    "plan",
    "accuracy",
    "accuracy_drop",
    "latency_p50_ms",
    "latency_p95_ms",
    "size_mb",
    "params",
    "latency_p50_ms_verified",
)


@dataclass(frozen=True)
class Candidate:
    """One finished, successful trial as the front and the pick see it."""

    trial: int
    plan: str
    accuracy: float
    accuracy_drop: float
    latency_p50_ms: float
    latency_p95_ms: float
    size_mb: float
    params: float
    latency_p50_ms_verified: float | None = None
    params_dict: tuple[tuple[str, Any], ...] = ()
    # Side by side with the teacher (search/deliver.verify): the median speed-up and its interval, which covers the
    # drift between processes (evaluators/compare.INTERVAL_COVERS); None where not verified.
    speedup: float | None = None
    speedup_ci_low: float | None = None
    speedup_ci_high: float | None = None

    @property
    def latency(self) -> float:
        """The figure the pick trusts: the verified p50 when there is one."""
        return self.latency_p50_ms if self.latency_p50_ms_verified is None else self.latency_p50_ms_verified


def candidate(trial: FrozenTrial) -> Candidate:
    """A candidate from the metrics the driver stored on the trial."""
    rec = read(trial)
    m = rec.metrics
    return Candidate(
        trial=trial.number,
        plan=rec.describe,
        accuracy=m["accuracy"],
        accuracy_drop=m["accuracy_drop"],
        latency_p50_ms=m["latency_p50_ms"],
        latency_p95_ms=m["latency_p95_ms"],
        size_mb=m["size_mb"],
        params=m["params"],
        params_dict=tuple(sorted(rec.plan.items())),
    )


def front(study: optuna.Study) -> list[Candidate]:
    """Feasible, non-dominated trials (Optuna's best_trials honours the constraints), fastest first; a plan answered
    from an identical earlier trial is that trial's model, shown once (as the earlier one)."""
    members = (candidate(t) for t in study.best_trials if read(t).reuse_of is None)
    return sorted(members, key=lambda c: c.latency)


def everything(study: optuna.Study) -> list[Candidate]:
    """Every trial that produced a candidate, each model once (repeats answered from an earlier trial left out)."""
    return [candidate(t) for t in finished(study) if (rec := read(t)).metrics and rec.reuse_of is None]


def distinguishing(rows: list[Candidate]) -> list[str]:
    """The plan's knobs whose values differ between rows (what tells two similar-looking members apart)."""
    values: dict[str, set[str]] = {}
    for c in rows:
        for k, v in c.params_dict:
            values.setdefault(k, set()).add(repr(v))
    return sorted(k for k, seen in values.items() if len(seen) > 1)


def knobs(c: Candidate, names: list[str]) -> str:
    """The named knobs of one candidate as 'name=value' (rounded floats), those it has."""
    plan = dict(c.params_dict)
    return " ".join(f"{k}={_cell(plan[k])}" for k in names if k in plan)


# The speed-up columns of pareto.csv, and what their interval covers.
SPEEDUP_COLUMNS = ("speedup_vs_teacher", "speedup_ci_low", "speedup_ci_high", "speedup_interval")
SIDE_BY_SIDE = f"side by side 95% widened by ±{SIDE_BY_SIDE_DRIFT:.0%} for drift between processes"
NOT_VERIFIED = "none: not verified side by side"


def write_csv(
    rows: list[Candidate],
    path: Path,
    *,
    pick: int | None = None,
    accuracy_threshold: float | None = None,
    tied: Iterable[int] = (),
    won_by: str = "",
) -> Path:
    """The front as pareto.csv: the columns, the speed-up over the teacher with its interval, every knob that
    differs between rows, which row is the pick, which rows tied with it on speed, and what the pick won on."""
    names, tied = distinguishing(rows), set(tied)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [*COLUMNS, *SPEEDUP_COLUMNS, *names, "picked", "tied_with_pick", "pick_won_on", "meets_accuracy_threshold"]
        )
        for c in rows:
            d, plan = asdict(c), dict(c.params_dict)
            meets = "" if accuracy_threshold is None else str(c.accuracy >= accuracy_threshold).lower()
            covers = NOT_VERIFIED if c.speedup is None else SIDE_BY_SIDE
            speed = ["" if v is None else v for v in (c.speedup, c.speedup_ci_low, c.speedup_ci_high)]
            writer.writerow(
                ["" if d[k] is None else d[k] for k in COLUMNS]
                + [*speed, covers]
                + [plan.get(k, "") for k in names]
                + [str(c.trial == pick).lower(), str(c.trial in tied).lower(), won_by if c.trial == pick else "", meets]
            )
    return path


def speed_cell(c: Candidate) -> str:
    """A member's side-by-side speed-up over the teacher with its interval, or '' when not verified."""
    if c.speedup is None or c.speedup_ci_low is None or c.speedup_ci_high is None:
        return ""
    return f"{c.speedup:.2f}x [{c.speedup_ci_low:.2f}, {c.speedup_ci_high:.2f}]"


def _figure(
    front_rows: list[Candidate],
    others: list[Candidate],
    teacher: dict[str, float],
    pick: int | None = None,
    accuracy_threshold: float | None = None,
):
    import matplotlib

    matplotlib.use("Agg")  # no screen on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    biggest = max([c.size_mb for c in front_rows + others] + [teacher["size_mb"]])

    def area(size_mb: float) -> float:
        return 30 + 400 * size_mb / biggest

    ax.scatter(
        [c.latency for c in others],
        [c.accuracy for c in others],
        s=[area(c.size_mb) for c in others],
        c="lightgrey",
        edgecolors="grey",
        label="other trials",
    )
    ax.scatter(
        [c.latency for c in front_rows],
        [c.accuracy for c in front_rows],
        s=[area(c.size_mb) for c in front_rows],
        c="tab:blue",
        edgecolors="navy",
        alpha=0.8,
        label="Pareto front",
    )
    for c in front_rows:
        ax.annotate(f"#{c.trial}", (c.latency, c.accuracy), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.scatter(
        [teacher.get("latency_p50_ms_verified", teacher["latency_p50_ms"])],
        [teacher["accuracy"]],
        marker="*",
        s=350,
        c="tab:red",
        edgecolors="darkred",
        label="teacher (fp32)",
    )
    picked = [c for c in front_rows if c.trial == pick]
    if picked:
        ax.scatter(
            [picked[0].latency],
            [picked[0].accuracy],
            s=area(picked[0].size_mb) * 2.5,
            facecolors="none",
            edgecolors="tab:green",
            linewidths=2.5,
            label=f"pick (trial {pick})",
        )
    if accuracy_threshold is not None:
        ax.axhline(
            accuracy_threshold,
            color="tab:orange",
            linestyle="--",
            linewidth=1.2,
            label=f"accuracy threshold ({accuracy_threshold:.2f}%)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("latency p50 on the target (ms, log scale; verified where re-timed)")
    ax.set_ylabel("accuracy on the validation split (%)")
    ax.set_title("Pareto front: accuracy vs latency (marker area = size on disk)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def write_charts(
    front_rows: list[Candidate],
    others: list[Candidate],
    teacher: dict[str, float],
    folder: Path,
    *,
    pick: int | None = None,
    accuracy_threshold: float | None = None,
) -> tuple[Path, Path]:
    """pareto.png and pareto.html (the same chart as inline SVG, and the front as a table), the pick and the
    accuracy threshold marked."""
    import matplotlib.pyplot as plt

    fig = _figure(front_rows, others, teacher, pick, accuracy_threshold)
    png = folder / "pareto.png"
    fig.savefig(png, dpi=110)
    svg = io.StringIO()
    fig.savefig(svg, format="svg")
    plt.close(fig)
    names = distinguishing(front_rows)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (*COLUMNS, "speed-up [interval]", "knobs", "picked"))
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(_cell(getattr(c, k)))}</td>" for k in COLUMNS)
        + f"<td>{html.escape(speed_cell(c))}</td><td>{html.escape(knobs(c, names))}</td>"
        + f"<td>{'pick' if c.trial == pick else ''}</td></tr>"
        for c in front_rows
    )
    teacher_line = ", ".join(f"{k} {_cell(v)}" for k, v in teacher.items() if k in COLUMNS)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Pareto front</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
        f"<h1>Pareto front</h1>{svg.getvalue()}<p>Teacher (fp32): {html.escape(teacher_line)}</p>"
        f"<table><tr>{head}</tr>{body}</table></body></html>"
    )
    page_path = folder / "pareto.html"
    page_path.write_text(page)
    return png, page_path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(
    rows: list[Candidate],
    teacher: dict[str, float] | None = None,
    title: str = "Pareto front",
    *,
    pick: int | None = None,
    accuracy_threshold: float | None = None,
    tied: Iterable[int] = (),
    won_by: str = "",
):
    """A rich table of the front for the terminal: the pick marked, the members tied with it on speed marked, each
    member's side-by-side speed-up over the teacher with its interval, the knobs that tell rows apart, and whether
    each row meets the accuracy threshold."""
    from rich.table import Table

    names, tied = distinguishing(rows), set(tied)
    caption = []
    if accuracy_threshold is not None:
        caption.append(f"accuracy threshold {accuracy_threshold:.2f}% (rows below it marked 'below')")
    if pick is not None:
        caption.append(f"* = the pick (trial {pick})" + (f", won on {won_by}" if won_by else ""))
    if tied:
        caption.append("= tied with the pick on speed (the speed-up intervals overlap: neither is measurably faster)")
    if any(c.speedup is not None for c in rows):
        caption.append(f"speed-up interval: {SIDE_BY_SIDE}")
    t = Table(title=title, caption="\n".join(caption) or None)  # a line each: a note is never broken mid-way
    for name in (
        "",
        "trial",
        "plan",
        "knobs",
        "accuracy %",
        "drop pt",
        "p50 ms",
        "p95 ms",
        "verified p50 ms",
        "speed-up [interval]",
        "size MB",
    ):
        t.add_column(name, justify="left" if name in {"plan", "knobs", ""} else "right")
    if teacher:
        verified = teacher.get("latency_p50_ms_verified")
        t.add_row(
            "",
            "teacher",
            "fp32 teacher",
            "",
            f"{teacher['accuracy']:.2f}",
            "0.00",
            f"{teacher['latency_p50_ms']:.4f}",
            f"{teacher['latency_p95_ms']:.4f}",
            "" if verified is None else f"{verified:.4f}",
            "1x",
            f"{teacher['size_mb']:.3f}",
            style="dim",
        )
    for c in rows:
        verified = "" if c.latency_p50_ms_verified is None else f"{c.latency_p50_ms_verified:.4f}"
        below = accuracy_threshold is not None and c.accuracy < accuracy_threshold
        t.add_row(
            "*" if c.trial == pick else "=" if c.trial in tied else "",
            str(c.trial),
            c.plan,
            knobs(c, names),
            f"{c.accuracy:.2f}" + (" below" if below else ""),
            f"{c.accuracy_drop:.2f}",
            f"{c.latency_p50_ms:.4f}",
            f"{c.latency_p95_ms:.4f}",
            verified,
            speed_cell(c),
            f"{c.size_mb:.3f}",
            style="bold green" if c.trial == pick else None,
        )
    return t
