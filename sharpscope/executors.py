"""Generic task executors: run ``fn(*args)`` for a list of argument tuples locally, on Ray or on Slurm.

Used by the sweep (one task per cell, :mod:`sharpscope.sweep.executors`) and by the zoo (one task per
training run, :mod:`sharpscope.train.zoo`); it knows nothing about either.

* ``local`` -- in this process, one task after another.
* ``ray`` -- each task a Ray task with its CPU/GPU needs; ``ray.init()`` locally, or an existing cluster
  through ``address`` (e.g. ``ray://head:10001`` or ``auto``).
* ``slurm`` -- each task a submitit job (``cluster="slurm"``); ``cluster="local"`` runs the same jobs as local
  subprocesses (submitit's LocalExecutor), which is how it is tested without a cluster.

Tasks write their own outputs atomically; the driver only collects.  Every task runs with an explicit thread
count so floating-point results do not depend on where it ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SharpscopeError

EXECUTORS = ("local", "ray", "slurm")


@dataclass
class ExecOptions:
    """Where and how wide tasks run; ``num_threads`` is each task's torch thread count."""

    workers: int = 1
    num_threads: int = 1
    ray_address: str | None = None
    slurm_cluster: str = "slurm"  # or "local" / "debug"
    slurm_partition: str | None = None
    slurm_timeout_min: int = 240
    gpus_per_cell: int = 0
    progress: bool = False


def task_threads(executor: str, threads: int = 0) -> int:
    """Torch threads per task: ``threads`` when given (> 0), else every core in this process (``local``: one
    task at a time) and 1 on ``ray`` / ``slurm`` (tasks share a machine).  A thread count moves floating-point
    sums, so it is fixed here once and recorded with each row."""
    if threads:
        return threads
    if executor != "local":
        return 1
    import torch

    return torch.get_num_threads()


def map_tasks(
    fn: Callable[..., Any],
    args: Sequence[tuple],
    names: Sequence[str],
    executor: str,
    opts: ExecOptions,
    folder: Path,
    on_done: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """Run ``fn(*a)`` for every ``a`` in ``args`` on ``executor``; results in input order.

    Tasks must be idempotent and write their own outputs atomically (the sweep's cells, the zoo's training
    runs), so a task retried after a lost worker does no harm.  ``on_done(index, n_done)`` reports progress.
    """
    if executor not in EXECUTORS:
        raise SharpscopeError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if not args:
        return []
    if executor == "local":
        out = []
        for i, a in enumerate(args):
            out.append(fn(*a))
            if on_done:
                on_done(i, i + 1)
        return out
    if executor == "ray":
        return _map_ray(fn, args, opts, on_done)
    return _map_submitit(fn, args, names, opts, folder, on_done)


def _map_ray(fn, args, opts, on_done) -> list[Any]:
    try:
        import ray
    except ImportError:
        raise SharpscopeError("executor ray needs Ray: pip install 'sharpscope[dist]'") from None
    started_here = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
        if opts.ray_address:
            kw["address"] = opts.ray_address
        else:
            kw["num_cpus"] = max(1, opts.workers) * max(1, opts.num_threads)
        # Workers must import sharpscope from this tree even when it is not installed.
        kw["runtime_env"] = {"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}}
        ray.init(**kw)
        started_here = True
    try:
        remote = ray.remote(num_cpus=max(1, opts.num_threads), num_gpus=opts.gpus_per_cell, max_retries=1)(fn)
        refs = [remote.remote(*a) for a in args]
        index = {ref: i for i, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    results[index[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(getattr(exc, "cause", None), SharpscopeError):
                        raise exc.cause from None
                    raise
                if on_done:
                    on_done(index[ref], len(results))
        return [results[i] for i in range(len(args))]
    finally:
        if started_here:
            ray.shutdown()


def _map_submitit(fn, args, names, opts, folder: Path, on_done) -> list[Any]:
    try:
        import submitit
    except ImportError:
        raise SharpscopeError("executor slurm needs submitit: pip install 'sharpscope[dist]'") from None
    cluster = None if opts.slurm_cluster == "slurm" else opts.slurm_cluster
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": opts.slurm_timeout_min, "cpus_per_task": opts.num_threads}
    if opts.slurm_cluster == "slurm":
        params["slurm_array_parallelism"] = max(1, opts.workers)
        if opts.slurm_partition:
            params["slurm_partition"] = opts.slurm_partition
        if opts.gpus_per_cell:
            params["gpus_per_node"] = opts.gpus_per_cell
    ex.update_parameters(**params)
    jobs = []
    with ex.batch():
        for a in args:
            jobs.append(ex.submit(fn, *a))
    out = []
    for i, (job, name) in enumerate(zip(jobs, names, strict=True)):
        try:
            out.append(job.result())
        except Exception as exc:  # submitit wraps remote failures; surface the last error line
            lines = str(exc).strip().splitlines()
            tail = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else repr(exc))
            raise SharpscopeError(f"task {name} failed on the slurm executor: {tail}") from None
        if on_done:
            on_done(i, i + 1)
    return out
