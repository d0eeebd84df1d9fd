"""Side-by-side timing: real ONNX Runtime sessions for order and plumbing, a fake clock for exact statistics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from evaluators import latency
from evaluators.compare import SIDE_BY_SIDE_DRIFT, CompareSettings, compare, compare_prepared, interleave, summarize
from evaluators.errors import ConfigError

pytestmark = pytest.mark.fast

QUICK = CompareSettings(warmup=3, burst_seconds=0.005, min_rounds=15, max_rounds=60, max_seconds=4.0)


def _model(nodes, inputs, outputs, inits) -> bytes:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    return model.SerializeToString()


def tiny_matmul(batch: int | str = "batch") -> bytes:
    """One 8x8 MatMul: a few microseconds, all call overhead."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8])
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [w])


def conv_stack(layers: int = 3, channels: int = 32, hw: int = 32) -> bytes:
    """3x3 convolutions of 32 channels on 32x32: ~28M multiply-adds, a hundred times the MatMul's time or more."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(
            numpy_helper.from_array(0.1 * rng.standard_normal((channels, channels, 3, 3)).astype(np.float32), f"w{i}")
        )
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [out], pads=[1, 1, 1, 1]))
        prev = out
    return _model(nodes, [x], [y], inits)


# --- real ONNX Runtime sessions --------------------------------------------------------------------------------


def test_models_of_very_different_cost_are_ordered_correctly_both_ways():
    big, small = conv_stack(), tiny_matmul()
    result = compare([big, small], QUICK, names=["convs", "matmul"])
    assert result.baseline.name == "convs"
    fast = result.get("matmul")
    assert fast.speedup_ci_low > 1 and fast.clear_of_one and fast.verdict() == "faster"
    assert fast.p50_ms < result.baseline.p50_ms
    assert result.baseline.speedup == 1.0 and not result.baseline.clear_of_one

    reverse = compare([small, big], QUICK, names=["matmul", "convs"])
    slow = reverse.get("convs")
    assert slow.speedup_ci_high < 1 and slow.verdict() == "slower"


def test_each_model_gets_rounds_and_runs_and_the_result_is_json():
    result = compare([tiny_matmul(), tiny_matmul(), conv_stack(layers=1)], QUICK)
    assert [m.name for m in result.models] == ["model-0", "model-1", "model-2"]
    assert 1 <= result.rounds <= QUICK.max_rounds
    assert result.rounds >= QUICK.min_rounds or not result.tight  # "tight" is never claimed on too few rounds
    for m in result.models:
        assert len(m.round_p50_ms) == result.rounds
        assert m.runs >= result.rounds * QUICK.burst_min_runs
        assert m.speedup_ci_low <= m.speedup <= m.speedup_ci_high
        assert m.p50_ci_low_ms <= m.p50_ms <= m.p50_ci_high_ms
    data = json.loads(json.dumps(result.to_dict()))
    assert data["baseline"] == "model-0" and len(data["models"]) == 3
    assert data["models"][2]["verdict"] in {"faster", "slower", "not distinguishable"}


def test_paths_are_named_by_file_and_a_fixed_batch_mismatch_is_refused(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(tiny_matmul())
    b.write_bytes(tiny_matmul())
    result = compare([a, str(b)], QUICK)
    assert [m.name for m in result.models] == ["a.onnx", "b.onnx"]
    with pytest.raises(Exception, match="fixed batch of 2"):
        compare([tiny_matmul(batch=2), tiny_matmul()], QUICK)


def test_bad_settings_and_inputs_name_the_field():
    with pytest.raises(ConfigError, match="min_rounds"):
        CompareSettings(min_rounds=10, max_rounds=5)
    with pytest.raises(ConfigError, match="burst_min_runs"):
        CompareSettings(burst_min_runs=0)
    with pytest.raises(ConfigError, match="at least two models"):
        compare([tiny_matmul()], QUICK)
    with pytest.raises(ConfigError, match="names"):
        compare([tiny_matmul(), tiny_matmul()], QUICK, names=["x", "x"])


# --- a fake clock at the timing seam: exact checks of the statistics -------------------------------------------


class FakeClock:
    """Nanoseconds that move only when a fake model runs."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class FakeSession:
    """Stands in for latency.Prepared: each run costs `cost_ns` times the machine's current slowdown."""

    def __init__(self, clock: FakeClock, cost_ns: int, machine: dict, noise: np.random.Generator | None = None):
        self.clock, self.cost_ns, self.machine, self.noise = clock, cost_ns, machine, noise

    def run(self) -> None:
        jitter = 1.0 if self.noise is None else float(self.noise.lognormal(0.0, 0.05))
        self.clock.now += int(self.cost_ns * self.machine["slowdown"] * jitter)
        self.machine["runs"] += 1
        # The machine drifts slowly: +-40% over a few thousand runs, far more than the models' true difference.
        self.machine["slowdown"] = 1.0 + 0.4 * math.sin(self.machine["runs"] / 500)

    def warm_up(self, runs: int) -> None:
        for _ in range(runs):
            self.run()


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(latency, "_clock", fake)
    return fake


