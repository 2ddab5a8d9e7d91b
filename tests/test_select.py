"""Checkpoint selection (sharpscope select): criteria, regret / hit@k / correlations, bootstrap, LODO, CLI.

References are independent of the code under test: scipy (entropy, softmax, Wasserstein, Spearman, Kendall),
closed forms (random choice), brute-force enumeration of tie-breaking orders, and a plain resampling loop.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import special
from scipy import stats as sps
from typer.testing import CliRunner

from sharpscope import select as sel
from sharpscope.cli import app
from sharpscope.errors import SharpscopeError

QCOLS = [f"lf_score_q{q:02d}" for q in range(5, 100, 10)]


def make_table(
    eer: dict[str, list[float]],
    sharp: dict[str, list[float]] | None = None,
    *,
    arch: list[str] | None = None,
    dev_eer: list[float] | None = None,
    entropy: dict[str, list[float]] | None = None,
    shift: dict[str, list[float]] | None = None,
    in_domain: str = "in",
    seed: int = 0,
) -> pd.DataFrame:
    """A hand-built results table: per (checkpoint, testset) one label-free m-sharpness row (kl-to-clean) and
    one labelled row (weighted-ce, random value), with lf_* columns and meta_dev_eer."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(eer.values())))
    rows = []
    for t, es in eer.items():
        for i in range(n):
            q0 = np.linspace(-2, 2, 10)
            q = q0 + (shift[t][i] if shift and t in shift else 0.0)
            ent = entropy[t][i] if entropy and t in entropy else 0.3 + 0.01 * i
            common = {
                "checkpoint": f"ck{i}",
                "arch": arch[i] if arch else "aasist",
                "testset": t,
                "in_domain": t == in_domain,
                "subset": "all",
                "eer": es[i],
                "n_bonafide": 10,
                "n_spoof": 30,
                "meta_dev_eer": dev_eer[i] if dev_eer else 0.01 * (i + 1),
                "meta_method": "ERM",
                "lf_entropy": ent,
                "lf_confidence": 1.0 - ent / 2,
                **dict(zip(QCOLS, q, strict=True)),
            }
            sv = sharp[t][i] if sharp and t in sharp else float(i)
            measure = {
                "measure": "m-sharpness",
                "rho": 0.05,
                "seed": 0,
                "measure_settings": '{"order": "manifest"}',
            }
            rows.append({**common, **measure, "loss": "kl-to-clean", "value": sv})
            rows.append({**common, **measure, "loss": "weighted-ce", "value": float(rng.uniform())})
    return pd.DataFrame(rows)


# ---- label-free summaries ----------------------------------------------------------------------------------


def test_label_free_summaries_match_scipy():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(10, 2))
    out = sel.label_free_summaries(z[:, 0], z[:, 1])
    p = special.softmax(z, axis=1)
    assert out["lf_entropy"] == pytest.approx(np.mean(sps.entropy(p, axis=1)), rel=1e-12)
    assert out["lf_confidence"] == pytest.approx(p.max(axis=1).mean(), rel=1e-12)
    # n = 10 points and 10 mid-point quantiles: the i-th quantile is the i-th order statistic of the log-odds
    assert [out[c] for c in QCOLS] == pytest.approx(np.sort(z[:, 1] - z[:, 0]), abs=0)
    # extreme logits stay finite: entropy -> 0, confidence -> 1
    big = sel.label_free_summaries([0.0, 1000.0], [1000.0, 0.0])
    assert big["lf_entropy"] == pytest.approx(0.0, abs=1e-300) and big["lf_confidence"] == 1.0
    with pytest.raises(SharpscopeError, match="NaN"):
        sel.label_free_summaries([0.0, np.nan], [1.0, 2.0])


def test_wasserstein_from_quantiles_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 10), rng.normal(1, 2, 10)
    qa = sel.label_free_summaries(np.zeros(10), a)
    qb = sel.label_free_summaries(np.zeros(10), b)
    w = sel.wasserstein_from_quantiles([qa[c] for c in QCOLS], [qb[c] for c in QCOLS])
    assert w == pytest.approx(sps.wasserstein_distance(a, b), rel=1e-12)


