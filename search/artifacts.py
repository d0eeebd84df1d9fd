"""A trial's ONNX file from wherever it is: this driver's trials folder, else the trial's MLflow run.

Drivers on several machines share the study and MLflow, not their output folders: a trial another driver ran, or a
plan it answered, has its ONNX file in that driver's folder and in its MLflow run (the artifact `model.onnx`, logged
with the trial). Reuse and the pick read it through here, so they work from any driver; a file fetched from MLflow
is kept in the local trials folder, so it is fetched once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from evaluators.errors import SlimsweepError
from evaluators.secrets import mask_secrets
from search.config import Experiment
from search.tracking import NUMBER, ROLE, STUDY

ARTIFACT = "model.onnx"  # the name Tracker.log_trial logs a trial's ONNX file under


def trial_onnx(exp: Experiment, source: Any, number: int) -> bytes:
    """The bytes of trial `number`'s ONNX file (source: a Tracker, an MlflowClient, or None to open exp's store)."""
    return trial_onnx_path(exp, source, number).read_bytes()


def trial_onnx_path(exp: Experiment, source: Any, number: int) -> Path:
    """Trial `number`'s ONNX file in this driver's trials folder, fetched from its MLflow run when it is not there."""
    path = exp.out / "trials" / f"trial-{number}.onnx"  # search.sweep.trial_path, which imports this module
    if path.is_file():
        return path
    client, experiment_id, why = _store(exp, source)
    if client is not None and experiment_id:
        why = _fetch(client, experiment_id, exp.name, number, path)
        if why is None:
            return path
    raise SlimsweepError(
        f"trial {number}'s ONNX file is not in {path.parent} and could not be read from its MLflow run at "
        f"{mask_secrets(exp.tracking_uri)} ({why}); drivers on several machines find each other's models through "
        f"MLflow: point every driver at one tracking store whose artifacts they can all read (a tracking server, or "
        f"an output_dir on storage they share), or run `slimsweep sync` on the driver that ran trial {number}"
    )


def _store(exp: Experiment, source: Any) -> tuple[MlflowClient | None, str, str]:
    """The MLflow client and experiment id to look in, or why there is none."""
    if getattr(source, "down", False):
        return None, "", f"MLflow is unreachable: {getattr(source, 'down_reason', '')}"
    if getattr(source, "experiment_id", ""):
        return source.client, source.experiment_id, ""
    uri = exp.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None, "", "this machine has no such MLflow store"
    try:
        client = source if isinstance(source, MlflowClient) else MlflowClient(uri)
        found = client.get_experiment_by_name(exp.name)
    except Exception as exc:  # noqa: BLE001 - a store that cannot answer is a reason, said in the error
        return None, "", f"{type(exc).__name__}: {_first_line(exc)}"
    if found is None:
        return None, "", f"it holds no experiment {exp.name!r}"
    return client, found.experiment_id, ""


def _fetch(client: MlflowClient, experiment_id: str, name: str, number: int, path: Path) -> str | None:
    """Download the trial's ONNX artifact to `path` (atomically); None when done, else why not."""
    query = f"tags.`{NUMBER}` = '{number}' and tags.`{ROLE}` = 'trial' and tags.`{STUDY}` = '{name}'"
    try:
        runs = client.search_runs([experiment_id], query, max_results=20)
    except Exception as exc:  # noqa: BLE001 - as above
        return f"{type(exc).__name__}: {_first_line(exc)}"
    runs = [r for r in runs if r.info.status == "FINISHED"]
    if not runs:
        return f"no finished run of trial {number}"
    why = ""
    path.parent.mkdir(parents=True, exist_ok=True)
    for run in runs:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fetch-") as tmp:
            try:
                got = Path(client.download_artifacts(run.info.run_id, ARTIFACT, tmp))
            except Exception as exc:  # noqa: BLE001 - the artifact lives where this machine cannot read it
                why = f"{ARTIFACT} of run {run.info.run_id}: {type(exc).__name__}: {_first_line(exc)}"
                continue
            os.replace(got, path)  # whole or not at all: a half-written file would pass for the model
            return None
    return why


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return mask_secrets(lines[0]) if lines else "(no message)"
