"""score_manifest / forward_batches with real audio files and small torch models; score-file layouts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch import nn

from sharpscope.data.audio import NB_SAMP, crop_first, iter_batches
from sharpscope.errors import CheckpointError, ScoreError
from sharpscope.scorefiles import default_filename, read_scores, write_scores
from sharpscope.scoring import forward_batches, match_scores, read_model_config, score_manifest

SR = 16_000


class SumModel(nn.Module):
    """logits = [-w * sum(x), 2 w * sum(x) + b]: exact expected values, and zero padding changes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.01))
        self.b = nn.Parameter(torch.tensor(0.5))
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_inference_mode_enabled()))
        s = x.sum(dim=1)
        return torch.stack([-self.w * s, 2 * self.w * s + self.b], dim=1)


def expected_logits(wave: np.ndarray) -> tuple[float, float]:
    s = float(np.sum(wave.astype(np.float32), dtype=np.float64))
    return -0.01 * s, 0.02 * s + 0.5


@pytest.fixture
def corpus(tmp_path):
    """Six clips of different lengths (0.25-1 s) in non-sorted length order, two classes, two attacks."""
    rng = np.random.default_rng(0)
    lengths = [0.6, 0.25, 1.0, 0.4, 0.8, 0.3]
    rows = []
    for i, sec in enumerate(lengths):
        x = (0.1 * rng.standard_normal(int(sec * SR)) + 0.01 * (i - 2)).astype(np.float32)
        p = tmp_path / f"u{i}.wav"
        sf.write(p, x, SR, subtype="FLOAT")
        rows.append(
            {
                "utt_id": f"u{i}",
                "path": str(p),
                "label": "bonafide" if i % 2 == 0 else "spoof",
                "attack": "-" if i % 2 == 0 else ("A01" if i < 3 else "A02"),
                "codec": "none" if i < 3 else "mp3",
            }
        )
    return pd.DataFrame(rows)


def test_score_manifest_first_crop_exact(corpus):
    model = SumModel()
    out = score_manifest(model, corpus, batch_size=4, crop="first", progress=False)
    assert list(out.columns) == [*corpus.columns, "score", "logit_spoof", "logit_bonafide"]
    assert out["utt_id"].tolist() == corpus["utt_id"].tolist()
    for _, r in out.iterrows():
        x, _ = sf.read(r["path"], dtype="float32")
        ls, lb = expected_logits(crop_first(x, NB_SAMP))
        assert r["logit_spoof"] == pytest.approx(ls, rel=1e-4, abs=1e-4)
        assert r["logit_bonafide"] == pytest.approx(lb, rel=1e-4, abs=1e-4)
        assert r["score"] == r["logit_bonafide"]
    # eval mode and inference mode inside, 2 batches (4 + 2)
    assert model.calls == [(False, True), (False, True)]


def test_score_manifest_full_crop_keeps_manifest_order(corpus):
    out = score_manifest(SumModel(), corpus, batch_size=2, crop="full", progress=False)
    assert out["utt_id"].tolist() == corpus["utt_id"].tolist()
    for _, r in out.iterrows():
        x, _ = sf.read(r["path"], dtype="float32")
        assert r["logit_bonafide"] == pytest.approx(expected_logits(x)[1], rel=1e-4, abs=1e-4)


def test_score_manifest_on_a_reindexed_subset(corpus):
    sub = corpus.iloc[[4, 1, 5]]  # index labels 4, 1, 5: results are placed by position, not by label
    out = score_manifest(SumModel(), sub, batch_size=2, crop="full", progress=False)
    assert out.index.tolist() == [4, 1, 5]
    full = score_manifest(SumModel(), corpus, batch_size=2, crop="full", progress=False)
    np.testing.assert_allclose(out["score"], full.loc[[4, 1, 5], "score"], rtol=1e-6)


