"""LoRA adapters on the wav2vec 2.0 front end of an SSL countermeasure, via ``peft``.

LoRA: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.

A frozen weight ``W`` of a targeted linear map becomes ``W + (alpha / r) * B A`` with trainable ``A [r, in]``
and ``B [out, r]`` (``B`` starts at zero, so a fresh adapter leaves the outputs unchanged).  Targets are the
self-attention projections ``q_proj, k_proj, v_proj, out_proj`` of every encoder layer.  The back end
(``LL`` + AASIST graph, or the linear head) stays fully trainable; every other front-end weight is frozen.

Adapters are injected in place with :func:`peft.inject_adapter_in_model`, so the model keeps its own class and
forward; the adapted layers gain ``base_layer`` / ``lora_A`` / ``lora_B`` sub-modules.

Directory format written by :func:`save_lora` (loaded by :func:`load_lora_directory`, and by
:func:`sharpscope.models.ssl.load_ssl_directory` which recognises ``adapter_config.json``):

* ``adapter_config.json`` + ``adapter_model.safetensors`` -- the PEFT adapter format; keys are
  ``base_model.model.<wav2vec2 name>.lora_{A,B}.weight``, so ``peft.PeftModel.from_pretrained`` also loads the
  adapter onto a plain :class:`transformers.Wav2Vec2Model`.
* ``head.safetensors`` -- the back-end weights (not part of the adapter).
* ``ssl_base.safetensors`` -- the frozen front-end weights, written when the model was not built from a
  ``pretrained`` directory (or when asked); otherwise the base is re-read from that directory.
* ``config.json`` -- the Wav2Vec2Config; ``sharpscope_lora.json`` -- arch, head, configs, LoRA settings and a
  sha256 fingerprint of the base weights, checked on load so an adapter is never put on the wrong base.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, SpecError
from ..fileio import atomic_write_text
from .ssl import (
    HEAD_OF_ARCH,
    SSLCountermeasure,
    build_ssl_model,
    load_state_dict_checked,
    read_weights,
    resolve_ssl_config,
)

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_WEIGHTS = "head.safetensors"
BASE_WEIGHTS = "ssl_base.safetensors"
LORA_SIDECAR = "sharpscope_lora.json"
FORMAT = "sharpscope-lora/1"
PEFT_PREFIX = "base_model.model."  # key prefix of PeftModel adapter files
ADAPTER_NAME = "default"


@dataclass(frozen=True)
class LoraSettings:
    """What :func:`add_lora` was called with (stored in ``sharpscope_lora.json``)."""

    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


@dataclass(frozen=True)
class TrainableCount:
    """Parameter counts (elements, not tensors)."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def _check_ssl(model: nn.Module) -> None:
    if not isinstance(model, SSLCountermeasure):
        raise SpecError(
            f"LoRA needs an SSL countermeasure (ssl-aasist / ssl-linear), got {type(model).__name__}"
        )


