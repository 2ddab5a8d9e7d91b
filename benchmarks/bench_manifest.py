"""Manifest throughput at ASVspoof 2021 DF scale (611,829 trials).

Generates a synthetic ``keys/DF/CM/trial_metadata.txt`` in the official 13-field layout in a temporary
folder, then times: conversion (``build_manifest("asvspoof2021_df")``), writing CSV / Parquet, reading +
validating each (``read_manifest``), ``validate`` alone, ``manifest_hash`` and ``check_manifest`` without
audio (no audio files exist, so every row is reported missing: the worst case for problem reporting).

    .venv/bin/python benchmarks/bench_manifest.py [--rows N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from sharpscope.data.converters import build_manifest
from sharpscope.data.manifest import (
    check_manifest,
    load_table,
    manifest_hash,
    read_manifest,
    validate,
    write_manifest,
)

DF_ROWS = 611_829


def write_df_keys(root: Path, n: int, seed: int = 0) -> Path:
    """A 2021 DF-like key file: ~4% bona fide, three phases, nine codecs, ASVspoof and VCC sources."""
    rng = np.random.default_rng(seed)
    utt = np.char.add("DF_E_", (2_000_000 + np.arange(n)).astype(str))
    bona = rng.random(n) < 0.04
    codec = rng.choice(
        ["nocodec", "low_mp3", "high_mp3", "low_m4a", "high_m4a", "low_ogg", "high_ogg", "mp3m4a", "oggm4a"],
        n,
    )
    vcc = ~bona & (rng.random(n) < 0.2)
    attack = np.where(bona, "bonafide", rng.choice([f"A{k:02d}" for k in range(7, 20)], n))
    attack = np.where(vcc, np.char.add("Task1-team", rng.integers(1, 33, n).astype(str)), attack)
    source = np.where(vcc, "vcc2020", "asvspoof")
    phase = rng.choice(["progress", "eval", "hidden"], n, p=[0.1, 0.8, 0.1])
    vocoder = np.where(
        bona, "bonafide", rng.choice(["traditional_vocoder", "neural_vocoder_autoregressive"], n)
    )
    speaker = rng.choice([f"LA_{k:04d}" for k in range(1, 200)], n)
    key = np.where(bona, "bonafide", "spoof")
    task = np.where(vcc, "Task1", "-")
    team = np.where(vcc, np.char.add("team", rng.integers(1, 33, n).astype(str)), "-")
    pair = np.where(vcc, "FF", "-")
    lang = np.where(vcc, "E", "-")
    cols = [
        speaker,
        utt,
        codec,
        source,
        attack,
        key,
        np.full(n, "notrim"),
        phase,
        vocoder,
        task,
        team,
        pair,
        lang,
    ]
    lines = [" ".join(fields) for fields in zip(*(c.tolist() for c in cols), strict=True)]
    path = root / "keys" / "DF" / "CM" / "trial_metadata.txt"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n")
    (root / "ASVspoof2021_DF_eval" / "flac").mkdir(parents=True)
    return path


def _timed(label: str, fn, results: list[tuple[str, float, str]], note: str = ""):
    t0 = time.perf_counter()
    out = fn()
    results.append((label, time.perf_counter() - t0, note))
    return out


def _note(results: list[tuple[str, float, str]], note: str) -> None:
    label, secs, _ = results[-1]
    results[-1] = (label, secs, note)


def main(rows: int = DF_ROWS) -> list[tuple[str, float, str]]:
    results: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_df_keys(root, rows)
        df = _timed(
            "build (asvspoof2021_df converter)", lambda: build_manifest("asvspoof2021_df", root), results
        )
        csv, pq = root / "df.csv", root / "df.parquet"
        _timed("write CSV", lambda: write_manifest(df, csv), results)
        _note(results, f"{csv.stat().st_size / 1e6:.0f} MB")
        _timed("write Parquet", lambda: write_manifest(df, pq), results)
        _note(results, f"{pq.stat().st_size / 1e6:.0f} MB")
        _timed("read + validate CSV (read_manifest)", lambda: read_manifest(csv), results)
        m = _timed("read + validate Parquet (read_manifest)", lambda: read_manifest(pq), results)
        raw = load_table(csv)
        problems = _timed("validate only (loaded CSV)", lambda: validate(raw), results)
        _note(results, f"{len(problems)} problems")
        _timed("manifest_hash", lambda: manifest_hash(m), results)
        report = _timed("check_manifest (no audio; all files absent)", lambda: check_manifest(pq), results)
        _note(results, f"{len(report.problems):,} problems reported")
    width = max(len(r[0]) for r in results)
    print(f"manifest benchmark: {rows:,} rows (ASVspoof 2021 DF size = {DF_ROWS:,})")
    print(f"{'step':<{width}}  {'seconds':>8}  note")
    for label, secs, note in results:
        print(f"{label:<{width}}  {secs:>8.2f}  {note}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DF_ROWS)
    main(parser.parse_args().rows)
