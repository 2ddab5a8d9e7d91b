"""The sweep: study spec → plan → unfinished cells → executor → store → merged tidy table."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import OutputError
from ..fileio import atomic_write_json, check_writable_dir
from .executors import ExecOptions, run_cells
from .plan import Cell, plan
from .store import MergeReport, ResultStore
from .study import Study, load_study


@dataclass
class SweepOutcome:
    study: Study
    cells: list[Cell]
    skipped: int
    ran: int
    table: pd.DataFrame | None = None
    merge: MergeReport | None = None
    out: Path | None = None
    subsets: dict = field(default_factory=dict)
    todo_ids: set[str] = field(default_factory=set)


LOCK_NAME = ".sweep.lock"


def prepare(
    study_path: str | Path, out: str | Path, trust_checkpoint: bool = False
) -> tuple[Study, list[Cell], dict, ResultStore]:
    """Study, cells, resolved subsets and store.  ``trust_checkpoint`` comes from the person running the sweep
    (``--trust-checkpoint``), never from the spec: a spec can be someone else's file."""
    study = load_study(study_path)
    study.trust_checkpoint = bool(trust_checkpoint)
    cells, resolved = plan(study)
    # -- budgeted study: the budget is part of every cell's key (budgeted rows never stand in for full ones)
    if study.budget is not None:
        for c in cells:
            c.key = {**c.key, "budget": study.budget.as_dict()}
    # -- end budgeted study --
    return study, cells, resolved, ResultStore(out)


def check_same_study(root: Path, study: Study) -> None:
    """Refuse to sweep ``study`` into a folder that holds another study's results.

    The merged table of a folder is rebuilt from the cells of the current plan, so a second study swept into
    the same ``--out`` would silently replace the first one's table (and its ``study.json``/``plan.json``).
    Studies are told apart by name (an edited spec of the same study keeps its folder and reuses its cells).
    """
    recorded = root / "study.json"
    if not recorded.is_file():
        return
    try:
        raw = json.loads(recorded.read_text())
    except (OSError, ValueError):
        raise OutputError(
            f"{recorded}: unreadable record of the study in this folder; remove it or use another --out"
        ) from None
    old = raw.get("name") if isinstance(raw, dict) else None
    old = str(old) if old else None
    if old is not None and old != study.name:
        raise OutputError(
            f"--out {root} holds the results of study {old!r}, not {study.name!r}; sweep into another "
            "--out (one folder per study)"
        )


@contextmanager
def sweep_lock(root: Path) -> Iterator[None]:
    """Exclusive lock of a results folder for the whole sweep (released by the OS if the process dies).

    Two sweeps into one folder would both compute every cell; the second one stops at once instead.
    """
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    fh = open(root / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            who = fh.read().strip() or "another process"
            raise OutputError(
                f"--out {root} is being swept by {who}; wait for it to finish (then rerun: finished cells "
                "are reused) or use another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()


def run_sweep(
    study_path: str | Path,
    out: str | Path,
    executor: str = "local",
    opts: ExecOptions | None = None,
    force: bool = False,
    dry_run: bool = False,
    on_done: Callable[[Cell, int, int], None] | None = None,
    on_start: Callable[[Cell], None] | None = None,
    on_plan: Callable[[list[Cell], int], None] | None = None,
    trust_checkpoint: bool = False,
) -> SweepOutcome:
    """Run (or, with ``dry_run``, only plan) a study; finished cells are skipped unless ``force``."""
    study, cells, resolved, store = prepare(study_path, out, trust_checkpoint)
    root = Path(out)
    if dry_run:
        todo = cells if force else [c for c in cells if not store.is_done(c.cell_id)]
        if root.is_dir():
            check_same_study(root, study)
        return _outcome(study, cells, todo, resolved, root, on_plan)
    check_writable_dir(root)
    with sweep_lock(root):
        check_same_study(root, study)
        todo = cells if force else [c for c in cells if not store.is_done(c.cell_id)]
        outcome = _outcome(study, cells, todo, resolved, root, on_plan)
        _run(study, cells, todo, resolved, store, root, executor, opts, on_done, on_start)
        outcome.ran = len(todo)
        outcome.table, outcome.merge = store.merge(only={c.cell_id for c in cells})
    return outcome


def _outcome(study, cells, todo, resolved, root, on_plan) -> SweepOutcome:  # noqa: ANN001
    outcome = SweepOutcome(
        study,
        cells,
        skipped=len(cells) - len(todo),
        ran=0,
        out=root,
        subsets=resolved,
        todo_ids={c.cell_id for c in todo},
    )
    if on_plan:
        on_plan(todo, len(cells))
    return outcome


def _run(study, cells, todo, resolved, store, root, executor, opts, on_done, on_start) -> None:  # noqa: ANN001
    for name, steps in resolved.items():
        atomic_write_json(root / "subsets" / f"{name}.json", [s.to_dict() for s in steps])
    atomic_write_json(
        root / "plan.json",
        {
            "study": study.raw,
            "spec_hash": study.spec_hash,
            "cells": [{"cell_id": c.cell_id, "cell": c.describe()} for c in cells],
        },
    )
    atomic_write_json(root / "study.json", {**study.raw, "name": study.name})
    # -- budgeted study: rounds over whole evaluation sets (sharpscope.sweep.budget) --
    if study.budget is not None:
        from .budget import run_budgeted

        o = opts or ExecOptions()
        ids = {c.cell_id for c in todo}
        run_budgeted(study.budget, cells, ids, store, executor, o.num_threads, o.progress, on_done, on_start)
        return
    # -- end budgeted study --
    run_cells(todo, store, executor, opts, on_done=on_done, on_start=on_start)