def test_a_drifting_machine_cancels_out_of_per_round_ratios(clock):
    machine = {"slowdown": 1.0, "runs": 0}
    slow = FakeSession(clock, 400_000, machine)  # 0.4 ms, and a model exactly 4x faster
    fast = FakeSession(clock, 100_000, machine)
    settings = CompareSettings(warmup=2, burst_seconds=0.002, min_rounds=20, max_rounds=200, max_seconds=60)
    result = compare_prepared([slow, fast], ["slow", "fast"], settings)
    assert result.tight
    assert result.get("fast").speedup == pytest.approx(4.0, rel=0.02)
    assert result.get("fast").speedup_ci_low <= 4.0 <= result.get("fast").speedup_ci_high
    # The level itself drifted across rounds; only the side-by-side ratio stayed put.
    assert result.get("slow").round_cv > 0.05
    assert result.get("slow").runs >= result.rounds * settings.burst_min_runs


@pytest.mark.parametrize("true_ratio", [1.0, 4.0])
def test_the_interval_contains_the_true_ratio_under_noise_and_drift(clock, true_ratio):
    machine = {"slowdown": 1.0, "runs": 0}
    rng = np.random.default_rng(7)
    base = FakeSession(clock, 200_000, machine, rng)
    other = FakeSession(clock, int(200_000 / true_ratio), machine, rng)
    settings = CompareSettings(warmup=0, burst_seconds=0.0, burst_min_runs=3, min_rounds=40, max_rounds=40)
    result = compare_prepared([base, other], ["base", "other"], settings)
    m = result.get("other")
    assert result.rounds == 40
    assert m.speedup_ci_low <= true_ratio <= m.speedup_ci_high
    assert m.clear_of_one == (true_ratio != 1.0)


def test_summary_statistics_match_a_second_computation():
    rng = np.random.default_rng(3)
    level = rng.uniform(0.5, 1.5, size=31)  # the machine's level per round
    rounds = np.column_stack([level * 2.0, level * 1.0 * rng.lognormal(0, 0.02, 31), level * 4.0])
    result = summarize(rounds, ["a", "b", "c"], runs=[1, 2, 3], seconds=1.0, min_rounds=10, target_rel_ci=0.5)
    ratios = rounds[:, 0] / rounds[:, 1]
    ordered = np.sort(ratios)
    # n = 31: ranks floor(15.5 - 1.96*sqrt(31)/2) = 10 and ceil(16.5 + 5.46) = 22 (1-based), per latency.median_ci.
    assert result.get("b").speedup == pytest.approx(np.median(ratios))
    assert (result.get("b").round_ci_low, result.get("b").round_ci_high) == (ordered[9], ordered[21])
    # The interval reported is that one widened by the drift between processes (benchmarks/honesty.py).
    assert (result.get("b").speedup_ci_low, result.get("b").speedup_ci_high) == pytest.approx(
        (ordered[9] * (1 - SIDE_BY_SIDE_DRIFT), ordered[21] * (1 + SIDE_BY_SIDE_DRIFT))
    )
    assert result.get("c").speedup == pytest.approx(0.5) and result.get("c").verdict() == "slower"
    assert result.get("a").p50_ms == pytest.approx(np.median(level * 2.0))
    assert result.tight and [m.runs for m in result.models] == [1, 2, 3]


def test_stops_at_min_rounds_when_tight_and_at_max_rounds_when_not():
    exact = [lambda: (2.0, 1), lambda: (1.0, 1)]
    result = interleave(exact, ["a", "b"], CompareSettings(min_rounds=12, max_rounds=100))
    assert result.rounds == 12 and result.tight and result.get("b").speedup == 2.0

    rng = np.random.default_rng(0)
    noisy = [lambda: (float(rng.uniform(1, 3)), 1), lambda: (1.0, 1)]
    result = interleave(noisy, ["a", "b"], CompareSettings(min_rounds=12, max_rounds=30, target_rel_ci=0.001))
    assert result.rounds == 30 and not result.tight


