"""Student families (CNN, MobileNetV2, ResNet), their knobs and sampling, Hinton distillation on the real digits
task, and the on-disk teacher cache."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pydantic import ValidationError
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock

from evaluators.errors import TrialFailure
from experiments.tasks import digits
from experiments.teacher import get_teacher, teacher_key
from search.config import load
from spaces.export import to_onnx
from spaces.student_knobs import StudentChoice, StudentSpace, sample_student
from spaces.students import CNN, Distillation, build, distill_loss, downsampling, parameter_count, suits, train

pytestmark = pytest.mark.fast

CLASSES = 10


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convolutions on a shared 2-core box run faster (and steadier) on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return digits()


def accuracy(model: torch.nn.Module, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(dim=1) == torch.from_numpy(y)).float().mean())


def hand_count(channels: tuple[int, int, int], depth: int, in_channels: int = 1) -> int:
    """Parameters from the layer shapes: 3x3 convs without bias, BatchNorm weight+bias, linear head."""
    total, c_in = 0, in_channels
    for c_out in channels:
        for _ in range(depth):
            total += c_in * c_out * 3 * 3 + 2 * c_out
            c_in = c_out
    return total + c_in * CLASSES + CLASSES


def test_small_student_has_fewer_parameters_than_the_teacher():
    teacher = CNN(1, CLASSES, width=1.0, depth=2)
    student = CNN(1, CLASSES, width=0.25, depth=1)
    assert parameter_count(teacher) == hand_count((32, 64, 128), depth=2) == 288_170
    assert parameter_count(student) == hand_count((8, 16, 32), depth=1) == 6_274
    assert parameter_count(student) < parameter_count(teacher) / 40


@pytest.mark.parametrize("width", [0.1, 0.2, 0.33, 0.4, 0.6, 0.75, 0.9, 1.3])
def test_widths_are_multiples_of_8_near_the_asked_width(width):
    model = CNN(1, CLASSES, width=width, depth=2)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6
    for stage, base in enumerate((32, 64, 128)):
        for conv in convs[2 * stage : 2 * stage + 2]:
            assert conv.out_channels % 8 == 0
            assert conv.out_channels == 8 or abs(conv.out_channels - base * width) <= 4
    assert model.classifier.in_features == convs[-1].out_channels
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, CLASSES)


def test_the_teacher_choice_is_an_independent_copy_of_the_teacher():
    teacher = CNN(1, CLASSES, width=0.25, depth=1)
    copy = build(StudentChoice("teacher"), teacher, 1, CLASSES)
    assert copy is not teacher
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), teacher.state_dict().values()))
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    assert not torch.equal(next(copy.parameters()), next(teacher.parameters()))
    student = build(StudentChoice("cnn", width=0.5, depth=1), teacher, 1, CLASSES)
    assert parameter_count(student) == hand_count((16, 32, 64), depth=1)


def test_distillation_loss_with_alpha_0_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(32, CLASSES, generator=g), torch.randn(32, CLASSES, generator=g)
    labels = torch.randint(0, CLASSES, (32,), generator=g)
    loss = distill_loss(student, teacher, labels, Distillation(epochs=1, alpha=0.0, temperature=4.0))
    assert torch.allclose(loss, F.cross_entropy(student, labels))


def test_distillation_loss_matches_hintons_formula():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(32, CLASSES, generator=g), torch.randn(32, CLASSES, generator=g)
    labels = torch.randint(0, CLASSES, (32,), generator=g)
    alpha, t = 0.7, 3.0
    p_teacher = torch.softmax(teacher / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student / t, dim=1))).sum(dim=1).mean()
    expected = alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student, labels)
    loss = distill_loss(student, teacher, labels, Distillation(epochs=1, alpha=alpha, temperature=t))
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(0)
    model = CNN(1, CLASSES, width=0.5, depth=1)
    train(model, data.x_train, data.y_train, Distillation(epochs=8, alpha=0.0, seed=0))
    return model


def test_a_trained_teacher_classifies_digits(teacher, data):
    assert accuracy(teacher, data.x_val, data.y_val) > 0.90


def test_a_distilled_student_learns_from_the_teacher(teacher, data):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(0)
    student = CNN(1, CLASSES, width=0.25, depth=1)
    chance = accuracy(student, data.x_val, data.y_val)
    loss = train(
        student, data.x_train, data.y_train, Distillation(epochs=8, alpha=0.7, temperature=4.0, seed=0), teacher=teacher
    )
    assert loss == loss and loss > 0  # the last epoch's mean loss, finite and positive
    assert chance < 0.3
    assert accuracy(student, data.x_val, data.y_val) > 0.85
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is left alone


def test_a_diverging_learning_rate_fails_the_trial_and_says_so(data):
    torch.manual_seed(0)
    model = CNN(1, CLASSES, width=0.25, depth=1)
    with pytest.raises(TrialFailure) as failure:
        train(model, data.x_train, data.y_train, Distillation(epochs=2, lr=1e30, alpha=0.0, seed=0))
    message = str(failure.value)
    assert "lr=1e+30" in message
    assert "lower the learning rate" in message
    assert "at epoch 1" in message


def test_the_teacher_is_trained_once_then_read_from_the_cache(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMSWEEP_CACHE", str(tmp_path))
    settings = dict(seed=0, width=0.25, depth=1, epochs=1, lr=0.003)
    first, cached = get_teacher(data, **settings)
    assert cached is False
    files = sorted(p.name for p in (tmp_path / "teachers").iterdir())
    assert files == [f"{teacher_key('digits', **settings)}.pt"]  # no half-written temporary left behind

    second, cached = get_teacher(data, **settings)
    assert cached is True
    assert second is not first
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)
    x = torch.from_numpy(data.x_val[:50])
    with torch.no_grad():
        assert torch.equal(first(x), second(x))

    longer = dict(settings, epochs=2)
    assert teacher_key("digits", **longer) != teacher_key("digits", **settings)
    _, cached = get_teacher(data, **longer)
    assert cached is False
    assert len(list((tmp_path / "teachers").iterdir())) == 2


@pytest.mark.parametrize(
    "change", [dict(task="other"), dict(seed=1), dict(width=0.5), dict(depth=3), dict(epochs=31), dict(lr=0.001)]
)
def test_every_teacher_setting_changes_the_cache_key(change):
    base = dict(task="digits", seed=0, width=1.0, depth=2, epochs=30, lr=0.003)
    assert teacher_key(**dict(base, **change)) != teacher_key(**base)
    assert teacher_key(**base) == teacher_key(**dict(reversed(list(base.items()))))  # stable, order-free


# --- the families and their knobs -------------------------------------------------------------------------------

DIGITS_HW, MNIST_HW = (8, 8), (28, 28)
FAMILIES = {
    "cnn": StudentChoice("cnn", width=0.5, stage_depths=(1, 2, 1), kernel_size=5),
    "mobilenetv2": StudentChoice("mobilenetv2", width=0.35, settings="compact"),
    "resnet": StudentChoice("resnet", blocks=(1, 2, 1), base_width=16),
}
# Inverted-residual tables as written in the MobileNetV2 paper (Table 2) and in the compact preset: (t, c, n, s).
STANDARD_TABLE = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
COMPACT_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1)]


def convs(model: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def map_sizes(model: torch.nn.Module, hw: tuple[int, int]) -> list[tuple[int, int]]:
    """The spatial size of every conv's output on one forward pass."""
    sizes: list[tuple[int, int]] = []
    hooks = [c.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:]))) for c in convs(model)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, *hw))
    for h in hooks:
        h.remove()
    return sizes


