"""Sharpness estimation costs on this machine, as ratios measured in the same run.

(a) **shared pass** -- :func:`sharpscope.sharpness.runner.score_and_sharpness` (the m-sharpness clean forward
    gives the scores) vs a separate scoring pass (:func:`sharpscope.scoring.score_manifest`) followed by an
    m-sharpness pass, on AASIST (official config; published weights when the shared fixtures exist).  The
    saving is one no-grad forward per batch, small next to the gradient pass m-sharpness needs anyway.
(b) **budgeted estimate** -- m-sharpness with ``ci_width=0.1`` (relative 95 % CI half-width, at least 5
    batches, class-``balanced`` batches: with manifest or shuffled order the number of bona fide clips per
    batch dominates the per-batch loss and the CI stays wide) vs the full set: ratio of model passes and of
    wall time, and whether the full-set value lies in the budgeted CI.
(c) **vectorised average-case** -- K = 16 Gaussian samples per batch evaluated with ``torch.func.vmap`` over
    ``functional_call`` (chunks of 8) vs a Python loop, on AASIST and on a tiny wav2vec 2.0 (``ssl-linear``
    with :func:`sharpscope.models.ssl.tiny_ssl_config`); also the largest difference of the per-sample losses.

Clips are seeded noise + tones written with soundfile to a temporary folder and decoded once into an
:class:`~sharpscope.data.audio.AudioCache`; the crop length is ``--nb-samp`` (default 8,000 samples = 0.5 s,
shorter than the reference 64,600 to keep the run to a few minutes on 2 cores; ratios barely depend on it).
Timings are the best of ``--repeats`` interleaved rounds (the variants alternate, so background load hits
both alike); (b) runs once and its pass ratio (forward + backward counts) is the load-independent number.

    python benchmarks/bench_sharpness.py [--nb-samp 8000] [--repeats 4] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from sharpscope.data.audio import SAMPLE_RATE, AudioCache, iter_batches
from sharpscope.models.registry import build_model
from sharpscope.scoring import score_manifest
from sharpscope.sharpness.average_case import AverageCase
from sharpscope.sharpness.m_sharpness import MSharpness
from sharpscope.sharpness.runner import score_and_sharpness

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "aasist" / "AASIST.pth"


def make_clips(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` clips of 1-3 s, one in four labelled bona fide, as a manifest DataFrame."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        t = np.arange(int(rng.uniform(1.0, 3.0) * SAMPLE_RATE)) / SAMPLE_RATE
        x = 0.05 * rng.standard_normal(t.size) + 0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)
        p = root / f"clip{i:03d}.wav"
        sf.write(p, x.astype(np.float32), SAMPLE_RATE)
        rows.append(
            {"utt_id": f"clip{i:03d}", "path": str(p), "label": "bonafide" if i % 4 == 0 else "spoof"}
        )
    return pd.DataFrame(rows)


def aasist() -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    model = build_model("aasist")
    if FIXTURE.is_file():
        model.load_state_dict(torch.load(FIXTURE, map_location="cpu", weights_only=True), strict=True)
        return model, "published AASIST.pth"
    return model, "random init (fixtures absent)"


def race(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Best wall time of each function over ``repeats`` interleaved rounds (A B A B ...: both variants see the
    same background load), and each function's last output."""
    best = {k: float("inf") for k in fns}
    out = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            out[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best, out


def bench_shared(model, df, cache, nb_samp, batch_size, repeats) -> dict:
    def shared():
        return score_and_sharpness(model, df, MSharpness(), "weighted-ce", batch_size=batch_size,
                                   nb_samp=nb_samp, cache=cache)  # fmt: skip

    def separate():
        scores = score_manifest(
            model, df, batch_size=batch_size, nb_samp=nb_samp, cache=cache, progress=False
        )
        res = MSharpness().estimate(
            model, iter_batches(df, batch_size, "first", nb_samp, cache), "weighted-ce"
        )
        return scores, res

    t, out = race({"shared": shared, "separate": separate}, repeats)
    (s1, r1), (s2, r2) = out["shared"], out["separate"]
    t_shared, t_sep = t["shared"], t["separate"]
    return {
        "n_utts": len(df),
        "shared_s": t_shared,
        "separate_s": t_sep,
        "ratio": t_shared / t_sep,
        "same_value": bool(r1.value == r2.value),
        "max_score_diff": float(np.max(np.abs(s1["score"].to_numpy() - s2["score"].to_numpy()))),
    }


def bench_budget(model, df, cache, nb_samp, batch_size) -> dict:
    common = dict(batch_size=batch_size, nb_samp=nb_samp, cache=cache, order="balanced")
    t0 = time.perf_counter()
    _, full = score_and_sharpness(model, df, MSharpness(seed=0), "weighted-ce", **common)
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, bud = score_and_sharpness(
        model, df, MSharpness(seed=0, ci_width=0.1, min_batches=5), "weighted-ce", **common
    )
    t_bud = time.perf_counter() - t0
    passes = lambda r: r.cost["forward"] + r.cost["backward"]  # noqa: E731
    return {
        "n_utts": len(df),
        "full_value": full.value,
        "budget_value": bud.value,
        "budget_ci95": list(bud.ci95),
        "full_in_ci": bool(bud.ci95[0] <= full.value <= bud.ci95[1]),
        "budget_batches": bud.n_batches,
        "full_batches": full.n_batches,
        "pass_ratio": passes(bud) / passes(full),
        "time_ratio_incl_scoring": t_bud / t_full,
        "stop_reason": bud.extra["stop_reason"],
    }


def bench_vmap(name, model, x, y, repeats) -> dict:
    kw = dict(samples=16, chunk=8, seed=0)
    t, out = race(
        {
            "on": lambda: AverageCase(vectorize="on", **kw).estimate(model, [(x, y)], "weighted-ce"),
            "off": lambda: AverageCase(vectorize="off", **kw).estimate(model, [(x, y)], "weighted-ce"),
        },
        repeats,
    )
    t_on, t_off, on, off = t["on"], t["off"], out["on"], out["off"]
    a = np.asarray(on.per_batch[0]["sample_losses"])
    b = np.asarray(off.per_batch[0]["sample_losses"])
    return {
        "model": name,
        "batch": list(x.shape),
        "vmap_s": t_on,
        "loop_s": t_off,
        "ratio": t_on / t_off,
        "max_abs_diff": float(np.max(np.abs(a - b))),
        "fallback": on.per_batch[0].get("vmap_fallback"),
    }


def bench(nb_samp: int = 8_000, repeats: int = 4, seed: int = 0) -> dict:
    from sharpscope.models.ssl import tiny_ssl_config

    model, weights = aasist()
    out: dict = {"weights": weights, "nb_samp": nb_samp, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        df = make_clips(Path(tmp), 48, seed)
        cache = AudioCache()
        for i, p in enumerate(df["path"]):
            cache.get(p, "first", nb_samp, row=i + 1)
        out["shared"] = bench_shared(model, df.iloc[:8], cache, nb_samp, 4, repeats)
        out["budget"] = bench_budget(model, df, cache, nb_samp, 4)
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(2, nb_samp, generator=g)
    y = torch.tensor([0, 1])
    torch.manual_seed(seed)
    ssl = build_model("ssl-linear", ssl_config=tiny_ssl_config())
    out["vmap"] = [
        bench_vmap("AASIST", model, x, y, repeats),
        bench_vmap("tiny wav2vec2", ssl, x, y, repeats),
    ]
    return out


def main() -> None:
    import warnings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nb-samp", type=int, default=8_000)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="Also write the numbers to this JSON file.")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    warnings.filterwarnings("ignore", message="There is a performance drop")
    out = bench(args.nb_samp, args.repeats, args.seed)
    table = Table(
        title="sharpness benchmarks (ratios < 1: the first variant is cheaper)",
        caption=f"AASIST: {out['weights']}; crop {out['nb_samp']} samples; "
        f"{out['torch_threads']} torch threads",
    )
    for col in ("comparison", "first", "second", "ratio", "check"):
        table.add_column(col)
    s = out["shared"]
    table.add_row(
        f"(a) shared vs separate scoring + m-sharpness, AASIST, {s['n_utts']} utts",
        f"{s['shared_s']:.1f} s",
        f"{s['separate_s']:.1f} s",
        f"{s['ratio']:.2f}",
        f"same value: {s['same_value']}; max |Δscore| {s['max_score_diff']:.1e}",
    )
    b = out["budget"]
    table.add_row(
        f"(b) ci_width=0.1 vs full set, m-sharpness, {b['n_utts']} utts",
        f"{b['budget_batches']} batches, {b['budget_value']:.4g}",
        f"{b['full_batches']} batches, {b['full_value']:.4g}",
        f"passes {b['pass_ratio']:.2f}, time {b['time_ratio_incl_scoring']:.2f}",
        f"full value in CI [{b['budget_ci95'][0]:.4g}, {b['budget_ci95'][1]:.4g}]: {b['full_in_ci']}",
    )
    for v in out["vmap"]:
        table.add_row(
            f"(c) average-case K=16 vmap vs loop, {v['model']} {v['batch']}",
            f"{v['vmap_s']:.2f} s",
            f"{v['loop_s']:.2f} s",
            f"{v['ratio']:.2f}",
            f"max |Δloss| {v['max_abs_diff']:.1e}"
            + (f"; fell back: {v['fallback']}" if v["fallback"] else ""),
        )
    Console().print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
