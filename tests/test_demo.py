"""A reduced demo, end to end: corpus -> zoo (ERM, SAM, LoRA + MLDG) -> sweep -> report."""

from __future__ import annotations

import pandas as pd
import yaml

from sharpscope.data.demo_corpus import CorpusConfig, build_demo_corpus
from sharpscope.demo import ANALYSES, run_demo


def reduced_specs(tmp_path):
    zoo = yaml.safe_load((ANALYSES / "demo_zoo.yaml").read_text())
    zoo["base"]["epochs"] = 1
    zoo["runs"] = [
        {"name": "erm", "grid": {"seed": [0]}},
        {"name": "sam", "set": {"sam": {"rho": 0.05}}, "grid": {"seed": [0]}},
        next(r for r in zoo["runs"] if r["name"] == "lora-mldg"),
    ]
    study = yaml.safe_load((ANALYSES / "demo.yaml").read_text())
    study["measures"] = [{"name": "m-sharpness", "rho": 0.05, "loss": ["weighted-ce", "kl-to-clean"]}]
    study["subsets"][0].update(n_bonafide=4, n_per_group=2)
    study["testsets"] = [
        t for t in study["testsets"] if t["name"] in ("in-domain", "unseen-attacks", "codec")
    ]
    zp, sp = tmp_path / "zoo.yaml", tmp_path / "study.yaml"
    zp.write_text(yaml.safe_dump(zoo))
    sp.write_text(yaml.safe_dump(study))
    return zp, sp


def test_corpus_is_deterministic_and_has_every_domain(tmp_path):
    cfg = CorpusConfig(n_train=2, n_dev=2, n_test=2, duration=(0.3, 0.4), real_speech=False, tts=False)
    a = build_demo_corpus(tmp_path / "a", cfg)
    b = build_demo_corpus(tmp_path / "b", cfg)
    assert set(a) == {
        "train",
        "dev",
        "eval",
        "unseen_attacks",
        "codec",
        "noise",
        "bandlimit",
        "other_speakers",
    }
    for name in a:
        da, db = pd.read_csv(a[name]), pd.read_csv(b[name])
        pd.testing.assert_frame_equal(da.drop(columns="path"), db.drop(columns="path"))
        for pa, pb in zip(da["path"], db["path"], strict=True):
            assert (a[name].parent / pa).read_bytes() == (b[name].parent / pb).read_bytes()
    assert set(pd.read_csv(a["unseen_attacks"])["attack"]) - {"-"} <= {"D03", "D04", "D05"}
    assert set(pd.read_csv(a["train"])["attack"]) - {"-"} == {"D01", "D02"}


def test_reduced_demo_end_to_end(tmp_path):
    zp, sp = reduced_specs(tmp_path)
    cfg = CorpusConfig(n_train=8, n_dev=4, n_test=6, duration=(0.5, 0.7))
    res = run_demo(
        tmp_path / "run", tmp_path / "report", corpus=cfg, zoo_spec=zp, study_spec=sp, say=lambda m: None
    )
    df = res.results
    assert df["checkpoint"].nunique() == 3
    assert set(df["meta_method"]) == {"erm", "sam", "mldg"}
    assert set(df["testset"]) == {"in-domain", "unseen-attacks", "codec"}
    assert df["value"].notna().all() and df["eer"].between(0, 1).all()
    assert res.report.is_file() and "<img" in res.report.read_text()
    assert not res.summary.empty and set(res.correlations["testset"]) >= {"in-domain"}
    # cached: a rerun trains and sweeps nothing again
    again = run_demo(
        tmp_path / "run", tmp_path / "report", corpus=cfg, zoo_spec=zp, study_spec=sp, say=lambda m: None
    )
    pd.testing.assert_frame_equal(again.results, df)
