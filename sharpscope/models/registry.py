"""Architecture registry: one name -> one builder.

Every sharpscope model maps a batch of 16 kHz waveforms ``[B, T]`` to logits ``[B, 2]`` ordered
``[spoof, bonafide]`` (the order of AASIST and SSL_Anti-spoofing); the score is the bona-fide logit.
A new architecture is one builder function plus one line in ``ARCHS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import CheckpointError


def _aasist(**cfg: Any) -> nn.Module:
    from .aasist import build_aasist

    return build_aasist("aasist", **cfg)


def _aasist_l(**cfg: Any) -> nn.Module:
    from .aasist import build_aasist

    return build_aasist("aasist-l", **cfg)


def _ssl_aasist(**cfg: Any) -> nn.Module:
    from .ssl import build_ssl_model

    return build_ssl_model(head="aasist", **cfg)


def _ssl_linear(**cfg: Any) -> nn.Module:
    from .ssl import build_ssl_model

    return build_ssl_model(head="linear", **cfg)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "aasist": _aasist,
    "aasist-l": _aasist_l,
    "ssl-aasist": _ssl_aasist,
    "ssl-linear": _ssl_linear,
}


def build_model(arch: str, **cfg: Any) -> nn.Module:
    """Build an untrained model of architecture ``arch`` (see :data:`ARCHS`)."""
    try:
        builder = ARCHS[arch]
    except KeyError:
        raise CheckpointError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}") from None
    return builder(**cfg)


def family_of(arch: str, model: nn.Module | None = None) -> str:
    """The architecture family a result belongs to: the registered architecture, ``+lora`` when the model
    carries LoRA adapters.  Sharpness scales differ between families (parameter count and
    parameterisation), so correlations are computed within one family unless pooling is asked for."""
    if model is not None and any("lora_" in name for name, _ in model.named_parameters()):
        return f"{arch}+lora"
    return arch
