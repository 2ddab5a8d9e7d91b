"""Budgeted study vs a plain scoring pass: cost, CI half-width reached, full-set values inside or not.

Issue 13, item 3: a study that estimates every cell's EER and m-sharpness from stratified subsamples
(:mod:`sharpscope.sweep.budget`) should cost at most about 1.3x a plain scoring pass over every utterance,
while its CIs contain the full-set values.  In one run, on one generated test set:

* **scoring** -- :func:`sharpscope.scoring.score_manifest` over all utterances for every checkpoint (one
  shared :class:`~sharpscope.data.audio.AudioCache`, so each clip is decoded once: the baseline's best case);
  its scores give the full-set EERs.
* **budgeted** -- :func:`sharpscope.sweep.sweep.run_sweep` of a study with a ``budget:`` section (EER +
  m-sharpness, rho 0.05, class-weighted CE, balanced order) with cold audio and model caches; everything a
  sweep does is timed (subsample rounds, bootstraps, cell files, merged table).
* **full-set check** (not part of the ratio) -- :func:`sharpscope.sharpness.runner.score_and_sharpness`
  over all utterances per checkpoint with the sweep's settings: the full-set m-sharpness values; the
  full-set Spearman correlation across checkpoints is compared with the budgeted correlation CI.

Data: ``--n-utts`` clips (default 20,000; half bona fide harmonic tones, half filtered noise over four attack
labels) of ``--dur`` seconds (default 0.25 s) at 16 kHz, written with soundfile to a temporary folder, with a
manifest CSV.  Model: a tiny AASIST (:func:`sharpscope.models.aasist.aasist_config` with small dims, crop
``first`` of ``dur`` seconds), trained for ``--train-steps`` Adam steps on separate generated clips; the
checkpoints interpolate between its initial and trained weights (``--checkpoints`` of them), so they differ in
EER and sharpness.  All model work runs on ``--threads`` torch threads (default 1).

    .venv/bin/python benchmarks/bench_budget.py [--n-utts 20000] [--checkpoints 4] [--target 0.1]
                                                [--max-fraction 0.25] [--pilot 1024] [--out OUT.json]

The full-set m-sharpness check is most of the time; on a shared 2-core CPU at load ~8 the defaults did not
finish in 11 minutes: use ``--checkpoints 3`` or a quiet machine.  Phase times are printed as they finish.
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

SR = 16_000
TINY = {"first_conv": 32, "filts": [8, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 6]}


def clip(rng: np.random.Generator, bona: bool, n: int, noise: float = 0.0) -> np.ndarray:
    """A bona fide harmonic tone or a spoof of low-passed noise (as the tests' corpora), plus white noise of
    standard deviation ``noise`` (0.2 is about the signals' own level: the classes overlap)."""
    t = np.arange(n) / SR
    if bona:
        f0 = rng.uniform(100, 250)
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6)) * 0.2
        x = x + 0.01 * rng.standard_normal(n)
    else:
        y = np.convolve(rng.standard_normal(n), np.ones(4) / 4, "same") * 0.2
        x = y + 0.05 * np.sin(2 * np.pi * rng.uniform(100, 250) * t)
    return (x + noise * rng.standard_normal(n)).astype(np.float32)


