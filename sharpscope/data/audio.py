"""Audio decoding and batching.

Decoding uses soundfile (libsndfile); multi-channel audio is averaged to mono and resampled to 16 kHz with
soxr (high quality).  Two crop policies:

* ``first`` -- the reference behaviour of AASIST / SSL_Anti-spoofing / SAM-AntiSpoofing evaluation: the first
  64,600 samples (~4 s); shorter clips are tiled (repeated) up to that length.
* ``full`` -- whole utterances, batched in the caller's order (length never overrides the order: batch
  composition is a controlled variable) and zero-padded for storage only; ``Batch.lengths`` holds the true
  lengths and every consumer forwards each exact-length group on its own
  (:func:`sharpscope.models.outputs.grouped_forward`), so no utterance's logits depend on its batch mates.
  Whole is bounded: a clip longer than the cap (``full`` = 60 s, ``full:SECONDS`` to choose, ``full:none`` for
  no cap) keeps its first SECONDS.  Without a cap one 10-minute clip in a batch of 32 pads the batch to
  32 x 9.6 M samples and its activations to many GB; with it a batch is bounded by ``batch_size x cap``.
  Every cut is counted (``Batch.meta["n_truncated"]``) and announced with one warning line per pass.

The policy (with its cap) is part of every result's settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import AudioError

SAMPLE_RATE = 16_000
NB_SAMP = 64_600
CROPS = ("first", "full")
FULL_MAX_SECONDS = 60.0  # default cap of crop "full" (see the module docstring)


def check_crop(crop: str) -> int | None:
    """Validate a crop policy and return its cap in samples for ``full`` (``None``: no cap / not ``full``).

    Accepted: ``first``, ``full`` (capped at :data:`FULL_MAX_SECONDS`), ``full:SECONDS`` (a positive number),
    ``full:none`` (no cap: the caller accepts unbounded memory).
    """
    kind, _, arg = str(crop).partition(":")
    if kind not in CROPS or (kind == "first" and arg):
        raise AudioError(
            f"unknown crop policy {crop!r}; use first, full, full:SECONDS "
            f"(cap, default {FULL_MAX_SECONDS:g}) or full:none"
        )
    if kind == "first":
        return None
    if arg == "":
        return int(FULL_MAX_SECONDS * SAMPLE_RATE)
    if arg.lower() == "none":
        return None
    try:
        seconds = float(arg)
    except ValueError:
        seconds = float("nan")
    if not np.isfinite(seconds) or seconds <= 0:
        raise AudioError(f"crop {crop!r}: the cap after 'full:' must be positive seconds or 'none'")
    return max(1, int(round(seconds * SAMPLE_RATE)))


def crop_kind(crop: str) -> str:
    """``first`` or ``full`` (the policy without its cap)."""
    return str(crop).partition(":")[0]


@dataclass
class Batch:
    """A batch of waveforms.

    ``labels`` index the logit order ``[spoof, bonafide]``: 1 = bona fide, 0 = spoof (-1 = unknown).
    """

    wave: torch.Tensor  # [B, T] float32
    labels: torch.Tensor  # [B] int64
    utt_ids: list[str]
    lengths: torch.Tensor | None = None  # [B] true lengths for crop "full"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.utt_ids)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.wave.to(device),
            self.labels.to(device),
            self.utt_ids,
            None if self.lengths is None else self.lengths.to(device),
            self.meta,
        )


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, row: int | str | None = None) -> np.ndarray:
    """Decode ``path`` to a mono float32 array at ``sample_rate``.

    Raises :class:`AudioError` naming the file (and manifest row, when given) if it is missing, empty or
    cannot be decoded.
    """
    import soundfile as sf

    where = f"{path}" + (f" (manifest row {row})" if row is not None else "")
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"audio file not found: {where}; fix the path in the manifest or the --root")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AudioError(f"cannot decode audio {where}: {msg}; re-encode it as WAV/FLAC") from None
    if data.size == 0:
        raise AudioError(f"empty audio file {where}: it holds no samples; remove the row or replace the file")
    x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate:
        import soxr

        x = soxr.resample(x, sr, sample_rate, quality="HQ").astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise AudioError(f"audio {where} contains NaN/inf samples; replace the file")
    return np.ascontiguousarray(x, dtype=np.float32)


def crop_first(x: np.ndarray, n: int = NB_SAMP) -> np.ndarray:
    """First ``n`` samples; shorter clips are tiled to length ``n`` (reference ``pad`` behaviour)."""
    if len(x) >= n:
        return x[:n]
    reps = n // len(x) + 1
    return np.tile(x, reps)[:n]


def _label_index(label: str) -> int:
    return {"bonafide": 1, "spoof": 0}.get(label, -1)


class AudioCache:
    """In-memory LRU cache of decoded (and cropped) waveforms keyed by (path, crop, length).

    The sweep decodes each test set once and shares it across checkpoints.  ``max_bytes`` bounds the memory
    (least recently used clips are dropped first), so a test set larger than the budget is simply decoded
    again instead of exhausting memory (ASVspoof 2021 DF at 64,600 samples would need ~158 GB).
    """

    def __init__(self, max_bytes: int = 4 << 30) -> None:
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self.nbytes = 0
        self._store: OrderedDict[tuple[str, str, int], np.ndarray] = OrderedDict()
        self.truncated: set[str] = set()  # paths whose decoded clip exceeded a crop "full" cap

    def get(self, path: str, crop: str, nb_samp: int = NB_SAMP, row: int | str | None = None) -> np.ndarray:
        """The decoded clip under ``crop`` (``first``: tiled/cut to ``nb_samp``; ``full``: whole, capped)."""
        key = (str(path), crop, nb_samp)
        hit = self._store.get(key)
        if hit is not None:
            self._store.move_to_end(key)
            return hit
        x = load_audio(path, row=row)
        if crop_kind(crop) == "first":
            hit = crop_first(x, nb_samp)
        else:
            cap = check_crop(crop)
            hit = x if cap is None or len(x) <= cap else x[:cap].copy()
            if hit is not x:
                self.truncated.add(str(path))
        if hit.nbytes <= self.max_bytes:
            self._store[key] = hit
            self.nbytes += hit.nbytes
            while self.nbytes > self.max_bytes:
                _, old = self._store.popitem(last=False)
                self.nbytes -= old.nbytes
        return hit

    def clear(self) -> None:
        self._store.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._store)


def iter_batches(
    manifest,
    batch_size: int = 32,
    crop: str = "first",
    nb_samp: int = NB_SAMP,
    cache: AudioCache | None = None,
    order: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Yield :class:`Batch` es from a manifest DataFrame (columns ``utt_id, path, label``).

    ``order`` -- row positions in the order to batch them (default: manifest order), for every crop.
    """
    cap = check_crop(crop)
    full = crop_kind(crop) == "full"
    cache = cache if cache is not None else AudioCache()
    paths = manifest["path"].astype(str).tolist()
    ids = manifest["utt_id"].astype(str).tolist()
    labels = [_label_index(str(v)) for v in manifest["label"]]
    positions = list(range(len(paths))) if order is None else list(order)

    groups = [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]

    cut: list[str] = []
    for g in groups:
        waves = [cache.get(paths[i], crop, nb_samp, row=i + 1) for i in g]
        n_cut = 0
        if full and cap is not None:
            for i, w in zip(g, waves, strict=True):
                if len(w) == cap and paths[i] in cache.truncated:
                    n_cut += 1
                    cut.append(paths[i])
        lens = torch.tensor([len(w) for w in waves], dtype=torch.long)
        T = int(lens.max())
        buf = np.zeros((len(g), T), dtype=np.float32)
        for k, w in enumerate(waves):
            buf[k, : len(w)] = w
        yield Batch(
            wave=torch.from_numpy(buf),
            labels=torch.tensor([labels[i] for i in g], dtype=torch.long),
            utt_ids=[ids[i] for i in g],
            lengths=lens if full else None,
            meta={"rows": list(g), "crop": crop, "n_truncated": n_cut},
        )
    if cut:
        import warnings

        assert cap is not None  # cut only collects clips when a cap is set
        warnings.warn(
            f"crop {crop!r}: {len(cut)} clip(s) longer than {cap / SAMPLE_RATE:g} s were cut to their first "
            f"{cap / SAMPLE_RATE:g} s (first: {cut[0]}); choose the cap with --crop full:SECONDS",
            stacklevel=2,
        )

