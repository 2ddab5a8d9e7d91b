"""AASIST / AASIST-L: official weights reproduce the official logits; exact references for the parts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sharpscope.errors import AudioError, CheckpointError
from sharpscope.models.aasist import (
    AASIST,
    VARIANTS,
    GraphAttentionLayer,
    GraphPool,
    HtrgGraphAttentionLayer,
    build_aasist,
    sinc_filterbank,
)
from sharpscope.models.checkpoints import load_checkpoint
from sharpscope.models.registry import build_model

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "aasist"
# (file, arch, sha256 from the fixture README)
OFFICIAL = [
    ("AASIST.pth", "aasist", "51d2d9cf0738172f61e2a384ec50a54a55363240f67c971ed55a92435bc1a1c0"),
    ("AASIST-L.pth", "aasist-l", "814331d088032bb4c3fa61cc014789eadeed464209dd094ab3a2dd6ffbdce27a"),
    ("ASVspoof5-AASIST.pth", "aasist", "8f10fe1d1ce3ac62c19f00b86dfaf79f86f464301d23e08726b16b02edbb601c"),
]
TINY = dict(first_conv=16, filts=[12, [1, 4], [4, 4], [4, 8], [8, 8]], gat_dims=[8, 6])


def reference_input() -> torch.Tensor:
    """The two-utterance input defined in reference_logits.json (float64, then float32)."""
    s = np.arange(64_600) / 16_000.0
    rows = []
    for f in (220.0, 330.0):
        x = (
            0.1 * np.sin(2 * np.pi * f * s)
            + 0.05 * np.sin(2 * np.pi * 6.05 * f * s + 0.3)
            + 0.02 * np.sin(2 * np.pi * 14.4 * f * s + 1.1) * (1 + np.sin(2 * np.pi * 3 * s))
        )
        rows.append(x)
    return torch.from_numpy(np.stack(rows).astype(np.float32))


@pytest.fixture(scope="module")
def reference() -> dict:
    if not (FIXTURES / "reference_logits.json").is_file():
        pytest.skip(f"official AASIST fixtures not found at {FIXTURES}")
    return json.loads((FIXTURES / "reference_logits.json").read_text())


@pytest.mark.parametrize(("name", "arch", "sha"), OFFICIAL)
def test_official_weights_reproduce_reference_logits(reference, name, arch, sha):
    ckpt = load_checkpoint(FIXTURES / name, arch)  # strict key/shape match
    assert ckpt.format == "torch" and ckpt.sha256 == sha and not ckpt.model.training
    with torch.no_grad():
        hidden, logits = ckpt.model.forward_with_hidden(reference_input())
    expected = torch.tensor(reference["logits"][name])
    assert reference["logit_order"] == ["spoof", "bonafide"]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert hidden.shape == (2, 160)
    torch.testing.assert_close(ckpt.model.out_layer(hidden), logits, atol=1e-6, rtol=0)


def test_official_keys_and_parameter_counts():
    # Parameter counts of the fixture README; 229 state-dict entries in the official files.
    for arch, n_params in (("aasist", 297_866), ("aasist-l", 85_306)):
        model = build_aasist(arch)
        assert sum(p.numel() for p in model.parameters()) == n_params
        assert len(model.state_dict()) == 229
        assert "conv_time.filters" not in model.state_dict()  # the sinc bank is fixed, not a weight
    if FIXTURES.is_dir():
        sd = torch.load(FIXTURES / "AASIST-L.pth", map_location="cpu", weights_only=True)
        got = {k: tuple(v.shape) for k, v in build_aasist("aasist-l").state_dict().items()}
        assert got == {k: tuple(v.shape) for k, v in sd.items()}


def test_official_configs():
    a, l_ = VARIANTS["aasist"], VARIANTS["aasist-l"]
    assert a.filts == (70, (1, 32), (32, 32), (32, 64), (64, 64)) and a.gat_dims == (64, 32)
    assert a.pool_ratios == (0.5, 0.7, 0.5, 0.5) and a.temperatures == (2.0, 2.0, 100.0, 100.0)
    assert l_.filts == (70, (1, 32), (32, 32), (32, 24), (24, 24)) and l_.gat_dims == (24, 32)
    assert l_.pool_ratios == (0.4, 0.5, 0.7, 0.5)
    assert a.first_conv == l_.first_conv == 128 and a.nb_samp == 64_600


def test_sinc_bank_is_fixed_symmetric_and_sums_to_an_impulse():
    bank = sinc_filterbank(70, 128)
    assert bank.shape == (70, 129) and bank.dtype == torch.float32
    torch.testing.assert_close(bank, bank.flip(-1), atol=0, rtol=0)
    # The bands tile 0..Nyquist, so their sum telescopes to the windowed ideal all-pass = a unit impulse.
    impulse = torch.zeros(129)
    impulse[64] = 1.0
    torch.testing.assert_close(bank.sum(0), impulse, atol=1e-6, rtol=0)
    # Each band responds most at its own centre frequency (mel edges from 0 Hz to Nyquist).
    mel = np.linspace(0, 2595 * math.log10(1 + 8000 / 700), 71)
    edges = 700 * (10 ** (mel / 2595) - 1)
    n = np.arange(129) - 64
    for i in (30, 50, 69):
        centre = (edges[i] + edges[i + 1]) / 2
        gain = np.abs(bank.double().numpy() @ np.exp(-2j * np.pi * centre * n / 16000))
        assert gain.argmax() == i
    model = build_aasist("aasist", **TINY)
    assert all(p is not model.conv_time.filters for p in model.parameters())


def _naive_gat(layer: GraphAttentionLayer, x: torch.Tensor) -> torch.Tensor:
    """Loop-over-pairs reference of the homogeneous graph attention layer (eval mode)."""
    b, n, _ = x.shape
    scores = torch.empty(b, n, n)
    for i in range(n):
        for j in range(n):
            scores[:, i, j] = torch.tanh(layer.att_proj(x[:, i] * x[:, j])) @ layer.att_weight[:, 0]
    att = torch.softmax(scores / layer.temperature, dim=2)
    agg = torch.stack([sum(att[:, i, j, None] * x[:, j] for j in range(n)) for i in range(n)], dim=1)
    out = layer.proj_with_att(agg) + layer.proj_without_att(x)
    return F.selu(layer.bn(out.reshape(b * n, -1)).reshape(b, n, -1))


def _naive_htrg(layer: HtrgGraphAttentionLayer, x1, x2, master):
    """Reference of the heterogeneous layer with an explicit attention board (eval mode)."""
    n1 = x1.size(1)
    x = torch.cat([layer.proj_type1(x1), layer.proj_type2(x2)], dim=1)
    b, n, _ = x.shape
    scores = torch.empty(b, n, n)
    for i in range(n):
        for j in range(n):
            w = (
                layer.att_weight11
                if i < n1 and j < n1
                else layer.att_weight22
                if i >= n1 and j >= n1
                else layer.att_weight12
            )
            scores[:, i, j] = torch.tanh(layer.att_proj(x[:, i] * x[:, j])) @ w[:, 0]
    att = torch.softmax(scores / layer.temperature, dim=2)
    m_scores = torch.stack(
        [torch.tanh(layer.att_projM(x[:, i] * master[:, 0])) @ layer.att_weightM[:, 0] for i in range(n)], 1
    )
    m_att = torch.softmax(m_scores / layer.temperature, dim=1)
    new_master = layer.proj_with_attM((m_att[:, :, None] * x).sum(1, keepdim=True)) + layer.proj_without_attM(
        master
    )
    out = layer.proj_with_att(att @ x) + layer.proj_without_att(x)
    out = F.selu(layer.bn(out.reshape(b * n, -1)).reshape(b, n, -1))
    return out[:, :n1], out[:, n1:], new_master


def _randomise_bn(module: torch.nn.Module, gen: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def test_graph_layers_match_pairwise_references():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    gat = GraphAttentionLayer(5, 4, temperature=2.0).eval()
    _randomise_bn(gat, gen)
    x = torch.randn(2, 6, 5, generator=gen)
    torch.testing.assert_close(gat(x), _naive_gat(gat, x), atol=1e-6, rtol=1e-5)

    htrg = HtrgGraphAttentionLayer(4, 3, temperature=0.7).eval()
    _randomise_bn(htrg, gen)
    x1, x2 = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 4, 4, generator=gen)
    for master in (torch.randn(1, 1, 4, generator=gen), torch.randn(2, 1, 4, generator=gen)):
        for got, want in zip(htrg(x1, x2, master), _naive_htrg(htrg, x1, x2, master), strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_graph_pool_keeps_top_scored_nodes_scaled():
    pool = GraphPool(0.5, 3).eval()
    h = torch.randn(2, 5, 3)
    out = pool(h)
    scores = torch.sigmoid(pool.proj(h))[..., 0]
    for b in range(2):
        top = scores[b].argsort(descending=True)[:2]  # int(5 * 0.5) = 2 nodes
        torch.testing.assert_close(out[b], h[b, top] * scores[b, top, None])
    assert GraphPool(0.1, 3)(h).shape == (2, 1, 3)  # never fewer than one node


def test_tiny_model_shapes_batch_one_variable_length_and_determinism():
    torch.manual_seed(0)
    model = build_model("aasist", **TINY).eval()
    assert isinstance(model, AASIST) and model.arch == "aasist" and model.min_samples == 16 + 3**7
    x = torch.randn(3, 4000, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        logits = model(x)
        again = model(x)
        hidden = model.embed(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
        longer = model(torch.randn(1, 9000))
    assert logits.shape == (3, 2) and hidden.shape == (3, 5 * 6) and longer.shape == (1, 2)
    assert torch.equal(logits, again)  # deterministic on CPU
    torch.testing.assert_close(alone, logits, atol=1e-5, rtol=1e-5)  # no cross-talk between utterances
    # The spectral graph has filts[0] // 3 nodes; the temporal graph grows with the input.
    assert model.pos_S.shape == (1, 4, 8)
    with pytest.raises(AudioError, match="shorter than"):
        model(torch.zeros(1, model.min_samples - 1))
    with pytest.raises(ValueError, match="batch, samples"):
        model(torch.zeros(4000))


def test_training_mode_gradients_and_dead_bn1():
    """Official quirk: bn1 of blocks 2-6 never reaches the output (no gradient) but tracks statistics."""
    torch.manual_seed(0)
    model = build_aasist("aasist-l", **TINY).train()
    x = torch.randn(4, 4000) * 0.1
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    no_grad = sorted(n for n, p in model.named_parameters() if p.grad is None)
    assert no_grad == sorted(f"encoder.{i}.0.bn1.{w}" for i in range(1, 6) for w in ("weight", "bias"))
    assert int(model.encoder[1][0].bn1.num_batches_tracked) == 1
    assert torch.isfinite(loss)


def test_config_overrides_and_errors():
    model = build_aasist("aasist-l", gat_dims=[24, 16])
    assert model.out_layer.in_features == 80 and model.model_cfg["gat_dims"] == [24, 16]
    assert build_aasist("aasist", **model.model_cfg).state_dict().keys() == model.state_dict().keys()
    with pytest.raises(CheckpointError, match="unknown AASIST config key"):
        build_aasist("aasist", n_layers=3)
    with pytest.raises(CheckpointError, match="unknown AASIST variant"):
        build_aasist("rawnet2")


def test_double_backward_gives_a_symmetric_hessian():
    """Curvature estimators need Hessian-vector products through every op (max, top-k, gather, SELU...)."""
    torch.manual_seed(0)
    model = build_aasist("aasist", **TINY).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(2, 3000) * 0.1
    loss = F.cross_entropy(model(x), torch.tensor([0, 1]))
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    gen = torch.Generator().manual_seed(5)
    v1 = [torch.randn(p.shape, generator=gen) for p, _ in used]
    v2 = [torch.randn(p.shape, generator=gen) for p, _ in used]

    def hvp(v):
        dot = sum((g * vi).sum() for (_, g), vi in zip(used, v, strict=True))
        return torch.autograd.grad(dot, [p for p, _ in used], retain_graph=True, allow_unused=True)

    h1, h2 = hvp(v1), hvp(v2)
    a = sum((vi * hi).sum() for vi, hi in zip(v2, h1, strict=True) if hi is not None)
    b = sum((vi * hi).sum() for vi, hi in zip(v1, h2, strict=True) if hi is not None)
    assert torch.isfinite(a) and abs(float(a - b)) <= 1e-4 * (abs(float(a)) + 1e-3)
