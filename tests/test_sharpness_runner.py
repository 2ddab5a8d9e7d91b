"""m-sharpness against an independent reference on real audio files, the shared scoring pass, LoRA scope and
the ``sharpscope sharpness`` command -- on a tiny AASIST and a tiny wav2vec 2.0 model."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from sharpscope.models.registry import build_model
from sharpscope.sharpness.average_case import AverageCase
from sharpscope.sharpness.m_sharpness import MSharpness
from sharpscope.sharpness.runner import score_and_sharpness

TINY_AASIST = dict(filts=[12, [1, 4], [4, 4], [4, 8], [8, 8]], gat_dims=[8, 6], first_conv=16)
NB = 4000  # crop length for the fast tests (clips of 2,400 samples are tiled to it)


def tiny_aasist() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("aasist", **TINY_AASIST)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.1, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Seven short WAV clips (partial last batch with batch size 3) and their manifest."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    rows = []
    labels = ["bonafide", "spoof", "spoof", "bonafide", "spoof", "spoof", "bonafide"]
    for i, label in enumerate(labels):
        t = np.arange(2400) / 16000
        x = 0.1 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.02 * rng.normal(size=t.size)
        path = root / f"utt{i}.wav"
        sf.write(path, x.astype(np.float32), 16000, subtype="FLOAT")
        rows.append({"utt_id": f"u{i}", "path": str(path), "label": label, "attack": "-" if i % 3 else "A01"})
    df = pd.DataFrame(rows)
    df.to_csv(root / "manifest.csv", index=False)
    return root, df


def reference_m_sharpness(model, df, batch_size, rho, adaptive, nb_samp):
    """Straightforward implementation of the SAM-AntiSpoofing estimator (in-place perturb, then restore)."""
    model = copy.deepcopy(model).eval()
    waves, labels = [], []
    for path, label in zip(df["path"], df["label"], strict=True):
        x, sr = sf.read(path, dtype="float32")
        assert sr == 16000
        waves.append(np.tile(x, nb_samp // len(x) + 1)[:nb_samp])
        labels.append(1 if label == "bonafide" else 0)
    weight = torch.tensor([0.1, 0.9])
    values, sizes, clean_logits = [], [], []
    for start in range(0, len(waves), batch_size):
        x = torch.from_numpy(np.stack(waves[start : start + batch_size]))
        y = torch.tensor(labels[start : start + batch_size])
        model.zero_grad()
        logits = model(x)
        clean_logits.append(logits.detach())
        loss = F.cross_entropy(logits, y, weight=weight)
        loss.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.norm(
            torch.stack([((p.abs() if adaptive else 1.0) * p.grad).norm(p=2) for p in params])
        )
        scale = rho / (grad_norm + 1e-12)
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.add_((p * p if adaptive else 1.0) * p.grad * scale)
            perturbed = F.cross_entropy(model(x), y, weight=weight)
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        values.append(perturbed.item() - loss.item())
        sizes.append(len(y))
    return float(np.dot(values, sizes) / np.sum(sizes)), values, torch.cat(clean_logits)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.slow  # > 10 s on 2 shared cores
def test_m_sharpness_equals_the_reference_on_manifest_batches(corpus, adaptive):
    _, df = corpus
    model = tiny_aasist()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores, res = score_and_sharpness(
        model, df, MSharpness(rho=0.05, adaptive=adaptive), "weighted-ce", batch_size=3, nb_samp=NB,
        order="manifest",
    )  # fmt: skip
    ref, ref_values, ref_logits = reference_m_sharpness(model, df, 3, 0.05, adaptive, NB)
    assert [r["size"] for r in res.per_batch] == [3, 3, 1]  # partial last batch included
    assert [r["value"] for r in res.per_batch] == pytest.approx(ref_values, rel=1e-5, abs=1e-7)
    assert res.value == pytest.approx(ref, rel=1e-5, abs=1e-7)
    assert res.value != 0
    # the scores come from the same clean forward: bona-fide logit of every row, manifest order
    assert list(scores["utt_id"]) == list(df["utt_id"])
    np.testing.assert_allclose(scores["score"].to_numpy(), ref_logits[:, 1].numpy(), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow  # > 10 s on 2 shared cores
def test_shared_pass_scores_equal_a_separate_scoring_pass(corpus):
    from sharpscope.scoring import score_manifest

    _, df = corpus
    model = tiny_aasist()
    scores, res = score_and_sharpness(
        model, df, AverageCase(samples=2), ["weighted-ce", "kl-to-clean"], batch_size=3, nb_samp=NB,
        order="balanced",
    )  # fmt: skip
    plain = score_manifest(model, df, batch_size=3, nb_samp=NB, progress=False)
    np.testing.assert_allclose(scores["score"].to_numpy(), plain["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    assert set(res) == {"weighted-ce", "kl-to-clean"}
    assert res["kl-to-clean"].value > 0
    assert res["weighted-ce"].settings["order"] == "balanced"


@pytest.mark.slow  # > 10 s on 2 shared cores
def test_early_stop_still_scores_every_row(corpus):
    _, df = corpus
    model = tiny_aasist()
    scores, res = score_and_sharpness(
        model, df, MSharpness(budget=2), "weighted-ce", batch_size=2, nb_samp=NB
    )
    assert res.n_batches == 1 and res.n_utts == 2
    assert scores["score"].notna().all() and len(scores) == len(df)
    full, _ = score_and_sharpness(model, df, MSharpness(), "weighted-ce", batch_size=2, nb_samp=NB)
    np.testing.assert_allclose(scores["score"].to_numpy(), full["score"].to_numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # > 10 s on 2 shared cores
def test_average_case_vmapped_equals_looped_on_tiny_models():
    from sharpscope.models.ssl import tiny_ssl_config

    torch.manual_seed(1)
    x = 0.1 * torch.randn(2, 3000)
    y = torch.tensor([0, 1])
    for model in (tiny_aasist(), build_model("ssl-linear", ssl_config=tiny_ssl_config())):
        kw = dict(rho=0.05, samples=3, chunk=3, seed=1)
        on = AverageCase(vectorize="on", **kw).estimate(model, [(x, y)], "weighted-ce")
        off = AverageCase(vectorize="off", **kw).estimate(model, [(x, y)], "weighted-ce")
        assert on.per_batch[0]["sample_losses"] == pytest.approx(off.per_batch[0]["sample_losses"], rel=1e-5)
        assert "vmap_fallback" not in on.per_batch[0]


def test_lora_merged_scope_perturbs_the_merged_weights():
    from sharpscope.models.lora import add_lora, merged_view
    from sharpscope.models.ssl import tiny_ssl_config

    torch.manual_seed(2)
    model = build_model("ssl-linear", ssl_config=tiny_ssl_config())
    add_lora(model, rank=2)
    with torch.no_grad():  # non-zero B so that the merge changes the weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = 0.1 * torch.randn(2, 4000), torch.tensor([0, 1])
    a = MSharpness(scope="lora-merged").estimate(model, [(x, y)], "weighted-ce")
    b = MSharpness(scope="all").estimate(merged_view(model), [(x, y)], "weighted-ce")
    assert a.value == b.value
    assert a.extra["n_params_perturbed"] == sum(p.numel() for p in merged_view(model).parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---- the CLI -----------------------------------------------------------------------------------------------


@pytest.mark.slow  # > 10 s on 2 shared cores
def test_sharpness_command_writes_result_scores_and_metrics(corpus, tmp_path):
    from typer.testing import CliRunner

    from sharpscope.cli import app
    from sharpscope.models.checkpoints import load_checkpoint, save_checkpoint

    _, df = corpus
    small = df.iloc[[0, 1, 3]].reset_index(drop=True)  # the CLI crops to 64,600 samples: keep it to 3 clips
    small.to_csv(tmp_path / "small.csv", index=False)
    ck = save_checkpoint(tiny_aasist(), tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    args = [
        "sharpness",
        str(ck),
        str(tmp_path / "small.csv"),
        "--arch",
        "aasist",
        "--measure",
        "m-sharpness",
        "--batch-size",
        "2",
        "--loss",
        "weighted-ce",
        "--loss",
        "kl-to-clean",
        "--seed",
        "3",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "sharpness.json").read_text())
    assert doc["measure"] == "m-sharpness" and doc["loss"] == "weighted-ce"
    assert set(doc["other_losses"]) == {"kl-to-clean"}
    assert doc["provenance"]["seed"] == 3 and doc["provenance"]["n_utts"] == 3
    assert len(doc["provenance"]["checkpoint_sha256"]) == 64
    assert doc["result"]["settings"]["rho"] == 0.05 and doc["result"]["n_batches"] == 2
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores["utt_id"]) == list(small["utt_id"])
    assert 0 <= doc["metrics"]["eer"] <= 1 and (out / "metrics.json").is_file()
    # same number as the API on the loaded checkpoint (default crop: 64,600 samples)
    model = load_checkpoint(ck, "aasist").model
    _, res = score_and_sharpness(model, small, MSharpness(seed=3), "weighted-ce", batch_size=2)
    assert doc["value"] == pytest.approx(res.value, rel=1e-6)
    assert math.isfinite(doc["value"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--measure", "flatness"], "unknown sharpness measure"),
        (["--measure", "m-sharpness", "--steps", "3"], "no setting"),
    ],
)
def test_sharpness_command_user_errors_are_one_line(corpus, tmp_path, extra, message):
    from typer.testing import CliRunner

    from sharpscope.cli import app

    root, _ = corpus
    result = CliRunner().invoke(
        app,
        [
            "sharpness",
            "nope.pth",
            str(root / "manifest.csv"),
            "--arch",
            "aasist",
            "--out",
            str(tmp_path),
            *extra,
        ],
    )
    assert result.exit_code == 2
    assert message in result.output


def test_estimators_without_a_session_get_a_separate_scoring_pass(corpus):
    """Curvature/landscape-style estimators only offer ``estimate``: the runner scores separately."""
    from sharpscope.sharpness.base import SharpnessResult

    class CountBatches:
        name = "count"

        def estimate(self, model, batches, loss):
            sizes = [len(b) for b in batches]
            return SharpnessResult("count", float(len(sizes)), math.nan, (math.nan, math.nan), sum(sizes),
                                   len(sizes), settings={})  # fmt: skip

    _, df = corpus
    model = tiny_aasist()
    scores, res = score_and_sharpness(model, df, CountBatches(), "ce", batch_size=3, nb_samp=NB)
    ref = score_and_sharpness(model, df, MSharpness(), "ce", batch_size=3, nb_samp=NB)[0]
    assert res.value == 3.0 and res.settings["loss"] == "ce" and res.settings["batch_size"] == 3
    np.testing.assert_allclose(scores["score"].to_numpy(), ref["score"].to_numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", ["linear", "aasist"])
@pytest.mark.slow  # > 10 s on 2 shared cores
def test_frozen_ssl_prefix_is_cached_and_gives_the_same_value(head):
    """Back-end-only sharpness of an SSL model runs the front end once per batch, with identical results."""
    from sharpscope.data.audio import Batch
    from sharpscope.models.ssl import build_ssl_model, tiny_ssl_config
    from sharpscope.sharpness.engine import FunctionalForward
    from sharpscope.sharpness.registry import make_estimator

    torch.manual_seed(0)
    model = build_ssl_model(head, ssl_config=tiny_ssl_config())
    x = torch.randn(4, 8000) * 0.1
    batches = [Batch(x, torch.tensor([0, 1, 0, 1]), ["a", "b", "c", "d"])]
    scope = r"regex:^(?!ssl\.)"
    params = {n: p for n, p in model.named_parameters() if not n.startswith("ssl.")}
    assert FunctionalForward(model, params).uses_prefix_cache
    est = make_estimator("m-sharpness", rho=0.05, scope=scope)
    cached = est.estimate(model, batches, "weighted-ce").value

    class NoSplit(torch.nn.Module):  # the same model without the split hook: runs whole every pass
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)

    scope2 = r"regex:^m\.(?!ssl\.)"  # the same parameters, named through the wrapper
    whole = make_estimator("m-sharpness", rho=0.05, scope=scope2).estimate(
        NoSplit(model), batches, "weighted-ce"
    )
    assert cached == pytest.approx(whole.value, rel=1e-5, abs=1e-7)
    assert cached > 0
