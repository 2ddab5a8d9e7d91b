"""Budgeted studies: every cell's EER and sharpness from a stratified subsample, sized for a target CI.

A study with a ``budget:`` section does not score every utterance.  Per evaluation set (a test set or a subset
step) all checkpoints see the *same* nested, stratified subsample, which grows in rounds until the confidence
interval of the study's final statistic -- the correlation coefficient between each sharpness measure and the
EER across checkpoints -- is at most ``target`` wide (half-width), or the budget ends::

    budget:
      target: 0.15          # wanted 95 % CI half-width of the correlation coefficient (required)
      max_fraction: 0.25    # at most this share of each evaluation set (default 1.0)
      max_utts: 20000       # and at most this many utterances of each (optional)
      pilot: 512            # first-round sample size per evaluation set (default 512)
      growth: 2.0           # a round grows the sample by at most this factor (default 2)
      seed: 0               # seeds the subsample (keyed by utterance id) and every bootstrap
      stratify: auto        # label + attack/codec/transmission where the manifest has them; or a list
      correlation: spearman # spearman | pearson | kendall
      n_boot: 1000          # bootstrap draws (EER CI, sharpness CI over batches, correlation CI)
      stop_at_floor: true   # stop when the floor is above the target (false: grow until the budget ends)
      min_batches: 10       # the pilot holds at least this many batches (a bootstrap over 2 batches is no CI)

The statistics, and why:

* **Subsample.**  Each utterance gets a uniform key from a hash of ``(seed, utt_id)``; within a stratum
  (label × condition columns) utterances are ranked by key and the k-th of a stratum of size ``N_h`` is placed
  at ``(k + 1/2) / N_h``; the subsample of size n is the first n of the merged order.  Every prefix therefore
  holds each stratum within about one utterance of its proportional share (proportional allocation), and a
  larger subsample contains every smaller one, so each round only scores the increment.  Membership depends
  on the *set* of utterance ids, not on how the manifest is sorted.
* **EER CI.**  The class-stratified percentile bootstrap of :func:`sharpscope.metrics.bootstrap_eer_ci` on
  the subsample, shrunk towards the estimate by the finite-population factor ``sqrt(1 - f)`` (f = n / N):
  the target is the EER of the whole evaluation set, a fixed finite population sampled without replacement
  (Cochran, *Sampling Techniques*, 1977, §2.5); at f = 1 the interval is the exact value.  A small
  subsample with no errors makes every bootstrap replicate 0 (a zero-width interval), so the reported interval
  is the union with a Wilson score interval of the EER read as a proportion with effective size
  ``min(n_bonafide, n_spoof) / (1 - f)``: to first order the estimated EER is a weighted mean
  ``w·FRR + (1 − w)·FAR`` at the crossing (w set by the two score densities there), so its variance is at most
  the larger of the two binomial variances, whatever the densities.
* **Sharpness CI.**  Batchwise estimators (m-sharpness, worst-case, average-case) are size-weighted means of
  per-batch values; increments are batched on their own, so the estimate after a round is the mean over the
  batches of all rounds, with the bootstrap CI over batches of
  :func:`sharpscope.sharpness.base.weighted_summary`, widened by ``sqrt(1 + f)``: the full-set value is itself
  a mean over one *other* random partition into batches, so estimate minus full-set value carries the
  batch-interaction variance of both (the additive per-utterance part only has ``1 - f``).
* **Correlation CI.**  Parametric bootstrap over cell values (each cell drawn once per replicate from a
  normal with its CI's standard error) combined with the bootstrap over checkpoints (resampled with
  replacement); percentile interval.  The same checkpoint resamples with zero cell noise give the *floor*:
  the half-width that no sample size can beat (it is set by the number of checkpoints).
* **Sample-size rule** (:func:`next_size`).  The squared half-width is modelled as ``floor² + c / n``
  (cell variances fall as 1/n), so ``c = (h² − floor²)·n`` and the target needs ``n* = c / (target² −
  floor²)``; the next size is ``n*`` clipped to ``[n + step, growth·n]``, rounded up to whole batches and
  capped by the budget.  The study stops when every correlation of the evaluation set meets the target, when
  the floor is at or above the target (more utterances cannot help: add checkpoints), or when the budget ends;
  the reason is recorded.

Every row records what was used: ``budget_n`` / ``budget_n_total`` / ``budget_fraction``, the seed, strata,
rounds and sizes, the inflated sharpness CI (``ci_lo``/``ci_hi``, ``stderr``; raw batch stderr in
``stderr_batches``), the adjusted EER CI (``eer_ci_lo``/``eer_ci_hi``) and the correlation with its CI and
floor.  Budgeted cells have their own cell ids (the budget is part of the key), so they never stand in for
full-set cells.  Rounds need every cell's estimate before sizing the next, so budgeted studies run in process
(``--executor local``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, TypeGuard

import numpy as np
import pandas as pd

from ..errors import SharpscopeError, SpecError

Z95 = 1.959963984540054  # standard normal 97.5 % quantile
CONDITION_COLUMNS = ("attack", "codec", "transmission")
CORRELATIONS = ("spearman", "pearson", "kendall")
_KEYS = (
    "target",
    "max_fraction",
    "max_utts",
    "pilot",
    "growth",
    "seed",
    "stratify",
    "correlation",
    "n_boot",
    "stop_at_floor",
    "min_batches",
)


@dataclass(frozen=True)
class BudgetSpec:
    """The ``budget:`` section of a study spec (module docstring)."""

    target: float
    max_fraction: float = 1.0
    max_utts: int | None = None
    pilot: int = 512
    growth: float = 2.0
    seed: int = 0
    stratify: tuple[str, ...] | str = "auto"
    correlation: str = "spearman"
    n_boot: int = 1000
    stop_at_floor: bool = True
    min_batches: int = 10

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stratify"] = self.stratify if isinstance(self.stratify, str) else list(self.stratify)
        return d


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def parse_budget(raw: Any, problems: list[str]) -> BudgetSpec | None:
    """The study's ``budget:`` mapping as a :class:`BudgetSpec`; problems appended one line each."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append("budget: must be a mapping with at least 'target' (CI half-width of the correlation)")
        return None
    n0 = len(problems)
    for k in raw:
        if k not in _KEYS:
            problems.append(f"budget.{k}: unknown key (allowed: {', '.join(_KEYS)})")
    t = raw.get("target")
    if not _is_num(t) or not 0 < float(t) <= 2:
        problems.append(f"budget.target: {t!r} must be a CI half-width of the correlation, in (0, 2]")
    f = raw.get("max_fraction", 1.0)
    if not _is_num(f) or not 0 < float(f) <= 1:
        problems.append(f"budget.max_fraction: {f!r} must be a number in (0, 1]")
    mu = raw.get("max_utts")
    if mu is not None and (not _is_int(mu) or mu < 2):
        problems.append(f"budget.max_utts: {mu!r} must be an integer >= 2 (or left out)")
    pilot = raw.get("pilot", 512)
    if not _is_int(pilot) or pilot < 2:
        problems.append(f"budget.pilot: {pilot!r} must be an integer >= 2")
    g = raw.get("growth", 2.0)
    if not _is_num(g) or not 1 < float(g) <= 16:
        problems.append(f"budget.growth: {g!r} must be a number in (1, 16]")
    seed = raw.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        problems.append(f"budget.seed: {seed!r} must be an integer >= 0")
    strat = raw.get("stratify", "auto")
    listed = isinstance(strat, list) and all(isinstance(s, str) and s for s in strat)
    if strat != "auto" and not listed:
        problems.append(f"budget.stratify: {strat!r} must be auto or a list of manifest column names")
    corr = raw.get("correlation", "spearman")
    if corr not in CORRELATIONS:
        problems.append(f"budget.correlation: {corr!r} is not one of {', '.join(CORRELATIONS)}")
    nb = raw.get("n_boot", 1000)
    if not _is_int(nb) or nb < 100:
        problems.append(f"budget.n_boot: {nb!r} must be an integer >= 100")
    mb = raw.get("min_batches", 10)
    if not _is_int(mb) or mb < 2:
        problems.append(f"budget.min_batches: {mb!r} must be an integer >= 2")
    saf = raw.get("stop_at_floor", True)
    if not isinstance(saf, bool):
        problems.append(f"budget.stop_at_floor: {saf!r} must be true or false (unquoted)")
    if len(problems) > n0:
        return None
    assert t is not None  # a missing target was reported above
    return BudgetSpec(
        target=float(t),
        max_fraction=float(f),
        max_utts=mu,
        pilot=int(pilot),
        growth=float(g),
        seed=int(seed),
        stratify="auto" if strat == "auto" else tuple(strat),
        correlation=str(corr),
        n_boot=int(nb),
        stop_at_floor=saf,
        min_batches=int(mb),
    )


