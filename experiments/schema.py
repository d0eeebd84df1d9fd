"""The `task:` section of an experiment file: which data, which teacher. Light: pydantic only, no torch.

Paths are checked here (a missing file is refused before anything loads); what needs the heavy libraries (is
`arch` a torchvision architecture, is the ONNX file valid, do the files parse) is checked when the task loads.
Relative paths are relative to the working folder the sweep runs in.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from evaluators.errors import ConfigError
from spaces.knobs import Strict

# The real MNIST test set shipped with slimsweep (see its README for the attribution).
SHIPPED_MNIST = Path(__file__).parent / "data" / "mnist-t10k"

TRAIN_KEYS = ("width", "depth", "epochs", "lr")
# Upper bounds on counts and sizes (README, "The experiment file's bounds"): far above any useful setting, low
# enough that a typo cannot ask for years of training or all the memory of the machine.
MAX_SEED = 2**32 - 1  # what numpy and torch seeds accept
MAX_EPOCHS = 10_000
MAX_TEACHER_DEPTH = 64
MAX_WIDTH = 64.0
MAX_LIMIT = 100_000_000


def _exists(value: str | None, *, folder: bool = False) -> str | None:
    """Refuse a path that does not exist, naming it (pydantic adds the field)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"no such {'folder' if folder else 'file'} (got {value!r})")
    if folder and not path.is_dir():
        raise ValueError(f"expected a folder, got the file {value!r}")
    if not folder and path.is_dir():
        raise ValueError(f"expected a file, got the folder {value!r}")
    return value


