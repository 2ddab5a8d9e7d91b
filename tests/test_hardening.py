"""Hardening (issue 12): every item of the audit, each with a test that failed before its fix.

References are independent of the code under test: file contents compared byte for byte with what was there
before, marker files that a payload would create, exit codes and the text of one error line.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml
from typer.testing import CliRunner

from sharpscope.cli import app
from sharpscope.errors import CheckpointError, ManifestError, OutputError, SpecError
from tests.conftest import TINY_AASIST, write_corpus, write_tiny_checkpoint

runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(res) -> str:
    """The result failed with exactly one ``error:`` line and no traceback; return that line."""
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: ")
    return lines[0]


def _study(tmp_path: Path, corpus: Path, ckpt: str, **extra) -> Path:
    spec = {
        "name": "h",
        "scoring": {"batch_size": 4, "nb_samp": 8000},
        "checkpoints": [{"path": ckpt, "arch": "aasist", "model_config": TINY_AASIST}],
        "testsets": [{"name": "in", "manifest": str(corpus)}],
        "measures": [],
        **extra,
    }
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


class _Payload:
    """Unpickling this object creates ``marker`` (what an attacker's checkpoint would do, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "data", "c", n=3, seed=1)


# ---- 1. security: a study spec cannot grant unpickling --------------------------------------------------


def test_study_spec_cannot_grant_trust_checkpoint(tmp_path, corpus):
    marker = tmp_path / "PWNED"
    torch.save({"model": _Payload(marker)}, tmp_path / "evil.pth")
    spec = _study(tmp_path, corpus, "evil.pth", trust_checkpoint=True)
    line = _one_error_line(_cli("sweep", spec, "--out", tmp_path / "res"))
    assert "trust_checkpoint" in line and "--trust-checkpoint" in line
    assert not marker.exists()
    # without the spec key the refusal of the weights-only load names a flag that sweep has
    spec = _study(tmp_path, corpus, "evil.pth")
    res = _cli("sweep", spec, "--out", tmp_path / "res")
    assert res.exit_code != 0 and not marker.exists()
    assert "--trust-checkpoint" in res.output
    assert "--trust-checkpoint" in _cli("sweep", "--help").output


def test_trust_checkpoint_comes_from_the_cli_flag(tmp_path, corpus):
    from sharpscope.sweep.sweep import run_sweep

    write_tiny_checkpoint(tmp_path / "ok.safetensors", 0)
    spec = _study(tmp_path, corpus, "ok.safetensors")
    plain = run_sweep(spec, tmp_path / "r", dry_run=True)
    trusted = run_sweep(spec, tmp_path / "r", dry_run=True, trust_checkpoint=True)
    assert [c.trust_checkpoint for c in plain.cells] == [False]
    assert [c.trust_checkpoint for c in trusted.cells] == [True]


# ---- 2. security: names that become paths -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escaped_run", "/tmp/abs_run", "a/b", ".hidden", "..", ""])
def test_zoo_run_names_cannot_leave_out(tmp_path, corpus, name):
    spec = {
        "base": {"arch": "aasist", "model": TINY_AASIST, "epochs": 1, "data": {"train": str(corpus)}},
        "runs": [{"name": name}],
    }
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(spec))
    line = _one_error_line(_cli("zoo", tmp_path / "zoo.yaml", "--out", tmp_path / "zoo"))
    assert "runs[0].name" in line
    assert not (tmp_path / "escaped_run").exists() and not Path("/tmp/abs_run").exists()


@pytest.mark.parametrize(
    ("where", "value"),
    [("testsets", "../x"), ("subsets", "../../etc/x"), ("name", "a/b"), ("checkpoints", "/abs")],
)
def test_study_names_that_become_paths_are_refused(tmp_path, corpus, where, value):
    from sharpscope.sweep.study import load_study

    write_tiny_checkpoint(tmp_path / "ok.safetensors", 0)
    spec = yaml.safe_load(_study(tmp_path, corpus, "ok.safetensors").read_text())
    if where == "testsets":
        spec["testsets"][0]["name"] = value
    elif where == "subsets":
        spec["subsets"] = [
            {"name": value, "testset": "in", "by": "attack", "n_bonafide": 1, "n_per_group": 1}
        ]
    elif where == "checkpoints":
        spec["checkpoints"][0]["name"] = value
    else:
        spec["name"] = value
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="cannot be used as a file name"):
        load_study(tmp_path / "study.yaml")


def _lora_dir(tmp_path: Path, side: dict) -> Path:
    d = tmp_path / "lora"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "sharpscope_lora.json").write_text(json.dumps(side))
    return d


