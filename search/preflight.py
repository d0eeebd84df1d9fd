"""Checks before a command writes anything: the output folder can be written, the MLflow tracking URI and the Optuna
storage can be reached. MLflow's client retries an unreachable server for minutes; these fail in seconds."""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

from evaluators.errors import ConfigError
from evaluators.secrets import mask_secrets
from search.config import Experiment, folder_problem

# How long a server may take to accept a TCP connection before it counts as unreachable.
CONNECT_SECONDS = 3.0
_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}


def check_stores(exp: Experiment, *, tracking: bool = True, storage: bool = True) -> None:
    """Raise ConfigError naming the setting when the output folder, tracking URI or storage cannot be used."""
    problem = folder_problem(exp.out)
    if problem:
        raise ConfigError(f"output_dir: the experiment's folder {str(exp.out)!r} {problem}")
    if tracking:
        _check_url("tracking.uri", exp.tracking_uri)
    if storage:
        _check_url("search.storage", exp.storage_url)


def check_ray_address(address: str | None) -> None:
    """Raise ConfigError when a Ray cluster's head (`host:port` or `ray://host:port`) accepts no connection: ray.init
    would otherwise wait on a dead head for minutes. `auto` (the cluster `ray start` recorded here) is Ray's to find."""
    if not address or address in ("auto", "local"):
        return
    parts = urllib.parse.urlsplit(address if "://" in address else f"ray-gcs://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise ConfigError(f"--ray-address {address!r}: give the head node as host:port (its GCS port, 6379 by default)")
    _check_reachable("--ray-address", address, parts.hostname, port)


def _check_url(setting: str, url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.split("+")[0].lower()  # postgresql+psycopg2 -> postgresql
    if scheme == "sqlite":
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            _check_folder(setting, url, Path(path).expanduser().parent)
    elif scheme in {"", "file"}:  # MLflow's local file store: a path or file:///path
        _check_folder(setting, url, Path(parts.path if scheme else url).expanduser())
    elif scheme in {"postgresql", "postgres"}:
        _check_database(setting, url)
    elif scheme in _DEFAULT_PORTS:
        if scheme not in {"http", "https"}:
            _check_driver(setting, url)
        _check_reachable(setting, url, parts.hostname, _port(parts, _DEFAULT_PORTS[scheme]))
    # Other schemes (databricks, a plugin's): their own client checks them.


def _port(parts: urllib.parse.SplitResult, default: int) -> int | None:
    try:
        return parts.port or default
    except ValueError:
        return None


def _check_folder(setting: str, url: str, folder: Path) -> None:
    problem = folder_problem(folder)
    if problem:
        raise ConfigError(f"{setting}: {mask_secrets(url)!r}: the folder {str(folder)!r} {problem}")


def _unreadable(setting: str, url: str, exc: ValueError) -> ConfigError:
    """The error for a URL SQLAlchemy cannot parse (a port that is not a number), the password masked."""
    return ConfigError(
        f"{setting}: {mask_secrets(url)!r} is not a database URL SQLAlchemy can read ({mask_secrets(str(exc))}); "
        "give HOST:PORT with a numeric port"
    )


def _check_driver(setting: str, url: str) -> None:
    """Refuse a database URL whose SQLAlchemy driver is not installed (Optuna and MLflow would fail only later)."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        sqlalchemy.engine.make_url(url).get_dialect().import_dbapi()
    except ValueError as exc:  # make_url's int() of a port that is not a number
        raise _unreadable(setting, url, exc) from None
    except (ImportError, sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as exc:
        raise ConfigError(
            f"{setting}: {mask_secrets(url)!r} needs a database driver that cannot be loaded here "
            f"({type(exc).__name__}: {mask_secrets(str(exc))}); install it (e.g. `pip install psycopg` for "
            "postgresql://, `pip install pymysql` with mysql+pymysql://)"
        ) from None


def _check_reachable(setting: str, url: str, host: str | None, port: int | None) -> None:
    if not host or port is None:
        raise ConfigError(f"{setting}: {mask_secrets(url)!r} names no host and port to connect to")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        reason = (
            f"no answer within {CONNECT_SECONDS:g} s"
            if isinstance(exc, TimeoutError)
            else (exc.strerror or type(exc).__name__).lower()
        )
        hint = {
            "tracking.uri": ", or pass --no-tracking to sweep without it and `slimsweep sync` later",
            "--ray-address": " (`ray start --head` there), or leave --ray-address out to run on this machine",
        }.get(setting, "")
        raise ConfigError(
            f"{setting}: {mask_secrets(url)!r} is not reachable ({host}:{port}: {reason}); start that server or "
            f"fix the setting{hint}"
        ) from None


def _check_database(setting: str, url: str) -> None:
    """Connect to a PostgreSQL study or MLflow store for real (server, database and login), naming the field and
    hiding the password, rather than fail after the teacher trained with a driver's traceback."""
    import sqlalchemy  # only for a database URL: validating a file imports no database code

    try:
        shown = mask_secrets(sqlalchemy.engine.make_url(url).render_as_string(hide_password=True))
    except ValueError as exc:  # a port that is not a number, given past the file's validation
        raise _unreadable(setting, url, exc) from None
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": int(CONNECT_SECONDS) + 7})
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = mask_secrets(" ".join(str(getattr(exc, "orig", None) or exc).split()))
        raise ConfigError(f"{setting}: cannot reach the PostgreSQL database {shown}: {reason}") from None
