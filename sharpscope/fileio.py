"""Atomic file writes and JSON encoding shared by every writer (results store, training state, metrics).

A write goes to a temporary file in the target's directory, is flushed to disk and renamed over the target
(``os.replace`` is atomic on POSIX), so a reader -- or a sweep resumed after SIGKILL -- sees either the old
file or the complete new one, never half a file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import OutputError, SharpscopeError


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
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


def atomic_write_csv(path: str | Path, df: Any, **to_csv: Any) -> None:
    """``df.to_csv(path, **to_csv)`` through :func:`atomic_write` (same bytes, never half a file)."""
    atomic_write(path, lambda tmp: df.to_csv(tmp, **to_csv))


#: Tensors larger than this are written as ``<tensor (shape)>`` by :func:`jsonable` (a sidecar records
#: configs, not weights).
JSONABLE_MAX_TENSOR = 64


def jsonable(obj: Any, *, finite: bool = False) -> Any:
    """A JSON-safe copy of ``obj``: the one converter every sharpscope JSON writer uses.

    Mappings become dicts with string keys, tuples lists; numpy scalars/arrays and small tensors their
    ``tolist()``; tensors with more than :data:`JSONABLE_MAX_TENSOR` elements ``<tensor (shape)>``; anything
    else its ``str``.  ``finite=True`` writes NaN/inf as ``null`` (strict JSON, as ``sharpness.json`` and
    ``metrics.json`` of ``sharpscope sharpness`` are); otherwise floats are kept and ``json.dumps`` writes
    ``NaN``/``Infinity`` as Python does.
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, finite=finite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, finite=finite) for v in obj]
    if isinstance(obj, float):
        return None if finite and not math.isfinite(obj) else float(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    numel = getattr(obj, "numel", None)  # torch tensors (fileio does not import torch)
    if callable(numel) and numel() > JSONABLE_MAX_TENSOR:
        return f"<tensor {tuple(obj.shape)}>"
    if hasattr(obj, "tolist"):  # numpy scalars/arrays, small tensors
        return jsonable(obj.tolist(), finite=finite)
    return str(obj)


def json_default(o: Any) -> Any:
    """JSON encoding of numpy scalars/arrays, tensors and paths (anything else: its ``str``)."""
    if hasattr(o, "tolist"):  # numpy scalars and arrays, tensors
        return o.tolist()
    return str(o)


def dumps(obj: Any, indent: int = 1, sort_keys: bool = True) -> str:
    return json.dumps(obj, indent=indent, sort_keys=sort_keys, default=json_default, allow_nan=True) + "\n"


def atomic_write_json(path: str | Path, obj: Any, indent: int = 1, sort_keys: bool = True) -> None:
    atomic_write_text(path, dumps(obj, indent, sort_keys))


# ---- output folders: writability up front, staged writes, one run per folder ---------------------------

# the files the last run wrote into a folder, so that the next run can drop them
RUN_RECORD = ".sharpscope-run.json"
_STAGE_PREFIX = ".staging-"
_PROBE_BYTES = 64 * 1024
# errno values that mean "this output location cannot take the write" (not a bug, not an input problem)
_OUTPUT_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR,
    errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG,
}  # fmt: skip
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # never about an input file


def output_error(exc: OSError, where: str | Path) -> OutputError:
    """One line for an OSError met while writing under ``where``: the file, the reason, what to do."""
    target = exc.filename or where
    why = exc.strerror or type(exc).__name__
    hint = "free some space" if exc.errno in _FULL_ERRNOS else "fix its permissions"
    return OutputError(f"cannot write {target}: {why}; {hint} or choose another --out")


