"""A deterministic, generated mini speech-deepfake corpus with domain shifts (the embedded demo).

Nothing is downloaded.  **Bona fide** speech is real recorded speech where the machine has some
(Debian's ``asterisk-core-sounds-en-*`` voice prompts, under ``/usr/share/asterisk/sounds/en``), otherwise
speech-like signals synthesised here with a source-filter model: a Rosenberg glottal pulse train with jitter
and shimmer and a declining, wobbling f0 contour, filtered by a cascade of formant resonators whose targets
move between vowels, with noise bursts standing in for fricatives and a syllabic amplitude envelope.
Synthetic "speakers" differ in f0 range and vocal-tract length (formant scaling); the "other language" domain
uses a different vowel inventory and rhythm.

**Spoofs** are resyntheses of bona fide clips, each engine one attack id:

========  ==========================================================  =====================
attack    engine                                                      split
========  ==========================================================  =====================
D01       Griffin-Lim phase reconstruction from the STFT magnitude    train / dev / eval
D02       LPC vocoder (order 16, pulse/noise excitation)              train / dev / eval
D03       mel-spectrogram vocoder (80 mel bands → pseudo-inverse → GL)  unseen attacks
D04       harmonic (sinusoidal) vocoder from the f0 track             unseen attacks
D05       espeak-ng text-to-speech (only where espeak-ng is installed)  unseen attacks
========  ==========================================================  =====================

**Domains** (one manifest each): ``train``, ``dev``, ``eval`` (in-domain test), ``unseen_attacks``, ``codec``
(eval utterances through µ-law / A-law telephone, G.722 wideband telephone, MP3 and Opus via
PyAV -- PyAV's FFmpeg has a GSM decoder but no encoder; µ-law/A-law fall back to the
G.711 formulas written here when PyAV is absent), ``noise`` (additive noise at 5–15 dB SNR), ``bandlimit``
(300–3400 Hz telephone band) and ``other_speakers`` (unseen speakers and the other "language").  The
three channel domains (codec, noise, band limit) carry the very utterances of ``eval`` through the channel,
so the in-domain and channel-shifted sets are paired utterance by utterance.

Every file is a pure function of ``(seed, utterance index)``; the corpus records its sources in
``corpus.json``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import signal

SR = 16_000
VOWELS_A = {
    "a": (730, 1090, 2440),
    "i": (270, 2290, 3010),
    "u": (300, 870, 2240),
    "e": (530, 1840, 2480),
    "o": (570, 840, 2410),
}
VOWELS_B = {"y": (300, 1900, 2500), "ae": (660, 1720, 2410), "oe": (450, 1500, 2400), "ih": (390, 1990, 2550)}
TRAIN_ATTACKS = ("D01", "D02")
UNSEEN_ATTACKS = ("D03", "D04", "D05")
CODECS = ("mulaw", "alaw", "g722", "mp3", "opus")


@dataclass(frozen=True)
class CorpusConfig:
    """Sizes of the demo corpus (utterances per class and split) and clip length in seconds."""

    seed: int = 0
    n_train: int = 64
    n_dev: int = 32
    # 250 bona fide + 250 spoofs per test set: the 95 % bootstrap CI of an EER up to ~50 % stays within
    # +-5 points (150 per class gave up to +-6.3 in the demo study)
    n_test: int = 250
    # the demo scores the first 0.25 s (4,000 samples); longer clips would only cost synthesis time
    duration: tuple[float, float] = (0.3, 0.45)
    real_speech: bool = True  # use asterisk prompts where installed
    tts: bool = True  # use espeak-ng where installed


@dataclass(frozen=True)
class Speaker:
    name: str
    f0: float
    vtl: float  # formant scaling
    language: str


def corpus_config(small: bool = False, seed: int = 0) -> CorpusConfig:
    """The demo corpus sizes: the default, or (``small``) the reduced corpus the tests and ``--small`` use."""
    if small:
        return CorpusConfig(seed=seed, n_train=16, n_dev=8, n_test=12)
    return CorpusConfig(seed=seed)


SPEAKERS_SEEN = [
    Speaker(f"spk{i}", f0, vtl, "A")
    for i, (f0, vtl) in enumerate(
        [(110, 1.0), (125, 0.97), (190, 1.12), (210, 1.15), (150, 1.05), (100, 0.94)]
    )
]
SPEAKERS_UNSEEN = [
    Speaker("spk_u0", 240, 1.22, "B"),
    Speaker("spk_u1", 85, 0.9, "B"),
    Speaker("spk_u2", 170, 1.08, "B"),
]


# ---- bona fide: source-filter synthesis ---


def _resonator(x: np.ndarray, freqs: np.ndarray, bw: float) -> np.ndarray:
    """Time-varying 2nd-order resonator (formant), coefficients updated per 80-sample block."""
    y = np.zeros_like(x)
    y1 = y2 = 0.0
    blk = 80
    for s in range(0, len(x), blk):
        f = float(freqs[min(s, len(freqs) - 1)])
        r = np.exp(-np.pi * bw / SR)
        a1, a2 = -2 * r * np.cos(2 * np.pi * f / SR), r * r
        g = 1 - r
        seg = x[s : s + blk]
        out, zi = signal.lfilter([g], [1, a1, a2], seg, zi=signal.lfiltic([g], [1, a1, a2], [y1, y2]))
        y[s : s + blk] = out
        if len(out) >= 2:
            y1, y2 = out[-1], out[-2]
        elif len(out) == 1:
            y1, y2 = out[-1], y1
    return y


def synth_speech(rng: np.random.Generator, spk: Speaker, duration: float) -> np.ndarray:
    """Speech-like signal: glottal pulses → moving formants, fricative noise bursts, syllable envelope."""
    n = int(duration * SR)
    t = np.arange(n) / SR
    f0 = spk.f0 * (1.1 - 0.2 * t / duration) * (1 + 0.04 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
    f0 *= 1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1))
    phase = np.cumsum(f0 / SR)
    frac = phase % 1.0
    open_q = 0.6
    pulse = np.where(
        frac < open_q,
        0.5 * (1 - np.cos(np.pi * frac / open_q)),
        np.cos(np.pi * (frac - open_q) / (2 * (1 - open_q))),
    )
    src = np.diff(pulse, prepend=0.0)
    src *= 1 + 0.1 * rng.standard_normal(n)  # shimmer-like amplitude noise
    vowels = VOWELS_A if spk.language == "A" else VOWELS_B
    keys = list(vowels)
    syl = rng.uniform(0.16, 0.26) if spk.language == "A" else rng.uniform(0.11, 0.17)
    n_syl = max(2, int(duration / syl))
    seq = [vowels[keys[i]] for i in rng.integers(0, len(keys), n_syl + 1)]
    pos = np.linspace(0, n, n_syl + 1)
    out = np.zeros(n)
    for k in range(3):
        target = np.array([v[k] for v in seq]) * spk.vtl
        track = np.interp(np.arange(n), pos, target)
        out += _resonator(src, track, 60 + 40 * k) * (1.0, 0.6, 0.3)[k]
    env = 0.25 + 0.75 * np.clip(np.sin(np.pi * (np.arange(n) / (n / n_syl)) % np.pi), 0, 1) ** 0.7
    noise = signal.lfilter(*signal.butter(2, [3000, 6000], btype="band", fs=SR), rng.standard_normal(n))
    bursts = (np.sin(np.pi * (np.arange(n) / (n / n_syl)) % np.pi) < 0.25).astype(float)
    x = out * env + 0.02 * noise * bursts
    fade = np.minimum(1, np.minimum(np.arange(n), n - np.arange(n)) / (0.02 * SR))
    x = x * fade
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def _asterisk_prompts() -> list[Path]:
    root = Path("/usr/share/asterisk/sounds/en")
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.wav") if p.stat().st_size > 8000)


def _load_prompt(path: Path, rng: np.random.Generator, duration: float) -> np.ndarray | None:
    import soxr

    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError:
        return None
    x = x.mean(1)
    if sr != SR:
        x = soxr.resample(x, sr, SR).astype(np.float32)
    n = int(duration * SR)
    if len(x) > n:
        start = int(rng.integers(0, len(x) - n))
        x = x[start : start + n]
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


# ---- spoofs: resynthesis engines ---------------------------------------------------------------------------

_NFFT, _HOP = 512, 128


def _stft(x):
    return signal.stft(x, fs=SR, nperseg=_NFFT, noverlap=_NFFT - _HOP)[2]


def _istft(z, n):
    y = signal.istft(z, fs=SR, nperseg=_NFFT, noverlap=_NFFT - _HOP)[1]
    return np.pad(y, (0, max(0, n - len(y))))[:n]


def griffin_lim(mag: np.ndarray, n: int, rng: np.random.Generator, iters: int = 24) -> np.ndarray:
    """Griffin & Lim (1984) phase reconstruction from an STFT magnitude."""
    phase = np.exp(2j * np.pi * rng.random(mag.shape))
    for _ in range(iters):
        y = _istft(mag * phase, n)
        z = _stft(y)
        phase = np.exp(1j * np.angle(z[:, : mag.shape[1]]))
    return _istft(mag * phase, n)


def spoof_griffin_lim(x, rng):
    return griffin_lim(np.abs(_stft(x)), len(x), rng)


def _mel_fb(n_mels: int = 80) -> np.ndarray:
    def hz2mel(f):
        return 2595 * np.log10(1 + f / 700)

    freqs = np.linspace(0, SR / 2, _NFFT // 2 + 1)
    pts = 700 * (10 ** (np.linspace(hz2mel(0), hz2mel(SR / 2), n_mels + 2) / 2595) - 1)
    fb = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        fb[m] = np.clip(np.minimum((freqs - lo) / (c - lo + 1e-9), (hi - freqs) / (hi - c + 1e-9)), 0, None)
    return fb


def spoof_mel_vocoder(x, rng):
    fb = _mel_fb()
    mel = fb @ np.abs(_stft(x))
    mag = np.clip(np.linalg.pinv(fb) @ mel, 0, None)
    return griffin_lim(mag, len(x), rng)


def _f0_track(x: np.ndarray, frame: int = 400, hop: int = 160) -> np.ndarray:
    """Autocorrelation f0 per frame (60–400 Hz); 0 where unvoiced."""
    out = []
    for s in range(0, max(1, len(x) - frame), hop):
        fr = x[s : s + frame] * np.hanning(frame)
        ac = np.correlate(fr, fr, "full")[frame - 1 :]
        lo, hi = SR // 400, SR // 60
        if ac[0] <= 1e-8:
            out.append(0.0)
            continue
        lag = lo + int(np.argmax(ac[lo:hi]))
        out.append(SR / lag if ac[lag] / ac[0] > 0.3 else 0.0)
    return np.asarray(out)


def spoof_lpc(x, rng, order: int = 16, frame: int = 400, hop: int = 200):
    """LPC analysis/synthesis: per-frame all-pole filter driven by a pulse train (voiced) or noise."""
    f0 = _f0_track(x, frame, hop)
    y = np.zeros(len(x) + frame)
    win = np.hanning(frame)
    phase = 0.0
    for i, s in enumerate(range(0, max(1, len(x) - frame), hop)):
        fr = x[s : s + frame] * win
        r = np.correlate(fr, fr, "full")[frame - 1 : frame + order]
        if r[0] <= 1e-8:
            continue
        a = _levinson(r, order)
        gain = np.sqrt(max(r[0] * 1e-3, float(np.dot(a, r[: order + 1]))))
        if f0[i] > 0:
            exc = np.zeros(frame)
            period = SR / f0[i]
            k = phase
            while k < frame:
                exc[int(k)] = np.sqrt(period)
                k += period
            phase = k - hop
        else:
            exc = rng.standard_normal(frame)
        y[s : s + frame] += signal.lfilter([gain], a, exc) * win
    return y[: len(x)]


def _levinson(r: np.ndarray, order: int) -> np.ndarray:
    a = np.zeros(order + 1)
    a[0] = 1.0
    err = r[0]
    for i in range(1, order + 1):
        acc = r[i] + np.dot(a[1:i], r[i - 1 : 0 : -1])
        k = -acc / err
        a[1:i] = a[1:i] + k * a[i - 1 : 0 : -1]
        a[i] = k
        err *= 1 - k * k
        if err <= 0:
            break
    return a


def spoof_harmonic(x, rng, hop: int = 160):
    """Harmonic model: sum of sinusoids at multiples of the tracked f0 with spectral-envelope amplitudes."""
    f0 = _f0_track(x, 400, hop)
    n = len(x)
    f0s = np.interp(np.arange(n), np.arange(len(f0)) * hop + 200, f0)
    voiced = f0s > 0
    env = np.abs(_stft(x))
    phase = 2 * np.pi * np.cumsum(np.where(voiced, f0s, 120.0)) / SR
    y = np.zeros(n)
    frames = np.clip((np.arange(n) / _HOP).astype(int), 0, env.shape[1] - 1)
    for h in range(1, 30):
        fh = h * np.where(voiced, f0s, 120.0)
        bins = np.clip((fh / (SR / _NFFT)).astype(int), 0, env.shape[0] - 1)
        amp = env[bins, frames] * (fh < SR / 2) * voiced
        y += amp * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    y += 0.02 * np.std(y) * rng.standard_normal(n)
    return y


_TEXTS = [
    "please hold the line",
    "your call is important to us",
    "the number you have dialed is not in service",
    "press one for sales",
    "thank you for waiting",
    "goodbye",
    "please enter your pin",
    "welcome back",
]


def spoof_tts(rng, idx: int, spk: Speaker) -> np.ndarray | None:
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        return None
    text = _TEXTS[idx % len(_TEXTS)]
    pitch = int(np.clip((spk.f0 - 80) / 2, 0, 99))
    try:
        proc = subprocess.run(
            [exe, "--stdout", "-p", str(pitch), "-s", str(150 + 10 * (idx % 4)), text],
            capture_output=True,
            timeout=30,
            check=True,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    import io

    import soxr

    x, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if x.ndim > 1:
        x = x.mean(1)
    return soxr.resample(x, sr, SR).astype(np.float32) if sr != SR else x


# Output stage of each engine: its internal sample rate (the band it can produce) and the level of its noise
# floor relative to the signal (dB).  Vocoders trained at 22.05 / 24 kHz and below leave such band limits and
# floors, which detectors are known to pick up (Müller et al. 2021, "Speech is silver, silence is golden").
# The training attacks' floor is strong (-10 dB) so that a tiny AASIST (no log compression after its sinc
# front end) learns them within the demo's ~60 steps (at -20 dB it needed several hundred with recorded bona
# fide speech); the unseen attacks keep almost none, which is what makes them a domain shift.
VOCODER_OUTPUT = {
    "D01": (12_000, -10.0),
    "D02": (11_025, -10.0),
    "D03": (16_000, -60.0),
    "D04": (14_000, -55.0),
}


def vocoder_channel(y: np.ndarray, attack: str, rng: np.random.Generator) -> np.ndarray:
    """The engine's output stage: band-limit to its internal rate and add its (high-passed) noise floor."""
    import soxr

    rate, floor_db = VOCODER_OUTPUT.get(attack, (16_000, -40.0))
    y = np.asarray(y, dtype=np.float64)
    if rate < SR:
        y = soxr.resample(soxr.resample(y, SR, rate), rate, SR)[: len(y)]
    noise = signal.lfilter([1, -0.95], [1], rng.standard_normal(len(y)))
    level = np.sqrt(np.mean(y**2) + 1e-12) * 10 ** (floor_db / 20) / (np.std(noise) + 1e-12)
    return y + level * noise


