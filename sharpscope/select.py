"""Checkpoint selection for an unlabelled target domain, and an honest score of how well it chooses.

The practitioner's question (sharpscope issue 14): *I must ship one of my checkpoints on audio from a new
channel, language or generator and I have no labels there -- which one?*  Huang et al. (2025,
SAM-AntiSpoofing) report that sharpness tracks generalization; this module turns a results table into that
decision and measures what trusting it costs.

**Criteria** (each declares its direction; none reads a label of the target):

* ``<measure>@<rho>`` -- label-free sharpness on the target: rows of ``m-sharpness`` / ``average-case`` /
  ... computed with the loss ``kl-to-clean`` (KL between clean and perturbed predictions; no label enters).
  Lower = flatter = better.  Rows whose utterances were picked by label (``class_mix`` other than
  ``dataset``) are refused; rows batched in the label-stratified order ``balanced`` (the sweep's default) are
  used with a note -- without labels that order is a seeded shuffle, and only batch composition differs.
* ``entropy`` -- mean binary prediction entropy on the target (nats; lower = more certain = better).
* ``confidence`` -- mean max-softmax probability on the target (higher = better).
* ``score-shift`` -- 1-D Wasserstein distance between the log-odds score distributions of the target and the
  in-domain test set of the same checkpoint (lower = less shifted = better); ``score-shift-scaled`` divides
  it by the in-domain 5-95 % spread, so a checkpoint with larger logits is not penalised for its scale.
* ``dev-eer`` -- the source dev EER from training (``meta_dev_eer``); ``source-eer`` -- the EER on the
  in-domain test set.  Both use source labels only (lower = better).
* ``combined`` -- weighted sum of the z-scored (within the target, across checkpoints) oriented criteria,
  with weights ``w_c = max(0, mean Spearman of c with EER on the other out-of-domain test sets)``: fit on
  other domains' labels, never the target's (issue 14, item 3).

The per-cell summaries the criteria need (``lf_entropy``, ``lf_confidence``, ``lf_score_q05..q95``) are
written into every sweep row by :func:`label_free_summaries`.

**Scoring** (where the study knows the target labels): with EERs ``e_1..e_n`` of the n candidate
checkpoints,

* regret = ``100 · (e_chosen − min e)`` in EER percentage points; a tie for the top of a criterion is broken
  uniformly at random and the *expected* regret is reported (so a chosen checkpoint tied with the best EER
  has regret 0, and a constant criterion -- the ``random`` reference -- has regret ``mean e − min e``);
* hit@k = probability (same tie rule) that a checkpoint with the best EER is among the criterion's top k
  (``random``: ``1 − C(n−b, k)/C(n, k)`` for b best checkpoints, k/n when the best is unique);
* Spearman ρ and Kendall τ-b between the criterion oriented as *predicted badness* and the EER (positive =
  the criterion orders the checkpoints like their EER);
* percentile bootstrap CIs over checkpoints: ``np.random.default_rng(seed).integers(0, n, (n_boot, n))``
  drawn once per architecture family, the same draws for every criterion and domain (paired comparisons);
  replicates where a coefficient is undefined are left out and counted;
* leave-one-domain-out: every out-of-domain test set of the study is a target in turn, and the summary
  averages over them, so a criterion is judged across domains, not tuned to one.

Checkpoints are compared within one architecture family (``family``; ``arch`` in older tables) unless
``pool_arch=True``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import stats
from .errors import ScoreError, SharpscopeError

LF_QUANTILES: tuple[float, ...] = tuple(round((i + 0.5) / 10, 2) for i in range(10))
"""Mid-points of 10 equal-mass bins: the quantiles stored per cell (0.05, 0.15, ..., 0.95)."""
LF_QUANTILE_COLUMNS: tuple[str, ...] = tuple(f"lf_score_q{round(100 * q):02d}" for q in LF_QUANTILES)
LF_QUANTILE_METHOD: Final = "inverted_cdf"
LABEL_FREE_LOSSES = ("kl-to-clean",)
LABEL_ORDERS = ("balanced",)
REFERENCES = ("oracle", "random")
METRICS_CORR = ("spearman", "kendall")
DEFAULT_KS = (1, 3)

__all__ = [
    "LF_QUANTILES",
    "LF_QUANTILE_COLUMNS",
    "Criterion",
    "SelectionResult",
    "label_free_summaries",
    "wasserstein_from_quantiles",
    "criterion_values",
    "rank_checkpoints",
    "expected_regret",
    "topk_hit",
    "score_criteria",
    "select",
    "leave_one_domain_out",
    "summary_markdown",
]


# ---- per-cell label-free summaries (written by the sweep) --------------------------------------------------


def label_free_summaries(logits_spoof: Sequence[float], logits_bonafide: Sequence[float]) -> dict[str, float]:
    """Label-free summaries of one cell's per-utterance logits (ordered [spoof, bona fide]).

    ``lf_entropy``: mean binary softmax entropy in nats (0 .. ln 2); ``lf_confidence``: mean max-softmax
    probability (0.5 .. 1); ``lf_score_qXX``: empirical quantiles (``inverted_cdf``, i.e. the inverse CDF
    F⁻¹(u) = inf{x : F(x) >= u}) at u = 0.05, 0.15, ..., 0.95 of the log-odds ``logit_bonafide −
    logit_spoof``.  The log-odds is the softmax's decision variable and invariant to a shared logit offset
    (unlike the bona-fide logit), so distributions of different test sets of one checkpoint are comparable.
    """
    s = np.asarray(logits_spoof, dtype=float).ravel()
    b = np.asarray(logits_bonafide, dtype=float).ravel()
    if s.shape != b.shape or s.size == 0:
        raise ScoreError(
            f"label_free_summaries: got {s.size} spoof and {b.size} bona-fide logits; "
            "need the same number > 0"
        )
    if not (np.isfinite(s).all() and np.isfinite(b).all()):
        raise ScoreError("label_free_summaries: NaN/inf logits; fix the scoring pass first")
    d = b - s
    a = np.abs(d)
    q = 0.5 * (1.0 - np.tanh(0.5 * a))  # smaller class probability sigmoid(-|d|), stable for large |d|
    ent = q * a + np.log1p(np.exp(-a))  # −q ln q − (1−q) ln(1−q), rewritten without log(0)
    out = {"lf_entropy": float(ent.mean()), "lf_confidence": float((1.0 - q).mean())}
    qs = np.quantile(d, LF_QUANTILES, method=LF_QUANTILE_METHOD)
    out.update({c: float(v) for c, v in zip(LF_QUANTILE_COLUMNS, qs, strict=True)})
    return out


def wasserstein_from_quantiles(qa: Sequence[float], qb: Sequence[float]) -> float:
    """1-D Wasserstein-1 distance from two vectors of mid-point quantiles: W1 = ∫|F⁻¹(u) − G⁻¹(u)| du
    by the mid-point rule over equal-mass bins, i.e. ``mean |qa − qb|`` (exact when each sample has as many
    points as there are bins)."""
    a = np.asarray(qa, dtype=float)
    b = np.asarray(qb, dtype=float)
    return float(np.mean(np.abs(a - b)))


# ---- criteria ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """A label-free selection criterion; ``lower_is_better`` declares its direction."""

    name: str
    kind: str  # sharpness | prediction | shift | source | combined | reference
    lower_is_better: bool
    source: str
    description: str

    @property
    def better(self) -> str:
        return "lower" if self.lower_is_better else "higher"


_BUILTIN = {
    "entropy": Criterion(
        "entropy", "prediction", True, "lf_entropy", "mean prediction entropy on the target (nats)"
    ),
    "confidence": Criterion(
        "confidence", "prediction", False, "lf_confidence", "mean max-softmax probability on the target"
    ),
    "score-shift": Criterion(
        "score-shift",
        "shift",
        True,
        "lf_score_q05..q95",
        "Wasserstein-1 between target and in-domain log-odds distributions (same checkpoint)",
    ),
    "score-shift-scaled": Criterion(
        "score-shift-scaled",
        "shift",
        True,
        "lf_score_q05..q95",
        "score-shift / in-domain 5-95 % log-odds spread",
    ),
    "dev-eer": Criterion("dev-eer", "source", True, "meta_dev_eer", "source dev EER from training"),
    "source-eer": Criterion("source-eer", "source", True, "eer (in-domain)", "EER on the in-domain test set"),
}
COMBINED = Criterion(
    "combined",
    "combined",
    False,
    "z-scored criteria",
    "weighted z-scores; weights = mean Spearman on the other out-of-domain sets (target labels unused)",
)
_REFERENCE = {
    "oracle": Criterion("oracle", "reference", True, "eer (target labels)", "the best checkpoint (regret 0)"),
    "random": Criterion("random", "reference", True, "-", "uniform choice (closed form)"),
}


def _reference_testset(base: pd.DataFrame, in_domain: str | None) -> str | None:
    """The in-domain (source) test set; ``None`` when the table has none and none was named (criteria that
    need it are then skipped with a note), an error when ``in_domain`` names a set that is not there."""
    try:
        return stats.in_domain_testset(base, in_domain)
    except SharpscopeError:
        if in_domain is not None:
            raise
        return None


def _per_checkpoint(rows: pd.DataFrame, col: str, where: str) -> pd.Series:
    """A column that is constant within each checkpoint's rows (one cell), as a Series by checkpoint."""
    g = rows.groupby("checkpoint", sort=True)[col]
    spread = g.nunique(dropna=False)
    if (spread > 1).any():
        bad = spread[spread > 1].index[0]
        raise SharpscopeError(
            f"column {col!r} varies within checkpoint {bad!r} on {where}; "
            "filter the table to one scoring setting"
        )
    return pd.to_numeric(g.first(), errors="coerce").astype(float)


