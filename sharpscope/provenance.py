"""Provenance attached to every number sharpscope writes.

A stored measurement must say how it was made: package versions, git revision of sharpscope, a hash of the
settings that produced it, the seed and the sample counts (the latter two are added by the caller).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

_PACKAGES = ("torch", "transformers", "peft", "numpy", "scipy", "pandas", "soundfile", "soxr")


def config_hash(settings: Any) -> str:
    """Stable short hash of a JSON-serialisable settings object (keys sorted)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of all files of a directory in sorted order (checkpoint directories)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("sharpscope", *_PACKAGES):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


@lru_cache(maxsize=1)
def git_revision() -> str:
    """Git revision of the sharpscope source tree ("+dirty" when it has uncommitted changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not rev:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(settings: Any = None, **extra: Any) -> dict[str, Any]:
    """Provenance block: versions, git revision, settings hash, plus caller extras (seed, counts...)."""
    out: dict[str, Any] = {
        "versions": package_versions(),
        "git_revision": git_revision(),
        "platform": platform.platform(),
    }
    if settings is not None:
        out["config_hash"] = config_hash(settings)
    out.update(extra)
    return out
