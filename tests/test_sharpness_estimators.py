"""Closed-form checks of the loss-based sharpness estimators on a quadratic loss L(w) = ½ wᵀAw.

The toy model's first "logit" of every utterance is ``c_i · ½ wᵀAw`` (``c_i`` = the utterance's input), and
the toy loss is the batch mean of that logit, so ``L_B(w) = mean(c) · ½ wᵀAw`` exactly; everything runs in
float64 so the references can be tight.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope.losses import Loss, make_loss
from sharpscope.sharpness.average_case import AverageCase, gaussian_perturbations
from sharpscope.sharpness.engine import adaptive_scale, derive_seed
from sharpscope.sharpness.m_sharpness import MSharpness
from sharpscope.sharpness.worst_case import WorstCase, apgd_checkpoints

A_DIAG = [3.0, 1.0, 0.5, 0.2]


def spd_matrix(seed: int = 0) -> np.ndarray:
    """A fixed SPD matrix with eigenvalues A_DIAG in a random basis."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    return q @ np.diag(A_DIAG) @ q.T


class Quadratic(nn.Module):
    """``logits[i] = [c_i · ½ wᵀAw, 0]`` with ``w = concat(a, b)`` split over two parameters."""

    def __init__(self, A: np.ndarray, w: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("A", torch.tensor(A, dtype=torch.float64))
        self.a = nn.Parameter(torch.tensor(w[:2], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(w[2:], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.cat([self.a, self.b])
        q = 0.5 * w @ self.A @ w
        c = x[:, 0]
        return torch.stack([c * q, torch.zeros_like(c)], dim=1)


class QuadLoss(Loss):
    """Mean of the first logit (ignores labels)."""

    name = "quad"
    needs_labels = False

    def __call__(self, logits, labels, clean_logits=None):
        return logits[:, 0].mean()


def quad_batches(factors: list[list[float]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (torch.tensor(c, dtype=torch.float64)[:, None], torch.zeros(len(c), dtype=torch.long))
        for c in factors
    ]


def q(A: np.ndarray, w: np.ndarray) -> float:
    return 0.5 * float(w @ A @ w)


W0 = np.array([1.0, -0.5, 0.3, 2.0])


# ---- m-sharpness ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.05, 0.3])
def test_one_step_matches_hand_computation(rho):
    A = spd_matrix()
    factors = [[1.0, 2.0, 3.0], [0.5, 0.5]]
    res = MSharpness(rho=rho).estimate(Quadratic(A, W0), quad_batches(factors), QuadLoss())
    # per batch: g = mean(c)·A w; ε = ρ g/‖g‖ is the same direction for every batch
    g = A @ W0
    eps = rho * g / (np.linalg.norm(g) + 1e-12)
    per = [np.mean(c) * (q(A, W0 + eps) - q(A, W0)) for c in factors]
    # closed form of the same quantity: ρ‖g‖ + ½ρ² gᵀAg/‖g‖²
    closed = rho * np.linalg.norm(g) + 0.5 * rho**2 * g @ A @ g / (g @ g)
    assert per[0] / np.mean(factors[0]) == pytest.approx(closed, rel=1e-12)
    expected = (per[0] * 3 + per[1] * 2) / 5
    assert res.value == pytest.approx(expected, rel=1e-12)
    assert [r["value"] for r in res.per_batch] == pytest.approx(per, rel=1e-12)
    assert res.n_utts == 5 and res.n_batches == 2 and res.n_nonfinite == 0
    assert res.cost == {"forward": 4, "backward": 2, "hvp": 0}


def test_adaptive_one_step_matches_hand_computation():
    A = spd_matrix()
    rho = 0.1
    res = MSharpness(rho=rho, adaptive=True).estimate(
        Quadratic(A, W0), quad_batches([[1.0, 1.0]]), QuadLoss()
    )
    g = A @ W0
    eps = rho * W0 * W0 * g / (np.linalg.norm(np.abs(W0) * g) + 1e-12)
    assert res.value == pytest.approx(q(A, W0 + eps) - q(A, W0), rel=1e-12)


def test_per_layer_perturbs_each_group_alone():
    A = spd_matrix()
    rho = 0.2
    res = MSharpness(rho=rho, per_layer=1).estimate(Quadratic(A, W0), quad_batches([[1.0]]), QuadLoss())
    g = A @ W0
    for name, sl in (("a", slice(0, 2)), ("b", slice(2, 4))):
        eps = np.zeros(4)
        eps[sl] = rho * g[sl] / (np.linalg.norm(g[sl]) + 1e-12)
        assert res.per_layer[name] == pytest.approx(q(A, W0 + eps) - q(A, W0), rel=1e-12)
    assert set(res.per_layer) == {"a", "b"}


def test_kl_to_clean_one_step_is_label_free_and_positive():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(8, 3)
    unlabelled = torch.full((8,), -1, dtype=torch.long)
    res = MSharpness(rho=0.5).estimate(model, [(x, unlabelled)], make_loss("kl-to-clean"))
    assert res.value > 0 and math.isfinite(res.value)
    # the step follows the pseudo-label cross-entropy gradient: check against a hand-made step
    ref = [p.detach().clone() for p in model.parameters()]
    logits = model(x)
    ce = nn.functional.cross_entropy(logits, logits.detach().argmax(-1))
    grads = torch.autograd.grad(ce, list(model.parameters()))
    norm = torch.norm(torch.stack([gi.norm() for gi in grads]))
    with torch.no_grad():
        for p, gi in zip(model.parameters(), grads, strict=True):
            p.add_(0.5 * gi / (norm + 1e-12))
        kl = make_loss("kl-to-clean")(model(x), unlabelled, logits.detach())
        for p, r in zip(model.parameters(), ref, strict=True):
            p.copy_(r)
    assert res.value == pytest.approx(float(kl), rel=1e-5)


def test_unlabelled_batch_with_labelled_loss_is_a_user_error():
    from sharpscope.errors import SharpscopeError

    model = nn.Linear(3, 2)
    with pytest.raises(SharpscopeError, match="unlabelled"):
        MSharpness().estimate(model, [(torch.randn(2, 3), torch.tensor([1, -1]))], "weighted-ce")


# ---- worst-case -------------------------------------------------------------------------------------------


def trust_region_max(A: np.ndarray, g: np.ndarray, rho: float) -> float:
    """max_{‖δ‖≤ρ} gᵀδ + ½δᵀAδ for PSD A (boundary solution δ = (λI − A)⁻¹g, λ > λmax, by bisection)."""
    lam_max = np.linalg.eigvalsh(A)[-1]
    lo, hi = lam_max + 1e-12, lam_max + np.linalg.norm(g) / rho + 10.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        d = np.linalg.solve(mid * np.eye(len(g)) - A, g)
        lo, hi = (mid, hi) if np.linalg.norm(d) > rho else (lo, mid)
    d = np.linalg.solve(hi * np.eye(len(g)) - A, g)
    return float(g @ d + 0.5 * d @ A @ d)


def test_worst_case_at_minimum_is_half_rho_squared_lambda_max():
    A = spd_matrix()
    rho = 0.1
    res = WorstCase(rho=rho, norm="l2", adaptive=False, init="random", steps=20).estimate(
        Quadratic(A, np.zeros(4)), quad_batches([[1.0, 1.0]]), QuadLoss()
    )
    assert res.value == pytest.approx(0.5 * rho**2 * max(A_DIAG), rel=1e-3)
    assert res.value <= 0.5 * rho**2 * max(A_DIAG) * (1 + 1e-12)  # never above the true maximum


@pytest.mark.parametrize("rho", [0.1, 0.5])
def test_worst_case_dominates_one_step_and_reaches_the_exact_maximum(rho):
    A = spd_matrix()
    model = Quadratic(A, W0)
    b = quad_batches([[1.0, 1.0, 1.0]])
    one = MSharpness(rho=rho).estimate(model, b, QuadLoss()).value
    worst = WorstCase(rho=rho, norm="l2", adaptive=False).estimate(model, b, QuadLoss()).value
    exact = trust_region_max(A, A @ W0, rho)
    assert one <= worst <= exact * (1 + 1e-12)
    assert worst == pytest.approx(exact, rel=1e-4)


def test_worst_case_adaptive_dominates_adaptive_one_step():
    A = spd_matrix()
    model = Quadratic(A, W0)
    b = quad_batches([[1.0, 2.0]])
    one = MSharpness(rho=0.2, adaptive=True).estimate(model, b, QuadLoss()).value
    worst = WorstCase(rho=0.2, norm="l2", adaptive=True).estimate(model, b, QuadLoss()).value
    assert worst >= one > 0


def test_worst_case_linf_ball_at_minimum():
    """L∞ ball, non-adaptive, at the minimum.  Diagonal A: every corner of the box is a global maximiser, so
    the value is exactly ½ρ² tr A.  Rotated A: the box has several local maxima (corners c with
    sign(Ac) = sign(c)); every APGD run must end on one of them and never above the brute-force maximum."""
    rho = 0.1
    diag = np.diag(A_DIAG)
    res = WorstCase(rho=rho, norm="linf", adaptive=False, init="random").estimate(
        Quadratic(diag, np.zeros(4)), quad_batches([[1.0]]), QuadLoss()
    )
    assert res.value == pytest.approx(0.5 * rho**2 * sum(A_DIAG), rel=1e-12)

    A = spd_matrix()
    res = WorstCase(rho=rho, norm="linf", adaptive=False, init="random", restarts=4, steps=30).estimate(
        Quadratic(A, np.zeros(4)), quad_batches([[1.0]]), QuadLoss()
    )
    corners = [np.array(s) * rho for s in np.array(np.meshgrid(*[[-1, 1]] * 4)).T.reshape(-1, 4)]
    local_max = [q(A, c) for c in corners if np.all(np.sign(A @ c) == np.sign(c))]
    assert res.value <= max(q(A, c) for c in corners) * (1 + 1e-12)
    for run in res.per_batch[0]["runs"]:
        assert min(abs(run["best"] - v) for v in local_max) < 1e-12
    assert res.value == max(run["best"] for run in res.per_batch[0]["runs"])


def test_apgd_checkpoints_follow_croce_hein():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 -> ceil(p·100)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(20) == [5, 9, 12, 14, 16, 18, 19, 20]


# ---- average-case -----------------------------------------------------------------------------------------


def test_average_case_expectation_half_sigma_squared_trace():
    A = spd_matrix()
    sigma, k, n_batches = 0.1, 500, 8
    res = AverageCase(rho=sigma, adaptive=False, samples=k, chunk=100).estimate(
        Quadratic(A, np.zeros(4)), quad_batches([[1.0]] * n_batches), QuadLoss()
    )
    expected = 0.5 * sigma**2 * np.trace(A)
    # each sample ½σ² zᵀAz has variance ½σ⁴ tr(A²); the estimate averages k·n_batches of them
    se = math.sqrt(0.5 * sigma**4 * np.trace(A @ A) / (k * n_batches))
    assert abs(res.value - expected) < 4 * se


def test_average_case_equals_the_sample_mean_of_its_seeded_noise():
    A = spd_matrix()
    sigma = 0.3
    model = Quadratic(A, W0)
    res = AverageCase(rho=sigma, adaptive=True, samples=7, chunk=3, seed=11).estimate(
        model, quad_batches([[1.0], [2.0]]), QuadLoss()
    )
    w = {n: p.detach() for n, p in model.named_parameters()}
    names = ["a", "b"]
    for b, c in enumerate([1.0, 2.0]):
        gen = torch.Generator().manual_seed(derive_seed(11, b, 0))
        deltas = gaussian_perturbations(w, names, sigma, adaptive_scale(w, names, True), 7, gen)
        vals = [c * (q(A, W0 + torch.cat([d["a"], d["b"]]).numpy()) - q(A, W0)) for d in deltas]
        assert res.per_batch[b]["value"] == pytest.approx(np.mean(vals), rel=1e-12)


def test_average_case_vmapped_equals_looped():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(1, 3, 5), nn.BatchNorm1d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 12, 2)
    )
    x = torch.randn(5, 1, 16)
    y = torch.tensor([0, 1, 1, 0, 1])
    kw = dict(rho=0.1, samples=6, chunk=4, seed=3)
    on = AverageCase(vectorize="on", **kw).estimate_many(model, [(x, y)], ["weighted-ce", "kl-to-clean"])
    off = AverageCase(vectorize="off", **kw).estimate_many(model, [(x, y)], ["weighted-ce", "kl-to-clean"])
    for name in on:
        a, b = on[name].per_batch[0]["sample_losses"], off[name].per_batch[0]["sample_losses"]
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
        assert on[name].value == pytest.approx(off[name].value, rel=1e-5, abs=1e-7)
    assert on["weighted-ce"].cost == off["weighted-ce"].cost == {"forward": 7, "backward": 0, "hvp": 0}
    # the perturbed forwards are shared by both losses
    assert on["weighted-ce"].extra["cost_shared_total"]["forward"] == 7


# ---- determinism ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda s: AverageCase(samples=4, seed=s),
        lambda s: WorstCase(steps=5, init="random", restarts=2, seed=s),
    ],
)
def test_fixed_seed_gives_identical_values_and_other_seeds_differ(make):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    batches = [(torch.randn(6, 4), torch.randint(0, 2, (6,))) for _ in range(2)]
    a = make(5).estimate(model, batches, "ce")
    b = make(5).estimate(model, batches, "ce")
    c = make(6).estimate(model, batches, "ce")
    assert a.value == b.value and a.ci95 == b.ci95
    assert [r["value"] for r in a.per_batch] == [r["value"] for r in b.per_batch]
    assert a.value != c.value
