"""Run the converters on real, full-size official protocol files and compare counts with the published ones.

The converter tests (``tests/test_converters.py``) use tiny trees written by the tests themselves; this
script checks that the converters read the corpora owners' *real* files the way their authors meant: number
of trials, bona fide / spoof split, per-attack counts and number of speakers, against the figures published
by the corpus authors.  Audio is not needed (and not opened): only the protocol / key / metadata files.

    .venv/bin/python benchmarks/verify_real_protocols.py FOLDER

FOLDER holds one sub-folder per corpus, in the corpus' own layout (any corpus may be absent; for ASVspoof
2019 LA any of the three protocol files may be absent)::

    asvspoof2019_la/LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.{train.trn,dev.trl,eval.trl}.txt
    asvspoof2021_la/keys/LA/CM/trial_metadata.txt        (from LA-keys-full.tar.gz)
    asvspoof2021_df/keys/DF/CM/trial_metadata.txt        (from DF-keys-full.tar.gz)
    in_the_wild/meta.csv                                 (from release_in_the_wild.zip)
    asvspoof5/ASVspoof5.{train,dev.track_1,eval.track_1}.tsv   (counted, no reference figures here)
    spoofceleb/metadata/{train,development,evaluation}.csv     (counted, no reference figures here)
    add2022/label/*_label.txt                                  (counted, no reference figures here)

Published reference figures used (``OFFICIAL``):

* ASVspoof 2019 LA -- Wang et al. 2020, "ASVspoof 2019: a large-scale public database of synthesized,
  converted and replayed speech", Computer Speech & Language 64, Table 1, and the ASVspoof 2019 evaluation
  plan: train 2,580 bona fide / 22,800 spoof from 20 speakers (8 male, 12 female), attacks A01-A06;
  dev 2,548 / 22,296, attacks A01-A06; eval 7,355 / 63,882, attacks A07-A19.
* In-the-Wild -- Müller et al. 2022, "Does audio deepfake detection generalize?", Interspeech:
  31,779 clips, 19,963 bona fide / 11,816 spoof, 58 speakers.
* ASVspoof 2021 -- Liu et al. 2023, "ASVspoof 2021: towards spoofed and deepfake speech detection in the
  wild", IEEE/ACM TASLP: LA evaluation set 181,566 trials (attacks A07-A19), DF 611,829 trials.

Prints one row per corpus/subset and exits 0 when every reference figure matches, 1 on any mismatch, 2 when
no corpus was found.  ASVspoof 2021 LA/DF and ADD 2022 converters refuse to build a manifest when the audio
folder is absent, so for protocol-only folders the script substitutes an empty stand-in audio folder (noted
in the output; ``sharpscope manifest check`` is where missing audio is meant to be reported).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sharpscope.data.converters import build_manifest
from sharpscope.errors import ManifestError

ASV19_FILES = {
    "train": "ASVspoof2019.LA.cm.train.trn.txt",
    "dev": "ASVspoof2019.LA.cm.dev.trl.txt",
    "eval": "ASVspoof2019.LA.cm.eval.trl.txt",
}


@dataclass(frozen=True)
class Reference:
    """Published counts for one corpus/subset; ``None`` = not published / not checked."""

    total: int
    bonafide: int | None = None
    spoof: int | None = None
    attacks: frozenset[str] | None = None  # set of attack ids on spoof rows
    per_attack: int | None = None  # every attack has exactly this many trials
    speakers: int | None = None
    source: str = ""


def _A(lo: int, hi: int) -> frozenset[str]:  # noqa: N802 (reads like the attack ids it makes)
    """Attack ids ``A{lo:02d}`` .. ``A{hi:02d}``."""
    return frozenset(f"A{i:02d}" for i in range(lo, hi + 1))


OFFICIAL: dict[tuple[str, str], Reference] = {
    ("asvspoof2019_la", "train"): Reference(25_380, 2_580, 22_800, _A(1, 6), 3_800, 20, "Wang et al. 2020"),
    ("asvspoof2019_la", "dev"): Reference(24_844, 2_548, 22_296, _A(1, 6), source="Wang et al. 2020"),
    ("asvspoof2019_la", "eval"): Reference(71_237, 7_355, 63_882, _A(7, 19), source="Wang et al. 2020"),
    ("in_the_wild", "-"): Reference(31_779, 19_963, 11_816, speakers=58, source="Müller et al. 2022"),
    ("asvspoof2021_la", "eval"): Reference(181_566, attacks=_A(7, 19), source="Liu et al. 2023"),
    ("asvspoof2021_df", "eval"): Reference(611_829, source="Liu et al. 2023"),
}


@dataclass
class Row:
    """Counts the converter produced for one corpus/subset, and how they compare with ``OFFICIAL``."""

    corpus: str
    subset: str
    total: int
    bonafide: int
    spoof: int
    attacks: dict[str, int]
    speakers: int | None
    mismatches: list[str] = field(default_factory=list)
    checked: bool = False
    note: str = ""

    @property
    def status(self) -> str:
        if self.mismatches:
            return "MISMATCH: " + "; ".join(self.mismatches)
        return "OK" if self.checked else "counted (no reference)"


def summarise(corpus: str, df: pd.DataFrame, note: str = "") -> list[Row]:
    """One :class:`Row` per subset of a built manifest, compared with :data:`OFFICIAL` where it has one."""
    rows = []
    subsets = df["subset"].fillna("-") if "subset" in df.columns else pd.Series("-", index=df.index)
    for sub, part in df.groupby(subsets, sort=False):
        spoof = part[part["label"] == "spoof"]
        attacks = spoof["attack"].dropna().value_counts().sort_index()
        speakers = int(part["speaker"].nunique()) if "speaker" in part.columns else None
        row = Row(
            corpus,
            str(sub),
            len(part),
            int((part["label"] == "bonafide").sum()),
            len(spoof),
            {str(k): int(v) for k, v in attacks.items()},
            speakers,
            note=note,
        )
        ref = OFFICIAL.get((corpus, str(sub)))
        if ref is not None:
            row.checked = True
            row.mismatches = compare(row, ref)
        rows.append(row)
    return rows


def compare(row: Row, ref: Reference) -> list[str]:
    """Human-readable differences between produced counts and published ones (empty = all match)."""
    out = []
    for name in ("total", "bonafide", "spoof", "speakers"):
        want = getattr(ref, name)
        if want is not None and getattr(row, name) != want:
            out.append(f"{name} {getattr(row, name):,} != {want:,}")
    if ref.attacks is not None and set(row.attacks) != set(ref.attacks):
        got, want = set(row.attacks), set(ref.attacks)
        out.append(f"attacks extra {sorted(got - want)} missing {sorted(want - got)}")
    if ref.per_attack is not None:
        bad = {a: n for a, n in row.attacks.items() if n != ref.per_attack}
        if bad:
            out.append(f"per-attack counts {bad} != {ref.per_attack:,}")
    return out


# ---- finding and building each corpus ---------------------------------------------------------------------


def _asv19(folder: Path) -> tuple[Path, dict] | None:
    base = folder / "asvspoof2019_la"
    for protos in (base / "LA" / "ASVspoof2019_LA_cm_protocols", base / "ASVspoof2019_LA_cm_protocols"):
        subs = [s for s, f in ASV19_FILES.items() if (protos / f).is_file()]
        if subs:
            return base, {"subset": subs}
    return None


def _asv21(track: str) -> Callable[[Path], tuple[Path, dict] | None]:
    def find(folder: Path) -> tuple[Path, dict] | None:
        base = folder / f"asvspoof2021_{track.lower()}"
        keys = [
            base / "keys" / track / "CM" / "trial_metadata.txt",
            base / f"{track}-keys-full" / "keys" / track / "CM" / "trial_metadata.txt",
        ]
        return (base, {}) if any(k.is_file() for k in keys) else None

    return find


def _itw(folder: Path) -> tuple[Path, dict] | None:
    base = folder / "in_the_wild"
    found = (base / "meta.csv").is_file() or (base / "release_in_the_wild" / "meta.csv").is_file()
    return (base, {}) if found else None


def _asv5(folder: Path) -> tuple[Path, dict] | None:
    base = folder / "asvspoof5"
    names = {
        "train": "ASVspoof5.train.tsv",
        "dev": "ASVspoof5.dev.track_1.tsv",
        "eval": "ASVspoof5.eval.track_1.tsv",
    }
    for protos in (base, base / "ASVspoof5_protocols"):
        subs = [s for s, f in names.items() if (protos / f).is_file()]
        if subs:
            return base, {"subset": subs}
    return None


def _spoofceleb(folder: Path) -> tuple[Path, dict] | None:
    base = folder / "spoofceleb"
    names = {"train": "train.csv", "dev": "development.csv", "eval": "evaluation.csv"}
    subs = [s for s, f in names.items() if (base / "metadata" / f).is_file()]
    return (base, {"subset": subs}) if subs else None


def _add2022(folder: Path) -> tuple[Path, dict] | None:
    base = folder / "add2022"
    return (base, {}) if any((base / "label").glob("*_label.txt")) else None


FINDERS: dict[str, Callable[[Path], tuple[Path, dict] | None]] = {
    "asvspoof2019_la": _asv19,
    "asvspoof2021_la": _asv21("LA"),
    "asvspoof2021_df": _asv21("DF"),
    "in_the_wild": _itw,
    "asvspoof5": _asv5,
    "spoofceleb": _spoofceleb,
    "add2022": _add2022,
}


def build(corpus: str, root: Path, opts: dict, scratch: Path) -> tuple[pd.DataFrame, str]:
    """``build_manifest`` on a protocol-only folder (converters need no audio); returns (manifest, note)."""
    return build_manifest(corpus, root, **opts), ""


def verify(folder: str | Path) -> list[Row]:
    """Build every corpus found under ``folder`` and summarise it (layout: see the module docstring)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ManifestError(f"not a folder: {folder}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="sharpscope-verify-") as tmp:
        for corpus, find in FINDERS.items():
            found = find(folder)
            if found is None:
                continue
            root, opts = found
            df, note = build(corpus, root, opts, Path(tmp))
            rows.extend(summarise(corpus, df, note))
    return rows


def _attacks_text(attacks: dict[str, int]) -> str:
    if not attacks:
        return "-"
    counts = set(attacks.values())
    names = sorted(attacks)
    if len(counts) == 1 and len(names) > 2:
        return f"{names[0]}..{names[-1]} ({len(names)}) x {counts.pop():,}"
    return " ".join(f"{a}:{n:,}" for a, n in attacks.items())


def format_table(rows: Sequence[Row]) -> str:
    """Fixed-width table of the rows, reference figures included where published."""
    head = ["corpus", "subset", "trials", "bona fide", "spoof", "speakers", "attacks (spoof rows)", "status"]
    body = []
    for r in rows:
        ref = OFFICIAL.get((r.corpus, r.subset))
        want = f"  [ref {ref.total:,} / {ref.bonafide or 0:,} / {ref.spoof or 0:,}]" if ref else ""
        status = r.status + want + (f"  ({r.note})" if r.note else "")
        speakers = "-" if r.speakers is None else f"{r.speakers:,}"
        counts = [f"{r.total:,}", f"{r.bonafide:,}", f"{r.spoof:,}", speakers]
        body.append([r.corpus, r.subset, *counts, _attacks_text(r.attacks), status])
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for cells in [head, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + "  " + cells[-1])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="folder of real protocol files, one sub-folder per corpus (see --help)")
    args = ap.parse_args(argv)
    try:
        rows = verify(args.folder)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(
            f"no corpus found under {args.folder}; expected sub-folders {', '.join(FINDERS)}", file=sys.stderr
        )
        return 2
    print(format_table(rows))
    return 1 if any(r.mismatches for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
