"""A checkpoint zoo: a grid of training runs, for correlation studies.

A correlation between sharpness and generalization needs a population of checkpoints that differ in how they
were trained (method × ρ × lr × seed × LoRA rank ...).  A zoo spec (YAML)::

    name: demo-zoo
    base:                       # a training config (sharpscope.train.config), shared by every run
      arch: aasist
      epochs: 4
      data: {train: ../demo_run/corpus/manifests/train.csv, dev: ../demo_run/corpus/manifests/dev.csv}
    runs:
      - name: erm
        grid: {seed: [0, 1]}                   # dotted keys -> value lists; the cartesian product is taken
      - name: sam
        set: {sam: {rho: 0.05}}                # overrides merged into base
        grid: {seed: [0, 1], sam.rho: [0.02, 0.05]}

Every run trains into ``OUT/<name>-<grid values>/`` with :func:`sharpscope.train.loop.train`, which resumes
an interrupted run and returns at once for a finished one, so re-running a zoo only trains what is missing.
Runs go through the sweep's executors (local / ray / slurm).  The checkpoints come with their metadata
sidecars, ready for ``sharpscope sweep``.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..specio import read_yaml, safe_name
from .config import TrainConfig


@dataclass(frozen=True)
class ZooRun:
    name: str
    config: dict[str, Any]  # plain training config (paths already absolute)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        if d.get(p) is None:
            d[p] = {}
        if not isinstance(d[p], dict):
            raise SpecError(f"grid.{key}: {p!r} is {d[p]!r}, not a section that can hold {parts[-1]!r}")
        d = d[p]
    d[parts[-1]] = value


def _slug(v: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "", str(v))


def expand_zoo(spec: dict[str, Any], base_dir: Path, source: str = "zoo spec") -> list[ZooRun]:
    """Runs of a zoo spec, each validated as a training config (problems raise :class:`SpecError`)."""
    if not isinstance(spec, dict) or "runs" not in spec:
        raise SpecError(f"{source}: needs 'base' (a training config) and 'runs' (a list)")
    # keys starting with "x-" are free for YAML anchors (as in docker compose)
    unknown = {k for k in spec if not str(k).startswith("x-")} - {"name", "base", "runs"}
    if unknown:
        raise SpecError(f"{source}: unknown keys {sorted(unknown)} (allowed: name, base, runs)")
    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise SpecError(f"{source}: base: must be a mapping (a training config)")
    if not isinstance(spec["runs"], list):
        raise SpecError(f"{source}: runs: must be a list of runs (each with a name)")
    runs: list[ZooRun] = []
    names: set[str] = set()
    for i, r in enumerate(spec["runs"] or []):
        where = f"{source}: runs[{i}]"
        if not isinstance(r, dict) or "name" not in r:
            raise SpecError(f"{where}: each run needs a 'name'")
        extra = set(r) - {"name", "set", "grid"}
        if extra:
            raise SpecError(f"{where}: unknown keys {sorted(map(str, extra))} (allowed: name, set, grid)")
        run_name = safe_name(r["name"], f"{where}.name")  # it becomes the folder OUT/<name>-...
        grid = r.get("grid") or {}
        if not isinstance(grid, dict):
            raise SpecError(f"{where}.grid: must be a mapping of dotted keys to lists of values")
        for k, v in grid.items():
            if not isinstance(k, str) or not k:
                raise SpecError(f"{where}.grid: key {k!r} must be a dotted config key")
            if not isinstance(v, list) or not v:
                raise SpecError(f"{where}.grid.{k}: must be a non-empty list of values")
        over = r.get("set") or {}
        if not isinstance(over, dict):
            raise SpecError(f"{where}.set: must be a mapping of config overrides")
        # a run that changes the architecture starts from a fresh model config
        cfg0 = _deep_merge({k: v for k, v in base.items() if k != "model"} if "arch" in over else base, over)
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            cfg = copy.deepcopy(cfg0)
            for k, v in zip(keys, combo, strict=True):
                try:
                    _set_dotted(cfg, k, v)
                except SpecError as exc:
                    raise SpecError(f"{where}.{exc}") from None
            label = "-".join(
                [run_name] + [f"{k.split('.')[-1]}{_slug(v)}" for k, v in zip(keys, combo, strict=True)]
            )
            label = safe_name(label, f"{where}.name")
            if label in names:
                raise SpecError(f"{where}: run name {label!r} occurs twice; give runs distinct names")
            names.add(label)
            cfg["name"] = label
            tc = TrainConfig.from_dict(cfg, base_dir=base_dir, source=f"{where} ({label})")
            runs.append(ZooRun(label, tc.to_dict()))
    if not runs:
        raise SpecError(f"{source}: no runs")
    return runs


def load_zoo(path: str | Path) -> list[ZooRun]:
    p = Path(path)
    spec = read_yaml(p, "zoo spec")
    return expand_zoo(spec, p.resolve().parent, str(p))


def train_run(config: dict[str, Any], out_dir: str, num_threads: int = 0) -> dict[str, Any]:
    """Train one zoo run (importable entry point for remote workers); returns where its checkpoints are."""
    import torch

    from .loop import train

    if num_threads:
        torch.set_num_threads(num_threads)
    res = train(TrainConfig.from_dict(config), out_dir)
    return {
        "out_dir": str(res.out_dir),
        "best": str(res.best) if res.best else None,
        "last": str(res.last) if res.last else None,
        "epochs": res.epochs_done,
    }


def run_zoo(
    spec_path: str | Path,
    out: str | Path,
    executor: str = "local",
    opts: Any = None,
    on_done: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every run of a zoo (finished ones return at once); returns one dict per run."""
    from ..executors import ExecOptions, map_tasks

    runs = load_zoo(spec_path)
    opts = opts or ExecOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = [(r.config, str(out / r.name), opts.num_threads) for r in runs]

    def cb(i: int, n: int) -> None:
        if on_done:
            on_done(runs[i].name, n, len(runs))

    results = map_tasks(train_run, args, [r.name for r in runs], executor, opts, out / "submitit", cb)
    return [{"name": r.name, **res} for r, res in zip(runs, results, strict=True)]
