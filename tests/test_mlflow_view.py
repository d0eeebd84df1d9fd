"""MLflow is a view of the study: `pick` into a tracking store that lacks the sweep rebuilds it and registers the pick,
and `sync` against an MLflow that answers errors says so plainly and keeps the study marked for a later sync."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import small_experiment
from mlflow.tracking import MlflowClient
from onnx import TensorProto, helper, numpy_helper

from search.cli import main
from search.config import load
from search.study import Baseline, TrialRecord, needs_sync, open_study, record, set_baseline, set_needs_sync
from search.sweep import trial_path

TEACHER = {"accuracy": 97.0, "latency_p50_ms": 0.5, "latency_p95_ms": 0.6, "size_mb": 0.5, "params": 1e5}


def _model(path: Path, seed: int) -> None:
    """A real classifier of 8x8 digits as ONNX (flatten, one dense layer): what a trial leaves in trials/."""
    weights = np.random.default_rng(seed).normal(size=(64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "student",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _swept(tmp_path: Path, tracking: str | None = None) -> Path:
    """A finished sweep as the study holds it (two trained trials, their ONNX files), and no MLflow store at all."""
    path = small_experiment(tmp_path, name="view", tracking={"uri": tracking})
    exp = load(path)
    study = open_study(exp)
    set_baseline(study, Baseline(teacher=TEACHER, input_shape=[1, 8, 8], station={"node": "here", "cores": [0]}))
    for number, (accuracy, latency) in enumerate([(96.5, 0.05), (92.0, 0.01)]):
        trial = study.ask()
        _model(trial_path(exp, trial.number), seed=number)
        metrics = {
            "accuracy": accuracy,
            "accuracy_drop": TEACHER["accuracy"] - accuracy,
            "latency_p50_ms": latency,
            "latency_p95_ms": latency * 1.2,
            "size_mb": 0.01,
            "params": 640.0,
        }
        plan = {"width": 0.25 * (number + 1)}
        rec = TrialRecord(plan=plan, describe=f"dense {number}", metrics=metrics, feasible=True)
        record(study, trial, rec, values=[accuracy, latency, 0.01], constraints={"accuracy_drop": -1.0})
    return path


def test_pick_into_a_tracking_store_that_lacks_the_sweep_rebuilds_it_and_registers(tmp_path, capsys):
    path = _swept(tmp_path)
    fresh = f"sqlite:///{tmp_path / 'new-server' / 'mlflow.db'}"
    (tmp_path / "new-server").mkdir()
    assert main(["pick", str(path), "--tracking-uri", fresh]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "MLflow lacked this sweep: 2 trial runs written from the study" in out, out
    client = MlflowClient(fresh)
    version = client.get_model_version_by_alias("view", "deployable")
    run = client.get_run(version.run_id)
    assert run.data.tags["optuna.trial_number"] == version.tags["slimsweep.trial"]  # registered from its trial run
    runs = client.search_runs([client.get_experiment_by_name("view").experiment_id])
    assert sorted(r.data.tags.get("slimsweep.role") for r in runs) == ["sweep", "trial", "trial"]
    assert main(["pick", str(path), "--tracking-uri", fresh]) == 0  # a second pick finds it whole: nothing again
    assert "MLflow lacked" not in capsys.readouterr().out
    assert len(client.search_runs([client.get_experiment_by_name("view").experiment_id])) == 3


class _Failing(http.server.BaseHTTPRequestHandler):
    """An MLflow server that answers 500 to everything (or to all but its health check)."""

    healthy = False

    def _answer(self) -> None:
        ok = self.healthy and self.path.startswith("/health")
        self.send_response(200 if ok else 500)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"OK" if ok else b"Internal Server Error")

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("healthy", [False, True], ids=["all-500", "health-ok-api-500"])
def test_sync_against_an_mlflow_answering_500_is_a_clear_error(tmp_path, capsys, healthy):
    handler = type("Handler", (_Failing,), {"healthy": healthy})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        path = _swept(tmp_path, tracking=url)
        exp = load(path)
        set_needs_sync(open_study(exp), True)
        assert main(["sync", str(path)]) == 1
        err = capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()
    assert f"tracking.uri: MLflow at {url}" in err and "run `slimsweep sync` again" in err, err
    assert ("HTTP 500" in err) if not healthy else ("refused the sync" in err), err
    assert "Traceback" not in err
    assert needs_sync(open_study(exp))  # still owed: the next sync writes it
