"""Study specs: which checkpoints, test sets, subsets and measures a sweep covers.

A study is a YAML file (see ``analyses/demo.yaml``)::

    name: demo
    seeds: [0]
    scoring: {batch_size: 32, crop: first, score: bonafide-logit}
    checkpoints:
      - path: zoo/*/best.safetensors      # a path or a glob; relative to the spec file
        arch: aasist
        model_config: {}                  # optional overrides for build_model
        meta: {optimizer: SAM}            # optional; merged over a sidecar <stem>.json / <stem>.yaml
    testsets:
      - {name: in-domain, manifest: data_manifests/demo_eval.csv, in_domain: true}
      - {name: codec, manifest: data_manifests/demo_codec.csv}
    subsets:                              # optional cumulative subset studies (sharpscope.data.subsets)
      - {name: attacks, testset: unseen, by: attack, n_bonafide: 40, n_per_group: 20}
    measures:
      - {name: m-sharpness, rho: [0.01, 0.05], adaptive: true, loss: [weighted-ce, kl-to-clean]}

Validation reports every problem at once, one line each, naming the key (``checkpoints[1].arch: ...``).
List values of ``rho``, ``loss`` and ``seeds`` expand into several cells.
"""

from __future__ import annotations

import glob
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError
from ..provenance import config_hash
from ..specio import read_yaml

SCORING_DEFAULTS = {"batch_size": 32, "crop": "first", "score": "bonafide-logit", "nb_samp": 64_600}
_TOP_KEYS = {
    "name",
    "description",
    "seeds",
    "scoring",
    "checkpoints",
    "testsets",
    "subsets",
    "measures",
    "trust_checkpoint",
    "device",
}
_EXPANDING = ("rho", "loss")


@dataclass(frozen=True)
class CheckpointSpec:
    path: str
    arch: str
    model_config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class TestsetSpec:
    name: str
    manifest: str
    in_domain: bool = False


@dataclass(frozen=True)
class SubsetSpec:
    name: str
    testset: str
    by: str
    order: tuple[str, ...] | str = "sorted"
    mode: str = "nested"
    n_bonafide: int = 50
    n_per_group: int = 25
    n_spoof: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class MeasureSpec:
    """One measure at one setting (lists already expanded)."""

    name: str
    settings: dict[str, Any]
    loss: str = "weighted-ce"

    @property
    def rho(self) -> float | None:
        r = self.settings.get("rho")
        return None if r is None else float(r)

    @property
    def key(self) -> str:
        return config_hash({"name": self.name, "settings": self.settings, "loss": self.loss})


@dataclass
class Study:
    name: str
    path: str
    raw: dict[str, Any]
    checkpoints: list[CheckpointSpec]
    testsets: list[TestsetSpec]
    subsets: list[SubsetSpec]
    measures: list[MeasureSpec]
    seeds: list[int]
    scoring: dict[str, Any]
    trust_checkpoint: bool = False
    device: str = "cpu"

    @property
    def spec_hash(self) -> str:
        return config_hash(self.raw)


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _read_sidecar(ckpt: Path) -> dict[str, Any]:
    """Metadata sidecar next to a checkpoint: <stem>.json / <stem>.yaml, or <dir>/sharpscope.json."""
    candidates = [ckpt.with_suffix(".json"), ckpt.with_suffix(".yaml"), ckpt.with_suffix(".yml")]
    if ckpt.is_dir():
        candidates = [
            ckpt.with_name(ckpt.name + ".json"),
            ckpt / "sharpscope.json",
            ckpt / "sharpscope_meta.json",
            ckpt / "meta.json",
            ckpt / "meta.yaml",
        ]
    for c in candidates:
        if c.is_file() and c != ckpt:
            try:
                data = json.loads(c.read_text()) if c.suffix == ".json" else yaml.safe_load(c.read_text())
            except (json.JSONDecodeError, yaml.YAMLError) as exc:
                raise SpecError(f"checkpoint sidecar {c} is not valid {c.suffix[1:]}: {exc}") from None
            if not isinstance(data, dict):
                raise SpecError(f"checkpoint sidecar {c} must hold a mapping")
            return data
    return {}


def _flat_meta(sidecar: dict[str, Any]) -> dict[str, Any]:
    """Scalar metadata from a sidecar (nested dicts flattened with '_'), for the results table."""
    out: dict[str, Any] = {}
    for k, v in sidecar.items():
        if isinstance(v, dict):
            for k2, v2 in _flat_meta(v).items():
                out[f"{k}_{k2}"] = v2
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
    return out


