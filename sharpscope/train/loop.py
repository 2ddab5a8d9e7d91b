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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import ManifestError, SpecError
from ..fileio import atomic_write, atomic_write_text, json_default
from ..models.outputs import logits_of
from ..progress import progress_bar
from ..provenance import config_hash, provenance
from .augment import augment
from .config import TrainConfig, dump_config
from .mldg import MLDG, assign_domains, sample_rows, split_domains
from .sam import SAM

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


def _logits(out: Any) -> torch.Tensor:
    """Training builds sharpscope models, which return logits (tuples are never guessed at)."""
    return logits_of(out)


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
            model, rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout, target_modules=lo.target_modules
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
    from ..sharpness.base import CrossEntropy

    return CrossEntropy(tuple(cfg.loss.class_weights) if cfg.loss.name == "weighted-ce" else None)


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
    save_lora(model, path)
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
        tmp = out_dir / "history.csv.tmp"
        pd.DataFrame(history).to_csv(tmp, index=False)
        os.replace(tmp, out_dir / "history.csv")


# ---- evaluation -------------------------------------------------------------------------------------------


def evaluate_dev(
    model: nn.Module, df: pd.DataFrame, cfg: TrainConfig, device: torch.device, loss_fn, cache
) -> tuple[float, float]:
    """(EER, mean loss) on the dev manifest: first ``nb_samp`` samples, bona-fide logit as score."""
    from ..data.audio import iter_batches
    from ..metrics import compute_eer

    bs = cfg.data.eval_batch_size or cfg.data.batch_size
    scores = np.empty(len(df), dtype=np.float64)
    labels = np.empty(len(df), dtype=np.int64)
    total, n = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for b in iter_batches(df, batch_size=bs, crop="first", nb_samp=cfg.data.nb_samp, cache=cache):
                logits = _logits(model(b.wave.to(device))).float()
                y = b.labels.to(device)
                rows = b.meta["rows"]
                scores[rows] = logits[:, 1].double().cpu().numpy()
                labels[rows] = b.labels.numpy()
                total += float(loss_fn(logits, y)) * len(b)
                n += len(b)
    finally:
        model.train(was_training)
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
    cfg = config
    cfg.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _msg: None)
    device = _resolve_device(cfg.device)
    chash = config_hash(cfg.to_dict())
    state_path = out / STATE_FILE

    state = None
    if state_path.is_file():
        if not resume:
            raise SpecError(
                f"{out} already holds a training state ({STATE_FILE}); use another --out or resume"
            )
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

    # data
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
    data = _TrainData(train_df, cfg)
    hashes = {
        "train_manifest": cfg.data.train,
        "train_manifest_hash": _manifest_hash(cfg.data.train, train_df),
        "dev_manifest": cfg.data.dev,
        "dev_manifest_hash": None if dev_df is None else _manifest_hash(cfg.data.dev, dev_df),
    }
    bs = cfg.data.batch_size
    full_steps = max(1, len(data) // bs)
    steps_per_epoch = min(full_steps, cfg.steps_per_epoch) if cfg.steps_per_epoch else full_steps
    if cfg.mldg is not None:
        domains = assign_domains(train_df, cfg.mldg.domain_column, cfg.mldg.bonafide, cfg.seed)
        domain_names = sorted(domains)
        split_domains(domain_names, cfg.mldg.n_meta_test, np.random.default_rng(0))  # validates n_meta_test
    total_steps = cfg.epochs * steps_per_epoch

    # model, optimiser
    torch.manual_seed(cfg.seed)
    model = build_train_model(cfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SpecError(f"arch {cfg.arch!r} with finetune {cfg.finetune!r} leaves no trainable parameters")
    base = make_optimizer(params, cfg)
    sched = make_scheduler(base, cfg, total_steps)
    loss_fn = make_loss(cfg)
    if cfg.sam is not None:
        opt: Any = SAM(model, base, rho=cfg.sam.rho, adaptive=cfg.sam.adaptive, eta=cfg.sam.eta)
    elif cfg.mldg is not None:
        opt = MLDG(model, base, inner_lr=cfg.mldg.inner_lr, beta=cfg.mldg.beta)
    else:
        opt = None

    epoch, step_in_epoch, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    best_eer, best_epoch = math.inf, None
    run_loss = {"sum": 0.0, "n": 0, "sum_te": 0.0}
    if state is not None:
        model.load_state_dict(state["model"])
        base.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        history, best_eer, best_epoch = state["history"], state["best_eer"], state["best_epoch"]
        run_loss = state["run_loss"]
        _set_rng_state(state["rng"], device)
        say(f"resuming {out} at epoch {epoch + 1}, step {step_in_epoch}")
    else:
        dump_config(cfg, out / "config.yaml")

    def save_state() -> None:
        state = {
            "format": STATE_FORMAT,
            "config_hash": chash,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "model": model.state_dict(),
            "optimizer": base.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": _rng_state(device),
            "history": history,
            "best_eer": best_eer,
            "best_epoch": best_epoch,
            "run_loss": run_loss,
        }
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    def result(completed: bool) -> TrainResult:
        best, best_side = _paths(out, cfg, "best")
        last, last_side = _paths(out, cfg, "last")
        have_best = best_epoch is not None and best_side.is_file()
        have_last = last_side.is_file()
        return TrainResult(
            out_dir=out,
            best=best if have_best else None,
            last=last if have_last else None,
            best_sidecar=best_side if have_best else None,
            last_sidecar=last_side if have_last else None,
            history=list(history),
            completed=completed,
            epochs_done=epoch,
            global_step=global_step,
        )

    def stop_now() -> bool:
        return (stop_after_steps is not None and global_step >= stop_after_steps) or (
            stop_after_epochs is not None and epoch >= stop_after_epochs and step_in_epoch == 0
        )

    if epoch >= cfg.epochs:
        return result(True)
    if stop_now():
        return result(False)

    model.train()
    dev_cache = None
    if dev_df is not None and cfg.data.cache_audio:
        from ..data.audio import AudioCache

        dev_cache = AudioCache()

    def run_step(e: int, k: int) -> tuple[float, float | None]:
        rng = step_rng(cfg.seed, e, k, 0)
        if cfg.mldg is not None:
            split = split_domains(domain_names, cfg.mldg.n_meta_test, step_rng(cfg.seed, e, k, 1))
            rows_tr = sample_rows(domains, split.meta_train, bs, rng)
            rows_te = sample_rows(domains, split.meta_test, cfg.mldg.meta_test_batch_size or bs, rng)
            x_tr, y_tr = (t.to(device) for t in data.batch(rows_tr, rng))
            x_te, y_te = (t.to(device) for t in data.batch(rows_te, rng))
            l_tr, l_te = opt.step(
                lambda: loss_fn(_logits(model(x_tr)), y_tr), lambda: loss_fn(_logits(model(x_te)), y_te)
            )
            return float(l_tr), float(l_te)
        rows = order[k * bs : (k + 1) * bs]
        x, y = (t.to(device) for t in data.batch(rows, rng))
        if opt is not None:
            return float(opt.step(lambda: loss_fn(_logits(model(x)), y))), None
        base.zero_grad(set_to_none=True)
        loss = loss_fn(_logits(model(x)), y)
        loss.backward()
        base.step()
        return float(loss.detach()), None

    with progress_bar(progress, status=True) as bar:
        task = bar.add_task("train", total=steps_per_epoch, status="")
        while epoch < cfg.epochs:
            order = epoch_order(cfg.seed, epoch, len(data))
            bar.update(task, description=f"epoch {epoch + 1}/{cfg.epochs}", completed=step_in_epoch)
            t0 = time.perf_counter()
            while step_in_epoch < steps_per_epoch:
                l_tr, l_te = run_step(epoch, step_in_epoch)
                if not math.isfinite(l_tr):
                    raise SpecError(
                        f"training loss became {l_tr} at epoch {epoch + 1} step {step_in_epoch + 1}; "
                        "lower optimizer.lr (or sam.rho) and restart in a new --out"
                    )
                sched.step()
                step_in_epoch += 1
                global_step += 1
                run_loss["sum"] += l_tr
                run_loss["n"] += 1
                if l_te is not None:
                    run_loss["sum_te"] += l_te
                bar.update(task, advance=1, status=f"loss {run_loss['sum'] / run_loss['n']:.4f}")
                every = cfg.checkpoint_every_steps
                stopping = stop_after_steps is not None and global_step >= stop_after_steps
                if step_in_epoch < steps_per_epoch and ((every and global_step % every == 0) or stopping):
                    save_state()
                if stopping and step_in_epoch < steps_per_epoch:
                    return result(False)

            # epoch end: validate, checkpoint, record
            dev_eer, dev_loss = (math.nan, math.nan)
            if dev_df is not None:
                dev_eer, dev_loss = evaluate_dev(model, dev_df, cfg, device, loss_fn, dev_cache)
            row = {
                "epoch": epoch + 1,
                "global_step": global_step,
                "train_loss": run_loss["sum"] / max(run_loss["n"], 1),
                "meta_test_loss": (run_loss["sum_te"] / max(run_loss["n"], 1))
                if cfg.mldg is not None
                else None,
                "dev_loss": dev_loss,
                "dev_eer": dev_eer,
                "lr": base.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
            improved = dev_df is not None and math.isfinite(dev_eer) and dev_eer < best_eer
            info = {
                "epoch": epoch + 1,
                "global_step": global_step,
                "dev_eer": dev_eer,
                "dev_loss": dev_loss,
                "train_loss": row["train_loss"],
                **hashes,
            }
            save_model_checkpoint(
                model, cfg, out, "last", checkpoint_meta(cfg, model, {**info, "checkpoint": "last"})
            )
            if improved:
                best_eer, best_epoch = dev_eer, epoch + 1
                save_model_checkpoint(
                    model, cfg, out, "best", checkpoint_meta(cfg, model, {**info, "checkpoint": "best"})
                )
            row["best"] = improved
            history = [h for h in history if h["epoch"] != epoch + 1] + [row]
            _write_history(out, history)
            dev_txt = f", dev EER {100 * dev_eer:.2f}%" if dev_df is not None else " (no dev set)"
            say(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}{dev_txt}"
                + (" (best)" if improved else "")
            )
            epoch += 1
            step_in_epoch = 0
            run_loss = {"sum": 0.0, "n": 0, "sum_te": 0.0}
            save_state()
            if stop_now() and epoch < cfg.epochs:
                return result(False)
    return result(True)
