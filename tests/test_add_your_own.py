"""Adding a student family, quantization schemes (one with an option of its own), a target kind and a pick policy
with a setting of its own from outside the package: one class each, then register.

The classes below are the README's "Add your own" examples. Registered from this test module (never touching
spaces/, search/ or evaluators/), they are reachable from an experiment file, sampled by a real Optuna trial, run
(the family and scheme as a real trial, the target timing a real model), and pass the same conformance checks as
the built-in entries (search/conformance.py, shipped in the package).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import onnx
import optuna
import pytest
import torch
from pydantic import Field, field_validator

from evaluators.errors import ConfigError
from evaluators.latency import TimingSettings, measure
from evaluators.targets import TARGETS, OnnxRuntimeTarget, TargetSpec, register_target
from experiments.tasks import digits
from experiments.teacher import get_teacher, teacher_to_bytes
from search import conformance
from search.builds import build_problem
from search.config import load, parse
from search.pick import PICK_POLICIES, Choice, PolicyWithSettings, make_policy, register_pick_policy
from search.station import measure_limits
from search.trial import TrialContext, run_trial
from spaces import PruningMethod, QuantizationScheme, StudentFamily, register_family, register_method, register_scheme
from spaces.knobs import IntKnob
from spaces.plan import sample
from spaces.pruning_knobs import PRUNING_METHODS
from spaces.quantization_knobs import SCHEMES
from spaces.student_knobs import STUDENT_FAMILIES

pytestmark = pytest.mark.fast


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


class Int4Blocks(QuantizationScheme):
    """MatMul/Gemm weights in 4 bits with a searched block size (weights per scale): an option of its own."""

    name: ClassVar[str] = "int4_blocks"

    block_size: IntKnob = [16, 32]  # its section: space.quantization.int4_blocks: {block_size: [...]}

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, v: IntKnob) -> IntKnob:
        for x in v if isinstance(v, list) else [v]:
            if x < 16 or x & (x - 1):
                raise ValueError(f"block_size must be a power of two >= 16, got {x}")
        return v

    @classmethod
    def apply(cls, model, choice, calibration, cache_dir):
        from spaces.quantization import int4_weight_only

        return int4_weight_only(model, block_size=choice.block_size)


class LnChannels(PruningMethod):
    """Zeroes whole output channels of each layer by their L`n` norm (torch.nn.utils.prune): an option of its own."""

    name: ClassVar[str] = "ln_channels"

    n: IntKnob = [1, 2]  # its section: space.pruning.ln_channels: {n: [...]}

    @classmethod
    def apply(cls, model, example_input, choice, protected, recover, batch):
        from torch import nn
        from torch.nn.utils import prune

        for layer in model.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)) and not any(layer is p for p in protected):
                prune.ln_structured(layer, "weight", amount=choice.ratio, n=choice.n, dim=0)
                prune.remove(layer, "weight")
        if recover is not None and choice.recover_epochs:
            recover(model, choice.recover_epochs)


class NoArenaCpu(OnnxRuntimeTarget):
    """ONNX Runtime's CPU provider without its memory arena, as a memory-tight device would run it."""

    kind: ClassVar[str] = "cpu_no_arena"
    provider: ClassVar[str] = "CPUExecutionProvider"
    install_hint: ClassVar[str] = "the standard onnxruntime package provides it"
    times_on_local_cpu: ClassVar[bool] = True  # its cores are kept free of trials, as for kind cpu

    def describe(self):
        return {**super().describe(), "memory_arena": False}


class MostAccurateUnder(PolicyWithSettings):
    """The most accurate front member whose file is at most max_size_mb (a setting of its own)."""

    name: ClassVar[str] = "most_accurate_under"

    max_size_mb: float = Field(1.0, gt=0)  # its section: pick.most_accurate_under: {max_size_mb: ...}

    def describe(self) -> str:
        return f"most accurate front member of at most {self.max_size_mb:g} MB"

    def choose(self, front, teacher_latency_ms):
        small = [c for c in front if c.size_mb <= self.max_size_mb]
        best = max(small or front, key=lambda c: (c.accuracy, -c.size_mb))
        return Choice(best, f"{self.describe()}: trial {best.trial}", bool(small))


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
    register_scheme(Int4Blocks)
    register_method(LnChannels)
    register_target(NoArenaCpu)
    register_pick_policy(MostAccurateUnder)
    yield
    STUDENT_FAMILIES.unregister(MLPStudents.name)
    SCHEMES.unregister(Fp32Folded.name)
    SCHEMES.unregister(Int4Blocks.name)
    PRUNING_METHODS.unregister(LnChannels.name)
    TARGETS.unregister(NoArenaCpu.kind)
    PICK_POLICIES.unregister(MostAccurateUnder.name)


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
    calibration, float_model = digits(0).x_calib[:32], conformance.small_float_model()
    conformance.check_quantization("fp32_folded", calibration, float_model)
    conformance.check_quantization("int4_blocks", calibration, float_model, options={"block_size": [16, 64]})
    conformance.check_target("cpu_no_arena", threads=1, batch_size=2)
    conformance.check_pick_policy("most_accurate_under", {"max_size_mb": 0.02})
    conformance.check_pruning("ln_channels", "l2", options={"n": [1, 2]})


