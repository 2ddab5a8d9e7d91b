"""LoRA on the tiny SSL countermeasures: trainable set, save/load, merged view, PEFT interoperability."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sharpscope.errors import CheckpointError, SpecError
from sharpscope.models.checkpoints import load_checkpoint
from sharpscope.models.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BASE_WEIGHTS,
    HEAD_WEIGHTS,
    LORA_SIDECAR,
    add_lora,
    count_trainable,
    has_lora,
    load_lora_directory,
    merged_view,
    save_lora,
)
from sharpscope.models.ssl import (
    build_ssl_model,
    load_ssl_directory,
    make_ssl_config,
    save_ssl_directory,
    tiny_ssl_config,
)

CLIP = 8000
TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@pytest.fixture(scope="module")
def wave() -> torch.Tensor:
    return torch.randn(2, CLIP, generator=torch.Generator().manual_seed(3)) * 0.1


def _model(head: str = "linear", seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_ssl_model(head, ssl_config=tiny_ssl_config(), **kw).eval()


def _perturb(model: nn.Module, seed: int = 9) -> nn.Module:
    """Move adapters (B starts at zero) and back end away from their initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or not name.startswith("ssl."):
                scale = 0.2 if "lora_" in name else 0.02
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def test_fresh_adapters_leave_outputs_unchanged_and_freeze_the_front_end(wave):
    model = _model("aasist")
    with torch.no_grad():
        before = model(wave)
        assert add_lora(model, rank=2, alpha=4) is model
        assert torch.equal(model(wave), before)
    assert has_lora(model)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith("ssl.") or "lora_" in name), name
    adapted = [n for n, _ in model.ssl.named_modules() if n.endswith(TARGETS) and "." in n]
    assert sorted({n.rsplit(".", 1)[1] for n in adapted}) == sorted(TARGETS)


def test_trainable_count_is_adapters_plus_back_end():
    plain = _model("linear")
    back_end = sum(p.numel() for n, p in plain.named_parameters() if not n.startswith("ssl."))
    ssl_total = sum(p.numel() for p in plain.ssl.parameters())
    model = add_lora(_model("linear"), rank=2, alpha=4)
    cfg = model.ssl.config
    adapters = cfg.num_hidden_layers * len(TARGETS) * 2 * (2 * cfg.hidden_size)  # A [r, d] + B [d, r]
    count = count_trainable(model)
    assert count.trainable == back_end + adapters
    assert count.total == back_end + ssl_total + adapters
    ssl_part = count_trainable(model.ssl)
    assert ssl_part.trainable == adapters and ssl_part.fraction < 0.05


def test_gradients_reach_adapters_only(wave):
    model = _perturb(add_lora(_model("linear"), rank=2, alpha=4)).train()
    model(wave).sum().backward()
    for name, p in model.named_parameters():
        if "lora_" in name or not name.startswith("ssl."):
            assert p.grad is not None, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("head", ["aasist", "linear"])
def test_save_and_load_round_trip(tmp_path, head, wave):
    model = _perturb(add_lora(_model(head), rank=4, alpha=8, dropout=0.1))
    with torch.no_grad():
        expected = model(wave)
        assert not torch.equal(expected, _model(head)(wave))
    save_lora(model, tmp_path / "lora")
    names = {p.name for p in (tmp_path / "lora").iterdir()}
    assert {ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_WEIGHTS, BASE_WEIGHTS, LORA_SIDECAR, "config.json"} <= names
    side = json.loads((tmp_path / "lora" / LORA_SIDECAR).read_text())
    assert side["lora"] == {"rank": 4, "alpha": 8.0, "dropout": 0.1, "target_modules": list(TARGETS)}

    for loaded in (
        load_lora_directory(tmp_path / "lora"),
        load_checkpoint(tmp_path / "lora", f"ssl-{head}").model,  # the loader tells LoRA directories apart
    ):
        assert has_lora(loaded) and not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(wave), expected)
        assert count_trainable(loaded) == count_trainable(model)
    with pytest.raises(CheckpointError, match="is a LoRA directory"):
        load_ssl_directory(tmp_path / "lora", f"ssl-{head}")
    with pytest.raises(CheckpointError, match="not ssl-"):
        load_lora_directory(tmp_path / "lora", "ssl-aasist" if head == "linear" else "ssl-linear")


