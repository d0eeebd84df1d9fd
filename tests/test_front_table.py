"""The terminal front as a user reads it at 80 to 160 columns: one compact row per member, nothing cut to `prun…`,
the knobs on request."""

from __future__ import annotations

import pytest
from rich.console import Console

from search.pareto import Candidate, table

pytestmark = pytest.mark.fast

PLANS = (
    "cnn w0.25 d1 | no prune | fp32",
    "cnn w0.5 d2 | prune 0.25 | int8_static_qdq",
    "teacher | prune 0.5 | int8_dynamic",
    "mobilenetv2 w0.75 compact | structured l1 0.25 | int8_static_qoperator",
)
KNOBS = ("cnn.temperature", "pruning.ratio", "quantization.scheme")
TEACHER = {"accuracy": 99.5, "latency_p50_ms": 0.05, "latency_p95_ms": 0.06, "size_mb": 0.6}


def member(i: int, *, rate: bool = True) -> Candidate:
    """The i-th of a front of twelve, verified side by side, each with its own knobs."""
    return Candidate(
        trial=3 * i + 1,
        plan=PLANS[i % 4],
        accuracy=99.0 - 0.3 * i,
        accuracy_drop=0.3 * i + 0.5,
        latency_p50_ms=0.01 * (i + 1),
        latency_p95_ms=0.012 * (i + 1),
        size_mb=0.05 * (i + 1),
        params=1000.0,
        latency_p50_ms_verified=0.011 * (i + 1),
        params_dict=(
            ("cnn.temperature", 2.0 + 0.37 * i),
            ("pruning.ratio", (0.0, 0.25, 0.5)[i % 3]),
            ("quantization.scheme", ("fp32", "int8_static_qdq")[i % 2]),
            ("student", "cnn"),
        ),
        speedup=4.5 - 0.3 * i,
        speedup_ci_low=4.3 - 0.3 * i,
        speedup_ci_high=4.7 - 0.3 * i,
        throughput_per_s=10000.0 / (i + 1) if rate else None,
    )


def shown(width: int, *, knobs: bool = False, rate: bool = True) -> str:
    """The front of twelve as the terminal shows it at `width` columns."""
    rows = [member(i, rate=rate) for i in range(12)]
    console = Console(width=width, record=True)
    console.print(
        table(rows, TEACHER, "Pareto front of digits", pick=4, accuracy_threshold=98.5, tied=[1, 7], show_knobs=knobs)
    )
    return console.export_text()


@pytest.mark.parametrize("width", [80, 100, 120, 160])
@pytest.mark.parametrize("knobs", [False, True])
def test_nothing_is_cut_and_no_line_is_wider_than_the_terminal(width, knobs):
    text = shown(width, knobs=knobs)
    assert "…" not in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    words = {w for line in text.splitlines() for w in line.split()}
    for plan in PLANS:  # every word of every plan, whole
        assert set(plan.split()) <= words, plan
    assert ("4.50x" in words and "[4.30," in words and "4.70]" in words) or "4.50x [4.30, 4.70]" in text
    assert all(str(3 * i + 1) in words for i in range(12))


@pytest.mark.parametrize("width", [80, 120])
def test_twelve_members_take_a_compact_table_with_the_knobs_on_request(width):
    compact, with_knobs = shown(width), shown(width, knobs=True)
    assert len(compact.splitlines()) <= 12 * 4 + 15  # a member is one to four lines; the knobs were one line each
    assert not any(name in compact for name in KNOBS)  # not by default: only the hint how to see them
    assert "slimsweep front EXPERIMENT.yaml --knobs" in " ".join(compact.split())  # how to see them
    for name in KNOBS:  # on request each knob of each member, its name whole
        assert sum(line.split()[:1] == [name] or f" {name} =" in line for line in with_knobs.splitlines()) >= 12
    assert "student" not in with_knobs.split()  # a knob every member shares tells nothing apart


def test_the_figures_a_user_compares_are_in_each_row():
    text = shown(160)
    row = next(line for line in text.splitlines() if line.lstrip().startswith("* ") or " 4 " in line[:12])
    assert "98.70" in row and "0.0220" in row and "4.20x [4.00, 4.40]" in row and "0.100" in row and "5,000" in row
    assert "* = the pick (trial 4)" in text and "= tied with the pick on speed" in text
    assert "items/s" in text and "items/s" not in shown(160, rate=False)  # a front from before throughput was kept
