"""The training loop: ERM, SAM/ASAM or first-order MLDG; full fine-tuning, frozen SSL or LoRA.

``train(config, out_dir)`` trains one model and writes into ``out_dir``::

    config.yaml              the validated configuration (paths resolved)
    state.pt                 resume state (model, optimizer, scheduler, torch RNG, position, history),
                             written atomically at every epoch end and every ``checkpoint_every_steps`` steps
    history.json / .csv      one row per epoch: train loss, dev loss, dev EER, learning rate
    best.safetensors + .json checkpoint with the lowest source-domain dev EER, and its metadata sidecar
    last.safetensors + .json checkpoint after the last epoch
    (LoRA runs: best/ and last/ adapter directories, each with its sidecar ``<name>.json`` next to it)

Reproducibility.  Every random choice is drawn from an explicit seed: the model initialisation (``torch``
seeded with ``seed`` before building), the epoch order (``numpy`` generator seeded with ``(seed, epoch)``),
the random crop offsets, the augmentation and the MLDG domain splits (generators seeded with
``(seed, epoch, step)``) and dropout (the ``torch`` RNG state, saved in ``state.pt``).  Because nothing
depends on where a previous process stopped, resuming from ``state.pt`` gives bit-identical weights to an
uninterrupted run on the CPU (the same config and seed also give bit-identical weights).

Data.  Training batches hold random ``nb_samp``-sample windows (64,600 by default, ~4 s; shorter clips are
tiled, as the reference ``pad_random``); the last incomplete batch of an epoch is dropped (as the reference
AASIST loader).  Validation scores the first ``nb_samp`` samples of each source-domain dev utterance
(bona-fide logit as score) and computes the official EER; the dev set is used for model selection only.
MLDG runs draw, at every step, a meta-train and a meta-test batch (distinct rows, uniformly) from the union
of the meta-train / meta-test domains of that step (see :mod:`sharpscope.train.mldg`); an epoch has as many
steps as an ERM epoch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import ManifestError, SpecError
from ..fileio import atomic_write, atomic_write_csv, atomic_write_text, json_default
from ..models.outputs import forward_logits
from ..progress import progress_bar
from ..provenance import config_hash, provenance
from .augment import augment
from .config import TrainConfig, dump_config
from .mldg import MLDG, assign_domains, sample_rows, split_domains
from .sam import SAM

if TYPE_CHECKING:
    from ..models.ssl import SSLCountermeasure

STATE_FILE = "state.pt"
STATE_FORMAT = 1
LABELS = {"spoof": 0, "bonafide": 1}


@dataclass
class TrainResult:
    """Where a run's outputs are; ``completed`` is False when it stopped early (``stop_after_*``)."""

    out_dir: Path
    best: Path | None
    last: Path | None
    best_sidecar: Path | None
    last_sidecar: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    completed: bool = True
    epochs_done: int = 0
    global_step: int = 0


# ---- small pure helpers ---------------------------------------------------------------------------------


