"""The ``sharpscope`` command line: one thin function per verb; all work happens in the modules.

User errors (:class:`sharpscope.errors.SharpscopeError`) are printed as one line and exit with code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from .errors import SharpscopeError

app = typer.Typer(
    name="sharpscope",
    help="Sharpness vs generalization for speech deepfake detectors: manifests, scoring, sharpness, "
    "sweeps, statistics, reports, training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    """``error: MESSAGE`` on stderr; the message is plain text (rich markup would eat ``[dist]``)."""
    from rich.text import Text

    err_console.print(Text("error: ", style="red") + Text(message), highlight=False, soft_wrap=True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`SharpscopeError` into one red line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SharpscopeError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None

    return wrapper


# ---- manifest commands (sharpscope/data) ---------------------------------------------------------------

manifest_app = typer.Typer(
    help="Build manifests from public corpora (official layouts) and check them: labels, duplicates, "
    "missing or unreadable audio, class counts.",
    no_args_is_help=True,
)
app.add_typer(manifest_app, name="manifest")


def _manifest_counts_table(counts: Any, title: str) -> Any:
    """A rich table of a class-count DataFrame (from ``sharpscope.data.manifest.class_counts``)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    numeric = {"bonafide", "spoof", "unknown", "total"}
    for c in counts.columns:
        table.add_column(str(c), justify="right" if c in numeric else "left")
    for row in counts.itertuples(index=False):
        table.add_row(*[str(v) for v in row])
    return table


def _parse_converter_options(items: list[str] | None) -> dict[str, str]:
    from .errors import ManifestError

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ManifestError(f"--option {item!r} is not KEY=VALUE (e.g. --option mailabs_root=DIR)")
        out[key.strip()] = value.strip()
    return out


@manifest_app.command("build")
@user_errors
def manifest_build_cmd(
    kind: str = typer.Argument(..., help="Corpus kind (list them with `sharpscope manifest kinds`)."),
    root: Path = typer.Option(..., "--root", help="Folder holding the corpus in its official layout."),
    out: Path = typer.Option(..., "--out", help="Manifest to write (.csv/.tsv/.parquet)."),
    only_eval: bool = typer.Option(False, "--only-eval", help="ASVspoof 2021: keep phase 'eval' only."),
    subset: list[str] | None = typer.Option(
        None, "--subset", help="Partition(s) to include, repeatable or comma-separated (train, dev, eval)."
    ),
    option: list[str] | None = typer.Option(
        None, "--option", "-o", help="Converter option KEY=VALUE, repeatable (e.g. mailabs_root=DIR)."
    ),
) -> None:
    """Convert a corpus' official protocol files into a manifest with absolute audio paths."""
    from .data.converters import build_manifest
    from .data.manifest import _format_of, class_counts, manifest_hash, write_manifest
    from .fileio import check_writable_dir, staged_file

    _format_of(out)
    if out.is_dir():
        raise SharpscopeError(f"--out {out} is a folder; pass a manifest file name (.csv/.tsv/.parquet)")
    check_writable_dir(out.parent)
    opts: dict[str, Any] = _parse_converter_options(option)
    if only_eval:
        opts["only_eval"] = True
    if subset:
        opts["subset"] = list(subset)
    df = build_manifest(kind, root, **opts)
    with staged_file(out) as tmp:
        write_manifest(df, tmp)
    path = out
    console = Console()
    console.print(_manifest_counts_table(class_counts(df, by=("dataset", "subset")), f"{kind}: class counts"))
    n_attacks = df["attack"].nunique() if "attack" in df.columns else 0
    console.print(
        f"wrote {len(df)} rows to {path} ({n_attacks} attack ids incl. bonafide; hash {manifest_hash(df)})",
        highlight=False,
        soft_wrap=True,
    )


