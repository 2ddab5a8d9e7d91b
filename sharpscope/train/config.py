"""Training configuration: a YAML file validated into nested dataclasses.

One YAML file describes one training run.  Every key is checked: an unknown key, a missing required key or a
bad value raises :class:`~sharpscope.errors.SpecError` whose one-line message names the file, the key path
(``optimizer.lr``) and what is allowed.  Example::

    arch: ssl-linear             # aasist | aasist-l | ssl-aasist | ssl-linear
    model: {}                    # keyword arguments of sharpscope.models.registry.build_model
    finetune: lora               # full | frozen (SSL front end frozen) | lora (adapters + back end)
    lora: {rank: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, k_proj, v_proj, out_proj]}
    seed: 0
    epochs: 10
    data:
      train: manifests/train.csv # relative paths are resolved against the YAML file's folder
      dev: manifests/dev.csv     # source-domain development set: used for model selection only
      nb_samp: 64600             # random training crops of this many samples (shorter clips tiled)
      batch_size: 24
      augment: {convolutive: true, impulsive: true, p: 1.0}
    optimizer: {name: adam, lr: 1.0e-4, weight_decay: 1.0e-4}
    schedule: {name: cosine, min_lr: 5.0e-6}
    loss: {name: weighted-ce, class_weights: [0.1, 0.9]}
    sam: {rho: 0.05, adaptive: false}          # omit for ERM; adaptive: true is ASAM
    mldg: {domain_column: attack, n_meta_test: 1, inner_lr: 1.0e-3, beta: 1.0}   # omit for ERM

Defaults follow the official AASIST recipe (Adam, lr 1e-4, weight decay 1e-4, cosine to 5e-6, batch 24,
weighted cross-entropy [0.1 spoof, 0.9 bona fide], 64,600-sample crops).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union, cast

from ..errors import SpecError

ARCHS = ("aasist", "aasist-l", "ssl-aasist", "ssl-linear")
SSL_ARCHS = ("ssl-aasist", "ssl-linear")
FINETUNE = ("full", "frozen", "lora")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
LOSSES = ("weighted-ce", "ce")
BONAFIDE_POLICIES = ("split", "shared")
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class LoRAConfig:
    """LoRA adapters (Hu et al. 2022) on the SSL transformer's attention projections."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])

    def check(self, where: str) -> None:
        _require(self.rank >= 1, where, "rank", self.rank, "an integer >= 1")
        _require(self.alpha > 0, where, "alpha", self.alpha, "a number > 0")
        _require(0.0 <= self.dropout < 1.0, where, "dropout", self.dropout, "a number in [0, 1)")
        _require(
            len(self.target_modules) > 0, where, "target_modules", self.target_modules, "a non-empty list"
        )


@dataclass
class AugmentConfig:
    """RawBoost-style waveform augmentation (Tak et al. 2022); see :mod:`sharpscope.train.augment`."""

    convolutive: bool = False
    impulsive: bool = False
    p: float = 1.0  # probability of augmenting an utterance
    n_orders: int = 5  # non-linearity orders of the convolutive noise
    n_bands: int = 5  # bands per FIR filter
    min_freq: float = 20.0
    max_freq: float = 8000.0
    min_bw: float = 100.0
    max_bw: float = 1000.0
    min_taps: int = 10
    max_taps: int = 100
    min_bias_db: float = 5.0  # attenuation of the higher-order (non-linear) terms
    max_bias_db: float = 20.0
    impulsive_percent: float = 10.0  # share of samples hit by impulsive noise
    impulsive_gain: float = 2.0

    @property
    def enabled(self) -> bool:
        return (self.convolutive or self.impulsive) and self.p > 0

    def check(self, where: str) -> None:
        _require(0.0 <= self.p <= 1.0, where, "p", self.p, "a probability in [0, 1]")
        _require(self.n_orders >= 1, where, "n_orders", self.n_orders, "an integer >= 1")
        _require(self.n_bands >= 1, where, "n_bands", self.n_bands, "an integer >= 1")
        _require(
            0 < self.min_freq <= self.max_freq <= 8000,
            where,
            "max_freq",
            self.max_freq,
            "0 < min_freq <= max_freq <= 8000 (Nyquist at 16 kHz)",
        )
        _require(0 < self.min_bw <= self.max_bw, where, "max_bw", self.max_bw, "0 < min_bw <= max_bw")
        _require(
            3 <= self.min_taps <= self.max_taps, where, "max_taps", self.max_taps, "3 <= min_taps <= max_taps"
        )
        _require(
            0 <= self.min_bias_db <= self.max_bias_db,
            where,
            "max_bias_db",
            self.max_bias_db,
            "0 <= min_bias_db <= max_bias_db",
        )
        _require(
            0 < self.impulsive_percent <= 100,
            where,
            "impulsive_percent",
            self.impulsive_percent,
            "a percentage in (0, 100]",
        )
        _require(self.impulsive_gain >= 0, where, "impulsive_gain", self.impulsive_gain, "a number >= 0")


