"""Score files in the layouts the official ASVspoof evaluation tools read, plus a plain CSV.

Layouts (one trial per line; a higher score means more bona fide):

* ``csv`` -- header ``utt_id,score`` (further columns kept), comma separated.
* ``asvspoof2019`` -- the CM score file of the ASVspoof 2019 evaluation package
  (``evaluate_tDCF_asvspoof19.py`` reads it with ``np.genfromtxt``): four whitespace-separated columns,
  no header: ``UTT_ID SOURCE KEY SCORE``, where SOURCE is the attack id (``A07``...) or ``-`` for bona fide
  and KEY is ``bonafide`` or ``spoof``.
* ``asvspoof2021`` -- the submission format of ASVspoof 2021 LA/PA/DF: ``UTT_ID SCORE``, whitespace
  separated, no header.
* ``asvspoof5`` -- the ASVspoof 5 evaluation package (``util.load_cm_scores_keys``): tab-separated with the
  header ``filename<TAB>cm-score``.

Readers return a DataFrame with ``utt_id`` (str) and ``score`` (float64), plus ``source`` and ``key`` for the
2019 layout; every malformed line raises :class:`ScoreError` naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .errors import ScoreError

FORMATS = ("csv", "asvspoof2019", "asvspoof2021", "asvspoof5")
SUFFIX = {"csv": "csv", "asvspoof2019": "txt", "asvspoof2021": "txt", "asvspoof5": "tsv"}


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ScoreError(f"unknown score-file format {fmt!r}; use one of {', '.join(FORMATS)}")


def default_filename(fmt: str) -> str:
    """File name used by ``sharpscope score --format FMT`` inside the output directory."""
    _check_format(fmt)
    return f"scores_{fmt}.{SUFFIX[fmt]}"


def _fmt_score(x: float) -> str:
    return repr(float(x))  # shortest string that round-trips exactly


# ---- writing --------------------------------------------------------------------------------------------


def write_scores(df: pd.DataFrame, path: str | Path, fmt: str = "csv") -> Path:
    """Write ``df`` (columns ``utt_id``, ``score``; 2019 also needs ``label`` and uses ``attack``)."""
    _check_format(fmt)
    for col in ("utt_id", "score"):
        if col not in df.columns:
            raise ScoreError(f"cannot write {fmt} score file {path}: the table has no {col!r} column")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = df["utt_id"].astype(str).tolist()
    scores = df["score"].astype(float).tolist()
    if fmt == "csv":
        pd.DataFrame({"utt_id": ids, "score": scores}).to_csv(path, index=False, float_format=None)
        return path
    for u in ids:
        if u == "" or any(c.isspace() for c in u):
            raise ScoreError(
                f"cannot write {fmt} score file {path}: utterance id {u!r} is empty or has spaces"
            )
    lines: list[str]
    if fmt == "asvspoof2019":
        if "label" not in df.columns:
            raise ScoreError(f"cannot write asvspoof2019 score file {path}: the KEY column needs labels")
        keys = df["label"].astype(str).tolist()
        bad = [u for u, k in zip(ids, keys, strict=True) if k not in ("bonafide", "spoof")]
        if bad:
            raise ScoreError(
                f"cannot write asvspoof2019 score file {path}: {len(bad)} rows are not labelled "
                f"bonafide/spoof (first: {', '.join(bad[:5])}); use --format asvspoof2021 or csv"
            )
        attacks = df["attack"].tolist() if "attack" in df.columns else [None] * len(df)
        sources = [
            "-" if k == "bonafide" or a is None or pd.isna(a) or str(a).strip() == "" else str(a)
            for k, a in zip(keys, attacks, strict=True)
        ]
        lines = [
            f"{u} {src} {k} {_fmt_score(s)}" for u, src, k, s in zip(ids, sources, keys, scores, strict=True)
        ]
    elif fmt == "asvspoof2021":
        lines = [f"{u} {_fmt_score(s)}" for u, s in zip(ids, scores, strict=True)]
    else:  # asvspoof5
        lines = ["filename\tcm-score"] + [f"{u}\t{_fmt_score(s)}" for u, s in zip(ids, scores, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- reading --------------------------------------------------------------------------------------------


def _parse_score(text: str, path: Path, lineno: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise ScoreError(f"score file {path} line {lineno}: score {text!r} is not a number") from None


def _read_columns(path: Path, n_cols: int, sep: str | None, header: list[str] | None) -> list[tuple]:
    rows: list[tuple] = []
    with open(path, encoding="utf-8") as fh:
        lines = enumerate(fh, start=1)
        if header is not None:
            for lineno, line in lines:
                if line.strip():
                    got = [c.strip() for c in line.rstrip("\n").split(sep)]
                    if got[: len(header)] != header:
                        raise ScoreError(
                            f"score file {path} line {lineno}: expected the header "
                            f"{'<TAB>'.join(header)!s}, found {line.strip()!r}"
                        )
                    break
        for lineno, line in lines:
            if not line.strip():
                continue
            parts = line.split(sep) if sep is not None else line.split()
            parts = [p.strip() for p in parts]
            if len(parts) != n_cols:
                raise ScoreError(
                    f"score file {path} line {lineno}: expected {n_cols} columns, found {len(parts)} "
                    f"({line.strip()[:80]!r})"
                )
            rows.append((lineno, *parts))
    return rows


def read_scores(path: str | Path, fmt: str = "csv") -> pd.DataFrame:
    """Read a score file of layout ``fmt``: columns ``utt_id``, ``score`` (2019: also ``source``, ``key``)."""
    _check_format(fmt)
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"score file not found: {path}")
    if fmt == "csv":
        try:
            df = pd.read_csv(path, dtype={"utt_id": str}, keep_default_na=False, na_values=[])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ScoreError(f"cannot read CSV score file {path}: {msg}") from None
        for col in ("utt_id", "score"):
            if col not in df.columns:
                raise ScoreError(
                    f"CSV score file {path} has no {col!r} column (header: {', '.join(map(str, df.columns))})"
                    "; the header must name utt_id and score"
                )
        scores = [_parse_score(str(v), path, i + 2) for i, v in enumerate(df["score"].tolist())]
        df = df.copy()
        df["utt_id"] = df["utt_id"].astype(str)
        df["score"] = pd.Series(scores, index=df.index, dtype="float64")
        return df.reset_index(drop=True)
    if fmt == "asvspoof2019":
        rows = _read_columns(path, 4, None, None)
        out = pd.DataFrame(
            {
                "utt_id": [r[1] for r in rows],
                "source": [r[2] for r in rows],
                "key": [r[3] for r in rows],
                "score": [_parse_score(r[4], path, r[0]) for r in rows],
            }
        )
        bad = [(r[0], r[3]) for r in rows if r[3] not in ("bonafide", "spoof")]
        if bad:
            raise ScoreError(
                f"score file {path} line {bad[0][0]}: KEY column must be bonafide or spoof, found "
                f"{bad[0][1]!r} ({len(bad)} such lines); is this an asvspoof2019 CM score file?"
            )
    elif fmt == "asvspoof2021":
        rows = _read_columns(path, 2, None, None)
        out = pd.DataFrame(
            {"utt_id": [r[1] for r in rows], "score": [_parse_score(r[2], path, r[0]) for r in rows]}
        )
    else:
        rows = _read_columns(path, 2, "\t", ["filename", "cm-score"])
        out = pd.DataFrame(
            {"utt_id": [r[1] for r in rows], "score": [_parse_score(r[2], path, r[0]) for r in rows]}
        )
    out["utt_id"] = out["utt_id"].astype(str)
    out["score"] = out["score"].astype("float64")
    return out


def describe_ids(ids: Any, k: int = 5) -> str:
    """``"a, b, c, ..."`` -- the first ``k`` ids for an error message."""
    ids = list(ids)
    return ", ".join(str(i) for i in ids[:k]) + (", ..." if len(ids) > k else "")
