"""Sweep engine vs the naive pipeline: 3 checkpoints x 3 test sets, EER + m-sharpness on every full set.

* **sweep** -- :func:`sharpscope.sweep.sweep.run_sweep` on a generated study YAML with the ``local`` executor:
  per cell the audio comes from the process-wide cache (each test set decoded once for all checkpoints), and
  the m-sharpness clean forward pass also yields the scores (one shared pass), then EER etc. and the cell
  file are written and merged into the results table.
* **naive** -- what running ``sharpscope score`` and then ``sharpscope sharpness`` on every (checkpoint, test
  set) pair does: load the checkpoint and read the manifest, a scoring pass
  (:func:`sharpscope.scoring.score_manifest`, fresh :class:`~sharpscope.data.audio.AudioCache`, so the audio
  is decoded again), a separate m-sharpness pass (``make_estimator("m-sharpness").estimate``) over freshly
  decoded batches (:func:`sharpscope.data.audio.iter_batches` with another new cache), and
  :func:`sharpscope.metrics.evaluate` on the scores.

Both pipelines do the same measurements (same batches in manifest order, seed 0, rho 0.05, class-weighted
CE, EER bootstrap with seed 0): the script checks that every EER and every m-sharpness value agree and prints
the largest absolute difference, then a table of wall seconds and the ratio naive / sweep.  The model-pass
counts (forward / backward batch passes, from the estimators' cost accounting plus one forward per scoring
batch) are the load-independent part of the comparison.

Model: AASIST in the official configuration with random initialisation (speed does not depend on the
weights), three seeds.  Data: per test set ``--n-per-class`` bona fide clips (harmonic tones) and as many
spoof clips (filtered noise) of 2-4 s at 16 kHz, written with soundfile; the three test sets differ by
condition (clean, added noise, band-limited).  Crop ``first`` with ``--nb-samp`` samples, by default the
reference 64,600 (4.04 s), so the per-utterance model work is the real one.  An official-size AASIST forward +
backward at that length takes seconds per utterance on a 2-core CPU, so the default test sets are small
(``--n-per-class 1``: 2 clips = one batch of 2 per set; about 2-3 minutes on a 2-core machine with some
background load; ``--n-per-class 2`` doubles it).  The time per utterance scales both pipelines alike, so the
ratio hardly depends on the number of clips.

What to expect: decoding a clip costs well under a millisecond, three orders of magnitude less than its
forward pass, so the saving is the shared pass -- per batch the naive pipeline runs 4 model passes (scoring
forward, clean forward + backward, perturbed forward), the sweep 3 -- and the skipped pass is the cheapest
one (an inference-mode forward), so the wall-time ratio sits below the pass ratio 4/3 (about 1.1-1.3 when
the machine is quiet).  The sweep also writes a cell file per cell and merges the Parquet/CSV results table.
One-time per-process costs (imports, provenance lookups, first kernels) are paid before timing by
:func:`warm_up`; a naive pipeline of separate CLI calls would pay them, plus interpreter start-up, on every
call, so the in-process naive pipeline here is the *best case* for the baseline.

Both pipelines run with the same torch thread count (``--threads``, default 1: on a 2-core machine with other
work running, two OpenMP threads stall whenever one of them is descheduled, and single runs then vary by
several times; pass ``--threads 2`` on an idle machine).  Single runs on a shared machine still vary by
+-20 %; ``--repeats N`` alternates the pipelines (naive, sweep, sweep, naive, ...) with cold caches every
round and reports the best time of each.

    .venv/bin/python benchmarks/bench_sweep.py [--quick] [--nb-samp 64600] [--n-per-class 1]
                                               [--batch-size 2] [--repeats 1] [--out OUT.json]

``--quick`` uses a tiny AASIST (the tests' configuration) and 0.5 s crops: a smoke test of a few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import yaml

from sharpscope.data.audio import SAMPLE_RATE, AudioCache, iter_batches
from sharpscope.data.manifest import read_manifest
from sharpscope.metrics import evaluate
from sharpscope.models.checkpoints import load_checkpoint, save_checkpoint
from sharpscope.models.registry import build_model
from sharpscope.scoring import score_manifest
from sharpscope.sharpness.registry import make_estimator

TINY_AASIST = {"filts": [12, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 6], "nb_samp": 8000}
CONDITIONS = ("clean", "noise", "bandlimit")
RHO = 0.05
SEED = 0


# ---- inputs ------------------------------------------------------------------------------------------------


def _clip(rng: np.random.Generator, bonafide: bool, condition: str) -> np.ndarray:
    t = np.arange(int(rng.uniform(2.0, 4.0) * SAMPLE_RATE)) / SAMPLE_RATE
    if bonafide:
        f0 = rng.uniform(100, 250)
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6)) * 0.2
    else:
        x = np.convolve(rng.standard_normal(t.size), np.ones(4) / 4, "same") * 0.2
    if condition == "noise":
        x = x + 0.05 * rng.standard_normal(t.size)
    elif condition == "bandlimit":
        x = np.convolve(x, np.ones(8) / 8, "same")
    return x.astype(np.float32)


def write_testset(root: Path, condition: str, n_per_class: int, seed: int) -> Path:
    """``n_per_class`` bona fide + ``n_per_class`` spoof WAV clips of 2-4 s and their manifest CSV."""
    rng = np.random.default_rng(seed)
    folder = root / condition
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_per_class):
        for label in ("bonafide", "spoof"):
            utt = f"{condition}_{label[0]}{i}"
            path = folder / f"{utt}.wav"
            sf.write(path, _clip(rng, label == "bonafide", condition), SAMPLE_RATE)
            attack = "bonafide" if label == "bonafide" else f"A{i % 3 + 1:02d}"
            rows.append({"utt_id": utt, "path": str(path), "label": label, "attack": attack, "codec": "none"})
    manifest = root / f"{condition}.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def write_checkpoints(root: Path, model_cfg: dict[str, Any], n: int = 3) -> list[Path]:
    """``n`` randomly initialised AASIST checkpoints (seeds 0..n-1) as safetensors + sidecar."""
    paths = []
    for seed in range(n):
        torch.manual_seed(seed)
        model = build_model("aasist", **model_cfg)
        meta = {"arch": "aasist", "model_cfg": model_cfg, "init_seed": seed}
        paths.append(save_checkpoint(model, root / f"ckpt{seed}.safetensors", meta))
    return paths


def write_study(root: Path, ckpts: list[Path], manifests: list[Path], scoring: dict[str, Any]) -> Path:
    spec = {
        "name": "bench-sweep",
        "seeds": [SEED],
        "scoring": scoring,
        "checkpoints": [{"path": str(p), "arch": "aasist"} for p in ckpts],
        "testsets": [{"name": m.stem, "manifest": str(m)} for m in manifests],
        "measures": [{"name": "m-sharpness", "rho": RHO, "loss": "weighted-ce"}],
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ---- the two pipelines -------------------------------------------------------------------------------------


def run_naive(
    ckpts: list[Path], manifests: list[Path], batch_size: int, nb_samp: int
) -> tuple[dict[tuple[str, str], dict[str, float]], dict[str, int]]:
    """Every (checkpoint, test set) pair on its own: scoring pass, then m-sharpness pass, then metrics."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    passes = {"forward": 0, "backward": 0}
    for manifest in manifests:
        for ckpt in ckpts:
            model = load_checkpoint(ckpt, "aasist").model
            df = read_manifest(manifest)
            scores = score_manifest(
                model,
                df,
                batch_size=batch_size,
                crop="first",
                nb_samp=nb_samp,
                cache=AudioCache(),
                progress=False,
            )
            est = make_estimator("m-sharpness", seed=SEED, rho=RHO)
            batches = iter_batches(df, batch_size, "first", nb_samp=nb_samp, cache=AudioCache())
            res = est.estimate(model, batches, "weighted-ce")
            metrics = evaluate(scores, seed=SEED)
            out[(ckpt.name, manifest.stem)] = {"eer": float(metrics["eer"]), "value": float(res.value)}
            passes["forward"] += -(-len(df) // batch_size) + int(res.cost.get("forward", 0))
            passes["backward"] += int(res.cost.get("backward", 0))
    return out, passes


def warm_up(ckpt: Path, nb_samp: int) -> None:
    """Pay one-time per-process costs before timing: torch kernels, imports of both code paths, the
    provenance lookups (git revision, package versions; cached per process) and the Parquet writer.  A
    pipeline of separate CLI calls would pay these per call; here only the structural difference is timed."""
    import pyarrow.parquet  # noqa: F401

    import sharpscope.sweep.runner  # noqa: F401
    import sharpscope.sweep.sweep  # noqa: F401
    from sharpscope.provenance import package_versions, provenance

    provenance()
    package_versions()
    model = load_checkpoint(ckpt, "aasist").model.eval()
    with torch.no_grad():
        model(torch.zeros(1, nb_samp))


def _cold_sweep_caches() -> None:
    """Start the sweep like a new process would: empty audio and model caches (module-level in the runner)."""
    import sharpscope.sweep.runner as sweep_runner

    sweep_runner._AUDIO_CACHE = AudioCache()
    sweep_runner._MODEL_CACHE.clear()


def run_engine(
    study: Path, out_dir: Path, threads: int
) -> tuple[dict[tuple[str, str], dict[str, float]], dict[str, int]]:
    """The sweep engine on the study (local executor, fresh results folder)."""
    from sharpscope.sweep.executors import ExecOptions
    from sharpscope.sweep.sweep import run_sweep

    outcome = run_sweep(study, out_dir, executor="local", opts=ExecOptions(num_threads=threads))
    table = outcome.table
    if table is None or len(table) != len(outcome.cells):  # one measure, one seed: one row per cell
        raise RuntimeError(f"the sweep returned {0 if table is None else len(table)} rows")
    out = {
        (Path(r.checkpoint_path).name, r.testset): {"eer": float(r.eer), "value": float(r.value)}
        for r in table.itertuples()
    }
    passes = {"forward": int(table["cost_forward"].sum()), "backward": int(table["cost_backward"].sum())}
    return out, passes


def compare(a: dict, b: dict) -> dict[str, float]:
    """Largest absolute differences of EER and m-sharpness between the pipelines (same keys required)."""
    if set(a) != set(b):
        raise AssertionError(f"pipelines measured different pairs: {sorted(set(a) ^ set(b))}")
    diffs = {}
    for field in ("eer", "value"):
        x = np.array([a[k][field] for k in sorted(a)])
        y = np.array([b[k][field] for k in sorted(a)])
        if not np.allclose(x, y, rtol=1e-5, atol=1e-7):
            raise AssertionError(
                f"{field} differs between the pipelines: naive {x.tolist()} vs sweep {y.tolist()}"
            )
        diffs[field] = float(np.max(np.abs(x - y)))
    return diffs


# ---- driver ------------------------------------------------------------------------------------------------


def bench(
    quick: bool = False,
    nb_samp: int = 64_600,
    n_per_class: int = 1,
    batch_size: int = 2,
    repeats: int = 1,
    threads: int = 1,
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    model_cfg: dict[str, Any] = dict(TINY_AASIST) if quick else {}
    if quick:
        nb_samp = min(nb_samp, 8_000)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        root = Path(tmp)
        manifests = [write_testset(root / "data", c, n_per_class, seed=i) for i, c in enumerate(CONDITIONS)]
        ckpts = write_checkpoints(root / "ckpts", model_cfg)
        scoring = {"batch_size": batch_size, "crop": "first", "score": "bonafide-logit", "nb_samp": nb_samp}
        study = write_study(root, ckpts, manifests, scoring)

        warm_up(ckpts[0], nb_samp)

        best = {"naive": float("inf"), "sweep": float("inf")}
        times: dict[str, list[float]] = {"naive": [], "sweep": []}
        results: dict[str, Any] = {}
        for r in range(repeats):
            order = ("naive", "sweep") if r % 2 == 0 else ("sweep", "naive")
            for name in order:
                t0 = time.perf_counter()
                if name == "naive":
                    results[name] = run_naive(ckpts, manifests, batch_size, nb_samp)
                else:
                    _cold_sweep_caches()
                    results[name] = run_engine(study, root / f"results{r}", threads)
                dt = time.perf_counter() - t0
                times[name].append(dt)
                best[name] = min(best[name], dt)
    (naive_vals, naive_passes), (sweep_vals, sweep_passes) = results["naive"], results["sweep"]
    diffs = compare(naive_vals, sweep_vals)
    return {
        "benchmark": "bench_sweep",
        "model": "AASIST tiny (tests config)" if quick else "AASIST official config, random init",
        "quick": quick,
        "n_checkpoints": len(ckpts),
        "n_testsets": len(manifests),
        "utts_per_testset": 2 * n_per_class,
        "batch_size": batch_size,
        "nb_samp": nb_samp,
        "torch_threads": threads,
        "repeats": repeats,
        "naive_s": best["naive"],
        "sweep_s": best["sweep"],
        "ratio_naive_over_sweep": best["naive"] / best["sweep"],
        "times": times,
        "passes": {"naive": naive_passes, "sweep": sweep_passes},
        "max_abs_diff": {"eer": diffs["eer"], "m_sharpness": diffs["value"]},
        "values": {f"{k[0]}|{k[1]}": v for k, v in sorted(sweep_vals.items())},
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def print_table(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=130)
    table = Table(
        title=f"sweep engine vs naive pipeline: {res['n_checkpoints']} checkpoints x {res['n_testsets']} "
        "test sets, EER + m-sharpness"
    )
    for col in ("pipeline", "wall s", "fwd/bwd batch passes", "ratio naive/sweep"):
        table.add_column(col, justify="right")
    for name in ("naive", "sweep"):
        p = res["passes"][name]
        ratio = res["ratio_naive_over_sweep"] if name == "sweep" else 1.0
        table.add_row(name, f"{res[name + '_s']:.1f}", f"{p['forward']}/{p['backward']}", f"{ratio:.2f}")
    console.print(table)
    console.print(
        f"{res['model']}; {res['utts_per_testset']} utts/set, batch {res['batch_size']}, crop "
        f"{res['nb_samp']} samples; {res['torch_threads']} torch thread(s); best of {res['repeats']}\n"
        f"same work: max |dEER| {res['max_abs_diff']['eer']:.1e}, max |d m-sharpness| "
        f"{res['max_abs_diff']['m_sharpness']:.1e}; load avg before {res['loadavg_before'][0]:.2f}, "
        f"after {res['loadavg_after'][0]:.2f} ({res['cpu_count']} CPUs)",
        highlight=False,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny AASIST and 0.5 s crops: a smoke test")
    ap.add_argument("--nb-samp", type=int, default=64_600, help="crop length (reference: 64600)")
    ap.add_argument("--n-per-class", type=int, default=1, help="bona fide (and spoof) clips per test set")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both pipelines (default 1)")
    ap.add_argument("--out", "--json", dest="out", type=Path, default=None, help="write the numbers as JSON")
    args = ap.parse_args()
    res = bench(args.quick, args.nb_samp, args.n_per_class, args.batch_size, args.repeats, args.threads)
    print_table(res)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
