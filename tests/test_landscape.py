"""Loss-landscape slices: exact on quadratics, filter normalisation, restoration, determinism."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope.errors import SharpscopeError, SpecError
from sharpscope.losses import Loss, make_loss
from sharpscope.sharpness.base import select_params
from sharpscope.sharpness.landscape import (
    Landscape,
    LandscapeSettings,
    filter_normalized_direction,
    make_directions,
)


class FirstLogitMean(Loss):
    """Loss = mean of the first logit: the model computes its own loss."""

    name = "first-logit"
    needs_labels = False

    def __call__(self, logits, labels, clean_logits=None):
        return logits[:, 0].mean()


class CenteredQuadratic(nn.Module):
    """Logit 0 = ½ (w − w₀)ᵀA(w − w₀) + ½‖b − b₀‖² with w₀, b₀ the initial values (buffers)."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))
        m = torch.randn(12, 12, generator=g, dtype=torch.float64)
        self.register_buffer("A", m @ m.T / 12)
        self.register_buffer("w0", self.weight.detach().clone().reshape(-1))
        self.register_buffer("b0", self.bias.detach().clone())

    def forward(self, x):
        e = self.weight.reshape(-1) - self.w0
        q = 0.5 * e @ self.A @ e + 0.5 * ((self.bias - self.b0) ** 2).sum()
        return torch.stack([q.expand(x.shape[0]), torch.zeros(x.shape[0], dtype=q.dtype)], dim=1)


def quad_batches(sizes=(2, 3)):
    return [(torch.zeros(n, 1, dtype=torch.float64), torch.zeros(n, dtype=torch.long)) for n in sizes]


def make_mlp(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv1d(1, 3, 5), nn.BatchNorm1d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 12, 2))
    with torch.no_grad():
        m[1].running_mean.copy_(torch.randn(3) * 0.2)
        m[1].running_var.copy_(torch.rand(3) + 0.5)
    m.train()
    return m


def mlp_batches(seed=1, sizes=(4, 3)):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 16, generator=g), torch.randint(0, 2, (n,), generator=g)) for n in sizes]