def test_the_default_cnn_keeps_the_cached_teachers_layout():
    # Teachers cached on disk were saved from this layout: 3 stages x 2 blocks of 3x3 conv-BN-ReLU, pools between.
    state = CNN(1, CLASSES, width=1.0, depth=2).state_dict()
    conv_shapes = {
        f"features.{i}.weight": shape
        for i, shape in [
            (0, (32, 1, 3, 3)),
            (3, (32, 32, 3, 3)),
            (7, (64, 32, 3, 3)),
            (10, (64, 64, 3, 3)),
            (14, (128, 64, 3, 3)),
            (17, (128, 128, 3, 3)),
        ]
    }
    assert {k: tuple(v.shape) for k, v in state.items() if k.endswith(".weight") and v.dim() == 4} == conv_shapes
    assert tuple(state["classifier.weight"].shape) == (CLASSES, 128)
    assert len(state) == 6 * 6 + 2  # per block conv weight + BN weight, bias, mean, var, count; head weight, bias
    same = build(StudentChoice("cnn", width=1.0, depth=2), None, 1, CLASSES, DIGITS_HW).state_dict()
    assert {k: v.shape for k, v in same.items()} == {k: v.shape for k, v in state.items()}


@pytest.mark.parametrize("hw", [DIGITS_HW, MNIST_HW], ids=["digits-8x8", "mnist-28x28"])
@pytest.mark.parametrize("kind", list(FAMILIES))
def test_every_family_builds_for_the_input_and_runs_in_onnx_runtime(kind, hw):
    torch.manual_seed(0)
    model = build(FAMILIES[kind], None, 1, CLASSES, hw).eval()
    x = torch.randn(5, 1, *hw)
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.shape == (5, CLASSES)
    session = ort.InferenceSession(to_onnx(model, x[:1]), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (5, CLASSES)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    if kind != "cnn":  # the stride rule: no feature map below 4x4 (the CNN keeps its max-pools, 8 -> 2)
        assert min(min(s) for s in map_sizes(model, hw)) >= 4


@pytest.mark.parametrize(
    "kind, hw, final",
    [
        ("mobilenetv2", DIGITS_HW, (4, 4)),  # stem 8 -> 4, every later stride dropped
        ("mobilenetv2", MNIST_HW, (4, 4)),  # 28 -> 14 -> 7 -> 4, then stride 1
        ("resnet", DIGITS_HW, (4, 4)),  # stem and stage 1 at 8, stage 2 -> 4, stage 3 stays 4
        ("resnet", MNIST_HW, (7, 7)),  # 28, 28, 14, 7
    ],
)
def test_small_inputs_get_fewer_downsamplings_and_keep_maps_of_at_least_4(kind, hw, final):
    model = build(FAMILIES[kind], None, 1, CLASSES, hw)
    assert map_sizes(model, hw)[-1] == final


def test_at_imagenet_size_mobilenetv2_is_torchvisions_own():
    ours = build(StudentChoice("mobilenetv2", width=1.0, settings="standard"), None, 3, CLASSES, (224, 224))
    theirs = torchvision.models.mobilenet_v2(num_classes=CLASSES)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert [c.stride for c in convs(ours)] == [c.stride for c in convs(theirs)]
    assert downsampling((224, 224), [2, 1, 2, 2, 2, 1, 2, 1]) == [2, 1, 2, 2, 2, 1, 2, 1]
    assert downsampling((8, 8), [2, 1, 2, 2, 2, 1, 2, 1]) == [2, 1, 1, 1, 1, 1, 1, 1]


def divisible8(v: float) -> int:
    """torchvision's channel rounding, written out: nearest multiple of 8, at least 8, never 10% below v."""
    out = max(8, int(v + 4) // 8 * 8)
    return out + 8 if out < 0.9 * v else out


@pytest.mark.parametrize("settings, table", [("compact", COMPACT_TABLE), ("standard", STANDARD_TABLE)])
@pytest.mark.parametrize("width", [0.35, 1.0])
def test_mobilenetv2_width_and_settings_set_its_inverted_residual_blocks(settings, table, width):
    model = build(StudentChoice("mobilenetv2", width=width, settings=settings), None, 1, CLASSES, DIGITS_HW)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == sum(n for _, _, n, _ in table) == {"compact": 8, "standard": 17}[settings]
    expected_out = [divisible8(c * width) for _, c, n, _ in table for _ in range(n)]
    assert [b.out_channels for b in blocks] == expected_out
    assert model.features[0][0].in_channels == 1 and model.features[0][0].out_channels == divisible8(32 * width)
    inp = divisible8(32 * width)
    expansions = [t for t, _, n, _ in table for _ in range(n)]
    for block, t, out in zip(blocks, expansions, expected_out, strict=True):
        hidden = round(inp * t)
        depthwise = [c for c in convs(block) if c.groups > 1]
        assert len(depthwise) == 1  # one depthwise 3x3 per block: groups == channels
        assert depthwise[0].groups == depthwise[0].in_channels == depthwise[0].out_channels == hidden
        inp = out


def test_mobilenetv2_width_changes_its_channels_and_size():
    narrow = build(StudentChoice("mobilenetv2", width=0.35), None, 1, CLASSES, DIGITS_HW)
    wide = build(StudentChoice("mobilenetv2", width=1.0), None, 1, CLASSES, DIGITS_HW)
    assert sum(c.out_channels for c in convs(narrow)) < 0.5 * sum(c.out_channels for c in convs(wide))
    assert parameter_count(narrow) < parameter_count(wide) / 3


def cnn_hand_count(channels: tuple[int, ...], depths: tuple[int, ...], kernel: int, in_channels: int = 1) -> int:
    """Parameters from the layer shapes: k x k convs without bias, BatchNorm weight+bias, linear head."""
    total, c_in = 0, in_channels
    for c_out, depth in zip(channels, depths, strict=True):
        for _ in range(depth):
            total += c_in * c_out * kernel * kernel + 2 * c_out
            c_in = c_out
    return total + c_in * CLASSES + CLASSES


def test_cnn_kernel_size_and_stage_depths_change_the_convolutions():
    model = build(StudentChoice("cnn", width=0.5, stage_depths=(1, 3, 2), kernel_size=5), None, 1, CLASSES)
    layers = list(model.features)
    per_stage, count = [], 0
    for layer in layers + [torch.nn.MaxPool2d(2)]:  # count convs between the pools
        if isinstance(layer, torch.nn.MaxPool2d):
            per_stage, count = per_stage + [count], 0
        elif isinstance(layer, torch.nn.Conv2d):
            count += 1
    assert per_stage == [1, 3, 2]
    assert all(c.kernel_size == (5, 5) and c.padding == (2, 2) for c in convs(model))
    assert parameter_count(model) == cnn_hand_count((16, 32, 64), (1, 3, 2), kernel=5)
    uniform = build(StudentChoice("cnn", width=0.5, depth=2), None, 1, CLASSES)
    assert parameter_count(uniform) == cnn_hand_count((16, 32, 64), (2, 2, 2), kernel=3)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, CLASSES)


def resnet_hand_count(blocks: tuple[int, ...], base: int, in_channels: int = 1) -> int:
    """Parameters from the layer shapes: 3x3 stem, two 3x3 convs per BasicBlock, 1x1 projections, BN, head."""
    total = in_channels * base * 9 + 2 * base
    c_in = base
    for i, n in enumerate(blocks):
        planes = base * 2**i
        for b in range(n):
            total += c_in * planes * 9 + planes * planes * 9 + 4 * planes
            if b == 0 and (i > 0 or c_in != planes):  # the first block of a later stage changes shape
                total += c_in * planes + 2 * planes
            c_in = planes
    return total + c_in * CLASSES + CLASSES


@pytest.mark.parametrize("blocks, base", [((1, 1, 1), 16), ((2, 2, 2), 16), ((1, 2), 32), ((1, 1, 1, 1), 8)])
def test_resnet_blocks_and_base_width_set_its_stages(blocks, base):
    model = build(StudentChoice("resnet", blocks=blocks, base_width=base), None, 1, CLASSES, MNIST_HW)
    stages = list(model.stages)
    assert [sum(isinstance(m, BasicBlock) for m in stage) for stage in stages] == list(blocks)
    assert [stage[0].conv1.out_channels for stage in stages] == [base * 2**i for i in range(len(blocks))]
    assert model.stem[0].out_channels == base and model.stem[0].in_channels == 1
    assert parameter_count(model) == resnet_hand_count(blocks, base)


def test_suits_says_why_a_family_cannot_take_an_input_and_build_without_its_size_fails_clearly():
    for kind in ("teacher", "cnn", "mobilenetv2", "resnet"):
        assert suits(kind, (1, 8, 8)) is None and suits(kind, (1, 28, 28)) is None
    assert suits("cnn", (1, 4, 4)) is None
    reason = suits("mobilenetv2", (1, 4, 6))
    assert reason and "at least 8x8" in reason and "got 4x6" in reason
    assert "at least 4x4" in suits("cnn", (1, 3, 3))
    assert "image inputs (C, H, W)" in suits("resnet", (64,))
    assert suits("teacher", (64,)) is None
    with pytest.raises(ValueError, match="needs input_hw"):
        build(StudentChoice("mobilenetv2"), None, 1, CLASSES)


@pytest.mark.parametrize("kind", ["mobilenetv2", "resnet"])
def test_torchvision_students_distilled_from_a_small_teacher_classify_digits(kind, teacher, data):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(0)
    choice = {
        "mobilenetv2": StudentChoice("mobilenetv2", width=0.35, settings="compact", epochs=4, lr=0.01),
        "resnet": StudentChoice("resnet", blocks=(1, 1, 1), base_width=16, epochs=3, lr=0.01),
    }[kind]
    student = build(choice, teacher, 1, CLASSES, DIGITS_HW)
    chance = accuracy(student, data.x_val, data.y_val)
    d = Distillation(epochs=choice.epochs, lr=choice.lr, temperature=choice.temperature, alpha=choice.alpha, seed=0)
    loss = train(student, data.x_train, data.y_train, d, teacher=teacher)
    assert math.isfinite(loss) and loss > 0
    assert chance < 0.3
    assert accuracy(student, data.x_val, data.y_val) > 0.6
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


# --- the space: schema, sampling, params ---------------------------------------------------------------------------

FAMILY_PARAMS = {
    "teacher": set(),
    "cnn": {"width", "depth", "kernel_size", "temperature", "alpha", "epochs", "lr"},
    "mobilenetv2": {"width", "settings", "temperature", "alpha", "epochs", "lr"},
    "resnet": {"blocks", "base_width", "temperature", "alpha", "epochs", "lr"},
}


def ask(space: StudentSpace, n: int, seed: int = 0) -> list[tuple[optuna.Trial, StudentChoice]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, sample_student(trial, space)))
    return out