def _sharpness_values(
    tgt: pd.DataFrame, target: str, notes: list[str]
) -> tuple[dict[str, pd.Series], dict[str, Criterion], set[str]]:
    """Label-free sharpness criteria on the target; also returns the measures seen only with labelled
    losses."""
    vals: dict[str, pd.Series] = {}
    crit: dict[str, Criterion] = {}
    if "measure" not in tgt.columns or "value" not in tgt.columns:
        return vals, crit, set()
    measured = tgt[tgt["measure"].astype(str) != "none"]
    names = set(measured["measure"].astype(str))
    if "loss" not in measured.columns:
        return vals, crit, names
    lf = measured[measured["loss"].astype(str).isin(LABEL_FREE_LOSSES)]
    names -= set(lf["measure"].astype(str))
    rhos = lf["rho"] if "rho" in lf.columns else pd.Series(np.nan, index=lf.index)
    for (measure, rho), rows in lf.assign(_rho=rhos.fillna(-1.0)).groupby(["measure", "_rho"], sort=True):
        name = str(measure) if rho == -1.0 else f"{measure}@{rho:g}"
        loss = str(rows["loss"].iloc[0])
        if "measure_settings" in rows.columns:
            settings = [json.loads(x) for x in rows["measure_settings"].dropna()]
            mixes = sorted({str(d.get("class_mix", "dataset")) for d in settings} - {"dataset"})
            if mixes:
                notes.append(
                    f"criterion {name} unavailable on {target}: class mix {mixes[0]!r} picks utterances by "
                    "their labels; sweep with class_mix dataset for a label-free estimate"
                )
                continue
            orders = sorted({str(d.get("order", "manifest")) for d in settings} & set(LABEL_ORDERS))
            if orders:
                notes.append(
                    f"criterion {name}: batches were stratified by the labels (order {orders[0]!r}); on "
                    "unlabelled audio that order is a seeded shuffle, so a deployed value can differ "
                    "slightly -- sweep with order shuffled for a strictly label-free estimate"
                )
        v = rows.groupby("checkpoint", sort=True)["value"].agg(
            lambda s: s.mean() if s.notna().all() else np.nan
        )
        vals[name] = v.astype(float)
        crit[name] = Criterion(
            name, "sharpness", True, f"measure={measure}, loss={loss}", f"{measure} ({loss}) on the target"
        )
    return vals, crit, names


