"""Controls that make a study's conclusions defensible (issue: batch composition, class mix, non-finite
batches, test-set curvature, output layouts).  Every check compares against an independent reference: a
permuted manifest, a brute-force grid, a separate Monte Carlo, a plain resampling loop, the dense Hessian."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch import nn

from sharpscope.errors import CheckpointError
from sharpscope.losses import Loss, make_loss
from sharpscope.models.outputs import LogitsOutput, forward_logits
from sharpscope.models.registry import build_model
from sharpscope.scoring import score_manifest
from sharpscope.sharpness.average_case import AverageCase
from sharpscope.sharpness.base import weighted_summary
from sharpscope.sharpness.curvature import HessianMax, HessianMaxBatchMean
from sharpscope.sharpness.m_sharpness import MSharpness
from sharpscope.sharpness.runner import class_mix_rows, score_and_sharpness
from sharpscope.sharpness.worst_case import WorstCase

from .conftest import TINY_AASIST

NB = 4000


def tiny_aasist() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("aasist", **{**TINY_AASIST, "nb_samp": NB})
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.1, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model.eval()


def write_clips(root, specs) -> pd.DataFrame:
    """``specs``: (utt_id, label, length, frequency) -> WAV files and their manifest."""
    rows = []
    for uid, label, n, f in specs:
        t = np.arange(n) / 16000
        x = 0.1 * np.sin(2 * np.pi * f * t) + 0.01 * np.cos(2 * np.pi * 3 * f * t)
        path = root / f"{uid}.wav"
        sf.write(path, x.astype(np.float32), 16000, subtype="FLOAT")
        rows.append({"utt_id": uid, "path": str(path), "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    labels = ["spoof", "bonafide", "spoof", "spoof", "bonafide", "spoof", "bonafide", "spoof", "spoof"]
    specs = [(f"u{i}", lab, 2400, 120 + 35 * i) for i, lab in enumerate(labels)]
    return write_clips(root, specs)


# ---- batch composition ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_balanced_order_is_invariant_to_a_class_sorted_manifest(mixed):
    model = tiny_aasist()
    sorted_df = mixed.sort_values("label", kind="stable").reset_index(drop=True)
    kw = {"batch_size": 3, "nb_samp": NB}
    _, a = score_and_sharpness(model, mixed, MSharpness(), "weighted-ce", **kw)
    _, b = score_and_sharpness(model, sorted_df, MSharpness(), "weighted-ce", **kw)
    assert a.settings["order"] == "balanced"  # the default
    assert a.value == pytest.approx(b.value, rel=1e-6)
    # the reference order (manifest) is what makes the layout leak in
    _, m1 = score_and_sharpness(model, mixed, MSharpness(), "weighted-ce", order="manifest", **kw)
    _, m2 = score_and_sharpness(model, sorted_df, MSharpness(), "weighted-ce", order="manifest", **kw)
    assert m1.value != pytest.approx(m2.value, rel=1e-3)


def test_equal_class_mix_makes_sets_with_10_and_60_percent_bona_fide_agree(tmp_path):
    # within a class every clip is the same audio, so any equal-mix subsample gives the same batches
    def specs(n_bona, n_spoof, tag):
        return [(f"{tag}b{i}", "bonafide", 2400, 180) for i in range(n_bona)] + [
            (f"{tag}s{i}", "spoof", 2400, 260) for i in range(n_spoof)
        ]

    low = write_clips(tmp_path, specs(2, 18, "lo"))  # 10 % bona fide
    high = write_clips(tmp_path, specs(6, 4, "hi"))  # 60 % bona fide
    model = tiny_aasist()
    kw = {"batch_size": 2, "nb_samp": NB}
    _, e_low = score_and_sharpness(model, low, MSharpness(), "weighted-ce", class_mix="equal", **kw)
    _, e_high = score_and_sharpness(model, high, MSharpness(), "weighted-ce", class_mix="equal", **kw)
    assert e_low.value == pytest.approx(e_high.value, rel=1e-6)
    assert e_low.extra["n_bonafide_used"] == e_low.extra["n_spoof_used"] == 2
    assert e_high.extra["n_bonafide_used"] == e_high.extra["n_spoof_used"] == 4
    assert e_low.settings["class_mix"] == "equal"
    _, d_low = score_and_sharpness(model, low, MSharpness(), "weighted-ce", **kw)
    _, d_high = score_and_sharpness(model, high, MSharpness(), "weighted-ce", **kw)
    assert d_low.value != pytest.approx(d_high.value, rel=1e-3)  # the dataset mix moves the value
    # per-class contributions add up to the value
    assert sum(e_low.extra["per_class"].values()) == pytest.approx(e_low.value, rel=1e-5)  # float32 logits


def test_class_mix_rows_hand_worked():
    labels = ["bonafide"] * 3 + ["spoof"] * 9
    rows = class_mix_rows(labels, "equal", seed=1)
    assert sum(labels[i] == "bonafide" for i in rows) == 3 and sum(labels[i] == "spoof" for i in rows) == 3
    rows = class_mix_rows(labels, 0.2, seed=1)  # bona fide scarce relative to 0.2? 3/12 = 0.25 -> keep spoof
    assert sum(labels[i] == "spoof" for i in rows) == 9 and sum(labels[i] == "bonafide" for i in rows) == 2
    rows = class_mix_rows(labels, 0.5, seed=1)
    assert len(rows) == 6 and len(set(rows)) == 6  # each utterance at most once
    assert class_mix_rows(labels, "dataset") == list(range(12))


@pytest.mark.parametrize("crop", ["first", "full"])
def test_every_score_is_the_same_alone_and_in_any_batch(tmp_path, crop):
    lengths = [2400, 4800, 3200, 2400, 6000, 4000]
    df = write_clips(tmp_path, [(f"c{i}", "spoof" if i % 2 else "bonafide", n, 150 + 20 * i) for i, n in
                                enumerate(lengths)])  # fmt: skip
    model = tiny_aasist()
    alone = score_manifest(model, df, batch_size=1, crop=crop, nb_samp=NB, progress=False)
    together = score_manifest(model, df, batch_size=6, crop=crop, nb_samp=NB, progress=False)
    np.testing.assert_allclose(together["score"], alone["score"], rtol=0, atol=1e-6)
    shared, _ = score_and_sharpness(
        model, df, MSharpness(), "weighted-ce", batch_size=4, crop=crop, nb_samp=NB
    )
    np.testing.assert_allclose(shared["score"], alone["score"], rtol=0, atol=1e-6)
    if crop == "full":  # the independent reference: each clip through the model on its own, unpadded
        for i, n in enumerate(lengths):
            x = torch.from_numpy(sf.read(df.loc[i, "path"], dtype="float32")[0])[None, :n]
            with torch.no_grad():
                assert float(model(x)[0, 1]) == pytest.approx(alone.loc[i, "score"], abs=1e-6)


# ---- estimators against brute force and Monte Carlo -------------------------------------------------------


class TwoParam(nn.Module):
    """``logits = [f(w), 0]`` with a non-quadratic ``f`` of two parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, w2 = self.w
        f = torch.sin(3 * w1) * torch.cos(2 * w2) + 0.5 * w1 * w2 + 0.3 * w2**2
        return torch.stack([x[:, 0] * f, torch.zeros_like(x[:, 0])], dim=1)


