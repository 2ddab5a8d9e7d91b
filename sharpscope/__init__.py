"""sharpscope: loss-landscape sharpness vs generalization for speech deepfake detectors.

The public API (imported lazily, so ``import sharpscope`` stays cheap)::

    from sharpscope import read_manifest, build_manifest, load_checkpoint, score_manifest, evaluate
    from sharpscope import make_estimator, score_and_sharpness, run_sweep, correlate, build_report
    from sharpscope import train, run_zoo, run_demo
"""

from __future__ import annotations

import importlib
from typing import Any

from .devices import enable_hugepage_allocations

enable_hugepage_allocations()  # before torch is first imported: large CPU tensors on huge pages (speed only)

__version__ = "0.1.0"

_API = {
    "read_manifest": "sharpscope.data.manifest",
    "write_manifest": "sharpscope.data.manifest",
    "check_manifest": "sharpscope.data.manifest",
    "build_manifest": "sharpscope.data.converters",
    "load_audio": "sharpscope.data.audio",
    "iter_batches": "sharpscope.data.audio",
    "cumulative_subsets": "sharpscope.data.subsets",
    "build_model": "sharpscope.models.registry",
    "load_checkpoint": "sharpscope.models.checkpoints",
    "save_checkpoint": "sharpscope.models.checkpoints",
    "score_manifest": "sharpscope.scoring",
    "compute_eer": "sharpscope.metrics",
    "evaluate": "sharpscope.metrics",
    "make_estimator": "sharpscope.sharpness.registry",
    "make_loss": "sharpscope.losses",
    "score_and_sharpness": "sharpscope.sharpness.runner",
    "load_study": "sharpscope.sweep.study",
    "run_sweep": "sharpscope.sweep.sweep",
    "correlate": "sharpscope.stats",
    "domain_shift": "sharpscope.stats",
    "granulated_kendall": "sharpscope.stats",
    "confound_panel": "sharpscope.confounds",
    "confound_warnings": "sharpscope.confounds",
    "fit_calibration": "sharpscope.calibration",
    "leave_one_domain_out": "sharpscope.select",
    "build_report": "sharpscope.report.html",
    "build_figures": "sharpscope.report.figures",
    "train": "sharpscope.train.loop",
    "run_zoo": "sharpscope.train.zoo",
    "run_demo": "sharpscope.demo",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'sharpscope' has no attribute {name!r}")
