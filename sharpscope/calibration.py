"""Logistic-regression score calibration: turn a detection score into a natural-log likelihood ratio.

Why: actDCF and Cllr read a score as a natural-log LLR, log p(s | bona fide) / p(s | spoof).  A logit is not
an LLR -- adding the same constant to both logits leaves the softmax, the loss and the EER unchanged but moves
the bona-fide logit, and with it actDCF and Cllr, arbitrarily.  actDCF / Cllr of uncalibrated scores therefore
are not comparable across checkpoints.  Calibration fixes the scale and offset on a labelled development
set, so that what remains is the discrimination *and* calibration of the system on that data.

Method (Brümmer & du Preez 2006, "Application-independent evaluation of speaker detection", Computer Speech
and Language 20(2-3); the FoCal toolkit): fit the affine map ``s' = a s + b`` by minimising the
prior-weighted cross-entropy

    C(a, b) = P / N_b  sum_bona  log2(1 + exp(-(a s + b + logit P)))
            + (1 - P) / N_s sum_spoof log2(1 + exp(  a s + b + logit P))

where ``P`` is the (effective) prior of the bona fide class.  At ``P = 0.5`` this is exactly Cllr of the
calibrated scores; at other priors it is Cllr evaluated at that operating point.  The prior enters only as the
offset ``logit P`` inside the objective, so the output ``s'`` stays an LLR (no prior folded in) and the
Bayes threshold of :class:`sharpscope.metrics.CostModel` applies to it.

The map is monotone increasing when ``a > 0`` (the usual case), so EER and minDCF, which depend only on the
order of the scores, are unchanged; :func:`sharpscope.metrics.evaluate` computes them on the raw scores
anyway, so the official EER stays bit-identical.

ASVspoof 5 operating point (ASVspoof 5 evaluation plan, Track 1: Pspoof = 0.05, Cmiss = 1, Cfa = 10): the
effective bona fide prior is ``Cmiss (1 - Pspoof) / (Cmiss (1 - Pspoof) + Cfa Pspoof) = 0.95 / 1.45``,
whose negative logit is the actDCF threshold ``-ln(Cmiss (1 - Pspoof) / (Cfa Pspoof))``.

The objective is convex in ``(a, b)``; it is minimised by Newton's method with a backtracking line search on
standardised scores (2 parameters: exact Hessian, converges in a handful of steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import ScoreError
from .metrics import ASVSPOOF5, BONAFIDE, SPOOF, CostModel

METHOD = "logistic-regression (Brümmer & du Preez 2006): s' = a*s + b, prior-weighted cross-entropy"


def effective_prior(cost: CostModel = ASVSPOOF5) -> float:
    """Effective bona fide prior of a cost model: Cmiss (1 - Pspoof) / (Cmiss (1 - Pspoof) + Cfa Pspoof).

    Its negative logit equals :attr:`CostModel.bayes_threshold`: calibrating at this prior optimises the
    scores for the operating point at which actDCF is measured (0.655... for ASVspoof 5 Track 1).
    """
    w_bona = cost.c_miss * (1.0 - cost.p_spoof)
    w_spoof = cost.c_fa * cost.p_spoof
    return w_bona / (w_bona + w_spoof)


PRIORS: dict[str, float] = {"0.5": 0.5, "asvspoof5": effective_prior(ASVSPOOF5)}


def parse_prior(value: str | float) -> float:
    """A calibration prior from ``0.5``, ``asvspoof5`` (effective prior of ASVspoof 5 Track 1) or a number."""
    if isinstance(value, str) and value.strip().lower() in PRIORS:
        return PRIORS[value.strip().lower()]
    try:
        p = float(value)
    except (TypeError, ValueError):
        p = math.nan
    if not 0.0 < p < 1.0:
        raise ScoreError(
            f"calibration prior {value!r} is not a probability in (0, 1); use 0.5, asvspoof5 "
            f"(= {PRIORS['asvspoof5']:.6f}) or a number strictly between 0 and 1"
        )
    return p


@dataclass(frozen=True)
class Calibration:
    """A fitted affine calibration ``llr = a * score + b`` and what it was fitted on."""

    a: float
    b: float
    prior: float
    n_bonafide: int
    n_spoof: int
    converged: bool
    n_iter: int = 0
    objective_bits: float = math.nan  # prior-weighted cross-entropy at the optimum (Cllr at `prior`)

    def apply(self, scores: Any) -> np.ndarray:
        """Calibrated scores (natural-log LLRs) ``a * s + b`` as float64."""
        return self.a * np.asarray(scores, dtype=np.float64) + self.b

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (for ``metrics.json``), with the method named."""
        d = asdict(self)
        d["method"] = METHOD
        return d


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-_softplus(-x))


def prior_weighted_cross_entropy(llr_bona: Any, llr_spoof: Any, prior: float = 0.5) -> float:
    """Brümmer's prior-weighted cross-entropy of LLR scores, in bits (Cllr when ``prior`` = 0.5)."""
    b = np.asarray(llr_bona, dtype=np.float64)
    s = np.asarray(llr_spoof, dtype=np.float64)
    off = math.log(prior / (1.0 - prior))
    nats = prior * np.mean(_softplus(-(b + off))) + (1.0 - prior) * np.mean(_softplus(s + off))
    return float(nats / math.log(2.0))


