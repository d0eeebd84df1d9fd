"""What a study was made for: a fingerprint of everything that changes a trial's result (the task and its data, the
space, the target, the objectives, the constraints), so a resume with another one is refused, never mixed in.

The budget, the parallelism, the sampler, the pick policy and where things are stored are left out: changing them
is a resume. Data is known by its content (file names, sizes and bytes), not by its path, so the same data in
another folder or on another machine is the same task. What is stored holds hashes only, never a value (a plugin's
options may hold a secret).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

from search.config import Experiment

FINGERPRINT_VERSION = 1
COMPONENTS = ("task", "data", "space", "target", "objectives", "constraints")
# Path fields of the task sections (experiments/schema.py): their content is the data's identity, their text is not.
_PATH_FIELDS = ("path", "root", "model", "data")
# A file up to this size is hashed whole; a larger one by its size, its first and its last _EDGE bytes (a dataset or
# checkpoint of gigabytes is read on every resume otherwise).
_WHOLE = 256 * 2**20
_EDGE = 8 * 2**20


def _settings(section: Any) -> dict[str, Any]:
    """A section's settings that differ from their defaults, with its kind or name kept (the tag that tells two
    sections apart even when both are all defaults). A release that adds a setting with a default so leaves every
    stored fingerprint as it was: an upgrade is still a resume."""
    out = section.model_dump(mode="json", exclude_defaults=True)
    for tag in ("name", "kind"):
        if hasattr(section, tag):
            out[tag] = getattr(section, tag)
    return out


def made_for(exp: Experiment) -> dict[str, Any]:
    """Each component of the experiment that changes results, as plain JSON values."""
    task, every = _settings(exp.task), exp.task.model_dump(mode="json")
    data = {}
    for key in _PATH_FIELDS:  # a data source at its default is read all the same: known by content either way
        if key in every:
            data[key] = _identity(_data_path(exp, key))
            task.pop(key, None)
    checkpoint = (every.get("teacher") or {}).get("checkpoint")
    if checkpoint:
        data["teacher.checkpoint"] = _identity(Path(checkpoint).expanduser())
        (task.get("teacher") or {}).pop("checkpoint", None)
    task.pop("download", None)  # whether torchvision may fetch CIFAR-10 says nothing of the data read
    target = _settings(exp.target)
    for key in ("token_file", "reserve_cores"):  # how the target is reached and kept quiet, not what it is
        target.pop(key, None)
    if target.get("url"):
        target["url"] = _without_userinfo(target["url"])
    return {
        "task": task,
        "data": data,
        "space": exp.space.model_dump(mode="json", exclude_defaults=True),
        "target": target,
        "objectives": list(exp.objectives),
        "constraints": exp.constraints.model_dump(mode="json", exclude_defaults=True),
    }


def fingerprint(exp: Experiment) -> dict[str, Any]:
    """The fingerprint stored with a study: a hash per component, and one per field (to name what changed)."""
    values = made_for(exp)
    return {
        "version": FINGERPRINT_VERSION,
        "components": {name: _hash(values[name]) for name in COMPONENTS},
        "fields": {path: _hash(value) for name in COMPONENTS for path, value in _fields(name, values[name])},
    }


def changes(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, list[str]]:
    """Components whose hash differs, each with the fields (dotted) that differ; empty when the study fits."""
    out: dict[str, list[str]] = {}
    before, after = stored.get("components", {}), current["components"]
    for name in COMPONENTS:
        if name in before and before[name] != after[name]:
            old, new = stored.get("fields", {}), current["fields"]
            keys = sorted(k for k in {*old, *new} if _in(k, name) and old.get(k) != new.get(k))
            out[name] = [k for k in keys if k != name] or [name]  # 'data' alone is an empty data section
    return out


def describe(changed: dict[str, list[str]], most: int = 8) -> str:
    """The changed components in words: 'task (task.name, task.seed), space (space.students.cnn.width)'."""
    parts = []
    for name, keys in changed.items():
        shown = keys[:most] + ([f"{len(keys) - most} more"] if len(keys) > most else [])
        parts.append(name if keys == [name] else f"{name} ({', '.join(shown)})")
    return ", ".join(parts)


def _data_path(exp: Experiment, key: str) -> Path:
    """The file or folder a task's path field points at, as the task reads it."""
    task = exp.task
    if key == "path" and hasattr(task, "folder"):
        return Path(task.folder)  # MNIST: the shipped test set when no path is given
    path = Path(getattr(task, key)).expanduser()
    if task.name == "cifar10":
        return path / "cifar-10-batches-py"  # what torchvision reads; the archive beside it may come and go
    return path


def _identity(path: Path) -> dict[str, Any]:
    """What a file or folder holds: names, sizes and a content hash (a folder: every file's name and size)."""
    if path.is_file():
        return {"bytes": path.stat().st_size, "sha256": _file_hash(path)}
    if not path.is_dir():
        return {"missing": True}
    listing, total = hashlib.sha256(), 0
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):  # .DS_Store and the like change at will
            full = Path(root) / name
            size = full.stat().st_size
            total += size
            listing.update(f"{full.relative_to(path).as_posix()}\0{size}\n".encode())
    return {"bytes": total, "listing": listing.hexdigest()}


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= _WHOLE:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
        else:
            digest.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            digest.update(f.read(_EDGE))
    return digest.hexdigest()


def _without_userinfo(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _fields(name: str, value: Any) -> list[tuple[str, Any]]:
    """The settings of a component, each named by its dotted path; a data source is one setting (its identity)."""
    if name == "data":
        return [(f"data.{key}", identity) for key, identity in value.items()] or [("data", {})]
    return _leaves(name, value)


def _leaves(prefix: str, value: Any) -> list[tuple[str, Any]]:
    """(dotted path, value) of every leaf; a list is one leaf (a list of choices is one setting)."""
    if isinstance(value, dict) and value:
        return [leaf for key, v in value.items() for leaf in _leaves(f"{prefix}.{key}", v)]
    return [(prefix, value)]


def _in(key: str, name: str) -> bool:
    return key == name or key.startswith(name + ".")


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
