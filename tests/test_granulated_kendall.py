"""Granulated Kendall (Jiang et al. 2020): hand-worked values, a brute-force pair loop, scipy, axis choice."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from sharpscope import stats
from sharpscope.cli import app
from sharpscope.errors import SharpscopeError
from sharpscope.report.html import analyse

PSI = "Ψ (mean)"


def _results(ck: pd.DataFrame, testsets: tuple[str, ...] = ("t",)) -> pd.DataFrame:
    """A results table in the sweep's long shape: one row per (checkpoint, test set) of measure 'sharp'.

    ``ck`` has one row per checkpoint: checkpoint, x (the measure), y (EER) and meta_* columns; the y of later
    test sets is shifted so test sets differ.
    """
    rows = []
    for k, t in enumerate(testsets):
        part = ck.rename(columns={"x": "value", "y": "eer"}).copy()
        part["eer"] = part["eer"] + 0.5 * k
        part["testset"] = t
        part["in_domain"] = k == 0
        rows.append(part)
    df = pd.concat(rows, ignore_index=True)
    return df.assign(measure="sharp", rho=0.05, loss="weighted-ce", subset="all", seed=0)


def _by_axis(out: pd.DataFrame, testset: str = "t") -> pd.DataFrame:
    return out[out["testset"] == testset].set_index("hyperparam")


# ---- hand-worked example -----------------------------------------------------------------------------------


def _hand_table() -> pd.DataFrame:
    # axes: method (erm / sam / asam) x lr (b1 = 1e-3, b2 = 3e-3, b3 = 1e-2, b4 = 3e-2); outcomes vary too
    rows = [
        ("c1", "erm", 1e-3, 1.0, 1.0),
        ("c2", "erm", 3e-3, 2.0, 3.0),
        ("c3", "erm", 1e-2, 2.0, 2.0),  # x ties with c2
        ("c4", "sam", 1e-3, 4.0, 5.0),
        ("c5", "sam", 3e-3, 5.0, 5.0),  # y ties with c4
        (
            "c6",
            "sam",
            1e-2,
            6.0,
            2.0,
        ),  # y equals c3's: the lr = 1e-2 group of the method axis is constant in y
        ("c7", "asam", 3e-2, 10.0, 0.0),  # alone on both axes: in no group
    ]
    ck = pd.DataFrame(rows, columns=["checkpoint", "meta_method", "meta_lr", "x", "y"])
    ck["meta_dev_eer"] = [0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17]  # an outcome: never an axis
    ck["meta_epoch"] = [3, 4, 5, 6, 7, 8, 9]
    return ck


def test_hand_worked_example_with_ties_and_a_constant_group():
    # psi_method: partition by lr; groups where method differs:
    #   lr 1e-3: c1 (1,1), c4 (4,5): sign(1-4)*sign(1-5) = (+1), both orders: 2 / (2*1) = 1
    #   lr 3e-3: c2 (2,3), c5 (5,5): (-1)(-1) = +1                                   -> tau = 1
    #   lr 1e-2: c3 (2,2), c6 (6,2): y tie -> 0 (constant y: counted, not skipped)   -> tau = 0
    #   lr 3e-2: c7 alone -> not a group
    #   psi_method = (1 + 1 + 0) / 3 = 2/3 over 3 groups of 6 checkpoints
    # psi_lr: partition by method:
    #   erm: c1 (1,1), c2 (2,3), c3 (2,2): (c1,c2) +1, (c1,c3) +1, (c2,c3) x tie 0 -> 2*2 / (3*2) = 2/3
    #   sam: c4 (4,5), c5 (5,5), c6 (6,2): (c4,c5) y tie 0, (c4,c6) (-)(+) = -1, (c5,c6) -1 -> 2*(-2)/6 = -2/3
    #   asam: c7 alone -> not a group
    #   psi_lr = (2/3 - 2/3) / 2 = 0 over 2 groups of 6 checkpoints
    # Psi = (2/3 + 0) / 2 = 1/3
    df = _results(_hand_table())
    out = stats.granulated_kendall(df, "sharp", "eer")
    g = _by_axis(out)
    assert list(g.index) == ["meta_method", "meta_lr", PSI]  # outcomes are not axes
    assert g.loc["meta_method", "coef"] == pytest.approx(2 / 3)
    assert g.loc["meta_method", "n_groups"] == 3 and g.loc["meta_method", "n"] == 6
    assert "1 group(s) with constant x or y counted with τ = 0" in g.loc["meta_method", "note"]
    assert g.loc["meta_lr", "coef"] == pytest.approx(0.0, abs=1e-15)
    assert g.loc["meta_lr", "n_groups"] == 2 and g.loc["meta_lr", "n"] == 6
    assert g.loc[PSI, "coef"] == pytest.approx(1 / 3)
    assert g.loc[PSI, "n"] == 7 and g.loc[PSI, "n_groups"] == 5
    assert set(out["axes"]) == {"meta_method,meta_lr"} and set(out["axes_from"]) == {"training-config rule"}
    assert set(out["method"]) == {"granulated-kendall"}
    # tau-b would differ on the erm group (x tie): C=2, D=0, n0=3, n1=1 -> 2/sqrt(2*3); the sign tau does not
    erm = _hand_table().iloc[:3]
    assert sps.kendalltau(erm["x"], erm["y"]).statistic == pytest.approx(2 / math.sqrt(6))
    assert stats.sign_kendall(erm["x"].to_numpy(), erm["y"].to_numpy()) == pytest.approx(2 / 3)


def test_given_axes_prefix_optional_and_recorded():
    df = _results(_hand_table())
    out = stats.granulated_kendall(df, "sharp", "eer", hyperparams="lr, method")
    g = _by_axis(out)
    assert list(g.index) == ["meta_lr", "meta_method", PSI]
    assert g.loc[PSI, "coef"] == pytest.approx(1 / 3)
    assert set(out["axes"]) == {"meta_lr,meta_method"} and set(out["axes_from"]) == {"given"}
    # an outcome given on purpose is used, and flagged
    out = stats.granulated_kendall(df, "sharp", "eer", hyperparams=["meta_method", "meta_epoch"])
    assert "looks like a training outcome" in _by_axis(out).loc["meta_epoch", "note"]
    with pytest.raises(SharpscopeError, match=r"\['momentum'\] not in the table"):
        stats.granulated_kendall(df, "sharp", hyperparams=["lr", "momentum"])


def test_no_group_gives_nan_with_note():
    # (erm, 1e-3) and (sam, 3e-3): both axes vary, but never alone
    df = _results(_hand_table().iloc[[0, 4]])
    g = _by_axis(stats.granulated_kendall(df, "sharp", "eer", hyperparams=["method", "lr"]))
    assert math.isnan(g.loc["meta_method", "coef"]) and g.loc["meta_method", "n_groups"] == 0
    assert "no group of checkpoints that differ only in meta_method" in g.loc["meta_method", "note"]
    assert math.isnan(g.loc[PSI, "coef"])


# ---- brute force and scipy references ----------------------------------------------------------------------


def _sgn(v: float) -> int:
    return (v > 0) - (v < 0)


def _brute_force(ck: pd.DataFrame, axes: list[str]) -> tuple[dict[str, float], float]:
    """psi_i and Psi by a loop over ordered pairs of checkpoints (plain Python, no pandas grouping)."""
    recs = ck.to_dict("records")
    psi = {}
    for a in axes:
        others = [o for o in axes if o != a]
        groups: dict[tuple, list[dict]] = {}
        for r in recs:
            groups.setdefault(tuple(r[o] for o in others), []).append(r)
        taus = []
        for members in groups.values():
            if len(members) < 2 or len({m[a] for m in members}) < 2:
                continue
            s = 0
            for j, k in itertools.permutations(range(len(members)), 2):
                s += _sgn(members[j]["x"] - members[k]["x"]) * _sgn(members[j]["y"] - members[k]["y"])
            taus.append(s / (len(members) * (len(members) - 1)))
        psi[a] = sum(taus) / len(taus) if taus else math.nan
    used = [v for v in psi.values() if not math.isnan(v)]
    return psi, sum(used) / len(used)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_pair_loop_on_random_incomplete_grid(seed):
    rng = np.random.default_rng(seed)
    grid = list(itertools.product(["erm", "sam", "asam"], [1e-3, 1e-2], [0, 1, 2], [0.0, 0.05]))
    keep = rng.random(len(grid)) < 0.7
    rows = [g for g, k in zip(grid, keep, strict=True) if k]
    rows += [rows[i] for i in rng.integers(0, len(rows), 3)]  # repeated configurations
    ck = pd.DataFrame(rows, columns=["meta_method", "meta_lr", "meta_seed", "meta_sam_rho"])
    ck.insert(0, "checkpoint", [f"c{i:02d}" for i in range(len(ck))])
    ck["x"] = rng.integers(0, 4, len(ck)).astype(float)  # small integer ranges: many ties
    ck["y"] = rng.integers(0, 4, len(ck)).astype(float)
    axes = ["meta_method", "meta_lr", "meta_seed", "meta_sam_rho"]
    want_psi, want_big = _brute_force(ck, axes)
    out = stats.granulated_kendall(_results(ck, ("t", "u")), "sharp", "eer", hyperparams=axes)
    for t in ("t", "u"):  # y of "u" is shifted by a constant: the same signs
        g = _by_axis(out, t)
        for a in axes:
            if math.isnan(want_psi[a]):
                assert math.isnan(g.loc[a, "coef"])
            else:
                assert g.loc[a, "coef"] == pytest.approx(want_psi[a], abs=1e-12)
        assert g.loc[PSI, "coef"] == pytest.approx(want_big, abs=1e-12)


def test_full_grid_without_ties_matches_scipy_kendall_per_group():
    rng = np.random.default_rng(7)
    grid = list(itertools.product(["erm", "sam"], [1e-3, 3e-3, 1e-2], [0, 1]))
    ck = pd.DataFrame(grid, columns=["meta_method", "meta_lr", "meta_seed"])
    ck.insert(0, "checkpoint", [f"c{i}" for i in range(len(ck))])
    ck["x"], ck["y"] = rng.permutation(len(ck)) / 10, rng.permutation(len(ck)) / 10  # no ties
    axes = ["meta_method", "meta_lr", "meta_seed"]
    g = _by_axis(stats.granulated_kendall(_results(ck), "sharp", "eer", hyperparams=axes))
    psis = []
    for a in axes:
        others = [o for o in axes if o != a]
        taus = [
            sps.kendalltau(p["x"], p["y"]).statistic for _, p in ck.groupby(others)
        ]  # no ties: tau-b = tau
        assert g.loc[a, "coef"] == pytest.approx(np.mean(taus))
        assert g.loc[a, "n_groups"] == len(taus) and g.loc[a, "n"] == len(ck)
        psis.append(np.mean(taus))
    assert g.loc[PSI, "coef"] == pytest.approx(np.mean(psis))


# ---- axes come from the training configuration -------------------------------------------------------------


def _zoo_checkpoints() -> pd.DataFrame:
    # the demo zoo's shape: erm x 2 seeds, erm at a lower lr, sam at two radii, asam, LoRA + MLDG
    rows = [
        ("erm-seed0", "erm", 3e-3, 0.0, False, None, 0, "full", None),
        ("erm-seed1", "erm", 3e-3, 0.0, False, None, 1, "full", None),
        ("erm-lowlr-seed0", "erm", 1e-3, 0.0, False, None, 0, "full", None),
        ("sam-rho0.05", "sam", 3e-3, 0.05, False, None, 0, "full", None),
        ("sam-rho0.2", "sam", 3e-3, 0.2, False, None, 0, "full", None),
        ("asam", "asam", 3e-3, 0.5, True, 0.01, 0, "full", None),
        ("lora-mldg", "mldg", 3e-3, 0.0, False, None, 0, "lora", 4),
    ]
    cols = ["checkpoint", "meta_method", "meta_lr", "meta_sam_rho", "meta_adaptive", "meta_eta", "meta_seed"]
    ck = pd.DataFrame(rows, columns=[*cols, "meta_finetune", "meta_lora_rank"])
    n = len(ck)
    ck["meta_epochs"] = 16
    ck["meta_batch_size"] = 16
    ck["meta_optimizer"] = "adam"
    ck["meta_checkpoint"] = "best"
    # outcomes and identifiers, all varying
    ck["meta_dev_eer"] = np.linspace(0.05, 0.3, n)
    ck["meta_dev_loss"] = np.linspace(0.2, 0.9, n)
    ck["meta_train_loss"] = np.linspace(0.1, 0.5, n)
    ck["meta_epoch"] = [16, 9, 12, 3, 14, 7, 11]
    ck["meta_global_step"] = ck["meta_epoch"] * 40
    ck["meta_best_dev_eer"] = ck["meta_dev_eer"]
    ck["meta_val_acc"] = np.linspace(0.9, 0.6, n)
    ck["meta_n_params"] = [30_000] * 6 + [12_000]
    ck["meta_name"] = ck["checkpoint"]
    ck["meta_config_hash"] = [f"h{i}" for i in range(n)]
    ck["meta_train_manifest_hash"] = "abc"
    ck["x"] = [0.3, 0.5, 0.2, 0.1, 0.4, 0.6, 0.7]
    ck["y"] = [0.2, 0.3, 0.25, 0.1, 0.15, 0.35, 0.5]
    return ck


def test_outcome_columns_are_never_axes():
    df = _results(_zoo_checkpoints(), ("in-domain", "codec"))
    tab, _ = stats.paired_table(df, "sharp", "eer")
    axes = stats.default_hyperparams(tab)
    # adaptive, eta, finetune, lora_rank are functions of method; the outcomes are not admitted at all
    assert axes == ["meta_method", "meta_lr", "meta_sam_rho", "meta_seed"]
    out = stats.granulated_kendall(df, "sharp", "eer")
    assert set(out["hyperparam"]) == {*axes, PSI}
    # each axis has exactly one group of two here:
    #   method: lr 3e-3, rho 0, seed 0 -> erm-seed0 (0.3, 0.2) vs lora-mldg (0.7, 0.5): +1
    #   lr:     erm seed 0 -> (0.3, 0.2) vs erm-lowlr (0.2, 0.25): (+)(-) = -1
    #   sam_rho: sam seed 0 -> (0.1, 0.1) vs (0.4, 0.15): +1
    #   seed:   erm 3e-3 -> (0.3, 0.2) vs (0.5, 0.3): +1
    #   Psi = (1 - 1 + 1 + 1) / 4 = 0.5 on both test sets (the codec EERs are shifted by a constant)
    for t in ("in-domain", "codec"):
        g = _by_axis(out, t)
        assert g.loc[axes, "coef"].tolist() == [1.0, -1.0, 1.0, 1.0]
        assert g.loc[axes, "n_groups"].tolist() == [1, 1, 1, 1]
        assert g.loc[PSI, "coef"] == pytest.approx(0.5)


def test_axes_of_real_training_sidecars(tmp_path):
    """Sidecars the training loop writes for the demo zoo, read by the sweep: outcomes never become axes."""
    import torch

    from sharpscope.sweep.study import checkpoint_meta as table_meta
    from sharpscope.train.config import TrainConfig
    from sharpscope.train.loop import checkpoint_meta
    from sharpscope.train.zoo import load_zoo

    runs = load_zoo("analyses/demo_zoo.yaml")
    ck = []
    for i, run in enumerate(runs):
        cfg = TrainConfig.from_dict(run.config)
        info = {"epoch": 3 + i, "global_step": 30 + i, "dev_eer": 0.1 + i / 100, "dev_loss": 0.3 + i / 50}
        info |= {"train_loss": 0.2 - i / 100, "train_manifest_hash": f"t{i}", "checkpoint": "best"}
        meta = checkpoint_meta(cfg, torch.nn.Module(), info)
        side = tmp_path / run.name / "best.json"
        side.parent.mkdir()
        side.write_text(json.dumps({"format": "sharpscope-checkpoint", "meta": meta}, default=str))
        flat = table_meta(side.with_suffix(".safetensors"))
        ck.append(
            {"checkpoint": run.name, "x": float(i), "y": float(i % 3)}
            | {f"meta_{k}": v for k, v in flat.items()}
        )
    ck = pd.DataFrame(ck)
    assert {"meta_dev_eer", "meta_dev_loss", "meta_train_loss", "meta_epoch", "meta_global_step"} <= set(ck)
    tab, _ = stats.paired_table(_results(ck), "sharp", "eer")
    # The demo zoo varies method, lr, seed, epochs (erm-short) and augmentation (erm-rawboost).  sam_rho is a
    # function of method (ERM 0, SAM 0.05, ASAM 0.5), finetune of method (MLDG <-> lora), and RawBoost's
    # impulsive/p switch together with convolutive: derived columns only split the same groups.
    expected = ["meta_method", "meta_lr", "meta_seed", "meta_epochs", "meta_augment_convolutive"]
    assert stats.default_hyperparams(tab) == expected


def test_no_axis_raises_one_clear_error_and_the_report_notes_it():
    ck = _zoo_checkpoints()
    for c in ("meta_method", "meta_lr", "meta_sam_rho", "meta_adaptive", "meta_eta", "meta_seed"):
        ck[c] = ck[c].iloc[0]  # one training configuration; only outcomes vary
    ck["meta_finetune"], ck["meta_lora_rank"] = "full", None
    df = _results(ck)
    with pytest.raises(stats.NoHyperparameterAxesError) as err:
        stats.granulated_kendall(df, "sharp", "eer")
    msg = str(err.value)
    assert "\n" not in msg and "--hyperparams" in msg
    assert "meta_method=erm" in msg and "meta_dev_eer" in msg  # candidates and refused columns are named
    assert isinstance(err.value, SharpscopeError)
    with pytest.raises(stats.NoHyperparameterAxesError, match="none of the given"):
        stats.granulated_kendall(df, "sharp", "eer", hyperparams=["seed", "lr"])
    problems: list[str] = []
    tables = analyse(df, n_boot=0, methods=("kendall",), problems=problems)
    assert "correlations" in tables and "granulated_kendall" not in tables
    assert sum("granulated Kendall: no training hyperparameter" in p for p in problems) == 1


# ---- CLI ---------------------------------------------------------------------------------------------------


def test_cli_correlate_hyperparams(tmp_path):
    _results(_hand_table(), ("t", "u")).to_parquet(tmp_path / "results.parquet")
    runner = CliRunner()
    base = ["correlate", str(tmp_path), "--x", "sharp", "--method", "kendall", "--n-boot", "0"]
    res = runner.invoke(app, [*base, "--hyperparams", "method,meta_lr", "--out", str(tmp_path / "c.csv")])
    assert res.exit_code == 0, res.output
    assert "axes (given): meta_method,meta_lr" in res.output and "ψ lr" in res.output
    csv = pd.read_csv(tmp_path / "c.csv")
    gk = csv[csv["method"] == "granulated-kendall"]
    assert set(gk["axes"]) == {"meta_method,meta_lr"} and set(gk["axes_from"]) == {"given"}
    psi = gk[gk["hyperparam"] == PSI].set_index("testset")["coef"]
    assert psi.to_dict() == pytest.approx({"t": 1 / 3, "u": 1 / 3})  # hand-worked above
    assert set(csv.loc[csv["method"] == "kendall", "testset"]) == {"t", "u"}
    res = runner.invoke(app, [*base, "--hyperparams", "auto", "--out", str(tmp_path / "a.csv")])
    assert res.exit_code == 0, res.output
    auto = pd.read_csv(tmp_path / "a.csv")
    assert set(auto["axes_from"].dropna()) == {"training-config rule"}
    res = runner.invoke(app, [*base, "--hyperparams", "momentum"])
    assert res.exit_code == 2 and "not in the table" in res.output and "Traceback" not in res.output
    one = _hand_table().assign(meta_method="erm", meta_lr=1e-3)
    _results(one).to_parquet(tmp_path / "results.parquet")
    res = runner.invoke(app, [*base, "--hyperparams", "auto"])
    assert res.exit_code == 2 and "--hyperparams" in res.output and "Traceback" not in res.output