ENGINES = {"D01": spoof_griffin_lim, "D02": spoof_lpc, "D03": spoof_mel_vocoder, "D04": spoof_harmonic}


# ---- channel effects ---------------------------------------------------------------------------------------


def g711(x: np.ndarray, law: str) -> np.ndarray:
    """G.711 µ-law / A-law companding round trip at 8 bits (ITU-T G.711 continuous formulas)."""
    x = np.clip(x, -1, 1)
    if law == "mulaw":
        mu = 255.0
        y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
        y = np.round(y * 127) / 127
        return np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu
    a = 87.6
    ax = np.abs(x)
    y = np.where(
        ax < 1 / a, a * ax / (1 + np.log(a)), (1 + np.log(np.maximum(a * ax, 1e-12))) / (1 + np.log(a))
    )
    y = np.round(np.sign(x) * y * 127) / 127
    ay = np.abs(y)
    inv = np.where(ay < 1 / (1 + np.log(a)), ay * (1 + np.log(a)) / a, np.exp(ay * (1 + np.log(a)) - 1) / a)
    return np.sign(y) * inv


def codec_roundtrip(x: np.ndarray, codec: str) -> tuple[np.ndarray, int]:
    """Encode and decode with a real codec (PyAV/FFmpeg); returns (audio, sample rate)."""
    import soxr

    if codec in ("mulaw", "alaw"):
        x8 = soxr.resample(x, SR, 8000)
        try:
            return _av_roundtrip(x8, 8000, {"mulaw": "pcm_mulaw", "alaw": "pcm_alaw"}[codec], "wav"), 8000
        except Exception:  # noqa: BLE001 - PyAV absent or codec missing: the G.711 formulas are exact enough
            return g711(x8, codec).astype(np.float32), 8000
    spec = {
        "g722": ("g722", "wav", 16000, 64000),
        "mp3": ("libmp3lame", "mp3", 16000, 24000),
        "opus": ("libopus", "ogg", 48000, 12000),
    }[codec]
    name, fmt, rate, bitrate = spec
    xr = soxr.resample(x, SR, rate) if rate != SR else x
    y = _av_roundtrip(xr, rate, name, fmt, bitrate)
    return (soxr.resample(y, rate, SR).astype(np.float32) if rate != SR else y), SR


