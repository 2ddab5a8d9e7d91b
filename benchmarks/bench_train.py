"""Seconds per training step on this machine: ERM vs SAM vs first-order MLDG.

Models: AASIST in its official configuration (batch ``--batch-size`` x 64,600 samples) and the tiny wav2vec
2.0 ``ssl-linear`` model of the tests (full fine-tuning).  Each step is the optimizer work of
:mod:`sharpscope.train` on in-memory random waveforms (no decoding): ERM = one forward/backward + Adam step,
SAM = two forward/backward passes (``rho = 0.05``) + Adam step, MLDG = a meta-train and a meta-test batch of
the same size (two forward/backward passes) + Adam step.  The methods take turns step by step (robust to
changing machine load).  The table gives the median over the timed steps and
the ratio to ERM.  An official-size AASIST step takes tens of seconds on a 2-core CPU, so AASIST is timed for
``--steps`` steps (default 1) without warm-up (``--warmup 1`` adds one); the tiny model gets 1 warm-up step
and ``--ssl-steps`` timed steps.  The RawBoost-style augmentation cost of one batch
(convolutive + impulsive noise) is timed separately, since it runs on the data side.

    .venv/bin/python benchmarks/bench_train.py [--steps 1] [--warmup 0] [--ssl-steps 5] [--batch-size 8]
                                               [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from sharpscope.data.audio import NB_SAMP
from sharpscope.losses import CrossEntropy
from sharpscope.models.registry import build_model
from sharpscope.train.augment import augment
from sharpscope.train.config import AugmentConfig
from sharpscope.train.mldg import MLDG
from sharpscope.train.sam import SAM

METHODS = ("erm", "sam", "mldg")
MODELS = {
    "aasist": ("aasist", {}),
    "ssl-linear (tiny)": ("ssl-linear", {"ssl_config": "tiny"}),
}


def _step_fn(method: str, model: torch.nn.Module, batch_size: int, n: int, seed: int):
    loss_fn = CrossEntropy((0.1, 0.9))
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(batch_size, n, generator=g) * 0.1, torch.randn(batch_size, n, generator=g) * 0.1
    y = torch.arange(batch_size) % 2
    base = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    if method == "erm":

        def step():
            base.zero_grad(set_to_none=True)
            loss_fn(model(x1), y).backward()
            base.step()

    elif method == "sam":
        sam = SAM(model, base, rho=0.05)

        def step():
            sam.step(lambda: loss_fn(model(x1), y))

    else:
        mldg = MLDG(model, base, inner_lr=1e-3, beta=1.0)

        def step():
            mldg.step(lambda: loss_fn(model(x1), y), lambda: loss_fn(model(x2), y))

    return step


def time_methods(
    arch: str, cfg: dict, batch_size: int, steps: int, warmup: int, n: int = NB_SAMP, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per step of each method; the methods take turns step by step so that a change in machine
    load (other processes) hits all of them alike."""
    fns = {}
    for method in METHODS:
        torch.manual_seed(seed)
        model = build_model(arch, **cfg)
        model.train()
        fns[method] = _step_fn(method, model, batch_size, n, seed)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(warmup + steps):
        for method, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[method].append(time.perf_counter() - t0)
    return times


def time_augment(batch_size: int, n: int, reps: int = 3) -> float:
    cfg = AugmentConfig(convolutive=True, impulsive=True)
    x = (0.1 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    times = []
    for r in range(reps):
        rng = np.random.default_rng(r)
        t0 = time.perf_counter()
        for _ in range(batch_size):
            augment(x, rng, cfg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(steps: int = 1, warmup: int = 0, ssl_steps: int = 5, batch_size: int = 8) -> dict:
    rows = []
    for label, (arch, cfg) in MODELS.items():
        n_steps, n_warm = (steps, warmup) if arch == "aasist" else (ssl_steps, 1)
        times = time_methods(arch, cfg, batch_size, n_steps, n_warm)
        erm = statistics.median(times["erm"])
        for method in METHODS:
            t = statistics.median(times[method])
            rows.append(
                {
                    "model": label,
                    "method": method,
                    "s_per_step": t,
                    "ratio_to_erm": t / erm,
                    "timed_steps": n_steps,
                }
            )
    return {
        "batch_size": batch_size,
        "samples": NB_SAMP,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "augment_s_per_batch": time_augment(batch_size, NB_SAMP),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1, help="timed AASIST steps per method")
    ap.add_argument("--warmup", type=int, default=0, help="untimed AASIST warm-up steps per method")
    ap.add_argument(
        "--ssl-steps", type=int, default=5, help="timed tiny-SSL steps per method (after 1 warm-up)"
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    res = bench(args.steps, args.warmup, args.ssl_steps, args.batch_size)
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"training step, batch {res['batch_size']} x {res['samples']} samples, {res['threads']} threads"
    )
    for c in ("model", "method", "s / step", "x ERM", "timed steps"):
        t.add_column(c)
    for r in res["rows"]:
        t.add_row(
            r["model"],
            r["method"],
            f"{r['s_per_step']:.3f}",
            f"{r['ratio_to_erm']:.2f}",
            str(r["timed_steps"]),
        )
    console = Console()
    console.print(t)
    console.print(
        f"RawBoost-style augmentation (convolutive + impulsive): {res['augment_s_per_batch']:.3f} s / batch"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
