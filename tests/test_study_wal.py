"""The study and MLflow files slimsweep makes are written ahead (SQLite WAL, search/localdb.py): a store the user
names is left as given, a network filesystem keeps SQLite's journal, `--fresh` takes the WAL's side files along,
and a driver killed with kill -9 loses no trial it committed (the fast tests below on the storage; the sweep test
runs the real driver and resumes it)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import small_experiment
from optuna.trial import TrialState

from search import localdb
from search.config import load
from search.fresh import mark_output, start_over
from search.study import TrialRecord, finished, open_study, record
from search.tracking import Tracker

ROOT = Path(__file__).resolve().parent.parent

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
fileserver:/export/home /home/team nfs4 rw,relatime,vers=4.2 0 0
me@box:/data /mnt/box fuse.sshfs rw,nosuid,nodev 0 0
/dev/vdb /home/team/local ext4 rw,relatime 0 0
/dev/mapper/shared /cluster gfs2 rw,relatime 0 0
JuiceFS:jfs /jfs fuse.juicefs rw,relatime 0 0
"""


def _exp(tmp_path: Path, name: str = "wal", **changes):
    return load(small_experiment(tmp_path, name=name, **changes))


def _told(study: optuna.Study) -> int:
    """One finished trial recorded as the driver records one: its record, then the tell."""
    trial = study.ask()
    rec = TrialRecord(plan={"n": trial.number}, describe=f"plan {trial.number}", metrics={"accuracy": 90.0})
    record(study, trial, rec, values=[90.0, 1.0, 1.0])
    return trial.number


@pytest.mark.fast
def test_the_study_slimsweep_makes_is_written_ahead_and_a_named_storage_is_left_as_given(tmp_path):
    made = _exp(tmp_path)
    _told(open_study(made))
    assert localdb.journal_mode(made.out / "study.db") == "wal"
    named = tmp_path / "mine.db"
    given = _exp(tmp_path, name="given", search={"sampler": "random", "trials": 4, "storage": f"sqlite:///{named}"})
    _told(open_study(given))
    assert localdb.journal_mode(named) == "delete"  # SQLite's default, as the user's own file had it


@pytest.mark.fast
def test_the_mlflow_store_slimsweep_makes_is_written_ahead_and_a_named_one_is_left_as_given(tmp_path):
    made = tmp_path / "outputs" / "wal"
    Tracker(f"sqlite:///{(made / 'mlflow.db').resolve()}", "wal", made / "mlartifacts")
    assert localdb.journal_mode(made / "mlflow.db") == "wal"
    named = tmp_path / "team-mlflow.db"
    Tracker(f"sqlite:///{named}", "wal", made / "mlartifacts")
    assert localdb.journal_mode(named) == "delete"


@pytest.mark.fast
def test_a_study_on_a_network_filesystem_keeps_sqlites_journal():
    assert localdb.on_network(Path("/home/team/alice/outputs"), MOUNTS)
    assert localdb.on_network(Path("/mnt/box/runs"), MOUNTS)
    assert localdb.on_network(Path("/cluster/runs"), MOUNTS) and localdb.on_network(Path("/jfs/runs"), MOUNTS)
    assert not localdb.on_network(Path("/home/team/local/outputs"), MOUNTS)  # a local disk mounted inside the share
    assert not localdb.on_network(Path("/tmp/outputs"), MOUNTS) and not localdb.on_network(Path("/srv"), MOUNTS)
    assert localdb.filesystem(Path("/home/team/alice"), MOUNTS) == "nfs4"
    assert localdb.on_network(Path("/anywhere"), "") is False  # no mount table: a local disk


@pytest.mark.fast
def test_fresh_deletes_the_write_ahead_files_and_the_new_study_starts_empty(tmp_path):
    exp = _exp(tmp_path)
    mark_output(exp.out, exp.name)
    study = open_study(exp)  # still open: its committed trials sit in study.db-wal
    numbers = [_told(study) for _ in range(3)]
    assert numbers and all((exp.out / f"study.db{side}").is_file() for side in localdb.SIDE_FILES)
    said = start_over(exp)
    assert said.startswith("--fresh: deleted the study")
    assert not list(exp.out.glob("study.db*"))
    # A WAL left beside a new study.db would be replayed into it; the new study holds nothing of the old one.
    assert open_study(exp).trials == []


# A driver's storage work in a process of its own: record trials, print each number once it is committed; with an
# argument, stop after that many and leave as the console script does (exit hooks, then os._exit).
CHILD = """
import atexit, os, sys
from search.config import load
from search.study import TrialRecord, open_study, record

study = open_study(load(sys.argv[1]))
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 10**9):
    trial = study.ask()
    rec = TrialRecord(plan={"n": trial.number}, describe="p", metrics={"accuracy": 90.0})
    record(study, trial, rec, values=[90.0, 1.0, 1.0])
    print(trial.number, flush=True)
atexit._run_exitfuncs()
os._exit(0)
"""


def _driver(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )


@pytest.mark.fast
def test_a_driver_killed_with_kill_9_loses_no_trial_it_committed_to_the_wal(tmp_path):
    path = small_experiment(tmp_path, name="killed")
    exp = load(path)
    child = _driver(str(path))
    told = []
    try:
        for line in child.stdout:
            told.append(int(line))
            if len(told) == 12:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(told) == 12
    assert (exp.out / "study.db-wal").stat().st_size > 0  # no clean close: the committed trials are in the WAL
    with sqlite3.connect(exp.out / "study.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    study = open_study(exp)
    kept = {t.number for t in finished(study) if t.state == TrialState.COMPLETE}
    assert set(told) <= kept


@pytest.mark.fast
def test_a_driver_that_exits_folds_the_wal_back_so_the_study_file_alone_holds_every_trial(tmp_path):
    path = small_experiment(tmp_path, name="exits")
    exp = load(path)
    child = _driver(str(path), "5")
    told = [int(line) for line in child.stdout]
    assert child.wait() == 0 and len(told) == 5
    assert not [side for side in localdb.SIDE_FILES if (exp.out / f"study.db{side}").exists()]
    # Back in SQLite's usual journal at rest: it reads where the reader cannot write, and on a network filesystem.
    assert localdb.journal_mode(exp.out / "study.db") == "delete"
    copy = tmp_path / "copy.db"
    copy.write_bytes((exp.out / "study.db").read_bytes())  # a copy of the file alone, as a user might make
    study = optuna.load_study(study_name=exp.name, storage=f"sqlite:///{copy}")
    assert sorted(t.number for t in finished(study)) == told
