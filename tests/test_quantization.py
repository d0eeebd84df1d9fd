"""Quantization schemes and their options (and the ONNX export they start from) on real models trained on digits.

Every choice of the quantization knob is applied to a small real model here and checked for the effect a user would
notice: the file passes the ONNX checker, runs in ONNX Runtime, shrinks, and its graph shows the option was applied.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
from onnx import numpy_helper
from pydantic import ValidationError
from sklearn.datasets import load_digits
from torch import nn

from evaluators.errors import ConfigError, TrialFailure
from spaces import quantization_knobs as knobs
from spaces.export import to_onnx
from spaces.quantization import CALIBRATION_CACHE, int8_static, layer_sensitivity, quantize
from spaces.quantization_knobs import SCHEMES, QuantizationChoice, QuantizationSpace, sample_quantization

pytestmark = pytest.mark.fast

optuna.logging.set_verbosity(optuna.logging.WARNING)

INT8_SCHEMES = ["int8_dynamic", "int8_static_qdq", "int8_static_qoperator"]
QDQ, QOP = "int8_static_qdq", "int8_static_qoperator"
# One model per option of the static schemes (the schemes themselves are quantized by name, with defaults).
VARIANTS = {
    "qdq per-tensor": QuantizationChoice(QDQ, per_channel=False),
    "qdq int8_sym": QuantizationChoice(QDQ, activations="int8_sym"),
    "qoperator int8_sym": QuantizationChoice(QOP, activations="int8_sym"),
    "qdq entropy": QuantizationChoice(QDQ, calibration="entropy"),
    "qdq percentile": QuantizationChoice(QDQ, calibration="percentile"),
    "qdq 16 samples": QuantizationChoice(QDQ, calibration_samples=16),
    "qdq full range": QuantizationChoice(QDQ, reduce_range=False),
    "qdq first_last": QuantizationChoice(QDQ, float_layers="first_last"),
    "qoperator first_last": QuantizationChoice(QOP, float_layers="first_last"),
    "qdq sensitive 1": QuantizationChoice(QDQ, float_layers="sensitive", sensitive_layers=1),
    "qoperator sensitive 2": QuantizationChoice(QOP, float_layers="sensitive", sensitive_layers=2),
}


class PlainCNN(nn.Module):
    """64/128/256 channels on 8x8 digits: ~0.37M weights, enough that int8 visibly shrinks the file."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _mlp() -> nn.Module:
    """Mostly Gemm weights (~85k), so int4 weight-only visibly shrinks the file."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def _trained(model: nn.Module, digits: dict[str, np.ndarray]) -> bytes:
    """The model trained for a few seconds, exported to ONNX."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(digits["x_train"]), torch.from_numpy(digits["y_train"])
    for _ in range(3):
        for start in range(0, len(x), 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[start : start + 64]), y[start : start + 64]).backward()
            optimizer.step()
    return to_onnx(model, torch.zeros(1, 1, 8, 8))


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    order = np.random.default_rng(0).permutation(len(images))
    train, val = order[:1400], order[1400:]
    return {
        "x_train": images[train],
        "y_train": data.target[train],
        "x_val": images[val],
        "y_val": data.target[val],
        "x_calib": images[train][:200],
    }


@pytest.fixture(scope="module")
def fp32_model(digits: dict[str, np.ndarray]) -> bytes:
    """The plain CNN trained for a few seconds (~97% on the validation split), exported to ONNX."""
    torch.manual_seed(0)
    return _trained(PlainCNN(), digits)


@pytest.fixture(scope="module")
def mlp_model(digits: dict[str, np.ndarray]) -> bytes:
    torch.manual_seed(0)
    return _trained(_mlp(), digits)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quant-cache")


