"""Detection metrics for spoofing countermeasures, computed exactly as the official ASVspoof tools do.

Convention: a higher score means *more bona fide*.  Bona fide trials are the "target" class.

* **EER** -- ASVspoof 2019/2021/5 evaluation code: all scores are concatenated (bona fide first, then
  spoof) and sorted with a *stable* mergesort; the false-rejection rate (bona fide at or below the
  position) and the false-acceptance rate (spoof above it) are taken at every sorted position, with the
  point (FRR, FAR) = (0, 1) prepended; the first index minimising |FRR - FAR| is chosen and
  EER = (FRR + FAR) / 2 there.  Because the bona fide scores come first in the stable sort, a bona fide
  score tied with a spoof score is rejected before the spoof one: ties count against bona fide, and
  all-equal scores give an EER of 1.0.
* **minDCF / actDCF** -- ASVspoof 5 Track 1 (evaluation plan eq. 3-4 and its evaluation package):
  DCF(t) = Cmiss (1 - Pspoof) Pmiss(t) + Cfa Pspoof Pfa(t), normalised by min(Cmiss (1 - Pspoof), Cfa Pspoof)
  with Pspoof = 0.05, Cmiss = 1, Cfa = 10.  minDCF minimises over the DET points above; actDCF applies the
  Bayes threshold -ln(Cmiss (1 - Pspoof) / (Cfa Pspoof)) to the scores taken as natural-log likelihood
  ratios (miss: bona fide score < threshold; false alarm: spoof score >= threshold).
* **Cllr** -- Brümmer's log-likelihood-ratio cost in bits, scores taken as natural-log LLRs (Brümmer & du
  Preez 2006, "Application-independent evaluation of speaker detection", Computer Speech and Language 20).
* **Score types and calibration** -- actDCF and Cllr read scores as natural-log LLRs; a logit is not one
  (adding a constant to both logits moves them while EER and minDCF stay put).  :func:`evaluate` records
  the declared score type, whether the scores were calibrated (:mod:`sharpscope.calibration`), and computes
  actDCF / Cllr on the calibrated LLRs when a calibration is given; EER, minDCF and the per-condition EERs
  always use the raw scores, so the official EER is untouched.
* **Bootstrap CI of the EER** -- percentile interval from resampling each class with replacement
  (stratified, so every replicate keeps the class sizes).

Everything here is pure numpy and vectorised (600k scores take well under a second for the point metrics).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ScoreError

if TYPE_CHECKING:  # calibration imports this module; the runtime dependency points that way only
    from .calibration import Calibration

BONAFIDE = "bonafide"
SPOOF = "spoof"


@dataclass(frozen=True)
class CostModel:
    """Detection-cost parameters.  :data:`ASVSPOOF5` holds the ASVspoof 5 Track 1 values."""

    p_spoof: float = 0.05
    c_miss: float = 1.0
    c_fa: float = 10.0

    @property
    def normaliser(self) -> float:
        """Cost of the best trivial system (accept all or reject all): min(Cmiss (1-P), Cfa P)."""
        return min(self.c_miss * (1.0 - self.p_spoof), self.c_fa * self.p_spoof)

    @property
    def bayes_threshold(self) -> float:
        """LLR threshold of the Bayes decision: -ln(Cmiss (1-P) / (Cfa P))."""
        return -math.log(self.c_miss * (1.0 - self.p_spoof) / (self.c_fa * self.p_spoof))


ASVSPOOF5 = CostModel(p_spoof=0.05, c_miss=1.0, c_fa=10.0)


# ---- input checks ---------------------------------------------------------------------------------------


def _as_scores(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ScoreError(f"no {what} scores: a detection metric needs both bona fide and spoof trials")
    return a


def check_finite(scores: Any, utt_ids: Sequence[str] | None = None, what: str = "scores") -> None:
    """Raise :class:`ScoreError` naming how many ``scores`` are NaN/inf and the first offending utterances."""
    a = np.asarray(scores, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size == 0:
        return
    if utt_ids is not None:
        first = ", ".join(str(utt_ids[i]) for i in bad[:5])
        where = f"first: {first}"
    else:
        where = "first positions: " + ", ".join(str(int(i)) for i in bad[:5])
    raise ScoreError(
        f"{bad.size} of {a.size} {what} are NaN or infinite ({where}); "
        "fix the model/checkpoint or the score file before computing metrics"
    )


def _pair(bona: Any, spoof: Any) -> tuple[np.ndarray, np.ndarray]:
    b = _as_scores(bona, "bona fide")
    s = _as_scores(spoof, "spoof")
    check_finite(b, what="bona fide scores")
    check_finite(s, what="spoof scores")
    return b, s


# ---- DET curve and EER ----------------------------------------------------------------------------------


def _sorted_labels(bona: np.ndarray, spoof: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (1 bona fide, 0 spoof) and scores in the official stable order (bona fide first on ties)."""
    scores = np.concatenate((bona, spoof))
    labels = np.concatenate((np.ones(bona.size, dtype=np.int64), np.zeros(spoof.size, dtype=np.int64)))
    order = np.argsort(scores, kind="mergesort")
    return labels[order], scores[order]