def test_score_types(corpus):
    base = score_manifest(SumModel(), corpus, crop="first", progress=False)
    diff = score_manifest(SumModel(), corpus, crop="first", score="logit-diff", progress=False)
    lsm = score_manifest(SumModel(), corpus, crop="first", score="log-softmax", progress=False)
    ls, lb = base["logit_spoof"].to_numpy(), base["logit_bonafide"].to_numpy()
    np.testing.assert_allclose(diff["score"], lb - ls, rtol=1e-6)
    # log p(bona fide) = lb - log(e^ls + e^lb)
    np.testing.assert_allclose(lsm["score"], lb - np.logaddexp(ls, lb), rtol=1e-6, atol=1e-9)
    with pytest.raises(ScoreError, match="unknown score type 'prob'"):
        score_manifest(SumModel(), corpus, score="prob", progress=False)


def test_collect_sees_every_batch_and_train_flag_is_restored(corpus):
    model = SumModel().train()
    seen: list[tuple[list[str], torch.Tensor]] = []
    out = score_manifest(
        model,
        corpus,
        batch_size=4,
        crop="full",
        progress=False,
        collect=lambda b, lg: seen.append((b.utt_ids, lg)),
    )
    assert model.training  # restored
    assert sorted(u for ids, _ in seen for u in ids) == sorted(corpus["utt_id"])
    by_id = out.set_index("utt_id")
    for ids, lg in seen:
        assert not lg.requires_grad
        np.testing.assert_allclose(lg[:, 1].numpy(), by_id.loc[ids, "logit_bonafide"].to_numpy(), rtol=1e-6)


def test_forward_batches_reads_tuple_outputs_by_declared_layout_and_checks_shape(corpus):
    class TupleModel(nn.Module):
        output_layout = "official-aasist"  # (hidden, logits), as the official AASIST code returns

        def forward(self, x):
            return x[:, :3], torch.stack([x[:, 0], x[:, 1]], dim=1)

    got = list(forward_batches(TupleModel(), iter_batches(corpus, batch_size=3, crop="first")))
    assert [lg.shape for _, lg in got] == [(3, 2), (3, 2)]

    class Undeclared(nn.Module):
        def forward(self, x):
            return x[:, :3], torch.stack([x[:, 0], x[:, 1]], dim=1)

    with pytest.raises(CheckpointError, match="declares no output layout"):
        list(forward_batches(Undeclared(), iter_batches(corpus, batch_size=3, crop="first")))

    class WrongModel(nn.Module):
        def forward(self, x):
            return x[:, :3]

    with pytest.raises(CheckpointError, match=r"model returned \(3, 3\) for a batch of 3"):
        list(forward_batches(WrongModel(), iter_batches(corpus, batch_size=3, crop="first")))


def test_nonfinite_logits_name_the_utterances(corpus):
    class NaNForLoud(nn.Module):
        def forward(self, x):
            s = x.sum(dim=1)
            bad = x.abs().amax(dim=1) > 0.5
            s = torch.where(bad, torch.full_like(s, float("nan")), s)
            return torch.stack([-s, s], dim=1)

    loud = corpus.copy()
    sf.write(loud.loc[3, "path"], np.full(8000, 0.9, dtype=np.float32), SR)
    with pytest.raises(ScoreError, match=r"NaN/inf logits for 1 of 6 utterances .*first: u3"):
        score_manifest(NaNForLoud(), loud, batch_size=8, progress=False)


def test_empty_manifest_and_bad_batch_size(corpus):
    with pytest.raises(ScoreError, match="no rows"):
        score_manifest(SumModel(), corpus.iloc[:0], progress=False)
    with pytest.raises(ScoreError, match="batch size"):
        score_manifest(SumModel(), corpus, batch_size=0, progress=False)


def test_tiny_aasist_scores_deterministically(corpus):
    from sharpscope.models.registry import build_model

    torch.manual_seed(0)
    cfg = {"first_conv": 16, "filts": [8, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 6]}
    model = build_model("aasist", **cfg).train()
    a = score_manifest(model, corpus, batch_size=4, progress=False)
    b = score_manifest(model, corpus, batch_size=3, progress=False)  # dropout off, BN running stats
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-5, atol=1e-6)
    assert np.isfinite(a["score"]).all()
    assert model.training