def test_the_order_within_a_round_is_shuffled():
    order: list[str] = []

    def burst(name):
        def run():
            order.append(name)
            return 1.0, 1

        return run

    interleave([burst("a"), burst("b"), burst("c")], ["a", "b", "c"], CompareSettings(min_rounds=10, max_rounds=10))
    firsts = {order[i] for i in range(0, len(order), 3)}
    assert len(firsts) > 1  # not always the same model first


# --- the command ------------------------------------------------------------------------------------------------


def test_compare_command_prints_json_that_parses(tmp_path):
    (tmp_path / "big.onnx").write_bytes(conv_stack())
    (tmp_path / "small.onnx").write_bytes(tiny_matmul())
    proc = run_cli(
        "compare",
        "small.onnx",
        "big.onnx",
        "--baseline",
        "big.onnx",
        "--max-seconds",
        "3",
        "--json",
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["baseline"] == "big.onnx"
    assert [m["name"] for m in data["models"]] == ["big.onnx", "small.onnx"]
    assert data["models"][1]["verdict"] == "faster"


def test_compare_command_prints_a_table_and_refuses_a_missing_file(tmp_path):
    (tmp_path / "a.onnx").write_bytes(tiny_matmul())
    (tmp_path / "b.onnx").write_bytes(conv_stack(layers=1))
    proc = run_cli("compare", "a.onnx", "b.onnx", "--max-seconds", "2", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "b.onnx" in proc.stdout and "speed-up" in proc.stdout and "slower" in proc.stdout
    missing = run_cli("compare", "a.onnx", "nope.onnx", cwd=tmp_path, timeout=120)
    assert missing.returncode == 2 and "nope.onnx" in missing.stderr


def test_bench_times_a_fixed_batch_model_at_its_batch_and_says_so(tmp_path):
    (tmp_path / "fixed.onnx").write_bytes(tiny_matmul(batch=4))
    proc = run_cli("bench", "fixed.onnx", "--max-seconds", "0.5", "--json", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["batch_size"] == 4 and "fixes its batch dimension at 4" in data["batch_note"]
    assert data["throughput_per_s"] == pytest.approx(4 / (data["latency_p50_ms"] / 1e3))
    table = run_cli("bench", "fixed.onnx", "--max-seconds", "0.5", cwd=tmp_path, timeout=120)
    assert table.returncode == 0 and "timed at batch 4" in table.stdout
    clash = run_cli("bench", "fixed.onnx", "--batch-size", "2", cwd=tmp_path, timeout=120)
    assert clash.returncode == 2 and "--batch-size" in clash.stderr and "4" in clash.stderr


def test_bench_json_on_a_symbolic_batch_model_uses_batch_one(tmp_path):
    (tmp_path / "m.onnx").write_bytes(tiny_matmul())
    proc = run_cli("bench", "m.onnx", "--max-seconds", "0.5", "--json", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["batch_size"] == 1 and data["batch_note"] is None and data["latency_p50_ms"] > 0


# --- the bench station ------------------------------------------------------------------------------------------


def test_the_station_compares_on_its_target_and_through_measurements_where_no_session_stays_open():
    from evaluators.latency import measure
    from evaluators.targets import TargetSpec, make_target
    from search.station import BenchStation

    station = object.__new__(BenchStation)  # its __init__ joins Ray and pins cores; compare needs only the target
    station.target = make_target(TargetSpec("cpu"))
    local = station.compare([conv_stack(), tiny_matmul()], ["convs", "matmul"], QUICK)
    assert local.get("matmul").verdict() == "faster"

    class AgentLike:  # a target without ONNX Runtime providers here, as a device agent is: one request per burst
        spec = TargetSpec("cpu")
        requests = 0

        def measure(self, model, settings):
            AgentLike.requests += 1
            return measure(model, settings)

    station.target = AgentLike()
    few = CompareSettings(warmup=2, burst_seconds=0.005, min_rounds=5, max_rounds=5)
    remote = station.compare([conv_stack(), tiny_matmul()], ["convs", "matmul"], few)
    assert remote.rounds == 5 and AgentLike.requests == 10
    assert remote.get("matmul").speedup > 1
    with pytest.raises(ConfigError, match="threads"):
        station.compare([tiny_matmul(), tiny_matmul()], ["a", "b"], CompareSettings(threads=2))
