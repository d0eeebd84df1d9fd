"""Accuracy, logits and size of torch classifiers exported to ONNX, checked against torch itself."""

import io
import os

import numpy as np
import pytest
import torch

from evaluators import SlimsweepError, predict, size_mb
from evaluators.accuracy import accuracy

pytestmark = pytest.mark.fast

CLASSES = 10


def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, CLASSES),
    ).eval()


def export(model: torch.nn.Module, batch: int = 1, dynamic: bool = True) -> bytes:
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    f = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.zeros(batch, 1, 8, 8),),
        f,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes=dynamic_axes,
    )
    return f.getvalue()


def data(model: torch.nn.Module, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, torch logits, and labels that torch gets right on about 70% of the samples."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    y = logits.argmax(axis=1)
    wrong = rng.random(n) < 0.3
    y[wrong] = (y[wrong] + 1) % CLASSES
    return x, logits, y


def torch_accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float((logits.argmax(axis=1) == y).mean())


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return classifier()


def test_onnx_accuracy_equals_torch_accuracy_in_percent(model):
    x, logits, y = data(model, 300)
    expected = torch_accuracy(logits, y)
    assert 50 < expected < 90  # the labels make this a non-trivial check
    # batch_size 128 leaves a partial last batch of 44.
    assert accuracy(export(model), x, y, batch_size=128) == pytest.approx(expected, abs=1e-9)


def test_predict_matches_torch_logits(model):
    x, logits, _ = data(model, 300)
    got = predict(export(model), x, batch_size=128)
    assert got.dtype == np.float32 and got.shape == (300, CLASSES)
    np.testing.assert_allclose(got, logits, atol=1e-4, rtol=0)


def test_fixed_batch_model_scores_every_sample(model):
    x, logits, y = data(model, 21)  # 21 = 2 full batches of 8 and one padded batch of 5
    fixed = export(model, batch=8, dynamic=False)
    got = predict(fixed, x)
    assert got.shape == (21, CLASSES)
    np.testing.assert_allclose(got, logits, atol=1e-4, rtol=0)
    assert accuracy(fixed, x, y) == pytest.approx(torch_accuracy(logits, y), abs=1e-9)


def test_accuracy_reads_a_model_file(model, tmp_path):
    x, logits, y = data(model, 50)
    path = tmp_path / "model.onnx"
    path.write_bytes(export(model))
    assert accuracy(path, x, y) == pytest.approx(torch_accuracy(logits, y), abs=1e-9)


def test_mismatched_labels_are_refused(model):
    x, _, y = data(model, 10)
    with pytest.raises(SlimsweepError, match="10 inputs but 9 labels"):
        accuracy(export(model), x, y[:9])


def test_size_mb_is_the_file_size_in_megabytes(model, tmp_path):
    onnx_bytes = export(model)
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_bytes)
    assert size_mb(path) == os.path.getsize(path) / 1e6
    assert size_mb(str(path)) == size_mb(onnx_bytes)
