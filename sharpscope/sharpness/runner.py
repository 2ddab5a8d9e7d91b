"""One pass over a manifest that gives both the scores and a sharpness estimate.

Every loss-based estimator starts each batch with a clean forward at the unperturbed weights; its logits are
exactly the logits scoring needs.  :func:`score_and_sharpness` therefore scores the manifest *through* the
estimator (the per-batch clean logits are recorded) instead of running a separate scoring pass.  When the
estimate stops early (``budget`` / ``ci_width``) the remaining batches are scored with a plain forward, so the
scores always cover the whole manifest.  Estimators without a streaming session (curvature, landscape) get a
separate scoring pass over the same (cached) audio: :func:`sharpscope.scoring.forward_batches`, the clean
forward of ``sharpscope score`` and of training's dev evaluation.

Batch composition is a controlled, recorded variable: m-sharpness is non-linear per batch (class-sorted and
stratified orders of one set differ by 70 % on a tiny model) and a class-weighted loss depends on each
batch's class mix.  Two settings fix it, and both are recorded in every result:

Batch order (batches are the unit of the size-weighted mean and the CI):

* ``balanced`` (default) -- class-stratified: rows of each class are shuffled (seeded) and interleaved so
  that every batch holds the estimation set's class proportions (each class count within one of
  ``B · p_class``); independent of how the manifest happens to be sorted.
* ``manifest`` -- rows in manifest order (the seed paper's setting, Huang et al. 2025; class-sorted
  manifests such as Fake-or-Real's make it compare corpus layouts);
* ``shuffled`` -- a seeded permutation of the rows.

Class mix of the utterances the estimate uses (``class_mix``):

* ``dataset`` (default) -- every labelled utterance, at the set's own bona fide share;
* ``equal`` -- 50 % bona fide: the larger class is subsampled (seeded) to the size of the smaller;
* ``P`` (a number in (0, 1)) -- bona fide share P: the largest subsample with that share.

Each utterance is used at most once per pass; utterances left out of the estimate are still scored (EER
always covers the whole set).  With crop ``full`` the chosen order is kept (no length bucketing) and every
exact-length group is its own forward, so no utterance's logits depend on its batch mates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.audio import NB_SAMP, AudioCache, iter_batches
from ..errors import ScoreError, SharpscopeError
from ..fileio import atomic_write_csv, atomic_write_text, jsonable
from ..losses import Loss
from ..scoring import forward_batches
from .base import SharpnessResult, preserved
from .engine import as_loss

ORDERS = ("balanced", "manifest", "shuffled")
DEFAULT_ORDER = "balanced"
DEFAULT_CLASS_MIX = "dataset"


def parse_class_mix(value: Any) -> str | float:
    """``dataset``, ``equal`` or a bona fide share in (0, 1) (given as a number or a string)."""
    if isinstance(value, str) and value in ("dataset", "equal"):
        return value
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise SharpscopeError(
            f"class mix must be dataset, equal or a bona fide share in (0, 1), got {value!r}"
        ) from None
    if isinstance(value, bool) or not 0 < p < 1:
        raise SharpscopeError(f"class mix share must lie strictly between 0 and 1, got {value!r}")
    return p


def class_mix_rows(
    labels: Sequence[Any], class_mix: Any = "dataset", seed: int = 0, keys: Sequence[Any] | None = None
) -> list[int]:
    """Row positions (sorted) of the utterances the estimate uses under ``class_mix`` (module docstring).

    ``equal`` keeps ``min(n_bonafide, n_spoof)`` of each class; a share ``P`` keeps every utterance of the
    scarcer class (relative to P) and rounds the other to ``n_b / (n_b + n_s) ≈ P``.  Unlabelled rows are
    kept only under ``dataset``.
    """
    mix = parse_class_mix(class_mix)
    if mix == "dataset":
        return list(range(len(labels)))
    canon = _canonical(len(labels), keys)
    lab = np.asarray([str(labels[i]) for i in canon])
    bona, spoof = canon[lab == "bonafide"], canon[lab == "spoof"]
    if len(bona) == 0 or len(spoof) == 0:
        raise SharpscopeError(
            f"class mix {class_mix!r} needs both classes; the set has {len(bona)} bona fide and "
            f"{len(spoof)} spoof utterances -- use class mix dataset"
        )
    p = 0.5 if mix == "equal" else float(mix)
    if len(bona) / (len(bona) + len(spoof)) >= p:  # bona fide abundant: keep every spoof
        n_s = len(spoof)
        n_b = min(len(bona), int(round(n_s * p / (1 - p))))
    else:
        n_b = len(bona)
        n_s = min(len(spoof), int(round(n_b * (1 - p) / p)))
    if n_b < 1 or n_s < 1:
        raise SharpscopeError(f"class mix {class_mix!r} leaves no utterance of one class in this set")
    rng = np.random.default_rng([int(seed), 7])
    keep = np.concatenate([rng.choice(bona, n_b, replace=False), rng.choice(spoof, n_s, replace=False)])
    return sorted(int(i) for i in keep)


def _canonical(n: int, keys: Sequence[Any] | None) -> np.ndarray:
    """Row positions sorted by ``keys`` (utterance ids): the seeded draws then depend on the *set* of
    utterances, not on how the manifest happens to be sorted."""
    if keys is None:
        return np.arange(n)
    return np.asarray(sorted(range(n), key=lambda i: str(keys[i])), dtype=int)


def batch_order(
    labels: Sequence[Any], order: str = DEFAULT_ORDER, seed: int = 0, keys: Sequence[Any] | None = None
) -> list[int]:
    """Row positions in the order they are batched (see the module docstring).

    ``keys`` (utterance ids) make ``shuffled`` and ``balanced`` invariant to a permutation of the manifest.
    """
    n = len(labels)
    if order == "manifest":
        return list(range(n))
    rng = np.random.default_rng(seed)
    canon = _canonical(n, keys)
    if order == "shuffled":
        return canon[rng.permutation(n)].tolist()
    if order == "balanced":
        lab = np.asarray([str(labels[i]) for i in canon])
        keys_ = np.empty(n, dtype=float)
        for c in np.unique(lab):
            idx = rng.permutation(np.flatnonzero(lab == c))
            keys_[idx] = (np.arange(len(idx)) + 0.5) / len(idx)
        return canon[np.argsort(keys_, kind="stable")].tolist()
    raise SharpscopeError(f"unknown batch order {order!r}; use one of {', '.join(ORDERS)}")


def score_table(manifest: pd.DataFrame, logits: dict[int, np.ndarray]) -> pd.DataFrame:
    """The manifest (row order kept) plus ``logit_spoof``, ``logit_bonafide``, ``score`` (bona-fide logit)."""
    missing = [i for i in range(len(manifest)) if i not in logits]
    if missing:
        raise SharpscopeError(f"{len(missing)} manifest rows were not scored (first row {missing[0] + 1})")
    z = np.stack([logits[i] for i in range(len(manifest))]).astype(np.float64)
    out = manifest.reset_index(drop=True).copy()
    out["logit_spoof"] = z[:, 0]
    out["logit_bonafide"] = z[:, 1]
    out["score"] = z[:, 1]
    return out


def score_and_sharpness(
    model: nn.Module,
    manifest: pd.DataFrame,
    estimator: Any,
    loss: Loss | str | Sequence[Loss | str] = "weighted-ce",
    *,
    batch_size: int = 32,
    crop: str = "first",
    order: str = DEFAULT_ORDER,
    class_mix: Any = DEFAULT_CLASS_MIX,
    seed: int | None = None,
    nb_samp: int = NB_SAMP,
    cache: AudioCache | None = None,
    progress: Any = None,
) -> tuple[pd.DataFrame, SharpnessResult | dict[str, SharpnessResult]]:
    """Scores of every manifest row and the sharpness estimate, from one shared pass.

    ``loss`` -- one loss (returns one :class:`SharpnessResult`) or several (returns ``{loss name: result}``,
    e.g. ``["weighted-ce", "kl-to-clean"]`` for labelled and label-free on the same batches).  ``order`` and
    ``class_mix`` fix the batch composition (module docstring); ``seed`` seeds both (default: the estimator's
    seed).  ``progress(n_done, n_total)`` is called per batch.  The model is used where it is (move it to the
    device first); it is in eval mode during the pass and restored bit-for-bit afterwards.
    """
    if batch_size < 1:
        raise SharpscopeError(f"batch size must be positive, got {batch_size}")
    if len(manifest) == 0:
        raise SharpscopeError("the manifest has no rows to score")
    settings = getattr(estimator, "settings", None)
    if seed is None:
        seed = int(getattr(settings, "seed", 0))
    mix = parse_class_mix(class_mix)
    many = not isinstance(loss, (str, Loss))
    losses: list[Loss | str] = [loss] if isinstance(loss, (str, Loss)) else list(loss)
    cache = cache if cache is not None else AudioCache()
    labels = manifest["label"].astype(str).tolist()
    ids = manifest["utt_id"].astype(str).tolist()
    used = class_mix_rows(labels, mix, seed, keys=ids)
    positions = [used[k] for k in batch_order([labels[i] for i in used], order, seed, [ids[i] for i in used])]
    rest = sorted(set(range(len(manifest))) - set(used))
    n_total = len(manifest)
    logits: dict[int, np.ndarray] = {}

    def record(batch: Any, z: torch.Tensor) -> None:
        zz = z.detach().float().cpu().numpy()
        for k, row in enumerate(batch.meta["rows"]):
            logits[int(row)] = zz[k]
        if progress is not None:
            progress(len(logits), n_total)

    def batches(rows: list[int]):
        return iter_batches(manifest, batch_size, crop, nb_samp=nb_samp, cache=cache, order=rows)

    if hasattr(estimator, "session"):
        with estimator.session(model, losses) as sess:
            for batch in batches(positions):
                record(batch, sess.score(batch) if sess.done else sess.step(batch))
            for batch in batches(rest):
                record(batch, sess.score(batch))
            results = sess.results()
        by_loss = {r.settings["loss"]: r for r in results}
    else:  # estimators without a streaming session: estimate, then a separate scoring pass over cached audio
        by_loss = {}
        for lo in losses:
            loss_obj = as_loss(lo)
            r = estimator.estimate(model, batches(positions), loss_obj)
            r.settings.setdefault("loss", loss_obj.name)
            by_loss[loss_obj.name] = r
        device = next(model.parameters()).device
        with preserved(model):  # the one clean forward pass of `sharpscope score` (no finiteness check:
            # non-finite logits follow the estimator's `nonfinite` policy, and the EER step reports them)
            for batch, z in forward_batches(model, batches(positions + rest), device, check_finite=False):
                record(batch, z)
    n_b = sum(1 for i in used if labels[i] == "bonafide")
    n_s = sum(1 for i in used if labels[i] == "spoof")
    for r in by_loss.values():
        r.settings.update(
            {
                "order": order,
                "class_mix": mix,
                "crop": crop,
                "order_seed": seed,
                "batch_size": batch_size,
            }
        )
        r.extra.update({"n_bonafide_used": n_b, "n_spoof_used": n_s, "n_rows_scored_only": len(rest)})
    scores = score_table(manifest, logits)
    return scores, (by_loss if many else next(iter(by_loss.values())))


# ---- the ``sharpscope sharpness`` command ------------------------------------------------------------------


def estimator_settings(measure: str, given: dict[str, Any], seed: int) -> dict[str, Any]:
    """Estimator settings from command-line options: the options given (not None), the seed where the
    measure takes one, and ``nonfinite`` only where it applies (landscape keeps every grid point)."""
    from .registry import measure_settings

    settings = {k: v for k, v in given.items() if v is not None}
    accepted = measure_settings(measure)
    if "seed" in accepted:
        settings["seed"] = seed
    if "nonfinite" not in accepted:
        settings.pop("nonfinite", None)
    return settings


def run_sharpness(
    checkpoint: str,
    manifest: str,
    arch: str | None,
    measure: str,
    out_dir: str,
    settings: dict[str, Any] | None = None,
    losses: Sequence[str] = ("weighted-ce",),
    *,
    batch_size: int = 32,
    crop: str = "first",
    order: str = DEFAULT_ORDER,
    class_mix: Any = DEFAULT_CLASS_MIX,
    trust_checkpoint: bool = False,
    model_cfg: dict[str, Any] | None = None,
    device: str = "cpu",
    n_boot_eer: int = 1000,
    progress: Any = None,
) -> dict[str, Any]:
    """``sharpscope sharpness``: load, score + estimate in one pass, write ``sharpness.json``, ``scores.csv``
    and (labelled manifests) ``metrics.json``.  Returns the ``sharpness.json`` content."""
    import json
    from pathlib import Path

    from ..data.manifest import read_manifest
    from ..metrics import evaluate
    from ..models.checkpoints import load_checkpoint
    from ..provenance import file_sha256, provenance
    from .registry import make_estimator

    settings = dict(settings or {})
    losses = list(losses) or ["weighted-ce"]
    estimator = make_estimator(measure, **settings)
    seed = int(getattr(getattr(estimator, "settings", None), "seed", settings.get("seed", 0)))
    df = read_manifest(manifest)
    ckpt = load_checkpoint(
        checkpoint, arch, model_cfg=dict(model_cfg or {}), trust_checkpoint=trust_checkpoint
    )
    model = ckpt.model.to(device)
    scores, results = score_and_sharpness(
        model,
        df,
        estimator,
        losses,
        batch_size=batch_size,
        crop=crop,
        order=order,
        class_mix=class_mix,
        seed=seed,
        progress=progress,
    )
    assert isinstance(results, dict)  # a list of losses gives {loss name: result}
    by_loss: dict[str, SharpnessResult] = results
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / "scores.csv", scores, index=False)
    files = {"sharpness": "sharpness.json", "scores": "scores.csv"}
    labelled = scores["label"].astype(str).isin(["bonafide", "spoof"])
    metrics: dict[str, Any] | None = None
    if labelled.all() and labelled.any():
        try:
            metrics = evaluate(scores, seed=seed, n_boot=n_boot_eer)
        except ScoreError as exc:  # e.g. non-finite logits: keep the sharpness result, say why no metrics
            metrics = {"eer": None, "error": str(exc)}
        files["metrics"] = "metrics.json"
        atomic_write_text(out / "metrics.json", json.dumps(jsonable(metrics, finite=True), indent=2) + "\n")
    run_settings = {
        "command": "sharpness",
        "measure": measure,
        "estimator": by_loss[losses[0]].settings,
        "losses": losses,
        "arch": ckpt.arch,
        "checkpoint": str(checkpoint),
        "manifest": str(manifest),
        "batch_size": int(batch_size),
        "crop": crop,
        "order": order,
        "class_mix": parse_class_mix(class_mix),
        "nonfinite": by_loss[losses[0]].settings.get("nonfinite"),
        "score_type": "bonafide-logit",
        "family": ckpt.family if hasattr(ckpt, "family") else ckpt.arch,
        "model_cfg": dict(model_cfg or {}),
        "device": str(device),
    }
    first = by_loss[losses[0]]
    doc = {
        "measure": measure,
        "loss": losses[0],
        "value": first.value,
        "result": first.to_dict(),
        "other_losses": {k: r.to_dict() for k, r in by_loss.items() if k != losses[0]},
        "metrics": metrics,
        "settings": run_settings,
        "files": files,
        "provenance": provenance(
            run_settings,
            seed=seed,
            checkpoint_sha256=ckpt.sha256,
            manifest_sha256=file_sha256(manifest),
            n_utts=first.n_utts,
            n_utts_scored=len(scores),
        ),
    }
    doc = jsonable(doc, finite=True)
    atomic_write_text(out / "sharpness.json", json.dumps(doc, indent=2) + "\n")
    return doc
