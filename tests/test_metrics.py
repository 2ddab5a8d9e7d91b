"""Metrics against hand-derived values and an independent loop-based re-implementation of the official EER."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sharpscope.errors import ScoreError
from sharpscope.metrics import (
    ASVSPOOF5,
    act_dcf,
    bootstrap_eer_ci,
    bootstrap_eers,
    cllr,
    compute_eer,
    det_curve,
    evaluate,
    min_dcf,
)

# ---- independent references -----------------------------------------------------------------------------


def brute_force_curve(bona, spoof):
    """The stated algorithm with Python's stable ``sorted`` and explicit counting loops (no cumsum)."""
    trials = [(float(s), 1) for s in bona] + [(float(s), 0) for s in spoof]
    ordered = sorted(trials, key=lambda t: t[0])  # stable: bona fide (listed first) precede tied spoofs
    points = [(0.0, 1.0, ordered[0][0] - 0.001)]
    for k in range(1, len(ordered) + 1):
        rejected = ordered[:k]
        frr = sum(1 for _, lab in rejected if lab == 1) / len(bona)
        far = sum(1 for _, lab in ordered[k:] if lab == 0) / len(spoof)
        points.append((frr, far, ordered[k - 1][0]))
    return points


def brute_force_eer(bona, spoof):
    best = None
    for frr, far, thr in brute_force_curve(bona, spoof):
        d = abs(frr - far)
        if best is None or d < best[0]:  # strict: keeps the first minimiser
            best = (d, (frr + far) / 2, thr)
    return best[1], best[2]


def sweep_eer(bona, spoof):
    """Threshold sweep: accept iff score > t, for t in {-inf} U unique scores (ascending)."""
    bona, spoof = np.asarray(bona), np.asarray(spoof)
    best = None
    for t in [-np.inf, *np.unique(np.concatenate([bona, spoof]))]:
        frr, far = np.mean(bona <= t), np.mean(spoof > t)
        if best is None or abs(frr - far) < best[0]:
            best = (abs(frr - far), (frr + far) / 2)
    return best[1]


# ---- EER: hand-derived cases -----------------------------------------------------------------------------


