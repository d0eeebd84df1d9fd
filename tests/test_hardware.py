"""Hardware in the loop: targets checked at start, the bench station's cache, latency first, `bench`, a remote agent."""

from __future__ import annotations

import json
import socket
import subprocess

import optuna
import pytest
import torch
from conftest import BIN, free_port, small_experiment, wait_for
from mlflow.tracking import MlflowClient

from search.cli import main
from search.config import load
from search.study import baseline, finished, read, spent
from spaces.export import to_onnx
from spaces.students import CNN

# Budgets no measured latency can fall on the wrong side of, on any machine: far below a microsecond-scale model
# (every structure is over it untrained) and far above one (every structure is within it).
FAR_BELOW_MS, FAR_ABOVE_MS = 1e-6, 1e4
SPACE = {
    "students": {"teacher": True, "cnn": {"width": [0.25], "depth": [1], "epochs": 2}},
    "pruning": {"ratio": [0.0]},
    "quantization": {"schemes": ["fp32"]},
}


def _trial_runs(exp):
    client = MlflowClient(exp.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name)
    return client, experiment, client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'trial'")


def _latency_first(tmp_path, name: str, budget_ms: float, capsys) -> tuple[int, object, optuna.Study]:
    path = small_experiment(
        tmp_path,
        name=name,
        space=SPACE,
        constraints={"max_accuracy_drop": 50.0, "max_latency_ms": budget_ms},
        pick={"max_accuracy_drop": 50.0, "verify_seconds": 1.0},  # the pick is not looked at: verification's floor
    )
    code = main(["run", str(path), "--trials", "3", "--quiet"])
    exp = load(path)
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    return code, exp, study


def test_latency_first_skips_training_of_structures_over_the_budget(tmp_path, capsys):
    code, exp, study = _latency_first(tmp_path, "first-below", FAR_BELOW_MS, capsys)
    done = finished(study)
    assert len(done) == 3
    for t in done:
        rec = read(t)
        assert rec.skipped_training and not rec.feasible
        assert rec.metrics["latency_p50_ms"] > FAR_BELOW_MS
        if rec.reuse_of is None:  # it ran: probed untrained, then stopped before training
            assert "latency_first" in rec.stages and "distill" not in rec.stages
    # Nothing is feasible, so there is nothing to pick: said plainly, after the sweep kept every trial.
    assert code == 1 and "the front is empty" in capsys.readouterr().err
    client, experiment, runs = _trial_runs(exp)
    assert all(r.data.tags["slimsweep.skipped_training"] == "true" for r in runs)
    parent = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'sweep'")[0]
    assert parent.data.metrics["trials_skipped_training"] == sum(read(t).reuse_of is None for t in done)


def test_latency_first_trains_structures_within_the_budget_and_reuses_their_probe_timing(tmp_path, capsys):
    code, exp, study = _latency_first(tmp_path, "first-above", FAR_ABOVE_MS, capsys)
    assert code == 0
    done = finished(study)
    ran = [t for t in done if read(t).reuse_of is None]
    assert len(done) == 3 and ran
    for t in ran:
        rec = read(t)
        assert not rec.skipped_training and "latency_first" in rec.stages
        assert "distill" in rec.stages
        # The trained model has the probe's structure: its latency is the cached probe timing, not a second one.
        assert rec.info["latency_cache"] == "hit"
    # The front is the feasible trials no other feasible trial dominates, computed here a second way.
    feasible = [t for t in done if t.state.name == "COMPLETE" and read(t).feasible]
    signs = [1 if d.name == "MINIMIZE" else -1 for d in study.directions]

    def dominates(a, b):
        pa, pb = [s * v for s, v in zip(signs, a.values)], [s * v for s, v in zip(signs, b.values)]
        return all(x <= y for x, y in zip(pa, pb)) and pa != pb

    expected = {t.number for t in feasible if not any(dominates(o, t) for o in feasible)}
    assert expected and {t.number for t in study.best_trials} == expected
    # The station kept a core of its own, and no trial trained on it.
    station = baseline(study).station
    assert len(station["cores"]) == exp.target.threads
    for t in ran:
        if read(t).info["ray_node"] == station["node"]:
            assert not set(read(t).info["cores"]) & set(station["cores"])
    client, experiment, runs = _trial_runs(exp)
    tags = {int(r.data.tags["optuna.trial_number"]): r.data.tags for r in runs}
    assert all(tags[t.number]["slimsweep.latency_cache"] == "hit" for t in ran)
    parent = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'sweep'")[0]
    assert parent.data.metrics["trials_skipped_training"] == 0
    assert parent.data.metrics["latency_cache_hits"] >= len(ran)


