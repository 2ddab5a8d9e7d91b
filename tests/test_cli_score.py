"""`sharpscope score` and `sharpscope metrics` end to end: real audio, a tiny AASIST checkpoint, CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from sharpscope.cli import app
from sharpscope.metrics import evaluate
from sharpscope.models.registry import build_model
from sharpscope.provenance import file_sha256
from sharpscope.scorefiles import read_scores, write_scores
from sharpscope.scoring import score_manifest

SR = 16_000
TINY = {"first_conv": 16, "filts": [8, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 6]}
runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Eight 0.25-1 s clips (4 bona fide, 4 spoof of attacks A01/A02), a manifest CSV, a tiny checkpoint."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(8):
        n = int(rng.uniform(0.25, 1.0) * SR)
        x = (0.05 * rng.standard_normal(n) + (0.2 if i % 2 else 0.0) * np.sin(np.arange(n) / 7)).astype(
            np.float32
        )
        sf.write(root / f"c{i}.wav", x, SR)
        rows.append(
            {
                "utt_id": f"c{i}",
                "path": f"c{i}.wav",  # relative to the manifest's folder
                "label": "spoof" if i % 2 else "bonafide",
                "attack": ("A01" if i % 4 == 1 else "A02") if i % 2 else "bonafide",
                "codec": "mp3" if i < 4 else "none",
            }
        )
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    torch.manual_seed(0)
    model = build_model("aasist", **TINY)
    ckpt = root / "tiny.pth"
    torch.save(model.state_dict(), ckpt)
    cfg = root / "tiny.yaml"
    cfg.write_text("first_conv: 16\nfilts: [8, [1, 4], [4, 4], [4, 8], [8, 8]]\ngat_dims: [8, 6]\n")
    return {"root": root, "manifest": manifest, "ckpt": ckpt, "cfg": cfg, "rows": pd.DataFrame(rows)}


def _score(setup, out, *extra):
    args = ["score", str(setup["ckpt"]), str(setup["manifest"]), "--arch", "aasist", "--out", str(out)]
    args += ["--model-config", str(setup["cfg"]), "--n-boot", "50", *extra]
    return runner.invoke(app, args)


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_score_writes_scores_metrics_and_official_file(setup, tmp_path):
    out = tmp_path / "run"
    res = _score(setup, out, "--format", "asvspoof2019", "--batch-size", "3")
    assert res.exit_code == 0, res.output
    assert "EER" in res.stdout and "minDCF" in res.stdout

    scores = pd.read_csv(out / "scores.csv")
    assert scores["utt_id"].tolist() == [f"c{i}" for i in range(8)]
    assert {"score", "logit_spoof", "logit_bonafide", "attack", "codec"} <= set(scores.columns)
    assert (scores["score"] == scores["logit_bonafide"]).all()

    # the same numbers as scoring the state dict directly
    model = build_model("aasist", **TINY)
    model.load_state_dict(torch.load(setup["ckpt"], weights_only=True))
    df = setup["rows"].assign(path=[str(setup["root"] / p) for p in setup["rows"]["path"]])
    direct = score_manifest(model, df, batch_size=5, progress=False)
    np.testing.assert_allclose(scores["score"], direct["score"], rtol=1e-5, atol=1e-6)

    m = json.loads((out / "metrics.json").read_text())
    ref = evaluate(scores, seed=0, n_boot=50)
    assert m["eer"] == ref["eer"] and m["min_dcf"] == ref["min_dcf"]
    assert (m["n_bonafide"], m["n_spoof"]) == (4, 4)
    assert set(m["per_attack"]) == {"A01", "A02"} and set(m["per_codec"]) == {"mp3", "none"}
    assert m["settings"]["crop"] == "first" and m["settings"]["score"] == "bonafide-logit"
    assert m["settings"]["batch_size"] == 3 and m["settings"]["model_cfg"]["gat_dims"] == [8, 6]
    prov = m["provenance"]
    assert prov["checkpoint_sha256"] == file_sha256(setup["ckpt"])
    assert prov["n_utts"] == 8 and "config_hash" in prov and "versions" in prov

    official = read_scores(out / "scores_asvspoof2019.txt", "asvspoof2019")
    assert official["score"].tolist() == scores["score"].tolist()
    assert official["key"].tolist() == scores["label"].tolist()
    assert official.loc[official.key == "bonafide", "source"].eq("-").all()
    assert official.loc[official.key == "spoof", "source"].isin(["A01", "A02"]).all()

    # evaluating the official file with `metrics` gives the same numbers (lossless score text)
    res2 = runner.invoke(
        app,
        ["metrics", str(out / "scores_asvspoof2019.txt"), str(setup["manifest"]), "--format", "asvspoof2019",
         "--out", str(tmp_path / "m"), "--n-boot", "50"],
    )  # fmt: skip
    assert res2.exit_code == 0, res2.output
    m2 = json.loads((tmp_path / "m" / "metrics.json").read_text())
    for k in ("eer", "eer_threshold", "eer_ci95", "min_dcf", "act_dcf", "cllr", "per_attack", "per_codec"):
        assert m2[k] == m[k], k
    assert m2["matching"]["n_matched"] == 8
    assert m2["provenance"]["scores_sha256"] == file_sha256(out / "scores_asvspoof2019.txt")


def test_score_crop_full_and_logit_diff(setup, tmp_path):
    res = _score(setup, tmp_path / "full", "--crop", "full", "--score", "logit-diff", "--n-boot", "0")
    assert res.exit_code == 0, res.output
    s = pd.read_csv(tmp_path / "full" / "scores.csv")
    np.testing.assert_allclose(s["score"], s["logit_bonafide"] - s["logit_spoof"], rtol=1e-6, atol=1e-6)
    m = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert m["settings"]["crop"] == "full" and m["eer_ci95"] is None


def test_score_user_errors_are_one_line(setup, tmp_path):
    line = _one_line_error(_score(setup, tmp_path / "x", "--score", "probability"))
    assert "unknown score type 'probability'" in line
    line = _one_line_error(_score(setup, tmp_path / "x", "--format", "kaldi"))
    assert "unknown score-file format 'kaldi'" in line
    line = _one_line_error(_score(setup, tmp_path / "x", "--crop", "middle"))
    assert "crop" in line
    args = ["score", str(setup["ckpt"]), str(setup["manifest"]), "--arch", "wav2vec9", "--out", str(tmp_path)]
    assert "wav2vec9" in _one_line_error(runner.invoke(app, args))
    args = [
        "score",
        str(tmp_path / "nope.pth"),
        str(setup["manifest"]),
        "--arch",
        "aasist",
        "--out",
        str(tmp_path),
    ]
    assert "nope.pth" in _one_line_error(runner.invoke(app, args))


def _metrics(setup, scores, fmt, out, *extra):
    args = [
        "metrics",
        str(scores),
        str(setup["manifest"]),
        "--format",
        fmt,
        "--out",
        str(out),
        "--n-boot",
        "20",
    ]
    return runner.invoke(app, [*args, *extra])


def test_metrics_each_format_same_numbers(setup, tmp_path):
    table = setup["rows"].assign(score=np.linspace(-1, 1, 8)[[0, 5, 1, 6, 2, 7, 3, 4]])
    ref = evaluate(table, seed=0, n_boot=20)
    for fmt in ("csv", "asvspoof2019", "asvspoof2021", "asvspoof5"):
        p = write_scores(table.iloc[::-1], tmp_path / f"s_{fmt}.txt", fmt)  # order must not matter
        res = _metrics(setup, p, fmt, tmp_path / fmt)
        assert res.exit_code == 0, res.output
        m = json.loads((tmp_path / fmt / "metrics.json").read_text())
        assert m["eer"] == ref["eer"] and m["eer_ci95"] == ref["eer_ci95"] and m["cllr"] == ref["cllr"]
        assert m["settings"]["format"] == fmt


def test_metrics_mismatch_and_allow_partial(setup, tmp_path):
    table = setup["rows"].assign(score=np.arange(8.0))
    part = pd.concat([table.iloc[:6], pd.DataFrame({"utt_id": ["zz1"], "score": [0.5]})])
    p = write_scores(part, tmp_path / "part.csv", "csv")
    line = _one_line_error(_metrics(setup, p, "csv", tmp_path / "o"))
    assert "1 score ids not in the manifest (first: zz1)" in line
    assert "2 manifest ids without a score (first: c6, c7)" in line
    res = _metrics(setup, p, "csv", tmp_path / "o", "--allow-partial")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["matching"] == {
        "n_scores": 7,
        "n_manifest": 8,
        "n_matched": 6,
        "n_scores_not_in_manifest": 1,
        "n_manifest_without_score": 2,
    }
    assert m["n_bonafide"] + m["n_spoof"] == 6 and m["settings"]["allow_partial"] is True


def test_metrics_bad_scores_are_one_line(setup, tmp_path):
    p = tmp_path / "s.txt"
    lines = [f"c{i} {'nan' if i == 3 else i}" for i in range(8)]
    p.write_text("\n".join(lines) + "\n")
    assert "(first: c3)" in _one_line_error(_metrics(setup, p, "asvspoof2021", tmp_path / "o"))
    p.write_text("\n".join([*lines[:3], "c3 1 2"]) + "\n")
    assert "line 4: expected 2 columns" in _one_line_error(_metrics(setup, p, "asvspoof2021", tmp_path / "o"))
    table = setup["rows"].assign(score=1.0)
    dup = write_scores(pd.concat([table, table.iloc[:1]]), tmp_path / "d.csv", "csv")
    assert "appear more than once (first: c0)" in _one_line_error(_metrics(setup, dup, "csv", tmp_path / "o"))


# ---- declared score types and calibration (--score-type, --calibrate-on) ----------------------------------


def _dev_scores(setup, path, score):
    """A labelled dev score table whose classes overlap (a tiny random model may separate 8 clips)."""
    table = setup["rows"].assign(score=score)
    table.to_csv(path, index=False)
    return path


def test_score_declares_type_and_calibrates_on_dev(setup, tmp_path):
    from sharpscope.calibration import PRIORS, fit_calibration
    from sharpscope.metrics import act_dcf

    plain = tmp_path / "plain"
    assert _score(setup, plain, "--score-type", "log-odds", "--n-boot", "0").exit_code == 0
    s0 = pd.read_csv(plain / "scores.csv")
    m0 = json.loads((plain / "metrics.json").read_text())
    assert set(s0["score_type"]) == {"log-odds"} and m0["score_type"] == "log-odds"
    assert m0["calibrated"] is False and m0["calibration"] is None
    assert "not comparable across checkpoints" in m0["act_dcf_cllr"]["note"]
    np.testing.assert_allclose(s0["score"], s0["logit_bonafide"] - s0["logit_spoof"], rtol=1e-6, atol=1e-6)

    # calibrate on a dev score table: a, b are those of the dev scores; EER / minDCF stay those of the raw run
    dev = _dev_scores(setup, tmp_path / "dev.csv", [0.3, -0.2, 0.1, 0.5, -0.4, 0.2, 0.8, 0.0])
    out = tmp_path / "cal"
    res = _score(setup, out, "--score-type", "log-odds", "--n-boot", "0", "--calibrate-on", str(dev),
                 "--calibration-prior", "asvspoof5")  # fmt: skip
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    s = pd.read_csv(out / "scores.csv")
    ref = fit_calibration(pd.read_csv(dev)["score"], setup["rows"]["label"], prior=PRIORS["asvspoof5"])
    cal = m["calibration"]
    assert (cal["a"], cal["b"], cal["prior"]) == (ref.a, ref.b, PRIORS["asvspoof5"])
    assert (cal["n_bonafide"], cal["n_spoof"], cal["dev_rows"]) == (4, 4, 8)
    assert cal["dev_sha256"] == file_sha256(dev) and cal["dev_kind"] == "scores" and not cal["dev_is_test"]
    assert m["calibrated"] is True and m["act_dcf_cllr"] == {**m["act_dcf_cllr"], "score_type": "log-odds"}
    for k in ("eer", "eer_threshold", "min_dcf", "per_attack"):
        assert m[k] == m0[k], k
    np.testing.assert_allclose(s["llr"], ref.a * s["score"] + ref.b, rtol=1e-12)
    lab = s["label"] == "bonafide"
    assert m["act_dcf"] == act_dcf(s.loc[lab, "llr"], s.loc[~lab, "llr"])[0]
    assert m["uncalibrated"]["cllr"] == m0["cllr"]
    assert m["settings"]["calibrate_on"] == str(dev)
    assert m["settings"]["calibration_prior"] == PRIORS["asvspoof5"]


def test_score_calibrates_on_a_dev_manifest_and_metrics_reuses_it(setup, tmp_path):
    out = tmp_path / "cal"
    res = _score(
        setup, out, "--score-type", "log-odds", "--n-boot", "0", "--calibrate-on", str(setup["manifest"])
    )
    s = pd.read_csv(out / "scores.csv")
    bona, spoof = s.loc[s.label == "bonafide", "score"], s.loc[s.label == "spoof", "score"]
    if bona.min() >= spoof.max():  # the tiny model separates the 8 clips: the fit must refuse, in one line
        assert "perfectly separated" in _one_line_error(res)
        return
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    dev = pd.read_csv(out / "calibration_dev_scores.csv")
    assert dev["score"].tolist() == s["score"].tolist() and m["calibration"]["dev_kind"] == "manifest"
    assert m["calibration"]["dev_is_test"] is True and "WARNING" in m["act_dcf_cllr"]["note"]
    # `metrics` with the same dev scores reproduces the calibration and the numbers
    res2 = _metrics(setup, out / "scores.csv", "csv", tmp_path / "m", "--n-boot", "0",
                    "--calibrate-on", str(out / "calibration_dev_scores.csv"))  # fmt: skip
    assert res2.exit_code == 0, res2.output
    m2 = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m2["settings"]["score_type"] == "log-odds" and m2["settings"]["score_type_source"] == "file"
    for k in ("eer", "min_dcf", "act_dcf", "cllr"):
        assert m2[k] == m[k], k
    assert (m2["calibration"]["a"], m2["calibration"]["b"]) == (m["calibration"]["a"], m["calibration"]["b"])


def test_metrics_score_type_recomputes_from_logits_or_refuses(setup, tmp_path):
    out = tmp_path / "run"
    assert _score(setup, out, "--score-type", "log-odds", "--n-boot", "0").exit_code == 0
    s = pd.read_csv(out / "scores.csv")
    res = _metrics(setup, out / "scores.csv", "csv", tmp_path / "m", "--score-type", "bonafide-logit")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    ref = evaluate(s.assign(score=s["logit_bonafide"]).drop(columns="score_type"), n_boot=20)
    assert m["eer"] == ref["eer"] and m["cllr"] == ref["cllr"] and m["score_type"] == "bonafide-logit"
    assert m["settings"]["score_type_source"] == "option"
    # without logits a declared type cannot be converted
    bare = s[["utt_id", "score", "score_type"]]
    bare.to_csv(tmp_path / "bare.csv", index=False)
    line = _one_line_error(_metrics(setup, tmp_path / "bare.csv", "csv", tmp_path / "m", "--score-type",
                                    "bonafide-logit"))  # fmt: skip
    assert "declares score type log-odds" in line and "bare.csv" in line
    # an external file without a declared type: bonafide-logit by default, and said so
    write_scores(s.assign(score=s["logit_bonafide"]), tmp_path / "ext.txt", "asvspoof2021")
    assert _metrics(setup, tmp_path / "ext.txt", "asvspoof2021", tmp_path / "e").exit_code == 0
    me = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert me["score_type"] == "bonafide-logit" and me["settings"]["score_type_source"] == "default"
    assert me["eer"] == m["eer"]


def test_calibration_dev_errors_are_one_line(setup, tmp_path):
    one_class = setup["rows"][setup["rows"].label == "bonafide"].assign(score=[0.1, 0.2, 0.3, 0.4])
    one_class.to_csv(tmp_path / "one.csv", index=False)
    table = write_scores(setup["rows"].assign(score=np.arange(8.0)), tmp_path / "t.csv", "csv")
    line = _one_line_error(
        _metrics(setup, table, "csv", tmp_path / "o", "--calibrate-on", str(tmp_path / "one.csv"))
    )
    assert "one.csv" in line and "no spoof trials" in line
    bad = _dev_scores(setup, tmp_path / "nan.csv", [0.3, -0.2, 0.1, np.nan, -0.4, 0.2, 0.8, 0.0])
    line = _one_line_error(_metrics(setup, table, "csv", tmp_path / "o", "--calibrate-on", str(bad)))
    assert "nan.csv" in line and "row 4 (utt_id c3)" in line
    line = _one_line_error(
        _metrics(setup, table, "csv", tmp_path / "o", "--calibrate-on", str(tmp_path / "no.csv"))
    )
    assert "calibration dev file not found" in line
    line = _one_line_error(_metrics(setup, table, "csv", tmp_path / "o", "--calibration-prior", "2"))
    assert "calibration prior '2'" in line
    assert "unknown score type 'llr'" in _one_line_error(_metrics(setup, table, "csv", tmp_path / "o",
                                                                     "--score-type", "llr"))  # fmt: skip