def test_eer_hand_example():
    # sorted: 0.2 S, 0.3 B, 0.5 S, 0.6 B, 0.9 B  (n_bona = 3, n_spoof = 2)
    # FRR = [0, 0, 1/3, 1/3, 2/3, 1];  FAR = [1, 1/2, 1/2, 0, 0, 0]
    # |FRR - FAR| = [1, 1/2, 1/6, 1/3, 2/3, 1] -> index 2: EER = (1/3 + 1/2) / 2 = 5/12 at threshold 0.3
    eer, thr = compute_eer([0.9, 0.6, 0.3], [0.5, 0.2])
    assert eer == pytest.approx(5 / 12)
    assert thr == 0.3
    frr, far, thresholds = det_curve([0.9, 0.6, 0.3], [0.5, 0.2])
    np.testing.assert_allclose(frr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(far, [1, 0.5, 0.5, 0, 0, 0])
    np.testing.assert_allclose(thresholds, [0.2 - 0.001, 0.2, 0.3, 0.5, 0.6, 0.9])


def test_ties_count_against_bonafide():
    # bona [2, 1], spoof [1, 0]: sorted 0 S, 1 B, 1 S, 2 B (tied bona fide first)
    # FRR = [0, 0, .5, .5, 1]; FAR = [1, .5, .5, 0, 0] -> index 2: EER = 0.5
    assert compute_eer([2.0, 1.0], [1.0, 0.0])[0] == pytest.approx(0.5)
    # break the tie in favour of bona fide: sorted 0 S, 1 S, 1.0001 B, 2 B -> EER 0
    assert compute_eer([2.0, 1.0001], [1.0, 0.0])[0] == 0.0
    # a single tied pair: [1, 0] labels give FRR [0, 1, 1], FAR [1, 1, 0] -> EER 1 (it would be 0 otherwise)
    assert compute_eer([1.0], [1.0])[0] == 1.0


def test_all_equal_scores_give_one():
    assert compute_eer(np.zeros(7), np.zeros(4)) == (1.0, 0.0)
    assert compute_eer(np.full(3, 2.5), np.full(9, 2.5))[0] == 1.0


def test_perfect_and_inverted_separation():
    # labels sorted [0, 0, 1, 1]: FRR [0, 0, 0, .5, 1], FAR [1, .5, 0, 0, 0] -> index 2, threshold = 2nd score
    assert compute_eer([3.0, 4.0], [1.0, 2.0]) == (0.0, 2.0)
    # labels sorted [1, 1, 0, 0]: FRR [0, .5, 1, 1, 1], FAR [1, 1, 1, .5, 0] -> index 2: EER 1
    assert compute_eer([1.0, 2.0], [3.0, 4.0])[0] == 1.0


def test_eer_is_invariant_to_input_order_and_monotone_maps():
    rng = np.random.default_rng(3)
    b, s = rng.normal(1, 1, 50), rng.normal(0, 1, 70)
    e = compute_eer(b, s)[0]
    assert compute_eer(rng.permutation(b), rng.permutation(s))[0] == e
    assert compute_eer(np.exp(b), np.exp(s))[0] == e


@pytest.mark.parametrize("seed", range(8))
def test_eer_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    nb, ns = rng.integers(1, 40), rng.integers(1, 40)
    b = rng.normal(0.8, 1.0, nb)
    s = rng.normal(0.0, 1.0, ns)
    if seed % 2:  # many ties, across and within classes
        b, s = np.round(b, 0), np.round(s, 0)
    eer, thr = compute_eer(b, s)
    ref_eer, ref_thr = brute_force_eer(b, s)
    assert eer == pytest.approx(ref_eer, abs=1e-15)
    assert thr == ref_thr
    frr, far, _ = det_curve(b, s)
    ref = np.array([(p[0], p[1]) for p in brute_force_curve(b, s)])
    np.testing.assert_allclose(frr, ref[:, 0], atol=1e-15)
    np.testing.assert_allclose(far, ref[:, 1], atol=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_eer_matches_threshold_sweep_without_ties(seed):
    rng = np.random.default_rng(100 + seed)
    b, s = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.3, 150)
    assert compute_eer(b, s)[0] == pytest.approx(sweep_eer(b, s), abs=1e-12)


def test_eer_large_input_is_vectorised():
    rng = np.random.default_rng(0)
    b, s = rng.normal(2, 1, 300_000), rng.normal(0, 1, 300_000)
    eer, _ = compute_eer(b, s)
    # Gaussian classes one unit-variance apart by 2: EER = Phi(-1) = 0.1587
    assert eer == pytest.approx(0.158655, abs=3e-3)


# ---- DCF and Cllr ----------------------------------------------------------------------------------------


def test_cost_model_constants():
    # normaliser = min(1 * 0.95, 10 * 0.05) = 0.5;  threshold = -ln(0.95 / 0.5) = -ln 1.9
    assert ASVSPOOF5.normaliser == pytest.approx(0.5)
    assert ASVSPOOF5.bayes_threshold == pytest.approx(-math.log(1.9))


def test_min_dcf_hand_example():
    # same curve as test_eer_hand_example; DCF = 0.95 FRR + 0.5 FAR
    # = [0.5, 0.25, 0.5667, 0.3167, 0.6333, 0.95] -> min 0.25 at index 1 (threshold 0.2) -> 0.25 / 0.5 = 0.5
    value, thr = min_dcf([0.9, 0.6, 0.3], [0.5, 0.2])
    assert value == pytest.approx(0.5)
    assert thr == 0.2


def test_min_dcf_matches_loop_and_is_at_most_one():
    rng = np.random.default_rng(7)
    b, s = np.round(rng.normal(0.5, 1, 60), 1), np.round(rng.normal(0, 1, 40), 1)
    costs = [0.95 * frr + 0.5 * far for frr, far, _ in brute_force_curve(b, s)]
    value, _ = min_dcf(b, s)
    assert value == pytest.approx(min(costs) / 0.5)
    assert value <= 1.0  # the prepended (0, 1) point costs exactly the normaliser
    assert min_dcf([1.0, 2.0], [3.0, 4.0])[0] == pytest.approx(1.0)
    assert min_dcf([3.0, 4.0], [1.0, 2.0])[0] == 0.0


def test_act_dcf_hand_example():
    # t = -ln 1.9 = -0.642: miss = #(bona < t)/2 = 1/2 (the -1.0);  fa = #(spoof >= t)/2 = 1/2 (the 0.0)
    # DCF = 0.95 * 0.5 + 0.5 * 0.5 = 0.725 -> normalised 1.45
    value, thr = act_dcf([1.0, -1.0], [-2.0, 0.0])
    assert value == pytest.approx(1.45)
    assert thr == pytest.approx(-math.log(1.9))
    # a score exactly at the threshold: a bona fide one is accepted, a spoof one is a false alarm
    t = -math.log(1.9)
    assert act_dcf([t], [t - 1])[0] == 0.0
    assert act_dcf([t + 1], [t])[0] == pytest.approx(0.5 / 0.5)


def test_cllr_hand_values():
    # LLR 0 everywhere: log2(1 + e^0) = 1 bit for every trial
    assert cllr(np.zeros(3), np.zeros(5)) == pytest.approx(1.0)
    # bona ln 3, spoof -ln 3: log2(1 + 1/3) = log2(4/3) for both classes
    assert cllr([math.log(3)], [-math.log(3)]) == pytest.approx(math.log2(4 / 3))
    # huge LLRs must not overflow: correct side -> ~0 bits, wrong side -> |llr| / ln 2 bits
    assert cllr([1000.0], [-1000.0]) == pytest.approx(0.0, abs=1e-12)
    assert cllr([-1000.0], [1000.0]) == pytest.approx(1000 / math.log(2))


# ---- bootstrap ---------------------------------------------------------------------------------------------


def test_bootstrap_equals_naive_resampling():
    rng = np.random.default_rng(11)
    b, s = np.round(rng.normal(0.7, 1, 40), 1), np.round(rng.normal(0, 1, 30), 1)
    fast = bootstrap_eers(b, s, n=25, seed=5)
    draw = np.random.default_rng(5)
    naive = []
    for _ in range(25):
        bi = draw.integers(0, b.size, b.size)
        si = draw.integers(0, s.size, s.size)
        naive.append(compute_eer(b[bi], s[si])[0])
    np.testing.assert_allclose(fast, naive, atol=1e-15)


def test_bootstrap_ci_properties():
    rng = np.random.default_rng(1)
    b, s = rng.normal(1, 1, 300), rng.normal(0, 1, 300)
    eer = compute_eer(b, s)[0]
    lo, hi = bootstrap_eer_ci(b, s, n=200, seed=0)
    assert lo < eer < hi
    assert hi - lo < 0.15
    assert bootstrap_eer_ci(b, s, n=200, seed=0) == (lo, hi)  # seeded
    assert bootstrap_eer_ci(b, s, n=200, seed=1) != (lo, hi)
    assert bootstrap_eer_ci(np.zeros(4), np.zeros(4), n=10) == (1.0, 1.0)


# ---- errors ------------------------------------------------------------------------------------------------


def test_missing_class_and_nonfinite_raise():
    with pytest.raises(ScoreError, match="no spoof scores"):
        compute_eer([1.0, 2.0], [])
    with pytest.raises(ScoreError, match="no bona fide scores"):
        min_dcf([], [1.0])
    with pytest.raises(ScoreError, match="1 of 3 spoof scores are NaN"):
        compute_eer([1.0], [0.0, np.nan, 2.0])
    with pytest.raises(ScoreError, match="NaN or infinite"):
        cllr([np.inf], [0.0])


# ---- evaluate ----------------------------------------------------------------------------------------------


def _table():
    #  bona fide: 0.9 (mp3, tel), 0.6 (none, tel), 0.3 (none, voip)
    #  spoof A01: 0.5 (mp3, tel), 0.2 (none, voip);  spoof A02: 0.8 (mp3, tel), 0.1 (none, voip)
    return pd.DataFrame(
        {
            "utt_id": ["b1", "b2", "b3", "s1", "s2", "s3", "s4"],
            "label": ["bonafide"] * 3 + ["spoof"] * 4,
            "attack": ["-", "-", "-", "A01", "A01", "A02", "A02"],
            "codec": ["mp3", "none", "none", "mp3", "none", "mp3", "none"],
            "transmission": ["tel", "tel", "voip", "tel", "voip", "tel", "voip"],
            "score": [0.9, 0.6, 0.3, 0.5, 0.2, 0.8, 0.1],
        }
    )


def test_evaluate_pooled_and_breakdowns():
    df = _table()
    m = evaluate(df, seed=0, n_boot=50)
    assert (m["n_bonafide"], m["n_spoof"]) == (3, 4)
    assert m["eer"] == compute_eer([0.9, 0.6, 0.3], [0.5, 0.2, 0.8, 0.1])[0]
    assert m["min_dcf"] == min_dcf([0.9, 0.6, 0.3], [0.5, 0.2, 0.8, 0.1])[0]
    assert len(m["eer_ci95"]) == 2 and m["eer_ci95"][0] <= m["eer_ci95"][1]
    # per attack: each attack's spoofs against ALL bona fide.  A01 = test_eer_hand_example -> 5/12
    assert m["per_attack"]["A01"] == {"eer": pytest.approx(5 / 12), "n_bonafide": 3, "n_spoof": 2}
    # A02: sorted 0.1 S, 0.3 B, 0.6 B, 0.8 S, 0.9 B; FRR [0,0,1/3,2/3,2/3,1], FAR [1,.5,.5,.5,0,0]
    # |d| = [1, .5, 1/6, 1/6, 2/3, 1]: an exact tie on paper, but in float64 |2/3 - 1/2| = 0.16666666666666663
    # < |1/3 - 1/2| = 0.16666666666666669, so index 3 wins -- as in the official code, which computes the
    # same floats: EER = (2/3 + 1/2) / 2 = 7/12
    assert m["per_attack"]["A02"]["eer"] == pytest.approx(7 / 12)
    assert m["per_attack"]["A02"]["eer"] == brute_force_eer([0.9, 0.6, 0.3], [0.8, 0.1])[0]
    assert "-" not in m["per_attack"]
    # per codec: both classes inside the condition.  mp3: bona [0.9], spoof [0.5, 0.8] -> EER 0
    assert m["per_codec"]["mp3"] == {"eer": 0.0, "n_bonafide": 1, "n_spoof": 2}
    # none: bona [0.6, 0.3], spoof [0.2, 0.1] -> perfectly separated
    assert m["per_codec"]["none"]["eer"] == 0.0
    assert set(m["per_transmission"]) == {"tel", "voip"}
    import json

    json.dumps(m)  # metrics.json content must be plain JSON


def test_evaluate_condition_missing_a_class_keeps_counts():
    df = _table()
    df.loc[df.utt_id == "b3", "transmission"] = "sat"
    m = evaluate(df, n_boot=0)
    assert m["per_transmission"]["sat"] == {"eer": None, "n_bonafide": 1, "n_spoof": 0}
    assert m["eer_ci95"] is None


def test_evaluate_skips_absent_columns_and_groups_missing_values():
    df = _table().drop(columns=["transmission"])
    df["codec"] = df["codec"].astype(object)
    df.loc[df.utt_id.isin(["b1", "s1"]), "codec"] = None
    m = evaluate(df, n_boot=0)
    assert "per_transmission" not in m
    assert m["per_codec"]["NA"] == {"eer": 0.0, "n_bonafide": 1, "n_spoof": 1}


def test_evaluate_errors_are_one_line_and_name_utterances():
    df = _table()
    with pytest.raises(ScoreError, match="no spoof trials") as e:
        evaluate(df[df.label == "bonafide"], n_boot=0)
    assert "\n" not in str(e.value)
    bad = df.copy()
    bad.loc[bad.utt_id.isin(["s2", "b3"]), "score"] = [np.nan, np.inf]
    with pytest.raises(ScoreError, match=r"2 of 7 scores are NaN or infinite \(first: b3, s2\)"):
        evaluate(bad, n_boot=0)
    odd = df.copy()
    odd.loc[odd.utt_id == "s4", "label"] = "unknown"
    with pytest.raises(ScoreError, match="1 rows have a label other than bonafide/spoof .first: s4"):
        evaluate(odd, n_boot=0)
    with pytest.raises(ScoreError, match="no 'score' column"):
        evaluate(df.drop(columns=["score"]))
