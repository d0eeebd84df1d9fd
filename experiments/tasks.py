"""Tasks a sweep compresses: a dataset split three ways, the shape of its inputs, and the teacher it brings.

`load_task(config)` reads the `task:` section of an experiment file (experiments/schema.py). Torch, torchvision
and onnx are imported only by the task that needs them.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.errors import ConfigError, SlimsweepError, did_you_mean
from experiments import readers
from experiments.readers import DataError
from experiments.schema import (
    Cifar10Task,
    DigitsTask,
    ImageFolderTask,
    MnistIdxTask,
    OnnxTask,
    PluginTask,
    TeacherSpec,
    parse_task,
)
from experiments.task_types import Task, TaskData


def split(name: str, x: np.ndarray, y: np.ndarray, *, val: int, calib: int, seed: int) -> TaskData:
    """A fixed, seeded, stratified three-way split."""
    from sklearn.model_selection import train_test_split  # on the driver only: Ray workers never split

    x_rest, x_val, y_rest, y_val = train_test_split(x, y, test_size=val, random_state=seed, stratify=y)
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=calib, random_state=seed, stratify=y_rest
    )
    return TaskData(name, x_train, y_train, x_calib, y_calib, x_val, y_val, int(y.max()) + 1)


def digits(seed: int = 0) -> TaskData:
    """scikit-learn's bundled 8x8 digits (1,797 images): 1,197 train, 200 calibration, 400 validation."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    return split("digits", x, bunch.target.astype(np.int64), val=400, calib=200, seed=seed)


# Shares of a dataset held out when a task has one set of files (validation, calibration), and the calibration
# cap: static quantization needs a few hundred samples, and more only slows every trial down.
VAL_SHARE, CALIB_SHARE, CALIB_MAX = 0.2, 0.05, 1000


def load_task(config: Any) -> Task:
    """Load the task an experiment's `task:` section names (a schema object or a plain mapping)."""
    if isinstance(config, dict):
        config = parse_task(config)
    return _LOADERS[config.name](config)


def _digits(c: DigitsTask) -> Task:
    # The bundled data never changes, so its name is its identity (and teachers cached before stay valid).
    return _with_teacher(digits(c.seed), c.teacher, c.seed, key="digits")


def _mnist_idx(c: MnistIdxTask) -> Task:
    sets = readers.idx_sets(c.folder)
    if len(sets) == 1:
        (pair,) = sets.values()
        data = _three_way("mnist-idx", readers.read_idx_set(*pair), limit=c.limit, seed=c.seed)
    elif len(sets) == 2 and "train" in sets:
        (test_prefix,) = set(sets) - {"train"}
        train, test = readers.read_idx_set(*sets["train"]), readers.read_idx_set(*sets[test_prefix])
        data = _official("mnist-idx", train, test, limit=c.limit, seed=c.seed)
    else:
        raise DataError(
            f"{c.folder}: found the IDX sets {', '.join(sorted(sets))}; expected one set (split three "
            "ways) or 'train' plus one test set such as 't10k'"
        )
    return _with_teacher(data, c.teacher, c.seed)


def _cifar10(c: Cifar10Task) -> Task:
    root = Path(c.root).expanduser()
    train = readers.read_cifar10(root, train=True, download=c.download)
    test = readers.read_cifar10(root, train=False, download=False)  # the download above fetched both
    return _with_teacher(_official("cifar10", train, test, limit=c.limit, seed=c.seed), c.teacher, c.seed)


def _imagefolder(c: ImageFolderTask) -> Task:
    ds = readers.image_folder(Path(c.root).expanduser(), image_size=c.image_size, grayscale=c.grayscale)
    # Subsample before decoding: a limit on a large folder should not read every image.
    keep = _subsample(np.asarray(ds.targets, dtype=np.int64), c.limit, c.seed, "imagefolder")
    data = _three_way("imagefolder", readers.read_images(ds, keep), limit=None, seed=c.seed)
    return _with_teacher(data, c.teacher, c.seed)


