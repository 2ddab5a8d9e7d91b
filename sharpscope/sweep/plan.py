"""From a study to a plan of cells.

A **cell** is one (checkpoint, evaluation set) pair, where an evaluation set is a whole test set or one step
of a cumulative subset.  A cell is the unit of work, storage and resumption: it decodes the audio, runs the
one clean pass that yields the scores (and the clean losses), and computes every requested measure for every
seed on the same batches.  Its id is a hash of everything that determines its rows -- checkpoint path, size
and modification time, architecture and model config, manifest content hash, the subset's utterance-id hash,
the scoring settings, the measures and the seeds -- so a changed input gives a new cell instead of a stale
reuse.

Cells are ordered evaluation-set-major, so consecutive cells share the decoded audio of a test set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.subsets import SubsetStep, cumulative_subsets
from ..provenance import config_hash, file_sha256
from .study import CheckpointSpec, MeasureSpec, Study, TestsetSpec


@dataclass(frozen=True)
class EvalSet:
    """A test set or one subset step of it."""

    testset: str
    manifest: str
    in_domain: bool
    manifest_sha256: str
    subset: str = ""  # "" = the whole test set; else "<name>:<step>"
    subset_groups: tuple[str, ...] = ()
    utt_ids: tuple[str, ...] | None = None  # None = all rows
    ids_hash: str = ""


@dataclass
class Cell:
    checkpoint: CheckpointSpec
    evalset: EvalSet
    measures: list[MeasureSpec]
    seeds: list[int]
    scoring: dict[str, Any]
    spec_hash: str
    trust_checkpoint: bool = False
    device: str = "cpu"
    ckpt_stat: tuple[int, int] = (0, 0)
    key: dict[str, Any] = field(default_factory=dict)

    @property
    def cell_id(self) -> str:
        return config_hash(self.key)

    def describe(self) -> str:
        sub = f" [{self.evalset.subset}]" if self.evalset.subset else ""
        return f"{self.checkpoint.name} × {self.evalset.testset}{sub}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Cell:
        ev = dict(d["evalset"])
        ev["subset_groups"] = tuple(ev.get("subset_groups") or ())
        ev["utt_ids"] = None if ev.get("utt_ids") is None else tuple(ev["utt_ids"])
        return Cell(
            checkpoint=CheckpointSpec(**d["checkpoint"]),
            evalset=EvalSet(**ev),
            measures=[MeasureSpec(**m) for m in d["measures"]],
            seeds=list(d["seeds"]),
            scoring=dict(d["scoring"]),
            spec_hash=d["spec_hash"],
            trust_checkpoint=d["trust_checkpoint"],
            device=d["device"],
            ckpt_stat=tuple(d["ckpt_stat"]),
            key=d["key"],
        )


@lru_cache(maxsize=64)
def _manifest_cached(path: str, sha: str) -> pd.DataFrame:
    from ..data.manifest import read_manifest

    return read_manifest(path)


def load_manifest_cached(path: str) -> pd.DataFrame:
    """Manifest read once per process (keyed by content hash, so an edited file is re-read)."""
    return _manifest_cached(path, file_sha256(path))


def _stat(path: str) -> tuple[int, int]:
    p = Path(path)
    if p.is_dir():
        files = [q for q in p.rglob("*") if q.is_file()]
        return sum(q.stat().st_size for q in files), max((q.stat().st_mtime_ns for q in files), default=0)
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def evalsets(study: Study) -> tuple[list[EvalSet], dict[str, list[SubsetStep]]]:
    """Whole test sets followed by every subset step (subset ids resolved here, once)."""
    out: list[EvalSet] = []
    by_name: dict[str, TestsetSpec] = {t.name: t for t in study.testsets}
    shas = {t.name: file_sha256(t.manifest) for t in study.testsets}
    for t in study.testsets:
        out.append(EvalSet(t.name, t.manifest, t.in_domain, shas[t.name]))
    resolved: dict[str, list[SubsetStep]] = {}
    for s in study.subsets:
        t = by_name[s.testset]
        df = load_manifest_cached(t.manifest)
        steps = cumulative_subsets(
            df,
            name=s.name,
            by=s.by,
            order=list(s.order) if isinstance(s.order, tuple) else s.order,
            mode=s.mode,
            n_bonafide=s.n_bonafide,
            n_per_group=s.n_per_group,
            n_spoof=s.n_spoof,
            seed=s.seed,
        )
        resolved[s.name] = steps
        for st in steps:
            out.append(
                EvalSet(
                    t.name,
                    t.manifest,
                    t.in_domain,
                    shas[t.name],
                    st.label,
                    st.groups,
                    st.utt_ids,
                    st.ids_hash,
                )
            )
    return out, resolved


def controls(scoring: dict[str, Any], measure: dict[str, Any]) -> dict[str, Any]:
    from .runner import controls as resolve

    return resolve(scoring, measure)


def plan(study: Study) -> tuple[list[Cell], dict[str, list[SubsetStep]]]:
    """All cells of a study, evaluation-set-major."""
    sets, resolved = evalsets(study)
    stats = {c.path: _stat(c.path) for c in study.checkpoints}
    cells: list[Cell] = []
    for ev in sets:
        for ck in study.checkpoints:
            key = {
                "checkpoint": ck.path,
                "ckpt_stat": list(stats[ck.path]),
                "arch": ck.arch,
                "model_config": ck.model_config,
                "testset": ev.testset,
                "manifest_sha256": ev.manifest_sha256,
                "subset": ev.subset,
                "ids_hash": ev.ids_hash,
                "scoring": study.scoring,
                "controls": [controls(study.scoring, m.settings) for m in study.measures],
                "measures": [m.key for m in study.measures],
                "seeds": study.seeds,
            }
            cells.append(
                Cell(
                    ck,
                    ev,
                    study.measures,
                    study.seeds,
                    study.scoring,
                    study.spec_hash,
                    study.trust_checkpoint,
                    study.device,
                    stats[ck.path],
                    key,
                )
            )
    return cells, resolved
