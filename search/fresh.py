"""`run --fresh`: delete an experiment's study, its MLflow runs and slimsweep's own files in its output folder, so its
sweep starts over; and the marker by which slimsweep knows an output folder as one it made.

--fresh deletes nothing it cannot tell as its own: a folder without the marker or slimsweep's layout, a folder that
is a symbolic link, or a study whose driver is alive is refused (exit 2) before anything is deleted; inside its own
folder it deletes only the files it writes (by name), never follows a link, and keeps whatever else is there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import optuna

from evaluators.errors import ConfigError
from evaluators.secrets import mask_secrets
from search.config import Experiment
from search.study import STALE_BEATS, live_drivers
from search.tracking import STUDY, Tracker

# Written in an experiment's output folder when slimsweep makes that folder: what --fresh asks before deleting.
MARKER = ".slimsweep-output.json"
# Files slimsweep writes in the output folder, each also as its temporary (.tmp) and SQLite side files.
OWN_FILES = (
    "study.db",
    "study.db.lock",
    "mlflow.db",
    "mlflow.db.lock",
    "teacher.onnx",
    "deployable.onnx",
    "model_card.json",
    "pareto.csv",
    "pareto.png",
    "pareto.html",
    ".handover-pending.json",
    ".handover.lock",
    MARKER,
)
_SIDE_SUFFIXES = ("", ".tmp", "-journal", "-wal", "-shm")
# Folders slimsweep writes: MLflow's artifact store (all of it is MLflow's), and the trials' ONNX files (those only).
ARTIFACTS = "mlartifacts"
TRIALS, TRIAL_FILE = "trials", re.compile(r"trial-\d+\.onnx(\.tmp)?")
# Trained students kept for pruning plans (space.pruning.from_trained, search/students.py): those files only.
STUDENTS, STUDENT_FILE = "students", re.compile(r"[0-9a-f]{32}\.pt|\.[0-9a-f]{32}\.[A-Za-z0-9_]+\.tmp")
# A folder without the marker is known as one an older slimsweep made by any of these.
_LAYOUT = ("study.db", "teacher.onnx", TRIALS, "model_card.json", "deployable.onnx")


def mark_output(folder: Path, experiment: str) -> None:
    """Make the experiment's output folder with slimsweep's marker in it; a folder that already exists is left as it
    is (slimsweep did not make it, so it gets no marker)."""
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return
    made = {"made_by": "slimsweep", "experiment": experiment, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (folder / MARKER).write_text(json.dumps(made) + "\n")


def start_over(exp: Experiment) -> str:
    """--fresh: delete the study, this experiment's MLflow runs and slimsweep's files in its output folder (refused,
    with ConfigError, for a folder slimsweep did not make, a symbolic link, or a study whose driver is alive)."""
    folder = exp.out
    _check_folder(folder)
    study = _stored_study(exp)
    if study is not None:
        _check_no_live_driver(exp, study)
    gone = []
    # MLflow first, the study last: runs left behind would be taken for the new study's trials of the same numbers.
    in_outputs = exp.tracking_uri.startswith(f"sqlite:///{folder.resolve()}/")  # goes with the folder below
    if not in_outputs and tracking_store_exists(exp):
        tracker = Tracker(exp.tracking_uri, exp.name, folder / ARTIFACTS)
        if tracker.down:
            raise ConfigError(
                f"--fresh: MLflow at {mask_secrets(exp.tracking_uri)} cannot be reached ({tracker.down_reason}), so "
                "this experiment's runs cannot be deleted; nothing was deleted: run it again once MLflow answers"
            )
        runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`{STUDY}` = '{exp.name}'", max_results=50000)
        for run in runs:
            tracker.client.delete_run(run.info.run_id)
        gone.append(f"{len(runs)} MLflow runs")
    if study is not None:
        optuna.delete_study(study_name=exp.name, storage=exp.storage_url)
        gone.append("the study")
    kept: list[str] = []
    if folder.is_dir():
        removed = _delete_own_files(folder)
        kept = sorted(p.name for p in folder.iterdir())
        if not kept:
            folder.rmdir()
            gone.append(str(folder))
        elif removed:
            gone.append(f"{removed} files of slimsweep's in {folder}")
    said = f"--fresh: deleted {', '.join(gone) or 'nothing (no earlier sweep)'}; starting over"
    if kept:
        shown = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
        said += f" (kept in {folder}, as slimsweep did not write them: {shown})"
    return said


def tracking_store_exists(exp: Experiment) -> bool:
    """Whether there is an MLflow store to clean (a missing local SQLite file is not created just to be emptied)."""
    uri = exp.tracking_uri
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def is_own_folder(folder: Path) -> bool:
    """Whether slimsweep made this folder: its marker, or (made before the marker existed) slimsweep's layout."""
    return (folder / MARKER).is_file() or any(os.path.lexists(folder / name) for name in _LAYOUT)