def _where(i: int, ids: Sequence[Any] | None) -> str:
    row = f"row {i + 1}"
    return f"{row} (utt_id {ids[i]})" if ids is not None else row


def _check_dev(
    scores: Any, labels: Any, ids: Sequence[Any] | None, source: str
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).astype(str).reshape(-1)
    if s.size != lab.size:
        raise ScoreError(f"{source}: {s.size} scores but {lab.size} labels; give one label per score")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise ScoreError(
            f"{source}: {bad.size} of {s.size} scores are NaN or infinite (first at "
            f"{_where(int(bad[0]), ids)}; rows are 1-based data rows); fix the dev scores before calibrating"
        )
    other = np.flatnonzero(~np.isin(lab, [BONAFIDE, SPOOF]))
    if other.size:
        i = int(other[0])
        raise ScoreError(
            f"{source}: {other.size} rows have a label other than bonafide/spoof (first at {_where(i, ids)}: "
            f"{str(lab[i])!r}); calibration needs a labelled dev set"
        )
    is_bona = lab == BONAFIDE
    n_b, n_s = int(is_bona.sum()), int((~is_bona).sum())
    if n_b == 0 or n_s == 0:
        missing = BONAFIDE if n_b == 0 else SPOOF
        raise ScoreError(
            f"{source}: no {missing} trials among {s.size} rows; calibration needs both bona fide and spoof "
            "trials in the dev set"
        )
    return s, is_bona


def fit_calibration(
    scores: Any,
    labels: Any,
    prior: float = 0.5,
    ids: Sequence[Any] | None = None,
    source: str = "calibration dev set",
    max_iter: int = 100,
    tol: float = 1e-20,
) -> Calibration:
    """Fit ``llr = a s + b`` on labelled dev scores by minimising the prior-weighted cross-entropy.

    ``labels`` are ``bonafide`` / ``spoof``; ``prior`` is the bona fide (target) prior of the objective
    (0.5: Cllr; :func:`effective_prior` for an application's operating point).  ``ids`` and ``source`` name
    the offending utterance and file in errors.  A perfectly separated dev set (every bona fide score above
    every spoof score) has no finite minimiser -- the fitted scale would grow without bound -- and is refused.
    Newton stops when its decrement (the predicted distance to the minimum, in nats) is at most ``tol``, or
    when floating point allows no further decrease (``converged`` then if the decrement is below 1e-12).
    """
    if not 0.0 < float(prior) < 1.0:
        raise ScoreError(f"calibration prior must lie strictly between 0 and 1, got {prior!r}")
    s, is_bona = _check_dev(scores, labels, ids, source)
    n_b, n_s = int(is_bona.sum()), int((~is_bona).sum())
    bona, spoof = s[is_bona], s[~is_bona]
    if bona.min() >= spoof.max() and bona.max() > spoof.min():
        raise ScoreError(
            f"{source}: the dev scores are perfectly separated (lowest bona fide {bona.min():.6g} >= highest "
            f"spoof {spoof.max():.6g}), so logistic calibration has no finite solution; calibrate on a "
            "larger or harder dev set"
        )
    off = math.log(prior / (1.0 - prior))
    sd = float(np.std(s))
    if sd == 0.0:  # all dev scores equal: nothing to discriminate, the best LLR is 0 for every score
        obj = prior_weighted_cross_entropy(np.zeros(n_b), np.zeros(n_s), prior)
        return Calibration(0.0, 0.0, float(prior), n_b, n_s, True, 0, obj)
    mean = float(np.mean(s))
    u = (s - mean) / sd
    # per-trial weights and signs: bona fide terms softplus(-z), spoof terms softplus(z)
    w = np.where(is_bona, prior / n_b, (1.0 - prior) / n_s)
    y = np.where(is_bona, -1.0, 1.0)

    def f(theta: np.ndarray) -> float:
        z = theta[0] * u + theta[1] + off
        return float(np.sum(w * _softplus(y * z)))

    theta = np.zeros(2)
    fx = f(theta)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        z = theta[0] * u + theta[1] + off
        r = w * y * _sigmoid(y * z)  # d/dz of w softplus(y z)
        g = np.array([np.sum(r * u), np.sum(r)])
        h = w * _sigmoid(z) * _sigmoid(-z)
        hess = np.array([[np.sum(h * u * u), np.sum(h * u)], [np.sum(h * u), np.sum(h)]])
        try:
            step = -np.linalg.solve(hess, g)
        except np.linalg.LinAlgError:
            step = -g
        slope = float(g @ step)
        decrement = -slope / 2.0  # Newton decrement: the predicted f - min f (nats), scale-invariant
        if decrement <= tol:
            converged = True
            break
        t = 1.0
        while True:
            cand = theta + t * step
            fc = f(cand)
            if fc <= fx + 1e-4 * t * slope or t < 1e-12:
                break
            t /= 2.0
        if fc >= fx:  # no decrease left in floating point: at the optimum to machine precision
            converged = decrement <= 1e-12
            break
        theta, fx = cand, fc
    a = float(theta[0] / sd)
    b = float(theta[1] - theta[0] * mean / sd)
    return Calibration(a, b, float(prior), n_b, n_s, bool(converged), it, fx / math.log(2.0))
