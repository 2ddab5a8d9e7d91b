"""Common machinery of all sharpness estimators.

* :class:`SharpnessResult` -- what every estimator returns (value, uncertainty, counts, cost, settings).
* :class:`Estimator` -- the uniform interface: settings in a dataclass given to the constructor,
  ``estimate(model, batches, loss) -> SharpnessResult``.
* :func:`select_params` -- the parameter scope an estimator perturbs.
* :func:`preserved` -- puts the model in eval mode and restores every parameter and buffer bit-for-bit (and
  the train/eval mode and ``requires_grad`` flags) on exit, also when an exception is raised.
* Loss functions: ``weighted-ce`` (the reference loss of AASIST / SAM-AntiSpoofing: class weights
  [0.1 spoof, 0.9 bona fide], PyTorch's weighted mean), ``ce`` and the label-free ``kl-to-clean``.
* :func:`forward_logits`, :func:`unpack_batch` -- logits of a model by its declared output layout (never by
  position guessing), batch-independent under crop ``full``; batches of any of the accepted forms.

The batchwise machinery shared by the loss-based estimators (functional perturbations, budget / CI stopping,
several losses in one pass, the streaming session the runner scores through) is in
:mod:`sharpscope.sharpness.engine`.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SharpscopeError
from ..models.outputs import forward_logits  # noqa: F401  (re-exported: one logits reader)

REFERENCE_CLASS_WEIGHTS = (0.1, 0.9)  # [spoof, bonafide], AASIST / SAM-AntiSpoofing training loss


@dataclass
class Cost:
    """Work done by an estimator, counted in model passes over single batches."""

    forward: int = 0
    backward: int = 0
    hvp: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class SharpnessResult:
    """One sharpness estimate.

    ``value`` is the size-weighted mean over batches (per-utterance weighting), ``stderr`` its standard error
    over batches and ``ci95`` a 95 % confidence interval (bootstrap over batches where the estimator says
    so).  ``per_batch`` holds one dict per batch (at least ``size`` and ``value``; batches whose loss was
    NaN/inf are kept there with ``finite=False`` and excluded from ``value``; ``n_nonfinite`` counts them).
    """

    measure: str
    value: float
    stderr: float
    ci95: tuple[float, float]
    n_utts: int
    n_batches: int
    per_batch: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    n_nonfinite: int = 0
    per_layer: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d


@runtime_checkable
class Estimator(Protocol):
    """Uniform estimator interface (see module docstring).

    Optional extras the runner uses when present: ``estimate_many(model, batches, losses) -> {loss: result}``
    and ``session(model, losses)`` (streaming, see :class:`sharpscope.sharpness.engine.EstimateSession`).
    """

    name: str

    def estimate(self, model: nn.Module, batches: Iterable[Any], loss: Loss) -> SharpnessResult: ...


def settings_dict(settings: Any) -> dict[str, Any]:
    return asdict(settings) if is_dataclass(settings) else dict(settings)


# ---- losses ---------------------------------------------------------------------------------------------


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

    def __call__(self, logits, labels, clean_logits=None):
        w = None
        if self.class_weights is not None:
            w = torch.tensor(self.class_weights, dtype=logits.dtype, device=logits.device)
        return F.cross_entropy(logits, labels, weight=w)

    def batch_weight(self, labels: torch.Tensor) -> float:
        if self.class_weights is None:
            return float(labels.shape[0])
        cw = torch.tensor(self.class_weights, dtype=torch.float64)
        return float(cw[labels.detach().cpu().long()].sum())

    def per_utt(self, logits, labels, clean_logits=None):
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

    def __call__(self, logits, labels, clean_logits=None):
        if clean_logits is None:
            raise ValueError("kl-to-clean needs the clean logits")
        logp_clean = F.log_softmax(clean_logits.detach(), dim=-1)
        logp = F.log_softmax(logits, dim=-1)
        return (logp_clean.exp() * (logp_clean - logp)).sum(-1).mean()

    def per_utt(self, logits, labels, clean_logits=None):
        if clean_logits is None:
            raise ValueError("kl-to-clean needs the clean logits")
        logp_clean = F.log_softmax(clean_logits.detach(), dim=-1)
        logp = F.log_softmax(logits, dim=-1)
        return (logp_clean.exp() * (logp_clean - logp)).sum(-1) / logits.shape[0]

    def ascent_loss(self, logits, labels, clean_logits=None):
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
    if name == "weighted-ce":
        return CrossEntropy(REFERENCE_CLASS_WEIGHTS)
    if name == "ce":
        return CrossEntropy(None)
    if name == "kl-to-clean":
        return KLToClean()
    raise SharpscopeError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


# ---- model outputs and batches ----------------------------------------------------------------------------


def batch_lengths(batch: Any) -> torch.Tensor | None:
    """True lengths of a batch's utterances (crop ``full``), ``None`` where all are full length."""
    return getattr(batch, "lengths", None) if not isinstance(batch, (dict, tuple, list)) else (
        batch.get("lengths") if isinstance(batch, dict) else None
    )


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """``(inputs, labels, utt_ids)`` of a :class:`~sharpscope.data.audio.Batch`, an ``(x, y)`` pair or a
    dict."""
    if hasattr(batch, "wave") and hasattr(batch, "labels"):
        return batch.wave, batch.labels, list(getattr(batch, "utt_ids", None) or []) or None
    if isinstance(batch, dict):
        x = batch.get("wave", batch.get("x"))
        y = batch.get("labels", batch.get("y"))
        return x, y, batch.get("utt_ids")
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return batch[0], batch[1], (list(batch[2]) if len(batch) == 3 else None)
    raise TypeError(f"cannot read a batch of type {type(batch).__name__}; give a Batch, (x, y) or a dict")


