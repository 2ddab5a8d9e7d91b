"""Granulated Kendall coefficient (Jiang et al. 2020, "Fantastic generalization measures and where to
find them", ICLR, §4) and the rule that picks training-hyperparameter axes from ``meta_*`` columns."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import SharpscopeError
from .selection import ordered_testsets, paired_table

#: Keys of a training sidecar that are choices of the training configuration.  The sidecar is written by
#: ``sharpscope.train.loop.checkpoint_meta`` and flattened by ``sharpscope.sweep.study.checkpoint_meta`` into
#: ``meta_<key>`` columns (nested blocks joined with '_': ``lora_rank``, ``mldg_inner_lr``, ``augment_p``);
#: the list adds the usual names of other toolkits.  The order is a priority: of two columns that determine
#: each other (``method`` and ``adaptive`` in a zoo whose only adaptive run is ASAM) the earlier is kept.
HYPERPARAM_KEYS = (
    "method",
    "finetune",
    "arch",
    "optimizer",
    "lr",
    "learning_rate",
    "sam_rho",
    "rho",
    "adaptive",
    "eta",
    "seed",
    "epochs",
    "max_epochs",
    "steps",
    "max_steps",
    "steps_per_epoch",
    "batch_size",
    "nb_samp",
    "weight_decay",
    "momentum",
    "schedule",
    "min_lr",
    "warmup_steps",
    "loss",
    "dropout",
    "label_smoothing",
    "checkpoint",  # the training loop's selection rule: "best" (dev EER) or "last"
)
#: Nested training-config blocks (the sidecar's ``sam``, ``lora``, ``mldg``, ``augment``; ``optimizer`` and
#: ``schedule`` blocks of other toolkits' sidecars), admitted whole.
HYPERPARAM_PREFIXES = ("sam_", "lora_", "mldg_", "augment_", "optimizer_", "schedule_")
#: Outcomes and identifiers the training loop and the sweep write as ``meta_*``: never axes, even when a
#: prefix above would admit a name of this shape.
_NOT_HYPERPARAMS = frozenset(
    {
        "meta_dev_eer",
        "meta_dev_loss",
        "meta_train_loss",
        "meta_meta_test_loss",
        "meta_epoch",  # the epoch a "best" checkpoint was selected at: an outcome of early stopping
        "meta_global_step",
        "meta_n_params",
        "meta_name",
        "meta_config_hash",
        "meta_train_manifest",
        "meta_train_manifest_hash",
        "meta_dev_manifest",
        "meta_dev_manifest_hash",
    }
)
#: Name shapes of outcomes, identifiers and provenance (checked on the key without ``meta_``).
_OUTCOME_KEY = re.compile(
    r"^(dev|train|val|valid|validation|test|eval|best|final|last)_"
    r"|_(eer|loss|acc|accuracy|err|error|auc|dcf|cllr|score|hash|sha|sha256|path|file|manifest|id|seconds)$"
    r"|^(epoch|global_step|step|n_params|name|id|uid|seconds|wall_s|git_revision|provenance|config)$"
)
PSI_LABEL = "Ψ (mean)"


class NoHyperparameterAxesError(SharpscopeError):
    """No training-hyperparameter axis takes two values, so no granulated Kendall coefficient exists."""


def _missing(v: object) -> bool:
    return v is None or (pd.api.types.is_scalar(v) and bool(pd.isna(v)))


def _levels(col: pd.Series) -> pd.Series:
    """Hashable level labels of one axis; every missing value (None, NaN) is one level ``∅``.

    Numeric columns compare as floats (``1`` and ``1.0`` are one level); a sidecar key that one run lacks
    and another writes as null are the same level.
    """
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.astype(float).map(lambda v: "∅" if math.isnan(v) else repr(float(v)))
    return col.map(lambda v: "∅" if _missing(v) else str(v))


def _is_outcome(col: str) -> bool:
    return col in _NOT_HYPERPARAMS or bool(_OUTCOME_KEY.search(col.removeprefix("meta_")))


def _is_config_key(col: str) -> bool:
    key = col.removeprefix("meta_")
    return col.startswith("meta_") and (key in HYPERPARAM_KEYS or key.startswith(HYPERPARAM_PREFIXES))


def _priority(col: str) -> tuple[int, str]:
    key = col.removeprefix("meta_")
    return (HYPERPARAM_KEYS.index(key) if key in HYPERPARAM_KEYS else len(HYPERPARAM_KEYS), key)


def _short_list(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return (", ".join(names[:limit]) or "none") + more


def default_hyperparams(tab: pd.DataFrame) -> list[str]:
    """Training-hyperparameter axes of a table: the ``meta_*`` training-configuration columns that vary.

    Jiang et al. (2020) take the axes θ_1..θ_n of the grid the models were trained on; outcomes of training
    are not axes (conditioning on dev EER or the early-stopping epoch would compare checkpoints that differ in
    how well they trained, not in how they were trained).  The rule, applied to checkpoint-level values:

    1. admitted: ``meta_<key>`` with ``key`` in :data:`HYPERPARAM_KEYS` (method, optimizer, lr, sam_rho, eta,
       seed, epochs, batch_size, ...) or starting with one of :data:`HYPERPARAM_PREFIXES` (``lora_``,
       ``mldg_``, ``augment_``, ``sam_`` ...) -- everything else (``dev_eer``, ``dev_loss``, ``train_loss``,
       ``epoch``, ``global_step``, ``n_params``, manifests, hashes, names) is never an axis;
    2. refused even then: names of outcomes/identifiers (``_NOT_HYPERPARAMS`` and ``*_eer``, ``*_loss``,
       ``*_acc``, ``best_*``, ``dev_*``, ``*_hash``, ``*_path`` ...);
    3. kept: columns with at least two levels across checkpoints (missing values are one level);
    4. of columns that are a function of another kept column (``adaptive`` given ``method`` when ASAM is the
       only adaptive run; ``lora_rank`` given ``finetune``) only the determining one stays, since conditioning
       on a derived column only splits the same groups; of two columns that determine each other the earlier
       in :data:`HYPERPARAM_KEYS` stays.

    Raises :class:`NoHyperparameterAxesError` (naming the candidates and the ``meta_*`` columns that were not
    admitted) when no axis is left; name the axes explicitly with ``hyperparams=`` / ``--hyperparams``.
    """
    ck = tab.drop_duplicates("checkpoint")
    meta = [c for c in ck.columns if c.startswith("meta_")]
    admitted = sorted((c for c in meta if _is_config_key(c) and not _is_outcome(c)), key=_priority)
    lv = {c: _levels(ck[c]) for c in admitted}
    cands = [c for c in admitted if lv[c].nunique() >= 2]

    def determines(a: str, b: str) -> bool:
        return bool((lv[b].groupby(lv[a]).nunique() <= 1).all())

    keep = []
    for c in cands:  # in priority order
        derived = any(
            o != c and determines(o, c) and (not determines(c, o) or _priority(o) < _priority(c))
            for o in cands
        )
        if not derived:
            keep.append(c)
    if not keep:
        constant = [f"{c}={lv[c].iloc[0]}" for c in admitted]
        other = [c for c in meta if c not in admitted]
        raise NoHyperparameterAxesError(
            f"granulated Kendall: no training hyperparameter takes two values across the {len(ck)} "
            f"checkpoint(s) (training-configuration columns: {_short_list(constant)}; other meta_ columns, "
            f"outcomes or identifiers, not taken as axes: {_short_list(other)}); name the axes with "
            "--hyperparams a,b (Python: hyperparams=[...]) or add them to the checkpoints' sidecars"
        )
    return keep


def _resolve_hyperparams(tab: pd.DataFrame, hyperparams: Sequence[str] | str) -> list[str]:
    """User-named axes: ``meta_`` prefix optional, each must be a column; one must take two values."""
    names = [h.strip() for h in hyperparams.split(",")] if isinstance(hyperparams, str) else list(hyperparams)
    out, missing = [], []
    for h in (h for h in names if h):
        col = h if h in tab.columns else f"meta_{h}"
        if col not in tab.columns:
            missing.append(h)
        elif col not in out:
            out.append(col)
    if missing or not out:
        meta = [c for c in tab.columns if c.startswith("meta_")]
        what = f"hyperparameter column(s) {missing} not in the table" if missing else "no axes given"
        raise SharpscopeError(f"{what} (meta_ columns: {_short_list(meta)})")
    ck = tab.drop_duplicates("checkpoint")
    if all(_levels(ck[c]).nunique() < 2 for c in out):
        raise NoHyperparameterAxesError(
            f"granulated Kendall: none of the given hyperparameters ({', '.join(out)}) takes two values "
            f"across the {len(ck)} checkpoint(s); name axes that vary with --hyperparams (meta_ columns: "
            f"{_short_list([c for c in tab.columns if c.startswith('meta_')])})"
        )
    return out


def sign_kendall(mu: np.ndarray, g: np.ndarray) -> float:
    """Jiang et al.'s τ of one group: Σ_{j≠k} sign(μ_j − μ_k)·sign(g_j − g_k) / (n(n − 1)).

    Ties contribute 0 and there is no tie correction (unlike τ-b), so a group with a constant measure or a
    constant generalization value has τ = 0.
    """
    mu, g = np.asarray(mu, float), np.asarray(g, float)
    n = len(mu)
    if n < 2:
        raise ValueError("sign_kendall needs at least two values")
    s = np.sign(mu[:, None] - mu[None, :]) * np.sign(g[:, None] - g[None, :])
    return float(s.sum() / (n * (n - 1)))


def granulated_kendall_table(tab: pd.DataFrame, hyperparams: Sequence[str]) -> list[dict]:
    """ψ_i per axis and Ψ for one set of (checkpoint, x, y, axes...) rows, e.g. one test set.

    For axis i the checkpoints are partitioned by the values of every other axis; a part holding >= 2
    checkpoints that do not all share the value of axis i is a group, and its :func:`sign_kendall` τ
    between x (the measure μ) and y (the generalization value g) is counted -- a group with constant x or y
    too, with τ = 0.  ψ_i is the mean τ over the groups of axis i (NaN with a note when there is none); the
    last row, ``Ψ (mean)``, is the mean of ψ_i over the axes with at least one group.
    """
    hp = list(hyperparams)
    lv = {c: _levels(tab[c]) for c in hp}
    rows = []
    psis = []
    n_groups_all = 0
    for h in hp:
        others = [lv[o] for o in hp if o != h]
        parts = tab.groupby(others, sort=True) if others else [((), tab)]
        taus: list[float] = []
        n_used = n_const = n_repeat = 0
        for _, g in parts:
            hv = lv[h].loc[g.index]
            if len(g) < 2 or hv.nunique() < 2:
                continue
            xv, yv = g["x"].to_numpy(float), g["y"].to_numpy(float)
            taus.append(sign_kendall(xv, yv))
            n_used += len(g)
            n_const += int(np.ptp(xv) == 0 or np.ptp(yv) == 0)
            n_repeat += int(hv.duplicated().any())
        notes = []
        if lv[h].nunique() < 2:
            notes.append(f"{h} takes one value here")
        elif not taus:
            notes.append(f"no group of checkpoints that differ only in {h}")
        if n_const:
            notes.append(f"{n_const} group(s) with constant x or y counted with τ = 0")
        if n_repeat:
            notes.append(
                f"{n_repeat} group(s) hold checkpoints equal on every axis (an axis missing? --hyperparams)"
            )
        if _is_outcome(h):
            notes.append(f"{h} looks like a training outcome, not a hyperparameter")
        psi = float(np.mean(taus)) if taus else math.nan
        if taus:
            psis.append(psi)
            n_groups_all += len(taus)
        rows.append(
            {"hyperparam": h, "coef": psi, "n_groups": len(taus), "n": n_used, "note": "; ".join(notes)}
        )
    used = [str(r["hyperparam"]) for r in rows if r["n_groups"]]
    rows.append(
        {
            "hyperparam": PSI_LABEL,
            "coef": float(np.mean(psis)) if psis else math.nan,
            "n_groups": n_groups_all,
            "n": int(tab["checkpoint"].nunique()),
            "note": f"mean of ψ over {len(used)} of {len(hp)} axes ({', '.join(used)})"
            if used
            else "no axis has a group of checkpoints that differ only in it",
        }
    )
    return rows


def granulated_kendall(
    df: pd.DataFrame,
    x: str,
    y: str = "eer",
    *,
    hyperparams: Sequence[str] | str | None = None,
    rho: float | None = None,
    loss: str | None = None,
    subset: str | None = None,
    x_testset: str | None = None,
    dropna: bool = False,
) -> pd.DataFrame:
    """Granulated Kendall coefficient (Jiang et al. 2020, "Fantastic generalization measures and where to
    find them", ICLR, §4) of a measure ``x`` with a generalization value ``y``, per test set.

    With axes θ_1..θ_m, τ(T) = Σ_{j≠k} sign(μ_j − μ_k)·sign(g_j − g_k) / (|T|(|T| − 1)) over a set T of
    checkpoints (ties count 0), ψ_i = mean of τ over the groups of checkpoints that share the values of
    every axis but θ_i (see :func:`granulated_kendall_table`), and Ψ = mean of ψ_i over the axes that have a
    group.  ψ_i asks whether the measure tracks generalization when only θ_i is changed, which a plain τ
    over all checkpoints cannot separate from a confounding axis.

    ``hyperparams``: the axes, as ``meta_*`` columns (prefix optional; a list or a comma string); by default
    :func:`default_hyperparams` (training-configuration columns only, never outcomes such as dev EER).
    Raises :class:`NoHyperparameterAxesError` when no axis takes two values.

    Rows: x, y, testset, method="granulated-kendall", hyperparam (an axis, then ``Ψ (mean)``), coef (ψ_i or
    Ψ), n_groups, n (checkpoints in those groups; all checkpoints of the test set for Ψ), note, axes (the
    axes used, comma-joined), axes_from (``given`` or ``training-config rule``), rho, loss, subset.
    """
    tab, sel = paired_table(df, x, y, rho=rho, loss=loss, subset=subset, x_testset=x_testset, dropna=dropna)
    if hyperparams is None:
        hp, source = default_hyperparams(tab), "training-config rule"
    else:
        hp, source = _resolve_hyperparams(tab, hyperparams), "given"
    rows = []
    for name in ordered_testsets(tab, sel.order):
        for r in granulated_kendall_table(tab[tab["testset"] == name], hp):
            rows.append(
                {
                    "x": x,
                    "y": y,
                    "testset": name,
                    "method": "granulated-kendall",
                    **r,
                    "axes": ",".join(hp),
                    "axes_from": source,
                    "rho": sel.rho,
                    "loss": sel.loss,
                    "subset": sel.subset,
                }
            )
    return pd.DataFrame(rows)
