"""Partial correlation controlling for a column (residual method; Student's t p-value)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import SharpscopeError
from .core import Coefficient, FloatSeq, adjust_p, pearson_rows
from .selection import paired_table, pick_subset, scope_groups


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
    x: FloatSeq,
    y: FloatSeq,
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
    r = float(pearson_rows(ex[None], ey[None])[0])
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
    base, _ = pick_subset(df, subset)
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
    for scope, name, g in scope_groups(tab, scopes, sel.order):
        for m in methods:
            pc = partial_corr(
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
                    "n": pc.n,
                    "coef": pc.coef,
                    "p": pc.p,
                    "p_method": pc.p_method,
                    "rho": sel.rho,
                    "loss": sel.loss,
                    "subset": sel.subset,
                    "note": pc.note,
                }
            )
    out = pd.DataFrame(rows)
    return adjust_p(out, ["x", "y", "method", "scope"]) if not out.empty else out
