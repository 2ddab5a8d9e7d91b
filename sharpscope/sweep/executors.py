"""Executors: where cells run.  All three write the same cell files, so they produce identical tables.

The task runners are generic and live in :mod:`sharpscope.executors` (the zoo uses them too); this module
adds what is sweep's: a cell as a task, and the in-process path that keeps the audio cache between cells.

* ``local`` -- in this process, one cell after another (audio cache and model shared between cells).
* ``ray`` -- each cell a Ray task with its CPU/GPU needs; ``ray.init()`` locally, or an existing cluster
  through ``address`` (e.g. ``ray://head:10001`` or ``auto``).
* ``slurm`` -- each cell a submitit job (``cluster="slurm"``); ``cluster="local"`` runs the same jobs as local
  subprocesses (submitit's LocalExecutor), which is how it is tested without a cluster.

Remote workers write their own cell file atomically; the driver only merges.  Every cell runs with an explicit
thread count so floating-point results do not depend on where it ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..executors import EXECUTORS, ExecOptions, map_tasks, task_threads
from .plan import Cell
from .store import ResultStore


def execute_cell(cell_dict: dict[str, Any], root: str, num_threads: int) -> str:
    """Run one cell and write its file; importable entry point for remote workers."""
    from .runner import run_cell

    cell = Cell.from_dict(cell_dict)
    rows = run_cell(cell, num_threads=num_threads)
    ResultStore(root).write_cell(cell.cell_id, cell.key, rows)
    return cell.cell_id


def run_cells(
    cells: Sequence[Cell],
    store: ResultStore,
    executor: str = "local",
    opts: ExecOptions | None = None,
    on_done: Callable[[Cell, int, int], None] | None = None,
    on_start: Callable[[Cell], None] | None = None,
) -> list[str]:
    """Run ``cells`` (already filtered to the unfinished ones) with ``executor``; return finished cell ids."""
    opts = opts or ExecOptions()
    if executor == "local":  # in process: keeps the audio cache and the loaded model between cells
        from .runner import run_cell

        done = []
        for i, cell in enumerate(cells, 1):
            if on_start:
                on_start(cell)
            rows = run_cell(cell, num_threads=opts.num_threads, progress=opts.progress)
            store.write_cell(cell.cell_id, cell.key, rows)
            done.append(cell.cell_id)
            if on_done:
                on_done(cell, i, len(cells))
        return done
    args = [(c.to_dict(), str(store.root), opts.num_threads) for c in cells]
    names = [c.describe() for c in cells]

    def done_cb(i: int, n_done: int) -> None:
        if on_done:
            on_done(cells[i], n_done, len(cells))

    return map_tasks(execute_cell, args, names, executor, opts, store.root / "submitit", done_cb)


__all__ = ["EXECUTORS", "ExecOptions", "execute_cell", "map_tasks", "run_cells", "task_threads"]
