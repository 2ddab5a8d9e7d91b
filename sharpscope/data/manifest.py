"""Manifests: the one contract between corpora and the rest of sharpscope.

A manifest is a table with one row per utterance, stored as CSV (``.csv``), tab-separated text (``.tsv``)
or Parquet (``.parquet`` / ``.pq``), the format chosen by the file suffix.

Columns
-------
Required: ``utt_id`` (unique key; scores and results are joined on it), ``path`` (audio file; relative paths
are resolved against the manifest's folder or an explicit ``root``) and ``label`` (``bonafide`` or
``spoof``; ``unknown`` marks unlabelled rows of blind evaluation data, which can be scored but give no
metrics and are refused for training -- an *empty* label is an error, never read as unknown).

Optional, with fixed meaning: ``dataset, subset, attack, codec, codec_q, transmission, speaker, gender,
language, sample_rate, num_samples``.  Conventions used by the converters: ``subset`` is the corpus partition
(``train``/``dev``/``eval`` where the corpus has them), ``attack`` is ``bonafide`` on bona fide rows (so that
per-attack tables never lose bona fide rows to a missing value) and the official attack/system id on spoof
rows.  Any other column is kept as is.

Labels are normalised case-insensitively; spaces, hyphens and underscores are ignored, so ``Bona-fide``,
``bona fide`` and ``BONAFIDE`` are all ``bonafide``.  Accepted aliases are listed in :data:`LABEL_ALIASES`.
Numbers (``0``/``1``) are refused on purpose: projects disagree on which class is 1 (ASVspoof-derived code
uses 1 = bona fide, many others 1 = fake), and a silent flip inverts every EER.

Problems are reported one per line with a **1-based data row number** (row 1 is the first row after the
header).  Everything on the hot path is vectorised pandas, so reading and validating a 611,829-row manifest
(ASVspoof 2021 DF size) takes seconds; Python loops only run over rows that have a problem, or over files
when audio is probed (``check_manifest(..., audio=True)``).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from ..errors import ManifestError

REQUIRED_COLUMNS: tuple[str, ...] = ("utt_id", "path", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "dataset",
    "subset",
    "attack",
    "codec",
    "codec_q",
    "transmission",
    "speaker",
    "gender",
    "language",
    "sample_rate",
    "num_samples",
)
INT_COLUMNS: tuple[str, ...] = ("sample_rate", "num_samples")
LABELS: tuple[str, ...] = ("bonafide", "spoof")
UNLABELLED = "unknown"  # explicit label of blind-evaluation rows (Batch label -1)

#: Accepted spellings (after lower-casing and removing spaces, ``-`` and ``_``) for each canonical label.
LABEL_ALIASES: dict[str, frozenset[str]] = {
    "bonafide": frozenset({"bonafide", "genuine", "real", "human", "natural", "authentic"}),
    "spoof": frozenset(
        {"spoof", "spoofed", "fake", "synthetic", "synthesized", "synthesised", "deepfake", "generated"}
    ),
    UNLABELLED: frozenset({"unknown", "unlabelled", "unlabeled"}),
}
_ALIAS_TO_LABEL = {alias: label for label, aliases in LABEL_ALIASES.items() for alias in aliases}
_SQUEEZE = re.compile(r"[\s_\-]+")

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


# ---- labels ----------------------------------------------------------------------------------------------


def _label_key(value: object) -> str:
    return _SQUEEZE.sub("", str(value).strip().lower())


def normalise_label(value: object) -> str:
    """Canonical label (``bonafide`` / ``spoof`` / ``unknown``) for ``value``; raises :class:`ManifestError`
    if ``value`` is none of the accepted spellings."""
    label = _ALIAS_TO_LABEL.get(_label_key(value))
    if label is None:
        raise ManifestError(f"invalid label {value!r}; {_label_help()}")
    return label


def _label_help() -> str:
    aliases = "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in LABEL_ALIASES.items())
    return f"use bonafide, spoof or unknown (unlabelled); accepted spellings: {aliases}"


def normalise_labels(values: pd.Series) -> pd.Series:
    """Vectorised :func:`normalise_label`: canonical labels, ``<NA>`` where the value is not a known label.

    Only the distinct values are normalised in Python (there are usually two), then broadcast back.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    mapped = np.array([_ALIAS_TO_LABEL.get(_label_key(u)) for u in uniques] + [None], dtype=object)
    return pd.Series(mapped[codes], index=values.index, dtype="string")


