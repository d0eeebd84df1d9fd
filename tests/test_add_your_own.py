"""Adding a student family and a quantization scheme from outside spaces/: one class each, then register.

The two classes below are the README's "Add your own" examples. Registered from this test module (never touching
spaces/ or search/), they are reachable from an experiment file, sampled by a real Optuna trial, run as a real
trial, and pass the same conformance checks as the built-in entries.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import conformance
import onnx
import optuna
import pytest
import torch

from evaluators.errors import ConfigError
from evaluators.latency import TimingSettings, measure
from experiments.tasks import digits
from experiments.teacher import get_teacher, teacher_to_bytes
from search.config import load
from search.trial import TrialContext, run_trial
from spaces import QuantizationScheme, StudentFamily, register_family, register_scheme
from spaces.knobs import IntKnob
from spaces.plan import sample
from spaces.quantization_knobs import SCHEMES
from spaces.student_knobs import STUDENT_FAMILIES


class MLPStudents(StudentFamily):
    """A multilayer perceptron on the flattened image: `layers` hidden layers of `hidden` units."""

    name: ClassVar[str] = "mlp"
    choice_defaults: ClassVar[dict[str, Any]] = {"hidden": 64, "layers": 1}

    hidden: IntKnob = [32, 64]
    layers: IntKnob = [1, 2]

    @classmethod
    def build(cls, choice, in_channels, num_classes, input_hw):
        from torch import nn

        sizes = [in_channels * input_hw[0] * input_hw[1]] + [choice.hidden] * choice.layers
        hidden = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        return nn.Sequential(nn.Flatten(), *hidden, nn.Linear(sizes[-1], num_classes))


class Fp32Folded(QuantizationScheme):
    """The float model after ONNX Runtime's basic graph optimizations (constant folding, redundant nodes removed)."""

    name: ClassVar[str] = "fp32_folded"

    @classmethod
    def apply(cls, model, choice, calibration, cache_dir):
        import tempfile

        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(Path(tmp, "folded.onnx"))
            ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            return Path(options.optimized_model_filepath).read_bytes()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core box train faster (and steadier) on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    register_family(MLPStudents)
    register_scheme(Fp32Folded)
    yield
    STUDENT_FAMILIES.unregister(MLPStudents.name)
    SCHEMES.unregister(Fp32Folded.name)


EXPERIMENT = """
name: add-your-own
task: {name: digits, seed: 0}
space:
  students:
    teacher: false
    cnn: null
    mlp: {hidden: [32, 64], layers: [1, 2], epochs: 2, lr: 0.01}
  pruning: {ratio: 0.0}
  quantization: {schemes: [fp32_folded]}
"""