def _check_folder(folder: Path) -> None:
    """Refuse, before anything is deleted, an output folder that is a link or not slimsweep's."""
    if folder.is_symlink():
        raise ConfigError(
            f"--fresh: the output folder {str(folder)!r} is a symbolic link (to {os.readlink(folder)!r}); --fresh "
            "follows no link and deleted nothing: remove the link yourself, or set output_dir to a real folder"
        )
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--fresh: {str(folder)!r} is a file, not an output folder; deleted nothing")
    if folder.is_dir() and not is_own_folder(folder):
        raise ConfigError(
            f"--fresh: {str(folder)!r} was not made by slimsweep (it has no {MARKER} and none of slimsweep's files: "
            f"{', '.join(_LAYOUT)}); deleted nothing. Give another --output-dir or experiment name, or empty it "
            "yourself"
        )


def _stored_study(exp: Experiment) -> optuna.Study | None:
    """The experiment's study if there is one (a missing SQLite file is not created just to be looked in)."""
    url = exp.storage_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    try:
        return optuna.load_study(study_name=exp.name, storage=url)
    except KeyError:  # no study of that name there
        return None


def _check_no_live_driver(exp: Experiment, study: optuna.Study) -> None:
    """Refuse to delete a study another driver is running on."""
    live = live_drivers(study, exp.search.heartbeat_s)
    if live:
        raise ConfigError(
            f"--fresh: the study {exp.name!r} in {mask_secrets(exp.storage_url)} has a driver that is alive "
            f"({', '.join(sorted(live))}: its heartbeat is recent); deleted nothing. Stop that sweep first (a stopped "
            f"driver counts as gone after {STALE_BEATS} missed heartbeats), or give this one another name"
        )


def _delete_own_files(folder: Path) -> int:
    """Delete the files slimsweep writes in folder, by name; a link is removed, never followed. Returns how many."""
    removed = 0
    for name in OWN_FILES:
        for suffix in _SIDE_SUFFIXES:
            removed += _remove(folder / (name + suffix))
    artifacts = folder / ARTIFACTS
    if artifacts.is_symlink() or artifacts.is_file():
        removed += _remove(artifacts)
    elif artifacts.is_dir():
        shutil.rmtree(artifacts)  # unlinks the links inside, follows none
        removed += 1
    for name, pattern in ((TRIALS, TRIAL_FILE), (STUDENTS, STUDENT_FILE)):
        own = folder / name
        if own.is_symlink():
            removed += _remove(own)
        elif own.is_dir():
            for path in own.iterdir():
                if pattern.fullmatch(path.name) and (path.is_symlink() or path.is_file()):
                    removed += _remove(path)
            if not any(own.iterdir()):
                own.rmdir()
    return removed


def _remove(path: Path) -> int:
    """Unlink a file or a link (never what it points to); 1 if something was removed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return 1
    return 0
