"""Common machinery of all sharpness estimators: the one estimator contract.

* :class:`SharpnessResult` -- what every estimator returns (value, uncertainty, counts, cost, settings).
* :class:`DriverSettings`, :class:`EstimatorBase`, :class:`BatchDriver` -- the contract every registered
  measure follows: a settings dataclass deriving from :class:`DriverSettings` (scope, seed, budget, ci_width,
  min_batches, n_boot, nonfinite) validated by one ``validate()`` at construction; one constructor form
  ``Cls(settings=None, **overrides)``; one per-batch driver for stopping (budget / CI), the non-finite policy,
  the counts (``n_utts`` / ``n_batches``: every batch processed) and the weighted summary.
  :class:`Estimator` is the protocol the registry returns.
* :func:`select_params` -- the parameter scope an estimator perturbs.
* :func:`preserved` -- puts the model in eval mode and restores every parameter and buffer bit-for-bit (and
  the train/eval mode and ``requires_grad`` flags) on exit, also when an exception is raised.
* Losses live in :mod:`sharpscope.losses`.
* :func:`unpack_batch` -- batches of any of the accepted forms; logits are read by
  :func:`sharpscope.models.outputs.forward_logits` (declared output layout, never position guessing).

The batchwise machinery shared by the loss-based estimators (functional perturbations, micro-batches, several
losses in one pass, the streaming session the runner scores through) is in
:mod:`sharpscope.sharpness.engine`.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch
from torch import nn

from ..errors import SharpscopeError, SpecError
from ..losses import Loss


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
    """The one estimator contract every registered measure satisfies (see :class:`EstimatorBase`).

    Optional extras the runner uses when present: ``estimate_many(model, batches, losses) -> {loss: result}``
    and ``session(model, losses)`` (streaming, see :class:`sharpscope.sharpness.engine.EstimateSession`).
    """

    name: str
    settings: Any

    def estimate(self, model: nn.Module, batches: Iterable[Any], loss: Loss) -> SharpnessResult: ...


def settings_dict(settings: Any) -> dict[str, Any]:
    return asdict(settings) if is_dataclass(settings) and not isinstance(settings, type) else dict(settings)


# ---- the one estimator contract ---------------------------------------------------------------------------


@dataclass
class DriverSettings:
    """Settings every measure shares, read by the per-batch driver (:class:`BatchDriver`).

    * ``scope`` -- parameters studied: ``all``, ``trainable``, ``regex:PATTERN`` or ``lora-merged``
      (see :mod:`sharpscope.sharpness.scope`).
    * ``seed`` -- seeds every random draw (noise, directions, probe vectors, random starts, bootstrap).
    * ``budget`` -- stop after at least this many utterances (whole batches are used).
    * ``ci_width`` -- stop as soon as the relative half-width of the bootstrap 95 % CI,
      ``(hi - lo) / 2 / |value|``, is at most this, once ``min_batches`` finite batches are in (sequential
      stopping makes the final CI slightly optimistic; pair it with ``shuffled``/``balanced`` batch order).
    * ``n_boot`` -- bootstrap resamples over batches for the CI.
    * ``nonfinite`` -- what a NaN/inf batch value does: ``error`` (stop with one line naming the batch),
      ``drop`` (exclude it, count it in ``n_nonfinite``) or ``cap`` (a perturbed divergence enters at the
      largest finite batch value; see :func:`apply_nonfinite`).

    ``validate()`` runs at construction (every settings object that exists is valid) and normalises numeric
    types; subclasses extend it and call ``super().validate()`` first.
    """

    scope: str = "all"
    seed: int = 0
    budget: int | None = None
    ci_width: float | None = None
    min_batches: int = 5
    n_boot: int = 1000
    nonfinite: str = "error"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_nonfinite_policy(self.nonfinite)
        if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool):
            raise SpecError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.scope, str):
            raise SpecError(f"scope must be a string (all, trainable, regex:PATTERN), got {self.scope!r}")
        if self.budget is not None and self.budget < 1:
            raise SharpscopeError(f"budget must be a positive number of utterances, got {self.budget}")
        if self.ci_width is not None and not self.ci_width > 0:
            raise SharpscopeError(f"ci_width must be a positive relative half-width, got {self.ci_width}")
        if self.budget is not None and self.ci_width is not None:
            raise SharpscopeError("give either budget or ci_width, not both")
        if self.min_batches < 2:
            raise SharpscopeError(f"min_batches must be at least 2 for a CI, got {self.min_batches}")


class EstimatorBase:
    """Base class of every measure: one constructor form, one validation, one result shape.

    ``Cls(settings=None, **overrides)``: a settings object of ``Cls.Settings`` and/or keyword overrides
    (``HessianMax(iterations=5)``, ``HessianMax(HessianMaxSettings(...), iterations=5)``); unknown keywords
    raise one line naming the valid ones; the result is validated (``Settings.validate``).  Subclasses set
    ``name``, ``Settings`` and implement ``estimate(model, batches, loss) -> SharpnessResult``, looping over
    batches with a :class:`BatchDriver`.  ``has_ci = False`` marks a measure with one value for the whole set
    (no CI over batches, so ``ci_width`` stopping is refused).
    """

    name: str = "estimator"
    Settings: type[DriverSettings] = DriverSettings
    has_ci: bool = True

    def __init__(self, settings: DriverSettings | None = None, **overrides: Any) -> None:
        valid = {f.name for f in fields(self.Settings)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise SharpscopeError(
                f"measure {self.name!r} has no setting(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(valid))}"
            )
        if settings is not None and not isinstance(settings, self.Settings):
            raise SharpscopeError(
                f"measure {self.name!r} takes a {self.Settings.__name__}, got {type(settings).__name__}"
            )
        base = settings if settings is not None else self.Settings()
        self.settings = replace(base, **overrides) if overrides else base  # replace() re-validates
        if not self.has_ci and self.settings.ci_width is not None:
            raise SharpscopeError(
                f"measure {self.name!r} gives one value for the whole set (no CI over batches); "
                "stop it with budget instead of ci_width"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"

    def estimate(self, model: nn.Module, batches: Iterable[Any], loss: Loss) -> SharpnessResult:
        raise NotImplementedError


class BatchDriver:
    """The per-batch bookkeeping every measure shares: stopping, non-finite policy, counts, summary.

    Counts have one meaning everywhere: ``n_utts`` / ``n_batches`` are the utterances / batches the estimator
    processed (finite or not; ``budget`` counts the same utterances); ``n_nonfinite`` the processed batches
    with a NaN/inf value; ``extra["n_utts_finite"]`` the utterances of finite batches.
    """

    def __init__(self, measure: str, settings: DriverSettings) -> None:
        self.measure, self.settings = measure, settings
        self.n_utts = 0
        self.n_batches = 0
        self.done = False
        self.stop_reason = "data exhausted"

    def check(self, row: dict[str, Any], batch: Any, label: str | None = None) -> None:
        """Apply policy ``error`` to a non-finite row (``row["finite"]`` False): one line naming the batch."""
        if row["finite"]:
            return
        what = "loss at w" if not math.isfinite(row.get("clean_loss", math.nan)) else f"{self.measure} value"
        check_nonfinite(self.settings.nonfinite, label or self.measure, int(row["index"]), batch, what)

    def advance(self, size: int, rows: list[dict[str, Any]] | None = None, weight_key: str = "size") -> None:
        """Count one processed batch of ``size`` utterances, then test ``budget`` and ``ci_width`` (the CI of
        the finite ``rows`` so far, weighted by ``weight_key``)."""
        s = self.settings
        self.n_utts += int(size)
        self.n_batches += 1
        if s.budget is not None and self.n_utts >= s.budget:
            self.done, self.stop_reason = True, f"budget of {s.budget} utterances reached"
        elif s.ci_width is not None and rows is not None:
            ok = [r for r in rows if r["finite"]]
            if len(ok) >= s.min_batches:
                rel = ci_relative_halfwidth(
                    [r["value"] for r in ok], [r[weight_key] for r in ok], s.n_boot, s.seed
                )
                if rel <= s.ci_width:
                    self.done = True
                    self.stop_reason = f"relative CI half-width {rel:.4g} <= {s.ci_width}"

    def summarise(
        self, rows: list[dict[str, Any]], weight_key: str = "size"
    ) -> tuple[float, float, tuple[float, float], list[dict[str, Any]]]:
        """Apply the non-finite policy to ``rows`` (marks ``used``), then the weighted mean over the used
        batches, its standard error and bootstrap 95 % CI; returns them with the used rows."""
        s = self.settings
        apply_nonfinite(rows, s.nonfinite)
        used = [r for r in rows if r["used"]]
        mean, se, ci = weighted_summary(
            [r["value"] for r in used], [r[weight_key] for r in used], n_boot=s.n_boot, seed=s.seed
        )
        return mean, se, ci, used

    def counts(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """``n_utts``, ``n_batches``, ``n_nonfinite`` of a result (one meaning, see the class docstring)."""
        return {
            "n_utts": self.n_utts,
            "n_batches": self.n_batches,
            "n_nonfinite": sum(1 for r in rows if not r["finite"]),
        }

    def extra(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "stop_reason": self.stop_reason,
            "n_utts_finite": int(sum(r["size"] for r in rows if r["finite"])),
            "n_capped": sum(1 for r in rows if r.get("capped")),
            "nonfinite_policy": self.settings.nonfinite,
        }


def ci_relative_halfwidth(values: list[float], sizes: list[Any], n_boot: int, seed: int) -> float:
    """``(hi - lo) / 2 / |mean|`` of the bootstrap 95 % CI (inf when undefined)."""
    mean, _, (lo, hi) = weighted_summary(list(values), list(sizes), n_boot=n_boot, seed=seed)
    if not (math.isfinite(mean) and math.isfinite(lo) and math.isfinite(hi)) or mean == 0:
        return math.inf
    return (hi - lo) / 2 / abs(mean)


# ---- model outputs and batches ----------------------------------------------------------------------------


def batch_lengths(batch: Any) -> torch.Tensor | None:
    """True lengths of a batch's utterances (crop ``full``), ``None`` where all are full length."""
    return (
        getattr(batch, "lengths", None)
        if not isinstance(batch, (dict, tuple, list))
        else (batch.get("lengths") if isinstance(batch, dict) else None)
    )


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """``(inputs, labels, utt_ids)`` of a :class:`~sharpscope.data.audio.Batch`, an ``(x, y)`` pair or a
    dict."""
    if hasattr(batch, "wave") and hasattr(batch, "labels"):
        return batch.wave, batch.labels, list(getattr(batch, "utt_ids", None) or []) or None
    if isinstance(batch, dict):
        # a dict batch's values are untyped; the keys above hold the input and label tensors
        x = cast(torch.Tensor, batch.get("wave", batch.get("x")))
        y = cast(torch.Tensor, batch.get("labels", batch.get("y")))
        ids: list[str] | None = batch.get("utt_ids")
        return x, y, ids
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
