"""Loss-landscape slices along filter-normalised random directions (``landscape``).

Li, Xu, Taylor, Studer & Goldstein (2018), "Visualizing the loss landscape of neural nets": plot
L(w + α·d₁) (1-D) or L(w + α·d₁ + β·d₂) (2-D) along random Gaussian directions whose every *filter* is
rescaled to the norm of the matching filter of w, so that directions are comparable across layers and across
networks whose weights differ in scale.

Conventions implemented here:

* A filter is a slice along the **first dimension** of a parameter with ≥ 2 dimensions (an output unit of a
  linear layer, an output channel of a convolution): d[i] ← d[i] / ‖d[i]‖ · ‖w[i]‖ (1e-10 added to ‖d[i]‖).
* Parameters with ≤ 1 dimension (biases, batch/layer-norm scales and shifts, scalar gains) get a **zero**
  direction -- the paper's "ignore biasbn" option -- so they stay at their trained values along the slice.
* The directions are drawn from a CPU generator seeded with ``seed`` (same directions on any device;
  :func:`make_directions` reproduces them); 2-D slices use pairs of independent directions (nearly
  orthogonal in high dimension, as in the paper).  Directions are made one group at a time, so memory is
  the scoped parameters plus ``dims`` directions whatever ``n_directions``.
* The evaluation subset is fixed: every grid point is evaluated on all the batches given, without
  gradient, with the model in eval mode.  The loss at a grid point is the size-weighted mean of the batch
  losses.  For ``kl-to-clean`` the clean logits are computed once at w.
* ``value`` (the scalar summary): the mean over directions of the average loss increase at distance
  ``radius`` (default: the largest |α|) on both sides, ½[L(w + r·d) + L(w − r·d)] − L(w); in 2-D over both
  directions of every pair.  For a quadratic bowl this is ½ r² dᵀHd, a filter-normalised curvature.  Per batch
  the same quantity is computed on that batch's losses, which gives the standard error over batches.
* A batch with a NaN/inf loss at any evaluated point is non-finite: under the default policy ``drop`` it is
  excluded from curves and value (kept in ``per_batch`` with ``finite=False``, counted in ``n_nonfinite``);
  ``error`` stops with one line, ``cap`` enters its value at the largest finite batch value (curves still
  use finite batches only).  ``n_utts`` / ``n_batches`` count every batch processed, finite or not.
* ``extra`` (JSON-serialisable lists, what the plots use): ``alphas``, ``loss0``, ``radius``,
  ``direction_norm_ratio`` (‖d‖/‖w‖ over the scope); 1-D: ``curves`` (n_directions × n_alphas), ``mean`` and
  ``std`` across directions (sample std, zeros for one direction); 2-D: ``grids``
  (n_directions × n_alphas × n_alphas, index [k][i][j] ↔ (α_i, β_j)), ``grid`` (their mean) and ``grid_std``.

The model's parameters and buffers are restored bit-for-bit afterwards (also on errors).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SpecError
from ..losses import Loss
from ..models.outputs import forward_logits
from .base import (
    BatchDriver,
    Cost,
    DriverSettings,
    EstimatorBase,
    SharpnessResult,
    batch_lengths,
    preserved,
    settings_dict,
)
from .hvp import batch_tensors, check_labels, model_device
from .scope import resolve_scope

Direction = dict[str, torch.Tensor]


def _default_alphas() -> list[float]:
    return [round(float(a), 10) for a in np.linspace(-1.0, 1.0, 21)]


@dataclass
class LandscapeSettings(DriverSettings):
    """Settings of :class:`Landscape` on top of :class:`~sharpscope.sharpness.base.DriverSettings`: grid
    ``alphas`` (both axes in 2-D), ``dims`` 1 or 2, ``n_directions`` (directions in 1-D, direction pairs in
    2-D), ``radius`` of the summary (default max |α|).  ``nonfinite`` defaults to ``drop`` here: a slice
    through a region where the loss overflows is data, not an error."""

    alphas: list[float] = field(default_factory=_default_alphas)
    dims: int = 1
    n_directions: int = 3
    radius: float | None = None
    nonfinite: str = "drop"

    def validate(self) -> None:
        super().validate()
        try:
            self.alphas = [float(a) for a in self.alphas]
        except (TypeError, ValueError):
            raise SpecError(f"landscape alphas must be a list of numbers, got {self.alphas!r}") from None
        if not self.alphas or not all(math.isfinite(a) for a in self.alphas):
            raise SpecError(
                f"landscape alphas must be a non-empty list of finite numbers, got {self.alphas!r}"
            )
        if self.dims not in (1, 2):
            raise SpecError(f"landscape dims must be 1 or 2, got {self.dims!r}")
        if int(self.n_directions) < 1:
            raise SpecError(f"landscape n_directions must be >= 1, got {self.n_directions!r}")
        self.n_directions = int(self.n_directions)
        if self.radius is None:
            self.radius = max(abs(a) for a in self.alphas)
        self.radius = float(self.radius)
        if not (math.isfinite(self.radius) and self.radius >= 0):
            raise SpecError(f"landscape radius must be a finite number >= 0, got {self.radius!r}")


# ---- directions -------------------------------------------------------------------------------------------


def filter_normalized_direction(params: Mapping[str, torch.Tensor], gen: torch.Generator) -> Direction:
    """One Gaussian direction, filter-normalised to ``params`` (module docstring); 1-D params get zeros."""
    out: Direction = {}
    for name, w in params.items():
        w = w.detach()
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        wf = w.double().cpu().reshape(w.shape[0], -1)
        df = d.reshape(w.shape[0], -1)
        scale = wf.norm(dim=1, keepdim=True) / (df.norm(dim=1, keepdim=True) + 1e-10)
        out[name] = (df * scale).reshape(w.shape).to(device=w.device, dtype=w.dtype)
    return out


def make_directions(
    params: Mapping[str, torch.Tensor], n_directions: int, dims: int, seed: int
) -> list[list[Direction]]:
    """``n_directions`` groups of ``dims`` filter-normalised directions, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return [[filter_normalized_direction(params, gen) for _ in range(dims)] for _ in range(n_directions)]


