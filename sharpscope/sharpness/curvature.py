"""Curvature measures: top Hessian eigenvalue and Hessian trace of the batch loss.

Algorithms here only need a linear operator with ``matvec(v)``, ``dim``, ``dtype`` and ``device`` -- in
practice :class:`~sharpscope.sharpness.hvp.HessianOperator`, the Hessian of one batch's loss over a parameter
scope (curvlinops' split of operators and algorithms).  ``hessian-max`` runs its algorithm on the Hessian of
the *test-set* loss (the weighted sum of the batch Hessians, one product per batch per iteration);
``hessian-max-batchmean`` and ``hessian-trace`` run one algorithm per batch and summarise over batches.

* ``hessian-max`` (:class:`HessianMax`): the largest Hessian eigenvalue λ_max.

  - ``power``: power iteration on H from a seeded Gaussian start vector, Rayleigh quotient as the estimate,
    stopping when it changes by less than ``tol`` (relative).  Power iteration finds the eigenvalue of
    largest *magnitude*; when that one is negative (a saddle dominated by negative curvature) a second power
    iteration on the shifted operator H − λ_dom·I (all eigenvalues ≥ 0 there, the largest being
    λ_max − λ_dom) recovers the largest *algebraic* eigenvalue.
  - ``lanczos``: Lanczos tridiagonalisation with full re-orthogonalisation (memory: ``iterations`` vectors
    of the parameter dimension); the estimate is the largest Ritz value, stopping when its residual bound
    ``β_k·|s_k|`` falls below ``tol·|θ|``.  Usually needs far fewer products than power iteration and always
    targets the largest algebraic eigenvalue; the smallest Ritz value is reported per batch as well.

* ``hessian-trace`` (:class:`HessianTrace`): tr(H).

  - ``hutchinson``: (1/m) Σ zᵢᵀ H zᵢ with Rademacher zᵢ (Hutchinson 1989); per-batch standard error over the
    m queries is reported.
  - ``hutch++``: Meyer, Musco, Musco & Woodruff (2021), "Hutch++: optimal stochastic trace estimation":
    a third of the m products sketch the range (Q = orth(H S)), a third compute tr(QᵀHQ) exactly, the rest
    run Hutchinson on the deflated operator (I − QQᵀ)H(I − QQᵀ).  With m/3 ≥ dim the sketch spans everything
    and the result is exact up to rounding.

Products: :class:`~sharpscope.sharpness.hvp.HessianOperator` uses forward-over-reverse ``torch.func`` and,
with ``ad_mode="auto"``, falls back to double back-propagation for models with an op that lacks forward-mode
AD (``extra["ad_mode"]`` and ``extra["ad_fallback_reason"]`` record it).  The trace algorithms can push
``block_size`` probes through one vectorised product (faster, activation memory × block_size).

``cost``: ``forward`` counts the clean pass per batch (loss at w, and the clean logits of ``kl-to-clean``),
``hvp`` the Hessian-vector products (each roughly one forward and two backward passes); ``backward`` is 0.

All randomness comes from a CPU generator derived from ``(seed, batch index)``.  The model is put in eval
mode and its parameters, buffers, flags and gradients are restored bit-for-bit afterwards (also on errors).
Batches whose loss at the unperturbed weights, or whose estimate, is NaN/inf are kept in ``per_batch`` with
``finite=False``, excluded from the mean and counted in ``n_nonfinite``.

Constructor (the one form of every measure, :class:`~sharpscope.sharpness.base.EstimatorBase`):
``HessianMax(HessianMaxSettings(...), **overrides)`` or ``HessianMax(**settings)`` (same for
``HessianTrace``).  ``budget`` stops after that many utterances for all three; ``ci_width`` stopping applies
to the per-batch measures (``hessian-max`` has one value for the whole set and refuses it).  ``n_utts`` /
``n_batches`` count every batch processed, finite or not (``extra["n_utts_finite"]`` the finite ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

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
    check_nonfinite,
    preserved,
    settings_dict,
)
from .hvp import AD_MODES, HessianOperator, batch_generator, batch_tensors, check_labels, model_device
from .scope import resolve_scope


class LinearOperator(Protocol):
    dim: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...

    def matmat(self, vs: torch.Tensor, block_size: int = 1) -> torch.Tensor: ...


class _MatVec(Protocol):
    dim: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


class _Shifted:
    """``A − c·I`` for an operator ``A``."""

    def __init__(self, op: LinearOperator, shift: float) -> None:
        self.op, self.shift = op, shift
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.matvec(v) - self.shift * v


def _gaussian(op: LinearOperator, gen: torch.Generator) -> torch.Tensor:
    v = torch.randn(op.dim, generator=gen, dtype=torch.float64)
    return (v / v.norm()).to(device=op.device, dtype=op.dtype)


def _rademacher(op: LinearOperator, gen: torch.Generator, k: int) -> torch.Tensor:
    z = torch.randint(0, 2, (op.dim, k), generator=gen, dtype=torch.int8)
    return (z.to(torch.float64) * 2 - 1).to(device=op.device, dtype=op.dtype)


# ---- eigenvalue algorithms --------------------------------------------------------------------------------


@dataclass
class EigenEstimate:
    value: float
    iterations: int
    converged: bool
    min_value: float | None = None  # smallest Ritz value (Lanczos only)
    shifted: bool = False  # power iteration needed the shifted second run


def _power(op: _MatVec, v: torch.Tensor, iterations: int, tol: float) -> tuple[float, int, bool]:
    lam = math.nan
    for it in range(1, iterations + 1):
        hv = op.matvec(v)
        new = float(torch.dot(v.double(), hv.double()))
        norm = float(hv.norm())
        if norm == 0.0 or not math.isfinite(norm):
            return (0.0 if norm == 0.0 else math.nan), it, norm == 0.0
        v = hv / norm
        if math.isfinite(lam) and abs(new - lam) <= tol * max(abs(lam), 1e-30):
            return new, it, True
        lam = new
    return lam, iterations, False


def power_iteration(
    op: LinearOperator, gen: torch.Generator, iterations: int = 100, tol: float = 1e-4
) -> EigenEstimate:
    """Largest algebraic eigenvalue of a symmetric operator by (shifted) power iteration."""
    lam, its, conv = _power(op, _gaussian(op, gen), iterations, tol)
    if not (lam < 0):
        return EigenEstimate(lam, its, conv)
    mu, its2, conv2 = _power(_Shifted(op, lam), _gaussian(op, gen), iterations, tol)
    return EigenEstimate(mu + lam, its + its2, conv and conv2, shifted=True)


def lanczos(
    op: LinearOperator, gen: torch.Generator, iterations: int = 100, tol: float = 1e-4
) -> EigenEstimate:
    """Extreme eigenvalues of a symmetric operator by Lanczos with full re-orthogonalisation."""
    k_max = min(iterations, op.dim)
    q = _gaussian(op, gen)
    basis = [q]
    alpha: list[float] = []
    beta: list[float] = []
    theta_max = theta_min = math.nan
    converged = False
    for j in range(k_max):
        w = op.matvec(basis[j])
        a = float(torch.dot(basis[j].double(), w.double()))
        alpha.append(a)
        w = w - a * basis[j]
        if j > 0:
            w = w - beta[-1] * basis[j - 1]
        stack = torch.stack(basis, dim=1)
        for _ in range(2):  # "twice is enough" (Kahan/Parlett) classical Gram-Schmidt
            w = w - stack @ (stack.T @ w)
        b = float(w.norm())
        t = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        evals, evecs = np.linalg.eigh(t)
        theta_max, theta_min = float(evals[-1]), float(evals[0])
        if not all(math.isfinite(x) for x in (a, b, theta_max)):
            return EigenEstimate(math.nan, j + 1, False)
        residual = b * abs(float(evecs[-1, -1]))
        # Krylov space exhausted (b ≈ 0 or full dimension) or top Ritz pair converged
        scale = max(abs(theta_max), abs(theta_min), 1e-30)
        if b <= 1e-10 * scale or j + 1 == op.dim or residual <= tol * max(abs(theta_max), 1e-30):
            converged = True
            break
        beta.append(b)
        basis.append(w / b)
    return EigenEstimate(theta_max, len(alpha), converged, min_value=theta_min)


# ---- trace algorithms -------------------------------------------------------------------------------------


def _quad_forms(op: LinearOperator, z: torch.Tensor, block_size: int) -> np.ndarray:
    """zᵢᵀ H zᵢ for every column of ``z``, accumulated in float64."""
    hz = op.matmat(z.to(op.dtype), block_size=block_size)
    return (z.double() * hz.double()).sum(0).cpu().numpy()


def hutchinson(
    op: LinearOperator, gen: torch.Generator, n_queries: int, block_size: int = 1
) -> tuple[float, float]:
    """Hutchinson's trace estimate with Rademacher vectors and its standard error over the queries."""
    q = _quad_forms(op, _rademacher(op, gen, n_queries), block_size)
    se = float(q.std(ddof=1) / math.sqrt(n_queries)) if n_queries > 1 else math.nan
    return float(q.mean()), se