def _av_roundtrip(x: np.ndarray, rate: int, codec: str, fmt: str, bitrate: int | None = None) -> np.ndarray:
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate, layout="mono")
        if bitrate:
            st.bit_rate = bitrate
        fmt_name = st.codec_context.format.name if st.codec_context.format else "s16"
        pcm = np.clip(x, -1, 1).astype(np.float32)
        frame_size = st.codec_context.frame_size or 1024
        for s in range(0, len(pcm), frame_size):
            chunk = pcm[s : s + frame_size]
            if len(chunk) < frame_size and st.codec_context.frame_size:
                chunk = np.pad(chunk, (0, frame_size - len(chunk)))
            fr = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            fr.sample_rate = rate
            fr.pts = s
            resampled = av.AudioResampler(format=fmt_name, layout="mono", rate=rate).resample(fr)
            for rf in resampled:
                for pkt in st.encode(rf):
                    out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    buf.seek(0)
    chunks = []
    with av.open(buf, "r") as inp:
        for frame in inp.decode(audio=0):
            arr = frame.to_ndarray().astype(np.float32)
            if frame.format.name.startswith("s16"):
                arr = arr / 32768.0
            chunks.append(arr.reshape(-1))
    y = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return y[: len(x)] if len(y) >= len(x) else np.pad(y, (0, len(x) - len(y)))


