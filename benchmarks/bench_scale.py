"""Scale of the bookkeeping: a DF-size manifest, and planning a 100-checkpoint x 8-test-set study.

(a) **manifest** -- a 611,829-row manifest (ASVspoof 2021 DF size) with the columns its converter writes
    (``utt_id, path, label, dataset, subset, attack, codec, speaker`` plus ``source, phase, vocoder``; ~4 %
    bona fide, nine codec conditions, relative ``flac/...`` paths) is built directly as a DataFrame from
    seeded numpy arrays, then timed: building it, ``write_manifest`` to CSV and to Parquet (both validate
    before writing), ``read_manifest`` of each (load + validation + normalisation + path resolution) and
    ``validate`` alone.  ``benchmarks/bench_manifest.py`` times the same sizes through the converter instead.
(b) **planning** -- 100 real tiny AASIST checkpoints (``save_checkpoint``: safetensors + JSON sidecar with
    training metadata, found by one glob in the spec) and 8 manifests of 10,000 rows whose audio files do not
    exist (planning must not touch audio: it stats checkpoints and hashes manifests), a study YAML with two
    measures (m-sharpness, average-case), then timed: ``load_study`` (validation, glob, sidecars),
    ``plan`` (800 cells), computing every cell id, and ``run_sweep(..., dry_run=True)`` on an empty results
    folder (load + plan + the per-cell "already done?" check).  ``--with-subsets`` adds a cumulative
    by-attack subset study on one test set, so planning also reads a manifest and resolves the subset steps.

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--rows 611829] [--checkpoints 100] [--testsets 8]
                                               [--testset-rows 10000] [--with-subsets] [--out OUT.json]

``--quick`` shrinks everything (20,000 rows, 10 checkpoints x 3 test sets of 1,000 rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from sharpscope.data.manifest import read_manifest, validate, write_manifest

DF_ROWS = 611_829
TINY_AASIST = {"filts": [12, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 6], "nb_samp": 8000}
CODECS = ("nocodec", "low_mp3", "high_mp3", "low_m4a", "high_m4a", "low_ogg", "high_ogg", "mp3m4a", "oggm4a")
ATTACKS = tuple(f"A{k:02d}" for k in range(7, 20))


class Timer:
    """Collects ``(step, seconds, note)`` rows."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __call__(self, part: str, step: str, fn: Callable[[], Any], note: Callable[[Any], str] | None = None):
        t0 = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t0
        self.rows.append({"part": part, "step": step, "seconds": secs, "note": note(out) if note else ""})
        return out


# ---- (a) manifest ------------------------------------------------------------------------------------------


def df_like_manifest(n: int, seed: int = 0, prefix: str = "DF_E_", start: int = 2_000_000) -> pd.DataFrame:
    """An ASVspoof-2021-DF-like manifest table of ``n`` rows (relative audio paths; files need not exist)."""
    rng = np.random.default_rng(seed)
    utt = np.char.add(prefix, (start + np.arange(n)).astype(str))
    bona = rng.random(n) < 0.04
    label = np.where(bona, "bonafide", "spoof")
    vcc = ~bona & (rng.random(n) < 0.2)
    attack = np.where(bona, "bonafide", rng.choice(np.array(ATTACKS), n))
    attack = np.where(vcc, np.char.add("Task1-team", rng.integers(1, 33, n).astype(str)), attack)
    return pd.DataFrame(
        {
            "utt_id": utt,
            "path": np.char.add(np.char.add("flac/", utt), ".flac"),
            "label": label,
            "dataset": "asvspoof2021_df",
            "subset": "eval",
            "attack": attack,
            "codec": rng.choice(np.array(CODECS), n),
            "speaker": rng.choice(np.array([f"LA_{k:04d}" for k in range(1, 200)]), n),
            "source": np.where(vcc, "vcc2020", "asvspoof"),
            "phase": rng.choice(np.array(["progress", "eval", "hidden"]), n, p=[0.1, 0.8, 0.1]),
            "vocoder": np.where(
                bona, "", rng.choice(np.array(["traditional_vocoder", "neural_vocoder_autoregressive"]), n)
            ),
        }
    )


