"""MLflow's own UI in a real headless browser (Debian's Chromium, loopback only) on a finished sweep: the experiment
opens on its runs, and the picked trial's run shows its metrics and the pick's tag."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from conftest import free_port, start_mlflow_server, stop_group
from mlflow.tracking import MlflowClient
from ux_sweep import finished_sweep

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no Chromium here: `apt-get install -y chromium chromium-driver` (Debian) to run the browser check",
)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """`mlflow server` on the finished sweep's store, on a free loopback port."""
    swept = finished_sweep(tmp_path_factory)
    port = free_port()
    server = start_mlflow_server(swept.exp.tracking_uri, port)
    try:
        yield swept, f"http://127.0.0.1:{port}"
    finally:
        stop_group(server)


def page_text(url: str, folder) -> str:
    """The page's visible text after its scripts ran (Chromium headless, a virtual-time budget for the app)."""
    proc = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={folder}",
            "--virtual-time-budget=30000",
            "--window-size=2400,1200",  # the grid renders only the columns in view: a wide screen shows them all
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    html = re.sub(r"<script.*?</script>|<style.*?</style>", " ", proc.stdout, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_the_experiment_opens_on_its_runs_and_the_pick_shows_metrics_and_tag(ui, tmp_path):
    swept, base = ui
    exp = swept.exp
    client = MlflowClient(exp.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # The link the run prints at its end.
    link = re.search(r"^(http://127\.0\.0\.1:5000/#\S+)$", swept.stdout, re.M).group(1)
    path = link.split("/#", 1)[1]
    runs = page_text(f"{base}/#{path}", tmp_path / "a")
    assert f"{exp.name}-sweep" in runs and "matching runs" in runs, runs[:2000]
    assert "Token Usage" not in runs  # not MLflow 3's GenAI overview
    card = json.loads((exp.out / "model_card.json").read_text())
    # The saved view: the trials in one flat list (the pick's row without expanding the parent), with the
    # objectives as columns; its charts open on a section of accuracy against latency.
    assert "slimsweep: the front" in runs and f"trial-{card['trial']}" in runs, runs[:2000]
    assert "latency_p50_ms" in runs and "size_mb" in runs, runs[:2000]
    charts = page_text(f"{base}/#{path}&compareRunsMode=CHART", tmp_path / "c")
    assert "The front" in charts, charts[:2000]
    view = json.loads(json.loads(experiment.tags["mlflow.sharedViewState.slimsweep-front"])["state"])
    (knobs,) = [chart["selectedParams"] for chart in view["compareRunCharts"] if chart["type"] == "PARALLEL"]
    trials = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'trial'")
    assert knobs and all(set(knobs) <= set(t.data.params) for t in trials)  # no "unknown" axis
    version = client.get_model_version_by_alias(exp.name, "deployable")
    run = page_text(f"{base}/#/experiments/{experiment.experiment_id}/runs/{version.run_id}", tmp_path / "b")
    assert f"trial-{card['trial']}" in run, run[:2000]
    for shown in (
        "accuracy",
        "latency_p50_ms",
        "size_mb",
        "slimsweep.pick : true",
        "Parent run",
        f"{exp.name}-sweep",
        f"Registered models {exp.name} v{version.version}",
    ):
        assert shown in run, (shown, run[:3000])