def check_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create the folder ``path`` if needed and prove it takes a write, before any work is done.

    A probe of 64 KiB is written, fsync'ed and removed, so a full disk (ENOSPC), a read-only mount (EROFS), a
    missing permission or a *file* at ``path`` is reported in one line naming ``flag`` -- not after minutes of
    scoring, when the first real write fails.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {p} is a file, not a folder; pass a folder path")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{flag} {p}: {parent} is a file, not a folder; pass a folder path")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".sharpscope-probe-", dir=p)
        try:
            left = memoryview(b"\0" * _PROBE_BYTES)
            while left:  # a nearly full disk takes a short write first, then raises ENOSPC
                left = left[os.write(fd, left) :]
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise OutputError(
            f"{flag} {p} is not writable: {exc.strerror or type(exc).__name__}; free some space, fix its "
            "permissions or choose another folder"
        ) from None
    return p


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_dead_stages(out: Path) -> None:
    """Remove staging folders left by runs that were killed (SIGKILL gives no chance to clean up)."""
    for d in out.glob(f"{_STAGE_PREFIX}*"):
        parts = d.name[len(_STAGE_PREFIX) :].split("-", 1)
        if d.is_dir() and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            shutil.rmtree(d, ignore_errors=True)


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _inside(out: Path, rel: str) -> Path | None:
    """``out / rel`` if it stays inside ``out`` (a record file is data: never trust it to name paths)."""
    target = (out / rel).resolve()
    return target if target.is_relative_to(out.resolve()) and target != out.resolve() else None


def _previous_files(out: Path) -> list[str]:
    rec = out / RUN_RECORD
    if not rec.is_file():
        return []
    try:
        files = json.loads(rec.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str)]


def _commit(stage: Path, out: Path, verb: str, stale: Iterable[str], record: bool) -> None:
    """Swap a finished run into ``out``: drop the previous run's files, move the new ones in (each move an
    atomic rename on one file system), then record what this run wrote."""
    new = _files_under(stage)
    old = (set(_previous_files(out)) | set(stale)) - set(new) if record else set()
    for rel in sorted(old):
        target = _inside(out, rel)
        if target is not None and target.is_file():
            target.unlink()
    for rel in new:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel, target)
    if record:
        atomic_write_json(out / RUN_RECORD, {"verb": verb, "files": new})


@contextmanager
def staged_output(
    out_dir: str | Path, verb: str, stale: Iterable[str] = (), flag: str = "--out", record: bool = True
) -> Iterator[Path]:
    """A staging folder inside ``out_dir`` for one run of ``verb``; its files replace the folder's at the end.

    Why: a verb that writes its outputs one by one into ``out_dir`` leaves a torn file on a full disk and a
    mix of two runs (an old ``metrics.json`` beside a new ``scores.csv``) when it stops half-way.  Here
    every file is first written completely into ``OUT/.staging-<pid>-*`` (same file system); only when the
    run ends are the previous run's files (listed in ``OUT/.sharpscope-run.json``, plus the verb's known
    output names ``stale``) removed and the new ones renamed in.  On SIGINT or a crash nothing in ``OUT``
    changes.  A run that stops on a user error (:class:`SharpscopeError`) after writing complete files (e.g.
    scores written, metrics refused) commits those, so the folder still holds one run only.  An OSError of
    the output (full disk, read-only) becomes one :class:`OutputError` line.  ``record=False`` (a folder
    that is not the verb's own, e.g. the folder of ``correlate --out FILE``) only renames the new files in.
    """
    out = check_writable_dir(out_dir, flag)
    _drop_dead_stages(out)
    stage = Path(tempfile.mkdtemp(prefix=f"{_STAGE_PREFIX}{os.getpid()}-", dir=out))
    try:
        try:
            yield stage
        except SharpscopeError as exc:
            if _files_under(stage):
                _commit(stage, out, verb, stale, record)
            if str(stage) in str(exc):  # the files it names now live in OUT
                raise type(exc)(str(exc).replace(str(stage), str(out))) from None
            raise
        except OSError as exc:
            ours = str(exc.filename or "").startswith(str(out))
            if exc.errno in _FULL_ERRNOS or (exc.errno in _OUTPUT_ERRNOS and ours):
                raise output_error(exc, out) from None
            raise
        try:
            _commit(stage, out, verb, stale, record)
        except OSError as exc:
            raise output_error(exc, out) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged_file(path: str | Path, flag: str = "--out") -> Iterator[Path]:
    """A temporary path beside ``path`` to write a whole file to; renamed over ``path`` only on success.

    For verbs whose ``--out`` is a file (a manifest, a correlation table): the same guarantee as
    :func:`atomic_write` for writers that insist on opening the path themselves.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputError(f"{flag} {p} is a folder; pass a file name")
    check_writable_dir(p.parent, flag)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=p.suffix or ".tmp", dir=p.parent)
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except OSError as exc:
            if exc.errno in _OUTPUT_ERRNOS:
                raise output_error(exc, p) from None
            raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
