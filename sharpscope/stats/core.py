"""Array-level statistics: correlation coefficients with p-values, bootstrap CIs, Holm and BH.

See :mod:`sharpscope.stats` for the policy (which p-value for which method and n; NaN handling).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import SharpscopeError

#: numbers given as a sequence or an array (converted with ``np.asarray(..., float)``)
FloatSeq = Sequence[float] | np.ndarray

METHODS = ("spearman", "pearson", "pearson-log", "kendall")
KENDALL_EXACT_MAX_N = 60
SPEARMAN_EXACT_MAX_N = 8


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


def pearson_rows(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
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
        return pearson_rows(X, Y)
    if method == "pearson-log":
        with np.errstate(invalid="ignore", divide="ignore"):
            return pearson_rows(np.log(X), np.log(Y))
    if method == "spearman":
        return pearson_rows(sps.rankdata(X, axis=-1), sps.rankdata(Y, axis=-1))
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
    x: FloatSeq,
    y: FloatSeq,
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
    x: FloatSeq,
    y: FloatSeq,
    method: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters: Sequence | np.ndarray | None = None,
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


def _stepwise(p: FloatSeq, step: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Apply a multiple-testing adjustment to the finite p-values sorted ascending (stable); NaNs stay NaN
    and do not count towards m."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind="mergesort")]
        out[order] = np.minimum(1.0, step(p[order], len(ok)))
    return out


def holm(p: FloatSeq) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values; NaNs stay NaN and do not count towards m."""
    return _stepwise(p, lambda ps, m: np.maximum.accumulate((m - np.arange(m)) * ps))


def benjamini_hochberg(p: FloatSeq) -> np.ndarray:
    """Benjamini–Hochberg (1995) step-up adjusted p-values (q-values); NaNs stay NaN."""
    return _stepwise(p, lambda ps, m: np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1])


def adjust_p(out: pd.DataFrame, family: list[str]) -> pd.DataFrame:
    """Holm and BH columns (``p_holm``, ``p_bh``) over the rows of each family of tests."""
    out["p_holm"] = np.nan
    out["p_bh"] = np.nan
    for _, idx in out.groupby(family, sort=False, dropna=False).groups.items():
        p = out.loc[idx, "p"].to_numpy(dtype=float)
        out.loc[idx, "p_holm"] = holm(p)
        out.loc[idx, "p_bh"] = benjamini_hochberg(p)
    return out