@pytest.fixture(scope="module")
def quantized(fp32_model: bytes, digits: dict[str, np.ndarray], cache_dir: Path) -> dict[str, bytes]:
    """Every scheme by name (default options, as existing callers pass it) and every static option."""
    calibration = digits["x_calib"]
    out = {name: quantize(fp32_model, name, calibration) for name in SCHEMES.names()}
    # Entropy calibration needs the calibration cache (onnxruntime-openvino 1.24 lacks it; tested below).
    variants = {name: c for name, c in VARIANTS.items() if CALIBRATION_CACHE or c.calibration != "entropy"}
    out.update(
        {name: quantize(fp32_model, choice, calibration, cache_dir=cache_dir) for name, choice in variants.items()}
    )
    return out


def _made(quantized: dict[str, bytes], name: str) -> bytes:
    """The model made for `name`; skips where this build cannot make it."""
    if name not in quantized:
        pytest.skip(f"{name!r} needs the calibration cache, which onnxruntime {ort.__version__} lacks")
    return quantized[name]


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _accuracy(model: bytes, digits: dict[str, np.ndarray]) -> float:
    return float((_run(model, digits["x_val"]).argmax(axis=1) == digits["y_val"]).mean())


def _graph(model: bytes) -> onnx.GraphProto:
    return onnx.load_from_string(model).graph


def _op_types(model: bytes) -> set[str]:
    return {node.op_type for node in _graph(model).node}


def _initializers(model: bytes) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in _graph(model).initializer}


def _layers(model: bytes) -> list[str]:
    """Conv/Gemm names of the float model, in graph order (computed here, not by the code under test)."""
    return [node.name for node in _graph(model).node if node.op_type in ("Conv", "Gemm")]


def _float_layers(model: bytes) -> set[str]:
    """Layers that still compute with a float weight initializer (not quantized)."""
    inits = _initializers(model)
    return {
        node.name
        for node in _graph(model).node
        if node.op_type in ("Conv", "Gemm", "MatMul")
        and node.input[1] in inits
        and inits[node.input[1]].dtype == np.float32
    }


def _quantized_layers(model: bytes) -> set[str]:
    """Layers whose weight is int8: fed by a DequantizeLinear (QDQ) or replaced by a quantized operator."""
    graph = _graph(model)
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    qdq = {node.name for node in graph.node if node.op_type in ("Conv", "Gemm") and node.input[1] in dequantized}
    qop = {node.name.removesuffix("_quant") for node in graph.node if node.op_type in ("QLinearConv", "QGemm")}
    return qdq | qop