# ---- model config ---------------------------------------------------------------------------------------


def test_read_model_config(tmp_path):
    assert read_model_config(None) == {}
    (tmp_path / "c.json").write_text('{"gat_dims": [8, 6]}')
    assert read_model_config(tmp_path / "c.json") == {"gat_dims": [8, 6]}
    (tmp_path / "c.yaml").write_text("gat_dims: [8, 6]\nfirst_conv: 16\n")
    assert read_model_config(tmp_path / "c.yaml") == {"gat_dims": [8, 6], "first_conv": 16}
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="cannot parse model config"):
        read_model_config(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(CheckpointError, match="must hold a mapping"):
        read_model_config(tmp_path / "list.yaml")
    with pytest.raises(CheckpointError, match="not found"):
        read_model_config(tmp_path / "nope.yaml")


# ---- score files ------------------------------------------------------------------------------------------


def _scored():
    return pd.DataFrame(
        {
            "utt_id": ["LA_E_1", "LA_E_2", "LA_E_3"],
            "label": ["bonafide", "spoof", "spoof"],
            "attack": ["-", "A07", None],
            "score": [1.5, -0.1 + 0.2, -3.25e-7],  # 0.1 + ... tests lossless float text
        }
    )


def test_official_layouts_exact_text(tmp_path):
    df = _scored()
    p19 = write_scores(df, tmp_path / "a.txt", "asvspoof2019")
    assert p19.read_text().splitlines() == [
        "LA_E_1 - bonafide 1.5",
        f"LA_E_2 A07 spoof {-0.1 + 0.2!r}",
        "LA_E_3 - spoof -3.25e-07",
    ]
    p21 = write_scores(df, tmp_path / "b.txt", "asvspoof2021")
    assert p21.read_text().splitlines()[0] == "LA_E_1 1.5"
    p5 = write_scores(df, tmp_path / "c.tsv", "asvspoof5")
    assert p5.read_text().splitlines()[:2] == ["filename\tcm-score", "LA_E_1\t1.5"]
    pcsv = write_scores(df, tmp_path / "d.csv", "csv")
    assert pcsv.read_text().splitlines()[0] == "utt_id,score"
    assert default_filename("asvspoof5") == "scores_asvspoof5.tsv"


@pytest.mark.parametrize("fmt", ["csv", "asvspoof2019", "asvspoof2021", "asvspoof5"])
def test_round_trip_is_lossless(tmp_path, fmt):
    df = _scored()
    back = read_scores(write_scores(df, tmp_path / f"s.{fmt}", fmt), fmt)
    assert back["utt_id"].tolist() == df["utt_id"].tolist()
    assert back["score"].tolist() == df["score"].tolist()  # bit-exact
    if fmt == "asvspoof2019":
        assert back["key"].tolist() == df["label"].tolist()
        assert back["source"].tolist() == ["-", "A07", "-"]


def test_reader_errors_name_file_and_line(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("a 1.0\n\nb 2.0 extra\n")
    with pytest.raises(ScoreError, match=r"s.txt line 3: expected 2 columns, found 3"):
        read_scores(p, "asvspoof2021")
    p.write_text("a 1.0\nb high\n")
    with pytest.raises(ScoreError, match=r"line 2: score 'high' is not a number"):
        read_scores(p, "asvspoof2021")
    p.write_text("a - bonafide 1.0\nb A01 fake 2.0\n")
    with pytest.raises(ScoreError, match=r"line 2: KEY column must be bonafide or spoof"):
        read_scores(p, "asvspoof2019")
    p.write_text("a\t1.0\n")
    with pytest.raises(ScoreError, match=r"expected the header filename<TAB>cm-score"):
        read_scores(p, "asvspoof5")
    p.write_text("id,value\na,1\n")
    with pytest.raises(ScoreError, match="has no 'utt_id' column"):
        read_scores(p, "csv")
    p.write_text("utt_id,score\na,1\nb,x\n")
    with pytest.raises(ScoreError, match=r"line 3: score 'x' is not a number"):
        read_scores(p, "csv")
    with pytest.raises(ScoreError, match="not found"):
        read_scores(tmp_path / "missing.txt", "csv")
    with pytest.raises(ScoreError, match="unknown score-file format 'kaldi'"):
        read_scores(p, "kaldi")


def test_nan_scores_are_read_then_refused_by_metrics(tmp_path):
    from sharpscope.metrics import evaluate

    p = tmp_path / "s.txt"
    p.write_text("a nan\nb 1.0\n")
    s = read_scores(p, "asvspoof2021")
    assert math.isnan(s.loc[0, "score"])
    s["label"] = ["bonafide", "spoof"]
    with pytest.raises(ScoreError, match=r"1 of 2 scores are NaN or infinite \(first: a\)"):
        evaluate(s, n_boot=0)


def test_writer_refuses_unlabelled_2019_and_spaces(tmp_path):
    df = _scored()
    df.loc[0, "label"] = "unknown"
    with pytest.raises(ScoreError, match="1 rows are not labelled"):
        write_scores(df, tmp_path / "x.txt", "asvspoof2019")
    df = _scored()
    df.loc[1, "utt_id"] = "has space"
    with pytest.raises(ScoreError, match="is empty or has spaces"):
        write_scores(df, tmp_path / "x.txt", "asvspoof2021")


# ---- matching external scores -----------------------------------------------------------------------------


def _manifest():
    return pd.DataFrame({"utt_id": ["a", "b", "c", "d"], "label": ["bonafide", "spoof", "spoof", "bonafide"]})


def test_match_scores_exact_and_ordered():
    scores = pd.DataFrame({"utt_id": ["d", "c", "b", "a"], "score": [4.0, 3.0, 2.0, 1.0]})
    merged, counts = match_scores(scores, _manifest())
    assert merged["utt_id"].tolist() == ["a", "b", "c", "d"]
    assert merged["score"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert counts == {
        "n_scores": 4,
        "n_manifest": 4,
        "n_matched": 4,
        "n_scores_not_in_manifest": 0,
        "n_manifest_without_score": 0,
    }


def test_match_scores_reports_mismatches_and_allows_partial():
    scores = pd.DataFrame({"utt_id": ["a", "b", "x", "y"], "score": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(ScoreError) as e:
        match_scores(scores, _manifest())
    msg = str(e.value)
    assert "2 score ids not in the manifest (first: x, y)" in msg
    assert "2 manifest ids without a score (first: c, d)" in msg
    assert "--allow-partial" in msg and "\n" not in msg
    merged, counts = match_scores(scores, _manifest(), allow_partial=True)
    assert merged["utt_id"].tolist() == ["a", "b"]
    assert counts["n_matched"] == 2 and counts["n_scores_not_in_manifest"] == 2
    assert counts["n_manifest_without_score"] == 2


def test_match_scores_duplicates_and_key_clash():
    dup = pd.DataFrame({"utt_id": ["a", "a", "b", "c", "d"], "score": [1.0, 1.5, 2.0, 3.0, 4.0]})
    with pytest.raises(ScoreError, match=r"1 utterance ids appear more than once \(first: a\)"):
        match_scores(dup, _manifest(), allow_partial=True)
    keyed = pd.DataFrame(
        {
            "utt_id": ["a", "b", "c", "d"],
            "source": ["-", "A01", "A01", "-"],
            "key": ["bonafide", "spoof", "bonafide", "bonafide"],
            "score": [1.0, 2.0, 3.0, 4.0],
        }
    )
    with pytest.raises(ScoreError, match=r"KEY column disagrees with the manifest label for 1 .*first: c"):
        match_scores(keyed, _manifest())
