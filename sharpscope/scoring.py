"""Score a manifest with a countermeasure model, and evaluate scores (ours or any toolkit's) against it.

Layers, lowest first:

* :func:`forward_batches` -- the one clean forward pass: model in eval mode under ``torch.inference_mode``,
  yields ``(batch, logits)`` and (by default) refuses NaN/inf logits.  Logits are read by the one reader,
  :func:`sharpscope.models.outputs.forward_logits` (declared output layout, exact-length groups).  Used by
  :func:`score_manifest`, by :func:`sharpscope.sharpness.runner.score_and_sharpness` for estimators without a
  streaming session (the others score through the estimator's own clean forward) and by training's dev
  evaluation (:meth:`sharpscope.train.loop.Trainer.evaluate_dev`).
* :func:`score_manifest` -- manifest rows in, the same rows plus ``score, logit_spoof, logit_bonafide`` out.
* :func:`run_score` / :func:`run_metrics` -- what ``sharpscope score`` and ``sharpscope metrics`` do: write
  ``scores.csv`` / ``metrics.json`` (metrics, settings, provenance) and optional official score files.

Score types (logits are ordered ``[spoof, bonafide]``); the type is declared in ``scores.csv`` (column
``score_type``) and ``metrics.json`` (key ``score_type``):

* ``bonafide-logit`` -- the bona-fide logit, the score of the AASIST / SSL_Anti-spoofing / SAM-AntiSpoofing
  evaluation scripts (the reference; the official EER is computed on it);
* ``log-odds`` (alias ``logit-diff``) -- bona-fide minus spoof logit.  For a 2-class softmax this is the log
  posterior ratio log p(bona fide | x) / p(spoof | x), and it is invariant to a constant added to both logits,
  which moves the bona-fide logit (and its actDCF / Cllr) arbitrarily;
* ``log-softmax`` -- log p(bona fide), monotone in ``log-odds`` (same EER, different DCF/Cllr).

None of these is a calibrated log-likelihood ratio.  actDCF and Cllr (ASVspoof 5 evaluation plan; Brümmer &
du Preez 2006) read scores as LLRs, so ``--calibrate-on`` fits an affine logistic-regression calibration on a
labelled dev set (:mod:`sharpscope.calibration`) and actDCF / Cllr are computed on the calibrated scores.
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

from .calibration import Calibration, fit_calibration, parse_prior
from .data.audio import NB_SAMP, AudioCache, Batch, check_crop, iter_batches
from .devices import autocast, check_precision, strict_fp32
from .errors import AudioError, CheckpointError, ScoreError, SharpscopeError
from .fileio import atomic_write_csv, atomic_write_json
from .metrics import evaluate
from .models.outputs import forward_logits
from .progress import progress_bar
from .provenance import file_sha256, provenance
from .scorefiles import FORMATS, default_filename, describe_ids, read_scores, write_scores

SCORE_TYPES = ("bonafide-logit", "log-odds", "log-softmax")
SCORE_TYPE_ALIASES = {"logit-diff": "log-odds"}  # earlier name, still accepted
SCORE_COLUMNS = ("score", "logit_spoof", "logit_bonafide")


def canonical_score_type(score: str) -> str:
    """The canonical name of a score type (``logit-diff`` -> ``log-odds``); unknown names raise."""
    name = SCORE_TYPE_ALIASES.get(str(score), str(score))
    if name not in SCORE_TYPES:
        raise ScoreError(
            f"unknown score type {score!r}; use one of {', '.join(SCORE_TYPES)} "
            f"(alias: {', '.join(f'{k} = {v}' for k, v in SCORE_TYPE_ALIASES.items())})"
        )
    return name


def check_score_type(score: str) -> None:
    canonical_score_type(score)


def _check_crop(crop: str) -> None:
    try:
        check_crop(crop)
    except AudioError as e:
        raise ScoreError(str(e)) from None


def scores_from_logits(logits: torch.Tensor, score: str = "bonafide-logit") -> torch.Tensor:
    """Per-utterance scores ``[B]`` from logits ``[B, 2]`` ordered ``[spoof, bonafide]``."""
    score = canonical_score_type(score)
    if score == "bonafide-logit":
        return logits[:, 1]
    if score == "log-odds":
        return logits[:, 1] - logits[:, 0]
    return torch.log_softmax(logits, dim=-1)[:, 1]


def _check_shape(out: Any, n: int) -> torch.Tensor:
    """Check that ``out`` (read by the model's declared output layout) holds ``[B, 2]`` logits."""
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
    precision: str = "fp32",
) -> Iterator[tuple[Batch, torch.Tensor]]:
    """Yield ``(batch_on_device, logits[B, 2])`` for each batch, model in eval mode, no autograd.

    The model's train/eval flag is restored when the generator finishes or is closed.  Logits stay on
    ``device`` so a caller can compute losses (``Loss(logits, batch.labels)``) in the same pass.
    ``precision``: ``fp32`` (strict: no TF32 on CUDA) or ``bf16`` autocast (:mod:`sharpscope.devices`;
    logits are returned as fp32 either way).
    """
    check_precision(precision)
    strict_fp32(device)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            b = batch.to(device)
            with torch.inference_mode(), autocast(precision, device):
                logits = _check_shape(forward_logits(model, b.wave, b.lengths), len(b)).float()
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
    precision: str = "fp32",
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
        for batch, logits in forward_batches(model, batches, device=device, precision=precision):
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
    if p.suffix.lower() == ".json":
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot parse model config {p}: {str(exc).splitlines()[0]}") from None
    else:
        from .specio import read_yaml  # strict: no tags, no duplicate keys, bounded aliases

        try:
            cfg = read_yaml(p, what="model config")
        except SharpscopeError as exc:
            raise CheckpointError(str(exc)) from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        kind = type(cfg).__name__
        raise CheckpointError(f"model config {p} must hold a mapping of builder arguments, not a {kind}")
    return cfg