def _norm_ratio(d: Direction, params: Mapping[str, torch.Tensor]) -> float:
    dn = math.sqrt(sum(float(v.double().pow(2).sum()) for v in d.values()))
    wn = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params.values()))
    return dn / wn if wn > 0 else math.nan


# ---- the estimator ----------------------------------------------------------------------------------------


class Landscape(EstimatorBase):
    """``landscape``: 1-D / 2-D loss slices along filter-normalised random directions (Li et al. 2018).

    Constructor: ``Landscape(LandscapeSettings(...), **overrides)`` or ``Landscape(**settings)``.  Runs batch
    by batch like every measure (budget / CI stopping, non-finite policy): the directions are regenerated from
    ``seed`` for every batch (the same directions on every batch, memory for ``dims`` of them at a time).
    """

    name = "landscape"
    Settings = LandscapeSettings
    settings: LandscapeSettings

    def estimate(self, model: nn.Module, batches: Iterable[Any], loss: Loss) -> SharpnessResult:
        s = self.settings
        cost = Cost()
        driver = BatchDriver(self.name, s)
        alphas, r = s.alphas, float(s.radius)  # type: ignore[arg-type]  # validate() set it
        rows: list[dict[str, Any]] = []
        grids: list[np.ndarray] = []  # per batch: n_dir × n_alpha (× n_alpha)
        ratios: list[float] = []
        with preserved(model):
            net, params = resolve_scope(model, s.scope)  # net is a merged copy for lora-merged
            net.eval()
            device = model_device(net)
            w0 = {n: p.detach().clone() for n, p in params.items()}
            for i, batch in enumerate(batches):
                x, y, size = batch_tensors(batch, device)
                lens = batch_lengths(batch)
                check_labels(loss, y, i)
                with torch.no_grad():
                    logits = forward_logits(net, x, lens)
                cost.forward += 1
                clean = logits if loss.needs_clean else None
                loss0 = float(loss(logits, y, clean))

                def loss_at(
                    group: list[Direction], a: float, b: float = 0.0,
                    x=x, y=y, lens=lens, clean=clean, loss0=loss0,
                ) -> float:  # fmt: skip
                    """This batch's loss at w + a·d₁ + b·d₂ (no gradient)."""
                    if a == 0.0 and b == 0.0:
                        return loss0
                    with torch.no_grad():
                        for n, p in params.items():
                            new = w0[n].clone()
                            if a != 0.0:
                                new.add_(group[0][n], alpha=a)
                            if b != 0.0:
                                new.add_(group[1][n], alpha=b)
                            p.copy_(new)
                        z = forward_logits(net, x, lens)
                        cost.forward += 1
                        return float(loss(z, y, clean))

                gen = torch.Generator().manual_seed(int(s.seed))  # same stream as make_directions
                per, summary = [], []
                for _ in range(s.n_directions):  # one direction group at a time
                    group = [filter_normalized_direction(w0, gen) for _ in range(s.dims)]
                    if i == 0:
                        ratios.extend(_norm_ratio(d, w0) for d in group)
                    memo: dict[tuple[float, float], float] = {}

                    def at(a: float, b: float = 0.0, group=group, memo=memo) -> float:
                        if (a, b) not in memo:
                            memo[(a, b)] = loss_at(group, a, b)
                        return memo[(a, b)]

                    if s.dims == 1:
                        per.append(np.array([at(a) for a in alphas]))
                        summary.append((at(r) + at(-r)) / 2 - loss0)
                    else:
                        per.append(np.array([[at(a, b) for b in alphas] for a in alphas]))
                        summary.append((at(r, 0.0) + at(-r, 0.0) + at(0.0, r) + at(0.0, -r)) / 4 - loss0)
                with torch.no_grad():  # back to w before the next batch's clean pass
                    for n, p in params.items():
                        p.copy_(w0[n])
                grid = np.stack(per)
                value = float(np.mean(summary))
                finite = math.isfinite(loss0) and math.isfinite(value) and bool(np.isfinite(grid).all())
                row = {"index": i, "size": size, "loss": loss0, "clean_loss": loss0, "value": value}
                row["finite"] = finite
                rows.append(row)
                grids.append(grid)
                driver.check(row, batch)
                driver.advance(size, rows)
                if driver.done:
                    break
        mean, se, ci, used = driver.summarise(rows)
        extra: dict[str, Any] = {
            "alphas": list(alphas),
            "radius": r,
            "dims": s.dims,
            "direction_norm_ratio": ratios,
        }
        ok = [k for k, row in enumerate(rows) if row["finite"]]  # curves: finite batches only (none capped)
        if ok:
            sizes = np.array([rows[k]["size"] for k in ok], dtype=float)
            wts = sizes / sizes.sum()
            per_arr = np.stack([grids[k] for k in ok], axis=1)  # n_dir × n_ok × n_alpha (× n_alpha)
            curves = np.tensordot(per_arr, wts, axes=([1], [0]))  # n_dir × n_alpha (× n_alpha)
            extra["loss0"] = float(np.dot(np.array([rows[k]["loss"] for k in ok]), wts))
            std = curves.std(axis=0, ddof=1) if s.n_directions > 1 else np.zeros_like(curves[0])
            if s.dims == 1:
                extra.update(curves=curves.tolist(), mean=curves.mean(axis=0).tolist(), std=std.tolist())
            else:
                extra.update(grids=curves.tolist(), grid=curves.mean(axis=0).tolist(), grid_std=std.tolist())
        else:
            extra["loss0"] = math.nan
        return SharpnessResult(
            measure=self.name,
            value=mean,
            stderr=se,
            ci95=ci,
            per_batch=rows,
            cost=cost.as_dict(),
            settings={**settings_dict(s), "loss": loss.name},
            extra={**extra, **driver.extra(rows)},
            **driver.counts(rows),
        )
