"""The experiment file: its schema, validated once at the edge, and the one error format for a bad file."""

from __future__ import annotations

import importlib.util
import os
import re
import reprlib
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evaluators.errors import ConfigError, not_allowed
from evaluators.secrets import mask_secrets, masked
from experiments.schema import MAX_SEED, TASK_CONFIGS, DigitsTask, OnnxTask, TaskConfig, task_error
from search.pick import PICK_POLICIES, check_pick_policy
from search.samplers import check_sampler
from spaces.knobs import Strict
from spaces.plan import Space
from spaces.sections import with_sections

if TYPE_CHECKING:
    from evaluators.targets import TargetSpec

# Metrics a user may name as objectives, with the direction Optuna optimises them in.
METRIC_DIRECTIONS: dict[str, str] = {
    "accuracy": "maximize",
    "latency_p50_ms": "minimize",
    "latency_p90_ms": "minimize",
    "latency_p95_ms": "minimize",
    "latency_p99_ms": "minimize",
    "size_mb": "minimize",
    "params": "minimize",
    "throughput_per_s": "maximize",  # items per second at the target's batch: batch_size / p50 seconds
}
# Upper bounds (README, "The experiment file's bounds"): a typo must not ask for a trillion trials or threads.
MAX_TRIALS = 100_000
MAX_PARALLEL = 1024
MAX_THREADS = 1024
MAX_BATCH = 4096
# Error messages quote at most this much of a bad value, and the whole message stays under 4 KB.
_VALUE_REPR = reprlib.Repr()
_VALUE_REPR.maxlevel, _VALUE_REPR.maxstring, _VALUE_REPR.maxlong, _VALUE_REPR.maxother = 3, 120, 60, 120
_VALUE_REPR.maxdict = _VALUE_REPR.maxlist = _VALUE_REPR.maxtuple = _VALUE_REPR.maxset = 6
_MESSAGE_BYTES = 3500


class _Masked(Strict):
    """A section holding URLs: its repr and str (in logs, tracebacks, a test's failure) show no password."""

    def __repr__(self) -> str:
        return mask_secrets(super().__repr__())

    def __str__(self) -> str:
        return mask_secrets(super().__str__())


class Constraints(Strict):
    """Feasibility limits handed to Optuna; infeasible trials stay out of the front."""

    max_accuracy_drop: float = Field(1.0, ge=0, le=100)
    max_latency_ms: float | None = Field(None, gt=0)
    max_size_mb: float | None = Field(None, gt=0)


class Target(_Masked):
    """Where latency is measured: a runtime on this machine or a device agent, with its threads and batch size."""

    kind: str = "cpu"  # a kind registered in evaluators.targets.TARGETS (built-in or from an extension)
    threads: int = Field(1, ge=1, le=MAX_THREADS)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)
    device_id: int = Field(0, ge=0, le=1024)  # a GPU target's device
    url: str | None = None  # a target that takes a URL (remote): the device agent, e.g. http://jetson.local:8470
    token_file: str | None = None  # the same: a file holding the agent's bearer token
    reserve_cores: bool = True  # a local CPU target keeps `threads` cores for timing only; trials use the rest
    # Where accuracy is scored: 'host' (the driver's ONNX Runtime) or 'device' (the device agent runs the validation
    # inputs and sends back the outputs; the labels stay with the driver). `slimsweep retarget` honours it.
    accuracy: str = "host"

    @model_validator(mode="after")
    def _accuracy_where(self) -> "Target":
        if self.accuracy not in ("host", "device"):
            raise ValueError(f"accuracy: {self.accuracy!r} is not allowed; use 'host' or 'device'")
        if self.accuracy == "device" and not self.url:
            raise ValueError(
                f"accuracy: 'device' needs a device agent to score on, and this {self.kind!r} target has no url; "
                "use a remote target (kind: remote, url, token_file), or accuracy: host"
            )
        return self

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        from evaluators.targets import TARGETS  # light: the registry, without ONNX Runtime

        return TARGETS.check(v)

    @model_validator(mode="after")
    def _remote(self) -> "Target":
        from evaluators.targets import target_class, url_kinds

        if target_class(self.kind).takes_url:
            if not self.url or not re.match(r"^https?://", self.url):
                raise ValueError(
                    f"a {self.kind} target needs url: http(s)://HOST:PORT of a device agent, got {self.url!r}"
                )
            if not self.token_file:
                raise ValueError(f"a {self.kind} target needs token_file: a file holding the agent's token")
            if not Path(self.token_file).expanduser().is_file():
                raise ValueError(f"token_file {self.token_file!r} does not exist")
        elif self.url or self.token_file:
            raise ValueError(
                f"url and token_file are for kinds that take a URL ({', '.join(url_kinds())}) only, not {self.kind!r}"
            )
        return self

    def token(self) -> str | None:
        """The remote agent's token, read from token_file."""
        return Path(self.token_file).expanduser().read_text().strip() if self.token_file else None

    def spec(self) -> TargetSpec:
        """The target as the evaluators know it: the one place the schema's target becomes a TargetSpec."""
        from evaluators.targets import TargetSpec  # ONNX Runtime loads only when a target is used, not to validate

        return TargetSpec(
            kind=self.kind,
            threads=self.threads,
            batch_size=self.batch_size,
            device_id=self.device_id,
            url=self.url,
            token=self.token(),
        )