def _has_labels(df: pd.DataFrame) -> bool:
    return "label" in df.columns and df["label"].astype(str).isin(["bonafide", "spoof"]).any()


# ---- declared score types and calibration dev sets ------------------------------------------------------


def declared_score_type(table: pd.DataFrame, source: str, col: str = "score_type") -> str | None:
    """The one score type a table declares in ``col`` (canonical name), or None when it has no such column."""
    if col not in table.columns:
        return None
    names = sorted(set(table[col].astype(str)))
    if len(names) != 1:
        raise ScoreError(
            f"{source}: column {col} declares {len(names)} score types ({', '.join(names[:5])}); "
            "one file must hold one score type"
        )
    try:
        return canonical_score_type(names[0])
    except ScoreError as exc:
        raise ScoreError(f"{source}: column {col}: {exc}") from None


def _numeric(table: pd.DataFrame, col: str, source: str) -> np.ndarray:
    """Column ``col`` as float64; a non-numeric cell raises naming its 1-based data row (NaN/inf pass)."""
    if pd.api.types.is_numeric_dtype(table[col]):
        return table[col].to_numpy(dtype=np.float64)
    values = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=np.float64)
    raw = table[col].astype(str).str.strip().str.lower().to_numpy()
    bad = np.flatnonzero(np.isnan(values) & ~np.isin(raw, ["nan", "", "none"]))
    if bad.size:
        i = int(bad[0])
        raise ScoreError(f"{source}: row {i + 1}: {col} {table[col].iloc[i]!r} is not a number")
    return values


def scores_of_type(
    table: pd.DataFrame,
    score_type: str,
    source: str,
    type_col: str = "score_type",
    logit_cols: tuple[str, str] = ("logit_spoof", "logit_bonafide"),
) -> np.ndarray:
    """Scores of ``score_type`` from a score table: its ``score`` column when that holds this type (or
    declares none), else recomputed from the table's logit columns.  Refuses a declared type that differs and
    cannot be converted (an external toolkit's scores without logits)."""
    want = canonical_score_type(score_type)
    have = declared_score_type(table, source, type_col)
    if (have is None or have == want) and "score" in table.columns:
        return _numeric(table, "score", source)
    if all(c in table.columns for c in logit_cols):
        logits = np.stack([_numeric(table, c, source) for c in logit_cols], axis=1)
        return scores_from_logits(torch.from_numpy(logits), want).numpy()
    declared = f"declares score type {have}" if have is not None else "has no score column"
    raise ScoreError(
        f"{source} {declared} and has no {'/'.join(logit_cols)} columns to compute {want} scores from; "
        f"use --score-type {have or want} or a score file with logits"
    )


def is_score_table(columns: Iterable[str]) -> bool:
    """A table of scores (``score`` or both logit columns) rather than a manifest to be scored."""
    cols = set(columns)
    return "score" in cols or {"logit_spoof", "logit_bonafide"} <= cols


