"""Batch-composition and curvature controls on the official AASIST-L weights (issue: defensible conclusions).

Measures, on 48 utterances of the generated demo corpus (24 bona fide, 24 spoof, 1-2 s clips cropped to
``--nb-samp`` samples):

* m-sharpness (ρ = 0.05, weighted CE, batch 8) of the class-sorted manifest in manifest order vs balanced
  (class-stratified) order, and of the original manifest under balanced order -- values and 95 % CIs;
* hessian-max of the test-set loss (Hessian-vector products summed over batches) vs the per-batch mean at
  batch 8, and the one-batch eigenvalue of the whole set, on ``--hessian-utts`` utterances.

Run: ``python benchmarks/bench_controls.py --corpus DEMO_CORPUS_DIR`` (``sharpscope demo corpus --out DIR``
makes one).  Needs ../shared/fixtures/aasist/AASIST-L.pth.  With ``--legacy`` it runs only the m-sharpness
part through the API of older sharpscope revisions (no class mix; hessian-max was the per-batch mean).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "aasist" / "AASIST-L.pth"


def load_subset(corpus: Path, n_per_class: int) -> pd.DataFrame:
    from sharpscope.data.manifest import read_manifest

    df = read_manifest(corpus / "manifests" / "eval.csv")
    parts = [df[df["label"] == c].head(n_per_class) for c in ("bonafide", "spoof")]
    # interleave so that the original manifest is not class-sorted
    mixed = pd.concat(parts).sort_values("utt_id", kind="stable").reset_index(drop=True)
    return mixed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--nb-samp", type=int, default=16_000)
    ap.add_argument("--legacy", action="store_true")
    ap.add_argument("--skip-hessian", action="store_true")
    ap.add_argument("--hessian-only", action="store_true")
    ap.add_argument("--hessian-utts", type=int, default=16, help="hessian-max utterances")
    ap.add_argument("--hessian-iters", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    from sharpscope.models.checkpoints import load_checkpoint
    from sharpscope.sharpness.m_sharpness import MSharpness
    from sharpscope.sharpness.runner import score_and_sharpness

    model = load_checkpoint(str(FIXTURE), "aasist-l").model
    df = load_subset(a.corpus, 24)
    sorted_df = df.sort_values("label", kind="stable").reset_index(drop=True)
    rows = []
    cases = (
        ("class-sorted, manifest order", sorted_df, "manifest"),
        ("class-sorted, balanced order", sorted_df, "balanced"),
        ("original, balanced order", df, "balanced"),
        ("original, manifest order", df, "manifest"),
    )
    for name, frame, order in () if a.hessian_only else cases:
        t0 = time.perf_counter()
        _, r = score_and_sharpness(
            model, frame, MSharpness(rho=0.05), "weighted-ce", batch_size=8, nb_samp=a.nb_samp, order=order
        )
        rows.append(
            {
                "case": name,
                "value": r.value,
                "ci_lo": r.ci95[0],
                "ci_hi": r.ci95[1],
                "n_batches": r.n_batches,
                "s": round(time.perf_counter() - t0, 1),
            }
        )
        print(rows[-1], flush=True)
    out: dict = {"m_sharpness": rows}
    if not a.legacy and not a.skip_hessian:
        from sharpscope.data.audio import AudioCache, iter_batches
        from sharpscope.losses import make_loss
        from sharpscope.sharpness.curvature import HessianMax, HessianMaxBatchMean

        loss = make_loss("weighted-ce")
        cache = AudioCache()
        hrows = []
        hdf = load_subset(a.corpus, a.hessian_utts // 2)
        # the test-set eigenvalue does not depend on the batch size (exactly: tests/test_conclusions.py), so
        # it is computed once, at batch 8; the per-batch mean at batch 8 and at the whole set in one batch
        for bs, cls in ((8, HessianMax), (8, HessianMaxBatchMean), (len(hdf), HessianMaxBatchMean)):
            batches = list(iter_batches(hdf, bs, "first", nb_samp=a.nb_samp, cache=cache))
            t0 = time.perf_counter()
            r = cls(method="power", iterations=a.hessian_iters, tol=1e-2).estimate(model, batches, loss)
            hrows.append(
                {"batch_size": bs, "measure": r.measure, "value": r.value, "hvp": r.cost["hvp"],
                 "s": round(time.perf_counter() - t0, 1)}
            )  # fmt: skip
            print(hrows[-1], flush=True)
        out["hessian_max"] = hrows
    if a.out:
        a.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