def has_lora(model: nn.Module) -> bool:
    """True when LoRA adapters are injected in ``model``."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def add_lora(
    model: SSLCountermeasure,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
) -> SSLCountermeasure:
    """Inject LoRA adapters (rank ``rank``, scale ``alpha / rank``) into the attention projections of
    ``model.ssl`` in place and set the trainable set: adapters + back end.  Returns ``model``."""
    from peft import LoraConfig, inject_adapter_in_model

    _check_ssl(model)
    if has_lora(model):
        raise SpecError("model already has LoRA adapters")
    if int(rank) < 1:
        raise SpecError(f"LoRA rank must be >= 1, got {rank}")
    targets = tuple(str(t) for t in target_modules)
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),  # type: ignore[arg-type]  # peft annotates int; the scale alpha / r takes floats
        lora_dropout=float(dropout),
        target_modules=list(targets),
        bias="none",
        base_model_name_or_path=model.pretrained,
    )
    try:
        inject_adapter_in_model(config, model.ssl, adapter_name=ADAPTER_NAME)
    except ValueError as exc:
        raise SpecError(
            f"LoRA target modules {', '.join(targets)} not found in the SSL front end: {exc}"
        ) from None
    model.train(model.training)  # new adapter modules (their dropout) follow the model's train/eval mode
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("ssl.") or "lora_" in name)
    model.lora_settings = LoraSettings(int(rank), float(alpha), float(dropout), targets)
    model.lora_config = config
    return model


def count_trainable(model: nn.Module) -> TrainableCount:
    """Number of trainable and of all parameter elements."""
    params = list(model.parameters())
    return TrainableCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def adapter_state_dict(model: SSLCountermeasure) -> dict[str, torch.Tensor]:
    """Adapter tensors under PEFT file names (``base_model.model.<name>.lora_A.weight``)."""
    marker = f".{ADAPTER_NAME}."
    out = {}
    for k, v in model.ssl.state_dict().items():
        if "lora_" in k:
            out[PEFT_PREFIX + k.replace(marker, ".")] = v.detach().contiguous().cpu()
    return out


def base_state_dict(model: SSLCountermeasure) -> dict[str, torch.Tensor]:
    """Front-end weights without adapters, under the plain transformers names."""
    return {
        k.replace(".base_layer.", "."): v.detach().contiguous().cpu()
        for k, v in model.ssl.state_dict().items()
        if "lora_" not in k
    }


def head_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Back-end weights (everything outside ``ssl``)."""
    return {
        k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not k.startswith("ssl.")
    }