def test_each_trial_samples_and_records_only_its_familys_knobs():
    space = StudentSpace.model_validate({"mobilenetv2": {}, "resnet": {}})
    pairs = ask(space, 80)
    assert {c.kind for _, c in pairs} == {"teacher", "cnn", "mobilenetv2", "resnet"}
    for trial, choice in pairs:
        kind = choice.kind
        assert trial.params["student"] == kind
        assert {k for k in trial.params if k != "student"} <= {f"{kind}.{n}" for n in FAMILY_PARAMS[kind]}
        assert set(choice.params()) == {"student.kind"} | {f"student.{n}" for n in FAMILY_PARAMS[kind]}
        for name, value in trial.params.items():
            if name != "student":
                assert choice.params()[f"student.{name.split('.')[1]}"] == value
    for trial, choice in pairs:
        if choice.kind == "mobilenetv2":
            assert choice.settings in ("compact", "standard") and choice.width in (0.35, 0.5, 0.75, 1.0)
        if choice.kind == "resnet":
            assert choice.blocks in ((1, 1, 1), (2, 2, 2)) and choice.base_width in (16, 32)
            assert trial.params["resnet.blocks"] == "-".join(map(str, choice.blocks))
    # a real choice, not the first value every time
    assert len({c.settings for _, c in pairs if c.kind == "mobilenetv2"}) == 2
    assert len({c.blocks for _, c in pairs if c.kind == "resnet"}) == 2


