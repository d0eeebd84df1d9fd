"""The report's scales (benchmarks/scales.py): one place states what each report runs, the sections read it, and
the document says it, with the minutes each section was estimated to take beside the minutes it took."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from benchmarks import equalcompute, realdata, report, scales

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parent.parent


def test_every_section_has_an_estimate_and_the_estimates_fit_the_issues_limits():
    modules = {s.module for s in report.SECTIONS}
    for s in (scales.QUICK, scales.FULL):
        assert set(s.minutes) == modules
    # Issue 20: bench-quick within 15 minutes, the full report within 2 hours, on 2 cores (with a margin).
    assert sum(scales.QUICK.minutes.values()) <= 0.9 * 15
    assert sum(scales.FULL.minutes.values()) <= 0.9 * 120


def test_the_full_report_keeps_what_the_goals_need():
    full = scales.FULL.mnist
    assert len(full.seeds) >= 3 and full.bars == (0.1, 0.25, 0.5, 1.0)
    assert set(full.searches_in("latency")) == set(realdata.SEARCHES) and "throughput" in full.deployments
    assert set(full.searches_in("throughput")) >= {"joint", *realdata.SINGLE_KNOB}  # every single knob, at batch 64
    assert scales.FULL.nasbench201.seeds == 10 and scales.FULL.nasbench201.samplers is None
    assert realdata.FULL is full and realdata.QUICK is scales.QUICK.mnist  # the sections read the one place


def test_a_search_the_scale_leaves_out_has_no_row_in_the_bar_tables():
    quick = scales.QUICK.mnist
    assert "random" not in quick.searches
    text = "\n".join(equalcompute.bar_lines([], {}, quick, "latency"))
    assert "\n| joint |" in text and "\n| chained |" in text  # a row each in the bar's table
    assert "| random |" not in text and "random -" not in text


def test_the_document_states_the_scales_and_each_sections_estimate_beside_its_minutes():
    outcomes = [report.Outcome("The quickstart", "## The quickstart\n", 90.0, "quickstart")]
    outcomes.append(report.Outcome("Elsewhere", "## Elsewhere\n", 60.0, "not_in_scales"))
    text = report.document(outcomes, True, 150.0, "make bench-quick", datetime(2026, 12, 7, tzinfo=timezone.utc))
    assert "## Scales" in text and scales.QUICK.mnist.describe() in text
    assert "random left out at this scale" in text
    est = scales.QUICK.minutes["quickstart"]
    assert f"| The quickstart | 1.5 | {est:.1f} |" in text
    assert "| Elsewhere | 1.0 | - |" in text
    assert f"| **whole report** | **2.5** | **{sum(scales.QUICK.minutes.values()):.0f}** |" in text


def test_the_report_replays_the_tabular_benchmark_into_its_own_folder_not_docs(tmp_path):
    from benchmarks import tabular

    # The report keeps the tabular runs in its own folder (here kept beforehand, every quick sampler's seeds, so
    # nothing is replayed) and reads nothing from the plot folder, where a kept runs file would hold another day's
    # code's replays.
    quick = scales.QUICK.tabular
    digest = hashlib.sha256(tabular.TABLE.read_bytes()).hexdigest()[:16] + "-loop"
    curve = [min(1.0, 0.5 + i / 100) for i in range(tabular.SWEEP_TRIALS)]
    kept = [
        {"table": digest, "name": n, "seed": seed, "curve": curve, "asks": list(range(1, len(curve) + 1))}
        for n in quick.samplers
        for seed in range(quick.seeds)
    ]
    work, png = tmp_path / "work", tmp_path / "png"
    work.mkdir()
    (work / "tabular-runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    call = next(s.call for s in report.SECTIONS if s.module == "tabular")
    text = call(png, True, work, {})
    assert not (png / "tabular-runs.jsonl").exists() and (png / "tabular-hypervolume.png").is_file()
    assert len((work / "tabular-runs.jsonl").read_text().splitlines()) == len(kept)  # none replayed
    assert f"({quick.seeds} seeds per sampler" in text and "are reused, not replayed" not in text
