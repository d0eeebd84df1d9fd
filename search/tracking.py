"""MLflow: one parent run per sweep, one nested run per trial, the front, and the registered pick."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

ROLE, STUDY, NUMBER = "slimsweep.role", "slimsweep.study", "optuna.trial_number"
ALIAS = "deployable"
NOTE = "mlflow.note.content"  # the run / experiment description MLflow's UI shows
# MLflow 3's UI opens an experiment on its GenAI overview unless this tag says it is for model training.
KIND = {"mlflow.experimentKind": "custom_model_development"}


class Tracker:
    """Writes a sweep to MLflow through explicit run ids, so only the driver ever logs and nothing is global."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path) -> None:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri, self.name = uri, experiment
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_root.resolve().as_uri(),
                                                               tags=KIND)
        else:
            self.experiment_id = found.experiment_id
            if found.tags.get("mlflow.experimentKind") != KIND["mlflow.experimentKind"]:
                for key, value in KIND.items():
                    self.client.set_experiment_tag(self.experiment_id, key, value)
        self.parent_id = ""

    def resume_sweep(self) -> bool:
        """Reopen this study's parent run, if there is one."""
        runs = self.client.search_runs([self.experiment_id], f"tags.`{ROLE}` = 'sweep' and tags.`{STUDY}` = '{self.name}'",
                                       max_results=1, order_by=["attributes.start_time ASC"])
        if runs:
            self.parent_id = runs[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        return bool(runs)

    def start_sweep(self, config_text: str, params: dict[str, Any]) -> str:
        """Resume this study's parent run, or create it with the experiment file attached."""
        if not self.resume_sweep():
            run = self.client.create_run(self.experiment_id, run_name=f"{self.name}-sweep",
                                         tags={ROLE: "sweep", STUDY: self.name})
            self.parent_id = run.info.run_id
            self.client.log_batch(self.parent_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        self.client.log_text(self.parent_id, config_text, "experiment.yaml")
        return self.parent_id

    def logged_trials(self) -> set[int]:
        """Trial numbers whose nested run was written to the end; a run a stop cut short is deleted, to redo."""
        logged = set()
        for run in self._trial_run_list():
            if run.info.status in {"FINISHED", "FAILED"}:
                logged.add(int(run.data.tags[NUMBER]))
            else:
                self.client.delete_run(run.info.run_id)
        return logged

    def _trial_run_list(self) -> list:
        runs = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
                                       max_results=50000)
        return [r for r in runs if NUMBER in r.data.tags]

    def log_trial(self, number: int, params: dict[str, Any], metrics: dict[str, float], *, onnx: bytes | None,
                  failed_reason: str | None = None, traceback: str | None = None,
                  tags: dict[str, str] | None = None, start_ms: int | None = None, end_ms: int | None = None,
                  description: str | None = None) -> str:
        """One nested run for one finished trial: the plan as params, metrics, its ONNX file, or its failure reason
        (a tag) and traceback (the artifact traceback.txt); its start and end are the trial's own when given."""
        all_tags = {ROLE: "trial", NUMBER: str(number), STUDY: self.name, "mlflow.parentRunId": self.parent_id,
                    **(tags or {})}
        if failed_reason is not None:
            all_tags["slimsweep.failure"] = failed_reason[:4000]
        if description:
            all_tags[NOTE] = description
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags=all_tags, start_time=start_ms)
        run_id, now = run.info.run_id, end_ms or int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        if onnx is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                path.write_bytes(onnx)
                self.client.log_artifact(run_id, str(path))
        if traceback:
            self.client.log_text(run_id, traceback, "traceback.txt")
        self.client.set_terminated(run_id, "FAILED" if failed_reason is not None else "FINISHED", end_time=end_ms)
        return run_id

    def trial_runs(self) -> dict[int, str]:
        """Run id of each trial's nested run, by trial number."""
        return {int(r.data.tags[NUMBER]): r.info.run_id for r in self._trial_run_list()}

    def mark_front(self, front: set[int]) -> None:
        """Tag every trial run pareto=true or pareto=false."""
        for number, run_id in self.trial_runs().items():
            self.client.set_tag(run_id, "pareto", "true" if number in front else "false")

    def log_parent(self, *, metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None,
                   files: dict[str, Path] | None = None) -> None:
        """Metrics, tags and files (artifact name -> local path) on the sweep's parent run."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                              tags=[RunTag(k, v) for k, v in (tags or {}).items()])
        for name, path in (files or {}).items():
            self.client.log_artifact(self.parent_id, str(path), artifact_path=name or None)

    def alias_version(self) -> str | None:
        """The registry version the alias 'deployable' points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, ALIAS).version)
        except MlflowException:
            return None

    def version_for(self, trial: int, sha256: str) -> str | None:
        """A version already registered from this trial with these exact ONNX bytes, if any."""
        from mlflow.exceptions import MlflowException

        try:
            versions = self.client.search_model_versions(f"name = '{self.name}'")
        except MlflowException:
            return None
        for v in sorted(versions, key=lambda v: int(v.version)):
            if v.tags.get("slimsweep.trial") == str(trial) and v.tags.get("slimsweep.sha256") == sha256:
                return str(v.version)
        return None

    def register(self, run_id: str, onnx_path: Path, *, input_example: Any, tags: dict[str, str], description: str,
                 model_description: str, metadata: dict[str, Any]) -> str:
        """Log the model in the trial's own run (signature and input example included) and register it from there
        under the experiment's name, with version tags and description; return the version. The alias is not moved."""
        import onnx
        import onnxruntime as ort
        from mlflow.models import infer_signature

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        # One unnamed tensor in, as the pyfunc takes a bare array (and `mlflow models serve` {"inputs": [...]}).
        output = session.run(None, {session.get_inputs()[0].name: input_example})[0]
        signature = infer_signature(input_example, output)
        run = self.client.get_run(run_id)
        quiet = contextlib.redirect_stderr(io.StringIO()) if not os.environ.get("SLIMSWEEP_VERBOSE") else contextlib.nullcontext()
        with mlflow.start_run(run_id=run_id), quiet:  # MLflow prints "Successfully registered model" itself
            info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="deployable", registered_model_name=self.name,
                                         signature=signature, input_example=input_example,
                                         onnx_execution_providers=["CPUExecutionProvider"], metadata=metadata)
        # start_run(run_id=...) reopened the finished trial run and ended it now: give it back its own end.
        self.client.set_terminated(run_id, run.info.status, end_time=run.info.end_time)
        version = str(info.registered_model_version)
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)
        self.client.update_model_version(self.name, version, description=description)
        self.client.update_registered_model(self.name, description=model_description)
        return version

    def move_alias(self, version: str) -> None:
        """Point the alias 'deployable' at a registered version."""
        self.client.set_registered_model_alias(self.name, ALIAS, version)

    def end(self, status: str = "FINISHED") -> None:
        """Close the parent run (FINISHED, FAILED or KILLED)."""
        if self.parent_id:
            self.client.set_terminated(self.parent_id, RunStatus.to_string(RunStatus.from_string(status)))
