"""The teacher's training as a user watches it: epochs and validation accuracy while it trains (a line every few
seconds in a log), nothing with --quiet, and the same teacher whether watched or not."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import small_experiment
from rich.console import Console

from experiments.tasks import digits
from experiments.teacher import EpochReport, get_teacher, validation_accuracy
from search.config import load
from search.sweep import prepare
from search.teacher_progress import TeacherProgress

pytestmark = pytest.mark.fast

SETTINGS = dict(seed=0, width=0.25, depth=1, epochs=2, lr=0.003)


def test_each_epoch_is_reported_with_its_accuracy_and_watching_changes_no_weight(tmp_path, monkeypatch):
    data = digits(0)
    monkeypatch.setenv("SLIMSWEEP_CACHE", str(tmp_path / "watched"))
    heard: list[EpochReport] = []
    watched, cached = get_teacher(data, **SETTINGS, on_epoch=heard.append)
    assert cached is False
    assert [(r.epoch, r.epochs) for r in heard] == [(1, 2), (2, 2)]
    assert heard[-1].accuracy == validation_accuracy(watched, data) and heard[-1].accuracy > 10.0  # 10 classes
    assert all(r.loss > 0 for r in heard) and heard[-1].loss < heard[0].loss
    monkeypatch.setenv("SLIMSWEEP_CACHE", str(tmp_path / "unwatched"))
    unwatched, _ = get_teacher(data, **SETTINGS)
    a, b = watched.state_dict(), unwatched.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same teacher, so the same cache entry means the same model


def test_a_log_gets_the_first_epoch_then_a_line_every_few_seconds_and_the_last():
    now = [0.0]
    out = io.StringIO()
    progress = TeacherProgress(console=Console(file=out, force_terminal=False), every_s=10.0, clock=lambda: now[0])
    with progress:
        for epoch in range(1, 31):  # one epoch a second
            progress(EpochReport(epoch, 30, loss=1.0 / epoch, accuracy=90.0 + epoch / 10))
            now[0] += 1.0
    printed = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in printed] == [f"teacher: epoch {n}/30" for n in (1, 11, 21, 30)]
    assert printed[-1] == "teacher: epoch 30/30, validation accuracy 93.00%, loss 0.0333"


def test_prepare_shows_the_teacher_training_unless_quiet(tmp_path, monkeypatch, capsys):
    tiny = {"name": "digits", "seed": 0, "teacher": {"epochs": 2, "width": 0.25, "depth": 1}}
    exp = load(small_experiment(tmp_path, task=tiny))
    monkeypatch.setenv("SLIMSWEEP_CACHE", str(tmp_path / "quiet"))
    prepare(exp)  # what `slimsweep run --quiet` calls
    assert "teacher: epoch" not in capsys.readouterr().err
    monkeypatch.setenv("SLIMSWEEP_CACHE", str(tmp_path / "shown"))
    said: list[str] = []
    prepare(exp, say=said.append)
    shown = capsys.readouterr().err
    epochs = exp.task.teacher.epochs
    assert "teacher: epoch 1/" in shown and f"teacher: epoch {epochs}/{epochs}, validation accuracy" in shown
    assert said[-1].startswith("teacher: ready in")