def read_dev_scores(path: str | Path, score_type: str) -> tuple[pd.DataFrame, str | None]:
    """A labelled dev score table (CSV/TSV/Parquet with utt_id, label and score or logits) as
    ``(DataFrame[utt_id, label, score], declared score type or None)``; the scores are of ``score_type``."""
    from .data.manifest import load_table

    p = Path(path)
    if not p.is_file():
        raise ScoreError(f"calibration dev file not found: {p}")
    table = load_table(p)
    source = f"calibration dev scores {p}"
    for col in ("utt_id", "label"):
        if col not in table.columns:
            raise ScoreError(
                f"{source} has no {col!r} column (columns: {', '.join(map(str, table.columns))}); "
                "calibration needs utt_id, label and score (e.g. the scores.csv of `sharpscope score` on a "
                "labelled dev set)"
            )
    declared = declared_score_type(table, source)
    scores = scores_of_type(table, score_type, source)
    dev = pd.DataFrame(
        {"utt_id": table["utt_id"].astype(str), "label": table["label"].astype(str), "score": scores}
    )
    return dev, declared


def calibrate_on_table(
    dev: pd.DataFrame, path: str | Path, prior: float | str, kind: str, dev_score_type: str | None
) -> tuple[Calibration, dict[str, Any]]:
    """Fit the calibration on a dev table (utt_id, label, score); return it and its record for metrics.json
    (file, kind, sha256, counts and the objective before/after, in bits)."""
    from .calibration import prior_weighted_cross_entropy

    p_bona = parse_prior(prior)
    source = f"calibration dev {kind} {path}"
    cal = fit_calibration(
        dev["score"].to_numpy(), dev["label"].to_numpy(), p_bona, ids=dev["utt_id"].tolist(), source=source
    )
    is_bona = dev["label"].to_numpy() == "bonafide"
    raw = dev["score"].to_numpy(dtype=np.float64)
    record = {
        "dev": str(path),
        "dev_kind": kind,
        "dev_sha256": file_sha256(path),
        "dev_rows": int(len(dev)),
        "dev_score_type": dev_score_type,
        "prior_requested": str(prior),
        "dev_objective_bits_before": prior_weighted_cross_entropy(raw[is_bona], raw[~is_bona], p_bona),
    }
    return cal, record


