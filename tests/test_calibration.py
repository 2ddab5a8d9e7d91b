"""Score types and logistic-regression calibration against closed forms, brute force and scipy.

References written here, independently of sharpscope.calibration:
* the equal-variance Gaussian LLR  log N(x; mu1, s) / N(x; mu0, s) = (mu1-mu0)/s^2 x - (mu1^2-mu0^2)/(2 s^2),
  with the sampling error of the fit from the sandwich covariance at the true parameters;
* the prior-weighted cross-entropy (Brümmer & du Preez 2006) minimised on a grid and by scipy's L-BFGS;
* the official EER re-implemented with Python loops in tests/test_metrics.py.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import minimize

from sharpscope.calibration import (
    PRIORS,
    Calibration,
    effective_prior,
    fit_calibration,
    parse_prior,
    prior_weighted_cross_entropy,
)
from sharpscope.errors import ScoreError
from sharpscope.metrics import ASVSPOOF5, CostModel, compute_eer, evaluate, min_dcf
from sharpscope.scoring import canonical_score_type, scores_from_logits
from tests.test_metrics import brute_force_eer

LN2 = math.log(2.0)


def objective_bits(a: float, b: float, x: np.ndarray, is_bona: np.ndarray, prior: float) -> float:
    """The calibration objective written out: P * mean_b log2(1+e^-(l+o)) + (1-P) * mean_s log2(1+e^(l+o))."""
    o = math.log(prior) - math.log(1.0 - prior)
    llr = a * x + b + o
    bona = np.mean(np.logaddexp(0.0, -llr[is_bona]))  # ln(1 + e^-v)
    spoof = np.mean(np.logaddexp(0.0, llr[~is_bona]))
    return float((prior * bona + (1.0 - prior) * spoof) / LN2)


def labels_of(is_bona: np.ndarray) -> np.ndarray:
    return np.where(is_bona, "bonafide", "spoof")


def overlapping(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Skewed, overlapping classes (not Gaussian, so nothing is linear by construction)."""
    rng = np.random.default_rng(seed)
    is_bona = np.arange(n) < n // 3
    x = np.where(is_bona, rng.gamma(2.0, 1.5, n) + 1.0, rng.gamma(3.0, 0.8, n) - 0.5)
    return x, is_bona


# ---- score types --------------------------------------------------------------------------------------


def test_log_odds_name_and_alias():
    assert canonical_score_type("log-odds") == "log-odds"
    assert canonical_score_type("logit-diff") == "log-odds"
    assert canonical_score_type("bonafide-logit") == "bonafide-logit"
    with pytest.raises(ScoreError, match="unknown score type 'llr'"):
        canonical_score_type("llr")
    logits = torch.tensor([[0.5, 2.0], [3.0, -1.0]], dtype=torch.float64)
    assert scores_from_logits(logits, "log-odds").tolist() == [1.5, -4.0]
    assert scores_from_logits(logits, "logit-diff").tolist() == [1.5, -4.0]


def _table(scores: np.ndarray, is_bona: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {"utt_id": [f"u{i}" for i in range(len(scores))], "label": labels_of(is_bona), "score": scores}
    )


def test_shared_logit_offset_moves_bonafide_logit_but_not_log_odds():
    # logits on a 1/64 grid and an offset of 3: every sum is exact in float64, so equality must be exact
    rng = np.random.default_rng(3)
    n = 400
    is_bona = np.arange(n) < 150
    lb = np.round(rng.normal(np.where(is_bona, 1.0, -1.0), 1.5) * 64) / 64
    ls = np.round(rng.normal(np.where(is_bona, -0.5, 0.5), 1.5) * 64) / 64
    logits = torch.tensor(np.stack([ls, lb], axis=1))
    shifted = logits + 3.0
    before = evaluate(_table(scores_from_logits(logits, "log-odds").numpy(), is_bona), n_boot=0)
    after = evaluate(_table(scores_from_logits(shifted, "log-odds").numpy(), is_bona), n_boot=0)
    for k in ("eer", "min_dcf", "act_dcf", "cllr"):
        assert after[k] == before[k], k
    # the bona-fide logit: EER and minDCF keep their values (a shift is monotone), actDCF / Cllr move
    raw0 = evaluate(_table(scores_from_logits(logits, "bonafide-logit").numpy(), is_bona), n_boot=0)
    raw1 = evaluate(_table(scores_from_logits(shifted, "bonafide-logit").numpy(), is_bona), n_boot=0)
    assert raw1["eer"] == raw0["eer"] and raw1["min_dcf"] == raw0["min_dcf"]
    assert raw1["eer"] == brute_force_eer(lb[is_bona], lb[~is_bona])[0]
    ref_cllr = objective_bits(1.0, 3.0, lb, is_bona, 0.5)  # Cllr = objective at P = 0.5 with a=1, b=shift
    assert raw1["cllr"] == pytest.approx(ref_cllr, rel=1e-12)
    assert raw1["cllr"] > raw0["cllr"] + 0.1


