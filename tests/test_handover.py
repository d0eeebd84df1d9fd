"""The hand-over as a user meets it: the README's deploy snippets run as written, the registry leads to the trial,
and deployable.onnx, model_card.json and the alias never disagree, even after a crash in between."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, wait_for
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits
from ux_sweep import finished_sweep

from search import handover
from search.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    return finished_sweep(tmp_path_factory)


def readme_block(tag: str) -> str:
    """The fenced block right after `<!-- tested: TAG ... -->` in the README, exactly as written."""
    match = re.search(rf"<!-- tested: {re.escape(tag)}\b[^>]*-->\s*```\w*\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no block tagged {tag}"
    return match.group(1)


def _env() -> dict[str, str]:
    """A user's shell: the venv's tools on PATH, none of the test process's MLflow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _labels(text: str) -> list[int]:
    return [int(n) for n in re.search(r"\[([\d\s]+)\]", text).group(1).split()]


@pytest.mark.parametrize("tag", ["deploy-mlflow", "deploy-onnxruntime"])
def test_readme_python_snippets_give_labels_from_a_fresh_process(swept, tag):
    proc = subprocess.run(
        [sys.executable, "-c", readme_block(tag)],
        cwd=swept.folder,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _labels(proc.stdout) == list(load_digits().target[:5])  # [0 1 2 3 4], as the README says
    assert not (swept.folder / "mlflow.db").exists()  # no stray empty store in the folder it ran from


def test_readme_serve_snippet_answers_with_scores_whose_argmax_is_the_label(swept):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 5001)) == 0:
            pytest.skip("port 5001, which the README's serve snippet uses, is taken on this machine")
    server = subprocess.Popen(
        ["bash", "-c", readme_block("deploy-serve")],
        cwd=swept.folder,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    call = readme_block("deploy-serve-call").splitlines()[0]
    try:

        def answered() -> bool:
            if server.poll() is not None:
                raise AssertionError(server.stdout.read()[-3000:])
            try:
                urllib.request.urlopen("http://127.0.0.1:5001/health", timeout=2)
                return True
            except OSError:
                return False

        wait_for(answered, timeout=240, every=1.0)
        proc = subprocess.run(
            ["bash", "-c", call], cwd=swept.folder, env=_env(), capture_output=True, text=True, timeout=60
        )
        predictions = json.loads(proc.stdout)["predictions"]
        scores = predictions["logits"] if isinstance(predictions, dict) else predictions
        assert np.asarray(scores).shape == (1, 10) and int(np.argmax(scores)) == 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_version_comes_from_the_picked_trials_run_with_its_metrics_tags_and_io(swept):
    exp = swept.exp
    card = json.loads((exp.out / "model_card.json").read_text())
    client = MlflowClient(exp.tracking_uri)
    version = client.get_model_version_by_alias(exp.name, "deployable")
    assert str(version.version) == card["registry"]["version"]
    run = client.get_run(version.run_id)
    assert run.data.tags["slimsweep.role"] == "trial"
    assert run.data.tags["optuna.trial_number"] == str(card["trial"])
    assert run.data.metrics["accuracy"] == pytest.approx(card["measured"]["accuracy"])
    assert run.data.tags["slimsweep.pick"] == "true"
    assert run.info.status == "FINISHED"
    # The run spans the trial's real start and end (Optuna's record), not the moment it was written.
    import optuna

    trial = optuna.load_study(study_name=exp.name, storage=exp.storage_url).trials[card["trial"]]
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    assert (run.info.end_time - run.info.start_time) / 1000 == pytest.approx(seconds, abs=0.01)
    assert version.tags["slimsweep.trial"] == str(card["trial"]) and version.tags["plan"] == card["plan_summary"]
    assert {"accuracy", "latency_p50_ms_verified", "speedup_vs_teacher", "policy"} <= set(version.tags)
    assert card["why"] in version.description and "divided by 16" in version.description
    model = client.get_registered_model(exp.name)
    assert "logits" in model.description and "0, 1, 2" in model.description
    assert card["io"]["input"]["preprocessing"].startswith("scikit-learn's 8x8 digit images")
    assert card["io"]["class_names"] == [str(i) for i in range(10)]
    # The logged model has a signature and an input example in the task's real scale (0..1, not 0..16).
    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(exp.tracking_uri)
    local = mlflow.artifacts.download_artifacts(
        f"models:/{exp.name}/{version.version}", dst_path=str(swept.folder / "dl")
    )
    logged = Model.load(local)
    assert logged.signature is not None
    example = np.asarray(logged.load_input_example(local))
    assert example.shape[1:] == (1, 8, 8) and 0 <= example.min() and example.max() <= 1.0
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert f"Picked trial {card['trial']}" in parent.data.tags["mlflow.note.content"]


def test_repicking_an_unchanged_choice_moves_nothing(swept):
    exp = swept.exp
    client = MlflowClient(exp.tracking_uri)
    # The shared sweep may have been re-picked with another policy by a test run before this one: pick with the
    # file's own policy first, then again.
    assert main(["pick", str(swept.path)]) == 0
    before = {v.version for v in client.search_model_versions(f"name = '{exp.name}'")}
    alias = client.get_model_version_by_alias(exp.name, "deployable").version
    onnx = (exp.out / "deployable.onnx").read_bytes()
    assert main(["pick", str(swept.path)]) == 0
    assert {v.version for v in client.search_model_versions(f"name = '{exp.name}'")} == before
    assert client.get_model_version_by_alias(exp.name, "deployable").version == alias
    assert (exp.out / "deployable.onnx").read_bytes() == onnx


class Crash(BaseException):
    """Stands for the process dying at a chosen step (not an Exception, so nothing on the way catches it)."""


def _agree(exp) -> None:
    """The files and the alias name the same model."""
    client = MlflowClient(exp.tracking_uri)
    card = json.loads((exp.out / "model_card.json").read_text())
    version = client.get_model_version_by_alias(exp.name, "deployable")
    assert card["registry"]["version"] == str(version.version)
    assert version.tags["slimsweep.trial"] == str(card["trial"])
    assert version.tags["slimsweep.sha256"] == handover.sha256((exp.out / "deployable.onnx").read_bytes())


def test_a_crash_after_the_alias_moved_is_completed_by_the_next_pick(swept, monkeypatch):
    exp = swept.exp
    other = ["--max-accuracy-drop", "0", "--max-latency-ms", "0.000001"]  # the most accurate member instead
    real = os.replace

    def dies_renaming_the_model(src, dst):
        if Path(dst).name == "deployable.onnx":
            raise Crash()
        real(src, dst)

    monkeypatch.setattr(handover.os, "replace", dies_renaming_the_model)
    with pytest.raises(Crash):
        main(["pick", str(swept.path), *other])
    assert handover.pending(exp.out) is not None
    status = subprocess.run(
        [str(BIN / "slimsweep"), "status", str(swept.path), "--json"], capture_output=True, text=True, cwd=swept.folder
    )
    assert json.loads(status.stdout)["handover_pending"] is not None
    monkeypatch.setattr(handover.os, "replace", real)
    assert main(["pick", str(swept.path), *other]) == 0
    assert handover.pending(exp.out) is None
    _agree(exp)


def test_a_crash_before_the_alias_moved_leaves_the_old_hand_over_whole(swept, monkeypatch):
    exp = swept.exp
    assert main(["pick", str(swept.path)]) == 0
    before = ((exp.out / "deployable.onnx").read_bytes(), (exp.out / "model_card.json").read_text())
    real, calls = handover._write_atomic, []

    def dies_before_the_commit(path, data):
        calls.append(path)
        if len(calls) == 2:  # the second record names the registered version: the step before the alias moves
            raise Crash()
        real(path, data)

    monkeypatch.setattr(handover, "_write_atomic", dies_before_the_commit)
    with pytest.raises(Crash):
        main(["pick", str(swept.path), "--max-accuracy-drop", "0", "--max-latency-ms", "0.000001"])
    assert ((exp.out / "deployable.onnx").read_bytes(), (exp.out / "model_card.json").read_text()) == before
    _agree(exp)
    monkeypatch.undo()
    assert main(["pick", str(swept.path)]) == 0  # discards the leftovers, hands over again
    assert handover.pending(exp.out) is None and not list(exp.out.glob("*.tmp"))
    _agree(exp)


def test_a_live_drivers_hand_over_in_progress_is_not_completed_by_another(tmp_path):
    # Two drivers finishing together: one is between its alias move and its renames when the other starts delivering.
    folder = tmp_path
    done = {}
    with handover._locked(folder):  # the first driver's hand-over, under way
        (folder / handover.PENDING).write_text(json.dumps({"trial": 3, "sha256": "ab", "version": "2"}))
        (folder / (handover.ONNX + ".tmp")).write_bytes(b"model")
        (folder / (handover.CARD + ".tmp")).write_text("{}")
        other = threading.Thread(target=lambda: done.setdefault("note", handover.recover(folder, lambda: "2")))
        other.start()
        other.join(timeout=1.0)
        assert other.is_alive() and (folder / (handover.ONNX + ".tmp")).is_file()  # it waits; our files stay ours
        for name in (handover.ONNX, handover.CARD):
            os.replace(folder / (name + ".tmp"), folder / name)
        (folder / handover.PENDING).unlink()
    other.join(timeout=30)
    assert done["note"] == "" and (folder / handover.ONNX).read_bytes() == b"model"
