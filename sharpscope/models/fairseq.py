"""fairseq <-> transformers parameter names of wav2vec 2.0 front ends.

SSL_Anti-spoofing (Tak et al., Odyssey 2022) and SAM-AntiSpoofing (Huang et al., 2025) save the front end
under ``ssl_model.model.`` with fairseq names; :func:`sharpscope.models.ssl.build_ssl_model` uses
transformers' ``Wav2Vec2Model`` names under ``ssl.``.  This module only renames keys (and splits a stored
``pos_conv`` weight into weight-norm g/v); it builds no model, so the checkpoint loader can use it without
importing the SSL model code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

log = logging.getLogger(__name__)

#: fairseq-only modules of pre-training (quantiser, projections of the contrastive loss, HuBERT labels).
FAIRSEQ_DROP_PREFIXES = (
    "quantizer.",
    "input_quantizer.",
    "project_q.",
    "project_inp.",
    "final_proj.",
    "target_glu.",
    "label_embs_concat",
)
_FAIRSEQ_SSL_PREFIXES = ("ssl_model.model.", "ssl_model.")
_LAYER_RENAMES = {
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.out_proj": "attention.out_proj",
    "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}
_POS = "encoder.pos_conv_embed.conv."
_WN_PARAM = {"g": "parametrizations.weight.original0", "v": "parametrizations.weight.original1"}
_WN_LEGACY = {"g": "weight_g", "v": "weight_v"}


@dataclass
class FairseqRemap:
    """Result of :func:`convert_fairseq_state_dict`: the renamed tensors and the fairseq keys dropped."""

    state_dict: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)
    renamed: int = 0


def _uses_parametrized_weight_norm(target_keys: Collection[str] | None) -> bool:
    if target_keys is not None:
        if any(k.endswith(_POS + _WN_PARAM["g"]) for k in target_keys):
            return True
        if any(k.endswith(_POS + _WN_LEGACY["g"]) for k in target_keys):
            return False
    return hasattr(nn.utils.parametrizations, "weight_norm")


def fairseq_ssl_key(name: str, parametrized: bool = True) -> str | None:
    """transformers name of one fairseq wav2vec 2.0 parameter name (None for fairseq-only keys).

    Raises :class:`CheckpointError` for names it does not know (never drops silently).
    """
    if name.startswith(FAIRSEQ_DROP_PREFIXES):
        return None
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(0|2|2\.1)\.(weight|bias)", name)
    if m:
        part = "conv" if m.group(2) == "0" else "layer_norm"
        return f"feature_extractor.conv_layers.{m.group(1)}.{part}.{m.group(3)}"
    m = re.fullmatch(r"(layer_norm|post_extract_proj)\.(weight|bias)", name)
    if m:
        part = "layer_norm" if m.group(1) == "layer_norm" else "projection"
        return f"feature_projection.{part}.{m.group(2)}"
    if name == "mask_emb":
        return "masked_spec_embed"
    m = re.fullmatch(r"encoder\.pos_conv\.0\.(weight_g|weight_v|bias)", name)
    if m:
        if m.group(1) == "bias":
            return _POS + "bias"
        names = _WN_PARAM if parametrized else _WN_LEGACY
        return _POS + names[m.group(1)[-1]]
    m = re.fullmatch(r"encoder\.layer_norm\.(weight|bias)", name)
    if m:
        return name
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(\w+(?:\.\w+)?)\.(weight|bias)", name)
    if m and m.group(2) in _LAYER_RENAMES:
        return f"encoder.layers.{m.group(1)}.{_LAYER_RENAMES[m.group(2)]}.{m.group(3)}"
    raise CheckpointError(f"unknown fairseq wav2vec2 key {name!r}; this checkpoint layout is not supported")


def strip_module_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` prefix that DataParallel put on every key (only when all keys have it)."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def is_fairseq_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True when the keys use the fairseq layout of SSL_Anti-spoofing / SAM-AntiSpoofing (``ssl_model.*``)."""
    return any(k.removeprefix("module.").startswith("ssl_model.") for k in state_dict)


