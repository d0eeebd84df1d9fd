"""Drivers on several machines, each with its own output folder: a trial another driver ran has no file in this
driver's trials folder, so reuse, verification and the pick fetch its ONNX file from the trial's MLflow run."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from conftest import small_experiment
from onnx import TensorProto, helper, numpy_helper

from evaluators.compare import compare
from evaluators.errors import SlimsweepError
from search.artifacts import trial_onnx, trial_onnx_path
from search.config import load
from search.deliver import verify
from search.pareto import Candidate
from search.tracking import Tracker


def _dense(width: int) -> bytes:
    """A one-layer model (MatMul then Relu on a 1x64 input) whose cost grows with width."""
    weight = numpy_helper.from_array(np.ones((64, width), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        f"dense{width}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The stores a sweep on another machine left: its study, and MLflow with trials 3 and 5 and their ONNX files."""
    folder = tmp_path_factory.mktemp("stores")
    search = {"sampler": "random", "trials": 4, "parallel": 2, "seed": 0, "storage": f"sqlite:///{folder / 'study.db'}"}
    path = small_experiment(folder, name="remote", search=search, tracking={"uri": f"sqlite:///{folder / 'mlflow.db'}"})
    exp = load(path)
    tracker = Tracker(exp.tracking_uri, exp.name, folder / "elsewhere" / "mlartifacts", driver="other-machine")
    tracker.start_sweep("name: remote\n", {})
    models = {3: _dense(8), 5: _dense(64)}
    for number, model in models.items():
        tracker.log_trial(number, {"student": "cnn"}, {"accuracy": 0.9}, onnx=model)
    optuna.create_study(study_name=exp.name, storage=exp.storage_url, directions=["maximize", "minimize"])
    return exp, models


@pytest.fixture
def other_drivers_sweep(stores, tmp_path):
    """This driver: its own output folder, which holds the teacher but no trials folder, on the shared stores."""
    exp, models = stores
    exp = exp.model_copy(update={"output_dir": str(tmp_path / "this-driver")})
    exp.out.mkdir(parents=True)
    (exp.out / "teacher.onnx").write_bytes(_dense(512))
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts", driver="this-machine")
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    assert not (exp.out / "trials").exists()
    return exp, tracker, study, models


def test_a_trial_run_elsewhere_is_fetched_from_its_mlflow_run_once(other_drivers_sweep):
    exp, tracker, _, models = other_drivers_sweep
    assert trial_onnx(exp, tracker, 3) == models[3]  # as _reuse and the hand-over ask, with the driver's tracker
    assert trial_onnx(exp, None, 5) == models[5]  # as verification asks: a client of the experiment's store
    assert trial_onnx_path(exp, tracker, 3).read_bytes() == models[3]  # kept in the local trials folder
    assert sorted(p.name for p in (exp.out / "trials").iterdir()) == ["trial-3.onnx", "trial-5.onnx"]  # no leftovers


def test_verification_times_the_front_although_its_files_are_on_another_machine(other_drivers_sweep):
    exp, _, study, models = other_drivers_sweep
    members = [Candidate(n, f"dense {n}", 0.9, 0.0, 1.0, 1.0, 0.1, 1.0) for n in models]
    timed: list[bytes] = []

    def retime(blobs, names, settings):  # the station's method, here in-process
        timed.extend(blobs)
        return compare(blobs, settings, names=names)

    verified, teacher_ms = verify(exp, study, members, retime)
    assert timed[1:] == [models[3], models[5]]  # the members' own bytes, from MLflow
    assert teacher_ms > 0 and all(m.latency_p50_ms_verified for m in verified)


def test_a_trial_no_store_holds_is_a_clear_error(other_drivers_sweep):
    exp, tracker, _, _ = other_drivers_sweep
    with pytest.raises(SlimsweepError, match=r"trial 7's ONNX file is not in .*trials and could not be read from its "):
        trial_onnx(exp, tracker, 7)
    tracker.down, tracker.down_reason = True, "ConnectionError: refused"
    with pytest.raises(SlimsweepError, match=r"trial 3's ONNX file .*\(MLflow is unreachable: ConnectionError"):
        trial_onnx(exp, tracker, 3)
