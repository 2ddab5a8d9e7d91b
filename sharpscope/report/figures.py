"""Paper figures rebuilt from stored tables by a YAML spec, byte-identical on every re-run.

A figure spec names each figure, the stored table it is drawn from, the plot kind, row filters, plot
options, style and size::

    defaults:                          # optional, merged under every figure
      size: [3.5, 2.6]                 # inches (w x h); 3.5 in = one column of a two-column paper
      formats: [pdf, svg, png]
      dpi: 300                         # PNG resolution
      style: {font_size: 7}
    figures:
      sharpness_vs_eer:
        source: ../runs/main/results.parquet    # a results dir, .parquet or .csv; relative to this file
        kind: scatter                            # see plots.PLOTS: scatter, heatmap, per-testset, ...
        filters: {testset: [in-domain, codec]}   # column: value or list of values
        options: {measure: m-sharpness, rho: 0.05}
        style: {legend: false}
        size: 3.5x2.6                            # or [3.5, 2.6]

``figures`` may also be a list of mappings with a ``name`` key.  Every problem of a spec (unknown keys and
kinds, missing tables, filters that match nothing, plots that cannot be drawn) is reported at once, one line
each, before any file is written.

Reproducibility: matplotlib writes a creation date into PDF and SVG and its version into PNG by default; here
the PDF gets ``CreationDate=None``, the SVG ``Date=None`` and a fixed ``svg.hashsalt`` (which seeds the ids of
clip paths), the PNG ``Software=None``, so unchanged inputs give byte-identical files.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..errors import SharpscopeError, SpecError
from ..specio import read_yaml
from . import plots
from .tables import load_results

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.typing import RcKeyType

FORMATS = ("pdf", "svg", "png")
CREATOR = "sharpscope"
SVG_HASHSALT = "sharpscope"
_FIGURE_KEYS = {"name", "source", "kind", "filters", "options", "params", "style", "size", "formats", "dpi"}
_DEFAULT_KEYS = {"size", "formats", "dpi", "style", "source"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Bounds on a figure's canvas: matplotlib allocates w*h*dpi^2 RGBA pixels, so an unbounded size (or a
# huge size times dpi) is a MemoryError, not a figure.  40 in is wider than any poster column.
MAX_INCHES = 40.0
MAX_PIXELS = 200_000_000


def save_figure(
    fig: Figure, stem: str | Path, formats: Sequence[str] = FORMATS, dpi: int = 300
) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format with fixed metadata (byte-identical re-runs)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "pdf":
            meta: dict[str, Any] = {"CreationDate": None, "Creator": CREATOR, "Producer": CREATOR}
        elif fmt == "svg":
            meta = {"Date": None, "Creator": CREATOR}
        elif fmt == "png":
            meta = {"Software": None}
        else:
            raise SharpscopeError(f"unknown figure format {fmt!r}; choose from {', '.join(FORMATS)}")
        rc: dict[RcKeyType, Any] = {
            "svg.hashsalt": SVG_HASHSALT,
            "pdf.compression": 6,
            "text.parse_math": False,
        }
        with matplotlib.rc_context(rc):
            fig.savefig(path, format=fmt, dpi=dpi, metadata=meta)
        written.append(path)
    return written


@dataclass
class FigureSpec:
    """One validated figure of a spec."""

    name: str
    source: Path
    kind: str
    filters: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    style: dict[str, Any] = field(default_factory=dict)
    size: tuple[float, float] = (3.5, 2.6)
    formats: tuple[str, ...] = FORMATS
    dpi: int = 300


def _parse_size(v: Any) -> tuple[float, float] | None:
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9.]+)\s*[x×X*]\s*([0-9.]+)\s*", v)
        if not m:
            return None
        v = [m.group(1), m.group(2)]
    if isinstance(v, (list, tuple)) and len(v) == 2:
        try:
            w, h = float(v[0]), float(v[1])
        except (TypeError, ValueError):
            return None
        if 0 < w <= MAX_INCHES and 0 < h <= MAX_INCHES and math.isfinite(w) and math.isfinite(h):
            return (w, h)
    return None


def _plot_params(kind: str) -> set[str]:
    sig = inspect.signature(plots.PLOTS[kind])
    return {
        n
        for n, p in sig.parameters.items()
        if n not in ("df", "ax") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def load_spec(path: str | Path) -> list[FigureSpec]:
    """Parse and statically validate a figure spec; raise :class:`SpecError` listing every problem."""
    path = Path(path)
    raw = read_yaml(path, "figure spec")
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: top level must be a mapping with a 'figures' key")
    extra = set(raw) - {"figures", "defaults", "description", "name"}
    if extra:
        problems.append(f"{path}: unknown top-level keys {sorted(extra)} (known: defaults, figures)")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.append(f"{path}: defaults: must be a mapping")
        defaults = {}
    bad = set(defaults) - _DEFAULT_KEYS
    if bad:
        problems.append(
            f"{path}: defaults: unknown keys {sorted(bad)} (known: {', '.join(sorted(_DEFAULT_KEYS))})"
        )
    figs_raw = raw.get("figures")
    items: list[tuple[str, Any]] = []
    if isinstance(figs_raw, dict):
        items = [(str(k), v) for k, v in figs_raw.items()]
    elif isinstance(figs_raw, list):
        for i, f in enumerate(figs_raw):
            if not isinstance(f, dict) or "name" not in f:
                problems.append(f"{path}: figures[{i}]: must be a mapping with a 'name'")
                continue
            items.append((str(f["name"]), f))
    else:
        problems.append(f"{path}: figures: missing or not a mapping/list of figures")
    if isinstance(figs_raw, (dict, list)) and not items and not problems:
        problems.append(f"{path}: figures: empty; define at least one figure")
    seen: set[str] = set()
    specs: list[FigureSpec] = []
    for name, f in items:
        where = f"{path}: figures.{name}"
        if name in seen:
            problems.append(f"{where}: duplicate figure name")
            continue
        seen.add(name)
        if not _NAME.match(name):
            problems.append(f"{where}: name must use letters, digits, '_', '-', '.' (it becomes a file name)")
        if not isinstance(f, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        merged = {k: v for k, v in defaults.items() if k != "style"}
        merged.update(f)
        style = {**(defaults.get("style") or {}), **(f.get("style") or {})}
        unknown = set(f) - _FIGURE_KEYS
        if unknown:
            problems.append(
                f"{where}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(_FIGURE_KEYS))})"
            )
        kind = merged.get("kind")
        if kind not in plots.PLOTS:
            problems.append(
                f"{where}.kind: {kind!r} is not a plot kind (choose from {', '.join(plots.PLOTS)})"
            )
        src = merged.get("source")
        src_path = None
        if not isinstance(src, str) or not src:
            problems.append(f"{where}.source: missing; give the path of a stored results/correlation table")
        else:
            src_path = (path.parent / src).resolve() if not Path(src).is_absolute() else Path(src)
            if not src_path.exists():
                problems.append(f"{where}.source: {src} not found (resolved to {src_path})")
        filters = merged.get("filters") or {}
        if not isinstance(filters, dict):
            problems.append(f"{where}.filters: must be a mapping column: value-or-list")
            filters = {}
        options = merged.get("options", merged.get("params")) or {}
        if not isinstance(options, dict):
            problems.append(f"{where}.options: must be a mapping of plot arguments")
            options = {}
        elif kind in plots.PLOTS:
            bad_opts = sorted(set(options) - _plot_params(kind) - set(plots.STYLE_KEYS))
            if bad_opts:
                problems.append(
                    f"{where}.options: {bad_opts} not accepted by kind {kind!r} "
                    f"(accepted: {', '.join(sorted(_plot_params(kind)))})"
                )
        if not isinstance(style, dict):
            problems.append(f"{where}.style: must be a mapping")
            style = {}
        bad_style = sorted(set(style) - set(plots.STYLE_KEYS) - {"figsize"})
        if bad_style:
            problems.append(f"{where}.style: unknown keys {bad_style} (known: {', '.join(plots.STYLE_KEYS)})")
        size = _parse_size(merged.get("size", (3.5, 2.6)))
        if size is None:
            problems.append(
                f"{where}.size: {merged.get('size')!r} is not 'WxH' or [w, h] in inches "
                f"(each > 0 and <= {MAX_INCHES:g})"
            )
            size = (3.5, 2.6)
        formats = merged.get("formats", list(FORMATS))
        formats = [formats] if isinstance(formats, str) else formats
        if not isinstance(formats, list) or not formats or any(f_ not in FORMATS for f_ in formats):
            problems.append(f"{where}.formats: {formats!r}; choose one or more of {', '.join(FORMATS)}")
            formats = list(FORMATS)
        dpi = merged.get("dpi", 300)
        if not isinstance(dpi, int) or isinstance(dpi, bool) or not 10 <= dpi <= 2400:
            problems.append(f"{where}.dpi: {dpi!r} must be an integer between 10 and 2400")
            dpi = 300
        if size[0] * size[1] * dpi * dpi > MAX_PIXELS:
            problems.append(
                f"{where}.size: {size[0]:g}x{size[1]:g} in at {dpi} dpi is more than {MAX_PIXELS:,} pixels; "
                "lower the size or dpi"
            )
        specs.append(
            FigureSpec(
                name=name,
                source=src_path or Path(),
                kind=str(kind),
                filters=dict(filters),
                options=dict(options),
                style=dict(style),
                size=size,
                formats=tuple(formats),
                dpi=int(dpi),
            )
        )
    if problems:
        raise SpecError("\n".join(problems))
    return specs


def apply_filters(df: pd.DataFrame, filters: dict[str, Any], where: str) -> tuple[pd.DataFrame, list[str]]:
    """Keep rows whose column equals the value (or one of the list); return the rows and problems."""
    problems = []
    keep = np.ones(len(df), dtype=bool)
    for col, want in filters.items():
        if col not in df.columns:
            problems.append(
                f"{where}.filters.{col}: no such column (columns: {', '.join(map(str, df.columns))})"
            )
            continue
        wants = want if isinstance(want, list) else [want]
        s = df[col]
        hit = np.zeros(len(df), dtype=bool)
        for w in wants:
            if w is None:
                hit |= s.isna().to_numpy()
            elif (
                isinstance(w, bool) or not isinstance(w, (int, float)) or not pd.api.types.is_numeric_dtype(s)
            ):
                hit |= (s.astype(str) == str(w)).to_numpy(dtype=bool)
            else:
                hit |= np.isclose(s.to_numpy(dtype=float), float(w), rtol=1e-9, atol=0.0)
        missing = [w for w in wants if w is not None and not _matches(s, w)]
        if missing:
            vals = sorted({str(v) for v in s.dropna().unique()})[:10]
            problems.append(
                f"{where}.filters.{col}: value(s) {missing} match no row (values: {', '.join(vals)})"
            )
        keep &= hit
    out = df[keep]
    if not problems and out.empty:
        problems.append(f"{where}.filters: together they match no row")
    return out, problems


def _matches(s: pd.Series, w: Any) -> bool:
    if isinstance(w, (int, float)) and not isinstance(w, bool) and pd.api.types.is_numeric_dtype(s):
        return bool(np.isclose(s.to_numpy(dtype=float), float(w), rtol=1e-9, atol=0.0).any())
    return bool((s.astype(str) == str(w)).any())


def render(spec: FigureSpec, table: pd.DataFrame) -> Figure:
    """Draw one figure of a spec from its (already loaded) table."""
    fn = plots.PLOTS[spec.kind]
    style = {**spec.style, "figsize": spec.size}
    # Labels come from the data (test-set names such as "$\\badcmd{x}$"): plain text, never TeX math.
    with matplotlib.rc_context({"text.parse_math": False}):
        return fn(table, **spec.options, **style)


def build_figures(spec_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Rebuild every figure of a spec into ``out_dir`` (``name.pdf/.svg/.png``); return the written files.

    All figures are drawn in memory first; if any problem is found nothing is written and a
    :class:`SpecError` lists them all.
    """
    specs = load_spec(spec_path)
    tables: dict[Path, pd.DataFrame] = {}
    problems: list[str] = []
    drawn: list[tuple[FigureSpec, Figure]] = []
    for sp in specs:
        where = f"{spec_path}: figures.{sp.name}"
        if sp.source not in tables:
            try:
                tables[sp.source] = load_results(sp.source)
            except SharpscopeError as exc:
                problems.append(f"{where}.source: {exc}")
                continue
        table, probs = apply_filters(tables[sp.source], sp.filters, where)
        if probs:
            problems.extend(probs)
            continue
        try:
            drawn.append((sp, render(sp, table)))
        except SharpscopeError as exc:
            problems.append(f"{where}: {exc}")
        except TypeError as exc:  # a wrongly typed option
            problems.append(f"{where}.options: {exc}")
    if problems:
        raise SpecError("\n".join(problems))
    out = Path(out_dir)
    written: list[Path] = []
    for sp, fig in drawn:
        written += save_figure(fig, out / sp.name, sp.formats, dpi=sp.dpi)
    return written
