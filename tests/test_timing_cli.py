"""The work behind `slimsweep bench`, `compare` and `agent`, called in-process on real ONNX Runtime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from evaluators.errors import ConfigError
from search.timing_cli import batch_for, bench, compare_models, plan_bench, serve_agent, short_names

pytestmark = pytest.mark.fast


def matmul(path: Path, batch: int | str = "batch", size: int = 8) -> Path:
    """A one-MatMul ONNX file whose first input fixes its batch or leaves it symbolic."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, size])
    w = numpy_helper.from_array(np.eye(size, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def test_bench_times_a_fixed_batch_model_at_its_batch_and_its_figures_name_the_plan(tmp_path):
    plan = plan_bench(matmul(tmp_path / "fixed.onnx", batch=4))
    assert plan.spec.batch_size == 4 and "fixes its batch dimension at 4" in plan.batch_note
    figures = bench(plan, max_seconds=0.3).to_dict()
    assert figures["model"] == str(tmp_path / "fixed.onnx") and figures["target"] == "cpu"
    assert figures["batch_size"] == 4 and figures["threads"] == 1
    assert figures["repeats"] > 0 and figures["throughput_per_s"] == pytest.approx(
        4 / (figures["latency_p50_ms"] / 1e3)
    )


def test_a_symbolic_batch_is_timed_at_the_flag_or_at_one(tmp_path):
    model = matmul(tmp_path / "m.onnx")
    assert plan_bench(model).spec.batch_size == 1 and plan_bench(model).batch_note is None
    assert plan_bench(model, batch_size=3).spec.batch_size == 3


@pytest.mark.parametrize(
    "flags, says",
    [
        ({"kind": "tpu"}, "'cpu'"),  # the schema's own message lists the kinds allowed
        ({"threads": 0}, "threads"),
        ({"url": "http://127.0.0.1:1"}, "url"),
        ({"batch_size": 2}, "--batch-size"),  # the model fixes 4
    ],
)
def test_bad_bench_flags_are_refused_naming_the_flag_before_anything_is_timed(tmp_path, flags, says):
    with pytest.raises(ConfigError, match=says):
        plan_bench(matmul(tmp_path / "fixed.onnx", batch=4), **flags)


def test_a_missing_or_unreadable_model_is_a_config_error_that_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.onnx: no such ONNX file"):
        plan_bench(tmp_path / "nope.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ConfigError, match="cannot open the model as ONNX"):
        batch_for([tmp_path / "text.onnx"], None)


def test_compare_puts_the_baseline_first_and_names_files_that_share_a_name_by_path(tmp_path):
    first, second = matmul(tmp_path / "a" / "m.onnx"), matmul(tmp_path / "b" / "m.onnx", size=64)
    assert short_names([first, second]) == [str(first), str(second)]
    assert short_names([first, tmp_path / "other.onnx"]) == ["m.onnx", "other.onnx"]
    # The baseline given only as --baseline is added, first.
    done = compare_models([first], baseline=second, max_seconds=1.0)
    assert [m.name for m in done.comparison.models] == [str(second), str(first)]
    figures = done.to_dict()
    assert figures["baseline"] == str(second) and figures["batch_size"] == 1 and figures["batch_note"] is None


def test_compare_refuses_what_it_cannot_compare_naming_why(tmp_path):
    a, b = matmul(tmp_path / "a.onnx", batch=2), matmul(tmp_path / "b.onnx", batch=4)
    with pytest.raises(ConfigError, match="at least two different models"):
        compare_models([a, a])
    with pytest.raises(ConfigError, match="--max-seconds: 0"):
        compare_models([a, matmul(tmp_path / "c.onnx", batch=2)], max_seconds=0)
    with pytest.raises(ConfigError, match="fix different batch sizes"):
        compare_models([a, b])
    with pytest.raises(ConfigError, match="nope.onnx"):
        compare_models([a, tmp_path / "nope.onnx"])


def test_the_agent_refuses_a_token_file_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match="--token-file: .*missing.* does not exist"):
        serve_agent(port=1, host="127.0.0.1", token_file=str(tmp_path / "missing"))