def hutchpp(op: LinearOperator, gen: torch.Generator, n_queries: int, block_size: int = 1) -> float:
    """Hutch++ (Meyer et al. 2021) with ``n_queries`` ≥ 3 products in total (rounded: k = ⌈m/3⌉ sketch)."""
    k = math.ceil(n_queries / 3)
    n_g = n_queries - 2 * k
    s = _rademacher(op, gen, k)
    q, _ = torch.linalg.qr(op.matmat(s, block_size=block_size).double())  # d × min(d, k), orthonormal
    exact = float(_quad_forms(op, q, block_size).sum())
    if n_g <= 0:
        return exact
    g = _rademacher(op, gen, n_g).double()
    g = g - q @ (q.T @ g)
    return exact + float(_quad_forms(op, g, block_size).mean())


# ---- estimators -------------------------------------------------------------------------------------------


@dataclass
class HessianMaxSettings(DriverSettings):
    """Settings of :class:`HessianMax` on top of :class:`~sharpscope.sharpness.base.DriverSettings`.

    ``method``: ``power`` or ``lanczos``; ``iterations``: maximum Hessian-vector products per run (power
    iteration may run twice, see module docstring); ``tol``: relative convergence tolerance; ``ad_mode``: how
    products are taken (see :mod:`~sharpscope.sharpness.hvp`).
    """

    method: str = "power"
    iterations: int = 100
    tol: float = 1e-4
    ad_mode: str = "auto"

    def validate(self) -> None:
        super().validate()
        if self.method not in ("power", "lanczos"):
            raise SpecError(f"hessian-max method must be power or lanczos, got {self.method!r}")
        if int(self.iterations) < 1:
            raise SpecError(f"hessian-max iterations must be >= 1, got {self.iterations!r}")
        if not float(self.tol) >= 0:
            raise SpecError(f"hessian-max tol must be >= 0, got {self.tol!r}")
        self.iterations, self.tol = int(self.iterations), float(self.tol)
        _check_ad_mode(self.ad_mode)


