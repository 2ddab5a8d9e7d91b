"""The reference papers' claims answered from one results table: estimate, CI, p-value and verdict.

Four claims, each computed within one architecture family (sharpness scales differ between architectures, so
families are never pooled):

* **(a) sharpness rises under domain shift** (Huang et al. 2025, SAM-AntiSpoofing): per checkpoint, the paired
  difference *mean sharpness over the out-of-domain test sets − sharpness on the in-domain set*; Wilcoxon
  signed-rank test over checkpoints, percentile-bootstrap CI of the mean difference.
* **(b) sharpness correlates with out-of-domain EER** (Huang et al. 2025): Spearman's ρ across checkpoints
  between the checkpoint's sharpness and its EER, both averaged over the out-of-domain test sets; exact (or
  Monte-Carlo) permutation p and bootstrap CI over checkpoints (:func:`sharpscope.stats.coefficient`,
  :func:`sharpscope.stats.bootstrap_ci`).
* **(c) SAM/ASAM lowers out-of-domain EER** (Foret et al. 2021; Kwon et al. 2021; Huang et al. 2025): every
  SAM/ASAM checkpoint paired with the ERM checkpoint that matches it in every training setting but the method
  (seed, learning rate, epochs, augmentation, batch size, crop); difference of mean out-of-domain EER.
* **(d) MLDG + LoRA lowers out-of-domain EER compared with full fine-tuning** (Laakkonen et al.): LoRA + MLDG
  checkpoints paired with fully fine-tuned ones of the same seed; difference of mean out-of-domain EER.

Paired tests: Wilcoxon signed-rank (two-sided, scipy) with a percentile-bootstrap CI of the mean when there
are at least :data:`MIN_WILCOXON` pairs; below that the exact Wilcoxon p cannot reach 0.05 (its smallest
two-sided value is 2/2^n), so the paired t-test and its t-interval are used instead.  The verdict rule is
:data:`VERDICT_RULE`; the thresholds are fixed before the data are seen and are written into every table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from .. import stats
from ..errors import SharpscopeError

ALPHA = 0.05
LEVEL = 0.95
MIN_WILCOXON = 6
VERDICT_RULE = (
    "supported: the 95 % CI excludes 0 on the claimed side and p < 0.05; not supported: the 95 % CI "
    "excludes 0 on the opposite side and p < 0.05; undecided: otherwise (the CI contains 0, p >= 0.05, or "
    "too few checkpoints)"
)
# training settings that must agree for two checkpoints to be a matched pair (besides the method)
MATCH_KEYS = ("seed", "lr", "epochs", "batch_size", "nb_samp", "weight_decay", "schedule", "arch")
CLAIM_TEXT = {
    "a": "sharpness rises under domain shift",
    "b": "sharpness correlates with out-of-domain EER across checkpoints",
    "c": "SAM/ASAM lowers out-of-domain EER vs ERM",
    "d": "MLDG + LoRA lowers out-of-domain EER vs full fine-tuning",
}
SOURCE = {
    "a": "Huang et al. 2025",
    "b": "Huang et al. 2025",
    "c": "Huang et al. 2025; Foret et al. 2021; Kwon et al. 2021",
    "d": "Laakkonen et al.",
}


@dataclass(frozen=True)
class Effect:
    """One estimate with its two-sided CI and p-value, and how each was obtained."""

    estimate: float
    ci_lo: float
    ci_hi: float
    p: float
    n: int
    test: str
    ci_method: str


@dataclass
class ClaimsResult:
    table: pd.DataFrame  # one row per claim
    details: pd.DataFrame  # per test set / per pair breakdown
    eer_ci: pd.DataFrame  # EER 95 % CI half-width per test set (over checkpoints)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    # the per-checkpoint / per-pair values behind each claim, for the headline figure
    points: dict[str, pd.DataFrame] = field(default_factory=dict)


def verdict(
    estimate: float, ci_lo: float, ci_hi: float, p: float, direction: int, alpha: float = ALPHA
) -> str:
    """Apply :data:`VERDICT_RULE`; ``direction``: +1 when the claim predicts a positive estimate, else -1."""
    if direction not in (1, -1):
        raise SharpscopeError(f"claim direction must be +1 or -1, got {direction!r}")
    if any(math.isnan(v) for v in (estimate, ci_lo, ci_hi, p)):
        return "undecided"
    lo, hi = sorted((direction * ci_lo, direction * ci_hi))
    if p < alpha and lo > 0:
        return "supported"
    if p < alpha and hi < 0:
        return "not supported"
    return "undecided"


def bootstrap_mean_ci(
    d: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: ``default_rng(seed).integers(0, n, (n_boot, n))`` resamples."""
    arr = np.asarray(d, dtype=float)
    if len(arr) < 2:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(arr), size=(n_boot, len(arr)))
    means = arr[idx].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def paired_effect(
    d: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = LEVEL
) -> Effect:
    """Mean of paired differences with a CI and a two-sided p (see the module docstring for the choice)."""
    arr = np.asarray(d, dtype=float)
    n = len(arr)
    if n < 2:
        return Effect(float(arr.mean()) if n else math.nan, math.nan, math.nan, math.nan, n, "n < 2", "")
    est = float(arr.mean())
    if np.all(arr == 0):
        return Effect(0.0, 0.0, 0.0, 1.0, n, "all differences 0", "")
    if n >= MIN_WILCOXON:
        p = float(sps.wilcoxon(arr, alternative="two-sided").pvalue)
        lo, hi = bootstrap_mean_ci(arr, n_boot, seed, level)
        return Effect(est, lo, hi, p, n, "Wilcoxon signed-rank", f"percentile bootstrap ({n_boot})")
    p = float(sps.ttest_1samp(arr, 0.0).pvalue)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1) * arr.std(ddof=1) / math.sqrt(n))
    return Effect(est, est - half, est + half, p, n, "paired t-test", "t-interval")


