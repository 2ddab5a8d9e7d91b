"""Checkpoint formats: read any common layout into a ready model, write sharpscope's own.

Formats read by :func:`load_checkpoint` (the ``format`` field of the result names which one was found):

* ``torch`` -- a file written by ``torch.save``: a plain state dict (official AASIST ``.pth``), or a dict
  wrapping one under ``model`` (SAM-AntiSpoofing, fairseq), ``state_dict`` (Lightning), ``model_state_dict``,
  ``net``/``network``/``module``.  ``module.`` (DataParallel) and ``_orig_mod.`` (``torch.compile``) key
  prefixes are stripped, and a ``model.`` prefix when that is what stands between the keys and the model.
  Files are read with ``torch.load(weights_only=True)`` only; a file that needs arbitrary unpickling is
  refused unless the caller passes ``trust_checkpoint=True`` (``--trust-checkpoint``), then the format is
  ``torch-pickle``.
* ``safetensors`` -- a ``.safetensors`` file; arch and config come from its header metadata or from a JSON
  sidecar ``<stem>.json`` (both written by :func:`save_checkpoint`).
* ``safetensors-dir`` -- a directory holding ``model.safetensors`` and optionally ``sharpscope.json`` (or a
  non-transformers ``config.json``) with the arch config.
* ``transformers`` / ``peft`` -- directories with ``config.json`` / ``adapter_config.json``, handed to
  ``sharpscope.models.ssl.load_ssl_directory`` / ``sharpscope.models.lora.load_lora_directory``.

Every failure is a :class:`~sharpscope.errors.CheckpointError` with one line: missing file, corrupt or
truncated file, untrusted pickle, or a state dict that does not fit the architecture (first keys of each kind
of mismatch, with counts, and the arch tried -- plus the AASIST variant that would fit, when one does).

Models report how to rebuild themselves through two attributes, ``arch`` (a registry name) and
``model_cfg`` (JSON-friendly kwargs for :func:`sharpscope.models.registry.build_model`);
:func:`save_checkpoint` stores both so a checkpoint of any (e.g. tiny) config loads back without further
arguments.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
from torch import nn

from ..errors import CheckpointError
from ..fileio import atomic_write, jsonable
from ..provenance import file_sha256, provenance
from .fairseq import remap_fairseq_keys

if TYPE_CHECKING:
    from .ssl import SSLCountermeasure

SIDECAR_FORMAT = "sharpscope-checkpoint"
SIDECAR_VERSION = 1
DIR_WEIGHTS = "model.safetensors"
DIR_SIDECAR = "sharpscope.json"
DIR_META = "sharpscope_meta.json"  # caller meta beside transformers / peft directories written by the hooks
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "net", "network", "module")
ALWAYS_STRIPPED = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
_MAX_LISTED = 4


@dataclass
class LoadedCheckpoint:
    """A model in eval mode on ``device`` plus where it came from.

    ``sha256`` hashes the weights file (for transformers/peft directories: every file of the directory);
    ``meta`` holds the metadata saved with the checkpoint (sidecar ``meta``) plus ``meta["loader"]``: how it
    was read (wrapper key, stripped prefix, model config...).
    """

    model: nn.Module
    arch: str
    path: Path
    sha256: str
    format: str
    meta: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ loading


def load_checkpoint(
    path: str | Path,
    arch: str | None,
    *,
    model_cfg: Mapping[str, Any] | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Load the checkpoint at ``path`` into a freshly built ``arch`` model (strict key/shape match).

    ``arch`` may be ``None`` when the checkpoint says it (sidecar or safetensors metadata); a stated arch that
    contradicts the saved one is an error.  ``model_cfg`` overrides the saved config key by key.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}; check the path")
    overrides = check_model_cfg(model_cfg or {}, "model config")
    info: dict[str, Any]
    if p.is_dir():
        kind = detect_directory(p)
        if kind in ("peft", "transformers"):
            return _load_via_hook(p, kind, arch, overrides, device)
        weights = p / DIR_WEIGHTS
        if not weights.is_file():
            raise CheckpointError(f"checkpoint directory {p} has no {DIR_WEIGHTS}; it cannot be loaded")
        saved = _directory_sidecar(p)
        state, header = _read_safetensors(weights)
        saved = saved or header
        fmt, info, sha = "safetensors-dir", {}, file_sha256(weights)
    else:
        saved = _file_sidecar(p)
        if p.suffix == ".safetensors":
            state, header = _read_safetensors(p)
            saved = saved or header
            fmt, info = "safetensors", {}
        else:
            state, fmt, info = _read_torch(p, trust_checkpoint)
        sha = file_sha256(p)

    arch = _resolve_arch(p, arch, saved)
    cfg = {**(saved or {}).get("model_cfg", {}), **overrides}
    if arch.startswith("ssl-") and not saved:
        state, info["remapped"] = _remap_ssl(state)
    model = build_checked(arch, cfg, f"model config of {p}")
    state, stripped = _strip_prefixes(state, model.state_dict())
    if stripped:
        info["stripped_prefix"] = stripped
    _load_strict(model, state, arch, p)
    model.to(device).eval()
    meta = dict((saved or {}).get("meta", {}))
    meta["loader"] = {**info, "model_cfg": cfg, "n_tensors": len(state)}
    return LoadedCheckpoint(model=model, arch=arch, path=p, sha256=sha, format=fmt, meta=meta)


def detect_directory(path: Path) -> str:
    """``"peft"`` (adapter_config.json), ``"transformers"`` (a config.json naming a ``model_type``, as
    written by transformers and :func:`sharpscope.models.ssl.save_ssl_directory`) or ``"safetensors"``
    (sharpscope's own directory: model.safetensors [+ sharpscope.json or a plain config.json])."""
    if (path / "adapter_config.json").is_file():
        return "peft"
    config = path / "config.json"
    has_config = config.is_file()
    if has_config:
        data = _read_json(config)
        if "model_type" in data or "architectures" in data:
            return "transformers"
    if (path / DIR_WEIGHTS).is_file() or (path / DIR_SIDECAR).is_file():
        return "safetensors"
    if has_config:
        return "transformers"
    raise CheckpointError(
        f"directory {path} is not a checkpoint: expected adapter_config.json (peft), config.json "
        f"(transformers) or {DIR_WEIGHTS} (sharpscope)"
    )


def check_lora_sidecar(p: Path) -> None:
    """Check the fields of a LoRA directory's ``sharpscope_lora.json`` that the loader trusts.

    ``arch`` must name an SSL architecture, the ``lora`` block must hold its settings, and ``base_weights`` --
    a file name joined onto the directory -- must stay inside it (``../x`` or an absolute path would read
    any file on the machine).
    """
    from .registry import ARCHS

    side_path = p / "sharpscope_lora.json"
    if not side_path.is_file():
        return  # the loader says what is missing
    side = _read_json(side_path)
    arch = side.get("arch")
    if not isinstance(arch, str) or arch not in ARCHS or not arch.startswith("ssl-"):
        ssl = ", ".join(a for a in ARCHS if a.startswith("ssl-"))
        raise CheckpointError(f"{side_path}: arch {arch!r} is missing or not one of {ssl}; fix the sidecar")
    for key in ("ssl_config", "base_fingerprint", "lora"):
        if key not in side:
            raise CheckpointError(f"{side_path}: no {key!r}; re-save the model with save_lora")
    lora = side["lora"]
    if not isinstance(lora, dict) or not {"rank", "alpha", "dropout", "target_modules"} <= set(lora):
        raise CheckpointError(
            f"{side_path}: lora must hold rank, alpha, dropout and target_modules; re-save it with save_lora"
        )
    base = side.get("base_weights")
    if base is not None:
        ok = isinstance(base, str) and base and Path(base).name == base and not base.startswith(".")
        if not ok:
            raise CheckpointError(
                f"{side_path}: base_weights {base!r} must be a file name inside {p} (no folders, no '..')"
            )
    head_cfg = side.get("head_cfg", {})
    if not isinstance(head_cfg, dict):
        raise CheckpointError(f"{side_path}: head_cfg {head_cfg!r} must be a mapping")
    check_model_cfg(head_cfg, f"{side_path}: head_cfg")


def _load_via_hook(
    p: Path, kind: str, arch: str | None, cfg: dict[str, Any], device: str | torch.device
) -> LoadedCheckpoint:
    """Load a LoRA (``kind="peft"``) or transformers-style SSL directory with its own loader.

    The LoRA test lives here, with the loader, so that :mod:`.ssl` never needs to know about :mod:`.lora`
    (imports run one way: checkpoints -> lora -> ssl -> fairseq).  Imported lazily: transformers and peft
    are slow to import and only SSL checkpoints need them.
    """
    loader: Callable[..., Any]
    if kind == "peft":
        check_lora_sidecar(p)
        from .lora import load_lora_directory as loader

        module, func = "lora", "load_lora_directory"
    else:
        from .ssl import load_ssl_directory as loader

        module, func = "ssl", "load_ssl_directory"
    try:
        out = loader(p, arch, **cfg)
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"cannot load {kind} directory {p} ({type(exc).__name__}: {first}); check its config files"
        ) from None
    model, meta = out if isinstance(out, tuple) else (out, {})
    model.to(device).eval()
    meta = dict(meta or {})
    if (p / DIR_META).is_file():
        meta = {**_read_json(p / DIR_META), **meta}
    meta["loader"] = {"model_cfg": cfg, "hook": f"sharpscope.models.{module}.{func}"}
    arch = str(getattr(model, "arch", None) or arch)
    return LoadedCheckpoint(model=model, arch=arch, path=p, sha256=file_sha256(p), format=kind, meta=meta)


