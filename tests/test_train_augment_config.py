"""RawBoost-style augmentation (seeded, level-preserving, really filtering) and training-config validation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from sharpscope.errors import SpecError
from sharpscope.train.augment import augment, convolutive_noise, impulsive_noise, random_fir
from sharpscope.train.config import AugmentConfig, TrainConfig, dump_config, load_config


def _wave(n=16_000, seed=0):
    t = np.arange(n) / 16_000
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def test_augment_is_seeded_and_changes_the_signal():
    cfg = AugmentConfig(convolutive=True, impulsive=True)
    x = _wave()
    a = augment(x, np.random.default_rng(7), cfg)
    b = augment(x, np.random.default_rng(7), cfg)
    c = augment(x, np.random.default_rng(8), cfg)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.allclose(a, x, atol=1e-3)


def test_augment_disabled_or_p_zero_returns_input():
    x = _wave()
    assert augment(x, np.random.default_rng(0), AugmentConfig()) is x
    assert augment(x, np.random.default_rng(0), AugmentConfig(convolutive=True, p=0.0)) is x


def test_random_fir_has_unit_peak_response_and_odd_taps():
    cfg = AugmentConfig(n_bands=3)
    for seed in range(5):
        h = random_fir(np.random.default_rng(seed), cfg)
        _, resp = signal.freqz(h, worN=1024, fs=16_000)
        assert np.max(np.abs(resp)) == pytest.approx(1.0, rel=1e-9)
        assert len(h) % 2 == 1  # cascade of odd-length (type I) filters


def test_convolutive_noise_keeps_peak_level_and_linear_order_is_a_filter():
    x = _wave()
    cfg = AugmentConfig(convolutive=True, n_orders=3)
    y = convolutive_noise(x, np.random.default_rng(1), cfg)
    assert np.max(np.abs(y)) == pytest.approx(np.max(np.abs(x)), rel=1e-5)
    # with one order the output is exactly the FIR-filtered input, rescaled
    cfg1 = AugmentConfig(convolutive=True, n_orders=1)
    h = random_fir(np.random.default_rng(2), cfg1)
    ref = signal.lfilter(h, [1.0], x.astype(np.float64))
    ref *= np.max(np.abs(x)) / np.max(np.abs(ref))
    np.testing.assert_allclose(convolutive_noise(x, np.random.default_rng(2), cfg1), ref, atol=1e-6)


def test_impulsive_noise_hits_the_requested_share_and_is_signal_dependent():
    x = _wave()
    x[:1000] = 0.0  # silence gets no noise (signal-dependent)
    cfg = AugmentConfig(impulsive=True, impulsive_percent=10.0, impulsive_gain=2.0)
    y = impulsive_noise(x, np.random.default_rng(3), cfg)
    changed = np.flatnonzero(y != x)
    assert 0.08 * len(x) < len(changed) <= 0.1 * len(x)
    assert np.all(y[:1000] == 0)
    assert np.all(np.abs(y - x) <= 2.0 * np.abs(x) + 1e-7)


# ---- config ------------------------------------------------------------------------------------------------


def _write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_load_config_resolves_paths_and_parses_numbers(tmp_path):
    p = _write(
        tmp_path,
        "arch: ssl-linear\nfinetune: lora\ndata: {train: m/train.csv, dev: m/dev.csv, nb_samp: 8000}\n"
        "optimizer: {name: adamw, lr: 1e-4}\nsam: {rho: 0.1, adaptive: true}\n",
    )
    cfg = load_config(p)
    assert cfg.data.train == str(tmp_path / "m/train.csv")
    assert cfg.optimizer.lr == 1e-4 and cfg.method == "asam" and cfg.sam.eta == 0.01
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "out_proj"]
    dump_config(cfg, tmp_path / "copy.yaml")
    assert load_config(tmp_path / "copy.yaml") == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "text, match",
    [
        ("arch: aasist\ndata: {train: a.csv}\nlr: 0.1\n", "unknown key 'lr'"),
        ("arch: aasist\ndata: {train: a.csv}\noptimizer: {lr: -1}\n", "optimizer.lr=-1"),
        ("arch: aasist\ndata: {train: a.csv}\noptimizer: {name: rmsprop}\n", "optimizer.name='rmsprop'"),
        ("arch: aasist\ndata: {train: a.csv, batch_size: 2.5}\n", "data.batch_size=2.5"),
        (
            "arch: aasist\ndata: {train: a.csv}\nsam: {rho: 0.05, adaptiv: true}\n",
            "unknown key 'sam.adaptiv'",
        ),
        ("arch: aasist\ndata: {train: a.csv}\nfinetune: lora\n", "needs an SSL architecture"),
        ("arch: aasist\ndata: {train: a.csv}\nsam: {}\nmldg: {}\n", "cannot be combined"),
        ("arch: nope\ndata: {train: a.csv}\n", "arch='nope'"),
        ("data: {train: a.csv}\n", "missing key 'arch'"),
        ("arch: aasist\n", "missing section 'data'"),
        ("arch: aasist\ndata: {dev: a.csv}\n", "data.train"),
        ("arch: aasist\ndata: {train: a.csv}\nsam: {adaptive: yes please}\n", "sam.adaptive"),
        ("arch: aasist\ndata: {train: a.csv}\nepochs: 0\n", "epochs=0"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("arch: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_configs_raise_one_line_spec_errors(tmp_path, text, match):
    p = _write(tmp_path, text)
    with pytest.raises(SpecError, match=match) as info:
        load_config(p)
    assert "\n" not in str(info.value)
    assert str(p) in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_config(tmp_path / "nope.yaml")