def test_a_family_and_a_scheme_added_in_a_test_module_run_as_a_real_trial(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(EXPERIMENT)
    exp = load(path)
    assert exp.space.students.kinds() == ["mlp"]
    assert exp.space.quantization.schemes == ["fp32_folded"]

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    plan = sample(trial, exp.space)
    assert set(trial.params) == {"mlp.hidden", "mlp.layers", "mlp.temperature", "mlp.alpha"}  # one family: no "student"
    assert plan.student.kind == "mlp" and plan.student.hidden in (32, 64) and plan.student.layers in (1, 2)
    assert plan.params()["student.hidden"] == plan.student.hidden and plan.student.epochs == 2
    assert plan.describe() == f"mlp hidden={plan.student.hidden} layers={plan.student.layers} | no prune | fp32_folded"

    data = digits(0)
    # The teacher tests/test_every_choice.py uses: trained once per test session (the cache is shared).
    teacher, _ = get_teacher(data, seed=0, width=1.0, depth=2, epochs=10, lr=0.003)
    timing = TimingSettings(warmup=5, min_repeats=20, max_seconds=0.2)
    ctx = TrialContext(data=data, teacher_blob=teacher_to_bytes(teacher), timing=timing)
    result = run_trial(0, plan, ctx, lambda model: (measure(model, timing), False))

    assert result.ok, result.traceback
    graph = onnx.load_model_from_string(result.onnx).graph
    assert {node.op_type for node in graph.node} >= {"Gemm"} and "Conv" not in {n.op_type for n in graph.node}
    pixels, hidden, layers = 64, plan.student.hidden, plan.student.layers
    expected_params = pixels * hidden + hidden + (layers - 1) * (hidden * hidden + hidden) + hidden * 10 + 10
    assert result.metrics["params"] == expected_params
    assert result.metrics["accuracy"] > 50  # distilled for two epochs on digits: far above chance (10%)


def test_the_added_entries_pass_the_conformance_checks() -> None:
    conformance.check_student_family("mlp")
    calibration = digits(0).x_calib[:32]
    conformance.check_quantization("fp32_folded", calibration, conformance.small_float_model())


def test_a_typo_in_the_added_family_is_refused_naming_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(EXPERIMENT.replace("layers: [1, 2]", "layres: [1, 2]"))
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert "space.students.mlp.layres: unknown key" in message
    assert "choose one of: hidden, layers, temperature, alpha, epochs, lr" in message
    assert "(did you mean 'layers'?)" in message


def test_unregistered_the_family_is_an_unknown_key_again(tmp_path: Path) -> None:
    STUDENT_FAMILIES.unregister("mlp")
    path = tmp_path / "gone.yaml"
    path.write_text(EXPERIMENT)
    with pytest.raises(
        ConfigError,
        match=r"space.students.mlp: unknown key; 'mlp' is not allowed; choose one of: "
        r"teacher, cnn, mobilenetv2, resnet",
    ):
        load(path)


EXTENSION = '''
from typing import ClassVar

from spaces import StudentFamily, register_family
from spaces.knobs import IntKnob


class WideStudents(StudentFamily):
    """One hidden layer of `hidden` units."""

    name: ClassVar[str] = "wide"
    choice_defaults: ClassVar[dict] = {"hidden": 256}
    hidden: IntKnob = [128, 256]

    @classmethod
    def build(cls, choice, in_channels, num_classes, input_hw):
        from torch import nn

        pixels = in_channels * input_hw[0] * input_hw[1]
        return nn.Sequential(nn.Flatten(), nn.Linear(pixels, choice.hidden), nn.ReLU(),
                             nn.Linear(choice.hidden, num_classes))


register_family(WideStudents)
'''

VALIDATE = "from search.config import load; print(load('wide.yaml').space.students.kinds())"


def _python(tmp_path: Path, extensions: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "SLIMSWEEP_EXTENSIONS": extensions,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", VALIDATE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_module_named_in_slimsweep_extensions_registers_before_the_file_is_validated(tmp_path: Path) -> None:
    (tmp_path / "my_students.py").write_text(EXTENSION)
    (tmp_path / "wide.yaml").write_text("name: wide\nspace: {students: {teacher: false, cnn: null, wide: {}}}\n")
    done = _python(tmp_path, "my_students")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['wide']"
    # Without the variable, the same file names an unknown family.
    done = _python(tmp_path, "")
    assert done.returncode != 0
    assert "space.students.wide: unknown key; 'wide' is not allowed" in done.stderr


def test_an_extension_module_that_cannot_be_imported_is_named(tmp_path: Path) -> None:
    (tmp_path / "wide.yaml").write_text("name: wide\n")
    done = _python(tmp_path, "my_studnets")
    assert done.returncode != 0
    assert "SLIMSWEEP_EXTENSIONS: cannot import extension module 'my_studnets'" in done.stderr


@pytest.mark.parametrize("taken", ["cnn", "teacher"])
def test_a_name_already_taken_is_refused_at_registration(taken: str) -> None:
    clash = type("Clash", (MLPStudents,), {"name": taken})
    with pytest.raises(ValueError, match=f"{taken!r} is"):
        register_family(clash)
    assert STUDENT_FAMILIES.get("cnn").__name__ == "CNNStudents"