def bench_manifest(root: Path, rows: int, timer: Timer) -> None:
    part = f"(a) manifest, {rows:,} rows"
    df = timer(part, "build DataFrame (numpy -> pandas)", lambda: df_like_manifest(rows))
    csv, pq = root / "df.csv", root / "df.parquet"
    mb = lambda p: f"{p.stat().st_size / 1e6:.1f} MB"  # noqa: E731
    timer(part, "write_manifest CSV (validates first)", lambda: write_manifest(df, csv), mb)
    timer(part, "write_manifest Parquet (validates first)", lambda: write_manifest(df, pq), mb)
    timer(part, "read_manifest CSV (+ validation)", lambda: read_manifest(csv), lambda m: f"{len(m):,} rows")
    timer(
        part, "read_manifest Parquet (+ validation)", lambda: read_manifest(pq), lambda m: f"{len(m):,} rows"
    )
    timer(part, "validate only (in-memory table)", lambda: validate(df), lambda p: f"{len(p)} problems")


# ---- (b) planning ------------------------------------------------------------------------------------------


def write_zoo(folder: Path, n: int) -> list[Path]:
    """``n`` tiny AASIST checkpoints with training-style metadata in their sidecars."""
    from sharpscope.models.checkpoints import save_checkpoint
    from sharpscope.models.registry import build_model

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        model = build_model("aasist", **TINY_AASIST)
        meta = {
            "arch": "aasist",
            "model_cfg": TINY_AASIST,
            "optimizer": ("erm", "sam", "asam", "mldg")[i % 4],
            "rho": (0.0, 0.05, 0.5, 0.0)[i % 4],
            "seed": i // 4,
            "lr": 1e-4,
        }
        paths.append(save_checkpoint(model, folder / f"run{i:03d}.safetensors", meta))
    return paths