def _calibration_record(result: dict[str, Any], record: dict[str, Any], test_sha256: str) -> None:
    """Merge the dev-set record into ``result['calibration']`` and flag calibration on the test data."""
    result["calibration"].update(record)
    result["calibration"]["dev_is_test"] = record["dev_sha256"] == test_sha256
    if not result["calibration"]["converged"]:
        result["act_dcf_cllr"]["note"] += "; WARNING: the calibration did not converge"
    if result["calibration"]["dev_is_test"]:
        result["act_dcf_cllr"]["note"] += "; WARNING: calibrated on the test data itself (optimistic)"


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
    calibrate_on: str | Path | None = None,
    calibration_prior: float | str = 0.5,
    precision: str = "fp32",
) -> dict[str, Any]:
    """``sharpscope score``: score a manifest with a checkpoint; write scores.csv, metrics.json [, FMT file].

    Metrics are computed when the manifest is labelled; a table without any bonafide/spoof label (blind
    evaluation data) yields scores only, ``eer: null`` and a note.  Returns the metrics.json content.

    ``scores.csv`` declares its ``score_type``.  ``calibrate_on`` -- a labelled dev manifest (scored here
    with the same model and settings; its scores are written to ``calibration_dev_scores.csv``) or a dev score
    table (utt_id, label, score or logits): a logistic-regression calibration at ``calibration_prior`` (0.5,
    ``asvspoof5`` or a number) is fitted on it, ``scores.csv`` gains an ``llr`` column, and actDCF / Cllr are
    computed on the calibrated scores.
    """
    from .data.manifest import load_table, read_manifest
    from .models.checkpoints import load_checkpoint

    score = canonical_score_type(score)
    _check_crop(crop)
    check_precision(precision)
    if batch_size < 1:
        raise ScoreError(f"batch size must be at least 1, got {batch_size}")
    if fmt is not None and fmt not in FORMATS:
        raise ScoreError(f"unknown score-file format {fmt!r}; use one of {', '.join(FORMATS)}")
    prior = parse_prior(calibration_prior)
    dev_kind = None
    if calibrate_on is not None:
        if not Path(calibrate_on).is_file():
            raise ScoreError(f"calibration dev file not found: {calibrate_on}")
        dev_kind = "scores" if is_score_table(load_table(calibrate_on).columns) else "manifest"
    model_cfg = dict(model_cfg or {})
    df = read_manifest(manifest)
    ckpt = load_checkpoint(
        checkpoint, arch, model_cfg=model_cfg, trust_checkpoint=trust_checkpoint, device=device
    )
    scored = score_manifest(
        ckpt.model, df, batch_size=batch_size, crop=crop, score=score, device=device, progress=progress,
        precision=precision,
    )  # fmt: skip
    scored["score_type"] = score
    scored["precision"] = precision
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"scores": "scores.csv", "metrics": "metrics.json"}
    cal: Calibration | None = None
    if calibrate_on is not None:
        dev_type: str | None
        if dev_kind == "manifest":
            dev_scored = score_manifest(
                ckpt.model, read_manifest(calibrate_on), batch_size=batch_size, crop=crop, score=score,
                device=device, progress=progress, precision=precision,
            )  # fmt: skip
            dev_scored["score_type"] = score
            dev_scored["precision"] = precision
            atomic_write_csv(out / "calibration_dev_scores.csv", dev_scored, index=False)
            files["calibration_dev_scores"] = "calibration_dev_scores.csv"
            dev, dev_type = dev_scored[["utt_id", "label", "score"]], score
        else:
            dev, dev_type = read_dev_scores(calibrate_on, score)
        cal, cal_record = calibrate_on_table(dev, calibrate_on, calibration_prior, str(dev_kind), dev_type)
        scored["llr"] = cal.apply(scored["score"].to_numpy())
    atomic_write_csv(out / "scores.csv", scored, index=False)
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
        "score_type": score,
        "calibrate_on": None if calibrate_on is None else str(calibrate_on),
        "calibration_prior": prior if calibrate_on is not None else None,
        "batch_size": int(batch_size),
        "model_cfg": model_cfg,
        "device": str(device),
        "precision": precision,
        "format": fmt,
        "seed": int(seed),
        "n_boot": int(n_boot),
    }
    if _has_labels(scored):
        try:
            result: dict[str, Any] = evaluate(
                scored, seed=seed, n_boot=n_boot, score_type=score, calibration=cal
            )
        except ScoreError as exc:
            raise ScoreError(f"scores written to {out / 'scores.csv'} but metrics failed: {exc}") from None
    else:
        result = {
            "eer": None,
            "note": "manifest has no bonafide/spoof labels: scores only, no metrics",
            "score_type": score,
            "calibrated": cal is not None,
            "calibration": cal.to_dict() if cal is not None else None,
            "act_dcf_cllr": {"score_type": score, "calibrated": cal is not None, "note": "no metrics"},
        }
    if cal is not None:
        _calibration_record(result, cal_record, file_sha256(manifest))
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
    score_type: str | None = None,
    calibrate_on: str | Path | None = None,
    calibration_prior: float | str = 0.5,
) -> dict[str, Any]:
    """``sharpscope metrics``: evaluate any toolkit's score file against a manifest; write metrics.json.

    ``score_type`` -- what the scores are; default: the file's ``score_type`` column (``sharpscope score``
    writes one), else ``bonafide-logit``.  A type different from the file's is recomputed from its logit
    columns.  ``calibrate_on`` -- a labelled dev score table (utt_id, label, score or logits, of the same
    type) on which a logistic-regression calibration at ``calibration_prior`` is fitted; actDCF / Cllr are
    then computed on the calibrated scores (EER and minDCF never change).
    """
    from .data.manifest import read_manifest

    prior = parse_prior(calibration_prior)
    wanted = None if score_type is None else canonical_score_type(score_type)
    if calibrate_on is not None and not Path(calibrate_on).is_file():
        raise ScoreError(f"calibration dev file not found: {calibrate_on}")
    scores = read_scores(scores_path, fmt)
    df = read_manifest(manifest)
    source = f"score file {scores_path}"
    merged, counts = match_scores(scores, df, allow_partial=allow_partial, source=source)
    file_type = declared_score_type(merged, source, col="file_score_type")
    declared = wanted or file_type or "bonafide-logit"
    type_source = "option" if wanted else ("file" if file_type else "default")
    merged["score"] = scores_of_type(
        merged, declared, source, "file_score_type", ("file_logit_spoof", "file_logit_bonafide")
    )
    cal: Calibration | None = None
    if calibrate_on is not None:
        dev, dev_type = read_dev_scores(calibrate_on, declared)
        cal, cal_record = calibrate_on_table(dev, calibrate_on, calibration_prior, "scores", dev_type)
    metrics = evaluate(merged, seed=seed, n_boot=n_boot, score_type=declared, calibration=cal)
    if cal is not None:
        _calibration_record(metrics, cal_record, file_sha256(scores_path))
    settings = {
        "command": "metrics",
        "scores": str(scores_path),
        "format": fmt,
        "manifest": str(manifest),
        "allow_partial": bool(allow_partial),
        "score_type": declared,
        "score_type_source": type_source,
        "calibrate_on": None if calibrate_on is None else str(calibrate_on),
        "calibration_prior": prior if calibrate_on is not None else None,
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
