"""SSL countermeasures: tiny wav2vec 2.0 front ends, both heads, fairseq key conversion, directories."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sharpscope.errors import AudioError, CheckpointError, SpecError
from sharpscope.models.registry import build_model
from sharpscope.models.ssl import (
    SSLAASIST,
    SSLLinear,
    build_ssl_model,
    convert_fairseq_state_dict,
    fairseq_ssl_key,
    load_ssl_directory,
    load_state_dict_checked,
    make_ssl_config,
    remap_fairseq_keys,
    save_ssl_directory,
    tiny_ssl_config,
    to_fairseq_keys,
)

CLIP = 8000  # 0.5 s at 16 kHz
LAYOUTS = {"base": False, "stable": True}


def _model(head: str, stable: bool = False, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_ssl_model(head, ssl_config=tiny_ssl_config(stable), **kw).eval()


def _randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial values everywhere (BN statistics included), so key mix-ups change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                noise = torch.randn(t.shape, generator=g) * 0.05
                t.copy_(t.abs() + 0.5 if name.endswith("running_var") else t + noise)
    return model


@pytest.fixture(scope="module")
def wave() -> torch.Tensor:
    return torch.randn(3, CLIP, generator=torch.Generator().manual_seed(7)) * 0.1


# ------------------------------------------------------------------------------------------- building


@pytest.mark.parametrize("stable", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("head", ["aasist", "linear"])
def test_forward_shape_and_ssl_names_follow_transformers(head, stable, wave):
    from transformers import Wav2Vec2Model

    model = _model(head, stable)
    logits = model(wave)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    plain = Wav2Vec2Model(make_ssl_config(tiny_ssl_config(stable)))
    ssl_keys = {k for k in model.state_dict() if k.startswith("ssl.")}
    assert ssl_keys == {"ssl." + k for k in plain.state_dict()}
    assert model.ssl.config.do_stable_layer_norm is stable
    assert model.arch == f"ssl-{head}"


def test_tiny_config_is_small_and_has_20ms_frames():
    model = _model("linear")
    n_ssl = sum(p.numel() for p in model.ssl.parameters())
    assert n_ssl < 60_000
    assert model.n_frames(CLIP) == 24 and model.n_frames(64_600) == 201  # 201 frames as XLS-R on 64,600


def test_aasist_back_end_keys_are_the_ssl_anti_spoofing_names():
    model = _model("aasist")
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    lin = ("weight", "bias")
    expected = {f"LL.{p}" for p in lin} | {f"out_layer.{p}" for p in lin}
    expected |= {f"first_bn.{p}" for p in bn} | {f"first_bn1.{p}" for p in bn}
    for i in range(6):
        block = f"encoder.{i}.0."
        expected |= {block + f"{c}.{p}" for c in ("conv1", "conv2") for p in lin}
        expected |= {block + f"bn2.{p}" for p in bn}
        if i > 0:
            expected |= {block + f"bn1.{p}" for p in bn}
        if i in (0, 2):  # filts [1, 32] and [32, 64] change the channel count
            expected |= {block + f"conv_downsample.{p}" for p in lin}
    expected |= {f"attention.{j}.{p}" for j in (0, 3) for p in lin} | {f"attention.2.{p}" for p in bn}
    expected |= {"pos_S", "master1", "master2"}
    for g in ("GAT_layer_S", "GAT_layer_T"):
        expected |= {f"{g}.att_weight"} | {f"{g}.bn.{p}" for p in bn}
        expected |= {f"{g}.{m}.{p}" for m in ("att_proj", "proj_with_att", "proj_without_att") for p in lin}
    for h in ("ST11", "ST12", "ST21", "ST22"):
        g = f"HtrgGAT_layer_{h}"
        expected |= {f"{g}.att_weight{s}" for s in ("11", "22", "12", "M")} | {f"{g}.bn.{p}" for p in bn}
        mods = ("proj_type1", "proj_type2", "att_proj", "att_projM", "proj_with_att", "proj_without_att")
        mods += ("proj_with_attM", "proj_without_attM")
        expected |= {f"{g}.{m}.{p}" for m in mods for p in lin}
    expected |= {f"pool_{s}.proj.{p}" for s in ("S", "T", "hS1", "hT1", "hS2", "hT2") for p in lin}

    back_end = {k for k in model.state_dict() if not k.startswith("ssl.")}
    assert back_end == expected
    sd = model.state_dict()
    assert sd["LL.weight"].shape == (128, 32)
    assert sd["pos_S"].shape == (1, 42, 64)  # 128 // 3 spectral nodes after the 3x3 max-pool
    assert sd["out_layer.weight"].shape == (2, 160)
    assert sd["HtrgGAT_layer_ST11.proj_type1.weight"].shape == (64, 64)


def test_linear_head_is_mean_pool_then_mlp(wave):
    model = _model("linear")
    layers = list(model.output_layer)
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert layers[0].in_features == 32 and layers[0].out_features == 128 and layers[2].p == 0.3
    with torch.no_grad():
        pooled = model.ssl(wave).last_hidden_state.mean(dim=1)
        manual = layers[3](torch.relu(layers[0](pooled)))
        assert torch.equal(model(wave), manual)


def test_reference_bn1_quirk_no_gradient_but_running_stats(wave):
    model = _model("aasist").train()
    bn1 = model.encoder[1][0].bn1
    before = bn1.running_mean.clone()
    model(wave).sum().backward()
    assert bn1.weight.grad is None and bn1.bias.grad is None
    assert not torch.equal(bn1.running_mean, before)
    assert model.encoder[1][0].conv1.weight.grad is not None
    assert model.ssl.encoder.layers[0].attention.q_proj.weight.grad is not None


def test_freeze_ssl_and_registry(wave):
    torch.manual_seed(0)
    model = build_model("ssl-aasist", ssl_config=tiny_ssl_config(), freeze_ssl=True)
    assert isinstance(model, SSLAASIST)
    assert not any(p.requires_grad for p in model.ssl.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("ssl."))
    assert isinstance(build_model("ssl-linear", ssl_config="tiny"), SSLLinear)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_weight_norm_supports_forward_mode_ad(wave):
    """The positional conv's weight norm equals torch's fused one and has a JVP (curvature estimators)."""
    from torch.func import functional_call, jvp

    model = _model("linear")
    conv = model.ssl.encoder.pos_conv_embed.conv
    g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
    torch.testing.assert_close(conv.weight, torch._weight_norm(v, g, 2), atol=1e-7, rtol=1e-6)
    params = {k: p.detach() for k, p in model.named_parameters()}
    tangent = {k: torch.randn_like(p) for k, p in params.items()}

    def logits(p):
        return functional_call(model, p, (wave,))

    out, dout = jvp(logits, (params,), (tangent,))
    eps = 1e-3
    shifted = {k: params[k] + eps * tangent[k] for k in params}
    with torch.no_grad():
        torch.testing.assert_close(dout, (logits(shifted) - out) / eps, atol=5e-3, rtol=5e-2)


def test_head_options_and_bad_options():
    model = build_ssl_model("linear", ssl_config=tiny_ssl_config(), hidden=16, dropout=0.1)
    assert model.output_layer[0].out_features == 16 and model.output_layer[2].p == 0.1
    small = build_ssl_model(
        "aasist", ssl_config="tiny", filts=[24, [1, 4], [4, 4], [4, 8], [8, 8]], gat_dims=[8, 6]
    )
    assert small.pos_S.shape == (1, 8, 8) and small(torch.zeros(1, CLIP)).shape == (1, 2)
    with pytest.raises(SpecError, match="unknown SSL head"):
        build_ssl_model("rawnet")
    with pytest.raises(SpecError, match="hiden"):
        build_ssl_model("linear", ssl_config="tiny", hiden=3)
    with pytest.raises(SpecError, match="hidden_sise"):
        build_ssl_model("linear", ssl_config={"hidden_sise": 3})
    with pytest.raises(SpecError, match="unknown SSL preset"):
        build_ssl_model("linear", ssl_config="xlsr-1b")


def test_too_short_input_is_an_audio_error():
    model = _model("aasist")
    with pytest.raises(AudioError, match="at least 3"):
        model(torch.zeros(1, 800))
    assert model.n_frames(model.min_samples) == 3 and model.n_frames(model.min_samples - 1) == 2


def test_lengths_mask_padding_out(wave):
    """Linear head, layer-norm layout: a zero-padded clip with its length scores like the clip alone."""
    model = _model("linear", stable=True)
    short = wave[:1, :5000]
    padded = torch.cat([short, torch.zeros(1, CLIP - 5000)], dim=1)
    with torch.no_grad():
        alone = model(short)
        masked = model(padded, lengths=torch.tensor([5000]))
        unmasked = model(padded)
        full = model(wave, lengths=torch.full((3,), CLIP))
    torch.testing.assert_close(masked, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(unmasked, alone, atol=1e-4)
    torch.testing.assert_close(full, model(wave), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------- fairseq names


def test_fairseq_key_table():
    """Names from fairseq's Wav2Vec2Model and transformers' conversion mapping."""
    table = {
        "feature_extractor.conv_layers.0.0.weight": "feature_extractor.conv_layers.0.conv.weight",
        "feature_extractor.conv_layers.4.0.bias": "feature_extractor.conv_layers.4.conv.bias",
        "feature_extractor.conv_layers.0.2.weight": "feature_extractor.conv_layers.0.layer_norm.weight",
        "feature_extractor.conv_layers.6.2.1.bias": "feature_extractor.conv_layers.6.layer_norm.bias",
        "layer_norm.weight": "feature_projection.layer_norm.weight",
        "post_extract_proj.bias": "feature_projection.projection.bias",
        "mask_emb": "masked_spec_embed",
        "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
        "encoder.pos_conv.0.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
        "encoder.pos_conv.0.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
        "encoder.layer_norm.bias": "encoder.layer_norm.bias",
        "encoder.layers.23.self_attn.q_proj.weight": "encoder.layers.23.attention.q_proj.weight",
        "encoder.layers.0.self_attn.out_proj.bias": "encoder.layers.0.attention.out_proj.bias",
        "encoder.layers.5.self_attn_layer_norm.weight": "encoder.layers.5.layer_norm.weight",
        "encoder.layers.5.fc1.weight": "encoder.layers.5.feed_forward.intermediate_dense.weight",
        "encoder.layers.5.fc2.bias": "encoder.layers.5.feed_forward.output_dense.bias",
        "encoder.layers.5.final_layer_norm.bias": "encoder.layers.5.final_layer_norm.bias",
    }
    for fairseq, hf in table.items():
        assert fairseq_ssl_key(fairseq) == hf
    assert (
        fairseq_ssl_key("encoder.pos_conv.0.weight_g", parametrized=False)
        == "encoder.pos_conv_embed.conv.weight_g"
    )
    for drop in ("quantizer.vars", "quantizer.weight_proj.weight", "project_q.bias", "final_proj.weight"):
        assert fairseq_ssl_key(drop) is None
    with pytest.raises(CheckpointError, match="encoder.layers.0.adapter.weight"):
        fairseq_ssl_key("encoder.layers.0.adapter.weight")


FAIRSEQ_ONLY = {
    "ssl_model.model.quantizer.vars": torch.zeros(1, 8, 4),
    "ssl_model.model.quantizer.weight_proj.weight": torch.zeros(8, 32),
    "ssl_model.model.project_q.weight": torch.zeros(4, 4),
    "ssl_model.model.final_proj.weight": torch.zeros(4, 32),
    "ssl_model.model.mask_emb": torch.zeros(32),
}


@pytest.mark.parametrize("stable", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("head", ["aasist", "linear"])
def test_fairseq_checkpoint_round_trip_is_exact(head, stable, wave):
    source = _randomize(_model(head, stable, seed=0))
    fairseq = to_fairseq_keys(source.state_dict())
    assert not any(k.startswith("ssl.") for k in fairseq)
    if stable:
        assert "ssl_model.model.feature_extractor.conv_layers.2.2.1.weight" in fairseq
    else:
        assert "ssl_model.model.feature_extractor.conv_layers.0.2.weight" in fairseq
        assert not any(".2.1." in k or "conv_layers.1.2" in k for k in fairseq)
    checkpoint = {"module." + k: v for k, v in {**fairseq, **FAIRSEQ_ONLY}.items()}

    target = _model(head, stable, seed=5)
    report = load_state_dict_checked(target, checkpoint)
    assert sorted(report.dropped) == sorted(FAIRSEQ_ONLY)  # mask_emb: target has no masked_spec_embed
    with torch.no_grad():
        assert torch.equal(target(wave), source(wave))


def test_sam_antispoofing_aasist_prefix_and_remap_signature(wave):
    source = _randomize(_model("aasist"))
    fairseq = to_fairseq_keys(source.state_dict(), aasist_prefix="aasist.")
    assert "aasist.GAT_layer_S.att_weight" in fairseq and "LL.weight" in fairseq
    remapped = remap_fairseq_keys({**fairseq, **FAIRSEQ_ONLY})  # without target keys: mask_emb dropped too
    assert set(remapped) == set(source.state_dict())
    target = _model("aasist", seed=3)
    target.load_state_dict(remapped, strict=True)
    with torch.no_grad():
        assert torch.equal(target(wave), source(wave))


def test_pos_conv_without_weight_norm_and_legacy_target(wave):
    source = _randomize(_model("linear"))
    fairseq = to_fairseq_keys(source.state_dict())
    g = fairseq.pop("ssl_model.model.encoder.pos_conv.0.weight_g")
    v = fairseq.pop("ssl_model.model.encoder.pos_conv.0.weight_v")
    fairseq["ssl_model.model.encoder.pos_conv.0.weight"] = g * v / v.norm(dim=(0, 1), keepdim=True)
    target = _model("linear", seed=4)
    load_state_dict_checked(target, fairseq)
    with torch.no_grad():
        torch.testing.assert_close(target(wave), source(wave), atol=1e-5, rtol=1e-5)

    legacy = [k.replace("parametrizations.weight.original0", "weight_g") for k in target.state_dict()]
    remap = convert_fairseq_state_dict(to_fairseq_keys(source.state_dict()), legacy)
    assert "ssl.encoder.pos_conv_embed.conv.weight_g" in remap.state_dict


def test_mask_emb_kept_when_the_target_masks(wave):
    masking = tiny_ssl_config(mask_time_prob=0.05)
    torch.manual_seed(0)
    source = build_ssl_model("linear", ssl_config=masking).eval()
    fairseq = to_fairseq_keys(source.state_dict())
    assert "ssl_model.model.mask_emb" in fairseq
    target = build_ssl_model("linear", ssl_config=masking).eval()
    report = load_state_dict_checked(target, fairseq)
    assert report.dropped == []
    assert torch.equal(target.ssl.masked_spec_embed, source.ssl.masked_spec_embed)


def test_mismatched_checkpoint_is_one_line_error():
    source = _model("aasist")
    sd = source.state_dict()
    with pytest.raises(CheckpointError, match="missing .*LL.weight") as err:
        load_state_dict_checked(_model("aasist"), {k: v for k, v in sd.items() if k != "LL.weight"})
    assert "\n" not in str(err.value)
    sd_big = {**sd, "out_layer.weight": torch.zeros(3, 160)}
    with pytest.raises(CheckpointError, match="shape of out_layer.weight"):
        load_state_dict_checked(_model("aasist"), sd_big)
    with pytest.raises(CheckpointError, match="unknown fairseq wav2vec2 key"):
        load_state_dict_checked(_model("linear"), {"ssl_model.model.encoder.weird.weight": torch.zeros(1)})


# ----------------------------------------------------------------------------------------- directories


def test_pretrained_directory_is_loaded_locally(tmp_path, wave):
    from transformers import Wav2Vec2Model

    torch.manual_seed(11)
    base = Wav2Vec2Model(make_ssl_config(tiny_ssl_config(True, mask_time_prob=0.05)))
    base.save_pretrained(str(tmp_path / "xlsr"))
    model = build_ssl_model("aasist", pretrained=tmp_path / "xlsr", ssl_config={"hidden_dropout": 0.0})
    base_sd = base.state_dict()
    for k, v in model.ssl.state_dict().items():
        assert torch.equal(v, base_sd[k]), k
    assert model.ssl.config.hidden_dropout == 0.0 and model.ssl.config.apply_spec_augment is False
    assert model.ssl.config._attn_implementation == "eager"
    assert model.arch_config["pretrained"] == str(tmp_path / "xlsr")
    with pytest.raises(CheckpointError, match="nowhere"):
        build_ssl_model("linear", pretrained=tmp_path / "nowhere")


@pytest.mark.parametrize("head", ["aasist", "linear"])
def test_save_and_load_directory(tmp_path, head, wave):
    model = _randomize(_model(head, stable=True))
    save_ssl_directory(model, tmp_path / "cm")
    assert {p.name for p in (tmp_path / "cm").iterdir()} == {
        "config.json",
        "model.safetensors",
        "sharpscope.json",
    }
    loaded = load_ssl_directory(tmp_path / "cm", f"ssl-{head}")
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(wave), model(wave))
    assert json.loads((tmp_path / "cm" / "sharpscope.json").read_text())["arch"] == f"ssl-{head}"
    other = "ssl-linear" if head == "aasist" else "ssl-aasist"
    with pytest.raises(CheckpointError, match=f"not {other}"):
        load_ssl_directory(tmp_path / "cm", other)


def test_directory_with_fairseq_weights_and_bare_front_end(tmp_path, wave):
    model = _randomize(_model("aasist"))
    d = tmp_path / "converted"
    d.mkdir()
    model.ssl.config.save_pretrained(str(d))
    torch.save(to_fairseq_keys(model.state_dict()), d / "pytorch_model.bin")
    loaded = load_ssl_directory(d, "ssl-aasist")
    with torch.no_grad():
        assert torch.equal(loaded(wave), model(wave))

    bare = tmp_path / "bare"
    model.ssl.save_pretrained(str(bare))
    with pytest.raises(CheckpointError, match="only a wav2vec2 front end"):
        load_ssl_directory(bare, "ssl-aasist")
    with pytest.raises(CheckpointError, match="cannot tell the architecture"):
        load_ssl_directory(bare)
    with pytest.raises(CheckpointError, match="not found"):
        load_ssl_directory(tmp_path / "missing", "ssl-aasist")