def test_a_target_that_is_not_here_fails_at_start_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = small_experiment(tmp_path, name="gpu", target={"kind": "cuda"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "CUDAExecutionProvider" in err and "cpu" in err
    assert not (tmp_path / "outputs").exists()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "cnn.onnx"
    path.write_bytes(to_onnx(CNN(1, 10, width=0.5, depth=1).eval(), torch.zeros(1, 1, 8, 8)))
    return path


def test_bench_prints_the_statistics_of_one_model(model_file, capsys):
    assert main(["bench", str(model_file), "--target", "cpu", "--max-seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    for key in ("latency_p50_ms", "latency_p99_ms", "latency_cv", "throughput", "repeats", "stable"):
        assert key in out
    assert main(["bench", str(model_file), "--target", "tensorrt"]) == 2
    assert "TensorrtExecutionProvider" in capsys.readouterr().err


@pytest.fixture
def agent(tmp_path):
    """A real device agent, started by its own command, on loopback."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-32-bytes-or-more\n")
    token_file.chmod(0o600)  # the agent refuses a token file others can read
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "slimsweep"), "agent", "--host", "127.0.0.1", "--port", str(port), "--token-file", str(token_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return proc.poll() is not None

    try:
        wait_for(up, timeout=120)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        yield f"http://127.0.0.1:{port}", token_file
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_sweep_whose_target_is_a_device_agent(agent, tmp_path, model_file, capsys, monkeypatch):
    url, token_file = agent
    assert (
        main(
            [
                "bench",
                str(model_file),
                "--target",
                "remote",
                "--url",
                url,
                "--token-file",
                str(token_file),
                "--max-seconds",
                "0.5",
            ]
        )
        == 0
    )
    assert "latency_p50_ms" in capsys.readouterr().out

    # In this process, as the module's other sweeps: what is tested is the sweep's talk with the agent, not the console
    # script, and a CLI process of its own cost ~7 s more (its imports, a Ray of its own started and stopped).
    monkeypatch.chdir(tmp_path)
    path = small_experiment(
        tmp_path,
        name="remote",
        target={"kind": "remote", "url": url, "token_file": str(token_file)},
        pick={"max_accuracy_drop": 5.0, "verify_seconds": 1.0},  # the pick is not looked at: verification's floor
    )
    assert main(["run", str(path), "--trials", "2", "--quiet"]) == 0, capsys.readouterr().err[-3000:]
    exp = load(path)
    assert len(spent(optuna.load_study(study_name=exp.name, storage=exp.storage_url))) == 2
    client, experiment, _ = _trial_runs(exp)
    parent = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'sweep'")[0]
    target = json.loads(parent.data.tags["slimsweep.target"])
    assert target["kind"] == "remote" and target["url"] == url and target["device"]["hostname"]
    card = json.loads((exp.out / "model_card.json").read_text())
    assert card["measured"]["latency_p50_ms_verified"] > 0


def test_a_wrong_agent_token_fails_at_start(agent, tmp_path, capsys, monkeypatch):
    url, _ = agent
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    monkeypatch.chdir(tmp_path)
    path = small_experiment(tmp_path, name="denied", target={"kind": "remote", "url": url, "token_file": str(wrong)})
    assert main(["run", str(path)]) == 2
    assert "refused the token" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()