def _read_torch(p: Path, trust: bool) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """``(state_dict, format, info)`` from a ``torch.save`` file, weights-only unless ``trust``."""
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is an empty file; re-download or re-save it")
    fmt = "torch"
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only load failed" not in text.lower():
            raise _corrupt(p, exc) from None
        if not trust:
            raise CheckpointError(_untrusted_message(p, text)) from None
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc2:  # arbitrary unpickling raises anything
            raise _corrupt(p, exc2) from None
        fmt = "torch-pickle"
    except Exception as exc:  # zip/EOF/KeyError... all mean "not a readable checkpoint"
        raise _corrupt(p, exc) from None
    state, info = _extract_state_dict(obj, p)
    return state, fmt, info


def _untrusted_message(p: Path, text: str) -> str:
    marker = "Unsupported global: GLOBAL "
    if marker in text:
        what = text.split(marker, 1)[1].split()[0]
        return (
            f"checkpoint {p} contains Python objects ({what}) that a weights-only load refuses; if you trust "
            "its source, rerun with --trust-checkpoint (this unpickles arbitrary code)"
        )
    return (
        f"checkpoint {p} is not a weights-only PyTorch file (corrupt, or an arbitrary pickle); if it is a "
        "pickle from a source you trust, rerun with --trust-checkpoint"
    )