# ---- problems and reports -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One problem in a manifest; ``row`` is the 1-based data row (header not counted), None if global."""

    kind: str
    message: str
    row: int | None = None
    column: str | None = None
    severity: str = "error"  # "error" breaks reading; "warning" is reported by check only

    def __str__(self) -> str:
        where = f"row {self.row}: " if self.row is not None else ""
        return f"{where}{self.message}"


@dataclass
class CheckReport:
    """Outcome of :func:`check_manifest`: problems (one per line) plus a summary of the contents."""

    path: Path
    n_rows: int
    problems: list[Problem]
    class_counts: pd.DataFrame  # one row per dataset/attack: bonafide, spoof, total
    sample_rates: dict[int, int] | None = None  # sample rate -> files (audio=True only)
    durations: dict[str, float] | None = None  # min/median/max/total seconds (audio=True only)
    columns: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """One line per problem (rows are 1-based data rows, header not counted)."""
        return [str(p) for p in self.problems]


# ---- reading ------------------------------------------------------------------------------------------


def _format_of(path: Path) -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ManifestError(
            f"{path}: unknown manifest format {path.suffix!r}; use one of {', '.join(sorted(SUFFIXES))}"
        )
    return fmt


def _check_header(p: Path, sep: str, what: str) -> None:
    """Refuse a header naming one column twice (pandas would silently rename the second ``label.1``)."""
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh, delimiter=sep), [])
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{p}: not UTF-8 text (byte {exc.start}); save the {what} as UTF-8") from None
    except (OSError, csv.Error):
        return  # the reader below reports it
    seen: dict[str, int] = {}
    for i, name in enumerate(c.strip() for c in header):
        if name in seen:
            raise ManifestError(
                f"{p}: header names column {name!r} twice (columns {seen[name] + 1} and {i + 1}); "
                "remove or rename one"
            )
        seen[name] = i