class Unsqueeze(nn.Module):
    """Wraps a conv net so it takes [B, T] waveforms like sharpscope models."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x[:, None, :] if x.dim() == 2 else x)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model, before):
    after = model.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k


# ---- directions -------------------------------------------------------------------------------------------


def test_filter_normalisation_matches_filter_norms_and_zeroes_biases():
    model = make_mlp()
    params = select_params(model)
    d = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    assert d.keys() == params.keys()
    for name, w in params.items():
        if w.dim() <= 1:  # conv/linear biases, BN weight and bias
            assert torch.count_nonzero(d[name]) == 0, name
            continue
        wn = w.detach().reshape(w.shape[0], -1).norm(dim=1)
        dn = d[name].reshape(w.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(dn, wn, rtol=1e-6, atol=0)
        assert not torch.allclose(d[name], w.detach())  # a random direction, not w itself
    # a zero filter of w gives a zero filter of d
    with torch.no_grad():
        model[4].weight[1].zero_()
    d = filter_normalized_direction(select_params(model), torch.Generator().manual_seed(0))
    assert torch.count_nonzero(d["4.weight"][1]) == 0 and torch.count_nonzero(d["4.weight"][0]) > 0


def test_directions_seeded():
    params = select_params(make_mlp())
    a, b, c = (make_directions(params, 2, 2, seed) for seed in (5, 5, 6))
    assert len(a) == 2 and all(len(g) == 2 for g in a)
    for ga, gb, gc in zip(a, b, c, strict=True):
        for da, db, dc in zip(ga, gb, gc, strict=True):
            assert all(torch.equal(da[n], db[n]) for n in da)
            assert not torch.equal(da["0.weight"], dc["0.weight"])
    assert not torch.equal(a[0][0]["0.weight"], a[0][1]["0.weight"])  # the two axes differ


# ---- exact curves on a quadratic --------------------------------------------------------------------------


def test_1d_curves_on_quadratic_are_half_alpha_squared_dAd():
    model = CenteredQuadratic()
    alphas = [-1.0, -0.5, -0.25, 0.0, 0.3, 1.0]
    est = Landscape(alphas=alphas, dims=1, n_directions=3, seed=11)
    r = est.estimate(model, quad_batches(), FirstLogitMean())
    dirs = make_directions(select_params(model), 3, 1, 11)
    curv = [float(d[0]["weight"].reshape(-1) @ model.A @ d[0]["weight"].reshape(-1)) for d in dirs]
    expected = np.array([[0.5 * a * a * c for a in alphas] for c in curv])
    np.testing.assert_allclose(np.array(r.extra["curves"]), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.extra["mean"], expected.mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.extra["std"], expected.std(0, ddof=1), rtol=1e-9, atol=1e-15)
    assert r.extra["alphas"] == alphas and r.extra["loss0"] == 0.0 and r.extra["radius"] == 1.0
    # summary: mean over directions of ½[L(w+rd)+L(w−rd)] − L(w) = ½ r² dᵀAd
    assert r.value == pytest.approx(0.5 * np.mean(curv), rel=1e-12)
    assert r.n_batches == 2 and r.n_utts == 5 and r.n_nonfinite == 0
    # each batch evaluated once at w and once per (direction, non-zero α)
    assert r.cost["forward"] == 2 * (1 + 3 * 5)
    json.dumps(r.to_dict())  # plots read extra straight from JSON


def test_radius_off_grid_and_2d_grid_on_quadratic():
    model = CenteredQuadratic(seed=3)
    alphas = [-1.0, 0.0, 0.5, 1.0]
    r = Landscape(alphas=alphas, dims=2, n_directions=2, seed=2, radius=0.7).estimate(
        model, quad_batches((4,)), FirstLogitMean()
    )
    dirs = make_directions(select_params(model), 2, 2, 2)
    grids, summary = [], []
    for d1, d2 in dirs:
        u, v = d1["weight"].reshape(-1), d2["weight"].reshape(-1)
        grids.append(
            [[float(0.5 * (a * u + b * v) @ model.A @ (a * u + b * v)) for b in alphas] for a in alphas]
        )
        summary.append(0.5 * 0.49 * (float(u @ model.A @ u) + float(v @ model.A @ v)) / 2)
    np.testing.assert_allclose(np.array(r.extra["grids"]), np.array(grids), rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(r.extra["grid"], np.mean(grids, axis=0), rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(r.extra["grid_std"], np.std(grids, axis=0, ddof=1), rtol=1e-9, atol=1e-14)
    assert r.value == pytest.approx(np.mean(summary), rel=1e-11)
    assert "curves" not in r.extra and r.extra["dims"] == 2
    assert len(r.extra["direction_norm_ratio"]) == 4


# ---- estimator behaviour on a real (tiny) network ---------------------------------------------------------


def test_restored_bit_identical_and_deterministic():
    model = Unsqueeze(make_mlp())
    batches = [(x[:, 0, :], y) for x, y in mlp_batches()]
    before = state(model)
    loss = make_loss("weighted-ce")
    a = Landscape(alphas=[-0.5, 0.0, 0.5], n_directions=2, seed=1).estimate(model, batches, loss)
    assert_bit_identical(model, before)
    assert model.training and all(p.grad is None for p in model.parameters())
    b = Landscape(alphas=[-0.5, 0.0, 0.5], n_directions=2, seed=1).estimate(model, batches, loss)
    c = Landscape(alphas=[-0.5, 0.0, 0.5], n_directions=2, seed=2).estimate(model, batches, loss)
    assert a.extra == b.extra and a.value == b.value and a.per_batch == b.per_batch
    assert a.extra["curves"] != c.extra["curves"]
    # the curve's centre is the clean loss, the size-weighted mean of the batch losses
    assert all(curve[1] == a.extra["loss0"] for curve in a.extra["curves"])
    sizes = [r["size"] for r in a.per_batch]
    assert a.extra["loss0"] == pytest.approx(np.average([r["loss"] for r in a.per_batch], weights=sizes))
    assert a.value == pytest.approx(np.average([r["value"] for r in a.per_batch], weights=sizes))


def test_kl_to_clean_unlabelled_and_nonfinite_batches():
    model = Unsqueeze(make_mlp())
    (x1, _), (x2, _) = mlp_batches()
    unl = [(x1[:, 0, :], torch.full((4,), -1)), (x2[:, 0, :], torch.full((3,), -1))]
    r = Landscape(alphas=[-1.0, 0.0, 1.0], n_directions=2).estimate(model, unl, make_loss("kl-to-clean"))
    assert r.extra["loss0"] == 0.0 and r.value > 0 and all(v >= 0 for c in r.extra["curves"] for v in c)
    with pytest.raises(SharpscopeError, match="kl-to-clean"):
        Landscape(alphas=[1.0], n_directions=1).estimate(model, unl, make_loss("weighted-ce"))
    bad = (torch.full((2, 16), float("nan")), torch.full((2,), -1))
    r2 = Landscape(alphas=[-1.0, 0.0, 1.0], n_directions=2).estimate(
        model, [unl[0], bad, unl[1]], make_loss("kl-to-clean")
    )
    # counts have one meaning for every measure: every batch processed, finite or not
    assert r2.n_nonfinite == 1 and r2.n_batches == 3 and r2.per_batch[1]["finite"] is False
    assert r2.extra["n_utts_finite"] == r2.n_utts - 2
    assert r2.value == pytest.approx(r.value, rel=1e-12)
    np.testing.assert_allclose(r2.extra["curves"], r.extra["curves"], rtol=1e-12)


def test_settings_validation_and_constructor_forms():
    s = LandscapeSettings(alphas=(-1, 0, 1), dims=2, n_directions=2)
    assert s.alphas == [-1.0, 0.0, 1.0] and s.radius == 1.0
    assert Landscape(s).settings is s and Landscape(dims=2).settings.dims == 2
    assert len(LandscapeSettings().alphas) == 21 and LandscapeSettings().alphas[10] == 0.0
    for bad in ({"dims": 3}, {"alphas": []}, {"alphas": [math.inf]}, {"n_directions": 0}, {"radius": -1.0}):
        with pytest.raises(SpecError):
            LandscapeSettings(**bad)
    r = Landscape().estimate(make_mlp(), [], make_loss("ce"))
    assert math.isnan(r.value) and r.n_batches == 0
