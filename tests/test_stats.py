"""Statistics: every coefficient and p-value against scipy / brute force / hand-worked values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from sharpscope import stats
from sharpscope.cli import app
from sharpscope.errors import SharpscopeError
from sharpscope.report.tables import load_results
from tests.synthetic import example_results

RNG = np.random.default_rng(1234)
X8 = np.array([0.31, 0.52, 0.18, 0.95, 0.77, 0.44, 0.63, 0.29])
Y8 = np.array([0.040, 0.061, 0.035, 0.090, 0.052, 0.071, 0.083, 0.030])


def _tau_b_rows(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b of each row of X with y from pair counts: (C - D) / sqrt((n0 - n1)(n0 - n2))."""
    n = len(y)
    i, j = np.triu_indices(n, 1)
    dx = X[:, i] - X[:, j]
    dy = (y[i] - y[j])[None, :]
    conc = ((dx * dy) > 0).sum(1)
    disc = ((dx * dy) < 0).sum(1)
    n0 = n * (n - 1) / 2
    n1 = sum(
        t * (t - 1) / 2 for t in np.unique(X[0], return_counts=True)[1]
    )  # ties are permutation-invariant
    n2 = sum(t * (t - 1) / 2 for t in np.unique(y, return_counts=True)[1])
    return (conc - disc) / np.sqrt((n0 - n1) * (n0 - n2))


