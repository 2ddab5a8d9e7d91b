"""Execute one cell: scores + metrics + every requested measure, into tidy rows.

Per cell: the evaluation set's rows are selected (subset ids are explicit), the audio is decoded through a
process-wide :class:`~sharpscope.data.audio.AudioCache` (shared by all checkpoints on the same test set), the
checkpoint is loaded once, and

* when an m-sharpness-style measure is requested, its clean forward pass also yields the scores (one pass
  for both, :func:`sharpscope.sharpness.runner.score_and_sharpness`); otherwise a plain scoring pass runs;
* EER (with bootstrap CI), minDCF, actDCF and Cllr are computed once;
* every measure × seed is estimated on the same batches.

One row per (measure, rho, loss, seed) carries the cell's metrics, checkpoint metadata (``meta_*``) and
provenance.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any, TypedDict

import pandas as pd
import torch

from ..data.audio import AudioCache
from ..models.registry import family_of
from ..provenance import config_hash, package_versions, provenance
from .plan import Cell, load_manifest_cached

CONTROL_KEYS = ("order", "class_mix", "nonfinite")


def controls(scoring: dict[str, Any], measure: dict[str, Any] | None = None) -> dict[str, Any]:
    """The batch-composition and non-finite controls of a measure: its own value, else the study's
    ``scoring:`` value, else the default (``balanced`` order, ``dataset`` class mix, ``error``).  Part of
    every cell's key, so results computed under other controls are never reused."""
    from ..sharpness.runner import DEFAULT_CLASS_MIX, DEFAULT_ORDER, parse_class_mix

    m = measure or {}
    defaults = {"order": DEFAULT_ORDER, "class_mix": DEFAULT_CLASS_MIX, "nonfinite": "error"}
    out = {k: m.get(k, scoring.get(k, d)) for k, d in defaults.items()}
    out["class_mix"] = parse_class_mix(out["class_mix"])
    return out

_AUDIO_CACHE = AudioCache()
_CACHED_MANIFEST: list[str] = [""]  # manifest whose audio the cache holds (cells come test-set-major)
_MODEL_CACHE: dict[tuple, Any] = {}
MODEL_CACHE_BYTES = 1 << 30


def _audio_cache(cell: Cell) -> AudioCache:
    """The process-wide audio cache, emptied when the sweep moves on to another test set."""
    if _CACHED_MANIFEST[0] != cell.evalset.manifest_sha256:
        _AUDIO_CACHE.clear()
        _CACHED_MANIFEST[0] = cell.evalset.manifest_sha256
    return _AUDIO_CACHE


def _model(cell: Cell):
    from ..models.checkpoints import load_checkpoint

    key = (
        cell.checkpoint.path,
        cell.ckpt_stat,
        cell.checkpoint.arch,
        json.dumps(cell.checkpoint.model_config, sort_keys=True),
    )
    if key in _MODEL_CACHE:
        _MODEL_CACHE[key] = _MODEL_CACHE.pop(key)  # most recently used last
        return _MODEL_CACHE[key]
    loaded = load_checkpoint(
        cell.checkpoint.path,
        cell.checkpoint.arch,
        model_cfg=cell.checkpoint.model_config or None,
        trust_checkpoint=cell.trust_checkpoint,
        device=cell.device,
    )
    # Cells come test-set-major, so every checkpoint recurs once per test set: keep the models that fit
    # MODEL_CACHE_BYTES (least recently used dropped first; always at least the current one).
    _MODEL_CACHE[key] = loaded
    while len(_MODEL_CACHE) > 1 and sum(map(_model_bytes, _MODEL_CACHE.values())) > MODEL_CACHE_BYTES:
        _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
    return loaded


def _model_bytes(loaded: Any) -> int:
    model = loaded.model
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def cell_rows_df(cell: Cell) -> pd.DataFrame:
    df = load_manifest_cached(cell.evalset.manifest)
    if cell.evalset.utt_ids is not None:
        from ..data.subsets import SubsetStep, select

        step = SubsetStep(cell.evalset.subset, 0, cell.evalset.subset_groups, cell.evalset.utt_ids, 0, 0)
        df = select(df, step)
    return df.reset_index(drop=True)


