"""The properties every registry entry must keep, one check per registry (after optuna/testing/pytest_samplers.py).

tests/test_conformance.py runs them over every registered student family, pruning method x importance and
quantization scheme; a test that registers its own entry (tests/test_add_your_own.py) calls them on it.

Each check: the entry is reachable from an experiment file (search.config.parse), a real Optuna trial samples it,
the plan round-trips through the trial's params (optuna.trial.FixedTrial) with the same describe(), and the model
it gives passes the ONNX checker, runs on ONNX Runtime and keeps its output shape (digits: 8x8 inputs, 10 classes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import torch

from search.config import parse
from spaces.export import to_onnx
from spaces.plan import CompressionPlan, Space, sample
from spaces.pruning import prune
from spaces.quantization import quantize
from spaces.student_knobs import STUDENT_FAMILIES, StudentChoice
from spaces.students import build

INPUT = (1, 8, 8)  # digits
CLASSES = 10
NO_STUDENT = {"teacher": False, "cnn": None}  # only the family a check names (cnn is searched by default)
SMALL_CNN = StudentChoice("cnn", width=0.25, depth=1)


def space_naming(section: dict[str, Any]) -> Space:
    """The space of an experiment file whose `space:` is `section` (validated as the CLI validates it)."""
    return parse({"name": "conformance", "space": section}).space


def sample_and_round_trip(space: Space, trials: int = 8) -> list[CompressionPlan]:
    """Plans sampled by a real Optuna study; each is sampled again, equal, from its trial's params alone."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    plans = []
    for _ in range(trials):
        trial = study.ask()
        plan = sample(trial, space)
        again = sample(optuna.trial.FixedTrial(trial.params), space)
        assert again == plan, (trial.params, plan, again)
        assert again.describe() == plan.describe() and plan.describe()
        assert set(again.params()) == set(plan.params())
        study.tell(trial, 0.0)
        plans.append(plan)
    return plans


def runs_and_keeps_its_output(model: bytes, batch: int = 3) -> None:
    """The ONNX checker accepts it and ONNX Runtime runs it with the output shape (batch, classes)."""
    onnx.checker.check_model(onnx.load_model_from_string(model))
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, *INPUT), dtype=np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (batch, CLASSES)
    assert np.isfinite(logits).all()


def example() -> torch.Tensor:
    return torch.rand(1, *INPUT)


def check_student_family(name: str) -> None:
    """A registered family: reachable, sampled, round-tripped, built, exported, run."""
    family = STUDENT_FAMILIES.get(name)
    space = space_naming(
        {
            "students": {**NO_STUDENT, name: {"epochs": 1}},
            "pruning": {"ratio": 0.0},
            "quantization": {"schemes": ["fp32"]},
        }
    )
    assert space.students.kinds() == [name]
    plans = sample_and_round_trip(space)
    assert {p.student.kind for p in plans} == {name}
    assert all(set(p.student.params()) >= {"student.kind", "student.epochs"} for p in plans)
    assert family.suits(INPUT) is None
    for plan in {p.student: p for p in plans}.values():
        torch.manual_seed(0)
        model = build(plan.student, None, INPUT[0], CLASSES, INPUT[1:]).eval()
        runs_and_keeps_its_output(to_onnx(model, example()))


def check_pruning(method: str, importance: str) -> None:
    """A registered pruning method with a registered importance: reachable, sampled, round-tripped, applied, run."""
    space = space_naming({"pruning": {"ratio": [0.5], "method": method, "importance": importance, "recover_epochs": 0}})
    plans = sample_and_round_trip(space, trials=2)
    choice = plans[0].pruning
    assert (choice.method, choice.ratio) == (method, 0.5)
    if choice.structured:
        assert choice.importance == importance
    torch.manual_seed(0)
    model = build(SMALL_CNN, None, INPUT[0], CLASSES, INPUT[1:]).eval()
    batch = (torch.rand(16, *INPUT), torch.randint(0, CLASSES, (16,)))
    prune(model, example(), choice, batch=batch)
    runs_and_keeps_its_output(to_onnx(model, example()))


def check_quantization(scheme: str, calibration: np.ndarray, float_model: bytes) -> None:
    """A registered scheme: reachable, sampled, round-tripped, applied to a small float model, run."""
    space = space_naming({"quantization": {"schemes": [scheme]}})
    plans = sample_and_round_trip(space, trials=2)
    choice = plans[0].quantization
    assert choice.scheme == scheme
    runs_and_keeps_its_output(quantize(float_model, choice, calibration))


def small_float_model() -> bytes:
    """An untrained small CNN student, exported: what every scheme's check quantizes."""
    torch.manual_seed(0)
    model = build(SMALL_CNN, None, INPUT[0], CLASSES, INPUT[1:]).eval()
    return to_onnx(model, example())