# ---- regret / hit@k against hand-worked and brute-force references -----------------------------------------


def _brute_hit(g: np.ndarray, e: np.ndarray, k: int) -> float:
    """Average over every tie-breaking order of the criterion: is a best-EER checkpoint in the top k?"""
    n = len(g)
    hits, count = 0, 0
    for perm in itertools.permutations(range(n)):
        # a tie-breaking order = sort by (-g, position in perm); every perm equally likely
        pos = {j: i for i, j in enumerate(perm)}
        order = sorted(range(n), key=lambda j: (-g[j], pos[j]))
        hits += any(e[j] == e.min() for j in order[:k])
        count += 1
    return hits / count


def test_topk_hit_with_ties_matches_enumeration():
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = 6
        g = rng.integers(0, 3, n).astype(float)
        e = rng.integers(0, 3, n).astype(float) / 10
        for k in (1, 2, 3):
            assert sel.topk_hit(g, e, k)[0] == pytest.approx(_brute_hit(g, e, k), abs=1e-12)


def test_perfect_and_anticorrelated_criteria():
    e = np.array([0.05, 0.10, 0.20, 0.30, 0.02])
    tab, _ = sel.score_criteria({"good": -e * 3, "bad": e.copy()}, e, ks=(1, 3))
    good = tab.set_index("criterion").loc["good"]
    bad = tab.set_index("criterion").loc["bad"]
    assert good["regret_pp"] == 0 and good["hit@1"] == 1 and good["hit@3"] == 1
    assert good["spearman"] == pytest.approx(1.0) and good["kendall"] == pytest.approx(1.0)
    assert bad["regret_pp"] == pytest.approx(100 * (0.30 - 0.02)) and bad["hit@1"] == 0 and bad["hit@3"] == 0
    assert bad["spearman"] == pytest.approx(-1.0) and bad["kendall"] == pytest.approx(-1.0)
    orc = tab.set_index("criterion").loc["oracle"]
    assert orc["regret_pp"] == 0 and orc["hit@1"] == 1


def test_random_reference_closed_form_and_ties():
    e = np.array([0.05, 0.10, 0.20, 0.30, 0.02, 0.02])  # two checkpoints tied for best
    tab, _ = sel.score_criteria({}, e, ks=(1, 2, 4))
    rnd = tab.set_index("criterion").loc["random"]
    n, b = len(e), 2
    assert rnd["regret_pp"] == pytest.approx(100 * (e.mean() - e.min()))
    for k in (1, 2, 4):
        assert rnd[f"hit@{k}"] == pytest.approx(1 - math.comb(n - b, k) / math.comb(n, k))
    # unique best: k/n
    tab1, _ = sel.score_criteria({}, e[:5], ks=(2,))
    assert tab1.set_index("criterion").loc["random", "hit@2"] == pytest.approx(2 / 5)
    # a chosen checkpoint tied with the best EER has regret 0
    tab2, _ = sel.score_criteria({"c": np.array([0, 0, 0, 0, 0, 1.0])}, e, ks=(1,))
    assert tab2.set_index("criterion").loc["c", "regret_pp"] == 0
    # a criterion tied at the top between the best and the worst: expected regret, half a hit
    tab3, _ = sel.score_criteria({"c": np.array([0, 0, 0, 1.0, 1.0, 0])}, e[:5].tolist() + [0.5], ks=(1,))
    row = tab3.set_index("criterion").loc["c"]
    assert row["regret_pp"] == pytest.approx(100 * ((0.30 + 0.02) / 2 - 0.02)) and row["hit@1"] == 0.5


