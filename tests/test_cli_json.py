"""The CLI as a script sees it: --version, --json parsed, status, --dry-run writing nothing, --fresh, and outputs
found beside the experiment file from any folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import optuna
import pytest
from conftest import run_cli, small_experiment
from ux_sweep import finished_sweep

from search.study import dominated


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    return finished_sweep(tmp_path_factory)


def _tree(folder: Path) -> dict[str, str]:
    """Every file under a folder with the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_version(tmp_path):
    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("slimsweep ")


def test_front_json_from_another_folder_finds_the_sweep_beside_the_file(swept, tmp_path):
    proc = run_cli("front", str(swept.path), "--json", cwd=tmp_path)  # not the folder the sweep ran in
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    card = json.loads((swept.exp.out / "model_card.json").read_text())
    assert data["pick"] == card["trial"] and data["pick"] in {row["trial"] for row in data["front"]}
    assert data["accuracy_threshold"] == pytest.approx(data["teacher"]["accuracy"] - 5.0)
    assert all("quantization.scheme" in row["knobs"] and "accuracy" in row for row in data["front"])
    assert "Creating initial MLflow database tables" not in swept.stdout  # library noise stays off
    assert not (tmp_path / "outputs").exists()


def test_front_table_marks_the_pick_and_the_threshold(swept):
    proc = run_cli("front", "experiments/digits.yaml", cwd=swept.folder)
    assert proc.returncode == 0, proc.stderr
    card = json.loads((swept.exp.out / "model_card.json").read_text())
    assert f"* = the pick (trial {card['trial']})" in proc.stdout and "accuracy threshold" in proc.stdout
    rows = (swept.exp.out / "pareto.csv").read_text().splitlines()
    header = rows[0].split(",")
    picked = [r.split(",") for r in rows[1:] if r.split(",")[header.index("picked")] == "true"]
    assert [int(r[0]) for r in picked] == [card["trial"]]


def test_status_json_counts_the_sweep(swept, tmp_path):
    proc = run_cli("status", str(swept.path), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert (state["budget"], state["done"], state["running"]) == (4, 4, 0)
    assert state["failed"] == 0 and state["finished_budget"] is True
    card = json.loads((swept.exp.out / "model_card.json").read_text())
    assert state["pick"]["trial"] == card["trial"] and state["front"]
    study = optuna.load_study(study_name=swept.exp.name, storage=swept.exp.storage_url)
    assert state["dominated"] == len(dominated(study))  # plans the gate stopped, which cost no trial


def test_pick_json_prints_only_the_card_on_stdout(swept):
    proc = run_cli("pick", str(swept.path), "--json", cwd=swept.folder)
    assert proc.returncode == 0, proc.stderr
    card = json.loads(proc.stdout)
    assert card == json.loads((swept.exp.out / "model_card.json").read_text())
    assert "Successfully registered" not in proc.stderr  # MLflow's own lines stay off without --verbose


def test_dry_run_writes_nothing_and_says_the_space_size(tmp_path, swept):
    path = small_experiment(tmp_path, name="dry")
    before = _tree(tmp_path)
    proc = run_cli("run", str(path), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "12 distinct plans" in proc.stdout and "dry run: nothing was started or written" in proc.stdout
    assert _tree(tmp_path) == before
    # On a finished sweep too: its folder is unchanged byte for byte.
    before = _tree(swept.folder)
    assert run_cli("run", str(swept.path), "--dry-run", cwd=swept.folder).returncode == 0
    assert _tree(swept.folder) == before


def test_fresh_deletes_the_study_runs_and_outputs_of_that_experiment_only(swept, tmp_path, capsys):
    import shutil

    from search.cli import _outputs_beside_file, main
    from search.config import load
    from search.fresh import start_over

    shutil.copytree(swept.folder / "experiments", tmp_path / "experiments")
    path = tmp_path / "experiments" / "digits.yaml"
    exp = _outputs_beside_file(load(path), type("Args", (), {"experiment": str(path), "output_dir": None})())
    # `slimsweep status` through the CLI's main() in this process (what it prints is test_status_json's to check):
    # a fresh process for each would only import the libraries again.
    assert main(["status", str(path)]) == 0  # the copy is a sweep of its own
    said = start_over(exp)
    assert said.startswith("--fresh: deleted the study") and not exp.out.exists()
    capsys.readouterr()
    assert main(["status", str(path)]) == 1  # a `run` now starts from nothing
    assert "no sweep found" in capsys.readouterr().err
    assert (swept.exp.out / "study.db").is_file()  # the original sweep is untouched


def test_the_study_names_its_metrics_and_keeps_the_constraints_record_optuna_dashboard_reads(swept):
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=swept.exp.name, storage=swept.exp.storage_url)
    assert study.metric_names == list(swept.exp.objectives)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    for t in complete:
        listed = t.system_attrs["constraints"]  # the older record, read by optuna-dashboard
        named = [v for k, v in t.system_attrs.items() if k.startswith("constraints:")]  # set_constraint's record
        assert sorted(listed) == sorted(named) and listed
    # The dashboard's front and ours agree: only feasible trials are on it.
    assert all(max(t.system_attrs["constraints"]) <= 0 for t in study.best_trials)