def test_lora_sidecar_base_weights_stays_inside_and_arch_is_required(tmp_path):
    from sharpscope.models.checkpoints import load_checkpoint

    full = {
        "format": "sharpscope-lora/1",
        "arch": "ssl-linear",
        "ssl_config": {},
        "base_fingerprint": "x",
        "lora": {"rank": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"]},
        "base_weights": "../../secret.safetensors",
    }
    d = _lora_dir(tmp_path, full)
    with pytest.raises(CheckpointError, match="base_weights .* must be a file name inside"):
        load_checkpoint(d, None)
    (d / "sharpscope_lora.json").write_text(json.dumps({k: v for k, v in full.items() if k != "arch"}))
    with pytest.raises(CheckpointError, match="arch None is missing"):
        load_checkpoint(d, None)


# ---- 3 + 4. atomic outputs, one run per folder -------------------------------------------------------------


def test_torn_scores_csv_on_full_disk_leaves_the_previous_run(tmp_path, corpus, monkeypatch):
    ck = write_tiny_checkpoint(tmp_path / "m.safetensors", 0)
    out = tmp_path / "out"
    res = _cli("score", ck, corpus, "--arch", "aasist", "--out", out, "--n-boot", "0", "--batch-size", "4")
    assert res.exit_code == 0, res.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    original = pd.DataFrame.to_csv

    def full_disk(self, path=None, *args, **kwargs):  # writes a prefix, then the disk is full
        # scores.csv itself or the atomic writer's temporary file for it (.scores.csv.XXXX.tmp)
        if path is not None and "scores.csv" in Path(str(path)).name:
            text = original(self, None, *args, **kwargs)
            Path(path).write_text(text[: len(text) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    line = _one_error_line(
        _cli("score", ck, corpus, "--arch", "aasist", "--out", out, "--n-boot", "0", "--batch-size", "4")
    )
    assert "No space left on device" in line and "scores.csv" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old run, complete
    assert not list(out.glob(".staging-*")) and not list(out.rglob("*.tmp"))


def test_full_disk_is_refused_before_any_work(tmp_path):
    """A real full file system (tmpfs of 64 KiB), where mounting is permitted."""
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        (mnt / "filler").write_bytes(b"\0" * 60_000)
        line = _one_error_line(
            _cli("score", "missing.pth", "missing.csv", "--arch", "aasist", "--out", mnt / "o")
        )
        assert "is not writable" in line and "No space left" in line
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_stale_metrics_do_not_survive_next_to_new_scores(tmp_path, corpus):
    ck = write_tiny_checkpoint(tmp_path / "m.safetensors", 0)
    out = tmp_path / "out"
    args = ["--arch", "aasist", "--out", out, "--n-boot", "0", "--batch-size", "4"]
    assert _cli("score", ck, corpus, *args).exit_code == 0
    old_scores = (out / "scores.csv").read_bytes()
    assert (out / "metrics.json").is_file()
    one_class = pd.read_csv(corpus).query("label == 'bonafide'")
    one_class.to_csv(tmp_path / "bona.csv", index=False)
    line = _one_error_line(_cli("score", ck, tmp_path / "bona.csv", *args))
    assert "metrics failed" in line and str(out / "scores.csv") in line
    assert not (out / "metrics.json").exists()  # the old run's metrics are gone with it
    new = pd.read_csv(out / "scores.csv")
    assert len(new) == len(one_class) and (out / "scores.csv").read_bytes() != old_scores


def test_interrupted_run_changes_nothing(tmp_path):
    from sharpscope.fileio import staged_output

    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_output(out, "score") as stage:
        (stage / "scores.csv").write_text("new")
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert (out / "metrics.json").read_text() == "old"


# ---- 5 + 7. sweep plan, one study per folder, lock ---------------------------------------------------------


def test_dry_run_lists_cells_to_run(tmp_path, corpus):
    write_tiny_checkpoint(tmp_path / "ok.safetensors", 0)
    spec = _study(tmp_path, corpus, "ok.safetensors")
    res = _cli("sweep", spec, "--out", tmp_path / "res", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "1 cells, 1 to run" in res.output and "to run" in res.output.splitlines()[-2]


def test_other_study_and_concurrent_sweep_are_refused(tmp_path, corpus):
    from sharpscope.sweep.sweep import run_sweep, sweep_lock

    write_tiny_checkpoint(tmp_path / "ok.safetensors", 0)
    spec = _study(tmp_path, corpus, "ok.safetensors")
    out = tmp_path / "res"
    first = run_sweep(spec, out)
    table = (out / "results.csv").read_bytes()
    other = yaml.safe_load(spec.read_text())
    other["name"] = "other"
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(OutputError, match="holds the results of study 'h', not 'other'"):
        run_sweep(tmp_path / "other.yaml", out)
    assert (out / "results.csv").read_bytes() == table and first.merge.n_rows == 1
    with sweep_lock(out), pytest.raises(OutputError, match="is being swept by pid"):
        run_sweep(spec, out)


# ---- 6. types in specs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda s: s["testsets"][0].update(in_domain="false"), "testsets[0].in_domain"),
        (lambda s: s.update(measures=[{"name": "m-sharpness", "rho": "abc"}]), "measures[0].rho"),
        (lambda s: s.update(measures=[{"name": "m-sharpness", "rho": []}]), "measures[0].rho"),
        (lambda s: s.update(measures=[{"name": "m-sharpness", "adaptive": "false"}]), "measures[0].adaptive"),
        (lambda s: s["testsets"][0].update(name=[1, 2]), "testsets[0].name"),
        (lambda s: s["checkpoints"][0].update(meta=[1, 2]), "checkpoints[0].meta"),
        (lambda s: s["checkpoints"][0].update(model_config=[1]), "checkpoints[0].model_config"),
        (lambda s: s["scoring"].update(nb_samp=-1), "scoring.nb_samp"),
        (lambda s: s["scoring"].update(order="random"), "scoring.order"),
        (lambda s: s.update(seeds=["0"]), "seeds"),
        (lambda s: s.update(device="bogus"), "device"),
        (lambda s: s.update(measures=[{"name": "m-sharpness", "scope": "regex:("}]), "measures[0].scope"),
        (
            lambda s: s.update(subsets=[{"name": "a", "testset": "in", "by": "attack", "n_bonafide": "abc"}]),
            "subsets[0].n_bonafide",
        ),
    ],
)
def test_study_values_are_type_checked(tmp_path, corpus, edit, key):
    from sharpscope.sweep.study import load_study

    write_tiny_checkpoint(tmp_path / "ok.safetensors", 0)
    spec = yaml.safe_load(_study(tmp_path, corpus, "ok.safetensors").read_text())
    edit(spec)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError) as info:
        load_study(tmp_path / "study.yaml")
    assert f": {key}" in str(info.value) and "\n" not in str(info.value)


def test_lead_scoring_keys_are_accepted(tmp_path, corpus):
    from sharpscope.sweep.study import load_study

    write_tiny_checkpoint(tmp_path / "ok.safetensors", 0)
    spec = yaml.safe_load(_study(tmp_path, corpus, "ok.safetensors").read_text())
    spec["scoring"].update(order="balanced", class_mix=0.5, nonfinite="drop", pool_arch=True)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    assert load_study(tmp_path / "study.yaml").scoring["class_mix"] == 0.5


# ---- one-line errors -------------------------------------------------------------------------------


def test_out_that_is_a_file_is_refused_before_work(tmp_path):
    (tmp_path / "f").write_text("x")
    for verb in (["score", "nope.pth", "nope.csv", "--arch", "aasist"], ["metrics", "s.txt", "m.csv"]):
        line = _one_error_line(_cli(*verb, "--out", tmp_path / "f"))
        assert "is a file, not a folder" in line


def test_model_config_types_and_shapes(tmp_path):
    from sharpscope.models.checkpoints import load_checkpoint
    from sharpscope.train.config import TrainConfig

    ck = write_tiny_checkpoint(tmp_path / "m.safetensors", 0)
    with pytest.raises(CheckpointError, match="m.safetensors does not build arch .aasist."):
        load_checkpoint(ck, "aasist", model_cfg={"gat_dims": "abc"})
    with pytest.raises(CheckpointError, match="must be a mapping"):
        load_checkpoint(ck, "aasist", model_cfg=[1, 2])  # type: ignore[arg-type]
    side = json.loads(ck.with_suffix(".json").read_text())
    side["model_cfg"] = [1, 2]
    ck.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="m.json: model_cfg"):
        load_checkpoint(ck, "aasist")
    with pytest.raises(SpecError, match=r"model.first_conv: 1000000000000.0 is out of range"):
        TrainConfig.from_dict({"arch": "aasist", "model": {"first_conv": 1e12}, "data": {"train": "x.csv"}})


