"""Statistics between sharpness measures and generalization, all as tidy DataFrames.

What is computed (one output row per (x, y, testset, method)):

* **Rank and linear correlation** between a measure (rows with ``measure == x`` at one ``rho``/``loss``) or a
  column, and a generalization column ``y`` (``eer`` on each test set, or ``eer_gap`` = EER minus the
  in-domain EER of the same checkpoint): Spearman, Pearson, Pearson on log values, Kendall τ-b.
* **p-values** (column ``p_method`` says which): Kendall uses scipy's exact null distribution
  (``kendalltau(method="exact")``) when neither variable has ties and n <= 60, otherwise a seeded
  permutation test; Spearman uses the exact permutation distribution (all n! pairings) for n <= 8 and a
  seeded permutation test above; Pearson uses ``scipy.stats.pearsonr``'s closed form (exact under
  bivariate normality).  ``pvalue="asymptotic"`` gives scipy's analytic p for every method and
  ``pvalue="permutation"`` a permutation test for every method.
* **Bootstrap CIs** over checkpoints (seeded percentile bootstrap; in pooled analyses whole checkpoints are
  resampled, i.e. a cluster bootstrap).
* **Holm and Benjamini–Hochberg** adjusted p-values across the test sets of one (x, y, method, scope).
* **Granulated Kendall** (Jiang et al. 2020, "Fantastic generalization measures and where to find them",
  §4): for each training hyperparameter θ_i, ψ_i = mean over the groups of checkpoints whose other
  hyperparameters are all equal of the sign-based τ = Σ_{j≠k} sign(μ_j − μ_k)·sign(g_j − g_k) / (n(n − 1))
  (constant groups count with τ = 0); Ψ = mean of the ψ_i.  Axes are training-configuration columns, never
  outcomes such as dev EER (:func:`default_hyperparams`), or the ones the caller names.
* **Partial correlation** controlling for a column (numeric, or categorical one-hot): residualise x and y
  on the control (plus intercept) by least squares and correlate the residuals; Spearman partial ranks x, y
  and numeric controls first; p from Student's t with n − 2 − k degrees of freedom.
* **Domain shift** of a measure: each unseen test set vs the in-domain one, paired over checkpoints (mean
  difference, ratios, Wilcoxon signed-rank p).

Input policy: n < 3 or a constant input gives NaN with a ``note``, never an exception.  NaN values of x or y
(or a checkpoint missing from a test set) raise :class:`SharpscopeError` naming the pairs by default; with
``dropna=True`` those pairs are excluded and counted in the ``n_dropped`` column, never silently.
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from .errors import SharpscopeError

METHODS = ("spearman", "pearson", "pearson-log", "kendall")
SCOPES = ("testset", "pooled", "domain")
GAP_COLUMNS = ("eer_gap", "gap")
FULL_SUBSETS = ("all", "full", "")
KENDALL_EXACT_MAX_N = 60
SPEARMAN_EXACT_MAX_N = 8

__all__ = [
    "METHODS",
    "Coefficient",
    "coefficient",
    "bootstrap_ci",
    "holm",
    "benjamini_hochberg",
    "paired_table",
    "correlate",
    "granulated_kendall",
    "default_hyperparams",
    "sign_kendall",
    "NoHyperparameterAxesError",
    "partial_corr",
    "partial_correlate",
    "domain_shift",
    "testset_shift",
]


# ---- array level -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Coefficient:
    """One correlation coefficient with its p-value; ``note`` explains NaNs."""

    coef: float
    p: float
    p_method: str
    n: int
    note: str = ""


def _rng_kwargs(fn: Callable, seed: int) -> dict:
    """scipy >= 1.15 takes ``rng``; older versions ``random_state``."""
    params = inspect.signature(fn).parameters
    key = "rng" if "rng" in params else "random_state"
    return {key: np.random.default_rng(seed)}


def _batch_pearson(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of two (B, n) arrays; NaN where a row is constant."""
    xc = X - X.mean(axis=-1, keepdims=True)
    yc = Y - Y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    num = (xc * yc).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def _batch_kendall_b(X: np.ndarray, Y: np.ndarray, chunk_elems: int = 4_000_000) -> np.ndarray:
    """Row-wise Kendall τ-b of (B, n) arrays: Σ sx·sy / sqrt(Σ sx² · Σ sy²) over pairs i < j."""
    X = np.atleast_2d(X)
    Y = np.atleast_2d(Y)
    B, n = X.shape
    iu, ju = np.triu_indices(n, k=1)
    out = np.empty(B)
    step = max(1, chunk_elems // max(1, len(iu)))
    for s in range(0, B, step):
        sx = np.sign(X[s : s + step, iu] - X[s : s + step, ju])
        sy = np.sign(Y[s : s + step, iu] - Y[s : s + step, ju])
        den = np.sqrt((sx * sx).sum(-1) * (sy * sy).sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + step] = np.where(den > 0, (sx * sy).sum(-1) / np.where(den > 0, den, 1.0), np.nan)
    return out


def batch_coefficient(X: np.ndarray, Y: np.ndarray, method: str) -> np.ndarray:
    """Coefficient of each row pair of (B, n) arrays (vectorised; used by the bootstrap and permutations)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    Y = np.atleast_2d(np.asarray(Y, dtype=float))
    if method == "pearson":
        return _batch_pearson(X, Y)
    if method == "pearson-log":
        with np.errstate(invalid="ignore", divide="ignore"):
            return _batch_pearson(np.log(X), np.log(Y))
    if method == "spearman":
        return _batch_pearson(sps.rankdata(X, axis=-1), sps.rankdata(Y, axis=-1))
    if method == "kendall":
        return _batch_kendall_b(X, Y)
    raise SharpscopeError(f"unknown correlation method {method!r}; choose from {', '.join(METHODS)}")


def _permutation_p(x: np.ndarray, y: np.ndarray, method: str, n_perm: int, seed: int, exact: bool) -> float:
    """Two-sided permutation p of the association (scipy ``permutation_test``, ``pairings``)."""
    if method == "pearson-log":
        x, y, method = np.log(x), np.log(y), "pearson"
    if method == "spearman":  # ranks are permutation-invariant: permute ranks, correlate linearly
        x, y, method = sps.rankdata(x), sps.rankdata(y), "pearson"

    def statistic(xs: np.ndarray, axis: int = -1) -> np.ndarray:
        xs = np.moveaxis(xs, axis, -1)
        flat = xs.reshape(-1, xs.shape[-1])
        ys = np.broadcast_to(y, flat.shape)
        return batch_coefficient(flat, ys, method).reshape(xs.shape[:-1])

    n = len(x)
    batch = max(1, 2_000_000 // max(1, n * n))
    res = sps.permutation_test(
        (x,),
        statistic,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=np.inf if exact else n_perm,
        batch=batch,
        alternative="two-sided",
        **_rng_kwargs(sps.permutation_test, seed),
    )
    return float(res.pvalue)


def coefficient(
    x: Sequence[float],
    y: Sequence[float],
    method: str,
    *,
    pvalue: str = "auto",
    n_perm: int = 9999,
    seed: int = 0,
) -> Coefficient:
    """Correlation of ``x`` and ``y`` with a p-value; the point estimate always comes from scipy.

    ``pvalue``: ``"auto"`` (see module docstring), ``"asymptotic"`` or ``"permutation"``.
    """
    if method not in METHODS:
        raise SharpscopeError(f"unknown correlation method {method!r}; choose from {', '.join(METHODS)}")
    if pvalue not in ("auto", "asymptotic", "permutation"):
        raise SharpscopeError(f"unknown p-value method {pvalue!r}; choose auto, asymptotic or permutation")
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(x)
    if len(y) != n:
        raise SharpscopeError(f"x and y differ in length ({n} vs {len(y)})")
    if np.isnan(x).any() or np.isnan(y).any():
        raise SharpscopeError("x or y contains NaN; drop those rows first (dropna=True)")
    if n < 3:
        return Coefficient(math.nan, math.nan, "", n, f"n={n} < 3")
    if method == "pearson-log":
        if (x <= 0).any() or (y <= 0).any():
            return Coefficient(math.nan, math.nan, "", n, "log needs positive x and y")
        x, y = np.log(x), np.log(y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        which = "x" if np.ptp(x) == 0 else "y"
        return Coefficient(math.nan, math.nan, "", n, f"{which} is constant")
    base = "pearson" if method == "pearson-log" else method

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's small-n warnings; the p_method column says what was done
        if base == "spearman":
            res = sps.spearmanr(x, y)
            coef = float(res.statistic)
            if pvalue == "asymptotic":
                return Coefficient(coef, float(res.pvalue), "asymptotic-t", n)
            exact = pvalue == "auto" and n <= SPEARMAN_EXACT_MAX_N
            p = _permutation_p(x, y, "spearman", n_perm, seed, exact=exact)
            return Coefficient(coef, p, "exact-permutation" if exact else f"permutation-{n_perm}", n)
        if base == "pearson":
            res = sps.pearsonr(x, y)
            coef = float(res.statistic)
            if pvalue == "permutation":
                return Coefficient(
                    coef, _permutation_p(x, y, "pearson", n_perm, seed, False), f"permutation-{n_perm}", n
                )
            label = "exact-normal" if pvalue == "auto" else "asymptotic-beta"
            return Coefficient(coef, float(res.pvalue), label, n)
        # kendall τ-b
        ties = len(np.unique(x)) < n or len(np.unique(y)) < n
        if pvalue == "asymptotic":
            res = sps.kendalltau(x, y, method="asymptotic")
            return Coefficient(float(res.statistic), float(res.pvalue), "asymptotic-normal", n)
        if pvalue == "auto" and not ties and n <= KENDALL_EXACT_MAX_N:
            res = sps.kendalltau(x, y, method="exact")
            return Coefficient(float(res.statistic), float(res.pvalue), "exact", n)
        coef = float(sps.kendalltau(x, y).statistic)
        p = _permutation_p(x, y, "kendall", n_perm, seed, exact=False)
        note = "ties" if ties else ""
        return Coefficient(coef, p, f"permutation-{n_perm}", n, note)


def bootstrap_ci(
    x: Sequence[float],
    y: Sequence[float],
    method: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters: Sequence | None = None,
) -> tuple[float, float, int]:
    """Percentile bootstrap CI of a coefficient: resample checkpoints (or whole clusters) with replacement.

    Returns ``(lo, hi, n_valid)``; resamples whose coefficient is undefined (e.g. all values equal) are left
    out and ``n_valid`` counts the others.  Draws come from ``np.random.default_rng(seed)``: for plain
    resampling one ``integers(0, n, (n_boot, n))`` call, for clusters ``integers(0, n_clusters, (n_boot,
    n_clusters))``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(x)
    if n < 3 or n_boot < 1:
        return math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    if clusters is None:
        idx = rng.integers(0, n, size=(n_boot, n))
        vals = batch_coefficient(x[idx], y[idx], method)
    else:
        codes, uniq = pd.factorize(pd.Series(list(clusters)), sort=True)
        members = [np.flatnonzero(codes == c) for c in range(len(uniq))]
        draws = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
        if len({len(m) for m in members}) == 1:  # balanced clusters: one vectorised gather
            idx = np.stack(members)[draws].reshape(n_boot, -1)
            vals = batch_coefficient(x[idx], y[idx], method)
        else:
            vals = np.empty(n_boot)
            for b, d in enumerate(draws):
                rows = np.concatenate([members[c] for c in d])
                vals[b] = batch_coefficient(x[rows][None], y[rows][None], method)[0]
    ok = vals[~np.isnan(vals)]
    if len(ok) == 0:
        return math.nan, math.nan, 0
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(ok, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi), len(ok)


def _stepwise(p: Sequence[float], step: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Apply a multiple-testing adjustment to the finite p-values sorted ascending (stable); NaNs stay NaN
    and do not count towards m."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind="mergesort")]
        out[order] = np.minimum(1.0, step(p[order], len(ok)))
    return out


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values; NaNs stay NaN and do not count towards m."""
    return _stepwise(p, lambda ps, m: np.maximum.accumulate((m - np.arange(m)) * ps))


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg (1995) step-up adjusted p-values (q-values); NaNs stay NaN."""
    return _stepwise(p, lambda ps, m: np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1])


# ---- table preparation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What a paired table was built from."""

    rho: float
    loss: str
    subset: str
    n_dropped: dict
    order: tuple = ()


def _require(df: pd.DataFrame, cols: Iterable[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SharpscopeError(f"results table lacks column(s) {missing}; is this a sharpscope results table?")


def _fmt_choices(values: Iterable) -> str:
    return ", ".join(sorted({"NaN" if (isinstance(v, float) and math.isnan(v)) else str(v) for v in values}))


def _pick_subset(df: pd.DataFrame, subset: str | None) -> tuple[pd.DataFrame, str]:
    if "subset" not in df.columns:
        return df, ""
    sub = df["subset"].fillna("").astype(str)
    if subset is not None:
        out = df[sub == subset]
        if out.empty:
            raise SharpscopeError(f"no rows with subset {subset!r} (subsets: {_fmt_choices(sub)})")
        return out, subset
    full = sub.isin(FULL_SUBSETS)
    if full.any():
        return df[full], "all"
    if sub.nunique() == 1:
        return df, str(sub.iloc[0])
    raise SharpscopeError(
        f"several subsets and no full-set rows ('all'); pick one with subset= ({_fmt_choices(sub)})"
    )


def _pick_level(rows: pd.DataFrame, col: str, want, what: str) -> tuple[pd.DataFrame, object]:
    """Restrict measure rows to one value of ``col`` (rho or loss); error when ambiguous."""
    if col not in rows.columns:
        return rows, math.nan if col == "rho" else ""
    vals = rows[col]
    if want is not None:
        if col == "rho":
            keep = np.isclose(pd.to_numeric(vals, errors="coerce"), float(want), rtol=1e-9, atol=0.0)
        else:
            keep = vals.astype(str) == str(want)
        if not keep.any():
            raise SharpscopeError(f"{what}: no rows with {col}={want} (available: {_fmt_choices(vals)})")
        return rows[keep], want
    uniq = vals.drop_duplicates()
    if len(uniq) > 1:
        raise SharpscopeError(
            f"{what} has several {col} values ({_fmt_choices(uniq)}); pick one with --{col}"
        )
    return rows, (uniq.iloc[0] if len(uniq) else None)


def _per_pair(df: pd.DataFrame, name: str, *, rho, loss, what: str) -> tuple[pd.Series, dict]:
    """Values of ``name`` (a measure or a column) indexed by (checkpoint, testset)."""
    info: dict = {}
    if name in GAP_COLUMNS:
        eer = _per_pair(df, "eer", rho=None, loss=None, what=what)[0]
        return _eer_gap(df, eer), info
    if name in df.columns:
        if not pd.api.types.is_numeric_dtype(df[name]) or pd.api.types.is_bool_dtype(df[name]):
            raise SharpscopeError(
                f"{what} column {name!r} is not numeric; correlate numeric columns or measures "
                "(use it as a control or hyperparameter instead)"
            )
        g = df.groupby(["checkpoint", "testset"], sort=True)[name]
        spread = g.nunique(dropna=False)
        if (spread > 1).any():
            bad = spread[spread > 1].index[0]
            raise SharpscopeError(
                f"{what} column {name!r} varies within checkpoint {bad[0]!r} / test set {bad[1]!r}; "
                "use a measure name or filter the table"
            )
        return g.first().astype(float), info
    if "measure" not in df.columns or name not in set(df["measure"].astype(str)):
        measures = _fmt_choices(df["measure"]) if "measure" in df.columns else "none"
        raise SharpscopeError(f"{what} {name!r} is neither a column nor a measure (measures: {measures})")
    rows = df[df["measure"].astype(str) == name]
    rows, info["rho"] = _pick_level(rows, "rho", rho, f"measure {name!r}")
    rows, info["loss"] = _pick_level(rows, "loss", loss, f"measure {name!r}")
    _require(rows, ["value"])
    # several estimator seeds of the same cell are averaged (their spread is the estimator's noise)
    vals = rows.groupby(["checkpoint", "testset"], sort=True)["value"].agg(
        lambda s: s.mean() if s.notna().all() else np.nan
    )
    return vals.astype(float), info


def _in_domain_testset(df: pd.DataFrame, in_domain: str | None) -> str:
    names = set(df["testset"].astype(str))
    if in_domain is not None:
        if in_domain not in names:
            raise SharpscopeError(
                f"in-domain test set {in_domain!r} not in the table (test sets: {_fmt_choices(names)})"
            )
        return in_domain
    if "in_domain" not in df.columns:
        raise SharpscopeError("no 'in_domain' column; name the in-domain test set (--in-domain NAME)")
    ind = sorted(set(df.loc[df["in_domain"].astype(bool), "testset"].astype(str)))
    if len(ind) != 1:
        raise SharpscopeError(
            f"expected exactly one in-domain test set, found {len(ind)} ({', '.join(ind) or 'none'}); "
            "name it with --in-domain NAME"
        )
    return ind[0]


def _eer_gap(df: pd.DataFrame, eer: pd.Series, in_domain: str | None = None) -> pd.Series:
    ref_name = _in_domain_testset(df, in_domain)
    ref = eer.xs(ref_name, level="testset")
    ckpt = eer.index.get_level_values("checkpoint")
    return pd.Series(eer.to_numpy() - ref.reindex(ckpt).to_numpy(), index=eer.index)


def paired_table(
    df: pd.DataFrame,
    x: str,
    y: str = "eer",
    *,
    rho: float | None = None,
    loss: str | None = None,
    subset: str | None = None,
    x_testset: str | None = None,
    dropna: bool = False,
) -> tuple[pd.DataFrame, Selection]:
    """One row per (checkpoint, testset) with columns ``x``/``y`` values, ``in_domain`` and ``meta_*``.

    ``x``/``y`` are a measure name (its ``value``; estimator seeds averaged), a column constant within a
    (checkpoint, testset), or ``eer_gap``.  ``x_testset`` takes x from that test set for every y test set
    (e.g. in-domain sharpness as a predictor of out-of-domain EER).
    """
    _require(df, ["checkpoint", "testset"])
    base, subset_used = _pick_subset(df, subset)
    xs, xinfo = _per_pair(base, x, rho=rho, loss=loss, what="x")
    ys, yinfo = _per_pair(base, y, rho=rho, loss=loss, what="y")
    if x_testset is not None:
        if x_testset not in set(xs.index.get_level_values("testset")):
            raise SharpscopeError(f"x_testset {x_testset!r} has no rows for {x!r}")
        src = xs.xs(x_testset, level="testset")
        xs = pd.Series(src.reindex(ys.index.get_level_values("checkpoint")).to_numpy(), index=ys.index)
    tab = pd.concat({"x": xs, "y": ys}, axis=1, join="outer").reset_index()
    # checkpoint-level and testset-level descriptors
    if "in_domain" in base.columns:
        ind = base.groupby("testset")["in_domain"].first().astype(bool)
        tab["in_domain"] = tab["testset"].map(ind).fillna(False).astype(bool)
    meta_cols = [c for c in base.columns if c.startswith("meta_")]
    if meta_cols:
        meta = base.groupby("checkpoint")[meta_cols].first()
        tab = tab.join(meta, on="checkpoint")
    fam_col = "family" if "family" in base.columns else ("arch" if "arch" in base.columns else None)
    if fam_col is not None:
        tab["family"] = tab["checkpoint"].map(base.groupby("checkpoint")[fam_col].first().astype(str))
    else:
        tab["family"] = "unknown"
    bad = tab["x"].isna() | tab["y"].isna()
    dropped = {str(k): int(v) for k, v in tab[bad].groupby("testset").size().items()}
    if bad.any():
        if not dropna:
            ex = tab[bad].iloc[0]
            raise SharpscopeError(
                f"{int(bad.sum())} (checkpoint, testset) pair(s) have NaN or missing x={x!r} / y={y!r}, e.g. "
                f"{ex['checkpoint']!s}/{ex['testset']!s}; fix the sweep or exclude them with dropna=True "
                "(--drop-nan; counted in n_dropped)"
            )
        tab = tab[~bad].reset_index(drop=True)
    info = {**yinfo, **xinfo}
    sel = Selection(
        rho=info.get("rho", math.nan),
        loss=info.get("loss", ""),
        subset=subset_used,
        n_dropped=dropped,
        order=tuple(testset_order(base)),
    )
    return tab, sel


def _groups(
    tab: pd.DataFrame, scopes: Sequence[str], order: Sequence[str] = ()
) -> list[tuple[str, str, pd.DataFrame]]:
    out: list[tuple[str, str, pd.DataFrame]] = []
    for scope in scopes:
        if scope == "testset":
            for name in _ordered(tab, order):
                out.append(("testset", name, tab[tab["testset"] == name]))
        elif scope == "pooled":
            out.append(("pooled", "pooled", tab))
        elif scope == "domain":
            if "in_domain" not in tab.columns:
                raise SharpscopeError("scope 'domain' needs the in_domain column")
            out.append(("domain", "in-domain sets", tab[tab["in_domain"]]))
            out.append(("domain", "out-of-domain sets", tab[~tab["in_domain"]]))
        else:
            raise SharpscopeError(f"unknown scope {scope!r}; choose from {', '.join(SCOPES)}")
    return out


def testset_order(df: pd.DataFrame) -> list[str]:
    """In-domain first, then by EER shift (:func:`testset_shift`) when EERs are known, else table order."""
    names = list(dict.fromkeys(df["testset"].astype(str)))
    if "eer" in df.columns and df["eer"].notna().any():
        try:
            return list(testset_shift(df)["testset"])
        except SharpscopeError:
            pass
    if "in_domain" in df.columns:
        ind = set(df.loc[df["in_domain"].astype(bool), "testset"].astype(str))
        names = [n for n in names if n in ind] + [n for n in names if n not in ind]
    return names


def _ordered(tab: pd.DataFrame, order: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(tab["testset"].astype(str)))
    return [n for n in order if n in present] + [n for n in present if n not in order]


def _adjust(out: pd.DataFrame, family: list[str]) -> pd.DataFrame:
    out["p_holm"] = np.nan
    out["p_bh"] = np.nan
    for _, idx in out.groupby(family, sort=False, dropna=False).groups.items():
        p = out.loc[idx, "p"].to_numpy(dtype=float)
        out.loc[idx, "p_holm"] = holm(p)
        out.loc[idx, "p_bh"] = benjamini_hochberg(p)
    return out


def correlate(
    df: pd.DataFrame,
    x: str,
    y: str = "eer",
    *,
    by: str | Sequence[str] = ("testset",),
    methods: Sequence[str] = METHODS,
    rho: float | None = None,
    loss: str | None = None,
    subset: str | None = None,
    x_testset: str | None = None,
    pvalue: str = "auto",
    n_boot: int = 1000,
    n_perm: int = 9999,
    seed: int = 0,
    level: float = 0.95,
    dropna: bool = False,
    pool_families: bool = False,
) -> pd.DataFrame:
    """Correlation table: one row per (x, y, family, testset, method) with coef, p, p_method, bootstrap CI,
    Holm, BH.

    Checkpoints of different architecture families (the ``family`` column; ``arch`` for older tables) are
    correlated separately: sharpness scales differ between families, so one checkpoint of another family
    can decide the sign of a pooled coefficient.  ``pool_families=True`` pools them, and the ``family``
    column then says ``pooled: a + b``.

    ``by``: ``"testset"`` (each test set), ``"pooled"`` (all pairs; rows of one checkpoint are not
    independent, so p-values there are optimistic — the note says so), ``"domain"`` (in-domain vs pooled
    out-of-domain).  Corrections run across the rows of one (x, y, method, scope).
    """
    scopes = [by] if isinstance(by, str) else list(by)
    methods = [methods] if isinstance(methods, str) else list(methods)
    for m in methods:
        if m not in METHODS:
            raise SharpscopeError(f"unknown correlation method {m!r}; choose from {', '.join(METHODS)}")
    tab, sel = paired_table(df, x, y, rho=rho, loss=loss, subset=subset, x_testset=x_testset, dropna=dropna)
    families = sorted(tab["family"].astype(str).unique())
    if pool_families or len(families) <= 1:
        label = families[0] if len(families) == 1 else "pooled: " + " + ".join(families)
        fam_tabs = [(label, tab)]
    else:
        fam_tabs = [(f, tab[tab["family"].astype(str) == f]) for f in families]
    rows = []
    for family, scope, name, g in ((f, *grp) for f, ft in fam_tabs for grp in _groups(ft, scopes, sel.order)):
        xv, yv = g["x"].to_numpy(float), g["y"].to_numpy(float)
        n_ck = g["checkpoint"].nunique()
        repeated = len(g) > n_ck
        if scope == "testset":
            n_dropped = sel.n_dropped.get(name, 0)
        elif scope == "domain":
            names = set(g["testset"].astype(str))
            n_dropped = sum(v for k, v in sel.n_dropped.items() if k in names)
        else:
            n_dropped = sum(sel.n_dropped.values())
        for m in methods:
            c = coefficient(xv, yv, m, pvalue=pvalue, n_perm=n_perm, seed=seed)
            notes = [c.note] if c.note else []
            lo = hi = math.nan
            if not math.isnan(c.coef):
                lo, hi, n_ok = bootstrap_ci(
                    xv,
                    yv,
                    m,
                    n_boot=n_boot,
                    seed=seed,
                    level=level,
                    clusters=g["checkpoint"].to_numpy() if repeated else None,
                )
                if n_ok < n_boot:
                    notes.append(f"{n_boot - n_ok} degenerate bootstrap resamples left out")
            if repeated:
                notes.append(
                    f"{len(g)} rows from {n_ck} checkpoints: p assumes independence; CI resamples checkpoints"
                )
            if n_dropped:
                notes.append(f"{n_dropped} NaN pair(s) excluded")
            if family.startswith("pooled: "):
                notes.append("architecture families pooled: sharpness scales differ between them")
            rows.append(
                {
                    "x": x,
                    "y": y,
                    "family": family,
                    "testset": name,
                    "scope": scope,
                    "method": m,
                    "n": c.n,
                    "coef": c.coef,
                    "p": c.p,
                    "p_method": c.p_method,
                    "ci_lo": lo,
                    "ci_hi": hi,
                    "ci_level": level,
                    "n_dropped": n_dropped,
                    "rho": sel.rho,
                    "loss": sel.loss,
                    "subset": sel.subset,
                    "x_testset": x_testset or "",
                    "note": "; ".join(notes),
                }
            )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out = _adjust(out, ["x", "y", "method", "scope", "family"])
    first = [
        "x",
        "y",
        "family",
        "testset",
        "scope",
        "method",
        "n",
        "coef",
        "p",
        "p_method",
        "ci_lo",
        "ci_hi",
        "p_holm",
        "p_bh",
    ]
    return out[first + [c for c in out.columns if c not in first]]


# ---- granulated Kendall (Jiang et al. 2020) ---------------------------------------------------------------

#: Keys of a training sidecar that are choices of the training configuration.  The sidecar is written by
#: ``sharpscope.train.loop.checkpoint_meta`` and flattened by ``sharpscope.sweep.study.checkpoint_meta`` into
#: ``meta_<key>`` columns (nested blocks joined with '_': ``lora_rank``, ``mldg_inner_lr``, ``augment_p``);
#: the list adds the usual names of other toolkits.  The order is a priority: of two columns that determine
#: each other (``method`` and ``adaptive`` in a zoo whose only adaptive run is ASAM) the earlier is kept.
HYPERPARAM_KEYS = (
    "method",
    "finetune",
    "arch",
    "optimizer",
    "lr",
    "learning_rate",
    "sam_rho",
    "rho",
    "adaptive",
    "eta",
    "seed",
    "epochs",
    "max_epochs",
    "steps",
    "max_steps",
    "steps_per_epoch",
    "batch_size",
    "nb_samp",
    "weight_decay",
    "momentum",
    "schedule",
    "min_lr",
    "warmup_steps",
    "loss",
    "dropout",
    "label_smoothing",
    "checkpoint",  # the training loop's selection rule: "best" (dev EER) or "last"
)
#: Nested training-config blocks (the sidecar's ``sam``, ``lora``, ``mldg``, ``augment``; ``optimizer`` and
#: ``schedule`` blocks of other toolkits' sidecars), admitted whole.
HYPERPARAM_PREFIXES = ("sam_", "lora_", "mldg_", "augment_", "optimizer_", "schedule_")
#: Outcomes and identifiers the training loop and the sweep write as ``meta_*``: never axes, even when a
#: prefix above would admit a name of this shape.
_NOT_HYPERPARAMS = frozenset(
    {
        "meta_dev_eer",
        "meta_dev_loss",
        "meta_train_loss",
        "meta_meta_test_loss",
        "meta_epoch",  # the epoch a "best" checkpoint was selected at: an outcome of early stopping
        "meta_global_step",
        "meta_n_params",
        "meta_name",
        "meta_config_hash",
        "meta_train_manifest",
        "meta_train_manifest_hash",
        "meta_dev_manifest",
        "meta_dev_manifest_hash",
    }
)
#: Name shapes of outcomes, identifiers and provenance (checked on the key without ``meta_``).
_OUTCOME_KEY = re.compile(
    r"^(dev|train|val|valid|validation|test|eval|best|final|last)_"
    r"|_(eer|loss|acc|accuracy|err|error|auc|dcf|cllr|score|hash|sha|sha256|path|file|manifest|id|seconds)$"
    r"|^(epoch|global_step|step|n_params|name|id|uid|seconds|wall_s|git_revision|provenance|config)$"
)
PSI_LABEL = "Ψ (mean)"


class NoHyperparameterAxesError(SharpscopeError):
    """No training-hyperparameter axis takes two values, so no granulated Kendall coefficient exists."""


def _missing(v: object) -> bool:
    return v is None or (pd.api.types.is_scalar(v) and bool(pd.isna(v)))


def _levels(col: pd.Series) -> pd.Series:
    """Hashable level labels of one axis; every missing value (None, NaN) is one level ``∅``.

    Numeric columns compare as floats (``1`` and ``1.0`` are one level); a sidecar key that one run lacks
    and another writes as null are the same level.
    """
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.astype(float).map(lambda v: "∅" if math.isnan(v) else repr(float(v)))
    return col.map(lambda v: "∅" if _missing(v) else str(v))


def _is_outcome(col: str) -> bool:
    return col in _NOT_HYPERPARAMS or bool(_OUTCOME_KEY.search(col.removeprefix("meta_")))


def _is_config_key(col: str) -> bool:
    key = col.removeprefix("meta_")
    return col.startswith("meta_") and (key in HYPERPARAM_KEYS or key.startswith(HYPERPARAM_PREFIXES))


def _priority(col: str) -> tuple[int, str]:
    key = col.removeprefix("meta_")
    return (HYPERPARAM_KEYS.index(key) if key in HYPERPARAM_KEYS else len(HYPERPARAM_KEYS), key)


def _short_list(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return (", ".join(names[:limit]) or "none") + more


def default_hyperparams(tab: pd.DataFrame) -> list[str]:
    """Training-hyperparameter axes of a table: the ``meta_*`` training-configuration columns that vary.

    Jiang et al. (2020) take the axes θ_1..θ_n of the grid the models were trained on; outcomes of training
    are not axes (conditioning on dev EER or the early-stopping epoch would compare checkpoints that differ in
    how well they trained, not in how they were trained).  The rule, applied to checkpoint-level values:

    1. admitted: ``meta_<key>`` with ``key`` in :data:`HYPERPARAM_KEYS` (method, optimizer, lr, sam_rho, eta,
       seed, epochs, batch_size, ...) or starting with one of :data:`HYPERPARAM_PREFIXES` (``lora_``,
       ``mldg_``, ``augment_``, ``sam_`` ...) -- everything else (``dev_eer``, ``dev_loss``, ``train_loss``,
       ``epoch``, ``global_step``, ``n_params``, manifests, hashes, names) is never an axis;
    2. refused even then: names of outcomes/identifiers (``_NOT_HYPERPARAMS`` and ``*_eer``, ``*_loss``,
       ``*_acc``, ``best_*``, ``dev_*``, ``*_hash``, ``*_path`` ...);
    3. kept: columns with at least two levels across checkpoints (missing values are one level);
    4. of columns that are a function of another kept column (``adaptive`` given ``method`` when ASAM is the
       only adaptive run; ``lora_rank`` given ``finetune``) only the determining one stays, since conditioning
       on a derived column only splits the same groups; of two columns that determine each other the earlier
       in :data:`HYPERPARAM_KEYS` stays.

    Raises :class:`NoHyperparameterAxesError` (naming the candidates and the ``meta_*`` columns that were not
    admitted) when no axis is left; name the axes explicitly with ``hyperparams=`` / ``--hyperparams``.
    """
    ck = tab.drop_duplicates("checkpoint")
    meta = [c for c in ck.columns if c.startswith("meta_")]
    admitted = sorted((c for c in meta if _is_config_key(c) and not _is_outcome(c)), key=_priority)
    lv = {c: _levels(ck[c]) for c in admitted}
    cands = [c for c in admitted if lv[c].nunique() >= 2]

    def determines(a: str, b: str) -> bool:
        return bool((lv[b].groupby(lv[a]).nunique() <= 1).all())

    keep = []
    for c in cands:  # in priority order
        derived = any(
            o != c and determines(o, c) and (not determines(c, o) or _priority(o) < _priority(c))
            for o in cands
        )
        if not derived:
            keep.append(c)
    if not keep:
        constant = [f"{c}={lv[c].iloc[0]}" for c in admitted]
        other = [c for c in meta if c not in admitted]
        raise NoHyperparameterAxesError(
            f"granulated Kendall: no training hyperparameter takes two values across the {len(ck)} "
            f"checkpoint(s) (training-configuration columns: {_short_list(constant)}; other meta_ columns, "
            f"outcomes or identifiers, not taken as axes: {_short_list(other)}); name the axes with "
            "--hyperparams a,b (Python: hyperparams=[...]) or add them to the checkpoints' sidecars"
        )
    return keep


def _resolve_hyperparams(tab: pd.DataFrame, hyperparams: Sequence[str] | str) -> list[str]:
    """User-named axes: ``meta_`` prefix optional, each must be a column; one must take two values."""
    names = [h.strip() for h in hyperparams.split(",")] if isinstance(hyperparams, str) else list(hyperparams)
    out, missing = [], []
    for h in (h for h in names if h):
        col = h if h in tab.columns else f"meta_{h}"
        if col not in tab.columns:
            missing.append(h)
        elif col not in out:
            out.append(col)
    if missing or not out:
        meta = [c for c in tab.columns if c.startswith("meta_")]
        what = f"hyperparameter column(s) {missing} not in the table" if missing else "no axes given"
        raise SharpscopeError(f"{what} (meta_ columns: {_short_list(meta)})")
    ck = tab.drop_duplicates("checkpoint")
    if all(_levels(ck[c]).nunique() < 2 for c in out):
        raise NoHyperparameterAxesError(
            f"granulated Kendall: none of the given hyperparameters ({', '.join(out)}) takes two values "
            f"across the {len(ck)} checkpoint(s); name axes that vary with --hyperparams (meta_ columns: "
            f"{_short_list([c for c in tab.columns if c.startswith('meta_')])})"
        )
    return out


def sign_kendall(mu: np.ndarray, g: np.ndarray) -> float:
    """Jiang et al.'s τ of one group: Σ_{j≠k} sign(μ_j − μ_k)·sign(g_j − g_k) / (n(n − 1)).

    Ties contribute 0 and there is no tie correction (unlike τ-b), so a group with a constant measure or a
    constant generalization value has τ = 0.
    """
    mu, g = np.asarray(mu, float), np.asarray(g, float)
    n = len(mu)
    if n < 2:
        raise ValueError("sign_kendall needs at least two values")
    s = np.sign(mu[:, None] - mu[None, :]) * np.sign(g[:, None] - g[None, :])
    return float(s.sum() / (n * (n - 1)))


def granulated_kendall_table(tab: pd.DataFrame, hyperparams: Sequence[str]) -> list[dict]:
    """ψ_i per axis and Ψ for one set of (checkpoint, x, y, axes...) rows, e.g. one test set.

    For axis i the checkpoints are partitioned by the values of every other axis; a part holding >= 2
    checkpoints that do not all share the value of axis i is a group, and its :func:`sign_kendall` τ
    between x (the measure μ) and y (the generalization value g) is counted -- a group with constant x or y
    too, with τ = 0.  ψ_i is the mean τ over the groups of axis i (NaN with a note when there is none); the
    last row, ``Ψ (mean)``, is the mean of ψ_i over the axes with at least one group.
    """
    hp = list(hyperparams)
    lv = {c: _levels(tab[c]) for c in hp}
    rows = []
    psis = []
    n_groups_all = 0
    for h in hp:
        others = [lv[o] for o in hp if o != h]
        parts = tab.groupby(others, sort=True) if others else [((), tab)]
        taus: list[float] = []
        n_used = n_const = n_repeat = 0
        for _, g in parts:
            hv = lv[h].loc[g.index]
            if len(g) < 2 or hv.nunique() < 2:
                continue
            xv, yv = g["x"].to_numpy(float), g["y"].to_numpy(float)
            taus.append(sign_kendall(xv, yv))
            n_used += len(g)
            n_const += int(np.ptp(xv) == 0 or np.ptp(yv) == 0)
            n_repeat += int(hv.duplicated().any())
        notes = []
        if lv[h].nunique() < 2:
            notes.append(f"{h} takes one value here")
        elif not taus:
            notes.append(f"no group of checkpoints that differ only in {h}")
        if n_const:
            notes.append(f"{n_const} group(s) with constant x or y counted with τ = 0")
        if n_repeat:
            notes.append(
                f"{n_repeat} group(s) hold checkpoints equal on every axis (an axis missing? --hyperparams)"
            )
        if _is_outcome(h):
            notes.append(f"{h} looks like a training outcome, not a hyperparameter")
        psi = float(np.mean(taus)) if taus else math.nan
        if taus:
            psis.append(psi)
            n_groups_all += len(taus)
        rows.append(
            {"hyperparam": h, "coef": psi, "n_groups": len(taus), "n": n_used, "note": "; ".join(notes)}
        )
    used = [r["hyperparam"] for r in rows if r["n_groups"]]
    rows.append(
        {
            "hyperparam": PSI_LABEL,
            "coef": float(np.mean(psis)) if psis else math.nan,
            "n_groups": n_groups_all,
            "n": int(tab["checkpoint"].nunique()),
            "note": f"mean of ψ over {len(used)} of {len(hp)} axes ({', '.join(used)})"
            if used
            else "no axis has a group of checkpoints that differ only in it",
        }
    )
    return rows


def granulated_kendall(
    df: pd.DataFrame,
    x: str,
    y: str = "eer",
    *,
    hyperparams: Sequence[str] | str | None = None,
    rho: float | None = None,
    loss: str | None = None,
    subset: str | None = None,
    x_testset: str | None = None,
    dropna: bool = False,
) -> pd.DataFrame:
    """Granulated Kendall coefficient (Jiang et al. 2020, "Fantastic generalization measures and where to
    find them", ICLR, §4) of a measure ``x`` with a generalization value ``y``, per test set.

    With axes θ_1..θ_m, τ(T) = Σ_{j≠k} sign(μ_j − μ_k)·sign(g_j − g_k) / (|T|(|T| − 1)) over a set T of
    checkpoints (ties count 0), ψ_i = mean of τ over the groups of checkpoints that share the values of
    every axis but θ_i (see :func:`granulated_kendall_table`), and Ψ = mean of ψ_i over the axes that have a
    group.  ψ_i asks whether the measure tracks generalization when only θ_i is changed, which a plain τ
    over all checkpoints cannot separate from a confounding axis.

    ``hyperparams``: the axes, as ``meta_*`` columns (prefix optional; a list or a comma string); by default
    :func:`default_hyperparams` (training-configuration columns only, never outcomes such as dev EER).
    Raises :class:`NoHyperparameterAxesError` when no axis takes two values.

    Rows: x, y, testset, method="granulated-kendall", hyperparam (an axis, then ``Ψ (mean)``), coef (ψ_i or
    Ψ), n_groups, n (checkpoints in those groups; all checkpoints of the test set for Ψ), note, axes (the
    axes used, comma-joined), axes_from (``given`` or ``training-config rule``), rho, loss, subset.
    """
    tab, sel = paired_table(df, x, y, rho=rho, loss=loss, subset=subset, x_testset=x_testset, dropna=dropna)
    if hyperparams is None:
        hp, source = default_hyperparams(tab), "training-config rule"
    else:
        hp, source = _resolve_hyperparams(tab, hyperparams), "given"
    rows = []
    for name in _ordered(tab, sel.order):
        for r in granulated_kendall_table(tab[tab["testset"] == name], hp):
            rows.append(
                {
                    "x": x,
                    "y": y,
                    "testset": name,
                    "method": "granulated-kendall",
                    **r,
                    "axes": ",".join(hp),
                    "axes_from": source,
                    "rho": sel.rho,
                    "loss": sel.loss,
                    "subset": sel.subset,
                }
            )
    return pd.DataFrame(rows)


# ---- partial correlation -----------------------------------------------------------------------------------


def _design(control: pd.DataFrame | np.ndarray | None, n: int, rank_numeric: bool) -> np.ndarray:
    """Covariates: numeric columns as is (ranked for Spearman), others one-hot without the first level."""
    if control is None:
        return np.empty((n, 0))
    if isinstance(control, np.ndarray):
        z = control.reshape(n, -1).astype(float)
        return sps.rankdata(z, axis=0) if rank_numeric else z
    parts = []
    for c in control.columns:
        col = control[c]
        if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
            dummies = pd.get_dummies(col.astype(str), drop_first=True, dtype=float)
            parts.append(dummies.to_numpy())
        else:
            v = col.to_numpy(dtype=float)
            parts.append((sps.rankdata(v) if rank_numeric else v)[:, None])
    return np.hstack(parts) if parts else np.empty((n, 0))


def partial_corr(
    x: Sequence[float],
    y: Sequence[float],
    control: pd.DataFrame | np.ndarray | None,
    method: str = "spearman",
) -> Coefficient:
    """Partial correlation of x and y given ``control`` (residual method).

    x and y (ranked for ``spearman``) are regressed on [1, Z] by least squares; r is the Pearson correlation
    of the residuals; p is two-sided from Student's t with ``n - 2 - k`` degrees of freedom, k = rank of Z.
    """
    if method not in ("spearman", "pearson"):
        raise SharpscopeError(f"partial correlation method must be spearman or pearson, not {method!r}")
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(x)
    label = f"partial-t ({method})"
    rank = method == "spearman"
    Z = _design(control, n, rank)
    Z = Z[:, np.ptp(Z, axis=0) > 0] if Z.size else Z  # a constant covariate is absorbed by the intercept
    design = np.hstack([np.ones((n, 1)), Z])
    k = int(np.linalg.matrix_rank(design)) - 1
    dof = n - 2 - k
    if dof < 1:
        return Coefficient(math.nan, math.nan, "", n, f"n={n} too small for {k} control column(s)")
    xr = sps.rankdata(x) if rank else x
    yr = sps.rankdata(y) if rank else y
    beta_x, *_ = np.linalg.lstsq(design, xr, rcond=None)
    beta_y, *_ = np.linalg.lstsq(design, yr, rcond=None)
    ex, ey = xr - design @ beta_x, yr - design @ beta_y
    scale = max(1.0, float(np.abs(xr).max()), float(np.abs(yr).max()))
    if np.ptp(ex) <= 1e-12 * scale or np.ptp(ey) <= 1e-12 * scale:
        return Coefficient(math.nan, math.nan, "", n, "x or y fully explained by the control")
    r = float(_batch_pearson(ex[None], ey[None])[0])
    if abs(r) >= 1.0:
        return Coefficient(r, 0.0, label, n)
    t = r * math.sqrt(dof / (1.0 - r * r))
    p = float(2.0 * sps.t.sf(abs(t), dof))
    return Coefficient(r, p, label, n)


def partial_correlate(
    df: pd.DataFrame,
    x: str,
    y: str = "eer",
    control: str | Sequence[str] = "meta_method",
    *,
    by: str | Sequence[str] = ("testset",),
    methods: Sequence[str] = ("spearman", "pearson"),
    rho: float | None = None,
    loss: str | None = None,
    subset: str | None = None,
    x_testset: str | None = None,
    dropna: bool = False,
) -> pd.DataFrame:
    """Partial correlations per test set (method ``partial-spearman`` / ``partial-pearson``), Holm and BH."""
    controls = [control] if isinstance(control, str) else list(control)
    tab, sel = paired_table(df, x, y, rho=rho, loss=loss, subset=subset, x_testset=x_testset, dropna=dropna)
    base, _ = _pick_subset(df, subset)
    for c in controls:
        if c in tab.columns:
            continue
        if c not in base.columns:
            raise SharpscopeError(f"control column {c!r} not in the table")
        per = base.groupby(["checkpoint", "testset"])[c]
        if (per.nunique(dropna=False) > 1).any():
            raise SharpscopeError(f"control column {c!r} varies within a (checkpoint, testset); it must not")
        tab = tab.join(per.first(), on=["checkpoint", "testset"])
    scopes = [by] if isinstance(by, str) else list(by)
    rows = []
    for scope, name, g in _groups(tab, scopes, sel.order):
        for m in methods:
            c = partial_corr(
                g["x"].to_numpy(float), g["y"].to_numpy(float), g[controls].reset_index(drop=True), m
            )
            rows.append(
                {
                    "x": x,
                    "y": y,
                    "testset": name,
                    "scope": scope,
                    "method": f"partial-{m}",
                    "control": ",".join(controls),
                    "n": c.n,
                    "coef": c.coef,
                    "p": c.p,
                    "p_method": c.p_method,
                    "rho": sel.rho,
                    "loss": sel.loss,
                    "subset": sel.subset,
                    "note": c.note,
                }
            )
    out = pd.DataFrame(rows)
    return _adjust(out, ["x", "y", "method", "scope"]) if not out.empty else out


# ---- domain shift ------------------------------------------------------------------------------------------


def domain_shift(
    df: pd.DataFrame,
    measure: str,
    *,
    rho: float | None = None,
    loss: str | None = None,
    subset: str | None = None,
    in_domain: str | None = None,
    dropna: bool = False,
) -> pd.DataFrame:
    """Sharpness on each unseen test set vs the in-domain set, paired over checkpoints.

    Per unseen test set: n, mean of each side, mean/sd of the paired difference (test − in-domain), ratio of
    means, mean and median of per-checkpoint ratios, Wilcoxon signed-rank statistic and two-sided p
    (``scipy.stats.wilcoxon``: exact for n <= 50 without ties or zero differences, else the normal
    approximation), Holm and BH across the unseen sets.
    """
    tab, sel = paired_table(df, measure, measure, rho=rho, loss=loss, subset=subset, dropna=dropna)
    ref_name = _in_domain_testset(df, in_domain)
    wide = tab.pivot(index="checkpoint", columns="testset", values="x")
    rows = []
    for name in _ordered(tab, sel.order):
        if name == ref_name:
            continue
        pair = wide[[ref_name, name]].dropna()
        n_missing = len(wide) - len(pair)
        if n_missing and not dropna:
            raise SharpscopeError(
                f"{n_missing} checkpoint(s) lack {measure!r} on {ref_name!r} or {name!r}; "
                "exclude them with dropna=True (--drop-nan)"
            )
        a = pair[ref_name].to_numpy(float)
        b = pair[name].to_numpy(float)
        d = b - a
        n = len(d)
        notes = [f"{n_missing} checkpoint(s) without both values excluded"] if n_missing else []
        stat = p = math.nan
        p_method = ""
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = b / a
        if (a == 0).any():
            notes.append("in-domain value 0: ratios undefined")
            ratios = np.full(n, np.nan)
        if n < 3:
            notes.append(f"n={n} < 3")
        elif np.all(d == 0):
            notes.append("all differences are zero")
        else:
            has_ties = len(np.unique(np.abs(d[d != 0]))) < (d != 0).sum() or (d == 0).any()
            meth = "exact" if (n <= 50 and not has_ties) else "approx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = sps.wilcoxon(b, a, method=meth)
            stat, p = float(res.statistic), float(res.pvalue)
            p_method = f"wilcoxon-{meth}"
        rows.append(
            {
                "measure": measure,
                "testset": name,
                "reference": ref_name,
                "method": "paired-shift",
                "n": n,
                "mean_ref": float(a.mean()) if n else math.nan,
                "mean_test": float(b.mean()) if n else math.nan,
                "mean_diff": float(d.mean()) if n else math.nan,
                "sd_diff": float(d.std(ddof=1)) if n > 1 else math.nan,
                "ratio_of_means": float(b.mean() / a.mean()) if n and a.mean() != 0 else math.nan,
                "mean_ratio": float(np.mean(ratios)) if n else math.nan,
                "median_ratio": float(np.median(ratios)) if n else math.nan,
                "statistic": stat,
                "p": p,
                "p_method": p_method,
                "rho": sel.rho,
                "loss": sel.loss,
                "subset": sel.subset,
                "note": "; ".join(notes),
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p"])
    out["p_bh"] = benjamini_hochberg(out["p"])
    return out


def testset_shift(
    df: pd.DataFrame, *, subset: str | None = None, in_domain: str | None = None
) -> pd.DataFrame:
    """Test sets ordered by shift: in-domain first, then by the mean in-domain-relative EER increase.

    shift(T) = mean over checkpoints of (EER_T − EER_in) / EER_in.  Without an in-domain set, test sets are
    ordered by mean EER.
    """
    _require(df, ["checkpoint", "testset", "eer"])
    base, _ = _pick_subset(df, subset)
    eer = base.groupby(["checkpoint", "testset"])["eer"].first()
    wide = eer.unstack("testset")
    try:
        ref = _in_domain_testset(base, in_domain)
    except SharpscopeError:
        ref = None
    rows = []
    for name in wide.columns:
        mean = float(wide[name].mean())
        if ref is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = (wide[name] - wide[ref]) / wide[ref]
            shift = float(rel.replace([np.inf, -np.inf], np.nan).mean())
        else:
            shift = mean
        rows.append({"testset": str(name), "in_domain": name == ref, "mean_eer": mean, "shift": shift})
    out = pd.DataFrame(rows)
    out = out.sort_values(["in_domain", "shift", "testset"], ascending=[False, True, True], kind="mergesort")
    return out.reset_index(drop=True)