def _spearman_rows(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    rx = sps.rankdata(X, axis=1)
    ry = sps.rankdata(y)
    rx = rx - rx.mean(1, keepdims=True)
    ry = ry - ry.mean()
    return (rx @ ry) / np.sqrt((rx * rx).sum(1) * (ry @ ry))


def _brute_pvalue(x, y, rows_stat) -> float:
    """Exact two-sided permutation p (scipy's definition: 2·min(P(T<=t), P(T>=t)), relative tolerance)."""
    obs = rows_stat(x[None, :], y)[0]
    null = rows_stat(np.array(list(itertools.permutations(x))), y)
    gamma = abs(np.finfo(float).eps * 100 * obs)
    less = np.mean(null <= obs + gamma)
    greater = np.mean(null >= obs - gamma)
    return min(1.0, 2 * min(less, greater))


# ---- coefficients vs scipy ---------------------------------------------------------------------------------


def test_pearson_equals_scipy_exactly():
    c = stats.coefficient(X8, Y8, "pearson")
    ref = sps.pearsonr(X8, Y8)
    assert c.coef == ref.statistic and c.p == ref.pvalue and c.p_method == "exact-normal" and c.n == 8


def test_pearson_log_equals_scipy_on_logs():
    c = stats.coefficient(X8, Y8, "pearson-log")
    ref = sps.pearsonr(np.log(X8), np.log(Y8))
    assert c.coef == ref.statistic and c.p == ref.pvalue


def test_spearman_asymptotic_equals_scipy_exactly():
    c = stats.coefficient(X8, Y8, "spearman", pvalue="asymptotic")
    ref = sps.spearmanr(X8, Y8)
    assert c.coef == ref.statistic and c.p == ref.pvalue and c.p_method == "asymptotic-t"


def test_spearman_small_n_uses_exact_permutation_distribution():
    c = stats.coefficient(X8[:7], Y8[:7], "spearman")
    assert c.p_method == "exact-permutation"
    assert c.coef == sps.spearmanr(X8[:7], Y8[:7]).statistic
    assert _spearman_rows(X8[None, :7], Y8[:7])[0] == pytest.approx(c.coef, abs=1e-12)
    brute = _brute_pvalue(X8[:7], Y8[:7], _spearman_rows)
    assert c.p == pytest.approx(brute, abs=1e-12)


def test_kendall_exact_without_ties_equals_scipy_exactly():
    c = stats.coefficient(X8, Y8, "kendall")
    ref = sps.kendalltau(X8, Y8, method="exact")
    assert c.coef == ref.statistic and c.p == ref.pvalue and c.p_method == "exact"


def test_kendall_with_ties_uses_seeded_permutation_close_to_exact_enumeration():
    x = np.array([1.0, 2, 2, 3, 4, 5, 5, 6])
    y = np.array([2.0, 1, 3, 3, 5, 4, 6, 7])
    c = stats.coefficient(x, y, "kendall", n_perm=4999, seed=3)
    assert c.coef == sps.kendalltau(x, y).statistic  # tau-b
    assert c.p_method == "permutation-4999" and c.note == "ties"
    assert _tau_b_rows(x[None], y)[0] == pytest.approx(c.coef, abs=1e-12)
    exact = _brute_pvalue(x, y, _tau_b_rows)
    assert abs(c.p - exact) < 0.03  # Monte Carlo error of 4999 draws is ~0.007 here
    again = stats.coefficient(x, y, "kendall", n_perm=4999, seed=3)
    assert again.p == c.p  # seeded


def test_permutation_mode_for_pearson_and_large_n_spearman():
    x = RNG.normal(size=20)
    y = x + RNG.normal(size=20)
    c = stats.coefficient(x, y, "spearman", n_perm=2000, seed=0)
    assert c.p_method == "permutation-2000"
    assert c.coef == sps.spearmanr(x, y).statistic
    assert abs(c.p - sps.spearmanr(x, y).pvalue) < 0.02
    cp = stats.coefficient(x, y, "pearson", pvalue="permutation", n_perm=2000, seed=0)
    assert cp.coef == sps.pearsonr(x, y).statistic and cp.p_method == "permutation-2000"
    assert abs(cp.p - sps.pearsonr(x, y).pvalue) < 0.02


def test_kendall_asymptotic_equals_scipy():
    c = stats.coefficient(X8, Y8, "kendall", pvalue="asymptotic")
    ref = sps.kendalltau(X8, Y8, method="asymptotic")
    assert c.coef == ref.statistic and c.p == ref.pvalue


@pytest.mark.parametrize("method", stats.METHODS)
def test_degenerate_inputs_give_nan_with_note(method):
    two = stats.coefficient([1.0, 2.0], [3.0, 4.0], method)
    assert math.isnan(two.coef) and math.isnan(two.p) and "n=2 < 3" in two.note
    const = stats.coefficient([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], method)
    assert math.isnan(const.coef) and const.note


def test_log_needs_positive_values_and_nan_input_raises():
    c = stats.coefficient([-1.0, 2.0, 3.0], [1.0, 2.0, 4.0], "pearson-log")
    assert math.isnan(c.coef) and "positive" in c.note
    with pytest.raises(SharpscopeError, match="NaN"):
        stats.coefficient([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "pearson")
    with pytest.raises(SharpscopeError, match="unknown correlation method"):
        stats.coefficient(X8, Y8, "distance")


@pytest.mark.parametrize("method", stats.METHODS)
def test_batch_coefficient_matches_scipy_with_ties(method):
    X = RNG.integers(1, 6, size=(25, 9)).astype(float)
    Y = RNG.integers(1, 6, size=(25, 9)).astype(float)
    got = stats.batch_coefficient(X, Y, method)
    for b in range(25):
        x, y = X[b], Y[b]
        if method == "spearman":
            ref = sps.spearmanr(x, y).statistic
        elif method == "pearson":
            ref = sps.pearsonr(x, y).statistic
        elif method == "pearson-log":
            ref = sps.pearsonr(np.log(x), np.log(y)).statistic
        else:
            ref = sps.kendalltau(x, y).statistic
        assert got[b] == pytest.approx(ref, abs=1e-12)


# ---- bootstrap ---------------------------------------------------------------------------------------------


def test_bootstrap_ci_equals_manual_percentile_bootstrap():
    lo, hi, n_ok = stats.bootstrap_ci(X8, Y8, "spearman", n_boot=300, seed=7, level=0.9)
    idx = np.random.default_rng(7).integers(0, 8, size=(300, 8))
    vals = []
    for row in idx:
        x, y = X8[row], Y8[row]
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        vals.append(sps.spearmanr(x, y).statistic)
    vals = np.array(vals)
    vals = vals[~np.isnan(vals)]
    assert n_ok == len(vals)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(vals, [5, 95])), abs=1e-12)


