"""Crop ``full`` is bounded: long clips keep their first SECONDS, every cut is counted and announced.

Issue 12: one 10-minute clip in a batch of 32 under ``--crop full`` padded the batch to 32 x 9.6 M samples.
The reference here is soundfile's own decode of the written file, cut by hand.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sharpscope.data.audio import FULL_MAX_SECONDS, SAMPLE_RATE, check_crop, iter_batches
from sharpscope.errors import AudioError


def _manifest(tmp_path, seconds: list[float]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for k, s in enumerate(seconds):
        p = tmp_path / f"u{k}.wav"
        sf.write(p, (0.1 * rng.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32), SAMPLE_RATE)
        rows.append({"utt_id": f"u{k}", "path": str(p), "label": "bonafide" if k % 2 else "spoof"})
    return pd.DataFrame(rows)


def test_full_with_cap_keeps_first_seconds_and_counts_cuts(tmp_path):
    df = _manifest(tmp_path, [3.0, 0.5, 1.0])
    with pytest.warns(UserWarning, match=r"1 clip\(s\) longer than 1 s.*u0\.wav"):
        (batch,) = list(iter_batches(df, batch_size=3, crop="full:1"))
    assert batch.wave.shape == (3, SAMPLE_RATE)
    assert batch.lengths.tolist() == [SAMPLE_RATE, SAMPLE_RATE // 2, SAMPLE_RATE]
    assert batch.meta["n_truncated"] == 1  # the 1.0 s clip is exactly at the cap, not cut
    ref, _ = sf.read(df.loc[0, "path"], dtype="float32")
    np.testing.assert_array_equal(batch.wave[0].numpy(), ref[:SAMPLE_RATE])


def test_default_full_cap_is_sixty_seconds(tmp_path):
    df = _manifest(tmp_path, [FULL_MAX_SECONDS + 1.0, 0.25])
    with pytest.warns(UserWarning, match="longer than 60 s"):
        (batch,) = list(iter_batches(df, batch_size=2, crop="full"))
    assert batch.wave.shape == (2, int(60 * SAMPLE_RATE))
    assert batch.meta["n_truncated"] == 1


def test_full_none_is_uncapped_and_short_sets_warn_nothing(tmp_path):
    df = _manifest(tmp_path, [2.0, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (batch,) = list(iter_batches(df, batch_size=2, crop="full:none"))
        (capped,) = list(iter_batches(df, batch_size=2, crop="full"))
    assert batch.lengths.tolist() == [2 * SAMPLE_RATE, SAMPLE_RATE // 2]
    assert capped.meta["n_truncated"] == 0


def test_batch_memory_is_bounded_by_batch_size_times_cap(tmp_path):
    df = _manifest(tmp_path, [0.25] * 7 + [4.0])
    with pytest.warns(UserWarning):
        batches = list(iter_batches(df, batch_size=8, crop="full:0.5"))
    assert all(b.wave.numel() <= 8 * SAMPLE_RATE // 2 for b in batches)


@pytest.mark.parametrize(
    "crop, expected",
    [
        ("first", None),
        ("full", int(FULL_MAX_SECONDS * SAMPLE_RATE)),
        ("full:2.5", 40_000),
        ("full:none", None),
    ],
)
def test_check_crop_caps(crop, expected):
    assert check_crop(crop) == expected


@pytest.mark.parametrize("crop", [
    "bogus", "full:abc", "full:-1", "full:0", "full:nan", "first:3", "full:inf"
])
def test_check_crop_refuses_with_one_line(crop):
    with pytest.raises(AudioError) as e:
        check_crop(crop)
    assert "\n" not in str(e.value) and repr(crop) in str(e.value)


def test_study_scoring_accepts_capped_full_and_refuses_bad_caps():
    from sharpscope.sweep.study import _scoring

    for crop in ("full:30", "full:none", "full"):
        problems: list[str] = []
        assert _scoring({"scoring": {"crop": crop}}, problems)["crop"] == crop
        assert problems == []
    problems = []
    _scoring({"scoring": {"crop": "full:x"}}, problems)
    assert len(problems) == 1 and problems[0].startswith("scoring.crop:") and "full:x" in problems[0]
