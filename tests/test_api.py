"""The public API is importable from the package root without importing torch eagerly."""

from __future__ import annotations

import subprocess
import sys

import sharpscope


def test_every_public_name_resolves():
    for name in sharpscope.__all__:
        assert getattr(sharpscope, name) is not None


def test_import_is_cheap():
    code = "import sys, sharpscope; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_lists_every_verb():
    from typer.testing import CliRunner

    from sharpscope.cli import app

    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    for verb in (
        "manifest",
        "score",
        "metrics",
        "sharpness",
        "sweep",
        "correlate",
        "select",
        "report",
        "figures",
        "train",
        "zoo",
        "demo",
    ):
        assert verb in res.output
