"""Peak resident memory of m-sharpness at batch 24 on AASIST, whole batch vs micro-batches (issue 13).

Huang et al. (2025, SAM-AntiSpoofing) measure m-sharpness with m = 24 utterances of 64,600 samples; one
backward pass through AASIST at that size holds every activation of 24 clips at once.  With ``micro_batch=k``
the gradient of the same batch loss is accumulated over micro-batches of ``k`` clips (exact: unnormalised
sums and the loss normaliser, see :class:`sharpscope.sharpness.engine.CommonSettings`), so the peak falls to
about the activations of ``k`` clips while the value stays that of the whole batch.

Each setting runs in its own child process (``ru_maxrss`` is a per-process high-water mark); the child builds
AASIST (official config; the published weights when ``../shared/fixtures/aasist/AASIST.pth`` exists), draws
``--n-batches`` seeded batches of 24 noise-plus-tone clips (8 bona fide, 16 spoof) of 64,600 samples, runs
``MSharpness(rho=0.05)`` with the reference loss and reports the peak RSS, the RSS before the estimate, the
wall time and the per-batch values.  The parent prints one row per setting and the largest relative
difference of the values from the whole-batch run.  Heavy (about 17 GB for the whole batch): run it alone.

``--fp64`` adds a float64 run with micro-batches of ``--micro``'s first size (a whole fp64 batch of 24 needs
about 32 GB) as the reference for both fp32 runs: the values of the same batch loss computed with 29 more
mantissa bits, so the table shows which fp32 run is closer to the exact value (one fp32 weight-gradient
reduction over a whole batch of 24 x 64,600 samples sums about 12 million products per entry).

    python benchmarks/bench_memory.py [--n-batches 2] [--micro 4] [--threads 2] [--fp64] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "aasist" / "AASIST.pth"
M, NB_SAMP = 24, 64_600


def _rss_now_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def child(micro_batch: int | None, n_batches: int, threads: int, fp64: bool = False) -> dict:
    import torch

    from sharpscope.models.registry import build_model
    from sharpscope.sharpness.m_sharpness import MSharpness

    torch.set_num_threads(threads)
    model = build_model("aasist")
    if FIXTURE.is_file():
        model.load_state_dict(torch.load(FIXTURE, map_location="cpu", weights_only=True), strict=True)
    dtype = torch.float64 if fp64 else torch.float32
    model = model.to(dtype)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(NB_SAMP) / 16_000
    batches = []
    for _ in range(n_batches):
        f0 = 100 + 300 * torch.rand(M, 1, generator=g)
        x = 0.05 * torch.randn(M, NB_SAMP, generator=g) + 0.1 * torch.sin(2 * torch.pi * f0 * t)
        y = torch.tensor([1] * 8 + [0] * 16)
        batches.append((x.to(dtype), y))
    rss_before = _rss_now_gib()
    t0 = time.perf_counter()
    r = MSharpness(rho=0.05, micro_batch=micro_batch).estimate(model, batches, "weighted-ce")
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {
        "micro_batch": micro_batch,
        "dtype": "float64" if fp64 else "float32",
        "weights": "published" if FIXTURE.is_file() else "random-init",
        "peak_rss_gib": peak,
        "rss_before_estimate_gib": rss_before,
        "wall_s": wall,
        "value": r.value,
        "per_batch": [row["value"] for row in r.per_batch],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-batches", type=int, default=2)
    ap.add_argument("--micro", type=int, nargs="+", default=[4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fp64", action="store_true", help="add a float64 reference run (micro-batched)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # 0 = whole batch
    ap.add_argument("--child-fp64", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child or None, a.n_batches, a.threads, a.child_fp64)))
        return
    rows = []
    runs = [(0, False)] + [(mb, False) for mb in a.micro] + ([(a.micro[0], True)] if a.fp64 else [])
    for mb, fp64 in runs:
        cmd = [sys.executable, __file__, "--child", str(mb), "--n-batches", str(a.n_batches)]
        cmd += ["--threads", str(a.threads)] + (["--child-fp64"] if fp64 else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(
                f"micro_batch={mb or M}: child failed ({out.returncode}): {out.stderr.strip()[-500:]}"
            )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = rows[0]
    exact = rows[-1] if a.fp64 else None

    def rel(r: dict, to: dict) -> float:
        return max(abs(u - v) / abs(v) for u, v in zip(r["per_batch"], to["per_batch"], strict=True))

    print(
        f"m-sharpness, AASIST ({ref['weights']} weights), batch {M} x {NB_SAMP} samples, "
        f"{a.n_batches} batches"
    )
    print(
        f"{'dtype':>7} {'micro_batch':>11} {'peak RSS GiB':>12} {'before GiB':>10} {'wall s':>7} "
        f"{'value':>14} {'rel vs whole':>12} {'rel vs fp64':>11}"
    )
    for r in rows:
        r["max_rel_diff_vs_whole"] = rel(r, ref)
        r["max_rel_diff_vs_fp64"] = rel(r, exact) if exact is not None else None
        mb = r["micro_batch"] or M
        vs64 = f"{r['max_rel_diff_vs_fp64']:>11.2e}" if exact is not None else f"{'-':>11}"
        print(
            f"{r['dtype']:>7} {mb:>11} {r['peak_rss_gib']:>12.2f} {r['rss_before_estimate_gib']:>10.2f} "
            f"{r['wall_s']:>7.1f} {r['value']:>14.8g} {r['max_rel_diff_vs_whole']:>12.2e} {vs64}"
        )
    if a.json is not None:
        a.json.write_text(json.dumps({"batch": M, "nb_samp": NB_SAMP, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