# Upper bounds on what one trial may ask of a node: far above any node Ray runs on today, low enough that a typo
# (num_cpus: 400 for 4) is refused here rather than left pending forever in Ray's queue.
MAX_TRIAL_CPUS = 256
MAX_TRIAL_GPUS = 16


class Resources(Strict):
    """What each trial asks of a Ray node: Ray starts a trial only where that much is free."""

    num_cpus: int = Field(1, ge=1, le=MAX_TRIAL_CPUS)
    num_gpus: float = Field(0.0, ge=0, le=MAX_TRIAL_GPUS)

    @field_validator("num_gpus")
    @classmethod
    def _gpus(cls, v: float) -> float:
        # Ray shares a GPU between tasks only in fractions of one; above one it hands out whole devices.
        if v > 1 and v != int(v):
            raise ValueError(f"a fraction of a GPU must be below 1; above 1 give a whole number, got {v!r}")
        return v


POSTGRES_DRIVERS = {"postgresql": "", "postgresql+psycopg": "psycopg", "postgresql+psycopg2": "psycopg2"}


def _default_postgres_driver() -> str:
    """The module SQLAlchemy uses for a bare postgresql:// URL: psycopg (3) from SQLAlchemy 2.1, psycopg2 before."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("sqlalchemy").split(".")[:2])
    return "psycopg" if (major, minor) >= (2, 1) else "psycopg2"


def check_database_url(v: str | None, what: str) -> str | None:
    """A server URL's port must be a number, and a PostgreSQL URL must name a driver that is installed (SQLAlchemy's
    and MLflow's own errors come only mid-start, as tracebacks)."""
    if v is None:
        return v
    if "://" in v and not v.startswith(("sqlite:", "file:")):
        try:
            urllib.parse.urlsplit(v).port
        except ValueError:
            raise ValueError(
                f"the {what} URL's port is not a number from 0 to 65535: give HOST:PORT "
                f"(e.g. postgresql://USER@HOST:5432/DB), got {mask_secrets(v)!r}"
            ) from None
    if not v.startswith("postgres"):
        return v
    scheme = v.split("://", 1)[0]
    if scheme not in POSTGRES_DRIVERS or "://" not in v:
        raise ValueError(
            f"a PostgreSQL {what} URL starts with one of "
            f"{', '.join(s + '://' for s in POSTGRES_DRIVERS)} (e.g. postgresql://USER@HOST:5432/DB), "
            f"got {mask_secrets(v)!r}"
        )
    module = POSTGRES_DRIVERS[scheme] or _default_postgres_driver()
    if importlib.util.find_spec(module) is None:
        package = "psycopg2-binary" if module == "psycopg2" else "psycopg[binary]"
        raise ValueError(
            f"the PostgreSQL driver {module!r} is not installed (pip install {package}), got {mask_secrets(v)!r}"
        )
    return v


# Cheap-then-full (search/rungs.py): the training epochs after which a plan's accuracy so far is read, and the
# optimistic gain (accuracy points) still allowed to a plan after so many epochs. Measured by benchmarks/curves.py
# on the learning curves of 225 digits plans and 30 MNIST plans of 6 to 16 epochs (docs/BENCHMARKS.md,
# "Cheap-then-full"): the smallest margins at which at most 1 in 10 stopped plans would have entered the front. The
# students' one-cycle schedule keeps epoch 1 near chance (hence 88.5 points: only hopeless plans stop there).
DEFAULT_RUNGS: tuple[int, ...] = (1, 3, 6)
DEFAULT_MARGIN_PT: dict[int, float] = {1: 88.5, 3: 25.5, 6: 1.5}  # by the rung's epoch


