"""`sharpscope manifest build|check|kinds` via CliRunner: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from typer.testing import CliRunner

from sharpscope.cli import app
from sharpscope.data.manifest import read_manifest

runner = CliRunner()

LA21 = (
    "LA_0009 LA_E_1 alaw ita_tx A07 spoof notrim eval\n"
    "LA_0009 LA_E_2 alaw ita_tx bonafide bonafide notrim eval\n"
    "LA_0010 LA_E_3 none - A08 spoof notrim progress\n"
)


def _audio(path: Path, n: int = 400) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.sin(np.arange(n) / 5.0)).astype(np.float32), 16000)
    return path


def _la21(root: Path) -> Path:
    (root / "keys" / "LA" / "CM").mkdir(parents=True)
    (root / "keys" / "LA" / "CM" / "trial_metadata.txt").write_text(LA21)
    for utt in ("LA_E_1", "LA_E_2", "LA_E_3"):
        _audio(root / "ASVspoof2021_LA_eval" / "flac" / f"{utt}.flac")
    return root


def _one_error_line(result) -> str:
    text = result.output.strip()
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("error: ")
    return lines[0]


def test_build_writes_manifest_and_summary(tmp_path):
    root = _la21(tmp_path / "corpus")
    out = tmp_path / "data_manifests" / "la21.csv"
    result = runner.invoke(
        app, ["manifest", "build", "asvspoof2021_la", "--root", str(root), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote 3 rows to {out}" in result.output
    m = read_manifest(out)
    assert m["utt_id"].tolist() == ["LA_E_1", "LA_E_2", "LA_E_3"]
    assert m["codec"].tolist() == ["alaw", "alaw", "none"]


def test_build_only_eval_and_parquet(tmp_path):
    root = _la21(tmp_path / "corpus")
    out = tmp_path / "la21_eval.parquet"
    args = ["manifest", "build", "asvspoof2021-la", "--root", str(root), "--out", str(out), "--only-eval"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    m = pd.read_parquet(out)
    assert m["utt_id"].tolist() == ["LA_E_1", "LA_E_2"] and set(m["phase"]) == {"eval"}


def test_build_subset_and_option(tmp_path):
    la = tmp_path / "LA" / "ASVspoof2019_LA_cm_protocols"
    la.mkdir(parents=True)
    (la / "ASVspoof2019.LA.cm.eval.trl.txt").write_text(
        "LA_0039 LA_E_1 - A11 spoof\nLA_0014 LA_E_2 - - bonafide\n"
    )
    out = tmp_path / "m.csv"
    base = ["manifest", "build", "asvspoof2019_la", "--root", str(tmp_path), "--out", str(out)]
    result = runner.invoke(app, [*base, "--subset", "eval"])
    assert result.exit_code == 0, result.output
    assert read_manifest(out)["label"].tolist() == ["spoof", "bonafide"]
    # missing train protocol without --subset: one line naming the expected file
    line = _one_error_line(runner.invoke(app, base))
    assert "protocol file not found" in line and "ASVspoof2019.LA.cm.train.trn.txt" in line
    # converter options through --option KEY=VALUE; unknown ones are refused by name
    line = _one_error_line(runner.invoke(app, [*base, "--subset", "eval", "--option", "keys=x"]))
    assert "unknown option(s) keys" in line
    line = _one_error_line(runner.invoke(app, [*base, "--option", "novalue"]))
    assert "is not KEY=VALUE" in line


def test_build_errors_exit_2_without_traceback(tmp_path):
    out = tmp_path / "m.csv"
    r = runner.invoke(app, ["manifest", "build", "asvspoof2017", "--root", str(tmp_path), "--out", str(out)])
    assert r.exit_code == 2 and "unknown corpus kind 'asvspoof2017'" in _one_error_line(r)
    r = runner.invoke(
        app, ["manifest", "build", "asvspoof5", "--root", str(tmp_path / "nope"), "--out", str(out)]
    )
    assert r.exit_code == 2 and "corpus root not found" in _one_error_line(r)
    r = runner.invoke(
        app, ["manifest", "build", "asvspoof2021_df", "--root", str(tmp_path), "--out", str(out)]
    )
    assert r.exit_code == 2 and "keys/DF/CM/trial_metadata.txt" in _one_error_line(r)
    assert not out.exists()


def test_check_clean_manifest_exits_0(tmp_path):
    root = _la21(tmp_path / "corpus")
    out = tmp_path / "m.csv"
    assert (
        runner.invoke(
            app, ["manifest", "build", "asvspoof2021_la", "--root", str(root), "--out", str(out)]
        ).exit_code
        == 0
    )
    result = runner.invoke(app, ["manifest", "check", str(out), "--audio"])
    assert result.exit_code == 0, result.output
    assert "ok:" in result.output and "no problems" in result.output
    assert "16000 Hz: 3" in result.output
    assert "A07" in result.output and "bonafide" in result.output  # per-attack summary table


def test_check_lists_one_line_per_problem_and_exits_1(tmp_path):
    _audio(tmp_path / "a.wav")
    (tmp_path / "broken.wav").write_bytes(b"garbage")
    pd.DataFrame(
        {
            "utt_id": ["a", "a", "c", "d"],
            "path": ["a.wav", "b.wav", "broken.wav", "a.wav"],
            "label": ["spoof", "bonafide", "maybe", "spoof"],
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    result = runner.invoke(app, ["manifest", "check", str(tmp_path / "m.csv")])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "row 2: duplicate utt_id 'a' (first at row 1)" in lines
    assert any(line.startswith("row 2: audio file not found: ") and line.endswith("b.wav") for line in lines)
    assert any(line.startswith("row 3: invalid label 'maybe'") for line in lines)
    assert "row 4: duplicate path 'a.wav' (first at row 1)" in lines
    assert not any("cannot read audio" in line for line in lines)  # only with --audio
    assert "4 problem(s)" in result.output and "1-based data rows" in result.output

    audio = runner.invoke(app, ["manifest", "check", str(tmp_path / "m.csv"), "--audio", "--workers", "1"])
    assert audio.exit_code == 1
    assert any(line.startswith("row 3: cannot read audio ") for line in audio.output.splitlines())
    assert "5 problem(s)" in audio.output

    limited = runner.invoke(app, ["manifest", "check", str(tmp_path / "m.csv"), "--limit", "2"])
    assert limited.exit_code == 1
    assert sum(line.startswith("row ") for line in limited.output.splitlines()) == 2
    assert "... and 2 more problems" in limited.output


def test_check_unreadable_manifest_is_one_line_exit_2(tmp_path):
    r = runner.invoke(app, ["manifest", "check", str(tmp_path / "missing.csv")])
    assert r.exit_code == 2 and "manifest not found" in _one_error_line(r)
    (tmp_path / "bad.csv").write_text("utt_id,path,label\na,b,spoof,extra\n")
    r = runner.invoke(app, ["manifest", "check", str(tmp_path / "bad.csv")])
    assert r.exit_code == 2 and "cannot parse CSV" in _one_error_line(r)


def test_kinds_lists_every_converter():
    result = runner.invoke(app, ["manifest", "kinds"])
    assert result.exit_code == 0
    for name in (
        "asvspoof2019_la",
        "asvspoof2021_df",
        "asvspoof5",
        "in_the_wild",
        "mlaad",
        "spoofceleb",
        "csv",
    ):
        assert name in result.output
    assert "only_eval" in result.output