@manifest_app.command("check")
@user_errors
def manifest_check_cmd(
    file: Path = typer.Argument(..., help="Manifest to check (.csv/.tsv/.parquet)."),
    audio: bool = typer.Option(False, "--audio", help="Open every file: unreadable audio, rates, durations."),
    root: Path | None = typer.Option(None, "--root", help="Base of relative paths (default: its folder)."),
    limit: int = typer.Option(200, "--limit", help="Print at most this many problems (0 = all)."),
    workers: int = typer.Option(4, "--workers", help="Threads probing audio with --audio."),
) -> None:
    """List every problem of a manifest, one line each, then a summary; exit 1 if there are problems."""
    from rich.progress import Progress

    from .data.manifest import check_manifest

    console = Console()
    if audio:
        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task("probing audio", total=None)
            report = check_manifest(
                file, audio=True, root=root, workers=workers, progress=lambda k: bar.advance(task, k)
            )
    else:
        report = check_manifest(file, root=root)
    lines = report.lines()
    shown = lines if limit <= 0 else lines[:limit]
    for line in shown:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if len(shown) < len(lines):
        rest = len(lines) - len(shown)
        console.print(f"... and {rest} more problems (--limit 0 lists all)", highlight=False)
    console.print(_manifest_counts_table(report.class_counts, f"{file}: {report.n_rows} rows"))
    if report.sample_rates is not None:
        rates = ", ".join(f"{sr} Hz: {n}" for sr, n in report.sample_rates.items()) or "none readable"
        console.print(f"sample rates: {rates}", highlight=False)
    if report.durations:
        d = report.durations
        console.print(
            f"durations (s): min {d['min']:.2f}, median {d['median']:.2f}, max {d['max']:.2f}, "
            f"total {d['total'] / 3600:.2f} h",
            highlight=False,
        )
    if report.ok:
        console.print(f"[green]ok:[/green] {file}: no problems", highlight=False, soft_wrap=True)
        return
    console.print(
        f"[red]{len(lines)} problem(s)[/red] in {file} (rows are 1-based data rows, header not counted)",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(1)


@manifest_app.command("kinds")
def manifest_kinds_cmd() -> None:
    """List the corpus kinds `manifest build` knows, with their options."""
    from .data.converters import CONVERTERS, converter_options

    console = Console()
    for name, fn in CONVERTERS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        opts = ", ".join(converter_options(name)) or "-"
        console.print(f"[bold]{name}[/bold]  options: {opts}\n    {doc}", highlight=False, soft_wrap=True)


# ---- score / metrics commands (sharpscope/scoring.py, sharpscope/metrics.py) -------------------------


def _metrics_summary(result: dict[str, Any], out: Path) -> None:
    """Short rich summary of a metrics.json: EER (95% CI), minDCF, actDCF, Cllr, counts, files."""
    from rich.table import Table

    console = Console()
    if result.get("eer") is None:
        console.print(f"[yellow]{result.get('note', 'no metrics')}[/yellow]")
    else:
        t = Table(show_header=False, box=None, pad_edge=False)
        ci = result.get("eer_ci95")
        ci_txt = f"  (95% CI {100 * ci[0]:.2f}-{100 * ci[1]:.2f})" if ci else ""
        t.add_row("EER", f"{100 * result['eer']:.3f} %{ci_txt}")
        t.add_row("minDCF", f"{result['min_dcf']:.4f}")
        t.add_row("actDCF", f"{result['act_dcf']:.4f}")
        t.add_row("Cllr", f"{result['cllr']:.4f} bits")
        cal = result.get("calibration")
        kind = result.get("score_type") or "type not recorded"
        if cal:
            t.add_row("scores", f"{kind}; actDCF/Cllr calibrated: llr = {cal['a']:.4g} s + {cal['b']:.4g}")
        else:
            t.add_row("scores", f"{kind}; actDCF/Cllr uncalibrated (not comparable across checkpoints)")
        t.add_row("trials", f"{result['n_bonafide']} bona fide, {result['n_spoof']} spoof")
        if "matching" in result:
            mt = result["matching"]
            t.add_row("matched", f"{mt['n_matched']} of {mt['n_scores']} scores / {mt['n_manifest']} rows")
        console.print(t)
    for name in result.get("files", {}).values():
        console.print(f"wrote {out / name}", highlight=False)


@app.command("score")
@user_errors
def score_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint file or directory."),
    manifest: Path = typer.Argument(..., help="Manifest (CSV/Parquet) of the utterances to score."),
    arch: str = typer.Option(..., "--arch", help="aasist | aasist-l | ssl-aasist | ssl-linear"),
    out: Path = typer.Option(..., "--out", help="Output directory (scores.csv, metrics.json)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Utterances per forward pass."),
    crop: str = typer.Option(
        "first",
        "--crop",
        help="first (64,600 samples, tiled) | full (whole clips, cut at 60 s) | full:SECONDS | full:none.",
    ),
    score: str = typer.Option(
        "bonafide-logit",
        "--score-type",
        "--score",
        help="bonafide-logit (reference, official EER) | log-odds (= logit-diff) | log-softmax",
    ),
    calibrate_on: Path | None = typer.Option(
        None,
        "--calibrate-on",
        help="Labelled dev manifest (scored with the same model) or dev scores.csv: fit a logistic-"
        "regression calibration; actDCF/Cllr are then computed on calibrated LLRs.",
    ),
    calibration_prior: str = typer.Option(
        "0.5",
        "--calibration-prior",
        help="Bona fide prior of the calibration objective: 0.5 | asvspoof5 | P.",
    ),
    fmt: str | None = typer.Option(
        None, "--format", help="Also write an official score file: csv|asvspoof2019|asvspoof2021|asvspoof5"
    ),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help="Allow pickled (non-weights-only) checkpoints you trust."
    ),
    model_config: Path | None = typer.Option(
        None, "--model-config", help="JSON/YAML file of model-builder arguments."
    ),
    device: str = typer.Option(
        "cpu", "--device", help="Torch device: cpu, cuda, cuda:N or auto (CUDA when present)."
    ),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32 (strict, no TF32 on CUDA) | bf16 (autocast; see devices.BF16_NOTE)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap confidence interval."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates for the EER CI (0 = none)."),
) -> None:
    """Score a manifest with a checkpoint; write scores.csv and metrics.json (EER, minDCF, actDCF, Cllr)."""
    from .fileio import staged_output
    from .scorefiles import FORMATS, default_filename
    from .scoring import read_model_config, run_score
    from .specio import check_device

    device = check_device(device)  # resolves 'auto'
    model_cfg = read_model_config(model_config)
    known = ["scores.csv", "metrics.json", "calibration_dev_scores.csv"]
    known += [default_filename(f) for f in FORMATS]
    with staged_output(out, "score", stale=known) as stage:
        result = run_score(
            checkpoint, manifest, arch, stage, batch_size=batch_size, crop=crop, score=score, fmt=fmt,
            trust_checkpoint=trust_checkpoint, model_cfg=model_cfg, device=device, seed=seed, n_boot=n_boot,
            calibrate_on=calibrate_on, calibration_prior=calibration_prior, precision=precision,
        )  # fmt: skip
    _metrics_summary(result, out)


