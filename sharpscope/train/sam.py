"""SAM and ASAM as wrappers around an ordinary PyTorch optimizer.

Sharpness-aware minimisation (Foret et al. 2021, ICLR) takes two forward/backward passes per step:

1. ``g = ∇L_B(w)`` at the current weights;
2. ascend to ``w + ε`` with ``ε = ρ · g / ‖g‖₂`` (one global norm over every parameter that received a
   gradient);
3. ``g_SAM = ∇L_B(w + ε)``; return to ``w`` and let the base optimizer step with ``g_SAM``.

Adaptive SAM (ASAM, Kwon et al. 2021, ICML) makes the neighbourhood scale-invariant with the normalisation
operator ``T_w = |w| + η`` (element-wise): ``ε = ρ · T_w² g / ‖T_w g‖₂``.  With ``η = 0`` this is the
``adaptive=True`` form of the widely used SAM re-implementation that SAM-AntiSpoofing (Huang et al. 2025)
trains with (``ε = ρ · w⊙w⊙g / ‖|w|⊙g‖₂``).  ``1e-12`` is added to every norm.  The step itself is
:func:`sharpscope.perturb.sam_perturbation`, the one m-sharpness measures with.

Two details matter for spoofing countermeasures, which are full of batch normalisation and dropout:

* batch-norm running statistics are updated by the first pass only -- they are saved before and restored
  after the second pass (bit-exact, also ``num_batches_tracked``);
* by default the second pass replays the first pass's random-number state, so it sees the same dropout masks
  (the perturbation was computed for that sub-network) and the random stream after a SAM step is the one an
  ERM step would leave.  Together these make ``ρ = 0`` reproduce the base optimizer bit for bit.

The loss closure only computes the loss (a forward pass returning a scalar tensor); the wrapper clears the
gradients and calls ``backward`` itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..perturb import NORM_EPS, sam_perturbation  # noqa: F401  (one ascent step, shared with m-sharpness)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module | None) -> Iterator[None]:
    """Restore every batch-norm running statistic (mean, var, batch counter) of ``model`` on exit."""
    if model is None:
        yield
        return
    saved = []
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            saved.append((m, [None if b is None else b.detach().clone() for b in _bn_buffers(m)]))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, bufs in saved:
                for b, s in zip(_bn_buffers(m), bufs, strict=True):
                    if b is not None and s is not None:
                        b.copy_(s)


def _bn_buffers(m: _BatchNorm) -> list[torch.Tensor | None]:
    return [m.running_mean, m.running_var, m.num_batches_tracked]


@contextlib.contextmanager
def replayed_rng(devices: set[torch.device], enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Yield a ``rewind()`` that resets the torch RNGs (CPU, and CUDA where used) to their state on entry."""
    if not enabled:
        yield lambda: None
        return
    cpu = torch.get_rng_state()
    cuda = {d: torch.cuda.get_rng_state(d) for d in devices if d.type == "cuda"}

    def rewind() -> None:
        torch.set_rng_state(cpu)
        for d, s in cuda.items():
            torch.cuda.set_rng_state(s, d)

    yield rewind


class WrappedOptimizer:
    """An optimizer that wraps ``self.base``: parameter groups, gradients and state are the base's (the
    wrappers keep no state between steps), so schedulers attach to ``base`` and checkpoints hold its state."""

    base: torch.optim.Optimizer

    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.base.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)


class SAM(WrappedOptimizer):
    """Wrap ``base`` (any ``torch.optim.Optimizer``) into a SAM / ASAM optimizer.

    ``step(closure)`` runs both passes and the base step and returns the loss at the unperturbed weights.
    Learning-rate schedulers attach to ``base``.  ``state_dict``/``load_state_dict`` are the base
    optimizer's (SAM itself keeps no state between steps).
    """

    def __init__(
        self,
        model: nn.Module,
        base: torch.optim.Optimizer,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        same_dropout: bool = True,
    ) -> None:
        if rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        if eta < 0:
            raise ValueError(f"ASAM eta must be >= 0, got {eta}")
        self.model = model
        self.base = base
        self.rho = rho
        self.adaptive = adaptive
        self.eta = eta
        self.same_dropout = same_dropout

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        params = self._params()
        devices = {p.device for p in params}
        with replayed_rng(devices, self.same_dropout) as rewind:
            self.base.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = closure()
                loss.backward()
            with_grad = [p for p in params if p.grad is not None]
            grads = [p.grad for p in params if p.grad is not None]
            saved = [p.detach().clone() for p in with_grad]
            eps = sam_perturbation(with_grad, grads, self.rho, self.adaptive, self.eta)
            with torch.no_grad():
                for p, e in zip(with_grad, eps, strict=True):
                    p.add_(e)
            self.base.zero_grad(set_to_none=True)
            rewind()
            try:
                with frozen_bn_stats(self.model), torch.enable_grad():
                    closure().backward()
            finally:
                with torch.no_grad():
                    for p, s in zip(with_grad, saved, strict=True):
                        p.copy_(s)
        self.base.step()
        return loss.detach()
