"""Converters on the real, full-size official protocol files of each corpus (opt-in), plus the checker script.

Set ``SHARPSCOPE_REAL_PROTOCOLS`` to a folder holding the corpora owners' protocol / key / metadata files (no
audio needed), one sub-folder per corpus as documented in ``benchmarks/verify_real_protocols.py``::

    asvspoof2019_la/LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.{train.trn,dev.trl,eval.trl}.txt
    asvspoof2021_la/keys/LA/CM/trial_metadata.txt
    asvspoof2021_df/keys/DF/CM/trial_metadata.txt
    in_the_wild/meta.csv

Each test skips when its file is absent (and all skip when the variable is unset).  Expected numbers are the
corpus authors' published figures (sources in the script's docstring: Wang et al. 2020 for ASVspoof 2019 LA,
Müller et al. 2022 for In-the-Wild, Liu et al. 2023 for ASVspoof 2021), written out here on purpose so this
file states them independently of the script.  The last tests always run: they exercise the checker script
on generated trees (an official-size synthetic ASVspoof 2019 LA train protocol, and toy trees that must be
reported as mismatching).  No network is used.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from sharpscope.data.converters import build_manifest

ENV = "SHARPSCOPE_REAL_PROTOCOLS"
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "verify_real_protocols.py"


def _folder() -> Path:
    value = os.environ.get(ENV, "").strip()
    if not value:
        pytest.skip(
            f"{ENV} is not set: point it at a folder of real official protocol files (layout in "
            "benchmarks/verify_real_protocols.py) to check the converters against the published counts"
        )
    folder = Path(value).expanduser()
    if not folder.is_dir():
        pytest.fail(f"{ENV}={value!r} is not a folder")
    return folder


def _need(*candidates: Path) -> Path:
    for p in candidates:
        if p.is_file():
            return p
    pytest.skip(f"real protocol file not present: {candidates[0]}")


def _lines(path: Path, header: bool = False) -> int:
    with path.open("rb") as f:
        n = sum(1 for line in f if line.strip())
    return n - 1 if header else n


def _spoof_attacks(df: pd.DataFrame) -> pd.Series:
    return df.loc[df["label"] == "spoof", "attack"].value_counts()


def _ids(lo: int, hi: int) -> set[str]:
    return {f"A{i:02d}" for i in range(lo, hi + 1)}


# ---- ASVspoof 2019 LA (Wang et al. 2020, Table 1) ---------------------------------------------------------

ASV19 = {  # subset: (protocol file, bona fide, spoof, attack ids, trials per attack, speakers, utt prefix)
    "train": ("ASVspoof2019.LA.cm.train.trn.txt", 2_580, 22_800, _ids(1, 6), 3_800, 20, "LA_T_"),
    "dev": ("ASVspoof2019.LA.cm.dev.trl.txt", 2_548, 22_296, _ids(1, 6), None, None, "LA_D_"),
    "eval": ("ASVspoof2019.LA.cm.eval.trl.txt", 7_355, 63_882, _ids(7, 19), None, None, "LA_E_"),
}


def _asv19_protocol(folder: Path, name: str) -> Path:
    base = folder / "asvspoof2019_la"
    return _need(
        base / "LA" / "ASVspoof2019_LA_cm_protocols" / name, base / "ASVspoof2019_LA_cm_protocols" / name
    )


@pytest.mark.parametrize("subset", list(ASV19))
def test_asvspoof2019_la_real_protocol(subset: str) -> None:
    name, n_bona, n_spoof, attacks, per_attack, speakers, prefix = ASV19[subset]
    proto = _asv19_protocol(_folder(), name)
    df = build_manifest("asvspoof2019_la", _folder() / "asvspoof2019_la", subset=subset)

    assert len(df) == _lines(proto) == n_bona + n_spoof
    assert df["label"].value_counts().to_dict() == {"bonafide": n_bona, "spoof": n_spoof}
    assert set(df["subset"]) == {subset}
    assert (df.loc[df["label"] == "bonafide", "attack"] == "bonafide").all()
    spoof_attacks = _spoof_attacks(df)
    assert set(spoof_attacks.index) == attacks
    if per_attack is not None:
        assert (spoof_attacks == per_attack).all(), spoof_attacks.to_dict()
    if speakers is not None:
        assert df["speaker"].nunique() == speakers
    assert df["speaker"].str.fullmatch(r"LA_\d{4}").all()
    assert df["utt_id"].str.startswith(prefix).all() and df["utt_id"].is_unique
    expected = [str(Path(f"ASVspoof2019_LA_{subset}") / "flac" / f"{u}.flac") for u in df["utt_id"]]
    assert all(p.endswith(e) for p, e in zip(df["path"], expected, strict=True))


def test_asvspoof2019_la_real_all_subsets() -> None:
    folder = _folder()
    for name, *_ in ASV19.values():
        _asv19_protocol(folder, name)
    df = build_manifest("asvspoof2019_la", folder / "asvspoof2019_la")
    assert df["subset"].value_counts().to_dict() == {"train": 25_380, "dev": 24_844, "eval": 71_237}
    speakers = {s: set(df.loc[df["subset"] == s, "speaker"]) for s in ASV19}
    assert not speakers["train"] & speakers["dev"]  # non-overlapping target speakers (evaluation plan)


# ---- In-the-Wild (Müller et al. 2022) ---------------------------------------------------------------------


def test_in_the_wild_real_meta() -> None:
    base = _folder() / "in_the_wild"
    meta = _need(base / "meta.csv", base / "release_in_the_wild" / "meta.csv")
    df = build_manifest("in_the_wild", base)
    assert len(df) == _lines(meta, header=True) == 31_779
    assert df["label"].value_counts().to_dict() == {"bonafide": 19_963, "spoof": 11_816}
    assert df["speaker"].nunique() == 58
    assert (df.loc[df["label"] == "bonafide", "attack"] == "bonafide").all()
    assert df["utt_id"].is_unique and df["path"].str.endswith(".wav").all()


# ---- ASVspoof 2021 LA / DF keys (Liu et al. 2023) ---------------------------------------------------------


def _asv21(track: str, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    base = _folder() / f"asvspoof2021_{track.lower()}"
    keys = _need(
        base / "keys" / track / "CM" / "trial_metadata.txt",
        base / f"{track}-keys-full" / "keys" / track / "CM" / "trial_metadata.txt",
    )
    return keys, build_manifest(f"asvspoof2021_{track.lower()}", base, keys=keys)


def test_asvspoof2021_la_real_keys(tmp_path: Path) -> None:
    keys, df = _asv21("LA", tmp_path)
    assert len(df) == _lines(keys) == 181_566
    assert set(df["subset"]) == {"eval"}
    assert set(_spoof_attacks(df).index) == _ids(7, 19)
    assert set(df["phase"]) <= {"progress", "eval", "hidden"}
    assert set(df["codec"].dropna()) <= {"none", "alaw", "pstn", "g722", "ulaw", "gsm", "opus"}
    assert df["utt_id"].str.fullmatch(r"LA_E_\d+").all()


def test_asvspoof2021_df_real_keys(tmp_path: Path) -> None:
    keys, df = _asv21("DF", tmp_path)
    assert len(df) == _lines(keys) == 611_829
    assert set(df["phase"]) <= {"progress", "eval", "hidden"}
    codecs = {
        "nocodec",
        "low_mp3",
        "high_mp3",
        "low_m4a",
        "high_m4a",
        "low_ogg",
        "high_ogg",
        "mp3m4a",
        "oggm4a",
    }
    assert set(df["codec"].dropna()) <= codecs
    assert df["utt_id"].str.fullmatch(r"DF_E_\d+").all()


def test_real_folder_matches_published_counts() -> None:
    """The checker script over the whole folder: every corpus it recognises matches the published figures."""
    folder = _folder()
    rows = _script().verify(folder)
    if not rows:
        pytest.skip(f"no recognised corpus under {folder}")
    assert [r.status for r in rows if r.mismatches] == []


# ---- the checker script itself (always runs, generated trees) ---------------------------------------------


@pytest.fixture(scope="module")
def script():
    return _script()


def _script():
    name = "verify_real_protocols"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def _official_structure_train(path: Path) -> None:
    """Synthetic train protocol with the official structure: 20 speakers, 2,580 bona fide, 6 x 3,800 spoof."""
    lines, n = [], 1_000_000
    speakers = [f"LA_{k:04d}" for k in range(79, 99)]
    for attack, per_speaker in [("-", 129)] + [(f"A{i:02d}", 190) for i in range(1, 7)]:
        for spk in speakers:
            for _ in range(per_speaker):
                n += 1
                key = "bonafide" if attack == "-" else "spoof"
                lines.append(f"{spk} LA_T_{n} - {attack} {key}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))


def test_script_reports_ok_for_official_structure(script, tmp_path: Path, capsys) -> None:
    protos = tmp_path / "asvspoof2019_la" / "LA" / "ASVspoof2019_LA_cm_protocols"
    _official_structure_train(protos / "ASVspoof2019.LA.cm.train.trn.txt")
    assert script.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"asvspoof2019_la\s+train\s+25,380\s+2,580\s+22,800\s+20\s+A01\.\.A06 \(6\) x 3,800\s+OK", out
    )


def test_script_flags_mismatches_without_audio(script, tmp_path: Path, capsys) -> None:
    def write(rel: str, text: str) -> None:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)

    write(
        "asvspoof2019_la/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.dev.trl.txt",
        "LA_0069 LA_D_1 - - bonafide\nLA_0069 LA_D_2 - A01 spoof\nLA_0070 LA_D_3 - A07 spoof\n",
    )
    write("in_the_wild/meta.csv", "file,speaker,label\n0.wav,A B,spoof\n1.wav,C D,bona-fide\n")
    write(
        "asvspoof2021_la/keys/LA/CM/trial_metadata.txt", "LA_0009 LA_E_1 alaw ita_tx A07 spoof notrim eval\n"
    )
    write("add2022/label/train_label.txt", "ADD_T_1.wav genuine\nADD_T_2.wav fake\n")
    rows = {(r.corpus, r.subset): r for r in script.verify(tmp_path)}

    assert set(rows) == {
        ("asvspoof2019_la", "dev"),
        ("in_the_wild", "-"),
        ("asvspoof2021_la", "eval"),
        ("add2022", "train"),
    }
    dev = rows["asvspoof2019_la", "dev"]
    assert (dev.total, dev.bonafide, dev.spoof, dev.attacks) == (3, 1, 2, {"A01": 1, "A07": 1})
    assert any(m.startswith("attacks extra ['A07'] missing ['A02'") for m in dev.mismatches)
    assert rows["in_the_wild", "-"].mismatches[0] == "total 2 != 31,779"
    assert rows["asvspoof2021_la", "eval"].mismatches
    add = rows["add2022", "train"]
    assert (add.total, add.bonafide, add.spoof, add.status) == (2, 1, 1, "counted (no reference)")
    assert script.main([str(tmp_path)]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_script_exit_codes_without_corpora(script, tmp_path: Path) -> None:
    assert script.main([str(tmp_path)]) == 2
    assert script.main([str(tmp_path / "absent")]) == 2
