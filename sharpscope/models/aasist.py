"""AASIST and AASIST-L spoofing countermeasures (Jung et al., "AASIST: Audio Anti-Spoofing using Integrated
Spectro-Temporal Graph Attention Networks", ICASSP 2022).

Written from the paper and from the architecture facts of the official implementation (clovaai/aasist, MIT);
the parameter names follow the official state-dict keys so the published weights load with ``strict=True``.

Pipeline (shapes for one 64,600-sample input and the AASIST config):

1. **Sinc front end** -- 70 fixed band-pass filters (kernel 129), edges equally spaced on the mel scale
   between 0 Hz and Nyquist, each an ideal band-pass (difference of two windowed sinc low-passes) times a
   Hamming window; not trainable and not in the state dict.  ``|.|``, 3x3 max-pool, BatchNorm, SELU
   -> ``[B, 1, 23, 21490]``.
2. **Encoder** -- six RawNet2-style residual blocks on the (sub-band x time) plane, each ending in a (1, 3)
   max-pool -> ``[B, 64, 23, 29]``.
3. **Graph modules** -- a spectral graph (max over time, + learnt positional embedding) and a temporal graph
   (max over sub-bands) each go through a graph-attention layer and a graph pool; two parallel branches of
   stacked heterogeneous graph attention (HS-GAL) with a learnt master node each; element-wise maximum of the
   branches ("max graph operation"); readout = [max|.|, mean] of the temporal and spectral nodes + master.
4. ``out_layer`` -> logits ``[spoof, bonafide]``.

Faithfulness notes (behaviours of the official implementation kept on purpose, so that trained weights,
gradients and hence sharpness values match it):

* In the residual blocks after the first, the official forward computes ``SELU(bn1(x))`` but then applies
  ``conv1`` to the block input ``x``; ``bn1`` therefore never influences the output and its affine
  parameters receive no gradient.  We keep ``bn1`` (its keys are in the state dict), update its running
  statistics in training mode like the official code does, and leave it out of the computation graph.
* All heterogeneous layers use ``temperatures[2]`` and all four HS-GAL pools use ``pool_ratios[2]``;
  ``temperatures[3]`` and ``pool_ratios[3]`` are unused (as in the official code).
* The first HS-GAL layer of each branch receives the *un-expanded* master parameter ``[1, 1, D]``, which
  broadcasts over the batch.
* The optional frequency-mask augmentation of the official sinc layer (off in the published configs) is not
  implemented.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AudioError, CheckpointError

N_ENCODER_BLOCKS = 6
POOL_STRIDE = 3  # the front-end 3x3 max-pool and the (1, 3) pool that ends every residual block


@dataclass(frozen=True)
class AASISTConfig:
    """Model configuration; field names follow the official ``model_config`` entries.

    ``filts`` = ``[n_sinc, [c_in, c_out] x 4]``: block 1 uses ``filts[1]``, block 2 ``filts[2]``, block 3
    ``filts[3]`` and blocks 4-6 ``filts[4]``.  ``nb_samp`` is the training/eval crop length (informative: the
    network accepts any length of at least :attr:`AASIST.min_samples`).
    """

    first_conv: int = 128
    filts: tuple = (70, (1, 32), (32, 32), (32, 64), (64, 64))
    gat_dims: tuple = (64, 32)
    pool_ratios: tuple = (0.5, 0.7, 0.5, 0.5)
    temperatures: tuple = (2.0, 2.0, 100.0, 100.0)
    nb_samp: int = 64_600
    sample_rate: int = 16_000

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists) that :func:`build_aasist` accepts back as overrides."""
        return _to_lists(asdict(self))


#: Official configurations (clovaai/aasist ``config/AASIST.conf`` and ``config/AASIST-L.conf``).
VARIANTS: dict[str, AASISTConfig] = {
    "aasist": AASISTConfig(),
    "aasist-l": AASISTConfig(
        filts=(70, (1, 32), (32, 32), (32, 24), (24, 24)),
        gat_dims=(24, 32),
        pool_ratios=(0.4, 0.5, 0.7, 0.5),
    ),
}


