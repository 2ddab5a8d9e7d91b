"""Score a manifest with a countermeasure model, and evaluate scores (ours or any toolkit's) against it.

Layers, lowest first:

* :func:`forward_batches` -- the one clean forward pass: model in eval mode under ``torch.inference_mode``,
  yields ``(batch, logits)`` and refuses NaN/inf logits.  Sharpness code reuses it (via ``collect`` of
  :func:`score_manifest`) to get scores and clean losses from a single pass.
* :func:`score_manifest` -- manifest rows in, the same rows plus ``score, logit_spoof, logit_bonafide`` out.
* :func:`run_score` / :func:`run_metrics` -- what ``sharpscope score`` and ``sharpscope metrics`` do: write
  ``scores.csv`` / ``metrics.json`` (metrics, settings, provenance) and optional official score files.

Score types (logits are ordered ``[spoof, bonafide]``):

* ``bonafide-logit`` -- the bona-fide logit, the score of the AASIST / SSL_Anti-spoofing / SAM-AntiSpoofing
  evaluation scripts (the reference);
* ``logit-diff`` -- bona-fide minus spoof logit, the log-odds of the softmax (a natural LLR-like score);
* ``log-softmax`` -- log p(bona fide), monotone in ``logit-diff`` (same EER, different DCF/Cllr).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data.audio import CROPS, NB_SAMP, AudioCache, Batch, iter_batches
from .errors import CheckpointError, ScoreError
from .fileio import atomic_write_json
from .metrics import evaluate
from .progress import progress_bar
from .provenance import file_sha256, provenance
from .scorefiles import FORMATS, default_filename, describe_ids, read_scores, write_scores

SCORE_TYPES = ("bonafide-logit", "logit-diff", "log-softmax")
SCORE_COLUMNS = ("score", "logit_spoof", "logit_bonafide")


def check_score_type(score: str) -> None:
    if score not in SCORE_TYPES:
        raise ScoreError(f"unknown score type {score!r}; use one of {', '.join(SCORE_TYPES)}")


def _check_crop(crop: str) -> None:
    if crop not in CROPS:
        raise ScoreError(f"unknown crop policy {crop!r}; use one of {', '.join(CROPS)}")


def scores_from_logits(logits: torch.Tensor, score: str = "bonafide-logit") -> torch.Tensor:
    """Per-utterance scores ``[B]`` from logits ``[B, 2]`` ordered ``[spoof, bonafide]``."""
    check_score_type(score)
    if score == "bonafide-logit":
        return logits[:, 1]
    if score == "logit-diff":
        return logits[:, 1] - logits[:, 0]
    return torch.log_softmax(logits, dim=-1)[:, 1]


def _logits_of(out: Any, n: int) -> torch.Tensor:
    """The ``[B, 2]`` logits of a model output (a tensor, or the last element of a tuple)."""
    if isinstance(out, (tuple, list)):
        out = out[-1]
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape != (n, 2):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(
            f"model returned {shape} for a batch of {n}; sharpscope models must return logits [B, 2] "
            "ordered [spoof, bonafide] -- check --arch and --model-config"
        )
    return out


def _check_logits(logits: torch.Tensor, batch: Batch) -> None:
    bad = (~torch.isfinite(logits)).any(dim=1)
    if bool(bad.any()):
        ids = [u for u, b in zip(batch.utt_ids, bad.tolist(), strict=True) if b]
        raise ScoreError(
            f"model produced NaN/inf logits for {len(ids)} of {len(batch)} utterances in a batch "
            f"(first: {describe_ids(ids)}); check the checkpoint and these audio files"
        )


def forward_batches(
    model: nn.Module,
    batches: Iterable[Batch],
    device: str | torch.device = "cpu",
    check_finite: bool = True,
) -> Iterator[tuple[Batch, torch.Tensor]]:
    """Yield ``(batch_on_device, logits[B, 2])`` for each batch, model in eval mode, no autograd.

    The model's train/eval flag is restored when the generator finishes or is closed.  Logits stay on
    ``device`` so a caller can compute losses (``Loss(logits, batch.labels)``) in the same pass.
    """
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            b = batch.to(device)
            with torch.inference_mode():
                logits = _logits_of(model(b.wave), len(b)).float()
            if check_finite:
                _check_logits(logits, b)
            yield b, logits
    finally:
        model.train(was_training)


def score_manifest(
    model: nn.Module,
    manifest_df: pd.DataFrame,
    batch_size: int = 32,
    crop: str = "first",
    score: str = "bonafide-logit",
    device: str | torch.device = "cpu",
    cache: AudioCache | None = None,
    progress: bool = True,
    collect: Callable[[Batch, torch.Tensor], None] | None = None,
    nb_samp: int = NB_SAMP,
) -> pd.DataFrame:
    """Score every manifest row; returns a copy of the manifest plus ``score, logit_spoof, logit_bonafide``.

    Rows keep the manifest order whatever the batching order (crop ``full`` batches by length).
    ``collect(batch, logits)`` is called once per batch (logits on ``device``, no grad), e.g. to compute
    clean losses in the same pass.
    """
    check_score_type(score)
    _check_crop(crop)
    if batch_size < 1:
        raise ScoreError(f"batch size must be at least 1, got {batch_size}")
    n = len(manifest_df)
    if n == 0:
        raise ScoreError("the manifest has no rows to score")
    model = model.to(device)
    logits_all = np.full((n, 2), np.nan, dtype=np.float64)
    seen = np.zeros(n, dtype=bool)
    batches = iter_batches(manifest_df, batch_size=batch_size, crop=crop, nb_samp=nb_samp, cache=cache)
    with progress_bar(progress) as bar:
        task = bar.add_task("scoring", total=n)
        for batch, logits in forward_batches(model, batches, device=device):
            rows = batch.meta["rows"]
            logits_all[rows] = logits.detach().to("cpu", torch.float64).numpy()
            seen[rows] = True
            if collect is not None:
                collect(batch, logits)
            bar.advance(task, len(batch))
    if not seen.all():  # pragma: no cover - iter_batches covers every row; guard against silent loss
        raise ScoreError(f"{int((~seen).sum())} manifest rows were never scored")
    t = torch.from_numpy(logits_all)
    out = manifest_df.copy()
    out["score"] = scores_from_logits(t, score).numpy()
    out["logit_spoof"] = logits_all[:, 0]
    out["logit_bonafide"] = logits_all[:, 1]
    return out


# ---- run_score / run_metrics ----------------------------------------------------------------------------


def read_model_config(path: str | Path | None) -> dict[str, Any]:
    """Model-builder keyword arguments from a JSON or YAML file (``--model-config``); ``{}`` when None."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"model config file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json":
            cfg = json.loads(text)
        else:
            import yaml

            cfg = yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise CheckpointError(f"cannot parse model config {p}: {str(exc).splitlines()[0]}") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        kind = type(cfg).__name__
        raise CheckpointError(f"model config {p} must hold a mapping of builder arguments, not a {kind}")
    return cfg