# ---- parameter scope ------------------------------------------------------------------------------------


def select_params(model: nn.Module, scope: str = "all") -> dict[str, nn.Parameter]:
    """Parameters an estimator perturbs.

    ``all`` -- every floating-point parameter; ``trainable`` -- those with ``requires_grad``;
    ``regex:PATTERN`` -- names matching PATTERN (``re.search``).  (``lora-merged`` is handled by
    :mod:`sharpscope.sharpness.scope`, which builds the merged model first.)
    """
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if scope == "all":
        out = dict(named)
    elif scope == "trainable":
        out = {n: p for n, p in named if p.requires_grad}
    elif scope.startswith("regex:"):
        pat = re.compile(scope[len("regex:") :])
        out = {n: p for n, p in named if pat.search(n)}
    else:
        raise SharpscopeError(
            f"unknown parameter scope {scope!r}; use all, trainable, regex:PATTERN or lora-merged"
        )
    if not out:
        raise SharpscopeError(f"parameter scope {scope!r} selects no parameters of {type(model).__name__}")
    return out


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside; every parameter/buffer, ``requires_grad`` flag, ``.grad`` and the mode restored
    after.

    Restoration copies the saved tensors back, so values are bit-identical even if the body raised midway
    through a perturbation.
    """
    was_training = model.training
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.eval()
    try:
        yield model
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n])
                p.requires_grad_(flags[n])
                p.grad = grads[n]
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        model.train(was_training)


# ---- non-finite batches ------------------------------------------------------------------------------------

NONFINITE_POLICIES = ("error", "drop", "cap")


def check_nonfinite_policy(policy: str) -> None:
    if policy not in NONFINITE_POLICIES:
        raise SharpscopeError(
            f"unknown non-finite policy {policy!r}; use one of {', '.join(NONFINITE_POLICIES)}"
        )


def check_nonfinite(policy: str, measure: str, index: int, batch: Any, what: str) -> None:
    """Raise under policy ``error`` when batch ``index`` gave a NaN/inf ``what``; ``drop`` and ``cap`` let the
    caller count it (see :func:`apply_nonfinite`)."""
    if policy != "error":
        return
    ids = list(getattr(batch, "utt_ids", None) or []) if batch is not None else []
    first = f" (first utterance {ids[0]})" if ids else ""
    raise SharpscopeError(
        f"{measure}: batch {index}{first} gave a non-finite {what}; rerun with --nonfinite drop (exclude and "
        "count such batches) or --nonfinite cap (count them at the largest finite batch value), or lower rho"
    )


def apply_nonfinite(rows: list[dict[str, Any]], policy: str) -> None:
    """Mark the per-batch rows that enter the estimate, in place.

    ``drop``: only finite batches enter.  ``cap``: a batch whose loss at ``w`` is finite but whose perturbed
    value is NaN/inf (divergence: the sharpest possible outcome) enters at the largest finite batch value of
    the pass (``capped=True``) -- a lower bound on its sharpness instead of silently biasing the mean down;
    batches whose loss at ``w`` itself is non-finite have no defined sharpness and are dropped.  Both count
    every such batch in ``n_nonfinite``.
    """
    finite_values = [r["value"] for r in rows if r["finite"] and "value" in r]
    cap = max(finite_values) if finite_values else math.nan
    for r in rows:
        r["used"] = bool(r["finite"])
        if policy == "cap" and not r["finite"] and math.isfinite(r.get("clean_loss", math.nan)):
            if math.isfinite(cap):
                r["value"], r["capped"], r["used"] = cap, True, True


# ---- statistics helpers -----------------------------------------------------------------------------------


def weighted_summary(
    values: list[float], sizes: list[int], n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, tuple[float, float]]:
    """Size-weighted mean over batches, its standard error and a 95 % bootstrap CI (batches resampled).

    Non-finite values must be removed by the caller.  With a single batch the CI collapses to the value and
    the stderr is NaN (one batch carries no spread information).
    """
    v = np.asarray(values, dtype=float)
    w = np.asarray(sizes, dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, (math.nan, math.nan)
    mean = float(np.sum(v * w) / np.sum(w))
    if len(v) == 1:
        return mean, math.nan, (mean, mean)
    # stderr of a ratio estimator (weighted mean) over batches
    wn = w / w.mean()
    se = float(np.sqrt(np.sum((wn * (v - mean)) ** 2) / (len(v) * (len(v) - 1))))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    boots = np.sum(v[idx] * w[idx], axis=1) / np.sum(w[idx], axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return mean, se, (float(lo), float(hi))
