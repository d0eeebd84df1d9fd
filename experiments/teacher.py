"""The teacher: trained once per task, settings and seed, and cached on disk so later sweeps reuse it; or read
from a checkpoint the user brings (a whole pickled model, TorchScript, or a torchvision architecture's state dict).
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from torch import nn

from evaluators.errors import ConfigError
from experiments.readers import DataError
from experiments.schema import TeacherSpec
from experiments.task_types import Task, TaskData
from spaces.students import CNN, Distillation, train


def cache_dir() -> Path:
    """Where trained teachers are kept (SLIMSWEEP_CACHE, else ~/.cache/slimsweep)."""
    return Path(os.environ.get("SLIMSWEEP_CACHE", Path.home() / ".cache" / "slimsweep"))


def teacher_key(task: str, seed: int, width: float, depth: int, epochs: int, lr: float) -> str:
    """A stable key for one teacher: the task, its split seed and every training setting."""
    blob = json.dumps(
        {"task": task, "seed": seed, "width": width, "depth": depth, "epochs": epochs, "lr": lr, "family": "cnn-v1"},
        sort_keys=True,
    )
    return f"{task}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class EpochReport:
    """One finished epoch of the teacher's training, as a progress display shows it."""

    epoch: int  # 1-based
    epochs: int
    loss: float  # the epoch's mean training loss
    accuracy: float  # on the validation split, in percent