def _nan_to_none(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def run_cell(cell: Cell, num_threads: int | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Compute every row of ``cell`` (pure with respect to the store: the caller writes the rows)."""
    threads_before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        return _run_cell(cell, num_threads, progress)
    finally:
        torch.set_num_threads(threads_before)


def _run_cell(cell: Cell, num_threads: int | None, progress: bool) -> list[dict[str, Any]]:
    from ..metrics import evaluate

    t0 = time.perf_counter()
    loaded, scores, results = shared_pass(cell, cell_rows_df(cell), progress)
    metrics = evaluate(scores, seed=cell.seeds[0] if cell.seeds else 0)
    return cell_rows(cell, loaded, scores, results, metrics, time.perf_counter() - t0, num_threads)


class _PassSettings(TypedDict):
    """Scoring keywords shared by the sharpness pass and the plain scoring pass."""

    batch_size: int
    crop: str
    nb_samp: int
    cache: AudioCache


def shared_pass(
    cell: Cell, df: pd.DataFrame, progress: bool = False, seed_map: Callable[[int], int] | None = None
) -> tuple[Any, pd.DataFrame, list[tuple[Any, int, Any]]]:
    """The cell's model, the scores of the rows of ``df`` and ``(measure spec, seed, SharpnessResult)`` of
    every measure x seed, from one shared pass.  ``seed_map`` maps a study seed to the seed the estimator
    and batch order use (budgeted studies give each increment its own; rows keep the study seed)."""
    from ..scoring import score_manifest
    from ..sharpness.registry import make_estimator, measure_settings
    from ..sharpness.runner import score_and_sharpness

    loaded = _model(cell)
    model = loaded.model
    sc = cell.scoring
    precision = str(sc.get("precision", "fp32"))
    common: _PassSettings = {
        "batch_size": int(sc["batch_size"]),
        "crop": str(sc["crop"]),
        "nb_samp": int(sc["nb_samp"]),
        "cache": _audio_cache(cell),
    }

    # Measures differing only in their loss share one estimate (labelled + label-free on the same batches).
    groups: dict[str, list[Any]] = {}
    for m in cell.measures:
        groups.setdefault(config_hash({"name": m.name, "settings": m.settings}), []).append(m)
    results: list[tuple[Any, int, Any]] = []  # (measure spec, seed, SharpnessResult)
    scores: pd.DataFrame | None = None
    for specs in groups.values():
        m0 = specs[0]
        ctl = controls(sc, m0.settings)
        settings = {k: v for k, v in m0.settings.items() if k not in CONTROL_KEYS}
        if "nonfinite" in measure_settings(m0.name):
            settings["nonfinite"] = ctl["nonfinite"]
        for seed in cell.seeds:
            run_seed = seed if seed_map is None else seed_map(seed)
            est = make_estimator(m0.name, seed=run_seed, **settings)
            got_scores, by_loss = score_and_sharpness(
                model,
                df,
                est,
                [m.loss for m in specs],
                order=ctl["order"],
                class_mix=ctl["class_mix"],
                seed=run_seed,
                **common,
            )
            assert isinstance(by_loss, dict)  # a list of losses always gives {loss name: result}
            if scores is None and settings.get("precision", "fp32") == precision:
                scores = got_scores  # the measure's clean pass ran in the study's scoring precision
            for m in specs:
                results.append((m, seed, by_loss[m.loss]))
    if scores is None:
        scores = score_manifest(
            model,
            df,
            batch_size=common["batch_size"],
            crop=common["crop"],
            score=str(sc["score"]),
            cache=common["cache"],
            progress=progress,
            nb_samp=common["nb_samp"],
            precision=precision,
        )
    else:
        scores = _rescore(scores, str(sc["score"]))
    return loaded, scores, results


def cell_rows(
    cell: Cell,
    loaded: Any,
    scores: pd.DataFrame,
    results: list[tuple[Any, int, Any]],
    metrics: dict[str, Any],
    wall: float,
    num_threads: int | None,
) -> list[dict[str, Any]]:
    """The tidy rows of a cell from its scores, metrics and measure results."""
    base = _base_row(cell, loaded, metrics, wall, num_threads)
    # -- label-free per-cell summaries for `sharpscope select` (lf_entropy, lf_confidence, lf_score_q*) --
    from ..select import label_free_summaries

    base.update(label_free_summaries(scores["logit_spoof"].to_numpy(), scores["logit_bonafide"].to_numpy()))
    # -- end label-free summaries --
    rows: list[dict[str, Any]] = []
    if not results:
        rows.append(
            {
                **base,
                "measure": "none",
                "loss": None,
                "rho": None,
                "seed": cell.seeds[0] if cell.seeds else 0,
                "value": None,
                "stderr": None,
                "ci_lo": None,
                "ci_hi": None,
            }
        )
    for m, seed, res in results:
        row = {
            **base,
            "measure": m.name,
            "loss": m.loss,
            "rho": m.rho,
            "seed": seed,
            "value": _nan_to_none(float(res.value)),
            "stderr": _nan_to_none(float(res.stderr)),
            "ci_lo": _nan_to_none(float(res.ci95[0])),
            "ci_hi": _nan_to_none(float(res.ci95[1])),
            "n_utts": res.n_utts,
            "n_batches": res.n_batches,
            "n_nonfinite": res.n_nonfinite,
            "n_capped": res.extra.get("n_capped", 0),
            "order": res.settings.get("order"),
            "class_mix": str(res.settings.get("class_mix", "")),
            "nonfinite": res.settings.get("nonfinite"),
            "sharpness_precision": res.settings.get("precision", "fp32"),
            "n_bonafide_used": res.extra.get("n_bonafide_used"),
            "n_spoof_used": res.extra.get("n_spoof_used"),
            "value_bonafide": _nan_to_none((res.extra.get("per_class") or {}).get("bonafide")),
            "value_spoof": _nan_to_none((res.extra.get("per_class") or {}).get("spoof")),
            "cost_forward": res.cost.get("forward", 0),
            "cost_backward": res.cost.get("backward", 0),
            "cost_hvp": res.cost.get("hvp", 0),
            "measure_key": m.key,
            "measure_settings": json.dumps(res.settings, sort_keys=True, default=str),
            "extra": json.dumps(res.extra, sort_keys=True, default=str) if res.extra else None,
        }
        rows.append(row)
    return rows


def _base_row(cell: Cell, loaded: Any, metrics: dict[str, Any], wall: float, num_threads: int | None) -> dict:
    ev = cell.evalset
    ci = metrics.get("eer_ci95") or [None, None]
    row: dict[str, Any] = {
        "checkpoint": cell.checkpoint.name,
        "checkpoint_path": cell.checkpoint.path,
        "arch": cell.checkpoint.arch,
        "family": family_of(cell.checkpoint.arch, loaded.model),
        "testset": ev.testset,
        "in_domain": ev.in_domain,
        "subset": ev.subset,
        "subset_groups": ",".join(ev.subset_groups),
        "subset_step": int(ev.subset.rsplit(":", 1)[1]) if ev.subset else 0,
        "subset_ids_hash": ev.ids_hash,
        "eer": metrics["eer"],
        "eer_threshold": metrics["eer_threshold"],
        "eer_ci_lo": ci[0],
        "eer_ci_hi": ci[1],
        "min_dcf": metrics["min_dcf"],
        "act_dcf": metrics["act_dcf"],
        "cllr": metrics["cllr"],
        "n_bonafide": metrics["n_bonafide"],
        "n_spoof": metrics["n_spoof"],
        "crop": cell.scoring["crop"],
        "score_type": cell.scoring["score"],
        "precision": cell.scoring.get("precision", "fp32"),  # scores + EER (the value: sharpness_precision)
        "batch_size": cell.scoring["batch_size"],
        "wall_s": round(wall, 3),
        "checkpoint_sha256": getattr(loaded, "sha256", None),
        "manifest_sha256": ev.manifest_sha256,
        "spec_hash": cell.spec_hash,
        "config_hash": cell.cell_id,
        "git_revision": provenance()["git_revision"],
        "versions": json.dumps(package_versions(), sort_keys=True),
        "num_threads": num_threads or torch.get_num_threads(),
        "device": cell.device,
    }
    for k, v in cell.checkpoint.meta.items():
        row[f"meta_{k}"] = v
    row.setdefault("meta_n_params", sum(p.numel() for p in loaded.model.parameters()))
    return row


def _rescore(scores: pd.DataFrame, score: str) -> pd.DataFrame:
    """Apply the study's score type to logits recorded in the shared pass (default: bona-fide logit)."""
    from ..scoring import scores_from_logits

    out = scores.copy()
    logits = torch.tensor(out[["logit_spoof", "logit_bonafide"]].to_numpy())
    out["score"] = scores_from_logits(logits, score).numpy()
    return out
