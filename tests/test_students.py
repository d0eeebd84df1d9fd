"""The CNN student family, Hinton distillation on the real digits task, and the on-disk teacher cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evaluators.errors import TrialFailure
from experiments.tasks import digits
from experiments.teacher import get_teacher, teacher_key
from spaces.student_knobs import StudentChoice
from spaces.students import CNN, Distillation, build, distill_loss, parameter_count, train

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
    loss = train(student, data.x_train, data.y_train, Distillation(epochs=8, alpha=0.7, temperature=4.0, seed=0),
                 teacher=teacher)
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


@pytest.mark.parametrize("change", [dict(task="other"), dict(seed=1), dict(width=0.5), dict(depth=3),
                                    dict(epochs=31), dict(lr=0.001)])
def test_every_teacher_setting_changes_the_cache_key(change):
    base = dict(task="digits", seed=0, width=1.0, depth=2, epochs=30, lr=0.003)
    assert teacher_key(**dict(base, **change)) != teacher_key(**base)
    assert teacher_key(**base) == teacher_key(**dict(reversed(list(base.items()))))  # stable, order-free
