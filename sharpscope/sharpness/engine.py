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
  sequential stopping, bootstrap CI) and NaN/inf handling are the shared
  :class:`~sharpscope.sharpness.base.BatchDriver`, the same for every measure.
* Micro-batches (``micro_batch`` setting): a batch's passes run ``k`` utterances at a time; gradients are
  accumulated exactly (:meth:`BatchProblem._clean_grads_by_chunk`), so memory follows ``k``, values follow
  the batch.

Frozen prefix cache: a model may define ``frozen_prefix_split(names: set[str]) -> (prefix, suffix) | None``
where ``model(x) == suffix(prefix(x))`` and every perturbed parameter lives in ``suffix``; the prefix output
is then computed once per batch (no grad) and all clean/perturbed passes run the suffix only.  The SSL models
define it (front end = prefix); AASIST, whose every layer is perturbed, runs whole.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..devices import autocast, check_precision, strict_fp32
from ..errors import SharpscopeError
from ..losses import Loss, make_loss
from ..models.outputs import length_groups, logits_of, output_layout
from ..perturb import NORM_EPS, global_norm  # noqa: F401  (re-exported for the estimators)
from .base import (
    BatchDriver,
    Cost,
    DriverSettings,
    EstimatorBase,
    SharpnessResult,
    batch_lengths,
    ci_relative_halfwidth,  # noqa: F401  (re-exported)
    preserved,
    settings_dict,
    unpack_batch,
)

Hook = Callable[[Any, torch.Tensor], None]