@app.command("metrics")
@user_errors
def metrics_cmd(
    scores: Path = typer.Argument(..., help="Score file from any toolkit."),
    manifest: Path = typer.Argument(..., help="Manifest with the labels (and attack/codec/transmission)."),
    fmt: str = typer.Option("csv", "--format", help="csv | asvspoof2019 | asvspoof2021 | asvspoof5"),
    out: Path = typer.Option(..., "--out", help="Output directory (metrics.json)."),
    allow_partial: bool = typer.Option(
        False, "--allow-partial", help="Evaluate only the ids present in both files (counts are recorded)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap confidence interval."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates for the EER CI (0 = none)."),
    score_type: str | None = typer.Option(
        None,
        "--score-type",
        help="bonafide-logit | log-odds | log-softmax; default: the file's score_type column, else "
        "bonafide-logit (other types are recomputed from the file's logit columns).",
    ),
    calibrate_on: Path | None = typer.Option(
        None,
        "--calibrate-on",
        help="Labelled dev scores (CSV with utt_id,label,score): fit a logistic-regression calibration; "
        "actDCF/Cllr are then computed on calibrated LLRs.",
    ),
    calibration_prior: str = typer.Option(
        "0.5",
        "--calibration-prior",
        help="Bona fide prior of the calibration objective: 0.5 | asvspoof5 | P.",
    ),
) -> None:
    """Evaluate an external score file against a manifest: metrics.json with per-attack/codec breakdowns."""
    from .errors import ScoreError
    from .fileio import staged_output
    from .scoring import run_metrics

    if scores.is_file():  # the readers open text as UTF-8: say so in one line instead of a traceback
        try:
            scores.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScoreError(
                f"{scores}: not UTF-8 text (byte {exc.start}); convert the score file to UTF-8"
            ) from None
    with staged_output(out, "metrics", stale=["metrics.json"]) as stage:
        result = run_metrics(
            scores, manifest, stage, fmt=fmt, allow_partial=allow_partial, seed=seed, n_boot=n_boot,
            score_type=score_type, calibrate_on=calibrate_on, calibration_prior=calibration_prior,
        )  # fmt: skip
    _metrics_summary(result, out)


# ---- sharpness commands (sharpscope/sharpness) ---------------------------------------------------------


@app.command("sharpness")
@user_errors
def sharpness_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint file or directory."),
    manifest: Path = typer.Argument(..., help="Manifest (CSV/Parquet) of the utterances."),
    arch: str | None = typer.Option(None, "--arch", help="aasist | aasist-l | ssl-aasist | ssl-linear"),
    measure: str = typer.Option(
        ...,
        "--measure",
        help="m-sharpness | worst-case | average-case | hessian-max | hessian-trace | landscape",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output directory (sharpness.json, scores.csv, metrics.json)."
    ),
    rho: float | None = typer.Option(None, "--rho", help="Radius (m-sharpness, worst-case) or noise sigma."),
    adaptive: bool | None = typer.Option(None, "--adaptive/--no-adaptive", help="Scale by |w| (ASAM)."),
    norm: str | None = typer.Option(None, "--norm", help="worst-case ball: linf | l2"),
    steps: int | None = typer.Option(None, "--steps", help="worst-case APGD iterations (default 20)."),
    samples: int | None = typer.Option(None, "--samples", help="average-case noise samples per batch (K)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Utterances per batch (m of m-sharpness)."),
    scope: str | None = typer.Option(None, "--scope", help="all | trainable | regex:PATTERN | lora-merged"),
    per_layer: int | None = typer.Option(
        None, "--per-layer", help="Also per module group at this name depth."
    ),
    loss: list[str] = typer.Option(
        ["weighted-ce"],
        "--loss",
        help="weighted-ce | ce | kl-to-clean; repeat for several on the same batches.",
    ),
    order: str = typer.Option(
        "balanced",
        "--order",
        help="Batch order: balanced (class-stratified) | manifest (Huang et al.'s setting) | shuffled",
    ),
    class_mix: str = typer.Option(
        "dataset",
        "--class-mix",
        help="Utterances the estimate uses: dataset | equal (50 % bona fide) | P (bona fide share, 0<P<1).",
    ),
    nonfinite: str = typer.Option(
        "error", "--nonfinite", help="NaN/inf batch values: error | drop (counted) | cap (at the largest)."
    ),
    budget: int | None = typer.Option(None, "--budget", help="Stop after at least N utterances."),
    ci_width: float | None = typer.Option(
        None, "--ci-width", help="Stop at this relative 95% CI half-width."
    ),
    micro_batch: int | None = typer.Option(None, "--micro-batch", help="k utterances per pass (exact)."),
    seed: int = typer.Option(0, "--seed", help="Seed of noise, random starts, batch order and bootstrap."),
    crop: str = typer.Option(
        "first",
        "--crop",
        help="first (64,600 samples, tiled) | full (whole clips, cut at 60 s) | full:SECONDS | full:none.",
    ),
    precision: str | None = typer.Option(None, "--precision", help="fp32 | bf16 (autocast)."),
    device: str = typer.Option(
        "cpu", "--device", help="Torch device: cpu, cuda, cuda:N or auto (CUDA when present)."
    ),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help="Allow pickled (non-weights-only) checkpoints you trust."
    ),
    model_config: Path | None = typer.Option(
        None, "--model-config", help="JSON/YAML file of model-builder arguments."
    ),
) -> None:
    """Sharpness of a checkpoint on a manifest; the same pass gives the scores and EER."""
    from .fileio import staged_output
    from .scoring import read_model_config
    from .sharpness.runner import estimator_settings, run_sharpness
    from .specio import check_device, check_scope

    device = check_device(device)  # resolves 'auto'
    if scope is not None:
        check_scope(scope)

    given = {
        "rho": rho, "adaptive": adaptive, "norm": norm, "steps": steps, "samples": samples, "scope": scope,
        "per_layer": per_layer, "budget": budget, "ci_width": ci_width, "precision": precision,
        "nonfinite": nonfinite, "micro_batch": micro_batch,
    }  # fmt: skip
    settings = estimator_settings(measure, given, seed)
    model_cfg = read_model_config(model_config)
    with staged_output(out, "sharpness", stale=["sharpness.json", "scores.csv", "metrics.json"]) as stage:
        doc = run_sharpness(
            str(checkpoint), str(manifest), arch, measure, str(stage), settings, loss, batch_size=batch_size,
            crop=crop, order=order, class_mix=class_mix, trust_checkpoint=trust_checkpoint,
            model_cfg=model_cfg, device=device,
        )  # fmt: skip
    console = Console()
    r = doc["result"]
    ci = r.get("ci95") or [None, None]

    def fmt(v: Any) -> str:
        return "nan" if v is None else f"{v:.6g}"

    console.print(
        f"{doc['measure']} ({doc['loss']}): {fmt(r['value'])} ± {fmt(r['stderr'])}  95% CI [{fmt(ci[0])}, "
        f"{fmt(ci[1])}]  {r['n_utts']} utts / {r['n_batches']} batches, {r['n_nonfinite']} non-finite",
        highlight=False,
    )
    for name, other in doc["other_losses"].items():
        console.print(f"  {name}: {fmt(other['value'])} ± {fmt(other['stderr'])}", highlight=False)
    metrics = doc["metrics"] or {}
    if metrics.get("eer") is not None:
        console.print(f"EER {100 * metrics['eer']:.3f} %", highlight=False)
    elif metrics.get("error"):
        console.print(f"[yellow]no metrics: {metrics['error']}[/yellow]", highlight=False)
    for name in doc["files"].values():
        console.print(f"wrote {out / name}", highlight=False)


