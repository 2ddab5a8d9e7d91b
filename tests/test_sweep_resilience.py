"""Sweeps survive SIGKILL at random moments, and every executor produces the same table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from sharpscope.sweep.executors import ExecOptions
from sharpscope.sweep.sweep import run_sweep
from tests.test_sweep import make_study, stable

KEYS = ["checkpoint", "testset", "subset", "measure", "rho", "loss", "seed"]
MEASURES = [{"name": "m-sharpness", "rho": 0.05, "loss": ["weighted-ce", "kl-to-clean"]}]


def _compare(a: pd.DataFrame, b: pd.DataFrame) -> None:
    drop = ["num_threads", "git_revision", "versions"]
    a = stable(a).drop(columns=drop).sort_values(KEYS).reset_index(drop=True)
    b = stable(b).drop(columns=drop).sort_values(KEYS).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_resume_after_sigkill_at_random_points(tmp_path, tiny_corpus):
    study = make_study(tmp_path, tiny_corpus, measures=MEASURES)
    ref = run_sweep(study, tmp_path / "ref", opts=ExecOptions(num_threads=1)).table
    rng = np.random.default_rng(7)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for trial in range(3):
        out = tmp_path / f"killed{trial}"
        for _ in range(2):  # two kills per trial, at random moments
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sharpscope.cli",
                    "sweep",
                    str(study),
                    "--out",
                    str(out),
                    "--threads",
                    "1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            time.sleep(float(rng.uniform(3.0, 12.0)))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        done_before = len(list((out / "cells").glob("*.json"))) if (out / "cells").is_dir() else 0
        res = run_sweep(study, out, opts=ExecOptions(num_threads=1))
        assert res.skipped == done_before
        assert res.merge.problems == []
        assert not res.table.duplicated(KEYS).any()
        _compare(res.table, ref)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["ray", "slurm"])
def test_distributed_executors_equal_local(tmp_path, tiny_corpus, executor):
    pytest.importorskip("ray" if executor == "ray" else "submitit")
    study = make_study(tmp_path, tiny_corpus, measures=MEASURES)
    ref = run_sweep(study, tmp_path / "local", opts=ExecOptions(num_threads=1)).table
    opts = ExecOptions(num_threads=1, workers=2, slurm_cluster="local")
    got = run_sweep(study, tmp_path / executor, executor=executor, opts=opts)
    assert got.ran == 4
    _compare(got.table, ref)