def random_crop(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``n``-sample window (uniform start); shorter clips are tiled to ``n`` (no randomness used)."""
    if len(x) > n:
        start = int(rng.integers(0, len(x) - n + 1))
        return x[start : start + n]
    if len(x) == n:
        return x
    reps = n // len(x) + 1
    return np.tile(x, reps)[:n]


def lr_factor(step: int, total: int, name: str, min_ratio: float, warmup: int) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps.

    ``constant``: 1 (after warm-up); ``cosine``: ``min_ratio + (1 − min_ratio)·(1 + cos(π t))/2`` with ``t``
    the fraction of post-warm-up steps done (the official AASIST schedule, stepped per iteration).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def step_rng(seed: int, epoch: int, step: int, stream: int) -> np.random.Generator:
    """The generator of one (epoch, step) and stream: 0 crops/augmentation, 1 MLDG splits."""
    return np.random.default_rng([seed, epoch, step, stream])


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 2**31 - 1]).permutation(n)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("device: cuda was requested but no CUDA GPU is available; use device: cpu or auto")
    return torch.device(name)


# ---- data --------------------------------------------------------------------------------------------------


def _read(path: str, root: str | None, what: str) -> pd.DataFrame:
    from ..data.manifest import read_manifest

    df = read_manifest(path, root=root)
    if len(df) == 0:
        raise ManifestError(f"{what} manifest {path} has no rows")
    bad = [i for i, v in enumerate(df["label"].astype(str)) if v not in LABELS]
    if bad:
        raise ManifestError(
            f"{what} manifest {path} row {bad[0] + 1}: label {df['label'].iloc[bad[0]]!r} is not "
            "bonafide/spoof; training and validation need labelled rows"
        )
    return df.reset_index(drop=True)


def _manifest_hash(path: str, df: pd.DataFrame) -> str:
    try:
        from ..data.manifest import manifest_hash
    except ImportError:  # pragma: no cover - manifest module without hash helper
        from ..provenance import file_sha256

        return file_sha256(path)
    return manifest_hash(df)


class _TrainData:
    """Decodes training rows, crops them randomly and augments them, all from an explicit generator."""

    def __init__(self, df: pd.DataFrame, cfg: TrainConfig) -> None:
        from ..data.audio import load_audio

        self._load = load_audio
        self.paths = df["path"].astype(str).tolist()
        self.labels = np.array([LABELS[str(v)] for v in df["label"]], dtype=np.int64)
        self.nb_samp = cfg.data.nb_samp
        self.aug = cfg.data.augment
        self.cache: dict[int, np.ndarray] | None = {} if cfg.data.cache_audio else None

    def __len__(self) -> int:
        return len(self.paths)

    def _audio(self, i: int) -> np.ndarray:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        x = self._load(self.paths[i], row=i + 1)
        if self.cache is not None:
            self.cache[i] = x
        return x

    def batch(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        waves = []
        for i in rows:
            x = random_crop(self._audio(int(i)), self.nb_samp, rng)
            if self.aug.enabled:
                x = augment(x, rng, self.aug)
            waves.append(np.asarray(x, dtype=np.float32))
        return torch.from_numpy(np.stack(waves)), torch.from_numpy(self.labels[np.asarray(rows)])


# ---- model / optimiser ----------------------------------------------------------------------------------


def build_train_model(cfg: TrainConfig) -> nn.Module:
    """The model of ``cfg`` with its fine-tuning mode applied (seed ``torch`` first: reproducible init)."""
    from ..models.checkpoints import build_checked

    model_cfg = dict(cfg.model)
    if cfg.finetune == "frozen":
        if model_cfg.get("freeze_ssl") is False:
            raise SpecError("finetune: frozen contradicts model.freeze_ssl: false; remove model.freeze_ssl")
        model_cfg["freeze_ssl"] = True
    model = build_checked(cfg.arch, model_cfg, "model")
    if cfg.finetune == "lora":
        from ..models.lora import add_lora

        lo = cfg.lora
        model = add_lora(
            cast("SSLCountermeasure", model),  # add_lora refuses (SpecError) anything else
            rank=lo.rank,
            alpha=lo.alpha,
            dropout=lo.dropout,
            target_modules=lo.target_modules,
        )
    return model


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "adam":
        return torch.optim.Adam(
            params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, amsgrad=o.amsgrad
        )
    if o.name == "adamw":
        return torch.optim.AdamW(
            params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, amsgrad=o.amsgrad
        )
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
    )


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    s = cfg.schedule
    ratio = min(1.0, s.min_lr / cfg.optimizer.lr)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: lr_factor(k, total_steps, s.name, ratio, s.warmup_steps)
    )


def make_loss(cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from ..losses import CrossEntropy

    if cfg.loss.name != "weighted-ce":
        return CrossEntropy(None)
    # class_weights holds two numbers (the config checks the length); tuple() gives tuple[float, ...]
    return CrossEntropy(cast(tuple[float, float], tuple(cfg.loss.class_weights)))


# ---- checkpoints and state ---------------------------------------------------------------------------------


def build_kwargs(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Keyword arguments of ``build_model(arch, ...)`` that rebuild ``model`` (without LoRA adapters).

    AASIST models report them as ``model_cfg``; SSL models as ``arch_config`` (front-end config, head config,
    pretrained directory, freeze flag); otherwise the config's ``model`` section is used.
    """
    cfg_attr = getattr(model, "model_cfg", None)
    if cfg_attr is not None:
        return dict(cfg_attr)
    ac = getattr(model, "arch_config", None)
    if isinstance(ac, dict) and "ssl_config" in ac:
        return {
            "ssl_config": ac["ssl_config"],
            "pretrained": ac.get("pretrained"),
            "freeze_ssl": bool(ac.get("freeze_ssl", False)),
            **dict(ac.get("head_cfg") or {}),
        }
    return dict(cfg.model)


def checkpoint_meta(cfg: TrainConfig, model: nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    """The metadata sidecar of a checkpoint: everything the sweep needs to place it in a study."""
    sam = cfg.sam
    return {
        "arch": cfg.arch,
        "model_cfg": build_kwargs(model, cfg),
        "finetune": cfg.finetune,
        "method": cfg.method,
        "optimizer": cfg.optimizer.name,
        "lr": cfg.optimizer.lr,
        "weight_decay": cfg.optimizer.weight_decay,
        "schedule": cfg.schedule.name,
        "min_lr": cfg.schedule.min_lr,
        "batch_size": cfg.data.batch_size,
        "nb_samp": cfg.data.nb_samp,
        "epochs": cfg.epochs,
        "loss": cfg.loss.name,
        "class_weights": list(cfg.loss.class_weights),
        "sam_rho": sam.rho if sam is not None else 0.0,
        "adaptive": bool(sam.adaptive) if sam is not None else False,
        "eta": sam.eta if sam is not None and sam.adaptive else None,
        "mldg": None if cfg.mldg is None else cfg.to_dict()["mldg"],
        "lora": cfg.to_dict()["lora"] if cfg.finetune == "lora" else None,
        "augment": cfg.to_dict()["data"]["augment"] if cfg.data.augment.enabled else None,
        "seed": cfg.seed,
        "name": cfg.name,
        **info,
        "config": cfg.to_dict(),
        "config_hash": config_hash(cfg.to_dict()),
        "provenance": provenance(cfg.to_dict(), seed=cfg.seed),
    }


def save_model_checkpoint(
    model: nn.Module, cfg: TrainConfig, out_dir: Path, name: str, meta: dict
) -> tuple[Path, Path]:
    """Write checkpoint ``name`` (``best``/``last``) and its sidecar; returns (checkpoint, sidecar) paths.

    Full models: ``<name>.safetensors`` + ``<name>.json`` written by
    :func:`sharpscope.models.checkpoints.save_checkpoint` (sidecar ``{format, version, arch, model_cfg,
    weights, weights_sha256, meta}``).  LoRA models: the PEFT directory ``<name>/`` written by
    :func:`sharpscope.models.lora.save_lora` and a sidecar ``<name>.json`` of the same layout beside it.
    """
    from ..models.checkpoints import SIDECAR_FORMAT, SIDECAR_VERSION, save_checkpoint

    if cfg.finetune != "lora":
        path = out_dir / f"{name}.safetensors"
        save_checkpoint(model, path, meta)
        return path, path.with_suffix(".json")
    from ..models.lora import save_lora
    from ..provenance import file_sha256

    path = out_dir / name
    save_lora(cast("SSLCountermeasure", model), path)  # finetune lora: the SSL model add_lora adapted
    rest = {k: v for k, v in meta.items() if k not in ("arch", "model_cfg")}
    doc = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "arch": meta.get("arch"),
        "model_cfg": meta.get("model_cfg"),
        "weights": path.name,
        "weights_sha256": file_sha256(path),
        "meta": rest,
    }
    sidecar = out_dir / f"{name}.json"
    atomic_write_text(sidecar, json.dumps(doc, indent=2, sort_keys=True, default=json_default) + "\n")
    return path, sidecar


def _write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(out_dir / "history.json", json.dumps(history, indent=2, default=json_default) + "\n")
    if history:
        atomic_write_csv(out_dir / "history.csv", pd.DataFrame(history), index=False)


# ---- evaluation -------------------------------------------------------------------------------------------


def evaluate_dev(
    model: nn.Module,
    df: pd.DataFrame,
    cfg: TrainConfig,
    device: torch.device,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    cache: Any,
) -> tuple[float, float]:
    """(EER, mean loss) on the dev manifest: first ``nb_samp`` samples, bona-fide logit as score.

    The forward is :func:`sharpscope.scoring.forward_batches`, the clean pass of ``sharpscope score``, so dev
    EERs and test-set EERs are computed from identically read logits.  Non-finite logits give ``(nan, nan)``
    (the epoch is recorded, never selected as best) instead of an error.
    """
    from ..data.audio import iter_batches
    from ..metrics import compute_eer
    from ..scoring import forward_batches

    bs = cfg.data.eval_batch_size or cfg.data.batch_size
    scores = np.empty(len(df), dtype=np.float64)
    labels = np.empty(len(df), dtype=np.int64)
    total, n = 0.0, 0
    batches = iter_batches(df, batch_size=bs, crop="first", nb_samp=cfg.data.nb_samp, cache=cache)
    for b, logits in forward_batches(model, batches, device, check_finite=False):
        rows = b.meta["rows"]
        scores[rows] = logits[:, 1].double().cpu().numpy()
        labels[rows] = b.labels.cpu().numpy()
        with torch.inference_mode():
            total += float(loss_fn(logits, b.labels)) * len(b)
        n += len(b)
    if not np.all(np.isfinite(scores)):
        return math.nan, math.nan
    eer, _ = compute_eer(scores[labels == 1], scores[labels == 0])
    return float(eer), total / max(n, 1)


# ---- the loop ---------------------------------------------------------------------------------------------


def _rng_state(device: torch.device) -> dict[str, Any]:
    st: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["cpu"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _paths(out_dir: Path, cfg: TrainConfig, name: str) -> tuple[Path, Path]:
    if cfg.finetune == "lora":
        return out_dir / name, out_dir / f"{name}.json"
    return out_dir / f"{name}.safetensors", out_dir / f"{name}.json"


def _fresh_run_loss() -> dict[str, float]:
    return {"sum": 0.0, "n": 0, "sum_te": 0.0}


@dataclass
class Position:
    """Where a run stands: everything besides weights, optimizer, scheduler and RNG that ``state.pt`` saves.

    ``run_loss`` accumulates the current epoch's training (and MLDG meta-test) losses.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_eer: float = math.inf
    best_epoch: int | None = None
    run_loss: dict[str, float] = field(default_factory=_fresh_run_loss)


def _read_state(state_path: Path, out: Path, resume: bool, chash: str) -> dict[str, Any] | None:
    """The resume state in ``out`` (None when there is none); refuses a state of another config."""
    if not state_path.is_file():
        return None
    if not resume:
        raise SpecError(f"{out} already holds a training state ({STATE_FILE}); use another --out or resume")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / foreign file: torch raises several types
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(
            f"cannot read the resume state {state_path} ({msg}); delete it to start over"
        ) from None
    if state.get("format") != STATE_FORMAT or state.get("config_hash") != chash:
        raise SpecError(
            f"{out} holds a run of a different training config "
            f"(hash {state.get('config_hash')} != {chash}); use another --out or delete that folder"
        )
    return state


def _read_data(cfg: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Training and (optional) dev manifests; both must hold both classes."""
    train_df = _read(cfg.data.train, cfg.data.root, "training")
    classes = set(train_df["label"].astype(str))
    if classes != set(LABELS):
        only = ", ".join(sorted(classes))
        raise ManifestError(
            f"training manifest {cfg.data.train} holds only {only} rows ({len(train_df)}); a countermeasure "
            "needs both bonafide and spoof rows to learn from"
        )
    dev_df = _read(cfg.data.dev, cfg.data.root, "dev") if cfg.data.dev else None
    if dev_df is not None and set(dev_df["label"].astype(str)) != set(LABELS):
        raise ManifestError(
            f"dev manifest {cfg.data.dev} needs both bonafide and spoof rows to compute an EER"
        )
    return train_df, dev_df


class Trainer:
    """One training run with its state held explicitly (see the module docstring for what it writes).

    The constructor validates, reads the data and builds model, optimizer and scheduler (restoring them from
    ``state.pt`` when resuming); :meth:`run` trains.  Everything that changes while training lives in
    :attr:`pos` (a :class:`Position`) and in the model / optimizer / scheduler objects, so
    :meth:`save_state` and :meth:`result` read no hidden variables.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        resume: bool = True,
        stop_after_epochs: int | None = None,
        stop_after_steps: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        cfg = self.cfg = config
        cfg.check()
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.say: Callable[[str], None] = log or (lambda _msg: None)
        self.stop_after_epochs = stop_after_epochs
        self.stop_after_steps = stop_after_steps
        self.device = _resolve_device(cfg.device)
        self.chash = config_hash(cfg.to_dict())
        self.state_path = self.out / STATE_FILE
        state = _read_state(self.state_path, self.out, resume, self.chash)

        # data
        train_df, self.dev_df = _read_data(cfg)
        self.data = _TrainData(train_df, cfg)
        self.hashes = {
            "train_manifest": cfg.data.train,
            "train_manifest_hash": _manifest_hash(cfg.data.train, train_df),
            "dev_manifest": cfg.data.dev,
            # _read_data reads a dev manifest only when cfg.data.dev is set
            "dev_manifest_hash": (
                None if self.dev_df is None else _manifest_hash(cast(str, cfg.data.dev), self.dev_df)
            ),
        }
        self.bs = bs = cfg.data.batch_size
        full_steps = max(1, len(self.data) // bs)
        self.steps_per_epoch = min(full_steps, cfg.steps_per_epoch) if cfg.steps_per_epoch else full_steps
        self.domains: dict[str, np.ndarray] = {}
        self.domain_names: list[str] = []
        if cfg.mldg is not None:
            self.domains = assign_domains(train_df, cfg.mldg.domain_column, cfg.mldg.bonafide, cfg.seed)
            self.domain_names = sorted(self.domains)
            # validates n_meta_test
            split_domains(self.domain_names, cfg.mldg.n_meta_test, np.random.default_rng(0))
        total_steps = cfg.epochs * self.steps_per_epoch

        # model, optimiser
        torch.manual_seed(cfg.seed)
        self.model = build_train_model(cfg).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise SpecError(
                f"arch {cfg.arch!r} with finetune {cfg.finetune!r} leaves no trainable parameters"
            )
        self.base = make_optimizer(params, cfg)
        self.sched = make_scheduler(self.base, cfg, total_steps)
        self.loss_fn = make_loss(cfg)
        self.opt: SAM | MLDG | None = None
        if cfg.sam is not None:
            self.opt = SAM(self.model, self.base, rho=cfg.sam.rho, adaptive=cfg.sam.adaptive, eta=cfg.sam.eta)
        elif cfg.mldg is not None:
            self.opt = MLDG(self.model, self.base, inner_lr=cfg.mldg.inner_lr, beta=cfg.mldg.beta)

        self.pos = Position()
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.base.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.pos = Position(
                epoch=state["epoch"],
                step_in_epoch=state["step_in_epoch"],
                global_step=state["global_step"],
                history=state["history"],
                best_eer=state["best_eer"],
                best_epoch=state["best_epoch"],
                run_loss=state["run_loss"],
            )
            _set_rng_state(state["rng"], self.device)
            self.say(f"resuming {self.out} at epoch {self.pos.epoch + 1}, step {self.pos.step_in_epoch}")
        else:
            dump_config(cfg, self.out / "config.yaml")
        self.dev_cache: Any = None

    # -- state and result ---------------------------------------------------------------------------------

    def save_state(self) -> None:
        """Write ``state.pt`` atomically: weights, optimizer, scheduler, torch RNG and :attr:`pos`."""
        pos = self.pos
        state = {
            "format": STATE_FORMAT,
            "config_hash": self.chash,
            "epoch": pos.epoch,
            "step_in_epoch": pos.step_in_epoch,
            "global_step": pos.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.base.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": _rng_state(self.device),
            "history": pos.history,
            "best_eer": pos.best_eer,
            "best_epoch": pos.best_epoch,
            "run_loss": pos.run_loss,
        }
        atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))

    def result(self, completed: bool) -> TrainResult:
        best, best_side = _paths(self.out, self.cfg, "best")
        last, last_side = _paths(self.out, self.cfg, "last")
        have_best = self.pos.best_epoch is not None and best_side.is_file()
        have_last = last_side.is_file()
        return TrainResult(
            out_dir=self.out,
            best=best if have_best else None,
            last=last if have_last else None,
            best_sidecar=best_side if have_best else None,
            last_sidecar=last_side if have_last else None,
            history=list(self.pos.history),
            completed=completed,
            epochs_done=self.pos.epoch,
            global_step=self.pos.global_step,
        )

    def stop_now(self) -> bool:
        """An early stop (``stop_after_*``) is due at this epoch boundary or step count."""
        pos = self.pos
        return (self.stop_after_steps is not None and pos.global_step >= self.stop_after_steps) or (
            self.stop_after_epochs is not None
            and pos.epoch >= self.stop_after_epochs
            and pos.step_in_epoch == 0
        )

    # -- steps ----------------------------------------------------------------------------------------------

    def _loss_at(self, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The closure an optimizer re-evaluates: loss of the current weights on (x, y)."""
        return lambda: self.loss_fn(forward_logits(self.model, x), y)

    def run_step(self, order: np.ndarray) -> tuple[float, float | None]:
        """One optimizer step at the current position; returns (training loss, MLDG meta-test loss)."""
        cfg, e, k, bs, device = self.cfg, self.pos.epoch, self.pos.step_in_epoch, self.bs, self.device
        rng = step_rng(cfg.seed, e, k, 0)
        if cfg.mldg is not None:
            assert isinstance(self.opt, MLDG)
            split = split_domains(self.domain_names, cfg.mldg.n_meta_test, step_rng(cfg.seed, e, k, 1))
            rows_tr = sample_rows(self.domains, split.meta_train, bs, rng)
            rows_te = sample_rows(self.domains, split.meta_test, cfg.mldg.meta_test_batch_size or bs, rng)
            x_tr, y_tr = (t.to(device) for t in self.data.batch(rows_tr, rng))
            x_te, y_te = (t.to(device) for t in self.data.batch(rows_te, rng))
            l_tr, l_te = self.opt.step(self._loss_at(x_tr, y_tr), self._loss_at(x_te, y_te))
            return float(l_tr), float(l_te)
        rows = order[k * bs : (k + 1) * bs]
        x, y = (t.to(device) for t in self.data.batch(rows, rng))
        if self.opt is not None:
            assert isinstance(self.opt, SAM)
            return float(self.opt.step(self._loss_at(x, y))), None
        self.base.zero_grad(set_to_none=True)
        loss = self._loss_at(x, y)()
        loss.backward()
        self.base.step()
        return float(loss.detach()), None

    def _after_step(self, l_tr: float, l_te: float | None) -> None:
        pos = self.pos
        if not math.isfinite(l_tr):
            raise SpecError(
                f"training loss became {l_tr} at epoch {pos.epoch + 1} step {pos.step_in_epoch + 1}; "
                "lower optimizer.lr (or sam.rho) and restart in a new --out"
            )
        self.sched.step()
        pos.step_in_epoch += 1
        pos.global_step += 1
        pos.run_loss["sum"] += l_tr
        pos.run_loss["n"] += 1
        if l_te is not None:
            pos.run_loss["sum_te"] += l_te

    # -- epochs ---------------------------------------------------------------------------------------------

    def end_epoch(self, seconds: float) -> None:
        """Validate, write last (and best) checkpoints and the history, advance to the next epoch."""
        cfg, pos, model = self.cfg, self.pos, self.model
        dev_eer, dev_loss = (math.nan, math.nan)
        if self.dev_df is not None:
            dev_eer, dev_loss = evaluate_dev(
                model, self.dev_df, cfg, self.device, self.loss_fn, self.dev_cache
            )
        row = {
            "epoch": pos.epoch + 1,
            "global_step": pos.global_step,
            "train_loss": pos.run_loss["sum"] / max(pos.run_loss["n"], 1),
            "meta_test_loss": (pos.run_loss["sum_te"] / max(pos.run_loss["n"], 1))
            if cfg.mldg is not None
            else None,
            "dev_loss": dev_loss,
            "dev_eer": dev_eer,
            "lr": self.base.param_groups[0]["lr"],
            "seconds": seconds,
        }
        improved = self.dev_df is not None and math.isfinite(dev_eer) and dev_eer < pos.best_eer
        info = {
            "epoch": pos.epoch + 1,
            "global_step": pos.global_step,
            "dev_eer": dev_eer,
            "dev_loss": dev_loss,
            "train_loss": row["train_loss"],
            **self.hashes,
        }
        save_model_checkpoint(
            model, cfg, self.out, "last", checkpoint_meta(cfg, model, {**info, "checkpoint": "last"})
        )
        if improved:
            pos.best_eer, pos.best_epoch = dev_eer, pos.epoch + 1
            save_model_checkpoint(
                model, cfg, self.out, "best", checkpoint_meta(cfg, model, {**info, "checkpoint": "best"})
            )
        row["best"] = improved
        pos.history = [h for h in pos.history if h["epoch"] != pos.epoch + 1] + [row]
        _write_history(self.out, pos.history)
        dev_txt = f", dev EER {100 * dev_eer:.2f}%" if self.dev_df is not None else " (no dev set)"
        self.say(
            f"epoch {pos.epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}{dev_txt}"
            + (" (best)" if improved else "")
        )
        pos.epoch += 1
        pos.step_in_epoch = 0
        pos.run_loss = _fresh_run_loss()
        self.save_state()

    def run(self, progress: bool = False) -> TrainResult:
        """Train to ``epochs`` (or to an early stop); returns where the outputs are."""
        cfg, pos = self.cfg, self.pos
        if pos.epoch >= cfg.epochs:
            return self.result(True)
        if self.stop_now():
            return self.result(False)
        self.model.train()
        if self.dev_df is not None and cfg.data.cache_audio:
            from ..data.audio import AudioCache

            self.dev_cache = AudioCache()
        with progress_bar(progress, status=True) as bar:
            task = bar.add_task("train", total=self.steps_per_epoch, status="")
            while pos.epoch < cfg.epochs:
                order = epoch_order(cfg.seed, pos.epoch, len(self.data))
                bar.update(
                    task, description=f"epoch {pos.epoch + 1}/{cfg.epochs}", completed=pos.step_in_epoch
                )
                t0 = time.perf_counter()
                while pos.step_in_epoch < self.steps_per_epoch:
                    self._after_step(*self.run_step(order))
                    bar.update(task, advance=1, status=f"loss {pos.run_loss['sum'] / pos.run_loss['n']:.4f}")
                    every = cfg.checkpoint_every_steps
                    stopping = self.stop_after_steps is not None and pos.global_step >= self.stop_after_steps
                    mid_epoch = pos.step_in_epoch < self.steps_per_epoch
                    if mid_epoch and ((every and pos.global_step % every == 0) or stopping):
                        self.save_state()
                    if stopping and mid_epoch:
                        return self.result(False)
                self.end_epoch(time.perf_counter() - t0)
                if self.stop_now() and pos.epoch < cfg.epochs:
                    return self.result(False)
        return self.result(True)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    progress: bool = False,
    resume: bool = True,
    stop_after_epochs: int | None = None,
    stop_after_steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train the model described by ``config`` into ``out_dir`` (see the module docstring).

    ``resume`` (default): when ``out_dir`` holds a resume state of the same config, continue from it (a
    finished run returns at once); a state of another config raises :class:`SpecError`.  ``resume=False``
    refuses an out dir that holds a state.  ``stop_after_epochs`` / ``stop_after_steps`` stop the run early
    (after saving the resume state) once that many epochs / optimizer steps are done in total, as an
    interruption would.
    """
    trainer = Trainer(
        config,
        out_dir,
        resume=resume,
        stop_after_epochs=stop_after_epochs,
        stop_after_steps=stop_after_steps,
        log=log,
    )
    return trainer.run(progress)
