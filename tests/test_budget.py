"""Budgeted studies: stratified nested subsamples, cell CIs that cover the full-set value, the correlation CI,
the sample-size rule, and a budgeted sweep checked against the full sweep of the same study."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from sharpscope.errors import SpecError
from sharpscope.metrics import compute_eer
from sharpscope.sweep.budget import (
    BudgetSpec,
    correlation_ci,
    correlations,
    eer_estimate,
    mean_estimate,
    next_size,
    size_cap,
    strata_columns,
    stratified_order,
)
from sharpscope.sweep.study import load_study
from sharpscope.sweep.sweep import run_sweep
from tests.conftest import write_corpus, write_tiny_checkpoint

# ---- subsample ---------------------------------------------------------------------------------------------


def _frame(groups: dict[tuple[str, str], int]) -> pd.DataFrame:
    rows = []
    for (label, attack), n in groups.items():
        rows += [{"utt_id": f"{label}-{attack}-{i}", "label": label, "attack": attack} for i in range(n)]
    return pd.DataFrame(rows)


def _counts(df: pd.DataFrame, rows: np.ndarray) -> dict[tuple[str, str], int]:
    sub = df.iloc[rows]
    return {k: int(v) for k, v in sub.groupby(["label", "attack"]).size().items()}


def test_stratified_prefix_counts_by_hand():
    # strata of 6 and 3: positions (k + 1/2)/N_h are 1,3,5,7,9,11 /12 and 2,6,10 /12, so the merged order of
    # strata is A B A A B A A B A: prefix 3 -> (2, 1), prefix 6 -> (4, 2), prefix 8 -> (5, 3)
    df = _frame({("bonafide", "-"): 6, ("spoof", "A01"): 3})
    order = stratified_order(df, ["label"], seed=0)
    for n, want in ((3, (2, 1)), (6, (4, 2)), (8, (5, 3)), (9, (6, 3))):
        c = _counts(df, order[:n])
        assert (c.get(("bonafide", "-"), 0), c.get(("spoof", "A01"), 0)) == want, n
    # label x attack: 8 bona fide at (k+.5)/8, A01 and A02 (4 each) at (k+.5)/4:
    # prefix 4 = (2, 1, 1), prefix 8 = (4, 2, 2)
    df = _frame({("bonafide", "-"): 8, ("spoof", "A01"): 4, ("spoof", "A02"): 4})
    order = stratified_order(df, ["label", "attack"], seed=3)
    assert _counts(df, order[:4]) == {("bonafide", "-"): 2, ("spoof", "A01"): 1, ("spoof", "A02"): 1}
    assert _counts(df, order[:8]) == {("bonafide", "-"): 4, ("spoof", "A01"): 2, ("spoof", "A02"): 2}


def test_subsample_is_nested_seeded_and_independent_of_row_order():
    df = _frame({("bonafide", "-"): 50, ("spoof", "A01"): 30, ("spoof", "A02"): 20})
    order = stratified_order(df, ["label", "attack"], seed=7)
    ids = df["utt_id"].to_numpy()
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    order2 = stratified_order(shuffled, ["label", "attack"], seed=7)
    for n in (10, 33, 64):
        assert set(ids[order[:n]]) == set(shuffled["utt_id"].to_numpy()[order2[:n]])
        assert set(ids[order[:n]]) <= set(ids[order[: n + 17]])  # nested
    other = stratified_order(df, ["label", "attack"], seed=8)
    assert set(ids[order[:20]]) != set(ids[other[:20]])
    assert sorted(order.tolist()) == list(range(len(df)))


def test_strata_columns_and_cap():
    df = _frame({("bonafide", "-"): 4, ("spoof", "A01"): 4}).assign(codec="none")
    assert strata_columns(df, "auto") == ["label", "attack"]  # codec has one value: no stratum
    with pytest.raises(SpecError, match="no column 'speaker'"):
        strata_columns(df, ("speaker",), "manifest x.csv")
    assert size_cap(1000, BudgetSpec(target=0.1, max_fraction=0.25)) == 250
    assert size_cap(1000, BudgetSpec(target=0.1, max_fraction=0.25, max_utts=100)) == 100


# ---- cell estimators: coverage by brute force over seeds ---------------------------------------------------


def test_eer_ci_covers_full_set_eer():
    rng = np.random.default_rng(0)
    n_b, n_s = 1000, 2000
    pop = pd.DataFrame(
        {
            "utt_id": [f"u{i}" for i in range(n_b + n_s)],
            "label": ["bonafide"] * n_b + ["spoof"] * n_s,
            "score": np.concatenate([rng.normal(1.0, 1.0, n_b), rng.normal(-1.0, 1.0, n_s)]),
        }
    )
    lab = pop["label"].to_numpy()
    full = compute_eer(pop["score"][lab == "bonafide"], pop["score"][lab == "spoof"])[0]
    n, hits, trials = 300, 0, 160
    for seed in range(trials):
        sub = pop.iloc[stratified_order(pop, ["label"], seed)[:n]]
        e = eer_estimate(sub, n / len(pop), n_boot=200, seed=seed)
        hits += e.lo <= full <= e.hi
    assert 0.88 <= hits / trials <= 1.0, hits / trials
    # the whole population: the CI collapses onto the exact value
    e = eer_estimate(pop, 1.0, n_boot=200, seed=0)
    assert e.lo == e.hi == e.value == full


def test_batch_mean_ci_covers_known_mean():
    # per-batch values from a gamma(2, 1) population: known mean 2
    hits, trials = 0, 300
    for seed in range(trials):
        v = np.random.default_rng(seed).gamma(2.0, 1.0, 40)
        e, _ = mean_estimate(v, [24] * 40, 0.0, n_boot=400, seed=seed)
        hits += e.lo <= 2.0 <= e.hi
    assert 0.90 <= hits / trials <= 0.99, hits / trials


def test_batch_mean_ci_covers_full_set_value_of_another_partition():
    """The full-set value is itself a mean over one random partition into batches, with a batch value that is
    not additive in its utterances (as m-sharpness): the CI widened by sqrt(1 + f) must cover it."""
    rng0 = np.random.default_rng(123)
    g = rng0.gamma(2.0, 1.0, 2400)
    m, n = 24, 480  # f = 0.2

    def batch_values(x: np.ndarray) -> np.ndarray:
        b = x.reshape(-1, m)
        return b.mean(axis=1) + 3.0 * b.var(axis=1)

    hits, trials = 0, 300
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        full = batch_values(g[rng.permutation(len(g))]).mean()
        sub = batch_values(g[rng.choice(len(g), n, replace=False)])
        e, _ = mean_estimate(sub, [m] * len(sub), n / len(g), n_boot=400, seed=seed)
        hits += e.lo <= full <= e.hi
    assert 0.91 <= hits / trials <= 1.0, hits / trials


# ---- correlation and the sample-size rule ------------------------------------------------------------------


def test_correlations_match_scipy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=9), rng.normal(size=9)
    y[3] = y[5]  # a tie
    assert correlations(x, y, "spearman")[0] == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    assert correlations(x, y, "pearson")[0] == pytest.approx(sps.pearsonr(x, y).statistic, abs=1e-12)
    assert correlations(x, y, "kendall")[0] == pytest.approx(sps.kendalltau(x, y).statistic, abs=1e-12)


def test_correlation_ci_floor_and_noise():
    x = np.arange(8.0)
    y = 2 * x + 1
    zero = np.zeros(8)
    c = correlation_ci(x, zero, y, zero, "spearman", n_boot=300, seed=0)
    # a perfectly monotone relation: every checkpoint resample has rho = 1 (or is constant and dropped)
    assert c.value == 1.0 and c.floor == 0.0 and c.half == 0.0
    noisy = correlation_ci(x, np.full(8, 3.0), y, zero, "spearman", n_boot=300, seed=0)
    assert noisy.half > 0.05 and noisy.floor == 0.0 and noisy.lo < 1.0


def test_next_size_hand_worked():
    # half 0.25, floor 0.15: noise part 0.25^2 - 0.15^2 = 0.04 at n = 1000, so c = 40
    # target 0.24: n* = 40 / (0.0576 - 0.0225) = 1139.6 -> 1140 (or 1152 in whole batches of 32)
    assert next_size(1000, 0.25, 0.15, 0.24, 10_000) == (1140, "growing")
    assert next_size(1000, 0.25, 0.15, 0.24, 10_000, step=32) == (1152, "growing")
    # target 0.2: n* = 40 / 0.0175 = 2285.7 -> at most doubling -> 2000; capped by the budget -> 1500
    assert next_size(1000, 0.25, 0.15, 0.20, 10_000) == (2000, "growing")
    assert next_size(1000, 0.25, 0.15, 0.20, 1500) == (1500, "growing")
    # target barely missed: at least one more step
    assert next_size(1000, 0.2001, 0.0, 0.2, 10_000, step=8) == (1008, "growing")
    assert next_size(1000, 0.19, 0.15, 0.2, 10_000) == (None, "target reached")
    assert next_size(1500, 0.25, 0.15, 0.2, 1500) == (None, "budget exhausted")
    assert next_size(1000, 0.5, 0.3, 0.2, 10_000)[0] is None  # floor above the target: add checkpoints
    assert next_size(1000, 0.5, 0.3, 0.2, 10_000, stop_at_floor=False) == (2000, "growing")


# ---- the study spec ----------------------------------------------------------------------------------------


def _spec(tmp_path: Path, manifest: Path, n_ckpt: int, budget: dict | None, measures=None) -> Path:
    zoo = tmp_path / "zoo"
    zoo.mkdir(parents=True, exist_ok=True)
    for i in range(n_ckpt):
        if not (zoo / f"c{i}.safetensors").exists():
            write_tiny_checkpoint(zoo / f"c{i}.safetensors", i, {"seed": i})
    spec = {
        "name": "b",
        "seeds": [0],
        "scoring": {"batch_size": 8, "nb_samp": 4000},
        "checkpoints": [{"path": "zoo/*.safetensors", "arch": "aasist"}],
        "testsets": [{"name": "t", "manifest": str(manifest), "in_domain": True}],
        "measures": measures or [{"name": "m-sharpness", "rho": 0.05}],
    }
    if budget is not None:
        spec["budget"] = budget
    p = tmp_path / ("budget.yaml" if budget is not None else "full.yaml")
    p.write_text(yaml.safe_dump(spec))
    return p


def test_budget_spec_problems_one_line_each(tmp_path):
    man = write_corpus(tmp_path / "data", "t", n=4, dur=0.25)
    bad = {"target": 0, "max_fraction": 1.5, "pilot": 1, "growth": 1, "correlation": "tau", "colour": 1}
    with pytest.raises(SpecError) as exc:
        load_study(_spec(tmp_path, man, 3, bad))
    msg = str(exc.value)
    for key in (
        "budget.target",
        "budget.max_fraction",
        "budget.pilot",
        "budget.growth",
        "budget.correlation",
        "budget.colour: unknown key",
    ):
        assert key in msg, (key, msg)
    with pytest.raises(SpecError, match="at least 3 checkpoints"):
        load_study(_spec(tmp_path / "two", man, 2, {"target": 0.1}))
    with pytest.raises(SpecError, match="not a mean over batches"):
        load_study(_spec(tmp_path, man, 3, {"target": 0.1}, measures=[{"name": "hessian-max"}]))
    study = load_study(_spec(tmp_path, man, 3, {"target": 0.1, "max_fraction": 0.5, "stratify": ["attack"]}))
    assert study.budget == BudgetSpec(target=0.1, max_fraction=0.5, stratify=("attack",))


# ---- budgeted sweep against the full sweep -----------------------------------------------------------------


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    man = write_corpus(tmp / "data", "t", n=48, dur=0.25, attacks=("A01", "A02", "A03"))
    full_spec = _spec(tmp, man, 3, None)
    budget = {
        "target": 0.01,
        "max_fraction": 0.5,
        "pilot": 16,
        "seed": 5,
        "n_boot": 300,
        "stop_at_floor": False,
        "min_batches": 2,
    }
    budget_spec = _spec(tmp, man, 3, budget)
    full = run_sweep(full_spec, tmp / "full")
    half = run_sweep(budget_spec, tmp / "half")
    return tmp, man, full, half


def test_budgeted_cells_cover_full_set_values(studies):
    _, _, full, half = studies
    f = full.table.set_index("checkpoint")
    h = half.table.set_index("checkpoint")
    assert len(h) == 3 and set(h.index) == set(f.index)
    # six 95 % intervals (EER and m-sharpness of three cells): one miss has probability ~0.26, two or more
    # ~0.03 (the per-interval coverage itself is checked by brute force above)
    inside = [h.loc[ck, "eer_ci_lo"] <= f.loc[ck, "eer"] <= h.loc[ck, "eer_ci_hi"] for ck in f.index]
    inside += [h.loc[ck, "ci_lo"] <= f.loc[ck, "value"] <= h.loc[ck, "ci_hi"] for ck in f.index]
    assert sum(inside) >= 5, inside
    # the full-set correlation across checkpoints lies in the budgeted CI
    full_rho = sps.spearmanr(f["value"], f["eer"]).statistic
    row = h.iloc[0]
    if math.isfinite(full_rho):
        assert row["budget_corr_lo"] <= full_rho <= row["budget_corr_hi"]


def test_budgeted_rows_record_what_was_used(studies):
    _, man, full, half = studies
    h = half.table
    n_total = len(pd.read_csv(man))
    assert h["budget_n_total"].eq(n_total).all()
    n = int(h["budget_n"].iloc[0])
    # target unreachable: grows 16 -> 32 -> 48 (at most doubling, whole batches of 8), capped at half the set
    assert n == n_total // 2 and h["budget_stop_reason"].eq("budget exhausted").all()
    assert h["budget_sizes"].iloc[0] == "[16, 32, 48]"
    assert h["budget_fraction"].eq(n / n_total).all()
    assert (h["n_bonafide"] + h["n_spoof"]).eq(n).all() and h["n_utts"].eq(n).all()
    assert h["n_bonafide"].eq(n // 2).all()  # stratified: the set is half bona fide
    assert h["budget_seed"].eq(5).all() and h["seed"].eq(0).all()
    assert h["budget_strata"].eq("label,attack").all()
    assert (h["ci_hi"] - h["ci_lo"] > 0).all() and h["stderr_batches"].notna().all()
    assert not h["budget_reached"].any()
    # budgeted cells have their own ids; a rerun reuses them
    assert set(full.table["config_hash"]).isdisjoint(set(h["config_hash"]))
    tmp = studies[0]
    again = run_sweep(tmp / "budget.yaml", tmp / "half")
    assert again.ran == 0 and again.skipped == 3


def test_whole_set_budget_reproduces_full_cells(studies):
    """A budget whose pilot covers the whole set runs one round with the study seed: the EER is exact (its CI
    collapses) and the batches -- hence the sharpness value -- are the plain cell's."""
    tmp, man, full, _ = studies
    (tmp / "whole").mkdir(exist_ok=True)
    spec = _spec(tmp / "whole", man, 0, {"target": 0.01, "pilot": 10_000, "n_boot": 200})
    raw = yaml.safe_load(spec.read_text())
    raw["checkpoints"][0]["path"] = str(tmp / "zoo" / "*.safetensors")
    spec.write_text(yaml.safe_dump(raw))
    whole = run_sweep(spec, tmp / "whole_out").table.set_index("checkpoint")
    f = full.table.set_index("checkpoint")
    whole.index = [Path(i).name for i in whole.index]
    f.index = [Path(i).name for i in f.index]
    for ck in f.index:
        assert whole.loc[ck, "eer"] == f.loc[ck, "eer"]
        assert whole.loc[ck, "eer_ci_lo"] == whole.loc[ck, "eer_ci_hi"] == f.loc[ck, "eer"]
        assert whole.loc[ck, "value"] == pytest.approx(f.loc[ck, "value"], rel=1e-12, abs=1e-15)
    assert whole["budget_fraction"].eq(1.0).all() and whole["budget_rounds"].eq(1).all()


def test_budget_needs_local_executor(studies):
    tmp = studies[0]
    with pytest.raises(SpecError, match="--executor local"):
        run_sweep(tmp / "budget.yaml", tmp / "other", executor="ray")
