"""Which parameters a sharpness estimator perturbs, and how they are grouped for a per-layer breakdown.

Scopes:

* ``all`` -- every floating-point parameter, frozen or not;
* ``trainable`` -- parameters with ``requires_grad`` (the SAM-AntiSpoofing reference perturbs "the
  parameters that received a gradient", which is this scope; it equals ``all`` when nothing is frozen);
* ``regex:PATTERN`` -- parameter names matching PATTERN (``re.search``), e.g. ``regex:^head\\.``;
* ``lora-merged`` -- the LoRA adapters are merged into their base weights (``W + BA``) on a deep copy
  (:func:`sharpscope.models.lora.merged_view`) and every parameter of the merged model is perturbed, so a LoRA
  fine-tuned model and a fully fine-tuned one are measured in the same weight space.  The caller's model is
  never modified.
"""

from __future__ import annotations

from torch import nn

from ..errors import SharpscopeError
from .base import select_params

SCOPES = ("all", "trainable", "regex:PATTERN", "lora-merged")


def resolve_scope(model: nn.Module, scope: str) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """``(model to evaluate, {name: parameter to perturb})`` for ``scope``."""
    if scope == "lora-merged":
        try:
            from ..models.lora import merged_view
        except ImportError as exc:  # pragma: no cover - the LoRA module ships with sharpscope
            raise SharpscopeError(f"scope lora-merged needs sharpscope.models.lora ({exc})") from None
        merged = merged_view(model)  # type: ignore[arg-type]  # merged_view refuses models without LoRA
        return merged, select_params(merged, "all")
    return model, select_params(model, scope)


def param_groups(names: list[str], depth: int = 1) -> dict[str, list[str]]:
    """Parameter names grouped by their first ``depth`` dotted components (insertion order kept).

    ``depth=1`` gives top-level modules (``encoder``, ``out_layer``...); a parameter registered directly on
    the root module (AASIST's ``pos_S``) forms its own group.
    """
    if depth < 1:
        raise SharpscopeError(f"per-layer depth must be >= 1, got {depth}")
    groups: dict[str, list[str]] = {}
    for n in names:
        parts = n.split(".")
        key = ".".join(parts[: min(depth, max(len(parts) - 1, 1))])
        groups.setdefault(key, []).append(n)
    return groups
