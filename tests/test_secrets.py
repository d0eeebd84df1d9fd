"""Secrets stay secret: a password or token given in an experiment file appears in no output, MLflow param or
artifact, model card, status or error message; and the edge's smaller checks (a port that is not a number,
`output_dir: ~/x`)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import run_cli, small_experiment

from evaluators.errors import ConfigError
from evaluators.secrets import mask_secrets, masked
from search.config import load

pytestmark = pytest.mark.fast

SECRET = "S3cretPw"
PG_STORAGE = f"postgresql://slim:{SECRET}@db.example:5432/studies"
PG_TRACKING = f"postgresql+psycopg://slim:{SECRET}@db.example:5432/mlflow"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (PG_STORAGE, "postgresql://slim:***@db.example:5432/studies"),
        (f"https://agent:{SECRET}@jetson.local:8470", "https://agent:***@jetson.local:8470"),
        (f"postgresql://slim:{SECRET}/with@sign@db/x", "postgresql://slim:***@db/x"),  # typed raw, not %-encoded
        (f"got 'mysql://u:{SECRET}@h/db' and http://a:{SECRET}@b:1", "got 'mysql://u:***@h/db' and http://a:***@b:1"),
        (f"http://h:5000/x?password={SECRET}&user=u", "http://h:5000/x?password=***&user=u"),
        (
            f"postgresql://h/db?sslmode=require&access_token={SECRET}",
            "postgresql://h/db?sslmode=require&access_token=***",
        ),
        (f"host=db password={SECRET} user=slim", "host=db password=*** user=slim"),
    ],
)
def test_mask_secrets_hides_the_password_and_keeps_what_says_where(text, kept):
    assert mask_secrets(text) == kept


@pytest.mark.parametrize(
    "text", ["postgresql://slim@db.example:5432/studies", "sqlite:////tmp/x/study.db", "http://127.0.0.1:5000/#/x"]
)
def test_mask_secrets_leaves_a_url_without_a_secret_as_it_is(text):
    assert mask_secrets(text) == text


def test_masked_data_hides_secret_keys_but_not_a_token_file_path():
    data = {"token": SECRET, "token_file": "/etc/agent.token", "urls": [PG_STORAGE], "threads": 2}
    assert masked(data) == {
        "token": "***",
        "token_file": "/etc/agent.token",
        "urls": ["postgresql://slim:***@db.example:5432/studies"],
        "threads": 2,
    }


def test_a_target_spec_never_shows_its_token():
    from evaluators.targets import TargetSpec

    spec = TargetSpec(kind="remote", url=f"https://agent:{SECRET}@jetson.local:8470", token="agent-token-0123456789")
    for shown in (repr(spec), str(spec), f"{spec}", repr([spec])):
        assert "agent-token-0123456789" not in shown and SECRET not in shown and "jetson.local" in shown


def _exp(tmp_path: Path, **changes):
    return load(small_experiment(tmp_path, name="secret", **changes))


def test_the_experiment_shows_no_password_yet_uses_it(tmp_path):
    exp = _exp(tmp_path, search={"storage": PG_STORAGE}, tracking={"uri": PG_TRACKING})
    for shown in (repr(exp), str(exp), repr(exp.search), str(exp.tracking), f"{exp!r}"):
        assert SECRET not in shown and "slim:***@db.example" in shown
    assert exp.storage_url == PG_STORAGE and exp.tracking_uri == PG_TRACKING  # what connects keeps it


def test_dry_run_report_and_sweep_params_mask_the_storage_password(tmp_path):
    from search.dryrun import as_text, report
    from search.sweep import _sweep_params

    exp = _exp(tmp_path, search={"storage": PG_STORAGE}, tracking={"uri": PG_TRACKING})
    rep = report(exp, "cpu: checked here, it runs")
    for text in (as_text(rep), json.dumps(rep), json.dumps(_sweep_params(exp))):
        assert SECRET not in text and "slim:***@db.example" in text


def test_the_experiment_artifact_and_params_in_mlflow_hold_no_password(tmp_path):
    from mlflow.artifacts import load_text

    from search.sweep import _open_tracking

    exp = _exp(tmp_path, search={"storage": PG_STORAGE})  # the MLflow store itself: SQLite in the output folder
    tracker = _open_tracking(exp, "driver-1", offline=False)
    run = tracker.client.get_run(tracker.parent_id)
    config = load_text(f"{run.info.artifact_uri}/experiment.yaml")
    assert yaml.safe_load(config)["search"]["storage"] == "postgresql://slim:***@db.example:5432/studies"
    assert SECRET not in config and SECRET not in json.dumps(run.data.params)
    tracker.end("FINISHED")


def test_status_masks_the_tracking_password(tmp_path):
    from search.config import METRIC_DIRECTIONS
    from search.status import as_text, sweep_status

    exp = _exp(tmp_path, tracking={"uri": PG_TRACKING})
    exp.out.mkdir(parents=True)
    directions = [METRIC_DIRECTIONS[o] for o in exp.objectives]
    optuna.create_study(study_name=exp.name, storage=exp.storage_url, directions=directions)
    state = sweep_status(exp)
    assert state["tracking_uri"] == "postgresql+psycopg://slim:***@db.example:5432/mlflow"
    assert SECRET not in json.dumps(state) + as_text(state)


def test_the_model_card_holds_no_password_of_a_remote_target(tmp_path):
    from search.config import METRIC_DIRECTIONS
    from search.deliver import model_card
    from search.pareto import Candidate
    from search.pick import Choice, make_policy
    from search.study import Baseline, set_baseline

    token = tmp_path / "agent.token"
    token.write_text("agent-token-0123456789")
    url = f"https://agent:{SECRET}@jetson.local:8470"
    exp = _exp(tmp_path, target={"kind": "remote", "url": url, "token_file": str(token)})
    study = optuna.create_study(directions=[METRIC_DIRECTIONS[o] for o in exp.objectives])
    teacher = {"accuracy": 99.0, "latency_p50_ms": 1.0, "latency_p95_ms": 1.1, "size_mb": 1.0, "params": 1000.0}
    set_baseline(study, Baseline(teacher=teacher, input_shape=[1, 8, 8], station={}))
    study.add_trial(optuna.trial.create_trial(values=[98.0, 0.5, 0.5]))
    member = Candidate(0, "cnn w0.25", 98.0, 1.0, 0.5, 0.6, 0.5, 100.0)
    card = model_card(exp, study, Choice(member, "fastest", True), make_policy(exp.pick), 1.0)
    shown = json.dumps(card)
    assert card["target"]["url"] == "https://agent:***@jetson.local:8470"
    assert SECRET not in shown and "agent-token-0123456789" not in shown


def test_a_bad_database_url_is_refused_without_showing_its_password(tmp_path):
    with pytest.raises(ConfigError) as bad_scheme:
        _exp(tmp_path, search={"storage": f"postgresql+nosuchdriver://slim:{SECRET}@db/x"})
    message = str(bad_scheme.value)
    assert "search.storage" in message and "slim:***@db" in message and SECRET not in message


def test_a_non_numeric_postgresql_port_is_a_config_error_naming_the_field(tmp_path):
    with pytest.raises(ConfigError) as bad_port:
        _exp(tmp_path, tracking={"uri": f"postgresql://slim:{SECRET}@db.example:abc/mlflow"})
    message = str(bad_port.value)
    assert message.count("\n") == 0 and "tracking.uri" in message and "port" in message
    assert SECRET not in message and "db.example:abc" in message


def test_the_cli_says_what_is_wrong_with_a_database_url_and_never_its_password(tmp_path):
    unreachable = f"postgresql://slim:{SECRET}@127.0.0.1:1/studies"  # nothing listens on port 1
    bad_port = f"postgresql://slim:{SECRET}@127.0.0.1:5x432/studies"
    for storage in (unreachable, bad_port):
        path = small_experiment(tmp_path, name="secret", search={"storage": storage})
        proc = run_cli("run", str(path), "--dry-run", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "search.storage" in proc.stderr and "Traceback" not in proc.stderr
        assert SECRET not in proc.stdout + proc.stderr


def test_preflight_errors_mask_a_token_in_the_tracking_url():
    from search.preflight import _check_url

    with pytest.raises(ConfigError) as down:
        _check_url("tracking.uri", f"http://mlflow:{SECRET}@127.0.0.1:1")
    assert "not reachable" in str(down.value) and SECRET not in str(down.value)


def test_output_dir_under_home_is_checked_and_used_as_the_same_folder(tmp_path, monkeypatch):
    from search.cli import _outputs_beside_file

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    exp = _exp(tmp_path, output_dir="~/runs")
    assert exp.out == tmp_path / "home" / "runs" / "secret"
    args = type("Args", (), {"experiment": str(tmp_path / "secret.yaml"), "output_dir": None})()
    assert _outputs_beside_file(exp, args).out == exp.out  # not a folder named '~' beside the file
    (tmp_path / "home" / "runs").write_text("a file where the folder should be")
    with pytest.raises(ConfigError, match="output_dir"):
        _exp(tmp_path, output_dir="~/runs")
