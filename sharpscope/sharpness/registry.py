"""Measure registry: one name -> one estimator class, imported lazily by path.

A new measure is one new module plus one line in :data:`MEASURES`.  Every registered class derives from
:class:`~sharpscope.sharpness.base.EstimatorBase` (one constructor form: its ``Settings`` dataclass and/or
keyword overrides, validated; one per-batch driver) and so satisfies the
:class:`~sharpscope.sharpness.base.Estimator` protocol; :func:`make_estimator` builds one from keyword
settings and rejects settings the measure does not have, naming the valid ones.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from ..errors import SharpscopeError
from .base import DriverSettings, Estimator, EstimatorBase

MEASURES: dict[str, str] = {
    "m-sharpness": "sharpscope.sharpness.m_sharpness:MSharpness",
    "worst-case": "sharpscope.sharpness.worst_case:WorstCase",
    "average-case": "sharpscope.sharpness.average_case:AverageCase",
    "hessian-max": "sharpscope.sharpness.curvature:HessianMax",
    "hessian-max-batchmean": "sharpscope.sharpness.curvature:HessianMaxBatchMean",
    "hessian-trace": "sharpscope.sharpness.curvature:HessianTrace",
    "landscape": "sharpscope.sharpness.landscape:Landscape",
}


def estimator_class(name: str) -> type[EstimatorBase]:
    """The estimator class registered as ``name`` (an :class:`~sharpscope.sharpness.base.EstimatorBase`)."""
    try:
        path = MEASURES[name]
    except KeyError:
        raise SharpscopeError(
            f"unknown sharpness measure {name!r}; choose one of {', '.join(MEASURES)}"
        ) from None
    module, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise SharpscopeError(f"sharpness measure {name!r} is not available ({path}: {exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, EstimatorBase)):
        raise SharpscopeError(f"sharpness measure {name!r} ({path}) does not derive from EstimatorBase")
    return cls


def settings_class(cls: type[EstimatorBase]) -> type[DriverSettings]:
    """The settings dataclass of an estimator class (its ``Settings``)."""
    return cls.Settings


def measure_settings(name: str) -> list[str]:
    """Names of the settings a measure accepts."""
    return [f.name for f in dataclasses.fields(settings_class(estimator_class(name)))]


def make_estimator(name: str, **settings: Any) -> Estimator:
    """An estimator of measure ``name`` with these settings (unknown settings raise, naming valid ones)."""
    return estimator_class(name)(**settings)