class TeacherSpec(Strict):
    """The teacher: today's CNN family trained and cached (width, depth, epochs, lr), or a checkpoint.

    Written either flat (`{width: 1.0, depth: 2, epochs: 30, lr: 0.003}`, as experiment files always did), as
    `{train: {width: .., ...}}`, or as `{checkpoint: PATH, format: auto, arch: resnet18}`. Loading a checkpoint
    never downloads weights.
    """

    width: float = Field(1.0, gt=0, le=MAX_WIDTH)
    depth: int = Field(2, ge=1, le=MAX_TEACHER_DEPTH)
    epochs: int = Field(30, ge=1, le=MAX_EPOCHS)
    lr: float = Field(0.003, gt=0, le=10)
    checkpoint: str | None = None
    # pickle: a whole model saved with torch.save(model), loaded by running the file's code - trusted files only.
    # torchscript: torch.jit.save; state_dict: torch.save(model.state_dict()) of the torchvision `arch`.
    format: Literal["auto", "pickle", "torchscript", "state_dict"] = "auto"
    # A torchvision classification architecture (torchvision.models.list_models()); num_classes from the task.
    arch: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _train_section(cls, data: Any) -> Any:
        # `train: {...}` is the explicit spelling of the flat training settings.
        if isinstance(data, dict) and "train" in data:
            train = data["train"]
            if not isinstance(train, dict):
                raise ValueError(f"train: expected a mapping of {', '.join(TRAIN_KEYS)}, got {train!r}")
            both = [k for k in TRAIN_KEYS if k in data]
            if both:
                raise ValueError(f"give the training settings once, under train, not also {', '.join(both)}")
            data = {**{k: v for k, v in data.items() if k != "train"}, **train}
        return data

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, v: str | None) -> str | None:
        return _exists(v)

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z][a-z0-9_]*", v):
            raise ValueError(f"expected a torchvision architecture name such as 'resnet18', got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> TeacherSpec:
        settings = sorted(set(TRAIN_KEYS) & self.model_fields_set)
        if self.checkpoint is None:
            if "format" in self.model_fields_set or self.arch is not None:
                raise ValueError("format and arch describe a checkpoint; give checkpoint: PATH too")
            return self
        if settings:
            raise ValueError(f"give either a checkpoint or training settings, not both (drop {', '.join(settings)})")
        if self.format == "state_dict" and self.arch is None:
            raise ValueError("a state_dict checkpoint needs arch: the torchvision architecture it was saved from")
        if self.arch is not None and self.format in {"pickle", "torchscript"}:
            raise ValueError(f"arch is for a state_dict checkpoint; a {self.format} checkpoint holds its own model")
        return self

    @property
    def kind(self) -> Literal["train", "checkpoint"]:
        """Whether the teacher is trained (and cached) or read from a checkpoint."""
        return "train" if self.checkpoint is None else "checkpoint"

    def train_settings(self) -> dict[str, Any]:
        """The training settings, as get_teacher takes them."""
        return {k: getattr(self, k) for k in TRAIN_KEYS}


# Every task has a seed: the split's (and the trained teacher's). `limit` keeps a stratified subsample of that
# many images. The fields are written out in each class, so an error lists them in the order a user writes them.


class DigitsTask(Strict):
    """scikit-learn's bundled 8x8 digits."""

    name: Literal["digits"] = "digits"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    teacher: TeacherSpec = TeacherSpec()


class MnistIdxTask(Strict):
    """MNIST-format IDX files (gzip or raw) from a folder; the shipped MNIST test set by default."""

    name: Literal["mnist-idx"]
    path: str | None = None  # a folder of *-images-idx3-ubyte[.gz] / *-labels-idx1-ubyte[.gz]; None: the shipped one
    limit: int | None = Field(None, ge=20, le=MAX_LIMIT)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    teacher: TeacherSpec = TeacherSpec()

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return _exists(v, folder=True)

    @property
    def folder(self) -> Path:
        """The folder the IDX files are read from."""
        return Path(self.path).expanduser() if self.path else SHIPPED_MNIST


class Cifar10Task(Strict):
    """CIFAR-10 through torchvision (its python batches under root/cifar-10-batches-py)."""

    name: Literal["cifar10"]
    download: bool = False  # let torchvision download it into root (users' machines; never in tests)
    root: str
    limit: int | None = Field(None, ge=20, le=MAX_LIMIT)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    teacher: TeacherSpec = TeacherSpec()

    @field_validator("root")
    @classmethod
    def _root(cls, v: str, info: ValidationInfo) -> str:
        # download is declared first so that it is known here: a root to download into need not exist yet.
        if not info.data.get("download") and not Path(v).expanduser().is_dir():
            raise ValueError(f"no such folder (got {v!r}); set download: true to fetch CIFAR-10 there")
        return v


class ImageFolderTask(Strict):
    """One folder per class of images (torchvision ImageFolder), resized to a square."""

    name: Literal["imagefolder"]
    root: str
    image_size: int = Field(..., ge=8, le=1024)
    grayscale: bool = False
    limit: int | None = Field(None, ge=20, le=MAX_LIMIT)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    teacher: TeacherSpec = TeacherSpec()

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return _exists(v, folder=True)  # type: ignore[return-value]


class PluginTask(Strict):
    """A user's function `module:function(**options)` returning the task (data, teacher, input shape)."""

    name: Literal["plugin"]
    entry: str
    options: dict[str, Any] = Field(default_factory=dict)  # passed to the function as keyword arguments
    seed: int = Field(0, ge=0, le=MAX_SEED)  # also passed to the function when it takes a `seed` parameter
    teacher: TeacherSpec = TeacherSpec()  # used only when the function returns no teacher

    @field_validator("entry")
    @classmethod
    def _entry(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError(f"expected 'module:function', e.g. 'mypkg.tasks:make_task', got {v!r}")
        return v


class OnnxTask(Strict):
    """A user's ONNX model and data: the search runs over the quantization knobs only."""

    name: Literal["onnx"]
    model: str  # the .onnx file
    data: str  # an .npz with x_calib, x_val, y_val (x_train, y_train optional)
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @field_validator("model", "data")
    @classmethod
    def _files(cls, v: str) -> str:
        return _exists(v)  # type: ignore[return-value]


TASK_CONFIGS: dict[str, type[Strict]] = {
    "digits": DigitsTask,
    "mnist-idx": MnistIdxTask,
    "cifar10": Cifar10Task,
    "imagefolder": ImageFolderTask,
    "plugin": PluginTask,
    "onnx": OnnxTask,
}


def task_name(value: Any) -> str | None:
    """The task's name, the union's tag; a task written without one is the digits quickstart, as it always was."""
    if isinstance(value, dict):
        return value.get("name", "digits")
    return getattr(value, "name", None)


TaskConfig = Annotated[
    Annotated[DigitsTask, Tag("digits")]
    | Annotated[MnistIdxTask, Tag("mnist-idx")]
    | Annotated[Cifar10Task, Tag("cifar10")]
    | Annotated[ImageFolderTask, Tag("imagefolder")]
    | Annotated[PluginTask, Tag("plugin")]
    | Annotated[OnnxTask, Tag("onnx")],
    # Errors: union_tag_invalid (ctx: tag, expected_tags) for an unknown name, union_tag_not_found for a non-mapping.
    Discriminator(task_name),
]

_ADAPTER: TypeAdapter[Any] = TypeAdapter(TaskConfig)


def task_error(err: dict[str, Any]) -> tuple[list[str], str]:
    """One validation error of a task section as (the keys the user wrote, a message naming what is allowed)."""
    kind, loc = err["type"], [str(p) for p in err["loc"]]
    if kind == "union_tag_invalid":
        return ["name"], f"unknown task {err['ctx']['tag']!r}; choose one of: {', '.join(TASK_CONFIGS)}"
    if kind == "union_tag_not_found":
        return [], f"expected a mapping with name: one of {', '.join(TASK_CONFIGS)} (got {err.get('input')!r})"
    loc = loc[1:]  # the first part is the union's tag (the task's name), not a key the user wrote
    if kind == "extra_forbidden":
        parent: Any = TASK_CONFIGS[str(err["loc"][0])]
        if len(loc) > 1 and loc[0] == "teacher":
            parent = TeacherSpec
        return loc, f"unknown key; choose one of: {', '.join(parent.model_fields)}"
    if kind == "missing":
        return loc, "required but missing"
    message = err["msg"].removeprefix("Value error, ")
    return loc, message + ("" if "got" in message else f" (got {err.get('input')!r})")


def parse_task(data: Any, source: str = "task") -> Any:
    """Validate a task mapping (outside an experiment file); raise ConfigError naming each bad field."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc, message = task_error(err)
            lines.append(f"{'.'.join([source, *loc])}: {message}")
        raise ConfigError("\n".join(lines)) from None