def _rates(sorted_labels: np.ndarray, n_bona: int, n_spoof: int) -> tuple[np.ndarray, np.ndarray]:
    """FRR and FAR with (0, 1) prepended, from labels in sorted-score order."""
    bona_below = np.cumsum(sorted_labels)
    spoof_above = n_spoof - (np.arange(1, sorted_labels.size + 1) - bona_below)
    frr = np.concatenate(([0.0], bona_below / n_bona))
    far = np.concatenate(([1.0], spoof_above / n_spoof))
    return frr, far


def det_curve(bona: Any, spoof: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Official ASVspoof DET points ``(frr, far, thresholds)``, each of length n_bona + n_spoof + 1.

    ``thresholds[0]`` is the lowest score minus 0.001 (the prepended (0, 1) point); ``thresholds[k]`` is the
    k-th sorted score, at which the first k sorted trials are rejected.
    """
    b, s = _pair(bona, spoof)
    labels, scores = _sorted_labels(b, s)
    frr, far = _rates(labels, b.size, s.size)
    thresholds = np.concatenate(([scores[0] - 0.001], scores))
    return frr, far, thresholds


def _eer_from_rates(frr: np.ndarray, far: np.ndarray) -> tuple[float, int]:
    idx = int(np.argmin(np.abs(frr - far)))  # first minimiser, as the official code
    return float((frr[idx] + far[idx]) / 2.0), idx


def compute_eer(bona: Any, spoof: Any) -> tuple[float, float]:
    """Equal error rate (fraction, 0..1) and its threshold, exactly as the official ASVspoof code."""
    frr, far, thresholds = det_curve(bona, spoof)
    eer, idx = _eer_from_rates(frr, far)
    return eer, float(thresholds[idx])


# ---- detection costs and Cllr ---------------------------------------------------------------------------


def min_dcf(bona: Any, spoof: Any, cost: CostModel = ASVSPOOF5) -> tuple[float, float]:
    """Normalised minimum DCF over the official DET points, and the threshold attaining it (first minimum)."""
    frr, far, thresholds = det_curve(bona, spoof)
    dcf = cost.c_miss * (1.0 - cost.p_spoof) * frr + cost.c_fa * cost.p_spoof * far
    idx = int(np.argmin(dcf))
    return float(dcf[idx] / cost.normaliser), float(thresholds[idx])


def act_dcf(bona: Any, spoof: Any, cost: CostModel = ASVSPOOF5) -> tuple[float, float]:
    """Normalised actual DCF at the Bayes threshold (scores read as natural-log LLRs), and that threshold."""
    b, s = _pair(bona, spoof)
    t = cost.bayes_threshold
    p_miss = np.count_nonzero(b < t) / b.size
    p_fa = np.count_nonzero(s >= t) / s.size
    dcf = cost.c_miss * (1.0 - cost.p_spoof) * p_miss + cost.c_fa * cost.p_spoof * p_fa
    return float(dcf / cost.normaliser), float(t)


def cllr(bona: Any, spoof: Any) -> float:
    """Log-likelihood-ratio cost in bits: (mean log2(1 + e^-b) + mean log2(1 + e^s)) / 2.

    ``np.logaddexp(0, x)`` = ln(1 + e^x) without overflow for large |x|.
    """
    b, s = _pair(bona, spoof)
    return float(0.5 * (np.mean(np.logaddexp(0.0, -b)) + np.mean(np.logaddexp(0.0, s))) / math.log(2.0))


# ---- bootstrap ------------------------------------------------------------------------------------------


def bootstrap_eers(bona: Any, spoof: Any, n: int = 1000, seed: int = 0) -> np.ndarray:
    """EERs of ``n`` stratified bootstrap replicates.

    Replicate r draws ``rng.integers(0, n_bona, n_bona)`` then ``rng.integers(0, n_spoof, n_spoof)``
    from ``numpy.random.default_rng(seed)``.  The EER depends only on the order of the pooled scores, and
    resampling keeps the official order (ties: bona fide first), so each replicate is computed from the
    once-sorted labels repeated by their bootstrap multiplicities -- identical to re-sorting the resampled
    scores, without a sort per replicate.
    """
    b, s = _pair(bona, spoof)
    if n < 1:
        raise ScoreError(f"bootstrap needs at least one replicate, got n={n}")
    rng = np.random.default_rng(seed)
    scores = np.concatenate((b, s))
    order = np.argsort(scores, kind="mergesort")
    is_bona_sorted = order < b.size
    labels_sorted = is_bona_sorted.astype(np.int64)
    out = np.empty(n, dtype=np.float64)
    for r in range(n):
        counts = np.empty(scores.size, dtype=np.int64)
        counts[: b.size] = np.bincount(rng.integers(0, b.size, b.size), minlength=b.size)
        counts[b.size :] = np.bincount(rng.integers(0, s.size, s.size), minlength=s.size)
        expanded = np.repeat(labels_sorted, counts[order])
        frr, far = _rates(expanded, b.size, s.size)
        out[r] = _eer_from_rates(frr, far)[0]
    return out


def bootstrap_eer_ci(
    bona: Any, spoof: Any, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the EER (stratified resampling within each class)."""
    eers = bootstrap_eers(bona, spoof, n=n, seed=seed)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(eers, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ---- one call for the metrics.json content --------------------------------------------------------------


def _first_ids(ids: Iterable[Any], k: int = 5) -> str:
    ids = list(ids)
    return ", ".join(str(i) for i in ids[:k]) + (", ..." if len(ids) > k else "")


def evaluate(
    df: Any,
    score_col: str = "score",
    label_col: str = "label",
    by: Sequence[str] = ("attack", "codec", "transmission"),
    seed: int = 0,
    n_boot: int = 1000,
    cost: CostModel = ASVSPOOF5,
    id_col: str = "utt_id",
    score_type: str | None = None,
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """All metrics of a scored table, as stored in ``metrics.json``.

    ``df`` -- a DataFrame with a score column and labels ``bonafide`` / ``spoof``.  Breakdowns:

    * ``per_attack`` (column ``attack``): the spoof trials of each attack against *all* bona fide trials, as
      the official per-attack evaluation of ASVspoof 2019/2021;
    * ``per_<col>`` for every other column in ``by`` (e.g. codec, transmission): both classes restricted to
      that condition.  A condition lacking one class keeps its counts with ``eer: null``.

    Columns of ``by`` absent from ``df`` (or entirely empty) are skipped.  EERs are fractions (0..1).

    ``score_type`` -- what the score column holds (e.g. ``bonafide-logit``, ``log-odds``); default: the single
    value of a ``score_type`` column when ``df`` has one, else unrecorded (``null``).  ``calibration`` -- a
    fitted :class:`sharpscope.calibration.Calibration`: actDCF and Cllr are then computed on ``a * s + b``
    (and the uncalibrated values are kept under ``uncalibrated``); EER, minDCF and their thresholds always use
    the raw scores (a monotone map cannot change them; the raw scores keep the official EER bit-identical).
    """
    for col in (score_col, label_col):
        if col not in df.columns:
            cols = ", ".join(map(str, df.columns))
            raise ScoreError(f"scored table has no {col!r} column (columns: {cols})")
    ids = df[id_col].astype(str).tolist() if id_col in df.columns else [str(i) for i in df.index]
    scores = df[score_col].to_numpy(dtype=np.float64)
    check_finite(scores, ids, what="scores")
    labels = df[label_col].astype(str).to_numpy()
    is_bona = labels == BONAFIDE
    is_spoof = labels == SPOOF
    other = np.flatnonzero(~(is_bona | is_spoof))
    if other.size:
        raise ScoreError(
            f"{other.size} rows have a label other than bonafide/spoof "
            f"(first: {_first_ids(ids[i] for i in other)}); metrics need labelled trials"
        )
    n_bona, n_spoof = int(is_bona.sum()), int(is_spoof.sum())
    if n_bona == 0 or n_spoof == 0:
        missing = BONAFIDE if n_bona == 0 else SPOOF
        raise ScoreError(
            f"no {missing} trials among {len(labels)} scored rows; EER/minDCF need both bona fide and spoof "
            "trials"
        )
    bona, spoof = scores[is_bona], scores[is_spoof]
    if score_type is None and "score_type" in df.columns:
        declared = sorted(set(df["score_type"].astype(str)))
        if len(declared) != 1:
            raise ScoreError(
                f"the score_type column holds {len(declared)} different types ({', '.join(declared)}); "
                "metrics need one score type per table"
            )
        score_type = declared[0]
    eer, thr = compute_eer(bona, spoof)
    mdcf, mdcf_thr = min_dcf(bona, spoof, cost)
    if calibration is None:
        llr_bona, llr_spoof = bona, spoof
        note = (
            f"actDCF and Cllr read the scores ({score_type or 'type not recorded'}) as natural-log LLRs, but "
            "they are uncalibrated: these two values depend on an arbitrary score offset/scale and are not "
            "comparable across checkpoints (calibrate on a labelled dev set: --calibrate-on)"
        )
    else:
        llr_bona, llr_spoof = calibration.apply(bona), calibration.apply(spoof)
        check_finite(llr_bona, what="calibrated bona fide scores")
        check_finite(llr_spoof, what="calibrated spoof scores")
        note = (
            f"actDCF and Cllr are computed on calibrated LLRs a*s + b of the {score_type or 'unrecorded'} "
            "scores (a, b fitted on the dev set under 'calibration'); EER and minDCF on the raw scores"
        )
    adcf, adcf_thr = act_dcf(llr_bona, llr_spoof, cost)
    out: dict[str, Any] = {
        "eer": eer,
        "eer_threshold": thr,
        "eer_ci95": list(bootstrap_eer_ci(bona, spoof, n=n_boot, seed=seed)) if n_boot > 0 else None,
        "min_dcf": mdcf,
        "min_dcf_threshold": mdcf_thr,
        "act_dcf": adcf,
        "act_dcf_threshold": adcf_thr,
        "cllr": cllr(llr_bona, llr_spoof),
        "score_type": score_type,
        "calibrated": calibration is not None,
        "calibration": calibration.to_dict() if calibration is not None else None,
        "act_dcf_cllr": {"score_type": score_type, "calibrated": calibration is not None, "note": note},
        "n_bonafide": n_bona,
        "n_spoof": n_spoof,
        "cost_model": asdict(cost),
        "bootstrap": {"n": int(n_boot), "seed": int(seed), "level": 0.95, "stratified": True},
    }
    if calibration is not None:
        raw_adcf, raw_thr = act_dcf(bona, spoof, cost)
        out["uncalibrated"] = {"act_dcf": raw_adcf, "act_dcf_threshold": raw_thr, "cllr": cllr(bona, spoof)}
    for col in by:
        if col not in df.columns or df[col].isna().all():
            continue
        values = df[col]
        keys = np.where(values.isna().to_numpy(), "NA", values.astype(str).to_numpy()).astype(object)
        table: dict[str, Any] = {}
        if col == "attack":
            for k in sorted(set(keys[is_spoof])):
                sel = is_spoof & (keys == k)
                e: float | None = compute_eer(bona, scores[sel])[0]
                table[k] = {"eer": e, "n_bonafide": n_bona, "n_spoof": int(sel.sum())}
        else:
            for k in sorted(set(keys)):
                cb, cs = is_bona & (keys == k), is_spoof & (keys == k)
                nb, ns = int(cb.sum()), int(cs.sum())
                e = compute_eer(scores[cb], scores[cs])[0] if nb and ns else None
                table[k] = {"eer": e, "n_bonafide": nb, "n_spoof": ns}
        out[f"per_{col}"] = table
    return out
