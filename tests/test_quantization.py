"""Quantization schemes (and the ONNX export they start from) on a real CNN trained on the bundled digits."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from evaluators.errors import ConfigError, TrialFailure
from spaces.export import to_onnx
from spaces.quantization import SCHEMES, quantize

INT8_SCHEMES = ["int8_dynamic", "int8_static_qdq"]


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


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    order = np.random.default_rng(0).permutation(len(images))
    train, val = order[:1400], order[1400:]
    return {"x_train": images[train], "y_train": data.target[train], "x_val": images[val], "y_val": data.target[val]}


@pytest.fixture(scope="module")
def fp32_model(digits: dict[str, np.ndarray]) -> bytes:
    """The plain CNN trained for a few seconds (~97% on the validation split), exported to ONNX."""
    torch.manual_seed(0)
    model = PlainCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(digits["x_train"]), torch.from_numpy(digits["y_train"])
    for _ in range(3):
        for start in range(0, len(x), 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[start : start + 64]), y[start : start + 64]).backward()
            optimizer.step()
    return to_onnx(model, torch.zeros(1, 1, 8, 8))


@pytest.fixture(scope="module")
def quantized(fp32_model: bytes, digits: dict[str, np.ndarray]) -> dict[str, bytes]:
    calibration = digits["x_train"][:200]
    return {name: quantize(fp32_model, name, calibration) for name in SCHEMES}


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _accuracy(model: bytes, digits: dict[str, np.ndarray]) -> float:
    return float((_run(model, digits["x_val"]).argmax(axis=1) == digits["y_val"]).mean())


def _op_types(model: bytes) -> set[str]:
    return {node.op_type for node in onnx.load_from_string(model).graph.node}


# The properties every scheme must keep; a new scheme in SCHEMES is checked here without a new test.
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_gives_a_valid_model_that_runs_and_keeps_its_output_shape(
    scheme: str, quantized: dict[str, bytes], digits: dict[str, np.ndarray]
) -> None:
    model = quantized[scheme]
    onnx.checker.check_model(onnx.load_from_string(model))
    for n in (1, 7):  # the batch axis stays dynamic
        assert _run(model, digits["x_val"][:n]).shape == (n, 10)


@pytest.mark.parametrize("scheme", INT8_SCHEMES)
def test_int8_files_are_at_least_3x_smaller_than_fp32(scheme: str, quantized: dict[str, bytes]) -> None:
    assert len(quantized[scheme]) * 3 <= len(quantized["fp32"])


def test_fp32_scheme_returns_the_model_unchanged(fp32_model: bytes, quantized: dict[str, bytes]) -> None:
    assert quantized["fp32"] == fp32_model


def test_int8_static_qdq_keeps_accuracy_within_2_points(
    quantized: dict[str, bytes], digits: dict[str, np.ndarray]
) -> None:
    fp32, int8 = _accuracy(quantized["fp32"], digits), _accuracy(quantized["int8_static_qdq"], digits)
    assert fp32 >= 0.9  # a trained model, so the comparison means something
    assert int8 >= fp32 - 0.02


def test_int8_static_qdq_graph_has_quantize_and_dequantize_nodes(quantized: dict[str, bytes]) -> None:
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(quantized["int8_static_qdq"])
    assert not {"QuantizeLinear", "DequantizeLinear"} & _op_types(quantized["fp32"])


def test_int8_dynamic_graph_quantizes_at_run_time(quantized: dict[str, bytes]) -> None:
    assert {"ConvInteger", "DynamicQuantizeLinear"} & _op_types(quantized["int8_dynamic"])


def test_unknown_scheme_is_a_config_error_listing_the_valid_names(fp32_model: bytes) -> None:
    with pytest.raises(ConfigError, match="int8_statc_qdq") as caught:
        quantize(fp32_model, "int8_statc_qdq", np.zeros((1, 1, 8, 8), np.float32))
    for name in SCHEMES:
        assert name in str(caught.value)


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
