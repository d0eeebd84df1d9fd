"""`slimsweep retarget`: a finished sweep re-timed on another target (here a real device agent on loopback) with its
accuracy scored from the agent's outputs; the target gets its own front, pick, alias and folder, and nothing is
trained."""

from __future__ import annotations

import io
import json
import socket
import threading
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import uvicorn
from conftest import small_experiment, wait_for
from mlflow.tracking import MlflowClient
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from evaluators.accuracy import accuracy
from evaluators.agent import AgentConfig, create_app
from evaluators.compare import CompareSettings, Comparison
from evaluators.targets import make_target
from experiments.tasks import load_task
from search.cli import main
from search.config import Target, load
from search.retarget import alias, retarget, stored
from search.retarget_report import rows, table
from search.station import compare_on
from search.study import Baseline, TrialRecord, open_study, record, set_baseline
from search.tracking import Tracker

TOKEN = "retarget-token-of-32-bytes-or-more"


def _dense(weights: np.ndarray) -> bytes:
    """A real classifier of 8x8 digits as ONNX (flatten, one dense layer)."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "student",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _teacher_weights(exp) -> np.ndarray:
    """Least squares on one-hot labels: a teacher far better than chance, made in milliseconds."""
    data = load_task(exp.task).data
    x = data.x_train.reshape(len(data.x_train), -1)
    return np.linalg.lstsq(x, np.eye(10)[data.y_train], rcond=None)[0]


def _finish(exp, teacher: bytes, models: list[tuple[bytes, float]]) -> dict[int, float]:
    """Write a finished sweep as the study holds it: the teacher's ONNX file and figures, and one trained trial per
    (ONNX model, size in MB) with its file and host accuracy; returns the accuracy per trial."""
    data = load_task(exp.task).data
    exp.out.mkdir(parents=True, exist_ok=True)
    (exp.out / "teacher.onnx").write_bytes(teacher)
    teacher_acc = accuracy(teacher, data.x_val, data.y_val)
    figures = {"latency_p50_ms": 0.5, "latency_p95_ms": 0.6, "size_mb": 0.01, "params": 640.0}
    study = open_study(exp)
    set_baseline(
        study,
        Baseline(teacher={"accuracy": teacher_acc, **figures}, input_shape=[1, 8, 8], station={"node": "here"}),
    )
    host: dict[int, float] = {}
    for model, size in models:
        trial = study.ask()
        (exp.out / "trials").mkdir(exist_ok=True)
        (exp.out / "trials" / f"trial-{trial.number}.onnx").write_bytes(model)
        host[trial.number] = accuracy(model, data.x_val, data.y_val)
        latency = 0.05 * (trial.number + 1)  # the sweep's own target: distinct, so its front holds them all
        metrics = {**figures, "accuracy": host[trial.number], "accuracy_drop": teacher_acc - host[trial.number]}
        metrics.update(latency_p50_ms=latency, latency_p95_ms=latency, size_mb=size)
        plan = {"model": trial.number}
        rec = TrialRecord(plan=plan, describe=f"model {trial.number}", metrics=metrics, feasible=True)
        record(study, trial, rec, values=[host[trial.number], latency, size], constraints={"accuracy_drop": -1.0})
    return host


def _wide(seed: int, hidden: int = 4096) -> bytes:
    """An untrained two-layer classifier of 8x8 digits (chance accuracy), far costlier than _dense."""
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        ],
        "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [
            numpy_helper.from_array(rng.normal(size=(64, hidden)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(size=(hidden, 10)).astype(np.float32), "w2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture
def finished(tmp_path: Path, agent_url: tuple[str, Path]) -> tuple[Path, dict[int, float]]:
    """A finished sweep: the teacher and three trained trials (its weights with noise). Its file's target is the
    agent, with `accuracy: device`."""
    url, token_file = agent_url
    path = small_experiment(
        tmp_path,
        name="anywhere",
        target={"kind": "remote", "url": url, "token_file": str(token_file), "accuracy": "device"},
        constraints={"max_accuracy_drop": 100.0},
        pick={"max_accuracy_drop": 100.0, "verify_seconds": 1.0},
    )
    exp = load(path)
    w = _teacher_weights(exp)
    noisy = [w + np.random.default_rng(i).normal(scale=noise, size=w.shape) for i, noise in enumerate((0.0, 0.05, 0.3))]
    return path, _finish(exp, _dense(w), [(_dense(weights), 0.01) for weights in noisy])


@pytest.fixture
def swept(finished: tuple[Path, dict[int, float]]) -> tuple[Path, dict[int, float]]:
    """The finished sweep with its own pick registered as 'deployable', as `slimsweep run` ends."""
    assert main(["pick", str(finished[0])]) == 0
    return finished


@pytest.fixture
def agent_url(tmp_path: Path):
    """A real device agent (uvicorn in a thread) on a free loopback port; yields its URL and token file."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    server = uvicorn.Server(uvicorn.Config(create_app(AgentConfig(token=TOKEN)), log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, every=0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", token_file
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def test_retarget_to_an_agent_scores_on_the_device_picks_there_and_trains_nothing(swept, agent_url, capsys):
    path, host = swept
    url, token_file = agent_url
    exp = load(path)
    client = MlflowClient(exp.tracking_uri)
    sweep_version = client.get_model_version_by_alias("anywhere", "deployable").version
    trials_before = len(open_study(exp).trials)
    capsys.readouterr()

    # No --accuracy: the file's `accuracy: device` is about this very agent, so it applies.
    flags = ["--target", "remote", "--url", url, "--token-file", str(token_file)]
    assert main(["retarget", str(path), *flags, "--seconds", "1", "--json"]) == 0, capsys.readouterr().err
    card = json.loads(capsys.readouterr().out)

    study = open_study(exp)
    assert len(study.trials) == trials_before  # nothing trained, no trial of the budget taken
    slug = card["target_name"]
    assert slug == f"remote-127-0-0-1-{url.rsplit(':', 1)[1]}-t1-b1"
    kept = stored(study, slug)
    # The accuracy of each model was computed here from the outputs the agent's runtime sent back; for these fp32
    # models the device's runtime is this host's, so it equals the host's accuracy.
    assert set(kept["device_accuracy"]) == {"teacher", *map(str, host)}
    for number, value in host.items():
        assert kept["device_accuracy"][str(number)] == pytest.approx(value)
    assert card["accuracy_scored_on"] == "device" and card["accuracy_device"] == pytest.approx(host[card["trial"]])

    assert main(["front", str(path), "--target", slug, "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front["accuracy_scored_on"] == "device" and front["pick"] == card["trial"]
    for row in front["front"]:
        assert row["accuracy"] == pytest.approx(host[row["trial"]]) == pytest.approx(row["accuracy_host"])
        # Throughput at the target's batch (1 here), from the same median as the p50.
        assert row["throughput_per_s"] == pytest.approx(1000.0 / row["latency_p50_ms"])

    # The target's pick: its own alias, loadable; its folder; the sweep's 'deployable' untouched.
    version = client.get_model_version_by_alias("anywhere", alias(slug))
    assert version.tags["slimsweep.trial"] == str(card["trial"])
    assert client.get_model_version_by_alias("anywhere", "deployable").version == sweep_version
    mlflow.set_tracking_uri(exp.tracking_uri)
    loaded = mlflow.onnx.load_model(f"models:/anywhere@{alias(slug)}")
    x = load_task(exp.task).data.x_val[:16]
    ours = ort.InferenceSession(str(exp.out / slug / "deployable.onnx")).run(None, {"input": x})[0]
    theirs = ort.InferenceSession(loaded.SerializeToString()).run(None, {"input": x})[0]
    assert np.array_equal(ours, theirs)  # the alias names the model handed over (MLflow rewrites the file's header)
    assert json.loads((exp.out / slug / "model_card.json").read_text())["trial"] == card["trial"]
    runs = client.search_runs(
        [client.get_experiment_by_name("anywhere").experiment_id], "tags.`slimsweep.role` = 'retarget'"
    )
    assert [r.data.tags["slimsweep.target"] for r in runs] == [slug]

    # Again: resumed from what the target measured, nothing timed twice, the same pick.
    assert main(["retarget", str(path), *flags, "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "nothing to time" in out, out
    assert stored(open_study(exp), slug)["models"] == kept["models"]
    assert len(open_study(exp).trials) == trials_before

    # A second target from the same sweep: this host's CPU at batch 4, beside the agent's, each with its own alias.
    assert main(["retarget", str(path), "--target", "cpu", "--batch-size", "4", "--seconds", "1", "--json"]) == 0
    cpu = json.loads(capsys.readouterr().out)
    assert cpu["target_name"] == "cpu-t1-b4" and cpu["accuracy_scored_on"] == "host"
    measured = cpu["measured"]
    assert measured["throughput_per_s"] == pytest.approx(4 * 1000.0 / measured["latency_p50_ms"])
    assert client.get_model_version_by_alias("anywhere", "deployable-cpu-t1-b4").tags["slimsweep.trial"] == str(
        cpu["trial"]
    )
    assert client.get_model_version_by_alias("anywhere", alias(slug)).version == version.version
    assert client.get_model_version_by_alias("anywhere", "deployable").version == sweep_version
    assert len(open_study(exp).trials) == trials_before


def test_front_of_a_target_never_retargeted_names_the_ones_there_are(finished, capsys):
    path, _ = finished
    assert main(["front", str(path), "--target", "cuda-gpu0-t1-b1"]) == 2
    err = capsys.readouterr().err
    assert "'cuda-gpu0-t1-b1'" in err and "none yet" in err and "slimsweep retarget" in err, err


def test_device_accuracy_needs_a_device_agent(tmp_path, capsys):
    path = small_experiment(tmp_path, name="anywhere")
    assert main(["retarget", str(path), "--target", "cpu", "--accuracy", "device"]) == 2
    err = capsys.readouterr().err
    assert "accuracy" in err and "'device'" in err and "remote" in err, err


def test_retarget_times_side_by_side_only_the_front_members_the_pick_can_reach(tmp_path):
    # Five trained models: two near the teacher's accuracy, three untrained wide ones (chance accuracy). One wide
    # model is recorded as the smallest, so it stays on the front; the pick allows 2 points of drop, so only the
    # accurate ones are within its reach.
    path = small_experiment(
        tmp_path,
        name="reach",
        constraints={"max_accuracy_drop": 100.0},
        pick={"max_accuracy_drop": 2.0, "verify_seconds": 1.0},
    )
    exp = load(path)
    w = _teacher_weights(exp)
    accurate = [_dense(w), _dense(w + np.random.default_rng(1).normal(scale=0.005, size=w.shape))]
    wide = [(_wide(0), 0.001), (_wide(1), 1.0), (_wide(2), 1.0)]
    host = _finish(exp, _dense(w), [(m, 0.01) for m in accurate] + wide)
    near = {n for n, acc in host.items() if acc >= host[0] - 2.0}
    assert near == {0, 1}, host  # the set-up: the wide models are far below the pick's accuracy bar
    target = Target(kind="cpu")
    handed: list[list[str]] = []

    def retime(models: list[bytes], names: list[str], settings: CompareSettings) -> Comparison:
        handed.append(list(names))  # what the side-by-side comparison was given; it then runs for real
        return compare_on(make_target(target.spec()), models, names, settings)

    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    done = retarget(exp, open_study(exp), target, tracker, compare_seconds=1.0, retime=retime)

    kept = stored(open_study(exp), done.view.slug)
    assert set(kept["models"]) == {str(n) for n in host}  # every trained model timed on the target, one by one
    front = {c.trial for c in done.view.front}
    reach = {c.trial for c in done.view.front if c.accuracy_drop <= 2.0}
    assert reach and reach <= near and 2 in front  # the smallest wide model is on the front, out of the pick's reach
    # One comparison: the teacher first, then exactly the front members within reach; no wide model among them.
    assert len(handed) == 1 and handed[0][0] == "teacher"
    assert sorted(handed[0][1:]) == sorted(str(n) for n in reach) == sorted(map(str, done.side_by_side))
    pick = done.choice.candidate
    assert pick.trial in reach and pick.speedup_ci_low is not None and pick.latency_p50_ms_verified is not None
    card = json.loads(done.card_path.read_text())
    assert card["speedup_ci_low"] is not None and "timed alone" in card["latency_method"]
    # The front shows no speed-up for a member out of reach (it was not timed side by side), and the table says so.
    shown = {row["trial"]: row for row in rows(done.view)}
    assert shown[2]["speedup"] is None and all(shown[n]["speedup_ci_low"] is not None for n in reach)
    console = Console(file=io.StringIO(), width=250)
    console.print(table(done.view, pick=pick.trial))
    assert "out of its reach" in console.file.getvalue()

    # Again: the same members within reach were timed side by side before, so nothing is timed again.
    again = retarget(exp, open_study(exp), target, tracker, compare_seconds=1.0, retime=retime)
    assert len(handed) == 1 and again.timed == 0 and again.choice.candidate.trial == pick.trial


def test_an_agent_gone_mid_run_ends_retarget_instead_of_marking_the_models_it_was_sent(tmp_path):
    from conftest import free_port

    from evaluators.remote import AgentUnreachable
    from evaluators.targets import TargetSpec
    from search.retarget_timing import TEACHER, time_each

    model = tmp_path / "m.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model.write_bytes(helper.make_model(graph).SerializeToString())
    spec = TargetSpec(kind="remote", url=f"http://127.0.0.1:{free_port()}", token=TOKEN)  # nothing listens there
    record: dict = {TEACHER: {"latency_p50_ms": 1.0}, "models": {}}
    with pytest.raises(AgentUnreachable, match="not reachable"):
        time_each(None, spec, {3: model}, [3], record)  # the teacher timed before: the experiment is not read
    assert "not_runnable" not in record and record["models"] == {}  # trial 3 is not filed as a model it cannot run