def test_cnn_stage_depths_and_kernel_size_are_sampled_in_place_of_depth():
    space = StudentSpace.model_validate(
        {"teacher": False, "cnn": {"stage_depths": [[1, 1, 1], [1, 2, 2]], "kernel_size": [3, 5]}}
    )
    pairs = ask(space, 30)
    for trial, choice in pairs:
        assert "cnn.depth" not in trial.params and "student.depth" not in choice.params()
        assert choice.stage_depths in ((1, 1, 1), (1, 2, 2)) and choice.kernel_size in (3, 5)
        assert choice.params()["student.stage_depths"] == trial.params["cnn.stage_depths"]
        assert choice.params()["student.kernel_size"] == trial.params["cnn.kernel_size"]
        model = build(choice, None, 1, CLASSES, DIGITS_HW)
        assert len(convs(model)) == sum(choice.stage_depths)
        assert {c.kernel_size for c in convs(model)} == {(choice.kernel_size,) * 2}
    assert len({(c.stage_depths, c.kernel_size) for _, c in pairs}) == 4


def test_the_digits_experiment_keeps_its_meaning():
    students = load("experiments/digits.yaml").space.students
    assert students.kinds() == ["teacher", "cnn"]
    assert students.mobilenetv2 is None and students.resnet is None
    assert students.cnn.stage_depths is None and students.cnn.kernel_size == 3
    for trial, _ in ask(students, 20):
        assert set(trial.params) <= {"student", "cnn.width", "cnn.depth", "cnn.temperature", "cnn.alpha"}


