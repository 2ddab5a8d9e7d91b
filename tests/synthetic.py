"""A seeded, clearly synthetic results table with the sweep's schema: a test fixture, not package code.

Checkpoint names start with ``syn`` and ``git_revision`` is ``"synthetic"``, so a table made here can never be
mistaken for measured results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sharpscope.errors import SharpscopeError
from sharpscope.provenance import config_hash

_OPTIMIZERS = ("ERM", "SAM", "ASAM", "MLDG")
_SAM_RHO = {"ERM": 0.0, "SAM": 0.05, "ASAM": 0.5, "MLDG": 0.0}
# latent flatness of each training method (lower = flatter); only shapes the synthetic numbers
_LATENT = {"ERM": 1.0, "SAM": 0.6, "ASAM": 0.5, "MLDG": 0.85}
_LANDSCAPE_ALPHAS = tuple(np.round(np.linspace(-1.0, 1.0, 11), 6).tolist())
_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def example_results(
    n_ckpt: int = 6,
    testsets: Sequence[str] = ("in-domain", "unseen-attacks", "codec"),
    seed: int = 0,
) -> pd.DataFrame:
    """A seeded, clearly synthetic results table with the sweep's schema.

    Checkpoint ``i`` is trained with optimizer ``ERM/SAM/ASAM/MLDG[i % 4]`` and training seed ``i // 4``, so
    the table has groups where only one hyperparameter varies (for granulated Kendall).  The first test set
    is in-domain; later ones are increasingly shifted (higher EER and sharpness).  Measures: ``m-sharpness``
    (rho 0.01 and 0.05), ``average-case`` (rho 0.05) and ``landscape`` (rho NaN, 1-D loss curve in the JSON
    column ``extra``).  The last shifted test set also carries cumulative subsets ``attacks:1`` ...
    ``attacks:4`` for m-sharpness at rho 0.05.
    """
    if n_ckpt < 1 or not testsets:
        raise SharpscopeError("example_results needs n_ckpt >= 1 and at least one test set")
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    ckpts = []
    for i in range(n_ckpt):
        opt = _OPTIMIZERS[i % 4]
        meta = {
            "meta_method": opt,
            "meta_sam_rho": _SAM_RHO[opt],
            "meta_seed": i // 4,
            "meta_lr": 1e-4,
            "meta_lora_rank": 0,
            "meta_n_params": 297_866,
        }
        latent = _LATENT[opt] * math.exp(0.2 * rng.standard_normal())
        ckpts.append((f"syn{i:02d}-{opt.lower()}", latent, meta))

    def metric_cols(eer: float, n_bona: int, n_spoof: int) -> dict:
        half = 1.96 * math.sqrt(eer * (1 - eer) / min(n_bona, n_spoof))
        return {
            "eer": eer,
            "eer_ci_lo": max(0.0, eer - half),
            "eer_ci_hi": min(1.0, eer + half),
            "min_dcf": min(1.0, 1.6 * eer),
            "cllr": 0.1 + 3.0 * eer,
            "n_bonafide": n_bona,
            "n_spoof": n_spoof,
            "n_utts": n_bona + n_spoof,
        }

    def value_cols(value: float, n: int) -> dict:
        se = 0.04 * value
        return {"value": value, "stderr": se, "ci_lo": value - 1.96 * se, "ci_hi": value + 1.96 * se}

    measures = [("m-sharpness", 0.01, 0.3), ("m-sharpness", 0.05, 1.0), ("average-case", 0.05, 0.2)]
    for k, ts in enumerate(testsets):
        in_domain = k == 0
        for name, latent, meta in ckpts:
            eer = float(
                np.clip(0.01 + 0.04 * k + 0.03 * latent * (1 + k) + 0.01 * rng.standard_normal(), 1e-3, 0.5)
            )
            base = {"checkpoint": name, "arch": "aasist", "testset": ts, "in_domain": in_domain}
            mets = metric_cols(eer, 100, 300)
            for measure, rho, scale in measures:
                v = scale * latent * (1 + 0.35 * k) * math.exp(0.1 * rng.standard_normal())
                rows.append(
                    {
                        **base,
                        "subset": "all",
                        "measure": measure,
                        "rho": rho,
                        "seed": 0,
                        "loss": "weighted-ce",
                        **value_cols(v, 400),
                        **mets,
                        "extra": "",
                        **meta,
                    }
                )
            # landscape: a 1-D loss curve along a filter-normalised random direction
            curv = latent * (1 + 0.35 * k) * math.exp(0.1 * rng.standard_normal())
            base_loss = 0.05 + eer
            curve = [round(base_loss + 0.5 * curv * a * a, 6) for a in _LANDSCAPE_ALPHAS]
            rows.append(
                {
                    **base,
                    "subset": "all",
                    "measure": "landscape",
                    "rho": float("nan"),
                    "seed": 0,
                    "loss": "weighted-ce",
                    **value_cols(curv, 400),
                    **mets,
                    "extra": json.dumps(
                        {
                            "alphas": list(_LANDSCAPE_ALPHAS),
                            "dims": 1,
                            "loss0": curve[len(curve) // 2],
                            "curves": [curve],
                            "mean": curve,
                            "std": [0.0] * len(curve),
                        }
                    ),
                    **meta,
                }
            )
            if k == len(testsets) - 1 and k > 0:
                for step in range(1, 5):
                    eer_s = float(
                        np.clip(eer * (0.6 + 0.15 * step) + 0.005 * rng.standard_normal(), 1e-3, 0.5)
                    )
                    v = latent * (1 + 0.35 * k) * (0.7 + 0.1 * step) * math.exp(0.05 * rng.standard_normal())
                    rows.append(
                        {
                            **base,
                            "subset": f"attacks:{step}",
                            "measure": "m-sharpness",
                            "rho": 0.05,
                            "seed": 0,
                            "loss": "weighted-ce",
                            **value_cols(v, 100 + 50 * step),
                            **metric_cols(eer_s, 100, 50 * step),
                            "extra": "",
                            **meta,
                        }
                    )
    df = pd.DataFrame(rows)
    df["git_revision"] = "synthetic"
    df["spec_hash"] = f"synthetic-seed{seed}"
    df["config_hash"] = [
        config_hash({"measure": m, "rho": None if math.isnan(r) else r})
        for m, r in zip(df.measure, df.rho, strict=True)
    ]
    return df
