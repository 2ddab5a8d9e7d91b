"""Average-case (adaptive) sharpness: the expected loss increase under Gaussian weight noise.

Per batch ``B``, with ``K`` seeded samples (Andriushchenko et al. 2023, average-case adaptive sharpness):

    δ_k = σ · s ⊙ z_k,   z_k ~ N(0, I),   s = |w| (adaptive) or 1,   σ = ρ
    value_B = (1/K) Σ_k L_B(w + δ_k) − L_B(w)

``σ = ρ``: the ``rho`` setting is the standard deviation of the (relative, when adaptive) noise, so one
``--rho`` flag serves all measures; for a quadratic ``L = ½ wᵀAw`` at its minimum the non-adaptive value has
expectation ``½ σ² tr A``.  The noise of batch ``b`` (and parameter group ``j`` of a per-layer breakdown)
comes from its own generator seeded by ``(seed, b, j)``, drawn sample by sample in parameter order, so results
do not depend on chunking, vectorisation or how many batches ran before.

Vectorisation: ``vectorize="on"`` evaluates ``chunk`` samples per call with :func:`torch.func.vmap` over
:func:`torch.func.functional_call` (the batch is shared, the weights are batched); ``"off"`` loops;
``"auto"`` vectorises on accelerators and loops on CPU, and falls back to the loop if a model has an
operation vmap cannot batch.  On 2 CPU cores (``benchmarks/bench_sharpness.py``) vmap is slower for the
convolution-heavy AASIST and faster for the matmul-heavy wav2vec 2.0; use ``"on"`` for SSL models on CPU.
Vectorised and looped values agree to float rounding (~1e-6 relative).

All losses of :meth:`estimate_many` share the perturbed forwards (the noise does not depend on the loss).
A sample with a non-finite loss marks the batch non-finite.  Cost per batch: 1 clean forward + K forwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SharpscopeError
from .engine import BatchProblem, BatchwiseEstimator, CommonSettings, adaptive_scale

VECTORIZE = ("auto", "on", "off")


@dataclass
class AverageCaseSettings(CommonSettings):
    """``rho`` = σ of the noise; ``adaptive`` scales it by ``|w|``; ``samples`` = K per batch;
    ``vectorize`` auto|on|off and ``chunk`` samples per vmapped call."""

    rho: float = 0.05
    adaptive: bool = True
    samples: int = 16
    vectorize: str = "auto"
    chunk: int = 8

    def validate(self) -> None:
        super().validate()
        if self.vectorize not in VECTORIZE:
            raise SharpscopeError(f"unknown vectorize {self.vectorize!r}; use one of {', '.join(VECTORIZE)}")
        if not self.rho > 0 or self.samples < 1 or self.chunk < 1:
            raise SharpscopeError(
                f"average-case needs rho > 0, samples >= 1, chunk >= 1 (got rho={self.rho}, "
                f"samples={self.samples}, chunk={self.chunk})"
            )


def gaussian_perturbations(
    w: dict[str, torch.Tensor],
    names: list[str],
    sigma: float,
    scale: dict | None,
    k: int,
    gen: torch.Generator,
) -> list[dict[str, torch.Tensor]]:
    """``k`` draws of ``δ = σ · s ⊙ z`` from ``gen`` (sample-major, parameters in ``names`` order)."""
    out = []
    for _ in range(k):
        d = {}
        for n in names:
            z = torch.randn(w[n].shape, generator=gen, device=w[n].device, dtype=w[n].dtype)
            d[n] = sigma * z if scale is None else sigma * scale[n] * z
        out.append(d)
    return out


class AverageCase(BatchwiseEstimator):
    """Average-case (adaptive) sharpness under Gaussian noise (see the module docstring)."""

    name = "average-case"
    Settings = AverageCaseSettings
    needs_clean_grad = False

    def __init__(self, settings: Any = None, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        self._vmap_failed: str | None = None

    def _use_vmap(self, device: torch.device) -> bool:
        v = self.settings.vectorize
        if v == "off" or self._vmap_failed is not None:
            return False
        return v == "on" or device.type != "cpu"

    def batch_values(
        self, pb: BatchProblem, names: list[str], seed: int
    ) -> list[tuple[float, dict[str, Any]]]:
        s = self.settings
        n_loss = len(pb.losses)
        scale = adaptive_scale(pb.w, names, s.adaptive)
        gen = torch.Generator(device=pb.fwd.device)
        gen.manual_seed(seed)
        samples: list[list[float]] = []  # samples[k][i]
        done = 0
        while done < s.samples:
            c = min(s.chunk, s.samples - done)
            deltas = gaussian_perturbations(pb.w, names, s.rho, scale, c, gen)
            if self._use_vmap(pb.fwd.device):
                try:
                    stacked = {n: torch.stack([d[n] for d in deltas]) for n in names}
                    samples.extend(pb.values_all_batched(stacked))
                    done += c
                    continue
                except (RuntimeError, NotImplementedError, ValueError) as exc:
                    if s.vectorize == "on":
                        raise
                    self._vmap_failed = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            samples.extend(pb.values_all(d) for d in deltas)
            done += c
        out = []
        for i in range(n_loss):
            vals = [row[i] for row in samples]
            n_bad = sum(1 for v in vals if not math.isfinite(v))
            mean = sum(vals) / len(vals)
            value = mean - pb.clean_loss[i] if n_bad == 0 else float("nan")
            info = {"mean_perturbed_loss": mean, "n_nonfinite_samples": n_bad, "sample_losses": vals}
            if n_bad == 0:
                parts = [log[i] for log in pb.parts_log]
                info["per_class"] = {
                    c: sum(p[c] for p in parts) / len(parts) - pb.clean_parts[i][c] for c in pb.clean_parts[i]
                }
            if self._vmap_failed is not None:
                info["vmap_fallback"] = self._vmap_failed
            out.append((value, info))
        return out