def budget_problems(budget: BudgetSpec, measures: Sequence[Any], n_checkpoints: int) -> list[str]:
    """Study-level checks: a correlation across checkpoints needs >= 3 of them and batchwise measures."""
    from ..sharpness.registry import estimator_class

    out: list[str] = []
    if n_checkpoints < 3:
        out.append(
            f"budget: a correlation across checkpoints needs at least 3 checkpoints, the study has "
            f"{n_checkpoints}; add checkpoints or remove the budget section"
        )
    if not measures:
        out.append("budget: needs at least one sharpness measure (the target is on its correlation with EER)")
    for m in measures:
        try:
            batchwise = hasattr(estimator_class(m.name), "session")
        except SharpscopeError:
            continue  # reported by the measure checks
        if not batchwise:
            out.append(
                f"budget: measure {m.name!r} is not a mean over batches, so it cannot be grown from nested "
                "subsamples; use m-sharpness, worst-case or average-case, or remove the budget section"
            )
        for k in ("budget", "ci_width"):
            if m.settings.get(k) is not None:
                out.append(
                    f"budget: measure {m.name!r} sets {k}; the study budget sizes the samples, drop it"
                )
    return sorted(set(out), key=out.index)


# ---- subsampling -------------------------------------------------------------------------------------------


def utt_keys(utt_ids: Sequence[Any], seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per utterance from blake2b(seed, utt_id): independent of row order."""
    out = np.empty(len(utt_ids), dtype=np.float64)
    for i, u in enumerate(utt_ids):
        h = hashlib.blake2b(f"{int(seed)}\x1f{u}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2.0**64
    return out


def strata_columns(df: pd.DataFrame, stratify: tuple[str, ...] | str, where: str = "manifest") -> list[str]:
    """``label`` plus the condition columns used as strata (``auto``: those of :data:`CONDITION_COLUMNS`
    present with more than one value)."""
    if stratify == "auto":
        return ["label"] + [
            c for c in CONDITION_COLUMNS if c in df.columns and df[c].astype(str).nunique(dropna=False) > 1
        ]
    missing = [c for c in stratify if c not in df.columns]
    if missing:
        raise SpecError(
            f"budget.stratify: {where} has no column {missing[0]!r} "
            f"(columns: {', '.join(map(str, df.columns))})"
        )
    return ["label"] + [c for c in stratify if c != "label"]


def stratified_order(df: pd.DataFrame, columns: Sequence[str], seed: int) -> np.ndarray:
    """Row positions such that every prefix is a proportionally stratified subsample (module docstring)."""
    n = len(df)
    if n == 0:
        return np.zeros(0, dtype=int)
    u = utt_keys(df["utt_id"].astype(str).tolist(), seed)
    if columns:
        labels = df[list(columns)].astype(str).groupby(list(columns), sort=True).ngroup().to_numpy()
    else:
        labels = np.zeros(n, dtype=int)
    pos = np.empty(n, dtype=np.float64)
    for h in np.unique(labels):
        idx = np.flatnonzero(labels == h)
        ranked = idx[np.argsort(u[idx], kind="stable")]
        pos[ranked] = (np.arange(len(ranked)) + 0.5) / len(ranked)
    return np.lexsort((u, pos))


def size_cap(n_total: int, spec: BudgetSpec) -> int:
    """Largest subsample the budget allows for a set of ``n_total`` utterances."""
    cap = int(math.floor(spec.max_fraction * n_total + 1e-9))
    if spec.max_utts is not None:
        cap = min(cap, spec.max_utts)
    return max(1, min(n_total, cap))


# ---- cell-level estimates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A cell value with the CI that targets its full-set value."""

    value: float
    lo: float
    hi: float

    @property
    def se(self) -> float:
        """Normal-equivalent standard error of the CI (half-width / 1.96)."""
        return (self.hi - self.lo) / 2 / Z95


def eer_estimate(scores: pd.DataFrame, fraction: float, n_boot: int, seed: int) -> Estimate:
    """EER of a subsample with a CI for the full-set EER: the union of the class-stratified bootstrap CI
    shrunk by ``sqrt(1 - f)`` (finite population) and a Wilson interval (module docstring)."""
    from ..metrics import bootstrap_eer_ci, compute_eer

    lab = scores["label"].astype(str).to_numpy()
    s = scores["score"].to_numpy(dtype=np.float64)
    bona, spoof = s[lab == "bonafide"], s[lab == "spoof"]
    eer = compute_eer(bona, spoof)[0]
    lo, hi = bootstrap_eer_ci(bona, spoof, n=n_boot, seed=seed)
    boot = shrink(Estimate(eer, lo, hi), math.sqrt(max(0.0, 1.0 - fraction)))
    if fraction >= 1.0:
        return boot
    n_eff = min(len(bona), len(spoof)) / (1.0 - fraction)
    w_lo, w_hi = wilson(eer, n_eff)
    return Estimate(eer, min(boot.lo, w_lo), max(boot.hi, w_hi))


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` trials (Wilson 1927)."""
    z2 = z * z / n
    centre = (p + z2 / 2) / (1 + z2)
    half = z / (1 + z2) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def shrink(e: Estimate, factor: float) -> Estimate:
    """The CI scaled about the estimate by ``factor`` (each side separately: percentile CIs are skewed)."""
    return Estimate(e.value, e.value - (e.value - e.lo) * factor, e.value + (e.hi - e.value) * factor)


def mean_estimate(
    values: Sequence[float], sizes: Sequence[int], fraction: float, n_boot: int, seed: int
) -> tuple[Estimate, float]:
    """Size-weighted batch mean, its bootstrap CI widened by ``sqrt(1 + f)``, and the raw batch stderr."""
    from ..sharpness.base import weighted_summary

    mean, se, (lo, hi) = weighted_summary(list(values), list(sizes), n_boot=n_boot, seed=seed)
    return shrink(Estimate(mean, lo, hi), math.sqrt(1.0 + fraction)), se


# ---- correlation CI and the sample-size rule ---------------------------------------------------------------


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / den
    r[~(den > 0)] = np.nan
    return r


def correlations(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """Correlation of each row of ``x`` with the same row of ``y`` (NaN where a row is constant)."""
    from scipy.stats import kendalltau, rankdata

    x, y = np.atleast_2d(x), np.atleast_2d(y)
    if method == "pearson":
        return _rowwise_pearson(x, y)
    if method == "spearman":
        return _rowwise_pearson(rankdata(x, axis=1), rankdata(y, axis=1))
    if method == "kendall":  # tau-b
        return np.array([kendalltau(a, b).statistic for a, b in zip(x, y, strict=True)], dtype=float)
    raise SharpscopeError(f"unknown correlation {method!r}; use one of {', '.join(CORRELATIONS)}")


@dataclass(frozen=True)
class CorrCI:
    value: float
    lo: float
    hi: float
    half: float
    floor: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def correlation_ci(
    x: Sequence[float],
    x_se: Sequence[float],
    y: Sequence[float],
    y_se: Sequence[float],
    method: str = "spearman",
    n_boot: int = 1000,
    seed: int = 0,
) -> CorrCI:
    """Point correlation across checkpoints and its 95 % CI with cell uncertainty propagated (module
    docstring); ``floor`` is the half-width from the checkpoint bootstrap alone."""
    xv, yv = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sx, sy = np.asarray(x_se, dtype=float), np.asarray(y_se, dtype=float)
    k = len(xv)
    value = float(correlations(xv, yv, method)[0])
    if k < 3 or not (np.isfinite(xv).all() and np.isfinite(yv).all()):
        return CorrCI(value, math.nan, math.nan, math.inf, math.inf)
    sx, sy = np.nan_to_num(sx, nan=0.0), np.nan_to_num(sy, nan=0.0)
    rng = np.random.default_rng([int(seed), 11])
    idx = rng.integers(0, k, size=(n_boot, k))
    dx = xv + sx * rng.standard_normal((n_boot, k))  # one draw per cell and replicate, then resampled
    dy = yv + sy * rng.standard_normal((n_boot, k))
    rows = np.arange(n_boot)[:, None]
    noisy = correlations(dx[rows, idx], dy[rows, idx], method)
    clean = correlations(xv[idx], yv[idx], method)

    def interval(r: np.ndarray) -> tuple[float, float]:
        r = r[np.isfinite(r)]
        if len(r) < n_boot / 2:
            return math.nan, math.nan
        lo, hi = np.quantile(r, [0.025, 0.975])
        return float(lo), float(hi)

    lo, hi = interval(noisy)
    flo, fhi = interval(clean)
    half = (hi - lo) / 2 if math.isfinite(lo) else math.inf
    floor = (fhi - flo) / 2 if math.isfinite(flo) else math.inf
    return CorrCI(value, lo, hi, half, floor)


def round_up(n: float, step: int) -> int:
    return int(math.ceil(n / step - 1e-9) * step)


def next_size(
    n: int,
    half: float,
    floor: float,
    target: float,
    n_max: int,
    growth: float = 2.0,
    step: int = 1,
    stop_at_floor: bool = True,
) -> tuple[int | None, str]:
    """Next subsample size, or ``None`` with the reason to stop (module docstring: half² = floor² + c/n).

    With ``stop_at_floor`` false a target below the floor keeps growing at the full ``growth`` (for cell
    precision) until the budget ends."""
    if half <= target:
        return None, "target reached"
    if n >= n_max:
        return None, "budget exhausted"
    if not math.isfinite(half) or (floor >= target and not stop_at_floor):
        need = growth * n  # no finite CI yet, or growing regardless of the floor: as fast as allowed
    elif floor >= target:
        return None, "floor above target: the CI is set by the number of checkpoints, add checkpoints"
    else:
        c = max(half * half - floor * floor, 0.0) * n
        need = c / (target * target - floor * floor)
    n_next = min(max(need, n + step), growth * n)
    return min(n_max, round_up(n_next, step)), "growing"


# ---- combining the rounds of a cell ------------------------------------------------------------------------


def combine_results(parts: Sequence[Any], fraction: float, n_boot: int, seed: int) -> Any:
    """One :class:`~sharpscope.sharpness.base.SharpnessResult` from the increments' results (pooled)."""
    batches: list[dict[str, Any]] = []
    for p in parts:
        for r in p.per_batch:
            batches.append({**r, "index": len(batches)})
    used = [r for r in batches if r.get("used", r.get("finite", True))]
    est, se_raw = mean_estimate([r["value"] for r in used], [r["size"] for r in used], fraction, n_boot, seed)
    split = [r for r in used if r.get("per_class")]
    per_class = None
    if split:
        tot = sum(r["size"] for r in split)
        per_class = {
            c: sum(r["per_class"].get(c, 0.0) * r["size"] for r in split) / tot
            for c in sorted({c for r in split for c in r["per_class"]})
        }
    cost: dict[str, int] = {}
    for p in parts:
        for k, v in p.cost.items():
            cost[k] = cost.get(k, 0) + int(v)
    last = parts[-1]
    extra = dict(last.extra)
    extra.update(
        {
            "stop_reason": "budgeted study (see budget_* columns)",
            "per_class": per_class,
            "n_capped": sum(int(p.extra.get("n_capped", 0)) for p in parts),
            "n_bonafide_used": sum(int(p.extra.get("n_bonafide_used") or 0) for p in parts),
            "n_spoof_used": sum(int(p.extra.get("n_spoof_used") or 0) for p in parts),
            "stderr_batches": se_raw,
            "ci_inflation": math.sqrt(1.0 + fraction),
            "increment_seeds": [p.settings.get("seed") for p in parts],
        }
    )
    return replace(
        last,
        value=est.value,
        stderr=se_raw * math.sqrt(1.0 + fraction),
        ci95=(est.lo, est.hi),
        n_utts=sum(p.n_utts for p in parts),
        n_batches=len(batches),
        per_batch=batches,
        cost=cost,
        n_nonfinite=sum(p.n_nonfinite for p in parts),
        extra=extra,
    )


# ---- the budgeted run --------------------------------------------------------------------------------------


@dataclass
class _CellState:
    cell: Any
    loaded: Any = None
    scores: list[pd.DataFrame] = field(default_factory=list)
    parts: dict[tuple[str, int], list[Any]] = field(default_factory=dict)
    specs: dict[tuple[str, int], Any] = field(default_factory=dict)
    wall: float = 0.0


def _round_seed(seed: int, r: int) -> int:
    """Round 0 keeps the study seed (a budget covering the whole set then reproduces the plain cell's
    batches); later increments get derived seeds, so no two rounds reuse a random stream."""
    from ..sharpness.engine import derive_seed

    return int(seed) if r == 0 else derive_seed(int(seed), 104729, r)


def run_evalset(
    spec: BudgetSpec,
    cells: Sequence[Any],
    num_threads: int | None = None,
    progress: bool = False,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Budgeted rows of every cell of one evaluation set (all checkpoints on the same subsample).

    Returns ``{cell_id: rows}``; every row carries the ``budget_*`` columns (module docstring).
    """
    import torch

    from ..metrics import evaluate
    from .runner import cell_rows, cell_rows_df, shared_pass

    df = cell_rows_df(cells[0])
    n_total = len(df)
    ev = cells[0].evalset
    where = f"test set {ev.testset}{' [' + ev.subset + ']' if ev.subset else ''} ({ev.manifest})"
    cols = strata_columns(df, spec.stratify, where)
    order = stratified_order(df, cols, spec.seed)
    step = int(cells[0].scoring["batch_size"])
    n_max = size_cap(n_total, spec)
    n = min(n_max, round_up(min(max(spec.pilot, spec.min_batches * step), n_total), step))
    states = [_CellState(c, scores=[], parts={}, specs={}) for c in cells]
    history: list[dict[str, Any]] = []
    done_n, r = 0, 0
    threads_before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        while True:
            inc = df.iloc[order[done_n:n]].reset_index(drop=True)
            for st in states:
                t0 = time.perf_counter()
                loaded, scores, results = shared_pass(
                    st.cell, inc, progress=progress, seed_map=partial(_round_seed, r=r)
                )
                st.loaded = loaded
                st.scores.append(scores)
                for m, seed, res in results:
                    st.parts.setdefault((m.key, seed), []).append(res)
                    st.specs[(m.key, seed)] = m
                st.wall += time.perf_counter() - t0
            done_n = n
            frac = n / n_total
            cis = _correlations(spec, states, frac)
            rec = {
                "round": r,
                "n": n,
                "fraction": frac,
                "correlations": {k: c.as_dict() for k, c in cis.items()},
            }
            decisions = [
                next_size(n, c.half, c.floor, spec.target, n_max, spec.growth, step, spec.stop_at_floor)
                for c in cis.values()
            ]
            grow = [d for d, _ in decisions if d is not None]
            reasons = sorted({why for _, why in decisions})
            rec["decision"] = "growing" if grow else "; ".join(reasons)
            history.append(rec)
            if on_round:
                on_round({"evalset": where, **rec})
            if not grow:
                stop = rec["decision"]
                break
            n, r = max(grow), r + 1
    finally:
        torch.set_num_threads(threads_before)

    frac = done_n / n_total
    final = _correlations(spec, states, frac)
    out: dict[str, list[dict[str, Any]]] = {}
    for st in states:
        scores = pd.concat(st.scores, ignore_index=True)
        metrics = evaluate(scores, seed=spec.seed, n_boot=0)
        eer = eer_estimate(scores, frac, spec.n_boot, spec.seed)
        metrics["eer_ci95"] = [eer.lo, eer.hi]
        results = [
            (st.specs[k], k[1], combine_results(parts, frac, spec.n_boot, spec.seed))
            for k, parts in st.parts.items()
        ]
        rows = cell_rows(st.cell, st.loaded, scores, results, metrics, st.wall, num_threads)
        common = {
            "budget_n": done_n,
            "budget_n_total": n_total,
            "budget_fraction": frac,
            "budget_seed": spec.seed,
            "budget_strata": ",".join(cols),
            "budget_target": spec.target,
            "budget_correlation": spec.correlation,
            "budget_rounds": len(history),
            "budget_sizes": json.dumps([h["n"] for h in history]),
            "budget_stop_reason": stop,
            "budget_spec": json.dumps(spec.as_dict(), sort_keys=True),
            "budget_history": json.dumps(history, sort_keys=True, default=str),
            "eer_ci_method": "union of class-stratified bootstrap x sqrt(1 - f) and Wilson (n_eff / (1 - f))",
        }
        for row in rows:
            row.update(common)
            c = final.get(_corr_key(row.get("measure_key"), row.get("seed")))
            row.update(
                {
                    "stderr_batches": _stderr_batches(row),
                    "budget_corr": None if c is None else _finite(c.value),
                    "budget_corr_lo": None if c is None else _finite(c.lo),
                    "budget_corr_hi": None if c is None else _finite(c.hi),
                    "budget_corr_halfwidth": None if c is None else _finite(c.half),
                    "budget_corr_floor": None if c is None else _finite(c.floor),
                    "budget_reached": bool(c is not None and c.half <= spec.target),
                }
            )
        out[st.cell.cell_id] = rows
    return out


def _stderr_batches(row: dict[str, Any]) -> float | None:
    return _finite(json.loads(row["extra"]).get("stderr_batches", math.nan)) if row.get("extra") else None


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _corr_key(measure_key: Any, seed: Any) -> str:
    return f"{measure_key}|{seed}"


def _correlations(spec: BudgetSpec, states: Sequence[_CellState], frac: float) -> dict[str, CorrCI]:
    """Correlation CI of every (measure, seed) across the checkpoints of one evaluation set."""
    y = [eer_estimate(pd.concat(st.scores, ignore_index=True), frac, spec.n_boot, spec.seed) for st in states]
    out: dict[str, CorrCI] = {}
    for key in states[0].parts:
        x = []
        for st in states:
            batches = [b for p in st.parts[key] for b in p.per_batch]
            used = [b for b in batches if b.get("used", b.get("finite", True))]
            est, _ = mean_estimate(
                [b["value"] for b in used], [b["size"] for b in used], frac, spec.n_boot, spec.seed
            )
            x.append(est)
        out[_corr_key(key[0], key[1])] = correlation_ci(
            [e.value for e in x],
            [e.se for e in x],
            [e.value for e in y],
            [e.se for e in y],
            spec.correlation,
            spec.n_boot,
            spec.seed,
        )
    return out


def run_budgeted(
    spec: BudgetSpec,
    cells: Sequence[Any],
    todo_ids: set[str],
    store: Any,
    executor: str = "local",
    num_threads: int | None = None,
    progress: bool = False,
    on_done: Callable[[Any, int, int], None] | None = None,
    on_start: Callable[[Any], None] | None = None,
) -> list[str]:
    """Run the evaluation sets that hold an unfinished cell (all their cells: the correlation needs every
    checkpoint) and write each cell's rows to ``store``; return the written cell ids."""
    if executor != "local":
        raise SpecError(
            "budget: budgeted studies run in process (each round sizes the next from every cell's estimate); "
            f"use --executor local, not {executor}"
        )
    groups: dict[tuple[str, str], list[Any]] = {}
    for c in cells:
        groups.setdefault((c.evalset.testset, c.evalset.subset), []).append(c)
    todo = [g for g in groups.values() if any(c.cell_id in todo_ids for c in g)]
    total = sum(len(g) for g in todo)
    written: list[str] = []
    for group in todo:
        if on_start:
            for c in group:
                on_start(c)
        rows = run_evalset(spec, group, num_threads=num_threads, progress=progress)
        for c in group:
            store.write_cell(c.cell_id, c.key, rows[c.cell_id])
            written.append(c.cell_id)
            if on_done:
                on_done(c, len(written), total)
    return written
