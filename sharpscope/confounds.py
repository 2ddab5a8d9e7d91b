"""The confound panel: every setting that can move a sharpness value, per compared cell, with warnings.

A correlation across checkpoints (or a comparison across test sets) is only meaningful when the cells it
compares were measured the same way.  Batch order and class mix move m-sharpness (it is non-linear per batch
and a class-weighted loss depends on each batch's mix), the crop and score type move EER, non-finite batches
dropped or capped bias a mean, and sharpness scales differ between architecture families.  This module
tabulates those controls for the cells of a results table and warns where compared cells differ in any of
them -- the report and ``sharpscope correlate`` print it next to every coefficient.
"""

from __future__ import annotations

import pandas as pd

#: result columns that must agree between compared cells (absent columns are skipped: older tables)
CONTROLS = (
    "order", "class_mix", "crop", "score_type", "precision", "sharpness_precision", "nonfinite", "family",
    "batch_size", "nb_samp",
)  # fmt: skip


def _select(df: pd.DataFrame, measure: str | None, rho: float | None, loss: str | None) -> pd.DataFrame:
    rows = df
    if measure is not None and "measure" in rows.columns:
        rows = rows[rows["measure"] == measure]
    if rho is not None and "rho" in rows.columns:
        rows = rows[(rows["rho"] - rho).abs() < 1e-12]
    if loss is not None and "loss" in rows.columns:
        rows = rows[rows["loss"] == loss]
    return rows


def confound_panel(
    df: pd.DataFrame, measure: str | None = None, rho: float | None = None, loss: str | None = None
) -> pd.DataFrame:
    """One row per test set: the distinct values of every control among its cells, non-finite counts, and
    the number of cells and utterances per cell (min-max)."""
    rows = _select(df, measure, rho, loss)
    out = []
    for testset, g in rows.groupby("testset", sort=False):
        rec: dict[str, object] = {"testset": testset, "n_cells": int(len(g))}
        for c in CONTROLS:
            if c in g.columns:
                rec[c] = ", ".join(sorted({str(v) for v in g[c].dropna()})) or "-"
        for c in ("n_nonfinite", "n_capped"):
            if c in g.columns:
                rec[c] = int(pd.to_numeric(g[c], errors="coerce").fillna(0).sum())
        if "n_nonfinite" in g.columns:
            bad = pd.to_numeric(g["n_nonfinite"], errors="coerce").fillna(0) > 0
            rec["cells_nonfinite"] = int(bad.sum())
        if "n_utts" in g.columns:
            n = pd.to_numeric(g["n_utts"], errors="coerce").dropna()
            rec["n_utts_per_cell"] = f"{int(n.min())}-{int(n.max())}" if len(n) else "-"
        out.append(rec)
    return pd.DataFrame(out)


def confound_warnings(
    df: pd.DataFrame, measure: str | None = None, rho: float | None = None, loss: str | None = None
) -> list[str]:
    """One line per control in which compared cells differ, and per test set with non-finite batches."""
    rows = _select(df, measure, rho, loss)
    what = f"{measure}" if measure else "the compared cells"
    out = []
    for c in CONTROLS:
        if c not in rows.columns:
            continue
        counts = rows[c].dropna().astype(str).value_counts()
        if len(counts) > 1:
            spread = ", ".join(f"{v} ({n} cells)" for v, n in counts.items())
            extra = " -- correlations are computed per family unless pooled" if c == "family" else ""
            out.append(f"{what}: cells differ in {c}: {spread}{extra}")
    if "n_nonfinite" in rows.columns:
        bad = rows[pd.to_numeric(rows["n_nonfinite"], errors="coerce").fillna(0) > 0]
        for testset, g in bad.groupby("testset", sort=False):
            names = ", ".join(sorted(g["checkpoint"].astype(str).unique())[:5]) if "checkpoint" in g else ""
            policy = ", ".join(sorted(g["nonfinite"].astype(str).unique())) if "nonfinite" in g else "?"
            n_bad = int(pd.to_numeric(g["n_nonfinite"], errors="coerce").fillna(0).sum())
            out.append(
                f"{what}: {testset}: {len(g)} cell(s) with non-finite batches ({n_bad} batches; "
                f"policy {policy}): {names}"
            )
    return out
