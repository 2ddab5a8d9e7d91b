"""SAM / ASAM wrappers: closed-form first step on a quadratic, ρ = 0 equals the base optimizer bit for bit,
batch-norm statistics come from the first pass only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope.train.sam import SAM, frozen_bn_stats, sam_perturbation


class Quadratic(nn.Module):
    """L(w) = ½ wᵀAw − bᵀw on a two-block parameter vector (float64)."""

    def __init__(self, w0: np.ndarray) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor(w0[:2], dtype=torch.float64))
        self.w2 = nn.Parameter(torch.tensor(w0[2:], dtype=torch.float64))

    def w(self) -> torch.Tensor:
        return torch.cat([self.w1, self.w2])


A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, -0.3], [0.0, -0.3, 1.0]])
B = np.array([1.0, -2.0, 0.5])
W0 = np.array([0.7, -1.3, 2.1])


def _quadratic_step(adaptive: bool, eta: float, rho: float = 0.1, lr: float = 0.05) -> np.ndarray:
    model = Quadratic(W0)
    a, b = torch.tensor(A), torch.tensor(B)
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=lr), rho=rho, adaptive=adaptive, eta=eta)

    def closure():
        w = model.w()
        return 0.5 * w @ a @ w - b @ w

    loss = opt.step(closure)
    assert float(loss) == pytest.approx(0.5 * W0 @ A @ W0 - B @ W0, abs=1e-12)
    return model.w().detach().numpy()


@pytest.mark.parametrize("rho", [0.1, 0.5])
def test_sam_first_step_matches_closed_form(rho):
    g = A @ W0 - B
    eps = rho * g / (np.linalg.norm(g) + 1e-12)
    expected = W0 - 0.05 * (A @ (W0 + eps) - B)
    np.testing.assert_allclose(_quadratic_step(False, 0.0, rho), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("eta", [0.0, 0.01, 0.5])
def test_asam_first_step_matches_closed_form(eta):
    g = A @ W0 - B
    t = np.abs(W0) + eta
    eps = 0.1 * t * t * g / (np.linalg.norm(t * g) + 1e-12)
    expected = W0 - 0.05 * (A @ (W0 + eps) - B)
    np.testing.assert_allclose(_quadratic_step(True, eta), expected, rtol=0, atol=1e-14)
    # and it differs from plain SAM: the test can fail
    assert not np.allclose(_quadratic_step(False, 0.0), expected, atol=1e-6)


def test_perturbation_norm_is_rho():
    p = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    g = [torch.randn_like(x) for x in p]
    eps = sam_perturbation(p, g, rho=0.3)
    assert float(torch.sqrt(sum((e**2).sum() for e in eps))) == pytest.approx(0.3, rel=1e-12)
    # ASAM: ‖T⁻¹ε‖ = ρ
    eps = sam_perturbation(p, g, rho=0.3, adaptive=True, eta=0.01)
    inv = [e / (x.abs() + 0.01) for e, x in zip(eps, p, strict=True)]
    assert float(torch.sqrt(sum((e**2).sum() for e in inv))) == pytest.approx(0.3, rel=1e-12)


class SmallNet(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 5, stride=2)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4, 2)
        self.unused = nn.Linear(3, 3)  # never receives a gradient

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x.unsqueeze(1)))).mean(-1)
        return self.fc(self.drop(h))


def _run(make_opt, steps: int = 5, dropout: float = 0.0):
    torch.manual_seed(0)
    model = SmallNet(dropout)
    opt = make_opt(model)
    gen = torch.Generator().manual_seed(1)
    w = torch.tensor([0.1, 0.9])
    for _ in range(steps):
        x = torch.randn(8, 40, generator=gen)
        y = torch.randint(0, 2, (8,), generator=gen)

        def closure(x=x, y=y):
            return nn.functional.cross_entropy(model(x), y, weight=w)

        if isinstance(opt, SAM):
            opt.step(closure)
        else:
            opt.zero_grad()
            closure().backward()
            opt.step()
    return model, torch.get_rng_state()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("adaptive", [False, True])
def test_rho_zero_is_bit_identical_to_base_optimizer(dropout, adaptive):
    base, rng_base = _run(
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-4), dropout=dropout
    )
    sam, rng_sam = _run(
        lambda m: SAM(
            m, torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-4), rho=0.0, adaptive=adaptive
        ),
        dropout=dropout,
    )
    for (n, a), (_, b) in zip(base.state_dict().items(), sam.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert torch.equal(rng_base, rng_sam)


def test_rho_positive_moves_differently_but_bn_stats_come_from_first_pass():
    base, _ = _run(lambda m: torch.optim.SGD(m.parameters(), lr=0.1), steps=1)
    sam, _ = _run(lambda m: SAM(m, torch.optim.SGD(m.parameters(), lr=0.1), rho=0.5), steps=1)
    assert not torch.equal(base.fc.weight, sam.fc.weight)
    # one step: running stats depend only on the weights at w (identical start), so they must agree exactly
    assert torch.equal(base.bn.running_mean, sam.bn.running_mean)
    assert torch.equal(base.bn.running_var, sam.bn.running_var)
    assert int(sam.bn.num_batches_tracked) == 1
    # a parameter without gradient is neither perturbed nor moved
    torch.manual_seed(0)
    fresh = SmallNet()
    assert torch.equal(fresh.unused.weight, sam.unused.weight)


def test_frozen_bn_stats_restores_buffers():
    bn = nn.BatchNorm1d(3)
    before = [b.clone() for b in bn.buffers()]
    with frozen_bn_stats(bn):
        bn.train()
        bn(torch.randn(6, 3))
        assert not torch.equal(bn.running_mean, before[0])
    for a, b in zip(bn.buffers(), before, strict=True):
        assert torch.equal(a, b)
