"""Curvature *operators*: the loss Hessian of one batch as a matrix-free linear map on flat parameter vectors.

Kept separate from the *algorithms* that use it (power iteration, Lanczos, Hutchinson, Hutch++ in
:mod:`sharpscope.sharpness.curvature`), in the style of curvlinops: an operator knows how to multiply, an
algorithm knows what to do with products.

The Hessian-vector product ``H v = ∇²_θ L(θ; x, y) v`` is computed with :mod:`torch.func`:

* ``forward-over-reverse`` (default): ``jvp(grad(L), θ, v)`` on a :func:`torch.func.functional_call` of the
  model -- one forward-mode pass through the backward pass, no second graph kept alive.
* ``reverse-over-reverse``: plain double back-propagation, ``∂/∂θ <∇L(θ), v>`` with ``create_graph=True``.
  Needed where an op has no forward-mode AD formula (custom ``autograd.Function`` without ``jvp``, some
  fused kernels) or is not usable under :mod:`torch.func` transforms.

``ad_mode="auto"`` tries forward-over-reverse on the first product and, if that raises, retries the same
product in reverse-over-reverse mode; if that works the operator stays in the fallback mode (``mode`` says
which one is in use, ``fallback_reason`` why), otherwise the original error is raised.  Both modes give the
same product up to floating-point rounding.  :meth:`HessianOperator.matmat` multiplies blocks of vectors in
one vectorised pass (``vmap`` / ``is_grads_batched``), falling back to a loop where a model cannot be
vectorised.

The operator never writes to the model: parameters are passed to ``functional_call`` as detached copies of
their current values, so the caller's :func:`~sharpscope.sharpness.base.preserved` context only has to undo
the eval-mode switch.  For a loss that needs the clean logits (``kl-to-clean``) the logits at the current
weights are computed once, without gradient, and held constant: the Hessian of KL(p_clean ‖ p_θ) at θ is
then the generalised Gauss-Newton / Fisher matrix of the softmax outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import grad, jvp, vmap

from ..errors import SharpscopeError
from ..losses import Loss
from ..models.outputs import forward_logits
from .base import unpack_batch

AD_MODES = ("auto", "forward-over-reverse", "reverse-over-reverse")


# ---- batches ----------------------------------------------------------------------------------------------


def batch_tensors(batch: Any, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(inputs, labels, size)`` of a batch (see :func:`~sharpscope.sharpness.base.unpack_batch`), moved to
    ``device``; missing labels become -1 (unknown)."""
    x, y, _ = unpack_batch(batch)
    if y is None:
        y = torch.full((x.shape[0],), -1, dtype=torch.long)
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y, int(x.shape[0])


def check_labels(loss: Loss, y: torch.Tensor, index: int) -> None:
    """Raise a one-line :class:`SharpscopeError` when a label-needing loss meets unknown (-1) labels."""
    if loss.needs_labels and bool((y < 0).any()):
        raise SharpscopeError(
            f"batch {index} has utterances with unknown label (-1) but loss {loss.name!r} needs labels; "
            "use a labelled manifest or the label-free loss kl-to-clean"
        )


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def batch_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for batch ``index`` of a run seeded with ``seed``.

    Derived from ``(seed, index)`` so a batch's random vectors do not depend on how many draws earlier
    batches made, and drawn on the CPU so the same seed gives the same vectors on any device.
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ---- the operator -----------------------------------------------------------------------------------------


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


