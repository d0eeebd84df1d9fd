"""Run an experiment file through the real `slimsweep run` (a subprocess, as a user would) with dotted overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import optuna
import yaml

ROOT = Path(__file__).resolve().parent.parent
# Set by `report.py --reuse`: a sweep whose folder already holds a finished run is read back, not run again, so a
# report cut short (or its text changed) is written again without hours of sweeps.
REUSE = {"finished": False}


@dataclass(frozen=True)
class SweepRun:
    """One finished `slimsweep run`: where it wrote, how long the driver took, what it printed."""

    name: str
    folder: Path  # the experiment's output folder: study.db, teacher.onnx, trials/, model_card.json
    command: str
    started: datetime
    ended: datetime
    returncode: int
    stdout: str
    stderr: str

    @property
    def seconds(self) -> float:
        """The driver's wall clock, process start to exit."""
        return (self.ended - self.started).total_seconds()

    def study(self) -> optuna.Study:
        """The sweep's Optuna study (the record of truth)."""
        return optuna.load_study(study_name=self.name, storage=f"sqlite:///{self.folder / 'study.db'}")

    def save(self) -> None:
        """Keep the driver's clock and output beside the sweep, for sections that read it later (stages.py)."""
        meta = {
            "name": self.name,
            "folder": str(self.folder),
            "command": self.command,
            "returncode": self.returncode,
            "started": self.started.isoformat(),
            "ended": self.ended.isoformat(),
            "stdout": self.stdout[-20000:],
            "stderr": self.stderr[-20000:],
        }
        (self.folder.parent.parent / "run.json").write_text(json.dumps(meta, indent=1))

    def card(self) -> dict[str, Any] | None:
        """The pick's model card, if the sweep picked one."""
        path = self.folder / "model_card.json"
        return json.loads(path.read_text()) if path.is_file() else None


def set_dotted(doc: dict[str, Any], dotted: str, value: Any) -> bool:
    """Set doc['a']['b'] = value for 'a.b' where 'a' is there; False (nothing set) where it is not, so an override of
    a knob a file leaves out (cnn: null) never adds that knob to its space."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(doc.get(key), dict):
            return False
        doc = doc[key]
    doc[leaf] = value
    return True


def run(
    experiment: Path,
    folder: Path,
    overrides: dict[str, Any],
    env: dict[str, str],
    before: Callable[[Path, Path], None] | None = None,
) -> SweepRun:
    """Write the experiment with the overrides into `folder`, run it there, and return what happened; `before` gets
    the written file and the output folder first (to prepare the study, e.g. a start-up design)."""
    done = load_run(folder) if REUSE["finished"] else None
    if done is not None:  # it ran to its end, whatever it returned (an empty front exits 1 with its trials kept)
        return done
    doc = yaml.safe_load(experiment.read_text())
    overrides = {k: v for k, v in overrides.items() if set_dotted(doc, k, v)}
    folder.mkdir(parents=True, exist_ok=True)
    derived = folder / "experiment.yaml"
    derived.write_text(
        f"# {experiment.relative_to(ROOT)} with {json.dumps(overrides)}\n" + yaml.safe_dump(doc, sort_keys=False)
    )
    argv = [
        str(Path(sys.executable).parent / "slimsweep"),
        "run",
        str(derived),
        "--output-dir",
        str(folder / "outputs"),
        "--quiet",
    ]
    if before is not None:
        before(derived, folder / "outputs")
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=folder, env={**os.environ, **env}, capture_output=True, text=True)
    ended = started.fromtimestamp(started.timestamp() + time.perf_counter() - t0, timezone.utc)
    shown = " ".join(f"{k}={v}" for k, v in overrides.items())
    command = f"slimsweep run {experiment.relative_to(ROOT)}" + (f"  (overrides: {shown})" if shown else "")
    result = SweepRun(
        name=doc["name"],
        folder=folder / "outputs" / doc["name"],
        command=command,
        started=started,
        ended=ended,
        returncode=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
    )
    result.save()
    return result


def load_run(folder: Path) -> SweepRun | None:
    """A run saved by SweepRun.save in `folder`, or None."""
    path = folder / "run.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    return SweepRun(
        name=m["name"],
        folder=Path(m["folder"]),
        command=m["command"],
        started=datetime.fromisoformat(m["started"]),
        ended=datetime.fromisoformat(m["ended"]),
        returncode=m["returncode"],
        stdout=m["stdout"],
        stderr=m["stderr"],
    )


def summary_line(run: SweepRun) -> str:
    """The driver's own 'N trials finished ...' line."""
    return next((line.strip() for line in run.stdout.splitlines() if "trials finished" in line), "")
