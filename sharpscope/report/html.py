"""Self-contained study reports: ``index.html`` + ``report.md`` + ``tables.tex`` + figure files.

``index.html`` needs nothing outside itself: CSS is inline, figures are embedded as base64 PNG, there is no
JavaScript, no CDN and no web font, so it can be mailed around or opened offline.  The same tables are
written as Markdown (``report.md``, figures linked from ``figures/``), as booktabs LaTeX (``tables.tex``) and
as CSV (``tables/*.csv``, e.g. for ``sharpscope figures`` specs).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from .. import stats
from ..errors import SharpscopeError
from ..provenance import file_sha256, git_revision, package_versions
from . import plots
from .figures import save_figure
from .tables import format_value, load_results, parse_curve, to_latex, to_markdown

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;background:#fff}
main{max-width:1100px;margin:0 auto;padding:1.5rem 2rem 4rem}
h1{font-size:1.7rem;margin-bottom:.2rem}
h2{margin-top:2.4rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
nav{background:#f5f5f7;padding:.6rem 2rem;font-size:.9rem;position:sticky;top:0;border-bottom:1px solid #ddd}
nav a{margin-right:1rem;color:#0b57d0;text-decoration:none}
table{border-collapse:collapse;font-size:.82rem;margin:.6rem 0 1.2rem;display:block;overflow-x:auto}
th,td{border-bottom:1px solid #e3e3e3;padding:.25rem .6rem;text-align:right;white-space:nowrap}
th{background:#fafafa;position:sticky;top:0}td.t,th.t{text-align:left}
figure{margin:1rem 0 2rem}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
pre{background:#f5f5f7;padding:.8rem;overflow-x:auto;font-size:.8rem}
.note{color:#8a5a00}.muted{color:#777;font-size:.85rem}
.warn{background:#fff4e0;border-left:4px solid #e0a030;padding:.4rem .8rem}
details{margin:.4rem 0 1rem}summary{cursor:pointer;color:#0b57d0}
td.v-supported{color:#0a7a2f;font-weight:600}td.v-not-supported{color:#b3261e;font-weight:600}
td.v-undecided{color:#6b6b6b;font-weight:600}
.glance{display:flex;flex-wrap:wrap;gap:1rem}.glance figure{flex:1 1 460px;margin:.4rem 0}
"""


@dataclass
class _Section:
    key: str
    title: str
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)


@dataclass
class _Figure:
    name: str
    caption: str
    fig: Figure
    png: bytes


def _measure_keys(df: pd.DataFrame) -> list[tuple[str, float, str]]:
    """(measure, rho, loss) combinations present on the full-set rows, sorted."""
    base, _ = stats.pick_subset(df, None)
    cols = [c for c in ("measure", "rho", "loss") if c in base.columns]
    keys = base[cols].drop_duplicates()
    keys = keys.sort_values(cols, kind="mergesort", na_position="last")
    out = []
    for r in keys.itertuples(index=False):
        d = r._asdict()
        out.append((str(d["measure"]), float(d.get("rho", math.nan)), str(d.get("loss", ""))))
    return out


def _rows_of(df: pd.DataFrame, key: tuple[str, float, str]) -> pd.DataFrame:
    m, rho, loss = key
    sel = df["measure"].astype(str) == m
    if "rho" in df.columns:
        sel &= (
            df["rho"].isna()
            if math.isnan(rho)
            else np.isclose(df["rho"].astype(float), rho, rtol=1e-9, atol=0)
        )
    if "loss" in df.columns:
        sel &= df["loss"].astype(str) == loss
    return df[sel]


def _label(key: tuple[str, float, str], with_loss: bool) -> str:
    m, rho, loss = key
    s = m if math.isnan(rho) else f"{m} ρ={rho:g}"
    return f"{s} [{loss}]" if with_loss else s


def _slug(s: str) -> str:
    """An ASCII file-name stem."""
    s = s.replace("ρ=", "rho").replace("ρ", "rho")
    out = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in s)
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_").lower() or "x"


