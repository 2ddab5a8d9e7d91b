"""The batchwise machinery shared by the loss-based estimators (m-sharpness, worst-case, average-case).

Every loss-based sharpness measure has the same outer shape: for each batch ``B`` compute the clean logits and
loss at the weights ``w``, then the loss at one or more perturbed weights ``w + δ``, and summarise a per-batch
value by a size-weighted mean over batches.  This module does that outer part once:

* :class:`FunctionalForward` evaluates the model at ``w + δ`` through :func:`torch.func.functional_call` --
  the module's own parameters are never written to, so nothing has to be "undone" after a perturbation (the
  :func:`~sharpscope.sharpness.base.preserved` context still guarantees a bit-exact model afterwards, also for
  buffers a forward might touch).  It also evaluates a chunk of perturbations at once with
  :func:`torch.func.vmap`, runs under bf16 autocast on request, and reuses the output of a frozen prefix when
  the model offers a split (see below).
* :class:`BatchProblem` holds one batch: clean logits (the ones scoring needs), clean loss values and clean
  gradients per loss (one forward shared by all losses), and value / value-and-gradient calls at ``w + δ``.
* :class:`BatchwiseEstimator` is the base class: settings dataclass, :meth:`~BatchwiseEstimator.estimate`,
  :meth:`~BatchwiseEstimator.estimate_many` (several losses on the same batches, sharing the clean forward
  and, for average-case, the perturbed forwards too), and a streaming :meth:`~BatchwiseEstimator.session`
  that the runner uses to score and estimate in one pass.  Sampling statistics (budget, relative CI width with
  sequential stopping, bootstrap CI) and NaN/inf handling live here.

Frozen prefix cache: a model may define ``frozen_prefix_split(names: set[str]) -> (prefix, suffix) | None``
where ``model(x) == suffix(prefix(x))`` and every perturbed parameter lives in ``suffix``; the prefix output
is then computed once per batch (no grad) and all clean/perturbed passes run the suffix only.  The SSL models
define it (front end = prefix); AASIST, whose every layer is perturbed, runs whole.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SharpscopeError
from ..models.outputs import length_groups, logits_of, output_layout
from .base import (
    Cost,
    Loss,
    SharpnessResult,
    apply_nonfinite,
    batch_lengths,
    check_nonfinite,
    check_nonfinite_policy,
    make_loss,
    preserved,
    settings_dict,
    unpack_batch,
)
from .base import weighted_summary as _weighted_summary

PRECISIONS = ("fp32", "bf16")
NORM_EPS = 1e-12  # added to every global norm (SAM / SAM-AntiSpoofing reference value)

Hook = Callable[[Any, torch.Tensor], None]


@dataclass
class CommonSettings:
    """Settings every batchwise estimator shares.

    * ``scope`` -- parameters perturbed: ``all``, ``trainable``, ``regex:PATTERN`` or ``lora-merged``
      (see :mod:`sharpscope.sharpness.scope`).
    * ``per_layer`` -- 0: off; ``d >= 1``: additionally perturb each group of parameters sharing the first
      ``d`` components of their name (1 = top-level modules) on its own and report one value per group.
    * ``budget`` -- stop after at least this many utterances (whole batches are used).
    * ``ci_width`` -- stop as soon as the relative half-width of the bootstrap 95 % CI,
      ``(hi - lo) / 2 / |value|``, is at most this, once ``min_batches`` finite batches are in (sequential
      stopping makes the final CI slightly optimistic; pair it with ``shuffled``/``balanced`` batch order).
    * ``seed`` -- seeds every random draw (noise, random starts, bootstrap).
    * ``precision`` -- ``fp32`` or ``bf16`` (autocast on the model's device; losses are computed in fp32).
    * ``n_boot`` -- bootstrap resamples over batches for the CI.
    * ``nonfinite`` -- what a NaN/inf batch value does: ``error`` (stop with one line naming the batch),
      ``drop`` (exclude it, count it in ``n_nonfinite``) or ``cap`` (a perturbed divergence enters at the
      largest finite batch value; see :func:`~sharpscope.sharpness.base.apply_nonfinite`).
    """

    scope: str = "all"
    per_layer: int = 0
    budget: int | None = None
    ci_width: float | None = None
    min_batches: int = 5
    seed: int = 0
    precision: str = "fp32"
    n_boot: int = 1000
    nonfinite: str = "error"

    def validate(self) -> None:
        check_nonfinite_policy(self.nonfinite)
        if self.precision not in PRECISIONS:
            raise SharpscopeError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.budget is not None and self.budget < 1:
            raise SharpscopeError(f"budget must be a positive number of utterances, got {self.budget}")
        if self.ci_width is not None and not self.ci_width > 0:
            raise SharpscopeError(f"ci_width must be a positive relative half-width, got {self.ci_width}")
        if self.budget is not None and self.ci_width is not None:
            raise SharpscopeError("give either budget or ci_width, not both")
        if self.min_batches < 2:
            raise SharpscopeError(f"min_batches must be at least 2 for a CI, got {self.min_batches}")
        if int(self.per_layer) < 0:
            raise SharpscopeError(f"per_layer must be 0 (off) or a name depth >= 1, got {self.per_layer}")


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of integers (numpy SeedSequence): independent streams per batch/group."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def global_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """‖concat(tensors)‖₂ computed as the norm of the per-tensor norms (the SAM reference formula)."""
    return torch.norm(torch.stack([t.norm(p=2) for t in tensors]), p=2)


def _is_finite(v: float) -> bool:
    return bool(math.isfinite(v))


# ---- functional forward ------------------------------------------------------------------------------------


class FunctionalForward:
    """Logits of ``model`` at ``w + δ`` for a dict ``δ`` over (a subset of) the scoped parameters."""

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter], precision: str = "fp32") -> None:
        self.model = model
        self.w = {n: p.detach() for n, p in params.items()}
        first = next(iter(self.w.values()))
        self.device = first.device
        self.bf16 = precision == "bf16"
        self.module: nn.Module = model
        self.rename = {n: n for n in self.w}
        self.prefix: nn.Module | None = None
        split = getattr(model, "frozen_prefix_split", None)
        if callable(split):
            parts = split(set(self.w))
            if parts is not None:
                prefix, suffix = parts
                ids = {id(p): n for n, p in suffix.named_parameters()}
                if all(id(params[n]) in ids for n in self.w):
                    self.prefix, self.module = prefix, suffix
                    self.rename = {n: ids[id(params[n])] for n in self.w}
        self.layout = output_layout(model)
        self._inp: list[tuple[torch.Tensor | None, torch.Tensor]] = []
        self._order: torch.Tensor | None = None

    @property
    def uses_prefix_cache(self) -> bool:
        return self.prefix is not None

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def set_input(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """Fix the batch input (and compute the frozen prefix once, when there is one).

        With ``lengths`` (crop ``full``) every exact-length group is its own forward, trimmed to its length
        (:mod:`sharpscope.models.outputs`), so no utterance's logits depend on its batch mates.
        """
        groups = length_groups(lengths)
        if groups is None:
            n = x.shape[-1] if lengths is None else int(lengths.max())
            parts: list[tuple[torch.Tensor | None, torch.Tensor]] = [(None, x[..., :n])]
            self._order = None
        else:
            lens = lengths.detach().cpu()  # type: ignore[union-attr]
            parts = [(idx, x[idx.to(x.device)][..., : int(lens[idx[0]])]) for idx in groups]
            order = torch.cat(groups).to(x.device)
            self._order = torch.empty_like(order)
            self._order[order] = torch.arange(len(order), device=x.device)
        if self.prefix is not None:
            with torch.no_grad(), self._autocast():
                parts = [(idx, self.prefix(inp)) for idx, inp in parts]
        self._inp = parts

    def _merge(self, outs: list[torch.Tensor], dim: int) -> torch.Tensor:
        if self._order is None:
            return outs[0]
        return torch.cat(outs, dim=dim).index_select(dim, self._order)

    def _out(self, out: Any) -> torch.Tensor:
        z = logits_of(out, self.layout)
        return z.float() if self.bf16 else z

    def __call__(self, delta: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        with self._autocast():
            if not delta:
                return self._merge([self._out(self.module(inp)) for _, inp in self._inp], 0)
            weights = {self.rename[n]: self.w[n] + d for n, d in delta.items()}
            call = torch.func.functional_call
            return self._merge([self._out(call(self.module, weights, (inp,))) for _, inp in self._inp], 0)

    def batched(self, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[c, B, C]`` for ``c`` perturbations stacked on dim 0 of each ``deltas`` entry (vmap)."""
        layout = self.layout

        def one(d: dict[str, torch.Tensor], inp: torch.Tensor) -> torch.Tensor:
            weights = {self.rename[n]: self.w[n] + t for n, t in d.items()}
            return logits_of(torch.func.functional_call(self.module, weights, (inp,)), layout)

        outs = []
        with self._autocast(), warnings.catch_warnings():
            # vmap falls back to a per-sample loop for ops without a batching rule (e.g. weight norm) and says
            # so once per call; the result is still exact, the warning is noise here.
            warnings.filterwarnings("ignore", message="There is a performance drop")
            for _, inp in self._inp:
                outs.append(torch.func.vmap(one, in_dims=(0, None), randomness="error")(deltas, inp))
        z = self._merge(outs, 1)
        return z.float() if self.bf16 else z


# ---- one batch ---------------------------------------------------------------------------------------------


class BatchProblem:
    """One batch with its losses: clean pass (shared), clean gradients, evaluations at ``w + δ``.

    ``costs[i]`` accounts the work for loss ``i`` as if it had been estimated alone (the shared clean forward
    is counted for every loss); ``shared`` counts the work actually done.
    """

    def __init__(
        self,
        fwd: FunctionalForward,
        x: torch.Tensor,
        y: torch.Tensor,
        losses: Sequence[Loss],
        costs: Sequence[Cost],
        shared: Cost,
        need_grad: bool,
        lengths: torch.Tensor | None = None,
    ) -> None:
        self.fwd, self.x, self.y, self.losses, self.costs, self.shared = (
            fwd,
            x,
            y,
            list(losses),
            costs,
            shared,
        )
        self.w = fwd.w
        self.last_parts: list[dict[str, float]] = [{} for _ in self.losses]
        self.parts_log: list[list[dict[str, float]]] = []  # per perturbation of values_all*: per loss
        fwd.set_input(x, lengths)
        self.grads: list[dict[str, torch.Tensor] | None] = [None] * len(self.losses)
        shared.forward += 1
        for c in costs:
            c.forward += 1
        if need_grad:
            zeros = {n: torch.zeros_like(w, requires_grad=True) for n, w in self.w.items()}
            with torch.enable_grad():
                logits = fwd(zeros)
                self.clean_logits = logits.detach()
                self.clean_loss = []
                for i, loss in enumerate(self.losses):
                    value = loss(logits, y, self.clean_logits)
                    self.clean_loss.append(float(value.detach()))
                    self.last_parts[i] = self.class_parts(i, logits.detach())
                    if not _is_finite(self.clean_loss[-1]):
                        continue
                    asc = loss.ascent_loss(logits, y, self.clean_logits)
                    g = torch.autograd.grad(asc, list(zeros.values()), retain_graph=True, allow_unused=True)
                    self.grads[i] = {n: gi for n, gi in zip(zeros, g, strict=True) if gi is not None}
                    self.costs[i].backward += 1
                    shared.backward += 1
            del logits
        else:
            with torch.no_grad():
                self.clean_logits = fwd(None).detach()
                self.clean_loss = [
                    float(loss(self.clean_logits, y, self.clean_logits)) for loss in self.losses
                ]
                self.last_parts = [self.class_parts(i, self.clean_logits) for i in range(len(self.losses))]
        self.clean_parts = [dict(p) for p in self.last_parts]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def loss_tensor(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        return self.losses[i](logits, self.y, self.clean_logits)

    def class_parts(self, i: int, logits: torch.Tensor) -> dict[str, float]:
        """Loss ``i`` at ``logits`` split into the sums of its per-utterance terms by class (they add up to
        the batch loss): the per-class contributions every result reports."""
        with torch.no_grad():
            terms = self.losses[i].per_utt(logits.detach(), self.y, self.clean_logits)
        if terms is None:
            return {}
        terms = terms.double()
        out = {}
        for code, name in ((1, "bonafide"), (0, "spoof"), (-1, "unlabelled")):
            mask = self.y == code
            if bool(mask.any()):
                out[name] = float(terms[mask].sum())
        return out

    def parts_delta(self, parts: dict[str, float], i: int) -> dict[str, float]:
        """Per-class contributions of a perturbed evaluation minus those at ``w``."""
        return {c: parts[c] - self.clean_parts[i][c] for c in parts}

    def value(self, i: int, delta: dict[str, torch.Tensor]) -> float:
        """Loss ``i`` at ``w + δ`` (no grad)."""
        with torch.no_grad():
            z = self.fwd(delta)
        self.costs[i].forward += 1
        self.shared.forward += 1
        self.last_parts[i] = self.class_parts(i, z)
        return float(self.loss_tensor(i, z))

    def values_all(self, delta: dict[str, torch.Tensor]) -> list[float]:
        """Every loss at ``w + δ`` from one forward (used when δ does not depend on the loss)."""
        with torch.no_grad():
            z = self.fwd(delta)
        self.shared.forward += 1
        out = []
        for i in range(len(self.losses)):
            self.costs[i].forward += 1
            out.append(float(self.loss_tensor(i, z)))
        self.parts_log.append([self.class_parts(i, z) for i in range(len(self.losses))])
        return out

    def values_all_batched(self, deltas: dict[str, torch.Tensor]) -> list[list[float]]:
        """``out[k][i]``: loss ``i`` at the ``k``-th stacked perturbation (one vmapped forward)."""
        with torch.no_grad():
            z = self.fwd.batched(deltas)
        c = int(z.shape[0])
        self.shared.forward += c
        for i in range(len(self.losses)):
            self.costs[i].forward += c
        for k in range(c):
            self.parts_log.append([self.class_parts(i, z[k]) for i in range(len(self.losses))])
        return [[float(self.loss_tensor(i, z[k])) for i in range(len(self.losses))] for k in range(c)]

    def value_and_grad(self, i: int, delta: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
        """Loss ``i`` at ``w + δ`` and its gradient w.r.t. δ (zeros for parameters the loss does not use)."""
        d = {n: t.detach().requires_grad_(True) for n, t in delta.items()}
        with torch.enable_grad():
            z = self.fwd(d)
            value = self.loss_tensor(i, z)
            g = torch.autograd.grad(value, list(d.values()), allow_unused=True)
        self.last_parts[i] = self.class_parts(i, z)
        self.costs[i].forward += 1
        self.costs[i].backward += 1
        self.shared.forward += 1
        self.shared.backward += 1
        grads = {
            n: (torch.zeros_like(t) if gi is None else gi) for (n, t), gi in zip(d.items(), g, strict=True)
        }
        return float(value.detach()), grads


# ---- statistics of the estimate ----------------------------------------------------------------------------


def ci_relative_halfwidth(values: Sequence[float], sizes: Sequence[int], n_boot: int, seed: int) -> float:
    """``(hi - lo) / 2 / |mean|`` of the bootstrap 95 % CI (inf when undefined)."""
    mean, _, (lo, hi) = _weighted_summary(list(values), list(sizes), n_boot=n_boot, seed=seed)
    if not (math.isfinite(mean) and math.isfinite(lo) and math.isfinite(hi)) or mean == 0:
        return math.inf
    return (hi - lo) / 2 / abs(mean)


@dataclass
class _Track:
    """Per-loss running record of a session."""

    loss: Loss
    cost: Cost = field(default_factory=Cost)
    per_batch: list[dict[str, Any]] = field(default_factory=list)
    per_layer: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def finite(self) -> tuple[list[float], list[int]]:
        rows = [r for r in self.per_batch if r["finite"]]
        return [r["value"] for r in rows], [r["size"] for r in rows]


class EstimateSession:
    """Streaming estimation: ``step(batch)`` per batch until ``done``; ``results()`` at the end.

    Use as a context manager: inside it the model is in eval mode; on exit every parameter, buffer, flag and
    the train/eval mode are restored bit-for-bit (also on an exception).
    """

    def __init__(
        self, estimator: BatchwiseEstimator, model: nn.Module, losses: Sequence[Loss], hook: Hook | None
    ):
        names = [loss.name for loss in losses]
        if len(set(names)) != len(names):
            raise SharpscopeError(f"duplicate losses {names}; give each loss once")
        if not losses:
            raise SharpscopeError("no loss given")
        self.est = estimator
        self.model = model
        self.hook = hook
        self.tracks = [_Track(loss) for loss in losses]
        self.shared = Cost()
        self.n_utts = 0
        self.n_batches = 0
        self.done = False
        self.stop_reason = "data exhausted"
        self.extra: dict[str, Any] = {}
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> EstimateSession:
        from .scope import param_groups, resolve_scope

        s = self.est.settings
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(preserved(self.model))
            work, params = resolve_scope(self.model, s.scope)
            if work is not self.model:
                stack.enter_context(preserved(work))
            # only the δ tensors should carry autograd graphs: switch every module parameter off (restored on
            # exit) so frozen prefixes and out-of-scope layers store no activations for backward.
            for p in work.parameters():
                p.requires_grad_(False)
            self.fwd = FunctionalForward(work, params, s.precision)
            self.names = list(params)
            self.groups = param_groups(self.names, int(s.per_layer)) if int(s.per_layer) > 0 else {}
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        self.extra["prefix_cache"] = self.fwd.uses_prefix_cache
        self.extra["n_params_perturbed"] = int(sum(w.numel() for w in self.fwd.w.values()))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def step(self, batch: Any) -> torch.Tensor:
        """Estimate on one batch; returns the clean logits ``[B, C]`` (detached) for scoring."""
        if self._stack is None:
            raise RuntimeError("use the session as a context manager (with estimator.session(...) as s)")
        x, y, ids = unpack_batch(batch)
        x = x.to(self.fwd.device)
        y = torch.as_tensor(y).to(self.fwd.device)
        index = self.n_batches
        for t in self.tracks:
            if t.loss.needs_labels and bool((y < 0).any()):
                first = ids[int((y < 0).nonzero()[0])] if ids else f"row {int((y < 0).nonzero()[0])}"
                raise SharpscopeError(
                    f"batch {index} holds unlabelled utterances (first: {first}); loss {t.loss.name!r} needs "
                    "labels -- use the label-free loss kl-to-clean or label the manifest"
                )
        s = self.est.settings
        pb = BatchProblem(
            self.fwd,
            x,
            y,
            [t.loss for t in self.tracks],
            [t.cost for t in self.tracks],
            self.shared,
            self.est.needs_clean_grad,
            batch_lengths(batch),
        )
        size = len(pb)
        outs = self.est.batch_values(pb, self.names, derive_seed(s.seed, index, 0))
        group_outs = {
            g: self.est.batch_values(pb, gnames, derive_seed(s.seed, index, k + 1))
            for k, (g, gnames) in enumerate(self.groups.items())
        }
        for i, t in enumerate(self.tracks):
            value, info = outs[i]
            finite = _is_finite(pb.clean_loss[i]) and _is_finite(value)
            row = {
                "index": index,
                "size": size,
                "value": value,
                "finite": finite,
                "clean_loss": pb.clean_loss[i],
            }
            row.update(info)
            if not finite:
                what = "loss at w" if not _is_finite(pb.clean_loss[i]) else f"{self.est.name} value"
                check_nonfinite(s.nonfinite, f"{self.est.name} ({t.loss.name})", index, batch, what)
            if self.groups:
                row["per_layer"] = {g: group_outs[g][i][0] for g in self.groups}
                for g in self.groups:
                    t.per_layer.setdefault(g, []).append((group_outs[g][i][0], size))
            t.per_batch.append(row)
        self.n_utts += size
        self.n_batches += 1
        if self.hook is not None:
            self.hook(batch, pb.clean_logits)
        self._update_stop()
        return pb.clean_logits

    def score(self, batch: Any) -> torch.Tensor:
        """Clean logits of a batch without estimating (scoring the rest of a set after an early stop)."""
        x, _, _ = unpack_batch(batch)
        self.fwd.set_input(x.to(self.fwd.device), batch_lengths(batch))
        with torch.no_grad():
            return self.fwd(None).detach()

    def _update_stop(self) -> None:
        s = self.est.settings
        if s.budget is not None and self.n_utts >= s.budget:
            self.done, self.stop_reason = True, f"budget of {s.budget} utterances reached"
        elif s.ci_width is not None:
            values, sizes = self.tracks[0].finite()
            if len(values) >= s.min_batches:
                rel = ci_relative_halfwidth(values, sizes, s.n_boot, s.seed)
                if rel <= s.ci_width:
                    self.done = True
                    self.stop_reason = f"relative CI half-width {rel:.4g} <= {s.ci_width}"

    def results(self) -> list[SharpnessResult]:
        s = self.est.settings
        out = []
        for t in self.tracks:
            apply_nonfinite(t.per_batch, s.nonfinite)
            used = [r for r in t.per_batch if r["used"]]
            values, sizes = [r["value"] for r in used], [r["size"] for r in used]
            mean, se, ci = _weighted_summary(values, sizes, n_boot=s.n_boot, seed=s.seed)
            per_class = _per_class_mean(used)
            per_layer = None
            if self.groups:
                per_layer = {}
                for g, rows in t.per_layer.items():
                    ok = [(v, n) for v, n in rows if _is_finite(v)]
                    per_layer[g] = (
                        float(sum(v * n for v, n in ok) / sum(n for _, n in ok)) if ok else math.nan
                    )
            settings = {**settings_dict(s), "loss": t.loss.name, "measure": self.est.name}
            extra = {
                **self.extra,
                "stop_reason": self.stop_reason,
                "n_utts_finite": int(sum(r["size"] for r in t.per_batch if r["finite"])),
                "n_capped": sum(1 for r in t.per_batch if r.get("capped")),
                "nonfinite_policy": s.nonfinite,
                "per_class": per_class,
                "cost_shared_total": self.shared.as_dict(),
                "param_groups": {g: len(v) for g, v in self.groups.items()} if self.groups else None,
            }
            out.append(
                SharpnessResult(
                    measure=self.est.name,
                    value=mean,
                    stderr=se,
                    ci95=ci,
                    n_utts=self.n_utts,
                    n_batches=self.n_batches,
                    per_batch=t.per_batch,
                    cost=t.cost.as_dict(),
                    settings=settings,
                    n_nonfinite=sum(1 for r in t.per_batch if not r["finite"]),
                    per_layer=per_layer,
                    extra=extra,
                )
            )
        return out


def _per_class_mean(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Size-weighted mean over batches of each class's contribution (they add up to the estimate when every
    used batch has a split; capped batches have none and are left out -- the split then covers the rest)."""
    split = [r for r in rows if r.get("per_class")]
    if not split:
        return None
    total = sum(r["size"] for r in split)
    classes = sorted({c for r in split for c in r["per_class"]})
    return {c: sum(r["per_class"].get(c, 0.0) * r["size"] for r in split) / total for c in classes}


# ---- the base class ----------------------------------------------------------------------------------------


def as_loss(loss: Loss | str) -> Loss:
    return make_loss(loss) if isinstance(loss, str) else loss


class BatchwiseEstimator:
    """Base class of the loss-based estimators.

    Subclasses set ``name``, ``Settings`` (a dataclass deriving from :class:`CommonSettings`),
    ``needs_clean_grad`` and implement :meth:`batch_values`.  Construct with a settings object and/or keyword
    overrides: ``MSharpness(rho=0.1)``, ``MSharpness(MSharpnessSettings(rho=0.1))``.
    """

    name: str = "batchwise"
    Settings: type = CommonSettings
    needs_clean_grad: bool = False

    def __init__(self, settings: Any = None, **overrides: Any) -> None:
        valid = {f.name for f in fields(self.Settings)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise SharpscopeError(
                f"measure {self.name!r} has no setting(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(valid))}"
            )
        base = settings if settings is not None else self.Settings()
        self.settings = replace(base, **overrides)
        self.settings.validate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"

    def batch_values(
        self, pb: BatchProblem, names: list[str], seed: int
    ) -> list[tuple[float, dict[str, Any]]]:
        """Per loss of ``pb``: the batch's value perturbing only ``names``, plus extra record fields."""
        raise NotImplementedError

    def session(self, model: nn.Module, losses: Loss | str | Sequence[Loss | str], hook: Hook | None = None):
        """A streaming :class:`EstimateSession` (context manager) over one or several losses."""
        seq = [losses] if isinstance(losses, (str, Loss)) else list(losses)
        return EstimateSession(self, model, [as_loss(x) for x in seq], hook)

    def estimate_many(
        self, model: nn.Module, batches: Iterable[Any], losses: Sequence[Loss | str], hook: Hook | None = None
    ) -> dict[str, SharpnessResult]:
        """One estimate per loss on the same batches (e.g. ``weighted-ce`` and label-free ``kl-to-clean``).

        The clean forward is shared by all losses; stopping rules follow the first loss.
        """
        with self.session(model, losses, hook) as sess:
            for batch in batches:
                sess.step(batch)
                if sess.done:
                    break
            results = sess.results()
        return {r.settings["loss"]: r for r in results}

    def estimate(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        loss: Loss | str = "weighted-ce",
        hook: Hook | None = None,
    ) -> SharpnessResult:
        """Sharpness of ``model`` on ``batches`` under ``loss`` (see the measure's module docstring)."""
        return next(iter(self.estimate_many(model, batches, [loss], hook).values()))


def adaptive_scale(w: dict[str, torch.Tensor], names: Sequence[str], adaptive: bool, eta: float = 0.0):
    """``|w| + η`` per parameter when adaptive (ASAM's T_w), else ``None`` (identity scaling)."""
    if not adaptive:
        return None
    return {n: (w[n].abs() + eta) if eta else w[n].abs() for n in names}