def add_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    snr = rng.uniform(5, 15)
    noise = signal.lfilter([1], [1, -0.9], rng.standard_normal(len(x)))  # pinkish noise
    p_x, p_n = np.mean(x**2) + 1e-12, np.mean(noise**2) + 1e-12
    return x + noise * np.sqrt(p_x / (p_n * 10 ** (snr / 10)))


def bandlimit(x: np.ndarray) -> np.ndarray:
    return signal.sosfiltfilt(signal.butter(6, [300, 3400], btype="band", fs=SR, output="sos"), x)


# ---- corpus assembly ---------------------------------------------------------------------------------------


def _norm(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


class _Builder:
    def __init__(self, out: Path, cfg: CorpusConfig) -> None:
        self.out, self.cfg = out, cfg
        self.prompts = _asterisk_prompts() if cfg.real_speech else []
        self.has_tts = cfg.tts and (shutil.which("espeak-ng") or shutil.which("espeak")) is not None
        self.rows: dict[str, list[dict]] = {}
        self.counter = 0
        # clean (bona fide, spoof) pairs by utterance index: the channel domains (codec, noise, band limit)
        # pass the in-domain test utterances through a channel, so they are generated once
        self._clean: dict[int, tuple[np.ndarray, str, np.ndarray]] = {}

    def rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, *key])

    def bona(self, idx: int, spk: Speaker) -> tuple[np.ndarray, str]:
        rng = self.rng(1, idx)
        dur = rng.uniform(*self.cfg.duration)
        if self.prompts and spk.language == "A":
            x = _load_prompt(self.prompts[idx % len(self.prompts)], rng, dur)
            if x is not None:
                return x, "asterisk-prompt"
        return synth_speech(rng, spk, dur), "source-filter"

    def write(self, split: str, x: np.ndarray, label: str, attack: str, spk: Speaker, sr: int = SR, **extra):
        self.counter += 1
        uid = f"DEMO_{split.upper()}_{self.counter:05d}"
        rel = Path("audio") / split / f"{uid}.wav"
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(self.out / rel), x, sr, subtype="PCM_16")
        row = {
            "utt_id": uid,
            "path": str(Path("..") / rel),
            "label": label,
            "attack": attack,
            "speaker": spk.name,
            "language": spk.language,
            "dataset": "demo",
            "subset": split,
            "codec": "none",
            "transmission": "none",
            "sample_rate": sr,
            "num_samples": len(x),
        }
        row.update(extra)
        self.rows.setdefault(split, []).append(row)

    def split(
        self, name: str, n: int, speakers: list[Speaker], attacks: tuple[str, ...], offset: int, effect=None
    ) -> None:
        for i in range(n):
            idx = offset + i
            spk = speakers[idx % len(speakers)]
            attack = attacks[i % len(attacks)]
            if idx not in self._clean:
                x, src = self.bona(idx, spk)
                self._clean[idx] = (x, src, self._spoof(attack, x, idx, spk))
            x, src, y = self._clean[idx]
            xs, extra = self._effect(effect, x, idx)
            self.write(name, xs, "bonafide", "-", spk, source=src, **extra)
            ys, extra = self._effect(effect, y, idx + 100_000)
            self.write(name, ys, "spoof", attack, spk, source=src, **extra)

    def _spoof(self, attack: str, x: np.ndarray, idx: int, spk: Speaker) -> np.ndarray:
        rng = self.rng(2, idx)
        if attack == "D05":
            y = spoof_tts(rng, idx, spk)
            if y is not None:
                return _norm(y)
            attack = "D04"
        return _norm(vocoder_channel(ENGINES[attack](x.astype(np.float64), rng), attack, rng))

    def _effect(self, effect, x: np.ndarray, idx: int) -> tuple[np.ndarray, dict]:
        if effect is None:
            return x, {}
        if effect == "codec":
            codec = CODECS[idx % len(CODECS)]
            try:
                y, sr = codec_roundtrip(x, codec)
            except Exception:  # noqa: BLE001 - a codec missing from this FFmpeg build: fall back to G.711
                codec = "mulaw"
                y, sr = codec_roundtrip(x, codec)
            return _norm(y), {
                "codec": codec,
                "transmission": "telephone" if sr == 8000 else "internet",
                "sr_out": sr,
            }
        if effect == "noise":
            return _norm(add_noise(x, self.rng(3, idx))), {"transmission": "noisy"}
        if effect == "bandlimit":
            return _norm(bandlimit(x)), {"transmission": "band-limited"}
        raise ValueError(effect)

    def finish(self) -> dict[str, Path]:
        man_dir = self.out / "manifests"
        man_dir.mkdir(parents=True, exist_ok=True)
        paths = {}
        for split, rows in self.rows.items():
            df = pd.DataFrame(rows)
            if "sr_out" in df:
                df["sample_rate"] = df.pop("sr_out").fillna(SR).astype(int)
            p = man_dir / f"{split}.csv"
            df.to_csv(p, index=False)
            paths[split] = p
        return paths