def correlation_effect(
    x: Sequence[float], y: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = LEVEL
) -> Effect:
    """Spearman's ρ (scipy) with the permutation p and percentile-bootstrap CI of :mod:`sharpscope.stats`."""
    c = stats.coefficient(x, y, "spearman", seed=seed)
    lo, hi, _ = stats.bootstrap_ci(x, y, "spearman", n_boot=n_boot, seed=seed, level=level)
    return Effect(c.coef, lo, hi, c.p, c.n, f"Spearman, {c.p_method}", f"percentile bootstrap ({n_boot})")


# ---- from a results table ----------------------------------------------------------------------------------


def _full_rows(df: pd.DataFrame) -> pd.DataFrame:
    base, _ = stats.pick_subset(df, None)
    return base


def _family_col(df: pd.DataFrame) -> str | None:
    return "family" if "family" in df.columns else ("arch" if "arch" in df.columns else None)


def sharpness_rows(df: pd.DataFrame, measure: str, rho: float | None, loss: str | None) -> pd.DataFrame:
    """Full-set rows of one sharpness setting (measure, ρ, loss)."""
    base = _full_rows(df)
    rows = base[base["measure"].astype(str) == measure]
    if rho is not None and "rho" in rows.columns:
        rows = rows[np.isclose(rows["rho"].astype(float), rho)]
    if loss is not None and "loss" in rows.columns:
        rows = rows[rows["loss"].astype(str) == loss]
    if "adaptive" in rows.columns:
        rows = rows[~rows["adaptive"].fillna(False).astype(bool)]
    return rows


def _wide(rows: pd.DataFrame, col: str) -> pd.DataFrame:
    return rows.groupby(["checkpoint", "testset"])[col].first().unstack("testset")


def _split_domains(df: pd.DataFrame) -> tuple[str, list[str]]:
    ind = stats.in_domain_testset(df, None)
    ood = [t for t in stats.testset_order(df) if t != ind]
    if not ood:
        raise SharpscopeError("claims need at least one out-of-domain test set besides the in-domain one")
    return ind, ood


def _meta(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in df.columns if c.startswith("meta_")]
    return df.groupby("checkpoint")[cols].first() if cols else pd.DataFrame(index=df["checkpoint"].unique())


def _match_key(meta: pd.DataFrame, ck: str, ignore: Sequence[str]) -> tuple:
    cols = [f"meta_{k}" for k in MATCH_KEYS if f"meta_{k}" in meta.columns]
    cols += [c for c in meta.columns if c.startswith("meta_augment")]
    cols = [c for c in cols if c.removeprefix("meta_") not in ignore]
    return tuple("" if pd.isna(meta.at[ck, c]) else str(meta.at[ck, c]) for c in cols)


