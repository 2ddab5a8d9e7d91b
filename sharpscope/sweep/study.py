"""Study specs: which checkpoints, test sets, subsets and measures a sweep covers.

A study is a YAML file (see ``analyses/demo.yaml``)::

    name: demo
    seeds: [0]
    scoring: {batch_size: 32, crop: first, score: bonafide-logit}   # optional: precision: bf16 (default fp32)
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

from ..data.audio import check_crop
from ..errors import AudioError, SharpscopeError, SpecError
from ..provenance import config_hash
from ..specio import check_device, check_scope, load_yaml_text, read_yaml, safe_name, type_problem

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
    "budget",  # budgeted study (sharpscope.sweep.budget)
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
    budget: Any = None  # BudgetSpec of a budgeted study (sharpscope.sweep.budget), else None

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
                text = c.read_bytes().decode("utf-8")
                data = json.loads(text) if c.suffix == ".json" else load_yaml_text(text, str(c))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                first = str(exc).splitlines()[0]
                raise SpecError(f"checkpoint sidecar {c} is not valid {c.suffix[1:]}: {first}") from None
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


# Keys the sweep runner reads from ``scoring:`` beyond the defaults (each checked, none defaulted here, so
# a study that does not set them keeps its cell ids).
SCORING_OPTIONAL = ("order", "class_mix", "nonfinite", "pool_arch", "precision")
ORDER_POLICIES = ("manifest", "shuffled", "balanced")
CLASS_MIX = ("dataset", "equal")
NONFINITE = ("error", "drop", "cap")


def _int_problem(v: Any, lo: int | None = None) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int):
        return f"{v!r} must be an integer"
    if lo is not None and v < lo:
        return f"{v!r} must be an integer >= {lo}"
    return None


def _policy_problems(d: dict[str, Any], where: str) -> list[str]:
    """Checks of the batch-composition keys shared by ``scoring:`` and measures."""
    out: list[str] = []
    if "order" in d and d["order"] not in ORDER_POLICIES:
        out.append(f"{where}.order: {d['order']!r} is not one of {', '.join(ORDER_POLICIES)}")
    if "class_mix" in d:
        v = d["class_mix"]
        ok = v in CLASS_MIX or (isinstance(v, float) and 0.0 < v < 1.0)
        if not ok:
            out.append(f"{where}.class_mix: {v!r} is not dataset, equal or a number in (0, 1)")
    if "nonfinite" in d and d["nonfinite"] not in NONFINITE:
        out.append(f"{where}.nonfinite: {d['nonfinite']!r} is not one of {', '.join(NONFINITE)}")
    if "pool_arch" in d and not isinstance(d["pool_arch"], bool):
        out.append(f"{where}.pool_arch: {d['pool_arch']!r} must be true or false (unquoted)")
    return out


def _scoring(raw: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    scoring = dict(SCORING_DEFAULTS)
    sc = raw.get("scoring") or {}
    if not isinstance(sc, dict):
        problems.append("scoring: must be a mapping")
        sc = {}
    allowed = (*SCORING_DEFAULTS, *SCORING_OPTIONAL)
    for k, v in sc.items():
        if k not in allowed:
            problems.append(f"scoring.{k}: unknown key (allowed: {', '.join(allowed)})")
        scoring[k] = v
    try:
        check_crop(str(scoring["crop"]))
    except AudioError as e:
        problems.append(f"scoring.crop: {e}")
    for key in ("batch_size", "nb_samp"):
        why = _int_problem(scoring[key], 1)
        if why:
            problems.append(f"scoring.{key}: {why}")
    try:
        from ..scoring import check_score_type

        if not isinstance(scoring["score"], str):
            problems.append(f"scoring.score: {scoring['score']!r} must be a string")
        else:
            check_score_type(scoring["score"])
    except SharpscopeError as exc:
        problems.append(f"scoring.score: {exc}")
    if "precision" in sc:
        from ..devices import check_precision

        try:
            check_precision(sc["precision"], "scoring.precision")
        except SharpscopeError as exc:
            problems.append(str(exc))
    problems.extend(_policy_problems(sc, "scoring"))
    return scoring


def _name(v: Any, where: str, problems: list[str]) -> str | None:
    try:
        return safe_name(v, where)
    except SpecError as exc:
        problems.append(str(exc))
        return None


def _mapping(v: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        problems.append(f"{where}: {v!r} must be a mapping of names to values")
        return {}
    return dict(v)


def _checkpoints(raw: dict[str, Any], base: Path, problems: list[str]) -> list[CheckpointSpec]:
    from ..models.checkpoints import model_cfg_problems
    from ..models.registry import ARCHS

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
        if not isinstance(arch, str) or arch not in ARCHS:
            problems.append(f"{where}.arch: {arch!r} is not one of {', '.join(ARCHS)}")
        extra = set(c) - {"path", "arch", "model_config", "meta", "name"}
        if extra:
            problems.append(f"{where}: unknown keys {sorted(map(str, extra))}")
        if not isinstance(c["path"], str) or not c["path"]:
            problems.append(f"{where}.path: {c['path']!r} must be a path (a string)")
            continue
        model_cfg = _mapping(c.get("model_config"), f"{where}.model_config", problems)
        problems.extend(model_cfg_problems(model_cfg, f"{where}.model_config"))
        meta_over = _mapping(c.get("meta"), f"{where}.meta", problems)
        for k, v in meta_over.items():
            if not (isinstance(v, (str, int, float, bool)) or v is None):
                problems.append(f"{where}.meta.{k}: {v!r} must be a number, string or boolean")
        given_name = None if c.get("name") is None else _name(c["name"], f"{where}.name", problems)
        pattern = c["path"]
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        matches = sorted(glob.glob(full)) if any(ch in pattern for ch in "*?[") else [full]
        matches = [m for m in matches if Path(m).exists()]
        if not matches:
            problems.append(f"{where}.path: nothing found at {full}")
        for m in matches:
            try:
                meta = checkpoint_meta(Path(m))
            except SpecError as exc:
                problems.append(f"{where}.path: {exc}")
                continue
            meta.update(meta_over)
            name = given_name or _checkpoint_name(Path(m), base)
            checkpoints.append(
                CheckpointSpec(
                    path=m,
                    arch=str(arch),
                    model_config=model_cfg,
                    meta=meta,
                    name=name if len(matches) == 1 or not given_name else f"{given_name}/{Path(m).name}",
                )
            )
    return checkpoints


def _testsets(raw: dict[str, Any], base: Path, problems: list[str]) -> list[TestsetSpec]:
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
            problems.append(f"{where}: unknown keys {sorted(map(str, extra))}")
        name = _name(t["name"], f"{where}.name", problems)
        in_domain = t.get("in_domain", False)
        if not isinstance(in_domain, bool):
            problems.append(f"{where}.in_domain: {in_domain!r} must be true or false (unquoted)")
            in_domain = False
        if not isinstance(t["manifest"], str) or not t["manifest"]:
            problems.append(f"{where}.manifest: {t['manifest']!r} must be a path (a string)")
            continue
        if name is None:
            continue
        if name in names:
            problems.append(f"{where}.name: duplicate test set name {name!r}")
        names.add(name)
        man = t["manifest"]
        man_full = man if Path(man).is_absolute() else str(base / man)
        if not Path(man_full).is_file():
            problems.append(
                f"{where}.manifest: file not found: {man_full} (build it with `sharpscope manifest build`)"
            )
        testsets.append(TestsetSpec(name=name, manifest=man_full, in_domain=in_domain))
    if testsets and sum(t.in_domain for t in testsets) > 1:
        problems.append("testsets: at most one test set can be marked in_domain")
    return testsets


def _subsets(raw: dict[str, Any], testsets: list[TestsetSpec], problems: list[str]) -> list[SubsetSpec]:
    names = {t.name for t in testsets}
    subsets: list[SubsetSpec] = []
    seen: set[str] = set()
    for i, s in enumerate(_as_list(raw.get("subsets") or [])):
        where = f"subsets[{i}]"
        if not isinstance(s, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        missing = [k for k in ("name", "testset", "by") if k not in s]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        n_before = len(problems)
        name = _name(s["name"], f"{where}.name", problems)
        if name is not None and name in seen:
            problems.append(f"{where}.name: duplicate subset name {name!r}")
        seen.add(name or "")
        if not isinstance(s["testset"], str) or s["testset"] not in names:
            problems.append(f"{where}.testset: {s['testset']!r} is not a test set name")
        if not isinstance(s["by"], str) or not s["by"]:
            problems.append(f"{where}.by: {s['by']!r} must be a manifest column name")
        allowed = {"name", "testset", "by", "order", "mode", "n_bonafide", "n_per_group", "n_spoof", "seed"}
        if set(s) - allowed:
            problems.append(f"{where}: unknown keys {sorted(map(str, set(s) - allowed))}")
        if s.get("mode", "nested") not in ("nested", "fixed-size"):
            problems.append(f"{where}.mode: must be nested or fixed-size")
        order = s.get("order", "sorted")
        listed = isinstance(order, list) and all(isinstance(o, str) for o in order)
        if not (isinstance(order, str) or listed):
            problems.append(f"{where}.order: {order!r} must be a string or a list of group names")
        for key, lo, default in (("n_bonafide", 0, 50), ("n_per_group", 1, 25), ("seed", 0, 0)):
            why = _int_problem(s.get(key, default), lo)
            if why:
                problems.append(f"{where}.{key}: {why}")
        if s.get("n_spoof") is not None:
            why = _int_problem(s["n_spoof"], 0)
            if why:
                problems.append(f"{where}.n_spoof: {why}")
        if len(problems) > n_before:
            continue
        subsets.append(
            SubsetSpec(
                name=str(name),
                testset=s["testset"],
                by=s["by"],
                order=tuple(order) if isinstance(order, list) else order,
                mode=str(s.get("mode", "nested")),
                n_bonafide=s.get("n_bonafide", 50),
                n_per_group=s.get("n_per_group", 25),
                n_spoof=s.get("n_spoof"),
                seed=s.get("seed", 0),
            )
        )
    return subsets


def _measures(raw: dict[str, Any], problems: list[str]) -> list[MeasureSpec]:
    from ..losses import LOSSES

    measures: list[MeasureSpec] = []
    for i, m in enumerate(_as_list(raw.get("measures") or [])):
        where = f"measures[{i}]"
        if isinstance(m, str):
            m = {"name": m}
        if not isinstance(m, dict) or "name" not in m:
            problems.append(f"{where}: needs 'name'")
            continue
        if not isinstance(m["name"], str):
            problems.append(f"{where}.name: {m['name']!r} must be a measure name (a string)")
            continue
        n_before = len(problems)
        problems.extend(f"{where}.{msg}" for msg in _check_measure(m))
        problems.extend(_policy_problems(m, where))
        if "scope" in m:
            try:
                check_scope(m["scope"], f"{where}.scope")
            except SharpscopeError as exc:
                problems.append(str(exc))
        rhos = _as_list(m["rho"]) if "rho" in m else [None]
        if "rho" in m and not rhos:
            problems.append(f"{where}.rho: an empty list gives no cells; give at least one radius")
        for r in rhos if "rho" in m else []:
            if type_problem(r, float) is not None:
                problems.append(f"{where}.rho: {r!r} must be a finite number (or a list of them)")
        losses = _as_list(m.get("loss", "weighted-ce"))
        if not losses:
            problems.append(f"{where}.loss: an empty list gives no cells; give at least one loss")
        for lo in losses:
            if not isinstance(lo, str) or lo not in LOSSES:
                problems.append(f"{where}.loss: {lo!r} is not one of {', '.join(LOSSES)}")
        if len(problems) > n_before:
            continue
        base_settings = {k: v for k, v in m.items() if k not in ("name", *_EXPANDING)}
        for rho, lo in itertools.product(rhos, losses):
            settings = dict(base_settings)
            if rho is not None:
                settings["rho"] = float(rho)
            measures.append(MeasureSpec(name=m["name"], settings=settings, loss=lo))
    return measures


def parse_study(raw: Any, base: Path = Path("."), path: str = "<spec>") -> Study:
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the study spec must be a mapping with checkpoints, testsets and measures")
    for k in raw:
        if k not in _TOP_KEYS:
            problems.append(f"{k}: unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
    if raw.get("trust_checkpoint", False) is not False:
        problems.append(
            "trust_checkpoint: a study spec cannot allow unpickling checkpoints (a spec may come from "
            "anyone); remove the key and, if you trust the checkpoints, run `sharpscope sweep "
            "--trust-checkpoint`"
        )
    name = Path(path).stem if raw.get("name") is None else _name(raw["name"], "name", problems)
    device = raw.get("device", "cpu")
    try:
        device = check_device(device, "device")  # 'auto' -> the device this machine has
    except SharpscopeError as exc:
        problems.append(str(exc))
    scoring = _scoring(raw, problems)

    seeds = _as_list(raw.get("seeds", [0]))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        problems.append(f"seeds: {raw.get('seeds')!r} must be an integer or a non-empty list of integers")

    checkpoints = _checkpoints(raw, base, problems)
    testsets = _testsets(raw, base, problems)
    subsets = _subsets(raw, testsets, problems)
    measures = _measures(raw, problems)
    # -- budgeted study: the `budget:` section (sharpscope.sweep.budget) --
    from .budget import budget_problems, parse_budget

    budget = parse_budget(raw.get("budget"), problems)
    if budget is not None:
        problems.extend(budget_problems(budget, measures, len(checkpoints)))
    # -- end budgeted study --

    if len(problems) == 1:
        raise SpecError(f"{path}: {problems[0]}")
    if problems:
        raise SpecError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  {q}" for q in problems))
    return Study(
        name=str(name),
        path=path,
        raw=raw,
        checkpoints=checkpoints,
        testsets=testsets,
        subsets=subsets,
        measures=measures,
        seeds=list(seeds),
        scoring=scoring,
        trust_checkpoint=False,
        device=str(device),
        budget=budget,
    )


def _checkpoint_name(p: Path, base: Path) -> str:
    try:
        rel = p.resolve().relative_to(base.resolve())
    except ValueError:
        rel = Path(p.parent.name) / p.name
    return str(rel)


def _check_measure(m: dict[str, Any]) -> list[str]:
    """Problems with a measure entry: unknown name or settings the estimator does not take."""
    from ..sharpness.registry import MEASURES, measure_settings

    if m["name"] not in MEASURES:
        return [f"name: {m['name']!r} is not one of {', '.join(MEASURES)}"]
    fields = measure_settings(m["name"])
    policy = {"order", "class_mix", "nonfinite"}
    unknown = sorted(set(m) - {"name", "loss", *policy, *fields})
    out = [f"{k}: not a setting of {m['name']} (settings: {', '.join(sorted(fields))})" for k in unknown]
    out += _setting_type_problems(m)
    return out


def _setting_type_problems(m: dict[str, Any]) -> list[str]:
    """Each setting against the type of its field in the estimator's settings dataclass (``adaptive: "false"``
    is a string, not False), then the estimator's own ``validate`` on the first expanded setting."""
    import typing

    from ..sharpness.registry import estimator_class, make_estimator, settings_class

    st = settings_class(estimator_class(m["name"]))
    if st is None:
        return []
    try:
        hints = typing.get_type_hints(st)
    except Exception:  # noqa: BLE001 - unresolvable annotations: the estimator validates at run time
        return []
    out = []
    for k, v in m.items():
        if k in hints and k != "rho":
            why = type_problem(v, hints[k])
            if why:
                out.append(f"{k}: {v!r} {why}")
    if out:
        return out
    settings = {k: v for k, v in m.items() if k in hints and k != "rho"}
    rhos = _as_list(m.get("rho")) if "rho" in m and "rho" in hints else []
    if rhos and type_problem(rhos[0], float) is None:
        settings["rho"] = float(rhos[0])
    try:
        make_estimator(m["name"], **settings)
    except SharpscopeError as exc:
        return [f"{exc}"]
    except (TypeError, ValueError) as exc:
        return [f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"]
    return out
