"""A whole sweep on real parts: local Ray, SQLite Optuna study, SQLite MLflow store, ONNX Runtime timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import yaml
from conftest import small_experiment, sweep_here
from mlflow.tracking import MlflowClient

from experiments.tasks import digits
from search.cli import main
from search.config import load
from search.ledger import MAX_ASKS_PER_TRIAL
from search.pareto import front as pareto_front
from search.pick import Choice, register_pick_policy
from search.study import finished, read, spent


@register_pick_policy
class Smallest:
    """A policy registered from this test module, never touching search/: the smallest front member."""

    name = "smallest_for_test"

    @classmethod
    def from_config(cls, pick):
        return cls()

    def describe(self) -> str:
        return "smallest front member on disk"

    def choose(self, front, teacher_latency_ms):
        best = min(front, key=lambda c: (c.size_mb, c.trial))
        return Choice(best, f"{self.describe()}: trial {best.trial}, {best.size_mb:.4f} MB", True)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One finished sweep, shared by the checks below (a sweep is the expensive part)."""
    folder = tmp_path_factory.mktemp("sweep")
    path = small_experiment(folder)
    code = main(["run", str(path), "--trials", "6", "--quiet"])
    exp = load(path, {"search.trials": 6})
    # Later checks re-pick and rewrite the card: keep the sweep's own, so no check depends on the order they run in.
    card = exp.out / "model_card.json"
    if card.is_file():
        (folder / "sweep_card.json").write_bytes(card.read_bytes())
    return code, exp, folder


def _study(exp):
    return optuna.load_study(study_name=exp.name, storage=exp.storage_url)


def _spent_its_budget(study, budget: int = 6) -> bool:
    """The sweep trained its budget, or fewer only because the sampler ran out of new plans first: each training also
    measures its model before pruning and in the space's other schemes, so a 12-plan space can be measured whole in
    fewer trainings (then the loop stops after MAX_ASKS_PER_TRIAL proposals per plan of the budget)."""
    n = len(spent(study))
    asked = [t for t in study.trials if read(t).made_by is None]
    return n == budget or (n < budget and len(asked) >= MAX_ASKS_PER_TRIAL * budget)


def _runs(exp, role):
    client = MlflowClient(exp.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name)
    return client, client.search_runs([experiment.experiment_id], f"tags.`slimsweep.role` = '{role}'")


def test_sweep_finishes_its_budget_and_beats_the_teacher(swept):
    code, exp, folder = swept
    assert code == 0
    study = _study(exp)
    assert _spent_its_budget(study)  # the models made on its way are extra
    card = json.loads((folder / "sweep_card.json").read_text())
    teacher = card["teacher"]
    # The pick honours the policy against the teacher's measured figures.
    assert card["met_policy"] is True
    assert card["measured"]["accuracy_drop"] <= 5.0
    assert card["measured"]["accuracy"] == pytest.approx(teacher["accuracy"] - card["measured"]["accuracy_drop"])
    assert card["plan"]["quantization.scheme"] in {"fp32", "int8_static_qdq"}
    assert card["why"]


def test_mlflow_holds_parent_children_front_and_charts(swept):
    _, exp, _ = swept
    client, parents = _runs(exp, "sweep")
    assert len(parents) == 1
    parent = parents[0]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"experiment.yaml", "pareto.csv", "pareto.png", "pareto.html", "model_card.json"} <= artifacts
    assert "teacher_accuracy" in parent.data.metrics

    _, children = _runs(exp, "trial")
    numbers = sorted(t.number for t in finished(_study(exp)))
    assert (
        _spent_its_budget(_study(exp)) and sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == numbers
    )
    front = {c.trial for c in pareto_front(_study(exp))}  # each model once: repeats answered from it are not members
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        number = int(run.data.tags["optuna.trial_number"])
        assert run.data.tags["pareto"] == ("true" if number in front else "false")
        assert {"accuracy", "accuracy_drop", "latency_p50_ms", "latency_p95_ms", "size_mb"} <= set(run.data.metrics)
        assert "quantization.scheme" in run.data.params and "student.kind" in run.data.params
        assert "model.onnx" in {a.path for a in client.list_artifacts(run.info.run_id)}
        if number in front:
            assert "latency_p50_ms_verified" in run.data.metrics

    csv_rows = (exp.out / "pareto.csv").read_text().strip().splitlines()[1:]
    assert {int(row.split(",")[0]) for row in csv_rows} == front