def _onnx(c: OnnxTask) -> Task:
    model = _onnx_model(Path(c.model).read_bytes(), c.model)
    arrays = readers.read_npz(Path(c.data), ("x_calib", "x_val", "y_val"), ("x_train", "y_train", "y_calib"))
    x_calib, x_val = (np.asarray(arrays[k], dtype=np.float32) for k in ("x_calib", "x_val"))
    y_val = _labels(arrays["y_val"], len(x_val), f"{c.data}: y_val")
    num_classes = _onnx_classes(model, x_val, c.model, c.data)
    if y_val.max() >= num_classes:
        raise DataError(f"{c.data}: y_val holds label {y_val.max()}, but {c.model} outputs {num_classes} classes")
    x_train = np.asarray(arrays.get("x_train", x_calib), dtype=np.float32)
    y_train = _optional_labels(arrays, "y_train", len(x_train), c.data)
    y_calib = _optional_labels(arrays, "y_calib", len(x_calib), c.data)
    data = TaskData("onnx", x_train, y_train, x_calib, y_calib, x_val, y_val, num_classes)
    return Task(data, onnx_model=model, seed=c.seed)


def _plugin(c: PluginTask) -> Task:
    fn = _entry_point(c.entry)
    kwargs = dict(c.options)
    if "seed" not in kwargs and _takes(fn, "seed"):
        kwargs["seed"] = c.seed
    try:
        out = fn(**kwargs)
    except SlimsweepError:
        raise
    except Exception as exc:  # the user's code: say whose it is, keep its traceback as the cause
        raise DataError(f"task.entry: {c.entry}(**options) raised {type(exc).__name__}: {exc}") from exc
    if isinstance(out, Task):
        task = out
        _check_data(task.data, c.entry)
        if task.teacher is None and task.onnx_model is None and task.teacher_spec is None:
            task = dataclasses.replace(task, teacher_spec=c.teacher, seed=c.seed)
        if task.onnx_model is not None:
            task = dataclasses.replace(task, onnx_model=_onnx_model(task.onnx_model, c.entry))
    elif isinstance(out, dict):
        task = _task_from_dict(out, c)
    else:
        raise DataError(
            f"task.entry: {c.entry} returned {type(out).__name__}; it must return an "
            f"experiments.tasks.Task or a dict with keys from: {', '.join(PLUGIN_KEYS)}"
        )
    if task.teacher is not None:
        from experiments.teacher import check_teacher

        check_teacher(task.teacher, task.data, c.entry)
    elif task.teacher_spec is not None and task.teacher_spec.kind == "checkpoint":
        task = _with_teacher(task.data, task.teacher_spec, task.seed)
    return task


_LOADERS: dict[str, Callable[[Any], Task]] = {
    "digits": _digits,
    "mnist-idx": _mnist_idx,
    "cifar10": _cifar10,
    "imagefolder": _imagefolder,
    "plugin": _plugin,
    "onnx": _onnx,
}

# What a plugin's dict may hold: the data (a TaskData, or the six arrays), a teacher or an ONNX model, and the
# input shape (flat arrays are reshaped to it) and number of classes (else the largest label + 1).
ARRAYS = ("x_train", "y_train", "x_calib", "y_calib", "x_val", "y_val")
PLUGIN_KEYS = ("data", *ARRAYS, "teacher", "onnx_model", "input_shape", "num_classes", "name")


