"""AASIST / AASIST-L model passes: the fast eval path vs the reference-faithful path, in one run (issue 13).

For each architecture (official weights from ``../shared/fixtures/aasist`` when present, random
initialisation otherwise -- speed does not depend on the weights), on a batch of ``--batch`` generated
64,600-sample waveforms, fp32:

* forward (``torch.no_grad``) and forward + backward (weighted cross-entropy, all parameters), seconds per
  batch (median over ``--repeats``; the paths alternate inside each repeat so load drifts hit both),
  throughput (utterances/s) and the fast/reference throughput ratio;
* the reference path also with PyTorch's default CPU allocator (a subprocess with ``THP_MEM_ALLOC_ENABLE=0``,
  i.e. the reference as it ran before sharpscope enabled huge pages), so the table separates the model
  rewrites from the allocator setting;
* max |logit difference| between the paths, and the largest gradient difference relative to each tensor's
  largest entry;
* the convolutions' FLOP rate (FLOPs counted by ``torch.utils.flop_counter``, time from ``torch.profiler``)
  and the machine's matrix-multiply rate (a square fp32 GEMM and a GEMM shaped like the largest convolution's
  im2col product), and their ratio.

``--precision-check`` adds the bf16 vs fp32 comparison of the fast path on ``--n-utts`` generated
utterances (source-filter bona fide speech, Griffin-Lim / mel-vocoder spoofs from
:mod:`sharpscope.data.demo_corpus`): max |logit diff|, EER of each precision, and m-sharpness (rho 0.05, batch
``--batch``) of each precision.

    .venv/bin/python benchmarks/bench_forward.py [--quick] [--batch 8] [--repeats 3] [--device cpu|cuda|auto]
        [--precision-check] [--out OUT.json]
"""

from __future__ import annotations

# first, so that it sets the allocator option before torch is imported
import sharpscope  # noqa: F401  # isort: skip
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sharpscope.devices import autocast, resolve_device
from sharpscope.models.registry import build_model

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "aasist"
WEIGHTS = {"aasist": "AASIST.pth", "aasist-l": "AASIST-L.pth"}
NB_SAMP = 64_600
CLASS_WEIGHTS = (0.1, 0.9)  # weighted CE of the seed paper: [spoof, bona fide]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load(arch: str, device: str, fast: bool) -> tuple[torch.nn.Module, str]:
    model = build_model(arch, fast=fast)
    path = FIXTURES / WEIGHTS[arch]
    source = "random init (fixtures absent)"
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        source = f"official {path.name}"
    return model.to(device).eval(), source


