"""The one estimator contract (issue 11), checked on every registered measure.

Every measure in :data:`sharpscope.sharpness.registry.MEASURES` must: take its settings dataclass and/or
keyword overrides in its constructor, validated there; leave the model bit-for-bit as it found it (parameters,
buffers, ``requires_grad`` flags, ``.grad``, train/eval mode), also when the loss raises midway; count
``n_utts``/``n_batches`` as every batch processed; stop at ``budget``; apply the non-finite policy; record
its settings; be deterministic under a seed.  References are hand counts and saved copies of the model.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from sharpscope.errors import SharpscopeError
from sharpscope.losses import Loss, make_loss
from sharpscope.sharpness.base import Estimator
from sharpscope.sharpness.registry import MEASURES, estimator_class, make_estimator

# small settings per measure (every registered measure must have an entry: see the first test)
SMALL: dict[str, list[dict]] = {
    "m-sharpness": [{"rho": 0.5}, {"rho": 0.5, "adaptive": True, "per_layer": 1}],
    "worst-case": [
        {"rho": 0.5, "steps": 3, "restarts": 2},
        {"rho": 0.05, "norm": "linf", "steps": 3, "init": "random"},
    ],
    "average-case": [
        {"rho": 0.5, "samples": 3, "vectorize": "on"},
        {"rho": 0.5, "samples": 3, "vectorize": "off", "per_layer": 1},
    ],
    "hessian-max": [{"iterations": 5}],
    "hessian-max-batchmean": [{"iterations": 5, "method": "lanczos"}],
    "hessian-trace": [{"n_queries": 3}],
    "landscape": [{"alphas": [-0.5, 0.0, 0.5], "n_directions": 1}],
}
CASES = [(name, st) for name in SMALL for st in SMALL[name]]
IDS = [f"{name}-{i}" for name in SMALL for i in range(len(SMALL[name]))]
FIRST = [(name, SMALL[name][0]) for name in SMALL]  # one case per measure for the driver's rules


class CountingNet(nn.Module):
    """Conv + BatchNorm + Linear, plus a buffer the forward itself increments (restoration must undo it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 5)
        self.bn = nn.BatchNorm1d(2)
        self.head = nn.Linear(2 * 12, 2)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.head(torch.tanh(self.bn(self.conv(x))).flatten(1))


def counting_net() -> CountingNet:
    torch.manual_seed(0)
    net = CountingNet().double()
    net.train()  # an estimator left in train mode would change the running statistics
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    return net


def state_bytes(model: nn.Module) -> dict[str, bytes]:
    out = {f"p:{n}": p.detach().numpy().tobytes() for n, p in model.named_parameters()}
    out.update({f"b:{n}": b.detach().numpy().tobytes() for n, b in model.named_buffers()})
    return out


def batches(n: int = 3, size: int = 4, nan_at: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        x = torch.randn(size, 1, 16, generator=g, dtype=torch.float64)
        if i == nan_at:
            x[0] = math.nan
        out.append((x, torch.tensor([k % 2 for k in range(size)])))
    return out


class RaisesOnCall(Loss):
    """Cross-entropy that raises on its ``n``-th call."""

    name = "raising"

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, logits, labels, clean_logits=None):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(logits, labels)


def test_every_registered_measure_is_covered():
    assert set(SMALL) == set(MEASURES)


@pytest.mark.parametrize("name", list(MEASURES))
def test_one_constructor_form_and_validation(name):
    cls = estimator_class(name)
    st = cls.Settings
    a, b, c = cls(), cls(st()), cls(st(), seed=3)
    assert isinstance(a, Estimator) and a.name == name
    assert b.settings.seed == 0 and c.settings.seed == 3
    assert make_estimator(name, seed=3).settings == c.settings
    given = st()
    assert cls(given).settings is given  # no overrides: the object itself
    with pytest.raises(SharpscopeError, match="valid:"):
        cls(no_such_setting=1)
    with pytest.raises(SharpscopeError, match=st.__name__):
        cls(object())  # type: ignore[arg-type]
    for bad in ({"nonfinite": "ignore"}, {"budget": 0}, {"seed": "x"}, {"budget": 4, "ci_width": 0.1}):
        with pytest.raises(SharpscopeError):
            cls(**bad)
        with pytest.raises(SharpscopeError):
            st(**bad)  # the same validate() runs when the settings object is built


@pytest.mark.parametrize("name,settings", CASES, ids=IDS)
def test_model_restored_counts_and_settings_recorded(name, settings):
    net = counting_net()
    net.conv.weight.requires_grad_(False)
    net.head.weight.grad = torch.full_like(net.head.weight, 7.0)
    before = state_bytes(net)
    est = make_estimator(name, **settings)
    r = est.estimate(net, batches(), make_loss("weighted-ce"))
    assert state_bytes(net) == before
    assert net.training is True and net.bn.training is True
    assert net.conv.weight.requires_grad is False and net.head.bias.requires_grad is True
    assert torch.equal(net.head.weight.grad, torch.full_like(net.head.weight, 7.0))
    assert net.conv.bias.grad is None
    assert math.isfinite(r.value) and r.measure == name
    assert (r.n_utts, r.n_batches, r.n_nonfinite) == (12, 3, 0)
    assert r.extra["n_utts_finite"] == 12 and r.extra["stop_reason"] == "data exhausted"
    assert [row["size"] for row in r.per_batch] == [4, 4, 4]
    for f in dataclasses.fields(est.settings):
        assert r.settings[f.name] == getattr(est.settings, f.name)
    assert r.settings["loss"] == "weighted-ce"
    again = make_estimator(name, **settings).estimate(counting_net(), batches(), make_loss("weighted-ce"))
    assert again.value == r.value  # seeded: deterministic


@pytest.mark.parametrize("name,settings", FIRST, ids=list(SMALL))
def test_restored_after_an_exception_midway(name, settings):
    net = counting_net()
    before = state_bytes(net)
    # (curvature in ad_mode auto re-raises the forward-over-reverse error when its fallback raises too)
    with pytest.raises(RuntimeError):
        make_estimator(name, **settings).estimate(net, batches(), RaisesOnCall(2))
    assert state_bytes(net) == before
    assert net.training is True and all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("name,settings", FIRST, ids=list(SMALL))
def test_budget_stops_after_whole_batches(name, settings):
    r = make_estimator(name, budget=5, **settings).estimate(counting_net(), batches(), make_loss("ce"))
    assert (r.n_utts, r.n_batches) == (8, 2) and "budget" in r.extra["stop_reason"]


@pytest.mark.parametrize("name,settings", FIRST, ids=list(SMALL))
def test_nonfinite_policy(name, settings):
    bad = batches(nan_at=1)
    with pytest.raises(SharpscopeError, match="batch 1"):
        make_estimator(name, nonfinite="error", **settings).estimate(counting_net(), bad, make_loss("ce"))
    r = make_estimator(name, nonfinite="drop", **settings).estimate(counting_net(), bad, make_loss("ce"))
    assert (r.n_utts, r.n_batches, r.n_nonfinite) == (12, 3, 1)
    assert r.extra["n_utts_finite"] == 8 and math.isfinite(r.value)
    assert r.per_batch[1]["finite"] is False


@pytest.mark.parametrize("name", list(MEASURES))
def test_no_batches_gives_nan_and_zero_counts(name):
    r = make_estimator(name, **SMALL[name][0]).estimate(counting_net(), [], make_loss("ce"))
    assert math.isnan(r.value) and (r.n_utts, r.n_batches) == (0, 0)
