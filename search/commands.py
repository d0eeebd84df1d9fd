"""Commands as a user can paste them: an executable of this installation named by a path that works without an
activated environment (`.venv/bin/mlflow` from the checkout, an absolute path elsewhere)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def tool(name: str, *, cwd: str | None = None) -> str:
    """How to run `name` installed beside this Python: relative to `cwd` (default the current folder) when it lies
    below it, else absolute; the bare name when this installation has no such executable."""
    # Not resolved: a virtual environment's python is a link to the system's, whose folder has no `mlflow`.
    path = Path(sys.executable).parent / name
    if not path.is_file():
        return name
    here = Path(cwd or os.getcwd())
    try:
        return str(path.relative_to(here))
    except ValueError:
        return str(path)
