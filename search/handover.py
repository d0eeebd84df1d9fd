"""The hand-over: deployable.onnx, model_card.json and the registry alias, moved together or not at all.

The files are written under temporary names and a pending record names what is being handed over; the alias move
in the registry is the commit point; then both files are renamed into place (os.replace, atomic on one file
system) and the record removed. A crash at any step leaves either the old hand-over intact (alias surely not moved:
the next `run` / `pick` discards the leftovers and redoes it) or a pending record that may have committed (the
alias moved, could not be read, or there was nothing to register): the next `pick` completes the renames; a
hand-over that may have committed is never undone. Registration is idempotent: a version already registered for
the same trial and the same ONNX bytes is reused, never duplicated. Drivers sharing a study hand over one at a time
(an exclusive lock on the folder, waited for at most filelock.TIMEOUT_S), so the last one's files and alias agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evaluators.errors import SlimsweepError
from search.filelock import held

PENDING = ".handover-pending.json"
ONNX, CARD = "deployable.onnx", "model_card.json"


def sha256(data: bytes) -> str:
    """The hex SHA-256 of a model's bytes (what ties a registry version to a file)."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Pending:
    """A hand-over under way: the trial, its bytes' hash, and the registry version once it is known."""

    trial: int
    sha256: str
    version: str | None = None


def _locked(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the folder's hand-over lock: another driver's hand-over waits, rather than renaming our files."""
    return held(folder / ".handover.lock")


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a small file so that it is either wholly old or wholly new."""
    tmp = _tmp(path)
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pending(folder: Path) -> Pending | None:
    """The hand-over a crash left unfinished in this folder, if any."""
    path = folder / PENDING
    if not path.is_file():
        return None
    return Pending(**json.loads(path.read_text()))


def recover(folder: Path, alias_version: Callable[[], str | None]) -> str:
    """Finish or undo a hand-over a crash interrupted; returns what was done ('' when nothing was pending).

    Undone only when it surely had not committed: stopped before its registration, or the alias is read and names
    another version. Completed when the alias names its version, when it had nothing to register (MLflow was down:
    the record of its version "" was its commit point), and when the alias cannot be read (None: MLflow unreachable,
    or no alias yet): then it may have committed, and a committed hand-over is never undone.
    """
    if pending(folder) is None:
        return ""
    # Under the hand-over lock, and the alias read there: a pending record may be another live driver's hand-over
    # in progress, whose files are not ours to rename.
    with _locked(folder):
        rec = pending(folder)
        if rec is None:
            return ""
        if rec.version is None:
            _discard(folder)
            return (
                f"discarded an unfinished hand-over of trial {rec.trial}: it stopped before its model was "
                "registered, so the alias had not moved; it is redone"
            )
        if rec.version == "":
            _complete(folder)
            return (
                f"completed the hand-over of trial {rec.trial} a crash interrupted; it was not registered (MLflow "
                "was unreachable): `slimsweep sync` registers it"
            )
        current = alias_version()
        if current == rec.version:
            _complete(folder)
            return f"completed the hand-over of trial {rec.trial} (registry version {rec.version}) a crash interrupted"
        if current is None:
            _complete(folder)
            return (
                f"completed the files of the hand-over of trial {rec.trial} (registry version {rec.version}) a "
                "crash interrupted; the alias could not be read (MLflow unreachable, or no alias), so whether it "
                "had moved is unknown and nothing was undone"
            )
        _discard(folder)
        return (
            f"discarded an unfinished hand-over of trial {rec.trial} (registry version {rec.version}): the alias "
            f"still names version {current}, so it had not moved; it is redone"
        )


def _complete(folder: Path) -> None:
    """Rename whichever file is still temporary into place, then drop the record (under the lock)."""
    for final in (folder / ONNX, folder / CARD):
        if _tmp(final).is_file():
            os.replace(_tmp(final), final)
    (folder / PENDING).unlink()


def _discard(folder: Path) -> None:
    """Remove an uncommitted hand-over's temporary files and record (under the lock)."""
    for leftover in (_tmp(folder / ONNX), _tmp(folder / CARD), folder / PENDING):
        leftover.unlink(missing_ok=True)


class AliasNotMoved(SlimsweepError):
    """The model was registered, but the alias could not be confirmed to name it: nothing was handed over."""


def hand_over(
    folder: Path,
    trial: int,
    onnx: bytes,
    card: dict[str, Any],
    register: Callable[[str], str],
    move_alias: Callable[[str], None],
    alias_version: Callable[[], str | None] | None = None,
) -> str:
    """Write deployable.onnx and model_card.json and move the alias as one step; return the registry version.

    `register(sha)` returns the version for these bytes (an existing one if already registered); `move_alias`
    points the alias at it (idempotent: the same version again changes nothing). With `alias_version` (what the
    alias names now), the move is read back before the files are renamed: a tracking server lost between the
    registration and the move (whose client skips the move without a word) leaves the earlier hand-over standing
    and raises AliasNotMoved, rather than files that claim an alias the registry never got.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        digest = sha256(onnx)
        _write_atomic(folder / PENDING, json.dumps({"trial": trial, "sha256": digest}).encode())
        _tmp(folder / ONNX).write_bytes(onnx)
        version = register(digest)
        card = dict(card, registry={**card.get("registry", {}), "version": version})
        _tmp(folder / CARD).write_text(json.dumps(card, indent=2))
        _write_atomic(folder / PENDING, json.dumps({"trial": trial, "sha256": digest, "version": version}).encode())
        # Set even when it already names this version: another driver may have moved it meanwhile.
        if version:  # "" when MLflow was unreachable: nothing registered to point at
            move_alias(version)  # the commit point: from here on a crash is completed, not undone
            if alias_version is not None and alias_version() != version:
                # Left as a crash before the commit point leaves it: the next `pick` completes or redoes it.
                raise AliasNotMoved(
                    f"trial {trial} was registered as version {version}, but the alias does not name it (MLflow "
                    "became unreachable, or a driver with another output folder moved it at the same moment); "
                    "nothing was handed over here: the earlier deployable.onnx, "
                    "model_card.json and alias stand. Run `slimsweep pick` once MLflow answers"
                )
        os.replace(_tmp(folder / ONNX), folder / ONNX)
        os.replace(_tmp(folder / CARD), folder / CARD)
        (folder / PENDING).unlink()
    return version