def test_cluster_bootstrap_resamples_whole_checkpoints():
    x = np.array([1.0, 2, 3, 4, 5, 6])
    y = np.array([1.0, 3, 2, 5, 4, 6])
    clusters = ["a", "a", "b", "b", "c", "c"]
    lo, hi, n_ok = stats.bootstrap_ci(x, y, "pearson", n_boot=200, seed=1, clusters=clusters)
    draws = np.random.default_rng(1).integers(0, 3, size=(200, 3))
    members = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]
    vals = []
    for d in draws:
        rows = np.concatenate([members[c] for c in d])
        vals.append(sps.pearsonr(x[rows], y[rows]).statistic)
    assert n_ok == 200
    assert (lo, hi) == pytest.approx(tuple(np.percentile(vals, [2.5, 97.5])), abs=1e-12)
    # unbalanced clusters take the loop path and give the same kind of answer
    lo2, hi2, n2 = stats.bootstrap_ci(
        x, y, "pearson", n_boot=50, seed=1, clusters=["a", "a", "a", "b", "c", "c"]
    )
    assert n2 > 0 and lo2 <= hi2


# ---- multiple testing --------------------------------------------------------------------------------------


def test_holm_and_bh_against_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005, 0.01, 0.03, 0.04 -> Holm 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06)
    np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02], atol=1e-15)
    # BH: 0.005*4/1, 0.01*4/2, 0.03*4/3, 0.04*4/4 -> running minimum from the top
    np.testing.assert_allclose(stats.benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02], atol=1e-15)
    np.testing.assert_allclose(stats.benjamini_hochberg(p), sps.false_discovery_control(p), atol=1e-15)
    with_nan = [0.01, np.nan, 0.04]
    np.testing.assert_allclose(stats.holm(with_nan), [0.02, np.nan, 0.04])
    np.testing.assert_allclose(stats.benjamini_hochberg(with_nan), [0.02, np.nan, 0.04])
    assert stats.holm([0.6, 0.7])[0] == 1.0  # capped


# ---- table level -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return example_results(n_ckpt=8, seed=2)


def _pairs(df, measure, rho, testset):
    r = df[(df.measure == measure) & np.isclose(df.rho, rho) & (df.subset == "all") & (df.testset == testset)]
    r = r.sort_values("checkpoint")
    return r["value"].to_numpy(), r["eer"].to_numpy()


def test_correlate_per_testset_matches_scipy_and_corrections(df):
    out = stats.correlate(df, "m-sharpness", "eer", rho=0.05, n_boot=100, seed=0)
    assert list(out["testset"].unique()) == list(stats.testset_shift(df)["testset"])  # in-domain first
    assert list(out["testset"].unique())[0] == "in-domain"
    for t in ("in-domain", "unseen-attacks", "codec"):
        x, y = _pairs(df, "m-sharpness", 0.05, t)
        rows = out[out.testset == t].set_index("method")
        assert rows.loc["pearson", "coef"] == sps.pearsonr(x, y).statistic
        assert rows.loc["pearson", "p"] == sps.pearsonr(x, y).pvalue
        assert rows.loc["kendall", "coef"] == sps.kendalltau(x, y).statistic
        assert rows.loc["kendall", "p"] == sps.kendalltau(x, y, method="exact").pvalue
        assert rows.loc["spearman", "coef"] == sps.spearmanr(x, y).statistic
        assert rows.loc["spearman", "p_method"] == "exact-permutation"
        assert rows.loc["pearson", "ci_lo"] <= rows.loc["pearson", "coef"] <= rows.loc["pearson", "ci_hi"]
    for m in stats.METHODS:
        fam = out[out.method == m]
        np.testing.assert_allclose(fam["p_holm"], stats.holm(fam["p"]))
        np.testing.assert_allclose(fam["p_bh"], stats.benjamini_hochberg(fam["p"]))
    assert set(out["rho"]) == {0.05} and set(out["subset"]) == {"all"} and (out["n"] == 8).all()