def _corrupt(p: Path, exc: BaseException) -> CheckpointError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(first) > 160:
        first = first[:157] + "..."
    return CheckpointError(
        f"cannot read checkpoint {p}: {first} -- the file is corrupt, truncated or not a checkpoint; "
        "re-download or re-save it"
    )


def _is_tensor_mapping(obj: Any) -> TypeGuard[Mapping[str, torch.Tensor]]:
    return (
        isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _extract_state_dict(obj: Any, p: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Unwrap a plain state dict, a whole pickled module, or a dict wrapping either under a common key."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), {"wrapper_key": "<nn.Module>"}
    if _is_tensor_mapping(obj):
        return dict(obj), {}
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if _is_tensor_mapping(inner):
                extras = {
                    k: v
                    for k, v in obj.items()
                    if k != key and isinstance(v, (int, float, str, bool)) and k != ""
                }
                return dict(inner), {"wrapper_key": key, "wrapper_extras": extras}
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(
            f"checkpoint {p} is a dict without a state dict (top-level keys: {keys}); expected tensors or a "
            f"state dict under one of {', '.join(WRAPPER_KEYS)}"
        )
    raise CheckpointError(f"checkpoint {p} holds a {type(obj).__name__}, not a state dict")


def _read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(tensors, saved)`` where ``saved`` is the sharpscope header metadata (arch, model_cfg) if any."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # safe_open has no __iter__
    except Exception as exc:  # SafetensorError and OS errors
        raise _corrupt(p, exc) from None
    if not state:
        raise CheckpointError(f"checkpoint {p} holds no tensors; re-save it")
    saved = None
    if header.get("sharpscope.arch") or header.get("sharpscope.model_cfg"):
        try:
            cfg = json.loads(header.get("sharpscope.model_cfg") or "{}")
        except ValueError:
            raise CheckpointError(
                f"checkpoint {p}: header entry sharpscope.model_cfg is not JSON; re-save the checkpoint or "
                "delete that header entry"
            ) from None
        saved = {
            "arch": header.get("sharpscope.arch") or None,
            "model_cfg": check_model_cfg(cfg, f"checkpoint {p} header sharpscope.model_cfg"),
        }
    return state, saved


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint config {p}: {exc}; fix or delete the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint config {p} must hold a JSON object, found {type(data).__name__}")
    return data


def _normalise_sidecar(data: dict[str, Any], whole_is_cfg: bool, source: Path) -> dict[str, Any]:
    """``{"arch", "model_cfg", "meta"}`` from a sidecar; a bare config file is taken as ``model_cfg``."""
    cfg = data.get("model_cfg", data.get("model_config"))
    if cfg is None and whole_is_cfg:
        cfg = {k: v for k, v in data.items() if k not in ("arch", "meta", "format", "version")}
    cfg = check_model_cfg(cfg or {}, f"{source}: model_cfg")
    cfg.pop("architecture", None)  # the official AASIST .conf names the class there, not a config value
    arch, meta = data.get("arch"), data.get("meta") or {}
    if arch is not None and not isinstance(arch, str):
        raise CheckpointError(f"{source}: arch {arch!r} must be an architecture name (a string)")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}: meta {meta!r} must be a mapping")
    return {"arch": arch, "model_cfg": cfg, "meta": dict(meta)}


def _file_sidecar(p: Path) -> dict[str, Any] | None:
    side = p.with_suffix(".json")
    if not side.is_file() or side == p:
        return None
    data = _read_json(side)
    if data.get("format") != SIDECAR_FORMAT and not ({"arch", "model_cfg"} & set(data)):
        return None  # an unrelated JSON file that happens to share the stem
    return _normalise_sidecar(data, whole_is_cfg=False, source=side)


def _directory_sidecar(p: Path) -> dict[str, Any] | None:
    if (p / DIR_SIDECAR).is_file():
        return _normalise_sidecar(_read_json(p / DIR_SIDECAR), whole_is_cfg=False, source=p / DIR_SIDECAR)
    if (p / "config.json").is_file():
        return _normalise_sidecar(_read_json(p / "config.json"), whole_is_cfg=True, source=p / "config.json")
    return None


def _resolve_arch(p: Path, arch: str | None, saved: dict[str, Any] | None) -> str:
    saved_arch = (saved or {}).get("arch")
    if arch is None:
        if not saved_arch:
            raise CheckpointError(f"checkpoint {p} does not say its architecture; pass it with --arch")
        return str(saved_arch)
    if saved_arch and saved_arch != arch:
        raise CheckpointError(
            f"checkpoint {p} was saved as arch {saved_arch!r} but arch {arch!r} was requested; "
            f"pass --arch {saved_arch} (or omit --arch)"
        )
    return arch


def _remap_ssl(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Apply :func:`sharpscope.models.fairseq.remap_fairseq_keys` (fairseq -> our names)."""
    return dict(remap_fairseq_keys(state)), True


MAX_CONFIG_NUMBER = 1e7  # no model dimension is this large; a typo of 1e12 would be a MemoryError instead


def model_cfg_problems(cfg: Mapping[str, Any], where: str) -> list[str]:
    """Every value of a model config that is not JSON-like or whose number is unbounded, one line each
    naming ``where.key`` (study specs list them all; :func:`check_model_cfg` raises the first)."""
    out: list[str] = []

    def walk(v: Any, key: str) -> None:
        if isinstance(v, Mapping):
            for k, x in v.items():
                walk(x, f"{key}.{k}")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{key}[{i}]")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            if not abs(v) <= MAX_CONFIG_NUMBER:
                out.append(f"{key}: {v!r} is out of range (|value| <= {MAX_CONFIG_NUMBER:g})")
        elif not (v is None or isinstance(v, (str, bool))):
            out.append(f"{key}: {v!r} is not a number, string, list or mapping")

    walk(cfg, where)
    return out


def check_model_cfg(cfg: Any, where: str = "model config") -> dict[str, Any]:
    """``cfg`` as builder keyword arguments: a mapping with string keys whose leaves are JSON-like and whose
    numbers are bounded; else :class:`CheckpointError` naming ``where`` and the key."""
    if not isinstance(cfg, Mapping) or not all(isinstance(k, str) for k in cfg):
        raise CheckpointError(f"{where}: {cfg!r} must be a mapping of builder arguments (name: value)")
    problems = model_cfg_problems(cfg, where)
    if problems:
        raise CheckpointError(problems[0])
    return dict(cfg)


def build_checked(arch: str, cfg: Any, where: str = "model config") -> nn.Module:
    """``build_model(arch, **cfg)`` where a wrongly typed or shaped config value (a string for a channel
    count, a list of the wrong length) is one :class:`CheckpointError` line naming ``where``, not a
    traceback from deep inside the model's constructor."""
    from .registry import build_model

    cfg = check_model_cfg(cfg, where)
    try:
        return build_model(arch, **cfg)
    except CheckpointError:
        raise
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError, AttributeError, ZeroDivisionError,
            OverflowError, AssertionError) as exc:  # fmt: skip
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"{where} does not build arch {arch!r} ({type(exc).__name__}: {first}); fix the config values"
        ) from None