def write_corpus(root: Path, n_utts: int, dur: float, seed: int, noise: float = 0.0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(dur * SR)
    rows = []
    (root / "wav").mkdir(parents=True)
    for i in range(n_utts):
        bona = i % 2 == 0
        p = root / "wav" / f"u{i:06d}.wav"
        sf.write(p, clip(rng, bona, n, noise), SR)
        rows.append(
            {
                "utt_id": f"u{i:06d}",
                "path": str(p),
                "label": "bonafide" if bona else "spoof",
                "attack": "-" if bona else f"A0{(i // 2) % 4 + 1}",
                "codec": "none",
            }
        )
    man = root / "test.csv"
    pd.DataFrame(rows).to_csv(man, index=False)
    return man


def make_checkpoints(root: Path, k: int, dur: float, steps: int, seed: int, noise: float = 0.0) -> list[Path]:
    """Interpolations between a tiny AASIST's initial and briefly trained weights (different quality)."""
    from sharpscope.models.checkpoints import save_checkpoint
    from sharpscope.models.outputs import forward_logits
    from sharpscope.models.registry import build_model

    cfg = {**TINY, "nb_samp": int(dur * SR)}
    torch.manual_seed(seed)
    model = build_model("aasist", **cfg)
    w0 = {n: p.detach().clone() for n, p in model.state_dict().items()}
    rng = np.random.default_rng(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    n = int(dur * SR)
    for _ in range(steps):
        lab = rng.integers(0, 2, 32)
        x = torch.from_numpy(np.stack([clip(rng, bool(b), n, noise) for b in lab]))
        logits = forward_logits(model, x)
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(lab))
        opt.zero_grad()
        loss.backward()
        opt.step()
    w1 = {n: p.detach().clone() for n, p in model.state_dict().items()}
    paths = []
    (root / "zoo").mkdir()
    for j, a in enumerate(np.linspace(1.0 / k, 1.0, k)):
        sd = {n: (w0[n] + a * (w1[n] - w0[n])) if w0[n].is_floating_point() else w1[n] for n in w0}
        model.load_state_dict(sd)
        model.eval()
        p = root / "zoo" / f"c{j}.safetensors"
        save_checkpoint(model, p, {"arch": "aasist", "model_cfg": cfg, "alpha": float(a)})
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-utts", type=int, default=20_000)
    ap.add_argument("--dur", type=float, default=0.25)
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--noise", type=float, default=0.0, help="white noise added to every clip (difficulty)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--target", type=float, default=0.1)
    ap.add_argument("--max-fraction", type=float, default=0.25)
    ap.add_argument("--pilot", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=str, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sharpscope.data.audio import AudioCache
    from sharpscope.data.manifest import read_manifest
    from sharpscope.metrics import compute_eer
    from sharpscope.models.checkpoints import load_checkpoint
    from sharpscope.scoring import score_manifest
    from sharpscope.sharpness.registry import make_estimator
    from sharpscope.sharpness.runner import score_and_sharpness
    from sharpscope.sweep import runner as sweep_runner
    from sharpscope.sweep.sweep import run_sweep

    load_before = os.getloadavg()
    nb = int(args.dur * SR)
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        t0 = time.perf_counter()
        man = write_corpus(tmp, args.n_utts, args.dur, args.seed, args.noise)
        ckpts = make_checkpoints(tmp, args.checkpoints, args.dur, args.train_steps, args.seed, args.noise)
        t_setup = time.perf_counter() - t0
        print(f"setup (corpus + checkpoints): {t_setup:.1f} s", flush=True)
        df = read_manifest(man)
        lab = df["label"].astype(str).to_numpy()
        common = {"batch_size": args.batch_size, "crop": "first", "nb_samp": nb}

        # warm-up: first kernels, imports (paid by neither timed variant)
        warm = load_checkpoint(str(ckpts[0]), "aasist").model
        score_manifest(warm, df.iloc[:64].reset_index(drop=True), cache=AudioCache(), **common)

        # -- baseline: a plain scoring pass over every utterance, per checkpoint
        t0 = time.perf_counter()
        cache = AudioCache()
        full_eer = []
        for p in ckpts:
            model = load_checkpoint(str(p), "aasist").model
            sc = score_manifest(model, df, cache=cache, **common)
            s = sc["score"].to_numpy()
            full_eer.append(compute_eer(s[lab == "bonafide"], s[lab == "spoof"])[0])
        t_score = time.perf_counter() - t0
        print(f"scoring pass: {t_score:.1f} s", flush=True)

        # -- budgeted study (cold caches)
        spec = {
            "name": "budget-bench",
            "seeds": [args.seed],
            "scoring": {"batch_size": args.batch_size, "nb_samp": nb},
            "checkpoints": [{"path": "zoo/*.safetensors", "arch": "aasist"}],
            "testsets": [{"name": "gen", "manifest": str(man), "in_domain": True}],
            "measures": [{"name": "m-sharpness", "rho": 0.05}],
            "budget": {
                "target": args.target,
                "max_fraction": args.max_fraction,
                "pilot": args.pilot,
                "seed": args.seed,
            },
        }
        (tmp / "study.yaml").write_text(yaml.safe_dump(spec))
        sweep_runner._AUDIO_CACHE.clear()
        sweep_runner._MODEL_CACHE.clear()
        t0 = time.perf_counter()
        res = run_sweep(tmp / "study.yaml", tmp / "results")
        t_budget = time.perf_counter() - t0
        print(f"budgeted study: {t_budget:.1f} s (ratio {t_budget / t_score:.2f}x)", flush=True)
        tab = res.table.sort_values("checkpoint").reset_index(drop=True)

        # -- full-set m-sharpness (the check, not timed into the ratio)
        t0 = time.perf_counter()
        full_sharp = []
        for p in ckpts:
            model = load_checkpoint(str(p), "aasist").model
            est = make_estimator("m-sharpness", rho=0.05, seed=args.seed, nonfinite="error")
            _, r = score_and_sharpness(model, df, est, "weighted-ce", seed=args.seed, cache=cache, **common)
            full_sharp.append(r.value)
        t_full = time.perf_counter() - t0

    from scipy.stats import spearmanr

    names = [f"zoo/{p.name}" for p in ckpts]
    tab = tab.set_index("checkpoint").loc[names]
    eer_in = [
        bool(lo <= e <= hi) for e, lo, hi in zip(full_eer, tab["eer_ci_lo"], tab["eer_ci_hi"], strict=True)
    ]
    sh_in = [bool(lo <= v <= hi) for v, lo, hi in zip(full_sharp, tab["ci_lo"], tab["ci_hi"], strict=True)]
    rho_full = float(spearmanr(full_sharp, full_eer).statistic)
    row0 = tab.iloc[0]
    corr_in = bool(row0["budget_corr_lo"] <= rho_full <= row0["budget_corr_hi"])
    out: dict[str, Any] = {
        "settings": vars(args),
        "model_config": TINY,
        "n_utts": args.n_utts,
        "seconds": {"setup": t_setup, "scoring_all": t_score, "budgeted": t_budget, "full_set_check": t_full},
        "ratio_budgeted_over_scoring": t_budget / t_score,
        "budget_n": int(row0["budget_n"]),
        "budget_fraction": float(row0["budget_fraction"]),
        "budget_sizes": json.loads(row0["budget_sizes"]),
        "budget_stop_reason": row0["budget_stop_reason"],
        "corr_budgeted": [row0["budget_corr"], row0["budget_corr_lo"], row0["budget_corr_hi"]],
        "corr_halfwidth": row0["budget_corr_halfwidth"],
        "corr_floor": row0["budget_corr_floor"],
        "corr_full": rho_full,
        "corr_full_inside": corr_in,
        "cells": [
            {
                "checkpoint": n,
                "eer_full": e,
                "eer_budget": [tab.loc[n, "eer"], tab.loc[n, "eer_ci_lo"], tab.loc[n, "eer_ci_hi"]],
                "eer_inside": ei,
                "msharp_full": v,
                "msharp_budget": [tab.loc[n, "value"], tab.loc[n, "ci_lo"], tab.loc[n, "ci_hi"]],
                "msharp_inside": si,
            }
            for n, e, ei, v, si in zip(names, full_eer, eer_in, full_sharp, sh_in, strict=True)
        ],
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "torch": torch.__version__,
        "machine": platform.platform(),
    }
    print(f"{args.n_utts} utts x {args.checkpoints} checkpoints, {args.dur} s clips, threads {args.threads}")
    print(f"scoring pass (all utterances, every checkpoint): {t_score:8.1f} s")
    print(
        f"budgeted EER + m-sharpness:                     {t_budget:8.1f} s   "
        f"ratio {t_budget / t_score:.2f}x "
        f"(goal <= 1.3x)"
    )
    print(
        f"subsample: {out['budget_n']} of {args.n_utts} ({out['budget_fraction']:.3f}), sizes "
        f"{out['budget_sizes']}, stop: {out['budget_stop_reason']}"
    )
    print(
        f"Spearman(m-sharpness, EER): budgeted {row0['budget_corr']:.3f} "
        f"[{row0['budget_corr_lo']:.3f}, {row0['budget_corr_hi']:.3f}] half-width "
        f"{row0['budget_corr_halfwidth']:.3f} (target {args.target}, floor {row0['budget_corr_floor']:.3f}); "
        f"full set {rho_full:.3f} inside: {corr_in}"
    )
    for c in out["cells"]:
        eb, mb = c["eer_budget"], c["msharp_budget"]
        print(
            f"  {c['checkpoint']}: EER full {c['eer_full']:.4f} in [{eb[1]:.4f}, {eb[2]:.4f}] "
            f"{c['eer_inside']}; "
            f"m-sharpness full {c['msharp_full']:.5f} in [{mb[1]:.5f}, {mb[2]:.5f}] {c['msharp_inside']}"
        )
    print(f"full-set check took {t_full:.1f} s; load average before {load_before}, after {out['load_after']}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
