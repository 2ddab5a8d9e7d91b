"""Results tables at report time: loading, and CSV / Markdown / LaTeX writers.

The sweep stores one long/tidy row per (checkpoint, testset, subset, measure, rho, seed) (see
:mod:`sharpscope.sweep.store`).  Reports and figures only ever read such tables; the wide views they show are
made here, at report time.

A synthetic table with that schema, for tests, lives in ``tests/synthetic.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SharpscopeError

_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


# ---- loading ----------------------------------------------------------------------------------------------


def load_results(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A results table from a DataFrame, a RESULTS directory (``results.parquet``/``results.csv``) or a file.

    Normalises what CSV round-trips lose: ``in_domain`` back to bool, ``rho`` to float.
    """
    if isinstance(source, pd.DataFrame):
        df = source.copy()
    else:
        p = Path(source)
        if p.is_dir():
            for name in ("results.parquet", "results.csv"):
                if (p / name).is_file():
                    p = p / name
                    break
            else:
                raise SharpscopeError(
                    f"{source}: no results.parquet or results.csv inside; run `sharpscope sweep` first"
                )
        if not p.is_file():
            raise SharpscopeError(f"results table not found: {p}")
        try:
            if p.suffix == ".parquet":
                df = pd.read_parquet(p)
            elif p.suffix in (".csv", ".txt"):
                df = pd.read_csv(p, keep_default_na=True)
            else:
                raise SharpscopeError(f"{p}: unknown table format {p.suffix!r}; use .parquet or .csv")
        except SharpscopeError:
            raise
        except Exception as exc:  # pyarrow / parser errors: one line naming the file
            raise SharpscopeError(f"{p}: cannot read table ({exc.__class__.__name__}: {exc})") from None
    if "in_domain" in df.columns and not pd.api.types.is_bool_dtype(df["in_domain"]):
        df["in_domain"] = [_as_bool(v, "in_domain") for v in df["in_domain"]]
    if "rho" in df.columns:
        df["rho"] = pd.to_numeric(df["rho"], errors="coerce")
    return df


def _as_bool(v: object, col: str) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)) and v in (0, 1):
        return bool(v)
    if isinstance(v, (float, np.floating)) and not math.isnan(v) and v in (0.0, 1.0):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[v.strip().lower()]
    raise SharpscopeError(f"column {col!r}: value {v!r} is not a boolean (use true/false)")


def parse_curve(extra: object) -> tuple[np.ndarray, np.ndarray] | None:
    """A landscape curve (x, loss) from an ``extra`` cell.

    Accepted shapes (a JSON string or the decoded object): the landscape estimator's ``{"alphas": [...],
    "mean": [...], "curves": [[...], ...], "dims": 1}`` (``mean`` or else the mean of ``curves`` over
    directions), ``{"alphas"|"x"|...: [...], "losses"|"loss"|"y"|"values": [...]}``, a list of ``[x, y]``
    pairs, or a bare list of losses (then x = linspace(-1, 1)).  Returns None for empty cells and 2-D grids.
    """
    obj = extra
    if obj is None or (isinstance(obj, float) and math.isnan(obj)):
        return None
    if isinstance(obj, (bytes, str)):
        s = obj.decode() if isinstance(obj, bytes) else obj
        if not s.strip():
            return None
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as exc:
            raise SharpscopeError(
                f"column 'extra': not valid JSON ({exc.msg}); expected a landscape curve"
            ) from None
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, dict):
        if "curve" in obj and isinstance(obj["curve"], (dict, list)) and not _is_number_list(obj["curve"]):
            return parse_curve(obj["curve"])
        if obj.get("dims", 1) != 1:
            return None  # a 2-D landscape grid is not a curve
        xs = next((obj[k] for k in ("alphas", "alpha", "x", "t", "steps") if k in obj), None)
        ys = next((obj[k] for k in ("mean", "losses", "loss", "y", "values", "curve") if k in obj), None)
        if ys is None and isinstance(obj.get("curves"), list) and obj["curves"]:
            ys = np.mean(np.asarray(obj["curves"], dtype=float), axis=0)  # mean over directions
        if ys is None:
            return None
        y = np.asarray(ys, dtype=float)
        x = np.asarray(xs, dtype=float) if xs is not None else np.linspace(-1.0, 1.0, len(y))
    elif isinstance(obj, list) and obj and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in obj):
        arr = np.asarray(obj, dtype=float)
        x, y = arr[:, 0], arr[:, 1]
    elif isinstance(obj, list) and _is_number_list(obj):
        y = np.asarray(obj, dtype=float)
        x = np.linspace(-1.0, 1.0, len(y))
    else:
        return None
    if x.shape != y.shape or y.ndim != 1 or len(y) < 2:
        raise SharpscopeError(f"column 'extra': landscape curve has {x.shape} x values and {y.shape} losses")
    return x, y


def _is_number_list(obj: object) -> bool:
    return isinstance(obj, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj)


# ---- writers ----------------------------------------------------------------------------------------------


def format_value(v: object, digits: int = 3) -> str:
    """Compact, deterministic text for a table cell (p-values in scientific notation when tiny)."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "–"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f"{f:.{digits}g}"
    return str(v)


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (no external dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(_md_escape(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_md_escape(format_value(v, digits)) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
    "τ": r"$\tau$",
    "Ψ": r"$\Psi$",
    "ψ": r"$\psi$",
    "ρ": r"$\rho$",
}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(df: pd.DataFrame, caption: str | None = None, label: str | None = None, digits: int = 3) -> str:
    """A booktabs LaTeX table (needs ``\\usepackage{booktabs}``); numbers right-aligned, text left."""
    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    out = ["\\begin{table}[t]", "\\centering", "\\small"]
    if caption:
        out.append(f"\\caption{{{latex_escape(caption)}}}")
    if label:
        out.append(f"\\label{{{label}}}")
    out += [f"\\begin{{tabular}}{{{align}}}", "\\toprule"]
    out.append(" & ".join(latex_escape(str(c)) for c in df.columns) + " \\\\")
    out.append("\\midrule")
    for row in df.itertuples(index=False):
        out.append(" & ".join(latex_escape(format_value(v, digits)) for v in row) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"


def write_table(df: pd.DataFrame, out: str | Path, caption: str | None = None) -> list[Path]:
    """Write ``df`` by suffix (.csv, .md, .tex); any other suffix (or none) writes all three next to it."""
    out = Path(out)
    writers = {
        ".csv": lambda p: p.write_text(df.to_csv(index=False)),
        ".md": lambda p: p.write_text(to_markdown(df)),
        ".tex": lambda p: p.write_text(to_latex(df, caption=caption)),
    }
    targets = [out] if out.suffix in writers else [Path(str(out) + s) for s in writers]
    written = []
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
        writers[t.suffix](t)
        written.append(t)
    return written
