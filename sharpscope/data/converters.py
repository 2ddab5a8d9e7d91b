"""Converters: one function per public corpus, from its official layout to the manifest schema.

Each converter takes the corpus ``root`` (a folder) plus keyword options and returns a DataFrame in the schema
of :mod:`sharpscope.data.manifest` with ``dataset`` set and **absolute** audio paths (the root is resolved
once, so a manifest built with ``--root`` can be read from any working directory).  Audio is not opened;
``sharpscope manifest check --audio`` does that.

Conventions shared by all converters (see :mod:`sharpscope.data.manifest`): ``subset`` is ``train`` / ``dev``
/ ``eval`` where the corpus has those partitions (official names such as ``training`` / ``development`` /
``testing`` are mapped), ``attack`` is ``bonafide`` on bona fide rows and the official attack/system id on
spoof rows, placeholder ``-`` fields become missing values, and official condition names (codecs,
transmission channels) are kept verbatim so per-condition tables match the official ones.

Errors are one line: a missing protocol file names the expected path; a malformed or unknown-label protocol
line names ``file:line``.  A new corpus is one function below plus one line in :data:`CONVERTERS`.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ManifestError
from .manifest import UNLABELLED, normalise, normalise_labels, read_delimited, validate

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
_SUBSET_NAMES = {
    "train": "train",
    "training": "train",
    "trn": "train",
    "dev": "dev",
    "development": "dev",
    "validation": "dev",
    "valid": "dev",
    "val": "dev",
    "eval": "eval",
    "evaluation": "eval",
    "test": "eval",
    "testing": "eval",
}
_GENDERS = {"f": "female", "m": "male", "female": "female", "male": "male"}


# ---- shared helpers ---------------------------------------------------------------------------------------


def _root(root: str | Path) -> Path:
    p = Path(root).expanduser()
    if not p.is_dir():
        raise ManifestError(
            f"corpus root not found or not a folder: {p}; pass the folder that holds the corpus"
        )
    return p.resolve()


def _subsets(subset: str | Sequence[str] | None, allowed: Sequence[str], corpus: str) -> list[str]:
    """Canonical subset names requested (``None`` = all of ``allowed``), validated."""
    if subset is None or (not isinstance(subset, str) and len(subset) == 0):
        return list(allowed)
    items = [subset] if isinstance(subset, str) else list(subset)
    out: list[str] = []
    for item in items:
        for s in str(item).split(","):
            s = s.strip()
            if not s:
                continue
            canon = _SUBSET_NAMES.get(s.lower(), s.lower())
            if canon not in allowed:
                raise ManifestError(f"{corpus}: unknown subset {s!r}; use one of {', '.join(allowed)}")
            if canon not in out:
                out.append(canon)
    return out


def _first_existing(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c.exists():
            return c
    return None


def _file_line(path: Path, row: int, skip: int = 0) -> int:
    """1-based line number in ``path`` of row ``row`` (0-based); blank lines skipped as pandas does."""
    seen = -1
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                seen += 1
                if seen == row + skip:
                    return lineno
    return row + skip + 1


def _read_protocol(path: Path, min_fields: int, max_fields: int, hint: str = "") -> pd.DataFrame:
    """Whitespace-separated protocol file as a string table (columns 0..n-1), validated for width.

    Uses pandas' C tokenizer (about 1 s for the 611,829-line 2021 DF key); ragged or short lines raise
    :class:`ManifestError` naming ``file:line``.
    """
    if not path.is_file():
        raise ManifestError(f"protocol file not found: {path}{'; ' + hint if hint else ''}")
    try:
        df = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, keep_default_na=False, engine="c")
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{path}: protocol file is empty") from None
    except pd.errors.ParserError as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if m:
            raise ManifestError(
                f"{path}:{m.group(2)}: {m.group(3)} fields where the first line has {m.group(1)}; "
                "fix or remove that line"
            ) from None
        raise ManifestError(f"{path}: cannot parse protocol: {str(exc).splitlines()[-1]}") from None
    n = df.shape[1]
    if n > max_fields:
        raise ManifestError(
            f"{path}:{_file_line(path, 0)}: {n} fields per line, expected at most {max_fields}; "
            "is this the right protocol file?"
        )
    if n < min_fields:
        raise ManifestError(
            f"{path}:{_file_line(path, 0)}: {n} fields per line, expected at least {min_fields}; "
            "is this the right protocol file?"
        )
    short = (df[min_fields - 1] == "").to_numpy()
    if short.any():
        i = int(np.flatnonzero(short)[0])
        have = int((df.iloc[i] != "").sum())
        raise ManifestError(
            f"{path}:{_file_line(path, i)}: {have} fields, expected at least {min_fields}; "
            "fix or remove that line"
        )
    return df


def _read_csv_table(path: Path, sep: str = ",", hint: str = "") -> pd.DataFrame:
    if not path.is_file():
        raise ManifestError(f"metadata file not found: {path}{'; ' + hint if hint else ''}")
    return read_delimited(path, sep=sep, what="metadata")


def _labels(values: pd.Series, source: Path, skip: int = 0, allow_unlabelled: bool = False) -> pd.Series:
    """Canonical labels; the first invalid value raises ``ManifestError`` naming ``file:line``.

    Official protocols must say bonafide or spoof on every line; only generic CSVs may mark rows
    ``unknown`` (blind evaluation data).
    """
    canon = normalise_labels(values)
    bad = canon.isna().to_numpy()
    if not allow_unlabelled:
        bad = bad | (canon == UNLABELLED).fillna(False).to_numpy(dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = values.to_numpy(dtype=object)[i]
        more = f" ({int(bad.sum()) - 1} more such lines)" if bad.sum() > 1 else ""
        raise ManifestError(
            f"{source}:{_file_line(source, i, skip)}: invalid label {value!r}; "
            f"expected {'bonafide, spoof or unknown' if allow_unlabelled else 'bonafide or spoof'}{more}"
        )
    return canon


def _dash_to_na(s: pd.Series) -> pd.Series:
    return s.where(~s.isin(["-", ""]), pd.NA)


def _join(base: Path, names: pd.Series | np.ndarray | list, suffix: str = "") -> pd.Series:
    names = pd.Series(names, dtype=object) if not isinstance(names, pd.Series) else names
    return str(base).rstrip(os.sep) + os.sep + names.astype(str) + suffix


def _attack(attack: pd.Series, label: pd.Series) -> pd.Series:
    """Attack convention: ``bonafide`` on bona fide rows, official id (``-`` -> missing) on spoof rows."""
    return _dash_to_na(attack).where(label.to_numpy() != "bonafide", "bonafide")


def _frame(n: int, **cols: object) -> pd.DataFrame:
    """DataFrame of ``n`` rows from columns (scalars broadcast; ``None`` columns omitted)."""
    data = {k: (v.reset_index(drop=True) if isinstance(v, pd.Series) else v) for k, v in cols.items()}
    return pd.DataFrame({k: v for k, v in data.items() if v is not None}, index=pd.RangeIndex(n))


def _walk_audio(folder: Path, suffixes: Sequence[str] = AUDIO_SUFFIXES) -> list[Path]:
    """All audio files under ``folder`` (sorted, so manifests are deterministic)."""
    out: list[Path] = []
    suffixes = tuple(s.lower() for s in suffixes)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out.extend(Path(dirpath) / f for f in filenames if f.lower().endswith(suffixes))
    out.sort()
    return out


def _rel_ids(files: Sequence[Path], base: Path, prefix: str = "") -> list[str]:
    return [prefix + f.relative_to(base).with_suffix("").as_posix() for f in files]


def _language(code: str) -> str:
    """``en_US`` / ``en-GB`` / ``EN`` -> ``en`` (ISO 639-1 part)."""
    return re.split(r"[_\-]", code.strip())[0].lower()


# ---- ASVspoof 2019 LA -------------------------------------------------------------------------------------

_ASV19_PROTOCOLS = {
    "train": "ASVspoof2019.LA.cm.train.trn.txt",
    "dev": "ASVspoof2019.LA.cm.dev.trl.txt",
    "eval": "ASVspoof2019.LA.cm.eval.trl.txt",
}


def asvspoof2019_la(root: Path, subset: str | Sequence[str] | None = None) -> pd.DataFrame:
    """ASVspoof 2019 logical access, CM protocols (Wang et al. 2020, "ASVspoof 2019: a large-scale ...").

    ``root`` is the ``LA`` folder (or its parent) holding ``ASVspoof2019_LA_cm_protocols/`` and
    ``ASVspoof2019_LA_{train,dev,eval}/flac/``.  Protocol lines: ``SPEAKER UTT - ATTACK KEY`` with attack
    ``-`` on bona fide lines, ``A01``-``A19`` otherwise.  ``subset``: any of train, dev, eval (default all).
    """
    root = _root(root)
    if not (root / "ASVspoof2019_LA_cm_protocols").is_dir() and (root / "LA").is_dir():
        root = root / "LA"
    frames = []
    for sub in _subsets(subset, ("train", "dev", "eval"), "asvspoof2019_la"):
        proto = root / "ASVspoof2019_LA_cm_protocols" / _ASV19_PROTOCOLS[sub]
        t = _read_protocol(proto, 5, 5, hint="pass the LA folder as --root, or choose subsets with --subset")
        label = _labels(t[4], proto)
        audio = root / f"ASVspoof2019_LA_{sub}" / "flac"
        frames.append(
            _frame(
                len(t),
                utt_id=t[1],
                path=_join(audio, t[1], ".flac"),
                label=label,
                dataset="asvspoof2019_la",
                subset=sub,
                attack=_attack(t[3], label),
                speaker=t[0],
            )
        )
    return pd.concat(frames, ignore_index=True)


# ---- ASVspoof 2021 LA / DF --------------------------------------------------------------------------------


def _asv21_keys(root: Path, track: str, keys: str | Path | None) -> Path:
    if keys is not None:
        p = Path(keys).expanduser()
        if not p.is_file():
            raise ManifestError(f"protocol file not found: {p}")
        return p.resolve()
    candidates = [
        root / "keys" / track / "CM" / "trial_metadata.txt",
        root / f"{track}-keys-full" / "keys" / track / "CM" / "trial_metadata.txt",
        root / "keys" / "CM" / "trial_metadata.txt",
        root / track / "CM" / "trial_metadata.txt",
    ]
    found = _first_existing(candidates)
    if found is None:
        raise ManifestError(
            f"protocol file not found: {candidates[0]}; unpack {track}-keys-full.tar.gz "
            "(https://www.asvspoof.org/index2021.html) under --root, or pass keys=PATH"
        )
    return found


def _asv21_audio(root: Path, track: str, audio_dir: str | Path | None, utt: pd.Series) -> pd.Series:
    """Audio paths for 2021 utterances; handles downloads split into ``*_part0N`` folders."""
    name = f"ASVspoof2021_{track}_eval"
    # Building a manifest does not need the audio: where no folder exists yet, the official location is
    # written and `sharpscope manifest check` reports the files as missing.
    if audio_dir is not None:
        dirs = [Path(audio_dir).expanduser().resolve()]
    else:
        dirs = [d for d in [root / name / "flac"] if d.is_dir()]
        dirs += sorted(d for d in root.glob(f"*/{name}/flac") if d.is_dir())
        dirs = dirs or [root / name / "flac"]
    if len(dirs) == 1:
        return _join(dirs[0], utt, ".flac")
    # Split download: find which part holds each file (one listing per folder, no per-row stat).
    where: dict[str, str] = {}
    for d in reversed(dirs):
        with os.scandir(d) as it:
            where.update({e.name[: -len(".flac")]: str(d) for e in it if e.name.endswith(".flac")})
    folder = utt.map(where).fillna(str(dirs[0]))  # unmatched: `manifest check` reports them missing
    return folder + os.sep + utt + ".flac"


def asvspoof2021_la(
    root: Path, only_eval: bool = False, keys: str | Path | None = None, audio_dir: str | Path | None = None
) -> pd.DataFrame:
    """ASVspoof 2021 logical access evaluation data with the full keys (Liu et al. 2023, ASVspoof 2021 TASLP).

    Key file ``keys/LA/CM/trial_metadata.txt`` (from ``LA-keys-full.tar.gz``), lines
    ``SPEAKER UTT CODEC TRANSMISSION ATTACK KEY TRIM PHASE``, e.g.
    ``LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval``; audio ``ASVspoof2021_LA_eval/flac/UTT.flac``.
    Codec (``none, alaw, pstn, g722, ulaw, gsm, opus``) and transmission go to ``codec`` / ``transmission``;
    ``trim`` and ``phase`` (``progress``/``eval``/``hidden``) are kept as extra columns.  ``only_eval`` keeps
    phase ``eval`` only (the subset official results are reported on).
    """
    root = _root(root)
    proto = _asv21_keys(root, "LA", keys)
    t = _read_protocol(proto, 8, 8)
    label = _labels(t[5], proto)
    df = _frame(
        len(t),
        utt_id=t[1],
        path=_asv21_audio(root, "LA", audio_dir, t[1]),
        label=label,
        dataset="asvspoof2021_la",
        subset="eval",
        attack=_attack(t[4], label),
        codec=_dash_to_na(t[2]),
        transmission=_dash_to_na(t[3]),
        speaker=t[0],
        trim=t[6],
        phase=t[7],
    )
    return df[df["phase"] == "eval"].reset_index(drop=True) if only_eval else df


def asvspoof2021_df(
    root: Path, only_eval: bool = False, keys: str | Path | None = None, audio_dir: str | Path | None = None
) -> pd.DataFrame:
    """ASVspoof 2021 speech deepfake evaluation data with the full keys.

    Key file ``keys/DF/CM/trial_metadata.txt`` (from ``DF-keys-full.tar.gz``), 13 fields per line:
    ``SPEAKER UTT CODEC SOURCE ATTACK KEY TRIM PHASE VOCODER TASK TEAM GENDER_PAIR LANGUAGE`` (the last five
    are ``-`` outside VCC data), e.g. ``LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress
    traditional_vocoder - - - -``.  Audio ``ASVspoof2021_DF_eval/flac/UTT.flac``, also found when the
    download is split into ``ASVspoof2021_DF_eval_part0N/ASVspoof2021_DF_eval/flac``.  ``codec`` holds the
    compression condition (``nocodec, low_mp3, ... oggm4a``); source corpus, vocoder type, VCC task/team,
    gender pair, VCC language, trim and phase are extra columns.  ``only_eval`` keeps phase ``eval`` only.
    """
    root = _root(root)
    proto = _asv21_keys(root, "DF", keys)
    t = _read_protocol(proto, 8, 13)
    for k in range(t.shape[1], 13):
        t[k] = "-"
    label = _labels(t[5], proto)
    df = _frame(
        len(t),
        utt_id=t[1],
        path=_asv21_audio(root, "DF", audio_dir, t[1]),
        label=label,
        dataset="asvspoof2021_df",
        subset="eval",
        attack=_attack(t[4], label),
        codec=_dash_to_na(t[2]),
        speaker=t[0],
        source=_dash_to_na(t[3]),
        trim=t[6],
        phase=t[7],
        vocoder=_dash_to_na(t[8]).where(label.to_numpy() != "bonafide", pd.NA),
        vcc_task=_dash_to_na(t[9]),
        vcc_team=_dash_to_na(t[10]),
        gender_pair=_dash_to_na(t[11]),
        vcc_language=_dash_to_na(t[12]),
    )
    return df[df["phase"] == "eval"].reset_index(drop=True) if only_eval else df


# ---- ASVspoof 5 -------------------------------------------------------------------------------------------

_ASV5_PROTOCOLS = {
    "train": "ASVspoof5.train.tsv",
    "dev": "ASVspoof5.dev.track_1.tsv",
    "eval": "ASVspoof5.eval.track_1.tsv",
}
_ASV5_AUDIO = {"train": ("flac_T",), "dev": ("flac_D",), "eval": ("flac_E_eval", "flac_E")}


def asvspoof5(root: Path, subset: str | Sequence[str] | None = None) -> pd.DataFrame:
    """ASVspoof 5 track 1 (Wang et al. 2024, "ASVspoof 5: crowdsourced speech data, deepfakes ...").

    Protocols (space-separated despite ``.tsv``) in ``root`` or ``root/ASVspoof5_protocols``:
    ``ASVspoof5.train.tsv``, ``ASVspoof5.dev.track_1.tsv``, ``ASVspoof5.eval.track_1.tsv`` with fields
    ``SPEAKER_ID FLAC_FILE_NAME SPEAKER_GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG ATTACK_LABEL KEY TMP``.
    Audio in ``flac_T/``, ``flac_D/``, ``flac_E_eval/``.  ``codec`` is ``none`` for uncoded audio (``-``),
    otherwise ``C01``...; ``codec_q``, ``codec_seed`` and ``attack_tag`` kept (``-`` -> missing).
    ``subset``: any of train, dev, eval (default all).
    """
    root = _root(root)
    proto_dir = root if (root / _ASV5_PROTOCOLS["train"]).exists() else root / "ASVspoof5_protocols"
    if not any((proto_dir / f).exists() for f in _ASV5_PROTOCOLS.values()):
        proto_dir = root
    frames = []
    for sub in _subsets(subset, ("train", "dev", "eval"), "asvspoof5"):
        proto = proto_dir / _ASV5_PROTOCOLS[sub]
        t = _read_protocol(
            proto, 9, 10, hint="unpack ASVspoof5_protocols.tar.gz under --root, or use --subset"
        )
        label = _labels(t[8], proto)
        audio = _first_existing(root / d for d in _ASV5_AUDIO[sub]) or root / _ASV5_AUDIO[sub][0]
        gender = t[2].str.lower().map(_GENDERS)
        codec = t[3].where(t[3] != "-", "none")
        frames.append(
            _frame(
                len(t),
                utt_id=t[1],
                path=_join(audio, t[1], ".flac"),
                label=label,
                dataset="asvspoof5",
                subset=sub,
                attack=_attack(t[7], label),
                codec=codec,
                codec_q=_dash_to_na(t[4]),
                speaker=t[0],
                gender=gender.where(gender.notna(), _dash_to_na(t[2])),
                codec_seed=_dash_to_na(t[5]),
                attack_tag=_dash_to_na(t[6]),
            )
        )
    return pd.concat(frames, ignore_index=True)


# ---- In-the-Wild ------------------------------------------------------------------------------------------


def in_the_wild(root: Path) -> pd.DataFrame:
    """In-the-Wild (Müller et al. 2022, "Does audio deepfake detection generalize?").

    ``meta.csv`` with columns ``file,speaker,label`` (label ``bona-fide`` / ``spoof``), audio next to it;
    ``root`` may also be the parent of ``release_in_the_wild/``.
    """
    root = _root(root)
    if not (root / "meta.csv").exists() and (root / "release_in_the_wild" / "meta.csv").exists():
        root = root / "release_in_the_wild"
    meta = root / "meta.csv"
    t = _read_csv_table(meta, hint="pass the release_in_the_wild folder as --root")
    missing = [c for c in ("file", "label") if c not in t.columns]
    if missing:
        raise ManifestError(f"{meta}: missing column(s) {', '.join(missing)}; expected file,speaker,label")
    label = _labels(t["label"], meta, skip=1)
    files = t["file"].str.strip()
    return _frame(
        len(t),
        utt_id=files.str.replace(r"\.[A-Za-z0-9]+$", "", regex=True),
        path=_join(root, files),
        label=label,
        dataset="in_the_wild",
        attack=_attack(pd.Series(pd.NA, index=t.index, dtype=object), label),
        speaker=t["speaker"] if "speaker" in t.columns else None,
        language="en",
    )


# ---- Fake-or-Real -----------------------------------------------------------------------------------------

_FOR_SPLITS = {"training": "train", "validation": "dev", "testing": "eval"}
_FOR_CLASSES = {"real": "bonafide", "fake": "spoof"}


def fake_or_real(root: Path) -> pd.DataFrame:
    """Fake-or-Real (Reimao & Tzerpos 2019): real / fake clip folders per version and split.

    Layout ``for-{original,norm,2sec,rerec}/.../{training,validation,testing}/{real,fake}/*.wav``.
    ``root`` may be one version folder or a folder holding several; every ``training``/``validation``/
    ``testing`` folder with ``real``/``fake`` inside is collected.  ``version`` records the nearest enclosing
    ``for-*`` folder; ``subset`` maps training/validation/testing to train/dev/eval.
    """
    root = _root(root)
    rows: list[tuple[str, str, str, str]] = []  # file, label, subset, version
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        split = _FOR_SPLITS.get(here.name.lower())
        if split is None:
            continue
        classes = [d for d in dirnames if d.lower() in _FOR_CLASSES]
        if not classes:
            continue
        chain = [here, *here.parents]
        ver = next((p.name for p in chain if p.name.lower().startswith("for-")), root.name)
        for c in classes:
            for f in _walk_audio(here / c):
                rows.append((str(f), _FOR_CLASSES[c.lower()], split, ver))
        dirnames[:] = [d for d in dirnames if d not in classes]
    if not rows:
        raise ManifestError(
            f"no Fake-or-Real audio under {root}: "
            "expected .../{training,validation,testing}/{real,fake}/*.wav"
        )
    files, label, subset, version = (list(x) for x in zip(*rows, strict=True))
    label_s = pd.Series(label, dtype=object)
    return _frame(
        len(files),
        utt_id=_rel_ids([Path(f) for f in files], root),
        path=pd.Series(files, dtype=object),
        label=label_s,
        dataset="fake_or_real",
        subset=pd.Series(subset, dtype=object),
        attack=_attack(pd.Series(pd.NA, index=label_s.index, dtype=object), label_s),
        language="en",
        version=pd.Series(version, dtype=object),
    )


# ---- WaveFake ---------------------------------------------------------------------------------------------


def wavefake(
    root: Path, ljspeech_root: str | Path | None = None, jsut_root: str | Path | None = None
) -> pd.DataFrame:
    """WaveFake (Frank & Schönherr 2021): ``generated_audio/<vocoder dir>/*.wav`` are spoof, attack = dir.

    Bona fide references are added where present: LJSpeech (``LJSpeech-1.1/wavs/*.wav``, listed by
    ``metadata.csv`` when it exists) and JSUT (``jsut_ver1.1/basic5000/wav/*.wav``), looked up under ``root``
    unless ``ljspeech_root`` / ``jsut_root`` are given.  ``language``: ``ja`` for ``jsut_*`` dirs and JSUT,
    ``en`` otherwise.  ``utt_id`` = ``<vocoder>/<file stem>`` (generated files reuse the source names).
    """
    root = _root(root)
    gen = root / "generated_audio" if (root / "generated_audio").is_dir() else root
    frames = []
    for d in sorted(p for p in gen.iterdir() if p.is_dir()):
        if d.name in ("LJSpeech-1.1", "jsut_ver1.1"):
            continue
        files = _walk_audio(d, (".wav",))
        if not files:
            continue
        ja = d.name.lower().startswith("jsut")
        frames.append(
            _frame(
                len(files),
                utt_id=_rel_ids(files, gen),
                path=[str(f) for f in files],
                label="spoof",
                dataset="wavefake",
                attack=d.name,
                speaker="jsut" if ja else "LJ",
                gender="female",
                language="ja" if ja else "en",
            )
        )
    if not frames:
        raise ManifestError(f"no WaveFake audio under {gen}: expected generated_audio/<vocoder>/*.wav")
    lj = Path(ljspeech_root).expanduser() if ljspeech_root else root / "LJSpeech-1.1"
    if ljspeech_root and not lj.is_dir():
        raise ManifestError(f"LJSpeech folder not found: {lj}")
    if lj.is_dir():
        lj = lj.resolve()
        meta = lj / "metadata.csv"
        if meta.is_file():
            ids = pd.read_csv(meta, sep="|", header=None, usecols=[0], dtype=str, quoting=3)[0].str.strip()
            paths = _join(lj / "wavs", ids, ".wav")
        else:
            wavs = _walk_audio(lj / "wavs", (".wav",))
            ids = pd.Series([f.stem for f in wavs], dtype=object)
            paths = pd.Series([str(f) for f in wavs], dtype=object)
        frames.append(
            _frame(
                len(ids),
                utt_id="ljspeech/" + ids,
                path=paths,
                label="bonafide",
                dataset="wavefake",
                attack="bonafide",
                speaker="LJ",
                gender="female",
                language="en",
            )
        )
    js = Path(jsut_root).expanduser() if jsut_root else root / "jsut_ver1.1"
    if jsut_root and not js.is_dir():
        raise ManifestError(f"JSUT folder not found: {js}")
    if js.is_dir():
        wavs = _walk_audio(js.resolve() / "basic5000" / "wav", (".wav",))
        frames.append(
            _frame(
                len(wavs),
                utt_id=["jsut/" + f.stem for f in wavs],
                path=[str(f) for f in wavs],
                label="bonafide",
                dataset="wavefake",
                attack="bonafide",
                speaker="jsut",
                gender="female",
                language="ja",
            )
        )
    return pd.concat(frames, ignore_index=True)


# ---- MLAAD + M-AILABS -------------------------------------------------------------------------------------


def _mlaad_meta(model_dir: Path) -> pd.DataFrame | None:
    meta = model_dir / "meta.csv"
    if not meta.is_file():
        return None
    t = _read_csv_table(meta, sep="|")
    if "path" not in t.columns:
        raise ManifestError(f"{meta}: no 'path' column; expected the pipe-separated MLAAD meta.csv")
    t = t.drop(columns=[c for c in ("language",) if c in t.columns])
    t["_name"] = t["path"].str.replace(r"^.*[\\/]", "", regex=True)
    return t.drop(columns=["path"]).drop_duplicates("_name").set_index("_name")


def mlaad(root: Path, mailabs_root: str | Path | None = None) -> pd.DataFrame:
    """MLAAD (Müller et al. 2024): ``fake/<language>/<model>/*.wav`` spoof, attack = model folder.

    A pipe-separated ``meta.csv`` in a model folder (``path|original_file|language|...|model_name|
    architecture|...``) is joined on the file name and its columns kept (``language`` comes from the folder).
    Bona fide: M-AILABS (``<lang>/by_book/<gender>/<speaker>/<book>/wavs/*.wav``; gender ``mix`` has no
    speaker level) from ``mailabs_root`` or ``root/M-AILABS`` / ``root/mailabs`` where present.
    """
    root = _root(root)
    fake = root / "fake" if (root / "fake").is_dir() else root
    frames = []
    for lang_dir in sorted(p for p in fake.iterdir() if p.is_dir()):
        for model_dir in sorted(p for p in lang_dir.iterdir() if p.is_dir()):
            files = _walk_audio(model_dir, (".wav", ".flac", ".mp3"))
            if not files:
                continue
            df = _frame(
                len(files),
                utt_id=_rel_ids(files, fake.parent, prefix=""),
                path=[str(f) for f in files],
                label="spoof",
                dataset="mlaad",
                attack=model_dir.name,
                language=_language(lang_dir.name),
                source="mlaad",
            )
            meta = _mlaad_meta(model_dir)
            if meta is not None and len(meta.columns):
                extra = meta.reindex([f.name for f in files]).reset_index(drop=True)
                extra = extra.drop(columns=[c for c in extra.columns if c in df.columns])
                df = pd.concat([df, extra], axis=1)
            frames.append(df)
    if not frames:
        raise ManifestError(f"no MLAAD audio under {fake}: expected fake/<language>/<model>/*.wav")
    ma = (
        Path(mailabs_root).expanduser()
        if mailabs_root
        else _first_existing([root / "M-AILABS", root / "mailabs"])
    )
    if mailabs_root and not (ma and ma.is_dir()):
        raise ManifestError(f"M-AILABS folder not found: {ma}")
    if ma is not None and ma.is_dir():
        frames.append(_mailabs(ma.resolve()))
    return pd.concat(frames, ignore_index=True)


def _mailabs(base: Path) -> pd.DataFrame:
    files = [f for f in _walk_audio(base, (".wav",)) if f.parent.name == "wavs"]
    rows = []
    for f in files:
        parts = f.relative_to(base).parts  # lang, by_book, gender, [speaker], book, wavs, file
        lang = parts[0]
        gender = parts[2] if len(parts) > 2 and parts[1] == "by_book" else None
        speaker = parts[3] if gender in ("female", "male") and len(parts) >= 7 else None
        book = parts[-3] if len(parts) >= 3 else None
        rows.append((lang, gender, speaker, book))
    langs, genders, speakers, books = (list(x) for x in zip(*rows, strict=True)) if rows else ([], [], [], [])
    return _frame(
        len(files),
        utt_id=_rel_ids(files, base, prefix="mailabs/"),
        path=[str(f) for f in files],
        label="bonafide",
        dataset="mlaad",
        attack="bonafide",
        speaker=pd.Series(speakers, dtype=object),
        gender=pd.Series(genders, dtype=object),
        language=pd.Series([_language(x) for x in langs], dtype=object),
        source="m-ailabs",
        book=pd.Series(books, dtype=object),
    )


# ---- ADD 2022 ---------------------------------------------------------------------------------------------


def add2022(root: Path, subset: str | Sequence[str] | None = None) -> pd.DataFrame:
    """ADD 2022 (Yi et al. 2022): ``label/<subset>_label.txt`` lines ``FILE genuine|fake``.

    Audio ``<subset>/wav/FILE`` (or ``<subset>/FILE``).  ``subset`` picks label files by name prefix
    (default: every ``*_label.txt`` found); ``train``/``dev`` are canonical, other names (``adp``, track
    test sets) are kept as they are.
    """
    root = _root(root)
    label_dir = root / "label"
    found = sorted(label_dir.glob("*_label.txt")) if label_dir.is_dir() else []
    if subset is None:
        if not found:
            raise ManifestError(
                f"protocol file not found: {label_dir / 'train_label.txt'} (no label/*_label.txt)"
            )
        names = [f.name[: -len("_label.txt")] for f in found]
    else:
        names = [
            s.strip() for item in ([subset] if isinstance(subset, str) else subset) for s in item.split(",")
        ]
        names = [n for n in names if n]
    frames = []
    for name in names:
        proto = label_dir / f"{name}_label.txt"
        t = _read_protocol(proto, 2, 2, hint="choose label files with --subset")
        label = _labels(t[1], proto)
        audio = _first_existing([root / name / "wav", root / name]) or root / name / "wav"
        files = t[0]
        frames.append(
            _frame(
                len(t),
                utt_id=files.str.replace(r"\.[A-Za-z0-9]+$", "", regex=True),
                path=_join(audio, files),
                label=label,
                dataset="add2022",
                subset=_SUBSET_NAMES.get(name.lower(), name),
                attack=_attack(pd.Series(pd.NA, index=t.index, dtype=object), label),
                language="zh",
            )
        )
    return pd.concat(frames, ignore_index=True)


# ---- SpoofCeleb -------------------------------------------------------------------------------------------

_SPOOFCELEB_SUBSETS = {"train": "train", "dev": "development", "eval": "evaluation"}


def spoofceleb(root: Path, subset: str | Sequence[str] | None = None) -> pd.DataFrame:
    """SpoofCeleb (Jung et al. 2024): ``metadata/<subset>.csv`` rows file, speaker, attack (a00 = bona fide).

    Files ``metadata/{train,development,evaluation}.csv`` have a header; ``a01``... are spoofing systems;
    audio is ``flac/<subset>/<file>``.  Columns are read by position (file, speaker, attack).
    ``utt_id`` = ``<subset>/<file without suffix>``.  ``subset``: any of train, dev, eval (default all).
    """
    root = _root(root)
    frames = []
    for sub in _subsets(subset, ("train", "dev", "eval"), "spoofceleb"):
        official = _SPOOFCELEB_SUBSETS[sub]
        meta = root / "metadata" / f"{official}.csv"
        t = _read_csv_table(meta, hint="choose subsets with --subset")
        if t.shape[1] < 3:
            raise ManifestError(f"{meta}: {t.shape[1]} columns, expected file,speaker,attack")
        file, speaker, attack = (t.iloc[:, k].str.strip() for k in range(3))
        bad = ~attack.str.fullmatch(r"[aA]\d+")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ManifestError(
                f"{meta}:{_file_line(meta, i, skip=1)}: attack {attack.iat[i]!r} is not a SpoofCeleb "
                "system id (a00 = bona fide, a01...)"
            )
        label = pd.Series(np.where(attack.str.lower() == "a00", "bonafide", "spoof"), dtype=object)
        frames.append(
            _frame(
                len(t),
                utt_id=official + "/" + file.str.replace(r"\.[A-Za-z0-9]+$", "", regex=True),
                path=_join(root / "flac" / official, file),
                label=label,
                dataset="spoofceleb",
                subset=sub,
                attack=attack.where(label.to_numpy() != "bonafide", "bonafide"),
                speaker=speaker,
            )
        )
    return pd.concat(frames, ignore_index=True)


# ---- generic CSV ------------------------------------------------------------------------------------------


def generic_csv(root: Path, file: str | None = None, dataset: str | None = None) -> pd.DataFrame:
    """Any CSV/TSV with a ``path`` (or ``file``) column and a ``label`` column; other columns kept.

    ``root`` is the CSV itself, or a folder with ``file=NAME`` naming the CSV inside it (default
    ``meta.csv``).  Relative paths are resolved against the CSV's folder.  ``utt_id`` comes from an
    ``utt_id`` / ``id`` column if present, else the path without suffix.  ``dataset`` defaults to the
    ``dataset`` column, else the CSV's stem.
    """
    r = Path(root).expanduser()
    csv = r if r.is_file() else r / (file or "meta.csv")
    if not csv.is_file():
        raise ManifestError(f"metadata file not found: {csv}; pass the CSV as --root or --option file=NAME")
    csv = csv.resolve()
    t = _read_csv_table(csv, sep="\t" if csv.suffix.lower() == ".tsv" else ",")
    path_col = next((c for c in ("path", "file", "filename") if c in t.columns), None)
    if path_col is None or "label" not in t.columns:
        raise ManifestError(
            f"{csv}: needs a path (or file) column and a label column; has {', '.join(t.columns)}"
        )
    empty = (t[path_col].str.strip() == "").to_numpy()
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise ManifestError(f"{csv}:{_file_line(csv, i, skip=1)}: empty {path_col}")
    label = _labels(t["label"], csv, skip=1, allow_unlabelled=True)
    rel = t[path_col].str.strip()
    absolute = rel.str.startswith("/")
    path = _join(csv.parent, rel).where(~absolute, rel)
    id_col = next((c for c in ("utt_id", "id") if c in t.columns), None)
    utt = t[id_col] if id_col else rel.str.replace(r"\.[A-Za-z0-9]+$", "", regex=True)
    rest = t.drop(columns=[c for c in (path_col, "label", id_col) if c])
    df = _frame(len(t), utt_id=utt, path=path, label=label)
    df = pd.concat([df, rest.reset_index(drop=True)], axis=1)
    if dataset is not None or "dataset" not in df.columns:
        df["dataset"] = dataset or csv.stem
    return df


# ---- registry ---------------------------------------------------------------------------------------------

Converter = Callable[..., pd.DataFrame]

CONVERTERS: dict[str, Converter] = {
    "asvspoof2019_la": asvspoof2019_la,
    "asvspoof2021_la": asvspoof2021_la,
    "asvspoof2021_df": asvspoof2021_df,
    "asvspoof5": asvspoof5,
    "in_the_wild": in_the_wild,
    "fake_or_real": fake_or_real,
    "wavefake": wavefake,
    "mlaad": mlaad,
    "add2022": add2022,
    "spoofceleb": spoofceleb,
    "csv": generic_csv,
}

ALIASES = {"itw": "in_the_wild", "for": "fake_or_real", "generic_csv": "csv", "add": "add2022"}


def converter_kind(kind: str) -> str:
    """Registry key for ``kind`` (case-insensitive, ``-`` = ``_``, a few aliases)."""
    key = kind.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in CONVERTERS:
        raise ManifestError(f"unknown corpus kind {kind!r}; use one of {', '.join(CONVERTERS)}")
    return key


def converter_options(kind: str) -> list[str]:
    """Keyword options a converter accepts (besides ``root``)."""
    params = inspect.signature(CONVERTERS[converter_kind(kind)]).parameters
    return [p for p in params if p != "root"]


def build_manifest(kind: str, root: str | Path, **opts: object) -> pd.DataFrame:
    """Run the converter for ``kind`` on ``root`` and return a validated, normalised manifest.

    Unknown options, an empty result or any schema error (e.g. duplicate ``utt_id``) raise
    :class:`ManifestError`.
    """
    key = converter_kind(kind)
    allowed = converter_options(key)
    unknown = [k for k in opts if k not in allowed]
    if unknown:
        raise ManifestError(
            f"{key}: unknown option(s) {', '.join(unknown)}; it takes: {', '.join(allowed) or 'no options'}"
        )
    df = CONVERTERS[key](Path(root), **opts)
    if len(df) == 0:
        raise ManifestError(f"{key}: no utterances found under {root}; check --root and the options")
    errors = [p for p in validate(df) if p.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ManifestError(f"{key}: built manifest is invalid: {errors[0]}{more}")
    return normalise(df)
