"""The Pareto front (Optuna's own helper), as rows, a CSV, a chart and a terminal table."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable, Iterator
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
    throughput_per_s: float | None = None  # items per second at the target's batch (None: a trial of an older release)

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
        throughput_per_s=m.get("throughput_per_s"),
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
    show_knobs: bool = False,
) -> FrontTable:
    """The front for the terminal, one compact row per member (see FrontTable); `show_knobs` adds the knobs that
    tell rows apart, one per line (and, where the width allows, the p95 and the in-sweep p50)."""
    return FrontTable(rows, teacher, title, pick, accuracy_threshold, frozenset(tied), won_by, show_knobs)


# Below _NARROW columns a member's speed-up interval, its 'below' mark and its rate go under its figures, so that the
# plan keeps room at 80 columns; below _KNOBS_APART the knobs go under the plan instead of two columns of their own.
_NARROW, _KNOBS_APART = 110, 150


@dataclass(frozen=True)
class FrontTable:
    """The front as a rich renderable: the pick and the members tied with it marked, accuracy and whether it meets
    the threshold, p50, the side-by-side speed-up over the teacher with its interval, size, throughput, the plan.

    Laid out for the width it is printed at: a figure never wraps and nothing is cut to `prun…` (rich's default for
    a column that does not fit); the plan and the knobs wrap between words."""

    rows: list[Candidate]
    teacher: dict[str, float] | None
    title: str
    pick: int | None
    accuracy_threshold: float | None
    tied: frozenset[int]
    won_by: str
    show_knobs: bool

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.text import Text

        width = options.max_width
        yield self.render(narrow=width < _NARROW, knobs_apart=width >= _KNOBS_APART)
        # Under the table, not as its caption: a caption as wide as its longest note would widen the table.
        for line in self.caption():
            yield Text(line, style="dim")

    def caption(self) -> list[str]:
        """What the marks and figures mean, a line each (a note is never broken mid-way by the table)."""
        lines = []
        if self.accuracy_threshold is not None:
            lines.append(f"accuracy threshold {self.accuracy_threshold:.2f}% (rows below it marked 'below')")
        if self.pick is not None:
            lines.append(f"* = the pick (trial {self.pick})" + (f", won on {self.won_by}" if self.won_by else ""))
        if self.tied:
            lines.append("= tied with the pick on speed (the speed-up intervals overlap: neither is measurably faster)")
        if any(c.latency_p50_ms_verified is not None for c in self.rows):
            lines.append("p50: timed side by side with the teacher at the end of the sweep, where it was re-timed")
        if any(c.speedup is not None for c in self.rows):
            lines.append(f"speed-up interval: {SIDE_BY_SIDE}")
        if not self.show_knobs and distinguishing(self.rows):
            from search.commands import tool

            lines.append(f"the knobs that tell the rows apart: {tool('slimsweep')} front EXPERIMENT.yaml --knobs")
        return lines

    def render(self, *, narrow: bool, knobs_apart: bool = True):
        """The rich Table; `narrow` puts the interval, the 'below' mark and the rate under their figures; with the
        knobs shown, `knobs_apart` gives them a column of their own beside the p95 and the in-sweep p50, else they
        go under the plan."""
        from rich import box
        from rich.table import Table

        rate = any(c.throughput_per_s is not None for c in self.rows)
        wide_knobs = self.show_knobs and knobs_apart and not narrow
        heads = ["trial", "acc.\n%", "drop\npt", "p50\nms"]
        if wide_knobs:
            heads += ["p95\nms", "in-sweep\np50 ms"]
        heads += ["speed-up\n[interval]"] + (["size MB\nitems/s"] if rate and narrow else ["size\nMB"])
        heads += ["items/s"] if rate and not narrow else []
        # No outer box and no column rules, two spaces between columns: the width goes to the figures and the plan.
        t = Table(title=self.title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
        t.add_column("", no_wrap=True)
        for name in heads:
            t.add_column(name, justify="right", no_wrap=True)
        t.add_column("plan" + ("\nknobs" if self.show_knobs and not wide_knobs else ""), overflow="fold", min_width=16)
        if wide_knobs:
            t.add_column("knobs", overflow="fold", min_width=16)
        if self.teacher:
            m = self.teacher
            figures = [m["accuracy"], 0.0, m.get("latency_p50_ms_verified") or m["latency_p50_ms"]]
            figures += [m["latency_p95_ms"], m["latency_p50_ms"]] if wide_knobs else []
            tail = self._tail("1x", m["size_mb"], m.get("throughput_per_s"), rate, narrow)
            extra = [""] if wide_knobs else []
            t.add_row("", "", *self._numbers(figures), *tail, "fp32 teacher", *extra, style="dim")
        names = distinguishing(self.rows) if self.show_knobs else []
        for c in self.rows:
            below = self.accuracy_threshold is not None and c.accuracy < self.accuracy_threshold
            figures = [c.accuracy, c.accuracy_drop, c.latency]
            figures += [c.latency_p95_ms, c.latency_p50_ms] if wide_knobs else []
            cells = self._numbers(figures)
            if below:
                cells[0] += ("\n" if narrow else " ") + "below"
            speed = speed_cell(c).replace(" [", "\n[" if narrow else " [")
            # `name = value`: a knob too long for its column wraps before its value, not inside its name.
            knob_lines = "\n".join(knobs(c, [k]).replace("=", " = ", 1) for k in names if k in dict(c.params_dict))
            plan = f"{c.plan}\n{knob_lines}" if self.show_knobs and not wide_knobs and knob_lines else c.plan
            t.add_row(
                "*" if c.trial == self.pick else "=" if c.trial in self.tied else "",
                str(c.trial),
                *cells,
                *self._tail(speed, c.size_mb, c.throughput_per_s, rate, narrow),
                plan,
                *([knob_lines] if wide_knobs else []),
                style="bold green" if c.trial == self.pick else None,
            )
        return t

    @staticmethod
    def _numbers(figures: list[float]) -> list[str]:
        """Accuracy and drop with 2 decimals, latencies with 4."""
        return [f"{v:.2f}" if i < 2 else f"{v:.4f}" for i, v in enumerate(figures)]

    @staticmethod
    def _tail(speed: str, size_mb: float, items_per_s: float | None, rate: bool, narrow: bool) -> list[str]:
        """The speed-up, size and rate cells (narrow: the rate under the size)."""
        size = f"{size_mb:.3f}"
        if not rate:
            return [speed, size]
        if narrow:
            return [speed, f"{size}\n{_rate(items_per_s)}" if items_per_s is not None else size]
        return [speed, size, _rate(items_per_s)]


def _rate(items_per_s: float | None) -> str:
    """Items per second, whole, with thousands separators ('' when not measured)."""
    return "" if items_per_s is None else f"{items_per_s:,.0f}"
