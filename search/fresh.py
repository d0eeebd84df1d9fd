"""`run --fresh`: delete an experiment's study, its MLflow runs and its output folder, so its sweep starts over."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna

from search.config import Experiment
from search.tracking import STUDY, Tracker


def start_over(exp: Experiment) -> str:
    """--fresh: delete the study, this experiment's MLflow runs and its output folder, so the sweep starts over."""
    gone = []
    url = exp.storage_url
    if not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).is_file():  # never create one
        try:
            optuna.delete_study(study_name=exp.name, storage=url)
            gone.append("the study")
        except KeyError:  # no study of that name there
            pass
    in_outputs = exp.tracking_uri.startswith(f"sqlite:///{exp.out.resolve()}/")  # goes with the folder below
    if not in_outputs and tracking_store_exists(exp):
        tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
        runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`{STUDY}` = '{exp.name}'", max_results=50000)
        for run in runs:
            tracker.client.delete_run(run.info.run_id)
        gone.append(f"{len(runs)} MLflow runs")
    if exp.out.exists():
        shutil.rmtree(exp.out)
        gone.append(str(exp.out))
    return f"--fresh: deleted {', '.join(gone) or 'nothing (no earlier sweep)'}; starting over"


def tracking_store_exists(exp: Experiment) -> bool:
    """Whether there is an MLflow store to clean (a missing local SQLite file is not created just to be emptied)."""
    uri = exp.tracking_uri
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()
