"""Claims computations (sharpscope.report.claims) against brute force and hand-worked examples."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from sharpscope.errors import SharpscopeError
from sharpscope.report import claims


def brute_wilcoxon_p(d: np.ndarray) -> float:
    """Exact two-sided signed-rank p by enumerating all 2^n sign patterns (no ties, no zeros)."""
    ranks = sps.rankdata(np.abs(d))
    w_obs = ranks[d > 0].sum()
    total = ranks.sum()
    dist = [
        sum(r for r, s in zip(ranks, signs, strict=True) if s)
        for signs in itertools.product((0, 1), repeat=len(d))
    ]
    dist = np.asarray(dist)
    lo, hi = min(w_obs, total - w_obs), max(w_obs, total - w_obs)
    return float(np.mean((dist <= lo) | (dist >= hi)))


def test_verdict_rule_hand_examples():
    assert claims.verdict(0.3, 0.1, 0.5, 0.01, +1) == "supported"
    assert claims.verdict(-0.3, -0.5, -0.1, 0.01, +1) == "not supported"
    assert claims.verdict(0.3, -0.1, 0.5, 0.2, +1) == "undecided"
    assert claims.verdict(0.3, 0.1, 0.5, 0.2, +1) == "undecided"  # CI and p disagree
    assert claims.verdict(-2.0, -3.0, -1.0, 0.03, -1) == "supported"
    assert claims.verdict(2.0, 1.0, 3.0, 0.03, -1) == "not supported"
    assert claims.verdict(math.nan, 0, 1, 0.01, +1) == "undecided"
    with pytest.raises(SharpscopeError):
        claims.verdict(1, 0, 2, 0.01, 0)


def test_paired_effect_wilcoxon_matches_enumeration_and_bootstrap_loop():
    d = np.array([0.8, -0.2, 1.5, 0.3, 2.2, 0.9, -0.6])
    e = claims.paired_effect(d, n_boot=500, seed=3)
    assert e.test == "Wilcoxon signed-rank" and e.n == 7
    assert e.estimate == pytest.approx(d.mean())
    assert e.p == pytest.approx(brute_wilcoxon_p(d), abs=1e-12)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 7, size=(500, 7))
    means = [np.mean([d[i] for i in row]) for row in idx]
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert (e.ci_lo, e.ci_hi) == pytest.approx((lo, hi))


def test_paired_effect_small_n_uses_t_interval_by_hand():
    d = np.array([1.0, 2.0, 4.0])
    e = claims.paired_effect(d)
    mean, sd = 7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    t = mean / (sd / math.sqrt(3))
    assert e.test == "paired t-test"
    assert e.p == pytest.approx(2 * sps.t.sf(t, 2))
    half = sps.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert (e.ci_lo, e.ci_hi) == pytest.approx((mean - half, mean + half))
    z = claims.paired_effect(np.zeros(8))
    assert (z.estimate, z.p) == (0.0, 1.0)


def test_correlation_effect_spearman_by_ranks_and_exact_permutation():
    x = np.array([0.1, 0.4, 0.2, 0.9, 0.5, 0.7])
    y = np.array([3.0, 5.0, 1.0, 9.0, 6.0, 8.0])
    e = claims.correlation_effect(x, y, n_boot=200, seed=0)
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    rho = np.corrcoef(rx, ry)[0, 1]
    assert e.estimate == pytest.approx(rho)
    perm = [np.corrcoef(rx, np.array(p))[0, 1] for p in itertools.permutations(ry)]
    p_exact = np.mean(np.abs(perm) >= abs(rho) - 1e-12)
    assert e.p == pytest.approx(p_exact)
    assert e.ci_lo <= e.estimate <= e.ci_hi


def test_matched_pairs_need_every_setting_equal():
    meta = pd.DataFrame(
        {
            "meta_method": ["erm", "erm", "sam", "sam", "asam"],
            "meta_seed": [0, 1, 0, 1, 2],
            "meta_lr": [0.003, 0.003, 0.003, 0.001, 0.003],
            "meta_sam_rho": [0, 0, 0.05, 0.05, 0.5],
        },
        index=["e0", "e1", "s0", "s1", "a2"],
    )
    # s1 differs in lr, a2 in seed: only s0 has a match
    assert claims.matched_pairs(meta, ["s0", "s1", "a2"], ["e0", "e1"]) == [("s0", "e0")]
    assert claims.matched_pairs(meta, ["s0", "s1"], ["e0", "e1"], ignore=("lr",)) == [
        ("s0", "e0"),
        ("s1", "e1"),
    ]


def _table() -> pd.DataFrame:
    """Hand-built results: 6 AASIST checkpoints (3 ERM, 3 SAM, matched seeds), 4 SSL (2 full, 2 LoRA+MLDG)."""
    rows = []
    sets = {"in-domain": True, "shift1": False, "shift2": False}
    specs = []
    for s in range(3):
        specs.append((f"erm{s}", "aasist", "erm", "full", s, 0.003))
        specs.append((f"sam{s}", "aasist", "sam", "full", s, 0.003))
    for s in range(2):
        specs.append((f"full{s}", "ssl", "erm", "full", s, 0.001))
        specs.append((f"lora{s}", "ssl+lora", "mldg", "lora", s, 0.003))  # LoRA: its own sharpness family
    for k, (ck, fam, method, ft, seed, lr) in enumerate(specs):
        for t, ind in sets.items():
            sharp = 1.0 + 0.1 * k if ind else 2.0 + 0.1 * k + (0.5 if t == "shift2" else 0.0)
            eer = 0.01 if ind else 0.10 + 0.01 * k - (0.04 if method == "sam" else 0.0)
            rows.append(
                {
                    "checkpoint": ck,
                    "testset": t,
                    "in_domain": ind,
                    "subset": "",
                    "family": fam,
                    "measure": "m-sharpness",
                    "rho": 0.05,
                    "loss": "weighted-ce",
                    "value": sharp,
                    "eer": eer,
                    "eer_ci_lo": eer - 0.02,
                    "eer_ci_hi": eer + 0.04,
                    "meta_method": method,
                    "meta_finetune": ft,
                    "meta_seed": seed,
                    "meta_lr": lr,
                }
            )
    return pd.DataFrame(rows)


def test_compute_claims_on_hand_built_table():
    res = claims.compute_claims(_table(), n_boot=300, seed=0)
    t = res.table.set_index(res.table["claim"].str[:3])
    # (a): shifted − in-domain = mean(2.0, 2.5) − 1.0 = 1.25 for every AASIST checkpoint
    a = t.loc["(a)"]
    assert a["family"] == "aasist" and a["n"] == 6 and a["estimate"] == pytest.approx(1.25)
    # six equal positive differences: exact Wilcoxon p = 2/2^6 < 0.05 and the CI is the point 1.25
    assert a["p"] == pytest.approx(2 / 64) and a["verdict"] == "supported"
    # (b): sharpness and OOD EER both rise with k except the SAM offset -> compare with scipy
    sub = _table().query("family == 'aasist' and not in_domain")
    g = sub.groupby("checkpoint")[["value", "eer"]].mean()
    assert t.loc["(b)", "estimate"] == pytest.approx(sps.spearmanr(g["value"], g["eer"]).statistic)
    # (c): SAM seed s vs ERM seed s: EER differs by 0.01 (k step) − 0.04 = −3 pp for every pair
    c = t.loc["(c)"]
    assert c["n"] == 3 and c["estimate"] == pytest.approx(-3.0) and c["test"] == "paired t-test"
    # (d): LoRA+MLDG seed s (k = 7, 9) vs full seed s (k = 6, 8), lr ignored: +1 pp each
    d = t.loc["(d)"]
    assert d["family"].startswith("ssl:") and d["n"] == 2 and d["estimate"] == pytest.approx(1.0)
    assert set(res.table["verdict"]) <= {"supported", "not supported", "undecided"}
    # EER CI half-width: (hi − lo) / 2 = 3 pp for every cell
    assert np.allclose(res.eer_ci["halfwidth_max_pp"], 3.0)
    assert list(res.eer_ci["testset"]) == ["in-domain", "shift1", "shift2"]
    md = claims.claims_markdown(res)
    assert md.startswith("| claim |") and claims.VERDICT_RULE in md


def test_compute_claims_missing_arm_is_undecided_with_reason():
    df = _table().query("meta_method != 'mldg'")
    res = claims.compute_claims(df, n_boot=100)
    d = res.table[res.table["claim"].str.startswith("(d)")].iloc[0]
    assert d["verdict"] == "undecided" and "no checkpoints" in d["note"]
    with pytest.raises(SharpscopeError, match="'eer'"):
        claims.compute_claims(df.drop(columns="eer"))