def get_teacher(
    data: TaskData,
    *,
    seed: int,
    width: float,
    depth: int,
    epochs: int,
    lr: float,
    key: str | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> tuple[nn.Module, bool]:
    """The trained teacher and whether it came from the cache (keyed by `key`, default the data's name); while it
    trains, `on_epoch` hears each epoch with its validation accuracy."""
    torch.manual_seed(seed)
    model = CNN(data.input_shape[0], data.num_classes, width=width, depth=depth)
    path = cache_dir() / "teachers" / f"{teacher_key(key or data.name, seed, width, depth, epochs, lr)}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), True

    def report(epoch: int, loss: float) -> None:
        if on_epoch is not None:
            on_epoch(EpochReport(epoch, epochs, loss, validation_accuracy(model, data)))

    # The report only reads the model (no_grad, eval mode; no random numbers drawn), so a teacher trained while
    # watched has the same weights, and the same cache entry, as one trained unwatched.
    train(model, data.x_train, data.y_train, Distillation(epochs=epochs, lr=lr, alpha=0.0, seed=seed), on_epoch=report)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic: two sweeps training the same teacher never read half a file
    return model.eval(), False


def validation_accuracy(model: nn.Module, data: TaskData, batch: int = 512) -> float:
    """The model's accuracy on the task's validation split, in percent (leaves it in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    right = 0
    with torch.no_grad():
        for i in range(0, len(data.x_val), batch):
            logits = model(torch.from_numpy(data.x_val[i : i + batch]).to(device))
            right += int((logits.argmax(1).cpu() == torch.from_numpy(data.y_val[i : i + batch]).long()).sum())
    return 100.0 * right / max(len(data.x_val), 1)


def resolve_teacher(task: Task, *, on_epoch: Callable[[EpochReport], None] | None = None) -> tuple[nn.Module, bool]:
    """The task's teacher, ready to use: the one it brings, or the trained (cached) one; and whether it was cached.
    `on_epoch` hears each epoch of a teacher that trains now."""
    if task.onnx_only:
        raise ConfigError("an ONNX-only task has no PyTorch teacher; its ONNX model is the baseline")
    if task.teacher is not None:
        return task.teacher.eval(), False
    spec = task.teacher_spec or TeacherSpec()
    if spec.kind == "checkpoint":  # a Task built by hand, with the checkpoint not yet read
        return load_checkpoint(spec, task.data.num_classes), False
    return get_teacher(task.data, seed=task.seed, key=task.cache_key, on_epoch=on_epoch, **spec.train_settings())


def torchvision_arch(arch: str) -> str:
    """Refuse a name that is not a torchvision classification architecture, listing the close ones."""
    import torchvision.models

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.5)
        hint = f"close names: {', '.join(close)}" if close else f"known ones: {', '.join(names)}"
        raise ConfigError(f"task.teacher.arch: {arch!r} is not a torchvision classification architecture; {hint}")
    return arch


def load_checkpoint(spec: TeacherSpec, num_classes: int) -> nn.Module:
    """The teacher a checkpoint holds, in eval mode; never downloads weights.

    Only format pickle runs torch.load(weights_only=False): unpickling runs code the file names, so it must be asked
    for by name, for checkpoints you trust. auto reads TorchScript and state dicts, which load without running such
    code, and refuses anything else.
    """
    path = Path(spec.checkpoint or "").expanduser()
    where = f"task.teacher.checkpoint {str(path)!r}"
    _readable(path, where)
    fmt = spec.format
    if fmt == "auto":
        fmt = "torchscript" if is_torchscript(path) else "state_dict" if spec.arch else "unknown"
    if fmt == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, and still loads
                model = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise DataError(f"{where}: not a TorchScript file (torch.jit.save): {_first_line(exc)}") from None
        return model.eval()
    if fmt == "state_dict":
        return _from_state_dict(path, torchvision_arch(spec.arch or ""), num_classes, where)
    if fmt == "unknown":
        try:  # weights_only: reads tensors and plain containers, never runs code from the file
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a pickled model (refused by weights_only), or not a torch file at all
            state = None
        if isinstance(state, dict):
            raise ConfigError(
                f"{where}: holds a state dict, not a model; give arch: the torchvision architecture "
                "it was saved from (format: state_dict)"
            )
        raise ConfigError(
            f"{where}: neither TorchScript nor a state dict, and format auto never runs code from a "
            "file; if it is a whole model saved with torch.save(model) by someone you trust, set "
            "format: pickle (loading it runs the code the file names)"
        )
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)  # runs the file's code: asked for by name
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything the file's classes raise
        raise DataError(
            f"{where}: cannot be loaded as a saved model: {type(exc).__name__}: {_first_line(exc)} "
            "(a model class must be importable here, under the module it was saved from)"
        ) from None
    if not isinstance(model, nn.Module):
        raise DataError(
            f"{where}: holds a {type(model).__name__}, not a torch.nn.Module; for a state dict give "
            "arch: the torchvision architecture (format: state_dict)"
        )
    return model.eval()


def _readable(path: Path, where: str) -> None:
    """Refuse a checkpoint this user cannot read, naming it (a data error, not a crash)."""
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        raise DataError(f"{where}: cannot be read: {exc.strerror or exc}") from None


def _from_state_dict(path: Path, arch: str, num_classes: int, where: str) -> nn.Module:
    import torchvision.models

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a pickled model, or not a torch file at all
        raise DataError(
            f"{where}: not a state dict (torch.save(model.state_dict())): {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if isinstance(state, dict):
        # Training scripts often wrap the weights ({"state_dict": ...}) or save them from DataParallel ("module.").
        for wrapper in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
        if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
            state = {k.removeprefix("module."): v for k, v in state.items()}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{where}: expected a state dict (names -> tensors), got {type(state).__name__}")
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)  # weights=None: no download
    fit = f"{where}: does not fit torchvision {arch!r} with {num_classes} classes"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of other shapes
        raise DataError(f"{fit}: {' '.join(str(exc).split())[:600]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise DataError(
            f"{fit}: {len(result.missing_keys)} missing key(s) {result.missing_keys[:3]}, "
            f"{len(result.unexpected_keys)} unexpected key(s) {result.unexpected_keys[:3]}"
        )
    return model.eval()


def check_teacher(model: nn.Module, data: TaskData, source: str) -> None:
    """Refuse a teacher that does not take the task's inputs or does not score its classes."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(data.x_val[:2]))
    except Exception as exc:  # noqa: BLE001 - any layer may refuse the shape
        raise DataError(
            f"{source}: the teacher does not run on the task's inputs (shape {data.input_shape}): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(data.x_val[:2]), data.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(
            f"{source}: the teacher outputs {shape}; this task needs (batch, {data.num_classes}) class scores"
        )


def is_torchscript(path: str | Path | IO[bytes]) -> bool:
    """Whether a file is a TorchScript archive (torch.jit.save), which holds its code, not a pickle of it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def teacher_to_bytes(model: nn.Module) -> bytes:
    """A teacher as bytes a worker can rebuild it from (TorchScript modules cannot be pickled)."""
    buffer = io.BytesIO()
    if isinstance(model, torch.jit.ScriptModule):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(model, buffer)
    else:
        torch.save(model, buffer)
    return buffer.getvalue()


def teacher_from_bytes(blob: bytes) -> nn.Module:
    """The teacher teacher_to_bytes wrote, in eval mode (bytes from this sweep's own driver, so trusted)."""
    if is_torchscript(io.BytesIO(blob)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(io.BytesIO(blob), map_location="cpu").eval()
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False).eval()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]