def build_demo_corpus(out: str | Path, cfg: CorpusConfig | None = None) -> dict[str, Path]:
    """Generate the corpus under ``out`` (audio/ + manifests/) and return {domain: manifest path}.

    Cached: if ``out/corpus.json`` records the same config, nothing is regenerated.
    """
    cfg = cfg or CorpusConfig()
    out = Path(out)
    stamp = out / "corpus.json"
    if stamp.is_file():
        info = json.loads(stamp.read_text())
        if info.get("config") == json.loads(json.dumps(asdict(cfg))):
            return {k: out / v for k, v in info["manifests"].items()}
    if out.exists():
        shutil.rmtree(out / "audio", ignore_errors=True)
        shutil.rmtree(out / "manifests", ignore_errors=True)
    b = _Builder(out, cfg)
    seen = SPEAKERS_SEEN
    unseen_attacks = UNSEEN_ATTACKS if b.has_tts else UNSEEN_ATTACKS[:2]
    b.split("train", cfg.n_train, seen[:4], TRAIN_ATTACKS, 0)
    b.split("dev", cfg.n_dev, seen[:4], TRAIN_ATTACKS, 10_000)
    b.split("eval", cfg.n_test, seen[4:], TRAIN_ATTACKS, 20_000)
    b.split("unseen_attacks", cfg.n_test, seen[4:], unseen_attacks, 30_000)
    # channel shifts of the in-domain test utterances themselves (same offset): a paired design, so a
    # difference between eval and a channel domain is the channel's, not the sample's
    b.split("codec", cfg.n_test, seen[4:], TRAIN_ATTACKS, 20_000, effect="codec")
    b.split("noise", cfg.n_test, seen[4:], TRAIN_ATTACKS, 20_000, effect="noise")
    b.split("bandlimit", cfg.n_test, seen[4:], TRAIN_ATTACKS, 20_000, effect="bandlimit")
    b.split("other_speakers", cfg.n_test, SPEAKERS_UNSEEN, TRAIN_ATTACKS, 70_000)
    paths = b.finish()
    info = {
        "config": asdict(cfg),
        "bona_fide_source": "asterisk-core-sounds-en" if b.prompts else "source-filter synthesis",
        "tts": "espeak-ng" if b.has_tts else "absent (D05 not generated)",
        "attacks": {"train": list(TRAIN_ATTACKS), "unseen": list(unseen_attacks)},
        "manifests": {k: str(v.relative_to(out)) for k, v in paths.items()},
    }
    stamp.write_text(json.dumps(info, indent=1))
    return paths
