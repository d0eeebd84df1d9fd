"""The Pareto front (Optuna's own helper), as rows, a CSV, a chart and a terminal table."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.study import finished, read

COLUMNS = ("trial", "plan", "accuracy", "accuracy_drop", "latency_p50_ms", "latency_p95_ms", "size_mb", "params",
           "latency_p50_ms_verified")


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

    @property
    def latency(self) -> float:
        """The figure the pick trusts: the verified p50 when there is one."""
        return self.latency_p50_ms if self.latency_p50_ms_verified is None else self.latency_p50_ms_verified


def candidate(trial: FrozenTrial) -> Candidate:
    """A candidate from the metrics the driver stored on the trial."""
    rec = read(trial)
    m = rec.metrics
    return Candidate(
        trial=trial.number, plan=rec.describe, accuracy=m["accuracy"],
        accuracy_drop=m["accuracy_drop"], latency_p50_ms=m["latency_p50_ms"], latency_p95_ms=m["latency_p95_ms"],
        size_mb=m["size_mb"], params=m["params"], params_dict=tuple(sorted(rec.plan.items())),
    )


def front(study: optuna.Study) -> list[Candidate]:
    """Feasible, non-dominated trials (Optuna's best_trials honours the constraints), fastest first."""
    return sorted((candidate(t) for t in study.best_trials), key=lambda c: c.latency)


def everything(study: optuna.Study) -> list[Candidate]:
    """Every trial that produced a candidate."""
    return [candidate(t) for t in finished(study) if read(t).metrics]


def write_csv(rows: list[Candidate], path: Path) -> Path:
    """The front as pareto.csv."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for c in rows:
            d = asdict(c)
            writer.writerow(["" if d[k] is None else d[k] for k in COLUMNS])
    return path


def _figure(front_rows: list[Candidate], others: list[Candidate], teacher: dict[str, float]):
    import matplotlib

    matplotlib.use("Agg")  # no screen on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    biggest = max([c.size_mb for c in front_rows + others] + [teacher["size_mb"]])

    def area(size_mb: float) -> float:
        return 30 + 400 * size_mb / biggest

    ax.scatter([c.latency for c in others], [c.accuracy for c in others], s=[area(c.size_mb) for c in others],
               c="lightgrey", edgecolors="grey", label="other trials")
    ax.scatter([c.latency for c in front_rows], [c.accuracy for c in front_rows],
               s=[area(c.size_mb) for c in front_rows], c="tab:blue", edgecolors="navy", alpha=0.8,
               label="Pareto front")
    for c in front_rows:
        ax.annotate(f"#{c.trial}", (c.latency, c.accuracy), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.scatter([teacher.get("latency_p50_ms_verified", teacher["latency_p50_ms"])], [teacher["accuracy"]], marker="*", s=350, c="tab:red",
               edgecolors="darkred", label="teacher (fp32)")
    ax.set_xscale("log")
    ax.set_xlabel("latency p50 on the target (ms, log scale; verified where re-timed)")
    ax.set_ylabel("accuracy on the validation split (%)")
    ax.set_title("Pareto front: accuracy vs latency (marker area = size on disk)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def write_charts(front_rows: list[Candidate], others: list[Candidate], teacher: dict[str, float],
                 folder: Path) -> tuple[Path, Path]:
    """pareto.png and pareto.html (the same chart as inline SVG, and the front as a table)."""
    import matplotlib.pyplot as plt

    fig = _figure(front_rows, others, teacher)
    png = folder / "pareto.png"
    fig.savefig(png, dpi=110)
    svg = io.StringIO()
    fig.savefig(svg, format="svg")
    plt.close(fig)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(getattr(c, k)))}</td>" for k in COLUMNS) + "</tr>" for c in front_rows
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


def table(rows: list[Candidate], teacher: dict[str, float] | None = None, title: str = "Pareto front"):
    """A rich table of the front for the terminal."""
    from rich.table import Table

    t = Table(title=title)
    for name in ("trial", "plan", "accuracy %", "drop pt", "p50 ms", "p95 ms", "verified p50 ms", "size MB"):
        t.add_column(name, justify="left" if name == "plan" else "right")
    if teacher:
        verified = teacher.get("latency_p50_ms_verified")
        t.add_row("teacher", "fp32 teacher", f"{teacher['accuracy']:.2f}", "0.00", f"{teacher['latency_p50_ms']:.4f}",
                  f"{teacher['latency_p95_ms']:.4f}", "" if verified is None else f"{verified:.4f}",
                  f"{teacher['size_mb']:.3f}", style="dim")
    for c in rows:
        verified = "" if c.latency_p50_ms_verified is None else f"{c.latency_p50_ms_verified:.4f}"
        t.add_row(str(c.trial), c.plan, f"{c.accuracy:.2f}", f"{c.accuracy_drop:.2f}", f"{c.latency_p50_ms:.4f}",
                  f"{c.latency_p95_ms:.4f}", verified, f"{c.size_mb:.3f}")
    return t