def _strip_prefixes(
    state: dict[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], str]:
    """Drop wrapper prefixes every key shares: always ``module.``/``_orig_mod.``; ``model.`` only when the
    model's own keys do not start with it."""
    stripped = ""
    model_keys = set(model_state)
    changed = True
    while changed and state:
        changed = False
        for prefix in (*ALWAYS_STRIPPED, "model."):
            if not all(k.startswith(prefix) for k in state):
                continue
            if prefix == "model." and (all(k.startswith(prefix) for k in model_keys) or not model_keys):
                continue
            state = {k[len(prefix) :]: v for k, v in state.items()}
            stripped += prefix
            changed = True
    return state, stripped


def _mismatch(
    state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in model_state if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model_state]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in model_state.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, shapes


def _listed(items: list[str], what: str) -> str:
    head = ", ".join(items[:_MAX_LISTED]) + (", ..." if len(items) > _MAX_LISTED else "")
    return f"{len(items)} {what} ({head})"


def _suggest_arch(state: Mapping[str, torch.Tensor], tried: str) -> str | None:
    """The official AASIST variant whose keys and shapes the state dict fits exactly, if any."""
    if "GAT_layer_S.att_weight" not in state:
        return None
    from .aasist import VARIANTS, build_aasist

    for name in VARIANTS:
        if name == tried:
            continue
        if not any(_mismatch(state, build_aasist(name).state_dict())):
            return name
    return None


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], arch: str, p: Path) -> None:
    model_state = model.state_dict()
    missing, unexpected, shapes = _mismatch(state, model_state)
    if missing or unexpected or shapes:
        parts = [
            _listed(v, what)
            for v, what in (
                (missing, "missing keys"),
                (unexpected, "unexpected keys"),
                (shapes, "shape mismatches"),
            )
            if v
        ]
        hint = _suggest_arch(state, arch)
        fix = (
            f"it fits arch {hint!r}: pass --arch {hint}"
            if hint
            else "pass the matching --arch / model config"
        )
        raise CheckpointError(f"checkpoint {p} does not fit arch {arch!r}: {'; '.join(parts)}; {fix}")
    # BatchNorm counters absent from old files: keep the model's own (strict loading would refuse).
    full = {k: state.get(k, model_state[k]) for k in model_state}
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {p} does not load into arch {arch!r}: {first}") from None


