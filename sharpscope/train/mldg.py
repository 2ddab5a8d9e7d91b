"""First-order meta-learning domain generalisation (MLDG).

MLDG (Li et al. 2018, AAAI) simulates domain shift inside every training step: the source domains are split
into meta-train and meta-test domains, a virtual inner step adapts the weights on meta-train and the adapted
weights must also do well on meta-test.  The first-order variant used here (as in Laakkonen et al. 2025, who
combine it with LoRA for speech deepfake detection) drops the second-order terms:

    g_tr = ∇L_tr(w)
    w'   = w − α · g_tr                       (inner SGD step, α = ``inner_lr``)
    g    = g_tr + β · ∇L_te(w')               (meta-test gradient taken at w', applied at w)
    w   ← outer optimizer step at w with gradient g

Only the parameters the optimizer owns move (so LoRA-only training adapts the adapters and the back end, full
fine-tuning adapts everything).  Batch-norm running statistics are updated by the meta-train pass only.

Domains
-------
Domains are the groups of one manifest column (default ``attack``).  In anti-spoofing manifests that column
names the spoofing attack, and bona-fide rows carry no domain (``-``, ``bonafide`` or empty).  Bona-fide rows
that *do* carry a value (e.g. for ``codec`` or ``dataset`` domains) stay in their own domain.  The others are
distributed across the domains so that every domain holds both classes:

* ``split`` (default) -- the bona-fide rows are shuffled (seeded) and dealt round-robin to the domains in
  sorted-name order: each bona-fide utterance belongs to exactly one domain, and the meta-train and meta-test
  batches of a step never share one;
* ``shared`` -- every domain holds all of them (meta-train and meta-test batches may then share bona-fide
  utterances).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import SpecError
from .sam import WrappedOptimizer, frozen_bn_stats

NO_DOMAIN = {"", "-", "nan", "none", "bonafide", "bona-fide", "bona_fide"}


def assign_domains(
    manifest: pd.DataFrame, column: str = "attack", bonafide: str = "split", seed: int = 0
) -> dict[str, np.ndarray]:
    """Row positions (0-based, sorted) of each domain of ``manifest`` (see the module docstring)."""
    if column not in manifest.columns:
        raise SpecError(
            f"mldg.domain_column {column!r} is not a column of the training manifest; "
            f"available: {', '.join(map(str, manifest.columns))}"
        )
    if bonafide not in ("split", "shared"):
        raise SpecError(f"bad value mldg.bonafide={bonafide!r}; choose one of split, shared")
    values = ["" if pd.isna(v) else str(v).strip() for v in manifest[column]]
    labels = [str(v) for v in manifest["label"]]
    groups: dict[str, list[int]] = {}
    pool: list[int] = []
    for i, (v, lab) in enumerate(zip(values, labels, strict=True)):
        if v.lower() in NO_DOMAIN:
            if lab != "bonafide":
                raise SpecError(
                    f"training manifest row {i + 1}: spoof utterance with no {column!r} value; "
                    f"fill the column or choose another mldg.domain_column"
                )
            pool.append(i)
        else:
            groups.setdefault(v, []).append(i)
    names = sorted(groups)
    if len(names) < 2:
        raise SpecError(
            f"MLDG needs at least 2 source domains in column {column!r}, found {len(names)}; "
            "choose another mldg.domain_column or drop the mldg section"
        )
    if pool:
        if bonafide == "shared":
            for n in names:
                groups[n].extend(pool)
        else:
            order = np.random.default_rng(seed).permutation(len(pool))
            for k, j in enumerate(order):
                groups[names[k % len(names)]].append(pool[j])
    return {n: np.array(sorted(groups[n]), dtype=np.int64) for n in names}


@dataclass(frozen=True)
class MetaSplit:
    meta_train: tuple[str, ...]
    meta_test: tuple[str, ...]


def split_domains(names: list[str], n_meta_test: int, rng: np.random.Generator) -> MetaSplit:
    """Seeded split of the source domains: ``n_meta_test`` held out as meta-test, the rest meta-train."""
    if not 1 <= n_meta_test < len(names):
        raise SpecError(
            f"bad value mldg.n_meta_test={n_meta_test}; it must leave at least one meta-train domain "
            f"(there are {len(names)} domains)"
        )
    perm = rng.permutation(len(names))
    test = tuple(sorted(names[i] for i in perm[:n_meta_test]))
    train = tuple(sorted(names[i] for i in perm[n_meta_test:]))
    return MetaSplit(train, test)


def sample_rows(
    domains: dict[str, np.ndarray], names: tuple[str, ...], batch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """``batch_size`` distinct rows drawn uniformly from the union of ``names`` (all of them when fewer)."""
    pool = np.unique(np.concatenate([domains[n] for n in names]))
    k = min(batch_size, len(pool))
    return np.sort(rng.choice(pool, size=k, replace=False))


class MLDG(WrappedOptimizer):
    """First-order MLDG step around an outer optimizer (any ``torch.optim.Optimizer``).

    ``step(train_closure, test_closure)``: each closure computes and returns a scalar loss (forward pass
    only) on the meta-train / meta-test batch.  Returns ``(L_tr(w), L_te(w'))``.
    """

    def __init__(
        self, model: nn.Module, base: torch.optim.Optimizer, inner_lr: float = 1e-3, beta: float = 1.0
    ):
        if inner_lr <= 0:
            raise ValueError(f"MLDG inner_lr must be > 0, got {inner_lr}")
        if beta < 0:
            raise ValueError(f"MLDG beta must be >= 0, got {beta}")
        self.model = model
        self.base = base
        self.inner_lr = inner_lr
        self.beta = beta

    def step(
        self, train_closure: Callable[[], torch.Tensor], test_closure: Callable[[], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        params = [p for g in self.base.param_groups for p in g["params"]]
        self.base.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss_tr = train_closure()
            loss_tr.backward()
        g_tr = [None if p.grad is None else p.grad.detach().clone() for p in params]
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g in zip(params, g_tr, strict=True):
                if g is not None:
                    p.sub_(g, alpha=self.inner_lr)
        self.base.zero_grad(set_to_none=True)
        try:
            with frozen_bn_stats(self.model), torch.enable_grad():
                loss_te = test_closure()
                loss_te.backward()
            g_te = [None if p.grad is None else p.grad.detach().clone() for p in params]
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
        for p, a, b in zip(params, g_tr, g_te, strict=True):
            if a is None and b is None:
                p.grad = None
            elif b is None:
                p.grad = a
            elif a is None:
                p.grad = b * self.beta
            else:
                p.grad = a + self.beta * b
        self.base.step()
        return loss_tr.detach(), loss_te.detach()