def write_testsets(folder: Path, n: int, rows: int) -> list[Path]:
    """``n`` CSV manifests of ``rows`` rows each; their audio files do not exist."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        df = df_like_manifest(rows, seed=100 + k, prefix=f"T{k}_", start=0)
        out.append(write_manifest(df, folder / f"testset{k}.csv"))
    return out


def write_scale_study(root: Path, manifests: list[Path], with_subsets: bool) -> Path:
    spec: dict[str, Any] = {
        "name": "scale",
        "seeds": [0],
        "scoring": {"batch_size": 24, "crop": "first", "score": "bonafide-logit", "nb_samp": 64600},
        "checkpoints": [{"path": "zoo/*.safetensors", "arch": "aasist"}],
        "testsets": [
            {"name": m.stem, "manifest": str(m.relative_to(root)), "in_domain": i == 0}
            for i, m in enumerate(manifests)
        ],
        "measures": [
            {"name": "m-sharpness", "rho": 0.05, "loss": ["weighted-ce", "kl-to-clean"]},
            {"name": "average-case", "rho": 0.05, "adaptive": True, "samples": 4},
        ],
    }
    if with_subsets:  # sized from the data: half the bona fide rows, the smallest attack group
        df = pd.read_csv(manifests[-1], usecols=["label", "attack"])
        spoof = df[df["label"] == "spoof"]
        spec["subsets"] = [
            {
                "name": "attacks",
                "testset": manifests[-1].stem,
                "by": "attack",
                "n_bonafide": max(1, int((df["label"] == "bonafide").sum()) // 2),
                "n_per_group": max(1, int(spoof["attack"].value_counts().min())),
            }
        ]
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def bench_planning(
    root: Path, n_ckpt: int, n_sets: int, set_rows: int, with_subsets: bool, timer: Timer
) -> int:
    from sharpscope.sweep.plan import plan
    from sharpscope.sweep.study import load_study
    from sharpscope.sweep.sweep import run_sweep

    part = f"(b) plan {n_ckpt} ckpts x {n_sets} sets"
    timer(
        part,
        f"write {n_ckpt} tiny checkpoints (setup)",
        lambda: write_zoo(root / "zoo", n_ckpt),
        lambda p: f"{sum(q.stat().st_size for q in p) / 1e6:.1f} MB",
    )
    manifests = timer(
        part,
        f"write {n_sets} manifests x {set_rows:,} rows (setup)",
        lambda: write_testsets(root / "manifests", n_sets, set_rows),
    )
    study_path = write_scale_study(root, manifests, with_subsets)
    study = timer(
        part,
        "load_study (validate, glob, sidecars)",
        lambda: load_study(study_path),
        lambda s: f"{len(s.checkpoints)} ckpts, {len(s.measures)} measure settings",
    )
    cells, _ = timer(part, "plan", lambda: plan(study), lambda out: f"{len(out[0]):,} cells")
    timer(
        part,
        "cell ids of every cell",
        lambda: [c.cell_id for c in cells],
        lambda ids: f"{len(set(ids)):,} unique",
    )
    outcome = timer(
        part,
        "run_sweep(dry_run=True), empty store",
        lambda: run_sweep(study_path, root / "results", dry_run=True),
        lambda o: f"{len(o.cells):,} cells, {o.skipped} done",
    )
    expected = n_ckpt * n_sets
    if not with_subsets and len(outcome.cells) != expected:
        raise AssertionError(f"planned {len(outcome.cells)} cells, expected {expected}")
    if any(Path(p).exists() for p in pd.read_csv(manifests[0], nrows=5)["path"]):
        raise AssertionError("audio files exist; the benchmark is meant to plan without audio")
    return len(outcome.cells)


# ---- driver ------------------------------------------------------------------------------------------------


def bench(
    rows: int = DF_ROWS,
    n_ckpt: int = 100,
    n_sets: int = 8,
    set_rows: int = 10_000,
    with_subsets: bool = False,
    quick: bool = False,
) -> dict[str, Any]:
    if quick:
        rows, n_ckpt = min(rows, 20_000), min(n_ckpt, 10)
        n_sets, set_rows = min(n_sets, 3), min(set_rows, 1_000)
    timer = Timer()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        root = Path(tmp)
        (root / "a").mkdir()
        (root / "b").mkdir()
        bench_manifest(root / "a", rows, timer)
        n_cells = bench_planning(root / "b", n_ckpt, n_sets, set_rows, with_subsets, timer)
    return {
        "benchmark": "bench_scale",
        "quick": quick,
        "manifest_rows": rows,
        "checkpoints": n_ckpt,
        "testsets": n_sets,
        "testset_rows": set_rows,
        "with_subsets": with_subsets,
        "cells": n_cells,
        "steps": timer.rows,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def print_table(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="scale: DF-size manifest and planning a large study",
        caption=f"load avg before {res['loadavg_before'][0]:.2f}, after {res['loadavg_after'][0]:.2f}; "
        f"{res['cpu_count']} CPUs",
    )
    for col, just in (("part", "left"), ("step", "left"), ("seconds", "right"), ("note", "left")):
        table.add_column(col, justify=just)
    for r in res["steps"]:
        table.add_row(r["part"], r["step"], f"{r['seconds']:.2f}", r["note"])
    Console(width=130).print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    ap.add_argument("--rows", type=int, default=DF_ROWS, help="manifest rows for part (a)")
    ap.add_argument("--checkpoints", type=int, default=100)
    ap.add_argument("--testsets", type=int, default=8)
    ap.add_argument("--testset-rows", type=int, default=10_000)
    ap.add_argument("--with-subsets", action="store_true", help="add a cumulative by-attack subset study")
    ap.add_argument("--out", "--json", dest="out", type=Path, default=None, help="write the numbers as JSON")
    args = ap.parse_args()
    res = bench(args.rows, args.checkpoints, args.testsets, args.testset_rows, args.with_subsets, args.quick)
    print_table(res)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
