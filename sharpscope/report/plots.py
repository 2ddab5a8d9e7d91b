"""Plots made from a tidy results table (matplotlib, Agg, no pyplot state).

Every function has the form ``plot(df, ax=None, **options_and_style) -> Figure``: with ``ax`` it draws into
that axes (multi-panel plots then overlay their panels there), without it it creates a new
:class:`matplotlib.figure.Figure` (never registered with pyplot, so nothing leaks between calls).  Plots are
deterministic: no jitter, no random colours; categories get colours in sorted order.

Style keys understood by every function (:data:`STYLE_KEYS`): ``figsize`` (inches, w × h), ``dpi``,
``title``, ``font_size``, ``palette`` (a seaborn palette name), ``legend`` (bool), ``xlabel``, ``ylabel``,
``marker_size``, ``log_x``, ``log_y``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import matplotlib

matplotlib.use("Agg", force=False)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .. import stats  # noqa: E402
from ..errors import SharpscopeError  # noqa: E402
from .tables import parse_curve  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from matplotlib.typing import RcKeyType

STYLE_KEYS = (
    "figsize",
    "dpi",
    "title",
    "font_size",
    "palette",
    "legend",
    "xlabel",
    "ylabel",
    "marker_size",
    "log_x",
    "log_y",
)
_SUBSET_STEP = re.compile(r"^(?P<name>[^:]+):(?P<k>\d+)$")
_GREEK = {"spearman": "ρₛ", "pearson": "r", "pearson-log": "r(log)", "kendall": "τ"}


# ---- helpers -----------------------------------------------------------------------------------------------


def _check_style(style: dict) -> dict:
    unknown = sorted(set(style) - set(STYLE_KEYS))
    if unknown:
        raise SharpscopeError(f"unknown style key(s) {unknown}; known: {', '.join(STYLE_KEYS)}")
    return style


@contextmanager
def _rc(style: dict):
    rc: dict[RcKeyType, Any] = {
        "font.size": style.get("font_size", 9),
        "axes.titlesize": style.get("font_size", 9),
        "axes.labelsize": style.get("font_size", 9),
        "legend.fontsize": max(5, style.get("font_size", 9) - 1),
        "xtick.labelsize": max(5, style.get("font_size", 9) - 1),
        "ytick.labelsize": max(5, style.get("font_size", 9) - 1),
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.hashsalt": "sharpscope",
        "path.simplify": True,
    }
    with matplotlib.rc_context(rc):
        yield


def _figure(ax: Axes | None, n_panels: int, style: dict, panel_size=(3.2, 2.6), ncols_max: int = 3):
    """A new figure with ``n_panels`` axes, or the caller's axes (then all panels share it)."""
    if ax is not None:
        return ax.figure, [ax] * max(1, n_panels)
    n = max(1, n_panels)
    ncols = min(n, ncols_max)
    nrows = math.ceil(n / ncols)
    figsize = style.get("figsize") or (panel_size[0] * ncols, panel_size[1] * nrows)
    fig = Figure(figsize=tuple(figsize), dpi=style.get("dpi", 100), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for extra in axes[n:]:
        extra.set_visible(False)
    return fig, axes[:n]


def _colors(categories: Sequence, palette: str | None) -> dict:
    cats = sorted({str(c) for c in categories})
    pal = sns.color_palette(palette or "colorblind", max(1, len(cats)))
    return {c: pal[i % len(pal)] for i, c in enumerate(cats)}


def _finish(fig: Figure, axes: list[Axes], style: dict) -> Figure:
    for a in dict.fromkeys(axes):
        if style.get("log_x"):
            a.set_xscale("log")
        if style.get("log_y"):
            a.set_yscale("log")
        if "xlabel" in style:
            a.set_xlabel(style["xlabel"])
        if "ylabel" in style:
            a.set_ylabel(style["ylabel"])
    if style.get("title"):
        fig.suptitle(style["title"])
    return fig


def _label(measure: str, rho: float | None) -> str:
    if rho is None or (isinstance(rho, float) and math.isnan(rho)):
        return measure
    return f"{measure} (ρ={rho:g})"


def _hue_column(tab: pd.DataFrame, hue: str | None) -> str | None:
    if hue and hue in tab.columns:
        return hue
    if hue is None and "meta_method" in tab.columns:
        return "meta_method"
    return None


def _legend(ax: Axes, style: dict, **kw) -> None:
    if style.get("legend", True):
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            uniq = dict(sorted(zip(labels, handles, strict=True), key=lambda kv: kv[0]))
            ax.legend(uniq.values(), uniq.keys(), frameon=False, **kw)


def _fig_legend(fig: Figure, axes: list[Axes], ax_given: Axes | None, style: dict, **kw) -> None:
    """One legend per figure: the entries of every panel, de-duplicated, drawn once outside the panels (a
    legend in one panel only reads as if it belonged to that panel).  On the caller's axes, or with a single
    panel, it stays an axes legend."""
    if not style.get("legend", True):
        return
    entries: dict[str, Any] = {}
    for a in dict.fromkeys(axes):
        for h, lab in zip(*a.get_legend_handles_labels(), strict=True):
            if lab and not lab.startswith("_"):
                entries.setdefault(lab, h)
    if not entries:
        return
    labels = sorted(entries)
    handles = [entries[k] for k in labels]
    if ax_given is not None or len(set(axes)) == 1:
        axes[0].legend(handles, labels, frameon=False, **kw)
        return
    kw.pop("loc", None)
    fig.legend(handles, labels, loc="outside right upper", frameon=False, **kw)


# ---- sharpness vs EER scatter ------------------------------------------------------------------------------


def scatter(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    measure: str,
    y: str = "eer",
    rho: float | None = None,
    loss: str | None = None,
    subset: str | None = None,
    x_testset: str | None = None,
    testsets: Sequence[str] | None = None,
    methods: Sequence[str] = ("spearman", "kendall"),
    hue: str | None = None,
    seed: int = 0,
    **style,
) -> Figure:
    """Sharpness (x) vs a generalization column (y) per test set, coefficients and p-values in each panel."""
    _check_style(style)
    tab, sel = stats.paired_table(
        df, measure, y, rho=rho, loss=loss, subset=subset, x_testset=x_testset, dropna=True
    )
    names = [t for t in stats.testset_order(df) if t in set(tab["testset"])]
    if testsets is not None:
        names = [t for t in testsets if t in set(tab["testset"])]
    if not names:
        raise SharpscopeError(f"scatter: no rows for measure {measure!r} on the requested test sets")
    hue_col = _hue_column(tab, hue)
    colors = _colors(tab[hue_col] if hue_col else ["all"], style.get("palette"))
    with _rc(style):
        fig, axes = _figure(ax, len(names), style)
        for a, name in zip(axes, names, strict=True):
            g = tab[tab["testset"] == name]
            groups = g.groupby(g[hue_col].astype(str), sort=True) if hue_col else [("all", g)]
            for key, gg in groups:
                a.scatter(
                    gg["x"],
                    gg["y"],
                    s=style.get("marker_size", 18),
                    color=colors[str(key)],
                    label=str(key) if hue_col else None,
                    edgecolors="none",
                )
            lines = []
            for m in methods:
                c = stats.coefficient(g["x"].to_numpy(float), g["y"].to_numpy(float), m, seed=seed)
                sym = _GREEK.get(m, m)
                lines.append(f"{sym}={c.coef:.2f} (p={c.p:.2g})" if not math.isnan(c.coef) else f"{sym}=n/a")
            if ax is None:
                a.text(
                    0.03, 0.97, "\n".join(lines), transform=a.transAxes, va="top", ha="left", fontsize="small"
                )
                a.set_title(name)
            a.set_xlabel(_label(measure, sel.rho) + (f" on {x_testset}" if x_testset else ""))
            a.set_ylabel(y.upper() if y in ("eer", "eer_gap") else y)
        if hue_col:
            _fig_legend(fig, axes, ax, style, loc="best")
    return _finish(fig, axes, style)


# ---- correlation heatmap -----------------------------------------------------------------------------------


def correlation_matrix(
    df: pd.DataFrame,
    *,
    measures: Sequence[str] | None = None,
    y: str = "eer",
    method: str = "kendall",
    subset: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Correlation rows for every (measure, rho, loss) in the table (no bootstrap), for the heatmap."""
    base, _ = stats.pick_subset(df, subset)
    keys = base[["measure", "rho", "loss"]].drop_duplicates() if "loss" in base else base[["measure", "rho"]]
    keys = keys.sort_values(list(keys.columns), kind="mergesort", na_position="last")
    losses = base["loss"].nunique() if "loss" in base else 1
    parts = []
    for key in keys.itertuples(index=False):
        m = str(key.measure)
        if measures is not None and m not in measures:
            continue
        sel = (base["measure"] == m) & (
            base["rho"].isna()
            if pd.isna(key.rho)
            else np.isclose(base["rho"], float(key.rho), rtol=1e-9, atol=0)
        )
        if losses > 1:
            sel &= base["loss"] == key.loss
        # y comes from the same rows (EER is repeated on every measure row)
        sub = base[sel]
        res = stats.correlate(sub, m, y, methods=[method], n_boot=0, seed=seed, dropna=True)
        label = _label(m, key.rho) + (f" [{key.loss}]" if losses > 1 else "")
        if "family" in res.columns and res["family"].nunique() > 1:  # one row per family, never pooled
            res = res.assign(label=[f"{label} · {f}" for f in res["family"].astype(str)])
        else:
            res = res.assign(label=label)
        parts.append(res)
    if not parts:
        raise SharpscopeError(f"heatmap: none of the measures {list(measures or [])} is in the table")
    return pd.concat(parts, ignore_index=True)


def heatmap(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    measures: Sequence[str] | None = None,
    y: str = "eer",
    method: str = "kendall",
    subset: str | None = None,
    annotate: bool = True,
    seed: int = 0,
    **style,
) -> Figure:
    """Correlation heatmap, measures × test sets; ``*`` marks Holm-adjusted p < 0.05 across test sets.

    ``df`` is either a results table (correlations are computed) or a stored correlation table with columns
    ``x, testset, method, coef`` (e.g. the CSV written by ``sharpscope correlate``).
    """
    _check_style(style)
    if {"coef", "testset", "method"} <= set(df.columns) and "measure" not in df.columns:
        corr = df[df["method"] == method].copy()
        if "label" not in corr:
            corr["label"] = [
                _label(str(x), r) for x, r in zip(corr["x"], corr.get("rho", [None] * len(corr)), strict=True)
            ]
        if "scope" in corr:
            corr = corr[corr["scope"] == "testset"]
        if measures is not None:
            corr = corr[corr["x"].isin(measures)]
        if corr.empty:
            raise SharpscopeError(f"heatmap: the correlation table has no rows for method {method!r}")
        order = list(dict.fromkeys(corr["testset"]))
    else:
        corr = correlation_matrix(df, measures=measures, y=y, method=method, subset=subset, seed=seed)
        order = [t for t in stats.testset_order(df) if t in set(corr["testset"])]
    mat = corr.pivot_table(index="label", columns="testset", values="coef", aggfunc="first", sort=False)
    mat = mat.reindex(columns=order)
    p = "p_holm" if "p_holm" in corr else "p"
    pmat = corr.pivot_table(index="label", columns="testset", values=p, aggfunc="first", sort=False).reindex(
        index=mat.index, columns=order
    )
    annot = None
    if annotate:
        annot = np.empty(mat.shape, dtype=object)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                v, pv = mat.iat[i, j], pmat.iat[i, j]
                annot[i, j] = "" if pd.isna(v) else f"{v:.2f}" + ("*" if pd.notna(pv) and pv < 0.05 else "")
    with _rc(style):
        fig, axes = _figure(ax, 1, style, panel_size=(1.2 + 1.1 * mat.shape[1], 0.8 + 0.45 * mat.shape[0]))
        a = axes[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)  # seaborn 0.13 vs matplotlib >= 3.10
            _heatmap(a, mat, annot, method, y)
        a.set_xlabel("")
        a.set_ylabel("")
        a.tick_params(axis="x", rotation=30)
        for t in a.get_xticklabels():
            t.set_ha("right")
    return _finish(fig, axes, style)


def _heatmap(a: Axes, mat: pd.DataFrame, annot, method: str, y: str) -> None:
    sns.heatmap(
        mat.astype(float),
        ax=a,
        vmin=-1,
        vmax=1,
        center=0,
        cmap="vlag",
        annot=annot,
        fmt="",
        cbar_kws={"label": f"{_GREEK.get(method, method)} with {y.upper() if y == 'eer' else y}"},
        linewidths=0.5,
    )


# ---- sharpness per test set --------------------------------------------------------------------------------


def _ci(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    v = rows["value"].to_numpy(float)
    if {"ci_lo", "ci_hi"} <= set(rows.columns) and rows[["ci_lo", "ci_hi"]].notna().all().all():
        return v - rows["ci_lo"].to_numpy(float), rows["ci_hi"].to_numpy(float) - v
    if "stderr" in rows.columns and rows["stderr"].notna().all():
        se = 1.96 * rows["stderr"].to_numpy(float)
        return se, se
    z = np.zeros_like(v)
    return z, z


def _measure_rows(df, measure, rho, loss, subset) -> tuple[pd.DataFrame, stats.Selection]:
    _, sel = stats.paired_table(df, measure, measure, rho=rho, loss=loss, subset=subset, dropna=True)
    base, _ = stats.pick_subset(df, subset)
    rows = base[base["measure"].astype(str) == measure]
    if "rho" in rows and not (isinstance(sel.rho, float) and math.isnan(sel.rho)) and sel.rho is not None:
        rows = rows[np.isclose(rows["rho"].astype(float), float(sel.rho), rtol=1e-9, atol=0)]
    if "loss" in rows and sel.loss:
        rows = rows[rows["loss"].astype(str) == str(sel.loss)]
    return rows, sel


def sharpness_by_testset(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    measure: str,
    rho: float | None = None,
    loss: str | None = None,
    subset: str | None = None,
    order: Sequence[str] | None = None,
    hue: str | None = None,
    **style,
) -> Figure:
    """Sharpness of each checkpoint on each test set with its CI (ci_lo/ci_hi, else ±1.96·stderr).

    Test sets: in-domain first, then by EER shift (:func:`stats.testset_order`) unless ``order`` is given;
    the black bar is the mean over checkpoints.
    """
    _check_style(style)
    rows, sel = _measure_rows(df, measure, rho, loss, subset)
    rows = rows.groupby(["checkpoint", "testset"], sort=True).first().reset_index()  # one seed row each
    names = (
        list(order)
        if order is not None
        else [t for t in stats.testset_order(df) if t in set(rows["testset"])]
    )
    unknown = [t for t in names if t not in set(rows["testset"])]
    if unknown:
        raise SharpscopeError(f"sharpness_by_testset: test set(s) {unknown} have no {measure!r} rows")
    hue_col = _hue_column(rows, hue)
    ckpts = sorted(rows["checkpoint"].astype(str).unique())
    colors = _colors(rows[hue_col] if hue_col else ["all"], style.get("palette"))
    width = 0.7
    with _rc(style):
        fig, axes = _figure(ax, 1, style, panel_size=(1.0 + 1.0 * len(names), 2.6))
        a = axes[0]
        for j, name in enumerate(names):
            g = rows[rows["testset"] == name].set_index(
                rows.loc[rows["testset"] == name, "checkpoint"].astype(str)
            )
            for i, ck in enumerate(ckpts):
                if ck not in g.index:
                    continue
                r = g.loc[[ck]]
                off = (i + 0.5) / len(ckpts) * width - width / 2
                lo, hi = _ci(r)
                key = str(r[hue_col].iloc[0]) if hue_col else "all"
                a.errorbar(
                    j + off,
                    r["value"].iloc[0],
                    yerr=[lo, hi],
                    fmt="o",
                    ms=style.get("marker_size", 18) ** 0.5,
                    color=colors[key],
                    elinewidth=0.8,
                    label=key if hue_col else None,
                )
            a.hlines(g["value"].mean(), j - width / 2, j + width / 2, color="black", lw=1.2)
        a.set_xticks(range(len(names)), names, rotation=20, ha="right")
        a.set_ylabel(_label(measure, sel.rho))
        a.set_xlim(-0.6, len(names) - 0.4)
        if hue_col:
            _legend(a, style)
    return _finish(fig, axes, style)


# ---- cumulative subsets ------------------------------------------------------------------------------------


def cumulative(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    measure: str,
    rho: float | None = None,
    loss: str | None = None,
    testset: str | None = None,
    name: str | None = None,
    y: str = "eer",
    **style,
) -> Figure:
    """Sharpness and EER along a cumulative subset study (``subset`` = ``NAME:k``; x = k).

    Thin lines: checkpoints; thick line and band: mean ± sd over checkpoints.  Without ``ax`` two panels
    (sharpness, EER); with ``ax`` the EER goes on a twin y-axis (dashed).
    """
    _check_style(style)
    if "subset" not in df.columns:
        raise SharpscopeError("cumulative: the table has no 'subset' column")
    m = df["subset"].astype(str).str.extract(_SUBSET_STEP)
    steps = df.assign(_name=m["name"], _k=pd.to_numeric(m["k"]))
    steps = steps[steps["_k"].notna() & (steps["measure"].astype(str) == measure)]
    if name is not None:
        steps = steps[steps["_name"] == name]
    if testset is not None:
        steps = steps[steps["testset"].astype(str) == testset]
    if steps.empty:
        raise SharpscopeError(f"cumulative: no '{name or 'NAME'}:k' subset rows for measure {measure!r}")
    combos = steps[["testset", "_name"]].drop_duplicates()
    if len(combos) > 1:
        opts = ", ".join(f"{t}/{n}" for t, n in combos.itertuples(index=False))
        raise SharpscopeError(
            f"cumulative: several subset studies ({opts}); pick one with testset= and name="
        )
    steps, level = stats.pick_level(steps, "rho", rho, f"measure {measure!r}")
    steps, _ = stats.pick_level(steps, "loss", loss, f"measure {measure!r}")
    steps = (
        steps.groupby(["checkpoint", "_k"], sort=True)
        .agg(value=("value", "mean"), yv=(y, "first"))
        .reset_index()
    )
    study = f"{combos.iloc[0, 0]} / {combos.iloc[0, 1]}"
    with _rc(style):
        fig, axes = _figure(ax, 2, style, panel_size=(3.0, 2.6))
        a1 = axes[0]
        a2 = axes[1] if ax is None else a1.twinx()
        rho_level = cast("float | None", level)  # pick_level returns object; for "rho" a number, NaN or None
        for col, a, ls, lab in (("value", a1, "-", _label(measure, rho_level)), ("yv", a2, "--", y.upper())):
            for _, g in steps.groupby("checkpoint", sort=True):
                a.plot(g["_k"], g[col], ls=ls, color="0.7", lw=0.7)
            agg = steps.groupby("_k")[col].agg(["mean", "std"]).fillna(0.0)
            a.plot(agg.index, agg["mean"], ls=ls, color="C0" if col == "value" else "C3", lw=2, label=lab)
            a.fill_between(
                agg.index,
                agg["mean"] - agg["std"],
                agg["mean"] + agg["std"],
                alpha=0.2,
                color="C0" if col == "value" else "C3",
                lw=0,
            )
            a.set_ylabel(lab)
            a.set_xlabel(f"#{combos.iloc[0, 1]} (cumulative)")
            a.xaxis.get_major_locator().set_params(integer=True)
        if ax is None:
            a1.set_title(study)
            a2.set_title(study)
    return _finish(fig, axes if ax is None else [a1], style)


# ---- loss landscape curves ---------------------------------------------------------------------------------


def landscape(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    measure: str = "landscape",
    testsets: Sequence[str] | None = None,
    group: str | None = None,
    column: str = "extra",
    **style,
) -> Figure:
    """1-D loss landscape curves (from the JSON column ``extra``), mean ± sd band per group per test set.

    ``group`` defaults to ``meta_method`` when present, else every checkpoint is its own line.  Curves of
    one group must share their x grid; otherwise they are linearly interpolated onto the first curve's grid.
    """
    _check_style(style)
    if column not in df.columns:
        raise SharpscopeError(f"landscape: the table has no {column!r} column holding the curves")
    rows = df[df["measure"].astype(str) == measure]
    curves = [(r, parse_curve(r[column])) for _, r in rows.iterrows()]
    curves = [(r, c) for r, c in curves if c is not None]
    if not curves:
        raise SharpscopeError(f"landscape: no rows of measure {measure!r} carry a curve in {column!r}")
    grp = group or ("meta_method" if "meta_method" in rows.columns else "checkpoint")
    if grp not in rows.columns:
        raise SharpscopeError(f"landscape: group column {grp!r} not in the table")
    names = [t for t in stats.testset_order(df) if t in set(rows["testset"])]
    if testsets is not None:
        names = [t for t in testsets if t in set(rows["testset"])]
    colors = _colors([r[grp] for r, _ in curves], style.get("palette"))
    with _rc(style):
        fig, axes = _figure(ax, len(names), style)
        for a, name in zip(axes, names, strict=True):
            by: dict[str, list] = {}
            for r, c in curves:
                if str(r["testset"]) == name:
                    by.setdefault(str(r[grp]), []).append(c)
            for key in sorted(by):
                xs = by[key][0][0]
                ys = np.vstack(
                    [c[1] if np.array_equal(c[0], xs) else np.interp(xs, c[0], c[1]) for c in by[key]]
                )
                mean, sd = ys.mean(axis=0), ys.std(axis=0)
                a.plot(xs, mean, color=colors[key], lw=1.5, label=f"{key} (n={len(ys)})")
                a.fill_between(xs, mean - sd, mean + sd, color=colors[key], alpha=0.2, lw=0)
            if ax is None:
                a.set_title(name)
            a.set_xlabel("step along direction (α)")
            a.set_ylabel("loss")
        _fig_legend(fig, axes, ax, style)
    return _finish(fig, axes, style)


# ---- EER per training method -------------------------------------------------------------------------------


def eer_by_method(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    method_col: str = "meta_method",
    metric: str = "eer",
    subset: str | None = None,
    testsets: Sequence[str] | None = None,
    **style,
) -> Figure:
    """EER (or another metric column) per training method per test set: bars = mean, whiskers = sd, dots
    = checkpoints (placed at fixed offsets, no random jitter)."""
    _check_style(style)
    for c in (method_col, metric, "checkpoint", "testset"):
        if c not in df.columns:
            raise SharpscopeError(f"eer_by_method: the table has no {c!r} column")
    base, _ = stats.pick_subset(df, subset)
    per = base.groupby(["checkpoint", "testset"], sort=True).agg(m=(metric, "first"), g=(method_col, "first"))
    per = per.reset_index()
    names = [t for t in stats.testset_order(base) if t in set(per["testset"])]
    if testsets is not None:
        names = [t for t in testsets if t in set(per["testset"])]
    methods = sorted(per["g"].astype(str).unique())
    colors = _colors(methods, style.get("palette"))
    width = 0.8 / max(1, len(methods))
    with _rc(style):
        fig, axes = _figure(ax, 1, style, panel_size=(1.2 + 1.1 * len(names), 2.6))
        a = axes[0]
        for i, meth in enumerate(methods):
            xs, means, sds = [], [], []
            for j, name in enumerate(names):
                v = per[(per["testset"] == name) & (per["g"].astype(str) == meth)]["m"].to_numpy(float)
                if len(v) == 0:
                    continue
                x = j - 0.4 + width * (i + 0.5)
                xs.append(x)
                means.append(v.mean())
                sds.append(v.std(ddof=1) if len(v) > 1 else 0.0)
                offs = np.linspace(-width * 0.25, width * 0.25, len(v)) if len(v) > 1 else [0.0]
                a.scatter(x + np.asarray(offs), np.sort(v), s=8, color="black", zorder=3, lw=0)
            a.bar(
                xs,
                means,
                width=width * 0.9,
                yerr=sds,
                color=colors[meth],
                label=meth,
                capsize=2,
                error_kw={"lw": 0.8},
            )
        a.set_xticks(range(len(names)), names, rotation=20, ha="right")
        a.set_ylabel(metric.upper() if metric == "eer" else metric)
        _fig_legend(fig, axes, ax, style, title=method_col.removeprefix("meta_"))
    return _finish(fig, axes, style)


PLOTS: dict[str, Callable[..., Figure]] = {
    "scatter": scatter,
    "heatmap": heatmap,
    "per-testset": sharpness_by_testset,
    "cumulative": cumulative,
    "landscape": landscape,
    "eer-by-method": eer_by_method,
}
"""Plot kinds by name (used by figure specs)."""


# ---- checkpoint selection (sharpscope select) --------------------------------------------------------------


def selection_regret(lodo: pd.DataFrame, ax: Axes | None = None, **style) -> Figure:
    """Regret (EER percentage points) of each label-free criterion per held-out domain, bars with bootstrap
    CI whiskers, from the per-domain table of :func:`sharpscope.select.select` (``lodo``); reference lines:
    the oracle (regret 0, solid) and a uniform random choice (its expected regret, dashed)."""
    _check_style(style)
    need = ("family", "domain", "criterion", "regret_pp", "regret_pp_lo", "regret_pp_hi")
    missing = [c for c in need if c not in lodo.columns]
    if lodo.empty or missing:
        raise SharpscopeError(
            f"selection_regret: no per-domain selection scores (missing {missing or 'rows'})"
        )
    panels = list(dict.fromkeys(zip(lodo["family"].astype(str), lodo["domain"].astype(str), strict=True)))
    crits = [c for c in dict.fromkeys(lodo["criterion"].astype(str)) if c not in ("oracle", "random")]
    colors = _colors(lodo.get("kind", pd.Series(crits)).astype(str), style.get("palette"))
    with _rc(style):
        fig, axes = _figure(ax, len(panels), style, panel_size=(3.4, 0.45 + 0.28 * max(1, len(crits))))
        for a, (fam, dom) in zip(axes, panels, strict=True):
            g = lodo[(lodo["family"].astype(str) == fam) & (lodo["domain"].astype(str) == dom)]
            g = g.set_index(g["criterion"].astype(str))
            ys = np.arange(len(crits))
            vals = g.reindex(crits)
            v = vals["regret_pp"].to_numpy(float)
            err = np.vstack(
                [
                    np.clip(v - vals["regret_pp_lo"].to_numpy(float), 0, None),
                    np.clip(vals["regret_pp_hi"].to_numpy(float) - v, 0, None),
                ]
            )
            kinds = vals["kind"].astype(str) if "kind" in vals.columns else pd.Series(crits, index=crits)
            a.barh(
                ys,
                np.nan_to_num(v),
                xerr=np.nan_to_num(err),
                color=[colors.get(k, "grey") for k in kinds],
                capsize=2,
                error_kw={"lw": 0.8},
            )
            a.axvline(0.0, color="black", lw=1.0, label="oracle")
            if "random" in g.index:
                rnd = float(g.loc["random", "regret_pp"])
                a.axvline(rnd, color="tab:red", ls="--", lw=1.0, label="random")
            a.set_yticks(ys, crits)
            a.invert_yaxis()
            a.set_xlabel("regret (EER pp)")
            a.set_title(dom if len({p[0] for p in panels}) == 1 else f"{dom} ({fam})")
        _fig_legend(fig, axes, ax, style, loc="best")
    return _finish(fig, axes, style)


# ---- claims of the reference papers (headline figure) ------------------------------------------------------


def claims_overview(points: dict[str, pd.DataFrame], table: pd.DataFrame, **style) -> Figure:
    """The data behind each claim of :mod:`sharpscope.report.claims`, one panel per claim: (a) sharpness
    in-domain vs shifted per checkpoint (one line each), (b) mean out-of-domain sharpness vs EER per
    checkpoint, (c)/(d) mean out-of-domain EER of each matched pair (control → treated).  Panel titles carry
    the verdict; one legend for the figure (training method)."""
    _check_style(style)
    keys = [k for k in ("a", "b", "c", "d") if k in points and len(points[k])]
    if not keys:
        raise SharpscopeError("claims_overview: no claim has data to draw")
    verdicts = {str(c)[1]: v for c, v in zip(table["claim"], table["verdict"], strict=True)}
    methods = set()
    if "b" in points:
        methods |= set(points["b"]["method"].astype(str))
    for k in ("c", "d"):
        if k in points:
            methods |= set(points[k]["treated_method"].astype(str)) | set(
                points[k]["control_method"].astype(str)
            )
    colors = _colors(sorted(methods) or ["all"], style.get("palette"))
    with _rc(style):
        fig, axes = _figure(None, len(keys), style, panel_size=(2.9, 2.6), ncols_max=4)
        for a, k in zip(axes, keys, strict=True):
            p = points[k]
            if k == "a":
                for _, r in p.iterrows():
                    a.plot([0, 1], [r["in_domain"], r["shifted"]], color="0.55", lw=0.8, marker="o", ms=3)
                a.plot([0, 1], [p["in_domain"].median(), p["shifted"].median()], color="black", lw=2)
                a.set_xticks([0, 1], ["in-domain", "shifted\n(mean)"])
                a.set_xlim(-0.3, 1.3)
                a.set_ylabel("sharpness")
            elif k == "b":
                for m, g in p.groupby(p["method"].astype(str), sort=True):
                    a.scatter(
                        g["sharpness"], 100 * g["eer"], s=18, color=colors[m], label=m, edgecolors="none"
                    )
                a.set_xlabel("sharpness (mean out-of-domain)")
                a.set_ylabel("EER % (mean out-of-domain)")
            else:
                for _, r in p.iterrows():
                    a.plot([0, 1], [r["eer_control"], r["eer_treated"]], color="0.6", lw=0.8, zorder=1)
                    a.scatter(
                        [0],
                        [r["eer_control"]],
                        s=16,
                        color=colors[str(r["control_method"])],
                        label=str(r["control_method"]),
                        zorder=2,
                    )
                    a.scatter(
                        [1],
                        [r["eer_treated"]],
                        s=16,
                        color=colors[str(r["treated_method"])],
                        label=str(r["treated_method"]),
                        zorder=2,
                    )
                ctrl = "ERM" if k == "c" else "full FT"
                trt = "SAM/ASAM" if k == "c" else "LoRA+MLDG"
                a.set_xticks([0, 1], [ctrl, trt])
                a.set_xlim(-0.3, 1.3)
                a.set_ylabel("EER % (mean out-of-domain)")
            a.set_title(f"({k}) {verdicts.get(k, '')}", fontsize="medium")
        _fig_legend(fig, axes, None, style)
    return _finish(fig, axes, style)
