"""Cumulative subsets: nested, class-balanced, size-controlled, seeded, explicit ids."""

from __future__ import annotations

import pandas as pd
import pytest

from sharpscope.data.subsets import cumulative_subsets, select
from sharpscope.errors import SpecError


def manifest(n_bona=20, per_attack=10, attacks=("A1", "A2", "A3"), codec_on_bona=False) -> pd.DataFrame:
    rows = [
        {"utt_id": f"b{i}", "label": "bonafide", "attack": "-", "codec": ["c1", "c2", "c3"][i % 3]}
        for i in range(n_bona)
    ]
    for a in attacks:
        rows += [
            {"utt_id": f"{a}_{i}", "label": "spoof", "attack": a, "codec": ["c1", "c2", "c3"][i % 3]}
            for i in range(per_attack)
        ]
    return pd.DataFrame(rows)


def test_nested_steps_add_one_group_each():
    df = manifest()
    steps = cumulative_subsets(
        df, name="atk", by="attack", order=["A3", "A1", "A2"], n_bonafide=8, n_per_group=5
    )
    assert [s.groups for s in steps] == [("A3",), ("A3", "A1"), ("A3", "A1", "A2")]
    assert [(s.n_bonafide, s.n_spoof) for s in steps] == [(8, 5), (8, 10), (8, 15)]
    for a, b in zip(steps, steps[1:], strict=False):
        assert set(a.utt_ids) < set(b.utt_ids)
    bona = [{u for u in s.utt_ids if u.startswith("b")} for s in steps]
    assert bona[0] == bona[1] == bona[2]  # the same bona fide set in every step
    last = select(df, steps[-1])
    assert last["attack"].value_counts().to_dict() == {"A3": 5, "A1": 5, "A2": 5, "-": 8}
    assert steps[0].label == "atk:1" and len(steps[0].ids_hash) == 16


def test_fixed_size_mode_keeps_the_size_constant():
    steps = cumulative_subsets(manifest(), name="fs", by="attack", mode="fixed-size", n_bonafide=6, n_spoof=9)
    assert [s.n_spoof for s in steps] == [9, 9, 9]
    assert [len(s.utt_ids) for s in steps] == [15, 15, 15]
    counts = select(manifest(), steps[1])["attack"].value_counts()
    assert counts["A1"] == 5 and counts["A2"] == 4


def test_seeded_and_seed_sensitive():
    a = cumulative_subsets(manifest(), name="s", by="attack", n_bonafide=5, n_per_group=3, seed=1)
    b = cumulative_subsets(manifest(), name="s", by="attack", n_bonafide=5, n_per_group=3, seed=1)
    c = cumulative_subsets(manifest(), name="s", by="attack", n_bonafide=5, n_per_group=3, seed=2)
    assert [s.utt_ids for s in a] == [s.utt_ids for s in b]
    assert [s.utt_ids for s in a] != [s.utt_ids for s in c]


def test_grouping_that_covers_bona_fide_draws_both_classes_per_group():
    steps = cumulative_subsets(manifest(), name="cod", by="codec", n_bonafide=6, n_per_group=3)
    first = select(manifest(), steps[0])
    assert set(first["codec"]) == {"c1"}
    assert (first["label"] == "bonafide").sum() == 2  # n_bonafide split over the 3 codec groups


def test_order_by_measured_shift():
    steps = cumulative_subsets(
        manifest(),
        name="sh",
        by="attack",
        order={"A1": 0.3, "A2": 0.1, "A3": 0.2},
        n_bonafide=2,
        n_per_group=1,
    )
    assert steps[-1].groups == ("A2", "A3", "A1")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"by": "speaker"}, "not in the manifest"),
        ({"n_per_group": 50}, "has 10 utterances, 50 requested"),
        ({"n_bonafide": 99}, "only 20 bona fide"),
        ({"order": ["A9"]}, "not in the test set"),
        ({"mode": "grow"}, "mode must be"),
    ],
)
def test_bad_requests_are_clear_errors(kwargs, needle):
    args = {"name": "x", "by": "attack", "n_bonafide": 4, "n_per_group": 2, **kwargs}
    with pytest.raises(SpecError, match=needle):
        cumulative_subsets(manifest(), **args)


def test_select_refuses_a_changed_manifest():
    steps = cumulative_subsets(manifest(), name="x", by="attack", n_bonafide=4, n_per_group=2)
    with pytest.raises(SpecError, match="changed since the subset was drawn"):
        select(manifest().iloc[5:], steps[-1])