def default_margin_pt(epochs: float) -> float:
    """The measured margin after `epochs` epochs: that of the last measured rung at or before it (a rung between
    two measured ones keeps the earlier, larger margin)."""
    known = [e for e in DEFAULT_MARGIN_PT if e <= epochs]
    return DEFAULT_MARGIN_PT[max(known)] if known else max(DEFAULT_MARGIN_PT.values())


MAX_RUNGS = 16
MAX_EPOCHS = 10_000


class EarlyStopping(Strict):
    """Cheap-then-full: a plan's student trains in rungs, and after each the driver stops a plan that can no
    longer reach the front (search/rungs.py)."""

    # Cumulative training epochs (distillation and pruning's recovery), or shares of a plan's epochs below 1 (0.25:
    # a quarter of its training, whatever its epochs); []: off.
    rungs: list[float] = Field(default_factory=lambda: list(DEFAULT_RUNGS), max_length=MAX_RUNGS)
    # One optimistic gain per rung (a single number: the same for every rung), in accuracy points; None: measured.
    margin_pt: float | list[float] | None = None
    # Also stop a plan that cannot reach the pick's accuracy bar (pick.max_accuracy_drop below the teacher), not
    # only the front's feasibility floor: trainings go where the pick can land. Measured by benchmarks/curves.py
    # ("Serving the pick"): on the digits and MNIST curve tables it cost the front's hypervolume nothing and found
    # the pick as soon or sooner; there the bar never bound, so where it binds its cost is not measured.
    serve_pick: bool = True

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, v: list[float]) -> list[float]:
        shares, counts = all(0 < r < 1 for r in v), all(r == int(r) and 1 <= r <= MAX_EPOCHS for r in v)
        if not (shares or counts) or v != sorted(set(v)):
            raise ValueError(
                f"rungs are ascending, distinct, and either all epoch counts (whole numbers from 1 to {MAX_EPOCHS}) "
                f"or all shares of a plan's epochs (between 0 and 1, e.g. [0.25, 0.5]), got {v!r}"
            )
        return [int(r) if counts else r for r in v]

    @model_validator(mode="after")
    def _margins(self) -> "EarlyStopping":
        if self.margin_pt is None and any(r < 1 for r in self.rungs):
            raise ValueError(
                "margin_pt: rungs given as shares of a plan's epochs need their margins (one per rung, in accuracy "
                f"points); the measured defaults are for the epoch rungs {list(DEFAULT_RUNGS)}, got rungs {self.rungs}"
            )
        margins = self.margins()
        if any(not 0 <= m <= 100 for m in margins):
            raise ValueError(f"margin_pt: each margin is from 0 to 100 accuracy points, got {self.margin_pt!r}")
        if isinstance(self.margin_pt, list) and len(self.margin_pt) != len(self.rungs):
            raise ValueError(
                f"margin_pt: one margin per rung ({len(self.rungs)} rungs: {self.rungs}), or one number for all; "
                f"got {self.margin_pt!r}"
            )
        return self

    def margins(self) -> tuple[float, ...]:
        """The margin of each rung."""
        if self.margin_pt is None:
            return tuple(default_margin_pt(r) for r in self.rungs)
        if isinstance(self.margin_pt, list):
            return tuple(float(m) for m in self.margin_pt)
        return tuple(float(self.margin_pt) for _ in self.rungs)


BUDGET_UNITS = ("trainings", "epochs", "seconds")