# ---- the calibration objective and priors -------------------------------------------------------------


def test_effective_prior_matches_the_asvspoof5_threshold():
    assert effective_prior(ASVSPOOF5) == pytest.approx(0.95 / 1.45, rel=1e-15)
    p = PRIORS["asvspoof5"]
    assert -math.log(p / (1 - p)) == pytest.approx(ASVSPOOF5.bayes_threshold, rel=1e-12)
    assert effective_prior(CostModel(0.5, 1.0, 1.0)) == 0.5
    assert parse_prior("asvspoof5") == p and parse_prior("0.5") == 0.5 and parse_prior(0.2) == 0.2
    for bad in ("1", "0", "-0.1", "half"):
        with pytest.raises(ScoreError, match="not a probability"):
            parse_prior(bad)


def test_objective_at_half_prior_is_cllr():
    x, is_bona = overlapping(300, 1)
    mine = prior_weighted_cross_entropy(x[is_bona], x[~is_bona], 0.5)
    assert mine == pytest.approx(objective_bits(1.0, 0.0, x, is_bona, 0.5), rel=1e-12)


# ---- the fit against closed forms and independent minimisers -----------------------------------------


def sandwich_se(a: float, b: float, x: np.ndarray, is_bona: np.ndarray, prior: float) -> np.ndarray:
    """Asymptotic standard errors of (a, b) for the weighted M-estimator at the true (a, b)."""
    o = math.log(prior / (1.0 - prior))
    z = a * x + b + o
    sig = 1.0 / (1.0 + np.exp(-z))
    n_b, n_s = int(is_bona.sum()), int((~is_bona).sum())
    w = np.where(is_bona, prior / n_b, (1.0 - prior) / n_s)
    resid = np.where(is_bona, sig - 1.0, sig)  # d loss / dz
    feats = np.stack([x, np.ones_like(x)], axis=1)
    grads = resid[:, None] * feats
    hess = (feats * (w * sig * (1 - sig))[:, None]).T @ feats
    meat = np.zeros((2, 2))
    for cls in (is_bona, ~is_bona):  # within-class covariance of the per-trial gradients
        g = grads[cls] - grads[cls].mean(axis=0)
        meat += w[cls][0] ** 2 * (g.T @ g)
    cov = np.linalg.inv(hess) @ meat @ np.linalg.inv(hess)
    return np.sqrt(np.diag(cov))