def _html_table(df: pd.DataFrame, digits: int = 3) -> str:
    text_cols = {c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])}
    head = "".join(
        f'<th class="{"t" if c in text_cols else ""}">{html.escape(str(c))}</th>' for c in df.columns
    )
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, row, strict=True):
            cls = ' class="t"' if c in text_cols else ""
            cells.append(f"<td{cls}>{html.escape(format_value(v, digits))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _collapse(summary: str, inner: str, open_: bool = False) -> str:
    """A long table folded under a one-line summary (the report's first screen stays readable)."""
    attr = " open" if open_ else ""
    return f"<details{attr}><summary>{html.escape(summary)}</summary>{inner}</details>"


def _fig_html(fg: _Figure, vector: Sequence[str] = ()) -> str:
    b64 = base64.b64encode(fg.png).decode()
    links = " ".join(f'<a href="figures/{fg.name}.{f}">{f.upper()}</a>' for f in vector)
    return (
        f'<figure id="fig-{fg.name}">'
        f'<img src="data:image/png;base64,{b64}" alt="{html.escape(fg.caption)}">'
        f"<figcaption><b>{html.escape(fg.name)}</b>: {html.escape(fg.caption)}"
        + (f' <span class="muted">({links})</span>' if links else "")
        + "</figcaption></figure>"
    )


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def _try_figure(
    figs: list[_Figure], problems: list[str], name: str, caption: str, fn, /, *args, **kw
) -> None:
    """Make one figure; a figure that cannot be drawn from this table is listed, not fatal."""
    try:
        fig = fn(*args, **kw)
    except SharpscopeError as exc:
        problems.append(f"figure {name}: {exc}")
        return
    figs.append(_Figure(name, caption, fig, _png(fig)))


def _compact_corr(corr: pd.DataFrame) -> pd.DataFrame:
    if corr.empty:
        return corr
    out = corr.assign(
        ci=[
            "" if math.isnan(lo) else f"[{format_value(lo)}, {format_value(hi)}]"
            for lo, hi in zip(corr["ci_lo"], corr["ci_hi"], strict=True)
        ]
    )
    cols = ["measure", "testset", "method", "n", "coef", "ci", "p", "p_method", "p_holm", "p_bh", "note"]
    return out[[c for c in cols if c in out.columns]]


def analyse(
    df: pd.DataFrame,
    *,
    y: str = "eer",
    methods=stats.METHODS,
    n_boot: int = 1000,
    seed: int = 0,
    problems: list[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """All report tables from one results table.

    Analyses that do not apply (no ``meta_`` columns, no in-domain set) are not run; an analysis that fails
    on this table is left out and its error appended to ``problems`` (shown under "Notes" in the report).
    """
    problems = problems if problems is not None else []
    keys = _measure_keys(df)
    with_loss = len({k[2] for k in keys}) > 1
    out: dict[str, pd.DataFrame] = {}
    base, _ = stats.pick_subset(df, None)
    order = stats.testset_order(base)
    # EER per checkpoint x test set
    if "eer" in base.columns:
        eer = base.groupby(["checkpoint", "testset"], sort=True)["eer"].first().unstack("testset")
        eer = eer.reindex(columns=[t for t in order if t in eer.columns]).reset_index()
        if "meta_method" in base.columns:
            opt = base.groupby("checkpoint")["meta_method"].first()
            eer.insert(1, "optimizer", eer["checkpoint"].map(opt))
        eer.columns.name = None
        out["eer"] = eer
        out["shift"] = stats.testset_shift(base)
    corr, gran, shift, part = [], [], [], []
    has_meta = any(c.startswith("meta_") for c in df.columns)
    ctrl = "meta_method" if "meta_method" in df.columns and df["meta_method"].nunique() > 1 else None
    in_domain_known = (
        "in_domain" in base.columns and base.loc[base["in_domain"].astype(bool), "testset"].nunique() == 1
    )

    def attempt(label: str, what: str, fn, *args, **kw) -> pd.DataFrame | None:
        try:
            return fn(*args, **kw).assign(measure=label)
        except SharpscopeError as exc:
            problems.append(f"{what} of {label}: {exc}")
            return None

    for key in keys:
        rows = _rows_of(df, key)
        label = _label(key, with_loss)
        c = attempt(
            label,
            "correlation",
            stats.correlate,
            rows,
            key[0],
            y,
            by=["testset", "domain"] if in_domain_known else ["testset"],
            methods=methods,
            n_boot=n_boot,
            seed=seed,
            dropna=True,
        )
        if c is None:
            continue
        corr.append(c)
        if has_meta:
            try:
                gran.append(stats.granulated_kendall(rows, key[0], y, dropna=True).assign(measure=label))
            except stats.NoHyperparameterAxesError as exc:  # a zoo without axes: a note, the report goes on
                if str(exc) not in problems:
                    problems.append(str(exc))
        if ctrl:
            part.append(
                attempt(
                    label,
                    "partial correlation",
                    stats.partial_correlate,
                    rows,
                    key[0],
                    y,
                    ctrl,
                    methods=("spearman",),
                    dropna=True,
                )
            )
        if in_domain_known:
            shift.append(attempt(label, "domain shift", stats.domain_shift, rows, key[0], dropna=True))
    corr, gran, part, shift = ([t for t in ts if t is not None] for ts in (corr, gran, part, shift))
    if corr:
        out["correlations"] = pd.concat(corr, ignore_index=True)
    if gran:
        out["granulated_kendall"] = pd.concat(gran, ignore_index=True)
    if part:
        out["partial"] = pd.concat(part, ignore_index=True)
    if shift:
        out["domain_shift"] = pd.concat(shift, ignore_index=True)
    return out


def _figures(
    df: pd.DataFrame, tables: dict[str, pd.DataFrame], y: str, seed: int, max_measures: int
) -> tuple:
    figs: list[_Figure] = []
    problems: list[str] = []
    keys = _measure_keys(df)
    with_loss = len({k[2] for k in keys}) > 1
    if "correlations" in tables:
        _try_figure(
            figs,
            problems,
            "heatmap_spearman",
            f"Spearman ρ of each measure with {y.upper()} across checkpoints, per test set and architecture "
            "family (* Holm-adjusted p < 0.05 across test sets).",
            plots.heatmap,
            df,
            y=y,
            method="spearman",
            seed=seed,
        )
    fam_col = "family" if "family" in df.columns else None
    families = sorted(df[fam_col].dropna().astype(str).unique()) if fam_col else []
    for key in keys[:max_measures]:
        rows = _rows_of(df, key)
        label = _label(key, with_loss)
        slug = _slug(label)
        # one scatter per architecture family: sharpness scales differ between families
        for fam in families if len(families) > 1 else [None]:
            fr = rows if fam is None else rows[rows[fam_col].astype(str) == fam]
            if fr.empty:
                continue
            _try_figure(
                figs,
                problems,
                f"scatter_{slug}" + ("" if fam is None else f"_{_slug(fam)}"),
                f"{label} vs {y.upper()} per test set" + ("" if fam is None else f" ({fam} family)") + ".",
                plots.scatter,
                fr,
                measure=key[0],
                y=y,
                seed=seed,
            )
        _try_figure(
            figs,
            problems,
            f"per_testset_{slug}",
            f"{label} on each test set (CI bars; black: mean over "
            "checkpoints); test sets ordered in-domain first, then by EER shift.",
            plots.sharpness_by_testset,
            rows,
            measure=key[0],
        )
    if "subset" in df.columns:
        m = df["subset"].astype(str).str.extract(plots._SUBSET_STEP)
        studies = df.assign(_n=m["name"])[m["k"].notna()][["testset", "_n", "measure"]].drop_duplicates()
        for t, n, meas in studies.itertuples(index=False):
            _try_figure(
                figs,
                problems,
                f"cumulative_{_slug(t)}_{_slug(n)}_{_slug(meas)}",
                f"{meas} and EER along the cumulative subsets {n}:k of {t}.",
                plots.cumulative,
                df,
                measure=meas,
                testset=t,
                name=n,
            )
    if "extra" in df.columns:
        curve_measures = sorted(
            {str(r.measure) for r in df[["measure", "extra"]].itertuples(index=False) if _is_curve(r.extra)}
        )
        for meas in curve_measures:
            _try_figure(
                figs,
                problems,
                f"landscape_{_slug(meas)}",
                f"Loss along a 1-D direction ({meas}): mean ± sd over checkpoints of each training method.",
                plots.landscape,
                df,
                measure=meas,
            )
    if "meta_method" in df.columns and "eer" in df.columns:
        _try_figure(
            figs,
            problems,
            "eer_by_method",
            "EER per training method and test set (bars: mean, whiskers: sd, dots: checkpoints).",
            plots.eer_by_method,
            df,
        )
    return figs, problems


def _is_curve(v: object) -> bool:
    try:
        return parse_curve(v) is not None
    except SharpscopeError:
        return False


def _provenance(df: pd.DataFrame, source: str | None, source_sha: str | None) -> pd.DataFrame:
    rows = [("results source", source or "(DataFrame)")]
    if source_sha:
        rows.append(("results sha256", source_sha))
    rows.append(("rows", str(len(df))))
    for col in ("git_revision", "spec_hash", "config_hash", "study", "spec_name"):
        if col in df.columns:
            vals = sorted({str(v) for v in df[col].dropna()})
            shown = ", ".join(vals[:5]) + (f" … (+{len(vals) - 5})" if len(vals) > 5 else "")
            rows.append((f"table {col}", shown))
    rows.append(
        ("report made by sharpscope", f"{package_versions().get('sharpscope', '?')} @ {git_revision()}")
    )
    for k, v in package_versions().items():
        if k != "sharpscope":
            rows.append((f"version {k}", v))
    return pd.DataFrame(rows, columns=["item", "value"])


def build_report(
    results: str | Path | pd.DataFrame,
    out_dir: str | Path,
    spec: dict | None = None,
    title: str = "sharpscope report",
    *,
    y: str = "eer",
    methods=stats.METHODS,
    n_boot: int = 1000,
    seed: int = 0,
    max_measures: int = 8,
    figure_formats: tuple[str, ...] = ("png", "svg", "pdf"),
) -> Path:
    """Write ``out_dir/index.html`` (self-contained), ``report.md``, ``tables.tex``, ``tables/*.csv``,
    ``claims.csv`` / ``claims.md`` and ``figures/*.{png,svg,pdf}``; return the path of ``index.html``.

    The report opens with the claims of the reference papers (:mod:`sharpscope.report.claims`: estimate, CI,
    p, verdict) and an "at a glance" section (coefficient heatmap, scatter plots); long tables are folded
    (``<details>``).

    ``spec`` (the study spec as a dict) is shown as YAML.  Analyses that do not apply to the table (no
    ``meta_`` columns, no in-domain set, no cumulative subsets, no landscape curves) are skipped, and
    figures that cannot be drawn are listed under "Notes" rather than failing the report.
    """
    source = None if isinstance(results, pd.DataFrame) else str(results)
    df = load_results(results)
    if df.empty:
        raise SharpscopeError(f"{source or 'results'}: the results table is empty; nothing to report")
    for col in ("checkpoint", "testset", "measure", "value"):
        if col not in df.columns:
            raise SharpscopeError(
                f"{source or 'results'}: no {col!r} column; is this a sharpscope results table?"
            )
    source_sha = None
    if source is not None:
        p = Path(source)
        f = (
            next((p / n for n in ("results.parquet", "results.csv") if (p / n).is_file()), p)
            if p.is_dir()
            else p
        )
        source_sha = file_sha256(f)
        source = str(f)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)

    problems: list[str] = []
    tables = analyse(df, y=y, methods=methods, n_boot=n_boot, seed=seed, problems=problems)
    figs, fig_problems = _figures(df, tables, y, seed, max_measures)
    problems += fig_problems
    vector = [f for f in figure_formats if f in ("svg", "pdf")]
    for fg in figs:
        (out / "figures" / f"{fg.name}.png").write_bytes(fg.png)
        if vector:
            save_figure(fg.fig, out / "figures" / fg.name, vector)
    for name, t in tables.items():
        t.to_csv(out / "tables" / f"{name}.csv", index=False)

    sections = _sections(df, tables, figs, problems, spec, source, source_sha, y, vector)
    _add_selection_section(sections, df, out, n_boot=n_boot, seed=seed, vector=vector)
    _add_claims_section(sections, df, out, seed=seed, vector=vector)
    index = out / "index.html"
    index.write_text(_render_html(title, sections), encoding="utf-8")
    (out / "report.md").write_text(_render_md(title, sections), encoding="utf-8")
    (out / "tables.tex").write_text(_render_tex(tables), encoding="utf-8")
    return index


def _confound_section(df: pd.DataFrame) -> _Section:
    """Controls of every measure's cells (order, class mix, crop, score type, non-finite policy and counts,
    family), with a warning wherever compared cells differ (:mod:`sharpscope.confounds`)."""
    from ..confounds import confound_panel, confound_warnings

    s = _Section("confounds", "Controls and confounds")
    measures = [m for m in dict.fromkeys(df["measure"].astype(str)) if m != "none"] if "measure" in df else []
    warnings: list[str] = []
    for m in measures or [None]:
        panel = confound_panel(df, m)
        if len(panel):
            title = html.escape(m or "all cells")
            s.html.append(f"<h3>{title}</h3>" + _html_table(panel))
            s.md.append(f"### {m or 'all cells'}\n\n" + to_markdown(panel))
        warnings += confound_warnings(df, m)
    if warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        s.html.insert(0, f'<div class="warn"><b>Compared cells differ:</b><ul>{items}</ul></div>')
        s.md.insert(0, "**Compared cells differ:**\n\n" + "".join(f"- {w}\n" for w in warnings) + "\n")
    else:
        same = "Every compared cell was measured under the same controls; no non-finite batch."
        s.html.insert(0, f"<p>{same}</p>")
        s.md.insert(0, same + "\n")
    return s


def _sections(df, tables, figs, problems, spec, source, source_sha, y, vector=()) -> list[_Section]:
    secs: list[_Section] = []
    # at a glance: the coefficient heatmap and the scatter plots, before any table
    glance_names = [f.name for f in figs if f.name.startswith(("heatmap_", "scatter_"))]
    if glance_names:
        s = _Section("glance", "At a glance")
        items = "".join(_fig_html(f, vector) for f in figs if f.name in glance_names)
        s.html.append(f'<div class="glance">{items}</div>')
        s.md.extend(
            f"![{f.caption}](figures/{f.name}.png)\n\n*{f.name}*: {f.caption}\n"
            for f in figs
            if f.name in glance_names
        )
        secs.append(s)
        figs = [f for f in figs if f.name not in glance_names]
    # overview
    s = _Section("overview", "Overview")
    n_ck = df["checkpoint"].nunique()
    keys = _measure_keys(df)
    text = (
        f"{len(df)} result rows: {n_ck} checkpoints × {df['testset'].nunique()} test sets, "
        f"{len(keys)} measure settings. Correlations use the full-set rows; p-values, bootstrap CIs and "
        "corrections are described in the notes of each table."
    )
    s.html.append(f"<p>{html.escape(text)}</p>")
    s.md.append(text + "\n")
    if "shift" in tables:
        s.html.append("<h3>Test sets (ordered by shift)</h3>" + _html_table(tables["shift"]))
        s.md.append("### Test sets (ordered by shift)\n\n" + to_markdown(tables["shift"]))
    if "eer" in tables:
        n = len(tables["eer"])
        s.html.append(_collapse(f"EER per checkpoint ({n} rows)", _html_table(tables["eer"])))
        s.md.append("### EER per checkpoint\n\n" + to_markdown(tables["eer"]))
    secs.append(s)
    secs.append(_confound_section(df))
    # correlations
    if "correlations" in tables:
        s = _Section("correlations", f"Correlation with {y.upper() if y == 'eer' else y}")
        c = _compact_corr(tables["correlations"])
        expl = (
            "coef: point estimate (scipy); ci: percentile bootstrap over checkpoints; p_method: how p "
            "was obtained; p_holm / p_bh: Holm and Benjamini–Hochberg across the test sets of one measure "
            "and method."
        )
        s.html.append(
            f'<p class="muted">{html.escape(expl)}</p>'
            + _collapse(
                f"All coefficients ({len(c)} rows; the heatmap above shows them at a glance)", _html_table(c)
            )
        )
        s.md.append(expl + "\n\n" + to_markdown(c))
        secs.append(s)
    if "granulated_kendall" in tables:
        s = _Section("granulated", "Granulated Kendall (Jiang et al. 2020)")
        g = tables["granulated_kendall"][
            ["measure", "testset", "hyperparam", "coef", "n_groups", "n", "note"]
        ]
        s.html.append(_collapse(f"{len(g)} rows", _html_table(g)))
        s.md.append(to_markdown(g))
        secs.append(s)
    if "partial" in tables:
        s = _Section("partial", "Partial correlation")
        p = tables["partial"][
            ["measure", "testset", "method", "control", "n", "coef", "p", "p_holm", "p_bh", "note"]
        ]
        s.html.append(_collapse(f"{len(p)} rows", _html_table(p)))
        s.md.append(to_markdown(p))
        secs.append(s)
    if "domain_shift" in tables:
        s = _Section("shift", "Sharpness under domain shift")
        cols = [
            "measure",
            "testset",
            "reference",
            "n",
            "mean_ref",
            "mean_test",
            "mean_diff",
            "ratio_of_means",
            "median_ratio",
            "p",
            "p_method",
            "p_holm",
            "note",
        ]
        d = tables["domain_shift"][cols]
        s.html.append(_collapse(f"{len(d)} rows", _html_table(d)))
        s.md.append(to_markdown(d))
        secs.append(s)
    # figures
    s = _Section("figures", "More figures")
    for fg in figs:
        s.html.append(_fig_html(fg, vector))
        s.md.append(f"![{fg.caption}](figures/{fg.name}.png)\n\n*{fg.name}*: {fg.caption}\n")
    if not figs:
        s.html.append("<p>No figure could be drawn from this table.</p>")
    secs.append(s)
    if problems:
        s = _Section("notes", "Notes")
        s.html.append("<ul>" + "".join(f'<li class="note">{html.escape(p)}</li>' for p in problems) + "</ul>")
        s.md.extend(f"- {p}" for p in problems)
        secs.append(s)
    # spec + provenance
    s = _Section("spec", "Study spec")
    if spec:
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
        s.html.append(_collapse("the study spec as run (YAML)", f"<pre>{html.escape(text)}</pre>"))
        s.md.append(f"```yaml\n{text}```\n")
    else:
        s.html.append("<p>No study spec was given.</p>")
        s.md.append("No study spec was given.\n")
    secs.append(s)
    s = _Section("provenance", "Provenance")
    prov = _provenance(df, source, source_sha)
    s.html.append(_collapse(f"{len(prov)} items", _html_table(prov)))
    s.md.append(to_markdown(prov))
    secs.append(s)
    return secs


def _add_selection_section(
    sections: list[_Section], df: pd.DataFrame, out: Path, *, n_boot: int, seed: int, vector: list[str]
) -> None:
    """The "Checkpoint selection" section (issue 14): regret per label-free criterion and held-out domain
    (leave-one-domain-out over the out-of-domain test sets), oracle and random as reference lines; inserted
    before the figures.  A table it cannot be computed from gets one line saying why."""
    from .. import select as sel

    s = _Section("selection", "Checkpoint selection")
    res, why = None, "no labelled out-of-domain test set to score on"
    try:
        res = sel.leave_one_domain_out(df, n_boot=n_boot, seed=seed)
    except SharpscopeError as exc:
        why = str(exc)
    label_free = ("sharpness", "prediction", "shift")
    if res is not None and not res.lodo.empty and not res.lodo["kind"].isin(label_free).any():
        res = None
        why = (
            "no label-free criterion on the target test sets (needs the lf_* columns of a current sweep "
            "or sharpness rows with loss kl-to-clean)"
        )
    if res is None or res.lodo.empty:
        s.html.append(f'<p class="note">Not available for this table: {html.escape(why)}</p>')
        s.md.append(f"Not available for this table: {why}\n")
    else:
        ks = res.settings["ks"]
        expl = (
            "Which checkpoint would each label-free criterion ship on a new domain, and what would it cost? "
            "Each out-of-domain test set is held out in turn; regret = EER of the chosen checkpoint − best "
            "EER, in percentage points (oracle: 0; random: expected regret of a uniform choice); hit@k: a "
            "best checkpoint among the top k; Spearman/Kendall of the criterion (as predicted badness) with "
            f"EER.  CIs: percentile bootstrap over checkpoints ({res.settings['n_boot']} resamples, seed "
            f"{seed}).  The combined criterion's weights are fit on the other domains, never on the held-out "
            "one."
        )
        wide = sel.regret_by_domain(res.lodo)
        summ = sel.compact_scores(res.lodo_summary, ks)
        res.lodo.to_csv(out / "tables" / "selection_lodo.csv", index=False)
        res.lodo_summary.to_csv(out / "tables" / "selection_summary.csv", index=False)
        s.html.append(f'<p class="muted">{html.escape(expl)}</p>')
        s.md.append(expl + "\n")
        s.html.append("<h3>Mean over held-out domains</h3>" + _html_table(summ))
        s.md.append("### Mean over held-out domains\n\n" + to_markdown(summ))
        s.html.append(
            _collapse("Regret per criterion and held-out domain (EER pp, with CIs)", _html_table(wide))
        )
        s.md.append("### Regret per criterion and held-out domain (EER pp)\n\n" + to_markdown(wide))
        try:
            fig = plots.selection_regret(res.lodo)
        except SharpscopeError as exc:
            res.notes.append(f"figure selection_regret: {exc}")
        else:
            png = _png(fig)
            (out / "figures" / "selection_regret.png").write_bytes(png)
            if vector:
                save_figure(fig, out / "figures" / "selection_regret", vector)
            cap = "Regret per criterion and held-out domain; solid: oracle, dashed: random."
            b64 = base64.b64encode(png).decode()
            s.html.append(
                f'<figure id="fig-selection_regret"><img src="data:image/png;base64,{b64}" '
                f'alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}</figcaption></figure>'
            )
            s.md.append(f"![{cap}](figures/selection_regret.png)\n")
        if res.notes:
            items = "".join(f'<li class="note">{html.escape(n)}</li>' for n in res.notes)
            s.html.append(f"<ul>{items}</ul>")
            s.md.extend(f"- {n}" for n in res.notes)
    at = next((i + 1 for i, x in enumerate(sections) if x.key == "glance"), None)
    if at is None:
        at = next((i for i, x in enumerate(sections) if x.key == "figures"), len(sections))
    sections.insert(at, s)


def _verdict_table(disp: pd.DataFrame) -> str:
    """The claims table with the verdict cell coloured (supported / not supported / undecided)."""
    head = "".join(f'<th class="t">{html.escape(str(c))}</th>' for c in disp.columns)
    body = []
    for row in disp.itertuples(index=False):
        cells = []
        for c, v in zip(disp.columns, row, strict=True):
            cls = f"v-{str(v).replace(' ', '-')}" if c == "verdict" else "t"
            cells.append(f'<td class="{cls}">{html.escape(str(v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _add_claims_section(
    sections: list[_Section], df: pd.DataFrame, out: Path, *, seed: int, vector: list[str]
) -> None:
    """The first section: each claim of the reference papers with the study's estimate, 95 % CI, p-value and
    verdict (computed by :func:`sharpscope.report.claims.compute_claims`, never written by hand), the headline
    figure of the data behind them, and the EER CI half-width per test set.  Also writes ``claims.csv``,
    ``claims.md``, ``tables/claims_details.csv`` and ``tables/eer_ci.csv``."""
    from . import claims as cl

    s = _Section("claims", "Claims of the reference papers")
    try:
        res = cl.compute_claims(df, seed=seed)
    except SharpscopeError as exc:
        s.html.append(f'<p class="note">Not available for this table: {html.escape(str(exc))}</p>')
        s.md.append(f"Not available for this table: {exc}\n")
        sections.insert(0, s)
        return
    res.table.to_csv(out / "claims.csv", index=False)
    (out / "claims.md").write_text(cl.claims_markdown(res), encoding="utf-8")
    res.details.to_csv(out / "tables" / "claims_details.csv", index=False)
    res.eer_ci.to_csv(out / "tables" / "eer_ci.csv", index=False)
    disp = cl.display_table(res.table)
    st = res.settings
    intro = (
        f"Computed from this results table: {st['measure']} ρ={st['rho']} ({st['loss']}); in-domain set "
        f"{st['in_domain']}, out-of-domain sets {', '.join(st['out_of_domain'])}; {st['n_boot']} bootstrap "
        f"resamples, seed {st['seed']}. Estimates: (a) sharpness difference, (b) Spearman ρ, (c)/(d) EER "
        "difference in percentage points (treated − control)."
    )
    s.html.append(f'<p class="muted">{html.escape(intro)}</p>' + _verdict_table(disp))
    s.html.append(f'<p class="muted">Verdict rule: {html.escape(cl.VERDICT_RULE)}.</p>')
    s.md.append(intro + "\n\n" + cl.claims_markdown(res))
    try:
        fig = plots.claims_overview(res.points, res.table)
    except SharpscopeError as exc:
        res.notes.append(f"figure claims_overview: {exc}")
    else:
        fg = _Figure(
            "claims_overview",
            "The data behind each claim: (a) sharpness in-domain vs shifted per checkpoint (black: median), "
            "(b) sharpness vs EER per checkpoint, (c)/(d) matched pairs, control → treated.",
            fig,
            _png(fig),
        )
        (out / "figures" / "claims_overview.png").write_bytes(fg.png)
        if vector:
            save_figure(fig, out / "figures" / "claims_overview", vector)
        s.html.append(_fig_html(fg, vector))
        s.md.append(f"![{fg.caption}](figures/claims_overview.png)\n")
    units = "".join(
        f"<li>{html.escape(r.claim)} — unit: {html.escape(r.unit)}; {html.escape(r.test)}, CI: "
        f"{html.escape(r.ci_method or '–')}. {html.escape(r.note)}</li>"
        for r in res.table.itertuples()
    )
    notes = "".join(f'<li class="note">{html.escape(n)}</li>' for n in res.notes)
    s.html.append(_collapse("How each estimate is computed", f"<ul>{units}{notes}</ul>"))
    if not res.eer_ci.empty:
        s.html.append(
            "<h3>EER 95 % CI half-width per test set (percentage points)</h3>" + _html_table(res.eer_ci, 2)
        )
        s.md.append("### EER 95 % CI half-width per test set (pp)\n\n" + to_markdown(res.eer_ci))
    if not res.details.empty:
        s.html.append(
            _collapse(f"Per test set and per pair ({len(res.details)} rows)", _html_table(res.details))
        )
    sections.insert(0, s)


def _render_html(title: str, sections: list[_Section]) -> str:
    nav = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>{"".join(s.html)}</section>' for s in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><nav>{nav}</nav><main><h1>{html.escape(title)}</h1>{body}</main></body></html>\n"
    )


def _render_md(title: str, sections: list[_Section]) -> str:
    parts = [f"# {title}\n"]
    for s in sections:
        parts.append(f"## {s.title}\n")
        parts.append("\n".join(s.md) + "\n")
    return "\n".join(parts)


def _render_tex(tables: dict[str, pd.DataFrame]) -> str:
    parts = ["% sharpscope report tables; needs \\usepackage{booktabs}\n"]
    if "eer" in tables:
        parts.append(to_latex(tables["eer"], caption="EER per checkpoint and test set.", label="tab:eer"))
    if "correlations" in tables:
        c = tables["correlations"]
        c = c[c["scope"] == "testset"][
            ["measure", "testset", "method", "n", "coef", "ci_lo", "ci_hi", "p", "p_holm"]
        ]
        parts.append(to_latex(c, caption="Correlation of sharpness with EER per test set.", label="tab:corr"))
    if "granulated_kendall" in tables:
        g = tables["granulated_kendall"][["measure", "testset", "hyperparam", "coef", "n_groups"]]
        parts.append(to_latex(g, caption="Granulated Kendall coefficients.", label="tab:granulated"))
    if "domain_shift" in tables:
        d = tables["domain_shift"][["measure", "testset", "n", "mean_diff", "ratio_of_means", "p", "p_holm"]]
        parts.append(
            to_latex(
                d,
                caption="Sharpness under shift.",
                label="tab:shift",
            )
        )
    return "\n".join(parts)