class HessianOperator:
    """Matrix-free Hessian of the batch loss w.r.t. the parameters in ``params`` at their current values.

    Acts on flat vectors of length :attr:`dim` (parameters concatenated in the order of ``params``) with the
    common floating dtype of the parameters.  ``n_matvec`` counts products (each is one Hessian-vector
    product, about the cost of a forward plus two backward passes).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Loss,
        x: torch.Tensor,
        y: torch.Tensor,
        params: Mapping[str, torch.Tensor],
        *,
        clean_logits: torch.Tensor | None = None,
        ad_mode: str = "auto",
        lengths: torch.Tensor | None = None,
    ) -> None:
        if ad_mode not in AD_MODES:
            raise SharpscopeError(f"unknown ad_mode {ad_mode!r}; choose one of {', '.join(AD_MODES)}")
        self.model, self.loss, self.x, self.y, self.lengths = model, loss, x, y, lengths
        self.names = list(params)
        self.theta = tuple(p.detach() for p in params.values())
        self.shapes = [t.shape for t in self.theta]
        self.numels = [t.numel() for t in self.theta]
        self.dim = int(sum(self.numels))
        dtype = self.theta[0].dtype
        for t in self.theta[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        self.dtype, self.device = dtype, self.theta[0].device
        if loss.needs_clean and clean_logits is None:
            with torch.no_grad():
                clean_logits = forward_logits(model, x, lengths)
        self.clean_logits = None if clean_logits is None else clean_logits.detach()
        self.mode = ad_mode
        self.fallback_reason: str | None = None
        self.n_matvec = 0
        self.batched = True

    # -- flat <-> per-parameter
    def split(self, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = torch.split(v, self.numels)
        return tuple(p.reshape(s).to(t.dtype) for p, s, t in zip(parts, self.shapes, self.theta, strict=True))

    def flatten(self, ts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat([t.reshape(-1).to(self.dtype) for t in ts])

    # -- the loss as a function of the scoped parameters
    def _loss(self, theta: tuple[torch.Tensor, ...]) -> torch.Tensor:
        params = dict(zip(self.names, theta, strict=True))
        logits = forward_logits(self.model, self.x, self.lengths, params=params)
        return self.loss(logits, self.y, self.clean_logits)

    def loss_value(self) -> float:
        with torch.no_grad():
            return float(self._loss(self.theta))

    def _hvp_forward(self, vs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return jvp(grad(self._loss), (self.theta,), (vs,))[1]

    def _hvp_reverse(self, vs: tuple[torch.Tensor, ...], batched: bool = False) -> tuple[torch.Tensor, ...]:
        """Double back-propagation; with ``batched`` every ``vs[i]`` has a leading block dimension."""
        theta = tuple(t.detach().requires_grad_(True) for t in self.theta)
        with torch.enable_grad():
            g = torch.autograd.grad(self._loss(theta), theta, create_graph=True, allow_unused=True)
            keep = [i for i, gi in enumerate(g) if gi is not None and gi.requires_grad]
            hv: tuple[torch.Tensor | None, ...] = (None,) * len(theta)
            if keep:  # blocks whose gradient does not depend on θ have a zero Hessian
                hv = torch.autograd.grad(
                    [g[i] for i in keep],
                    theta,
                    grad_outputs=[vs[i] for i in keep],
                    allow_unused=True,
                    is_grads_batched=batched,
                )
        lead = (vs[0].shape[0],) if batched else ()
        return tuple(
            torch.zeros(*lead, *t.shape, dtype=t.dtype, device=t.device) if h is None else h.detach()
            for h, t in zip(hv, self.theta, strict=True)
        )

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` of length :attr:`dim`."""
        if v.shape != (self.dim,):
            raise ValueError(f"expected a vector of shape ({self.dim},), got {tuple(v.shape)}")
        vs = self.split(v.to(self.device))
        self.n_matvec += 1
        if self.mode == "reverse-over-reverse":
            return self.flatten(self._hvp_reverse(vs))
        if self.mode == "forward-over-reverse":
            return self.flatten(self._hvp_forward(vs))
        try:  # auto: probe forward-over-reverse, fall back once
            out = self._hvp_forward(vs)
            self.mode = "forward-over-reverse"
            return self.flatten(out)
        except Exception as err:  # any failure of the torch.func path triggers the fallback
            if _is_oom(err):
                raise
            try:
                out = self._hvp_reverse(vs)
            except Exception:
                raise err from None
            self.mode = "reverse-over-reverse"
            self.fallback_reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            return self.flatten(out)

    __matmul__ = matvec

    def matmat(self, vs: torch.Tensor, block_size: int = 1) -> torch.Tensor:
        """``H V`` for a ``dim × k`` matrix, ``block_size`` columns per pass.

        Blocks of columns go through one vectorised pass (:func:`torch.func.vmap` over the
        forward-over-reverse product, or ``is_grads_batched`` double backward), which removes the per-call
        overhead but multiplies activation memory by the block size; ``block_size=1`` is the plain column
        loop.  If a model does not support vectorisation the operator falls back to the loop for good
        (``batched`` becomes False).
        """
        if vs.dim() != 2 or vs.shape[0] != self.dim:
            raise ValueError(f"expected a matrix of shape ({self.dim}, k), got {tuple(vs.shape)}")
        cols: list[torch.Tensor] = []
        start = 0
        if self.mode == "auto" and vs.shape[1] > 0:  # resolve the mode on one column first
            cols.append(self.matvec(vs[:, 0])[:, None])
            start = 1
        for j in range(start, vs.shape[1], max(1, block_size)):
            block = vs[:, j : j + max(1, block_size)].to(self.device)
            if block.shape[1] > 1 and self.batched:
                try:
                    cols.append(self._matmat_batched(block))
                    self.n_matvec += block.shape[1]
                    continue
                except Exception as err:
                    if _is_oom(err):
                        raise
                    self.batched = False
            cols.extend(self.matvec(block[:, i])[:, None] for i in range(block.shape[1]))
        if not cols:
            return torch.zeros(self.dim, 0, dtype=self.dtype, device=self.device)
        return torch.cat(cols, dim=1)

    def _matmat_batched(self, block: torch.Tensor) -> torch.Tensor:
        k = block.shape[1]
        rows = block.T.contiguous()
        if self.mode == "forward-over-reverse":
            hv = vmap(lambda v: self._hvp_forward(self.split(v)))(rows)
        else:
            parts = torch.split(rows, self.numels, dim=1)
            vs = tuple(p.reshape(k, *t.shape).to(t.dtype) for p, t in zip(parts, self.theta, strict=True))
            hv = self._hvp_reverse(vs, batched=True)
        return torch.cat([h.reshape(k, -1).to(self.dtype) for h in hv], dim=1).T

    def to_dense(self, block_size: int = 64) -> torch.Tensor:
        """The full ``dim × dim`` Hessian (tests and tiny models only)."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return self.matmat(eye, block_size=block_size)