class Budget(Strict):
    """The sweep's budget in compute: one of trainings (full trainings' worth: a plan stopped at a rung costs the
    share of its epochs it used), student epochs, or trial seconds (a worker's wall time on its CPUs/GPUs). An exact
    repeat answered from an earlier trial, a plan the gate stopped before training and a model made on a trial's way
    cost nothing."""

    trainings: float | None = Field(None, gt=0, le=MAX_TRIALS)
    epochs: float | None = Field(None, gt=0, le=MAX_TRIALS * 1000)
    seconds: float | None = Field(None, gt=0, le=365 * 24 * 3600)

    @model_validator(mode="after")
    def _one(self) -> "Budget":
        given = [u for u in BUDGET_UNITS if getattr(self, u) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(BUDGET_UNITS)} (e.g. budget: {{epochs: 200}}), got {given}"
            )
        return self

    def unit(self) -> tuple[str, float]:
        """The unit and the amount."""
        return next((u, float(getattr(self, u))) for u in BUDGET_UNITS if getattr(self, u) is not None)


class Search(_Masked):
    """The Optuna study, how many trials run at once and what each asks of a Ray node."""

    sampler: str = "tpe"  # a name registered in search.samplers.SAMPLERS
    trials: int = Field(24, ge=1, le=MAX_TRIALS)
    parallel: int = Field(2, ge=1, le=MAX_PARALLEL)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    storage: str | None = None  # default: sqlite in the output folder; postgresql://... for a shared study
    resources: Resources = Resources()
    # A trial attempt running longer than this is stopped and counts as a machinery failure (None: no limit).
    trial_timeout_s: float | None = Field(None, ge=1, le=7 * 24 * 3600)
    # Machinery failures (a dead worker or node, out of memory, the time limit) run the same plan again this many
    # times before the trial counts as failed.
    max_retries: int = Field(2, ge=0, le=10)
    # How often a driver records that it is alive; its trials are taken over after 4 missed beats.
    heartbeat_s: float = Field(10.0, ge=0.5, le=300)
    # Latency first against the front (search/gate.py): a plan whose untrained structure is slower and larger than
    # a model already within the noise of the best accuracy is not trained, and costs no trial of the budget.
    skip_dominated: bool = True
    early_stopping: EarlyStopping = EarlyStopping()
    # The budget in compute; without it, `trials` trainings (search/budget.py says what each trial costs).
    budget: Budget | None = None

    def compute_budget(self) -> tuple[str, float]:
        """The budget's unit and amount: `budget` if given, else `trials` trainings."""
        return self.budget.unit() if self.budget is not None else ("trainings", float(self.trials))

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        return check_sampler(v)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite:///", "postgresql", "mysql")):
            raise ValueError(f"storage must be an SQLAlchemy URL such as sqlite:///study.db, got {mask_secrets(v)!r}")
        return check_database_url(v, "storage")


class Tracking(_Masked):
    """Where MLflow records the sweep."""

    uri: str | None = None  # default: sqlite in the output folder; also http://SERVER:5000 or postgresql://...

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return check_database_url(v, "MLflow backend store")


class Pick(Strict):
    """The policy that picks the deployable model among front members, and the section of a policy with settings of
    its own (a key named after it: `pick: {policy: mine, mine: {...}}`)."""

    model_config = ConfigDict(extra="allow")  # the policies' own sections, validated by _sections

    policy: str = "fastest_within"  # a name registered in search.pick.PICK_POLICIES
    max_accuracy_drop: float = Field(1.0, ge=0, le=100)
    max_latency_ms: float | None = Field(None, gt=0)
    min_throughput_per_s: float | None = Field(None, gt=0, le=1e12)  # items per second at the target's batch
    # How long the front and the teacher may be timed side by side before the pick (it stops earlier once every
    # speed-up's 95% interval is within 3%).
    verify_seconds: float = Field(20.0, ge=1, le=600)

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        return check_pick_policy(v)

    @model_validator(mode="wrap")
    @classmethod
    def _sections(cls, data: Any, handler: Any) -> "Pick":
        stray = "settings of a policy other than pick.policy {chosen!r}: set policy: {name} or remove this"
        return with_sections(cls, data, handler, PICK_POLICIES, "policy", stray)

    def section(self, policy: str) -> Any:
        """The validated settings section of a policy with settings of its own (None for one without)."""
        return (self.__pydantic_extra__ or {}).get(policy)


