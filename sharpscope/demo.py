"""The embedded demo: the whole sharpness-vs-generalization study, offline, in minutes.

Stages (each cached, so a rerun reuses finished work):

1. corpus  -- :func:`sharpscope.data.demo_corpus.build_demo_corpus` (generated bona fide + resynthesised
   spoofs, seven domains);
2. zoo     -- ``analyses/demo_zoo.yaml`` trained with :func:`sharpscope.train.zoo.run_zoo` (ERM, SAM, ASAM,
   LoRA + first-order MLDG);
3. sweep   -- ``analyses/demo.yaml`` with :func:`sharpscope.sweep.sweep.run_sweep` (EER + sharpness on every
   checkpoint × domain, cumulative unseen-attack subsets);
4. report  -- correlations and figures with :func:`sharpscope.report.html.build_report`.

The two specs reference ``../demo_run/...``; the demo rewrites that prefix to its ``out`` folder and keeps the
rewritten copies in ``OUT/specs/``.
"""

from __future__ import annotations

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
) -> DemoResult:
    """Run (or resume) the demo study; returns the results table and where the report is."""
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
    run_zoo(zoo, out / "zoo", opts=opts, on_done=lambda name, i, n: say(f"      trained {i}/{n}: {name}"))
    timings["zoo"] = time.perf_counter() - t

    t = time.perf_counter()
    study = _rewrite(study_spec or ANALYSES / "demo.yaml", out, out / "specs" / "demo.yaml")
    say(f"[3/4] sweep    -> {out / 'results'}  ({study})")
    res = run_sweep(
        study,
        out / "results",
        opts=opts,
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
    return DemoResult(out=out, report=index, results=df, timings=timings, summary=summary, correlations=corr)


def summarise(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Headline numbers: mean EER and sharpness per domain, and the sharpness–EER correlations."""
    from . import stats

    base = df[df["subset"].fillna("") == ""]
    ms = base[(base["measure"] == "m-sharpness") & (base["loss"] == "weighted-ce") & (base["rho"] == 0.05)]
    summary = (
        ms.groupby("testset")
        .agg(
            eer_mean=("eer", "mean"),
            sharpness_mean=("value", "mean"),
            n_checkpoints=("checkpoint", "nunique"),
        )
        .reindex([t for t in stats.testset_order(base) if t in set(ms["testset"])])
        .reset_index()
    )
    corr = stats.correlate(base, x="m-sharpness", y="eer", rho=0.05, loss="weighted-ce", by="testset")
    return summary, corr
