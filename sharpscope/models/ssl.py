"""Self-supervised (wav2vec 2.0 / XLS-R) spoofing countermeasures.

Two architectures, as trained by SSL_Anti-spoofing (Tak et al., "Automatic speaker verification spoofing and
deepfake detection using wav2vec 2.0 and data augmentation", Odyssey 2022) and SAM-AntiSpoofing (Huang et
al., 2025):

* ``ssl-linear`` -- mean over time of the last SSL hidden state -> ``Linear(d, 128)`` -> ReLU ->
  ``Dropout(0.3)`` -> ``Linear(128, 2)`` (module ``output_layer``, SAM-AntiSpoofing's name).
* ``ssl-aasist`` -- ``LL = Linear(d, 128)`` on every SSL frame, then the SSL_Anti-spoofing AASIST back end:
  the ``[B, 128, F]`` feature map as a one-channel image, 3x3 max-pool, BatchNorm, SELU, six residual blocks
  *without* the per-block time pooling of AASIST, a 1x1-conv attention map whose softmax over time (over
  frequency) weights the spectral (temporal) node features, graph attention + graph pooling on each node
  type, two branches of heterogeneous stacking graph attention with master nodes, element-wise max of the
  branches, readout and ``out_layer``.

The SSL front end is :class:`transformers.Wav2Vec2Model` (attribute ``ssl``), built from a
:class:`~transformers.Wav2Vec2Config` (``ssl_config``: a dict of overrides or a preset name, see
:data:`SSL_PRESETS` and :func:`tiny_ssl_config`) or loaded from a *local* pretrained directory
(``pretrained=PATH``; never a hub download).  Like SSL_Anti-spoofing (``mask=False``) the front end never
masks its features (SpecAugment off); layer drop is off (as SAM-AntiSpoofing overrides it) and attention is
the eager implementation so that double backward (Hessian-vector products) works on every device.

Parameter names: ``ssl.`` + transformers names for the front end; the back end uses the SSL_Anti-spoofing
names (``LL``, ``first_bn``, ``encoder``, ``attention``, ``pos_S``, ``master1/2``, ``GAT_layer_S/T``,
``HtrgGAT_layer_ST11..22``, ``pool_*``, ``out_layer``) so converted checkpoints load with ``strict=True``.
:func:`sharpscope.models.fairseq.remap_fairseq_keys` converts the fairseq names of SSL_Anti-spoofing /
SAM-AntiSpoofing checkpoints.

Faithfulness notes (kept on purpose so that weights, gradients and sharpness values match the reference):

* In residual blocks after the first, the reference computes ``SELU(bn1(x))`` and then applies ``conv1`` to
  ``x``; ``bn1`` never reaches the output and gets no gradient.  We keep ``bn1`` (its keys are in
  checkpoints), update its running statistics in training mode and leave it out of the graph.
* The spectral positional embedding ``pos_S`` has ``filts[0] // 3`` rows (42 for the 128-dim ``LL``).
* All HS-GAL layers use ``temperatures[2]`` and the four HS-GAL pools ``pool_ratios[2]``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AudioError, CheckpointError, SpecError
from ..fileio import atomic_write_text
from .aasist import GraphBackEnd
from .fairseq import (  # noqa: F401  (re-exported: the names were defined here before the split)
    FAIRSEQ_DROP_PREFIXES,
    FairseqRemap,
    convert_fairseq_state_dict,
    fairseq_ssl_key,
    is_fairseq_state_dict,
    remap_fairseq_keys,
    strip_module_prefix,
    to_fairseq_keys,
)

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import Wav2Vec2Model

    from .lora import LoraSettings

log = logging.getLogger(__name__)

HEADS = ("aasist", "linear")
ARCH_OF_HEAD = {"aasist": "ssl-aasist", "linear": "ssl-linear"}
HEAD_OF_ARCH = {v: k for k, v in ARCH_OF_HEAD.items()}

#: Settings applied to every front end unless the caller overrides them (see module docstring).
SSL_DEFAULTS: dict[str, Any] = {
    "apply_spec_augment": False,
    "mask_time_prob": 0.0,
    "mask_feature_prob": 0.0,
    "layerdrop": 0.0,
    "attn_implementation": "eager",
}

_LARGE_ARCH: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "feat_extract_norm": "layer",
    "conv_bias": True,
    "do_stable_layer_norm": True,
}

#: Architectures of the fairseq checkpoints used by SAM-AntiSpoofing (``wav2vec_small.pt``,
#: ``w2v_large_lv_fsh_swbd_cv.pt``, ``xlsr2_300m.pt``); Wav2Vec2Config defaults are the base model.
SSL_PRESETS: dict[str, dict[str, Any]] = {
    "w2v-base": {},
    "w2v-large": dict(_LARGE_ARCH),
    "xlsr-300m": dict(_LARGE_ARCH),
}

#: Back-end hyper-parameters of SSL_Anti-spoofing (``filts[0]`` is the ``LL`` output size).
AASIST_HEAD_DEFAULTS: dict[str, Any] = {
    "filts": [128, [1, 32], [32, 32], [32, 64], [64, 64]],
    "gat_dims": [64, 32],
    "pool_ratios": [0.5, 0.5, 0.5, 0.5],
    "temperatures": [2.0, 2.0, 100.0, 100.0],
}
LINEAR_HEAD_DEFAULTS: dict[str, Any] = {"hidden": 128, "dropout": 0.3}

SIDECAR = "sharpscope.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def tiny_ssl_config(stable_layer_norm: bool = False, **overrides: Any) -> dict[str, Any]:
    """A very small wav2vec 2.0 config for tests, training smoke runs and the demo (~50k parameters).

    Hidden size 32, 2 layers, 2 heads and a 3-layer conv stack with the receptive field (400 samples) and
    stride (320 samples, 20 ms) of the real models, so frame counts and back-end shapes are those of XLS-R
    (24 frames per 0.5 s, 201 for 64,600 samples).
    ``stable_layer_norm=True`` gives the XLS-R / large layout (layer-norm conv stack with bias, pre-LN
    transformer); the default is the base layout (group-norm first conv layer, post-LN).
    """
    cfg: dict[str, Any] = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": [32, 32, 32],
        "conv_kernel": [10, 7, 10],
        "conv_stride": [5, 8, 8],
        "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 2,
        "feat_extract_norm": "layer" if stable_layer_norm else "group",
        "conv_bias": bool(stable_layer_norm),
        "do_stable_layer_norm": bool(stable_layer_norm),
    }
    cfg.update(overrides)
    return cfg


#: Generic PretrainedConfig entries that do not describe the network (left out of saved ``ssl_config``).
_GENERIC_CONFIG_KEYS = frozenset(
    {
        "transformers_version", "architectures", "output_hidden_states", "output_attentions", "return_dict",
        "dtype", "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
        "problem_type", "_name_or_path",
    }
)  # fmt: skip


@functools.cache
def _config_keys() -> frozenset[str]:
    """Keys a Wav2Vec2Config understands (plus ``attn_implementation``)."""
    from transformers import Wav2Vec2Config

    params = set(inspect.signature(Wav2Vec2Config.__init__).parameters) - {"self", "kwargs"}
    return frozenset(set(Wav2Vec2Config().to_dict()) | params | {"attn_implementation"})


def resolve_ssl_config(ssl_config: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """Overrides dict from ``ssl_config`` (a dict, a :data:`SSL_PRESETS` name, ``"tiny"`` or None)."""
    if ssl_config is None:
        return {}
    if isinstance(ssl_config, str):
        if ssl_config == "tiny":
            return tiny_ssl_config()
        try:
            return dict(SSL_PRESETS[ssl_config])
        except KeyError:
            names = ", ".join([*SSL_PRESETS, "tiny"])
            raise SpecError(
                f"unknown SSL preset {ssl_config!r}; choose one of {names} or give a dict"
            ) from None
    cfg = {k: v for k, v in ssl_config.items() if k not in _GENERIC_CONFIG_KEYS}
    unknown = sorted(set(cfg) - _config_keys())
    if unknown:
        raise SpecError(f"unknown Wav2Vec2Config key(s) in ssl_config: {', '.join(unknown)}")
    return cfg


def make_ssl_config(ssl_config: Mapping[str, Any] | str | None = None):
    """A :class:`~transformers.Wav2Vec2Config` from :data:`SSL_DEFAULTS` updated by ``ssl_config``."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(**{**SSL_DEFAULTS, **resolve_ssl_config(ssl_config)})


