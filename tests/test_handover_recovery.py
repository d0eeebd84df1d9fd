"""An interrupted hand-over is undone only when it surely had not committed: one made while MLflow was down, or
one whose alias cannot be read, is completed and says so truly; and its lock is waited for at most a timeout, after
which the error names the lock file."""

from __future__ import annotations

import json
import threading

import pytest

from search import filelock, handover
from search.filelock import LockTimeout, held

pytestmark = pytest.mark.fast

CARD = {"experiment": "x", "trial": 7}


class Crash(Exception):
    pass


def _old_hand_over(folder):
    """A finished earlier hand-over: trial 1's files, registered as version 4."""
    handover.hand_over(folder, 1, b"old model", {"trial": 1}, lambda sha: "4", lambda version: None)
    return (folder / handover.ONNX).read_bytes(), (folder / handover.CARD).read_text()


def _interrupted(folder, monkeypatch, version: str) -> None:
    """Hand over trial 7 (registered as `version`, "" when MLflow was down) and crash at the first rename."""
    real = handover.os.replace

    def dies_renaming(src, dst):
        if str(src).endswith(handover.ONNX + ".tmp"):
            raise Crash()
        real(src, dst)

    monkeypatch.setattr(handover.os, "replace", dies_renaming)
    with pytest.raises(Crash):
        handover.hand_over(folder, 7, b"new model", CARD, lambda sha: version, lambda v: None)
    monkeypatch.undo()
    assert handover.pending(folder) == handover.Pending(7, handover.sha256(b"new model"), version)


def _handed_over(folder) -> tuple[bytes, dict]:
    assert handover.pending(folder) is None and not list(folder.glob("*.tmp"))
    return (folder / handover.ONNX).read_bytes(), json.loads((folder / handover.CARD).read_text())


def test_a_hand_over_made_while_mlflow_was_down_is_completed_after_a_crash_not_undone(tmp_path, monkeypatch):
    _old_hand_over(tmp_path)
    _interrupted(tmp_path, monkeypatch, version="")  # nothing registered: MLflow was unreachable
    for alias in (None, "4"):  # MLflow still down, or back with the earlier pick's alias
        folder = tmp_path / str(alias)
        folder.mkdir()
        for name in (handover.PENDING, handover.ONNX + ".tmp", handover.CARD + ".tmp", handover.ONNX, handover.CARD):
            (folder / name).write_bytes((tmp_path / name).read_bytes())
        note = handover.recover(folder, lambda alias=alias: alias)
        assert note.startswith("completed the hand-over of trial 7") and "not registered" in note, note
        assert "had not moved" not in note
        model, card = _handed_over(folder)
        assert model == b"new model" and card["trial"] == 7 and card["registry"]["version"] == ""


def test_a_registered_hand_over_is_not_undone_when_the_alias_cannot_be_read(tmp_path, monkeypatch):
    _old_hand_over(tmp_path)
    _interrupted(tmp_path, monkeypatch, version="5")
    note = handover.recover(tmp_path, lambda: None)  # MLflow unreachable: the alias may well name version 5
    assert "could not be read" in note and "nothing was undone" in note and "had not moved" not in note, note
    model, card = _handed_over(tmp_path)
    assert model == b"new model" and card["registry"]["version"] == "5"


def test_a_hand_over_is_undone_only_when_the_alias_surely_had_not_moved(tmp_path, monkeypatch):
    before = _old_hand_over(tmp_path)
    _interrupted(tmp_path, monkeypatch, version="5")
    note = handover.recover(tmp_path, lambda: "4")
    assert note.startswith("discarded") and "still names version 4" in note, note
    assert _handed_over(tmp_path) == (before[0], json.loads(before[1]))
    _interrupted(tmp_path, monkeypatch, version="5")
    assert "version 5" in handover.recover(tmp_path, lambda: "5")  # the alias moved: completed
    assert _handed_over(tmp_path)[0] == b"new model"


def test_a_lock_held_past_its_timeout_is_an_error_naming_the_lock_file(tmp_path, monkeypatch):
    lock = tmp_path / "some.lock"
    with held(lock):
        with pytest.raises(LockTimeout, match=rf"the lock file '{lock}' was held by another process for more than"):
            with held(lock, timeout=0.3):
                pass
    with held(lock, timeout=0.3):  # let go: taken at once
        pass
    # The hand-over's own lock: another driver's hand-over that never ends is an error, not a hang.
    monkeypatch.setattr(filelock, "TIMEOUT_S", 0.5)
    (tmp_path / handover.PENDING).write_text(json.dumps({"trial": 3, "sha256": "ab", "version": "2"}))
    errors = []
    with handover._locked(tmp_path):
        other = threading.Thread(target=lambda: errors.append(_catch(lambda: handover.recover(tmp_path, lambda: "2"))))
        other.start()
        other.join(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], LockTimeout) and ".handover.lock" in str(errors[0])


def _catch(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - handed to the test thread to assert on
        return exc
    return None


def test_an_alias_move_that_mlflow_lost_hands_nothing_over_and_says_so(tmp_path):
    before = _old_hand_over(tmp_path)
    alias = {"now": "4"}  # the registry's alias; the move below is lost, as a client that went down skips it
    with pytest.raises(handover.AliasNotMoved, match=r"registered as version 5, but the alias does not name it"):
        handover.hand_over(tmp_path, 7, b"new model", CARD, lambda sha: "5", lambda v: None, lambda: alias["now"])
    assert (tmp_path / handover.ONNX).read_bytes() == before[0]  # the earlier hand-over stands, files and alias
    assert (tmp_path / handover.CARD).read_text() == before[1]
    assert "still names version 4" in handover.recover(tmp_path, lambda: alias["now"])  # MLflow back: redone
    assert _handed_over(tmp_path) == (before[0], json.loads(before[1]))
    # The same with a move that lands: handed over as before.
    moved = lambda v: alias.update(now=v)  # noqa: E731
    assert handover.hand_over(tmp_path, 7, b"new model", CARD, lambda sha: "5", moved, lambda: alias["now"]) == "5"
    assert _handed_over(tmp_path)[0] == b"new model"
