"""The embedded demo: the whole sharpness-vs-generalization study, offline, in minutes.

Stages (each cached, so a rerun reuses finished work):

1. corpus  -- :func:`sharpscope.data.demo_corpus.build_demo_corpus` (generated bona fide + resynthesised
   spoofs, seven domains);
2. zoo     -- ``analyses/demo_zoo.yaml`` trained with :func:`sharpscope.train.zoo.run_zoo` (ERM, SAM, ASAM,
   LoRA + first-order MLDG);
3. sweep   -- ``analyses/demo.yaml`` with :func:`sharpscope.sweep.sweep.run_sweep` (EER + sharpness on every
   checkpoint × domain);
4. report  -- claims of the reference papers (:mod:`sharpscope.report.claims`), leave-one-domain-out
   checkpoint selection (:func:`sharpscope.select.leave_one_domain_out`), correlations and figures with
   :func:`sharpscope.report.html.build_report`; the claims table is also written as ``REPORT/claims.csv`` and
   ``REPORT/claims.md`` and returned (with the selection summary) for the console.

The two specs reference ``../demo_run/...``; the demo rewrites that prefix to its ``out`` folder and keeps the
rewritten copies in ``OUT/specs/``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .data.demo_corpus import CorpusConfig, build_demo_corpus

ANALYSES = Path(__file__).resolve().parent.parent / "analyses"
PLACEHOLDER = "../demo_run"


@dataclass
class DemoResult:
    out: Path
    report: Path
    results: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    correlations: pd.DataFrame | None = None
    claims: pd.DataFrame | None = None  # one row per claim (sharpscope.report.claims.compute_claims)
    eer_ci: pd.DataFrame | None = None  # EER 95 % CI half-width per test set
    selection: pd.DataFrame | None = None  # leave-one-domain-out summary per family and criterion
    notes: list[str] = field(default_factory=list)


def _rewrite(spec: Path, out: Path, dest: Path) -> Path:
    text = spec.read_text().replace(PLACEHOLDER, str(out.resolve()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.is_file() or dest.read_text() != text:
        dest.write_text(text)
    return dest


def run_demo(
    out: str | Path = "demo_run",
    report_dir: str | Path = "reports/demo",
    corpus: CorpusConfig | None = None,
    zoo_spec: Path | None = None,
    study_spec: Path | None = None,
    say: Callable[[str], None] = print,
    num_threads: int = 0,
    train_workers: int | None = None,
) -> DemoResult:
    """Run (or resume) the demo study; returns the results table and where the report is.

    ``train_workers`` zoo runs train side by side, each in its own process with one torch thread (default:
    the number of cores, at most 4): tiny models do not speed up with more threads, and two threads sharing
    a busy core wait on each other at every operation.  ``1`` trains in this process with ``num_threads``.
    """
    from .report.html import build_report
    from .sweep.executors import ExecOptions
    from .sweep.sweep import run_sweep
    from .train.zoo import run_zoo

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    say(f"[1/4] corpus   -> {out / 'corpus'}")
    build_demo_corpus(out / "corpus", corpus or CorpusConfig())
    timings["corpus"] = time.perf_counter() - t

    t = time.perf_counter()
    zoo = _rewrite(zoo_spec or ANALYSES / "demo_zoo.yaml", out, out / "specs" / "demo_zoo.yaml")
    say(f"[2/4] zoo      -> {out / 'zoo'}  ({zoo})")
    opts = ExecOptions(num_threads=num_threads)
    workers = train_workers if train_workers is not None else min(4, os.cpu_count() or 1)
    if workers > 1:
        _train_parallel(zoo, out / "zoo", workers, say)
    else:
        run_zoo(zoo, out / "zoo", opts=opts, on_done=lambda name, i, n: say(f"      trained {i}/{n}: {name}"))
    timings["zoo"] = time.perf_counter() - t

    t = time.perf_counter()
    study = _rewrite(study_spec or ANALYSES / "demo.yaml", out, out / "specs" / "demo.yaml")
    say(f"[3/4] sweep    -> {out / 'results'}  ({study})")
    # cells side by side (Ray, one torch thread each) when there are cores for it; same rows either way
    sweep_exec, sweep_opts = ("local", opts)
    if workers > 1 and sweep_workers_available():
        sweep_exec, sweep_opts = ("ray", ExecOptions(workers=workers, num_threads=1))
    res = run_sweep(
        study,
        out / "results",
        executor=sweep_exec,
        opts=sweep_opts,
        on_done=lambda cell, i, n: say(f"      cell {i}/{n}: {cell.describe()}"),
    )
    timings["sweep"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"[4/4] report   -> {Path(report_dir) / 'index.html'}")
    import yaml

    spec = yaml.safe_load(Path(study).read_text())
    index = build_report(out / "results", report_dir, spec=spec, title="sharpscope demo: sharpness vs EER")
    timings["report"] = time.perf_counter() - t
    df = res.table if res.table is not None else pd.DataFrame()
    summary, corr = summarise(df)
    result = DemoResult(
        out=out, report=index, results=df, timings=timings, summary=summary, correlations=corr
    )
    _claims_and_selection(result)
    return result


def sweep_workers_available() -> bool:
    """Whether Ray (the ``dist`` extra, installed by ``make``) is importable for a parallel sweep."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _train_parallel(zoo: Path, out: Path, workers: int, say: Callable[[str], None]) -> None:
    """Train the zoo's runs in ``workers`` spawned processes, one torch thread each (the same
    :func:`sharpscope.train.zoo.train_run` that ``run_zoo`` calls; each run writes its own folder atomically
    and a finished run returns at once, so a rerun is cached the same way)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from .train.zoo import load_zoo, train_run

    runs = load_zoo(zoo)
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(train_run, r.config, str(out / r.name), 1): r.name for r in runs}
        for i, f in enumerate(as_completed(futs), 1):
            f.result()  # a failed run raises here, with its own message
            say(f"      trained {i}/{len(runs)}: {futs[f]}")


def _claims_and_selection(result: DemoResult) -> None:
    """The claims table and the leave-one-domain-out selection summary for the console, with the report's
    settings (seed 0; 1000 bootstrap resamples for selection, 2000 for claims), so both show the same numbers
    (the report writes ``claims.csv`` / ``claims.md``)."""
    from . import select as sel
    from .errors import SharpscopeError
    from .report.claims import compute_claims

    df = result.results
    if df.empty:
        return
    try:
        cl = compute_claims(df, seed=0)
    except SharpscopeError as exc:
        result.notes.append(f"claims: {exc}")
    else:
        result.claims, result.eer_ci = cl.table, cl.eer_ci
        result.notes += cl.notes
    try:
        lodo = sel.leave_one_domain_out(df, n_boot=1000, seed=0)
    except SharpscopeError as exc:
        result.notes.append(f"selection: {exc}")
    else:
        result.selection = lodo.lodo_summary


def summarise(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Headline numbers: mean EER and sharpness per domain, and the sharpness–EER correlations."""
    from . import stats

    base = df[df["subset"].fillna("") == ""]
    ms = base[(base["measure"] == "m-sharpness") & (base["loss"] == "weighted-ce") & (base["rho"] == 0.05)]
    order = {t: i for i, t in enumerate(stats.testset_order(base))}
    fam = "family" if "family" in ms.columns else "arch"
    summary = (
        ms.groupby([fam, "testset"])
        .agg(
            eer_mean=("eer", "mean"),
            sharpness_mean=("value", "mean"),
            n_checkpoints=("checkpoint", "nunique"),
        )
        .reset_index()
        .rename(columns={fam: "family"})
    )
    summary = summary.sort_values(
        ["family", "testset"], key=lambda c: c.map(order) if c.name == "testset" else c, kind="mergesort"
    ).reset_index(drop=True)
    corr = stats.correlate(base, x="m-sharpness", y="eer", rho=0.05, loss="weighted-ce", by="testset")
    return summary, corr
