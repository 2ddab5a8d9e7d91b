"""Reading logits out of model outputs, and forwards that do not depend on batch mates.

**Output layouts.**  sharpscope's own models return logits ``[B, 2]`` ordered ``[spoof, bonafide]``.  Foreign
models return tuples, and the position of the logits differs between code bases: the official AASIST code
(clovaai/aasist) returns ``(last_hidden, logits)``, SAM-AntiSpoofing (Huang et al. 2025) returns
``(logits, hidden)``.  Guessing by position would silently read hidden features as logits, so a tuple is
only read where the model *declares* its layout (class or instance attribute ``output_layout``, one of
:data:`OUTPUT_LAYOUTS`) or where the caller wraps it in :class:`LogitsOutput`.

**Batch-independent forwards.**  With crop ``full`` the utterances of a batch have different lengths; padding
them with zeros into one tensor would change every shorter utterance's logits (AASIST has no length mask), so
its score would depend on its batch mates.  :func:`grouped_forward` runs each group of *exactly equal* length
as its own forward (no padding at all) and puts the logits back in batch order, so the batch keeps its
composition (the loss is still taken over the whole batch) while every utterance's logits are those it gets
alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

#: layout name -> index of the logits in a tuple output (``None``: the output is the logits tensor itself)
OUTPUT_LAYOUTS: dict[str, int | None] = {
    "logits": None,
    "official-aasist": 1,  # clovaai/aasist: (last_hidden, output)
    "sam-antispoofing": 0,  # SAM-AntiSpoofing (Huang et al. 2025): (logits, hidden)
}


def output_layout(model: Any) -> str:
    """The declared output layout of ``model`` (default ``logits``)."""
    layout = getattr(model, "output_layout", "logits")
    if layout not in OUTPUT_LAYOUTS:
        raise CheckpointError(
            f"{type(model).__name__}.output_layout is {layout!r}; use one of {', '.join(OUTPUT_LAYOUTS)}"
        )
    return str(layout)


def logits_of(output: Any, layout: str = "logits") -> torch.Tensor:
    """The ``[B, C]`` logits of a model output under a declared ``layout``.

    A tensor is the logits; an object with a tensor ``.logits`` (``transformers`` heads) gives that; a tuple
    needs a layout naming the position -- it is never guessed.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        index = OUTPUT_LAYOUTS.get(layout)
        if index is None:
            raise CheckpointError(
                f"the model returned a {type(output).__name__} of {len(output)} outputs and declares no "
                "output layout; set its output_layout attribute or wrap it in "
                "sharpscope.models.outputs.LogitsOutput(model, layout) with layout 'official-aasist' "
                "((hidden, logits)) or 'sam-antispoofing' ((logits, hidden))"
            )
        if index >= len(output):
            raise CheckpointError(f"layout {layout!r} reads output {index} of a {len(output)}-tuple")
        return output[index]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise CheckpointError(f"cannot find logits in a model output of type {type(output).__name__}")


def model_logits(model: Any, output: Any) -> torch.Tensor:
    """Logits of ``output`` as ``model`` declares them (see :func:`output_layout`)."""
    return logits_of(output, output_layout(model))


class LogitsOutput(nn.Module):
    """Wraps a foreign model so that it returns logits only (its parameters keep their names under
    ``inner.``); ``layout`` is one of :data:`OUTPUT_LAYOUTS`."""

    def __init__(self, model: nn.Module, layout: str) -> None:
        super().__init__()
        if layout not in OUTPUT_LAYOUTS:
            raise CheckpointError(f"unknown output layout {layout!r}; use one of {', '.join(OUTPUT_LAYOUTS)}")
        self.inner = model
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.inner(x), self.layout)


def length_groups(lengths: torch.Tensor | None) -> list[torch.Tensor] | None:
    """Index groups of exactly equal length (``None`` when the batch needs no grouping)."""
    if lengths is None:
        return None
    lens = lengths.detach().cpu()
    values = torch.unique(lens)
    if len(values) <= 1:
        return None
    return [torch.nonzero(lens == v).flatten() for v in values]


def grouped_forward(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    lengths: torch.Tensor | None,
    dim: int = 0,
) -> torch.Tensor:
    """``fn`` applied to each exact-length group of ``x`` (trimmed to that length, no padding), outputs
    scattered back into batch order along ``dim`` (0 for ``[B, C]`` logits, 1 for vmapped ``[c, B, C]``).

    With ``lengths`` ``None`` or all equal this is ``fn(x)``.
    """
    groups = length_groups(lengths)
    if groups is None:
        if lengths is not None and int(lengths.max()) < x.shape[-1]:
            return fn(x[..., : int(lengths.max())])
        return fn(x)
    lens = lengths.detach().cpu()  # type: ignore[union-attr]
    parts = []
    for idx in groups:
        n = int(lens[idx[0]])
        parts.append(fn(x[idx.to(x.device)][..., :n]))
    order = torch.cat(groups).to(parts[0].device)
    out = torch.cat(parts, dim=dim)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return out.index_select(dim, inverse)


def forward_logits(
    model: nn.Module,
    x: torch.Tensor,
    lengths: torch.Tensor | None = None,
    params: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits ``[B, C]`` of ``model`` on ``x`` (at ``params`` through ``functional_call`` when given).

    The output is read by the model's declared layout (:func:`sharpscope.models.outputs.model_logits`), and
    with ``lengths`` each exact-length group runs on its own
    (:func:`~sharpscope.models.outputs.grouped_forward`) so that no utterance's logits depend on its batch
    mates.
    """

    def fn(inp: torch.Tensor) -> torch.Tensor:
        out = model(inp) if params is None else torch.func.functional_call(model, params, (inp,))
        return model_logits(model, out)

    return grouped_forward(fn, x, lengths)