def criterion_values(
    df: pd.DataFrame, target: str, *, in_domain: str | None = None, subset: str | None = None
) -> tuple[pd.DataFrame, dict[str, Criterion], list[str]]:
    """Raw values of every label-free criterion on ``target``: (table indexed by checkpoint with one column
    per available criterion, the criteria, notes on unavailable ones).

    Reads only the target's label-free columns (``lf_*``, ``kl-to-clean`` measure rows), the in-domain rows
    of the same checkpoints and ``meta_dev_eer``; never the target's ``eer`` or labelled-loss rows.  A
    criterion with no column (older table) or with a missing value for some checkpoint is left out with a
    note.
    """
    stats.require_columns(df, ["checkpoint", "testset"])
    base, _ = stats.pick_subset(df, subset)
    names = set(base["testset"].astype(str))
    if target not in names:
        raise SharpscopeError(
            f"target test set {target!r} not in the table (test sets: {stats.fmt_choices(names)})"
        )
    tgt = base[base["testset"].astype(str) == target]
    ckpts = sorted(set(tgt["checkpoint"].astype(str)))
    notes: list[str] = []
    cols: dict[str, pd.Series] = {}
    crit: dict[str, Criterion] = {}
    ref = _reference_testset(base, in_domain)
    where = f"test set {target!r}"

    def lf_col(col: str) -> pd.Series | None:
        return _per_checkpoint(tgt, col, where) if col in tgt.columns else None

    for name, col in (("entropy", "lf_entropy"), ("confidence", "lf_confidence")):
        v = lf_col(col)
        if v is None:
            notes.append(f"criterion {name} unavailable: no {col!r} column (older sweep; rerun the sweep)")
        else:
            cols[name], crit[name] = v, _BUILTIN[name]
    # score-distribution shift from the in-domain set of the same checkpoint
    have_q = all(c in base.columns for c in LF_QUANTILE_COLUMNS)
    if not have_q:
        notes.append("criteria score-shift(-scaled) unavailable: no lf_score_q* columns (older sweep)")
    elif ref is None:
        notes.append("criteria score-shift(-scaled) unavailable: no single in-domain test set (--in-domain)")
    elif ref == target:
        notes.append(f"criteria score-shift(-scaled) unavailable: the target {target!r} is the in-domain set")
    else:
        ind = base[base["testset"].astype(str) == ref]
        qt = pd.concat({c: _per_checkpoint(tgt, c, where) for c in LF_QUANTILE_COLUMNS}, axis=1)
        qi = pd.concat({c: _per_checkpoint(ind, c, f"test set {ref!r}") for c in LF_QUANTILE_COLUMNS}, axis=1)
        qi = qi.reindex(qt.index)
        w1 = (qt - qi).abs().mean(axis=1, skipna=False)
        spread = qi[LF_QUANTILE_COLUMNS[-1]] - qi[LF_QUANTILE_COLUMNS[0]]
        cols["score-shift"], crit["score-shift"] = w1, _BUILTIN["score-shift"]
        scaled = w1 / spread.where(spread > 0)
        cols["score-shift-scaled"], crit["score-shift-scaled"] = scaled, _BUILTIN["score-shift-scaled"]
    if "meta_dev_eer" in base.columns:
        dev = pd.to_numeric(base.groupby("checkpoint")["meta_dev_eer"].first(), errors="coerce")
        cols["dev-eer"], crit["dev-eer"] = dev.astype(float), _BUILTIN["dev-eer"]
    else:
        notes.append(
            "criterion dev-eer unavailable: no 'meta_dev_eer' column (checkpoint sidecars lack dev_eer)"
        )
    if ref is not None and ref != target and "eer" in base.columns:
        ind = base[base["testset"].astype(str) == ref]
        cols["source-eer"] = _per_checkpoint(ind, "eer", f"test set {ref!r}")
        crit["source-eer"] = _BUILTIN["source-eer"]
    elif ref is None:
        notes.append("criterion source-eer unavailable: no single in-domain test set (--in-domain)")
    sv, sc, measured = _sharpness_values(tgt, target, notes)
    cols.update(sv)
    crit.update(sc)
    labelled_only = sorted(measured)
    if labelled_only:
        notes.append(
            f"measure(s) {', '.join(labelled_only)} have only labelled losses on the target; label-free "
            "selection needs loss kl-to-clean (add it to the study's measures)"
        )
    table = pd.DataFrame(index=pd.Index(ckpts, name="checkpoint"))
    for name, v in cols.items():
        v = v.reindex(table.index)
        missing = int(v.isna().sum())
        if missing:
            notes.append(
                f"criterion {name} unavailable on {target}: no finite value for {missing} of {len(v)} "
                "checkpoint(s); rerun those cells or filter the table"
            )
            crit.pop(name)
            continue
        table[name] = v.to_numpy(float)
    return table, crit, notes