def test_safetensors_header_that_is_not_json(tmp_path):
    from safetensors.torch import save_file

    from sharpscope.models.checkpoints import load_checkpoint

    p = tmp_path / "h.safetensors"
    save_file(
        {"w": torch.zeros(2)}, str(p), metadata={"sharpscope.arch": "aasist", "sharpscope.model_cfg": "{x"}
    )
    with pytest.raises(CheckpointError, match="sharpscope.model_cfg is not JSON"):
        load_checkpoint(p, None)


def test_cli_values_device_scope_and_non_utf8_scores(tmp_path, corpus):
    line = _one_error_line(_cli("score", "x.pth", corpus, "--arch", "aasist", "--out", tmp_path / "o",
                                "--device", "bogus"))  # fmt: skip
    assert "--device: 'bogus'" in line
    line = _one_error_line(
        _cli("sharpness", "x.pth", corpus, "--measure", "m-sharpness", "--out", tmp_path / "o",
             "--scope", "regex:(")
    )  # fmt: skip
    assert "--scope: 'regex:('" in line
    (tmp_path / "s.txt").write_bytes(b"u1 \xff\xfe 1.0\n")
    line = _one_error_line(_cli("metrics", tmp_path / "s.txt", corpus, "--out", tmp_path / "o"))
    assert "not UTF-8" in line