@dataclass
class DataConfig:
    train: str = ""
    dev: str | None = None
    root: str | None = None  # audio root for relative manifest paths (default: the manifest's folder)
    nb_samp: int = 64_600
    batch_size: int = 24
    eval_batch_size: int | None = None
    cache_audio: bool = False  # keep decoded training audio in memory (small corpora only)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def check(self, where: str) -> None:
        _require(bool(self.train), where, "train", self.train, "the path of the training manifest")
        _require(self.nb_samp >= 1, where, "nb_samp", self.nb_samp, "an integer >= 1")
        _require(self.batch_size >= 1, where, "batch_size", self.batch_size, "an integer >= 1")
        if self.eval_batch_size is not None:
            _require(
                self.eval_batch_size >= 1, where, "eval_batch_size", self.eval_batch_size, "an integer >= 1"
            )
        self.augment.check(_join(where, "augment"))


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    amsgrad: bool = False
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only

    def check(self, where: str) -> None:
        _choice(self.name, OPTIMIZERS, where, "name")
        _require(self.lr > 0, where, "lr", self.lr, "a learning rate > 0")
        _require(self.weight_decay >= 0, where, "weight_decay", self.weight_decay, "a number >= 0")
        _require(all(0 <= b < 1 for b in self.betas), where, "betas", self.betas, "two numbers in [0, 1)")
        _require(self.eps > 0, where, "eps", self.eps, "a number > 0")
        _require(self.momentum >= 0, where, "momentum", self.momentum, "a number >= 0")
        _require(
            not self.nesterov or self.momentum > 0,
            where,
            "nesterov",
            self.nesterov,
            "false unless momentum > 0",
        )


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per optimizer step (as the official AASIST recipe)."""

    name: str = "cosine"
    min_lr: float = 5e-6  # cosine floor
    warmup_steps: int = 0  # linear warm-up from 0

    def check(self, where: str) -> None:
        _choice(self.name, SCHEDULES, where, "name")
        _require(self.min_lr >= 0, where, "min_lr", self.min_lr, "a number >= 0")
        _require(self.warmup_steps >= 0, where, "warmup_steps", self.warmup_steps, "an integer >= 0")


@dataclass
class LossConfig:
    name: str = "weighted-ce"
    class_weights: tuple[float, float] = (0.1, 0.9)  # [spoof, bonafide]; weighted-ce only

    def check(self, where: str) -> None:
        _choice(self.name, LOSSES, where, "name")
        _require(
            all(w > 0 for w in self.class_weights),
            where,
            "class_weights",
            self.class_weights,
            "two positive weights [spoof, bonafide]",
        )


@dataclass
class SAMConfig:
    """SAM (Foret et al. 2021); ``adaptive: true`` is ASAM (Kwon et al. 2021) with T_w = |w| + eta."""

    rho: float = 0.05
    adaptive: bool = False
    eta: float = 0.01

    def check(self, where: str) -> None:
        _require(self.rho >= 0, where, "rho", self.rho, "a radius >= 0")
        _require(self.eta >= 0, where, "eta", self.eta, "a number >= 0")


@dataclass
class MLDGConfig:
    """First-order MLDG (Li et al. 2018); domains are the groups of a manifest column."""

    domain_column: str = "attack"
    n_meta_test: int = 1  # source domains held out as meta-test at each step
    inner_lr: float = 1e-3  # SGD step size of the virtual (inner) update
    beta: float = 1.0  # weight of the meta-test gradient
    bonafide: str = "split"  # how bona-fide rows without a domain are shared (see mldg.assign_domains)
    meta_test_batch_size: int | None = None  # default: data.batch_size

    def check(self, where: str) -> None:
        _require(
            bool(self.domain_column), where, "domain_column", self.domain_column, "a manifest column name"
        )
        _require(self.n_meta_test >= 1, where, "n_meta_test", self.n_meta_test, "an integer >= 1")
        _require(self.inner_lr > 0, where, "inner_lr", self.inner_lr, "a step size > 0")
        _require(self.beta >= 0, where, "beta", self.beta, "a number >= 0")
        _choice(self.bonafide, BONAFIDE_POLICIES, where, "bonafide")
        if self.meta_test_batch_size is not None:
            _require(
                self.meta_test_batch_size >= 1,
                where,
                "meta_test_batch_size",
                self.meta_test_batch_size,
                "an integer >= 1",
            )


@dataclass
class TrainConfig:
    arch: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    finetune: str = "full"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    seed: int = 0
    epochs: int = 100
    steps_per_epoch: int | None = None  # cap on optimizer steps per epoch (default: one pass over the data)
    checkpoint_every_steps: int = 0  # also save the resume state every N steps (0: at epoch ends only)
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sam: SAMConfig | None = None
    mldg: MLDGConfig | None = None
    name: str | None = None

    @property
    def method(self) -> str:
        """``erm``, ``sam``, ``asam`` or ``mldg`` (the training-method label stored with checkpoints)."""
        if self.mldg is not None:
            return "mldg"
        if self.sam is not None:
            return "asam" if self.sam.adaptive else "sam"
        return "erm"

    def check(self, where: str = "") -> None:
        _choice(self.arch, ARCHS, where, "arch")
        _choice(self.finetune, FINETUNE, where, "finetune")
        if self.finetune != "full" and self.arch not in SSL_ARCHS:
            raise SpecError(
                f"finetune {self.finetune!r} needs an SSL architecture ({', '.join(SSL_ARCHS)}); "
                f"arch {self.arch!r} only supports finetune: full"
            )
        _require(self.epochs >= 1, where, "epochs", self.epochs, "an integer >= 1")
        if self.steps_per_epoch is not None:
            _require(
                self.steps_per_epoch >= 1, where, "steps_per_epoch", self.steps_per_epoch, "an integer >= 1"
            )
        _require(
            self.checkpoint_every_steps >= 0,
            where,
            "checkpoint_every_steps",
            self.checkpoint_every_steps,
            "an integer >= 0",
        )
        _choice(self.device, DEVICES, where, "device")
        from ..errors import CheckpointError
        from ..models.checkpoints import check_model_cfg

        try:
            check_model_cfg(self.model, _join(where, "model"))
        except CheckpointError as exc:
            raise SpecError(str(exc)) from None
        self.lora.check(_join(where, "lora"))
        self.data.check(_join(where, "data"))
        self.optimizer.check(_join(where, "optimizer"))
        self.schedule.check(_join(where, "schedule"))
        self.loss.check(_join(where, "loss"))
        if self.sam is not None:
            self.sam.check(_join(where, "sam"))
        if self.mldg is not None:
            self.mldg.check(_join(where, "mldg"))
        if self.sam is not None and self.mldg is not None:
            raise SpecError("sam and mldg cannot be combined in one run; keep only one of the two sections")

    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML/JSON-serialisable) form; ``from_dict(to_dict())`` gives the same config."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | Path | None = None, source: str = "training config"
    ) -> TrainConfig:
        """Validate ``data``; relative manifest/root paths are resolved against ``base_dir`` when given.

        Problems raise :class:`SpecError` ``"<source>: <key path> ..."``.
        """
        try:
            cfg = _build(cls, data, "")
            if base_dir is not None:
                base = Path(base_dir)
                d = cfg.data
                d.train = _resolve(d.train, base)
                d.dev = None if d.dev is None else _resolve(d.dev, base)
                d.root = None if d.root is None else _resolve(d.root, base)
            cfg.check()
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None
        return cfg


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a training YAML file (relative paths resolved against its folder)."""
    from ..specio import read_yaml

    p = Path(path)
    data = read_yaml(p, "training config")  # strict: duplicate keys and alias bombs are refused
    if not isinstance(data, dict):
        raise SpecError(f"{p}: the top level must be a mapping of keys (arch, data, optimizer, ...)")
    return TrainConfig.from_dict(data, base_dir=p.resolve().parent, source=str(p))


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    import yaml

    from ..fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---- generic dict -> dataclass validation ---------------------------------------------------------------


