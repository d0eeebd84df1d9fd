"""Structured channel pruning with Torch-Pruning on a small residual CNN, checked in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from evaluators.errors import ConfigError
from evaluators.latency import TimingSettings, measure
from spaces.export import to_onnx
from spaces.pruning import channel_count, prune_channels


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))) + x


class ResidualCNN(nn.Module):
    """Widths 64/128 on 8x8 inputs: big enough that halving the channels is clearly faster in ONNX Runtime."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = ResidualBlock(width)  # its add ties its channels to the stem's
        self.block2 = ResidualBlock(width)
        self.widen = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.block3 = ResidualBlock(2 * width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.classifier(self.head(self.block3(self.widen(x))))


@pytest.fixture
def model() -> ResidualCNN:
    torch.manual_seed(0)
    return ResidualCNN().eval()


@pytest.fixture
def example() -> torch.Tensor:
    return torch.rand(1, 1, 8, 8)


def _conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def _session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("importance", ["l2", "l1"])
def test_half_pruning_removes_channels_in_multiples_of_8_and_keeps_the_output(
    model: ResidualCNN, example: torch.Tensor, importance: str
) -> None:
    before = channel_count(model)
    pruned = prune_channels(model, example, 0.5, importance=importance)
    assert pruned is model
    assert channel_count(pruned) < before
    assert all(width % 8 == 0 for width in _conv_widths(pruned)), _conv_widths(pruned)
    assert pruned.classifier.out_features == 10
    with torch.no_grad():
        assert pruned(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_pruned_residual_model_exports_and_runs_in_onnxruntime(model: ResidualCNN, example: torch.Tensor) -> None:
    prune_channels(model, example, 0.5)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    logits = _session(to_onnx(model, example)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_half_pruned_model_is_faster_in_onnxruntime(model: ResidualCNN, example: torch.Tensor) -> None:
    original = to_onnx(model, example)
    pruned = to_onnx(prune_channels(model, example, 0.5), example)
    settings = TimingSettings(threads=1, batch_size=1, warmup=20, min_repeats=200, max_repeats=200, max_seconds=30)
    # Two rounds, alternating, best median of each: a noisy spell on the shared machine hits one round, not both.
    original_ms = pruned_ms = float("inf")
    for _ in range(2):
        original_ms = min(original_ms, measure(original, settings).p50_ms)
        pruned_ms = min(pruned_ms, measure(pruned, settings).p50_ms)
    # Measured 3.5-4.5x here; 1.5x leaves room for a noisy shared machine.
    assert pruned_ms * 1.5 < original_ms, (original_ms, pruned_ms)


def test_ratio_zero_leaves_the_model_untouched(model: ResidualCNN, example: torch.Tensor) -> None:
    widths = _conv_widths(model)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert prune_channels(model, example, 0.0) is model
    assert _conv_widths(model) == widths
    assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())


def test_unknown_importance_is_a_config_error_listing_the_valid_ones(
    model: ResidualCNN, example: torch.Tensor
) -> None:
    with pytest.raises(ConfigError, match="'l3'") as caught:
        prune_channels(model, example, 0.5, importance="l3")
    assert "l1" in str(caught.value) and "l2" in str(caught.value)