@pytest.mark.parametrize("head", ["aasist", "linear"])
def test_merged_view_matches_and_is_a_plain_model(head, wave):
    model = _perturb(add_lora(_model(head), rank=4, alpha=8))
    view = merged_view(model)
    with torch.no_grad():
        torch.testing.assert_close(view(wave), model(wave), atol=1e-6, rtol=1e-6)
    assert not has_lora(view) and has_lora(model)
    assert set(view.state_dict()) == set(_model(head).state_dict())
    assert all(p.requires_grad for p in view.parameters())
    # W + (alpha / r) B A, checked on one projection
    q = model.ssl.encoder.layers[1].attention.q_proj
    merged = q.base_layer.weight + (8 / 4) * q.lora_B["default"].weight @ q.lora_A["default"].weight
    torch.testing.assert_close(view.ssl.encoder.layers[1].attention.q_proj.weight, merged)
    assert not torch.equal(q.base_layer.weight, merged)  # the original was not modified


def test_pretrained_base_is_referenced_and_fingerprinted(tmp_path, wave):
    from transformers import Wav2Vec2Model

    torch.manual_seed(21)
    base = Wav2Vec2Model(make_ssl_config(tiny_ssl_config(True)))
    base.save_pretrained(str(tmp_path / "base"))
    torch.manual_seed(0)
    model = build_ssl_model("linear", pretrained=tmp_path / "base").eval()
    _perturb(add_lora(model, rank=2, alpha=2))
    save_lora(model, tmp_path / "lora")
    assert not (tmp_path / "lora" / BASE_WEIGHTS).exists()
    with torch.no_grad():
        expected = model(wave)
        assert torch.equal(load_lora_directory(tmp_path / "lora")(wave), expected)

    moved = tmp_path / "moved"
    (tmp_path / "base").rename(moved)
    with pytest.raises(CheckpointError, match="not found"):
        load_lora_directory(tmp_path / "lora")
    with torch.no_grad():
        assert torch.equal(load_lora_directory(tmp_path / "lora", pretrained=moved)(wave), expected)

    torch.manual_seed(22)
    Wav2Vec2Model(make_ssl_config(tiny_ssl_config(True))).save_pretrained(str(tmp_path / "other"))
    with pytest.raises(CheckpointError, match="differ from those the adapter was trained on"):
        load_lora_directory(tmp_path / "lora", pretrained=tmp_path / "other")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers deprecations raised inside peft
def test_adapter_files_load_with_peft(tmp_path, wave):
    """The adapter files follow the PEFT format: PeftModel puts them on a plain Wav2Vec2Model."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import Wav2Vec2Model

    model = _perturb(add_lora(_model("linear"), rank=2, alpha=4))
    save_lora(model, tmp_path / "lora")
    plain = Wav2Vec2Model(make_ssl_config(tiny_ssl_config()))
    plain.load_state_dict(load_file(str(tmp_path / "lora" / BASE_WEIGHTS)))
    peft_model = PeftModel.from_pretrained(plain, str(tmp_path / "lora")).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            peft_model(wave).last_hidden_state, model.ssl(wave).last_hidden_state, atol=1e-6, rtol=1e-6
        )


def test_errors(tmp_path):
    from sharpscope.models.aasist import build_aasist

    with pytest.raises(SpecError, match="SSL countermeasure"):
        add_lora(build_aasist(), rank=2)
    model = add_lora(_model(), rank=2)
    with pytest.raises(SpecError, match="already has LoRA"):
        add_lora(model, rank=2)
    with pytest.raises(SpecError, match="not found"):
        add_lora(_model(), rank=2, target_modules=("w_qkv",))
    with pytest.raises(SpecError, match="rank"):
        add_lora(_model(), rank=0)
    with pytest.raises(CheckpointError, match="no LoRA adapters"):
        save_lora(_model(), tmp_path / "x")
    with pytest.raises(CheckpointError, match="LoRA adapters"):
        save_ssl_directory(model, tmp_path / "y")
    with pytest.raises(CheckpointError, match="not a sharpscope LoRA directory"):
        load_lora_directory(tmp_path)
