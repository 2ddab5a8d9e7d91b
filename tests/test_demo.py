"""A reduced demo, end to end: corpus -> zoo (ERM, SAM, LoRA + MLDG) -> sweep -> report."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from sharpscope.data.demo_corpus import CorpusConfig, build_demo_corpus
from sharpscope.demo import ANALYSES, run_demo


def reduced_specs(tmp_path):
    zoo = yaml.safe_load((ANALYSES / "demo_zoo.yaml").read_text())
    zoo["base"]["epochs"] = 1
    runs = {r["name"]: r for r in zoo["runs"]}
    zoo["runs"] = [
        {"name": "erm", "grid": {"seed": [0]}},
        {"name": "sam", "set": {"sam": {"rho": 0.05}}, "grid": {"seed": [0]}},
        {**runs["w2v-full"], "grid": {"seed": [0]}},
        {**runs["w2v-lora-mldg"], "grid": {"seed": [0]}},
    ]
    study = yaml.safe_load((ANALYSES / "demo.yaml").read_text())
    for m in study["measures"]:
        m["budget"] = 8
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


@pytest.mark.slow  # > 10 s on 2 shared cores
def test_reduced_demo_end_to_end(tmp_path):
    zp, sp = reduced_specs(tmp_path)
    cfg = CorpusConfig(n_train=8, n_dev=4, n_test=6, duration=(0.5, 0.7))
    res = run_demo(
        tmp_path / "run", tmp_path / "report", corpus=cfg, zoo_spec=zp, study_spec=sp, say=lambda m: None
    )
    df = res.results
    assert df["checkpoint"].nunique() == 4
    assert set(df["meta_method"]) == {"erm", "sam", "mldg"}
    assert df["family"].nunique() == 3  # AASIST, wav2vec 2.0 and wav2vec 2.0 + LoRA: never pooled
    # label-free rows for `sharpscope select`: kl-to-clean in order shuffled; labelled ones balanced
    lf = df[df["loss"] == "kl-to-clean"]
    assert len(lf) and set(lf["order"]) == {"shuffled"}
    assert set(df.loc[df["loss"] == "weighted-ce", "order"]) == {"balanced"}
    assert set(df["testset"]) == {"in-domain", "unseen-attacks", "codec"}
    assert df["value"].notna().all() and df["eer"].between(0, 1).all()
    html = res.report.read_text()
    assert res.report.is_file() and "<img" in html
    assert html.index('id="claims"') < html.index('id="glance"') < html.index('id="overview"')
    assert not res.summary.empty and set(res.correlations["testset"]) >= {"in-domain"}
    # the claims table printed by the demo is the one written next to the report
    written = pd.read_csv(res.report.parent / "claims.csv")
    assert len(res.claims) == 4
    pd.testing.assert_frame_equal(written[["claim", "verdict"]], res.claims[["claim", "verdict"]])
    assert res.selection is not None and {"oracle", "random"} <= set(res.selection["criterion"])
    assert set(res.eer_ci["testset"]) == {"in-domain", "unseen-attacks", "codec"}
    assert (res.report.parent / "figures" / "claims_overview.pdf").is_file()
    # cached: a rerun trains and sweeps nothing again
    again = run_demo(
        tmp_path / "run", tmp_path / "report", corpus=cfg, zoo_spec=zp, study_spec=sp, say=lambda m: None
    )
    pd.testing.assert_frame_equal(again.results, df)