def _to_lists(obj: Any) -> Any:
    if isinstance(obj, (tuple, list)):
        return [_to_lists(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_lists(v) for k, v in obj.items()}
    return obj


def _to_tuples(obj: Any) -> Any:
    if isinstance(obj, (tuple, list)):
        return tuple(_to_tuples(v) for v in obj)
    return obj


# --------------------------------------------------------------------------------------------- front end


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def sinc_filterbank(n_filters: int, kernel_size: int, sample_rate: int = 16_000) -> torch.Tensor:
    """Fixed mel-spaced band-pass filterbank of the AASIST / RawNet2 front end, ``[n_filters, K]`` float32.

    ``K`` is ``kernel_size`` made odd (symmetric filters).  Band ``i`` spans the mel-spaced edges
    ``[f_i, f_{i+1}]`` (``n_filters + 1`` edges from 0 Hz to Nyquist); its impulse response is the difference
    of two ideal low-passes ``2 f / sr * sinc(2 f n / sr)`` at ``n = -(K-1)/2 .. (K-1)/2``, times a Hamming
    window.

    Precision follows the official layer bit for bit: the sinc *argument* ``2 f n / sr`` is rounded to float32
    (there it is a float32 tensor expression) while edges and gains are float64.  The published weights are
    sensitive to this: computing everything in float64 moves their logits by up to ~5e-5.
    """
    k = kernel_size + 1 if kernel_size % 2 == 0 else kernel_size
    nyquist = float(sample_rate // 2)
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(np.float64(nyquist)), n_filters + 1))
    n = torch.arange(k, dtype=torch.float32) - (k - 1) / 2

    def lowpass(fc: np.ndarray) -> np.ndarray:
        arg = (torch.from_numpy(2.0 * fc).to(torch.float32)[:, None] * n[None, :]) / sample_rate
        return (2.0 * fc / sample_rate)[:, None] * np.sinc(arg.numpy())

    ideal = torch.from_numpy((lowpass(edges[1:]) - lowpass(edges[:-1])).astype(np.float32))
    window = torch.from_numpy(np.hamming(k).astype(np.float32))
    return window[None, :] * ideal


class SincFrontEnd(nn.Module):
    """Fixed sinc filterbank convolution (no padding, stride 1): ``[B, T] -> [B, n_filters, T - K + 1]``."""

    filters: torch.Tensor  # registered buffer [n_filters, 1, K]

    def __init__(self, n_filters: int, kernel_size: int, sample_rate: int = 16_000) -> None:
        super().__init__()
        bank = sinc_filterbank(n_filters, kernel_size, sample_rate)
        # Non-persistent: moves with .to(device) but stays out of the state dict, like the official layer.
        self.register_buffer("filters", bank.unsqueeze(1), persistent=False)

    @property
    def kernel_size(self) -> int:
        return int(self.filters.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x.unsqueeze(1), self.filters.to(x.dtype))


# ----------------------------------------------------------------------------------------------- encoder


class ResidualBlock(nn.Module):
    """RawNet2-style residual block on ``[B, C, S, T]``: conv(2x3) -> BN -> SELU -> conv(2x3), a (1x3) conv
    shortcut when the channel count changes, then a (1, 3) max-pool over time (sub-band size preserved)."""

    def __init__(self, c_in: int, c_out: int, first: bool = False) -> None:
        super().__init__()
        self.first = first
        if not first:
            self.bn1 = nn.BatchNorm2d(c_in)  # dead in the official forward (see module docstring)
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=(2, 3), padding=(1, 1))
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=(2, 3), padding=(0, 1))
        self.conv_downsample: nn.Conv2d | None
        if c_in != c_out:
            self.conv_downsample = nn.Conv2d(c_in, c_out, kernel_size=(1, 3), padding=(0, 1))
        else:
            self.conv_downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.first and self.training:
            with torch.no_grad():  # running statistics only, as in the official code
                self.bn1(x)
        out = self.conv2(F.selu(self.bn2(self.conv1(x))))
        shortcut = x if self.conv_downsample is None else self.conv_downsample(x)
        return F.max_pool2d(out + shortcut, kernel_size=(1, POOL_STRIDE))


# -------------------------------------------------------------------------------------------- graph parts


def _xavier_column(dim: int) -> nn.Parameter:
    p = nn.Parameter(torch.empty(dim, 1))
    nn.init.xavier_normal_(p)
    return p


