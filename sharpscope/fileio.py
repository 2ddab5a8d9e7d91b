"""Atomic file writes and JSON encoding shared by every writer (results store, training state, metrics).

A write goes to a temporary file in the target's directory, is flushed to disk and renamed over the target
(``os.replace`` is atomic on POSIX), so a reader -- or a sweep resumed after SIGKILL -- sees either the old
file or the complete new one, never half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` over ``path``; the temporary file never survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_default(o: Any) -> Any:
    """JSON encoding of numpy scalars/arrays, tensors and paths (anything else: its ``str``)."""
    if hasattr(o, "tolist"):  # numpy scalars and arrays, tensors
        return o.tolist()
    return str(o)


def dumps(obj: Any, indent: int = 1, sort_keys: bool = True) -> str:
    return json.dumps(obj, indent=indent, sort_keys=sort_keys, default=json_default, allow_nan=True) + "\n"


def atomic_write_json(path: str | Path, obj: Any, indent: int = 1, sort_keys: bool = True) -> None:
    atomic_write_text(path, dumps(obj, indent, sort_keys))
