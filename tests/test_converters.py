"""Converters: tiny trees in each corpus' official layout -> manifests (counts, columns, mappings, errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sharpscope.data.converters import CONVERTERS, build_manifest, converter_kind, converter_options
from sharpscope.data.manifest import check_manifest, read_manifest, validate, write_manifest
from sharpscope.errors import ManifestError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _audio(path: Path, n: int = 400, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = (0.1 * np.sin(np.arange(n) / 7.0)).astype(np.float32)
    sf.write(path, x, sr, format="FLAC" if path.suffix == ".flac" else "WAV")
    return path


def _counts(df: pd.DataFrame, *cols: str) -> dict:
    out = {}
    for k, v in df.groupby(list(cols), dropna=False).size().items():
        k = k if isinstance(k, tuple) else (k,)
        out[k if len(cols) > 1 else k[0]] = int(v)
    return out


# ---- ASVspoof 2019 LA -------------------------------------------------------------------------------------

ASV19 = {
    "train": "LA_0079 LA_T_1138215 - - bonafide\nLA_0079 LA_T_1271820 - A01 spoof\n"
    "LA_0080 LA_T_1000001 - A02 spoof\n",
    "dev": "LA_0069 LA_D_1047731 - - bonafide\nLA_0069 LA_D_1105538 - A05 spoof\n",
    "eval": "LA_0039 LA_E_2834763 - A11 spoof\nLA_0014 LA_E_8877452 - - bonafide\n"
    "LA_0015 LA_E_6828287 - A19 spoof\n",
}
ASV19_FILES = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}


def _asv19(root: Path, audio: bool = False) -> Path:
    la = root / "LA"
    for sub, text in ASV19.items():
        _write(la / "ASVspoof2019_LA_cm_protocols" / f"ASVspoof2019.LA.cm.{ASV19_FILES[sub]}.txt", text)
        if audio:
            for line in text.splitlines():
                _audio(la / f"ASVspoof2019_LA_{sub}" / "flac" / f"{line.split()[1]}.flac")
    return la


def test_asvspoof2019(tmp_path):
    la = _asv19(tmp_path, audio=True)
    df = build_manifest("asvspoof2019_la", tmp_path)  # parent of LA/ also accepted
    assert len(df) == 8
    assert list(df.columns) == ["utt_id", "path", "label", "dataset", "subset", "attack", "speaker"]
    assert _counts(df, "subset", "label") == {
        ("dev", "bonafide"): 1,
        ("dev", "spoof"): 1,
        ("eval", "bonafide"): 1,
        ("eval", "spoof"): 2,
        ("train", "bonafide"): 1,
        ("train", "spoof"): 2,
    }
    assert _counts(df, "attack") == {"A01": 1, "A02": 1, "A05": 1, "A11": 1, "A19": 1, "bonafide": 3}
    row = df.set_index("utt_id").loc["LA_E_2834763"]
    assert row["path"] == str(la.resolve() / "ASVspoof2019_LA_eval" / "flac" / "LA_E_2834763.flac")
    assert (row["speaker"], row["attack"], row["label"]) == ("LA_0039", "A11", "spoof")
    assert (df["dataset"] == "asvspoof2019_la").all()
    assert check_manifest(write_manifest(df, tmp_path / "m.csv"), audio=True).ok


def test_asvspoof2019_subset_option(tmp_path):
    la = _asv19(tmp_path)
    df = build_manifest("asvspoof2019_la", la, subset=["eval", "development"])
    assert _counts(df, "subset") == {"dev": 2, "eval": 3}
    assert build_manifest("asvspoof2019_la", la, subset="train,dev")["subset"].unique().tolist() == [
        "train",
        "dev",
    ]
    with pytest.raises(ManifestError, match="unknown subset 'bogus'"):
        build_manifest("asvspoof2019_la", la, subset="bogus")


def test_asvspoof2019_missing_protocol_names_expected_path(tmp_path):
    la = _asv19(tmp_path)
    (la / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.dev.trl.txt").unlink()
    with pytest.raises(
        ManifestError, match=r"protocol file not found: .*ASVspoof2019\.LA\.cm\.dev\.trl\.txt"
    ):
        build_manifest("asvspoof2019_la", la)
    assert len(build_manifest("asvspoof2019_la", la, subset="eval")) == 3


def test_protocol_unknown_label_names_file_and_line(tmp_path):
    la = _asv19(tmp_path)
    _write(
        la / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.eval.trl.txt",
        "LA_0039 LA_E_1 - A11 spoof\n\nLA_0039 LA_E_2 - A11 spoofy\n",
    )
    with pytest.raises(
        ManifestError, match=r"ASVspoof2019\.LA\.cm\.eval\.trl\.txt:3: invalid label 'spoofy'"
    ):
        build_manifest("asvspoof2019_la", la, subset="eval")
    # an official key never says "unknown": refused there (only generic CSVs may hold blind rows)
    _write(
        la / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.eval.trl.txt",
        "LA_0039 LA_E_1 - A11 spoof\nLA_0039 LA_E_2 - A11 unknown\n",
    )
    with pytest.raises(
        ManifestError, match=r"trl\.txt:2: invalid label 'unknown'; expected bonafide or spoof$"
    ):
        build_manifest("asvspoof2019_la", la, subset="eval")


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("LA_0039 LA_E_1 - A11 spoof\nLA_0039 LA_E_2 - A11 spoof extra\n", r"trl\.txt:2: 6 fields where"),
        ("LA_0039 LA_E_1 - A11 spoof\nLA_0039 LA_E_2 -\n", r"trl\.txt:2: 3 fields, expected at least 5"),
        ("LA_0039 LA_E_1 spoof\n", r"trl\.txt:1: 3 fields per line, expected at least 5"),
        ("", r"trl\.txt: protocol file is empty"),
    ],
)
def test_protocol_malformed_lines(tmp_path, text, pattern):
    la = _asv19(tmp_path)
    _write(la / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.eval.trl.txt", text)
    with pytest.raises(ManifestError, match=pattern):
        build_manifest("asvspoof2019_la", la, subset="eval")


# ---- ASVspoof 2021 LA / DF --------------------------------------------------------------------------------

LA21 = (
    "LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval\n"
    "LA_0009 LA_E_5464494 alaw ita_tx bonafide bonafide notrim eval\n"
    "LA_0010 LA_E_1000001 none - A08 spoof notrim progress\n"
    "LA_0011 LA_E_1000002 opus loc_tx bonafide bonafide trim hidden\n"
    "LA_0012 LA_E_1000003 g722 sin_tx A19 spoof notrim eval\n"
)


def test_asvspoof2021_la(tmp_path):
    _write(tmp_path / "keys" / "LA" / "CM" / "trial_metadata.txt", LA21)
    (tmp_path / "ASVspoof2021_LA_eval" / "flac").mkdir(parents=True)
    df = build_manifest("asvspoof2021_la", tmp_path)
    assert len(df) == 5
    assert {"codec", "transmission", "trim", "phase"} <= set(df.columns)
    r = df.set_index("utt_id")
    assert r.loc["LA_E_9332881", ["codec", "transmission", "attack", "label"]].tolist() == [
        "alaw",
        "ita_tx",
        "A07",
        "spoof",
    ]
    assert r.loc["LA_E_5464494", "attack"] == "bonafide" and r.loc["LA_E_5464494", "label"] == "bonafide"
    assert r.loc["LA_E_1000001", "codec"] == "none" and pd.isna(r.loc["LA_E_1000001", "transmission"])
    assert _counts(df, "phase") == {"eval": 3, "hidden": 1, "progress": 1}
    assert (df["subset"] == "eval").all()
    assert r.loc["LA_E_1000003", "path"].endswith("ASVspoof2021_LA_eval/flac/LA_E_1000003.flac")

    ev = build_manifest("asvspoof2021_la", tmp_path, only_eval=True)
    assert ev["utt_id"].tolist() == ["LA_E_9332881", "LA_E_5464494", "LA_E_1000003"]
    assert _counts(ev, "label") == {"bonafide": 1, "spoof": 2}


def test_asvspoof2021_keys_full_layout_and_missing(tmp_path):
    (tmp_path / "ASVspoof2021_LA_eval" / "flac").mkdir(parents=True)
    with pytest.raises(ManifestError, match=r"protocol file not found: .*keys/LA/CM/trial_metadata\.txt"):
        build_manifest("asvspoof2021_la", tmp_path)
    _write(tmp_path / "LA-keys-full" / "keys" / "LA" / "CM" / "trial_metadata.txt", LA21)
    assert len(build_manifest("asvspoof2021_la", tmp_path)) == 5


def test_asvspoof2021_without_audio_folder_points_at_the_official_location(tmp_path):
    # Building a manifest needs only the keys; `manifest check` reports the missing audio.
    _write(tmp_path / "keys" / "LA" / "CM" / "trial_metadata.txt", LA21)
    df = build_manifest("asvspoof2021_la", tmp_path)
    assert df["path"].str.contains("ASVspoof2021_LA_eval/flac/").all()


DF21 = (
    "LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress traditional_vocoder - - - -\n"
    "TEF2 DF_E_2000013 low_m4a vcc2020 Task1-team20 spoof notrim eval neural_vocoder_nonautoregressive "
    "Task1 team20 FF E\n"
    "LA_0031 DF_E_2000027 nocodec asvspoof bonafide bonafide notrim eval bonafide - - - -\n"
    "TGF1 DF_E_2000024 mp3m4a vcc2020 Task2-team12 spoof notrim eval traditional_vocoder Task2 team12 FF G\n"
    "LA_0043 DF_E_2000026 high_ogg asvspoof A09 spoof notrim hidden traditional_vocoder - - - -\n"
)


def test_asvspoof2021_df_with_split_download(tmp_path):
    _write(tmp_path / "keys" / "DF" / "CM" / "trial_metadata.txt", DF21)
    # the DF eval audio ships in parts: ASVspoof2021_DF_eval_part0N/ASVspoof2021_DF_eval/flac
    parts = {
        "DF_E_2000011": "part00",
        "DF_E_2000013": "part00",
        "DF_E_2000027": "part01",
        "DF_E_2000024": "part01",
    }
    for utt, part in parts.items():
        _audio(tmp_path / f"ASVspoof2021_DF_eval_{part}" / "ASVspoof2021_DF_eval" / "flac" / f"{utt}.flac")
    df = build_manifest("asvspoof2021_df", tmp_path)
    r = df.set_index("utt_id")
    for utt, part in parts.items():
        assert f"ASVspoof2021_DF_eval_{part}/ASVspoof2021_DF_eval/flac/{utt}.flac" in r.loc[utt, "path"]
    assert _counts(df, "codec") == {"high_ogg": 1, "low_m4a": 1, "mp3m4a": 1, "nocodec": 2}
    assert r.loc[
        "DF_E_2000013", ["source", "attack", "vcc_task", "vcc_team", "gender_pair", "vcc_language"]
    ].tolist() == [
        "vcc2020",
        "Task1-team20",
        "Task1",
        "team20",
        "FF",
        "E",
    ]
    assert r.loc["DF_E_2000011", "vocoder"] == "traditional_vocoder" and pd.isna(
        r.loc["DF_E_2000011", "vcc_team"]
    )
    ev = build_manifest("asvspoof2021_df", tmp_path, only_eval=True)
    assert _counts(ev, "label") == {"bonafide": 1, "spoof": 2}
    report = check_manifest(write_manifest(ev, tmp_path / "df.csv"), audio=True)
    assert report.ok and report.sample_rates == {16000: 3}
    # the hidden-phase utterance has no audio anywhere: reported by check, not dropped by build
    full = check_manifest(write_manifest(df, tmp_path / "df_all.csv"))
    assert [(p.kind, p.row) for p in full.problems] == [("missing_file", 5)]


def test_asvspoof2021_df_accepts_8_field_keys(tmp_path):
    _write(
        tmp_path / "keys" / "DF" / "CM" / "trial_metadata.txt",
        "LA_0023 DF_E_1 nocodec asvspoof A14 spoof notrim eval\n"
        "LA_0023 DF_E_2 low_mp3 asvspoof - bonafide notrim eval\n",
    )
    (tmp_path / "ASVspoof2021_DF_eval" / "flac").mkdir(parents=True)
    df = build_manifest("asvspoof2021_df", tmp_path)
    assert df["attack"].tolist() == ["A14", "bonafide"]
    assert df["vocoder"].isna().all()


# ---- ASVspoof 5 -------------------------------------------------------------------------------------------

ASV5 = {
    "ASVspoof5.train.tsv": "T_4850 T_0000000000 F - - - - bonafide bonafide -\n"
    "T_4850 T_0000000001 F - - - AC1 A01 spoof -\n",
    "ASVspoof5.dev.track_1.tsv": "D_0062 D_0000000001 M - - - AC2 A11 spoof -\n",
    "ASVspoof5.eval.track_1.tsv": "E_0001 E_0000000001 M C05 3 E_0000000009 AC3 A17 spoof -\n"
    "E_0002 E_0000000002 F - 0 - - bonafide bonafide -\n",
}


def test_asvspoof5(tmp_path):
    for name, text in ASV5.items():
        _write(tmp_path / "ASVspoof5_protocols" / name, text)
    df = build_manifest("asvspoof5", tmp_path)
    assert _counts(df, "subset", "label") == {
        ("dev", "spoof"): 1,
        ("eval", "bonafide"): 1,
        ("eval", "spoof"): 1,
        ("train", "bonafide"): 1,
        ("train", "spoof"): 1,
    }
    r = df.set_index("utt_id")
    assert r.loc[
        "E_0000000001", ["codec", "codec_q", "codec_seed", "attack_tag", "attack", "gender"]
    ].tolist() == [
        "C05",
        "3",
        "E_0000000009",
        "AC3",
        "A17",
        "male",
    ]
    assert r.loc["T_0000000000", "codec"] == "none" and pd.isna(r.loc["T_0000000000", "codec_q"])
    assert r.loc["T_0000000000", "gender"] == "female" and r.loc["T_0000000000", "speaker"] == "T_4850"
    assert r.loc["T_0000000001", "path"].endswith("/flac_T/T_0000000001.flac")
    assert r.loc["D_0000000001", "path"].endswith("/flac_D/D_0000000001.flac")
    assert r.loc["E_0000000002", "path"].endswith("/flac_E_eval/E_0000000002.flac")
    assert len(build_manifest("asvspoof5", tmp_path, subset="eval")) == 2


def test_asvspoof5_protocols_at_root_and_missing(tmp_path):
    _write(tmp_path / "ASVspoof5.train.tsv", ASV5["ASVspoof5.train.tsv"])
    assert len(build_manifest("asvspoof5", tmp_path, subset="train")) == 2
    with pytest.raises(ManifestError, match=r"protocol file not found: .*ASVspoof5\.dev\.track_1\.tsv"):
        build_manifest("asvspoof5", tmp_path)


# ---- In-the-Wild ------------------------------------------------------------------------------------------


def test_in_the_wild(tmp_path):
    rel = tmp_path / "release_in_the_wild"
    _write(
        rel / "meta.csv",
        "file,speaker,label\n0.wav,Alec Guinness,spoof\n1.wav,Alec Guinness,bona-fide\n"
        "2.wav,Ayn Rand,spoof\n",
    )
    for i in range(3):
        _audio(rel / f"{i}.wav")
    df = build_manifest("in_the_wild", tmp_path)
    assert df["utt_id"].tolist() == ["0", "1", "2"]
    assert df["label"].tolist() == ["spoof", "bonafide", "spoof"]
    assert df["attack"].isna().tolist() == [True, False, True] and df["attack"].iloc[1] == "bonafide"
    assert df["speaker"].tolist() == ["Alec Guinness", "Alec Guinness", "Ayn Rand"]
    assert df["path"].iloc[2] == str(rel.resolve() / "2.wav")
    assert check_manifest(write_manifest(df, tmp_path / "itw.csv"), audio=True).ok


def test_in_the_wild_unknown_label_names_line(tmp_path):
    _write(tmp_path / "meta.csv", "file,speaker,label\n0.wav,A,spoof\n1.wav,B,fakeish\n")
    with pytest.raises(ManifestError, match=r"meta\.csv:3: invalid label 'fakeish'"):
        build_manifest("itw", tmp_path)


# ---- Fake-or-Real -----------------------------------------------------------------------------------------


def test_fake_or_real_versions_and_splits(tmp_path):
    tree = {
        "for-norm/for-norm/training/real": 2,
        "for-norm/for-norm/training/fake": 3,
        "for-norm/for-norm/validation/real": 1,
        "for-norm/for-norm/testing/fake": 1,
        "for-2sec/for-2seconds/testing/real": 1,
    }
    for folder, n in tree.items():
        for i in range(n):
            _audio(tmp_path / folder / f"file{i}.wav")
    (tmp_path / "for-norm" / "for-norm" / "training" / "real" / "notes.txt").write_text("not audio")
    df = build_manifest("fake_or_real", tmp_path)
    assert len(df) == 8
    assert _counts(df, "version", "subset", "label") == {
        ("for-2seconds", "eval", "bonafide"): 1,
        ("for-norm", "dev", "bonafide"): 1,
        ("for-norm", "eval", "spoof"): 1,
        ("for-norm", "train", "bonafide"): 2,
        ("for-norm", "train", "spoof"): 3,
    }
    assert df["utt_id"].is_unique
    assert "for-norm/for-norm/training/fake/file0" in df["utt_id"].tolist()
    one = build_manifest("for", tmp_path / "for-norm" / "for-norm")
    assert len(one) == 7 and set(one["version"]) == {"for-norm"}
    with pytest.raises(ManifestError, match="no Fake-or-Real audio"):
        build_manifest("fake_or_real", tmp_path / "for-norm" / "for-norm" / "training" / "real")


# ---- WaveFake ---------------------------------------------------------------------------------------------


def test_wavefake_with_ljspeech_and_jsut(tmp_path):
    gen = tmp_path / "generated_audio"
    for voc in ("ljspeech_melgan", "ljspeech_hifiGAN"):
        for utt in ("LJ001-0001", "LJ001-0002"):
            _audio(gen / voc / f"{utt}_gen.wav")
    _audio(gen / "jsut_multi_band_melgan" / "BASIC5000_0001_gen.wav")
    lj = tmp_path / "LJSpeech-1.1"
    _write(
        lj / "metadata.csv", "LJ001-0001|Printing, in the only sense|Printing\nLJ001-0002|in being|in being\n"
    )
    for utt in ("LJ001-0001", "LJ001-0002"):
        _audio(lj / "wavs" / f"{utt}.wav")
    _audio(tmp_path / "jsut_ver1.1" / "basic5000" / "wav" / "BASIC5000_0001.wav")

    df = build_manifest("wavefake", tmp_path)
    assert _counts(df, "attack") == {
        "bonafide": 3,
        "jsut_multi_band_melgan": 1,
        "ljspeech_hifiGAN": 2,
        "ljspeech_melgan": 2,
    }
    assert _counts(df, "language", "label") == {
        ("en", "bonafide"): 2,
        ("en", "spoof"): 4,
        ("ja", "bonafide"): 1,
        ("ja", "spoof"): 1,
    }
    assert {"ljspeech_melgan/LJ001-0001_gen", "ljspeech/LJ001-0001", "jsut/BASIC5000_0001"} <= set(
        df["utt_id"]
    )
    assert check_manifest(write_manifest(df, tmp_path / "wf.csv"), audio=True).ok

    only_fake = tmp_path / "only"
    _audio(only_fake / "generated_audio" / "ljspeech_waveglow" / "LJ001-0001_gen.wav")
    assert build_manifest("wavefake", only_fake)["label"].tolist() == ["spoof"]
    with pytest.raises(ManifestError, match="LJSpeech folder not found"):
        build_manifest("wavefake", only_fake, ljspeech_root=str(tmp_path / "nope"))


# ---- MLAAD + M-AILABS -------------------------------------------------------------------------------------


def test_mlaad_with_meta_and_mailabs(tmp_path):
    m = tmp_path / "MLAAD"
    _audio(m / "fake" / "en" / "tts_models_en_ljspeech_vits" / "a.wav")
    _audio(m / "fake" / "en" / "tts_models_en_ljspeech_vits" / "b.wav")
    _write(
        m / "fake" / "en" / "tts_models_en_ljspeech_vits" / "meta.csv",
        "path|original_file|language|is_original_language|duration|training_data|model_name|architecture\n"
        "./fake/en/tts_models_en_ljspeech_vits/a.wav|en_US/by_book/female/judy/b1/wavs/x.wav|en|True|1.2|ljspeech|"
        "tts_models/en/ljspeech/vits|vits\n",
    )
    _audio(m / "fake" / "de" / "griffin_lim" / "c.wav")
    ma = tmp_path / "M-AILABS"
    _audio(ma / "en_US" / "by_book" / "female" / "judy_bieber" / "emerald_city" / "wavs" / "e1.wav")
    _audio(ma / "de_DE" / "by_book" / "mix" / "some_book" / "wavs" / "d1.wav")

    df = build_manifest("mlaad", m, mailabs_root=str(ma))
    assert _counts(df, "source", "label") == {("m-ailabs", "bonafide"): 2, ("mlaad", "spoof"): 3}
    r = df.set_index("utt_id")
    a = r.loc["fake/en/tts_models_en_ljspeech_vits/a"]
    assert (a["attack"], a["language"], a["model_name"], a["architecture"]) == (
        "tts_models_en_ljspeech_vits",
        "en",
        "tts_models/en/ljspeech/vits",
        "vits",
    )
    assert pd.isna(
        r.loc["fake/en/tts_models_en_ljspeech_vits/b", "model_name"]
    )  # not in meta.csv: kept, no meta
    assert r.loc["fake/de/griffin_lim/c", "language"] == "de"
    e1 = r.loc["mailabs/en_US/by_book/female/judy_bieber/emerald_city/wavs/e1"]
    assert (e1["speaker"], e1["gender"], e1["language"], e1["book"], e1["attack"]) == (
        "judy_bieber",
        "female",
        "en",
        "emerald_city",
        "bonafide",
    )
    d1 = r.loc["mailabs/de_DE/by_book/mix/some_book/wavs/d1"]
    assert pd.isna(d1["speaker"]) and d1["gender"] == "mix" and d1["book"] == "some_book"
    assert check_manifest(write_manifest(df, tmp_path / "mlaad.parquet"), audio=True).ok
    assert len(build_manifest("mlaad", m)) == 3  # no M-AILABS next to it: spoof only


# ---- ADD 2022 ---------------------------------------------------------------------------------------------


def test_add2022(tmp_path):
    _write(
        tmp_path / "label" / "train_label.txt",
        "ADD_T_0001.wav genuine\nADD_T_0002.wav fake\nADD_T_0003.wav fake\n",
    )
    _write(tmp_path / "label" / "dev_label.txt", "ADD_D_0001.wav fake\n")
    for f in ("ADD_T_0001", "ADD_T_0002", "ADD_T_0003"):
        _audio(tmp_path / "train" / "wav" / f"{f}.wav")
    _audio(tmp_path / "dev" / "ADD_D_0001.wav")  # no wav/ level: also accepted
    df = build_manifest("add2022", tmp_path)
    assert _counts(df, "subset", "label") == {
        ("dev", "spoof"): 1,
        ("train", "bonafide"): 1,
        ("train", "spoof"): 2,
    }
    assert df.set_index("utt_id").loc["ADD_T_0001", "label"] == "bonafide"
    assert check_manifest(write_manifest(df, tmp_path / "add.csv"), audio=True).ok
    assert len(build_manifest("add2022", tmp_path, subset="dev")) == 1
    with pytest.raises(ManifestError, match=r"protocol file not found: .*label/adp_label\.txt"):
        build_manifest("add2022", tmp_path, subset="adp")


# ---- SpoofCeleb -------------------------------------------------------------------------------------------


def test_spoofceleb(tmp_path):
    _write(
        tmp_path / "metadata" / "train.csv",
        "file,speaker,attack\nid10001/a.flac,id10001,a00\nid10001/b.flac,id10001,a01\nid10002/c.flac,id10002,a07\n",
    )
    _write(tmp_path / "metadata" / "evaluation.csv", "file,speaker,attack\nid10270/x.flac,id10270,a00\n")
    df = build_manifest("spoofceleb", tmp_path, subset=["train", "eval"])
    assert _counts(df, "subset", "label") == {
        ("eval", "bonafide"): 1,
        ("train", "bonafide"): 1,
        ("train", "spoof"): 2,
    }
    assert df["attack"].tolist() == ["bonafide", "a01", "a07", "bonafide"]
    assert df["utt_id"].tolist() == [
        "train/id10001/a",
        "train/id10001/b",
        "train/id10002/c",
        "evaluation/id10270/x",
    ]
    assert df["path"].iloc[3] == str(tmp_path.resolve() / "flac" / "evaluation" / "id10270" / "x.flac")
    with pytest.raises(ManifestError, match=r"metadata file not found: .*metadata/development\.csv"):
        build_manifest("spoofceleb", tmp_path)
    _write(
        tmp_path / "metadata" / "train.csv", "file,speaker,attack\nid1/a.flac,id1,a00\nid1/b.flac,id1,spoof\n"
    )
    with pytest.raises(ManifestError, match=r"train\.csv:3: attack 'spoof' is not a SpoofCeleb system id"):
        build_manifest("spoofceleb", tmp_path, subset="train")


# ---- generic CSV and registry -----------------------------------------------------------------------------


def test_generic_csv(tmp_path):
    _audio(tmp_path / "clips" / "a.wav")
    _audio(tmp_path / "clips" / "b.wav")
    _write(tmp_path / "list.csv", "file,label,speaker\nclips/a.wav,Real,s1\nclips/b.wav,Deepfake,s2\n")
    df = build_manifest("csv", tmp_path / "list.csv")
    assert df["utt_id"].tolist() == ["clips/a", "clips/b"]
    assert df["label"].tolist() == ["bonafide", "spoof"]
    assert df["dataset"].tolist() == ["list", "list"] and df["speaker"].tolist() == ["s1", "s2"]
    assert df["path"].iloc[0] == str(tmp_path.resolve() / "clips" / "a.wav")
    df2 = build_manifest("generic-csv", tmp_path, file="list.csv", dataset="mine")
    assert set(df2["dataset"]) == {"mine"}
    _write(tmp_path / "bad.csv", "path,label\nclips/a.wav,spoof\nclips/b.wav,unsure\n")
    with pytest.raises(ManifestError, match=r"bad\.csv:3: invalid label 'unsure'"):
        build_manifest("csv", tmp_path / "bad.csv")
    _write(tmp_path / "blind.csv", "path,label\nclips/a.wav,unknown\n")
    assert build_manifest("csv", tmp_path / "blind.csv")["label"].tolist() == ["unknown"]
    _write(tmp_path / "nolabel.csv", "path,kind\na.wav,x\n")
    with pytest.raises(ManifestError, match="needs a path .* and a label column"):
        build_manifest("csv", tmp_path / "nolabel.csv")


def test_registry_and_build_errors(tmp_path):
    assert set(CONVERTERS) >= {
        "asvspoof2019_la",
        "asvspoof2021_la",
        "asvspoof2021_df",
        "asvspoof5",
        "in_the_wild",
        "fake_or_real",
        "wavefake",
        "mlaad",
        "add2022",
        "spoofceleb",
        "csv",
    }
    assert converter_kind("ASVspoof2021-DF") == "asvspoof2021_df"
    assert converter_options("asvspoof2021_la") == ["only_eval", "keys", "audio_dir"]
    with pytest.raises(ManifestError, match="unknown corpus kind 'asvspoof2017'"):
        build_manifest("asvspoof2017", tmp_path)
    la = _asv19(tmp_path)
    with pytest.raises(
        ManifestError, match=r"asvspoof2019_la: unknown option\(s\) only_eval; it takes: subset"
    ):
        build_manifest("asvspoof2019_la", la, only_eval=True)
    with pytest.raises(ManifestError, match="corpus root not found"):
        build_manifest("asvspoof2019_la", tmp_path / "missing")
    _write(
        la / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.eval.trl.txt",
        "S U1 - A01 spoof\nS U1 - A02 spoof\n",
    )
    with pytest.raises(ManifestError, match=r"built manifest is invalid: row 2: duplicate utt_id 'U1'"):
        build_manifest("asvspoof2019_la", la, subset="eval")


def test_built_manifests_validate_and_roundtrip(tmp_path):
    la = _asv19(tmp_path)
    df = build_manifest("asvspoof2019_la", la)
    assert validate(df) == []
    back = read_manifest(write_manifest(df, tmp_path / "out" / "m.csv"))
    pd.testing.assert_frame_equal(back.drop(columns="path"), df.drop(columns="path"), check_dtype=False)
    assert back["path"].tolist() == df["path"].tolist()