def test_correlate_pooled_and_domain_scopes(df):
    out = stats.correlate(
        df, "m-sharpness", rho=0.05, by=["pooled", "domain"], methods=["kendall"], n_boot=50
    )
    pooled = out[out.scope == "pooled"].iloc[0]
    base = df[(df.measure == "m-sharpness") & np.isclose(df.rho, 0.05) & (df.subset == "all")]
    base = base.sort_values(["checkpoint", "testset"])
    assert pooled["n"] == 24
    assert pooled["coef"] == pytest.approx(sps.kendalltau(base["value"], base["eer"]).statistic, abs=1e-12)
    assert "p assumes independence" in pooled["note"]
    dom = out[out.scope == "domain"].set_index("testset")
    assert dom.loc["in-domain sets", "n"] == 8 and dom.loc["out-of-domain sets", "n"] == 16


def test_eer_gap_and_x_testset(df):
    out = stats.correlate(
        df, "m-sharpness", "eer_gap", rho=0.05, x_testset="in-domain", methods=["pearson"], n_boot=0
    )
    ind = out[out.testset == "in-domain"].iloc[0]
    assert math.isnan(ind["coef"]) and ind["note"] == "y is constant"  # the gap is 0 in-domain
    x, _ = _pairs(df, "m-sharpness", 0.05, "in-domain")
    _, e_in = _pairs(df, "m-sharpness", 0.05, "in-domain")
    _, e_c = _pairs(df, "m-sharpness", 0.05, "codec")
    codec = out[out.testset == "codec"].iloc[0]
    assert codec["coef"] == sps.pearsonr(x, e_c - e_in).statistic
    assert codec["x_testset"] == "in-domain"


def test_column_as_x_and_selection_errors(df):
    out = stats.correlate(df, "meta_sam_rho", "eer", methods=["spearman"], n_boot=0)
    assert len(out) == 3
    with pytest.raises(SharpscopeError, match="several rho values"):
        stats.correlate(df, "m-sharpness")
    with pytest.raises(SharpscopeError, match="neither a column nor a measure"):
        stats.correlate(df, "hessian-trace", rho=0.05)
    with pytest.raises(SharpscopeError, match="varies within checkpoint"):
        stats.correlate(df, "value", "eer")
    with pytest.raises(SharpscopeError, match="is not numeric"):
        stats.correlate(df, "meta_method", "eer")
    with pytest.raises(SharpscopeError, match="no rows with rho=0.5"):
        stats.correlate(df, "m-sharpness", rho=0.5)


def test_nan_rows_raise_by_default_and_are_counted_with_dropna(df):
    bad = df.copy()
    hit = (bad.measure == "m-sharpness") & np.isclose(bad.rho, 0.05) & (bad.subset == "all")
    first = bad[hit & (bad.testset == "codec")].index[0]
    bad.loc[first, "value"] = np.nan
    with pytest.raises(SharpscopeError, match=r"1 \(checkpoint, testset\) pair\(s\).*--drop-nan"):
        stats.correlate(bad, "m-sharpness", rho=0.05)
    out = stats.correlate(bad, "m-sharpness", rho=0.05, dropna=True, methods=["kendall"], n_boot=0)
    codec = out[out.testset == "codec"].iloc[0]
    assert codec["n"] == 7 and codec["n_dropped"] == 1 and "1 NaN pair(s) excluded" in codec["note"]
    assert out[out.testset == "in-domain"].iloc[0]["n_dropped"] == 0


def test_tiny_tables_never_crash():
    df = example_results(n_ckpt=2, seed=0)
    out = stats.correlate(df, "m-sharpness", rho=0.05, n_boot=20)
    assert out["coef"].isna().all() and out["note"].str.contains("n=2 < 3").all()
    assert out["p_holm"].isna().all()


def test_estimator_seeds_are_averaged(df):
    rows = df[(df.measure == "m-sharpness") & np.isclose(df.rho, 0.05) & (df.subset == "all")]
    twin = rows.assign(seed=1, value=rows["value"] * 3)
    tab, _ = stats.paired_table(pd.concat([df, twin]), "m-sharpness", rho=0.05)
    ref, _ = stats.paired_table(df, "m-sharpness", rho=0.05)
    np.testing.assert_allclose(tab["x"], ref["x"] * 2)


