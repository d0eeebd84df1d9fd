"""MLflow: one parent run per sweep, one nested run per trial, the front, and the registered pick."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from evaluators.secrets import mask_secrets
from search import localdb
from search.filelock import held

ROLE, STUDY, NUMBER, DRIVER = "slimsweep.role", "slimsweep.study", "optuna.trial_number", "slimsweep.driver"
ALIAS = "deployable"
VIEW = "slimsweep-front"  # the key of the saved view of the front in MLflow's UI
UNUSED = "-"  # the value of a knob a plan does not use
log = logging.getLogger("slimsweep.tracking")
# MLflow's HTTP client retries with backoff for minutes by default; a sweep would stall that long on an outage.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
_T = TypeVar("_T")
_DATABASES = ("sqlite:", "postgresql", "mysql", "mssql")  # stores MLflow creates and migrates on first open


def unreachable(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why an MLflow tracking server cannot be reached, or None (a local store is always reachable)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            return None if response.status == 200 else f"/health answered HTTP {response.status}"
    except urllib.error.HTTPError as exc:  # the server is up but failing (5xx) or is not MLflow
        return f"/health answered HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _requirements() -> list[str]:
    """The pip requirements of a logged ONNX model: the installed distributions that load and run it."""
    from importlib.metadata import PackageNotFoundError, version

    import onnxruntime

    pins = [f"mlflow=={mlflow.__version__}", f"numpy=={version('numpy')}", f"onnx=={version('onnx')}"]
    # onnxruntime's module may come from another build's distribution: name the one installed.
    for name in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"):
        try:
            return [*pins, f"{name}=={version(name)}"]
        except PackageNotFoundError:
            continue
    return [*pins, f"onnxruntime=={onnxruntime.__version__}"]


def _tolerant(default: Any = None) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Run a Tracker call; on a lost tracking server, warn once and from then on skip every call (the study keeps
    the record; `slimsweep sync` back-fills MLflow)."""

    def wrap(method: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(method)
        def call(self: Tracker, *args: Any, **kwargs: Any) -> _T:
            if self.down:
                return default() if callable(default) else default
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not self.remote or unreachable(self.uri) is None:
                    raise  # a real error from a reachable store, not an outage
                self.went_down(exc)
                return default() if callable(default) else default

        return call

    return wrap


NOTE = "mlflow.note.content"  # the run / experiment description MLflow's UI shows
# MLflow 3's UI opens an experiment on its GenAI overview unless this tag says it is for model training.
KIND = {"mlflow.experimentKind": "custom_model_development"}


def _again_if_raced(write: Callable[[], _T]) -> _T:
    """An MLflow write that inserts a key (a tag, a param), run once more if it fails: MLflow's SQL store checks for
    the key, then inserts, so two drivers writing the same key at the same instant make one fail on the unique key;
    the second try finds the key and updates it. A real error fails the second try too."""
    try:
        return write()
    except mlflow.exceptions.MlflowException:
        time.sleep(0.2)
        return write()


@contextlib.contextmanager
def _first_access(uri: str) -> Iterator[None]:
    """Hold an advisory lock beside a SQLite store while it is first opened, so one process at a time migrates it."""
    # MLflow creates and migrates a fresh store on first open, and SQLite's DDL is not transactional in alembic: two
    # drivers migrating together leave a half-made `_alembic_tmp_*` table that every later attempt trips on.
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri.removeprefix("sqlite:///").split("?")[0] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with held(lock):
        yield


def _open(uri: str) -> MlflowClient:
    """An MlflowClient whose tracking and registry stores exist and are migrated."""
    with _first_access(uri):
        client = MlflowClient(uri)
        if uri.startswith(_DATABASES):
            client.search_registered_models(max_results=1)  # opens (and migrates) the registry store now
        return client


def _client(uri: str, attempts: int = 10) -> MlflowClient:
    """`_open`, retried: a server-side database (PostgreSQL) rolls a racing migration back, so a later attempt wins."""
    for attempt in range(attempts - 1):
        try:
            return _open(uri)
        except Exception:  # noqa: BLE001 - SQLAlchemy's and alembic's errors both; the last attempt raises them
            time.sleep(0.5 * (attempt + 1))
    return _open(uri)


class Tracker:
    """Writes a sweep to MLflow through explicit run ids, so only the driver ever logs and nothing is global."""

    def __init__(
        self, uri: str, experiment: str, artifact_root: Path, *, driver: str = "", offline: bool = False
    ) -> None:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.uri, self.name, self.driver = uri, experiment, driver
        self.remote = uri.startswith(("http://", "https://"))
        self.down, self.down_reason = offline, "run without MLflow (--no-tracking)" if offline else ""
        self.parent_id, self.experiment_id = "", ""
        mlflow.set_tracking_uri(uri)
        if uri == f"sqlite:///{(artifact_root.parent / 'mlflow.db').resolve()}":  # slimsweep's own store: WAL
            localdb.write_ahead(artifact_root.parent / "mlflow.db")
        self.client = _client(uri)
        self._open_experiment(artifact_root)

    def went_down(self, exc: BaseException) -> None:
        """Stop talking to a lost tracking server, with one warning."""
        self.down, self.down_reason = True, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.warning(
            "MLflow at %s is unreachable (%s); the sweep goes on, recorded in the study; run "
            "`slimsweep sync` once it is back",
            mask_secrets(self.uri),
            self.down_reason[:300],
        )

    @_tolerant()
    def _open_experiment(self, artifact_root: Path, attempts: int = 10) -> None:
        for attempt in range(attempts):
            try:
                found = self.client.get_experiment_by_name(self.name)
                break
            except Exception:
                if self.remote or attempt == attempts - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
        if found is None:
            try:
                # A tracking server keeps artifacts in its own store, which every driver can read (drivers on
                # several machines fetch each other's ONNX files there); a local path would be this machine's alone.
                location = None if self.remote else artifact_root.resolve().as_uri()
                self.experiment_id = self.client.create_experiment(self.name, artifact_location=location, tags=KIND)
            except mlflow.exceptions.MlflowException:  # another driver created it at the same instant
                self.experiment_id = self.client.get_experiment_by_name(self.name).experiment_id
        else:
            self.experiment_id = found.experiment_id
            if found.tags.get("mlflow.experimentKind") != KIND["mlflow.experimentKind"]:
                for key, value in KIND.items():
                    _again_if_raced(lambda k=key, v=value: self.client.set_experiment_tag(self.experiment_id, k, v))

    def _parents(self) -> list:
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{ROLE}` = 'sweep' and tags.`{STUDY}` = '{self.name}'",
            max_results=100,
            order_by=["attributes.start_time ASC"],
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    @_tolerant(False)
    def resume_sweep(self) -> bool:
        """Reopen this study's parent run, if there is one."""
        runs = self._parents()
        if runs:
            self.parent_id = runs[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        return bool(runs)

    @_tolerant("")
    def start_sweep(self, config_text: str, params: dict[str, Any]) -> str:
        """Resume this study's parent run, or create it with the experiment file attached."""
        if not self.resume_sweep():
            run = self.client.create_run(
                self.experiment_id, run_name=f"{self.name}-sweep", tags={ROLE: "sweep", STUDY: self.name}
            )
            self.parent_id = run.info.run_id
            self.client.log_batch(self.parent_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
            # Two drivers starting together may both create one; the earliest is the sweep's, the other goes.
            first = self._parents()[0].info.run_id
            if first != self.parent_id:
                self.client.delete_run(self.parent_id)
                self.parent_id = first
        self.client.log_text(self.parent_id, config_text, "experiment.yaml")
        return self.parent_id

    @_tolerant(set)
    def logged_trials(self, live: set[str] = frozenset()) -> set[int]:
        """Trial numbers whose nested run was written to the end. A run cut short by a driver that is gone is an
        abandoned attempt: marked KILLED with the role 'abandoned' (kept to see, not counted); runs still being
        written by a live driver (`live`) are left alone."""
        logged = set()
        for run in self._trial_run_list():
            if run.info.status in {"FINISHED", "FAILED"}:
                logged.add(int(run.data.tags[NUMBER]))
            elif run.data.tags.get(DRIVER) not in live:
                self.client.set_tag(run.info.run_id, ROLE, "abandoned")
                self.client.set_tag(run.info.run_id, "slimsweep.abandoned", "true")
                self.client.set_terminated(run.info.run_id, "KILLED")
        return logged

    def _trial_run_list(self) -> list:
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_id}'", max_results=50000
        )
        return [r for r in runs if NUMBER in r.data.tags and r.data.tags.get(ROLE) == "trial"]

    @_tolerant("")
    def log_trial(
        self,
        number: int,
        params: dict[str, Any],
        metrics: dict[str, float],
        *,
        onnx: bytes | None,
        failed_reason: str | None = None,
        traceback: str | None = None,
        tags: dict[str, str] | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        description: str | None = None,
    ) -> str:
        """One nested run for one finished trial: the plan as params, metrics, its ONNX file, or its failure reason
        (a tag) and traceback (the artifact traceback.txt); its start and end are the trial's own when given."""
        all_tags = {
            ROLE: "trial",
            NUMBER: str(number),
            STUDY: self.name,
            "mlflow.parentRunId": self.parent_id,
            DRIVER: self.driver,
            **(tags or {}),
        }
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

    @_tolerant(dict)
    def trial_runs(self) -> dict[int, str]:
        """Run id of each trial's nested run, by trial number."""
        return {int(r.data.tags[NUMBER]): r.info.run_id for r in self._trial_run_list()}

    @_tolerant()
    def mark_front(self, front: set[int]) -> None:
        """Tag every trial run pareto=true or pareto=false."""
        for number, run_id in self.trial_runs().items():
            value = "true" if number in front else "false"
            _again_if_raced(lambda r=run_id, v=value: self.client.set_tag(r, "pareto", v))

    @_tolerant()
    def even_params(self, knobs: list[str]) -> None:
        """Log '-' for each knob a trial run lacks (a conditional knob its plan does not use), so MLflow's tables
        and parallel-coordinates charts show 'not used' rather than an empty cell or 'unknown'."""
        for run in self._trial_run_list():
            if run.info.status not in ("FINISHED", "FAILED"):
                continue  # still being written (its own params come after its tags): not ours to fill
            missing = [Param(k, UNUSED) for k in knobs if k not in run.data.params]
            if missing:
                _again_if_raced(lambda r=run.info.run_id, m=missing: self.client.log_batch(r, params=m))

    @_tolerant()
    def save_view(self, objectives: list[str], knobs: list[str]) -> None:
        """MLflow's saved view VIEW (in the UI's Views menu): every run in one flat list, fastest first, with the
        objectives, the front and the pick as columns, and a chart section of accuracy against latency and the knobs
        that tell the trials apart (all runs shown)."""
        latency = next((o for o in objectives if o.startswith("latency")), objectives[-1])
        accuracy = "accuracy" if "accuracy" in objectives else objectives[0]
        chart = {"runsCountToCompare": 1000, "metricSectionId": VIEW, "deleted": False, "isGenerated": False}
        state = {
            "orderByKey": f"metrics.`{latency}`",
            "orderByAsc": True,
            "selectedColumns": [
                "attributes.`Models`",
                "attributes.`Description`",
                *(f"metrics.`{o}`" for o in objectives),
                "tags.`pareto`",
                "tags.`slimsweep.pick`",
            ],
            "runsHiddenMode": "SHOW_ALL",
            "compareRunCharts": [
                {
                    **chart,
                    "uuid": f"{VIEW}-front",
                    "type": "SCATTER",
                    "xaxis": {"key": latency, "type": "METRIC"},
                    "yaxis": {"key": accuracy, "type": "METRIC"},
                },
                *(
                    [
                        {
                            **chart,
                            "uuid": f"{VIEW}-knobs",
                            "type": "PARALLEL",
                            "selectedParams": knobs,
                            "selectedMetrics": list(objectives),
                        }
                    ]
                    if knobs
                    else []
                ),
            ],
            "compareRunSections": [{"uuid": VIEW, "name": "The front", "display": True, "isReordered": True}],
            "isAccordionReordered": True,
        }
        # MLflow's saved-view envelope (an experiment tag per view); its UI accepts the state as plain JSON. Each
        # publish rewrites it with the sweep's current knobs, keeping when it was first made.
        key, now = f"mlflow.sharedViewState.{VIEW}", int(time.time() * 1000)
        earlier = self.client.get_experiment(self.experiment_id).tags.get(key)
        made = json.loads(earlier).get("createdAt", now) if earlier else now
        envelope = {"name": "slimsweep: the front", "createdAt": made, "updatedAt": now, "state": json.dumps(state)}
        _again_if_raced(lambda: self.client.set_experiment_tag(self.experiment_id, key, json.dumps(envelope)))

    def view_link(self, base: str = "http://127.0.0.1:5000") -> str:
        """The address of the saved view in an MLflow UI served at `base`."""
        return f"{base}/#/experiments/{self.experiment_id}/runs?viewStateShareKey={VIEW}&workflowType=machine_learning"

    @_tolerant()
    def mark_pick(self, trial: int) -> None:
        """Tag the picked trial's run slimsweep.pick=true and every other trial run false."""
        for number, run_id in self.trial_runs().items():
            value = "true" if number == trial else "false"
            _again_if_raced(lambda r=run_id, v=value: self.client.set_tag(r, "slimsweep.pick", v))

    @_tolerant()
    def log_parent(
        self,
        *,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        files: dict[str, Path] | None = None,
    ) -> None:
        """Metrics, tags and files (artifact name -> local path) on the sweep's parent run."""
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.parent_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )
        for name, path in (files or {}).items():
            self.client.log_artifact(self.parent_id, str(path), artifact_path=name or None)

    @_tolerant()
    def alias_version(self, alias: str = ALIAS) -> str | None:
        """The registry version the alias ('deployable', or a target's 'deployable-<target>') points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    @_tolerant()
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

    @_tolerant("")
    def register(
        self,
        run_id: str,
        onnx_path: Path,
        *,
        input_example: Any,
        tags: dict[str, str],
        description: str,
        model_description: str,
        metadata: dict[str, Any],
    ) -> str:
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
        quiet = (
            contextlib.redirect_stderr(io.StringIO())
            if not os.environ.get("SLIMSWEEP_VERBOSE")
            else contextlib.nullcontext()
        )
        with mlflow.start_run(run_id=run_id), quiet:  # MLflow prints "Successfully registered model" itself
            info = mlflow.onnx.log_model(
                onnx.load(str(onnx_path)),
                name="deployable",
                registered_model_name=self.name,
                signature=signature,
                input_example=input_example,
                onnx_execution_providers=["CPUExecutionProvider"],
                metadata=metadata,
                # What MLflow would infer, stated: its inference imports the model in a subprocess (about 4 s).
                pip_requirements=_requirements(),
            )
        # start_run(run_id=...) reopened the finished trial run and ended it now: give it back its own end.
        self.client.set_terminated(run_id, run.info.status, end_time=run.info.end_time)
        version = str(info.registered_model_version)
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)
        self.client.update_model_version(self.name, version, description=description)
        self.client.update_registered_model(self.name, description=model_description)
        return version

    @_tolerant()
    def move_alias(self, version: str, alias: str = ALIAS) -> None:
        """Point the alias ('deployable', or a target's 'deployable-<target>') at a registered version."""
        self.client.set_registered_model_alias(self.name, alias, version)

    @_tolerant("")
    def start_retarget(self, target: str, params: dict[str, Any]) -> str:
        """Reopen or create the parent run of this sweep's retargeting to `target` (beside the sweep's own run)."""
        tags = {ROLE: "retarget", STUDY: self.name, "slimsweep.target": target}
        found = self.client.search_runs(
            [self.experiment_id],
            " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items()),
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            self.parent_id = self.client.create_run(
                self.experiment_id, run_name=f"{self.name}-{target}", tags=tags
            ).info.run_id
            # Once, at creation: a param's value cannot change, and the target's slug names the same settings.
            self.client.log_batch(self.parent_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return self.parent_id

    @_tolerant()
    def end(self, status: str = "FINISHED") -> None:
        """Close the parent run (FINISHED, FAILED or KILLED)."""
        if self.parent_id:
            self.client.set_terminated(self.parent_id, RunStatus.to_string(RunStatus.from_string(status)))
