"""End-to-end training on a generated corpus: ERM / SAM / ASAM / MLDG reduce the loss, runs are reproducible,
resuming is bit-identical, LoRA and frozen fine-tuning move only what they should, sidecars are complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from sharpscope.errors import SpecError
from sharpscope.train.config import TrainConfig
from sharpscope.train.loop import build_train_model, lr_factor, random_crop, train

SR = 16_000
TINY_AASIST = {"filts": [12, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 6]}
TINY_SSL = {"ssl_config": "tiny"}

pytestmark = pytest.mark.slow  # every test trains end to end (~20 s each on 2 shared cores)


def _clip(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    if kind == "bonafide":  # harmonic, sine-ish
        f0 = rng.uniform(120, 250)
        x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 4))
        return (0.3 * x / 1.8).astype(np.float32)
    return (0.3 * rng.standard_normal(n)).clip(-1, 1).astype(np.float32)  # noise-ish


def _write_corpus(root: Path, name: str, n_per_class: int, seed: int, attacks=("A01", "A02", "A03")) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(2 * n_per_class):
        label = "bonafide" if i % 2 == 0 else "spoof"
        n = int(rng.integers(int(0.4 * SR), int(0.6 * SR)))
        path = root / name / f"{name}_{i:03d}.wav"
        sf.write(path, _clip(label, rng, n), SR)
        attack = "bonafide" if label == "bonafide" else attacks[(i // 2) % len(attacks)]
        rows.append({"utt_id": f"{name}_{i:03d}", "path": str(path), "label": label, "attack": attack})
    manifest = root / f"{name}.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    return {"train": _write_corpus(root, "train", 12, 0), "dev": _write_corpus(root, "dev", 4, 1)}


def _cfg(corpus, **over) -> TrainConfig:
    data = {"train": str(corpus["train"]), "dev": str(corpus["dev"]), "nb_samp": 4000, "batch_size": 6}
    data.update(over.pop("data", {}))
    d = {
        "arch": "ssl-linear",
        "model": TINY_SSL,
        "epochs": 2,
        "seed": 3,
        "data": data,
        "optimizer": {"name": "adam", "lr": 3e-3, "weight_decay": 1e-4},
        "schedule": {"name": "constant"},
    }
    d.update(over)
    return TrainConfig.from_dict(d)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_helpers():
    rng = np.random.default_rng(0)
    x = np.arange(10, dtype=np.float32)
    w = random_crop(x, 4, rng)
    assert len(w) == 4 and np.array_equal(w, np.arange(w[0], w[0] + 4))
    assert np.array_equal(random_crop(x[:3], 7, rng), np.array([0, 1, 2, 0, 1, 2, 0], dtype=np.float32))
    assert lr_factor(0, 100, "cosine", 0.05, 0) == 1.0
    assert lr_factor(100, 100, "cosine", 0.05, 0) == pytest.approx(0.05)
    assert lr_factor(50, 100, "cosine", 0.0, 0) == pytest.approx(0.5)
    assert lr_factor(1, 100, "constant", 0.0, 4) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "method",
    [
        {},
        {"sam": {"rho": 0.05}},
        {"sam": {"rho": 0.05, "adaptive": True, "eta": 0.01}},
        {"mldg": {"inner_lr": 1e-3, "beta": 1.0}},
    ],
    ids=["erm", "sam", "asam", "mldg"],
)
def test_training_reduces_loss_and_writes_checkpoints(corpus, tmp_path, method):
    cfg = _cfg(corpus, epochs=3, **method)
    res = train(cfg, tmp_path / "run")
    assert res.completed and res.epochs_done == 3
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0], losses
    assert res.last.is_file() and res.best.is_file() and res.best_sidecar.is_file()
    doc = json.loads(res.last_sidecar.read_text())
    meta = doc["meta"]
    assert doc["arch"] == "ssl-linear" and meta["seed"] == 3 and meta["epoch"] == 3
    assert meta["method"] == cfg.method
    assert meta["sam_rho"] == (method["sam"]["rho"] if "sam" in method else 0.0)
    assert meta["adaptive"] == ("sam" in method and method["sam"].get("adaptive", False))
    assert (meta["mldg"] is not None) == ("mldg" in method)
    assert len(meta["train_manifest_hash"]) >= 16 and len(meta["dev_manifest_hash"]) >= 16
    assert 0.0 <= meta["dev_eer"] <= 1.0
    best_meta = json.loads(res.best_sidecar.read_text())["meta"]
    assert best_meta["dev_eer"] == min(h["dev_eer"] for h in res.history)
    assert (tmp_path / "run" / "history.csv").is_file() and (tmp_path / "run" / "config.yaml").is_file()


def test_resume_is_bit_identical_to_uninterrupted_run(corpus, tmp_path):
    over = {
        "arch": "aasist",
        "model": TINY_AASIST,
        "sam": {"rho": 0.05},
        "schedule": {"name": "cosine", "min_lr": 1e-4},
        "checkpoint_every_steps": 1,
        "steps_per_epoch": 2,
        "data": {
            "batch_size": 4,
            "nb_samp": 2400,
            "augment": {"convolutive": True, "impulsive": True, "n_orders": 2, "n_bands": 2},
        },
    }
    straight = train(_cfg(corpus, **over), tmp_path / "straight")
    # interrupted at the end of epoch 1, then resumed in a fresh call
    part = train(_cfg(corpus, **over), tmp_path / "resumed", stop_after_epochs=1)
    assert not part.completed and part.epochs_done == 1
    resumed = train(_cfg(corpus, **over), tmp_path / "resumed")
    _assert_same(_weights(straight.last), _weights(resumed.last))
    # interrupted in the middle of epoch 2 (2 steps per epoch)
    part = train(_cfg(corpus, **over), tmp_path / "mid", stop_after_steps=3)
    assert part.epochs_done == 1 and part.global_step == 3
    mid = train(_cfg(corpus, **over), tmp_path / "mid")
    _assert_same(_weights(straight.last), _weights(mid.last))
    assert [h["train_loss"] for h in mid.history] == [h["train_loss"] for h in straight.history]
    # a finished run returns at once; another seed gives other weights
    again = train(_cfg(corpus, **over), tmp_path / "straight")
    assert again.completed and again.history == straight.history
    other = train(_cfg(corpus, **{**over, "seed": 4, "epochs": 1}), tmp_path / "other")
    assert not torch.equal(
        _weights(other.last)["out_layer.weight"], _weights(straight.last)["out_layer.weight"]
    )


def test_resume_refuses_a_different_config(corpus, tmp_path):
    train(_cfg(corpus, epochs=1), tmp_path / "run")
    with pytest.raises(SpecError, match="different training config"):
        train(_cfg(corpus, epochs=1, seed=9), tmp_path / "run")
    with pytest.raises(SpecError, match="already holds"):
        train(_cfg(corpus, epochs=1), tmp_path / "run", resume=False)
    (tmp_path / "run" / "state.pt").write_bytes(b"truncated")
    with pytest.raises(SpecError, match="cannot read the resume state"):
        train(_cfg(corpus, epochs=1), tmp_path / "run")


def test_lora_trains_only_adapters_and_head(corpus, tmp_path):
    cfg = _cfg(corpus, finetune="lora", lora={"rank": 2, "alpha": 4}, epochs=1, mldg={"inner_lr": 1e-3})
    torch.manual_seed(cfg.seed)
    init = {k: v.clone() for k, v in build_train_model(cfg).state_dict().items()}
    res = train(cfg, tmp_path / "run")
    assert res.last.is_dir() and (res.last / "adapter_config.json").is_file()
    meta = json.loads(res.last_sidecar.read_text())["meta"]
    assert meta["lora"]["rank"] == 2 and meta["finetune"] == "lora" and meta["method"] == "mldg"
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)["model"]
    moved = {k for k in init if not torch.equal(init[k], state[k])}
    assert moved and all("lora_" in k or not k.startswith("ssl.") for k in moved)
    assert any("lora_B" in k for k in moved)


def test_frozen_ssl_keeps_front_end(corpus, tmp_path):
    cfg = _cfg(corpus, finetune="frozen", epochs=1)
    torch.manual_seed(cfg.seed)
    init = build_train_model(cfg).state_dict()
    res = train(cfg, tmp_path / "run")
    w = _weights(res.last)
    ssl_keys = [k for k in init if k.startswith("ssl.") and init[k].is_floating_point()]
    assert ssl_keys and all(torch.equal(init[k], w[k]) for k in ssl_keys if k in w)
    assert not torch.equal(init["output_layer.3.weight"], w["output_layer.3.weight"])


def test_cli_train_and_bad_config(corpus, tmp_path):
    from sharpscope.cli import app

    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        f"arch: ssl-linear\nmodel: {{ssl_config: tiny}}\nepochs: 1\n"
        f"data: {{train: {corpus['train']}, dev: {corpus['dev']}, nb_samp: 4000, batch_size: 6}}\n"
    )
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(cfg_path), "--out", str(tmp_path / "out"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "last.safetensors").is_file()
    assert "best dev EER" in r.output
    cfg_path.write_text("arch: ssl-linear\ndata: {train: x.csv}\noptimizer: {lr: fast}\n")
    r = runner.invoke(app, ["train", str(cfg_path), "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2
    assert "optimizer.lr='fast'" in r.output


def test_sam_with_rho_zero_trains_exactly_like_erm(corpus, tmp_path):
    """In the full loop (AASIST: batch norm + dropout, random crops): SAM with ρ = 0 gives ERM's weights."""
    over = {"arch": "aasist", "model": TINY_AASIST, "epochs": 1, "steps_per_epoch": 2}
    over["data"] = {"batch_size": 4, "nb_samp": 2400}
    erm = train(_cfg(corpus, **over), tmp_path / "erm")
    sam = train(_cfg(corpus, **over, sam={"rho": 0.0}), tmp_path / "sam")
    _assert_same(_weights(erm.last), _weights(sam.last))
    sam1 = train(_cfg(corpus, **over, sam={"rho": 0.5}), tmp_path / "sam1")
    assert not torch.equal(_weights(erm.last)["out_layer.weight"], _weights(sam1.last)["out_layer.weight"])


def test_without_dev_set_only_last_is_written(corpus, tmp_path):
    cfg = _cfg(corpus, epochs=1, data={"dev": None})
    res = train(cfg, tmp_path / "run")
    assert res.best is None and res.last.is_file()
    assert np.isnan(res.history[0]["dev_eer"])
