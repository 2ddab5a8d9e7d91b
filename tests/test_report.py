"""Plots, the HTML/Markdown/LaTeX report and the synthetic example table."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure
from typer.testing import CliRunner

from sharpscope import stats
from sharpscope.cli import app
from sharpscope.errors import SharpscopeError
from sharpscope.provenance import file_sha256
from sharpscope.report import plots
from sharpscope.report.html import build_report
from sharpscope.report.tables import parse_curve, to_latex, to_markdown, write_table
from tests.synthetic import example_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return example_results(n_ckpt=4, seed=1)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60, metadata={"Software": None})
    return buf.getvalue()


# ---- example table -----------------------------------------------------------------------------------------


def test_example_results_schema_seeded_and_synthetic():
    a = example_results(n_ckpt=5, testsets=("in-domain", "x", "y", "z"), seed=3)
    b = example_results(n_ckpt=5, testsets=("in-domain", "x", "y", "z"), seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a["value"].equals(
        example_results(n_ckpt=5, testsets=("in-domain", "x", "y", "z"), seed=4)["value"]
    )
    need = (
        "checkpoint arch testset in_domain subset measure rho seed loss value stderr ci_lo ci_hi n_utts eer "
        "eer_ci_lo eer_ci_hi min_dcf cllr n_bonafide n_spoof meta_method meta_sam_rho meta_seed meta_lr "
        "meta_lora_rank meta_n_params git_revision spec_hash config_hash extra"
    ).split()
    assert set(need) <= set(a.columns)
    assert a["checkpoint"].nunique() == 5 and a["testset"].nunique() == 4
    assert (a["git_revision"] == "synthetic").all() and a["checkpoint"].str.startswith("syn").all()
    assert set(a.loc[a.in_domain, "testset"]) == {"in-domain"}
    # one row per (checkpoint, testset, subset, measure, rho, seed)
    key = ["checkpoint", "testset", "subset", "measure", "rho", "seed"]
    assert not a.assign(rho=a.rho.fillna(-1)).duplicated(key).any()
    assert {"attacks:1", "attacks:4"} <= set(a["subset"])


def test_parse_curve_shapes():
    x, y = parse_curve(
        json.dumps({"alphas": [-1, 0, 1], "mean": [2, 1, 2], "curves": [[2, 1, 2]], "dims": 1})
    )
    assert x.tolist() == [-1, 0, 1] and y.tolist() == [2, 1, 2]
    _, y = parse_curve({"alphas": [0, 1], "curves": [[1, 3], [3, 5]]})
    assert y.tolist() == [2, 4]  # mean over directions
    x, y = parse_curve([[0, 1.0], [1, 2.0]])
    assert x.tolist() == [0, 1] and y.tolist() == [1, 2]
    x, y = parse_curve([1.0, 0.5, 1.0])
    assert x.tolist() == [-1, 0, 1]
    assert parse_curve("") is None and parse_curve(float("nan")) is None
    assert parse_curve({"alphas": [0, 1], "grid": [[1, 2], [3, 4]], "dims": 2}) is None
    with pytest.raises(SharpscopeError, match="not valid JSON"):
        parse_curve("{nope")


def test_markdown_and_latex_writers(tmp_path):
    t = pd.DataFrame({"name": ["a_b", "c|d"], "coef": [0.123456, float("nan")], "n": [3, 4]})
    md = to_markdown(t)
    assert md.splitlines()[0] == "| name | coef | n |" and "c\\|d" in md and "0.123" in md and "–" in md
    tex = to_latex(t, caption="50% of x_y")
    assert "a\\_b" in tex and "\\caption{50\\% of x\\_y}" in tex and "{lrr}" in tex and "\\bottomrule" in tex
    written = write_table(t, tmp_path / "tab")
    assert sorted(p.name for p in written) == ["tab.csv", "tab.md", "tab.tex"]
    assert write_table(t, tmp_path / "one.tex") == [tmp_path / "one.tex"]


# ---- plots -------------------------------------------------------------------------------------------------


def test_scatter_one_panel_per_testset_with_coefficients(df):
    fig = plots.scatter(df, measure="m-sharpness", rho=0.05)
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == list(stats.testset_shift(df)["testset"])
    texts = [t.get_text() for t in axes[0].texts]
    tab, _ = stats.paired_table(df, "m-sharpness", rho=0.05)
    g = tab[tab.testset == "in-domain"]
    tau = stats.coefficient(g["x"], g["y"], "kendall")
    assert f"τ={tau.coef:.2f} (p={tau.p:.2g})" in texts[0]
    assert sum(len(c.get_offsets()) for c in axes[0].collections) == 4  # one dot per checkpoint


def test_every_plot_kind_draws_and_is_deterministic(df):
    calls = {
        "scatter": dict(measure="m-sharpness", rho=0.05),
        "heatmap": dict(),
        "per-testset": dict(measure="average-case"),
        "cumulative": dict(measure="m-sharpness"),
        "landscape": dict(),
        "eer-by-method": dict(),
    }
    assert set(calls) == set(plots.PLOTS)
    for kind, kw in calls.items():
        f1 = plots.PLOTS[kind](df, **kw, figsize=(4, 3))
        f2 = plots.PLOTS[kind](df, **kw, figsize=(4, 3))
        assert isinstance(f1, Figure)
        assert _png(f1) == _png(f2), kind
        assert tuple(f1.get_size_inches()) == (4, 3)


def test_plots_draw_into_a_given_axes(df):
    host = Figure(figsize=(8, 3))
    ax1, ax2 = host.subplots(1, 2)
    assert plots.scatter(df, ax1, measure="m-sharpness", rho=0.01, testsets=["codec"]) is host
    assert plots.eer_by_method(df, ax2) is host
    assert len(ax1.collections) > 0 and len(ax2.patches) > 0


def test_heatmap_values_and_from_stored_correlation_table(df, tmp_path):
    fig = plots.heatmap(df, method="kendall")
    corr = plots.correlation_matrix(df, method="kendall")
    ref = stats.correlate(df, "m-sharpness", rho=0.05, methods=["kendall"], n_boot=0)
    got = corr[corr.label == "m-sharpness (ρ=0.05)"].set_index("testset")["coef"]
    pd.testing.assert_series_equal(got, ref.set_index("testset")["coef"], check_names=False)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "m-sharpness (ρ=0.05)" in labels and "landscape" in labels
    # a stored correlation table (as written by `sharpscope correlate`) draws the same matrix
    stored = tmp_path / "corr.csv"
    ref.to_csv(stored, index=False)
    fig2 = plots.heatmap(pd.read_csv(stored), method="kendall")
    cells = [t.get_text() for t in fig2.axes[0].texts]
    assert cells == [
        f"{v:.2f}" + ("*" if p < 0.05 else "") for v, p in zip(ref["coef"], ref["p_holm"], strict=True)
    ]


def test_sharpness_by_testset_order_and_cis(df):
    fig = plots.sharpness_by_testset(df, measure="m-sharpness", rho=0.05, order=["codec", "in-domain"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["codec", "in-domain"]
    with pytest.raises(SharpscopeError, match="have no"):
        plots.sharpness_by_testset(df, measure="m-sharpness", rho=0.05, order=["mars"])


def test_cumulative_x_axis_is_the_step(df):
    fig = plots.cumulative(df, measure="m-sharpness")
    ax = fig.axes[0]
    xs = sorted({float(v) for line in ax.get_lines() for v in line.get_xdata()})
    assert xs == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(SharpscopeError, match="no 'NAME:k' subset rows"):
        plots.cumulative(df, measure="average-case")


def test_landscape_accepts_list_and_string_columns(df):
    rows = df[df.measure == "landscape"].copy()
    as_lists = rows.assign(extra=[json.loads(s)["mean"] for s in rows["extra"]])
    for table in (rows, as_lists):
        fig = plots.landscape(table)
        ax = fig.axes[0]
        assert len(ax.get_lines()) == table["meta_method"].nunique()
    # mean ± std band: the mean line of ERM equals the mean of its checkpoints' curves
    erm = rows[(rows.testset == "in-domain") & (rows.meta_method == "ERM")]
    mean = np.mean([json.loads(s)["mean"] for s in erm["extra"]], axis=0)
    fig = plots.landscape(rows, testsets=["in-domain"])
    line = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("ERM")][0]
    np.testing.assert_allclose(line.get_ydata(), mean)


def test_unknown_style_key_is_an_error(df):
    with pytest.raises(SharpscopeError, match="unknown style key"):
        plots.eer_by_method(df, colour="red")


# ---- report ------------------------------------------------------------------------------------------------


def test_build_report_writes_self_contained_html_md_tex(tmp_path, df):
    src = tmp_path / "run"
    src.mkdir()
    df.to_parquet(src / "results.parquet")
    spec = {"name": "toy", "seeds": [0], "measures": [{"name": "m-sharpness", "rho": [0.01, 0.05]}]}
    index = build_report(
        src,
        tmp_path / "rep",
        spec=spec,
        title="Toy <study>",
        n_boot=50,
        max_measures=1,
        figure_formats=("png", "svg"),
    )
    html = index.read_text()
    assert index.name == "index.html" and "<title>Toy &lt;study&gt;</title>" in html
    # self-contained: no external resource, no script
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html
    imgs = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    figs = sorted((tmp_path / "rep" / "figures").glob("*.png"))
    assert len(imgs) == len(figs) >= 6
    for b64 in imgs:
        assert base64.b64decode(b64).startswith(PNG_MAGIC)
    assert {f.name for f in figs} >= {"heatmap_spearman.png", "eer_by_method.png", "landscape_landscape.png"}
    assert all(f.with_suffix(".svg").is_file() for f in figs)
    assert all(p.name.isascii() for p in figs)
    # spec as YAML, provenance with the sha256 of the table
    assert "measures:" in html and "m-sharpness" in html
    assert file_sha256(src / "results.parquet") in html
    # Markdown links only existing figures; LaTeX tables
    md = (tmp_path / "rep" / "report.md").read_text()
    links = re.findall(r"\]\((figures/[^)]+)\)", md)
    assert links and all((tmp_path / "rep" / p).is_file() for p in links)
    assert "```yaml" in md
    tex = (tmp_path / "rep" / "tables.tex").read_text()
    assert tex.count("\\begin{tabular}") >= 3 and "tab:corr" in tex
    corr = pd.read_csv(tmp_path / "rep" / "tables" / "correlations.csv")
    assert {"coef", "p", "p_holm", "p_bh", "ci_lo", "ci_hi", "p_method"} <= set(corr.columns)


def test_report_minimal_table_three_by_three(tmp_path):
    """A bare table (3 checkpoints x 3 test sets, one measure, no meta/subsets/curves) still reports."""
    base = example_results(n_ckpt=3, seed=5)
    keep = (base.measure == "m-sharpness") & (base.rho == 0.05) & (base.subset == "all")
    bare = base.loc[keep, ["checkpoint", "testset", "in_domain", "measure", "rho", "value", "eer"]]
    index = build_report(bare, tmp_path / "rep", n_boot=20, figure_formats=("png",))
    html = index.read_text()
    assert html.count("<img ") == 4  # claims overview, heatmap, scatter, per-testset
    assert "Granulated" not in html
    # the claims come first; (c)/(d) cannot be answered without training metadata, and say so
    sections = re.findall(r'<section id="([^"]+)">', html)
    assert sections[:2] == ["claims", "glance"]
    claims = pd.read_csv(tmp_path / "rep" / "claims.csv")
    assert len(claims) == 4
    assert list(claims.loc[claims["claim"].str.startswith(("(c)", "(d)")), "verdict"]) == ["undecided"] * 2


def test_report_rejects_non_results_tables(tmp_path):
    with pytest.raises(SharpscopeError, match="no 'measure' column"):
        build_report(pd.DataFrame({"checkpoint": ["a"], "testset": ["t"]}), tmp_path / "r")
    with pytest.raises(SharpscopeError, match="empty"):
        build_report(pd.DataFrame(), tmp_path / "r")


def test_cli_report(tmp_path):
    example_results(n_ckpt=3, seed=0).to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"name": "cli-study"}))
    res = CliRunner().invoke(
        app,
        [
            "report",
            str(tmp_path / "results.csv"),
            "--out",
            str(tmp_path / "reports" / "x"),
            "--spec",
            str(tmp_path / "study.yaml"),
            "--n-boot",
            "20",
            "--formats",
            "png",
            "--max-measures",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "cli-study" in (tmp_path / "reports" / "x" / "index.html").read_text()
    assert not list((tmp_path / "reports" / "x" / "figures").glob("*.svg"))
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "not found" in res.output


def test_one_legend_per_figure(df):
    """Multi-panel figures carry exactly one legend, at figure level, never one inside a single panel."""
    for fig in (
        plots.scatter(df, measure="m-sharpness", rho=0.05, loss="weighted-ce"),
        plots.eer_by_method(df),
    ):
        panels = [a for a in fig.axes if a.get_visible() and a.get_label() != "<colorbar>"]
        assert len(fig.legends) + sum(a.get_legend() is not None for a in panels) == 1
        if len(panels) > 1:
            assert len(fig.legends) == 1
        labels = [t.get_text() for t in (fig.legends or [panels[0].get_legend()])[0].get_texts()]
        assert labels == sorted(set(df["meta_method"].astype(str)))


def test_report_default_formats_and_folded_tables(tmp_path):
    """Every figure also as SVG and PDF (for papers); long tables folded; the claims table first."""
    base = example_results(n_ckpt=4, seed=2)
    keep = (base.measure == "m-sharpness") & (base.rho == 0.05) & (base.subset == "all")
    index = build_report(base[keep], tmp_path / "rep", n_boot=20)
    figs = sorted((tmp_path / "rep" / "figures").glob("*.png"))
    assert figs and all(f.with_suffix(".svg").is_file() and f.with_suffix(".pdf").is_file() for f in figs)
    assert all(f.with_suffix(".pdf").read_bytes().startswith(b"%PDF") for f in figs)
    html = index.read_text()
    assert html.count("<details") >= 3
    first_table = html.index("<table")
    assert html.index('id="claims"') < first_table < html.index('id="overview"')
    assert "Verdict rule" in html and (tmp_path / "rep" / "claims.md").is_file()
