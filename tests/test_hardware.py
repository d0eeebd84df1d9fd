"""Hardware in the loop: targets checked at start, the bench station's cache, latency first, `bench`, a remote agent."""

from __future__ import annotations

import json
import socket
import subprocess

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import BIN, run_cli, small_experiment, wait_for
from search.cli import main
from search.config import load
from search.study import finished
from spaces.export import to_onnx
from spaces.students import CNN

BUDGET_MS = 0.05


def _trial_runs(exp):
    client = MlflowClient(exp.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name)
    return client, experiment, client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'trial'")


def test_latency_first_skips_training_of_slow_structures_and_reuses_their_timing(tmp_path):
    # The teacher itself (~0.1 ms here) is over a 0.05 ms budget before any training; a width-0.25 student is not.
    space = {"students": {"teacher": True, "cnn": {"width": [0.25], "depth": [1], "epochs": 2}},
             "pruning": {"ratio": [0.0]}, "quantization": {"schemes": ["fp32"]}}
    path = small_experiment(tmp_path, name="first", space=space,
                            constraints={"max_accuracy_drop": 50.0, "max_latency_ms": BUDGET_MS},
                            pick={"max_accuracy_drop": 50.0})
    assert main(["run", str(path), "--trials", "5", "--quiet"]) == 0
    exp = load(path)
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    done = finished(study)
    skipped = [t for t in done if t.user_attrs["info"]["skipped_training"]]
    trained = [t for t in done if not t.user_attrs["info"]["skipped_training"]]
    assert skipped and trained, "the seeded sampler draws both students"
    for t in skipped:
        assert t.user_attrs["metrics"]["latency_p50_ms"] > BUDGET_MS
        assert "distill" not in t.user_attrs["stages"]  # stopped before training
        assert t.params["student"] == "teacher"
    for t in trained:
        # The trained model has the probe's structure: its latency is the cached probe timing, not a second one.
        assert t.user_attrs["info"]["latency_cache"] == "hit"
        assert t.user_attrs["metrics"]["latency_p50_ms"] <= BUDGET_MS
    assert {t.number for t in study.best_trials} <= {t.number for t in trained}  # skipped ones are infeasible
    # The station kept a core of its own, and no trial trained on it.
    station = study.user_attrs["station"]
    assert len(station["cores"]) == exp.target.threads
    for t in done:
        if t.user_attrs["info"]["ray_node"] == station["node"]:
            assert not set(t.user_attrs["info"]["cores"]) & set(station["cores"])

    client, experiment, runs = _trial_runs(exp)
    tags = {int(r.data.tags["optuna.trial_number"]): r.data.tags for r in runs}
    assert all(tags[t.number]["slimsweep.skipped_training"] == "true" for t in skipped)
    assert all(tags[t.number]["slimsweep.latency_cache"] == "hit" for t in trained)
    parent = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'sweep'")[0]
    assert parent.data.metrics["trials_skipped_training"] == len(skipped)
    assert parent.data.metrics["training_seconds_saved_estimate"] > 0
    assert parent.data.metrics["latency_cache_hits"] >= len(trained)


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def agent(tmp_path):
    """A real device agent, started by its own command, on loopback."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-32-bytes-or-more\n")
    token_file.chmod(0o600)  # the agent refuses a token file others can read
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "slimsweep"), "agent", "--host", "127.0.0.1", "--port", str(port),
                             "--token-file", str(token_file)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

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


def test_a_sweep_whose_target_is_a_device_agent(agent, tmp_path, model_file, capsys):
    url, token_file = agent
    assert main(["bench", str(model_file), "--target", "remote", "--url", url, "--token-file", str(token_file),
                 "--max-seconds", "0.5"]) == 0
    assert "latency_p50_ms" in capsys.readouterr().out

    path = small_experiment(tmp_path, name="remote",
                            target={"kind": "remote", "url": url, "token_file": str(token_file)})
    result = run_cli("run", str(path), "--trials", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = load(path)
    assert len(finished(optuna.load_study(study_name=exp.name, storage=exp.storage_url))) == 2
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
