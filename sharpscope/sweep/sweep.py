"""The sweep: study spec → plan → unfinished cells → executor → store → merged tidy table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..fileio import atomic_write_json
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


def prepare(study_path: str | Path, out: str | Path) -> tuple[Study, list[Cell], dict, ResultStore]:
    study = load_study(study_path)
    cells, resolved = plan(study)
    return study, cells, resolved, ResultStore(out)


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
) -> SweepOutcome:
    """Run (or, with ``dry_run``, only plan) a study; finished cells are skipped unless ``force``."""
    study, cells, resolved, store = prepare(study_path, out)
    todo = cells if force else [c for c in cells if not store.is_done(c.cell_id)]
    outcome = SweepOutcome(
        study, cells, skipped=len(cells) - len(todo), ran=0, out=Path(out), subsets=resolved
    )
    if on_plan:
        on_plan(todo, len(cells))
    if dry_run:
        return outcome
    root = Path(out)
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
    atomic_write_json(root / "study.json", study.raw)
    run_cells(todo, store, executor, opts, on_done=on_done, on_start=on_start)
    outcome.ran = len(todo)
    outcome.table, outcome.merge = store.merge(only={c.cell_id for c in cells})
    return outcome