def checkpoint_meta(ckpt: Path) -> dict[str, Any]:
    """Scalar metadata of a checkpoint for the results table.

    Sidecars written by sharpscope (``format: sharpscope-checkpoint``) keep training metadata under ``meta``
    (its ``provenance`` block is left out of the table); any other JSON/YAML sidecar is taken as metadata.
    """
    side = _read_sidecar(ckpt)
    if side.get("format") == "sharpscope-checkpoint":
        # the full config, model config and provenance are in the sidecar; the table keeps the scalars
        side = {
            k: v
            for k, v in (side.get("meta") or {}).items()
            if k not in ("provenance", "config", "model_cfg")
        }
    return _flat_meta(side)


def load_study(path: str | Path) -> Study:
    """Read and validate a study spec; raise :class:`SpecError` listing every problem, one per line."""
    p = Path(path)
    raw = read_yaml(p, "study spec")
    return parse_study(raw, base=p.parent, path=str(p))


def parse_study(raw: Any, base: Path = Path("."), path: str = "<spec>") -> Study:
    from ..models.registry import ARCHS
    from ..sharpness.base import LOSSES

    problems: list[str] = []
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the study spec must be a mapping with checkpoints, testsets and measures")
    for k in raw:
        if k not in _TOP_KEYS:
            problems.append(f"{k}: unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")

    scoring = dict(SCORING_DEFAULTS)
    sc = raw.get("scoring") or {}
    if not isinstance(sc, dict):
        problems.append("scoring: must be a mapping")
        sc = {}
    for k, v in sc.items():
        if k not in SCORING_DEFAULTS:
            problems.append(f"scoring.{k}: unknown key (allowed: {', '.join(SCORING_DEFAULTS)})")
        scoring[k] = v
    if scoring["crop"] not in ("first", "full"):
        problems.append(f"scoring.crop: {scoring['crop']!r} is not first or full")
    if not isinstance(scoring["batch_size"], int) or scoring["batch_size"] < 1:
        problems.append("scoring.batch_size: must be a positive integer")

    seeds = raw.get("seeds", [0])
    seeds = _as_list(seeds)
    if not all(isinstance(s, int) for s in seeds):
        problems.append("seeds: must be integers")

    checkpoints: list[CheckpointSpec] = []
    ck_raw = raw.get("checkpoints")
    if not ck_raw:
        problems.append("checkpoints: at least one checkpoint is required")
    for i, c in enumerate(_as_list(ck_raw or [])):
        where = f"checkpoints[{i}]"
        if not isinstance(c, dict) or "path" not in c:
            problems.append(f"{where}: needs at least 'path' and 'arch'")
            continue
        arch = c.get("arch")
        if arch not in ARCHS:
            problems.append(f"{where}.arch: {arch!r} is not one of {', '.join(ARCHS)}")
        extra = set(c) - {"path", "arch", "model_config", "meta", "name"}
        if extra:
            problems.append(f"{where}: unknown keys {sorted(extra)}")
        pattern = str(c["path"])
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        matches = sorted(glob.glob(full)) if any(ch in pattern for ch in "*?[") else [full]
        matches = [m for m in matches if Path(m).exists()]
        if not matches:
            problems.append(f"{where}.path: nothing found at {full}")
        for m in matches:
            meta = checkpoint_meta(Path(m))
            meta.update(c.get("meta") or {})
            model_cfg = dict(c.get("model_config") or {})
            name = c.get("name") or _checkpoint_name(Path(m), base)
            checkpoints.append(
                CheckpointSpec(
                    path=m,
                    arch=str(arch),
                    model_config=model_cfg,
                    meta=meta,
                    name=name if len(matches) == 1 or not c.get("name") else f"{c['name']}/{Path(m).name}",
                )
            )

    testsets: list[TestsetSpec] = []
    ts_raw = raw.get("testsets")
    if not ts_raw:
        problems.append("testsets: at least one test set is required")
    names: set[str] = set()
    for i, t in enumerate(_as_list(ts_raw or [])):
        where = f"testsets[{i}]"
        if not isinstance(t, dict) or "name" not in t or "manifest" not in t:
            problems.append(f"{where}: needs 'name' and 'manifest'")
            continue
        extra = set(t) - {"name", "manifest", "in_domain"}
        if extra:
            problems.append(f"{where}: unknown keys {sorted(extra)}")
        if t["name"] in names:
            problems.append(f"{where}.name: duplicate test set name {t['name']!r}")
        names.add(t["name"])
        man = str(t["manifest"])
        man_full = man if Path(man).is_absolute() else str(base / man)
        if not Path(man_full).is_file():
            problems.append(
                f"{where}.manifest: file not found: {man_full} (build it with `sharpscope manifest build`)"
            )
        testsets.append(
            TestsetSpec(name=str(t["name"]), manifest=man_full, in_domain=bool(t.get("in_domain", False)))
        )
    if testsets and sum(t.in_domain for t in testsets) > 1:
        problems.append("testsets: at most one test set can be marked in_domain")

    subsets: list[SubsetSpec] = []
    for i, s in enumerate(_as_list(raw.get("subsets") or [])):
        where = f"subsets[{i}]"
        if not isinstance(s, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        missing = [k for k in ("name", "testset", "by") if k not in s]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        if s["testset"] not in names:
            problems.append(f"{where}.testset: {s['testset']!r} is not a test set name")
        allowed = {"name", "testset", "by", "order", "mode", "n_bonafide", "n_per_group", "n_spoof", "seed"}
        if set(s) - allowed:
            problems.append(f"{where}: unknown keys {sorted(set(s) - allowed)}")
        if s.get("mode", "nested") not in ("nested", "fixed-size"):
            problems.append(f"{where}.mode: must be nested or fixed-size")
        order = s.get("order", "sorted")
        subsets.append(
            SubsetSpec(
                name=str(s["name"]),
                testset=str(s["testset"]),
                by=str(s["by"]),
                order=tuple(str(o) for o in order) if isinstance(order, list) else str(order),
                mode=str(s.get("mode", "nested")),
                n_bonafide=int(s.get("n_bonafide", 50)),
                n_per_group=int(s.get("n_per_group", 25)),
                n_spoof=None if s.get("n_spoof") is None else int(s["n_spoof"]),
                seed=int(s.get("seed", 0)),
            )
        )

    measures: list[MeasureSpec] = []
    for i, m in enumerate(_as_list(raw.get("measures") or [])):
        where = f"measures[{i}]"
        if isinstance(m, str):
            m = {"name": m}
        if not isinstance(m, dict) or "name" not in m:
            problems.append(f"{where}: needs 'name'")
            continue
        problems.extend(f"{where}.{msg}" for msg in _check_measure(m))
        base_settings = {k: v for k, v in m.items() if k not in ("name", *_EXPANDING)}
        rhos = _as_list(m["rho"]) if "rho" in m else [None]
        losses = _as_list(m.get("loss", "weighted-ce"))
        for lo in losses:
            if lo not in LOSSES:
                problems.append(f"{where}.loss: {lo!r} is not one of {', '.join(LOSSES)}")
        for rho, lo in itertools.product(rhos, losses):
            settings = dict(base_settings)
            if rho is not None:
                settings["rho"] = float(rho)
            measures.append(MeasureSpec(name=str(m["name"]), settings=settings, loss=str(lo)))

    if problems:
        raise SpecError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  {q}" for q in problems))
    return Study(
        name=str(raw.get("name") or Path(path).stem),
        path=path,
        raw=raw,
        checkpoints=checkpoints,
        testsets=testsets,
        subsets=subsets,
        measures=measures,
        seeds=[int(s) for s in seeds],
        scoring=scoring,
        trust_checkpoint=bool(raw.get("trust_checkpoint", False)),
        device=str(raw.get("device", "cpu")),
    )


def _checkpoint_name(p: Path, base: Path) -> str:
    try:
        rel = p.resolve().relative_to(base.resolve())
    except ValueError:
        rel = Path(p.parent.name) / p.name
    return str(rel)


def _check_measure(m: dict[str, Any]) -> list[str]:
    """Problems with a measure entry: unknown name or settings the estimator does not take."""
    try:
        from ..sharpness.registry import MEASURES, measure_settings
    except ImportError:  # registry not available: only the name can be checked later
        return []
    if m["name"] not in MEASURES:
        return [f"name: {m['name']!r} is not one of {', '.join(MEASURES)}"]
    try:
        fields = measure_settings(m["name"])
    except Exception:  # noqa: BLE001 - estimator module missing: report at run time
        return []
    unknown = sorted(set(m) - {"name", "loss", "order", *fields})
    return [f"{k}: not a setting of {m['name']} (settings: {', '.join(sorted(fields))})" for k in unknown]
