"""Correlation tables: coefficient, p, bootstrap CI, Holm and BH per (x, y, family, testset, method)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from ..errors import SharpscopeError
from .core import METHODS, adjust_p, bootstrap_ci, coefficient
from .selection import paired_table, scope_groups


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
    for family, scope, name, g in (
        (f, *grp) for f, ft in fam_tabs for grp in scope_groups(ft, scopes, sel.order)
    ):
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
    out = adjust_p(out, ["x", "y", "method", "scope", "family"])
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
