"""`sharpscope figures`: spec validation, PDF/SVG/PNG output, byte-identical re-runs."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sharpscope import stats
from sharpscope.cli import app
from sharpscope.errors import SpecError
from sharpscope.report.figures import build_figures, load_spec
from tests.synthetic import example_results

SPEC = {
    "defaults": {"size": [3.5, 2.6], "dpi": 100, "style": {"font_size": 7}},
    "figures": {
        "scatter_codec": {
            "source": "run",
            "kind": "scatter",
            "filters": {"testset": "codec", "subset": "all"},
            "options": {"measure": "m-sharpness", "rho": 0.05},
            "style": {"legend": False},
        },
        "heat": {
            "source": "corr.csv",
            "kind": "heatmap",
            "options": {"method": "kendall"},
            "size": "3.5x1.6",
            "formats": ["pdf", "png"],
        },
        "by_method": {
            "source": "run/results.parquet",
            "kind": "eer-by-method",
            "filters": {"meta_method": ["ERM", "SAM"], "in_domain": False},
            "dpi": 150,
        },
    },
}


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    df = example_results(n_ckpt=4, seed=0)
    (tmp_path / "run").mkdir()
    df.to_parquet(tmp_path / "run" / "results.parquet")
    stats.correlate(df, "m-sharpness", rho=0.05, methods=["kendall", "spearman"], n_boot=0).to_csv(
        tmp_path / "corr.csv", index=False
    )
    (tmp_path / "figs.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    return tmp_path


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_figures_are_written_in_every_format_and_byte_identical(workdir):
    first = build_figures(workdir / "figs.yaml", workdir / "out1")
    second = build_figures(workdir / "figs.yaml", workdir / "out2")
    names = sorted(p.name for p in first)
    assert names == sorted(
        [f"scatter_codec.{e}" for e in ("pdf", "svg", "png")]
        + ["heat.pdf", "heat.png"]
        + [f"by_method.{e}" for e in ("pdf", "svg", "png")]
    )
    for a, b in zip(sorted(first), sorted(second), strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    # no timestamps / software versions in the files
    pdf = (workdir / "out1" / "scatter_codec.pdf").read_bytes()
    assert b"CreationDate" not in pdf and b"/Creator (sharpscope)" in pdf
    svg = (workdir / "out1" / "scatter_codec.svg").read_text()
    assert "<dc:date>" not in svg
    assert b"Software" not in (workdir / "out1" / "scatter_codec.png").read_bytes()


def test_sizes_follow_the_spec(workdir):
    build_figures(workdir / "figs.yaml", workdir / "out")
    assert _png_size(workdir / "out" / "scatter_codec.png") == (350, 260)  # 3.5 x 2.6 in at 100 dpi
    assert _png_size(workdir / "out" / "heat.png") == (350, 160)
    assert _png_size(workdir / "out" / "by_method.png") == (525, 390)  # dpi 150
    pdf = (workdir / "out" / "scatter_codec.pdf").read_bytes()
    box = re.search(rb"/MediaBox \[\s*0 0 ([0-9.]+) ([0-9.]+)\s*\]", pdf)
    assert box and (float(box.group(1)), float(box.group(2))) == (252.0, 187.2)  # points


def test_filters_select_rows(workdir):
    specs = {s.name: s for s in load_spec(workdir / "figs.yaml")}
    assert specs["by_method"].filters == {"meta_method": ["ERM", "SAM"], "in_domain": False}
    assert specs["heat"].size == (3.5, 1.6) and specs["heat"].formats == ("pdf", "png")
    assert specs["scatter_codec"].style == {"font_size": 7, "legend": False}
    build_figures(workdir / "figs.yaml", workdir / "out")
    # the scatter has a single panel (only codec rows survive the filter)
    svg = (workdir / "out" / "scatter_codec.svg").read_text()
    assert svg.count('id="axes_') == 1


def test_bad_spec_lists_every_problem_one_line_each(workdir):
    bad = {
        "figures": {
            "a": {"source": "run", "kind": "violin"},
            "b": {"source": "missing.parquet", "kind": "scatter", "size": "big", "colour": "red"},
            "c": {"source": "run", "kind": "scatter", "options": {"measur": "x"}, "formats": ["gif"]},
            "d": {"source": "run", "kind": "heatmap", "style": {"fontsize": 3}, "dpi": 0},
        }
    }
    (workdir / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(SpecError) as exc:
        build_figures(workdir / "bad.yaml", workdir / "out")
    lines = str(exc.value).splitlines()
    expected = [
        "figures.a.kind: 'violin' is not a plot kind",
        "figures.b.source: missing.parquet not found",
        "figures.b.size: 'big'",
        "figures.b: unknown keys ['colour']",
        "figures.c.options: ['measur'] not accepted",
        "figures.c.formats",
        "figures.d.style: unknown keys ['fontsize']",
        "figures.d.dpi",
    ]
    assert len(lines) == len(expected)
    for e in expected:
        assert sum(e in line for line in lines) == 1, e
    assert not (workdir / "out").exists()


def test_filters_and_plot_errors_are_reported_before_writing(workdir):
    spec = {
        "figures": {
            "ok": {"source": "run", "kind": "eer-by-method"},
            "nofilter": {
                "source": "run",
                "kind": "eer-by-method",
                "filters": {"testset": "mars", "colour": 1},
            },
            "noplot": {"source": "run", "kind": "scatter", "options": {"measure": "hessian"}},
        }
    }
    (workdir / "f.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError) as exc:
        build_figures(workdir / "f.yaml", workdir / "out")
    msg = str(exc.value)
    assert "figures.nofilter.filters.testset: value(s) ['mars'] match no row" in msg
    assert "figures.nofilter.filters.colour: no such column" in msg
    assert "figures.noplot: x 'hessian' is neither a column nor a measure" in msg
    assert len(msg.splitlines()) == 3
    assert not (workdir / "out").exists()  # nothing written, not even the good figure


def test_yaml_and_structure_errors(tmp_path):
    (tmp_path / "x.yaml").write_text("figures: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "x.yaml")
    (tmp_path / "y.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="top level must be a mapping"):
        load_spec(tmp_path / "y.yaml")
    (tmp_path / "z.yaml").write_text("figures: {}\n")
    with pytest.raises(SpecError, match="empty"):
        load_spec(tmp_path / "z.yaml")
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "none.yaml")


def test_list_form_and_cli(workdir):
    spec = {"figures": [{"name": "m", "source": "run", "kind": "eer-by-method", "formats": "png"}]}
    (workdir / "l.yaml").write_text(yaml.safe_dump(spec))
    runner = CliRunner()
    res = runner.invoke(app, ["figures", str(workdir / "l.yaml"), "--out", str(workdir / "o")])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (workdir / "o").iterdir()] == ["m.png"]
    (workdir / "b.yaml").write_text(
        yaml.safe_dump({"figures": [{"name": "m", "source": "run", "kind": "pie"}]})
    )
    res = runner.invoke(app, ["figures", str(workdir / "b.yaml"), "--out", str(workdir / "o2")])
    assert res.exit_code == 2 and "is not a plot kind" in res.output