def _node_batchnorm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the feature axis with batch and node axes pooled: ``[B, N, D]``."""
    b, n, d = x.shape
    return bn(x.reshape(b * n, d)).reshape(b, n, d)


def _pair_hidden(x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
    """``tanh(W (x_i * x_j) + b)`` for every node pair: ``[B, N, D] -> [B, N, N, D_out]``."""
    return torch.tanh(proj(x.unsqueeze(2) * x.unsqueeze(1)))


class GraphAttentionLayer(nn.Module):
    """Graph attention over a fully connected homogeneous graph (GAT-S / GAT-T).

    ``a_ij = softmax_j(w . tanh(W_a (x_i * x_j)) / temperature)``;
    ``out_i = SELU(BN(W_1 sum_j a_ij x_j + W_2 x_i))``.
    """

    def __init__(self, in_dim: int, out_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_weight = _xavier_column(out_dim)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(p=0.2)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_drop(x)
        scores = (_pair_hidden(x, self.att_proj) @ self.att_weight).squeeze(-1)
        att = torch.softmax(scores / self.temperature, dim=-1)
        out = self.proj_with_att(att @ x) + self.proj_without_att(x)
        return F.selu(_node_batchnorm(self.bn, out))


class HtrgGraphAttentionLayer(nn.Module):
    """Heterogeneous stacking graph attention layer (HS-GAL) with a master node.

    The two node types (temporal, spectral) are first projected by type-specific linear maps and joined into
    one graph.  Pair attention uses one of three vectors depending on the pair's types (type1-type1,
    type2-type2, mixed); the master node attends to all nodes with its own projection (``*M`` parameters) and
    is updated without BN/activation.  Returns ``(x1, x2, master)``.
    """

    def __init__(self, in_dim: int, out_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.proj_type1 = nn.Linear(in_dim, in_dim)
        self.proj_type2 = nn.Linear(in_dim, in_dim)
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_projM = nn.Linear(in_dim, out_dim)
        self.att_weight11 = _xavier_column(out_dim)
        self.att_weight22 = _xavier_column(out_dim)
        self.att_weight12 = _xavier_column(out_dim)
        self.att_weightM = _xavier_column(out_dim)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.proj_with_attM = nn.Linear(in_dim, out_dim)
        self.proj_without_attM = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(p=0.2)
        self.temperature = float(temperature)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, master: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n1, n2 = x1.size(1), x2.size(1)
        x = torch.cat([self.proj_type1(x1), self.proj_type2(x2)], dim=1)
        x = self.input_drop(x)

        # Node-pair attention: pick the attention vector by the pair's block (11, 22 or mixed 12/21).
        hidden = _pair_hidden(x, self.att_proj)  # [B, N, N, D_out]
        weights = torch.cat([self.att_weight11, self.att_weight22, self.att_weight12], dim=1)  # [D_out, 3]
        all_scores = hidden @ weights  # [B, N, N, 3]
        # 0 for type1-type1 pairs, 1 for type2-type2, 2 for mixed (built by slicing: torch.compile's inductor
        # rejects the equivalent torch.where over booleans)
        block = torch.full((n1 + n2, n1 + n2), 2, dtype=torch.long, device=x.device)
        block[:n1, :n1] = 0
        block[n1:, n1:] = 1
        scores = all_scores.gather(-1, block.expand(x.size(0), -1, -1).unsqueeze(-1)).squeeze(-1)
        att = torch.softmax(scores / self.temperature, dim=-1)

        # Master node: attention over all nodes, conditioned on the current master.
        m_scores = torch.tanh(self.att_projM(x * master)) @ self.att_weightM  # [B, N, 1]
        m_att = torch.softmax(m_scores / self.temperature, dim=1)
        master = self.proj_with_attM(m_att.transpose(1, 2) @ x) + self.proj_without_attM(master)

        out = self.proj_with_att(att @ x) + self.proj_without_att(x)
        out = F.selu(_node_batchnorm(self.bn, out))
        return out[:, :n1], out[:, n1:], master


class GraphPool(nn.Module):
    """Graph pooling (Gao & Ji, 2019): keep the ``max(int(N * ratio), 1)`` nodes of highest sigmoid score,
    each scaled by its score; kept nodes come out in descending score order."""

    def __init__(self, ratio: float, in_dim: int, p: float = 0.3) -> None:
        super().__init__()
        self.ratio = float(ratio)
        self.proj = nn.Linear(in_dim, 1)
        self.drop = nn.Dropout(p=p) if p > 0 else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        scores = torch.sigmoid(self.proj(self.drop(h)))  # [B, N, 1]
        k = max(int(h.size(1) * self.ratio), 1)
        idx = torch.topk(scores, k, dim=1).indices
        return torch.gather(h * scores, 1, idx.expand(-1, -1, h.size(2)))


# ------------------------------------------------------------------------------------------------- model


class GraphBackEnd:
    """The graph part shared by AASIST and the SSL AASIST back end (Jung et al. 2022; Tak et al. 2022).

    From spectral nodes ``e_S`` [B, S, C] and temporal nodes ``e_T`` [B, T, C]: a graph-attention layer and a
    graph pool per domain, then two inference paths (heterogeneous stacked graph attention with a master
    node, graph pools, a second HS-GAL added residually), combined by element-wise max, and read out as
    [max |T|, mean T, max |S|, mean S, master].  The host module owns the layers under the official names.
    """

    def build_graph(self, enc_dim: int, gat_dims, temperatures, pool_ratios) -> None:
        """Create the graph layers under their official names (temperatures/ratios: spectral, temporal,
        heterogeneous -- the official code uses the third for all four HS-GALs and their pools)."""
        g0, g1 = (int(d) for d in gat_dims)
        t_s, t_t, t_h = (float(t) for t in list(temperatures)[:3])
        r_s, r_t, r_h = (float(r) for r in list(pool_ratios)[:3])
        self.master1 = nn.Parameter(torch.randn(1, 1, g0))
        self.master2 = nn.Parameter(torch.randn(1, 1, g0))
        self.GAT_layer_S = GraphAttentionLayer(enc_dim, g0, temperature=t_s)
        self.GAT_layer_T = GraphAttentionLayer(enc_dim, g0, temperature=t_t)
        self.HtrgGAT_layer_ST11 = HtrgGraphAttentionLayer(g0, g1, temperature=t_h)
        self.HtrgGAT_layer_ST12 = HtrgGraphAttentionLayer(g1, g1, temperature=t_h)
        self.HtrgGAT_layer_ST21 = HtrgGraphAttentionLayer(g0, g1, temperature=t_h)
        self.HtrgGAT_layer_ST22 = HtrgGraphAttentionLayer(g1, g1, temperature=t_h)
        self.pool_S = GraphPool(r_s, g0)
        self.pool_T = GraphPool(r_t, g0)
        self.pool_hS1 = GraphPool(r_h, g1)
        self.pool_hT1 = GraphPool(r_h, g1)
        self.pool_hS2 = GraphPool(r_h, g1)
        self.pool_hT2 = GraphPool(r_h, g1)
        self.drop_way = nn.Dropout(0.2)
        self.drop = nn.Dropout(0.5)
        self.out_layer = nn.Linear(5 * g1, 2)

    def _branch(self, out_T, out_S, master, first, second, pool_S, pool_T):
        h_T, h_S, master = first(out_T, out_S, master)
        h_S = pool_S(h_S)
        h_T = pool_T(h_T)
        aug_T, aug_S, aug_m = second(h_T, h_S, master)
        return h_T + aug_T, h_S + aug_S, master + aug_m

    def graph_readout(self, e_S: torch.Tensor, e_T: torch.Tensor) -> torch.Tensor:
        out_S = self.pool_S(self.GAT_layer_S(e_S))
        out_T = self.pool_T(self.GAT_layer_T(e_T))
        T1, S1, m1 = self._branch(
            out_T,
            out_S,
            self.master1,
            self.HtrgGAT_layer_ST11,
            self.HtrgGAT_layer_ST12,
            self.pool_hS1,
            self.pool_hT1,
        )
        T2, S2, m2 = self._branch(
            out_T,
            out_S,
            self.master2,
            self.HtrgGAT_layer_ST21,
            self.HtrgGAT_layer_ST22,
            self.pool_hS2,
            self.pool_hT2,
        )
        d = self.drop_way
        out_T = torch.maximum(d(T1), d(T2))
        out_S = torch.maximum(d(S1), d(S2))
        master = torch.maximum(d(m1), d(m2))
        return torch.cat(
            [
                torch.max(out_T.abs(), dim=1).values,
                out_T.mean(dim=1),
                torch.max(out_S.abs(), dim=1).values,
                out_S.mean(dim=1),
                master.squeeze(1),
            ],
            dim=1,
        )


class AASIST(GraphBackEnd, nn.Module):
    """AASIST network: ``forward(x[B, T]) -> logits[B, 2]`` ordered ``[spoof, bonafide]``.

    :meth:`forward_with_hidden` also returns the 5 x ``gat_dims[1]`` readout (the official ``last_hidden``);
    :meth:`embed` returns only that.  ``arch`` and ``model_cfg`` rebuild the same network via
    :func:`sharpscope.models.registry.build_model`.

    ``fast`` (default on) computes eval-mode passes through :mod:`sharpscope.models.fast` -- the same function
    of the same parameters (BN folded per call, channels-last convolutions, pooling without indices when no
    gradient is recorded), logits within 1e-4 of the reference-faithful path on the official weights and
    gradients within 1e-4 relative.  ``fast=False`` (or setting ``model.fast = False``) runs the
    reference-faithful forward; training mode always does.  It is not part of ``model_cfg``: it changes how
    the numbers are computed, not the network.
    """

    def __init__(self, cfg: AASISTConfig, arch: str = "aasist", fast: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.arch = arch
        self.fast = bool(fast)
        n_sinc = int(cfg.filts[0])
        blocks = [tuple(cfg.filts[i]) for i in (1, 2, 3, 4, 4, 4)]
        enc_dim = int(blocks[-1][1])
        n_spectral = n_sinc // POOL_STRIDE
        if n_spectral < 1:
            raise CheckpointError(f"AASIST config needs filts[0] >= {POOL_STRIDE} sinc filters, got {n_sinc}")

        self.conv_time = SincFrontEnd(n_sinc, int(cfg.first_conv), int(cfg.sample_rate))
        self.first_bn = nn.BatchNorm2d(1)
        self.encoder = nn.Sequential(
            *(
                nn.Sequential(ResidualBlock(c_in, c_out, first=(i == 0)))
                for i, (c_in, c_out) in enumerate(blocks)
            )
        )
        self.pos_S = nn.Parameter(torch.randn(1, n_spectral, enc_dim))
        self.build_graph(enc_dim, cfg.gat_dims, cfg.temperatures, cfg.pool_ratios)

    @property
    def model_cfg(self) -> dict[str, Any]:
        """Full configuration as JSON-friendly overrides for :func:`build_aasist`."""
        return self.cfg.as_dict()

    @property
    def min_samples(self) -> int:
        """Shortest input (samples) that leaves at least one temporal node after all pooling stages."""
        return self.conv_time.kernel_size - 1 + POOL_STRIDE ** (N_ENCODER_BLOCKS + 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2:
            raise ValueError(f"AASIST expects waveforms shaped [batch, samples], got {tuple(x.shape)}")
        if x.size(1) < self.min_samples:
            raise AudioError(
                f"input of {x.size(1)} samples is shorter than the {self.min_samples} samples AASIST needs; "
                "use crop 'first' (tiles short clips) or drop clips this short"
            )

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(last_hidden [B, 5 * gat_dims[1]], logits [B, 2])`` -- the official forward's two outputs."""
        self._check_input(x)
        if self.fast and not self.training:
            from .fast import fast_forward_with_hidden

            return fast_forward_with_hidden(self, x)
        h = self.conv_time(x).abs().unsqueeze(1)  # [B, 1, n_sinc, T']
        h = F.selu(self.first_bn(F.max_pool2d(h, kernel_size=POOL_STRIDE)))
        e = self.encoder(h).abs()  # [B, C, S, T]

        e_S = torch.max(e, dim=3).values.transpose(1, 2) + self.pos_S  # spectral nodes [B, S, C]
        e_T = torch.max(e, dim=2).values.transpose(1, 2)  # temporal nodes [B, T, C]
        hidden = self.graph_readout(e_S, e_T)
        return hidden, self.out_layer(self.drop(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_hidden(x)[1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The readout vector fed to ``out_layer`` (``[B, 160]`` for AASIST)."""
        return self.forward_with_hidden(x)[0]


def aasist_config(variant: str = "aasist", **overrides: Any) -> AASISTConfig:
    """Official config of ``variant`` with ``overrides`` applied (unknown keys raise CheckpointError)."""
    try:
        base = VARIANTS[variant]
    except KeyError:
        raise CheckpointError(
            f"unknown AASIST variant {variant!r}; choose one of {', '.join(VARIANTS)}"
        ) from None
    names = {f.name for f in fields(AASISTConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise CheckpointError(
            f"unknown AASIST config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
        )
    return replace(base, **{k: _to_tuples(v) for k, v in overrides.items()})


def build_aasist(variant: str = "aasist", fast: bool = True, **overrides: Any) -> AASIST:
    """Build AASIST (``variant="aasist"``) or AASIST-L (``"aasist-l"``), optionally with config overrides
    (e.g. ``filts=[12, [1, 4], [4, 4], [4, 8], [8, 8]], gat_dims=[8, 6]`` for a tiny test model);
    ``fast=False`` selects the reference-faithful eval forward (see :class:`AASIST`)."""
    return AASIST(aasist_config(variant, **overrides), arch=variant, fast=fast)