def _task_from_dict(out: dict[str, Any], c: PluginTask) -> Task:
    source = c.entry
    unknown = sorted(set(out) - set(PLUGIN_KEYS))
    if unknown:
        raise DataError(
            f"task.entry: {source} returned unknown key(s) {', '.join(unknown)}; allowed: {', '.join(PLUGIN_KEYS)}"
        )
    shape = tuple(int(d) for d in out["input_shape"]) if out.get("input_shape") is not None else None
    if "data" in out:
        data = out["data"]
        if not isinstance(data, TaskData) or any(k in out for k in ARRAYS):
            raise DataError(
                f"task.entry: {source} returned 'data' ({type(data).__name__}); give either data: a "
                f"TaskData, or the arrays {', '.join(ARRAYS)}, not both"
            )
    else:
        missing = [k for k in ARRAYS if k not in out]
        if missing:
            raise DataError(
                f"task.entry: {source} returned no {', '.join(missing)}; a dict needs data (a TaskData) "
                f"or all of {', '.join(ARRAYS)}"
            )
        xs = {k: _inputs(out[k], shape, f"{source}: {k}") for k in ARRAYS[0::2]}
        ys = {k: _labels(out[k], len(xs["x" + k[1:]]), f"{source}: {k}") for k in ARRAYS[1::2]}
        num_classes = int(out.get("num_classes") or max(int(y.max()) for y in ys.values()) + 1)
        data = TaskData(
            str(out.get("name", "plugin")),
            xs["x_train"],
            ys["y_train"],
            xs["x_calib"],
            ys["y_calib"],
            xs["x_val"],
            ys["y_val"],
            num_classes,
        )
    _check_data(data, source)
    if shape is not None and data.input_shape != shape:
        raise DataError(
            f"task.entry: {source} returned input_shape {shape}, but its inputs have shape {data.input_shape}"
        )
    teacher, onnx_model = out.get("teacher"), out.get("onnx_model")
    if teacher is not None and onnx_model is not None:
        raise DataError(f"task.entry: {source} returned both a teacher and an ONNX model; return one")
    if teacher is not None:
        from torch import nn

        if not isinstance(teacher, nn.Module):
            raise DataError(
                f"task.entry: {source} returned teacher of type {type(teacher).__name__}; expected a torch.nn.Module"
            )
    if onnx_model is not None:
        raw = onnx_model if isinstance(onnx_model, bytes) else Path(onnx_model).read_bytes()
        onnx_model = _onnx_model(raw, source)
    spec = c.teacher if teacher is None and onnx_model is None else None
    return Task(data, teacher=teacher, onnx_model=onnx_model, teacher_spec=spec, seed=c.seed)


def _entry_point(entry: str) -> Callable[..., Any]:
    module_name, _, name = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"task.entry: no module named {module_name!r} (from {entry!r}); install it or put "
                "its folder on PYTHONPATH"
            ) from None
        raise DataError(f"task.entry: importing {module_name!r} failed: {exc}") from exc
    fn = getattr(module, name, None)
    if fn is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(
            f"task.entry: module {module_name!r} has no function {name!r}{did_you_mean(name, public)}; "
            f"its functions: {', '.join(public) or 'none'}"
        )
    if not callable(fn):
        raise ConfigError(f"task.entry: {entry!r} is a {type(fn).__name__}, not a function")
    return fn


