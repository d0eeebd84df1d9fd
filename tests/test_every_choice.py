"""Every choice of the full space is reachable from experiments/full-space.yaml and runs as a real trial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest

from evaluators.latency import TimingSettings, measure
from experiments.tasks import digits
from experiments.teacher import get_teacher, teacher_to_bytes
from search.config import load
from search.trial import TrialContext, run_trial
from spaces.plan import CompressionPlan, sample
from spaces.pruning_knobs import PruningChoice
from spaces.quantization_knobs import QuantizationChoice
from spaces.student_knobs import StudentChoice

FULL = Path(__file__).resolve().parent.parent / "experiments" / "full-space.yaml"


def test_the_full_space_file_reaches_every_choice():
    space = load(FULL).space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), directions=["maximize"])
    seen: dict[str, set] = {}
    for _ in range(600):
        trial = study.ask()
        for key, value in sample(trial, space).params().items():
            seen.setdefault(key, set()).add(str(value))
        study.tell(trial, 0.0)
    assert seen["student.kind"] == {"teacher", "cnn", "mobilenetv2", "resnet"}
    assert seen["quantization.scheme"] == {
        "fp32",
        "fp16",
        "int8_dynamic",
        "int8_static_qdq",
        "int8_static_qoperator",
        "int4_weight_only",
    }
    assert seen["pruning.method"] == {"structured", "unstructured"}
    assert seen["pruning.importance"] == {"l1", "l2", "taylor", "bn_scale", "random"}
    assert seen["pruning.scope"] == {"uniform", "global"}
    assert seen["pruning.steps"] == {"1", "3"}
    assert seen["quantization.calibration"] == {"minmax", "entropy", "percentile"}
    assert seen["quantization.float_layers"] == {"none", "first_last", "sensitive"}
    assert seen["quantization.activations"] == {"uint8_asym", "int8_sym"}
    assert seen["quantization.per_channel"] == {"True", "False"}


@pytest.fixture(scope="module")
def context() -> TrialContext:
    data = digits(0)
    teacher, _ = get_teacher(data, seed=0, width=1.0, depth=2, epochs=10, lr=0.003)
    timing = TimingSettings(warmup=5, min_repeats=20, max_seconds=0.2)
    return TrialContext(data=data, teacher_blob=teacher_to_bytes(teacher), timing=timing)


def _time(timing: TimingSettings):
    # The real timing method, called in-process instead of through a Ray bench station.
    return lambda model: (measure(model, timing), False)


CNN = StudentChoice(kind="cnn", width=0.25, depth=1, epochs=1)
PLANS = {
    "cnn stage depths, kernel 5": CompressionPlan(
        student=StudentChoice(kind="cnn", width=0.25, stage_depths=(1, 1, 2), kernel_size=5, epochs=1)
    ),
    "mobilenetv2": CompressionPlan(student=StudentChoice(kind="mobilenetv2", width=0.35, settings="compact", epochs=1)),
    "resnet": CompressionPlan(student=StudentChoice(kind="resnet", blocks=(1, 1, 1), base_width=16, epochs=1)),
    **{
        f"prune {imp}": CompressionPlan(student=CNN, pruning=PruningChoice(ratio=0.5, recover_epochs=1, importance=imp))
        for imp in ("l1", "l2", "taylor", "bn_scale", "random")
    },
    "prune global in 3 steps": CompressionPlan(
        student=CNN, pruning=PruningChoice(ratio=0.5, recover_epochs=1, scope="global", steps=3)
    ),
    "prune unstructured": CompressionPlan(
        student=CNN, pruning=PruningChoice(ratio=0.5, recover_epochs=1, method="unstructured")
    ),
    **{
        scheme: CompressionPlan(student=CNN, quantization=QuantizationChoice(scheme=scheme))
        for scheme in ("fp16", "int8_dynamic", "int8_static_qdq", "int8_static_qoperator", "int4_weight_only")
    },
    **{
        name: CompressionPlan(student=CNN, quantization=QuantizationChoice(scheme="int8_static_qdq", **options))
        for name, options in {
            "per-tensor": {"per_channel": False},
            "int8 symmetric": {"activations": "int8_sym"},
            "entropy": {"calibration": "entropy"},
            "percentile": {"calibration": "percentile"},
            "64 samples": {"calibration_samples": 64},
            "full range": {"reduce_range": False},
            "first/last float": {"float_layers": "first_last"},
            "most sensitive float": {"float_layers": "sensitive", "sensitive_layers": 1},
        }.items()
    },
}


@pytest.mark.parametrize("name", list(PLANS))
def test_each_choice_runs_as_a_trial(name, context):
    plan = PLANS[name]
    result = run_trial(0, plan, context, _time(context.timing))
    assert result.ok, result.traceback
    onnx.checker.check_model(onnx.load_model_from_string(result.onnx))
    assert result.metrics["latency_p50_ms"] > 0
    # The reported accuracy is the deployed file's own, checked against a second computation with a plain session
    # (in batches of 256 as the trial scores: int8_dynamic takes its activation ranges per batch).
    session = ort.InferenceSession(result.onnx, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x, y = context.data.x_val.astype(np.float32), np.asarray(context.data.y_val)
    hits = sum(
        int((session.run(None, {name: x[i : i + 256]})[0].argmax(1) == y[i : i + 256]).sum())
        for i in range(0, len(y), 256)
    )
    assert result.metrics["accuracy"] == pytest.approx(100.0 * hits / len(y), abs=1e-6)
    if plan.pruning.ratio and plan.pruning.method == "structured":
        assert result.info["channels"] < result.info["channels_before_pruning"]
    if plan.pruning.method == "unstructured":
        assert result.info["channels"] == result.info["channels_before_pruning"]
        assert result.info["sparsity"] >= 0.45
