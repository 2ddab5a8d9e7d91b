"""Sharpness estimators: one settings dataclass + ``estimate(model, batches, loss) -> SharpnessResult`` each.

Measures (see :data:`sharpscope.sharpness.registry.MEASURES`, built with
:func:`~sharpscope.sharpness.registry.make_estimator`): ``m-sharpness`` (the seed paper's one-step estimator),
``worst-case`` (m-APGD), ``average-case`` (Gaussian noise), ``hessian-max``, ``hessian-trace`` and
``landscape``.  :func:`~sharpscope.sharpness.runner.score_and_sharpness` scores a manifest and estimates in
one pass.
"""

from ..losses import make_loss
from .base import SharpnessResult
from .registry import MEASURES, make_estimator

__all__ = ["MEASURES", "SharpnessResult", "make_estimator", "make_loss"]
