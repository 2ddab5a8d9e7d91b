"""The fast AASIST forward (sharpscope.models.fast) against the reference-faithful path and torch's own ops.

References are independent of the code under test: the official logits of reference_logits.json, the
reference-faithful forward (``fast=False``, itself checked against the official logits in test_aasist.py),
``F.max_pool2d`` / ``F.batch_norm`` for the rewritten pieces, and ``torch.autograd`` gradients of the
reference path.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from sharpscope.models.aasist import build_aasist
from sharpscope.models.checkpoints import load_checkpoint
from sharpscope.models.fast import _pool_time, fold_bn
from sharpscope.models.registry import build_model
from sharpscope.sharpness import make_estimator

from .test_aasist import FIXTURES, TINY, reference_input

WEIGHTS = [("AASIST.pth", "aasist"), ("AASIST-L.pth", "aasist-l")]


def _pair(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    fast, ref = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    fast.fast, ref.fast = True, False
    return fast, ref


def _tiny(seed: int = 0) -> torch.nn.Module:
    """Tiny AASIST with non-trivial BN running statistics, so that folding is actually exercised."""
    torch.manual_seed(seed)
    model = build_aasist("aasist", **TINY)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _official(name: str, arch: str) -> torch.nn.Module:
    if not (FIXTURES / name).is_file():
        pytest.skip(f"official AASIST fixtures not found at {FIXTURES}")
    return load_checkpoint(FIXTURES / name, arch).model


def _grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype=torch.float32) -> dict:
    model = copy.deepcopy(model).to(dtype)
    loss = F.cross_entropy(model(x.to(dtype)), y, weight=torch.tensor([0.1, 0.9], dtype=dtype))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: None if g is None else g.double() for (n, _), g in zip(named, gs, strict=True)}


def _assert_grads_match(
    fast: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> None:
    """The whole gradient (the vector the sharpness estimators normalise) within 1e-5 relative of the
    reference path's; and every tensor as close to the float64 gradient as the reference path's own float32
    gradient is (within 1e-4 of the tensor's scale, or 4x the reference's own error where that is larger:
    the attention-weight gradients of GAT-T are ill-conditioned and the reference itself is off by ~1e-4)."""
    g_fast, g_ref, g64 = _grads(fast, x, y), _grads(ref, x, y), _grads(ref, x, y, torch.float64)
    assert {n for n, g in g_fast.items() if g is None} == {n for n, g in g_ref.items() if g is None}
    names = [n for n, g in g64.items() if g is not None]  # bn1 of blocks 2-6 is dead in both paths
    diff = sum(float(((g_fast[n] - g_ref[n]) ** 2).sum()) for n in names) ** 0.5
    norm = sum(float((g_ref[n] ** 2).sum()) for n in names) ** 0.5
    assert diff <= 1e-5 * norm, diff / norm
    overall = max(float(g64[n].abs().max()) for n in names)
    for n in names:
        scale = max(float(g64[n].abs().max()), 1e-6 * overall)
        err_fast = float((g_fast[n] - g64[n]).abs().max()) / scale
        err_ref = float((g_ref[n] - g64[n]).abs().max()) / scale
        assert err_fast <= max(1e-4, 4 * err_ref), (n, err_fast, err_ref)


@pytest.mark.parametrize(("name", "arch"), WEIGHTS)
def test_fast_is_default_and_reproduces_official_logits(name, arch):
    # The reference-faithful path is checked against the same logits in test_aasist.py.
    model = _official(name, arch)
    assert model.fast  # the default once it matches
    expected = torch.tensor(json.loads((FIXTURES / "reference_logits.json").read_text())["logits"][name])
    with torch.no_grad():
        hidden, logits = model.forward_with_hidden(reference_input())
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(model.out_layer(hidden), logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("name", "arch"), WEIGHTS)
def test_fast_logits_and_gradients_match_reference_on_official_weights(name, arch):
    fast, ref = _pair(_official(name, arch))
    torch.manual_seed(1)
    x = 0.1 * torch.randn(3, 4_000)
    x[1, 1_000:3_000] = 0.0  # digital silence: exact ties in every max-pool
    y = torch.tensor([0, 1, 1])
    with torch.no_grad():  # no-grad branch: pooling without indices, in-place element-wise ops
        z_ref = ref(x)
        torch.testing.assert_close(fast(x), z_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast(x).detach(), z_ref, atol=1e-5, rtol=0)  # autograd branch
    _assert_grads_match(fast, ref, x, y)


def test_functional_call_and_vmap_perturbations_match_reference():
    # The sharpness engine evaluates w + delta through functional_call, chunks of deltas through vmap.
    fast, ref = _pair(_tiny())
    x = 0.1 * torch.randn(2, 3_000, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(3)
    params = {n: p.detach() for n, p in ref.named_parameters()}
    deltas = {n: 0.05 * torch.randn((3, *p.shape), generator=gen) for n, p in params.items()}

    def logits(model, d):
        return torch.func.functional_call(model, {n: params[n] + d[n] for n in d}, (x,))

    with torch.no_grad():
        for k in range(3):
            one = {n: d[k] for n, d in deltas.items()}
            torch.testing.assert_close(logits(fast, one), logits(ref, one), atol=1e-5, rtol=1e-5)
        z_fast = torch.func.vmap(lambda d: logits(fast, d))(deltas)
        z_ref = torch.func.vmap(lambda d: logits(ref, d))(deltas)
    torch.testing.assert_close(z_fast, z_ref, atol=1e-5, rtol=1e-5)

    # gradient w.r.t. the perturbation (what worst-case ascent uses)
    one = {n: d[0].clone().requires_grad_(True) for n, d in deltas.items()}
    g_fast = torch.autograd.grad(logits(fast, one)[:, 1].sum(), list(one.values()), allow_unused=True)
    g_ref = torch.autograd.grad(logits(ref, one)[:, 1].sum(), list(one.values()), allow_unused=True)
    for n, a, b in zip(one, g_fast, g_ref, strict=True):
        assert (a is None) == (b is None), n
        if a is not None:
            assert (a - b).abs().max() <= 1e-4 * b.abs().max().clamp_min(1e-12), n


def test_forward_over_reverse_hvp_matches_reference():
    fast, ref = _pair(_tiny(4))
    x = 0.1 * torch.randn(2, 3_000, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1])
    params = {n: p.detach() for n, p in ref.named_parameters()}
    v = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(6)) for n, p in params.items()}

    def hvp(model):
        def loss(p):
            return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

        return torch.func.jvp(torch.func.grad(loss), (params,), (v,))[1]

    h_fast, h_ref = hvp(fast), hvp(ref)
    for n in params:
        scale = h_ref[n].abs().max().clamp_min(1e-6)
        assert (h_fast[n] - h_ref[n]).abs().max() <= 1e-4 * scale, n


def test_m_sharpness_matches_reference_path():
    fast, ref = _pair(_tiny(7))
    gen = torch.Generator().manual_seed(8)
    batches = [(0.1 * torch.randn(4, 3_000, generator=gen), torch.tensor([0, 1, 0, 1])) for _ in range(2)]
    est = make_estimator("m-sharpness", rho=0.05)
    v_fast = est.estimate(fast, batches, "weighted-ce").value
    v_ref = est.estimate(ref, batches, "weighted-ce").value
    assert v_ref != 0.0
    assert abs(v_fast - v_ref) <= 1e-4 * abs(v_ref)


def test_training_mode_runs_the_reference_path():
    fast = build_aasist("aasist", **TINY).train()
    ref = copy.deepcopy(fast)
    ref.fast = False
    x = 0.1 * torch.randn(3, 3_000, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(10)
    z_fast = fast(x)
    torch.manual_seed(10)
    z_ref = ref(x)
    assert torch.equal(z_fast, z_ref)  # same dropout draws, same batch statistics: bit-identical
    assert torch.equal(fast.first_bn.running_mean, ref.first_bn.running_mean)
    assert not torch.equal(fast.first_bn.running_mean, torch.zeros(1))  # statistics were updated


def test_pool_without_indices_equals_max_pool2d_including_nan():
    x = torch.randn(2, 3, 4, 20)
    x[0, 1, 2, 5] = float("nan")
    with torch.no_grad():
        got = _pool_time(x)
    want = F.max_pool2d(x, kernel_size=(1, 3))
    assert got.shape == want.shape == (2, 3, 4, 6)
    torch.testing.assert_close(got, want, equal_nan=True, atol=0, rtol=0)
    assert torch.isnan(got[0, 1, 2, 1])


def test_bn_folding_equals_conv_then_batch_norm():
    torch.manual_seed(11)
    conv = torch.nn.Conv2d(3, 5, kernel_size=(2, 3), padding=(1, 1))
    bn = torch.nn.BatchNorm2d(5).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.2, 3)
    bn.weight.data.uniform_(-2, 2)
    bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 4, 9)
    w, b = fold_bn(conv, bn)
    want = F.batch_norm(conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    torch.testing.assert_close(F.conv2d(x, w, b, padding=(1, 1)), want, atol=1e-5, rtol=1e-5)


def test_registry_builds_fast_by_default_and_reference_on_request():
    assert build_model("aasist-l", **TINY).fast
    assert not build_model("aasist-l", fast=False, **TINY).fast
    assert "fast" not in build_model("aasist", **TINY).model_cfg  # not a network setting


def test_gradient_with_respect_to_the_waveform_matches_reference():
    fast, ref = _pair(_tiny(12))
    x = 0.1 * torch.randn(2, 3_000, generator=torch.Generator().manual_seed(13))
    grads = []
    for model in (fast, ref):
        xi = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(model(xi)[:, 1].sum(), xi)[0])
    assert grads[1].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4 * float(grads[1].abs().max()), rtol=0)