def waveforms(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` x 64,600 samples: noise + a few tones (speed does not depend on the content)."""
    rng = np.random.default_rng(seed)
    t = np.arange(NB_SAMP) / 16_000
    rows = [
        0.05 * rng.standard_normal(NB_SAMP) + 0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)
        for _ in range(n)
    ]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def labels(n: int) -> torch.Tensor:
    return torch.arange(n) % 2  # 0 spoof, 1 bona fide


def fwd(model: torch.nn.Module, x: torch.Tensor, device: str) -> tuple[float, torch.Tensor]:
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        z = model(x)
    sync(device)
    return time.perf_counter() - t0, z


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    w = torch.tensor(CLASS_WEIGHTS, device=x.device)
    sync(device)
    t0 = time.perf_counter()
    F.cross_entropy(model(x), y, weight=w).backward()
    sync(device)
    dt = time.perf_counter() - t0
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return dt, grads


def time_paths(arch: str, paths: list[str], batch: int, repeats: int, device: str) -> dict[str, Any]:
    """Median seconds of forward / forward+backward for each path (alternating), plus the first outputs."""
    x = waveforms(batch).to(device)
    y = labels(batch).to(device)
    torch.manual_seed(0)  # random init (no fixtures): the same weights for every path
    base = load(arch, device, fast=True)[0]
    models = {}
    compile_s = {}
    for p in paths:
        models[p] = copy.deepcopy(base)
        models[p].fast = p != "reference"
        if p.endswith("+compile"):
            from sharpscope.models.fast import compiled

            t0 = time.perf_counter()
            models[p] = compiled(models[p])
            fwd(models[p], x, device)
            fwd_bwd(models[p], x, y, device)
            compile_s[p] = time.perf_counter() - t0
    times: dict[str, dict[str, list[float]]] = {p: {"forward": [], "forward_backward": []} for p in paths}
    logits: dict[str, torch.Tensor] = {}
    grads: dict[str, dict] = {}
    for p in paths:  # warm-up: oneDNN / cuDNN primitive creation, allocator
        fwd(models[p], x, device)
        fwd_bwd(models[p], x, y, device)
    for r in range(repeats):
        order = paths if r % 2 == 0 else paths[::-1]
        for p in order:
            dt, z = fwd(models[p], x, device)
            times[p]["forward"].append(dt)
            logits.setdefault(p, z.float().cpu())
        for p in order:
            dt, g = fwd_bwd(models[p], x, y, device)
            times[p]["forward_backward"].append(dt)
            if p not in grads:
                grads[p] = {n: t.cpu() for n, t in g.items()}
    out: dict[str, Any] = {"times": times, "median": {}, "compile_seconds": compile_s}
    for p in paths:
        out["median"][p] = {k: statistics.median(v) for k, v in times[p].items()}
    out["logits"] = {p: z.tolist() for p, z in logits.items()}
    out["_grads"] = grads
    return out


def grad_rel_diff(ga: dict, gb: dict) -> tuple[float, float]:
    """``(global, worst tensor)``: the L2 norm of the whole gradient difference relative to the reference's
    (the vector the sharpness estimators normalise), and the largest per-tensor ``max|ga - gb| / max|gb|``
    (floored at 1e-6 of the overall largest entry: saturated-softmax biases get ~1e-19 in both paths)."""
    assert set(ga) == set(gb), "the paths give gradients to different parameters"
    diff = sum(float(((ga[n] - b).double() ** 2).sum()) for n, b in gb.items()) ** 0.5
    norm = sum(float((b.double() ** 2).sum()) for b in gb.values()) ** 0.5
    overall = max(float(t.abs().max()) for t in gb.values())
    worst = 0.0
    for n, b in gb.items():
        scale = max(float(b.abs().max()), 1e-6 * overall)
        worst = max(worst, float((ga[n] - b).abs().max()) / scale)
    return diff / norm, worst


def conv_rate(arch: str, fast: bool, batch: int, device: str) -> dict[str, float]:
    """Convolution FLOPs of one no-grad forward, the time the profiler attributes to convolution kernels, and
    their ratio (GFLOP/s)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = load(arch, device, fast)
    x = waveforms(batch).to(device)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
        flops = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
        model(x)  # warm
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with profile(activities=acts) as prof:
            model(x)
            sync(device)
    on_gpu = device.startswith("cuda")
    us = 0.0
    for ev in prof.key_averages():
        name = ev.key.lower()
        if "backward" in name:
            continue
        if on_gpu:
            if "conv" in name or "cudnn" in name or "implicit" in name or "xmma" in name or "sm90" in name:
                us += getattr(ev, "self_device_time_total", 0.0)
        elif "conv" in name:
            us += ev.self_cpu_time_total
    sec = us / 1e6
    return {
        "conv_gflop": flops / 1e9,
        "conv_seconds": sec,
        "conv_gflops_per_s": flops / 1e9 / sec if sec else 0,
    }


def gemm_rates(device: str, repeats: int) -> dict[str, float]:
    """fp32 matrix-multiply rate: a square GEMM and one shaped like the im2col product of the largest
    convolution (block 1's 32->32 2x3 conv over 23 x 21,490 positions of one utterance)."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    n = 8192 if device.startswith("cuda") else 2048
    shapes = {"square": (n, n, n), "conv_shaped": (23 * 21_490, 192, 32)}
    out = {}
    for name, (m, k, nn) in shapes.items():
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, nn, device=device)
        a @ b
        ts = []
        for _ in range(max(repeats, 3)):
            sync(device)
            t0 = time.perf_counter()
            a @ b
            sync(device)
            ts.append(time.perf_counter() - t0)
        out[f"gemm_{name}_gflops_per_s"] = 2 * m * k * nn / min(ts) / 1e9
    torch.backends.cuda.matmul.allow_tf32 = prev
    return out


def reference_default_allocator(arch: str, batch: int, repeats: int, device: str) -> dict[str, Any] | None:
    """The reference path timed in a subprocess with PyTorch's default allocator (no huge pages)."""
    if device != "cpu":
        return None
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="0", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, __file__, "--worker", arch, "--batch", str(batch), "--repeats", str(repeats)]
    cmd += ["--threads", str(torch.get_num_threads()), "--fixtures", str(FIXTURES)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---- bf16 ------------------------------------------------------------------------------------------------


def generated_corpus(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` utterances (first 64,600 samples, tiled): bona fide = source-filter speech; spoof = the same kind
    of speech through Griffin-Lim or a mel vocoder (the demo corpus's attacks)."""
    from sharpscope.data import demo_corpus as dc

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n):
        spk = dc.SPEAKERS_SEEN[i % len(dc.SPEAKERS_SEEN)]
        x = dc.synth_speech(rng, spk, 4.1)
        if i % 2 == 0:
            x = (dc.spoof_griffin_lim if i % 4 == 0 else dc.spoof_mel_vocoder)(x, rng)
        x = np.resize(x.astype(np.float32), NB_SAMP)  # tiles when short (crop "first")
        xs.append(x / (np.abs(x).max() + 1e-9) * 0.5)
        ys.append(i % 2)  # 0 spoof, 1 bona fide
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


def precision_check(arch: str, n_utts: int, batch: int, device: str) -> dict[str, Any]:
    from sharpscope.metrics import compute_eer
    from sharpscope.sharpness import make_estimator

    model, _ = load(arch, device, fast=True)
    x, y = generated_corpus(n_utts)
    x, y = x.to(device), y.to(device)
    out: dict[str, Any] = {"n_utts": n_utts}
    logits = {}
    for prec in ("fp32", "bf16"):
        zs = []
        with torch.no_grad(), autocast(prec, device):
            for i in range(0, n_utts, batch):
                zs.append(model(x[i : i + batch]).float())
        logits[prec] = torch.cat(zs).cpu()
        s = logits[prec][:, 1].numpy()
        yy = y.cpu().numpy()
        out[f"eer_{prec}"] = compute_eer(s[yy == 1], s[yy == 0])[0]
    out["max_abs_logit_diff"] = float((logits["bf16"] - logits["fp32"]).abs().max())
    out["logit_scale"] = float(logits["fp32"].abs().max())
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, n_utts, batch)]
    for prec in ("fp32", "bf16"):
        est = make_estimator("m-sharpness", rho=0.05, precision=prec)
        out[f"m_sharpness_{prec}"] = float(est.estimate(model, batches, "weighted-ce").value)
    ref = out["m_sharpness_fp32"]
    out["m_sharpness_rel_diff"] = abs(out["m_sharpness_bf16"] - ref) / abs(ref) if ref else float("nan")
    return out