def test_bootstrap_cis_match_a_plain_resampling_loop():
    rng = np.random.default_rng(7)
    n, n_boot, seed = 9, 300, 11
    e = rng.uniform(0.01, 0.3, n)
    g = -e + rng.normal(0, 0.08, n)
    tab, _ = sel.score_criteria({"c": g}, e, ks=(1, 3), idx=sel.bootstrap_indices(n, n_boot, seed), level=0.9)
    row = tab.set_index("criterion").loc["c"]
    # independent loop: same draws, plain Python regret / hit and scipy correlations
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    reg, hit1, sp, kd = [], [], [], []
    for d in draws:
        gs, es = g[d], e[d]
        top = [j for j in range(n) if gs[j] == gs.max()]
        reg.append(100 * (np.mean([es[j] for j in top]) - es.min()))
        hit1.append(np.mean([es[j] == es.min() for j in top]))
        if len(set(gs)) > 1 and len(set(es)) > 1:
            sp.append(sps.spearmanr(-gs, es).statistic)
            kd.append(sps.kendalltau(-gs, es).statistic)
    for name, vals in (("regret_pp", reg), ("hit@1", hit1), ("spearman", sp), ("kendall", kd)):
        lo, hi = np.percentile(vals, [5, 95])
        assert row[f"{name}_lo"] == pytest.approx(lo, abs=1e-12), name
        assert row[f"{name}_hi"] == pytest.approx(hi, abs=1e-12), name
    assert row["spearman"] == pytest.approx(sps.spearmanr(-g, e).statistic)


# ---- the study-level procedure ----------------------------------------------------------------------------


def _study(seed: int = 0) -> pd.DataFrame:
    n = 6
    rng = np.random.default_rng(seed)
    eer = {"in": list(rng.uniform(0.01, 0.05, n))}
    sharp, ent, shift = {}, {}, {}
    for t in ("A", "B", "C"):
        e = rng.uniform(0.05, 0.4, n)
        eer[t] = list(e)
        sharp[t] = list(e * 2 + rng.normal(0, 0.02, n))  # tracks EER
        ent[t] = list(0.6 - e)  # anti-correlated with EER
        shift[t] = list(3 * e + rng.normal(0, 0.3, n))  # noisy, mostly positive
    return make_table(eer, sharp, entropy=ent, shift=shift)


def test_select_ranks_and_scores_known_best_and_worst():
    df = _study()
    res = sel.select(df, "A", n_boot=50, seed=0)
    rk = res.ranking
    e = df[(df.testset == "A")].groupby("checkpoint")["eer"].first()
    top_sharp = rk[(rk.criterion == "m-sharpness@0.05") & (rk["rank"] == 1)]["checkpoint"].tolist()
    sharpA = df[(df.testset == "A") & (df.loss == "kl-to-clean")].groupby("checkpoint")["value"].first()
    assert top_sharp == [sharpA.idxmin()]
    ts = res.target_scores.set_index("criterion")
    assert ts.loc["oracle", "regret_pp"] == 0
    assert ts.loc["random", "regret_pp"] == pytest.approx(100 * (e.mean() - e.min()))
    # entropy is built anti-correlated with EER: the worst checkpoint is chosen
    assert ts.loc["entropy", "regret_pp"] == pytest.approx(100 * (e.max() - e.min()))
    assert ts.loc["entropy", "spearman"] == pytest.approx(-1.0)
    # leave-one-domain-out over every out-of-domain set, in-domain excluded
    assert set(res.lodo["domain"]) == {"A", "B", "C"}
    summ = res.lodo_summary.set_index("criterion")
    assert summ.loc["m-sharpness@0.05", "n_domains"] == 3
    per = res.lodo[res.lodo.criterion == "m-sharpness@0.05"]["regret_pp"]
    assert summ.loc["m-sharpness@0.05", "regret_pp"] == pytest.approx(per.mean())
    assert res.settings["seed"] == 0 and res.settings["n_boot"] == 50


