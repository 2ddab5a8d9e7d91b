"""Worst-case (adaptive) sharpness by m-APGD (Andriushchenko et al. 2023; Croce & Hein 2020).

Per batch ``B`` (``m`` = batch size):

    value_B = max_{‖u‖_p ≤ ρ} L_B(w + s ⊙ u) − L_B(w),   s = |w| + η (adaptive) or 1,   p ∈ {∞, 2}

The maximisation is Auto-PGD (Croce & Hein 2020, Algorithm 1) run on ``u``:

* steps along ``sign(∇_u)`` (L∞) or ``∇_u / ‖∇_u‖₂`` (L2, one global norm), initial step size ``2ρ``;
* momentum: ``x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))`` with ``α = 0.75``;
* checkpoints ``w_j = ⌈p_j N⌉`` with ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``;
  at a checkpoint the step size is halved and the iterate reset to the best point when fewer than 75 % of the
  steps since the previous checkpoint increased the loss (condition 1) or when neither the step size nor the
  best loss changed since the previous checkpoint (condition 2);
* ``restarts`` runs; the first starts at ``u = 0`` when ``init="zero"`` (its first step, in L2, lands exactly
  on the one-step m-sharpness point, so worst-case ≥ m-sharpness at the same ρ and scaling), the others at a
  seeded random point (uniform in the L∞ ball; uniform direction on the L2 sphere).  ``init="random"`` makes
  every run start at random -- needed at an exact minimum, where the gradient vanishes.

``value`` = the largest loss found (the clean point included, so ``value ≥ 0``) minus the clean loss.  A
non-finite loss anywhere on the path marks the batch non-finite.  Cost per batch and run: ``steps + 1``
gradient evaluations (the clean one is shared with scoring for the first zero-start run).

Defaults: L2 ball, adaptive, ρ = 0.05 -- the seed paper's radius and scaling, so the numbers compare with
m-sharpness.  An L∞ ball of the same ρ is far larger (up to ``ρ√d`` in L2 norm); pick a much smaller ρ for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SharpscopeError
from ..perturb import NORM_EPS, global_norm
from .engine import BatchProblem, BatchwiseEstimator, CommonSettings, adaptive_scale

NORMS = ("linf", "l2")
INITS = ("zero", "random")


@dataclass
class WorstCaseSettings(CommonSettings):
    """``rho`` ball radius; ``norm`` linf|l2; ``adaptive`` scale by ``|w| + eta``; ``steps`` APGD iterations;
    ``restarts`` runs; ``init`` zero|random start of the first run; ``momentum`` APGD's α."""

    rho: float = 0.05
    norm: str = "l2"
    adaptive: bool = True
    eta: float = 0.0
    steps: int = 20
    restarts: int = 1
    init: str = "zero"
    momentum: float = 0.75

    def validate(self) -> None:
        super().validate()
        if self.norm not in NORMS:
            raise SharpscopeError(f"unknown norm {self.norm!r}; use one of {', '.join(NORMS)}")
        if self.init not in INITS:
            raise SharpscopeError(f"unknown init {self.init!r}; use one of {', '.join(INITS)}")
        if not self.rho > 0 or self.steps < 1 or self.restarts < 1 or self.eta < 0:
            raise SharpscopeError(
                f"worst-case needs rho > 0, steps >= 1, restarts >= 1, eta >= 0 (got rho={self.rho}, "
                f"steps={self.steps}, restarts={self.restarts}, eta={self.eta})"
            )