class FirstLogit(Loss):
    name = "first-logit"
    needs_labels = False

    def __call__(self, logits, labels, clean_logits=None):
        return logits[:, 0].mean()


def test_worst_case_matches_a_brute_force_grid_maximum():
    model, rho = TwoParam(), 0.25
    x = torch.ones(3, 1, dtype=torch.float64)
    batch = (x, torch.zeros(3, dtype=torch.long))
    res = WorstCase(rho=rho, norm="l2", adaptive=False, steps=100, restarts=3).estimate(
        model, [batch], FirstLogit()
    )
    w0 = model.w.detach().numpy().copy()

    def f(w1, w2):
        return np.sin(3 * w1) * np.cos(2 * w2) + 0.5 * w1 * w2 + 0.3 * w2**2

    r = np.linspace(0, rho, 401)[:, None]
    th = np.linspace(0, 2 * np.pi, 2001)[None, :]
    grid = f(w0[0] + r * np.cos(th), w0[1] + r * np.sin(th))
    best = float(grid.max() - f(*w0))
    assert res.value == pytest.approx(best, rel=2e-3)
    assert res.value <= best + 1e-6  # no point of the ball can beat the maximum


def test_adaptive_average_case_against_a_separate_monte_carlo():
    A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, -0.3], [0.0, -0.3, 1.0]])
    w0 = np.array([1.0, -0.6, 0.4])

    class Quad(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(w0))
            self.register_buffer("A", torch.tensor(A))

        def forward(self, x):
            q = 0.5 * self.w @ self.A @ self.w
            return torch.stack([x[:, 0] * q, torch.zeros_like(x[:, 0])], dim=1)

    sigma, k = 0.3, 4000
    batch = (torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.long))
    res = AverageCase(rho=sigma, adaptive=True, samples=k, vectorize="off", chunk=500).estimate(
        Quad(), [batch], FirstLogit()
    )
    rng = np.random.default_rng(123)  # separate Monte Carlo: δ = σ |w| ⊙ z
    z = rng.normal(size=(200_000, 3))
    w = w0 + sigma * np.abs(w0) * z
    mc = 0.5 * np.einsum("ni,ij,nj->n", w, A, w) - 0.5 * w0 @ A @ w0
    se = math.sqrt(mc.var() / len(mc) + np.var(res.per_batch[0]["sample_losses"]) / k)
    assert abs(res.value - mc.mean()) < 4 * se
    closed = 0.5 * sigma**2 * float(np.sum(np.diag(A) * w0**2))  # E[½δᵀAδ] with δ = σ|w|z
    assert mc.mean() == pytest.approx(closed, rel=0.02)


