"""A study knows what it was made for: the same name with another task, data, space, target, objectives or
constraints is refused naming what changed; the budget, parallelism or pick policy is a resume; a study made before
fingerprints is stamped, not refused; and status, front and pick on a misspelt name never create a study."""

from __future__ import annotations

import shutil

import optuna
import pytest
import yaml
from conftest import small_experiment

from evaluators.errors import ConfigError, SlimsweepError
from experiments.schema import SHIPPED_MNIST
from search.cli import main
from search.config import load
from search.fingerprint import changes, fingerprint
from search.stored import check_resume, load_existing, stored_names
from search.study import open_study

pytestmark = pytest.mark.fast

CHANGES = {
    "task": ({"task": {"name": "mnist-idx", "seed": 0, "teacher": {"epochs": 10}}}, ["task.name"]),
    "task seed": ({"task": {"name": "digits", "seed": 1, "teacher": {"epochs": 10}}}, ["task.seed"]),
    "teacher": ({"task": {"name": "digits", "seed": 0, "teacher": {"epochs": 11}}}, ["task.teacher.epochs"]),
    "space": ({"space": None}, ["space.students.cnn.width"]),
    "target": ({"target": {"threads": 2}}, ["target.threads"]),
    "objectives": ({"objectives": ["accuracy", "latency_p50_ms"]}, ["objectives"]),
    "constraints": ({"constraints": {"max_accuracy_drop": 1.0}}, ["constraints.max_accuracy_drop"]),
}


@pytest.mark.parametrize("what", list(CHANGES))
def test_the_same_name_made_for_something_else_is_refused_naming_what_changed(tmp_path, what):
    study = open_study(load(small_experiment(tmp_path, name="same")))
    study.tell(study.ask(), [90.0, 1.0, 1.0])
    section, named = CHANGES[what]
    if "space" in section:  # the same space but one choice fewer
        section = {"space": yaml.safe_load((tmp_path / "same.yaml").read_text())["space"]}
        section["space"]["students"]["cnn"]["width"] = [0.5]
    changed = load(small_experiment(tmp_path, name="same", **section))
    with pytest.raises(ConfigError) as err:
        open_study(changed)
    message = str(err.value)
    assert all(field in message for field in named), message
    assert "--fresh" in message and "new `name:`" in message
    assert len(optuna.load_study(study_name="same", storage=changed.storage_url).trials) == 1  # nothing mixed in


def test_budget_parallelism_pick_policy_and_sampler_are_a_resume(tmp_path):
    study = open_study(load(small_experiment(tmp_path, name="resume")))
    study.tell(study.ask(), [90.0, 1.0, 1.0])
    resumed = load(
        small_experiment(
            tmp_path,
            name="resume",
            search={"sampler": "tpe", "trials": 40, "parallel": 7, "seed": 3, "heartbeat_s": 30},
            pick={"policy": "fastest_within", "max_accuracy_drop": 0.5, "verify_seconds": 9.0},
        )
    )
    assert len(open_study(resumed).trials) == 1


def test_a_study_made_before_fingerprints_is_stamped_on_its_first_open_then_held_to_it(tmp_path):
    exp = load(small_experiment(tmp_path, name="old"))
    exp.out.mkdir(parents=True)
    directions = ["maximize", "minimize", "minimize"]
    old = optuna.create_study(study_name=exp.name, storage=exp.storage_url, directions=directions)
    old.set_user_attr("objectives", list(exp.objectives))
    old.tell(old.ask(), [90.0, 1.0, 1.0])
    assert len(open_study(exp).trials) == 1  # not refused: stamped with the file it was opened with
    assert "slimsweep.fingerprint" in optuna.load_study(study_name="old", storage=exp.storage_url).user_attrs
    with pytest.raises(ConfigError, match="task.seed"):
        open_study(load(small_experiment(tmp_path, name="old", task={"name": "digits", "seed": 5})))


