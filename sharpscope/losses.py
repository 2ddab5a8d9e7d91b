"""Batch losses shared by training and the sharpness estimators.

* ``weighted-ce`` -- the reference loss of AASIST (Jung et al., ICASSP 2022) and SAM-AntiSpoofing (Shim et
  al., 2023): cross-entropy with class weights [0.1 spoof, 0.9 bona fide], PyTorch's weighted mean
  ``Σ w_y·ℓ / Σ w_y``;
* ``ce`` -- plain cross-entropy (mean over utterances);
* ``kl-to-clean`` -- label-free: mean KL(p_clean ‖ p_perturbed), zero at the unperturbed weights.

Every loss states its normaliser (:meth:`Loss.batch_weight`, the denominator of its batch mean), so that the
loss of a union of batches -- and hence the loss of one batch computed as several micro-batches -- is exactly
``Σ_B W_B·L_B / Σ_B W_B``.

This module imports nothing from :mod:`sharpscope.sharpness` or :mod:`sharpscope.train`: both use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import SharpscopeError

REFERENCE_CLASS_WEIGHTS = (0.1, 0.9)  # [spoof, bonafide], AASIST / SAM-AntiSpoofing training loss


class Loss:
    """A batch loss ``loss(logits, labels, clean_logits=None) -> scalar``.

    ``needs_labels`` is False for label-free losses; ``needs_clean`` is True when the loss compares against
    the logits at the unperturbed weights (the estimator computes and passes them).
    """

    name: str = "loss"
    needs_labels: bool = True
    needs_clean: bool = False

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def batch_weight(self, labels: torch.Tensor) -> float:
        """The normaliser of the batch loss (its denominator), so that the loss of a union of batches is
        ``Σ_B W_B·L_B / Σ_B W_B``: the batch size for a plain mean."""
        return float(labels.shape[0])

    def ascent_weight(self, labels: torch.Tensor) -> float:
        """The normaliser of :meth:`ascent_loss` (equal to :meth:`batch_weight` unless a loss overrides the
        ascent loss with one normalised differently)."""
        return self.batch_weight(labels)

    def per_utt(
        self, logits: torch.Tensor, labels: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Per-utterance terms ``[B]`` whose sum is the batch loss (for per-class contributions); ``None``
        for a loss that does not decompose (no per-class split is reported then)."""
        return None

    def ascent_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss whose gradient at the clean weights gives a first-order ascent direction.

        The loss itself for every loss with a non-zero gradient at ``w``; label-free losses that vanish to
        second order at ``w`` (``kl-to-clean``) override it.
        """
        return self(logits, labels, clean_logits)


class CrossEntropy(Loss):
    """Cross-entropy with optional class weights, PyTorch's weighted mean: Σ w_y·ℓ / Σ w_y."""

    def __init__(self, class_weights: tuple[float, float] | None = None) -> None:
        self.class_weights = class_weights
        self.name = "weighted-ce" if class_weights is not None else "ce"

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        w = None
        if self.class_weights is not None:
            w = torch.tensor(self.class_weights, dtype=logits.dtype, device=logits.device)
        return F.cross_entropy(logits, labels, weight=w)

    def batch_weight(self, labels: torch.Tensor) -> float:
        if self.class_weights is None:
            return float(labels.shape[0])
        cw = torch.tensor(self.class_weights, dtype=torch.float64)
        return float(cw[labels.detach().cpu().long()].sum())

    def per_utt(
        self, logits: torch.Tensor, labels: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        raw = F.cross_entropy(logits, labels, reduction="none")
        if self.class_weights is None:
            return raw / labels.shape[0]
        w = torch.tensor(self.class_weights, dtype=logits.dtype, device=logits.device)[labels]
        return w * raw / w.sum()


class KLToClean(Loss):
    """Label-free loss: mean over utterances of KL(p_clean ‖ p_perturbed).

    Zero at the unperturbed weights, so the sharpness is the increase of this divergence; usable on unlabelled
    target-domain data.
    """

    name = "kl-to-clean"
    needs_labels = False
    needs_clean = True

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        if clean_logits is None:
            raise ValueError("kl-to-clean needs the clean logits")
        logp_clean = F.log_softmax(clean_logits.detach(), dim=-1)
        logp = F.log_softmax(logits, dim=-1)
        return (logp_clean.exp() * (logp_clean - logp)).sum(-1).mean()

    def per_utt(
        self, logits: torch.Tensor, labels: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        if clean_logits is None:
            raise ValueError("kl-to-clean needs the clean logits")
        logp_clean = F.log_softmax(clean_logits.detach(), dim=-1)
        logp = F.log_softmax(logits, dim=-1)
        return (logp_clean.exp() * (logp_clean - logp)).sum(-1) / logits.shape[0]

    def ascent_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, clean_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-entropy against the clean prediction (pseudo-label = argmax of the clean logits).

        KL(p_clean ‖ p_w) has zero gradient at the clean weights, so a one-step estimator would not move.  Its
        Hessian there is the Fisher information, whose dominant directions the gradients of the pseudo-label
        log-likelihood span; the one-step estimators therefore step along the pseudo-label cross-entropy
        gradient and measure the KL increase at that point (documented behaviour, still label-free).
        """
        if clean_logits is None:
            raise ValueError("kl-to-clean needs the clean logits")
        return F.cross_entropy(logits, clean_logits.detach().argmax(-1))


LOSSES = ("weighted-ce", "ce", "kl-to-clean")


def make_loss(name: str) -> Loss:
    """The loss called ``name`` (one of :data:`LOSSES`)."""
    if name == "weighted-ce":
        return CrossEntropy(REFERENCE_CLASS_WEIGHTS)
    if name == "ce":
        return CrossEntropy(None)
    if name == "kl-to-clean":
        return KLToClean()
    raise SharpscopeError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