def test_a_pruning_method_with_an_option_of_its_own_is_sampled_and_applied_from_the_file(tmp_path: Path) -> None:
    text = "space: {pruning: {ratio: [0.5], method: [structured, ln_channels], ln_channels: {n: [1, 2]}}}"
    space = load(_file(tmp_path, text)).space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        choice = sample(trial, space).pruning
        study.tell(trial, 0.0)
        if choice.method == "structured":  # the option is asked for only in trials that chose its method
            assert "ln_channels.n" not in trial.params and choice.options == ()
            continue
        assert choice.n == trial.params["ln_channels.n"] and choice.params()["pruning.n"] == choice.n
        assert choice.describe() == f"prune 0.5 ln_channels n={choice.n}"
        seen.add(choice.n)
    assert seen == {1, 2}
    not_searched = r"space.pruning.ln_channels: options of a method that method \['structured'\] does not include"
    with pytest.raises(ConfigError, match=not_searched):
        load(_file(tmp_path, "space: {pruning: {ln_channels: {n: 1}}}"))
    typo = "space.pruning.ln_channels.m: unknown key; 'm' is not allowed; choose one of: n"
    with pytest.raises(ConfigError, match=typo):
        load(_file(tmp_path, "space: {pruning: {method: ln_channels, ln_channels: {m: 1}}}"))


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\n" + text)
    return path


def test_a_scheme_with_an_option_of_its_own_is_sampled_and_applied_from_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, "space: {quantization: {schemes: [fp32, int4_blocks], int4_blocks: {block_size: [16, 64]}}}")
    space = load(path).space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    float_model, seen = conformance.small_float_model(), set()
    from spaces.quantization import quantize

    for _ in range(12):
        trial = study.ask()
        choice = sample(trial, space).quantization
        study.tell(trial, 0.0)
        if choice.scheme == "fp32":  # the option is asked for only in trials that chose its scheme
            assert "int4_blocks.block_size" not in trial.params and choice.options == ()
            continue
        assert choice.block_size == trial.params["int4_blocks.block_size"] in (16, 64)
        assert choice.params()["quantization.block_size"] == choice.block_size
        assert choice.describe() == f"int4_blocks block_size={choice.block_size}"
        graph = onnx.load_model_from_string(quantize(float_model, choice, None)).graph
        sizes = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
        assert sizes == {choice.block_size}
        seen.add(choice.block_size)
    assert seen == {16, 64}


