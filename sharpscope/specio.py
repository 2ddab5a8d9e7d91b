"""Reading YAML specs (study, zoo, training, figures) with one-line errors naming the file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError


def read_yaml(path: str | Path, what: str = "spec") -> Any:
    """Parse the YAML file ``path``; a missing file or a syntax error raises :class:`SpecError`."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{what} not found: {p}; pass the path of a YAML file")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise SpecError(
            f"{p}:{where} not valid YAML ({getattr(exc, 'problem', None) or exc}); fix the syntax"
        ) from None
