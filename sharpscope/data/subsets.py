"""Cumulative subset studies ("more unseen attacks / codecs").

Huang et al. (2025) measure sharpness on test sets that contain progressively more unseen attacks or codecs.
Drawn naively, each step changes the class balance and the sample size along with the shift, so the trend
confounds shift with size.  Here every step is

* **ordered** -- groups (values of ``by``, e.g. attack ids) enter in an explicit order, sorted order, or the
  order of a measured shift given as ``{group: shift}``;
* **class-balanced and size-controlled** -- a fixed bona fide set of ``n_bonafide`` utterances in every
  step, and ``n_per_group`` spoof utterances per group (``mode="nested"``: step k holds k·n_per_group spoofs
  and contains step k−1 exactly), or a fixed total ``n_spoof`` split evenly over the first k groups
  (``mode="fixed-size"``: constant size; each group's utterances are prefixes of one seeded permutation, so
  consecutive steps overlap as much as possible);
* **seeded**, and resolved once into explicit utterance-id lists that are stored with the results, so a result
  can never be paired with a different draw.

When ``by`` also varies over bona fide rows (e.g. ``codec``), bona fide utterances are drawn from the same
groups as the spoofs (``n_bonafide`` split over the groups of the step), otherwise the bona fide set is fixed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import SpecError

_NO_GROUP = {"", "-", "nan", "none", "bonafide", "bona fide"}


@dataclass(frozen=True)
class SubsetStep:
    """One step of a cumulative subset: its label, groups and the selected utterance ids (manifest order)."""

    name: str
    step: int
    groups: tuple[str, ...]
    utt_ids: tuple[str, ...]
    n_bonafide: int
    n_spoof: int

    @property
    def label(self) -> str:
        return f"{self.name}:{self.step}"

    @property
    def ids_hash(self) -> str:
        return hashlib.sha256("\n".join(self.utt_ids).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "step": self.step,
            "groups": list(self.groups),
            "utt_ids": list(self.utt_ids),
            "n_bonafide": self.n_bonafide,
            "n_spoof": self.n_spoof,
            "ids_hash": self.ids_hash,
        }


def _group_values(df: pd.DataFrame, by: str) -> pd.Series:
    if by not in df.columns:
        raise SpecError(f"subset column {by!r} is not in the manifest (columns: {', '.join(df.columns)})")
    return df[by].astype(str)


def _order_groups(groups: Sequence[str], order: Sequence[str] | str | Mapping[str, float]) -> list[str]:
    present = list(dict.fromkeys(groups))
    if isinstance(order, Mapping):
        missing = [g for g in present if g not in order]
        if missing:
            raise SpecError(f"subset order by shift lacks groups {missing[:5]}; give a shift for every group")
        return sorted(present, key=lambda g: (order[g], g))
    if isinstance(order, str):
        if order != "sorted":
            raise SpecError(
                f"subset order {order!r}: use 'sorted', a list of groups, or a mapping group -> shift"
            )
        return sorted(present)
    unknown = [g for g in order if g not in present]
    if unknown:
        raise SpecError(f"subset order names groups not in the test set: {unknown[:5]}")
    return list(order)


def _take(rng_perm: dict[str, np.ndarray], g: str, n: int, name: str) -> np.ndarray:
    perm = rng_perm[g]
    if len(perm) < n:
        raise SpecError(
            f"subset {name!r}: group {g!r} has {len(perm)} utterances, {n} requested; lower the count"
        )
    return perm[:n]


def cumulative_subsets(
    df: pd.DataFrame,
    *,
    name: str,
    by: str,
    order: Sequence[str] | str | Mapping[str, float] = "sorted",
    mode: str = "nested",
    n_bonafide: int = 50,
    n_per_group: int = 25,
    n_spoof: int | None = None,
    seed: int = 0,
) -> list[SubsetStep]:
    """Resolve a cumulative subset study on manifest ``df`` into explicit steps (see module docstring)."""
    if mode not in ("nested", "fixed-size"):
        raise SpecError(f"subset {name!r}: mode must be nested or fixed-size, not {mode!r}")
    vals = _group_values(df, by)
    is_bona = (df["label"] == "bonafide").to_numpy()
    spoof_groups = vals[~is_bona]
    bona_grouped = not vals[is_bona].str.lower().isin(_NO_GROUP).all() and is_bona.any()
    groups = _order_groups(spoof_groups.tolist(), order)
    rng = np.random.default_rng(seed)
    pos = np.arange(len(df))

    spoof_perm = {g: rng.permutation(pos[(~is_bona) & (vals == g).to_numpy()]) for g in sorted(set(groups))}
    bona_perm_all = rng.permutation(pos[is_bona])
    bona_perm = {g: rng.permutation(pos[is_bona & (vals == g).to_numpy()]) for g in sorted(set(groups))}

    if not bona_grouped and len(bona_perm_all) < n_bonafide:
        raise SpecError(
            f"subset {name!r}: only {len(bona_perm_all)} bona fide utterances, {n_bonafide} requested"
        )
    ids = df["utt_id"].astype(str).to_numpy()
    steps: list[SubsetStep] = []
    for k in range(1, len(groups) + 1):
        active = groups[:k]
        if mode == "nested":
            sp = np.concatenate([_take(spoof_perm, g, n_per_group, name) for g in active])
        else:
            total = n_spoof if n_spoof is not None else n_per_group * len(groups)
            quota = _split(total, k)
            sp = np.concatenate([_take(spoof_perm, g, q, name) for g, q in zip(active, quota, strict=True)])
        if bona_grouped:
            quota = [n_bonafide // len(groups)] * k if mode == "nested" else _split(n_bonafide, k)
            bf = np.concatenate([_take(bona_perm, g, q, name) for g, q in zip(active, quota, strict=True)])
        else:
            bf = bona_perm_all[:n_bonafide]
        sel = np.sort(np.concatenate([bf, sp]))
        steps.append(
            SubsetStep(
                name=name,
                step=k,
                groups=tuple(active),
                utt_ids=tuple(ids[sel]),
                n_bonafide=len(bf),
                n_spoof=len(sp),
            )
        )
    return steps


def _split(total: int, k: int) -> list[int]:
    base, rem = divmod(total, k)
    return [base + (1 if i < rem else 0) for i in range(k)]


def select(df: pd.DataFrame, step: SubsetStep) -> pd.DataFrame:
    """Rows of ``df`` in ``step`` (manifest order); raises if an id is missing (a different manifest)."""
    sub = df[df["utt_id"].astype(str).isin(set(step.utt_ids))]
    if len(sub) != len(step.utt_ids):
        raise SpecError(
            f"subset {step.label}: {len(step.utt_ids) - len(sub)} stored utterance ids are not in the "
            "manifest; it changed since the subset was drawn — rerun with --force"
        )
    return sub
