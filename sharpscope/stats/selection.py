"""Table preparation: from a tidy results table to one (checkpoint, testset) row with x and y.

The pickers (:func:`pick_subset`, :func:`pick_level`, :func:`in_domain_testset`) are public because the
report and checkpoint selection read results tables the same way the statistics do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import SharpscopeError

SCOPES = ("testset", "pooled", "domain")
GAP_COLUMNS = ("eer_gap", "gap")
FULL_SUBSETS = ("all", "full", "")


@dataclass(frozen=True)
class Selection:
    """What a paired table was built from."""

    rho: float
    loss: str
    subset: str
    n_dropped: dict
    order: tuple = ()


def require_columns(df: pd.DataFrame, cols: Iterable[str]) -> None:
    """One-line error naming the missing columns when ``df`` is not a results table."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SharpscopeError(f"results table lacks column(s) {missing}; is this a sharpscope results table?")


def fmt_choices(values: Iterable) -> str:
    """Sorted, comma-joined distinct values (NaN spelled out) for the 'choose from' part of an error."""
    return ", ".join(sorted({"NaN" if (isinstance(v, float) and math.isnan(v)) else str(v) for v in values}))


def pick_subset(df: pd.DataFrame, subset: str | None) -> tuple[pd.DataFrame, str]:
    """Rows of one subset: the named one, else the full-set rows, else the only subset; error if ambiguous."""
    if "subset" not in df.columns:
        return df, ""
    sub = df["subset"].fillna("").astype(str)
    if subset is not None:
        out = df[sub == subset]
        if out.empty:
            raise SharpscopeError(f"no rows with subset {subset!r} (subsets: {fmt_choices(sub)})")
        return out, subset
    full = sub.isin(FULL_SUBSETS)
    if full.any():
        return df[full], "all"
    if sub.nunique() == 1:
        return df, str(sub.iloc[0])
    raise SharpscopeError(
        f"several subsets and no full-set rows ('all'); pick one with subset= ({fmt_choices(sub)})"
    )


def pick_level(rows: pd.DataFrame, col: str, want, what: str) -> tuple[pd.DataFrame, object]:
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
            raise SharpscopeError(f"{what}: no rows with {col}={want} (available: {fmt_choices(vals)})")
        return rows[keep], want
    uniq = vals.drop_duplicates()
    if len(uniq) > 1:
        raise SharpscopeError(f"{what} has several {col} values ({fmt_choices(uniq)}); pick one with --{col}")
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
        measures = fmt_choices(df["measure"]) if "measure" in df.columns else "none"
        raise SharpscopeError(f"{what} {name!r} is neither a column nor a measure (measures: {measures})")
    rows = df[df["measure"].astype(str) == name]
    rows, info["rho"] = pick_level(rows, "rho", rho, f"measure {name!r}")
    rows, info["loss"] = pick_level(rows, "loss", loss, f"measure {name!r}")
    require_columns(rows, ["value"])
    # several estimator seeds of the same cell are averaged (their spread is the estimator's noise)
    vals = rows.groupby(["checkpoint", "testset"], sort=True)["value"].agg(
        lambda s: s.mean() if s.notna().all() else np.nan
    )
    return vals.astype(float), info


def in_domain_testset(df: pd.DataFrame, in_domain: str | None) -> str:
    """The named in-domain test set (checked), else the only one flagged by the ``in_domain`` column."""
    names = set(df["testset"].astype(str))
    if in_domain is not None:
        if in_domain not in names:
            raise SharpscopeError(
                f"in-domain test set {in_domain!r} not in the table (test sets: {fmt_choices(names)})"
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
    ref_name = in_domain_testset(df, in_domain)
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
    require_columns(df, ["checkpoint", "testset"])
    base, subset_used = pick_subset(df, subset)
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


def scope_groups(
    tab: pd.DataFrame, scopes: Sequence[str], order: Sequence[str] = ()
) -> list[tuple[str, str, pd.DataFrame]]:
    """(scope, name, rows) for each requested scope: per test set, pooled, or in- vs out-of-domain."""
    out: list[tuple[str, str, pd.DataFrame]] = []
    for scope in scopes:
        if scope == "testset":
            for name in ordered_testsets(tab, order):
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


def ordered_testsets(tab: pd.DataFrame, order: Sequence[str]) -> list[str]:
    """Test sets of ``tab`` in ``order`` first, then the rest in table order."""
    present = list(dict.fromkeys(tab["testset"].astype(str)))
    return [n for n in order if n in present] + [n for n in present if n not in order]


def testset_shift(
    df: pd.DataFrame, *, subset: str | None = None, in_domain: str | None = None
) -> pd.DataFrame:
    """Test sets ordered by shift: in-domain first, then by the mean in-domain-relative EER increase.

    shift(T) = mean over checkpoints of (EER_T − EER_in) / EER_in.  Without an in-domain set, test sets are
    ordered by mean EER.
    """
    require_columns(df, ["checkpoint", "testset", "eer"])
    base, _ = pick_subset(df, subset)
    eer = base.groupby(["checkpoint", "testset"])["eer"].first()
    wide = eer.unstack("testset")
    try:
        ref = in_domain_testset(base, in_domain)
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