def test_bootstrap_ci_against_a_plain_resampling_loop():
    values = [0.3, 0.1, 0.5, 0.2, 0.9, 0.4, 0.35]
    sizes = [4, 4, 3, 4, 2, 4, 1]
    mean, _, (lo, hi) = weighted_summary(values, sizes, n_boot=500, seed=7)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, len(values), size=(500, len(values)))  # same draws, then a plain loop
    boots = []
    for row in idx:
        num = den = 0.0
        for j in row:
            num += values[j] * sizes[j]
            den += sizes[j]
        boots.append(num / den)
    boots.sort()

    def quantile(q):  # linear interpolation between order statistics (numpy's default)
        pos = q * (len(boots) - 1)
        i = int(math.floor(pos))
        return boots[i] + (pos - i) * (boots[min(i + 1, len(boots) - 1)] - boots[i])

    assert mean == pytest.approx(sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes))
    assert lo == pytest.approx(quantile(0.025), rel=1e-12) and hi == pytest.approx(quantile(0.975), rel=1e-12)


# ---- hessian-max of the test-set loss ---------------------------------------------------------------------


def test_hessian_max_is_the_top_eigenvalue_of_the_test_set_loss():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(12, 3, dtype=torch.float64)
    y = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0])
    loss = make_loss("weighted-ce")  # batches differ in class mix, so their weights W_B differ
    batches = [(x[i : i + 4], y[i : i + 4]) for i in (0, 4, 8)]
    params = dict(model.named_parameters())
    names = list(params)
    flat0 = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def full_loss(flat):  # the weighted CE of all 12 utterances at once
        parts, k = {}, 0
        for n in names:
            m = params[n].numel()
            parts[n] = flat[k : k + m].reshape(params[n].shape)
            k += m
        return loss(torch.func.functional_call(model, parts, (x,)), y)

    lam_full = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(full_loss, flat0))[-1])
    r = HessianMax(method="lanczos", tol=1e-12, iterations=200).estimate(model, batches, loss)
    assert r.value == pytest.approx(lam_full, rel=1e-6)
    per = HessianMaxBatchMean(method="lanczos", tol=1e-12, iterations=200).estimate(model, batches, loss)
    assert per.value != pytest.approx(lam_full, rel=1e-3)  # the per-batch mean is another quantity


# ---- output layouts ---------------------------------------------------------------------------------------


