"""RawBoost-style waveform augmentation (Tak et al. 2022, ICASSP), seeded.

Two of RawBoost's three noise families are implemented, each driven by an explicit ``numpy`` generator so a
training run is reproducible and resumable:

* **convolutive** (linear and non-linear): the output is a sum over orders ``j = 1..J`` of
  ``a_j · (h_j * x^j)`` -- each power of the signal filtered by its own random FIR filter ``h_j``.  Each
  ``h_j`` is a cascade of ``n_bands`` windowed-sinc (Hamming) filters, each a random band-pass or notch
  (band-stop) band with random centre frequency, bandwidth and (odd) number of taps, normalised to unit peak
  magnitude response.  ``a_1 = 1``; higher orders are attenuated by a random ``min_bias_db..max_bias_db``.
  The result is rescaled to the input's peak amplitude, so loudness is unchanged.
* **impulsive signal-dependent** additive noise: ``impulsive_percent`` % of the samples, chosen at random,
  receive ``g · x[n] · u₁u₂`` with ``u₁, u₂ ~ U(−1, 1)`` -- the noise is proportional to the signal there.

``augment`` applies convolutive then impulsive noise (RawBoost's series combination of these two) with
probability ``p`` per utterance.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from .config import AugmentConfig

SAMPLE_RATE = 16_000


def random_fir(rng: np.random.Generator, cfg: AugmentConfig, fs: int = SAMPLE_RATE) -> np.ndarray:
    """A cascade of ``cfg.n_bands`` random band-pass / notch FIR filters with unit peak magnitude response."""
    nyq = fs / 2
    h = np.ones(1)
    for _ in range(cfg.n_bands):
        fc = rng.uniform(cfg.min_freq, cfg.max_freq)
        bw = rng.uniform(cfg.min_bw, cfg.max_bw)
        taps = int(rng.integers(cfg.min_taps, cfg.max_taps + 1)) | 1  # odd: a notch needs a type-I filter
        lo = min(max(fc - bw / 2, 1.0), nyq - 2.0)
        hi = max(min(fc + bw / 2, nyq - 1.0), lo + 1.0)
        kind = "bandstop" if rng.random() < 0.5 else "bandpass"
        band = signal.firwin(taps, [lo, hi], window="hamming", pass_zero=kind, fs=fs)
        h = np.convolve(h, band)
    _, resp = signal.freqz(h, worN=1024, fs=fs)
    peak = float(np.max(np.abs(resp)))
    return h / peak if peak > 0 else h


def convolutive_noise(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Linear and non-linear convolutive noise (see the module docstring)."""
    y = np.zeros(len(x), dtype=np.float64)
    xd = x.astype(np.float64)
    for j in range(1, cfg.n_orders + 1):
        h = random_fir(rng, cfg)
        gain = 1.0 if j == 1 else 10 ** (-rng.uniform(cfg.min_bias_db, cfg.max_bias_db) / 20)
        y += gain * signal.lfilter(h, [1.0], xd**j)
    peak_in, peak_out = float(np.max(np.abs(xd))), float(np.max(np.abs(y)))
    if peak_out > 0:
        y *= peak_in / peak_out
    return y.astype(np.float32)


def impulsive_noise(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Impulsive signal-dependent additive noise on ``impulsive_percent`` % of the samples."""
    n = len(x)
    k = max(1, int(round(n * cfg.impulsive_percent / 100)))
    pos = rng.choice(n, size=min(k, n), replace=False)
    u = (2 * rng.random(len(pos)) - 1) * (2 * rng.random(len(pos)) - 1)
    y = x.astype(np.float32, copy=True)
    y[pos] += (cfg.impulsive_gain * x[pos] * u).astype(np.float32)
    return y


def augment(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Augment one waveform (float32, 16 kHz) with probability ``cfg.p``; returns a new array."""
    if not cfg.enabled or rng.random() >= cfg.p:
        return x
    y = x
    if cfg.convolutive:
        y = convolutive_noise(y, rng, cfg)
    if cfg.impulsive:
        y = impulsive_noise(y, rng, cfg)
    return np.ascontiguousarray(y, dtype=np.float32)