@dataclass
class HessianTraceSettings(DriverSettings):
    """Settings of :class:`HessianTrace`: ``method`` ``hutchinson`` or ``hutch++``; ``n_queries``: Hessian-
    vector products per batch (≥ 3 for hutch++); ``block_size``: probe vectors per vectorised product (faster,
    but activation memory × block_size; 1 = one product at a time); ``ad_mode`` as for
    :class:`HessianMaxSettings`."""

    method: str = "hutchinson"
    n_queries: int = 30
    block_size: int = 1
    ad_mode: str = "auto"

    def validate(self) -> None:
        super().validate()
        if self.method not in ("hutchinson", "hutch++"):
            raise SpecError(f"hessian-trace method must be hutchinson or hutch++, got {self.method!r}")
        self.n_queries = int(self.n_queries)
        if self.n_queries < (3 if self.method == "hutch++" else 1):
            need = 3 if self.method == "hutch++" else 1
            raise SpecError(
                f"hessian-trace n_queries must be >= {need} for {self.method}, got {self.n_queries}"
            )
        self.block_size = int(self.block_size)
        if self.block_size < 1:
            raise SpecError(f"hessian-trace block_size must be >= 1, got {self.block_size}")
        _check_ad_mode(self.ad_mode)


def _check_ad_mode(ad_mode: str) -> None:
    if ad_mode not in AD_MODES:
        raise SpecError(f"unknown ad_mode {ad_mode!r}; choose one of {', '.join(AD_MODES)}")