def _filter_criteria(crit: dict[str, Criterion], by: Sequence[str] | None, all_names: set[str]) -> list[str]:
    """Criterion names to use: all available ones, or those named in ``by`` (a criterion, a measure name for
    all its radii, or ``sharpness`` for every sharpness criterion)."""
    if not by:
        return list(crit)
    out: list[str] = []
    for want in by:
        hits = [
            n
            for n in crit
            if n == want or n.split("@")[0] == want or (want == "sharpness" and crit[n].kind == "sharpness")
        ]
        if not hits and want not in all_names and not any(n.split("@")[0] == want for n in all_names):
            known = sorted(all_names | {"sharpness"})
            raise SharpscopeError(
                f"--by {want!r}: unknown criterion (known: {', '.join(known)}); a sharpness measure counts "
                "only with loss kl-to-clean"
            )
        out += [h for h in hits if h not in out]
    return out


# ---- ranking -----------------------------------------------------------------------------------------------


def _goodness(values: np.ndarray, c: Criterion) -> np.ndarray:
    return -values if c.lower_is_better else values


def _weight_rows(family: str, held_out: str, w: dict[str, float], fit_on: list[str]) -> list[dict]:
    """One row per criterion of a combined criterion's normalised weights (and where they were fit)."""
    total, where = sum(w.values()), ",".join(fit_on)
    return [
        {"family": family, "held_out": held_out, "criterion": c, "weight": wc / total, "fit_on": where}
        for c, wc in w.items()
    ]


def rank_checkpoints(table: pd.DataFrame, criteria: dict[str, Criterion]) -> pd.DataFrame:
    """Long ranking: one row per (criterion, checkpoint); rank 1 = ship first, ties share the lowest rank
    (listed by checkpoint name)."""
    rows = []
    for name, c in criteria.items():
        if name not in table.columns:
            continue
        v = table[name].to_numpy(float)
        g = _goodness(v, c)
        rank = sps.rankdata(-g, method="min").astype(int)
        order = np.lexsort((table.index.to_numpy(str), rank))
        for i in order:
            rows.append(
                {
                    "criterion": name,
                    "kind": c.kind,
                    "better": c.better,
                    "rank": int(rank[i]),
                    "checkpoint": str(table.index[i]),
                    "value": float(v[i]),
                }
            )
    return pd.DataFrame(rows, columns=["criterion", "kind", "better", "rank", "checkpoint", "value"])


# ---- scoring -----------------------------------------------------------------------------------------------


def expected_regret(goodness: np.ndarray, eer: np.ndarray) -> np.ndarray:
    """Row-wise expected regret (EER fraction) of choosing the top of ``goodness``, ties broken uniformly:
    mean EER of the top-tied checkpoints minus the best EER.  Inputs (B, n) or (n,)."""
    g = np.atleast_2d(np.asarray(goodness, dtype=float))
    e = np.atleast_2d(np.asarray(eer, dtype=float))
    top = g == g.max(axis=-1, keepdims=True)
    return np.maximum((e * top).sum(-1) / top.sum(-1) - e.min(-1), 0.0)  # clip float round-off below 0


def topk_hit(goodness: np.ndarray, eer: np.ndarray, k: int) -> np.ndarray:
    """Row-wise probability that a best-EER checkpoint is among the top ``k`` of ``goodness`` when ties are
    broken uniformly at random (hypergeometric over the tie group at the boundary)."""
    g = np.atleast_2d(np.asarray(goodness, dtype=float))
    e = np.atleast_2d(np.asarray(eer, dtype=float))
    best = e == e.min(axis=-1, keepdims=True)
    gb = np.where(best, g, -np.inf).max(axis=-1, keepdims=True)  # best goodness among the best checkpoints
    above = (g > gb).sum(-1)
    tie = g == gb
    eq = tie.sum(-1)
    beq = (tie & best).sum(-1)
    r = np.clip(k - above, 0, eq)  # slots left for the tie group
    miss = np.ones(len(g))
    for i in range(int(r.max(initial=0))):
        active = i < r
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(active, (eq - beq - i) / np.where(active, eq - i, 1), 1.0)
        miss *= np.clip(f, 0.0, 1.0)
    return np.where(r > 0, 1.0 - miss, 0.0)