# ---- sweep commands (sharpscope/sweep) -----------------------------------------------------------------


@app.command()
@user_errors
def sweep(
    study: Path = typer.Argument(..., help="Study spec (YAML), e.g. analyses/demo.yaml."),
    out: Path = typer.Option(Path("results"), "--out", help="RESULTS directory."),
    executor: str = typer.Option("local", help="local | ray | slurm"),
    workers: int = typer.Option(1, help="Parallel cells (ray / slurm)."),
    threads: int = typer.Option(0, help="Torch threads per cell (0 = all cores for local, 1 for ray/slurm)."),
    force: bool = typer.Option(False, "--force", help="Recompute finished cells."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
    ray_address: str = typer.Option(None, help="Existing Ray cluster address (default: start Ray locally)."),
    slurm_cluster: str = typer.Option("slurm", help="submitit cluster: slurm, or local."),
    slurm_partition: str = typer.Option(None, help="Slurm partition."),
    trust_checkpoint: bool = typer.Option(
        False,
        "--trust-checkpoint",
        help="Allow pickled (non-weights-only) checkpoints you trust (a study spec cannot grant this).",
    ),
) -> None:
    """Sharpness sweep: checkpoints x test sets x measures, resumable; writes OUT/results.parquet + .csv."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from .executors import EXECUTORS, ExecOptions, task_threads
    from .sweep.sweep import run_sweep

    if executor not in EXECUTORS:
        raise SharpscopeError(f"--executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    console = Console()
    opts = ExecOptions(
        workers=workers,
        num_threads=task_threads(executor, threads),
        ray_address=ray_address,
        slurm_cluster=slurm_cluster,
        slurm_partition=slurm_partition,
    )
    if dry_run:
        res = run_sweep(
            study, out, executor, opts, force=force, dry_run=True, trust_checkpoint=trust_checkpoint
        )
        t = Table(title=f"plan: {len(res.cells)} cells, {len(res.todo_ids)} to run")
        for col in ("cell id", "checkpoint", "evaluation set", "measures", "status"):
            t.add_column(col)
        for c in res.cells:
            sub = f" [{c.evalset.subset}]" if c.evalset.subset else ""
            measures = ", ".join(f"{m.name}({m.loss}, rho={m.rho})" for m in c.measures) or "EER only"
            status = "to run" if c.cell_id in res.todo_ids else "done"
            cols = (c.cell_id, c.checkpoint.name, c.evalset.testset + sub, measures, status)
            t.add_row(*(escape(v) for v in cols))
        console.print(t)
        return

    # The bar starts once the plan stands, so a refused spec or folder prints its one error line alone.
    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[current]}"),
        console=console,
    )
    task = prog.add_task("cells", total=None, current="")

    def on_plan(todo, total):
        prog.start()
        prog.update(task, total=len(todo), current=f"({total - len(todo)} already done)")

    def on_start(cell):
        prog.update(task, current=escape(cell.describe()))

    def on_done(cell, i, n):
        prog.update(task, completed=i, current=escape(cell.describe()))

    try:
        res = run_sweep(
            study, out, executor, opts, force=force, on_done=on_done, on_start=on_start, on_plan=on_plan,
            trust_checkpoint=trust_checkpoint,
        )  # fmt: skip
    except BaseException:
        prog.live.transient = True  # a failed sweep leaves its one error line, not a half bar
        raise
    finally:
        prog.stop()
    assert res.merge is not None  # set by every run that is not a dry run
    console.print(
        f"{res.ran} cells computed, {res.skipped} reused; {res.merge.n_rows} rows -> "
        f"{out / 'results.parquet'} and {out / 'results.csv'}"
    )
    for p in res.merge.problems:
        err_console.print(f"[yellow]not merged:[/yellow] {escape(p)}", highlight=False, soft_wrap=True)
    if res.merge.problems:
        raise typer.Exit(1)


# ---- statistics / report / figures commands (sharpscope/stats.py, sharpscope/report) -------------------


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@app.command("correlate")
@user_errors
def correlate_cmd(
    results: Path = typer.Argument(..., help="Results directory (results.parquet/.csv) or table file."),
    x: str = typer.Option(..., "--x", help="Measure name (e.g. m-sharpness) or a column of the table."),
    y: str = typer.Option("eer", "--y", help="Generalization column: eer, eer_gap (EER − in-domain EER)."),
    by: str = typer.Option("testset", "--by", help="Comma list of scopes: testset, pooled, domain."),
    method: str = typer.Option(
        "spearman,pearson,kendall", "--method", help="Comma list: spearman, pearson, pearson-log, kendall."
    ),
    rho: float | None = typer.Option(None, "--rho", help="Perturbation radius of the measure's rows."),
    loss: str | None = typer.Option(None, "--loss", help="Loss of the measure's rows (when several)."),
    subset: str | None = typer.Option(None, "--subset", help="Subset rows to use (default: the full set)."),
    x_testset: str | None = typer.Option(
        None, "--x-testset", help="Take x from this test set for every y test set (e.g. in-domain)."
    ),
    control: str | None = typer.Option(
        None, "--control", help="Also report partial correlations controlling for this column."
    ),
    hyperparams: str | None = typer.Option(
        None,
        "--hyperparams",
        help="Also report granulated Kendall (Jiang et al. 2020) over these training-hyperparameter axes: a "
        "comma list of meta_ columns (prefix optional, e.g. method,lr,seed), or 'auto' for the varying "
        "training-configuration columns (never outcomes such as dev EER).",
    ),
    pvalue: str = typer.Option("auto", "--pvalue", help="auto | asymptotic | permutation."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples over checkpoints (0: no CI)."),
    seed: int = typer.Option(0, "--seed", help="Seed of bootstrap and permutation draws."),
    drop_nan: bool = typer.Option(False, "--drop-nan", help="Exclude NaN pairs (counted), do not fail."),
    pool_families: bool = typer.Option(
        False,
        "--pool-families",
        help="Pool checkpoints of different architecture families (default: one correlation per family).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write the table: .csv, .md or .tex by suffix; any other name writes all three."
    ),
) -> None:
    """Correlate a sharpness measure with EER across checkpoints (per test set, pooled, in/out of domain).

    A confound panel follows the table: the controls of the compared cells (order, class mix, crop, score
    type, non-finite policy and counts, family) with a warning wherever they differ."""
    from rich.table import Table

    from . import stats
    from .confounds import confound_panel, confound_warnings
    from .fileio import check_writable_dir, staged_output
    from .report.tables import format_value, load_results, write_table

    if out is not None:
        if out.is_dir():
            raise SharpscopeError(f"--out {out} is a folder; pass a file name (.csv, .md, .tex or a stem)")
        check_writable_dir(out.parent)
    df = load_results(results)
    common: dict[str, Any] = dict(rho=rho, loss=loss, subset=subset, x_testset=x_testset, dropna=drop_nan)
    scopes, methods = _csv_list(by), _csv_list(method)
    table = stats.correlate(
        df, x, y, by=scopes, methods=methods, pvalue=pvalue, n_boot=n_boot, seed=seed,
        pool_families=pool_families, **common,
    )  # fmt: skip
    if control:
        import pandas as pd

        part = stats.partial_correlate(df, x, y, control, by=scopes, **common)
        table = pd.concat([table, part], ignore_index=True)
    if hyperparams:
        import pandas as pd

        axes = None if hyperparams.strip() == "auto" else _csv_list(hyperparams)
        gran = stats.granulated_kendall(df, x, y, hyperparams=axes, **common)
        table = pd.concat([table, gran], ignore_index=True)
    console = Console()
    t = Table(title=f"{x} vs {y}", title_justify="left")
    for c in ("testset", "method", "n", "coef", "95% CI", "p", "p_method", "p_holm", "p_bh", "note"):
        t.add_column(c, justify="left" if c in ("testset", "method", "p_method") else "right")
    notes: list[str] = []
    for r in table.to_dict("records"):
        lo, hi = format_value(r.get("ci_lo")), format_value(r.get("ci_hi"))
        ci = "" if lo == "–" else f"[{lo}, {hi}]"
        note = r.get("note") or ""
        if note and note not in notes:
            notes.append(note)
        ref = str(notes.index(note) + 1) if note else ""
        vals = [r.get(c) for c in ("testset", "method", "n", "coef")] + [ci]
        if isinstance(r.get("hyperparam"), str):  # granulated Kendall: ψ of an axis, or Ψ
            h = r["hyperparam"]
            vals[1] = "Ψ" if h == stats.PSI_LABEL else f"ψ {h.removeprefix('meta_')}"
        vals += [r.get(c) for c in ("p", "p_method", "p_holm", "p_bh")]
        t.add_row(*(format_value(v) for v in vals), ref)
    console.print(t)
    if "axes" in table.columns and table["axes"].notna().any():
        gk = table[table["axes"].notna()].iloc[0]
        console.print(
            f"granulated Kendall (Jiang et al. 2020), axes ({gk['axes_from']}): {gk['axes']}", highlight=False
        )
    for i, note in enumerate(notes, 1):
        console.print(f"  {i}: {note}", highlight=False)
    measure = x if "measure" in df.columns and x in set(df["measure"].astype(str)) else None
    panel = confound_panel(df, measure, rho, loss)
    warnings = confound_warnings(df, measure, rho, loss)
    if len(panel):
        pt = Table(title="confound panel (controls of the compared cells)", title_justify="left")
        for c in panel.columns:
            pt.add_column(c)
        for r in panel.to_dict("records"):
            pt.add_row(*(format_value(v) for v in r.values()))
        console.print(pt)
    for w in warnings:
        console.print(f"warning: {w}", highlight=False, markup=False)
    if out is not None:
        # staged beside the target; only the table files are renamed in (the folder may hold anything)
        with staged_output(out.parent, "correlate", record=False) as stage:
            written = write_table(table, stage / out.name, caption=f"Correlation of {x} with {y}.")
            stem = out.name[: -len(out.suffix)] if out.suffix else out.name
            panel_out = panel.assign(warnings=" | ".join(warnings)) if len(panel) else panel
            written += write_table(
                panel_out, stage / f"{stem}.confounds.csv", caption=f"Controls of the cells of {x}."
            )
        for p in written:
            console.print(f"wrote {out.parent / p.name}", highlight=False)


@app.command("select")
@user_errors
def select_cmd(
    results: Path = typer.Argument(..., help="Results directory (results.parquet/.csv) or table file."),
    target: str = typer.Option(..., "--target", help="Test set to deploy on (its labels are never used)."),
    by: list[str] | None = typer.Option(
        None,
        "--by",
        help="Criteria to use (repeat or comma list): a sharpness measure with loss kl-to-clean (e.g. "
        "m-sharpness, or m-sharpness@0.05), sharpness, entropy, confidence, score-shift, score-shift-scaled, "
        "dev-eer, source-eer.  Default: every available one.",
    ),
    k: str = typer.Option("1,3", "--k", help="Comma list of k for the top-k hit rate."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples over checkpoints (0: no CI)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap draws."),
    in_domain: str | None = typer.Option(
        None, "--in-domain", help="In-domain test set (default: the one marked in_domain)."
    ),
    subset: str | None = typer.Option(None, "--subset", help="Subset rows to use (default: the full set)."),
    pool_arch: bool = typer.Option(
        False, "--pool-arch", help="Compare checkpoints across architectures (default: within each arch)."
    ),
    no_combined: bool = typer.Option(False, "--no-combined", help="Leave out the combined criterion."),
    top: int = typer.Option(10, "--top", help="Positions of the ranking printed per criterion."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for the CSV tables, selection.md and settings.json."
    ),
) -> None:
    """Rank checkpoints for an unlabelled target test set by label-free criteria; where the study knows the
    labels, score each criterion (regret, top-k hits, Spearman/Kendall, leave-one-domain-out)."""
    import json

    from rich.table import Table

    from . import select as sel
    from .fileio import staged_output
    from .report.tables import load_results

    try:
        ks = [int(v) for v in _csv_list(k)]
    except ValueError:
        raise SharpscopeError(f"--k {k!r} is not a comma list of integers (e.g. 1,3)") from None
    crits = [c for item in by or [] for c in _csv_list(item)]
    res = sel.select(
        load_results(results),
        target,
        by=crits or None,
        ks=ks,
        n_boot=n_boot,
        seed=seed,
        in_domain=in_domain,
        subset=subset,
        pool_arch=pool_arch,
        combine=not no_combined,
    )
    console = Console()

    def show(tab: Any, title: str) -> None:
        t = Table(title=title, title_justify="left")
        for c in tab.columns:
            t.add_column(str(c), justify="left")
        for row in tab.itertuples(index=False):
            t.add_row(*(sel._fmt(v) for v in row))
        console.print(t)

    for fam in dict.fromkeys(res.ranking["family"]) if len(res.ranking) else []:
        show(sel.ranking_wide(res.ranking, fam, top=top), f"Ranking for {target} ({fam}; label-free)")
    if len(res.target_scores):
        scores = sel.compact_scores(res.target_scores, ks, by_domain=False)
        show(scores, f"Scores on {target} (its labels known here; regret in EER percentage points)")
    if len(res.lodo_summary):
        show(sel.compact_scores(res.lodo_summary, ks), "Leave-one-domain-out: mean over out-of-domain sets")
    for i, note in enumerate(res.notes, 1):
        console.print(f"  {i}: {note}", highlight=False, markup=False, soft_wrap=True)
    if out is not None:
        with staged_output(out, "select") as stage:
            for name in ("ranking", "target_scores", "lodo", "lodo_summary", "weights"):
                getattr(res, name).to_csv(stage / f"{name}.csv", index=False)
            (stage / "selection.md").write_text(sel.summary_markdown(res), encoding="utf-8")
            (stage / "settings.json").write_text(json.dumps(res.settings, indent=1, sort_keys=True) + "\n")
        console.print(f"wrote {out} (ranking.csv, *_scores.csv, lodo*.csv, selection.md)", highlight=False)


@app.command("report")
@user_errors
def report_cmd(
    results: Path = typer.Argument(..., help="Results directory (results.parquet/.csv) or table file."),
    out: Path = typer.Option(..., "--out", help="Report directory, e.g. reports/NAME."),
    spec: Path | None = typer.Option(None, "--spec", help="Study spec YAML to show in the report."),
    title: str = typer.Option("sharpscope report", "--title", help="Report title."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the correlation CIs."),
    seed: int = typer.Option(0, "--seed", help="Seed of bootstrap and permutation draws."),
    formats: str = typer.Option("png,svg", "--formats", help="Figure files written next to the report."),
    max_measures: int = typer.Option(8, "--max-measures", help="Draw per-measure figures for at most N."),
) -> None:
    """Write a self-contained HTML report (plus report.md, tables.tex, figures/) from a results table."""
    import matplotlib

    from .fileio import staged_output
    from .report.html import build_report
    from .specio import read_yaml

    spec_obj = None if spec is None else read_yaml(spec, "study spec")
    # names in the table (test sets, checkpoints) are drawn as plain text: "$\\x{$" is a name, not TeX
    with (
        staged_output(out, "report", record=False) as stage,
        matplotlib.rc_context({"text.parse_math": False}),
    ):
        index = build_report(
            results,
            stage,
            spec=spec_obj,
            title=title,
            n_boot=n_boot,
            seed=seed,
            max_measures=max_measures,
            figure_formats=tuple(_csv_list(formats)),
        )
    Console().print(
        f"wrote {out / index.name} (+ report.md, tables.tex, figures/, tables/)", highlight=False
    )


@app.command("figures")
@user_errors
def figures_cmd(
    spec: Path = typer.Argument(..., help="Figure spec YAML: named figures (source, kind, filters, size)."),
    out: Path = typer.Option(..., "--out", help="Output directory for NAME.pdf/.svg/.png."),
) -> None:
    """Rebuild paper figures from stored tables; byte-identical on re-run."""
    from .fileio import staged_output
    from .report.figures import build_figures

    with staged_output(out, "figures", record=False) as stage:
        written = build_figures(spec, stage)
    Console().print(f"wrote {len(written)} files to {out}", highlight=False)


# ---- train / zoo commands (sharpscope/train) -----------------------------------------------------------


@app.command("train")
@user_errors
def train_cmd(
    config: Path = typer.Argument(..., help="Training YAML (arch, data, optimizer, sam/mldg, lora...)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, sidecars, history, resume state."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show rich progress bars."),
) -> None:
    """Train a countermeasure (ERM, SAM/ASAM or MLDG; full, frozen-SSL or LoRA); resumes automatically."""
    from rich.table import Table

    from .fileio import check_writable_dir
    from .train.config import load_config
    from .train.loop import train

    console = Console()
    cfg = load_config(config)
    check_writable_dir(out)
    result = train(cfg, out, progress=progress, log=lambda m: console.print(m, highlight=False))
    t = Table(show_header=False, box=None, pad_edge=False)
    best = [h for h in result.history if h.get("best")]
    t.add_row("epochs", f"{result.epochs_done} ({result.global_step} steps)")
    if best:
        t.add_row("best dev EER", f"{100 * best[-1]['dev_eer']:.3f} % (epoch {best[-1]['epoch']})")
    for label, path in (("best", result.best), ("last", result.last)):
        if path is not None:
            t.add_row(label, str(path))
    console.print(t)


# ---- demo commands (sharpscope/data/demo_corpus.py, sharpscope/demo.py) --------------------------------


@app.command()
@user_errors
def zoo(
    spec: Path = typer.Argument(..., help="Zoo spec (YAML): a base training config and a grid of runs."),
    out: Path = typer.Option(..., "--out", help="Folder of the runs (one sub-folder per run)."),
    executor: str = typer.Option("local", help="local | ray | slurm"),
    workers: int = typer.Option(1, help="Parallel runs (ray / slurm)."),
    threads: int = typer.Option(0, help="Torch threads per run (0 = default)."),
    ray_address: str = typer.Option(None, help="Existing Ray cluster address."),
    slurm_cluster: str = typer.Option("slurm", help="submitit cluster: slurm, or local."),
) -> None:
    """Train a checkpoint zoo (method x rho x lr x seed x LoRA rank ...); finished runs are reused."""
    from .executors import EXECUTORS, ExecOptions
    from .fileio import check_writable_dir
    from .train.zoo import run_zoo

    if executor not in EXECUTORS:
        raise SharpscopeError(f"--executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    console = Console()
    check_writable_dir(out)
    opts = ExecOptions(
        workers=workers, num_threads=threads, ray_address=ray_address, slurm_cluster=slurm_cluster
    )
    runs = run_zoo(spec, out, executor, opts, on_done=lambda n, i, t: console.print(f"trained {i}/{t}: {n}"))
    for r in runs:
        console.print(f"{r['name']}: best={r['best']}")


demo_app = typer.Typer(
    help="The embedded demo: a whole sharpness-vs-EER study offline, in minutes.", invoke_without_command=True
)
app.add_typer(demo_app, name="demo")


@demo_app.callback()
@user_errors
def demo(
    ctx: typer.Context,
    out: Path = typer.Option(Path("demo_run"), "--out", help="Working folder (corpus, zoo, results)."),
    report: Path = typer.Option(Path("reports/demo"), "--report", help="Report folder."),
    small: bool = typer.Option(False, "--small", help="A reduced corpus (used by the tests)."),
) -> None:
    """Run the demo study: corpus -> zoo -> sweep -> report (cached; a rerun reuses finished steps)."""
    if ctx.invoked_subcommand is not None:
        return
    import time

    from rich.table import Table

    from .data.demo_corpus import corpus_config
    from .demo import run_demo

    console = Console()
    t0 = time.perf_counter()
    cfg = corpus_config(small=small)
    res = run_demo(out, report, corpus=cfg, say=lambda m: console.print(m, markup=False, highlight=False))
    if res.summary is not None and not res.summary.empty:
        t = Table(title="demo: mean over checkpoints per family and domain (m-sharpness ρ=0.05, weighted CE)")
        for col in ("family", "domain", "EER %", "m-sharpness", "checkpoints"):
            t.add_column(col)
        for _, r in res.summary.iterrows():
            t.add_row(
                str(r["family"]),
                str(r["testset"]),
                f"{100 * r['eer_mean']:.1f}",
                f"{r['sharpness_mean']:.4f}",
                str(r["n_checkpoints"]),
            )
        console.print(t)
    if res.eer_ci is not None and not res.eer_ci.empty:
        t = Table(title="EER 95 % bootstrap CI half-width per test set (percentage points, over checkpoints)")
        for col in ("test set", "checkpoints", "mean EER %", "median half-width", "max half-width"):
            t.add_column(col)
        for _, r in res.eer_ci.iterrows():
            t.add_row(
                str(r["testset"]),
                str(r["n_checkpoints"]),
                f"{r['eer_mean_pct']:.1f}",
                f"{r['halfwidth_median_pp']:.1f}",
                f"{r['halfwidth_max_pp']:.1f}",
            )
        console.print(t)
    if res.selection is not None and not res.selection.empty:
        from .select import compact_scores

        summ = compact_scores(res.selection, (1, 3), by_domain=False)
        t = Table(title="checkpoint selection, leave-one-domain-out (mean over held-out domains, 95 % CI)")
        want = ("family", "criterion", "n_domains", "regret (EER pp)", "hit@1", "spearman")
        cols = [c for c in want if c in summ]
        for col in cols:
            t.add_column(col)
        for _, r in summ.iterrows():
            t.add_row(*(str(r[c]) for c in cols))
        console.print(t)
    if res.claims is not None and not res.claims.empty:
        from .report.claims import VERDICT_RULE, display_table

        disp = display_table(res.claims)
        t = Table(title="claims of the reference papers (computed; see the report's first section)")
        for col in disp.columns:
            t.add_column(col)
        for r in disp.itertuples(index=False):
            t.add_row(*(str(v) for v in r))
        console.print(t)
        console.print(f"verdict rule: {VERDICT_RULE}", markup=False, highlight=False)
    for n in res.notes:
        console.print(f"note: {n}", markup=False, highlight=False)
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in res.timings.items())
    console.print(f"done in {time.perf_counter() - t0:.0f} s ({timing}); report: {res.report}")


@demo_app.command("corpus")
@user_errors
def demo_corpus(
    out: Path = typer.Option(..., "--out", help="Folder for audio/ and manifests/."),
    seed: int = typer.Option(0, help="Seed of the generated corpus."),
    small: bool = typer.Option(False, "--small", help="A reduced corpus."),
) -> None:
    """Generate the demo corpus only (deterministic; manifests in OUT/manifests)."""
    from .data.demo_corpus import build_demo_corpus, corpus_config

    paths = build_demo_corpus(out, corpus_config(small=small, seed=seed))
    for name, p in paths.items():
        Console().print(f"{name}: {p}")


def main() -> None:  # pragma: no cover - entry point
    app(prog_name="sharpscope")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit()