def _weight_scales(model: bytes) -> dict[str, tuple[int, ...]]:
    """Shape of the scale of each conv's weight in a QDQ graph."""
    graph, inits = _graph(model), _initializers(model)
    dq = {node.output[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
    return {
        node.name: inits[dq[node.input[1]].input[1]].shape
        for node in graph.node
        if node.op_type == "Conv" and node.input[1] in dq
    }


def _activation_zero_points(model: bytes) -> list[np.ndarray]:
    inits = _initializers(model)
    return [inits[node.input[2]] for node in _graph(model).node if node.op_type == "QuantizeLinear"]


def _input_scale(model: bytes) -> float:
    """The scale the graph input is quantized with: what calibration measured on it."""
    inits = _initializers(model)
    node = next(n for n in _graph(model).node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    return float(inits[node.input[1]])


# The properties every scheme and option must keep; a new scheme in SCHEMES is checked here without a new test.
@pytest.mark.parametrize("name", SCHEMES.names() + list(VARIANTS))
def test_every_scheme_and_option_gives_a_valid_model_that_runs_keeps_its_output_shape_and_accuracy(
    name: str, quantized: dict[str, bytes], digits: dict[str, np.ndarray]
) -> None:
    model = _made(quantized, name)
    onnx.checker.check_model(onnx.load_from_string(model))
    for n in (1, 7):  # the batch axis stays dynamic
        assert _run(model, digits["x_val"][:n]).shape == (n, 10)
    fp32 = _accuracy(quantized["fp32"], digits)
    assert fp32 >= 0.9  # a trained model, so the comparison means something
    assert _accuracy(model, digits) >= fp32 - 0.02


def test_the_schema_allows_exactly_the_registered_schemes() -> None:
    assert QuantizationSpace.model_validate({"schemes": SCHEMES.names()}).schemes == SCHEMES.names()
    with pytest.raises(ValidationError, match="choose one of: " + ", ".join(SCHEMES.names())):
        QuantizationSpace.model_validate({"schemes": ["int9"]})


@pytest.mark.parametrize("scheme", INT8_SCHEMES)
def test_int8_files_are_at_least_3x_smaller_than_fp32(scheme: str, quantized: dict[str, bytes]) -> None:
    assert len(quantized[scheme]) * 3 <= len(quantized["fp32"])


def test_a_scheme_name_means_that_scheme_with_the_default_options(
    fp32_model: bytes, quantized: dict[str, bytes], digits: dict[str, np.ndarray]
) -> None:
    assert quantize(fp32_model, QuantizationChoice(QDQ), digits["x_calib"]) == quantized[QDQ]


def test_fp32_scheme_returns_the_model_unchanged(fp32_model: bytes, quantized: dict[str, bytes]) -> None:
    assert quantized["fp32"] == fp32_model


def test_fp16_halves_the_file_keeps_float32_io_and_close_outputs(
    quantized: dict[str, bytes], digits: dict[str, np.ndarray]
) -> None:
    fp16, fp32 = quantized["fp16"], quantized["fp32"]
    assert len(fp16) < 0.6 * len(fp32)
    assert {a.dtype for a in _initializers(fp16).values() if a.size > 100} == {np.dtype(np.float16)}
    session = ort.InferenceSession(fp16, providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == [o.type for o in session.get_outputs()] == ["tensor(float)"]
    half, full = _run(fp16, digits["x_val"]), _run(fp32, digits["x_val"])
    np.testing.assert_allclose(half, full, atol=0.02 * np.abs(full).max())
    assert (half.argmax(1) == full.argmax(1)).mean() >= 0.99


def test_qdq_graph_has_quantize_and_dequantize_nodes(quantized: dict[str, bytes]) -> None:
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(quantized[QDQ])
    assert not {"QLinearConv"} & _op_types(quantized[QDQ])
    assert not {"QuantizeLinear", "DequantizeLinear"} & _op_types(quantized["fp32"])


def test_qoperator_graph_has_quantized_operators_instead_of_conv(quantized: dict[str, bytes]) -> None:
    ops = _op_types(quantized[QOP])
    assert "QLinearConv" in ops
    assert "Conv" not in ops


def test_int8_dynamic_graph_quantizes_at_run_time(quantized: dict[str, bytes]) -> None:
    assert {"ConvInteger", "DynamicQuantizeLinear"} & _op_types(quantized["int8_dynamic"])


def test_per_channel_has_one_weight_scale_per_output_channel_and_per_tensor_one(
    quantized: dict[str, bytes], fp32_model: bytes
) -> None:
    out_channels = {
        n: _initializers(fp32_model)[w].shape[0]
        for n, w in ((node.name, node.input[1]) for node in _graph(fp32_model).node if node.op_type == "Conv")
    }
    assert _weight_scales(quantized[QDQ]) == {name: (c,) for name, c in out_channels.items()}
    assert _weight_scales(quantized["qdq per-tensor"]) == {name: () for name in out_channels}


def test_int8_sym_activations_have_int8_zero_points_at_zero_and_uint8_asym_uint8(quantized: dict[str, bytes]) -> None:
    for name in ("qdq int8_sym", "qoperator int8_sym"):
        zero_points = _activation_zero_points(quantized[name])
        assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    default = _activation_zero_points(quantized[QDQ])
    assert default and all(z.dtype == np.uint8 for z in default)
    assert any(z.any() for z in default)  # asymmetric: some ranges are not centred on 0


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_entropy_and_percentile_calibration_measure_other_ranges_than_minmax(
    method: str, quantized: dict[str, bytes]
) -> None:
    def scales(model: bytes) -> dict[str, float]:
        inits = _initializers(model)
        return {n.input[0]: float(inits[n.input[1]]) for n in _graph(model).node if n.op_type == "QuantizeLinear"}

    minmax, other = scales(quantized[QDQ]), scales(_made(quantized, f"qdq {method}"))
    assert minmax.keys() == other.keys()
    assert any(not np.isclose(minmax[k], other[k]) for k in minmax)


def test_calibration_samples_is_how_many_samples_the_calibrator_reads(
    fp32_model: bytes, digits: dict[str, np.ndarray]
) -> None:
    # The first 16 samples are ordinary digits; the rest are 10x brighter. MinMax on the input sees only what it
    # was given, so the input's scale tells how many samples were read (asymmetric uint8: max / 255 from 0).
    head, tail = digits["x_calib"][:16], digits["x_calib"][16:64] * 10
    calibration = np.concatenate([head, tail])
    first16 = quantize(fp32_model, QuantizationChoice(QDQ, calibration_samples=16), calibration)
    every = quantize(fp32_model, QuantizationChoice(QDQ), calibration)
    assert _input_scale(first16) == pytest.approx(head.max() / 255, rel=1e-5)
    assert _input_scale(every) == pytest.approx(calibration.max() / 255, rel=1e-5)


def test_reduce_range_quantizes_weights_to_7_bits_and_full_range_to_8(quantized: dict[str, bytes]) -> None:
    def largest_weight(model: bytes) -> int:
        inits = _initializers(model)
        return max(
            int(np.abs(inits[n.input[0]].astype(np.int32)).max())
            for n in _graph(model).node
            if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0)).dtype == np.int8
        )

    assert largest_weight(quantized[QDQ]) <= 64  # reduce_range (the default)
    assert largest_weight(quantized["qdq full range"]) == 127


@pytest.mark.parametrize("name", ["qdq first_last", "qoperator first_last"])
def test_first_last_keeps_the_first_and_last_layer_float_and_quantizes_the_rest(
    name: str, quantized: dict[str, bytes], fp32_model: bytes
) -> None:
    layers = _layers(fp32_model)
    assert len(layers) == 4
    assert _float_layers(quantized[name]) == {layers[0], layers[-1]}
    assert _quantized_layers(quantized[name]) == set(layers[1:-1])
    default = QDQ if name.startswith("qdq") else QOP
    assert _float_layers(quantized[default]) == set()
    assert _quantized_layers(quantized[default]) == set(layers)


@pytest.mark.parametrize("name, scheme, n", [("qdq sensitive 1", QDQ, 1), ("qoperator sensitive 2", QOP, 2)])
def test_sensitive_keeps_the_n_top_ranked_layers_float(
    name: str,
    scheme: str,
    n: int,
    quantized: dict[str, bytes],
    fp32_model: bytes,
    digits: dict[str, np.ndarray],
    cache_dir: Path,
) -> None:
    ranking = layer_sensitivity(fp32_model, VARIANTS[name], digits["x_calib"], cache_dir=cache_dir)
    assert sorted(layer for layer, _ in ranking) == sorted(_layers(fp32_model))
    mses = [mse for _, mse in ranking]
    assert mses == sorted(mses, reverse=True) and mses[0] > 0
    top = {layer for layer, _ in ranking[:n]}
    assert _float_layers(quantized[name]) == top
    assert _quantized_layers(quantized[name]) == set(_layers(fp32_model)) - top


def test_sensitivity_ranking_is_cached_per_model_and_options(
    fp32_model: bytes, mlp_model: bytes, digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    choice = QuantizationChoice(QDQ, float_layers="sensitive", sensitive_layers=1)
    first = quantize(fp32_model, choice, digits["x_calib"], cache_dir=tmp_path)
    (cached,) = tmp_path.glob("quant-sensitivity-*.json")
    ranking = layer_sensitivity(fp32_model, choice, digits["x_calib"], cache_dir=tmp_path)
    assert _float_layers(first) == {ranking[0][0]}
    # Put the least sensitive layer first in the cached file: a second call that reads the cache keeps that one.
    least = ranking[-1][0]
    layers = json.loads(cached.read_text())["layers"]
    cached.write_text(json.dumps({"layers": [layers[-1], *layers[1:-1], layers[0]]}))
    second = quantize(fp32_model, choice, digits["x_calib"], cache_dir=tmp_path)
    assert _float_layers(second) == {least}
    assert len(list(tmp_path.glob("quant-sensitivity-*.json"))) == 1  # the same model and options: no new entry
    # Another model, or other static options, is another entry.
    quantize(mlp_model, choice, digits["x_calib"], cache_dir=tmp_path)
    quantize(
        fp32_model,
        QuantizationChoice(QDQ, float_layers="sensitive", reduce_range=False),
        digits["x_calib"],
        cache_dir=tmp_path,
    )
    assert len(list(tmp_path.glob("quant-sensitivity-*.json"))) == 3
    # Without a cache folder the ranking is kept in the process: the second call returns the very same list.
    assert layer_sensitivity(fp32_model, choice, digits["x_calib"]) is layer_sensitivity(
        fp32_model, choice, digits["x_calib"]
    )


def test_int4_weight_only_turns_gemms_into_matmulnbits_shrinks_and_keeps_accuracy(
    mlp_model: bytes, digits: dict[str, np.ndarray], quantized: dict[str, bytes]
) -> None:
    int4 = quantize(mlp_model, "int4_weight_only", digits["x_calib"])
    onnx.checker.check_model(onnx.load_from_string(int4))
    ops = [node.op_type for node in _graph(int4).node]
    assert ops.count("MatMulNBits") == 3 and "Gemm" not in ops
    assert len(int4) * 4 <= len(mlp_model)  # 4-bit weights plus a float scale per 32 of them
    assert _run(int4, digits["x_val"][:7]).shape == (7, 10)
    fp32 = _accuracy(mlp_model, digits)
    assert fp32 >= 0.9
    assert _accuracy(int4, digits) >= fp32 - 0.02
    # On the CNN only the classifier is a Gemm: it becomes MatMulNBits, the convolutions stay float.
    cnn = _op_types(quantized["int4_weight_only"])
    assert {"MatMulNBits", "Conv"} <= cnn and "Gemm" not in cnn


def test_int4_on_a_model_without_matmul_or_gemm_is_a_trial_failure_that_says_so(digits: dict[str, np.ndarray]) -> None:
    convs_only = to_onnx(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), torch.zeros(1, 1, 8, 8))
    with pytest.raises(TrialFailure, match="no MatMul or Gemm"):
        quantize(convs_only, "int4_weight_only", digits["x_calib"])


def test_unknown_scheme_is_a_config_error_listing_the_valid_names(fp32_model: bytes) -> None:
    with pytest.raises(ConfigError, match="int8_statc_qdq") as caught:
        quantize(fp32_model, "int8_statc_qdq", np.zeros((1, 1, 8, 8), np.float32))
    for name in SCHEMES.names():
        assert name in str(caught.value)


# Sampling: a real in-memory Optuna study; a parameter is asked for only where it means something.
STATIC_PARAMS = {
    "quantization.per_channel",
    "quantization.activations",
    "quantization.calibration",
    "quantization.calibration_samples",
    "quantization.reduce_range",
    "quantization.float_layers",
}
SEARCH_ALL = {
    "schemes": SCHEMES.names(),
    "static": {
        "per_channel": [True, False],
        "activations": ["uint8_asym", "int8_sym"],
        "calibration": ["minmax", "entropy", "percentile"],
        "calibration_samples": [16, "all"],
        "reduce_range": [True, False],
        "float_layers": ["none", "first_last", "sensitive"],
        "sensitive_layers": [1, 2],
    },
}


def _ask(space: QuantizationSpace, n: int) -> list[tuple[optuna.Trial, QuantizationChoice]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [(trial, sample_quantization(trial, space)) for trial in (study.ask() for _ in range(n))]


def test_static_options_are_sampled_only_for_static_schemes_and_sensitive_layers_only_with_sensitive() -> None:
    pairs = _ask(QuantizationSpace.model_validate(SEARCH_ALL), 200)
    assert {choice.scheme for _, choice in pairs} == set(SCHEMES.names())
    for trial, choice in pairs:
        assert trial.params["quantization.scheme"] == choice.scheme
        if choice.scheme not in knobs.static_schemes():
            assert set(trial.params) == {"quantization.scheme"}
            assert choice.params() == {"quantization.scheme": choice.scheme}
            assert choice == QuantizationChoice(choice.scheme)
            continue
        sensitive = choice.float_layers == "sensitive"
        expected = {"quantization.scheme"} | STATIC_PARAMS | ({"quantization.sensitive_layers"} if sensitive else set())
        assert set(trial.params) == set(choice.params()) == expected
        for key, value in trial.params.items():
            assert choice.params()[key] == value, key
    statics = [choice for _, choice in pairs if choice.is_static]
    for field, choices in SEARCH_ALL["static"].items():
        seen = {getattr(c, field) for c in statics if field != "sensitive_layers" or c.float_layers == "sensitive"}
        assert seen == {None if v == "all" else v for v in choices}, field  # every value is reachable


def test_default_space_samples_only_the_scheme_and_keeps_todays_static_options() -> None:
    pairs = _ask(QuantizationSpace(), 30)
    assert {choice.scheme for _, choice in pairs} == {"fp32", "int8_dynamic", "int8_static_qdq"}
    for trial, choice in pairs:
        assert set(trial.params) == {"quantization.scheme"}
        assert choice == QuantizationChoice(choice.scheme)
        assert choice.describe() == choice.scheme
    static = QuantizationChoice("int8_static_qdq")
    assert (
        static.per_channel,
        static.activations,
        static.calibration,
        static.calibration_samples,
        static.reduce_range,
        static.float_layers,
    ) == (True, "uint8_asym", "minmax", None, True, "none")


def test_fixed_static_options_are_not_optuna_params_but_are_in_the_choice() -> None:
    space = QuantizationSpace.model_validate(
        {
            "schemes": [QOP],
            "static": {
                "per_channel": False,
                "calibration": "entropy",
                "calibration_samples": 32,
                "float_layers": ["sensitive"],
                "sensitive_layers": 2,
            },
        }
    )
    for trial, choice in _ask(space, 5):
        assert trial.params == {}
        assert choice == QuantizationChoice(
            QOP,
            per_channel=False,
            calibration="entropy",
            calibration_samples=32,
            float_layers="sensitive",
            sensitive_layers=2,
        )
        assert choice.params()["quantization.sensitive_layers"] == 2
        assert choice.describe() == "int8_static_qoperator (per-tensor, entropy, 32 samples, float top-2)"


@pytest.mark.parametrize(
    "section, value",
    [
        ({"schemes": ["int4"]}, "'int4'"),
        ({"schemes": []}, "give at least one scheme"),
        (
            {"schemes": [QDQ], "static": {"activations": "uint8"}},
            "'uint8' is not allowed; choose one of: uint8_asym, int8_sym (did you mean 'uint8_asym'?)",
        ),
        (
            {"schemes": [QDQ], "static": {"calibration": ["minmax", "kl"]}},
            "'kl' is not allowed; choose one of: minmax, entropy, percentile",
        ),
        (
            {"schemes": [QDQ], "static": {"float_layers": "first"}},
            "'first' is not allowed; choose one of: none, first_last, sensitive",
        ),
        ({"schemes": [QDQ], "static": {"per_channel": "yes"}}, "per_channel got 'yes'; expected true, false"),
        ({"schemes": [QDQ], "static": {"reduce_range": []}}, "give at least one choice"),
        ({"schemes": [QDQ], "static": {"calibration_samples": [64, 0]}}, "calibration_samples got 0"),
        ({"schemes": [QDQ], "static": {"calibration_samples": "most"}}, "calibration_samples got 'most'"),
        (
            {"schemes": [QDQ], "static": {"float_layers": "sensitive", "sensitive_layers": [1, -2]}},
            "sensitive_layers got -2",
        ),
        (
            {"schemes": [QDQ], "static": {"float_layers": "first_last", "sensitive_layers": 2}},
            "sensitive_layers applies only when float_layers includes 'sensitive'",
        ),
        ({"schemes": ["fp32", "fp16"], "static": {"per_channel": False}}, "static options apply only to"),
        ({"schemes": [QDQ], "static": {"per_chanel": False}}, "per_chanel"),
    ],
)
def test_bad_values_are_refused_naming_the_value_and_what_is_allowed(section: dict, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        QuantizationSpace.model_validate(section)
    assert value in str(caught.value)


def test_export_names_input_and_logits_with_a_dynamic_batch_and_matches_torch() -> None:
    torch.manual_seed(0)
    model = PlainCNN().train()
    exported = to_onnx(model, torch.zeros(1, 1, 8, 8))
    assert model.training  # the caller's mode is given back
    session = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, rtol=1e-4, atol=1e-5)


def test_export_failure_is_a_trial_failure() -> None:
    model = nn.Linear(5, 3)  # cannot take an image: the trace fails
    with pytest.raises(TrialFailure, match="ONNX export failed"):
        to_onnx(model, torch.zeros(1, 1, 8, 8))


# Without the calibration cache (onnxruntime-openvino 1.24) quantize_static calibrates through its own data reader.
NO_CACHE = {
    "qdq": QuantizationChoice(QDQ),
    "qoperator": QuantizationChoice(QOP),
    "qdq percentile": QuantizationChoice(QDQ, calibration="percentile"),
    "qdq 16 samples": QuantizationChoice(QDQ, calibration_samples=16),
    "qdq sensitive 1 (mixed)": QuantizationChoice(QDQ, float_layers="sensitive", sensitive_layers=1),
    "qoperator sensitive 2 (mixed)": QuantizationChoice(QOP, float_layers="sensitive", sensitive_layers=2),
}


def _no_cache(model: bytes, choice: QuantizationChoice, calibration: np.ndarray, folder: Path) -> bytes:
    qdq = SCHEMES.get(choice.scheme).qdq
    return int8_static(model, choice, calibration, folder, qdq=qdq, calibration_cache=False)


@pytest.mark.skipif(not CALIBRATION_CACHE, reason="compares with the calibration cache, which this build lacks")
@pytest.mark.parametrize("name", list(NO_CACHE))
def test_static_int8_without_the_calibration_cache_makes_the_model_the_cache_makes(
    name: str, fp32_model: bytes, digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    choice, calibration = NO_CACHE[name], digits["x_calib"]
    # Separate ranking caches: the mixed scheme ranks its layers again on each path.
    cached = quantize(fp32_model, choice, calibration, cache_dir=tmp_path / "cache")
    uncached = _no_cache(fp32_model, choice, calibration, tmp_path / "no-cache")
    assert [(n.op_type, n.name) for n in _graph(uncached).node] == [(n.op_type, n.name) for n in _graph(cached).node]
    expected = _initializers(cached)
    got = _initializers(uncached)
    assert got.keys() == expected.keys()
    for key, value in expected.items():  # every scale and zero point: the same activation ranges
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert _float_layers(uncached) == _float_layers(cached)


@pytest.mark.parametrize("name", list(NO_CACHE))
def test_static_int8_without_the_calibration_cache_runs_and_keeps_accuracy(
    name: str, fp32_model: bytes, digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    choice = NO_CACHE[name]
    model = _no_cache(fp32_model, choice, digits["x_calib"], tmp_path)
    onnx.checker.check_model(onnx.load_from_string(model))
    assert _quantized_layers(model)  # quantized, not handed back float
    if choice.float_layers == "sensitive":
        assert len(_float_layers(model)) == choice.sensitive_layers
    assert _accuracy(model, digits) >= _accuracy(fp32_model, digits) - 0.02


def test_static_entropy_without_the_calibration_cache_is_a_trial_failure_that_says_why(
    fp32_model: bytes, digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    # quantize_static would calibrate entropy with ONNX Runtime's default bins: MinMax's ranges under entropy's name.
    with pytest.raises(TrialFailure, match="calibration 'entropy'.*calibration cache.*minmax or percentile"):
        _no_cache(fp32_model, QuantizationChoice(QDQ, calibration="entropy"), digits["x_calib"], tmp_path)
