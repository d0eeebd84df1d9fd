"""Sampling compression plans from a real Optuna study: a parameter is asked for only where it means something."""

from __future__ import annotations

import optuna
import pytest

from search.config import parse
from spaces.plan import CompressionPlan, sample
from spaces.pruning_knobs import PruningChoice
from spaces.quantization_knobs import QuantizationChoice
from spaces.student_knobs import StudentChoice

pytestmark = pytest.mark.fast

optuna.logging.set_verbosity(optuna.logging.WARNING)

SECTIONS = ("student", "pruning", "quantization")


def space_of(space: dict):
    return parse({"name": "plan-test", "space": space}).space


def ask(space, n: int, seed: int = 0) -> list[tuple[optuna.Trial, CompressionPlan]]:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, sample(trial, space)))
    return out


def test_teacher_trials_have_no_cnn_params_and_cnn_trials_have_them():
    pairs = ask(space_of({}), 40)  # the default space: teacher or a CNN family
    teachers = [(t, p) for t, p in pairs if p.student.kind == "teacher"]
    cnns = [(t, p) for t, p in pairs if p.student.kind == "cnn"]
    assert teachers and cnns
    for trial, plan in teachers:
        assert trial.params["student"] == "teacher"
        assert not [k for k in trial.params if k.startswith("cnn.")]
        assert not [k for k in plan.params() if k.startswith("student.") and k != "student.kind"]
    for trial, plan in cnns:
        assert trial.params["student"] == "cnn"
        # epochs and lr are fixed in the default space, so they are not Optuna params.
        assert {k for k in trial.params if k.startswith("cnn.")} == {
            "cnn.width",
            "cnn.depth",
            "cnn.temperature",
            "cnn.alpha",
        }
        s = plan.student
        assert (s.width, s.depth, s.temperature, s.alpha) == (
            trial.params["cnn.width"],
            trial.params["cnn.depth"],
            trial.params["cnn.temperature"],
            trial.params["cnn.alpha"],
        )
        assert plan.params()["student.width"] == trial.params["cnn.width"]


def test_recover_epochs_is_sampled_only_when_something_is_pruned():
    space = space_of({"pruning": {"ratio": [0.0, 0.5], "recover_epochs": [1, 3]}})
    pairs = ask(space, 40)
    pruned = [(t, p) for t, p in pairs if p.pruning.ratio > 0]
    unpruned = [(t, p) for t, p in pairs if p.pruning.ratio == 0]
    assert pruned and unpruned
    for trial, plan in unpruned:
        assert "pruning.recover_epochs" not in trial.params
        assert plan.pruning.recover_epochs == 0
        assert "pruning.recover_epochs" not in plan.params()
        assert "pruning.round_to" not in plan.params()
    for trial, plan in pruned:
        assert trial.params["pruning.ratio"] == 0.5
        assert plan.pruning.recover_epochs == trial.params["pruning.recover_epochs"]
        assert plan.params()["pruning.recover_epochs"] == plan.pruning.recover_epochs
        assert plan.params()["pruning.round_to"] == 8
    assert {p.pruning.recover_epochs for _, p in pruned} == {1, 3}  # a real choice


def test_fixed_knobs_are_not_optuna_params_but_are_in_the_plan():
    space = space_of(
        {
            "students": {"teacher": False, "cnn": {"epochs": 5, "lr": 0.01}},
            "pruning": {"ratio": [0.25, 0.5], "recover_epochs": 2, "round_to": 16},
        }
    )
    for trial, plan in ask(space, 10):
        assert not {"cnn.epochs", "cnn.lr", "pruning.recover_epochs", "student"} & set(trial.params)
        params = plan.params()
        assert (params["student.kind"], params["student.epochs"], params["student.lr"]) == ("cnn", 5, 0.01)
        assert (params["pruning.recover_epochs"], params["pruning.round_to"]) == (2, 16)


def test_single_choice_lists_and_empty_ranges_are_not_sampled():
    space = space_of(
        {
            "students": {"teacher": False, "cnn": {"width": [0.5], "depth": [2], "alpha": {"low": 0.6, "high": 0.6}}},
            "pruning": {"ratio": [0.25]},
            "quantization": {"schemes": ["int8_dynamic"]},
        }
    )
    for trial, plan in ask(space, 5):
        assert set(trial.params) == {"cnn.temperature"}  # the only knob left with a choice
        assert (plan.student.width, plan.student.depth, plan.student.alpha) == (0.5, 2, 0.6)
        assert plan.pruning.ratio == 0.25
        assert plan.quantization.scheme == "int8_dynamic"


def test_ranges_respect_bounds_and_log_scale():
    space = space_of(
        {
            "students": {
                "teacher": False,
                "cnn": {
                    "temperature": {"low": 2.0, "high": 6.0},
                    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
                },
            }
        }
    )
    pairs = ask(space, 300)
    trial = pairs[0][0]
    assert trial.distributions["cnn.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert trial.distributions["cnn.temperature"] == optuna.distributions.FloatDistribution(2.0, 6.0)
    lrs = [p.student.lr for _, p in pairs]
    temps = [p.student.temperature for _, p in pairs]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs)
    assert all(2.0 <= t <= 6.0 for t in temps)
    # Log-uniform puts 2/3 of the draws below 1e-2; uniform would put 9% there.
    assert 0.55 < sum(lr < 1e-2 for lr in lrs) / len(lrs) < 0.78
    assert 0.35 < sum(t < 4.0 for t in temps) / len(temps) < 0.65


def test_sampled_values_have_the_types_the_builders_expect():
    for _, plan in ask(space_of({"students": {"teacher": False}}), 10):
        assert type(plan.student.depth) is int and type(plan.student.epochs) is int
        assert type(plan.student.width) is float and type(plan.pruning.ratio) is float
        assert plan.student.width in (0.25, 0.5, 0.75) and plan.student.depth in (1, 2)
        assert plan.quantization.scheme in ("fp32", "int8_dynamic", "int8_static_qdq")


def test_params_are_dotted_names_of_the_three_knobs():
    for _, plan in ask(space_of({}), 20):
        params = plan.params()
        for key in params:
            section, _, name = key.partition(".")
            assert section in SECTIONS and name and "." not in name, key
        assert params["quantization.scheme"] == plan.quantization.scheme
        assert params["pruning.ratio"] == plan.pruning.ratio


@pytest.mark.parametrize(
    "plan, label",
    [
        (CompressionPlan(), "teacher | no prune | fp32"),
        (
            CompressionPlan(
                StudentChoice("cnn", width=0.5, depth=1), PruningChoice(0.25, 4), QuantizationChoice("int8_static_qdq")
            ),
            "cnn w0.5 d1 | prune 0.25 | int8_static_qdq",
        ),
        (
            CompressionPlan(
                StudentChoice("cnn", width=0.75, depth=2), PruningChoice(0.0), QuantizationChoice("int8_dynamic")
            ),
            "cnn w0.75 d2 | no prune | int8_dynamic",
        ),
    ],
)
def test_describe_is_a_short_readable_label(plan, label):
    assert plan.describe() == label


def test_describe_of_sampled_plans_matches_their_params():
    for _, plan in ask(space_of({}), 20):
        label = plan.describe()
        params = plan.params()
        assert label.endswith(f" | {params['quantization.scheme']}")
        if params["student.kind"] == "cnn":
            assert label.startswith(f"cnn w{params['student.width']:g} d{params['student.depth']} | ")
        else:
            assert label.startswith("teacher | ")
        assert ("no prune" in label) == (params["pruning.ratio"] == 0)
