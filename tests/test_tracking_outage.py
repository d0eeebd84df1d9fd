"""MLflow is a view of the study: a server down at start is a clear error before anything is written; one that
goes down mid-sweep does not stop the sweep, and `slimsweep sync` back-fills it, twice without doubling."""

from __future__ import annotations

import optuna
from conftest import free_port, run_cli, running_cli, small_experiment, start_mlflow_server, stop_group
from mlflow.tracking import MlflowClient

from search.cli import main
from search.config import load
from search.study import finished, needs_sync, spent


def test_a_server_down_at_start_is_a_clear_error_before_anything_is_written(tmp_path):
    path = small_experiment(tmp_path, name="nosrv")
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_cli("run", str(path), "--tracking-uri", uri, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "tracking.uri" in result.stderr and "not reachable" in result.stderr and "--no-tracking" in result.stderr
    assert not (load(path).out / "study.db").exists()


def test_an_outage_mid_sweep_is_survived_and_sync_backfills_mlflow_once(tmp_path, capsys):
    port = free_port()
    db, artifacts = tmp_path / "server.db", tmp_path / "server-artifacts"
    uri = f"http://127.0.0.1:{port}"
    path = small_experiment(
        tmp_path,
        name="outage",
        tracking={"uri": uri},
        search={"sampler": "random", "trials": 3, "parallel": 1, "seed": 0},  # one before the outage, two in it
    )
    exp = load(path)
    server = start_mlflow_server(f"sqlite:///{db}", port, artifacts)
    lines: list[str] = []
    with running_cli("run", str(path), cwd=tmp_path) as proc:
        try:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("trial "):  # the first trial is in MLflow; now the server goes away
                    break
            stop_group(server)
            output, _ = proc.communicate(timeout=600)
        finally:
            stop_group(server)
    output = "".join(lines) + output
    assert proc.returncode == 0, output[-3000:]
    assert "became unreachable" in output and f"slimsweep sync {path}" in output, output[-3000:]
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    done = sorted(t.number for t in finished(study))
    assert len(spent(study)) == 3 and needs_sync(study)
    assert (exp.out / "deployable.onnx").is_file()

    server = start_mlflow_server(f"sqlite:///{db}", port, artifacts)
    try:
        # `slimsweep sync` twice, as the sweep's message says, through the CLI's main() in this process: a fresh
        # process for each would import the libraries again, seconds of CPU that show nothing the run above did not.
        first = main(["sync", str(path)]), capsys.readouterr()
        second = main(["sync", str(path)]), capsys.readouterr()
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(exp.name)
        parents = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'sweep'")
        runs = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'trial'")
        version = client.get_model_version_by_alias(exp.name, "deployable").version
        versions = client.search_model_versions(f"name = '{exp.name}'")
    finally:
        stop_group(server)
    assert first[0] == 0, first[1].err[-3000:]
    assert second[0] == 0, second[1].err[-3000:]
    assert f"0 trial runs logged, {len(done)} already in MLflow" in second[1].out, second[1].out
    assert len(parents) == 1
    numbers = [int(r.data.tags["optuna.trial_number"]) for r in runs]
    assert sorted(numbers) == done  # every finished trial once, none twice
    assert sum(r.data.tags.get("pareto") == "true" for r in runs) >= 1  # the front is tagged
    assert version and len(versions) == 1  # the pick registered once
    assert not needs_sync(optuna.load_study(study_name=exp.name, storage=exp.storage_url))
