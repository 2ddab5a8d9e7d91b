"""Fast eval-mode forward of AASIST / AASIST-L: the same function of the same parameters, computed cheaper.

Why: sharpness studies are several forward and backward passes per batch over large test sets (issue 13),
and a profile of the reference-faithful forward on a 2-core CPU spent 62 % in convolutions (at about a third
of the matrix-multiply rate), 17 % in max-pooling with indices and most of the rest in element-wise passes
(BN, SELU, adds) whose cost on this kind of machine is dominated by page-faulting freshly allocated
activations.

Every rewrite below keeps the network *mathematically identical as a function of the same parameters*, so
gradients w.r.t. every parameter (also those perturbed by :func:`torch.func.functional_call` in the sharpness
estimators, also under :func:`torch.func.vmap` / ``jvp``) are those of the reference path up to float
rounding:

* **BatchNorm folding, recomputed per call** (eval mode only): ``BN(conv(x)) = conv'(x)`` with
  ``w' = w * s``, ``b' = (b - mean) * s + beta`` and ``s = gamma / sqrt(var + eps)``.  ``w'`` and ``b'`` are
  computed from the *current* parameters inside the forward, so a perturbed ``gamma``, ``beta`` or conv
  weight enters exactly as in the reference and receives its gradient through the fold; running statistics
  are buffers (never perturbed).  Training mode (batch statistics) always takes the reference path.
* **Channels-last (NHWC) activations** in the residual encoder *when no gradient is recorded*: oneDNN's
  forward convolutions of AASIST's shapes run 1.1-1.6x faster on NHWC than on NCHW here (32->32 2x3 conv
  over 4 x 32 x 23 x 21,490: 138 vs 88 GFLOP/s), but its convolution *backward* on NHWC is 2-3.5x slower
  (forward + backward of the same conv: 38 vs 86 GFLOP/s; 64->64 at 2,387 frames: 29 vs 103), so passes
  that will be differentiated keep the reference's NCHW layout.  A layout, not a different number.
* **Max-pooling without indices when no gradient is recorded**: ``F.max_pool2d`` on CPU always computes an
  index tensor.  Under ``torch.no_grad`` (scoring) the (1, 3) and 3x3 pools are taken as ``amax`` over a
  reshaped view -- the same maxima (NaN propagates in both).  With autograd on, the encoder pools keep
  ``F.max_pool2d`` so that gradients are routed to the same element as the reference at exact ties.  The
  front-end pool has no parameter upstream (the sinc bank is a fixed buffer), so it never needs indices.
* **Only the used sinc filters**: the 3x3 front-end pool floors ``n_sinc / 3``, so the last ``n_sinc mod 3``
  filter outputs (1 of 70 in the official configs) are never read; they are not computed.
* **In-place element-wise ops on fresh tensors** (``|.|``, SELU, the residual add) when no gradient is
  recorded, saving one allocation of a full activation each.

Combine with :func:`sharpscope.devices.enable_hugepage_allocations` (transparent huge pages for large CPU
tensors), which removes most of the page-fault cost of the remaining allocations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .aasist import AASIST, ResidualBlock

POOL = 3  # the front-end 3x3 pool and the (1, 3) pool that ends each residual block (see aasist.py)


def _recording() -> bool:
    """Whether this call may be differentiated (autograd on).  Forward-mode AD under ``no_grad`` still works:
    ``amax`` has a forward derivative (equal to the reference except at exact ties)."""
    return torch.is_grad_enabled()


def _transformed() -> bool:
    """Whether we run inside a :mod:`torch.func` transform (vmap, grad, jvp).  vmap cannot query or produce
    channels-last layouts ("NYI: querying is_contiguous inside of vmap"), so transforms get the default layout
    and out-of-place ops; the arithmetic is the same."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def _inplace() -> bool:
    return not _recording() and not _transformed()