def read_delimited(path: str | Path, sep: str = ",", what: str = "CSV") -> pd.DataFrame:
    """A delimited text table with a header, every cell a string (empty cells ``""``), strictly rectangular.

    A line with more or fewer fields than the header raises :class:`ManifestError` naming ``file`` and the
    line (pandas would otherwise silently turn an extra leading field into an index); so does a header that
    names a column twice.
    """
    p = Path(path)
    _check_header(p, sep, what)
    try:  # fast path: Arrow's multi-threaded reader, strict about field counts
        df = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False, engine="pyarrow")
        df.columns = [str(c).strip() for c in df.columns]
        return df
    except (ImportError, ValueError):  # ParserError/EmptyDataError are ValueErrors: redo with line numbers
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{p}: empty file; it needs a header line") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning) as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if m:
            detail = f"line {m.group(2)} has {m.group(3)} fields, the header has {m.group(1)}"
        else:
            detail = _width_mismatch(p, sep) or (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ManifestError(f"{p}: cannot parse {what}: {detail}; fix that line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{p}: cannot read {what}: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _width_mismatch(path: Path, sep: str) -> str | None:
    """Describe the first line whose field count differs from the header's (error path only)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter=sep)
        header = next(reader, [])
        for row in reader:
            if row and len(row) != len(header):
                return f"line {reader.line_num} has {len(row)} fields, the header has {len(header)}"
    return None


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a manifest file as-is (strings, no validation).

    Raises :class:`ManifestError` (one line naming the file and, for CSV syntax errors, the line) when the
    file is missing, empty, of an unknown format or not parseable.
    """
    p = Path(path)
    fmt = _format_of(p)
    if not p.is_file():
        raise ManifestError(
            f"manifest not found: {p}; check the path (build one with `sharpscope manifest build`)"
        )
    if fmt != "parquet":
        try:
            return read_delimited(p, sep="\t" if fmt == "tsv" else ",", what=fmt.upper())
        except ManifestError as exc:
            if str(exc).endswith("empty file; it needs a header line"):
                raise ManifestError(
                    f"{p}: empty file; a manifest needs a header with utt_id,path,label"
                ) from None
            raise
    try:
        df = pd.read_parquet(p)
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for corrupt Parquet
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ManifestError(f"{p}: cannot read parquet manifest: {first}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _empty_mask(s: pd.Series) -> np.ndarray:
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
        return (s.isna() | (s.astype("string").str.strip() == "")).to_numpy(dtype=bool)
    return s.isna().to_numpy(dtype=bool)


def _rows(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask)


def _first_rows(values: pd.Series) -> np.ndarray:
    """For each row, the 1-based row of the first occurrence of its value."""
    pos = pd.Series(np.arange(1, len(values) + 1), index=values.index)
    return pos.groupby(values.to_numpy(), sort=False, dropna=False).transform("first").to_numpy()


def validate(df: pd.DataFrame) -> list[Problem]:
    """All problems of a manifest table (no file-system access), sorted by row.

    Checks: missing required columns, empty required values, invalid labels, duplicate ``utt_id`` (error),
    duplicate ``path`` (warning), non-integer / negative ``sample_rate`` / ``num_samples``.
    """
    problems: list[Problem] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    for c in missing:
        problems.append(
            Problem(
                "missing_column",
                f"missing required column {c!r} "
                f"(columns present: {', '.join(map(str, df.columns)) or 'none'})",
                column=c,
            )
        )
    empty: dict[str, np.ndarray] = {}
    for c in REQUIRED_COLUMNS:
        if c in df.columns:
            empty[c] = _empty_mask(df[c])
            for i in _rows(empty[c]):
                problems.append(Problem("empty_value", f"empty {c}", row=int(i) + 1, column=c))

    if "label" in df.columns:
        canon = normalise_labels(df["label"])
        bad = canon.isna().to_numpy() & ~empty["label"]
        values = df["label"].to_numpy(dtype=object) if bad.any() else None
        for i in _rows(bad):
            assert values is not None  # set whenever bad has a True entry
            problems.append(
                Problem(
                    "invalid_label",
                    f"invalid label {values[i]!r}; use bonafide, spoof or unknown (see LABEL_ALIASES)",
                    row=int(i) + 1,
                    column="label",
                )
            )

    for col, kind, severity in (
        ("utt_id", "duplicate_utt_id", "error"),
        ("path", "duplicate_path", "warning"),
    ):
        if col not in df.columns:
            continue
        s = df[col].astype("string").str.strip()
        dup = s.duplicated(keep="first").to_numpy() & ~empty[col]
        if dup.any():
            first = _first_rows(s)
            values = s.to_numpy(dtype=object)
            for i in _rows(dup):
                problems.append(
                    Problem(
                        kind,
                        f"duplicate {col} {values[i]!r} (first at row {first[i]})",
                        row=int(i) + 1,
                        column=col,
                        severity=severity,
                    )
                )

    for col in INT_COLUMNS:
        if col not in df.columns:
            continue
        raw = df[col]
        blank = _empty_mask(raw)
        num = pd.to_numeric(raw.where(~blank), errors="coerce")
        arr = num.to_numpy(dtype=float, na_value=np.nan)
        bad = ~blank & (np.isnan(arr) | (arr < 0) | (np.mod(np.nan_to_num(arr), 1) != 0))
        values = raw.to_numpy(dtype=object) if bad.any() else None
        for i in _rows(bad):
            assert values is not None  # set whenever bad has a True entry
            problems.append(
                Problem(
                    "bad_value",
                    f"{col} {values[i]!r} is not a non-negative integer",
                    row=int(i) + 1,
                    column=col,
                )
            )
    problems.sort(key=lambda p: -1 if p.row is None else p.row)
    return problems


def _order_columns(df: pd.DataFrame) -> pd.DataFrame:
    known = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in df.columns]
    extra = [c for c in df.columns if c not in known]
    return df[known + extra]


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical dtypes and values of a *valid* manifest table.

    Required columns become stripped strings and labels canonical; empty strings in other columns become
    ``<NA>``; ``sample_rate`` / ``num_samples`` become nullable integers; columns are ordered required,
    optional, extra.  The row order is kept (it decides batch composition downstream).
    """
    out = df.copy()
    for c in REQUIRED_COLUMNS:
        out[c] = out[c].astype(str).str.strip()
    out["label"] = normalise_labels(out["label"]).astype(str)
    for c in out.columns:
        if c in REQUIRED_COLUMNS:
            continue
        if c in INT_COLUMNS:
            blank = _empty_mask(out[c])
            out[c] = pd.to_numeric(out[c].where(~blank), errors="coerce").astype("Int64")
        elif out[c].dtype == object or pd.api.types.is_string_dtype(out[c].dtype):
            out[c] = out[c].replace("", pd.NA)
    return _order_columns(out).reset_index(drop=True)


def resolve_paths(paths: pd.Series, base: str | Path) -> pd.Series:
    """Absolute paths: relative entries are joined onto ``base`` (vectorised, no file-system access)."""
    s = paths.astype(str)
    base_s = str(Path(base).expanduser().resolve())
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        absolute = s.str.match(r"^([A-Za-z]:[\\/]|[\\/]{2})")
    else:
        absolute = s.str.startswith("/")
    home = s.str.startswith("~")
    if home.any():
        s = s.where(~home, s[home].map(lambda p: os.path.expanduser(p)))
        absolute = absolute | home
    joined = base_s.rstrip(os.sep) + os.sep + s
    return joined.where(~absolute, s)


def read_manifest(
    path: str | Path, root: str | Path | None = None, check_files: bool = False
) -> pd.DataFrame:
    """Read and validate a manifest; return it normalised with absolute paths.

    ``root`` -- folder that relative paths are resolved against (default: the manifest's own folder).
    ``check_files`` -- also require every audio file to exist.

    Raises :class:`ManifestError` naming the file and the first offending row/column (with the number of
    further problems) if the manifest is malformed; ``sharpscope manifest check`` lists them all.
    """
    p = Path(path)
    raw = load_table(p)
    errors = [q for q in validate(raw) if q.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more; list them with `sharpscope manifest check {p}`)"
        where = "" if errors[0].row is None else " (rows are 1-based data rows)"
        raise ManifestError(f"{p}: {errors[0]}{more if len(errors) > 1 else ''}{where}")
    if len(raw) == 0:
        raise ManifestError(f"{p}: no data rows (only a header); add utterances or pass another manifest")
    df = normalise(raw)
    df["path"] = resolve_paths(df["path"], root if root is not None else p.parent)
    if check_files:
        missing = _rows(~files_exist(df["path"]))
        if len(missing):
            i = missing[0]
            more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
            raise ManifestError(
                f"{p}: row {i + 1}: audio file not found: {df['path'].to_numpy(dtype=object)[i]}{more}; "
                "fix the paths or pass --root"
            )
    df.attrs["manifest"] = str(p)
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate ``df`` and write it (CSV/TSV/Parquet by suffix), creating parent folders.

    Refuses (``ManifestError``) to write a manifest with errors, so every file on disk reads back cleanly.
    """
    p = Path(path)
    fmt = _format_of(p)
    errors = [q for q in validate(df) if q.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ManifestError(f"refusing to write {p}: {errors[0]}{more} (rows are 1-based data rows)")
    out = normalise(df)
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        out.to_parquet(p, index=False)
    else:
        write_delimited(out, p, sep="\t" if fmt == "tsv" else ",")
    return p


def write_delimited(df: pd.DataFrame, path: str | Path, sep: str = ",") -> None:
    """Write ``df`` as delimited text, byte-identical to ``df.to_csv(path, sep=sep, index=False)`` for
    plain values but ~20x faster (Arrow's writer, no quoting).  Any value that would need quoting (the
    separator, quotes, line breaks) sends the whole table through pandas instead.
    """
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        df.to_csv(path, sep=sep, index=False)
        return
    header = [str(c) for c in df.columns]
    if not any(ch in c for c in header for ch in (sep, '"', "\n", "\r")):
        try:
            table = pa.Table.from_pandas(df, preserve_index=False)
            options = pacsv.WriteOptions(include_header=False, delimiter=sep, quoting_style="none")
            with open(path, "wb") as fh:
                fh.write((sep.join(header) + "\n").encode())
                pacsv.write_csv(table, fh, options)
            return
        except (pa.ArrowException, ValueError, TypeError):
            pass  # a value needs quoting (or an odd dtype): pandas handles every case
    df.to_csv(path, sep=sep, index=False)


def manifest_hash(df: pd.DataFrame, paths: str = "name") -> str:
    """Stable 16-hex-digit hash of the manifest's ``utt_id``, ``path`` and ``label`` columns, in row order.

    Row order is part of the hash because it decides batch composition (m-sharpness depends on it).
    ``paths``: ``"name"`` hashes only the file name (the same corpus under two roots hashes equal),
    ``"full"`` the whole path string, ``"none"`` ignores paths.  Labels are hashed in canonical form.
    """
    if paths not in ("name", "full", "none"):
        raise ValueError(f"paths must be 'name', 'full' or 'none', not {paths!r}")
    utt = df["utt_id"].astype(str)
    canon = normalise_labels(df["label"])
    lab = canon.fillna(df["label"].astype(str)).astype(str)
    parts = utt + "\t" + lab
    if paths != "none":
        p = df["path"].astype(str)
        if paths == "name":
            p = p.str.replace(r"^.*[\\/]", "", regex=True)
        parts = parts + "\t" + p
    h = hashlib.sha256()
    h.update(f"{len(df)}\n".encode())
    h.update(parts.str.cat(sep="\n").encode())
    return h.hexdigest()[:16]


# ---- file checks -----------------------------------------------------------------------------------------


def files_exist(paths: pd.Series) -> np.ndarray:
    """Boolean mask: does each path name an existing file?

    Lists each distinct folder once (``os.scandir``) instead of one ``stat`` per row, which matters for
    corpora with hundreds of thousands of files in one folder; paths the listing does not confirm (``..``,
    symlinked folders, unlistable folders) fall back to ``os.path.isfile``.
    """
    s = paths.astype(str).to_numpy(dtype=object)
    n = len(s)
    out = np.zeros(n, dtype=bool)
    if n == 0:
        return out
    split = [p.rpartition(os.sep) for p in s]
    dirs = np.array([t[0] for t in split], dtype=object)
    names = np.array([t[2] for t in split], dtype=object)
    codes, uniq = pd.factorize(dirs)
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(uniq)))[:-1]
    recheck = np.zeros(n, dtype=bool)
    for k, idx in enumerate(np.split(order, bounds)):
        d = uniq[k] or os.sep
        try:
            with os.scandir(d) as it:
                listing = {e.name for e in it if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            continue  # folder absent: every file in it is missing
        except OSError:
            recheck[idx] = True
            continue
        found = np.fromiter((nm in listing for nm in names[idx]), dtype=bool, count=len(idx))
        out[idx] = found
        recheck[idx[~found]] = True  # e.g. case-insensitive file systems; only the (rare) misses
    for i in np.flatnonzero(recheck):
        out[i] = os.path.isfile(s[i])
    return out


@dataclass(frozen=True)
class AudioInfo:
    """What ``soundfile.info`` says about one file (``error`` set when it cannot be read).

    ``declared_frames`` is the frame count a WAV header announces (``None`` for other formats);
    ``n_nonfinite`` counts NaN/inf samples of floating-point files (``None`` when not scanned).
    """

    sample_rate: int | None = None
    frames: int | None = None
    error: str | None = None
    declared_frames: int | None = None
    n_nonfinite: int | None = None


def wav_declared_frames(path: str) -> int | None:
    """Frames announced by a RIFF/WAVE header (``data`` chunk size / block align), or ``None``.

    libsndfile quietly shortens ``frames`` to the bytes actually present, so a file cut off mid-download
    reads as a shorter clip; comparing with the header's own count is how a truncated file is told apart
    (RIFF layout: "RIFF" size "WAVE", then chunks of 4-byte id + little-endian 4-byte size, padded to even
    sizes; "fmt " holds the block align at offset 12).
    """
    import struct

    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        for _ in range(64):  # a WAV file has a handful of chunks
            hdr = fh.read(8)
            if len(hdr) < 8:
                return None
            cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
            if cid == b"fmt ":
                fmt = fh.read(min(size, 64))
                if len(fmt) >= 14:
                    block_align = struct.unpack("<H", fmt[12:14])[0]
                fh.seek(size - len(fmt) + (size & 1), 1)
            elif cid == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):  # streamed WAVs leave the size open
                    return None
                return size // block_align
            else:
                fh.seek(size + (size & 1), 1)
    return None


def _count_nonfinite(path: str) -> int:
    import soundfile as sf

    bad = 0
    for block in sf.blocks(path, blocksize=1 << 16, dtype="float64", always_2d=True):
        bad += int(block.size - np.isfinite(block).sum())
    return bad


def _probe(path: str) -> AudioInfo:
    import soundfile as sf

    try:
        info = sf.info(path)
        declared = wav_declared_frames(path) if info.format in ("WAV", "WAVEX") else None
        # only floating-point files can hold NaN/inf; integer PCM cannot
        nonfinite = _count_nonfinite(path) if info.subtype in ("FLOAT", "DOUBLE") else None
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return AudioInfo(error=msg)
    return AudioInfo(
        sample_rate=int(info.samplerate),
        frames=int(info.frames),
        declared_frames=declared,
        n_nonfinite=nonfinite,
    )


def probe_audio(
    paths: Sequence[str], workers: int = 4, progress: Callable[[int], None] | None = None
) -> list[AudioInfo]:
    """``soundfile.info`` for each path (threaded: the work is file I/O); ``progress(1)`` after each file."""
    results: list[AudioInfo] = []
    if workers <= 1:
        for p in paths:
            results.append(_probe(p))
            if progress:
                progress(1)
        return results
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for info in pool.map(_probe, paths, chunksize=64):
            results.append(info)
            if progress:
                progress(1)
    return results


# ---- summary and check -----------------------------------------------------------------------------------


def class_counts(df: pd.DataFrame, by: Iterable[str] = ("dataset", "attack")) -> pd.DataFrame:
    """Counts of bona fide / spoof rows per group (groups from the ``by`` columns present; ``-`` = missing).

    Labels are normalised; ``unknown`` counts unlabelled rows, ``invalid`` rows whose label is not valid.
    """
    keys = [c for c in by if c in df.columns]
    if "label" in df.columns:
        lab = normalise_labels(df["label"]).fillna("invalid").astype(str)
    else:
        lab = pd.Series("invalid", index=df.index)
    frame = pd.DataFrame({k: df[k].astype("string").fillna("-").replace("", "-") for k in keys})
    frame["label"] = lab.to_numpy()
    if not keys:
        frame["all"] = "all"
        keys = ["all"]
    table = frame.groupby(keys + ["label"], sort=True, dropna=False).size().unstack("label", fill_value=0)
    for c in LABELS:
        if c not in table.columns:
            table[c] = 0
    cols = list(LABELS) + [c for c in (UNLABELLED, "invalid") if c in table.columns]
    table = table[cols]
    table["total"] = table.sum(axis=1)
    table.columns.name = None
    return table.reset_index()


def check_manifest(
    path: str | Path,
    audio: bool = False,
    root: str | Path | None = None,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Every problem of a manifest, one per row, plus a summary; never raises for row-level problems.

    Reported: missing required columns, empty values, invalid labels, duplicate ``utt_id`` / ``path``, bad
    ``sample_rate`` / ``num_samples``, missing audio files.  With ``audio=True`` each existing file is probed
    with ``soundfile.info``: unreadable or empty audio, and disagreement with ``sample_rate`` /
    ``num_samples`` columns, are reported, and sample rates / durations summarised.

    Raises :class:`ManifestError` only when the file itself cannot be read as a table.
    """
    p = Path(path)
    raw = load_table(p)
    problems = validate(raw)
    if len(raw) == 0:
        problems.append(Problem("no_rows", "no data rows (only a header); add utterances"))
    sample_rates: dict[int, int] | None = None
    durations: dict[str, float] | None = None
    if "path" in raw.columns and len(raw):
        empty = _empty_mask(raw["path"])
        resolved = resolve_paths(raw["path"].astype(str).str.strip(), root if root is not None else p.parent)
        exists = files_exist(resolved) | empty
        files = resolved.to_numpy(dtype=object)
        for i in _rows(~exists):
            problems.append(
                Problem("missing_file", f"audio file not found: {files[i]}", row=int(i) + 1, column="path")
            )
        if audio:
            todo = _rows(exists & ~empty)
            infos = probe_audio(files[todo].tolist(), workers=workers, progress=progress)
            problems += _audio_problems(raw, todo, infos, files)
            ok = [(int(i), a) for i, a in zip(todo, infos, strict=True) if a.error is None and a.frames]
            if ok:
                sr = pd.Series([a.sample_rate for _, a in ok])
                sample_rates = {int(k): int(v) for k, v in sr.value_counts().sort_index().items()}
                # error is None => _probe set both frames and sample_rate
                secs = np.array([cast(int, a.frames) / cast(int, a.sample_rate) for _, a in ok])
                durations = {
                    "min": float(secs.min()),
                    "median": float(np.median(secs)),
                    "max": float(secs.max()),
                    "total": float(secs.sum()),
                }
            else:
                sample_rates, durations = {}, None
    problems.sort(key=lambda q: -1 if q.row is None else q.row)
    return CheckReport(
        path=p,
        n_rows=len(raw),
        problems=problems,
        class_counts=class_counts(raw),
        sample_rates=sample_rates,
        durations=durations,
        columns=list(raw.columns),
    )


def _audio_problems(
    raw: pd.DataFrame, rows: np.ndarray, infos: list[AudioInfo], files: np.ndarray
) -> list[Problem]:
    out: list[Problem] = []
    declared: dict[str, np.ndarray] = {}
    for col in INT_COLUMNS:
        if col in raw.columns:
            declared[col] = pd.to_numeric(raw[col].replace("", np.nan), errors="coerce").to_numpy(dtype=float)
    for i, info in zip(rows, infos, strict=True):
        r, f = int(i) + 1, files[i]
        if info.error is not None:
            out.append(
                Problem("unreadable_audio", f"cannot read audio {f}: {info.error}", row=r, column="path")
            )
            continue
        if not info.frames:
            out.append(Problem("empty_audio", f"audio file {f} holds no samples", row=r, column="path"))
            continue
        if info.declared_frames is not None and info.declared_frames > info.frames:
            out.append(
                Problem(
                    "truncated_audio",
                    f"audio file {f} is truncated: its header announces {info.declared_frames} frames, "
                    f"the file holds {info.frames}; re-download or re-convert it",
                    row=r,
                    column="path",
                )
            )
        if info.n_nonfinite:
            out.append(
                Problem(
                    "nonfinite_audio",
                    f"audio file {f} holds {info.n_nonfinite} NaN/inf samples; re-convert it",
                    row=r,
                    column="path",
                )
            )
        for col, actual in (("sample_rate", info.sample_rate), ("num_samples", info.frames)):
            want = declared.get(col)
            if want is not None and not np.isnan(want[i]) and int(want[i]) != actual:
                out.append(
                    Problem(
                        "audio_mismatch",
                        f"{col} is {int(want[i])} in the manifest but {actual} in {f}",
                        row=r,
                        column=col,
                    )
                )
    return out
