"""data_manifests/: the ASVspoof 2019 LA recipe's count check, on generated protocol files.

The official protocol files are not redistributable here, so the test writes files in their format
(``SPEAKER UTT - ATTACK KEY``) with exactly the published counts, builds the manifest with the real converter
(``sharpscope manifest build``'s code path) and checks it; then removes / relabels lines and expects the
check to name each difference.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sharpscope.data.converters import build_manifest
from sharpscope.data.published import PUBLISHED, count_problems, main
from sharpscope.errors import ManifestError

PROTO = {"train": "ASVspoof2019.LA.cm.train.trn.txt", "dev": "ASVspoof2019.LA.cm.dev.trl.txt"}


def write_protocol(root: Path, subset: str, bona: int, per_attack: dict[str, int]) -> Path:
    d = root / "LA" / "ASVspoof2019_LA_cm_protocols"
    d.mkdir(parents=True, exist_ok=True)
    lines = [f"LA_{i % 20:04d} LA_{subset[0].upper()}_{i:07d} - - bonafide" for i in range(bona)]
    k = bona
    for att, n in per_attack.items():
        for _ in range(n):
            lines.append(f"LA_{k % 20:04d} LA_{subset[0].upper()}_{k:07d} - {att} spoof")
            k += 1
    p = d / PROTO[subset]
    p.write_text("\n".join(lines) + "\n")
    return p


def test_published_totals_are_the_papers():
    # Wang et al. 2020, Table 1: bona fide / spoof per partition; per-attack counts sum to the spoof total
    pub = PUBLISHED["asvspoof2019_la"]
    assert [(pub[s]["bonafide"], pub[s]["spoof"]) for s in ("train", "dev", "eval")] == [
        (2580, 22800),
        (2548, 22296),
        (7355, 63882),
    ]
    for s in ("train", "dev", "eval"):
        assert sum(pub[s]["attacks"].values()) == pub[s]["spoof"]


def test_count_check_on_generated_protocol(tmp_path):
    pub = PUBLISHED["asvspoof2019_la"]["train"]
    write_protocol(tmp_path, "train", pub["bonafide"], pub["attacks"])
    df = build_manifest("asvspoof2019_la", tmp_path, subset=["train"])
    assert count_problems(df, "asvspoof2019_la") == []
    man = tmp_path / "train.csv"
    df.to_csv(man, index=False)
    assert main(["asvspoof2019_la", str(man)]) == 0


def test_count_check_names_each_difference(tmp_path):
    pub = PUBLISHED["asvspoof2019_la"]["dev"]
    attacks = dict(pub["attacks"])
    attacks["A03"] -= 1  # one spoof line lost
    attacks["A07"] = 1  # an attack that is not in the dev protocol
    write_protocol(tmp_path, "dev", pub["bonafide"] - 2, attacks)
    df = build_manifest("asvspoof2019_la", tmp_path, subset=["dev"])
    probs = count_problems(df, "asvspoof2019_la", where="dev.csv")
    assert probs == [
        "dev.csv: asvspoof2019_la dev bonafide: 2546 rows, published 2548",
        "dev.csv: asvspoof2019_la dev attack A03: 3715 rows, published 3716",
        "dev.csv: asvspoof2019_la dev: attacks A07 are not in the published protocol",
    ]
    man = tmp_path / "dev.csv"
    df.to_csv(man, index=False)
    assert main(["asvspoof2019_la", str(man)]) == 1


def test_count_check_bad_input_is_one_clear_error():
    with pytest.raises(ManifestError, match="no published counts"):
        count_problems(pd.DataFrame({"subset": [], "label": [], "attack": []}), "nope")
    with pytest.raises(ManifestError, match="no 'attack' column"):
        count_problems(pd.DataFrame({"subset": ["dev"], "label": ["spoof"]}), "asvspoof2019_la")