def _running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(running_mean, running_var)`` of ``bn``; AASIST's BatchNorms track running stats (the default)."""
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None
    return mean, var


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` followed by eval-mode ``bn``, as differentiable functions of both modules'
    current parameters (``w * s``, ``(b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``)."""
    mean, var = _running_stats(bn)
    assert conv.bias is not None  # every AASIST conv folded here is built with bias=True
    s = bn.weight * torch.rsqrt(var + bn.eps)
    w = conv.weight * s.reshape(-1, 1, 1, 1)
    b = (conv.bias - mean) * s + bn.bias
    return w, b


def _pool_time(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, (1, 3))`` (floor mode, no padding); without indices when no gradient is recorded.

    Without indices it is the element-wise maximum of the three strided time phases (the second maximum
    written in place): on channels-last activations each is a contiguous vectorised pass over channels,
    measured 2x faster than ``F.max_pool2d`` and 14x faster than ``amax`` over a reshaped view, whose reduced
    axis is strided there.  ``torch.maximum`` propagates NaN like the pool does.
    """
    if _recording():
        return F.max_pool2d(x, kernel_size=(1, POOL))
    n = x.size(-1) // POOL
    if _transformed():
        return x[..., : n * POOL].unflatten(-1, (n, POOL)).amax(dim=-1)
    end = n * POOL
    out = torch.maximum(x[..., 0:end:POOL], x[..., 1:end:POOL])
    return torch.maximum(out, x[..., 2:end:POOL], out=out)


def front_end(model: AASIST, x: torch.Tensor) -> torch.Tensor:
    """``SELU(first_bn(max_pool3x3(|sinc(x)|)))`` -> ``[B, 1, n_sinc // 3, (T - K + 1) // 3]``.

    The pooled sinc magnitudes depend on no parameter, so they are computed without autograd and with only
    the filters the pool reads; ``first_bn`` (one channel) is applied as ``x * s + t`` from its parameters.
    When a gradient w.r.t. the waveform itself is asked for, the pool keeps the reference's indices.
    """
    n_bands = model.conv_time.filters.size(0) // POOL
    bank = model.conv_time.filters[: n_bands * POOL].to(x.dtype)
    if _recording() and x.requires_grad:
        y = F.max_pool2d(F.conv1d(x.unsqueeze(1), bank).abs().unsqueeze(1), kernel_size=POOL).squeeze(1)
    else:
        with torch.no_grad():
            y = F.conv1d(x.unsqueeze(1), bank).abs_()  # [B, 3S, L]
            n_t = y.size(-1) // POOL
            y = y[..., : n_t * POOL].unflatten(-1, (n_t, POOL)).unflatten(1, (n_bands, POOL)).amax(dim=(2, 4))
    bn = model.first_bn
    mean, var = _running_stats(bn)
    s = bn.weight * torch.rsqrt(var + bn.eps)
    h = (y * s + (bn.bias - mean * s)).unsqueeze(1)
    return F.selu(h, inplace=_inplace())


def block_forward(block: ResidualBlock, x: torch.Tensor) -> torch.Tensor:
    """One eval-mode residual block (``x`` in either layout): folded conv1+bn2, SELU, conv2, shortcut, pool.

    ``bn1`` of the non-first blocks never reaches the output (see the aasist module docstring) and in eval
    mode its running statistics are not updated, so it is skipped as in the reference.
    """
    w1, b1 = fold_bn(block.conv1, block.bn2)
    inplace = _inplace()
    h = F.selu(F.conv2d(x, w1, b1, padding=(1, 1)), inplace=inplace)
    out = F.conv2d(h, block.conv2.weight, block.conv2.bias, padding=(0, 1))
    ds = block.conv_downsample
    shortcut = x if ds is None else F.conv2d(x, ds.weight, ds.bias, padding=(0, 1))
    out = out.add_(shortcut) if inplace else out + shortcut
    return _pool_time(out)


def encoder_forward(model: AASIST, h: torch.Tensor) -> torch.Tensor:
    """The six residual blocks (channels-last activations when no gradient is recorded); returns ``|e|``
    ``[B, C, S, T]``."""
    if _inplace():  # no autograd, no transform: channels-last (see the module docstring)
        h = h.contiguous(memory_format=torch.channels_last)
    for seq in model.encoder:
        h = block_forward(cast("ResidualBlock", cast(nn.Sequential, seq)[0]), h)
    return h.abs_() if _inplace() else h.abs()


def fast_forward_with_hidden(model: AASIST, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode ``(last_hidden, logits)`` of ``model`` -- the reference ``forward_with_hidden`` computed
    through the rewrites of this module (the graph back end is shared, unchanged)."""
    e = encoder_forward(model, front_end(model, x))
    e_S = torch.max(e, dim=3).values.transpose(1, 2)  # spectral nodes [B, S, C]
    e_T = torch.max(e, dim=2).values.transpose(1, 2)  # temporal nodes [B, T, C]
    hidden = model.graph_readout(e_S + model.pos_S, e_T)
    return hidden, model.out_layer(model.drop(hidden))


def compiled(model: nn.Module) -> nn.Module:
    """Opt-in ``torch.compile`` of a model (static shapes), for scoring or any plain forward/backward.

    Works on AASIST's fast and reference paths (the heterogeneous graph layer builds its pair-type index by
    slicing because inductor rejects ``torch.where`` over booleans there).  Compilation is slow -- about three
    minutes per input shape and per grad mode on a loaded 2-core CPU -- and every new batch shape recompiles,
    so it pays only for long runs of one shape.  The compiled module is a wrapper: pass the original model to
    the sharpness estimators, which call it through :func:`torch.func.functional_call`.
    """
    # torch.compile is typed as returning a plain callable; given a Module it returns an OptimizedModule
    return cast(nn.Module, torch.compile(model, dynamic=False))
