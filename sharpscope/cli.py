"""The ``sharpscope`` command line: one thin function per verb; all work happens in the modules.

User errors (:class:`sharpscope.errors.SharpscopeError`) are printed as one line and exit with code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from .errors import SharpscopeError

app = typer.Typer(
    name="sharpscope",
    help="Sharpness vs generalization for speech deepfake detectors: manifests, scoring, sharpness, "
    "sweeps, statistics, reports, training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`SharpscopeError` into one red line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SharpscopeError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


# ---- manifest commands (sharpscope/data) ---------------------------------------------------------------

# ---- score / metrics commands (sharpscope/scoring.py, sharpscope/metrics.py) -------------------------

# ---- sharpness commands (sharpscope/sharpness) ---------------------------------------------------------

# ---- sweep commands (sharpscope/sweep) -----------------------------------------------------------------

# ---- statistics / report / figures commands (sharpscope/stats.py, sharpscope/report) -------------------

# ---- train / zoo commands (sharpscope/train) -----------------------------------------------------------

# ---- demo commands (sharpscope/data/demo_corpus.py, sharpscope/demo.py) --------------------------------


def main() -> None:  # pragma: no cover - entry point
    app(prog_name="sharpscope")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
