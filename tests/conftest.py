"""Shared test fixtures: small generated corpora and tiny real checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
TINY_AASIST = {"filts": [12, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 6], "nb_samp": 8000}


def write_corpus(
    root: Path,
    name: str,
    n: int = 6,
    seed: int = 0,
    attacks=("A01", "A02"),
    codec: str = "none",
    dur: float = 0.5,
) -> Path:
    """``n`` bona fide (harmonic tones) + ``n`` spoof (filtered noise) clips and their manifest CSV."""
    rng = np.random.default_rng(seed)
    adir = root / name
    adir.mkdir(parents=True, exist_ok=True)
    rows = []
    sr = 16000
    t = np.arange(int(dur * sr)) / sr
    for i in range(n):
        f0 = rng.uniform(100, 250)
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6)) * 0.2
        x += 0.01 * rng.standard_normal(len(t))
        p = adir / f"{name}_b{i}.wav"
        sf.write(p, x.astype(np.float32), sr)
        rows.append(
            {
                "utt_id": f"{name}_b{i}",
                "path": str(p),
                "label": "bonafide",
                "attack": "-",
                "codec": codec,
                "speaker": f"s{i % 2}",
            }
        )
        y = np.convolve(rng.standard_normal(len(t)), np.ones(4) / 4, "same") * 0.2
        p = adir / f"{name}_s{i}.wav"
        sf.write(p, y.astype(np.float32), sr)
        rows.append(
            {
                "utt_id": f"{name}_s{i}",
                "path": str(p),
                "label": "spoof",
                "attack": attacks[i % len(attacks)],
                "codec": codec,
                "speaker": f"s{i % 2}",
            }
        )
    man = root / f"{name}.csv"
    pd.DataFrame(rows).to_csv(man, index=False)
    return man


def write_tiny_checkpoint(path: Path, seed: int, meta: dict | None = None) -> Path:
    from sharpscope.models.checkpoints import save_checkpoint
    from sharpscope.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model("aasist", **TINY_AASIST)
    return save_checkpoint(model, path, {"arch": "aasist", "model_cfg": TINY_AASIST, **(meta or {})})


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> dict[str, Path]:
    return {
        "in": write_corpus(tmp_path / "data", "indomain", seed=1),
        "shift": write_corpus(
            tmp_path / "data", "shifted", seed=2, attacks=("A03", "A04", "A05"), codec="mulaw"
        ),
    }