def test_data_is_known_by_what_it_holds_not_by_where_it_is(tmp_path):
    copy = tmp_path / "elsewhere" / "mnist"
    shutil.copytree(SHIPPED_MNIST, copy)
    shipped = load(small_experiment(tmp_path, name="m", task={"name": "mnist-idx"}))
    moved = load(small_experiment(tmp_path, name="m", task={"name": "mnist-idx", "path": str(copy)}))
    assert changes(fingerprint(shipped), fingerprint(moved)) == {}  # the same files in another folder: a resume
    with (copy / "t10k-labels-idx1-ubyte.gz").open("ab") as f:
        f.write(b"\0")
    assert changes(fingerprint(shipped), fingerprint(moved)) == {"data": ["data.path"]}


def test_pick_and_sync_with_a_changed_file_exit_2_naming_it(tmp_path, capsys):
    open_study(load(small_experiment(tmp_path, name="cli")))
    changed = small_experiment(tmp_path, name="cli", target={"batch_size": 8})
    for command in ("pick", "sync"):
        assert main([command, str(changed)]) == 2
        err = capsys.readouterr().err
        assert "target (target.batch_size)" in err and "--fresh" in err and "Traceback" not in err, err


def _shared(tmp_path, name: str):
    """An experiment whose study lives in a storage shared by several experiments (one SQLite file)."""
    return small_experiment(tmp_path, name=name, search={"storage": f"sqlite:///{tmp_path / 'shared.db'}"})


@pytest.mark.parametrize("command", ["status", "front", "pick", "sync"])
def test_a_misspelt_name_creates_no_study_and_names_those_that_exist(tmp_path, capsys, command):
    open_study(load(_shared(tmp_path, "digits-run")))
    typo = _shared(tmp_path, "digits-rnu")
    assert main([command, str(typo)]) == 1
    err = capsys.readouterr().err
    assert "no sweep found for 'digits-rnu'" in err and "did you mean 'digits-run'" in err, err
    assert stored_names(load(typo).storage_url) == ["digits-run"]


def test_status_on_an_unreachable_postgresql_store_is_a_clear_error(tmp_path, capsys):
    path = small_experiment(tmp_path, name="pg", search={"storage": "postgresql://u:secret@127.0.0.1:1/x"})
    for command in ("status", "front"):
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert "search.storage: cannot read the study store" in err and "127.0.0.1:1" in err, err
        assert "secret" not in err and "Traceback" not in err


def test_a_misspelt_name_is_refused_by_the_loader_itself(tmp_path):
    open_study(load(_shared(tmp_path, "one")))
    with pytest.raises(SlimsweepError, match="it holds: one"):
        load_existing(load(_shared(tmp_path, "two")))
    assert stored_names(load(_shared(tmp_path, "two")).storage_url) == ["one"]


def test_a_run_is_refused_before_any_work_and_the_check_writes_nothing(tmp_path):
    first = load(_shared(tmp_path, "early"))
    check_resume(first)  # no study yet: nothing to hold it to, and none is made
    assert stored_names(first.storage_url) == []
    open_study(first)
    check_resume(first)  # the same file: a resume
    changed = small_experiment(
        tmp_path,
        name="early",
        search={"storage": first.storage_url},
        task={"name": "digits", "seed": 3, "teacher": {"epochs": 10}},
    )
    with pytest.raises(ConfigError, match=r"changed: task \(task.seed\)"):
        check_resume(load(changed))


def test_a_setting_stated_at_its_default_is_the_same_study(tmp_path):
    # A release that adds a setting with a default must not refuse every existing study on its first resume.
    plain = load(small_experiment(tmp_path, name="d"))
    stated = load(small_experiment(tmp_path, name="d", target={"kind": "cpu", "threads": plain.target.threads}))
    assert changes(fingerprint(plain), fingerprint(stated)) == {}
    other = load(small_experiment(tmp_path, name="d", target={"threads": plain.target.threads + 1}))
    assert changes(fingerprint(plain), fingerprint(other)) == {"target": ["target.threads"]}