class Experiment(_Masked):
    """One experiment file."""

    name: str
    task: TaskConfig = DigitsTask()
    space: Space = Space()
    objectives: list[str] = ["accuracy", "latency_p50_ms", "size_mb"]
    constraints: Constraints = Constraints()
    target: Target = Target()
    search: Search = Search()
    tracking: Tracking = Tracking()
    pick: Pick = Pick()
    output_dir: str = "outputs"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError(
                f"{v!r} is not allowed: it names folders and the registered model, so use up to 64 letters, "
                "digits, '_', '.' or '-', starting with a letter or digit"
            )
        return v

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, v: str) -> str:
        v = os.path.expanduser(v)  # checked and used as the same folder: ~/x is the home's x, not a folder named ~
        problem = folder_problem(Path(v))
        if problem:
            raise ValueError(f"{problem} (got {v!r})")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one objective")
        for name in v:
            if name not in METRIC_DIRECTIONS:
                raise ValueError(not_allowed(name, METRIC_DIRECTIONS))
        if len(set(v)) != len(v):
            raise ValueError(f"objectives repeat a metric: {v}")
        return v

    @model_validator(mode="after")
    def _onnx_only(self) -> "Experiment":
        # An ONNX-only task has no PyTorch model to distil or prune: only the quantization knobs apply.
        problem = self.quantization_only_problem() if isinstance(self.task, OnnxTask) else None
        if problem:
            raise ValueError(problem)
        return self

    def quantization_only_problem(self) -> str | None:
        """Why this space is more than quantization (what an ONNX model, with no PyTorch to train, allows)."""
        students, ratio = self.space.students, self.space.pruning.ratio
        if not students.teacher or students.kinds() != ["teacher"]:
            return "an ONNX-only task searches quantization only: set space.students to {teacher: true, cnn: null}"
        if any(r != 0 for r in (ratio if isinstance(ratio, list) else [ratio])):
            return f"an ONNX-only task searches quantization only: set space.pruning.ratio to 0.0 (got {ratio})"
        return None

    @property
    def out(self) -> Path:
        """This experiment's folder for outputs, caches and the default stores."""
        return Path(self.output_dir).expanduser() / self.name

    @property
    def storage_url(self) -> str:
        """The Optuna storage URL, defaulting to SQLite in the output folder."""
        return self.search.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI, defaulting to SQLite in the output folder."""
        return self.tracking.uri or f"sqlite:///{(self.out / 'mlflow.db').resolve()}"


def folder_problem(folder: Path) -> str | None:
    """Why folder cannot be used (or created) for writing, or None when it can."""
    if folder.exists():
        if not folder.is_dir():
            return "is a file, not a folder; give a folder (it is created if missing)"
        return None if os.access(folder, os.W_OK | os.X_OK) else "is a folder this user cannot write to"
    parent = folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {str(parent)!r} on its path is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: this user cannot write to {str(parent)!r}"
    return None


def short(value: Any) -> str:
    """A bad value as an error message quotes it: its repr, cut (a YAML alias can make it megabytes long)."""
    return _VALUE_REPR.repr(value)


class _Quoted:
    """A value as a message shows it, cut: repr() and str() as the value's own, at most a line long."""

    def __init__(self, value: Any) -> None:
        self.text, self.plain = short(value), str(value)[:120] if isinstance(value, str) else short(value)

    def __repr__(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.plain


def cut_message(text: str, limit: int = _MESSAGE_BYTES) -> str:
    """An error message as it is shown: passwords and tokens masked, cut to at most limit bytes (UTF-8), saying so."""
    text = mask_secrets(text)  # every message a command prints on error passes here
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[: limit - 40].decode("utf-8", errors="ignore") + f" ... [{len(raw) - limit + 40} more bytes cut]"


_KNOB_FORMS = "a number, a list of numbers to choose from, or a range {low: .., high: .., log: false}"


def _branch(loc: tuple[Any, ...]) -> str | None:
    """The union member pydantic tried for a knob ("float", "list[float]", "FloatRange"), if any."""
    for part in loc:
        if isinstance(part, str) and (part in {"float", "int"} or "FloatRange" in part or part.startswith("list[")):
            return part
    return None


def _user_loc(loc: tuple[Any, ...]) -> list[str]:
    # Branch names are pydantic's, not words the user wrote; nor is the task's tag (its name) after "task".
    if len(loc) > 1 and loc[0] == "task" and loc[1] in TASK_CONFIGS:
        loc = loc[:1] + loc[2:]
    return [str(p) for p in loc if _branch((p,)) is None]


def _value_at(data: Any, loc: list[str]) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _relevant(errors: list[dict[str, Any]], data: Any) -> list[dict[str, Any]]:
    """One error per field; for a knob, the one of the union member that matches what the user wrote."""
    chosen: dict[tuple[str, ...], dict[str, Any]] = {}
    for err in errors:
        branch = _branch(err["loc"])
        head = tuple(_user_loc(err["loc"][: err["loc"].index(branch)] if branch else err["loc"]))
        written = _value_at(data, list(head))
        wanted = "FloatRange" if isinstance(written, dict) else "list" if isinstance(written, list) else "scalar"
        got = (
            None
            if branch is None
            else "FloatRange"
            if "FloatRange" in branch
            else ("list" if branch.startswith("list[") else "scalar")
        )
        if head not in chosen or got == wanted:
            chosen[head] = err
    return list(chosen.values())


def _format(error: dict[str, Any]) -> str:
    """One line naming the field, the bad value and what is allowed."""
    loc = _user_loc(error["loc"])
    field = ".".join(loc) or "(top level)"
    kind, value = error["type"], masked(error.get("input"))  # masked before it is cut: a cut URL keeps no '@'
    if loc[:1] == ["task"] and kind in {"union_tag_invalid", "union_tag_not_found"}:
        where, message = task_error(error)
        return f"{'.'.join(['task', *where])}: {message}"
    if kind == "extra_forbidden":
        tagged = [str(p) for p in error["loc"][:-1] if _branch((p,)) is None]  # with the task's tag, if any
        parent = _model_at(Experiment, tagged)
        valid = list(parent.model_fields) if parent else []
        return f"{field}: unknown key; {not_allowed(_Quoted(loc[-1]), valid)}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        options = [o.strip().strip("'") for o in expected.replace(" or ", ", ").split(",")]
        return f"{field}: {not_allowed(_Quoted(value), options)}"
    if kind == "missing":
        return f"{field}: required but missing"
    message = error["msg"].removeprefix("Value error, ")
    branch = _branch(error["loc"])
    if branch and kind.endswith(("_type", "_parsing")):
        message = (
            "expected an integer or a list of integers to choose from"
            if branch in {"int", "list[int]"}
            else f"expected {_KNOB_FORMS}"
        )
    return f"{field}: {message}" + ("" if "got" in message or "is not allowed" in message else f" (got {short(value)})")


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The pydantic model a dotted path into the file lands on."""
    current: Any = model
    if path[:1] == ["task"] and len(path) > 1 and path[1] in TASK_CONFIGS:  # the task's tag picks its schema
        current, path = TASK_CONFIGS[path[1]], path[2:]
    for part in path:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        current = field.annotation
        for arg in getattr(current, "__args__", ()):  # Optional[Model]
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def parse(data: Any, source: str = "experiment") -> Experiment:
    """Validate a parsed experiment mapping; raise ConfigError naming the field, the value and what is allowed."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(data).__name__}")
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, data, source)) from None