def test_combined_weights_fit_on_other_domains_only():
    df = _study(1)
    res = sel.select(df, "A", n_boot=0, by=["m-sharpness", "entropy", "score-shift"])
    w = res.weights[(res.weights.held_out == "A")].set_index("criterion")
    assert w["fit_on"].nunique() == 1 and set(w["fit_on"].iloc[0].split(",")) == {"B", "C"}
    # reference: max(0, mean Spearman(badness, EER)) on B and C, normalised
    q_in = df[df.testset == "in"].groupby("checkpoint")[QCOLS].first()
    raw = {}
    for c in ("m-sharpness@0.05", "entropy", "score-shift"):
        rhos = []
        for t in ("B", "C"):
            rows = df[(df.testset == t)]
            e = rows.groupby("checkpoint")["eer"].first()
            if c == "entropy":
                bad = rows.groupby("checkpoint")["lf_entropy"].first()
            elif c == "score-shift":
                bad = (rows.groupby("checkpoint")[QCOLS].first() - q_in).abs().mean(axis=1)
            else:
                bad = rows[rows.loss == "kl-to-clean"].groupby("checkpoint")["value"].first()
            rhos.append(sps.spearmanr(bad, e).statistic)
        raw[c] = max(0.0, float(np.mean(rhos)))
    assert raw["entropy"] == 0 and raw["m-sharpness@0.05"] > 0 and raw["score-shift"] > 0
    total = sum(raw.values())
    for c, v in raw.items():
        assert w.loc[c, "weight"] == pytest.approx(v / total)
    # the combined ranking on A is the weighted sum of z-scored oriented criteria on A
    rows = df[df.testset == "A"]
    z = {
        "m-sharpness@0.05": -rows[rows.loss == "kl-to-clean"].groupby("checkpoint")["value"].first(),
        "score-shift": -(rows.groupby("checkpoint")[QCOLS].first() - q_in).abs().mean(axis=1),
    }
    comb = sum(raw[c] / total * (v - v.mean()) / v.std(ddof=0) for c, v in z.items())
    rk = res.ranking[res.ranking.criterion == "combined"].set_index("checkpoint")
    assert rk["value"].to_dict() == pytest.approx(comb.to_dict())
    assert any("without the target's labels" in n for n in res.notes)


def test_target_labels_never_change_a_label_free_ranking():
    df = _study(2)
    before = sel.select(df, "B", n_boot=0).ranking
    shuffled = df.copy()
    tgt = shuffled["testset"] == "B"
    rng = np.random.default_rng(0)
    perm = dict(zip([f"ck{i}" for i in range(6)], rng.permutation([f"ck{i}" for i in range(6)]), strict=True))
    eer_b = shuffled[tgt].groupby("checkpoint")["eer"].first()
    shuffled.loc[tgt, "eer"] = shuffled.loc[tgt, "checkpoint"].map(lambda c: eer_b[perm[c]])
    lab = tgt & (shuffled["loss"] == "weighted-ce")
    shuffled.loc[lab, "value"] = rng.permutation(shuffled.loc[lab, "value"].to_numpy())
    shuffled.loc[tgt, "n_bonafide"] = rng.integers(1, 50, int(tgt.sum()))
    assert not shuffled["eer"].equals(df["eer"])
    after = sel.select(shuffled, "B", n_boot=0).ranking
    pd.testing.assert_frame_equal(before, after)


def test_missing_columns_make_criteria_unavailable_not_a_crash():
    df = _study(3).drop(columns=["lf_entropy", "lf_confidence", "meta_dev_eer", *QCOLS])
    res = sel.select(df, "A", n_boot=0)
    crits = set(res.ranking["criterion"])
    assert {"entropy", "confidence", "dev-eer", "score-shift"}.isdisjoint(crits)
    assert "m-sharpness@0.05" in crits and "source-eer" in crits
    assert sum("entropy unavailable" in n for n in res.notes) == 1
    assert sum("score-shift(-scaled) unavailable" in n for n in res.notes) == 1


