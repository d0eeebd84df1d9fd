"""Liveness is judged from the study: by the interval the beating driver wrote, not the reader's own heartbeat_s, and
by the database's clock, so a healthy slow-beating driver is never declared dead by a fast-beating one."""

from __future__ import annotations

import time

import optuna
import pytest
from conftest import small_experiment

from search.config import load
from search.study import STALE_BEATS, beat, clock, live_drivers, open_study, own, stale
from search.sweep import Heartbeat


@pytest.fixture()
def study(tmp_path):
    return open_study(load(small_experiment(tmp_path, name="beats")))


def test_a_driver_beating_every_120_s_is_alive_to_one_set_to_10_s(study):
    at = 1_000_000.0
    beat(study, "slow", at, every_s=120.0)
    trial = study.ask()
    own(study, trial, "slow")
    later = at + 300  # 30 of the reader's 10 s beats, under 4 of the writer's 120 s ones
    assert live_drivers(study, 10.0, later) == {"slow"}
    assert stale(study, 10.0, later) == []  # its trial is not taken over
    gone = at + STALE_BEATS * 120 + 1
    assert live_drivers(study, 10.0, gone) == set() and stale(study, 10.0, gone) == [trial.number]


def test_a_fast_beating_driver_is_judged_by_its_own_interval_too(study):
    at = 1_000_000.0
    beat(study, "fast", at, every_s=1.0)
    assert live_drivers(study, 120.0, at + STALE_BEATS * 1.0) == {"fast"}
    assert live_drivers(study, 120.0, at + STALE_BEATS * 1.0 + 1) == set()  # not kept alive by the reader's 120 s


def test_a_beat_written_by_an_older_release_is_read_with_the_readers_interval(study):
    at = 1_000_000.0
    # What releases before the interval was recorded wrote: a bare Unix time under the beat key, nothing else.
    study._storage.set_study_system_attr(study._study_id, "slimsweep.driver_beat:old-driver", at)
    assert live_drivers(study, 10.0, at + STALE_BEATS * 10.0) == {"old-driver"}
    assert live_drivers(study, 10.0, at + STALE_BEATS * 10.0 + 1) == set()


def test_the_heartbeat_records_its_interval_so_another_driver_judges_by_it(study):
    with Heartbeat(study, "driver-a", every_s=120.0):
        now = clock(study)
        assert "driver-a" in live_drivers(study, 10.0, now + 200)  # 20 of the reader's beats, 1.7 of its own
    assert "driver-a" not in live_drivers(study, 10.0, clock(study))  # retired at once when it ends


def test_on_postgresql_beats_are_written_and_judged_by_the_servers_clock(postgres_db, monkeypatch):
    url = postgres_db("beats_clock")
    study = optuna.create_study(study_name="beats", storage=url)
    real = time.time()
    monkeypatch.setattr(time, "time", lambda: real - 3600)  # this machine's clock an hour behind the server's
    assert abs(clock(study) - real) < 60
    beat(study, "skewed", every_s=10.0)
    at = study._storage.get_study_system_attrs(study._study_id)["slimsweep.driver_beat:skewed"]
    assert abs(at - real) < 60  # stamped by the server, so a driver with a sound clock does not see it as gone
    assert live_drivers(study, 10.0) == {"skewed"}