class Head(nn.Module):
    def __init__(self, logits_first: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.logits_first = logits_first

    def forward(self, x):
        z = self.lin(x)
        hidden = torch.cat([z, z], dim=1) * 10  # hidden features must never be read as logits
        return (z, hidden) if self.logits_first else (hidden, z)


def test_official_and_sam_antispoofing_outputs_are_both_read_correctly():
    torch.manual_seed(0)
    sam, official = Head(logits_first=True), Head(logits_first=False)
    official.load_state_dict(sam.state_dict())
    x = torch.randn(5, 3)
    ref = sam.lin(x).detach()
    for model, layout in ((sam, "sam-antispoofing"), (official, "official-aasist")):
        with pytest.raises(CheckpointError, match="declares no output layout"):
            forward_logits(model, x)
        wrapped = LogitsOutput(model, layout)
        torch.testing.assert_close(forward_logits(wrapped, x), ref)
        model.output_layout = layout
        torch.testing.assert_close(forward_logits(model, x), ref)
        batch = (x, torch.tensor([0, 1, 0, 1, 1]))
        a = MSharpness(rho=0.1).estimate(model, [batch], "ce")
        b = MSharpness(rho=0.1).estimate(model.lin, [batch], "ce")
        assert a.value == pytest.approx(b.value, rel=1e-6)


# ---- families and the confound panel ----------------------------------------------------------------------


def _results(n_per_family: int = 5) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for fam, scale in (("aasist", 1.0), ("ssl-linear+lora", 50.0)):
        for k in range(n_per_family):
            for testset in ("in", "out"):
                eer = 0.05 * k + (0.1 if testset == "out" else 0.0)
                rows.append(
                    {
                        "checkpoint": f"{fam}-{k}", "arch": fam.split("+")[0], "family": fam,
                        "testset": testset, "in_domain": testset == "in", "subset": "",
                        "measure": "m-sharpness", "rho": 0.05, "loss": "weighted-ce", "seed": 0,
                        # within a family sharpness rises with EER; the other family sits at another scale
                        "value": scale * (1.0 - 0.1 * k) + 0.001 * rng.normal(), "eer": eer,
                        "order": "balanced", "class_mix": "dataset", "crop": "first",
                        "score_type": "bonafide-logit", "nonfinite": "error", "n_nonfinite": 0,
                        "n_utts": 40, "batch_size": 8,
                    }
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_correlations_are_within_one_family_unless_pooled():
    from scipy import stats as sps

    from sharpscope.stats import correlate

    df = _results()
    out = correlate(df, "m-sharpness", "eer", methods=["spearman"], n_boot=0)
    assert set(out["family"]) == {"aasist", "ssl-linear+lora"}
    for fam, g in df[df["testset"] == "out"].groupby("family"):
        ref = sps.spearmanr(g["value"], g["eer"]).statistic
        got = out[(out["family"] == fam) & (out["testset"] == "out")]["coef"].item()
        assert got == pytest.approx(ref)
    pooled = correlate(df, "m-sharpness", "eer", methods=["spearman"], n_boot=0, pool_families=True)
    assert set(pooled["family"]) == {"pooled: aasist + ssl-linear+lora"}
    g = df[df["testset"] == "out"]
    assert pooled[pooled["testset"] == "out"]["coef"].item() == pytest.approx(
        sps.spearmanr(g["value"], g["eer"]).statistic
    )
    assert "families pooled" in pooled["note"].iloc[0]


def test_confound_panel_flags_cells_that_differ_and_nonfinite_cells():
    from sharpscope.confounds import confound_panel, confound_warnings

    df = _results()
    assert [w for w in confound_warnings(df, "m-sharpness") if "family" not in w] == []
    df.loc[df.index[:3], "order"] = "manifest"
    df.loc[df.index[5], ["n_nonfinite", "nonfinite"]] = [2, "drop"]
    warnings = confound_warnings(df, "m-sharpness")
    assert any("differ in order: balanced (17 cells), manifest (3 cells)" in w for w in warnings)
    assert any("differ in nonfinite" in w for w in warnings)
    assert any("1 cell(s) with non-finite batches (2 batches; policy drop)" in w for w in warnings)
    panel = confound_panel(df, "m-sharpness")
    assert set(panel["testset"]) == {"in", "out"}
    assert int(panel["n_nonfinite"].sum()) == 2 and int(panel["cells_nonfinite"].sum()) == 1
    assert panel.loc[panel["testset"] == "in", "order"].item() == "balanced, manifest"
