"""EER + m-sharpness of one checkpoint on two test sets: sharpscope vs the reference pipeline, one run.

Issue 13's row: Huang et al.'s pipeline (SAM-AntiSpoofing) scores a test set in one pass and then runs its
m-sharpness loop in a second.  The *reference* variant here does the same with the reference-faithful
AASIST forward (``fast=False``): :func:`sharpscope.scoring.score_manifest`, then
:meth:`MSharpness.estimate` over the batches in manifest order.  The *sharpscope* variant is what
``sharpscope sweep`` runs: the default fast forward and one shared pass
(:func:`sharpscope.sharpness.runner.score_and_sharpness`, the m-sharpness clean forward gives the scores),
same batches (manifest order).  Both must give the same EER and m-sharpness (printed: largest differences).

Model: AASIST-L (official weights from ``../shared/fixtures/aasist`` when present), batch 24 (Huang et al.'s
m), ρ = 0.05, weighted CE.  Two generated test sets of ``--n-utts`` clips each (1-3 s, crop "first" to
``--nb-samp``).  Times are the best of ``--repeats`` interleaved rounds.

    python benchmarks/bench_pipeline.py [--n-utts 24] [--nb-samp 64600] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sharpness import make_clips, race  # noqa: E402

from sharpscope.data.audio import AudioCache, iter_batches  # noqa: E402
from sharpscope.metrics import compute_eer  # noqa: E402
from sharpscope.models.registry import build_model  # noqa: E402
from sharpscope.scoring import score_manifest  # noqa: E402
from sharpscope.sharpness.m_sharpness import MSharpness  # noqa: E402
from sharpscope.sharpness.runner import score_and_sharpness  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "aasist" / "AASIST-L.pth"


def model(fast: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model("aasist-l", fast=fast)
    if FIXTURE.is_file():
        m.load_state_dict(torch.load(FIXTURE, map_location="cpu", weights_only=True), strict=True)
    return m.eval()


def eer_of(scores) -> float:
    s = scores["score"].to_numpy()
    lab = scores["label"].astype(str).to_numpy()
    return float(compute_eer(s[lab == "bonafide"], s[lab == "spoof"])[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-utts", type=int, default=24)
    ap.add_argument("--nb-samp", type=int, default=64_600)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    ref_model, fast_model = model(False), model(True)
    with tempfile.TemporaryDirectory() as tmp:
        sets = []
        for k in range(2):
            d = Path(tmp) / f"set{k}"
            d.mkdir()
            sets.append(make_clips(d, a.n_utts, seed=k))
        cache = AudioCache()
        for df in sets:  # decode once for both variants
            list(iter_batches(df, a.batch_size, "first", a.nb_samp, cache))
        common = {"batch_size": a.batch_size, "nb_samp": a.nb_samp}

        def reference():
            out = []
            for df in sets:
                scores = score_manifest(ref_model, df, cache=cache, progress=False, **common)
                batches = iter_batches(df, a.batch_size, "first", a.nb_samp, cache)
                res = MSharpness().estimate(ref_model, batches, "weighted-ce")
                out.append((eer_of(scores), res.value))
            return out

        def ours():
            out = []
            for df in sets:
                scores, res = score_and_sharpness(
                    fast_model, df, MSharpness(), "weighted-ce", cache=cache,
                    order="manifest", **common,
                )  # fmt: skip
                out.append((eer_of(scores), res.value))
            return out

        t, out = race({"reference": reference, "sharpscope": ours}, a.repeats)
    d_eer = max(abs(x[0] - y[0]) for x, y in zip(out["reference"], out["sharpscope"], strict=True))
    d_ms = max(abs(x[1] - y[1]) / abs(x[1]) for x, y in zip(out["reference"], out["sharpscope"], strict=True))
    row = {
        "model": "AASIST-L " + ("(published weights)" if FIXTURE.is_file() else "(random init)"),
        "n_utts_per_set": a.n_utts,
        "nb_samp": a.nb_samp,
        "batch_size": a.batch_size,
        "threads": torch.get_num_threads(),
        "reference_s": t["reference"],
        "sharpscope_s": t["sharpscope"],
        "ratio": t["sharpscope"] / t["reference"],
        "max_abs_eer_diff": d_eer,
        "max_rel_msharpness_diff": d_ms,
        "values": out,
    }
    print(f"{'variant':<34}{'seconds':>9}")
    print(f"{'reference (fast=False, 2 passes)':<34}{t['reference']:>9.1f}")
    print(f"{'sharpscope (fast, shared pass)':<34}{t['sharpscope']:>9.1f}")
    print(f"ratio sharpscope / reference: {row['ratio']:.2f} (goal <= 0.8)")
    print(f"max |dEER| {d_eer:.2e}; max rel d(m-sharpness) {d_ms:.2e}; {row['model']}")
    if a.json:
        a.json.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
