"""The results store of a sweep.

Layout of ``RESULTS/``::

    cells/<cell_id>.json     one file per finished cell (format "sharpscope-cell/1"), written atomically
    subsets/<name>.json      the resolved utterance ids of every subset step
    plan.json                the plan of the last run (for inspection)
    results.parquet          merged tidy table: one row per (checkpoint, testset, subset, measure,
                             rho, seed, loss)
    results.csv              the same as CSV
    problems.txt             files in cells/ that were not merged, and why

Atomicity: a cell file is written to a temporary file in the same directory, flushed and fsync'ed, then
renamed over the final name (``os.replace`` is atomic on POSIX), so a SIGKILL at any moment leaves either no
file or a complete one.  The merged tables are rebuilt from the cell files and written the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

CELL_FORMAT = "sharpscope-cell/1"


@dataclass
class MergeReport:
    n_cells: int = 0
    n_rows: int = 0
    problems: list[str] = field(default_factory=list)


class ResultStore:
    """Cell files + merged tables under one directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.cells = self.root / "cells"

    def cell_path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.json"

    def is_done(self, cell_id: str) -> bool:
        """A cell counts as done when its file exists and parses as a complete cell of that id."""
        return self._read_cell(self.cell_path(cell_id))[0] is not None

    def write_cell(self, cell_id: str, key: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
        path = self.cell_path(cell_id)
        atomic_write_json(path, {"format": CELL_FORMAT, "cell_id": cell_id, "key": key, "rows": rows})
        return path

    def _read_cell(self, path: Path) -> tuple[dict[str, Any] | None, str | None]:
        if not path.is_file():
            return None, "missing"
        try:
            obj = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"not valid JSON ({exc.__class__.__name__}); delete it or rerun with --force"
        if not isinstance(obj, dict) or obj.get("format") != CELL_FORMAT:
            return None, f"not a sharpscope cell file (format != {CELL_FORMAT}); remove it from cells/"
        if obj.get("cell_id") != path.stem:
            return None, "cell id does not match the file name; remove it from cells/"
        rows = obj.get("rows")
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            return None, "holds no result rows; delete it or rerun with --force"
        return obj, None

    def merge(self, only: set[str] | None = None) -> tuple[pd.DataFrame, MergeReport]:
        """Merge cell files (all, or those whose id is in ``only``) into the tidy tables on disk."""
        report = MergeReport()
        rows: list[dict[str, Any]] = []
        files = sorted(self.cells.glob("*")) if self.cells.is_dir() else []
        for f in files:
            if f.name.startswith(".") and f.suffix == ".tmp":
                continue  # an interrupted write: never merged
            if f.suffix != ".json":
                report.problems.append(f"{f}: foreign file in cells/ (not merged)")
                continue
            if only is not None and f.stem not in only:
                continue
            obj, why = self._read_cell(f)
            if obj is None:
                report.problems.append(f"{f}: {why}")
                continue
            report.n_cells += 1
            for r in obj["rows"]:
                rows.append({"cell_id": obj["cell_id"], **r})
        df = pd.DataFrame(rows)
        if not df.empty:
            sort_cols = [
                c for c in ("checkpoint", "testset", "subset", "measure", "loss", "rho", "seed") if c in df
            ]
            df = df.sort_values(sort_cols, kind="mergesort", na_position="first").reset_index(drop=True)
        report.n_rows = len(df)
        self.write_tables(df)
        atomic_write_text(self.root / "problems.txt", "".join(p + "\n" for p in report.problems))
        return df, report

    def write_tables(self, df: pd.DataFrame) -> None:
        import io

        self.root.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(self.root / "results.parquet", buf.getvalue())
        atomic_write_text(self.root / "results.csv", df.to_csv(index=False))
