"""Checkpoint formats round-trip exactly; every failure is one clear CheckpointError line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sharpscope.errors import CheckpointError
from sharpscope.models.aasist import build_aasist
from sharpscope.models.checkpoints import detect_directory, load_checkpoint, model_cfg_of, save_checkpoint
from sharpscope.provenance import file_sha256

TINY = dict(first_conv=16, filts=[12, [1, 4], [4, 4], [4, 8], [8, 8]], gat_dims=[8, 6])


@pytest.fixture(scope="module")
def tiny():
    """A tiny AASIST with random BatchNorm statistics (so a lost buffer changes the logits)."""
    torch.manual_seed(0)
    model = build_aasist("aasist", **TINY).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.num_batches_tracked.fill_(7)
    return model


@pytest.fixture(scope="module")
def wave():
    return torch.randn(2, 3000, generator=torch.Generator().manual_seed(2)) * 0.1


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _same_model(loaded, model, x) -> None:
    assert not loaded.model.training
    assert torch.equal(_logits(loaded.model, x), _logits(model, x))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


WRAPPERS = {
    "plain": lambda sd: sd,
    "sam-antispoofing": lambda sd: {"model": sd, "optimizer": {"lr": 1e-4}, "epoch": 12},
    "lightning": lambda sd: {"state_dict": {"model." + k: v for k, v in sd.items()}, "global_step": 5},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "best_eer": 0.83},
    "data-parallel": lambda sd: {"module." + k: v for k, v in sd.items()},
    "compiled-in-dp": lambda sd: {"model": {"module._orig_mod." + k: v for k, v in sd.items()}},
}


@pytest.mark.parametrize("layout", list(WRAPPERS))
@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_torch_files_round_trip(tmp_path, tiny, wave, layout, suffix):
    path = tmp_path / f"ckpt{suffix}"
    torch.save(WRAPPERS[layout](tiny.state_dict()), path)
    loaded = load_checkpoint(path, "aasist", model_cfg=TINY)
    _same_model(loaded, tiny, wave)
    assert loaded.format == "torch" and loaded.arch == "aasist" and loaded.path == path
    assert loaded.sha256 == file_sha256(path)
    info = loaded.meta["loader"]
    if layout == "sam-antispoofing":
        assert info["wrapper_key"] == "model" and info["wrapper_extras"] == {"epoch": 12}
    if layout == "data-parallel":
        assert info["stripped_prefix"] == "module."
    if layout == "compiled-in-dp":
        assert info["stripped_prefix"] == "module._orig_mod."
    if layout == "lightning":
        assert info["stripped_prefix"] == "model."


def test_old_files_without_batchnorm_counters_load(tmp_path, tiny, wave):
    sd = {k: v for k, v in tiny.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")
    loaded = load_checkpoint(tmp_path / "old.pth", "aasist", model_cfg=TINY)
    assert torch.equal(_logits(loaded.model, wave), _logits(tiny, wave))


def test_bare_safetensors_needs_arch_and_config(tmp_path, tiny, wave):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    loaded = load_checkpoint(path, "aasist", model_cfg=TINY)
    _same_model(loaded, tiny, wave)
    assert loaded.format == "safetensors"
    with pytest.raises(CheckpointError, match="does not say its architecture"):
        load_checkpoint(path, None)


def test_save_checkpoint_file_with_sidecar(tmp_path, tiny, wave):
    meta = {"epoch": 3, "seed": 11, "eer": np.float32(0.25), "spec": {"optimizer": "sam", "rho": 0.05}}
    out = save_checkpoint(tiny, tmp_path / "run" / "epoch3.safetensors", meta)
    assert out == tmp_path / "run" / "epoch3.safetensors"
    side = json.loads((tmp_path / "run" / "epoch3.json").read_text())
    assert side["arch"] == "aasist" and side["model_cfg"]["gat_dims"] == [8, 6]
    assert side["weights_sha256"] == file_sha256(out) and side["meta"]["eer"] == 0.25
    assert "provenance" in side["meta"]

    loaded = load_checkpoint(out, None)  # arch and config come from the sidecar
    _same_model(loaded, tiny, wave)
    assert loaded.format == "safetensors" and loaded.arch == "aasist"
    assert loaded.meta["epoch"] == 3 and loaded.meta["spec"] == {"optimizer": "sam", "rho": 0.05}

    (tmp_path / "run" / "epoch3.json").unlink()  # the safetensors header alone still says arch + config
    _same_model(load_checkpoint(out, None), tiny, wave)


def test_save_checkpoint_directory_and_plain_config_json(tmp_path, tiny, wave):
    target = tmp_path / "ckpt_dir"
    assert save_checkpoint(tiny, target, {"note": "x"}) == target
    assert (target / "model.safetensors").is_file() and (target / "sharpscope.json").is_file()
    assert detect_directory(target) == "safetensors"
    loaded = load_checkpoint(target, "aasist")
    _same_model(loaded, tiny, wave)
    assert loaded.format == "safetensors-dir" and loaded.meta["note"] == "x"
    assert loaded.sha256 == file_sha256(target / "model.safetensors")

    # A hand-made directory: bare weights + a config.json that is the model config (no transformers keys).
    other = tmp_path / "hand_made"
    other.mkdir()
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(other / "model.safetensors"))
    (other / "config.json").write_text(json.dumps({"arch": "aasist", **TINY}))
    _same_model(load_checkpoint(other, None), tiny, wave)


def test_save_checkpoint_unwraps_dataparallel_and_rejects_other_suffixes(tmp_path, tiny, wave):
    out = save_checkpoint(nn.DataParallel(tiny), tmp_path / "dp.safetensors", {})
    _same_model(load_checkpoint(out, None), tiny, wave)
    with pytest.raises(CheckpointError, match="safetensors"):
        save_checkpoint(tiny, tmp_path / "x.pth", {})


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_wrong_arch_lists_keys_and_suggests_the_fitting_variant(tmp_path):
    torch.save(build_aasist("aasist-l").state_dict(), tmp_path / "l.pth")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "l.pth", "aasist")
    msg = _one_line(exc)
    assert "does not fit arch 'aasist'" in msg and "shape mismatches (pos_S" in msg
    assert "--arch aasist-l" in msg


def test_foreign_state_dict_lists_missing_and_unexpected_keys(tmp_path, tiny):
    torch.save(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict(), tmp_path / "mlp.pth")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "mlp.pth", "aasist", model_cfg=TINY)
    msg = _one_line(exc)
    n_model = sum(1 for k in tiny.state_dict() if not k.endswith("num_batches_tracked"))
    assert f"{n_model} missing keys (pos_S, master1, master2, first_bn.weight, ...)" in msg
    assert "4 unexpected keys (0.weight, 0.bias, 2.weight, 2.bias)" in msg


def test_arch_contradicting_the_saved_one_is_refused(tmp_path, tiny):
    out = save_checkpoint(tiny, tmp_path / "a.safetensors", {})
    with pytest.raises(CheckpointError, match="saved as arch 'aasist' but arch 'aasist-l'"):
        load_checkpoint(out, "aasist-l")


def test_pickle_needs_trust(tmp_path, tiny, wave):
    path = tmp_path / "with_args.pth"
    torch.save({"model": tiny.state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, "aasist", model_cfg=TINY)
    msg = _one_line(exc)
    assert "argparse.Namespace" in msg and "--trust-checkpoint" in msg
    loaded = load_checkpoint(path, "aasist", model_cfg=TINY, trust_checkpoint=True)
    _same_model(loaded, tiny, wave)
    assert loaded.format == "torch-pickle"

    whole = tmp_path / "whole_module.pt"  # torch.save(model): a pickled nn.Module
    torch.save(tiny, whole)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(whole, "aasist", model_cfg=TINY)
    _same_model(load_checkpoint(whole, "aasist", model_cfg=TINY, trust_checkpoint=True), tiny, wave)


def _corruptions(tmp_path: Path, tiny: nn.Module) -> dict[str, Path]:
    good_pt, good_st = tmp_path / "good.pth", tmp_path / "good.safetensors"
    torch.save(tiny.state_dict(), good_pt)
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(good_st))
    files = {
        "truncated-zip": good_pt.read_bytes()[: good_pt.stat().st_size // 2],
        "random-bytes": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text": b"not a checkpoint\n",
        "empty": b"",
    }
    out = {}
    for name, blob in files.items():
        out[name] = tmp_path / f"{name}.pth"
        out[name].write_bytes(blob)
    out["truncated-safetensors"] = tmp_path / "cut.safetensors"
    out["truncated-safetensors"].write_bytes(good_st.read_bytes()[:-100])
    return out


def test_corrupt_files_give_one_clear_line(tmp_path, tiny):
    for name, path in _corruptions(tmp_path, tiny).items():
        for trust in (False, True):
            with pytest.raises(CheckpointError) as exc:
                load_checkpoint(path, "aasist", model_cfg=TINY, trust_checkpoint=trust)
            msg = _one_line(exc)
            assert str(path) in msg, name
            assert any(w in msg for w in ("corrupt", "empty", "--trust-checkpoint")), (name, msg)


def test_missing_path_and_unknown_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth", "aasist")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "empty_dir", "aasist")
    with pytest.raises(CheckpointError, match="unknown architecture"):
        torch.save(build_aasist("aasist", **TINY).state_dict(), tmp_path / "a.pth")
        load_checkpoint(tmp_path / "a.pth", "resnet")


# ------------------------------------------------------------------ SSL / LoRA hooks (other modules)


def _ssl():
    ssl = pytest.importorskip("sharpscope.models.ssl")
    for name in ("build_ssl_model", "tiny_ssl_config", "save_ssl_directory", "to_fairseq_keys"):
        if not hasattr(ssl, name):
            pytest.skip(f"sharpscope.models.ssl.{name} not available yet")
    return ssl


@pytest.fixture(scope="module")
def tiny_ssl():
    ssl = _ssl()
    torch.manual_seed(3)
    return ssl.build_ssl_model("linear", ssl_config=ssl.tiny_ssl_config()).eval()


def test_transformers_directory_and_single_file_ssl(tmp_path, tiny_ssl, wave):
    out = save_checkpoint(tiny_ssl, tmp_path / "ssl_dir", {"epoch": 1})
    assert detect_directory(out) == "transformers"
    loaded = load_checkpoint(out, None)
    assert loaded.format == "transformers" and loaded.arch == "ssl-linear" and loaded.meta["epoch"] == 1
    _same_model(loaded, tiny_ssl, wave)

    single = save_checkpoint(tiny_ssl, tmp_path / "ssl.safetensors", {})
    _same_model(load_checkpoint(single, None), tiny_ssl, wave)


def test_fairseq_named_file_goes_through_the_remap_hook(tmp_path, tiny_ssl, wave):
    ssl = _ssl()
    path = tmp_path / "fairseq.pth"
    torch.save({"model": ssl.to_fairseq_keys(tiny_ssl.state_dict())}, path)
    loaded = load_checkpoint(path, "ssl-linear", model_cfg=model_cfg_of(tiny_ssl))
    assert loaded.meta["loader"]["remapped"] is True
    _same_model(loaded, tiny_ssl, wave)


def test_peft_directory(tmp_path, wave):
    ssl = _ssl()
    lora = pytest.importorskip("sharpscope.models.lora")
    torch.manual_seed(4)
    model = lora.add_lora(ssl.build_ssl_model("linear", ssl_config=ssl.tiny_ssl_config()), rank=2).eval()
    with torch.no_grad():  # non-zero B so the adapters change the outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    out = save_checkpoint(model, tmp_path / "lora_dir", {"rank": 2})
    assert detect_directory(out) == "peft"
    loaded = load_checkpoint(out, "ssl-linear")
    assert loaded.format == "peft" and loaded.meta["rank"] == 2
    _same_model(loaded, model, wave)
    with pytest.raises(CheckpointError, match="directories"):
        save_checkpoint(model, tmp_path / "lora.safetensors", {})