# ------------------------------------------------------------------------------------------------- saving


def _unwrap_model(model: nn.Module) -> nn.Module:
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = cast(nn.Module, model._orig_mod)  # torch types attribute reads as Tensor | Module
        else:
            return model


def model_cfg_of(model: nn.Module) -> dict[str, Any]:
    """Registry kwargs that rebuild ``model``: its ``model_cfg`` attribute, or else (SSL countermeasures)
    its ``arch_config`` without ``arch``/``head``/``pretrained`` and with ``head_cfg`` flattened -- a saved
    file holds every weight, so the rebuilt model must not need the pretrained directory."""
    cfg = getattr(model, "model_cfg", None)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    arch_config = getattr(model, "arch_config", None)
    if isinstance(arch_config, Mapping):
        out = {k: v for k, v in arch_config.items() if k not in ("arch", "head", "head_cfg", "pretrained")}
        out.update(arch_config.get("head_cfg") or {})
        return out
    return {}


def _has_lora(model: nn.Module) -> bool:
    return any("lora_" in k for k in model.state_dict())


def save_checkpoint(model: nn.Module, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` so that :func:`load_checkpoint` rebuilds it; returns the path to load from.

    * ``path`` ending in ``.safetensors`` -> that file plus the JSON sidecar ``<stem>.json`` (arch,
      ``model_cfg``, weights sha256, ``meta`` and provenance).  Arch and config are also written into the
      safetensors header, so the weights file alone round-trips.
    * an existing directory or a path without suffix -> a directory: ``model.safetensors`` +
      ``sharpscope.json`` for AASIST-type models; SSL countermeasures are written by
      :func:`sharpscope.models.ssl.save_ssl_directory` (a transformers-style directory) and models with LoRA
      adapters by :func:`sharpscope.models.lora.save_lora` (a peft directory), with ``meta`` in
      ``sharpscope_meta.json``.

    Arch and config come from ``meta["arch"]`` / ``meta["model_cfg"]`` or else the model's ``arch``
    attribute and :func:`model_cfg_of`.
    """
    meta = dict(meta or {})
    model = _unwrap_model(model)
    p = Path(path).expanduser()
    as_dir = p.is_dir() or p.suffix == ""
    if not as_dir and p.suffix != ".safetensors":
        raise CheckpointError(
            f"save_checkpoint writes safetensors: use a .safetensors path or a directory, not {p}"
        )
    arch = meta.pop("arch", None) or getattr(model, "arch", None)
    cfg = meta.pop("model_cfg", None)
    cfg = jsonable(dict(cfg if cfg is not None else model_cfg_of(model)))
    meta.setdefault("provenance", provenance())

    family = "lora" if _has_lora(model) else ("ssl" if hasattr(model, "arch_config") else "plain")
    if family == "lora" and not as_dir:
        raise CheckpointError(
            f"models with LoRA adapters are saved as directories; give a directory, not {p}"
        )
    if as_dir and family != "plain":
        p.mkdir(parents=True, exist_ok=True)
        if family == "lora":
            from .lora import save_lora

            save_lora(cast("SSLCountermeasure", model), p)  # save_lora refuses anything else
        else:
            from .ssl import save_ssl_directory

            save_ssl_directory(cast("SSLCountermeasure", model), p)  # family "ssl": it has arch_config
        text = json.dumps(jsonable({**meta, "arch": arch, "model_cfg": cfg}), indent=2, sort_keys=True)
        atomic_write(p / DIR_META, lambda tmp: Path(tmp).write_text(text + "\n"))
        return p

    from safetensors.torch import save_file

    if as_dir:
        p.mkdir(parents=True, exist_ok=True)
        weights, sidecar = p / DIR_WEIGHTS, p / DIR_SIDECAR
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        weights, sidecar = p, p.with_suffix(".json")
    # Clone: safetensors refuses tensors that share storage (tied weights) or are non-contiguous.
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    header = {"format": "pt", "sharpscope.arch": str(arch or ""), "sharpscope.model_cfg": json.dumps(cfg)}
    atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata=header))
    doc = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "arch": arch,
        "model_cfg": cfg,
        "weights": weights.name,
        "weights_sha256": file_sha256(weights),
        "meta": jsonable(meta),
    }
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(text))
    return p