# ---- main ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="batch 2, 1 repeat, 8 utterances in --precision-check"
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--archs", default="aasist,aasist-l")
    ap.add_argument(
        "--no-allocator-baseline", action="store_true", help="skip the default-allocator subprocess"
    )
    ap.add_argument("--precision-check", action="store_true", help="also compare bf16 with fp32")
    ap.add_argument("--n-utts", type=int, default=24)
    ap.add_argument("--out", type=Path, default=None, help="write the numbers to this JSON file")
    ap.add_argument("--fixtures", type=Path, default=None, help="folder of AASIST.pth / AASIST-L.pth")
    ap.add_argument("--compile", action="store_true", help="add a torch.compile row (slow to compile)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fixtures is not None:
        global FIXTURES
        FIXTURES = args.fixtures
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False  # fp32 convolutions, as on CPU
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.worker:
        res = time_paths(args.worker, ["reference"], args.batch, args.repeats, device)
        print(json.dumps({"median": res["median"]["reference"], "times": res["times"]["reference"]}))
        return
    if args.quick:
        args.batch, args.repeats, args.n_utts = 2, 1, 8

    t_start = time.time()
    doc: dict[str, Any] = {
        "settings": {
            "batch": args.batch, "samples": NB_SAMP, "repeats": args.repeats, "device": device,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": "fp32",
            "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"), "load_before": os.getloadavg(),
            "cudnn_tf32": torch.backends.cudnn.allow_tf32 if device.startswith("cuda") else None,
        },
        "archs": {},
    }  # fmt: skip
    doc["gemm"] = gemm_rates(device, args.repeats)
    for arch in args.archs.split(","):
        row: dict[str, Any] = {"weights": load(arch, "cpu", True)[1]}
        if not args.no_allocator_baseline:
            row["reference_default_allocator"] = reference_default_allocator(
                arch, args.batch, args.repeats, device
            )
        paths = ["reference", "fast"] + (["fast+compile"] if args.compile else [])
        res = time_paths(arch, paths, args.batch, args.repeats, device)
        grads = res.pop("_grads")
        row.update(res)
        zr, zf = torch.tensor(res["logits"]["reference"]), torch.tensor(res["logits"]["fast"])
        row["max_abs_logit_diff"] = float((zf - zr).abs().max())
        if "fast+compile" in res["logits"]:
            zc = torch.tensor(res["logits"]["fast+compile"])
            row["max_abs_logit_diff_compile"] = float((zc - zr).abs().max())
        row["grad_rel_diff"], row["grad_rel_diff_worst_tensor"] = grad_rel_diff(
            grads["fast"], grads["reference"]
        )
        row["conv"] = {p: conv_rate(arch, p == "fast", args.batch, device) for p in ("reference", "fast")}
        if args.precision_check:
            row["bf16"] = precision_check(arch, args.n_utts, args.batch, device)
        doc["archs"][arch] = row
        print(f"[{arch} done after {time.time() - t_start:.0f} s]", flush=True)
        print(json.dumps({arch: {k: v for k, v in row.items() if k not in ("logits", "times")}}), flush=True)
    doc["settings"]["load_after"] = os.getloadavg()
    doc["seconds"] = time.time() - t_start
    print_table(doc)
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


