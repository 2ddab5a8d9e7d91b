"""Scoring throughput of AASIST on this machine: utterances/second for crop ``first`` and crop ``full``.

Generates ``--n-clips`` clips of 2-6 s (seeded noise + tones, written with soundfile to a temporary
directory), then scores them with :func:`sharpscope.scoring.score_manifest` using the official AASIST
configuration -- with the published AASIST weights when the shared fixtures are present, random
initialisation otherwise (speed does not depend on the weights).  Decoding is warmed into an
:class:`~sharpscope.data.audio.AudioCache` first, so the timings are the model's forward passes plus batching.

    python benchmarks/bench_scoring.py [--n-clips 16] [--batch-size 8] [--json OUT.json]
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

from sharpscope.data.audio import NB_SAMP, SAMPLE_RATE, AudioCache, load_audio
from sharpscope.models.registry import build_model
from sharpscope.scoring import score_manifest

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "aasist" / "AASIST.pth"


def make_clips(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` clips of 2-6 s (uniform), half labelled bona fide, as a manifest DataFrame."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sec = rng.uniform(2.0, 6.0)
        t = np.arange(int(sec * SAMPLE_RATE)) / SAMPLE_RATE
        x = 0.05 * rng.standard_normal(t.size) + 0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)
        p = root / f"clip{i:03d}.wav"
        sf.write(p, x.astype(np.float32), SAMPLE_RATE)
        rows.append({"utt_id": f"clip{i:03d}", "path": str(p), "label": ["bonafide", "spoof"][i % 2]})
    return pd.DataFrame(rows)


def load_model() -> tuple[torch.nn.Module, str]:
    model = build_model("aasist")
    if FIXTURE.is_file():
        model.load_state_dict(torch.load(FIXTURE, map_location="cpu", weights_only=True), strict=True)
        return model, "published AASIST.pth"
    return model, "random init (fixtures absent)"


def bench(n_clips: int = 16, batch_size: int = 8, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model, weights = load_model()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_clips(Path(tmp), n_clips, seed)
        cache = AudioCache()
        for crop in ("first", "full"):  # warm decoding so only batching + forward passes are timed
            for i, p in enumerate(manifest["path"]):
                cache.get(p, crop, row=i + 1)
        total_sec = sum(len(load_audio(p)) for p in manifest["path"]) / SAMPLE_RATE
        score_manifest(model, manifest.iloc[:1], batch_size=1, crop="first", cache=cache, progress=False)
        for crop in ("first", "full"):
            t0 = time.perf_counter()
            score_manifest(model, manifest, batch_size=batch_size, crop=crop, cache=cache, progress=False)
            dt = time.perf_counter() - t0
            audio = n_clips * NB_SAMP / SAMPLE_RATE if crop == "first" else total_sec
            results.append(
                {
                    "crop": crop,
                    "n_utts": n_clips,
                    "seconds": dt,
                    "utts_per_s": n_clips / dt,
                    "audio_s_per_s": audio / dt,
                }
            )
    return {
        "model": "AASIST (official config)",
        "weights": weights,
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-clips", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="Also write the numbers to this JSON file.")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    out = bench(args.n_clips, args.batch_size, args.seed)
    table = Table(
        title=f"scoring throughput: {out['model']}",
        caption=f"{out['weights']}; batch {out['batch_size']}; {out['torch_threads']} torch threads",
    )
    for col in ("crop", "utterances", "time (s)", "utt/s", "audio s/s"):
        table.add_column(col, justify="right")
    for r in out["results"]:
        table.add_row(
            r["crop"],
            str(r["n_utts"]),
            f"{r['seconds']:.1f}",
            f"{r['utts_per_s']:.2f}",
            f"{r['audio_s_per_s']:.2f}",
        )
    Console().print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