@pytest.mark.parametrize(
    "section, message",
    [
        (
            "{schemes: [int4_blocks], int4_blocks: {block_size: 24}}",
            "space.quantization.int4_blocks.block_size: block_size must be a power of two >= 16, got 24",
        ),
        (
            "{schemes: [int4_blocks], int4_blocks: {blocksize: 32}}",
            "space.quantization.int4_blocks.blocksize: unknown key; 'blocksize' is not allowed; choose one of: "
            "block_size (did you mean 'block_size'?)",
        ),
        (
            "{schemes: [fp32], int4_blocks: {block_size: 32}}",
            "space.quantization.int4_blocks: options of a scheme that schemes ['fp32'] does not include",
        ),
        (
            "{schemes: [fp32], int4_blcks: {}}",
            "space.quantization.int4_blcks: unknown key; 'int4_blcks' is not allowed; choose one of: schemes, static, "
            "on_the_way, int4_blocks (did you mean 'int4_blocks'?)",
        ),
    ],
    ids=["bad value", "typo", "scheme not searched", "unknown section"],
)
def test_a_scheme_s_options_are_validated_at_the_edge(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(_file(tmp_path, f"space: {{quantization: {section}}}"))
    assert message in str(caught.value)


class GpuBoard(NoArenaCpu):
    """The same kind of class with other capabilities: a GPU target that needs the GPU build."""

    kind: ClassVar[str] = "gpu_board_for_test"
    uses_gpu: ClassVar[bool] = True
    times_on_local_cpu: ClassVar[bool] = False
    runtime_build: ClassVar[str | None] = "onnxruntime-gpu"


def test_a_target_kind_added_here_is_reached_from_the_file_and_its_flags_decide(tmp_path: Path) -> None:
    exp = load(_file(tmp_path, "target: {kind: cpu_no_arena, threads: 1, batch_size: 2}"))
    target_spec = exp.target.spec()
    assert target_spec.kind == "cpu_no_arena"
    settings = TimingSettings(threads=1, batch_size=2, warmup=2, min_repeats=5, max_seconds=0.2)
    from evaluators.targets import make_target

    target = make_target(target_spec)
    target.check()
    assert target.describe()["memory_arena"] is False and target.local_cpu()
    assert target.measure(conformance.small_float_model(), settings).p50_ms > 0
    # The build check, the station's memory cap: asked of the flags, never of the kind's name.
    assert build_problem("cpu_no_arena", {"onnxruntime": "1.0"}) is None
    assert measure_limits(target_spec, settings).capped
    register_target(GpuBoard)
    try:
        gpu = TargetSpec("gpu_board_for_test")
        assert not measure_limits(gpu, settings).capped
        problem = build_problem("gpu_board_for_test", {"onnxruntime": "1.0"})
        assert problem and "target 'gpu_board_for_test' needs the onnxruntime-gpu build" in problem
    finally:
        TARGETS.unregister(GpuBoard.kind)
    # A URL is for kinds that take one; an unknown kind names every registered one, the added one among them.
    with pytest.raises(ConfigError, match=r"url and token_file are for kinds that take a URL \(remote\) only"):
        parse({"name": "x", "target": {"kind": "cpu_no_arena", "url": "http://127.0.0.1:1"}})
    with pytest.raises(ConfigError, match=r"target.kind: 'cpu_no_arenna' is not allowed; choose one of: cpu, .*"):
        parse({"name": "x", "target": {"kind": "cpu_no_arenna"}})
    with pytest.raises(ConfigError, match="remote, cpu_no_arena .did you mean 'cpu_no_arena'"):
        parse({"name": "x", "target": {"kind": "cpu_no_arenna"}})


def test_a_pick_policy_with_a_setting_of_its_own_is_read_from_the_pick_section(tmp_path: Path) -> None:
    front = [conformance._candidate(0, 0.0, 1.0, 0.04), conformance._candidate(1, 0.5, 0.5, 0.02)]
    path = _file(tmp_path, "pick: {policy: most_accurate_under, most_accurate_under: {max_size_mb: 0.03}}")
    policy = make_policy(load(path).pick)
    assert policy.describe() == "most accurate front member of at most 0.03 MB"
    assert policy.choose(front, 1.0).candidate.trial == 1
    loose = make_policy(load(_file(tmp_path, "pick: {policy: most_accurate_under}")).pick)
    assert loose.max_size_mb == 1.0 and loose.choose(front, 1.0).candidate.trial == 0  # the default setting
    refused = {
        "pick: {policy: most_accurate_under, most_accurate_under: {max_size_mb: 0}}": (
            "pick.most_accurate_under.max_size_mb: Input should be greater than 0"
        ),
        "pick: {policy: most_accurate_under, most_accurate_under: {max_size: 1}}": (
            "pick.most_accurate_under.max_size: unknown key; 'max_size' is not allowed; choose one of: max_size_mb"
        ),
        "pick: {most_accurate_under: {max_size_mb: 1}}": (
            "pick.most_accurate_under: settings of a policy other than pick.policy 'fastest_within'"
        ),
    }
    for text, message in refused.items():
        with pytest.raises(ConfigError) as caught:
            load(_file(tmp_path, text))
        assert message in str(caught.value)


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

TARGET_EXTENSION = '''
from typing import ClassVar

from evaluators.targets import OnnxRuntimeTarget, register_target


@register_target
class BoardCpu(OnnxRuntimeTarget):
    """The board's CPU through ONNX Runtime's CPU provider."""

    kind: ClassVar[str] = "board_cpu"
    provider: ClassVar[str] = "CPUExecutionProvider"
    install_hint: ClassVar[str] = "the standard onnxruntime package provides it"
    times_on_local_cpu: ClassVar[bool] = True
'''

VALIDATE_TARGET = "from search.config import load; spec = load('board.yaml').target.spec(); print(spec.kind)"


def _python(tmp_path: Path, extensions: str, code: str = VALIDATE) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "SLIMSWEEP_EXTENSIONS": extensions,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
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


def test_a_target_kind_from_an_extension_module_is_reachable_from_an_experiment_file(tmp_path: Path) -> None:
    (tmp_path / "my_targets.py").write_text(TARGET_EXTENSION)
    (tmp_path / "board.yaml").write_text("name: board\ntarget: {kind: board_cpu, threads: 1}\n")
    done = _python(tmp_path, "my_targets", VALIDATE_TARGET)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "board_cpu"
    done = _python(tmp_path, "", VALIDATE_TARGET)  # without the variable, the kind is unknown
    assert done.returncode != 0
    assert (
        "target.kind: 'board_cpu' is not allowed; choose one of: cpu, cuda, tensorrt, openvino, remote" in done.stderr
    )


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
