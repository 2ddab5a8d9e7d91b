"""Devices and numeric precision: ``--device auto``, the opt-in bf16 autocast, and the CPU allocator setting.

Why one module: the same code path runs on CPU and GPU (issue 13, item 4); the only device-dependent
choices are *where* tensors live and *which precision* the products use, and both can move a number, so both
are resolved here once and recorded by the caller (``device`` and ``precision`` in every output).

bf16 tolerance, measured with ``benchmarks/bench_forward.py --precision-check`` (official AASIST and
AASIST-L weights, fast path, generated source-filter speech and Griffin-Lim / mel-vocoder spoofs, batch 8,
m-sharpness rho 0.05): see :data:`BF16_NOTE`.  In short: logits move by up to about 0.26 (2.5 % of their
scale), m-sharpness by up to 0.6 % relative, and an EER can move by single trials on small sets -- use bf16
for exploratory sweeps and compare checkpoints only within one precision.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from .errors import SharpscopeError

PRECISIONS = ("fp32", "bf16")
AUTO = "auto"

#: Measured effect of bf16 autocast vs fp32 (benchmarks/bench_forward.py --precision-check, 2026-11-30).
BF16_NOTE = (
    "CPU (2-core AMD EPYC, AVX2, torch 2.13), 16 utterances: AASIST max |logit diff| 0.112 (logit scale "
    "9.6), EER 1.000 -> 1.000, m-sharpness 10.74 -> 10.76 (0.23 %); AASIST-L 0.110 (scale 7.0), EER 0.375 -> "
    "0.250 (one trial of 8), m-sharpness 7.607 -> 7.625 (0.25 %).  GPU (H200, torch 2.11, TF32 off), "
    "64 utterances: AASIST 0.256 (scale 10.2), EER unchanged (0.969), m-sharpness 0.53 %; "
    "AASIST-L 0.151 (scale 7.5), EER unchanged (0.219), m-sharpness 0.45 %."
)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is available, else ``cpu``; any other string is returned as
    given (validate it with :func:`sharpscope.specio.check_device`)."""
    if device != AUTO:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_precision(precision: Any, where: str = "--precision") -> str:
    """``fp32`` or ``bf16``; anything else is a one-line error naming the option."""
    if precision not in PRECISIONS:
        raise SharpscopeError(f"{where}: {precision!r} is not a precision; use {' or '.join(PRECISIONS)}")
    return str(precision)


@contextlib.contextmanager
def autocast(precision: str, device: Any = "cpu") -> Iterator[None]:
    """Run the block in ``precision``: ``fp32`` changes nothing; ``bf16`` is :func:`torch.autocast` with
    ``torch.bfloat16`` on ``device``'s type (matrix products and convolutions in bf16, reductions and losses
    in fp32 -- PyTorch's autocast op lists).  Callers should cast logits back with ``.float()`` before
    losses or scores, so every stored number is fp32."""
    check_precision(precision)
    if precision == "fp32":
        yield
        return
    import torch

    dev_type = torch.device(device).type if not isinstance(device, torch.device) else device.type
    with torch.autocast(device_type=dev_type, dtype=torch.bfloat16):
        yield


def strict_fp32(device: Any = "cuda") -> dict[str, Any]:
    """Make fp32 mean fp32 on CUDA and return the settings to record.

    PyTorch lets cuDNN run fp32 convolutions in TF32 (10-bit mantissa) by default, so "fp32" on a GPU is not
    the fp32 of the CPU; AASIST is almost all convolutions.  This turns TF32 off for convolutions and matrix
    products (a no-op on CPU) and returns ``{"cudnn_tf32": ..., "matmul_tf32": ...}`` for the output's
    settings.
    """
    import torch

    dev_type = torch.device(device).type if not isinstance(device, torch.device) else device.type
    if dev_type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return {
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32) if dev_type == "cuda" else None,
        "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if dev_type == "cuda" else None,
    }


def enable_hugepage_allocations() -> bool:
    """Ask PyTorch's CPU allocator to back large tensors with transparent huge pages.

    Why: on CPU every activation of AASIST is a fresh allocation of tens to hundreds of MB; with 4 KiB pages
    the kernel page-faults every page on first touch, and on a 2-core VM that made an element-wise op (SELU,
    add, clone) over one AASIST activation 6-8x slower than the arithmetic (measured: clone of a 127 MB tensor
    0.20 s -> 0.036 s).  PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first allocation, so this only
    takes effect when called before ``torch`` is imported (``sharpscope/__init__`` calls it); an explicit
    ``THP_MEM_ALLOC_ENABLE=0`` in the environment is respected.  No number changes, only speed.

    Returns False when ``torch`` was already imported (the call then changes nothing for this process).
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return os.environ["THP_MEM_ALLOC_ENABLE"] == "1" and "torch" not in sys.modules
