"""Export a PyTorch model to ONNX bytes, the form every later stage (quantization, accuracy, latency) takes."""

from __future__ import annotations

import io
import warnings

import torch

from evaluators.errors import TrialFailure

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


def to_onnx(model: torch.nn.Module, example_input: torch.Tensor) -> bytes:
    """Export a model to ONNX bytes with a dynamic batch axis (input name "input", output "logits")."""
    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated but was ~10x faster than dynamo on small CNNs here,
            # and export runs once per trial.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example_input,),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as exc:
        raise TrialFailure(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    return buffer.getvalue()