class _SumOperator:
    """``Σ_B c_B · H_B``: the Hessian of the test-set loss from the per-batch operators.

    A union of batches has the loss ``L = Σ_B W_B·L_B / Σ_B W_B`` (``W_B`` the batch loss's normaliser, see
    :meth:`~sharpscope.sharpness.base.Loss.batch_weight`), so its Hessian is exactly the ``c_B = W_B / ΣW``
    weighted sum of the batch Hessians; one product costs one product per batch.
    """

    def __init__(self, ops: list[HessianOperator], coeffs: list[float]) -> None:
        self.ops, self.coeffs = ops, coeffs
        self.dim, self.dtype, self.device = ops[0].dim, ops[0].dtype, ops[0].device

    @property
    def n_matvec(self) -> int:
        return sum(op.n_matvec for op in self.ops)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        out = None
        for c, op in zip(self.coeffs, self.ops, strict=True):
            hv = op.matvec(v) * c
            out = hv if out is None else out + hv
        return out  # type: ignore[return-value]

    def matmat(self, vs: torch.Tensor, block_size: int = 1) -> torch.Tensor:
        out = None
        for c, op in zip(self.coeffs, self.ops, strict=True):
            hv = op.matmat(vs, block_size=block_size) * c
            out = hv if out is None else out + hv
        return out  # type: ignore[return-value]


