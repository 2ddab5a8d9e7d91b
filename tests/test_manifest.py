"""Manifest schema: labels, reading/writing, validation problems with their rows, file and audio checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sharpscope.data.manifest import (
    LABELS,
    CheckReport,
    Problem,
    check_manifest,
    class_counts,
    files_exist,
    load_table,
    manifest_hash,
    normalise_label,
    normalise_labels,
    read_manifest,
    resolve_paths,
    validate,
    write_delimited,
    write_manifest,
)
from sharpscope.errors import ManifestError


def _wav(path: Path, n: int = 800, sr: int = 16000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.1
    sf.write(path, x, sr)
    return path


def _kinds(problems: list[Problem]) -> list[tuple[str, int | None]]:
    return [(p.kind, p.row) for p in problems]


# ---- labels ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "bonafide",
        "Bonafide",
        "BONA-FIDE",
        "bona fide",
        "bona_fide",
        " Bona-Fide ",
        "genuine",
        "Real",
        "human",
    ],
)
def test_bonafide_aliases(raw):
    assert normalise_label(raw) == "bonafide"


@pytest.mark.parametrize(
    "raw", ["spoof", "SPOOF", "spoofed", "fake", "Fake", "synthetic", "deepfake", "Deep-Fake"]
)
def test_spoof_aliases(raw):
    assert normalise_label(raw) == "spoof"


@pytest.mark.parametrize("raw", ["0", "1", 1, "maybe", "", "bonafide spoof"])
def test_numbers_and_unknown_labels_are_refused(raw):
    with pytest.raises(ManifestError, match="invalid label"):
        normalise_label(raw)


@pytest.mark.parametrize("raw", ["unknown", "Unknown", "unlabelled", "un-labeled"])
def test_explicit_unlabelled_rows(raw):
    assert normalise_label(raw) == "unknown"


def test_blind_manifest_reads_but_empty_label_does_not(tmp_path):
    p = tmp_path / "blind.csv"
    p.write_text("utt_id,path,label\nu1,a.wav,unknown\nu2,b.wav,spoof\n")
    assert read_manifest(p)["label"].tolist() == ["unknown", "spoof"]
    assert check_manifest(p).class_counts[["spoof", "unknown"]].sum().tolist() == [1, 1]
    p.write_text("utt_id,path,label\nu1,a.wav,\n")
    with pytest.raises(ManifestError, match="row 1: empty label"):
        read_manifest(p)


def test_normalise_labels_vectorised_marks_invalid_as_na():
    s = pd.Series(["Bona-fide", "fake", "x", None, "spoof", "fake"])
    out = normalise_labels(s)
    assert out[[0, 1, 4, 5]].tolist() == ["bonafide", "spoof", "spoof", "spoof"]
    assert out.isna().tolist() == [False, False, True, True, False, False]


# ---- reading and writing ---------------------------------------------------------------------------------


def _frame(tmp_path: Path) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "utt_id": ["u1", "u2", "u3"],
            "path": ["audio/u1.wav", str(tmp_path / "abs" / "u2.wav"), "audio/u3.wav"],
            "label": ["Bona-fide", "spoof", "fake"],
            "attack": ["bonafide", "A01", ""],
            "sample_rate": ["16000", "", "16000"],
            "my_extra": ["a", "b", "c"],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_write_read_roundtrip(tmp_path, suffix):
    df = _frame(tmp_path)
    out = write_manifest(df, tmp_path / "sub" / f"m{suffix}")
    assert out.is_file()
    m = read_manifest(out)
    assert list(m.columns) == ["utt_id", "path", "label", "attack", "sample_rate", "my_extra"]
    assert m["label"].tolist() == ["bonafide", "spoof", "spoof"]
    base = str((tmp_path / "sub").resolve())
    assert m["path"].tolist() == [
        f"{base}/audio/u1.wav",
        str(tmp_path / "abs" / "u2.wav"),
        f"{base}/audio/u3.wav",
    ]
    assert str(m["sample_rate"].dtype) == "Int64"
    assert m["sample_rate"].isna().tolist() == [False, True, False]
    assert int(m["sample_rate"].iloc[0]) == 16000
    assert m["attack"].isna().tolist() == [False, False, True]
    assert m["my_extra"].tolist() == ["a", "b", "c"]


def test_fast_csv_writer_matches_pandas_and_falls_back_for_quoting(tmp_path):
    plain = pd.DataFrame(
        {
            "utt_id": ["a", "b"],
            "path": ["x/a.wav", "x/b.wav"],
            "label": ["spoof", "bonafide"],
            "attack": ["A01", pd.NA],
            "num_samples": pd.array([16000, None], dtype="Int64"),
        }
    )
    for sep, name in ((",", "m.csv"), ("\t", "m.tsv")):
        write_delimited(plain, tmp_path / name, sep=sep)
        plain.to_csv(tmp_path / f"ref_{name}", sep=sep, index=False)
        assert (tmp_path / name).read_bytes() == (tmp_path / f"ref_{name}").read_bytes()
    tricky = plain.assign(attack=['say "hi", twice', "two\nlines"])
    p = write_manifest(tricky, tmp_path / "tricky.csv")
    assert read_manifest(p)["attack"].tolist() == ['say "hi", twice', "two\nlines"]


def test_relative_paths_resolve_against_root(tmp_path):
    p = write_manifest(_frame(tmp_path), tmp_path / "m.csv")
    m = read_manifest(p, root=tmp_path / "elsewhere")
    assert m["path"].iloc[0] == str((tmp_path / "elsewhere").resolve() / "audio" / "u1.wav")
    assert m["path"].iloc[1] == str(tmp_path / "abs" / "u2.wav")  # absolute paths untouched


def test_resolve_paths_is_pure_string_work(tmp_path):
    s = pd.Series(["a/b.wav", "/x/y.wav"])
    assert resolve_paths(s, "/base").tolist() == ["/base/a/b.wav", "/x/y.wav"]


def test_check_files_reports_first_missing_row(tmp_path):
    _wav(tmp_path / "audio" / "u1.wav")
    df = pd.DataFrame(
        {"utt_id": ["u1", "u2"], "path": ["audio/u1.wav", "audio/u2.wav"], "label": ["spoof"] * 2}
    )
    p = write_manifest(df, tmp_path / "m.csv")
    read_manifest(p)  # no file check by default
    with pytest.raises(ManifestError, match=r"row 2: audio file not found: .*u2\.wav"):
        read_manifest(p, check_files=True)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("utt_id,path\nu1,a.wav\n", r"m\.csv: missing required column 'label'"),
        ("utt_id,path,label\nu1,a.wav,spoof\nu2,b.wav,maybe\n", r"m\.csv: row 2: invalid label 'maybe'"),
        (
            "utt_id,path,label\nu1,a.wav,spoof\nu1,b.wav,spoof\n",
            r"row 2: duplicate utt_id 'u1' \(first at row 1\)",
        ),
        ("utt_id,path,label\nu1,,spoof\n", r"row 1: empty path"),
        ("utt_id,path,label\nu1,a.wav,spoof\nu2,b.wav,spoof,extra\n", r"m\.csv: cannot parse CSV: .*line 3"),
        ("", r"m\.csv: empty file"),
        (
            "utt_id,path,label\nu1,a.wav,spoof,extra\n",
            r"m\.csv: cannot parse CSV: line 2 has 4 fields, the header has 3",
        ),
        ("utt_id,path,label\nu1,a.wav\n", r"row 1: empty label"),
        ("utt_id,path,label,sample_rate\nu1,a.wav,spoof,16k\n", r"row 1: sample_rate '16k' is not"),
    ],
)
def test_malformed_manifest_is_one_line_error(tmp_path, text, pattern):
    p = tmp_path / "m.csv"
    p.write_text(text)
    with pytest.raises(ManifestError, match=pattern) as info:
        read_manifest(p)
    assert "\n" not in str(info.value)


def test_error_counts_further_problems(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("utt_id,path,label\nu1,a.wav,x\nu2,b.wav,y\nu3,c.wav,z\n")
    with pytest.raises(ManifestError, match=r"row 1: invalid label 'x'.*and 2 more"):
        read_manifest(p)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ManifestError, match=r"unknown manifest format '\.txt'"):
        read_manifest(tmp_path / "m.txt")
    with pytest.raises(ManifestError, match=r"manifest not found: .*nope\.csv"):
        read_manifest(tmp_path / "nope.csv")


def test_write_refuses_invalid_manifest(tmp_path):
    df = pd.DataFrame({"utt_id": ["a", "a"], "path": ["x", "y"], "label": ["spoof", "spoof"]})
    with pytest.raises(ManifestError, match="refusing to write .*duplicate utt_id"):
        write_manifest(df, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_row_order_is_kept(tmp_path):
    ids = [f"u{i}" for i in (5, 3, 9, 1, 7)]
    df = pd.DataFrame({"utt_id": ids, "path": [f"{i}.wav" for i in ids], "label": ["spoof"] * 5})
    assert read_manifest(write_manifest(df, tmp_path / "m.parquet"))["utt_id"].tolist() == ids


# ---- validation ------------------------------------------------------------------------------------------


def test_validate_reports_each_problem_at_its_row():
    df = pd.DataFrame(
        {
            "utt_id": ["a", "b", "a", "", "e", "f"],
            "path": ["1.wav", "2.wav", "3.wav", "4.wav", "1.wav", "6.wav"],
            "label": ["spoof", "bonafide", "spoof", "spoof", "spoof", "nonsense"],
            "num_samples": ["100", "-5", "", "1.5", "7", "x"],
        }
    )
    problems = validate(df)
    assert _kinds(problems) == [
        ("bad_value", 2),
        ("duplicate_utt_id", 3),
        ("empty_value", 4),
        ("bad_value", 4),
        ("duplicate_path", 5),
        ("invalid_label", 6),
        ("bad_value", 6),
    ]
    dup = next(p for p in problems if p.kind == "duplicate_path")
    assert dup.severity == "warning" and "first at row 1" in dup.message
    assert str(dup).startswith("row 5: duplicate path '1.wav'")
    assert [p.row for p in problems] == sorted(p.row for p in problems)


def test_validate_missing_columns_is_global_problem():
    problems = validate(pd.DataFrame({"path": ["a"]}))
    assert [(p.kind, p.column, p.row) for p in problems] == [
        ("missing_column", "utt_id", None),
        ("missing_column", "label", None),
    ]
    assert str(problems[0]).startswith("missing required column 'utt_id'")


def test_clean_manifest_has_no_problems():
    df = pd.DataFrame({"utt_id": ["a", "b"], "path": ["a.wav", "b.wav"], "label": ["spoof", "bonafide"]})
    assert validate(df) == []


def test_validate_large_manifest_finds_planted_duplicates():
    n = 50_000
    ids = np.char.add("u", np.arange(n).astype(str)).astype(object)
    ids[40_000] = ids[123]
    df = pd.DataFrame({"utt_id": ids, "path": np.char.add(ids.astype(str), ".flac"), "label": "spoof"})
    df.loc[777, "label"] = "??"
    problems = validate(df)
    assert _kinds(problems) == [
        ("invalid_label", 778),
        ("duplicate_utt_id", 40_001),
        ("duplicate_path", 40_001),
    ]
    assert "first at row 124" in problems[1].message


# ---- files, audio, summary -------------------------------------------------------------------------------


def test_files_exist(tmp_path):
    a = _wav(tmp_path / "d1" / "a.wav")
    (tmp_path / "d1" / "sub").mkdir()
    paths = pd.Series(
        [
            str(a),
            str(tmp_path / "d1" / "missing.wav"),
            str(tmp_path / "nodir" / "x.wav"),
            str(tmp_path / "d1" / "sub"),  # a folder is not a file
            str(tmp_path / "d1" / "sub" / ".." / "a.wav"),
        ]
    )
    assert files_exist(paths).tolist() == [True, False, False, False, True]
    assert files_exist(pd.Series([], dtype=object)).tolist() == []


def _check_tree(tmp_path: Path) -> Path:
    """Six rows: ok, missing file, unreadable, empty audio, sample-rate mismatch, ok (8 kHz)."""
    _wav(tmp_path / "a" / "ok.wav", n=1600)
    (tmp_path / "a" / "bad.wav").write_bytes(b"not audio at all")
    sf.write(tmp_path / "a" / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    _wav(tmp_path / "a" / "sr.wav", n=3200)
    _wav(tmp_path / "a" / "eight.wav", n=800, sr=8000)
    df = pd.DataFrame(
        {
            "utt_id": ["ok", "gone", "bad", "empty", "sr", "eight"],
            "path": ["a/ok.wav", "a/gone.wav", "a/bad.wav", "a/empty.wav", "a/sr.wav", "a/eight.wav"],
            "label": ["bonafide", "spoof", "spoof", "spoof", "bonafide", "spoof"],
            "dataset": ["d"] * 6,
            "attack": ["bonafide", "A01", "A01", "A02", "bonafide", "A02"],
            "sample_rate": ["16000", "", "", "", "22050", "8000"],
        }
    )
    return write_manifest(df, tmp_path / "m.csv")


def test_check_manifest_without_audio_reports_missing_files_only(tmp_path):
    report = check_manifest(_check_tree(tmp_path))
    assert isinstance(report, CheckReport)
    assert _kinds(report.problems) == [("missing_file", 2)]
    assert report.lines()[0].startswith("row 2: audio file not found: ")
    assert report.sample_rates is None and report.durations is None
    assert not report.ok and report.n_rows == 6


@pytest.mark.parametrize("workers", [1, 3])
def test_check_manifest_with_audio(tmp_path, workers):
    ticks = []
    report = check_manifest(_check_tree(tmp_path), audio=True, workers=workers, progress=ticks.append)
    assert _kinds(report.problems) == [
        ("missing_file", 2),
        ("unreadable_audio", 3),
        ("empty_audio", 4),
        ("audio_mismatch", 5),
    ]
    assert "sample_rate is 22050 in the manifest but 16000" in report.problems[3].message
    assert sum(ticks) == 5  # every existing file probed once
    assert report.sample_rates == {8000: 1, 16000: 2}
    assert report.durations == pytest.approx({"min": 0.1, "median": 0.1, "max": 0.2, "total": 0.4})


def test_check_manifest_clean(tmp_path):
    _wav(tmp_path / "x.wav")
    p = write_manifest(
        pd.DataFrame({"utt_id": ["x"], "path": ["x.wav"], "label": ["spoof"]}), tmp_path / "m.pq"
    )
    report = check_manifest(p, audio=True)
    assert report.ok and report.lines() == []


def test_check_manifest_keeps_going_on_missing_columns(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("utt_id,label\nu1,spoof\nu1,maybe\n")
    report = check_manifest(p)
    assert _kinds(report.problems) == [
        ("missing_column", None),
        ("invalid_label", 2),
        ("duplicate_utt_id", 2),
    ]


def test_class_counts_per_dataset_and_attack():
    df = pd.DataFrame(
        {
            "label": ["bonafide", "spoof", "fake", "spoof", "Bona fide", "??", "unknown"],
            "dataset": ["x", "x", "x", "y", "y", "y", "z"],
            "attack": ["bonafide", "A01", "A01", None, "bonafide", "A02", None],
        }
    )
    t = class_counts(df)
    assert list(t.columns) == ["dataset", "attack", *LABELS, "unknown", "invalid", "total"]
    rows = {
        (r.dataset, r.attack): (r.bonafide, r.spoof, r.unknown, r.invalid, r.total) for r in t.itertuples()
    }
    assert rows == {
        ("x", "A01"): (0, 2, 0, 0, 2),
        ("x", "bonafide"): (1, 0, 0, 0, 1),
        ("y", "-"): (0, 1, 0, 0, 1),
        ("y", "A02"): (0, 0, 0, 1, 1),
        ("y", "bonafide"): (1, 0, 0, 0, 1),
        ("z", "-"): (0, 0, 1, 0, 1),
    }
    assert list(class_counts(df.iloc[:2]).columns) == ["dataset", "attack", *LABELS, "total"]


# ---- hashing ---------------------------------------------------------------------------------------------


def test_manifest_hash_properties(tmp_path):
    df = pd.DataFrame(
        {"utt_id": ["a", "b"], "path": ["/r1/x/a.wav", "/r1/x/b.wav"], "label": ["spoof", "bonafide"]}
    )
    h = manifest_hash(df)
    assert len(h) == 16 and h == manifest_hash(df.copy())
    moved = df.assign(path=["/r2/a.wav", "/r2/b.wav"])
    assert manifest_hash(moved) == h  # same files under another root
    assert manifest_hash(moved, paths="full") != manifest_hash(df, paths="full")
    assert manifest_hash(df.assign(label=["Fake", "genuine"])) == h  # canonical labels
    assert manifest_hash(df.assign(label=["bonafide", "bonafide"])) != h
    assert manifest_hash(df.iloc[::-1]) != h  # order decides batches, so it is part of the hash
    assert manifest_hash(df.assign(extra=[1, 2])) == h
    # hash survives a write/read round trip (paths become absolute, names stay)
    p = write_manifest(df.assign(path=["x/a.wav", "x/b.wav"]), tmp_path / "m.csv")
    assert manifest_hash(read_manifest(p)) == h
    with pytest.raises(ValueError):
        manifest_hash(df, paths="bogus")


def test_load_table_keeps_raw_strings(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("utt_id , path,label\n007,a.wav,Fake\n")
    t = load_table(p)
    assert list(t.columns) == ["utt_id", "path", "label"]
    assert t["utt_id"].iloc[0] == "007" and t["label"].iloc[0] == "Fake"
    assert read_manifest(p)["utt_id"].iloc[0] == "007"  # ids are never parsed as numbers


def test_parquet_with_non_string_columns(tmp_path):
    df = pd.DataFrame(
        {
            "utt_id": [1, 2],
            "path": ["a.wav", "b.wav"],
            "label": ["spoof", "bonafide"],
            "num_samples": [10, 20],
        }
    )
    p = tmp_path / "m.parquet"
    df.to_parquet(p, index=False)
    m = read_manifest(p)
    assert m["utt_id"].tolist() == ["1", "2"]
    assert m["num_samples"].tolist() == [10, 20]
    assert os.path.isabs(m["path"].iloc[0])
