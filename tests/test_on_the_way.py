"""Models a trial makes on its way (the trained student before pruning, the pruned model before quantization) are
measured and recorded as candidates of their own, at no trial of the budget; on real digits, Optuna and MLflow, the
first through Ray as a user runs it, the driver's rules after it through the in-process executor (the real trial, no
Ray to start, no pick after it)."""

from __future__ import annotations

import onnx
import optuna
from conftest import small_experiment, sweep_here
from mlflow.tracking import MlflowClient

from search.cli import main
from search.config import load
from search.study import on_the_way, open_study, read, repeats, spent

PLAN = {"student": "cnn", "pruning.ratio": 0.5, "quantization.scheme": "int8_static_qdq"}


def _experiment(tmp_path, ratios: list[float], schemes: tuple[str, ...] = ("fp32", "int8_static_qdq")):
    """The one-trial experiment whose trial prunes and quantizes a trained student; its study holds that plan."""
    space = {
        "students": {"teacher": True, "cnn": {"width": [0.5], "depth": [1], "epochs": 2}},
        "pruning": {"ratio": ratios, "recover_epochs": 1},
        "quantization": {"schemes": list(schemes)},
    }
    path = small_experiment(
        tmp_path,
        name="made",
        space=space,
        search={"sampler": "random", "trials": 1},
        constraints={"max_accuracy_drop": 50.0},  # two epochs: what is measured here is which models, not how good
        pick={"max_accuracy_drop": 50.0, "verify_seconds": 1.0},  # the minimum: the pick is not looked at here
    )
    exp = load(path)
    open_study(exp).enqueue_trial(PLAN)  # the one trial of the budget prunes and quantizes a trained student
    return exp, path


def _sweep(tmp_path, ratios: list[float]):
    """The user's command: `slimsweep run`, its trial on a Ray worker."""
    exp, path = _experiment(tmp_path, ratios)
    assert main(["run", str(path), "--quiet"]) == 0
    return exp, optuna.load_study(study_name=exp.name, storage=exp.storage_url), path


def _conv_channels(path) -> int:
    graph = onnx.load(str(path)).graph
    weights = {t.name: t for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type in ("Conv", "QLinearConv")]
    return sum(next(weights[i].dims[0] for i in n.input if i in weights and len(weights[i].dims) == 4) for n in convs)


def test_a_trial_that_prunes_and_quantizes_records_the_models_it_made_on_its_way(tmp_path):
    exp, study, _ = _sweep(tmp_path, [0.0, 0.5])
    (parent,) = spent(study)  # the budget was one trial, and one trial ran
    assert read(parent).describe == "cnn w0.5 d1 | prune 0.5 | int8_static_qdq"
    made = {read(t).describe: t for t in on_the_way(study)}
    assert set(made) == {
        "cnn w0.5 d1 | no prune | fp32",
        "cnn w0.5 d1 | prune 0.5 | fp32",
        "cnn w0.5 d1 | no prune | int8_static_qdq",  # the student before pruning, in the space's other scheme
    }
    files = {d: exp.out / "trials" / f"trial-{t.number}.onnx" for d, t in made.items()}
    unpruned, pruned_fp32 = files["cnn w0.5 d1 | no prune | fp32"], files["cnn w0.5 d1 | prune 0.5 | fp32"]
    int8 = exp.out / "trials" / f"trial-{parent.number}.onnx"
    for t in made.values():
        rec = read(t)
        assert t.state == optuna.trial.TrialState.COMPLETE and rec.made_by == parent.number
        assert rec.metrics["accuracy"] > 50.0 and rec.metrics["latency_p50_ms"] > 0
    # Before pruning the student has more channels; before quantization the same graph is larger on disk.
    assert _conv_channels(unpruned) > _conv_channels(pruned_fp32)
    assert pruned_fp32.stat().st_size > int8.stat().st_size
    # Each is a run in MLflow, as any trial is.
    client = MlflowClient(exp.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(exp.name).experiment_id], "tags.`slimsweep.role` = 'trial'"
    )
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == sorted(
        [parent.number, *(t.number for t in made.values())]
    )


def test_a_model_whose_plan_is_not_in_the_space_is_not_recorded(tmp_path):
    exp, _ = _experiment(tmp_path, [0.25, 0.5])  # ratio 0 is no choice: the unpruned student is no plan of it
    study = sweep_here(exp)
    assert [read(t).describe for t in on_the_way(study)] == ["cnn w0.5 d1 | prune 0.5 | fp32"]
    assert len(spent(study)) == 1