# ---- granulated Kendall: tests/test_granulated_kendall.py (sign-based tau, training-config axes) ----------


# ---- partial correlation -----------------------------------------------------------------------------------


def _closed_form(x, y, z):
    rxy, rxz, ryz = (sps.pearsonr(a, b).statistic for a, b in ((x, y), (x, z), (y, z)))
    return (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))


def test_partial_correlation_three_variable_closed_form():
    z = RNG.normal(size=15)
    x = z + 0.5 * RNG.normal(size=15)
    y = z + 0.5 * RNG.normal(size=15)
    c = stats.partial_corr(x, y, z[:, None], "pearson")
    r = _closed_form(x, y, z)
    assert c.coef == pytest.approx(r, abs=1e-12)
    t = r * math.sqrt((15 - 3) / (1 - r * r))
    assert c.p == pytest.approx(2 * sps.t.sf(abs(t), 12), rel=1e-10)
    s = stats.partial_corr(x, y, z[:, None], "spearman")
    rx, ry, rz = sps.rankdata(x), sps.rankdata(y), sps.rankdata(z)
    assert s.coef == pytest.approx(_closed_form(rx, ry, rz), abs=1e-12)


def test_partial_correlation_categorical_control_equals_residual_method():
    n = 12
    g = np.array(["ERM", "SAM", "MLDG"] * 4)
    x = RNG.normal(size=n) + (g == "SAM")
    y = RNG.normal(size=n) + 2 * (g == "SAM")
    c = stats.partial_corr(x, y, pd.DataFrame({"g": g}), "pearson")
    D = np.column_stack([np.ones(n), g == "MLDG", g == "SAM"]).astype(float)
    ex = x - D @ np.linalg.lstsq(D, x, rcond=None)[0]
    ey = y - D @ np.linalg.lstsq(D, y, rcond=None)[0]
    r = sps.pearsonr(ex, ey).statistic
    assert c.coef == pytest.approx(r, abs=1e-12)
    t = r * math.sqrt((n - 4) / (1 - r * r))
    assert c.p == pytest.approx(2 * sps.t.sf(abs(t), n - 4), rel=1e-10)
    # a binary category equals its 0/1 numeric coding
    b = np.array(["a", "b"] * 6)
    c1 = stats.partial_corr(x, y, pd.DataFrame({"b": b}), "pearson")
    c2 = stats.partial_corr(x, y, (b == "b").astype(float)[:, None], "pearson")
    assert c1.coef == pytest.approx(c2.coef, abs=1e-12)


def test_partial_correlation_degenerate_cases():
    x = np.arange(5.0)
    c = stats.partial_corr(x, x**2, x[:, None], "pearson")
    assert math.isnan(c.coef) and "fully explained" in c.note
    c = stats.partial_corr([1.0, 2, 3], [3.0, 1, 2], np.array([[1.0], [2.0], [4.0]]), "pearson")
    assert math.isnan(c.coef) and "too small" in c.note


def test_partial_correlate_table(df):
    out = stats.partial_correlate(df, "m-sharpness", "eer", "meta_method", rho=0.05)
    assert set(out["method"]) == {"partial-spearman", "partial-pearson"}
    x, y = _pairs(df, "m-sharpness", 0.05, "codec")
    opt = df[df.testset == "codec"].groupby("checkpoint")["meta_method"].first().sort_index()
    ref = stats.partial_corr(x, y, pd.DataFrame({"o": opt.to_numpy()}), "spearman")
    row = out[(out.testset == "codec") & (out.method == "partial-spearman")].iloc[0]
    assert row["coef"] == pytest.approx(ref.coef, abs=1e-12) and row["p"] == pytest.approx(ref.p, abs=1e-12)
    assert row["control"] == "meta_method"


# ---- domain shift ------------------------------------------------------------------------------------------