def state_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors (keys sorted)."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_lora(model: SSLCountermeasure, directory: str | Path, include_base: bool | None = None) -> Path:
    """Write the LoRA directory described in the module docstring; returns its path.

    ``include_base`` (default: only when the model has no ``pretrained`` directory to re-read the base from)
    also stores the frozen front-end weights.
    """
    from safetensors.torch import save_file

    _check_ssl(model)
    settings: LoraSettings | None = getattr(model, "lora_settings", None)
    if settings is None or not has_lora(model):
        raise CheckpointError(
            "model has no LoRA adapters: add them with add_lora or save it with save_ssl_directory"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if include_base is None:
        include_base = model.pretrained is None
    base = base_state_dict(model)
    model.lora_config.save_pretrained(str(out))
    save_file(adapter_state_dict(model), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    save_file(head_state_dict(model), str(out / HEAD_WEIGHTS), metadata={"format": "pt"})
    if include_base:
        save_file(base, str(out / BASE_WEIGHTS), metadata={"format": "pt"})
    model.ssl.config.save_pretrained(str(out))
    sidecar = {
        "format": FORMAT,
        **model.arch_config,
        "lora": settings.as_dict(),
        "base_fingerprint": state_fingerprint(base),
        "base_weights": BASE_WEIGHTS if include_base else None,
    }
    atomic_write_text(out / LORA_SIDECAR, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return out


def _load_part(model: nn.Module, sd: Mapping[str, torch.Tensor], expected: set[str], source: Path) -> None:
    """Load ``sd`` into ``model`` non-strictly, requiring its keys to be exactly ``expected``."""
    missing, unexpected = expected - set(sd), set(sd) - expected
    if missing or unexpected:
        detail = "; ".join(
            f"{label} {', '.join(sorted(keys)[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        )
        raise CheckpointError(f"{source} does not match the model: {detail}")
    target = model.state_dict()
    for k, v in sd.items():
        if tuple(v.shape) != tuple(target[k].shape):
            raise CheckpointError(
                f"{source}: shape of {k} is {tuple(v.shape)}, the model needs {tuple(target[k].shape)}"
            )
    model.load_state_dict(dict(sd), strict=False)


def load_lora_directory(path: str | Path, arch: str | None = None, **cfg: Any) -> SSLCountermeasure:
    """Rebuild base model + adapters + back end from a :func:`save_lora` directory, in eval mode.

    ``cfg`` may hold ``pretrained`` (where the base front end lives now, overriding the recorded path),
    ``ssl_config`` overrides (e.g. ``{"attn_implementation": "sdpa"}``) and back-end options.
    """
    root = Path(path)
    side_path = root / LORA_SIDECAR
    if not root.is_dir() or not side_path.is_file():
        raise CheckpointError(
            f"{root} is not a sharpscope LoRA directory (no {LORA_SIDECAR}); save it with save_lora"
        )
    try:
        side = json.loads(side_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {side_path}: {exc}") from None
    if side.get("format") != FORMAT:
        raise CheckpointError(
            f"{side_path} has format {side.get('format')!r}; this sharpscope reads {FORMAT}"
        )
    saved_arch = side["arch"]
    if arch is not None and arch != saved_arch:
        raise CheckpointError(f"{root} holds a {saved_arch} model, not {arch}; fix the checkpoint's arch")
    cfg = dict(cfg)
    pretrained = cfg.pop("pretrained", None) or side.get("pretrained")
    ssl_cfg = {**resolve_ssl_config(side["ssl_config"]), **resolve_ssl_config(cfg.pop("ssl_config", None))}
    head_cfg = {**side.get("head_cfg", {}), **cfg}
    freeze = bool(head_cfg.pop("freeze_ssl", side.get("freeze_ssl", False)))
    head = HEAD_OF_ARCH[saved_arch]

    if side.get("base_weights"):
        model = build_ssl_model(head, ssl_config=ssl_cfg, freeze_ssl=freeze, **head_cfg)
        base_file = root / side["base_weights"]
        load_state_dict_checked(model.ssl, read_weights(base_file), source=str(base_file))
        model.pretrained = side.get("pretrained")
    elif pretrained is not None:
        model = build_ssl_model(
            head, ssl_config=ssl_cfg, pretrained=pretrained, freeze_ssl=freeze, **head_cfg
        )
    else:
        raise CheckpointError(
            f"{root} stores no base weights and no pretrained directory; pass pretrained=PATH"
        )
    if state_fingerprint(base_state_dict(model)) != side["base_fingerprint"]:
        raise CheckpointError(
            f"base SSL weights for {root} (from {side.get('base_weights') or pretrained}) differ from those "
            "the adapter was trained on; point pretrained= at the original base model"
        )

    lora = side["lora"]
    add_lora(model, lora["rank"], lora["alpha"], lora["dropout"], lora["target_modules"])
    adapter_file = root / ADAPTER_WEIGHTS
    adapter = read_weights(adapter_file)
    marker = f".{ADAPTER_NAME}."
    renamed = {}
    for k, v in adapter.items():
        name = k.removeprefix(PEFT_PREFIX)
        for part in ("lora_A", "lora_B"):
            name = name.replace(f".{part}.", f".{part}{marker}")
        renamed[name] = v
    lora_keys = {k for k in model.ssl.state_dict() if "lora_" in k}
    _load_part(model.ssl, renamed, lora_keys, adapter_file)
    head_file = root / HEAD_WEIGHTS
    head_keys = {k for k in model.state_dict() if not k.startswith("ssl.")}
    _load_part(model, read_weights(head_file), head_keys, head_file)
    return model.eval()


def merged_view(model: SSLCountermeasure, requires_grad: bool = True) -> SSLCountermeasure:
    """A deep copy with every adapter merged into its base weight (``W + (alpha / r) B A``) and the plain
    linear layers restored, so parameter names and count are those of the model without LoRA.

    For analysis in the full weight space: all parameters of the copy get ``requires_grad`` (default True).
    The original model is not modified.
    """
    from peft.tuners.lora import LoraLayer

    _check_ssl(model)
    view = copy.deepcopy(model)
    adapted = [(name, m) for name, m in view.ssl.named_modules() if isinstance(m, LoraLayer)]
    for name, module in adapted:
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = view.ssl.get_submodule(parent_name) if parent_name else view.ssl
        setattr(parent, child, module.get_base_layer())
    for attr in ("lora_settings", "lora_config"):
        if hasattr(view, attr):
            delattr(view, attr)
    for p in view.parameters():
        p.requires_grad_(requires_grad)
    return view