def _metrics(g: np.ndarray, e: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    out = {"regret_pp": 100.0 * expected_regret(g, e)}
    for k in ks:
        out[f"hit@{k}"] = topk_hit(g, e, k)
    for m in METRICS_CORR:
        out[m] = stats.batch_coefficient(-g, e, m)  # predicted badness vs EER
    return out


def _percentile_ci(vals: np.ndarray, level: float) -> tuple[float, float, int]:
    ok = vals[np.isfinite(vals)]
    if len(ok) == 0:
        return math.nan, math.nan, 0
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(ok, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi), len(ok)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """The checkpoint resamples: ``np.random.default_rng(seed).integers(0, n, (n_boot, n))``."""
    return np.random.default_rng(seed).integers(0, n, size=(max(0, n_boot), n))


def score_criteria(
    goodness: dict[str, np.ndarray],
    eer: np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    idx: np.ndarray | None = None,
    level: float = 0.95,
) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """Regret / hit@k / Spearman / Kendall of each criterion (``goodness``: higher = ship first) against the
    target ``eer``, with percentile bootstrap CIs over the resamples ``idx`` (rows of checkpoint indices).

    Returns the table (one row per criterion, plus the ``oracle`` and ``random`` references) and the
    bootstrap replicates per criterion and metric (for averaging across domains with the same draws).
    """
    e = np.asarray(eer, dtype=float)
    n = len(e)
    allg = dict(goodness)
    allg["oracle"] = -e
    allg["random"] = np.zeros(n)
    rows, reps = [], {}
    for name, g in allg.items():
        g = np.asarray(g, dtype=float)
        point = {m: float(v[0]) for m, v in _metrics(g, e, ks).items()}
        boot = _metrics(g[idx], e[idx], ks) if idx is not None and len(idx) else {}
        if name == "random":  # constant criterion: no ordering, correlation 0 by construction
            point.update(spearman=0.0, kendall=0.0)
            boot = {m: (np.zeros(len(v)) if m in METRICS_CORR else v) for m, v in boot.items()}
        row: dict = {"criterion": name, "n": n}
        notes = []
        for m, v in point.items():
            row[m] = v
            lo, hi, n_ok = _percentile_ci(boot[m], level) if boot else (math.nan, math.nan, 0)
            row[f"{m}_lo"], row[f"{m}_hi"] = lo, hi
            if boot and n_ok < len(boot[m]) and m in METRICS_CORR:
                notes.append(f"{m}: {len(boot[m]) - n_ok} degenerate resamples left out")
        row["note"] = "; ".join(notes)
        rows.append(row)
        reps[name] = boot
    return pd.DataFrame(rows), reps


# ---- the study-level procedure -----------------------------------------------------------------------------


@dataclass
class SelectionResult:
    """Everything ``sharpscope select`` shows and writes."""

    target: str
    ranking: pd.DataFrame
    target_scores: pd.DataFrame
    lodo: pd.DataFrame
    lodo_summary: pd.DataFrame
    weights: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)


def _families(df: pd.DataFrame, pool_arch: bool, notes: list[str]) -> dict[str, pd.DataFrame]:
    """Checkpoints grouped by architecture family (the ``family`` column; ``arch`` in older tables)."""
    col = "family" if "family" in df.columns else ("arch" if "arch" in df.columns else None)
    if col is None:
        notes.append("no 'family' or 'arch' column: all checkpoints compared as one family")
        return {"all": df}
    arch = df[col].fillna("unknown").astype(str)
    counts = df.assign(_a=arch).groupby("_a")["checkpoint"].nunique()
    desc = ", ".join(f"{a} ({n})" for a, n in counts.items())
    if pool_arch:
        notes.append(f"--pool-arch: checkpoints of all architecture families compared together: {desc}")
        return {"pooled": df}
    if len(counts) > 1:
        notes.append(
            f"checkpoints compared within each architecture family ({col}): {desc}; "
            "--pool-arch compares across"
        )
    return {a: df[arch == a] for a in counts.index}


def _ood_testsets(base: pd.DataFrame, ref: str | None) -> list[str]:
    names = stats.testset_order(base) if "eer" in base.columns else list(dict.fromkeys(base["testset"]))
    ind = set()
    if "in_domain" in base.columns:
        ind = set(base.loc[base["in_domain"].astype(bool), "testset"].astype(str))
    return [str(t) for t in names if str(t) not in ind and str(t) != ref]


def _target_eer(base: pd.DataFrame, t: str) -> pd.Series:
    if "eer" not in base.columns:
        return pd.Series(dtype=float)
    rows = base[base["testset"].astype(str) == t]
    return _per_checkpoint(rows, "eer", f"test set {t!r}")


def _zscore(g: np.ndarray) -> np.ndarray:
    sd = g.std()
    return np.zeros_like(g) if sd == 0 or not np.isfinite(sd) else (g - g.mean()) / sd