@pytest.mark.parametrize(
    "choice, params, label",
    [
        (StudentChoice("teacher"), {"student.kind": "teacher"}, "teacher"),
        (
            StudentChoice("cnn", width=0.5, depth=1, epochs=12),
            {
                "student.kind": "cnn",
                "student.width": 0.5,
                "student.depth": 1,
                "student.kernel_size": 3,
                "student.temperature": 4.0,
                "student.alpha": 0.7,
                "student.epochs": 12,
                "student.lr": 0.003,
            },
            "cnn w0.5 d1",
        ),
        (
            StudentChoice("cnn", width=0.5, stage_depths=(1, 2, 2), kernel_size=5, epochs=12),
            {
                "student.kind": "cnn",
                "student.width": 0.5,
                "student.stage_depths": "1-2-2",
                "student.kernel_size": 5,
                "student.temperature": 4.0,
                "student.alpha": 0.7,
                "student.epochs": 12,
                "student.lr": 0.003,
            },
            "cnn w0.5 d1-2-2 k5",
        ),
        (
            StudentChoice("mobilenetv2", width=0.35, settings="standard", epochs=6),
            {
                "student.kind": "mobilenetv2",
                "student.width": 0.35,
                "student.settings": "standard",
                "student.temperature": 4.0,
                "student.alpha": 0.7,
                "student.epochs": 6,
                "student.lr": 0.003,
            },
            "mobilenetv2 w0.35 standard",
        ),
        (
            StudentChoice("resnet", blocks=(2, 2, 2), base_width=32, epochs=6),
            {
                "student.kind": "resnet",
                "student.blocks": "2-2-2",
                "student.base_width": 32,
                "student.temperature": 4.0,
                "student.alpha": 0.7,
                "student.epochs": 6,
                "student.lr": 0.003,
            },
            "resnet b2-2-2 w32",
        ),
    ],
)
def test_params_and_describe_name_only_the_chosen_familys_knobs(choice, params, label):
    assert choice.params() == params
    assert choice.describe() == label