def matched_pairs(
    meta: pd.DataFrame, treated: Sequence[str], control: Sequence[str], ignore: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """(treated, control) checkpoint pairs that agree on every :data:`MATCH_KEYS` setting and augmentation
    (minus ``ignore``); a treated checkpoint without an exact match is left out."""
    by_key: dict[tuple, list[str]] = {}
    for c in sorted(control):
        by_key.setdefault(_match_key(meta, c, ignore), []).append(c)
    out = []
    for t in sorted(treated):
        ctrl = by_key.get(_match_key(meta, t, ignore))
        if ctrl:
            out.append((t, ctrl[0]))
    return out


def _row(key: str, family: str, unit: str, e: Effect, direction: int, alpha: float, note: str = "") -> dict:
    return {
        "claim": f"({key}) {CLAIM_TEXT[key]}",
        "source": SOURCE[key],
        "family": family,
        "unit": unit,
        "n": e.n,
        "estimate": e.estimate,
        "ci_lo": e.ci_lo,
        "ci_hi": e.ci_hi,
        "p": e.p,
        "test": e.test,
        "ci_method": e.ci_method,
        "claimed_sign": "+" if direction > 0 else "-",
        "verdict": verdict(e.estimate, e.ci_lo, e.ci_hi, e.p, direction, alpha),
        "note": note,
    }


def _undecided(key: str, family: str, unit: str, direction: int, why: str) -> dict:
    e = Effect(math.nan, math.nan, math.nan, math.nan, 0, "not computed", "")
    return _row(key, family, unit, e, direction, ALPHA, why)


def eer_ci_table(df: pd.DataFrame) -> pd.DataFrame:
    """Half-width of each EER's 95 % bootstrap CI (``eer_ci_lo``/``eer_ci_hi`` of the sweep), per test set:
    median and maximum over checkpoints, in EER percentage points."""
    base = _full_rows(df)
    need = {"eer_ci_lo", "eer_ci_hi", "eer"}
    if not need <= set(base.columns):
        return pd.DataFrame(columns=["testset", "n_checkpoints", "eer_mean_pct", "halfwidth_median_pp"])
    cells = base.groupby(["checkpoint", "testset"])[["eer", "eer_ci_lo", "eer_ci_hi"]].first().reset_index()
    cells["half"] = 100 * (cells["eer_ci_hi"] - cells["eer_ci_lo"]) / 2
    order = [t for t in stats.testset_order(base) if t in set(cells["testset"])]
    g = cells.groupby("testset")
    out = pd.DataFrame(
        {
            "n_checkpoints": g["checkpoint"].nunique(),
            "eer_mean_pct": 100 * g["eer"].mean(),
            "halfwidth_median_pp": g["half"].median(),
            "halfwidth_max_pp": g["half"].max(),
        }
    ).reindex(order)
    return out.reset_index()


def compute_claims(
    df: pd.DataFrame,
    *,
    measure: str = "m-sharpness",
    rho: float | None = 0.05,
    loss: str | None = "weighted-ce",
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = ALPHA,
) -> ClaimsResult:
    """The four claims from a results table (one row each; see the module docstring for the methods).

    The sharpness family for (a)–(c) is the architecture family with the most checkpoints; (d) compares
    LoRA + MLDG checkpoints with fully fine-tuned ones of the same architecture.  A claim the table cannot
    answer is a row with verdict ``undecided`` and a note saying why.
    """
    for col in ("checkpoint", "testset", "measure", "value", "eer"):
        if col not in df.columns:
            raise SharpscopeError(
                f"results table has no {col!r} column; claims need a sharpscope sweep table"
            )
    base = _full_rows(df)
    ind, ood = _split_domains(base)
    fam_col = _family_col(base)
    notes: list[str] = []
    details: list[dict] = []
    rows: list[dict] = []
    points: dict[str, pd.DataFrame] = {}
    sharp = sharpness_rows(base, measure, rho, loss)
    label = f"{measure}" + (f" ρ={rho:g}" if rho is not None else "") + (f" ({loss})" if loss else "")
    eer = _wide(base.dropna(subset=["eer"]), "eer")
    meta = _meta(base)
    method_of = meta["meta_method"] if "meta_method" in meta.columns else pd.Series(dtype=object)
    if fam_col is None:  # a table without family/arch: one family
        fam_of = pd.Series("all", index=pd.Index(base["checkpoint"].unique(), name="checkpoint"))
    else:
        fam_of = base.groupby("checkpoint")[fam_col].first().astype(str)
    counts = fam_of[fam_of.index.isin(sharp["checkpoint"].unique())].value_counts()
    main = str(counts.index[0]) if len(counts) else ""
    if len(counts) > 1:
        notes.append(
            f"claims (a)–(c) use the {main} family ({counts.iloc[0]} checkpoints); other families: "
            + ", ".join(f"{k} ({v})" for k, v in counts.iloc[1:].items())
        )
    in_main = fam_of[fam_of == main].index
    s_wide = _wide(sharp[sharp["checkpoint"].isin(in_main)], "value").dropna()
    ood_here = [t for t in ood if t in s_wide.columns]
    # (a) sharpness under shift
    unit_a = f"checkpoint; {label}: mean over out-of-domain sets − in-domain"
    if ind in s_wide.columns and ood_here and len(s_wide) >= 2:
        d = s_wide[ood_here].mean(axis=1) - s_wide[ind]
        e = paired_effect(d.to_numpy(), n_boot, seed)
        ratio = float(np.median(s_wide[ood_here].mean(axis=1) / s_wide[ind]))
        points["a"] = pd.DataFrame({"in_domain": s_wide[ind], "shifted": s_wide[ood_here].mean(axis=1)})
        rows.append(_row("a", main, unit_a, e, +1, alpha, f"median ratio shifted / in-domain {ratio:.3g}"))
        for t in ood_here:
            et = paired_effect((s_wide[t] - s_wide[ind]).to_numpy(), n_boot, seed)
            details.append({"claim": "a", "testset": t, **_effect_cols(et)})
    else:
        rows.append(_undecided("a", main, unit_a, +1, f"no {label} rows on the in-domain and shifted sets"))
    # (b) sharpness vs out-of-domain EER
    unit_b = f"checkpoint; Spearman of mean {label} and mean EER over out-of-domain sets"
    e_main = eer.reindex(s_wide.index)
    ok = [t for t in ood_here if t in e_main.columns]
    if len(s_wide) >= 3 and ok:
        x = s_wide[ok].mean(axis=1).to_numpy()
        y = e_main[ok].mean(axis=1).to_numpy()
        rows.append(_row("b", main, unit_b, correlation_effect(x, y, n_boot, seed), +1, alpha))
        points["b"] = pd.DataFrame(
            {"sharpness": x, "eer": y, "method": [str(method_of.get(c, "")) for c in s_wide.index]},
            index=s_wide.index,
        )
        for t in ok:
            et = correlation_effect(s_wide[t].to_numpy(), e_main[t].to_numpy(), n_boot, seed)
            details.append({"claim": "b", "testset": t, **_effect_cols(et)})
    else:
        rows.append(_undecided("b", main, unit_b, +1, "fewer than 3 checkpoints with sharpness and EER"))
    # (c) SAM/ASAM vs matched ERM
    ood_eer = eer[[t for t in ood if t in eer.columns]].mean(axis=1)
    method = meta.get("meta_method", pd.Series(dtype=object))
    in_fam = meta.index.isin(in_main)
    sam = [c for c in meta.index[in_fam] if str(method.get(c)) in ("sam", "asam")]
    erm = [c for c in meta.index[in_fam] if str(method.get(c)) == "erm"]
    rows.append(
        _pair_claim("c", main, sam, erm, meta, ood_eer, ("sam_rho", "adaptive"), n_boot, seed, alpha, details)
    )
    points["c"] = _pair_points(details, "c", ood_eer, method_of)
    # (d) LoRA + MLDG vs full fine-tuning of the same backbone.  LoRA models form their own sharpness family
    # (``arch+lora``), but (d) compares EERs, so the arms are matched on the architecture (``meta_arch``,
    # else the family without "+lora") and seed; the learning rate may differ (recipes differ).
    ft = meta.get("meta_finetune", pd.Series(dtype=object))
    arch_of = (
        meta["meta_arch"].astype(str) if "meta_arch" in meta.columns else fam_of.str.replace("+lora", "")
    )
    lora_mldg = [c for c in meta.index if str(method.get(c)) == "mldg" and str(ft.get(c)) == "lora"]
    arch_d = str(arch_of.get(lora_mldg[0], "")) if lora_mldg else ""
    full = [
        c
        for c in meta.index
        if str(arch_of.get(c)) == arch_d and str(method.get(c)) == "erm" and str(ft.get(c)) == "full"
    ]
    fam_d = f"{arch_d}: LoRA+MLDG vs full" if arch_d else ""
    rows.append(
        _pair_claim("d", fam_d, lora_mldg, full, meta, ood_eer, ("lr",), n_boot, seed, alpha, details)
    )
    table = pd.DataFrame(rows)
    settings = {
        "measure": measure,
        "rho": rho,
        "loss": loss,
        "in_domain": ind,
        "out_of_domain": ood,
        "n_boot": n_boot,
        "seed": seed,
        "alpha": alpha,
        "level": LEVEL,
        "min_wilcoxon": MIN_WILCOXON,
        "match_keys": list(MATCH_KEYS),
        "verdict_rule": VERDICT_RULE,
    }
    points["d"] = _pair_points(details, "d", ood_eer, method_of)
    return ClaimsResult(table, pd.DataFrame(details), eer_ci_table(df), notes, settings, points)


def _pair_points(details: list[dict], key: str, ood_eer: pd.Series, method_of: pd.Series) -> pd.DataFrame:
    pairs = [(d["treated"], d["control"]) for d in details if d["claim"] == key and "treated" in d]
    return pd.DataFrame(
        {
            "treated": [t for t, _ in pairs],
            "control": [c for _, c in pairs],
            "treated_method": [str(method_of.get(t, "")) for t, _ in pairs],
            "control_method": [str(method_of.get(c, "")) for _, c in pairs],
            "eer_treated": [100 * ood_eer[t] for t, _ in pairs],
            "eer_control": [100 * ood_eer[c] for _, c in pairs],
        }
    )


def _effect_cols(e: Effect) -> dict:
    return {"n": e.n, "estimate": e.estimate, "ci_lo": e.ci_lo, "ci_hi": e.ci_hi, "p": e.p, "test": e.test}


def _pair_claim(
    key: str,
    family: str,
    treated: list[str],
    control: list[str],
    meta: pd.DataFrame,
    ood_eer: pd.Series,
    ignore: Sequence[str],
    n_boot: int,
    seed: int,
    alpha: float,
    details: list[dict],
) -> dict:
    """Mean out-of-domain EER of treated − matched control, in percentage points (claimed sign −)."""
    unit = "matched pair; mean out-of-domain EER (pp), treated − control"
    if not treated or not control:
        return _undecided(key, family, unit, -1, "the zoo has no checkpoints of one of the two arms")
    pairs = matched_pairs(meta, treated, control, ignore)
    # ignore only settings the arms differ in by design; lr is ignored for (d) (recipes differ)
    if len(pairs) < 2:
        return _undecided(key, family, unit, -1, f"{len(pairs)} matched pair(s); need at least 2")
    d = np.array([100 * (ood_eer[t] - ood_eer[c]) for t, c in pairs])
    e = paired_effect(d, n_boot, seed)
    shared = len({c for _, c in pairs}) < len(pairs)
    keys = [k for k in MATCH_KEYS if k not in ignore]
    note = f"{len(pairs)} of {len(treated)} treated checkpoints matched on {', '.join(keys)} and augmentation"
    if ignore:
        note += f" (not on {', '.join(ignore)}: the arms differ in it by design)"
    if shared:
        note += "; some controls pair with several treated checkpoints (pairs are not independent)"
    for t, c in pairs:
        details.append(
            {
                "claim": key,
                "testset": "mean out-of-domain",
                "treated": t,
                "control": c,
                "n": 1,
                "estimate": 100 * (ood_eer[t] - ood_eer[c]),
            }
        )
    return _row(key, family, unit, e, -1, alpha, note)


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}g}"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The claims table as printed: claim, family, n, estimate [CI], p, test, verdict."""
    return pd.DataFrame(
        {
            "claim": table["claim"],
            "family": table["family"],
            "n": table["n"],
            "estimate [95% CI]": [
                f"{_fmt(e)} [{_fmt(lo)}, {_fmt(hi)}]"
                for e, lo, hi in zip(table["estimate"], table["ci_lo"], table["ci_hi"], strict=True)
            ],
            "p": [_fmt(p, 2) for p in table["p"]],
            "test": table["test"],
            "verdict": table["verdict"],
        }
    )


def claims_markdown(res: ClaimsResult) -> str:
    """Markdown: the claims table, what each estimate is, and the verdict rule."""
    disp = display_table(res.table)
    head = "| " + " | ".join(disp.columns) + " |\n|" + "---|" * len(disp.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in r) + " |\n" for r in disp.itertuples(index=False))
    units = "".join(f"- {r.claim}: {r.unit}. {r.note}\n" for r in res.table.itertuples())
    return head + body + "\n" + units + f"\nVerdict rule: {VERDICT_RULE}.\n"
