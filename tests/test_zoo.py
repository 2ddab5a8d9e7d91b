"""A zoo of tiny checkpoints trained with ERM / SAM / ASAM, then swept end to end."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from sharpscope.errors import SpecError
from sharpscope.sweep.sweep import run_sweep
from sharpscope.train.zoo import expand_zoo, run_zoo
from tests.conftest import TINY_AASIST

BASE = {
    "arch": "aasist",
    "model": {k: v for k, v in TINY_AASIST.items() if k != "nb_samp"},
    "epochs": 1,
    "data": {"nb_samp": 4000, "batch_size": 6, "cache_audio": True},
    "optimizer": {"name": "adam", "lr": 1e-3},
}


def zoo_spec(corpus) -> dict:
    base = {**BASE, "data": {**BASE["data"], "train": str(corpus["in"]), "dev": str(corpus["in"])}}
    return {
        "name": "tiny-zoo",
        "base": base,
        "runs": [
            {"name": "erm", "grid": {"seed": [0, 1]}},
            {"name": "sam", "set": {"sam": {"rho": 0.05}}, "grid": {"seed": [0]}},
            {"name": "asam", "set": {"sam": {"rho": 0.5, "adaptive": True}}, "grid": {"seed": [0]}},
        ],
    }


def test_expand_zoo_grid_and_errors(tmp_path, tiny_corpus):
    spec = zoo_spec(tiny_corpus)
    spec["runs"][1]["grid"]["sam.rho"] = [0.01, 0.05]
    runs = expand_zoo(spec, tmp_path)
    assert [r.name for r in runs] == [
        "erm-seed0",
        "erm-seed1",
        "sam-seed0-rho0.01",
        "sam-seed0-rho0.05",
        "asam-seed0",
    ]
    assert runs[3].config["sam"]["rho"] == 0.05 and runs[0].config["sam"] is None
    bad = zoo_spec(tiny_corpus)
    bad["runs"][0]["grid"] = {"optimizer.lr": 0.1}
    with pytest.raises(SpecError, match="must be a non-empty list"):
        expand_zoo(bad, tmp_path)
    bad = zoo_spec(tiny_corpus)
    bad["runs"][0]["set"] = {"optimizer": {"name": "lbfgs"}}
    with pytest.raises(SpecError, match="optimizer"):
        expand_zoo(bad, tmp_path)


@pytest.mark.slow  # > 10 s on 2 shared cores
def test_zoo_of_four_checkpoints_is_swept_end_to_end(tmp_path, tiny_corpus):
    zp = tmp_path / "zoo.yaml"
    zp.write_text(yaml.safe_dump(zoo_spec(tiny_corpus)))
    runs = run_zoo(zp, tmp_path / "zoo")
    assert len(runs) == 4 and all(r["best"] for r in runs)
    # a second call reuses every finished run
    again = run_zoo(zp, tmp_path / "zoo")
    assert [r["best"] for r in again] == [r["best"] for r in runs]

    study = {
        "name": "zoo-sweep",
        "scoring": {"batch_size": 6, "nb_samp": 4000},
        "checkpoints": [{"path": str(tmp_path / "zoo" / "*" / "best.safetensors"), "arch": "aasist"}],
        "testsets": [
            {"name": "in", "manifest": str(tiny_corpus["in"]), "in_domain": True},
            {"name": "shift", "manifest": str(tiny_corpus["shift"])},
        ],
        "measures": [{"name": "m-sharpness", "rho": 0.05}],
    }
    sp = tmp_path / "study.yaml"
    sp.write_text(yaml.safe_dump(study))
    res = run_sweep(sp, tmp_path / "results")
    df = pd.read_parquet(tmp_path / "results" / "results.parquet")
    assert res.ran == 8 and len(df) == 8
    assert df["checkpoint"].nunique() == 4
    assert sorted(df.groupby("checkpoint")["meta_method"].first()) == ["asam", "erm", "erm", "sam"]
    assert set(df["meta_sam_rho"]) == {0.0, 0.05, 0.5}
    assert df["value"].notna().all() and df["meta_dev_eer"].notna().all()
