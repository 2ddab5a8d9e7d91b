"""Hessian operator and curvature estimators against exact Hessians of tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from sharpscope.data.audio import Batch
from sharpscope.errors import SharpscopeError, SpecError
from sharpscope.losses import Loss, make_loss
from sharpscope.sharpness.base import select_params
from sharpscope.sharpness.curvature import (
    HessianMax,
    HessianMaxBatchMean,
    HessianMaxSettings,
    HessianTrace,
    HessianTraceSettings,
)
from sharpscope.sharpness.hvp import HessianOperator

# torch emits this once when it first loads its forward-mode AD decompositions
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

# ---- tiny models ------------------------------------------------------------------------------------------


def make_mlp(dtype=torch.float64, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN is not the identity
        m[1].running_mean.copy_(torch.randn(4) * 0.3)
        m[1].running_var.copy_(torch.rand(4) + 0.5)
        m[1].weight.copy_(torch.rand(4) + 0.5)
        m[1].bias.copy_(torch.randn(4) * 0.1)
    m.train()  # estimators must switch to eval themselves
    return m


def make_batch(n=8, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=dtype), torch.randint(0, 2, (n,), generator=g)


def exact_hessian(model, loss, x, y, scope="all") -> torch.Tensor:
    """Dense Hessian by torch.autograd.functional.hessian over the flattened scope (eval mode)."""
    was = model.training
    model.eval()
    params = select_params(model, scope)
    names = list(params)
    shapes = [p.shape for p in params.values()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params.values()])
    clean = model(x).detach() if loss.needs_clean else None

    def f(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        d = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return loss(functional_call(model, d, (x,)), y, clean)

    h = torch.autograd.functional.hessian(f, flat0)
    model.train(was)
    return h


class FirstLogitMean(Loss):
    """Loss = mean of the first logit: lets a model *be* its own loss (quadratic tests)."""

    name = "first-logit"
    needs_labels = False

    def __call__(self, logits, labels, clean_logits=None):
        return logits[:, 0].mean()


class Quadratic(nn.Module):
    """Logit 0 = ½ wᵀAw with w the flattened weight: Hessian exactly A."""

    def __init__(self, eigenvalues, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = len(eigenvalues)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        self.register_buffer("A", q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T)
        self.weight = nn.Parameter(torch.randn(3, n // 3, generator=g, dtype=torch.float64))

    def forward(self, x):
        w = self.weight.reshape(-1)
        q = 0.5 * w @ self.A @ w
        return torch.stack([q.expand(x.shape[0]), torch.zeros(x.shape[0], dtype=q.dtype)], dim=1)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model, before):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


# ---- the operator -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_name", ["weighted-ce", "ce"])
def test_operator_dense_equals_exact_hessian(loss_name):
    model, (x, y), loss = make_mlp(), make_batch(), make_loss(loss_name)
    h = exact_hessian(model, loss, x, y)
    model.eval()
    op = HessianOperator(model, loss, x, y, select_params(model))
    torch.testing.assert_close(op.to_dense(), h, rtol=1e-10, atol=1e-12)
    assert op.mode == "forward-over-reverse" and op.n_matvec == h.shape[0]
    rev = HessianOperator(model, loss, x, y, select_params(model), ad_mode="reverse-over-reverse")
    torch.testing.assert_close(rev.to_dense(), h, rtol=1e-10, atol=1e-12)  # batched double backward
    torch.testing.assert_close(rev.to_dense(block_size=1), h, rtol=1e-10, atol=1e-12)  # column loop
    assert op.batched and rev.batched  # both vectorised paths worked on this model


def test_trainable_scope_gives_the_hessian_block():
    model, (x, y), loss = make_mlp(), make_batch(), make_loss("weighted-ce")
    model[0].requires_grad_(False)  # frozen first layer: 3·4 + 4 parameters out of scope
    h = exact_hessian(model, loss, x, y, scope="trainable")
    assert h.shape[0] == 34 - 16
    r = HessianTrace(method="hutch++", n_queries=3 * h.shape[0], block_size=64, scope="trainable").estimate(
        model, [(x, y)], loss
    )
    assert r.extra["dim"] == h.shape[0] and r.value == pytest.approx(float(h.trace()), rel=1e-9)
    assert not model[0].weight.requires_grad  # flags restored


def test_kl_to_clean_hessian_is_the_gauss_newton_matrix():
    """At the clean weights, ∇²KL(p_clean‖p_w) = (1/B) Σ Jᵀ(diag p − p pᵀ)J (residual term vanishes)."""
    model, (x, _) = make_mlp(), make_batch()
    model.eval()
    params = select_params(model)
    names, shapes = list(params), [p.shape for p in params.values()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def logits_of(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        return functional_call(
            model, {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}, (x,)
        )

    jac = torch.autograd.functional.jacobian(logits_of, flat0)  # B × 2 × dim
    p = torch.softmax(logits_of(flat0), -1)
    ggn = sum(jac[b].T @ (torch.diag(p[b]) - torch.outer(p[b], p[b])) @ jac[b] for b in range(len(x))) / len(
        x
    )
    unknown = torch.full((len(x),), -1)  # label-free: unknown labels are fine
    op = HessianOperator(model, make_loss("kl-to-clean"), x, unknown, params)
    torch.testing.assert_close(op.to_dense(), ggn, rtol=1e-9, atol=1e-12)

    ev = torch.linalg.eigvalsh(ggn)
    model.train()
    r = HessianMax(method="lanczos", iterations=100, tol=1e-10).estimate(
        model, [(x, unknown)], make_loss("kl-to-clean")
    )
    assert r.value == pytest.approx(float(ev[-1]), rel=1e-8)
    assert r.per_batch[0]["loss"] == pytest.approx(0.0, abs=1e-12)
    assert r.extra["min_ritz"] >= -1e-10  # a Gauss-Newton matrix is positive semi-definite
    t = HessianTrace(method="hutch++", n_queries=3 * ggn.shape[0], block_size=64).estimate(
        model, [(x, unknown)], make_loss("kl-to-clean")
    )
    assert t.value == pytest.approx(float(ggn.trace()), rel=1e-8)


class _OldStyleTanh(torch.autograd.Function):
    """A custom op without a forward-mode (jvp) formula and without torch.func support."""

    @staticmethod
    def forward(ctx, x):
        out = torch.tanh(x)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2)  # differentiable: double backward works


class NoForwardAD(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(3, 5).double()
        self.b = nn.Linear(5, 2).double()

    def forward(self, x):
        return self.b(_OldStyleTanh.apply(self.a(x)))


def test_auto_mode_falls_back_to_double_backward():
    model, (x, y), loss = NoForwardAD(), make_batch(), make_loss("weighted-ce")
    fwd = HessianOperator(model, loss, x, y, select_params(model), ad_mode="forward-over-reverse")
    with pytest.raises(Exception):  # noqa: B017 -- whatever torch.func raises for this op
        fwd.matvec(torch.ones(fwd.dim, dtype=torch.float64))
    ref = HessianOperator(model, loss, x, y, select_params(model), ad_mode="reverse-over-reverse").to_dense()
    # the reference double-backward Hessian agrees with the exact one of the same function using plain tanh
    plain = nn.Sequential(model.a, nn.Tanh(), model.b)
    torch.testing.assert_close(ref, exact_hessian(plain, loss, x, y), rtol=1e-10, atol=1e-12)
    r = HessianMax(method="lanczos", tol=1e-10).estimate(model, [(x, y)], loss)
    assert r.extra["ad_mode"] == "reverse-over-reverse" and "ad_fallback_reason" in r.extra
    assert r.value == pytest.approx(float(torch.linalg.eigvalsh(ref)[-1]), rel=1e-8)


# ---- top eigenvalue ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["power", "lanczos"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hessian_max_matches_exact_top_eigenvalue(method, dtype):
    model, (x, y), loss = make_mlp(dtype), make_batch(dtype=dtype), make_loss("weighted-ce")
    lam = float(torch.linalg.eigvalsh(exact_hessian(model, loss, x, y).double())[-1])
    r = HessianMax(method=method, iterations=300, tol=1e-7).estimate(model, [(x, y)], loss)
    assert r.extra["converged"]
    assert r.value == pytest.approx(lam, rel=1e-4 if dtype == torch.float64 else 1e-2)
    assert r.cost["hvp"] == r.extra["iterations"] and r.cost["forward"] == 1
    assert r.measure == "hessian-max" and r.settings["loss"] == "weighted-ce"


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_hessian_max_on_quadratic_is_the_largest_algebraic_eigenvalue(method):
    # the dominant eigenvalue is negative: power iteration must take the shifted second run
    eig = [-5.0, -1.0, 0.0, 0.2, 0.5, 1.0, 1.2, 1.5, 1.8, 2.0, 2.0, 3.0]
    model = Quadratic(eig)
    r = HessianMax(method=method, iterations=2000, tol=1e-12).estimate(
        model, [(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))], FirstLogitMean()
    )
    assert r.value == pytest.approx(3.0, rel=1e-6)
    if method == "power":
        assert r.extra["shifted"]
    else:
        assert r.extra["min_ritz"] == pytest.approx(-5.0, rel=1e-8)
        assert r.extra["iterations"] <= len(eig)


def test_batchmean_is_the_size_weighted_mean_and_nonfinite_batches_dropped_on_request():
    model, loss = make_mlp(), make_loss("weighted-ce")
    b1, b2 = make_batch(8, seed=1), make_batch(3, seed=2)
    bad = (torch.full((5, 3), float("nan"), dtype=torch.float64), torch.ones(5, dtype=torch.long))
    with pytest.raises(SharpscopeError, match="batch 1 .*non-finite.*--nonfinite drop"):
        HessianMaxBatchMean(method="lanczos", tol=1e-10).estimate(model, [b1, bad, b2], loss)
    est = HessianMaxBatchMean(method="lanczos", tol=1e-10, nonfinite="drop")
    r = est.estimate(model, [b1, bad, b2], loss)
    lam = [float(torch.linalg.eigvalsh(exact_hessian(model, loss, *b))[-1]) for b in (b1, b2)]
    assert r.measure == "hessian-max-batchmean"
    assert r.n_nonfinite == 1 and r.n_batches == 3 and r.extra["n_utts_finite"] == 11
    assert r.per_batch[1]["finite"] is False and math.isnan(r.per_batch[1]["value"])
    assert r.value == pytest.approx((8 * lam[0] + 3 * lam[1]) / 11, rel=1e-8)
    assert r.cost["forward"] == 3


# ---- trace ------------------------------------------------------------------------------------------------


def test_hutchpp_with_queries_covering_dim_is_exact():
    model, (x, y), loss = make_mlp(), make_batch(), make_loss("weighted-ce")
    h = exact_hessian(model, loss, x, y)
    r = HessianTrace(method="hutch++", n_queries=3 * h.shape[0], block_size=16).estimate(
        model, [(x, y)], loss
    )
    assert r.cost["hvp"] == 3 * h.shape[0]
    assert r.value == pytest.approx(float(h.trace()), rel=1e-9)
    assert r.extra["dim"] == h.shape[0]


def test_hutchinson_error_within_its_theoretical_spread():
    """Var(zᵀHz) = 2 Σ_{i≠j} H_ij² for Rademacher z: the estimate must lie within 4 sd of the exact trace,
    and the reported per-batch standard error must match the theoretical one."""
    model, (x, y), loss = make_mlp(), make_batch(), make_loss("weighted-ce")
    h = exact_hessian(model, loss, x, y)
    m = 120
    sd = math.sqrt(2 * float((h**2).sum() - (h.diag() ** 2).sum()) / m)
    r = HessianTrace(method="hutchinson", n_queries=m, seed=7, block_size=64).estimate(model, [(x, y)], loss)
    assert abs(r.value - float(h.trace())) <= 4 * sd
    assert r.per_batch[0]["query_stderr"] == pytest.approx(sd, rel=0.3)
    assert r.cost["hvp"] == m


def test_trace_on_quadratic_exact():
    eig = [-2.0, 0.5, 1.0, 3.0, 4.0, 7.0]
    model = Quadratic(eig)
    r = HessianTrace(method="hutch++", n_queries=18).estimate(
        model, [(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))], FirstLogitMean()
    )
    assert r.value == pytest.approx(sum(eig), rel=1e-12)
    # Hutchinson is exact with a single query when the Hessian is diagonal
    with torch.no_grad():
        model.A.copy_(torch.diag(torch.tensor(eig, dtype=torch.float64)))
    r = HessianTrace(method="hutchinson", n_queries=1).estimate(
        model, [(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))], FirstLogitMean()
    )
    assert r.value == pytest.approx(sum(eig), rel=1e-12)


# ---- determinism, restoration, settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    "est_cls, settings",
    [
        (HessianMax, {"method": "power", "iterations": 5}),
        (HessianMax, {"method": "lanczos", "iterations": 5}),
        (HessianTrace, {"method": "hutchinson", "n_queries": 4}),
        (HessianTrace, {"method": "hutch++", "n_queries": 6}),
    ],
)
def test_seeded_determinism(est_cls, settings):
    model, loss = make_mlp(torch.float32), make_loss("weighted-ce")
    batches = [make_batch(6, torch.float32, seed=s) for s in (1, 2)]
    a = est_cls(seed=3, **settings).estimate(model, batches, loss)
    b = est_cls(seed=3, **settings).estimate(model, batches, loss)
    c = est_cls(seed=4, **settings).estimate(model, batches, loss)
    assert [r.get("value") for r in a.per_batch] == [r.get("value") for r in b.per_batch]
    assert a.value == b.value and a.ci95 == b.ci95 or (math.isnan(a.ci95[0]) and math.isnan(b.ci95[0]))
    assert a.value != c.value


def test_batch_objects_labels_and_settings_validation():
    model, (x, y) = make_mlp(), make_batch()
    batch = Batch(wave=x, labels=y, utt_ids=[f"u{i}" for i in range(len(x))])
    r1 = HessianMax(HessianMaxSettings(method="lanczos", tol=1e-9)).estimate(model, [batch], make_loss("ce"))
    r2 = HessianMax(method="lanczos", tol=1e-9).estimate(model, [(x, y)], make_loss("ce"))
    assert r1.value == r2.value and r1.n_utts == len(x)
    unlabelled = Batch(wave=x, labels=torch.full((len(x),), -1), utt_ids=batch.utt_ids)
    with pytest.raises(SharpscopeError, match="kl-to-clean"):
        HessianTrace(n_queries=2).estimate(model, [unlabelled], make_loss("weighted-ce"))
    with pytest.raises(SpecError):
        HessianMax(method="arnoldi")
    with pytest.raises(SpecError):
        HessianTraceSettings(method="hutch++", n_queries=2)
    with pytest.raises(SpecError):
        HessianMax(ad_mode="sideways")
    with pytest.raises(SharpscopeError):
        HessianMax(scope="regex:^nothing$").estimate(model, [batch], make_loss("ce"))
    assert np.isnan(HessianTrace().estimate(model, [], make_loss("ce")).value)