@pytest.mark.parametrize(
    "students, fragments",
    [
        ({"mobilenetv2": {"settings": ["compakt"]}}, ["'compakt'", "compact, standard", "did you mean 'compact'"]),
        ({"mobilenetv2": {"width": [0.5, -0.35]}}, ["width multiplier must be > 0", "-0.35"]),
        ({"cnn": {"kernel_size": [3, 4]}}, ["kernel_size must be odd", "got 4"]),
        ({"cnn": {"stage_depths": [[1, 2]]}}, ["3 stages", "[1, 2]"]),
        ({"cnn": {"stage_depths": [1, 2, 2]}}, ["write [[1, 2, 2]]", "got [1, 2, 2]"]),
        ({"cnn": {"depth": 2, "stage_depths": [[1, 2, 2]]}}, ["not both", "depth=2"]),
        ({"resnet": {"blocks": [[1, 0, 1]]}}, [">= 1 in every stage", "[1, 0, 1]"]),
        ({"resnet": {"blocks": [[1, 1, 1, 1, 1]]}}, ["1 to 4 stages", "[1, 1, 1, 1, 1]"]),
        ({"resnet": {"base_width": [16, 0]}}, ["base_width must be > 0", "got 0"]),
        ({"resnet": {"alpha": 1.5}}, ["alpha", "[0, 1]", "1.5"]),
        ({"teacher": False, "cnn": None}, ["no student left"]),
    ],
)
def test_bad_student_values_are_refused_naming_the_value(students, fragments):
    with pytest.raises(ValidationError) as err:
        StudentSpace.model_validate(students)
    for fragment in fragments:
        assert fragment in str(err.value)
