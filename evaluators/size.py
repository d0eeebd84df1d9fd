"""Model size as a user sees it: the serialized file."""

from __future__ import annotations

import os


def size_mb(model: bytes | str | os.PathLike) -> float:
    """Size of the serialized ONNX model in megabytes (bytes / 1e6)."""
    if isinstance(model, bytes):
        return len(model) / 1e6
    return os.path.getsize(model) / 1e6