def _fit_weights(
    data: dict[str, tuple[pd.DataFrame, dict[str, Criterion], pd.Series]],
    held_out: str,
    names: Sequence[str],
    labelled: Sequence[str],
) -> tuple[dict[str, float], list[str]]:
    """w_c = max(0, mean over the other labelled out-of-domain sets of Spearman(badness_c, EER))."""
    fit_on = [t for t in labelled if t != held_out]
    w: dict[str, float] = {}
    for c in names:
        rhos = []
        for t in fit_on:
            table, crit, eer = data[t]
            if c not in crit:
                continue
            e = eer.reindex(table.index).to_numpy(float)
            ok = np.isfinite(e)
            if ok.sum() < 3:
                continue
            r = stats.batch_coefficient(-_goodness(table[c].to_numpy(float), crit[c])[ok], e[ok], "spearman")[
                0
            ]
            if np.isfinite(r):
                rhos.append(float(r))
        w[c] = max(0.0, float(np.mean(rhos))) if rhos else 0.0
    return w, fit_on


def _combined(table: pd.DataFrame, crit: dict[str, Criterion], w: dict[str, float]) -> np.ndarray:
    total = sum(w.values())
    g = np.zeros(len(table))
    for c, wc in w.items():
        if wc > 0:
            g += wc / total * _zscore(_goodness(table[c].to_numpy(float), crit[c]))
    return g


