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
from .base import Cost, Loss, SharpnessResult, logits_of, make_loss, preserved, settings_dict, unpack_batch
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
    """

    scope: str = "all"
    per_layer: int = 0
    budget: int | None = None
    ci_width: float | None = None
    min_batches: int = 5
    seed: int = 0
    precision: str = "fp32"
    n_boot: int = 1000

    def validate(self) -> None:
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
        self._inp: torch.Tensor | None = None

    @property
    def uses_prefix_cache(self) -> bool:
        return self.prefix is not None

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def set_input(self, x: torch.Tensor) -> None:
        """Fix the batch input (and compute the frozen prefix once, when there is one)."""
        if self.prefix is None:
            self._inp = x
        else:
            with torch.no_grad(), self._autocast():
                self._inp = self.prefix(x)

    def _out(self, out: Any) -> torch.Tensor:
        z = logits_of(out)
        return z.float() if self.bf16 else z

    def __call__(self, delta: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        with self._autocast():
            if not delta:
                return self._out(self.module(self._inp))
            weights = {self.rename[n]: self.w[n] + d for n, d in delta.items()}
            return self._out(torch.func.functional_call(self.module, weights, (self._inp,)))

    def batched(self, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[c, B, C]`` for ``c`` perturbations stacked on dim 0 of each ``deltas`` entry (vmap)."""
        inp = self._inp

        def one(d: dict[str, torch.Tensor]) -> torch.Tensor:
            weights = {self.rename[n]: self.w[n] + t for n, t in d.items()}
            return logits_of(torch.func.functional_call(self.module, weights, (inp,)))

        with self._autocast(), warnings.catch_warnings():
            # vmap falls back to a per-sample loop for ops without a batching rule (e.g. weight norm) and says
            # so once per call; the result is still exact, the warning is noise here.
            warnings.filterwarnings("ignore", message="There is a performance drop")
            z = torch.func.vmap(one, in_dims=(0,), randomness="error")(deltas)
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
        fwd.set_input(x)
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

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def loss_tensor(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        return self.losses[i](logits, self.y, self.clean_logits)

    def value(self, i: int, delta: dict[str, torch.Tensor]) -> float:
        """Loss ``i`` at ``w + δ`` (no grad)."""
        with torch.no_grad():
            z = self.fwd(delta)
        self.costs[i].forward += 1
        self.shared.forward += 1
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
        return out

    def values_all_batched(self, deltas: dict[str, torch.Tensor]) -> list[list[float]]:
        """``out[k][i]``: loss ``i`` at the ``k``-th stacked perturbation (one vmapped forward)."""
        with torch.no_grad():
            z = self.fwd.batched(deltas)
        c = int(z.shape[0])
        self.shared.forward += c
        for i in range(len(self.losses)):
            self.costs[i].forward += c
        return [[float(self.loss_tensor(i, z[k])) for i in range(len(self.losses))] for k in range(c)]

    def value_and_grad(self, i: int, delta: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
        """Loss ``i`` at ``w + δ`` and its gradient w.r.t. δ (zeros for parameters the loss does not use)."""
        d = {n: t.detach().requires_grad_(True) for n, t in delta.items()}
        with torch.enable_grad():
            value = self.loss_tensor(i, self.fwd(d))
            g = torch.autograd.grad(value, list(d.values()), allow_unused=True)
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
        self.fwd.set_input(x.to(self.fwd.device))
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
            values, sizes = t.finite()
            mean, se, ci = _weighted_summary(values, sizes, n_boot=s.n_boot, seed=s.seed)
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
                "n_utts_finite": int(sum(sizes)),
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