def test_brackets_survive_in_error_lines():
    import typer

    from sharpscope.cli import user_errors
    from sharpscope.errors import SharpscopeError

    mini = typer.Typer()

    @mini.command()
    @user_errors
    def f() -> None:
        raise SharpscopeError("executor ray needs Ray: pip install 'sharpscope[dist]'")

    line = _one_error_line(runner.invoke(mini, []))
    assert line.endswith("pip install 'sharpscope[dist]'")


def test_tex_in_test_set_names_is_drawn_as_text(tmp_path):
    from sharpscope.report.figures import build_figures
    from tests.synthetic import example_results

    df = example_results(n_ckpt=3, seed=0)
    df["testset"] = df["testset"].replace({df["testset"].iloc[0]: r"$\badcmd{x}$"})
    df.to_parquet(tmp_path / "r.parquet")
    spec = {"figures": [{"name": "m", "source": "r.parquet", "kind": "eer-by-method", "formats": "png"}]}
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(spec))
    assert [p.name for p in build_figures(tmp_path / "f.yaml", tmp_path / "o")] == ["m.png"]


def test_figure_size_is_bounded(tmp_path):
    from sharpscope.report.figures import load_spec
    from tests.synthetic import example_results

    example_results(n_ckpt=3, seed=0).to_parquet(tmp_path / "r.parquet")
    for size, dpi in (([1e6, 1e6], 100), ([30, 30], 1200)):
        fig = {"name": "m", "source": "r.parquet", "kind": "eer-by-method", "size": size, "dpi": dpi}
        spec = {"figures": [fig]}
        (tmp_path / "f.yaml").write_text(yaml.safe_dump(spec))
        with pytest.raises(SpecError, match="size"):
            load_spec(tmp_path / "f.yaml")


# ---- resource limits and silent acceptance ---------------------------------------------------------


def test_yaml_alias_bomb_and_duplicate_keys(tmp_path):
    from sharpscope.specio import read_yaml

    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 800
    with pytest.raises(SpecError, match="alias bomb"):
        read_yaml(bomb)
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: a\nseeds: [0]\nname: b\n")
    with pytest.raises(SpecError, match="line 3: .*duplicate key 'name'"):
        read_yaml(dup)


def test_manifest_header_only_and_duplicate_columns(tmp_path):
    from sharpscope.data.manifest import read_manifest

    (tmp_path / "h.csv").write_text("utt_id,path,label\n")
    with pytest.raises(ManifestError, match="no data rows"):
        read_manifest(tmp_path / "h.csv")
    (tmp_path / "d.csv").write_text("utt_id,path,label,label\nu,x.wav,bonafide,spoof\n")
    with pytest.raises(ManifestError, match="column 'label' twice"):
        read_manifest(tmp_path / "d.csv")


def test_one_class_training_manifest(tmp_path, corpus):
    from sharpscope.train.config import TrainConfig
    from sharpscope.train.loop import train

    pd.read_csv(corpus).query("label == 'spoof'").to_csv(tmp_path / "spoof.csv", index=False)
    cfg = TrainConfig.from_dict(
        {"arch": "aasist", "model": TINY_AASIST, "epochs": 1, "data": {"train": str(tmp_path / "spoof.csv")}}
    )
    with pytest.raises(ManifestError, match="holds only spoof rows"):
        train(cfg, tmp_path / "run", progress=False)


def test_check_audio_reports_truncated_and_nan_wavs(tmp_path):
    x = (0.1 * np.sin(np.arange(16000) / 10)).astype(np.float32)
    sf.write(tmp_path / "ok.wav", x, 16000, subtype="PCM_16")
    whole = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    declared = struct.unpack("<I", whole[40:44])[0] // 2  # the data chunk of a plain 16-bit mono WAV
    assert declared == 16000
    y = x.copy()
    y[5] = np.nan
    sf.write(tmp_path / "nan.wav", y, 16000, subtype="FLOAT")
    rows = [{"utt_id": n, "path": f"{n}.wav", "label": "bonafide"} for n in ("ok", "cut", "nan")]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    res = _cli("manifest", "check", tmp_path / "m.csv", "--audio", "--workers", "1")
    assert res.exit_code == 1
    assert (
        "row 2: audio file" in res.output and "is truncated: its header announces 16000 frames" in res.output
    )
    assert "row 3: audio file" in res.output and "holds 1 NaN/inf samples" in res.output
    assert "row 1:" not in res.output