@dataclass
class CommonSettings(DriverSettings):
    """Settings every loss-based (batchwise) estimator shares, on top of :class:`DriverSettings` (scope, seed,
    budget, ci_width, min_batches, n_boot, nonfinite).

    * ``per_layer`` -- 0: off; ``d >= 1``: additionally perturb each group of parameters sharing the first
      ``d`` components of their name (1 = top-level modules) on its own and report one value per group.
    * ``precision`` -- ``fp32`` or ``bf16`` (autocast on the model's device; losses are computed in fp32).
    * ``micro_batch`` -- ``None``: every pass over a batch runs at once; ``k``: passes with a gradient run
      ``k`` utterances at a time and accumulate it (exact: the batch loss is ``Σ_c W_c·L_c / Σ_c W_c`` over
      the micro-batches ``c``, ``W`` the loss's normaliser), and gradient-free passes run ``k`` at a time and
      concatenate their logits.  Values are those of the whole batch (up to float rounding of the
      reduction order); peak activation memory is that of ``k`` utterances.  The batch -- the ``m`` of
      m-sharpness -- is still the data loader's batch.  Measured (``benchmarks/bench_memory.py --fp64``,
      official AASIST, 2 batches of 24 x 64,600; the float64 whole batch at batch 8):
      float64 whole = float64 micro-batched to 1e-15; fp32 micro-batched (k = 4) is *closer* to float64
      (8e-7 relative) than the fp32 whole batch (up to 2.5e-3, the same at 1 and 2 threads), whose
      weight-gradient reductions sum ~12 million products per entry in one fp32 pass.
    """

    per_layer: int = 0
    precision: str = "fp32"
    micro_batch: int | None = None

    def validate(self) -> None:
        super().validate()
        check_precision(self.precision, "precision")
        if int(self.per_layer) < 0:
            raise SharpscopeError(f"per_layer must be 0 (off) or a name depth >= 1, got {self.per_layer}")
        mb = self.micro_batch
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, numbers.Integral) or mb < 1):
            raise SharpscopeError(
                f"micro_batch must be a positive number of utterances (or unset), got {self.micro_batch!r}"
            )


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of integers (numpy SeedSequence): independent streams per batch/group."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


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
        self.precision = precision
        strict_fp32(self.device)  # "fp32" is fp32 on CUDA too (no TF32 convolutions)
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
        self.chunks: list[slice] = []
        self._chunks: list[tuple[list[tuple[torch.Tensor | None, torch.Tensor]], torch.Tensor | None]] = []

    @property
    def uses_prefix_cache(self) -> bool:
        return self.prefix is not None

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        return autocast(self.precision, self.device)

    def set_input(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, micro_batch: int | None = None
    ) -> None:
        """Fix the batch input (and compute the frozen prefix once, when there is one).

        With ``lengths`` (crop ``full``) every exact-length group is its own forward, trimmed to its length
        (:mod:`sharpscope.models.outputs`), so no utterance's logits depend on its batch mates.  With
        ``micro_batch`` the batch is cut into consecutive chunks of at most that many utterances
        (:attr:`chunks`), each evaluated on its own; a call without ``chunk`` concatenates their logits.
        """
        n = int(x.shape[0])
        step = max(1, n if micro_batch is None or micro_batch >= n else int(micro_batch))
        self.chunks = [slice(lo, min(lo + step, n)) for lo in range(0, n, step)] or [slice(0, 0)]
        self._chunks = [self._prepare(x[sl], None if lengths is None else lengths[sl]) for sl in self.chunks]

    def _prepare(
        self, x: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[list[tuple[torch.Tensor | None, torch.Tensor]], torch.Tensor | None]:
        """The forward inputs of one chunk (length groups, prefix outputs) and the order restoring rows."""
        groups = length_groups(lengths)
        order_back: torch.Tensor | None = None
        if groups is None:
            n = x.shape[-1] if lengths is None else int(lengths.max())
            parts: list[tuple[torch.Tensor | None, torch.Tensor]] = [(None, x[..., :n])]
        else:
            lens = lengths.detach().cpu()  # type: ignore[union-attr]
            parts = [(idx, x[idx.to(x.device)][..., : int(lens[idx[0]])]) for idx in groups]
            order = torch.cat(groups).to(x.device)
            order_back = torch.empty_like(order)
            order_back[order] = torch.arange(len(order), device=x.device)
        if self.prefix is not None:
            with torch.no_grad(), self._autocast():
                parts = [(idx, self.prefix(inp)) for idx, inp in parts]
        return parts, order_back

    @staticmethod
    def _merge(outs: list[torch.Tensor], order: torch.Tensor | None, dim: int) -> torch.Tensor:
        if order is None:
            return outs[0]
        return torch.cat(outs, dim=dim).index_select(dim, order)

    @staticmethod
    def _join(outs: list[torch.Tensor], dim: int) -> torch.Tensor:
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=dim)

    def _out(self, out: Any) -> torch.Tensor:
        z = logits_of(out, self.layout)
        return z.float() if self.precision == "bf16" else z

    def __call__(
        self, delta: dict[str, torch.Tensor] | None = None, chunk: int | None = None
    ) -> torch.Tensor:
        """Logits ``[B, C]`` at ``w + δ`` (``[b, C]`` of micro-batch ``chunk`` when given)."""
        ks = range(len(self._chunks)) if chunk is None else [chunk]
        return self._join([self._call_chunk(delta, k) for k in ks], 0)

    def _call_chunk(self, delta: dict[str, torch.Tensor] | None, k: int) -> torch.Tensor:
        parts, order = self._chunks[k]
        with self._autocast():
            if not delta:
                return self._merge([self._out(self.module(inp)) for _, inp in parts], order, 0)
            weights = {self.rename[n]: self.w[n] + d for n, d in delta.items()}
            call = torch.func.functional_call
            return self._merge([self._out(call(self.module, weights, (inp,))) for _, inp in parts], order, 0)

    def batched(self, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[c, B, C]`` for ``c`` perturbations stacked on dim 0 of each ``deltas`` entry (vmap)."""
        layout = self.layout

        def one(d: dict[str, torch.Tensor], inp: torch.Tensor) -> torch.Tensor:
            weights = {self.rename[n]: self.w[n] + t for n, t in d.items()}
            return logits_of(torch.func.functional_call(self.module, weights, (inp,)), layout)

        zs = []
        with self._autocast(), warnings.catch_warnings():
            # vmap falls back to a per-sample loop for ops without a batching rule (e.g. weight norm) and says
            # so once per call; the result is still exact, the warning is noise here.
            warnings.filterwarnings("ignore", message="There is a performance drop")
            for parts, order in self._chunks:
                vm = torch.func.vmap(one, in_dims=(0, None), randomness="error")
                outs = [vm(deltas, inp) for _, inp in parts]
                zs.append(self._merge(outs, order, 1))
        z = self._join(zs, 1)
        return z.float() if self.precision == "bf16" else z


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
        micro_batch: int | None = None,
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
        fwd.set_input(x, lengths, micro_batch)
        self.grads: list[dict[str, torch.Tensor] | None] = [None] * len(self.losses)
        shared.forward += 1
        for c in costs:
            c.forward += 1
        if need_grad and len(fwd.chunks) > 1:
            self._clean_grads_by_chunk()
        elif need_grad:
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

    def _clean_grads_by_chunk(self) -> None:
        """Clean logits, losses and ascent gradients with one micro-batch in memory at a time.

        The batch loss is ``L = Σ_c W_c·L_c / Σ_c W_c`` over the micro-batches ``c`` (``W`` the loss's
        normaliser, :meth:`~sharpscope.losses.Loss.batch_weight`), so ``∇L = Σ_c W_c·∇L_c / Σ_c W_c``:
        the unnormalised sum and the normaliser are accumulated and divided once.  Losses at ``w`` are taken
        on the concatenated clean logits, i.e. over the whole batch.
        """
        zeros = {n: torch.zeros_like(w, requires_grad=True) for n, w in self.w.items()}
        sums: list[dict[str, torch.Tensor]] = [{} for _ in self.losses]
        norms = [0.0] * len(self.losses)
        logits = []
        for k, sl in enumerate(self.fwd.chunks):
            with torch.enable_grad():
                zk = self.fwd(zeros, chunk=k)
                ck = zk.detach()
                for i, loss in enumerate(self.losses):
                    asc = loss.ascent_loss(zk, self.y[sl], ck)
                    g = torch.autograd.grad(asc, list(zeros.values()), retain_graph=True, allow_unused=True)
                    wk = loss.ascent_weight(self.y[sl])
                    norms[i] += wk
                    for n, gi in zip(zeros, g, strict=True):
                        if gi is not None:
                            sums[i][n] = sums[i][n] + wk * gi if n in sums[i] else wk * gi
            logits.append(ck)
            del zk
        self.clean_logits = torch.cat(logits, 0)
        self.clean_loss = []
        for i, loss in enumerate(self.losses):
            with torch.no_grad():
                self.clean_loss.append(float(loss(self.clean_logits, self.y, self.clean_logits)))
            self.last_parts[i] = self.class_parts(i, self.clean_logits)
            if not _is_finite(self.clean_loss[-1]):
                continue
            self.grads[i] = {n: t / norms[i] for n, t in sums[i].items()}
            self.costs[i].backward += 1  # counted per batch, as without micro-batches
            self.shared.backward += 1

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
        """Loss ``i`` at ``w + δ`` and its gradient w.r.t. δ (zeros for parameters the loss does not use).

        With micro-batches the gradient is ``Σ_c W_c·∇L_c / Σ_c W_c`` (see :meth:`_clean_grads_by_chunk`) and
        the value is the loss of the concatenated logits.
        """
        d = {n: t.detach().requires_grad_(True) for n, t in delta.items()}
        if len(self.fwd.chunks) > 1:
            loss = self.losses[i]
            sums: dict[str, torch.Tensor] = {}
            norm = 0.0
            zs = []
            for k, sl in enumerate(self.fwd.chunks):
                with torch.enable_grad():
                    zk = self.fwd(d, chunk=k)
                    lk = loss(zk, self.y[sl], self.clean_logits[sl])
                    gk = torch.autograd.grad(lk, list(d.values()), allow_unused=True)
                wk = loss.batch_weight(self.y[sl])
                norm += wk
                for n, gi in zip(d, gk, strict=True):
                    if gi is not None:
                        sums[n] = sums[n] + wk * gi if n in sums else wk * gi
                zs.append(zk.detach())
            z = torch.cat(zs, 0)
            with torch.no_grad():
                value = self.loss_tensor(i, z)
            g: tuple[torch.Tensor | None, ...] = tuple(sums[n] / norm if n in sums else None for n in d)
        else:
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


@dataclass
class _Track:
    """Per-loss running record of a session."""

    loss: Loss
    cost: Cost = field(default_factory=Cost)
    per_batch: list[dict[str, Any]] = field(default_factory=list)
    per_layer: dict[str, list[tuple[float, int]]] = field(default_factory=dict)


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
        self.driver = BatchDriver(estimator.name, estimator.settings)
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
            s.micro_batch,
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
            row: dict[str, Any] = {
                "index": index,
                "size": size,
                "value": value,
                "finite": finite,
                "clean_loss": pb.clean_loss[i],
            }
            row.update(info)
            self.driver.check(row, batch, f"{self.est.name} ({t.loss.name})")
            if self.groups:
                row["per_layer"] = {g: group_outs[g][i][0] for g in self.groups}
                for g in self.groups:
                    t.per_layer.setdefault(g, []).append((group_outs[g][i][0], size))
            t.per_batch.append(row)
        self.driver.advance(size, self.tracks[0].per_batch)  # stopping rules follow the first loss
        if self.hook is not None:
            self.hook(batch, pb.clean_logits)
        return pb.clean_logits

    @property
    def n_utts(self) -> int:
        return self.driver.n_utts

    @property
    def n_batches(self) -> int:
        return self.driver.n_batches

    @property
    def done(self) -> bool:
        return self.driver.done

    @property
    def stop_reason(self) -> str:
        return self.driver.stop_reason

    def score(self, batch: Any) -> torch.Tensor:
        """Clean logits of a batch without estimating (scoring the rest of a set after an early stop)."""
        x, _, _ = unpack_batch(batch)
        self.fwd.set_input(x.to(self.fwd.device), batch_lengths(batch), self.est.settings.micro_batch)
        with torch.no_grad():
            return self.fwd(None).detach()

    def results(self) -> list[SharpnessResult]:
        s = self.est.settings
        out = []
        for t in self.tracks:
            mean, se, ci, used = self.driver.summarise(t.per_batch)
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
                **self.driver.extra(t.per_batch),
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
                    per_batch=t.per_batch,
                    cost=t.cost.as_dict(),
                    settings=settings,
                    per_layer=per_layer,
                    extra=extra,
                    **self.driver.counts(t.per_batch),
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


class BatchwiseEstimator(EstimatorBase):
    """Base class of the loss-based estimators.

    Subclasses set ``name``, ``Settings`` (a dataclass deriving from :class:`CommonSettings`),
    ``needs_clean_grad`` and implement :meth:`batch_values`.  Construct as every measure
    (:class:`~sharpscope.sharpness.base.EstimatorBase`): ``MSharpness(rho=0.1)``,
    ``MSharpness(MSharpnessSettings(rho=0.1))``.
    """

    name: str = "batchwise"
    Settings: type[DriverSettings] = CommonSettings
    settings: Any
    needs_clean_grad: bool = False

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
