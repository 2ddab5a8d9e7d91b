"""--device auto, the bf16 autocast helper and the allocator hook (sharpscope.devices)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from sharpscope.cli import app
from sharpscope.devices import autocast, check_precision, resolve_device, strict_fp32
from sharpscope.errors import SharpscopeError
from sharpscope.models.registry import build_model
from sharpscope.specio import check_device

TINY = {"first_conv": 16, "filts": [8, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 6]}


@pytest.mark.parametrize(("cuda", "want"), [(True, "cuda"), (False, "cpu")])
def test_auto_means_cuda_when_present(monkeypatch, cuda, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device("auto") == want
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"  # explicit: untouched


def test_check_device_resolves_auto_and_rejects_junk(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("auto") == "cpu"
    with pytest.raises(SharpscopeError, match="--device: 'gpu0' is not a torch device"):
        check_device("gpu0")
    with pytest.raises(SharpscopeError, match="CUDA is not available"):
        check_device("cuda")


def test_precision_helper():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with autocast("fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast("bf16", "cpu"):
        assert (a @ b).dtype == torch.bfloat16  # matrix products run in bf16
        assert torch.softmax(a, dim=-1).dtype == torch.float32  # autocast keeps reductions in fp32
    assert (a @ b).dtype == torch.float32  # and leaves no trace
    with pytest.raises(SharpscopeError, match="--precision: 'fp16' is not a precision; use fp32 or bf16"):
        check_precision("fp16")


def test_bf16_logits_stay_close_to_fp32_on_a_tiny_model():
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 0.2 %); a tiny AASIST's logits move by far less
    # than their spread, and never by more than a few per cent of their scale.
    torch.manual_seed(0)
    model = build_model("aasist", **TINY).eval()
    x = 0.1 * torch.randn(4, 4_000)
    with torch.no_grad():
        z32 = model(x)
        with autocast("bf16"):
            z16 = model(x).float()
    assert z16.dtype == torch.float32
    assert (z16 - z32).abs().max() <= 0.05 * z32.abs().max()
    assert not torch.equal(z16, z32)  # bf16 really ran


def test_import_enables_hugepage_allocations_unless_told_not_to():
    code = "import os, sys, sharpscope; print(os.environ['THP_MEM_ALLOC_ENABLE'], 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1", "False"]  # set before torch is first imported
    env["THP_MEM_ALLOC_ENABLE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[0] == "0"


def _score_setup(tmp_path, seed: int) -> tuple[torch.nn.Module, list[str]]:
    """Four 0.25 s noise clips with a manifest, a tiny AASIST saved with its config; returns the model and
    the ``sharpscope score`` arguments (without ``--out``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(4):
        sf.write(tmp_path / f"c{i}.wav", (0.05 * rng.standard_normal(4_000)).astype(np.float32), 16_000)
        rows.append({"utt_id": f"c{i}", "path": f"c{i}.wav", "label": "spoof" if i % 2 else "bonafide"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    torch.manual_seed(0)
    model = build_model("aasist", **TINY).eval()
    torch.save(model.state_dict(), tmp_path / "tiny.pth")
    (tmp_path / "tiny.yaml").write_text(json.dumps(TINY))
    args = ["score", str(tmp_path / "tiny.pth"), str(tmp_path / "m.csv"), "--arch", "aasist", "--n-boot", "0"]
    return model, [*args, "--model-config", str(tmp_path / "tiny.yaml")]


def test_cli_score_accepts_device_auto_and_records_the_resolved_device(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, args = _score_setup(tmp_path, seed=0)
    args += ["--out", str(tmp_path / "run")]
    res = CliRunner().invoke(app, [*args, "--device", "auto"])
    assert res.exit_code == 0, res.output
    assert '"device": "cpu"' in (tmp_path / "run" / "metrics.json").read_text()
    res = CliRunner().invoke(app, [*args, "--device", "tpu"])
    assert res.exit_code == 2 and "--device" in res.stderr


def test_strict_fp32_is_a_no_op_on_cpu_and_reports_nothing_to_record():
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    assert strict_fp32("cpu") == {"cudnn_tf32": None, "matmul_tf32": None}
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_cli_score_precision_is_applied_and_recorded_in_every_row(tmp_path):
    model, args = _score_setup(tmp_path, seed=1)
    args += ["--crop", "full"]
    # the reference: a plain fp32 forward of the same clips, read back with soundfile
    x = torch.from_numpy(np.stack([sf.read(tmp_path / f"c{i}.wav", dtype="float32")[0] for i in range(4)]))
    with torch.no_grad():
        ref = model(x)[:, 1].numpy()
    got = {}
    for prec in ("fp32", "bf16"):
        res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / prec), "--precision", prec])
        assert res.exit_code == 0, res.output
        scores = pd.read_csv(tmp_path / prec / "scores.csv")
        assert set(scores["precision"]) == {prec}
        assert json.loads((tmp_path / prec / "metrics.json").read_text())["settings"]["precision"] == prec
        got[prec] = scores.set_index("utt_id").loc[[f"c{i}" for i in range(4)], "score"].to_numpy()
    np.testing.assert_allclose(got["fp32"], ref, atol=1e-5)
    assert np.abs(got["bf16"] - ref).max() <= 0.05 * np.abs(ref).max()  # bf16: 8 mantissa bits
    assert not np.array_equal(got["bf16"], got["fp32"])  # bf16 really ran
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x"), "--precision", "fp16"])
    assert res.exit_code != 0 and "--precision: 'fp16' is not a precision" in res.output
    assert not (tmp_path / "x" / "scores.csv").exists()
