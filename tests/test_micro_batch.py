"""Micro-batching (issue 13): a batch of m utterances evaluated k at a time gives the whole batch's values.

Reference: the whole-batch computation (one forward/backward over all m utterances, plain autograd of the
class-weighted cross-entropy of PyTorch), against which the accumulated gradient and every loss-based measure
are compared.  The batches mix the classes unevenly across micro-batches, so a mean of micro-batch means (the
wrong normalisation) is visibly different -- checked too, so the tests can fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope.errors import SharpscopeError
from sharpscope.losses import REFERENCE_CLASS_WEIGHTS, make_loss
from sharpscope.sharpness.base import Cost
from sharpscope.sharpness.engine import BatchProblem, FunctionalForward
from sharpscope.sharpness.registry import make_estimator

M = 24


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 4, 5, stride=2), nn.BatchNorm1d(4), nn.ELU(), nn.AdaptiveMaxPool1d(3), nn.Flatten(),
        nn.Linear(12, 2),
    ).double()  # fmt: skip


def batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for b in range(n):
        x = torch.randn(M, 1, 40, generator=g, dtype=torch.float64)
        y = torch.zeros(M, dtype=torch.long)
        y[: 3 + 4 * b] = 1  # bona fide only in the first micro-batches: uneven class mix per micro-batch
        out.append((x, y))
    return out


def test_accumulated_gradient_is_the_whole_batch_gradient():
    model = tiny_model().eval()
    params = dict(model.named_parameters())
    x, y = batches(1)[0]
    w = torch.tensor(REFERENCE_CLASS_WEIGHTS, dtype=torch.float64)
    ref = torch.autograd.grad(F.cross_entropy(model(x), y, weight=w), list(params.values()))
    loss = make_loss("weighted-ce")
    for k in (5, 6, 24):
        fwd = FunctionalForward(model, params)
        pb = BatchProblem(fwd, x, y, [loss], [Cost()], Cost(), need_grad=True, micro_batch=k)
        assert len(fwd.chunks) == -(-M // k)
        for (n, _), r in zip(params.items(), ref, strict=True):
            torch.testing.assert_close(pb.grads[0][n], r, rtol=1e-10, atol=1e-13)
    # the wrong normalisation (mean of micro-batch means) differs, so the check above can fail
    naive = [torch.zeros_like(p) for p in params.values()]
    for lo in range(0, M, 6):
        part = F.cross_entropy(model(x[lo : lo + 6]), y[lo : lo + 6], weight=w)
        g = torch.autograd.grad(part, list(params.values()))
        naive = [a + b / 4 for a, b in zip(naive, g, strict=True)]
    assert max(float((a - b).abs().max()) for a, b in zip(naive, ref, strict=True)) > 1e-3


@pytest.mark.parametrize(
    "name,settings",
    [
        ("m-sharpness", {"rho": 0.05}),
        ("m-sharpness", {"rho": 0.5, "adaptive": True}),
        ("worst-case", {"steps": 2}),
        ("average-case", {"samples": 3}),
    ],
)
def test_measures_with_micro_batches_equal_whole_batch(name, settings):
    losses = ["weighted-ce", "kl-to-clean"]
    whole = make_estimator(name, **settings).estimate_many(tiny_model(), batches(), losses)
    for k in (M // 4, 5):
        micro = make_estimator(name, micro_batch=k, **settings).estimate_many(tiny_model(), batches(), losses)
        for lo, r in whole.items():
            assert r.value != 0
            assert micro[lo].value == pytest.approx(r.value, rel=1e-6)
            for a, b in zip(micro[lo].per_batch, r.per_batch, strict=True):
                assert a["value"] == pytest.approx(b["value"], rel=1e-6, abs=1e-12)
            assert micro[lo].settings["micro_batch"] == k and r.settings["micro_batch"] is None
            assert micro[lo].cost == r.cost  # work counted per batch, whatever the micro-batch


def test_micro_batch_setting_is_checked():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(SharpscopeError, match="micro_batch"):
            make_estimator("m-sharpness", micro_batch=bad)
    with pytest.raises(SharpscopeError, match="micro_batch"):
        make_estimator("hessian-trace", micro_batch=4)  # not a setting of the curvature measures