class ComposableWeightNorm(nn.Module):
    """Weight-norm parametrisation ``w = g * v / ||v||`` (norm over all dims but ``dim``) in plain ops.

    Drop-in for torch's ``_WeightNorm`` (same ``original0 = g``, ``original1 = v`` names): torch's fused
    kernel has no forward-mode derivative, which would break ``torch.func.jvp`` and forward-over-reverse
    Hessian-vector products through the positional convolution.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
        return weight_v * (weight_g / torch.norm_except_dim(weight_v, 2, self.dim))

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.norm_except_dim(weight, 2, self.dim), weight


def _composable_weight_norm(ssl: nn.Module) -> nn.Module:
    """Swap torch's weight-norm parametrisations in ``ssl`` for :class:`ComposableWeightNorm`."""
    from torch.nn.utils.parametrizations import _WeightNorm

    for module in ssl.modules():
        plist = getattr(module, "parametrizations", None)
        if plist is None or "weight" not in plist:
            continue
        for i, p in enumerate(plist["weight"]):
            if isinstance(p, _WeightNorm):
                plist["weight"][i] = ComposableWeightNorm(p.dim)
    return ssl


def build_ssl_frontend(
    ssl_config: Mapping[str, Any] | str | None = None, pretrained: str | Path | None = None
):
    """A :class:`~transformers.Wav2Vec2Model`: random init from ``ssl_config`` or loaded from the local
    directory ``pretrained`` (``ssl_config`` then overrides its config, e.g. dropout rates)."""
    from transformers import Wav2Vec2Model

    if pretrained is None:
        return _composable_weight_norm(Wav2Vec2Model(make_ssl_config(ssl_config)))
    path = Path(pretrained)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CheckpointError(
            f"pretrained SSL directory not found or without config.json: {path}; give a local directory "
            "saved by save_pretrained (hub downloads are never attempted)"
        )
    overrides = {**SSL_DEFAULTS, **resolve_ssl_config(ssl_config)}
    try:
        with _quiet_progress():
            ssl = Wav2Vec2Model.from_pretrained(str(path), local_files_only=True, **overrides)
    except (OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot load pretrained SSL model from {path}: {msg}") from None
    return _composable_weight_norm(ssl)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No transformers progress bars while loading (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def ssl_config_dict(ssl: Wav2Vec2Model) -> dict[str, Any]:
    """JSON-friendly full config of a front end (what rebuilds it, including the attention implementation)."""
    keys = _config_keys() - _GENERIC_CONFIG_KEYS
    cfg = {k: v for k, v in ssl.config.to_dict().items() if k in keys}
    cfg["attn_implementation"] = ssl.config._attn_implementation or "eager"
    return cfg


# --------------------------------------------------------------------------------------------- models


class SSLCountermeasure(nn.Module):
    """Common part: the ``ssl`` front end, the input handling and the architecture record.

    ``arch_config`` holds what rebuilds the network (``arch``, ``head``, full ``ssl_config``, ``head_cfg``,
    ``pretrained``, ``freeze_ssl``) and is written next to saved weights.
    """

    head: str = ""
    # set only by sharpscope.models.lora.add_lora (absent on models without adapters)
    lora_settings: LoraSettings
    lora_config: LoraConfig

    def __init__(
        self, ssl: Wav2Vec2Model, head_cfg: dict[str, Any], pretrained: str | None, freeze_ssl: bool
    ):
        super().__init__()
        self.ssl = ssl
        self.head_cfg = head_cfg
        self.pretrained = pretrained
        self.freeze_ssl = freeze_ssl

    @property
    def arch(self) -> str:
        return ARCH_OF_HEAD[self.head]

    @property
    def arch_config(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "head": self.head,
            "ssl_config": ssl_config_dict(self.ssl),
            "head_cfg": json.loads(json.dumps(self.head_cfg)),
            "pretrained": self.pretrained,
            "freeze_ssl": self.freeze_ssl,
        }

    def n_frames(self, n_samples: int) -> int:
        """Number of SSL frames for an input of ``n_samples`` samples."""
        n = int(n_samples)
        for k, s in zip(self.ssl.config.conv_kernel, self.ssl.config.conv_stride, strict=True):
            n = (n - k) // s + 1
        return n

    def features(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Last SSL hidden state ``[B, F, d]`` and the frame mask ``[B, F]`` (None without lengths/mask)."""
        if x.dim() == 3 and x.size(-1) == 1:
            x = x.squeeze(-1)
        if x.dim() != 2:
            raise ValueError(f"SSL models expect waveforms shaped [batch, samples], got {tuple(x.shape)}")
        if self.n_frames(x.size(1)) < 1:
            raise AudioError(
                f"input of {x.size(1)} samples is too short for the SSL front end; use longer clips"
            )
        if attention_mask is None and lengths is not None:
            steps = torch.arange(x.size(1), device=x.device)
            attention_mask = (steps[None, :] < lengths.to(x.device)[:, None]).long()
        hidden = self.ssl(x, attention_mask=attention_mask).last_hidden_state
        frame_mask = None
        if attention_mask is not None:
            # transformers annotates torch.LongTensor (a legacy alias class); any integer tensor is accepted
            frame_mask = self.ssl._get_feature_vector_attention_mask(
                hidden.size(1),
                attention_mask,  # type: ignore[arg-type]
            )
        return hidden, frame_mask

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from SSL features ``[B, F, d]`` (every frame used)."""
        raise NotImplementedError

    def frozen_prefix_split(self, names: set[str]) -> tuple[nn.Module, nn.Module] | None:
        """``(prefix, suffix)``, ``model(x) == suffix(prefix(x))``, if nothing perturbed is in the front end.

        Sharpness of the back end alone (scope ``regex:^(?!ssl\\.)``, or a frozen-SSL model's ``trainable``
        scope) then runs the expensive front end once per batch (:mod:`sharpscope.sharpness.engine`).
        """
        if any(n.startswith("ssl.") for n in names):
            return None
        return _SSLPrefix(self), _SSLHead(self)


class _SSLPrefix(nn.Module):
    def __init__(self, model: SSLCountermeasure) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)[0]


class _SSLHead(nn.Module):
    def __init__(self, model: SSLCountermeasure) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.head_logits(feats)


class SSLLinear(SSLCountermeasure):
    """wav2vec 2.0 + mean pooling + 2-layer MLP (SAM-AntiSpoofing ``SSL_Linear``)."""

    head = "linear"

    def __init__(self, ssl: Wav2Vec2Model, hidden: int = 128, dropout: float = 0.3, **kw: Any):
        super().__init__(ssl, {"hidden": int(hidden), "dropout": float(dropout)}, **kw)
        d = ssl.config.hidden_size
        self.output_layer = nn.Sequential(
            nn.Linear(d, int(hidden)), nn.ReLU(), nn.Dropout(float(dropout)), nn.Linear(int(hidden), 2)
        )

    def embed(self, x: torch.Tensor, lengths: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
        """Time-averaged SSL features ``[B, d]`` (padded frames excluded when lengths are given)."""
        hidden, mask = self.features(x, lengths, **kw)
        if mask is None:
            return hidden.mean(dim=1)
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.output_layer(self.embed(x, lengths, attention_mask=attention_mask))

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.output_layer(feats.mean(dim=1))


class SSLResidualBlock(nn.Module):
    """Residual block of the SSL_Anti-spoofing back end: AASIST's block without the (1, 3) time pooling.

    conv(2x3, pad (1,1)) -> BN -> SELU -> conv(2x3, pad (0,1)) plus the input (through a (1x3) conv when
    the channel count changes); shape ``[B, C_in, H, W] -> [B, C_out, H, W]``.
    """

    def __init__(self, c_in: int, c_out: int, first: bool = False) -> None:
        super().__init__()
        self.first = first
        if not first:
            self.bn1 = nn.BatchNorm2d(c_in)  # dead in the reference forward (module docstring)
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=(2, 3), padding=(1, 1))
        self.selu = nn.SELU()
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=(2, 3), padding=(0, 1))
        self.downsample = c_in != c_out
        if self.downsample:
            self.conv_downsample = nn.Conv2d(c_in, c_out, kernel_size=(1, 3), padding=(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.first and self.training:
            with torch.no_grad():  # running statistics only, as in the reference
                self.bn1(x)
        out = self.conv2(self.selu(self.bn2(self.conv1(x))))
        return out + (self.conv_downsample(x) if self.downsample else x)


class SSLAASIST(GraphBackEnd, SSLCountermeasure):
    """wav2vec 2.0 + ``LL`` + the SSL_Anti-spoofing AASIST back end (module docstring)."""

    head = "aasist"

    def __init__(
        self,
        ssl: Wav2Vec2Model,
        filts: list | None = None,
        gat_dims: list | None = None,
        pool_ratios: list | None = None,
        temperatures: list | None = None,
        **kw: Any,
    ):
        d = AASIST_HEAD_DEFAULTS
        head_cfg = {
            "filts": _lists(filts if filts is not None else d["filts"]),
            "gat_dims": _lists(gat_dims if gat_dims is not None else d["gat_dims"]),
            "pool_ratios": _lists(pool_ratios if pool_ratios is not None else d["pool_ratios"]),
            "temperatures": _lists(temperatures if temperatures is not None else d["temperatures"]),
        }
        super().__init__(ssl, head_cfg, **kw)
        f = head_cfg["filts"]
        ll_dim = int(f[0])
        blocks = [tuple(int(c) for c in f[i]) for i in (1, 2, 3, 4, 4, 4)]
        enc_dim = blocks[-1][1]
        if ll_dim < 3:
            raise SpecError(f"ssl-aasist head needs filts[0] >= 3 (the LL size), got {ll_dim}")

        self.LL = nn.Linear(ssl.config.hidden_size, ll_dim)
        self.first_bn = nn.BatchNorm2d(1)
        self.first_bn1 = nn.BatchNorm2d(enc_dim)
        self.selu = nn.SELU()
        self.encoder = nn.Sequential(
            *(nn.Sequential(SSLResidualBlock(a, b, first=(i == 0))) for i, (a, b) in enumerate(blocks))
        )
        self.attention = nn.Sequential(
            nn.Conv2d(enc_dim, 128, kernel_size=(1, 1)),
            nn.SELU(),
            nn.BatchNorm2d(128),
            nn.Conv2d(128, enc_dim, kernel_size=(1, 1)),
        )
        self.pos_S = nn.Parameter(torch.randn(1, ll_dim // 3, enc_dim))
        self.build_graph(enc_dim, head_cfg["gat_dims"], head_cfg["temperatures"], head_cfg["pool_ratios"])

    @property
    def min_samples(self) -> int:
        """Shortest input giving the 3 SSL frames the 3x3 max-pool needs."""
        n = 1
        while self.n_frames(n) < 3:
            n += 1
        return n

    def forward_with_hidden(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(last_hidden [B, 5 * gat_dims[1]], logits [B, 2])``.

        ``lengths`` only restrict the SSL self-attention; the back end sees every frame (as the reference).
        """
        feats, _ = self.features(x, lengths, attention_mask)
        return self._head(feats)

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self._head(feats)[1]

    def _head(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if feats.size(1) < 3:
            raise AudioError(
                f"{feats.size(1)} SSL frames; the AASIST back end needs at least 3 "
                f"(>= {self.min_samples} samples)"
            )
        h = self.LL(feats).transpose(1, 2).unsqueeze(1)  # [B, 1, ll_dim, F]
        h = self.selu(self.first_bn(F.max_pool2d(h, (3, 3))))
        h = self.selu(self.first_bn1(self.encoder(h)))  # [B, C, H, W]
        w = self.attention(h)
        e_S = (h * torch.softmax(w, dim=-1)).sum(dim=-1).transpose(1, 2) + self.pos_S  # [B, H, C]
        e_T = (h * torch.softmax(w, dim=-2)).sum(dim=-2).transpose(1, 2)  # [B, W, C]
        hidden = self.graph_readout(e_S, e_T)
        return hidden, self.out_layer(self.drop(hidden))

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.forward_with_hidden(x, lengths, attention_mask)[1]

    def embed(self, x: torch.Tensor, lengths: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
        """The readout vector fed to ``out_layer``."""
        return self.forward_with_hidden(x, lengths, **kw)[0]


def _lists(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj


def build_ssl_model(
    head: str,
    ssl_config: Mapping[str, Any] | str | None = None,
    pretrained: str | Path | None = None,
    freeze_ssl: bool = False,
    **head_cfg: Any,
) -> SSLCountermeasure:
    """Build an SSL countermeasure: ``head`` in ``{"aasist", "linear"}``.

    ``ssl_config``: Wav2Vec2Config overrides (dict), a preset name (:data:`SSL_PRESETS`, ``"tiny"``) or None
    (base architecture).  ``pretrained``: a local directory with ``config.json`` + weights (``ssl_config``
    then overrides its config).  ``freeze_ssl`` turns off gradients of the front end.  ``head_cfg``:
    ``filts, gat_dims, pool_ratios, temperatures`` (aasist) or ``hidden, dropout`` (linear).
    """
    if head not in HEADS:
        raise SpecError(f"unknown SSL head {head!r}; choose one of {', '.join(HEADS)}")
    allowed = AASIST_HEAD_DEFAULTS if head == "aasist" else LINEAR_HEAD_DEFAULTS
    unknown = sorted(set(head_cfg) - set(allowed))
    if unknown:
        raise SpecError(f"unknown {head} head option(s) {', '.join(unknown)}; valid: {', '.join(allowed)}")
    ssl = build_ssl_frontend(ssl_config, pretrained)
    common: dict[str, Any] = {
        "pretrained": None if pretrained is None else str(pretrained),
        "freeze_ssl": bool(freeze_ssl),
    }
    model: SSLCountermeasure
    if head == "aasist":
        model = SSLAASIST(ssl, **head_cfg, **common)
    else:
        model = SSLLinear(ssl, **head_cfg, **common)
    if freeze_ssl:
        model.ssl.requires_grad_(False)
    return model



# ------------------------------------------------------------------------------------------ directories


def _short_list(keys: Collection[str], n: int = 4) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
):
    """Load ``state_dict`` strictly (fairseq layouts are converted first); one-line CheckpointError on any
    missing/unexpected key or shape mismatch.  Returns the :class:`FairseqRemap` (empty ``dropped`` if the
    names were already ours)."""
    target = model.state_dict()
    if is_fairseq_state_dict(state_dict):
        remap = convert_fairseq_state_dict(state_dict, target.keys())
    else:
        remap = FairseqRemap(strip_module_prefix(state_dict))
    sd = remap.state_dict
    missing = set(target) - set(sd)
    unexpected = set(sd) - set(target)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected {_short_list(unexpected)}")
        raise CheckpointError(f"{source} does not match the architecture: {'; '.join(parts)}")
    bad = [k for k, v in sd.items() if tuple(v.shape) != tuple(target[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{source}: shape of {k} is {tuple(sd[k].shape)}, the architecture needs {tuple(target[k].shape)}"
            + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else "")
        )
    model.load_state_dict(sd, strict=True)
    return remap


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors / torch weights file, or of a sharded safetensors index."""
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        if path.name.endswith(".index.json"):
            index = json.loads(path.read_text())
            out: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index["weight_map"].values())):
                out.update(read_weights(path.parent / shard))
            return out
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot read weights {path}: {msg}") from None
    for wrapper in ("model", "state_dict", "model_state_dict"):  # training checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"weights file {path} does not hold a state dict")
    return obj


def _find_weights(path: Path) -> Path:
    for name in (*WEIGHT_FILES, "model.safetensors.index.json"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"no weights in {path}: expected one of {', '.join(WEIGHT_FILES)}")


def save_ssl_directory(model: SSLCountermeasure, path: str | Path) -> Path:
    """Save a full SSL countermeasure: ``config.json`` (the Wav2Vec2Config), ``model.safetensors`` (all
    weights, our names) and ``sharpscope.json`` (arch, head, head_cfg).  Models with LoRA adapters are saved
    with :func:`sharpscope.models.lora.save_lora` (or merge them first with ``merged_view``)."""
    from safetensors.torch import save_file

    if any("lora_" in k for k in model.state_dict()):
        raise CheckpointError(
            "model has LoRA adapters: save it with lora.save_lora or save merged_view(model)"
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.ssl.config.save_pretrained(str(out))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    atomic_write_text(out / SIDECAR, json.dumps(model.arch_config, indent=2, sort_keys=True) + "\n")
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def load_ssl_directory(path: str | Path, arch: str | None = None, **cfg: Any) -> SSLCountermeasure:
    """Load an SSL countermeasure saved in a directory, in eval mode.

    * ``adapter_config.json`` present -> a LoRA directory: refused here (this module never imports
      :mod:`sharpscope.models.lora`); :func:`sharpscope.models.checkpoints.load_checkpoint` tells the two
      apart and :func:`sharpscope.models.lora.load_lora_directory` loads it.
    * Otherwise ``config.json`` (Wav2Vec2Config) + ``model.safetensors`` / ``pytorch_model.bin`` (ours or
      fairseq names), and ``sharpscope.json`` for the head (or ``arch`` + ``cfg``).

    ``cfg`` may hold ``ssl_config`` overrides (e.g. ``{"attn_implementation": "sdpa"}``), head options and
    ``freeze_ssl``; ``pretrained`` is ignored (the directory holds all weights).  A directory with only a
    bare wav2vec2 front end raises CheckpointError (use it as ``pretrained=``).
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"SSL checkpoint directory not found: {root}")
    if (root / "adapter_config.json").is_file():
        raise CheckpointError(
            f"{root} is a LoRA directory (adapter_config.json); load it with "
            "sharpscope.models.checkpoints.load_checkpoint or sharpscope.models.lora.load_lora_directory"
        )
    if not (root / "config.json").is_file():
        raise CheckpointError(f"{root} has no config.json; save SSL models with save_ssl_directory")
    config = _read_json(root / "config.json")
    if config.get("model_type") != "wav2vec2":
        raise CheckpointError(
            f"{root}/config.json is not a wav2vec2 config (model_type={config.get('model_type')})"
        )
    side = _read_json(root / SIDECAR) if (root / SIDECAR).is_file() else {}
    saved_arch = side.get("arch")
    if arch is not None and saved_arch is not None and arch != saved_arch:
        raise CheckpointError(f"{root} holds a {saved_arch} model, not {arch}; fix the checkpoint's arch")
    arch = arch or saved_arch
    if arch not in HEAD_OF_ARCH:
        raise CheckpointError(f"cannot tell the architecture of {root}: give arch ssl-aasist or ssl-linear")
    cfg = dict(cfg)
    if cfg.pop("pretrained", None) is not None:
        log.warning("pretrained= ignored when loading %s: the directory holds all weights", root)
    overrides = resolve_ssl_config(cfg.pop("ssl_config", None))
    ssl_cfg = {**resolve_ssl_config(side.get("ssl_config") or _config_subset(config)), **overrides}
    head_cfg = {**side.get("head_cfg", {}), **cfg}
    freeze = bool(head_cfg.pop("freeze_ssl", side.get("freeze_ssl", False)))
    weights_path = _find_weights(root)
    sd = read_weights(weights_path)
    keys = [k.removeprefix("module.") for k in sd]
    if not any(k.startswith(("ssl.", "ssl_model.")) for k in keys):
        raise CheckpointError(
            f"{weights_path} holds only a wav2vec2 front end (no countermeasure head); use it as pretrained="
        )
    model = build_ssl_model(HEAD_OF_ARCH[arch], ssl_config=ssl_cfg, freeze_ssl=freeze, **head_cfg)
    load_state_dict_checked(model, sd, source=str(weights_path))
    return model.eval()


def _config_subset(config: Mapping[str, Any]) -> dict[str, Any]:
    keys = _config_keys() - _GENERIC_CONFIG_KEYS
    return {k: v for k, v in config.items() if k in keys}
