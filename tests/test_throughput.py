"""Throughput as an objective: `throughput_per_s` (items per second at the target's batch, batch_size / p50 seconds)
is on every timing, travels from a device agent, is allowed in `objectives:` (maximized) and reaches the front."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_experiment
from onnx import TensorProto, helper, numpy_helper

from evaluators.latency import LatencyStats, TimingSettings, measure
from search.config import load
from search.pareto import candidate
from search.study import TrialRecord, open_study, record


def _dense() -> bytes:
    weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "dense",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("batch", [1, 8])
def test_every_timing_reports_throughput_at_its_batch(batch):
    settings = TimingSettings(batch_size=batch, warmup=2, min_repeats=5, max_seconds=0.2)
    stats = measure(_dense(), settings)
    metrics = stats.metrics()
    assert stats.batch_size == batch
    # A second computation from the same figures: items in one run over the median run's seconds.
    assert metrics["throughput_per_s"] == pytest.approx(batch * 1000.0 / metrics["latency_p50_ms"])


def test_a_figure_from_an_agent_of_an_earlier_release_reads_as_batch_one():
    old = dict(p50_ms=2.0, p90_ms=2, p95_ms=2, p99_ms=2, mean_ms=2, cv=0, ci_rel=0, throughput=500.0)
    stats = LatencyStats(**old, repeats=5, stable=True, retried=False)
    assert stats.throughput_per_s == pytest.approx(500.0)


def test_throughput_is_an_objective_maximized_and_on_the_front(tmp_path):
    path = small_experiment(tmp_path, objectives=["accuracy", "throughput_per_s"])
    exp = load(path)
    study = open_study(exp)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    trial = study.ask()
    metrics = {
        "accuracy": 90.0,
        "accuracy_drop": 1.0,
        "latency_p50_ms": 2.0,
        "latency_p95_ms": 2.5,
        "size_mb": 0.1,
        "params": 10.0,
        "throughput_per_s": 500.0,
    }
    rec = TrialRecord(plan={"w": 1}, describe="one", metrics=metrics, feasible=True)
    record(study, trial, rec, values=[90.0, 500.0], constraints={"accuracy_drop": -1.0})
    assert candidate(study.trials[0]).throughput_per_s == 500.0


def test_an_unknown_objective_names_throughput_among_the_allowed(tmp_path):
    from evaluators.errors import ConfigError

    with pytest.raises(ConfigError, match="throughput_per_s"):
        load(small_experiment(tmp_path, objectives=["accuracy", "throughput"]))


def test_the_pick_policy_can_ask_for_a_throughput(tmp_path):
    from dataclasses import replace

    from test_ties import member

    from search.pick import choose, make_policy

    fast_few = replace(member(1, 98.4, 8.0, (7.8, 8.2)), throughput_per_s=900.0)
    slower_many = replace(member(2, 98.4, 4.0, (3.9, 4.1)), throughput_per_s=1500.0)  # batches better, say
    exp = load(small_experiment(tmp_path, name="rate", pick={"max_accuracy_drop": 1.0, "min_throughput_per_s": 1000}))
    policy = make_policy(exp.pick)
    picked = choose([fast_few, slower_many], policy, 1.0)
    assert picked.candidate.trial == 2 and picked.met_policy and "throughput >= 1000 items/s" in picked.why
    # Without the limit the measurably faster member wins.
    plain = make_policy(load(small_experiment(tmp_path, name="plain")).pick)
    assert choose([fast_few, slower_many], plain, 1.0).candidate.trial == 1