def _has_labels(df: pd.DataFrame) -> bool:
    return "label" in df.columns and df["label"].astype(str).isin(["bonafide", "spoof"]).any()


def run_score(
    checkpoint: str | Path,
    manifest: str | Path,
    arch: str,
    out_dir: str | Path,
    batch_size: int = 32,
    crop: str = "first",
    score: str = "bonafide-logit",
    fmt: str | None = None,
    trust_checkpoint: bool = False,
    model_cfg: dict[str, Any] | None = None,
    device: str = "cpu",
    seed: int = 0,
    n_boot: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """``sharpscope score``: score a manifest with a checkpoint; write scores.csv, metrics.json [, FMT file].

    Metrics are computed when the manifest is labelled; a table without any bonafide/spoof label (blind
    evaluation data) yields scores only, ``eer: null`` and a note.  Returns the metrics.json content.
    """
    from .data.manifest import read_manifest
    from .models.checkpoints import load_checkpoint

    check_score_type(score)
    _check_crop(crop)
    if batch_size < 1:
        raise ScoreError(f"batch size must be at least 1, got {batch_size}")
    if fmt is not None and fmt not in FORMATS:
        raise ScoreError(f"unknown score-file format {fmt!r}; use one of {', '.join(FORMATS)}")
    model_cfg = dict(model_cfg or {})
    df = read_manifest(manifest)
    ckpt = load_checkpoint(
        checkpoint, arch, model_cfg=model_cfg, trust_checkpoint=trust_checkpoint, device=device
    )
    scored = score_manifest(
        ckpt.model, df, batch_size=batch_size, crop=crop, score=score, device=device, progress=progress
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scored.to_csv(out / "scores.csv", index=False)
    files = {"scores": "scores.csv", "metrics": "metrics.json"}
    if fmt is not None:
        name = default_filename(fmt)
        write_scores(scored, out / name, fmt)
        files["official"] = name

    settings = {
        "command": "score",
        "arch": arch,
        "checkpoint": str(checkpoint),
        "manifest": str(manifest),
        "crop": crop,
        "score": score,
        "batch_size": int(batch_size),
        "model_cfg": model_cfg,
        "device": str(device),
        "format": fmt,
        "seed": int(seed),
        "n_boot": int(n_boot),
    }
    if _has_labels(scored):
        try:
            result: dict[str, Any] = evaluate(scored, seed=seed, n_boot=n_boot)
        except ScoreError as exc:
            raise ScoreError(f"scores written to {out / 'scores.csv'} but metrics failed: {exc}") from None
    else:
        result = {"eer": None, "note": "manifest has no bonafide/spoof labels: scores only, no metrics"}
    result["settings"] = settings
    result["files"] = files
    result["provenance"] = provenance(
        settings,
        checkpoint_sha256=ckpt.sha256,
        checkpoint_format=getattr(ckpt, "format", None),
        effective_model_cfg=getattr(ckpt, "meta", {}).get("loader", {}).get("model_cfg"),
        manifest=str(manifest),
        manifest_sha256=file_sha256(manifest),
        n_utts=len(scored),
        seed=int(seed),
    )
    atomic_write_json(out / "metrics.json", result, indent=2, sort_keys=False)
    return result


def match_scores(
    scores: pd.DataFrame, manifest: pd.DataFrame, allow_partial: bool = False, source: str = "score file"
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Join external scores to manifest rows by ``utt_id``; never drops anything silently.

    Duplicated score ids are always an error.  Score ids absent from the manifest, or manifest ids without a
    score, are an error unless ``allow_partial`` -- then only the matched rows are returned and the counts
    say what was left out.  Returns ``(manifest rows + score, counts)`` in manifest order.
    """
    sid = scores["utt_id"].astype(str)
    dup = sid[sid.duplicated(keep=False)].unique().tolist()
    if dup:
        raise ScoreError(
            f"{source}: {len(dup)} utterance ids appear more than once (first: {describe_ids(dup)}); "
            "keep one score per utterance"
        )
    mid = manifest["utt_id"].astype(str)
    in_manifest = sid.isin(set(mid))
    has_score = mid.isin(set(sid))
    extra = sid[~in_manifest].tolist()
    unscored = mid[~has_score].tolist()
    counts = {
        "n_scores": int(len(sid)),
        "n_manifest": int(len(mid)),
        "n_matched": int(in_manifest.sum()),
        "n_scores_not_in_manifest": len(extra),
        "n_manifest_without_score": len(unscored),
    }
    if (extra or unscored) and not allow_partial:
        parts = []
        if extra:
            parts.append(f"{len(extra)} score ids not in the manifest (first: {describe_ids(extra)})")
        if unscored:
            parts.append(f"{len(unscored)} manifest ids without a score (first: {describe_ids(unscored)})")
        raise ScoreError(
            f"{source} does not match the manifest: {'; '.join(parts)}; fix the files or pass "
            "--allow-partial to evaluate only the matched subset"
        )
    if counts["n_matched"] == 0:
        raise ScoreError(
            f"{source}: no utterance id matches the manifest (first score ids: {describe_ids(sid)})"
        )
    extra_cols = [c for c in scores.columns if c != "utt_id"]
    sub = scores.assign(utt_id=sid)[["utt_id", *extra_cols]].rename(
        columns={c: f"file_{c}" for c in extra_cols if c != "score"}
    )
    base = manifest.drop(columns=[c for c in ("score",) if c in manifest.columns])
    merged = base.assign(utt_id=mid).merge(sub, on="utt_id", how="inner", validate="one_to_one")
    if "file_key" in merged.columns and "label" in merged.columns:
        clash = merged["file_key"].astype(str) != merged["label"].astype(str)
        if clash.any():
            ids = merged.loc[clash, "utt_id"].tolist()
            raise ScoreError(
                f"{source}: KEY column disagrees with the manifest label for {len(ids)} utterances "
                f"(first: {describe_ids(ids)}); is the manifest the right protocol?"
            )
    return merged, counts


def run_metrics(
    scores_path: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    fmt: str = "csv",
    allow_partial: bool = False,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """``sharpscope metrics``: evaluate any toolkit's score file against a manifest; write metrics.json."""
    from .data.manifest import read_manifest

    scores = read_scores(scores_path, fmt)
    df = read_manifest(manifest)
    merged, counts = match_scores(scores, df, allow_partial=allow_partial, source=f"score file {scores_path}")
    metrics = evaluate(merged, seed=seed, n_boot=n_boot)
    settings = {
        "command": "metrics",
        "scores": str(scores_path),
        "format": fmt,
        "manifest": str(manifest),
        "allow_partial": bool(allow_partial),
        "seed": int(seed),
        "n_boot": int(n_boot),
    }
    result = dict(metrics)
    result["matching"] = counts
    result["settings"] = settings
    result["files"] = {"metrics": "metrics.json"}
    result["provenance"] = provenance(
        settings,
        scores_sha256=file_sha256(scores_path),
        manifest=str(manifest),
        manifest_sha256=file_sha256(manifest),
        n_utts=len(merged),
        seed=int(seed),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", result, indent=2, sort_keys=False)
    return result
