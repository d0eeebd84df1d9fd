"""Named targets on the real ONNX Runtime of this machine, and the latency-cache key on models exported by torch."""

import io
import platform
import socket
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import free_port, wait_for

from evaluators import ConfigError, LatencyStats, SlimsweepError, TimingSettings
from evaluators.graph_key import graph_key
from evaluators.runtime import make_session
from evaluators.targets import TARGETS, Target, TargetSpec, make_target, settings_for
from search.builds import build_problem
from search.station import measure_limits
from spaces.quantization import quantize

QUICK = {"warmup": 5, "min_repeats": 30, "max_repeats": 200, "max_seconds": 2.0}


def conv_net(channels: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1),
        torch.nn.BatchNorm2d(channels),
        torch.nn.ReLU(),
        torch.nn.Conv2d(channels, channels, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(channels * 64, 10),
    ).eval()


def trained(model: torch.nn.Module, steps: int = 20) -> torch.nn.Module:
    """A few real optimizer steps on random data: every weight and the batch-norm statistics move."""
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 1, 8, 8, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def export(model: torch.nn.Module, opset: int | None = None) -> bytes:
    f = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        f,
        dynamo=False,
        opset_version=opset,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return f.getvalue()


def calibration(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((16, 1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def untrained() -> bytes:
    return export(conv_net(8))


@pytest.fixture(scope="module")
def trained_model() -> bytes:
    return export(trained(conv_net(8)))


@pytest.fixture(scope="module")
def cpu_settings() -> TimingSettings:
    return settings_for(TargetSpec("cpu"), **QUICK)


# --- targets -------------------------------------------------------------------------------------------------------


def test_cpu_target_measures_with_ordered_percentiles_and_describes_threads_and_batch(untrained):
    spec = TargetSpec("cpu", threads=1, batch_size=4)
    target = make_target(spec)
    target.check()
    stats = target.measure(untrained, settings_for(spec, **QUICK))
    assert isinstance(stats, LatencyStats)
    assert 0 < stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms
    # Throughput counts the target's batch of 4 samples per run.
    assert stats.throughput == pytest.approx(4 / (stats.mean_ms / 1e3))
    described = target.describe()
    assert described["kind"] == "cpu"
    assert described["threads"] == 1 and described["batch_size"] == 4
    assert described["providers"] == ["CPUExecutionProvider"]
    assert target.local_cpu()


def test_settings_come_from_the_spec_and_other_values_are_refused(untrained):
    spec = TargetSpec("cpu", threads=2, batch_size=3)
    settings = settings_for(spec, warmup=7)
    assert (settings.threads, settings.batch_size, settings.warmup) == (2, 3, 7)
    with pytest.raises(ConfigError, match="TargetSpec.batch_size"):
        settings_for(spec, batch_size=8)
    with pytest.raises(ConfigError, match="'warmup'"):
        settings_for(spec, warmpu=7)
    # Timings taken with another batch would be filed under this target wrongly.
    with pytest.raises(ConfigError, match="batch_size"):
        make_target(spec).measure(untrained, TimingSettings(threads=2, batch_size=1))


@pytest.mark.parametrize(
    ("kind", "provider", "hint"),
    [
        ("cuda", "CUDAExecutionProvider", "install onnxruntime-gpu"),
        ("tensorrt", "TensorrtExecutionProvider", "TensorRT"),
        ("openvino", "OpenVINOExecutionProvider", "make install-openvino"),
    ],
)
def test_accelerator_target_fails_at_check_naming_the_provider_and_the_fix(
    kind, provider, hint, untrained, cpu_settings
):
    target = make_target(TargetSpec(kind))
    try:
        target.check()
    except SlimsweepError as exc:
        message = str(exc)
        assert f"target {kind!r}" in message and provider in message and hint in message
        if provider not in ort.get_available_providers():  # this machine: a CPU-only ONNX Runtime
            assert "ONNX Runtime here has no" in message and "CPUExecutionProvider" in message
        # ONNX Runtime would quietly run the model on the CPU; measure() refuses to pass that off as this target.
        with pytest.raises(SlimsweepError, match=provider):
            target.measure(untrained, cpu_settings)
    else:
        # Only on a machine where the provider really starts: the session must have it first.
        assert make_session(untrained, providers=target.providers()).get_providers()[0] == provider


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_session_that_falls_back_to_the_cpu_is_refused_at_check_and_measure(monkeypatch, untrained, cpu_settings):
    # As with onnxruntime-gpu on a host whose GPU does not start: the provider is listed, but ONNX Runtime gives
    # the real session to the CPU provider with only a warning.
    listed = [*ort.get_available_providers(), "CUDAExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    target = make_target(TargetSpec("cuda"))
    with pytest.raises(SlimsweepError, match="fell back to CPUExecutionProvider .*instead of CUDAExecutionProvider"):
        target.check()
    with pytest.raises(SlimsweepError, match="fell back to CPUExecutionProvider for this model"):
        target.measure(untrained, cpu_settings)


def test_unknown_kind_is_a_config_error_listing_the_kinds():
    with pytest.raises(ConfigError) as error:
        make_target(TargetSpec("cpus"))
    message = str(error.value)
    assert "'cpus'" in message and "did you mean 'cpu'" in message
    for kind in ("cpu", "cuda", "tensorrt", "openvino", "remote"):
        assert kind in message
    assert set(TARGETS.names()) == {"cpu", "cuda", "tensorrt", "openvino", "remote"}
    assert all(issubclass(TARGETS.get(kind), Target) and TARGETS.get(kind).kind == kind for kind in TARGETS.names())


def test_the_built_in_kinds_say_what_they_need_by_their_flags():
    # What the executor, the bench station and the build check ask of a kind (they no longer name kinds).
    flags = {
        kind: (cls.uses_gpu, cls.times_on_local_cpu, cls.runtime_build, cls.takes_url)
        for kind, cls in ((k, TARGETS.get(k)) for k in TARGETS.names())
    }
    assert flags == {
        "cpu": (False, True, None, False),
        "cuda": (True, False, "onnxruntime-gpu", False),
        "tensorrt": (True, False, "onnxruntime-gpu", False),
        "openvino": (False, True, "onnxruntime-openvino", False),
        "remote": (False, False, None, True),
    }
    assert build_problem("cuda", {"onnxruntime": "1.0"}) == (
        "target 'cuda' needs the onnxruntime-gpu build, but this environment has onnxruntime; "
        "`make install-gpu` replaces it"
    )
    assert build_problem("cpu", {"onnxruntime-openvino": "1.0"}) is None
    assert not measure_limits(TargetSpec("tensorrt"), TimingSettings()).capped
    assert measure_limits(TargetSpec("openvino"), TimingSettings()).capped


def test_the_target_registry_loads_without_onnx_runtime():
    # The schema validates target.kind against it before anything heavy loads.
    heavy = "('onnxruntime', 'onnx', 'numpy')"
    code = f"import sys, evaluators.targets; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_specs_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match="TargetSpec.threads = 0"):
        TargetSpec("cpu", threads=0)
    with pytest.raises(ConfigError, match="TargetSpec.url"):
        TargetSpec("cpu", url="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="TargetSpec.url"):
        make_target(TargetSpec("remote", token="secret"))


def test_remote_target_on_a_closed_port_fails_at_check_as_not_reachable():
    url = f"http://127.0.0.1:{free_port()}"
    target = make_target(TargetSpec("remote", url=url, token="secret"))
    assert not target.local_cpu()
    with pytest.raises(SlimsweepError) as error:
        target.check()
    assert "not reachable" in str(error.value) and url in str(error.value)
    assert "secret" not in str(error.value)


@pytest.fixture
def agent(tmp_path):
    """A real device agent on a loopback port, in its own process; yields its URL and token."""
    port, token = free_port(), "a-test-token-of-16-bytes-or-more"
    (tmp_path / "token").write_text(token)
    (tmp_path / "token").chmod(0o600)  # the agent refuses a token file others can read
    code = f"from evaluators.agent import serve; serve(port={port}, token_file={str(tmp_path / 'token')!r})"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        assert process.poll() is None, "the agent process exited"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, timeout=60, every=0.1)
        yield f"http://127.0.0.1:{port}", token
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_remote_target_checks_describes_and_measures_through_a_real_agent(agent, untrained):
    url, token = agent
    spec = TargetSpec("remote", url=url, token=token, batch_size=2)
    target = make_target(spec)
    target.check()
    described = target.describe()
    assert described["kind"] == "remote" and described["url"] == url and described["batch_size"] == 2
    assert described["device"]["hostname"] == platform.node()
    assert token not in repr(described)
    stats = target.measure(untrained, settings_for(spec, **QUICK))
    assert 0 < stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms
    assert stats.throughput == pytest.approx(2 / (stats.mean_ms / 1e3))

    with pytest.raises(SlimsweepError, match="refused the token") as error:
        make_target(TargetSpec("remote", url=url, token="wrong-token")).check()
    assert "check the target's url and token" in str(error.value)


def test_evaluators_stay_free_of_search_libraries():
    code = (
        "import sys, evaluators.targets, evaluators.graph_key; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'optuna', 'ray', 'mlflow', 'spaces', 'search', 'experiments'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- graph_key -----------------------------------------------------------------------------------------------------


def renamed(model: bytes) -> bytes:
    """The same graph as another export might write it: other node and tensor names, doc strings and producer."""
    proto = onnx.load_from_string(model)
    graph = proto.graph
    keep = {v.name for v in [*graph.input, *graph.output]}
    names = {}
    for node in graph.node:
        node.name = f"renamed_{node.name}"
        node.doc_string = "exported again"
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name and name not in keep:
                    field[i] = names.setdefault(name, f"t{len(names)}_{name[::-1]}")
    for init in graph.initializer:
        init.name = names.get(init.name, init.name)
    for info in graph.value_info:
        info.name = names.get(info.name, info.name)
    proto.producer_name, proto.producer_version, graph.doc_string = "other", "9.9", "another export"
    assert onnx.checker.check_model(proto) is None
    return proto.SerializeToString()


def with_opset(model: bytes, version: int) -> bytes:
    proto = onnx.load_from_string(model)
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = version
    return proto.SerializeToString()


def test_weights_do_not_change_the_key(untrained, trained_model):
    assert untrained != trained_model
    other_init = export(conv_net(8, seed=5))
    assert graph_key(untrained) == graph_key(trained_model) == graph_key(other_init)


def test_names_doc_strings_and_producer_do_not_change_the_key(untrained):
    again = renamed(untrained)
    assert again != untrained
    assert graph_key(again) == graph_key(untrained)
    # Still the same model to ONNX Runtime.
    x = np.ones((1, 1, 8, 8), np.float32)
    runs = [ort.InferenceSession(m).run(None, {"input": x})[0] for m in (untrained, again)]
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6)


def test_quantized_models_share_a_key_across_weights_and_calibrations(untrained, trained_model):
    first = quantize(untrained, "int8_static_qdq", calibration(0))
    second = quantize(trained_model, "int8_static_qdq", calibration(1))
    assert first != second
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(first).graph.node)
    assert graph_key(first) == graph_key(second)
    assert graph_key(first) != graph_key(untrained)


def test_width_opset_and_timing_parts_change_the_key(untrained):
    assert graph_key(export(conv_net(16))) != graph_key(untrained)
    assert graph_key(with_opset(untrained, 18)) != graph_key(untrained)
    assert graph_key(export(conv_net(8), opset=13)) != graph_key(export(conv_net(8), opset=17))

    def key(**spec: int) -> str:
        target_spec = TargetSpec("cpu", **spec)
        return graph_key(untrained, make_target(target_spec).describe(), settings_for(target_spec, **QUICK))

    assert key() == key()
    assert len({key(), key(batch_size=4), key(threads=2)}) == 3
    assert graph_key(untrained, settings_for(TargetSpec("cpu"), warmup=1)) != graph_key(
        untrained, settings_for(TargetSpec("cpu"), warmup=2)
    )


def test_a_shape_constant_changes_the_key():
    # Reshape targets are int64 initializers: their values decide the shapes, so they are part of the structure.
    def reshaped(shape: list[int]) -> bytes:
        x = onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [2, 6])
        y = onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)
        target = onnx.numpy_helper.from_array(np.array(shape, np.int64), "shape")
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Reshape", ["X", "shape"], ["Y"])], "g", [x], [y], initializer=[target]
        )
        return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]).SerializeToString()

    assert graph_key(reshaped([3, 4])) != graph_key(reshaped([4, 3]))
    assert graph_key(reshaped([3, 4])) == graph_key(reshaped([3, 4]))


def test_bytes_that_are_not_onnx_are_refused():
    with pytest.raises(SlimsweepError, match="not an ONNX model"):
        graph_key(b"\xff\xfe not a model")