def test_a_plan_proposed_again_after_it_was_made_on_the_way_is_answered_from_it_at_no_cost(tmp_path):
    exp, path = _experiment(tmp_path, [0.0, 0.5])
    study = sweep_here(exp)
    made = next(t for t in on_the_way(study) if read(t).describe == "cnn w0.5 d1 | no prune | fp32")
    proposed = len(study.trials)
    study.enqueue_trial(made.params)  # the sampler proposes the unpruned student itself
    study = sweep_here(load(path, {"search.trials": 2}))
    again = study.trials[proposed]
    assert read(again).reuse_of == made.number and read(again).made_by is None  # answered from it, not run
    assert again.values == made.values and not read(again).stages
    # A repeat costs nothing (search/budget.py): the budget's second trial is another plan, trained.
    assert [t.number for t in repeats(study)] == [again.number] and len(spent(study)) == 2
    assert not [t for t in on_the_way(study) if read(t).made_by == again.number]  # it made nothing on a way


def test_a_trained_model_is_measured_in_the_spaces_other_schemes_at_no_trial_of_the_budget(tmp_path):
    space = {
        "students": {"teacher": True, "cnn": {"width": [0.5], "depth": [1], "epochs": 2}},
        "pruning": {"ratio": [0.0], "recover_epochs": 1},
        "quantization": {"schemes": ["fp32", "int8_dynamic", "int8_static_qdq"]},
    }
    path = small_experiment(
        tmp_path,
        name="schemes",
        space=space,
        search={"sampler": "random", "trials": 1},
        constraints={"max_accuracy_drop": 50.0},
    )
    exp = load(path)
    open_study(exp).enqueue_trial({"student": "cnn", "pruning.ratio": 0.0, "quantization.scheme": "fp32"})
    study = sweep_here(exp)
    (parent,) = spent(study)
    made = {read(t).describe: t for t in on_the_way(study)}
    # The fp32 student trained once, and its int8 models, quantized from it, are candidates of their own.
    assert set(made) == {"cnn w0.5 d1 | no prune | int8_dynamic", "cnn w0.5 d1 | no prune | int8_static_qdq"}
    fp32_file = exp.out / "trials" / f"trial-{parent.number}.onnx"
    for t in made.values():
        rec = read(t)
        assert rec.made_by == parent.number and rec.metrics["accuracy"] > 50.0
        assert (exp.out / "trials" / f"trial-{t.number}.onnx").stat().st_size < fp32_file.stat().st_size
    assert "distill" not in read(made["cnn w0.5 d1 | no prune | int8_dynamic"]).stages  # measured, not trained

    # Off, the trial makes none of them: only what it made on its own way (nothing, for an unpruned fp32 plan).
    (tmp_path / "off").mkdir()
    off = small_experiment(
        tmp_path / "off",
        name="schemes",
        space={**space, "quantization": {**space["quantization"], "on_the_way": False}},
        search={"sampler": "random", "trials": 1},
        constraints={"max_accuracy_drop": 50.0},
    )
    exp_off = load(off)
    open_study(exp_off).enqueue_trial({"student": "cnn", "pruning.ratio": 0.0, "quantization.scheme": "fp32"})
    assert not on_the_way(sweep_here(exp_off))


def test_a_pruned_plans_student_is_measured_unpruned_in_every_scheme_too(tmp_path):
    # A hand-chained pipeline quantizes the student it keeps, pruned or not: the student before pruning in each
    # scheme is a plan of the space, made on the trial's way at no training.
    exp, _ = _experiment(tmp_path, [0.0, 0.5], schemes=("fp32", "int8_dynamic", "int8_static_qdq"))
    study = sweep_here(exp)
    (parent,) = spent(study)
    made = {read(t).describe for t in on_the_way(study)}
    assert made == {
        "cnn w0.5 d1 | no prune | fp32",
        "cnn w0.5 d1 | no prune | int8_dynamic",
        "cnn w0.5 d1 | no prune | int8_static_qdq",
        "cnn w0.5 d1 | prune 0.5 | fp32",
        "cnn w0.5 d1 | prune 0.5 | int8_dynamic",
    }
    assert all(read(t).made_by == parent.number for t in on_the_way(study))
