"""The accuracy pass and the local bench station run a model under a memory cap and a deadline, as the device agent
does: an endless Loop stops at the deadline, an output of many GiB stops at the cap, each with its reason; the
process that asked survives, and the next (normal) model is still scored and timed."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
from onnx import TensorProto, helper

import search.station
from evaluators.accuracy import accuracy
from evaluators.errors import ConfigError
from evaluators.latency import TimingSettings
from evaluators.limits import LimitExceeded, Limits
from evaluators.targets import TargetSpec
from experiments.task_types import TaskData
from search.station import limited_measure
from search.trial import TrialContext, run_trial
from spaces.plan import CompressionPlan

QUICK = TimingSettings(warmup=2, min_repeats=5, max_repeats=50, max_seconds=0.2)
CLASSES = 10


def _model(nodes, initializers=(), width: int = CLASSES, out: int = CLASSES) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", out])],
        list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def identity() -> bytes:
    """A classifier whose logits are its input: its accuracy on one-hot inputs is computable by hand."""
    return _model([helper.make_node("Identity", ["input"], ["logits"])])


def endless_loop() -> bytes:
    """A Loop whose condition stays true for 2**62 iterations: it never ends on its own."""
    scalar = lambda name, kind: helper.make_tensor_value_info(name, kind, [])  # noqa: E731
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [
            scalar("i", TensorProto.INT64),
            scalar("cond_in", TensorProto.BOOL),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [scalar("cond_out", TensorProto.BOOL), helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)],
    )
    trip = helper.make_tensor("trip", TensorProto.INT64, [], [2**62])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    return _model([helper.make_node("Loop", ["trip", "cond", "input"], ["logits"], body=body)], [trip, cond])


def huge_output() -> bytes:
    """Expand of a (batch, 1) input to (batch, 2**33): 32 GiB of floats per sample, from a model of 200 bytes."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 2**33])
    return _model([helper.make_node("Expand", ["input", "shape"], ["logits"])], [shape], width=1, out=2**33)


def one_hot(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n one-hot inputs and labels of which the identity classifier gets the first 70% right."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, CLASSES, n)
    x = np.eye(CLASSES, dtype=np.float32)[truth]
    y = truth.copy()
    y[int(0.7 * n) :] = (y[int(0.7 * n) :] + 1) % CLASSES
    return x, y


def test_an_endless_loop_stops_the_accuracy_pass_at_its_deadline_and_the_next_model_is_scored():
    x, y = one_hot(20)
    began = time.monotonic()
    with pytest.raises(LimitExceeded, match=r"accuracy pass .* past the 2 s deadline"):
        accuracy(endless_loop(), x, y, limits=Limits(seconds=2))
    assert time.monotonic() - began < 60  # stopped by the deadline, not left to run
    assert accuracy(identity(), x, y) == pytest.approx(70.0)  # a fresh worker scores the next model


def test_an_output_of_many_gib_stops_the_accuracy_pass_at_the_memory_cap_and_this_process_survives():
    x, _ = one_hot(4)
    with pytest.raises(LimitExceeded, match=r"over the 2048 MB memory cap"):
        accuracy(huge_output(), x[:, :1], np.zeros(4, dtype=np.int64), limits=Limits(memory_mb=2048))
    x, y = one_hot(50)
    assert accuracy(identity(), x, y, limits=Limits(memory_mb=2048)) == pytest.approx(70.0)


def test_limits_refuse_values_past_their_bounds():
    with pytest.raises(ConfigError, match=r"Limits.memory_mb = 10; it must be >= 1024"):
        Limits(memory_mb=10)
    for seconds in (0, -1, 10**6):
        with pytest.raises(ConfigError, match=r"Limits.seconds"):
            Limits(seconds=seconds)


def test_the_station_times_under_the_limits_and_goes_on_after_a_model_beyond_them(monkeypatch):
    monkeypatch.setattr(search.station, "LOAD_SECONDS", 1.0)  # deadline: 1 + 3 x 0.2 + 1 s
    cpu = TargetSpec(kind="cpu")
    with pytest.raises(LimitExceeded, match=r"timing this model on the cpu target was stopped past the 2.6 s deadline"):
        limited_measure(cpu, endless_loop(), QUICK)
    with pytest.raises(LimitExceeded, match=r"over the \d+ MB memory cap"):
        limited_measure(cpu, huge_output(), QUICK)
    stats = limited_measure(cpu, identity(), QUICK)
    assert stats.p50_ms > 0 and stats.repeats >= QUICK.min_repeats


def test_a_model_beyond_the_limits_is_a_failed_trial_with_its_reason(monkeypatch):
    monkeypatch.setattr(search.station, "LOAD_SECONDS", 1.0)
    x, y = one_hot(20)
    data = TaskData("one-hot", x, y, x[:4], y[:4], x, y, CLASSES)
    plan = CompressionPlan()  # fp32: an ONNX-only trial times and scores the user's model as it is

    def time_model(model: bytes):
        return limited_measure(TargetSpec(kind="cpu"), model, QUICK), False

    ctx = TrialContext(data=data, teacher_blob=None, timing=QUICK, onnx_model=endless_loop())
    failed = run_trial(0, plan, ctx, time_model)
    assert not failed.ok and "past the 2.6 s deadline" in failed.error, failed.error
    scored = run_trial(1, plan, dataclasses.replace(ctx, onnx_model=identity()), time_model)
    assert scored.ok, scored.error
    assert scored.metrics["accuracy"] == pytest.approx(70.0)


def test_the_stations_ray_actor_fails_the_trial_with_the_reason_and_times_the_next_model():
    import ray

    from search.executor import RayExecutor

    x, y = one_hot(20)
    ctx = TrialContext(data=TaskData("one-hot", x, y, x[:4], y[:4], x, y, CLASSES), teacher_blob=None, timing=QUICK)
    executor = RayExecutor(address=None)
    try:
        executor.open_station(TargetSpec(kind="cpu"), reserve_cores=False)
        pid = ray.get(executor.station.__ray_call__.remote(lambda self: os.getpid()))

        def time_model(model: bytes):
            return executor.time_model(model, QUICK)

        failed = run_trial(0, CompressionPlan(), dataclasses.replace(ctx, onnx_model=huge_output()), time_model)
        # The station's own error, not Ray's wrapper with the actor's traceback.
        assert failed.error.startswith("LimitExceeded: timing this model on the cpu target went over the"), failed.error
        scored = run_trial(1, CompressionPlan(), dataclasses.replace(ctx, onnx_model=identity()), time_model)
        assert scored.ok and scored.metrics["accuracy"] == pytest.approx(70.0), scored.error
        assert ray.get(executor.station.__ray_call__.remote(lambda self: os.getpid())) == pid  # never restarted
    finally:
        ray.shutdown()


def test_a_bring_your_own_model_with_a_huge_output_is_a_data_error_when_the_task_loads(tmp_path):
    from experiments.readers import DataError
    from experiments.tasks import load_task

    model, data = tmp_path / "bomb.onnx", tmp_path / "data.npz"
    model.write_bytes(huge_output())
    x = np.ones((4, 1), np.float32)
    np.savez(data, x_calib=x, x_val=x, y_val=np.zeros(4, np.int64))
    # The driver runs the model on two samples to count its classes: in the worker, so the driver survives it.
    with pytest.raises(DataError, match=r"does not run on x_val .*LimitExceeded: .* over the \d+ MB memory cap"):
        load_task({"name": "onnx", "model": str(model), "data": str(data)})