def print_table(doc: dict[str, Any]) -> None:
    s, g = doc["settings"], doc["gemm"]
    print(
        f"device {s['device']}  threads {s['threads']}  batch {s['batch']} x {s['samples']}  "
        f"repeats {s['repeats']}  torch {s['torch']}  "
        f"load {s['load_before'][0]:.1f}->{s['load_after'][0]:.1f}"
    )
    print(
        f"fp32 GEMM: square {g['gemm_square_gflops_per_s']:.1f} GFLOP/s, "
        f"conv-shaped {g['gemm_conv_shaped_gflops_per_s']:.1f} GFLOP/s"
    )
    hdr = f"{'arch':9} {'path':26} {'fwd s':>7} {'utt/s':>7} {'x ref':>6}"
    print(hdr + f" {'f+b s':>7} {'utt/s':>7} {'x ref':>6} {'conv GF/s':>9} {'% GEMM':>6}")
    for arch, row in doc["archs"].items():
        ref = row["median"]["reference"]
        variants = []
        if row.get("reference_default_allocator"):
            variants.append(("reference, default alloc", row["reference_default_allocator"]["median"], None))
        variants.append(("reference (THP alloc)", ref, row["conv"]["reference"]))
        variants.append(("fast (THP alloc)", row["median"]["fast"], row["conv"]["fast"]))
        if "fast+compile" in row["median"]:
            secs = row["compile_seconds"]["fast+compile"]
            variants.append((f"fast+compile ({secs:.0f}s comp.)", row["median"]["fast+compile"], None))
        base = variants[0][1]
        for name, med, conv in variants:
            line = f"{arch:9} {name:26}"
            for k in ("forward", "forward_backward"):
                line += f" {med[k]:7.3f} {s['batch'] / med[k]:7.1f} {base[k] / med[k]:6.2f}"
            if conv:
                pct = 100 * conv["conv_gflops_per_s"] / g["gemm_square_gflops_per_s"]
                line += f" {conv['conv_gflops_per_s']:9.1f} {pct:6.0f}"
            print(line)
        print(
            f"{arch:9} max |logit diff| fast vs reference {row['max_abs_logit_diff']:.2e}; "
            f"grad diff rel (L2) {row['grad_rel_diff']:.1e}, "
            f"worst tensor {row['grad_rel_diff_worst_tensor']:.1e}; "
            f"weights: {row['weights']}"
            + (
                f"; compiled vs reference {row['max_abs_logit_diff_compile']:.2e}"
                if "max_abs_logit_diff_compile" in row
                else ""
            )
        )
        if "bf16" in row:
            b = row["bf16"]
            print(
                f"{arch:9} bf16 vs fp32 on {b['n_utts']} generated utts: max |logit diff| "
                f"{b['max_abs_logit_diff']:.3f} (logit scale {b['logit_scale']:.2f}); "
                f"EER {b['eer_fp32']:.3f} -> {b['eer_bf16']:.3f}; "
                f"m-sharpness {b['m_sharpness_fp32']:.4g} -> {b['m_sharpness_bf16']:.4g} "
                f"(rel {b['m_sharpness_rel_diff']:.2%})"
            )
    print(f"('x ref' = throughput relative to the first row of the arch; total {doc['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
