"""Sweep engine: spec validation, plan, local run, resume, store robustness."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from sharpscope.errors import SpecError
from sharpscope.sweep.store import ResultStore
from sharpscope.sweep.study import load_study
from sharpscope.sweep.sweep import run_sweep
from tests.conftest import write_tiny_checkpoint

VOLATILE = ["wall_s", "cell_id"]


def make_study(tmp_path: Path, corpus: dict[str, Path], measures=None, subsets=None) -> Path:
    ck = tmp_path / "zoo"
    ck.mkdir(exist_ok=True)
    write_tiny_checkpoint(ck / "erm.safetensors", 0, {"method": "erm", "seed": 0})
    write_tiny_checkpoint(ck / "sam.safetensors", 1, {"method": "sam", "sam_rho": 0.05, "seed": 1})
    spec = {
        "name": "t",
        "seeds": [0],
        "scoring": {"batch_size": 4, "nb_samp": 8000},
        "checkpoints": [{"path": "zoo/*.safetensors", "arch": "aasist"}],
        "testsets": [
            {"name": "in", "manifest": str(corpus["in"]), "in_domain": True},
            {"name": "shift", "manifest": str(corpus["shift"])},
        ],
        "measures": measures
        if measures is not None
        else [{"name": "m-sharpness", "rho": [0.01, 0.05], "loss": ["weighted-ce", "kl-to-clean"]}],
    }
    if subsets:
        spec["subsets"] = subsets
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def stable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in VOLATILE if c in df]).reset_index(drop=True)


def test_bad_spec_lists_every_problem(tmp_path, tiny_corpus):
    spec = {
        "checkpoints": [{"path": "nope/*.pt", "arch": "resnet"}],
        "testsets": [
            {"name": "a", "manifest": "missing.csv"},
            {"name": "a", "manifest": str(tiny_corpus["in"])},
        ],
        "measures": [{"name": "m-sharpness", "rho": 0.05, "bogus": 1}, {"name": "curvy"}],
        "scoring": {"crop": "middle"},
        "colour": "blue",
    }
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError) as exc:
        load_study(p)
    msg = str(exc.value)
    for needle in [
        "colour: unknown key",
        "checkpoints[0].arch",
        "checkpoints[0].path: nothing found",
        "testsets[0].manifest: file not found",
        "testsets[1].name: duplicate",
        "measures[0].bogus",
        "measures[1].name",
        "scoring.crop",
    ]:
        assert needle in msg, (needle, msg)
    assert msg.count("\n") >= 8  # one line per problem


def test_rho_and_loss_lists_expand(tmp_path, tiny_corpus):
    study = load_study(make_study(tmp_path, tiny_corpus))
    assert [(m.rho, m.loss) for m in study.measures] == [
        (0.01, "weighted-ce"),
        (0.01, "kl-to-clean"),
        (0.05, "weighted-ce"),
        (0.05, "kl-to-clean"),
    ]
    assert len(study.checkpoints) == 2
    assert study.checkpoints[1].meta["method"] == "sam"


@pytest.mark.slow
def test_local_sweep_table_resume_and_force(tmp_path, tiny_corpus):
    study = make_study(tmp_path, tiny_corpus)
    out = tmp_path / "res"
    res = run_sweep(study, out)
    assert res.ran == 4 and res.skipped == 0
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 2 * 2 * 4  # checkpoints x testsets x (2 rho x 2 losses)
    assert not df.duplicated(["checkpoint", "testset", "subset", "measure", "rho", "loss", "seed"]).any()
    assert set(df["meta_method"]) == {"erm", "sam"}
    assert df["n_bonafide"].eq(6).all() and df["n_spoof"].eq(6).all()
    assert df["value"].notna().all() and df["eer"].between(0, 1).all()
    # larger radius -> larger sharpness on every (checkpoint, testset, loss)
    wide = df.pivot_table(index=["checkpoint", "testset", "loss"], columns="rho", values="value")
    assert (wide[0.05] > wide[0.01]).all()
    # EER identical across measure rows of the same cell (one shared scoring pass)
    assert df.groupby(["checkpoint", "testset"])["eer"].nunique().eq(1).all()
    for col in ("git_revision", "spec_hash", "checkpoint_sha256", "versions", "seed"):
        assert df[col].notna().all()
    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == len(df)

    again = run_sweep(study, out)
    assert again.ran == 0 and again.skipped == 4
    forced = run_sweep(study, out, force=True)
    assert forced.ran == 4
    pd.testing.assert_frame_equal(stable(pd.read_parquet(out / "results.parquet")), stable(df))


def test_subsets_are_nested_and_stored(tmp_path, tiny_corpus):
    subsets = [{"name": "atk", "testset": "shift", "by": "attack", "n_bonafide": 4, "n_per_group": 1}]
    study = make_study(tmp_path, tiny_corpus, measures=[], subsets=subsets)
    out = tmp_path / "res"
    run_sweep(study, out)
    df = pd.read_parquet(out / "results.parquet")
    sub = df[df["subset"] != ""]
    assert sorted(sub["subset"].unique()) == ["atk:1", "atk:2", "atk:3"]
    assert sub.groupby("subset")["n_spoof"].first().tolist() == [1, 2, 3]
    assert sub["n_bonafide"].eq(4).all()
    import json

    steps = json.loads((out / "subsets" / "atk.json").read_text())
    for a, b in zip(steps, steps[1:], strict=False):
        assert set(a["utt_ids"]) < set(b["utt_ids"])


def test_corrupt_and_foreign_cell_files_are_reported(tmp_path, tiny_corpus):
    study = make_study(tmp_path, tiny_corpus, measures=[])
    out = tmp_path / "res"
    run_sweep(study, out)
    store = ResultStore(out)
    cells = sorted(store.cells.glob("*.json"))
    assert len(cells) == 4
    cells[0].write_text('{"format": "sharpscope-cell/1", "rows": [')  # truncated JSON
    (store.cells / "notes.txt").write_text("hello")
    (store.cells / "0123456789abcdef.json").write_text('{"some": "other tool"}')
    df, report = store.merge()
    assert len(df) == 3
    joined = "\n".join(report.problems)
    assert "not valid JSON" in joined and "foreign file" in joined and "not a sharpscope cell" in joined
    # the truncated cell is recomputed by the next run, the foreign files stay reported
    res = run_sweep(study, out)
    assert res.ran == 1
    assert len(res.table) == 4


def test_scoring_precision_is_applied_recorded_and_checked(tmp_path, tiny_corpus):
    from sharpscope.confounds import confound_warnings
    from sharpscope.data.manifest import read_manifest
    from sharpscope.metrics import compute_eer
    from sharpscope.models.checkpoints import load_checkpoint
    from sharpscope.scoring import score_manifest

    spec_path = make_study(tmp_path, tiny_corpus, measures=[{"name": "m-sharpness", "rho": 0.05}])
    spec = yaml.safe_load(spec_path.read_text())
    spec["scoring"]["precision"] = "bf16"
    spec_path.write_text(yaml.safe_dump(spec))
    run_sweep(spec_path, tmp_path / "res")
    df = pd.read_parquet(tmp_path / "res" / "results.parquet")
    assert set(df["precision"]) == {"bf16"} and set(df["sharpness_precision"]) == {"fp32"}
    # the EER is that of an independent bf16 scoring pass (the fp32 m-sharpness pass does not supply it)
    ckpt = load_checkpoint(str(tmp_path / "zoo" / "erm.safetensors"), "aasist")
    man = read_manifest(tiny_corpus["in"])
    sc = score_manifest(ckpt.model, man, batch_size=4, nb_samp=8000, progress=False, precision="bf16")
    s, lab = sc["score"].to_numpy(), sc["label"].to_numpy()
    eer = compute_eer(s[lab == "bonafide"], s[lab == "spoof"])[0]
    row = df[df["checkpoint"].str.contains("erm") & (df["testset"] == "in")]
    assert len(row) == 1 and row["eer"].iloc[0] == pytest.approx(eer, abs=1e-12)
    # a table mixing precisions is flagged
    mixed = pd.concat([df, df.assign(precision="fp32", checkpoint=df["checkpoint"] + "-b")])
    assert any("precision" in w for w in confound_warnings(mixed, measure="m-sharpness"))

    spec["scoring"]["precision"] = "fp16"
    spec_path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="scoring.precision: 'fp16' is not a precision"):
        load_study(spec_path)
