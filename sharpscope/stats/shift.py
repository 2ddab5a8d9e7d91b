"""Domain shift of a measure: each unseen test set vs the in-domain one, paired over checkpoints."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import SharpscopeError
from .core import benjamini_hochberg, holm
from .selection import in_domain_testset, ordered_testsets, paired_table


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
    ref_name = in_domain_testset(df, in_domain)
    wide = tab.pivot(index="checkpoint", columns="testset", values="x")
    rows = []
    for name in ordered_testsets(tab, sel.order):
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