def test_labelled_only_or_label_picked_sharpness_is_refused():
    df = _study(4)
    only_labelled = df[df["loss"] != "kl-to-clean"]
    res = sel.select(only_labelled, "A", n_boot=0)
    assert not res.ranking["criterion"].str.startswith("m-sharpness").any()
    assert any("only labelled losses" in n for n in res.notes)
    equal = df.copy()
    equal["measure_settings"] = json.dumps({"order": "shuffled", "class_mix": "equal"})
    res = sel.select(equal, "A", n_boot=0)
    assert not res.ranking["criterion"].str.startswith("m-sharpness").any()
    assert any("picks utterances by their labels" in n for n in res.notes)
    balanced = df.copy()
    balanced["measure_settings"] = json.dumps({"order": "balanced", "class_mix": "dataset"})
    res = sel.select(balanced, "A", n_boot=0)
    assert res.ranking["criterion"].str.startswith("m-sharpness").any()
    assert sum("stratified by the labels" in n for n in res.notes) == 1
    with pytest.raises(SharpscopeError, match="unknown criterion"):
        sel.select(df, "A", by=["nonsense"], n_boot=0)
    with pytest.raises(SharpscopeError, match="not in the table"):
        sel.select(df, "Z", n_boot=0)


def test_families_by_arch_unless_pooled():
    n = 6
    eer = {"in": [0.02] * n, "A": [0.1, 0.2, 0.3, 0.15, 0.25, 0.05]}
    df = make_table(eer, arch=["aasist"] * 3 + ["ssl"] * 3)
    res = sel.select(df, "A", n_boot=0, combine=False)
    assert set(res.ranking["family"]) == {"aasist", "ssl"}
    ssl_best = res.target_scores[(res.target_scores.family == "ssl")].set_index("criterion")
    # within ssl (ck3..ck5) the best EER is 0.05: the oracle's regret is 0 relative to that, not to aasist
    assert ssl_best.loc["random", "regret_pp"] == pytest.approx(100 * (np.mean([0.15, 0.25, 0.05]) - 0.05))
    assert any("within each architecture family" in n for n in res.notes)
    pooled = sel.select(df, "A", n_boot=0, combine=False, pool_arch=True)
    assert set(pooled.ranking["family"]) == {"pooled"}
    assert any("--pool-arch" in n for n in pooled.notes)


def test_unlabelled_target_ranks_without_scores():
    df = _study(5)
    df.loc[df.testset == "C", "eer"] = np.nan
    res = sel.select(df, "C", n_boot=10)
    assert len(res.ranking) and res.target_scores.empty
    assert set(res.lodo["domain"]) == {"A", "B"}
    assert any("ranking only" in n for n in res.notes)


def test_score_shift_is_wasserstein_to_in_domain():
    n = 4
    eer = {"in": [0.02] * n, "A": [0.1, 0.2, 0.3, 0.4]}
    df = make_table(eer, shift={"A": [0.5, -1.0, 2.0, 0.0]})
    res = sel.select(df, "A", n_boot=0, by=["score-shift"], combine=False)
    r = res.ranking.set_index("checkpoint")
    assert r.loc[["ck0", "ck1", "ck2", "ck3"], "value"].tolist() == pytest.approx([0.5, 1.0, 2.0, 0.0])
    assert r.loc["ck3", "rank"] == 1 and r.loc["ck2", "rank"] == 4


# ---- CLI and report ---------------------------------------------------------------------------------------