@pytest.mark.parametrize("prior", [0.5, PRIORS["asvspoof5"]])
def test_gaussian_scores_give_the_analytic_llr(prior):
    mu1, mu0, sigma, n = 1.5, -0.5, 2.0, 20_000  # bona fide ~ N(mu1, sigma), spoof ~ N(mu0, sigma)
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.normal(mu1, sigma, n), rng.normal(mu0, sigma, n)])
    is_bona = np.arange(2 * n) < n
    a_true = (mu1 - mu0) / sigma**2
    b_true = -(mu1**2 - mu0**2) / (2 * sigma**2)
    cal = fit_calibration(x, labels_of(is_bona), prior=prior)
    assert cal.converged and (cal.n_bonafide, cal.n_spoof) == (n, n) and cal.prior == prior
    se = sandwich_se(a_true, b_true, x, is_bona, prior)
    assert abs(cal.a - a_true) < 5 * se[0], (cal.a, a_true, se)
    assert abs(cal.b - b_true) < 5 * se[1], (cal.b, b_true, se)
    assert se.max() < 0.02  # the tolerance really is tight at this sample size
    # calibrated scores are LLRs: at the true map they coincide with the analytic log density ratio
    llr = -0.5 * ((x - mu1) / sigma) ** 2 + 0.5 * ((x - mu0) / sigma) ** 2  # log N(x; mu1) - log N(x; mu0)
    np.testing.assert_allclose(a_true * x + b_true, llr, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prior", [0.5, 0.2, PRIORS["asvspoof5"]])
def test_fit_matches_grid_search_and_lbfgs(prior):
    x, is_bona = overlapping(240, 5)
    cal = fit_calibration(x, labels_of(is_bona), prior=prior)
    assert cal.converged
    # scipy L-BFGS on the objective written above
    res = minimize(lambda t: objective_bits(t[0], t[1], x, is_bona, prior), x0=[0.0, 0.0], method="L-BFGS-B",
                   options={"ftol": 1e-15, "gtol": 1e-10})  # fmt: skip
    assert cal.a == pytest.approx(res.x[0], abs=1e-4) and cal.b == pytest.approx(res.x[1], abs=1e-4)
    # brute force: a grid refined around its own minimum (never around the fit), step 0.4 -> 4e-7
    ca, cb, half = 0.0, 0.0, 8.0
    for _ in range(7):
        grid_a = np.linspace(ca - half, ca + half, 41)
        grid_b = np.linspace(cb - half, cb + half, 41)
        vals = np.array([[objective_bits(a, b, x, is_bona, prior) for b in grid_b] for a in grid_a])
        i, j = np.unravel_index(np.argmin(vals), vals.shape)
        ca, cb, best, step = grid_a[i], grid_b[j], vals[i, j], grid_a[1] - grid_a[0]
        half = 2 * step
    # along the objective's narrow valley a grid's minimiser can sit a few steps off the optimum
    assert abs(cal.a - ca) <= 50 * step and abs(cal.b - cb) <= 50 * step
    fitted = objective_bits(cal.a, cal.b, x, is_bona, prior)
    assert fitted <= best + 1e-12
    assert cal.objective_bits == pytest.approx(fitted, rel=1e-9)


def test_calibration_is_affine_invariant_and_lowers_cllr():
    x, is_bona = overlapping(500, 8)
    base = fit_calibration(x, labels_of(is_bona))
    for scale, shift in ((3.0, -7.0), (0.01, 100.0)):
        c = fit_calibration(scale * x + shift, labels_of(is_bona))
        np.testing.assert_allclose(c.apply(scale * x + shift), base.apply(x), rtol=1e-7, atol=1e-7)
        before = prior_weighted_cross_entropy(*_split(scale * x + shift, is_bona), 0.5)
        after = prior_weighted_cross_entropy(*_split(c.apply(scale * x + shift), is_bona), 0.5)
        assert after <= before  # Cllr after calibration <= before, on the data it was fitted on
    # Cllr of calibrated scores never exceeds 1 bit (the a=0, b=0 map reaches exactly 1)
    assert prior_weighted_cross_entropy(*_split(base.apply(x), is_bona), 0.5) < 1.0


def _split(s: np.ndarray, is_bona: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return s[is_bona], s[~is_bona]


def test_eer_and_min_dcf_unchanged_by_calibration():
    x, is_bona = overlapping(300, 2)
    df = _table(x, is_bona).assign(attack=np.where(is_bona, "bonafide", np.where(x > 2, "A1", "A2")))
    cal = fit_calibration(x, labels_of(is_bona), prior=PRIORS["asvspoof5"])
    raw = evaluate(df, n_boot=0, score_type="bonafide-logit")
    calibrated = evaluate(df, n_boot=0, score_type="bonafide-logit", calibration=cal)
    for k in ("eer", "eer_threshold", "min_dcf", "min_dcf_threshold", "per_attack"):
        assert calibrated[k] == raw[k], k
    assert raw["eer"] == brute_force_eer(x[is_bona], x[~is_bona])[0]  # the official EER, bit for bit
    # threshold-free: the calibrated scores themselves (a > 0, no ties here) have the same EER / minDCF
    llr = cal.apply(x)
    assert cal.a > 0 and np.unique(llr).size == llr.size
    assert compute_eer(*_split(llr, is_bona))[0] == raw["eer"]
    assert min_dcf(*_split(llr, is_bona))[0] == pytest.approx(raw["min_dcf"], abs=1e-15)
    # actDCF / Cllr are those of the calibrated scores, computed independently here
    t = ASVSPOOF5.bayes_threshold
    b, s = _split(llr, is_bona)
    p_miss, p_fa = np.mean(b < t), np.mean(s >= t)
    ref_dcf = (0.95 * p_miss + 10 * 0.05 * p_fa) / min(0.95, 0.5)
    assert calibrated["act_dcf"] == pytest.approx(ref_dcf, abs=1e-15)
    assert calibrated["cllr"] == pytest.approx(objective_bits(cal.a, cal.b, x, is_bona, 0.5), rel=1e-10)
    assert calibrated["uncalibrated"]["cllr"] == raw["cllr"]
    assert calibrated["calibrated"] is True and calibrated["calibration"]["a"] == cal.a
    assert calibrated["act_dcf_cllr"] == {**calibrated["act_dcf_cllr"], "calibrated": True}
    assert raw["calibrated"] is False and raw["calibration"] is None
    assert raw["score_type"] == "bonafide-logit" == raw["act_dcf_cllr"]["score_type"]
    assert "not comparable across checkpoints" in raw["act_dcf_cllr"]["note"]


def test_score_type_is_read_from_the_table():
    x, is_bona = overlapping(60, 4)
    m = evaluate(_table(x, is_bona).assign(score_type="log-odds"), n_boot=0)
    assert m["score_type"] == "log-odds"
    assert evaluate(_table(x, is_bona), n_boot=0)["score_type"] is None
    mixed = _table(x, is_bona).assign(score_type=["log-odds"] * 30 + ["bonafide-logit"] * 30)
    with pytest.raises(ScoreError, match="2 different types"):
        evaluate(mixed, n_boot=0)


# ---- degenerate and bad dev sets ----------------------------------------------------------------------


def test_all_equal_scores_give_the_zero_llr():
    cal = fit_calibration(np.full(6, 2.5), labels_of(np.arange(6) < 2))
    assert (cal.a, cal.b, cal.converged) == (0.0, 0.0, True)
    assert isinstance(cal, Calibration) and cal.to_dict()["method"].startswith("logistic-regression")


def test_bad_dev_sets_are_one_clear_line():
    ids = [f"u{i}" for i in range(6)]
    with pytest.raises(ScoreError, match=r"dev\.csv: no spoof trials among 4 rows"):
        fit_calibration([0.1, 0.2, 0.3, 0.4], ["bonafide"] * 4, source="dev.csv")
    x = np.array([0.1, np.nan, 0.3, -0.2, np.inf, 0.0])
    lab = labels_of(np.array([True, True, True, False, False, False]))
    with pytest.raises(ScoreError, match=r"dev\.csv: 2 of 6 scores are NaN or infinite \(first at row 2 "
                       r"\(utt_id u1\)"):  # fmt: skip
        fit_calibration(x, lab, ids=ids, source="dev.csv")
    with pytest.raises(ScoreError, match="perfectly separated"):
        fit_calibration([3.0, 2.0, 1.0, -1.0], ["bonafide", "bonafide", "spoof", "spoof"])
    with pytest.raises(ScoreError, match=r"row 3 \(utt_id u2\): 'unknown'"):
        fit_calibration([1, 2, 3], ["bonafide", "spoof", "unknown"], ids=ids[:3])
    with pytest.raises(ScoreError, match="strictly between 0 and 1"):
        fit_calibration([1, 2, 0.5], ["bonafide", "spoof", "spoof"], prior=1.0)
    for scores, labels in (([0.1], ["bonafide"]), ([0.1, np.nan], ["bonafide", "spoof"])):
        with pytest.raises(ScoreError) as info:
            fit_calibration(scores, labels, source="f.csv")
        assert "\n" not in str(info.value) and str(info.value).startswith("f.csv: ")


def test_unconverged_fit_is_flagged():
    x, is_bona = overlapping(200, 9)
    assert not fit_calibration(x, labels_of(is_bona), max_iter=1).converged
    assert fit_calibration(x, labels_of(is_bona)).converged