def format_errors(exc: ValidationError, data: Any, source: str) -> str:
    """One line per bad field: the field, the bad value and what is allowed."""
    lines = [cut_message(f"{source}: {_format(err)}", 600) for err in _relevant(exc.errors(), data)]
    shown = []
    for i, line in enumerate(lines):
        if sum(len(s.encode()) + 1 for s in shown) + len(line.encode()) > _MESSAGE_BYTES:
            shown.append(f"{source}: ... and {len(lines) - i} more error(s)")
            break
        shown.append(line)
    return "\n".join(shown)


_MAX_VALUES = 100_000


def _check_size(data: Any, path: Path) -> None:
    """Refuse a file that expands to more values than any experiment has (YAML aliases that repeat each other)."""
    seen, stack = 0, [data]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > _MAX_VALUES:
            raise ConfigError(
                f"{path}: expands to more than {_MAX_VALUES} values (YAML anchors and aliases that "
                "repeat each other?); an experiment file is far smaller"
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """Read, apply dotted overrides (e.g. {"search.trials": 8}) and validate an experiment file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(cut_message(f"{path}: not valid YAML: {exc}")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    _check_size(data, path)
    if isinstance(data, dict):
        for dotted, value in (overrides or {}).items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                if node.get(part) is None:
                    node[part] = {}
                if not isinstance(node[part], dict):
                    raise ConfigError(f"{path}: {part}: expected a mapping of settings, got {node[part]!r}")
                node = node[part]
            node[leaf] = value
    return parse(data, str(path))