def test_cli_select_end_to_end(tmp_path):
    _study(6).to_parquet(tmp_path / "results.parquet")
    out = tmp_path / "sel"
    res = CliRunner().invoke(
        app,
        ["select", str(tmp_path), "--target", "A", "--k", "1,2", "--n-boot", "40", "--out", str(out)],
        env={"COLUMNS": "250"},
    )
    assert res.exit_code == 0, res.output
    assert "m-sharpness@0.05" in res.output and "oracle" in res.output and "random" in res.output
    for name in ("ranking.csv", "target_scores.csv", "lodo.csv", "lodo_summary.csv", "selection.md"):
        assert (out / name).is_file(), name
    settings = json.loads((out / "settings.json").read_text())
    assert settings["ks"] == [1, 2] and settings["n_boot"] == 40 and settings["target"] == "A"
    md = (out / "selection.md").read_text()
    assert "Leave-one-domain-out" in md and "without the target's labels" in md
    bad = CliRunner().invoke(app, ["select", str(tmp_path), "--target", "nowhere"])
    assert bad.exit_code == 2 and "not in the table" in bad.output and "Traceback" not in bad.output
    args = [
        "select",
        str(tmp_path),
        "--target",
        "B",
        "--n-boot",
        "0",
        "--by",
        "m-sharpness",
        "--by",
        "entropy",
    ]
    only = CliRunner().invoke(app, [*args, "--out", str(out)], env={"COLUMNS": "250"})
    assert only.exit_code == 0, only.output
    ranked = pd.read_csv(out / "ranking.csv")
    assert set(ranked["criterion"]) <= {"m-sharpness@0.05", "entropy", "combined"}
    zero_k = CliRunner().invoke(app, ["select", str(tmp_path), "--target", "B", "--k", "0"])
    assert zero_k.exit_code == 2 and "--k" in zero_k.output


@pytest.mark.slow  # > 10 s on 2 shared cores
def test_report_has_a_checkpoint_selection_section(tmp_path):
    from sharpscope.report.html import build_report

    index = build_report(_study(7), tmp_path / "rep", n_boot=20, figure_formats=())
    text = index.read_text()
    assert "Checkpoint selection" in text and "oracle" in text
    assert (tmp_path / "rep" / "tables" / "selection_lodo.csv").is_file()
    assert "Checkpoint selection" in (tmp_path / "rep" / "report.md").read_text()


@pytest.mark.slow  # > 10 s on 2 shared cores
def test_sweep_rows_carry_label_free_summaries(tmp_path, tiny_corpus):
    """A real (tiny) sweep writes lf_* into every row; they match scipy on an independent scoring pass."""
    import yaml

    from sharpscope.data.manifest import read_manifest
    from sharpscope.models.checkpoints import load_checkpoint
    from sharpscope.scoring import score_manifest
    from sharpscope.sweep.sweep import run_sweep
    from tests.conftest import TINY_AASIST, write_tiny_checkpoint

    ck = tmp_path / "zoo"
    ck.mkdir()
    for i in range(2):
        write_tiny_checkpoint(ck / f"m{i}.safetensors", i, {"method": "erm", "seed": i, "dev_eer": 0.1 * i})
    spec = {
        "name": "t",
        "seeds": [0],
        "scoring": {"batch_size": 4, "nb_samp": 8000},
        "checkpoints": [{"path": "zoo/*.safetensors", "arch": "aasist"}],
        "testsets": [
            {"name": "in", "manifest": str(tiny_corpus["in"]), "in_domain": True},
            {"name": "shift", "manifest": str(tiny_corpus["shift"])},
        ],
        "measures": [{"name": "m-sharpness", "rho": [0.05], "loss": ["kl-to-clean"]}],
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    run_sweep(tmp_path / "study.yaml", tmp_path / "res")
    df = pd.read_parquet(tmp_path / "res" / "results.parquet")
    for c in ["lf_entropy", "lf_confidence", *QCOLS]:
        assert df[c].notna().all(), c
    row = df[(df.checkpoint.str.endswith("m1.safetensors")) & (df.testset == "shift")].iloc[0]
    loaded = load_checkpoint(str(ck / "m1.safetensors"), "aasist", model_cfg=TINY_AASIST)
    sc = score_manifest(loaded.model, read_manifest(tiny_corpus["shift"]), batch_size=4, nb_samp=8000)
    p = special.softmax(sc[["logit_spoof", "logit_bonafide"]].to_numpy(float), axis=1)
    assert row["lf_entropy"] == pytest.approx(np.mean(sps.entropy(p, axis=1)), rel=1e-4)
    assert row["lf_confidence"] == pytest.approx(p.max(axis=1).mean(), rel=1e-4)
    res = sel.select(df, "shift", n_boot=10)
    assert {"entropy", "confidence", "score-shift", "dev-eer", "m-sharpness@0.05"} <= set(
        res.ranking.criterion
    )
