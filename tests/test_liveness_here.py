"""A driver that died on this machine is known to be gone at once, not after its heartbeat goes stale: a sweep run
again right after a kill -9 takes the dead run's trials over from its first step (search/liveness.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import small_experiment

from search import liveness
from search.config import load
from search.study import clock, live_drivers, open_study, stale

# Where a process runs is read from Linux's /proc; elsewhere only the heartbeat tells (here() is None there).
pytestmark = [pytest.mark.fast, pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc here")]

# A driver in a process of its own: it records where it runs with its first beat, owns a trial, and ends without
# retiring (as a driver killed with kill -9 does); it prints the trial's number.
DRIVER = """
import sys
from search.config import load
from search.study import beat, open_study, own
study = open_study(load(sys.argv[1]))
beat(study, "killed", every_s=10.0)
trial = study.ask()
own(study, trial, "killed")
print(trial.number)
"""


def test_a_driver_that_died_here_is_gone_at_once_and_its_trial_is_taken_over(tmp_path):
    path = small_experiment(tmp_path, name="here")
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(path)], capture_output=True, text=True, cwd=os.getcwd(), check=True
    )
    number = int(done.stdout.split()[-1])
    study = open_study(load(path))
    now = clock(study)  # its last beat is seconds old: by the heartbeat alone it would be alive for 40 s more
    assert "killed" not in live_drivers(study, 10.0, now)
    assert stale(study, 10.0, now) == [number]


def test_a_driver_still_running_here_is_alive():
    assert liveness.here() is not None and not liveness.gone(liveness.here())


def test_where_another_process_now_has_the_pid_the_driver_is_gone():
    boot_and_namespace = liveness.here().rsplit("/", 2)[0]
    # This process's PID with another start time: the driver's process ended and a later one took its PID.
    assert liveness.gone(f"{boot_and_namespace}/{os.getpid()}/1")


def test_a_driver_whose_proc_entry_cannot_be_read_but_runs_is_alive(monkeypatch):
    # /proc mounted with hidepid: another user's process cannot be read, and its driver is not taken for gone.
    where = liveness.here()
    monkeypatch.setattr(liveness, "_started", lambda pid: None)
    assert not liveness.gone(where)


@pytest.mark.parametrize(
    "where",
    [
        "another-boot/4026531836/12345/678",  # another machine or boot: only its heartbeat can tell
        None,  # an older release recorded nothing
        "nonsense",
    ],
)
def test_a_driver_recorded_elsewhere_or_not_at_all_is_left_to_its_heartbeat(where):
    assert not liveness.gone(where)