def _takes(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _with_teacher(data: TaskData, spec: TeacherSpec, seed: int, key: str | None = None) -> Task:
    """The task with its checkpoint teacher loaded, or with the settings to train one."""
    teacher = None
    if spec.kind == "checkpoint":
        from experiments.teacher import check_teacher, load_checkpoint

        teacher = load_checkpoint(spec, data.num_classes)
        check_teacher(teacher, data, f"task.teacher.checkpoint {spec.checkpoint!r}")
    return Task(data, teacher=teacher, teacher_spec=spec, seed=seed, key=key)


def _subsample(y: np.ndarray, limit: int | None, seed: int, name: str) -> np.ndarray:
    """Indices of a stratified, seeded subsample of `limit` samples (all of them without a limit)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    if limit is None or limit >= len(y):
        return index
    try:
        keep, _ = train_test_split(index, train_size=limit, random_state=seed, stratify=y)
    except ValueError as exc:
        raise DataError(
            f"{name}: task.limit {limit} is too small for a stratified sample of {len(np.unique(y))} classes: {exc}"
        ) from None
    return np.sort(keep)


def _three_way(name: str, images: readers.Images, *, limit: int | None, seed: int) -> TaskData:
    """One set of files split train / calibration / validation (stratified, seeded)."""
    keep = _subsample(images.y, limit, seed, name)
    x, y = images.x[keep], images.y[keep]
    n, k = len(y), len(np.unique(y))
    val = max(k, round(n * VAL_SHARE))
    calib = max(k, min(CALIB_MAX, round(n * CALIB_SHARE)))
    try:
        data = split(name, x, y, val=val, calib=calib, seed=seed)
    except ValueError as exc:
        raise DataError(
            f"{name}: {n} samples of {k} classes are too few for a stratified train / calibration / "
            f"validation split ({val} validation, {calib} calibration): {exc}"
        ) from None
    return dataclasses.replace(data, num_classes=max(len(images.classes), data.num_classes))


def _official(name: str, train: readers.Images, test: readers.Images, *, limit: int | None, seed: int) -> TaskData:
    """A train set and a test set: calibration comes out of the train set, the test set validates."""
    from sklearn.model_selection import train_test_split

    if limit is not None and limit < len(train.y) + len(test.y):
        n_train = round(limit * len(train.y) / (len(train.y) + len(test.y)))
        train, test = (
            _take(train, _subsample(train.y, n_train, seed, name)),
            _take(test, _subsample(test.y, limit - n_train, seed, name)),
        )
    k = len(np.unique(train.y))
    calib = max(k, min(CALIB_MAX, round(len(train.y) * CALIB_SHARE)))
    try:
        x_train, x_calib, y_train, y_calib = train_test_split(
            train.x, train.y, test_size=calib, random_state=seed, stratify=train.y
        )
    except ValueError as exc:
        raise DataError(
            f"{name}: {len(train.y)} training samples of {k} classes are too few to hold out "
            f"{calib} for calibration (stratified): {exc}"
        ) from None
    num_classes = max(len(test.classes), int(max(train.y.max(), test.y.max())) + 1)
    return TaskData(name, x_train, y_train, x_calib, y_calib, test.x, test.y, num_classes)


def _take(images: readers.Images, index: np.ndarray) -> readers.Images:
    return readers.Images(images.x[index], images.y[index], images.classes)


def _inputs(x: Any, shape: tuple[int, ...] | None, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if shape is None:
        return x
    if x.ndim == 0 or int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise DataError(f"{what}: shape {x.shape} does not hold samples of input_shape {shape}")
    return x.reshape(len(x), *shape)


def _labels(y: Any, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: expected {n} integer class labels (1 dimension), got {y.dtype} of shape {y.shape}")
    if len(y) and y.min() < 0:
        raise DataError(f"{what}: labels must be >= 0, got {y.min()}")
    return y.astype(np.int64)


def _optional_labels(arrays: dict[str, np.ndarray], key: str, n: int, path: str) -> np.ndarray:
    # Nothing trains in an ONNX-only task; -1 marks a label the data did not give.
    if key in arrays:
        return _labels(arrays[key], n, f"{path}: {key}")
    return np.full(n, -1, dtype=np.int64)


def _check_data(data: TaskData, source: str) -> None:
    """Refuse a TaskData a plugin built wrong: arrays that disagree in length or shape, labels out of range."""
    if not isinstance(data, TaskData):
        raise DataError(f"task.entry: {source} returned data of type {type(data).__name__}; expected a TaskData")
    shapes = {x.shape[1:] for x in (data.x_train, data.x_calib, data.x_val)}
    if len(shapes) != 1:
        raise DataError(
            f"task.entry: {source}: train, calibration and validation inputs differ in shape: {sorted(shapes)}"
        )
    for part in ("train", "calib", "val"):
        x, y = getattr(data, f"x_{part}"), getattr(data, f"y_{part}")
        if len(x) == 0 or len(x) != len(y):
            raise DataError(
                f"task.entry: {source}: x_{part} has {len(x)} samples and y_{part} {len(y)}; "
                "they must match and not be empty"
            )
        if x.dtype != np.float32:
            raise DataError(f"task.entry: {source}: x_{part} is {x.dtype}; inputs must be float32")
        if y.max() >= data.num_classes:
            raise DataError(
                f"task.entry: {source}: y_{part} holds label {y.max()} but num_classes is {data.num_classes}"
            )


def _onnx_model(raw: bytes, source: str) -> bytes:
    """The model's bytes, once onnx's checker accepts them."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load_model_from_string(raw))
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, ValidationError, ... for a bad file
        raise DataError(f"{source}: not a valid ONNX model: {type(exc).__name__}: {exc}") from None
    return raw


def _onnx_classes(model: bytes, x_val: np.ndarray, model_path: str, data_path: str) -> int:
    """How many classes the model scores, found by running it on two validation samples."""
    from evaluators.accuracy import predict

    try:
        logits = predict(model, x_val[:2])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors for a wrong input shape or type
        raise DataError(
            f"{model_path} does not run on x_val of {data_path} (samples of shape {x_val.shape[1:]}): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if logits.ndim != 2:
        raise DataError(f"{model_path}: expected class scores of shape (batch, classes), got {logits.shape}")
    return int(logits.shape[1])
