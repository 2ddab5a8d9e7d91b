"""Measure registry: one name -> one estimator class, imported lazily by path.

A new measure is one new module plus one line in :data:`MEASURES`.  Each estimator class takes its settings
dataclass (or keyword overrides) in its constructor; :func:`make_estimator` builds one from keyword settings
and rejects settings the measure does not have, naming the valid ones.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from typing import Any

from ..errors import SharpscopeError

MEASURES: dict[str, str] = {
    "m-sharpness": "sharpscope.sharpness.m_sharpness:MSharpness",
    "worst-case": "sharpscope.sharpness.worst_case:WorstCase",
    "average-case": "sharpscope.sharpness.average_case:AverageCase",
    "hessian-max": "sharpscope.sharpness.curvature:HessianMax",
    "hessian-max-batchmean": "sharpscope.sharpness.curvature:HessianMaxBatchMean",
    "hessian-trace": "sharpscope.sharpness.curvature:HessianTrace",
    "landscape": "sharpscope.sharpness.landscape:Landscape",
}


def estimator_class(name: str) -> type:
    """The estimator class registered as ``name``."""
    try:
        path = MEASURES[name]
    except KeyError:
        raise SharpscopeError(
            f"unknown sharpness measure {name!r}; choose one of {', '.join(MEASURES)}"
        ) from None
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise SharpscopeError(f"sharpness measure {name!r} is not available ({path}: {exc})") from None


def settings_class(cls: type) -> type | None:
    """The settings dataclass of an estimator class: its ``Settings`` attribute, else the dataclass annotated
    on the first constructor argument, else ``None`` (the constructor takes keywords directly)."""
    st = getattr(cls, "Settings", None)
    if isinstance(st, type) and dataclasses.is_dataclass(st):
        return st
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolved forward references: fall back to keywords
        return None
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    if params:
        for t in (hints.get(params[0].name), *typing.get_args(hints.get(params[0].name))):
            if isinstance(t, type) and dataclasses.is_dataclass(t):
                return t
    return None


def measure_settings(name: str) -> list[str]:
    """Names of the settings a measure accepts."""
    st = settings_class(estimator_class(name))
    return [f.name for f in dataclasses.fields(st)] if st is not None else []


def make_estimator(name: str, **settings: Any) -> Any:
    """An estimator of measure ``name`` with these settings (unknown settings raise, naming valid ones)."""
    cls = estimator_class(name)
    st = settings_class(cls)
    if st is None:
        return cls(**settings)
    valid = {f.name for f in dataclasses.fields(st)}
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise SharpscopeError(
            f"measure {name!r} has no setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    obj = st(**settings)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return cls(obj)