def apgd_checkpoints(n_iter: int) -> list[int]:
    """APGD checkpoint iterations ``⌈p_j N⌉`` (j ≥ 1) within ``1..n_iter``."""
    p = [0.0, 0.22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if nxt > 1:
            break
        p.append(nxt)
    its = {math.ceil(round(q * n_iter, 9)) for q in p[1:]}  # round: 0.57·100 must give 57, not 58
    return sorted(i for i in its if 0 < i <= n_iter)


class _Ball:
    """Projection and steepest-ascent direction for the L∞ or L2 ball of radius ρ (dicts of tensors)."""

    def __init__(self, norm: str, rho: float) -> None:
        self.norm, self.rho = norm, rho

    def project(self, u: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.norm == "linf":
            return {n: t.clamp(-self.rho, self.rho) for n, t in u.items()}
        norm = float(global_norm(u.values()))
        f = min(1.0, self.rho / norm) if norm > 0 else 1.0
        return {n: t * f for n, t in u.items()} if f < 1.0 else u

    def direction(self, g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.norm == "linf":
            return {n: t.sign() for n, t in g.items()}
        norm = global_norm(g.values()) + NORM_EPS
        return {n: t / norm for n, t in g.items()}

    def random(self, like: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        if self.norm == "linf":
            return {
                n: (torch.rand(t.shape, generator=gen, device=t.device, dtype=t.dtype) * 2 - 1) * self.rho
                for n, t in like.items()
            }
        z = {n: torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype) for n, t in like.items()}
        norm = global_norm(z.values())
        return {n: t * (self.rho / norm) for n, t in z.items()}


def _axpy(a: dict, b: dict, s: float) -> dict:
    return {n: a[n] + s * b[n] for n in a}


class WorstCase(BatchwiseEstimator):
    """Worst-case (adaptive) sharpness by m-APGD (see the module docstring)."""

    name = "worst-case"
    Settings = WorstCaseSettings
    needs_clean_grad = True

    def batch_values(
        self, pb: BatchProblem, names: list[str], seed: int
    ) -> list[tuple[float, dict[str, Any]]]:
        out: list[tuple[float, dict[str, Any]]] = []
        for i in range(len(pb.losses)):
            grads = pb.grads[i]
            if grads is None:
                out.append((float("nan"), {"max_loss": float("nan")}))
                continue
            use = [n for n in names if n in grads]
            if not use:
                out.append((0.0, {"max_loss": pb.clean_loss[i], "n_params_with_grad": 0}))
                continue
            out.append(self._maximise(pb, i, use, {n: grads[n] for n in use}, seed))
        return out

    def _maximise(self, pb: BatchProblem, i: int, names: list[str], g0: dict, seed: int):
        s = self.settings
        ball = _Ball(s.norm, s.rho)
        scale = adaptive_scale(pb.w, names, s.adaptive, s.eta)
        gen = torch.Generator(device=pb.fwd.device)
        gen.manual_seed(seed)

        def delta(u: dict) -> dict:
            return u if scale is None else {n: scale[n] * u[n] for n in u}

        clean = pb.clean_loss[i]
        best_f, best_parts = [clean], [dict(pb.clean_parts[i])]  # the per-class split at the maximiser

        def evaluate(u: dict) -> tuple[float, dict]:
            f, g = pb.value_and_grad(i, delta(u))
            if math.isfinite(f) and f > best_f[0]:
                best_f[0], best_parts[0] = f, dict(pb.last_parts[i])
            return f, (g if scale is None else {n: scale[n] * g[n] for n in g})

        best = clean
        finite = True
        history: list[dict[str, Any]] = []
        for r in range(s.restarts):
            if r == 0 and s.init == "zero":
                u0 = {n: torch.zeros_like(pb.w[n]) for n in names}
                f0, gu0 = clean, (g0 if scale is None else {n: scale[n] * g0[n] for n in names})
            else:
                u0 = ball.random({n: pb.w[n] for n in names}, gen)
                f0, gu0 = evaluate(u0)
            f_max, run_finite, run = self._apgd(ball, evaluate, u0, f0, gu0)
            history.append(run)
            finite = finite and run_finite
            if f_max > best:
                best = f_max
        value = best - clean if finite else float("nan")
        info: dict[str, Any] = {"max_loss": best, "runs": history}
        if finite:
            info["per_class"] = pb.parts_delta(best_parts[0], i)
        return value, info

    def _apgd(self, ball: _Ball, evaluate, u0: dict, f0: float, g0: dict):
        """One APGD run from ``u0``; returns (best loss, all losses finite, run record)."""
        s = self.settings
        alpha = s.momentum
        n_iter = s.steps
        checkpoints = set(apgd_checkpoints(n_iter))
        step = 2.0 * s.rho  # APGD's initial step size η⁽⁰⁾ = 2ρ
        if not math.isfinite(f0):
            return f0, False, {"best": f0, "halvings": 0}
        x_prev, x, f, g = u0, u0, f0, g0
        x_max, f_max, g_max = u0, f0, g0
        succ = 0
        last_ck, reduced_last, last_fmax = 0, False, f_max
        halvings = 0
        for k in range(n_iter):
            z = ball.project(_axpy(x, ball.direction(g), step))
            if k == 0:
                x_new = z
            else:
                x_new = ball.project(
                    {n: x[n] + alpha * (z[n] - x[n]) + (1 - alpha) * (x[n] - x_prev[n]) for n in x}
                )
            f_new, g_new = evaluate(x_new)
            if not math.isfinite(f_new):
                return f_new, False, {"best": f_max, "halvings": halvings, "stopped_at": k + 1}
            if f_new > f:
                succ += 1
            x_prev, x, f, g = x, x_new, f_new, g_new
            if f > f_max:
                x_max, f_max, g_max = x, f, g
            it = k + 1
            if it in checkpoints:
                cond1 = succ < 0.75 * (it - last_ck)  # too few steps increased the loss
                cond2 = not reduced_last and last_fmax >= f_max  # no halving last time and no progress since
                reduced_last = cond1 or cond2
                if reduced_last:
                    step /= 2.0
                    halvings += 1
                    x_prev, x, f, g = x_max, x_max, f_max, g_max
                succ = 0
                last_ck, last_fmax = it, f_max
        return f_max, True, {"best": f_max, "halvings": halvings}