def convert_fairseq_state_dict(
    state_dict: Mapping[str, torch.Tensor], target_keys: Collection[str] | None = None
) -> FairseqRemap:
    """Rename an SSL_Anti-spoofing / SAM-AntiSpoofing checkpoint to the names of :func:`build_ssl_model`.

    Handles an optional ``module.`` (DataParallel) prefix, ``ssl_model.model.`` + fairseq wav2vec 2.0 names
    (base and layer-norm-first / XLS-R layouts), the ``aasist.`` sub-module of SAM-AntiSpoofing's
    ``SSL_AASIST`` and both weight-norm parametrisations of ``pos_conv`` (detected from ``target_keys``, the
    keys of the model to load into, or from the installed torch).  fairseq-only pre-training keys
    (:data:`FAIRSEQ_DROP_PREFIXES`, and ``mask_emb`` unless ``target_keys`` include ``masked_spec_embed``)
    are dropped and listed in ``dropped``.  A fairseq ``pos_conv`` stored without weight norm (plain
    ``weight``) is split into ``g = ||w||`` (over dims 0, 1) and ``v = w``.
    """
    sd = strip_module_prefix(state_dict)
    parametrized = _uses_parametrized_weight_norm(target_keys)
    # sharpscope front ends never mask (no masked_spec_embed) unless built with mask_time_prob > 0
    keep_mask = target_keys is not None and any(k.endswith("masked_spec_embed") for k in target_keys)
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    renamed = 0
    for key, value in sd.items():
        prefix = next((p for p in _FAIRSEQ_SSL_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            new = key.removeprefix("aasist.")
            renamed += new != key
            out[new] = value
            continue
        inner = key[len(prefix) :]
        if inner == "encoder.pos_conv.0.weight":  # weight norm removed before saving
            g = value.norm(dim=(0, 1), keepdim=True)
            names = _WN_PARAM if parametrized else _WN_LEGACY
            out["ssl." + _POS + names["g"]] = g
            out["ssl." + _POS + names["v"]] = value
            renamed += 1
            continue
        ours = fairseq_ssl_key(inner, parametrized)
        if ours is None or (ours == "masked_spec_embed" and not keep_mask):
            dropped.append(key)
            continue
        out["ssl." + ours] = value
        renamed += 1
    if dropped:
        log.info("dropped %d fairseq-only keys: %s", len(dropped), ", ".join(dropped))
    return FairseqRemap(out, dropped, renamed)


def remap_fairseq_keys(
    state_dict: Mapping[str, torch.Tensor], target_keys: Collection[str] | None = None
) -> dict[str, torch.Tensor]:
    """State dict of :func:`convert_fairseq_state_dict` (the dropped keys are logged at INFO level)."""
    return convert_fairseq_state_dict(state_dict, target_keys).state_dict


def to_fairseq_keys(
    state_dict: Mapping[str, torch.Tensor], aasist_prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`remap_fairseq_keys`: SSL_Anti-spoofing names (``ssl_model.model.`` + fairseq).

    ``aasist_prefix="aasist."`` nests the back end like SAM-AntiSpoofing's ``SSL_AASIST``.  The conv stack
    layout (group norm in layer 0 vs. layer norm everywhere) is read from the keys.
    """
    layer_mode = "ssl.feature_extractor.conv_layers.1.layer_norm.weight" in state_dict
    inverse_layer = {v: k for k, v in _LAYER_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith("ssl."):
            head_key = (
                key if key.startswith("output_layer.") or key.startswith("LL.") else aasist_prefix + key
            )
            out[head_key] = value
            continue
        k = key[len("ssl.") :]
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)", k)
        if m:
            part = "0" if m.group(2) == "conv" else ("2.1" if layer_mode else "2")
            new = f"feature_extractor.conv_layers.{m.group(1)}.{part}.{m.group(3)}"
        elif k.startswith("feature_projection."):
            new = k.replace("feature_projection.layer_norm", "layer_norm").replace(
                "feature_projection.projection", "post_extract_proj"
            )
        elif k == "masked_spec_embed":
            new = "mask_emb"
        elif k.startswith(_POS):
            rest = k[len(_POS) :]
            wn = {_WN_PARAM["g"]: "weight_g", _WN_PARAM["v"]: "weight_v", "weight_g": "weight_g"}
            wn.update({"weight_v": "weight_v", "bias": "bias"})
            new = "encoder.pos_conv.0." + wn[rest]
        elif k.startswith("encoder.layer_norm."):
            new = k
        else:
            m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", k)
            if not m or m.group(2) not in inverse_layer:
                raise CheckpointError(f"no fairseq name for {key!r}")
            new = f"encoder.layers.{m.group(1)}.{inverse_layer[m.group(2)]}.{m.group(3)}"
        out["ssl_model.model." + new] = value
    return out
