"""Finding a stored study without making one: which studies a storage holds, and loading one that exists. `status`,
`front`, `pick` and `sync` only ever load, so a misspelt name is an error naming the sweeps there, never a new study."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.exc import SQLAlchemyError

from evaluators.errors import ConfigError, SlimsweepError, did_you_mean
from evaluators.secrets import mask_secrets
from search.config import Experiment
from search.study import check_made_for


def stored_names(url: str) -> list[str]:
    """Names of the studies a storage holds, read without writing anything (no file, schema or study is created)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///").split("?")[0]).is_file():
        return []
    args = {"connect_timeout": 10} if url.startswith(("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=args)
        try:
            with engine.connect() as conn:
                if not sqlalchemy.inspect(conn).has_table("studies"):
                    return []
                return sorted(row[0] for row in conn.execute(sqlalchemy.text("SELECT study_name FROM studies")))
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        raise ConfigError(f"search.storage: cannot read the study store {mask_secrets(url)}: {reason}") from None


def require(exp: Experiment) -> None:
    """Raise when the storage holds no study of this experiment's name, naming the sweeps it does hold."""
    names = stored_names(exp.storage_url)
    if exp.name in names:
        return
    held = f"; it holds: {', '.join(names[:20])}{did_you_mean(exp.name, names)}" if names else ""
    raise SlimsweepError(
        f"no sweep found for {exp.name!r} at {mask_secrets(exp.storage_url)}{held}; run `slimsweep run` on it first"
    )


def load_existing(exp: Experiment) -> optuna.Study:
    """The experiment's stored study, loaded only: never created, never stamped."""
    require(exp)
    optuna.logging.set_verbosity(logging.WARNING)
    return optuna.load_study(study_name=exp.name, storage=exp.storage_url)


def check_resume(exp: Experiment) -> None:
    """Refuse, before any work (the teacher, Ray), a run whose stored study was made for something else; loads
    only and writes nothing (a new study, or one made before fingerprints, is left to open_study)."""
    if exp.name in stored_names(exp.storage_url):
        check_made_for(load_existing(exp), exp, stamp=False)