def test_registered_alias_loads_and_predicts_in_a_fresh_process(swept):
    _, exp, folder = swept
    x = digits(0).x_val[:16]
    np.save(folder / "x.npy", x)
    script = (
        "import sys, numpy as np, mlflow\n"
        f"mlflow.set_tracking_uri({exp.tracking_uri!r})\n"
        f"model = mlflow.pyfunc.load_model('models:/{exp.name}@deployable')\n"
        f"out = model.predict(np.load({str(folder / 'x.npy')!r}))\n"
        "out = out['logits'] if isinstance(out, dict) else out\n"
        f"np.save({str(folder / 'y.npy')!r}, np.asarray(out))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)
    registered = np.load(folder / "y.npy")
    session = ort.InferenceSession(str(exp.out / "deployable.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x})[0]
    np.testing.assert_allclose(registered, expected, rtol=1e-5, atol=1e-5)
    assert (registered.argmax(1) == digits(0).y_val[:16]).mean() > 0.8


def test_front_and_pick_commands_reuse_the_sweep(swept, capsys):
    _, exp, folder = swept
    path = folder / f"{exp.name}.yaml"
    capsys.readouterr()
    assert main(["front", str(path)]) == 0
    out = capsys.readouterr().out
    for c in pareto_front(_study(exp)):
        assert f"{c.trial}" in out
    before = len(finished(_study(exp)))
    # A policy no member can meet falls back to the most accurate member, and says so.
    assert main(["pick", str(path), "--max-accuracy-drop", "0", "--max-latency-ms", "0.000001"]) == 0
    card = json.loads((exp.out / "model_card.json").read_text())
    assert card["met_policy"] is False and "no front member meets the policy" in card["why"]
    best = max(_study(exp).best_trials, key=lambda t: read(t).metrics["accuracy"])
    assert card["measured"]["accuracy"] == read(best).metrics["accuracy"]
    assert len(finished(_study(exp))) == before  # no trial ran again
    client = MlflowClient(exp.tracking_uri)
    assert str(client.get_model_version_by_alias(exp.name, "deployable").version) == card["registry"]["version"]


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # A learning rate this large makes the distillation loss NaN: a real failure, caught by the trial itself.
    space = {
        "students": {"teacher": True, "cnn": {"width": [0.25], "depth": [1], "epochs": 2, "lr": 1.0e30}},
        "pruning": {"ratio": [0.0]},
        "quantization": {"schemes": ["fp32"]},
    }
    path = small_experiment(tmp_path, name="failing", space=space, search={"sampler": "random", "trials": 5, "seed": 0})
    exp = load(path)
    # The loop and the real trial in this process: the failure is the trial's own (run_trial catches it and returns
    # it, as on a Ray worker), and nothing here looks at Ray or the pick.
    study = sweep_here(exp)
    done = finished(study)
    failed = [t for t in done if t.state.name == "FAIL"]
    # The budget: five plans run; a repeat of the teacher answered from its first result costs nothing beside them.
    assert len(spent(study)) == 5 and failed, "the random sampler should have drawn a cnn student at least once"
    assert all(t.params["student"] == "cnn" for t in failed)
    for t in failed:
        rec = read(t)
        assert "lower the learning rate" in rec.failure
        # The traceback came back from the worker: the frames down to the raise, not just the reason.
        assert rec.traceback.startswith("Traceback") and "in run_trial" in rec.traceback
        assert rec.reuse_of is None  # a failed plan is run again when drawn again, never answered from a failure
    client, children = _runs(exp, "trial")
    failed_runs = [r for r in children if r.info.status == "FAILED"]
    assert len(failed_runs) == len(failed)
    for run in failed_runs:
        assert "nan" in run.data.tags["slimsweep.failure"]
        text = client.download_artifacts(run.info.run_id, "traceback.txt", str(tmp_path))
        assert "lower the learning rate" in Path(text).read_text()

    # Only two plans exist (the teacher, or the failing student): the teacher drawn again is answered from its
    # first result, not trained again, and counted.
    complete = [t for t in done if t.state.name == "COMPLETE"]
    first = min(t.number for t in complete)
    reused = [t for t in complete if t.number != first]
    for t in reused:
        assert read(t).reuse_of == first and t.params == study.trials[first].params
        assert t.values == study.trials[first].values
        assert not read(t).stages  # nothing ran
    parent = client.search_runs(
        [client.get_experiment_by_name(exp.name).experiment_id], "tags.`slimsweep.role` = 'sweep'"
    )[0]
    assert parent.data.metrics["trials_reused"] == len(reused)
    assert {
        r.data.tags.get("slimsweep.reuse_of")
        for r in children
        if int(r.data.tags["optuna.trial_number"]) in {t.number for t in reused}
    } <= {str(first)}


def test_a_pick_policy_registered_by_a_test_module_is_reachable_from_the_experiment_file(swept, capsys):
    _, exp, folder = swept
    data = yaml.safe_load((folder / f"{exp.name}.yaml").read_text())
    data["pick"] = {"policy": "smallest_for_test"}
    path = folder / "smallest.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["pick", str(path)]) == 0
    card = json.loads((exp.out / "model_card.json").read_text())
    assert card["policy_name"] == "smallest_for_test" and card["policy"] == "smallest front member on disk"
    # A repeat answered from an earlier trial shares its figures: the front's members are the trials that made them.
    front = [t for t in _study(exp).best_trials if read(t).reuse_of is None]
    assert card["trial"] == min(front, key=lambda t: (read(t).metrics["size_mb"], t.number)).number


def test_an_unknown_pick_policy_is_refused_at_the_edge_naming_the_registered_ones(tmp_path, capsys):
    path = small_experiment(tmp_path, name="badpick", pick={"policy": "fastest"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "pick.policy: 'fastest' is not allowed" in err and "fastest_within" in err
    assert not (tmp_path / "outputs").exists()
