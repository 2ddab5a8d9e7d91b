"""Published utterance counts of public corpora, and a check of a built manifest against them.

A manifest built from official protocol files (``sharpscope manifest build``) should reproduce the counts the
corpus paper publishes; a missing protocol line, a truncated download or the wrong ``--subset`` shows up here
as one line naming the partition, the class or attack, the published count and the count found.

ASVspoof 2019 LA (Wang et al. 2020, "ASVspoof 2019: a large-scale public database of synthesized, converted
and replayed speech", Computer Speech & Language 64, Table 1; also the ASVspoof 2019 evaluation plan):

========  =========  ======  ==========================================
partition bona fide  spoof   attacks
========  =========  ======  ==========================================
train     2,580      22,800  A01–A06, 3,800 each
dev       2,548      22,296  A01–A06, 3,716 each
eval      7,355      63,882  A07–A19, 4,914 each (A16 = A04, A19 = A06)
========  =========  ======  ==========================================

Run as ``python -m sharpscope.data.published KIND MANIFEST [MANIFEST ...]`` (exit status 1 on a mismatch).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import ManifestError

# kind -> subset -> {"bonafide": n, "spoof": n, "attacks": {attack: n}}
PUBLISHED: dict[str, dict[str, dict]] = {
    "asvspoof2019_la": {
        "train": {"bonafide": 2580, "spoof": 22800, "attacks": {f"A{i:02d}": 3800 for i in range(1, 7)}},
        "dev": {"bonafide": 2548, "spoof": 22296, "attacks": {f"A{i:02d}": 3716 for i in range(1, 7)}},
        "eval": {"bonafide": 7355, "spoof": 63882, "attacks": {f"A{i:02d}": 4914 for i in range(7, 20)}},
    },
}


def count_problems(df: pd.DataFrame, kind: str, where: str = "manifest") -> list[str]:
    """Differences between a manifest's counts and the published ones, one line each (empty: all agree).

    Every ``subset`` present in the manifest is checked: bona fide and spoof totals and the per-attack spoof
    counts.  A subset the paper does not list is a problem too (it would mean a wrong ``--subset``)."""
    if kind not in PUBLISHED:
        raise ManifestError(f"no published counts for {kind!r} (known: {', '.join(sorted(PUBLISHED))})")
    for col in ("subset", "label", "attack"):
        if col not in df.columns:
            raise ManifestError(
                f"{where}: no {col!r} column; build it with `sharpscope manifest build {kind}`"
            )
    pub = PUBLISHED[kind]
    out: list[str] = []
    for sub, g in df.groupby(df["subset"].astype(str), sort=True):
        if sub not in pub:
            out.append(f"{where}: subset {sub!r} has no published counts (published: {', '.join(pub)})")
            continue
        want = pub[sub]
        labels = g["label"].astype(str)
        for cls in ("bonafide", "spoof"):
            n = int((labels == cls).sum())
            if n != want[cls]:
                out.append(f"{where}: {kind} {sub} {cls}: {n} rows, published {want[cls]}")
        found = g.loc[labels == "spoof", "attack"].astype(str).value_counts()
        for att, n_pub in want["attacks"].items():
            n = int(found.get(att, 0))
            if n != n_pub:
                out.append(f"{where}: {kind} {sub} attack {att}: {n} rows, published {n_pub}")
        extra = sorted(set(found.index) - set(want["attacks"]))
        if extra:
            out.append(f"{where}: {kind} {sub}: attacks {', '.join(extra)} are not in the published protocol")
    return out


def check_counts(paths: Sequence[str | Path], kind: str) -> int:
    """Check manifests against the published counts; print one line per problem; return the number."""
    from .manifest import read_manifest

    problems: list[str] = []
    for p in paths:
        problems += count_problems(read_manifest(p), kind, where=str(p))
    for line in problems:
        print(line)
    if not problems:
        print(f"{kind}: every count agrees with the published numbers ({len(paths)} manifest(s))")
    return len(problems)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python -m sharpscope.data.published KIND MANIFEST [MANIFEST ...]", file=sys.stderr)
        return 2
    try:
        return 1 if check_counts(args[1:], args[0]) else 0
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover - command line
    sys.exit(main())