def _resolve(p: str, base: Path) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _require(ok: bool, where: str, key: str, value: Any, what: str) -> None:
    if not ok:
        raise SpecError(f"bad value {_join(where, key)}={value!r}; expected {what}")


def _choice(value: str, allowed: tuple[str, ...], where: str, key: str) -> None:
    if value not in allowed:
        raise SpecError(f"bad value {_join(where, key)}={value!r}; choose one of {', '.join(allowed)}")


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"bad value {where or 'top level'}={data!r}; expected a mapping of keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise SpecError(f"unknown key {_join(where, unknown[0])!r}; allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(where, name))
    if cls is TrainConfig and not data.get("arch"):
        raise SpecError(f"missing key 'arch'; choose one of {', '.join(ARCHS)}")
    if cls is TrainConfig and "data" not in data:
        raise SpecError("missing section 'data' (with at least data.train, the training manifest)")
    if cls is DataConfig and not data.get("train"):
        raise SpecError(f"missing key {_join(where, 'train')!r} (path of the training manifest)")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:  # noqa: C901 - one branch per supported type
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and type(None) in args:
            return None
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return _build(cast(type, inner[0]), value, key)  # a type hint: the class, never an instance
        return _coerce(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        return _build(cast(type, tp), value, key)  # a type hint: the class, never an instance
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"bad value {key}={value!r}; expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SpecError(f"bad value {key}={value!r}; expected an integer")
        try:
            f = float(value)
        except ValueError:
            raise SpecError(f"bad value {key}={value!r}; expected an integer") from None
        if not math.isfinite(f) or f != int(f):
            raise SpecError(f"bad value {key}={value!r}; expected an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SpecError(f"bad value {key}={value!r}; expected a number")
        try:
            f = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            raise SpecError(f"bad value {key}={value!r}; expected a number") from None
        if not math.isfinite(f):
            raise SpecError(f"bad value {key}={value!r}; expected a finite number")
        return f
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(f"bad value {key}={value!r}; expected a string")
        return value
    if origin is tuple:
        n = len(args)
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise SpecError(f"bad value {key}={value!r}; expected a list of {n} numbers")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"bad value {key}={value!r}; expected a list")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise SpecError(f"bad value {key}={value!r}; expected a mapping")
        return dict(value)
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # programming error, not user error
