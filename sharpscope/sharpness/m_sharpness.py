"""m-sharpness: the one-step estimator of the seed paper (Huang et al. 2025, SAM-AntiSpoofing).

Per batch ``B`` (``m`` = batch size, the partial last batch included):

    g = ∇ L_B(w)
    ε = ρ · g / (‖g‖₂ + 1e-12)                        (SAM)
    ε = ρ · w ⊙ w ⊙ g / (‖|w| ⊙ g‖₂ + 1e-12)          (adaptive, ASAM's T_w = |w| without η)
    value_B = L_B(w + ε) − L_B(w)

with one global norm over all perturbed parameters that received a gradient (parameters unused by the forward
get no gradient and are not perturbed), the model in eval mode, and the estimate = the size-weighted mean of
``value_B`` over batches.  Defaults: ρ = 0.05, loss = class-weighted cross-entropy ``[0.1, 0.9]``.  The
reference equals scope ``trainable`` (``all`` when nothing is frozen).

Label-free use: with ``kl-to-clean`` the step follows the gradient of the pseudo-label cross-entropy (the KL
has zero gradient at ``w``; see :meth:`sharpscope.losses.KLToClean.ascent_loss`) and the value is the
KL increase at ``w + ε``.

Cost per batch: 1 forward + 1 backward (clean, shared with scoring) + 1 forward (perturbed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SharpscopeError
from ..perturb import sam_perturbation
from .engine import BatchProblem, BatchwiseEstimator, CommonSettings


@dataclass
class MSharpnessSettings(CommonSettings):
    """``rho`` -- radius of the step; ``adaptive`` -- ASAM scaling by ``|w|`` (no η, as the reference)."""

    rho: float = 0.05
    adaptive: bool = False

    def validate(self) -> None:
        super().validate()
        if not self.rho > 0:
            raise SharpscopeError(f"rho must be positive, got {self.rho}")


def one_step_perturbation(
    w: dict[str, torch.Tensor], g: dict[str, torch.Tensor], rho: float, adaptive: bool
) -> dict[str, torch.Tensor]:
    """ε of the reference one-step estimator for gradients ``g`` (dict) at weights ``w`` (dict): the SAM /
    ASAM ascent step of training (:func:`sharpscope.perturb.sam_perturbation`, ASAM with η = 0)."""
    names = list(g)
    eps = sam_perturbation([w[n] for n in names], [g[n] for n in names], rho, adaptive, eta=0.0)
    return dict(zip(names, eps, strict=True))


class MSharpness(BatchwiseEstimator):
    """The seed paper's m-sharpness (see the module docstring)."""

    name = "m-sharpness"
    Settings = MSharpnessSettings
    needs_clean_grad = True

    def batch_values(
        self, pb: BatchProblem, names: list[str], seed: int
    ) -> list[tuple[float, dict[str, Any]]]:
        s = self.settings
        out: list[tuple[float, dict[str, Any]]] = []
        for i in range(len(pb.losses)):
            grads = pb.grads[i]
            if grads is None:  # non-finite clean loss
                out.append((float("nan"), {"perturbed_loss": float("nan")}))
                continue
            g = {n: grads[n] for n in names if n in grads}
            if not g:
                out.append((0.0, {"perturbed_loss": pb.clean_loss[i], "n_params_with_grad": 0}))
                continue
            eps = one_step_perturbation(pb.w, g, s.rho, s.adaptive)
            perturbed = pb.value(i, eps)
            per_class = pb.parts_delta(pb.last_parts[i], i)
            out.append((perturbed - pb.clean_loss[i], {"perturbed_loss": perturbed, "per_class": per_class}))
        return out