class _PerBatchCurvature(EstimatorBase):
    """Shared loop of the curvature measures.

    ``full_set`` (class attribute): one algorithm run on the Hessian of the whole test-set loss
    (:class:`_SumOperator`; ``hessian-max``) -- otherwise one run per batch, summarised over batches weighted
    by ``weighting``: ``loss`` (``W_B``, which makes a linear quantity such as the trace exactly that of the
    test-set loss) or ``size`` (the per-batch mean of ``hessian-max-batchmean``).
    """

    name = "curvature"
    full_set = False
    weighting = "loss"
    settings: Any

    def _run(self, op: Any, gen: torch.Generator) -> tuple[float, dict[str, Any]]:
        raise NotImplementedError

    def estimate(self, model: nn.Module, batches: Iterable[Any], loss: Loss) -> SharpnessResult:
        s = self.settings
        cost = Cost()
        driver = BatchDriver(self.name, s)
        key = "weight" if self.weighting == "loss" else "size"
        rows: list[dict[str, Any]] = []
        ops: list[HessianOperator] = []
        mode, fallback = s.ad_mode, None
        with preserved(model):
            net, params = resolve_scope(model, s.scope)  # net is a merged copy for lora-merged
            net.eval()
            device = model_device(net)
            dim = sum(p.numel() for p in params.values())
            for i, batch in enumerate(batches):
                x, y, size = batch_tensors(batch, device)
                lens = batch_lengths(batch)
                check_labels(loss, y, i)
                with torch.no_grad():
                    logits = forward_logits(net, x, lens)
                    clean = logits if loss.needs_clean else None
                    loss0 = float(loss(logits, y, clean))
                cost.forward += 1
                row: dict[str, Any] = {"index": i, "size": size, "loss": loss0, "clean_loss": loss0}
                row["weight"] = loss.batch_weight(y)
                rows.append(row)
                if not math.isfinite(loss0):
                    row.update(value=math.nan, finite=False)
                elif self.full_set:
                    ops.append(HessianOperator(net, loss, x, y, params, clean_logits=clean, ad_mode=mode,
                                               lengths=lens))  # fmt: skip
                    row["finite"] = True
                else:
                    op = HessianOperator(net, loss, x, y, params, clean_logits=clean, ad_mode=mode,
                                         lengths=lens)  # fmt: skip
                    value, info = self._run(op, batch_generator(s.seed, i))
                    row.update(info)
                    cost.hvp += op.n_matvec
                    mode = op.mode
                    fallback = fallback or op.fallback_reason
                    row["value"] = value
                    row["finite"] = math.isfinite(value)
                driver.check(row, batch)
                driver.advance(size, None if self.full_set else rows, key)
                if driver.done:
                    break
            extra: dict[str, Any] = {"dim": int(dim)}
            extra["weighting"] = "full-set" if self.full_set else self.weighting
            if not self.full_set:
                mean, se, ci, ok = driver.summarise(rows, key)
            else:  # rows carry no per-batch value; a batch is used when its loss at w is finite
                for r in rows:
                    r["used"] = bool(r["finite"])
                ok = [r for r in rows if r["used"]]
                mean, se, ci = math.nan, math.nan, (math.nan, math.nan)
            if self.full_set and ops:
                total = sum(r["weight"] for r in ok)
                sum_op = _SumOperator(ops, [r["weight"] / total for r in ok])
                value, info = self._run(sum_op, batch_generator(s.seed, 0))
                cost.hvp += sum_op.n_matvec
                mode = ops[0].mode
                fallback = next((op.fallback_reason for op in ops if op.fallback_reason), None)
                extra.update(info)
                mean = value
                extra["ci_note"] = "one eigenvalue of the test-set Hessian: no CI over batches"
                if not math.isfinite(value):
                    check_nonfinite(s.nonfinite, self.name, 0, None, "the test-set eigenvalue")
        extra["ad_mode"] = mode
        if fallback:
            extra["ad_fallback_reason"] = fallback
        return SharpnessResult(
            measure=self.name,
            value=mean,
            stderr=se,
            ci95=ci,
            per_batch=rows,
            cost=cost.as_dict(),
            settings={**settings_dict(s), "loss": loss.name, "measure": self.name},
            extra={**extra, **driver.extra(rows)},
            **driver.counts(rows),
        )


class HessianMax(_PerBatchCurvature):
    """``hessian-max``: the top eigenvalue of the Hessian of the whole test-set loss (power iteration or
    Lanczos on :class:`_SumOperator`)."""

    name = "hessian-max"
    Settings = HessianMaxSettings
    full_set = True
    has_ci = False

    def _run(self, op, gen):
        s = self.settings
        algo = power_iteration if s.method == "power" else lanczos
        est = algo(op, gen, s.iterations, s.tol)
        info: dict[str, Any] = {"iterations": est.iterations, "converged": est.converged}
        if est.min_value is not None:
            info["min_ritz"] = est.min_value
        if s.method == "power":
            info["shifted"] = est.shifted
        return est.value, info


class HessianMaxBatchMean(HessianMax):
    """``hessian-max-batchmean``: the size-weighted mean over batches of each batch's top eigenvalue.

    Depends on the batch size (a batch Hessian's λ_max exceeds the test-set one by Weyl's inequality on
    average), so it is *not* the λ_max of the test-set loss; kept under its own name for comparison with
    per-batch studies.
    """

    name = "hessian-max-batchmean"
    full_set = False
    has_ci = True
    weighting = "size"


class HessianTrace(_PerBatchCurvature):
    """``hessian-trace``: trace of the test-set loss Hessian, ``Σ_B c_B tr(H_B)`` (per-batch Hutchinson or
    Hutch++ weighted by the batch loss normalisers, which makes it exactly the trace of the union)."""

    name = "hessian-trace"
    Settings = HessianTraceSettings

    def _run(self, op, gen):
        s = self.settings
        if s.method == "hutchinson":
            tr, se = hutchinson(op, gen, s.n_queries, s.block_size)
            return tr, {"query_stderr": se}
        return hutchpp(op, gen, s.n_queries, s.block_size), {}