def select(
    df: pd.DataFrame,
    target: str,
    *,
    by: Sequence[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    in_domain: str | None = None,
    subset: str | None = None,
    pool_arch: bool = False,
    combine: bool = True,
) -> SelectionResult:
    """Rank the checkpoints for ``target`` by every label-free criterion, and -- where the study knows the
    labels -- score each criterion on the target and leave-one-domain-out over every out-of-domain test set.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise SharpscopeError(f"--k needs positive integers (got {ks})")
    if n_boot < 0:
        raise SharpscopeError(f"--n-boot must be >= 0 (got {n_boot})")
    if not 0 < level < 1:
        raise SharpscopeError(f"level must be in (0, 1) (got {level})")
    stats.require_columns(df, ["checkpoint", "testset"])
    notes: list[str] = []
    base, subset_used = stats.pick_subset(df, subset)
    ref = _reference_testset(base, in_domain)
    if target not in set(base["testset"].astype(str)):
        raise SharpscopeError(
            f"target test set {target!r} not in the table (test sets: {stats.fmt_choices(base['testset'])})"
        )
    ood = _ood_testsets(base, ref)
    rankings, scores, weights_rows = [], [], []
    reps_all: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    domains_scored: dict[str, list[str]] = {}
    for fam, fdf in _families(base, pool_arch, notes).items():
        fnotes: list[str] = []
        data = {}
        for t in dict.fromkeys([target, *ood]):
            if t not in set(fdf["testset"].astype(str)):
                continue
            table, crit, n = criterion_values(fdf, t, in_domain=ref, subset=None)  # fdf is already one subset
            fnotes += [x for x in n if x not in fnotes]
            data[t] = (table, crit, _target_eer(fdf, t))
        if target not in data:
            notes.append(f"[{fam}] no rows on target {target!r}; family skipped")
            continue
        all_names = set().union(*(set(c) for _, c, _ in data.values())) | set(_BUILTIN)
        names = _filter_criteria(data[target][1], by, all_names)  # ranked on the target
        union = {c: v for _, cr, _ in data.values() for c, v in cr.items()}
        scored_names = _filter_criteria(union, by, all_names)  # scored wherever available
        # labelled domains: every checkpoint of the family has a finite EER there
        labelled = [t for t in data if len(data[t][2]) and data[t][2].reindex(data[t][0].index).notna().all()]
        unlabelled = [t for t in data if t not in labelled]
        if target in unlabelled:
            fnotes.append(
                f"target {target!r} has no (complete) EER: ranking only, no regret (as in deployment)"
            )
        # the ranking on the target (labels of the target never read)
        table, crit, _ = data[target]
        use = {c: crit[c] for c in names if c in crit}
        if combine:
            w, fit_on = _fit_weights(data, target, list(use), [t for t in labelled if t in ood])
            if fit_on and sum(v > 0 for v in w.values()) >= 2:
                table = table.assign(combined=_combined(table, crit, w))
                use["combined"] = COMBINED
                fnotes.append(
                    f"combined criterion for {target}: weights fit on {', '.join(fit_on)} without the "
                    "target's labels"
                )
                weights_rows += _weight_rows(fam, target, w, fit_on)
            else:
                fnotes.append(
                    f"combined criterion unavailable for {target}: fewer than two criteria correlate "
                    "positively with EER on the other labelled out-of-domain sets (or there are none)"
                )
        rk = rank_checkpoints(table, use)
        rk.insert(0, "family", fam)
        rankings.append(rk)
        # scoring: the target (if labelled) and leave-one-domain-out over the labelled out-of-domain sets
        scored = [t for t in dict.fromkeys([target, *ood]) if t in labelled]
        ck = sorted(set.intersection(*(set(data[t][0].index) for t in scored))) if scored else []
        if scored and len(ck) < 2:
            fnotes.append(f"[{fam}] fewer than 2 checkpoints with EERs: nothing to score")
            scored = []
        idx = bootstrap_indices(len(ck), n_boot, seed) if scored else None
        domains_scored[fam] = scored
        for t in scored:
            table_t, crit_t, eer_t = data[t]
            dropped = len(table_t) - len(ck)
            if dropped:
                fnotes.append(f"{t}: {dropped} checkpoint(s) without EERs on every scored domain left out")
            table_t = table_t.loc[ck]
            e = eer_t.reindex(ck).to_numpy(float)
            good = {c: _goodness(table_t[c].to_numpy(float), crit_t[c]) for c in scored_names if c in crit_t}
            if combine:
                w, fit_on = _fit_weights(data, t, list(good), [x for x in labelled if x in ood])
                if fit_on and sum(v > 0 for v in w.values()) >= 2:
                    good["combined"] = _combined(table_t, crit_t, w)
                    if t != target:
                        weights_rows += _weight_rows(fam, t, w, fit_on)
            tab, reps = score_criteria(good, e, ks=ks, idx=idx, level=level)
            kinds = {
                **{c: crit_t[c].kind for c in crit_t},
                "combined": "combined",
                "oracle": "reference",
                "random": "reference",
            }
            tab.insert(0, "family", fam)
            tab.insert(1, "domain", t)
            tab.insert(3, "kind", tab["criterion"].map(kinds))
            scores.append(tab)
            for c, r in reps.items():
                reps_all[(fam, t, c)] = r
        for k in ks:
            if ck and k >= len(ck):
                fnotes.append(f"[{fam}] k={k} >= {len(ck)} checkpoints: hit@{k} is 1 for every criterion")
        if 0 < len(ck) < 10:
            fnotes.append(f"[{fam}] only {len(ck)} checkpoints: CIs are wide and regret is coarse")
        notes += [f"[{fam}] {x}" if not x.startswith("[") else x for x in fnotes]
    ranking = pd.concat(rankings, ignore_index=True) if rankings else pd.DataFrame()
    allscores = pd.concat(scores, ignore_index=True) if scores else pd.DataFrame()
    target_scores = allscores[allscores["domain"] == target] if len(allscores) else allscores
    lodo = allscores[allscores["domain"].isin(ood)] if len(allscores) else allscores
    summary = _summarise(lodo, reps_all, ks, level)
    settings = {
        "target": target,
        "in_domain": ref,
        "subset": subset_used,
        "ks": list(ks),
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "pool_arch": pool_arch,
        "by": list(by or []),
        "combine": combine,
        "lodo_domains": {f: [t for t in d if t in ood] for f, d in domains_scored.items()},
        "regret_unit": "EER percentage points",
        "bootstrap": "np.random.default_rng(seed).integers(0, n, (n_boot, n)) per family; same draws for "
        "every criterion and domain; percentile CI",
        "ties": "uniform random tie-breaking, expected value reported",
        "shift": f"Wasserstein-1 of log-odds quantiles {list(LF_QUANTILES)} ({LF_QUANTILE_METHOD})",
        "combined_weights": "max(0, mean Spearman on the other labelled out-of-domain sets), normalised; "
        "needs >= 2 positive weights; z-scores and weights fixed within bootstrap resamples",
    }
    return SelectionResult(
        target=target,
        ranking=ranking,
        target_scores=target_scores.reset_index(drop=True),
        lodo=lodo.reset_index(drop=True),
        lodo_summary=summary,
        weights=pd.DataFrame(weights_rows, columns=["family", "held_out", "criterion", "weight", "fit_on"]),
        notes=notes,
        settings=settings,
    )


def leave_one_domain_out(
    df: pd.DataFrame, *, in_domain: str | None = None, subset: str | None = None, **kw
) -> SelectionResult:
    """Score every criterion with each out-of-domain test set of the study held out in turn (the report's
    view): :func:`select` with the first out-of-domain set as the nominal target; ``lodo`` and
    ``lodo_summary`` cover all of them."""
    stats.require_columns(df, ["checkpoint", "testset", "eer"])
    base, _ = stats.pick_subset(df, subset)
    ref = _reference_testset(base, in_domain)
    ood = _ood_testsets(base, ref)
    if not ood:
        raise SharpscopeError("no out-of-domain test set in the table: nothing to hold out")
    return select(df, ood[0], in_domain=ref, subset=subset, **kw)


def _summarise(
    lodo: pd.DataFrame,
    reps: dict[tuple[str, str, str], dict[str, np.ndarray]],
    ks: Sequence[int],
    level: float,
) -> pd.DataFrame:
    """Mean over the leave-one-domain-out targets per (family, criterion); CIs from the per-replicate means
    (the same checkpoint draws in every domain)."""
    if lodo.empty:
        return pd.DataFrame()
    metrics = ["regret_pp", *(f"hit@{k}" for k in ks), *METRICS_CORR]
    rows = []
    n_dom = lodo.groupby("family")["domain"].nunique()
    for (fam, crit), g in lodo.groupby(["family", "criterion"], sort=False):
        row = {"family": fam, "criterion": crit, "kind": g["kind"].iloc[0], "n_domains": len(g)}
        for m in metrics:
            row[m] = float(g[m].mean())
            stack = [reps[(fam, t, crit)][m] for t in g["domain"] if reps.get((fam, t, crit))]
            if stack:
                with np.errstate(invalid="ignore"):
                    mean_rep = np.mean(np.stack(stack), axis=0)
                row[f"{m}_lo"], row[f"{m}_hi"], _ = _percentile_ci(mean_rep, level)
            else:
                row[f"{m}_lo"] = row[f"{m}_hi"] = math.nan
        row["note"] = "" if len(g) == n_dom[fam] else f"available on {len(g)} of {n_dom[fam]} domains"
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["family", "regret_pp", "criterion"], kind="mergesort").reset_index(drop=True)


# ---- text output -------------------------------------------------------------------------------------------


def _ci_text(row: pd.Series | dict, m: str, fmt: str = "{:.2f}") -> str:
    v, lo, hi = row[m], row.get(f"{m}_lo", math.nan), row.get(f"{m}_hi", math.nan)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    s = fmt.format(v)
    if lo is not None and not (isinstance(lo, float) and math.isnan(lo)):
        s += f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return s


def compact_scores(tab: pd.DataFrame, ks: Sequence[int], by_domain: bool = True) -> pd.DataFrame:
    """A display table: one text cell per metric with its CI."""
    if tab.empty:
        return tab
    cols = ["family", *(["domain"] if by_domain and "domain" in tab.columns else []), "criterion", "kind"]
    if "n_domains" in tab.columns:
        cols.append("n_domains")
    elif "n" in tab.columns:
        cols.append("n")
    out = tab[cols].copy()
    out["regret (EER pp)"] = [_ci_text(r, "regret_pp") for _, r in tab.iterrows()]
    for k in ks:
        out[f"hit@{k}"] = [_ci_text(r, f"hit@{k}") for _, r in tab.iterrows()]
    for m in METRICS_CORR:
        out[m] = [_ci_text(r, m) for _, r in tab.iterrows()]
    if "note" in tab.columns:
        out["note"] = tab["note"].to_numpy()
    return out


def regret_by_domain(lodo: pd.DataFrame) -> pd.DataFrame:
    """Criterion × held-out domain table of regret (EER pp) with its CI, as text cells."""
    if lodo.empty:
        return lodo
    cells = lodo.assign(cell=[_ci_text(r, "regret_pp") for _, r in lodo.iterrows()])
    wide = cells.pivot_table(
        index=["family", "criterion"], columns="domain", values="cell", aggfunc="first", sort=False
    )
    wide = wide.reset_index()
    wide.columns.name = None
    return wide


def ranking_wide(ranking: pd.DataFrame, family: str, top: int | None = None) -> pd.DataFrame:
    """Position × criterion table of checkpoint names (rank in parentheses when tied)."""
    r = ranking[ranking["family"] == family]
    cols = {}
    for c, g in r.groupby("criterion", sort=False):
        cols[f"{c} ({g['better'].iloc[0]})"] = [
            f"{ck} (={rk})" if (g["rank"] == rk).sum() > 1 else ck
            for ck, rk in zip(g["checkpoint"], g["rank"], strict=True)
        ]
    n = max((len(v) for v in cols.values()), default=0)
    n = min(n, top) if top else n
    return pd.DataFrame({"position": range(1, n + 1), **{k: v[:n] for k, v in cols.items()}})


def _fmt(v: object) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if math.isnan(v) else f"{float(v):.3g}"
    return str(v)


def to_markdown(tab: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``tab`` (``|`` escaped)."""
    esc = [str(c).replace("|", "\\|") for c in tab.columns]
    lines = ["| " + " | ".join(esc) + " |", "|" + "|".join("---" for _ in esc) + "|"]
    for row in tab.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(res: SelectionResult) -> str:
    """The Markdown summary written by ``sharpscope select --out``."""
    ks = res.settings.get("ks", list(DEFAULT_KS))
    lines = [f"# Checkpoint selection for target `{res.target}`\n"]
    lines.append(
        "Every criterion below is computed without the target's labels.  Regret is in EER percentage points "
        "(EER of the chosen checkpoint − best EER); `oracle` (regret 0) and `random` (expected regret of a "
        "uniform choice) are reference lines.  CIs: percentile bootstrap over checkpoints.\n"
    )
    for fam in dict.fromkeys(res.ranking["family"]) if len(res.ranking) else []:
        lines.append(f"## Ranking ({fam})\n\n" + to_markdown(ranking_wide(res.ranking, fam, top=10)))
    if len(res.target_scores):
        lines.append("## Scores on the target (its labels known in this study)\n")
        lines.append(to_markdown(compact_scores(res.target_scores, ks, by_domain=False)))
    if len(res.lodo_summary):
        lines.append("## Leave-one-domain-out: mean over the out-of-domain test sets\n")
        lines.append(to_markdown(compact_scores(res.lodo_summary, ks)))
        lines.append("## Leave-one-domain-out: per domain\n")
        lines.append(to_markdown(compact_scores(res.lodo, ks)))
    if len(res.weights):
        lines.append(
            "## Weights of the combined criterion\n\nFit on the other labelled out-of-domain sets "
            "(`fit_on`), never on the held-out domain's labels.\n"
        )
        lines.append(to_markdown(res.weights))
    if res.notes:
        lines.append("## Notes\n\n" + "\n".join(f"- {n}" for n in res.notes) + "\n")
    lines.append("## Settings\n\n```json\n" + json.dumps(res.settings, indent=1, sort_keys=True) + "\n```\n")
    return "\n".join(lines)
