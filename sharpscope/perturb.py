"""The SAM / ASAM ascent step, in one place for training (:mod:`sharpscope.train.sam`) and the one-step
m-sharpness estimator (:mod:`sharpscope.sharpness.m_sharpness`).

Sharpness-aware minimisation (Foret et al. 2021, ICLR) ascends from ``w`` to ``w + ε`` with

    ε = ρ · g / (‖g‖₂ + 1e-12)                                   (SAM)
    ε = ρ · T² g / (‖T g‖₂ + 1e-12),   T = |w| + η  (element-wise)  (ASAM, Kwon et al. 2021, ICML)

where ``g = ∇L_B(w)`` and the norm is one L2 norm over every parameter that received a gradient, taken as the
norm of the per-tensor norms (the SAM reference formula).  With ``η = 0`` ASAM is the ``adaptive=True`` form
of the SAM re-implementation SAM-AntiSpoofing (Huang et al. 2025) trains and measures m-sharpness with.

This module depends on torch only, so both training and the estimators import it without a back-edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

NORM_EPS = 1e-12  # added to every global norm (SAM / SAM-AntiSpoofing reference value)


def global_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """‖concat(tensors)‖₂ computed as the norm of the per-tensor norms (the SAM reference formula)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def sam_perturbation(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    rho: float,
    adaptive: bool = False,
    eta: float = 0.01,
) -> list[torch.Tensor]:
    """The ascent step ε of SAM (``adaptive=False``) or ASAM (``adaptive=True``) for each parameter.

    SAM: ``ε = ρ g / (‖g‖ + 1e-12)``; ASAM: ``ε = ρ T (T g) / (‖T g‖ + 1e-12)`` with ``T = |w| + η``; the norm
    is one L2 norm over all given gradients.  Pure function: nothing is modified.
    """
    if not params:
        return []
    if adaptive:
        scaled = [(p.detach().abs() + eta) * g for p, g in zip(params, grads, strict=True)]
    else:
        scaled = list(grads)
    scale = rho / (global_norm(scaled) + NORM_EPS)
    if adaptive:
        return [(p.detach().abs() + eta) * s * scale for p, s in zip(params, scaled, strict=True)]
    return [g * scale for g in grads]