def test_domain_shift_matches_wilcoxon(df):
    out = stats.domain_shift(df, "m-sharpness", rho=0.05).set_index("testset")
    assert "in-domain" not in out.index
    a, _ = _pairs(df, "m-sharpness", 0.05, "in-domain")
    b, _ = _pairs(df, "m-sharpness", 0.05, "codec")
    row = out.loc["codec"]
    ref = sps.wilcoxon(b, a, method="exact")
    assert (
        row["p"] == ref.pvalue and row["statistic"] == ref.statistic and row["p_method"] == "wilcoxon-exact"
    )
    assert row["mean_diff"] == pytest.approx(np.mean(b - a))
    assert row["ratio_of_means"] == pytest.approx(b.mean() / a.mean())
    assert row["median_ratio"] == pytest.approx(np.median(b / a))
    np.testing.assert_allclose(out["p_holm"], stats.holm(out["p"]))


def test_domain_shift_small_and_missing_in_domain():
    df = example_results(n_ckpt=2, seed=0)
    out = stats.domain_shift(df, "m-sharpness", rho=0.05)
    assert out["p"].isna().all() and out["note"].str.contains("n=2 < 3").all()
    with pytest.raises(SharpscopeError, match="in-domain"):
        stats.domain_shift(df.assign(in_domain=False), "m-sharpness", rho=0.05)
    out = stats.domain_shift(df.assign(in_domain=False), "m-sharpness", rho=0.05, in_domain="codec")
    assert set(out["reference"]) == {"codec"}


def test_testset_shift_orders_in_domain_first_then_by_relative_eer_increase():
    df = example_results(n_ckpt=4, testsets=("in-domain", "b", "a"), seed=0)
    # make test set "b" the most shifted
    df.loc[df.testset == "b", "eer"] = df.loc[df.testset == "b", "eer"] * 5
    order = stats.testset_shift(df)
    assert list(order["testset"]) == ["in-domain", "a", "b"]
    assert order.loc[0, "shift"] == 0.0


# ---- loading and CLI ---------------------------------------------------------------------------------------


def test_load_results_from_csv_dir_and_parquet(tmp_path, df):
    (tmp_path / "run").mkdir()
    df.to_csv(tmp_path / "run" / "results.csv", index=False)
    back = load_results(tmp_path / "run")
    assert back["in_domain"].dtype == bool and len(back) == len(df)
    df.to_parquet(tmp_path / "r.parquet")
    assert len(load_results(tmp_path / "r.parquet")) == len(df)
    with pytest.raises(SharpscopeError, match="no results.parquet or results.csv"):
        load_results(tmp_path)
    with pytest.raises(SharpscopeError, match="not found"):
        load_results(tmp_path / "nope.csv")


def test_cli_correlate_writes_csv_md_tex(tmp_path, df):
    df.to_parquet(tmp_path / "results.parquet")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "correlate",
            str(tmp_path),
            "--x",
            "m-sharpness",
            "--rho",
            "0.05",
            "--by",
            "testset,domain",
            "--method",
            "kendall,spearman",
            "--n-boot",
            "50",
            "--control",
            "meta_method",
            "--out",
            str(tmp_path / "corr"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "m-sharpness vs eer" in res.output
    csv = pd.read_csv(tmp_path / "corr.csv")
    assert {"kendall", "spearman", "partial-spearman"} <= set(csv["method"])
    assert (tmp_path / "corr.md").read_text().startswith("| x | y | family | testset")
    assert (tmp_path / "corr.confounds.csv").is_file()  # the confound panel travels with the table
    assert "\\begin{tabular}" in (tmp_path / "corr.tex").read_text()
    res = runner.invoke(
        app, ["correlate", str(tmp_path), "--x", "m-sharpness", "--out", str(tmp_path / "c.md")]
    )
    assert res.exit_code == 2 and "several rho values" in res.output
    res = runner.invoke(
        app,
        ["correlate", str(tmp_path), "--x", "m-sharpness", "--rho", "0.05", "--out", str(tmp_path / "c.md")],
    )
    assert res.exit_code == 0 and (tmp_path / "c.md").is_file() and not (tmp_path / "c.md.csv").exists()
