"""First-order MLDG: one step equals the hand-computed update on a linear softmax model; domain assignment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sharpscope.errors import SpecError
from sharpscope.train.mldg import MLDG, assign_domains, sample_rows, split_domains

CW = np.array([0.1, 0.9])


def _ce_grad(W, b, X, y):
    """Loss and gradient of PyTorch's weighted CE (Σ w_y ℓ / Σ w_y) for logits X Wᵀ + b, by hand."""
    z = X @ W.T + b
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    wy = CW[y]
    onehot = np.eye(2)[y]
    loss = float(np.sum(wy * -np.log(p[np.arange(len(y)), y])) / wy.sum())
    dz = (p - onehot) * wy[:, None] / wy.sum()
    return loss, dz.T @ X, dz.sum(0)


def test_mldg_step_matches_hand_computed_update():
    rng = np.random.default_rng(0)
    W0, b0 = rng.standard_normal((2, 3)), rng.standard_normal(2)
    Xtr, ytr = rng.standard_normal((6, 3)), np.array([0, 1, 1, 0, 1, 0])
    Xte, yte = rng.standard_normal((4, 3)), np.array([1, 0, 0, 1])
    alpha, beta, lr, mom = 0.3, 0.7, 0.1, 0.9

    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W0))
        model.bias.copy_(torch.tensor(b0))
    opt = MLDG(model, torch.optim.SGD(model.parameters(), lr=lr, momentum=mom), inner_lr=alpha, beta=beta)
    w = torch.tensor(CW)

    def closure(X, y):
        return lambda: nn.functional.cross_entropy(model(torch.tensor(X)), torch.tensor(y), weight=w)

    l_tr, l_te = opt.step(closure(Xtr, ytr), closure(Xte, yte))

    # by hand
    ltr, gW, gb = _ce_grad(W0, b0, Xtr, ytr)
    W1, b1 = W0 - alpha * gW, b0 - alpha * gb
    lte, hW, hb = _ce_grad(W1, b1, Xte, yte)
    GW, Gb = gW + beta * hW, gb + beta * hb
    # SGD with momentum, first step: buffer = g, w ← w − lr·g
    np.testing.assert_allclose(model.weight.detach().numpy(), W0 - lr * GW, rtol=0, atol=1e-14)
    np.testing.assert_allclose(model.bias.detach().numpy(), b0 - lr * Gb, rtol=0, atol=1e-14)
    assert float(l_tr) == pytest.approx(ltr, abs=1e-14)
    assert float(l_te) == pytest.approx(lte, abs=1e-14)

    # second step: momentum buffer carries the first combined gradient (checks state of the outer optimizer)
    W1o, b1o = W0 - lr * GW, b0 - lr * Gb
    opt.step(closure(Xtr, ytr), closure(Xte, yte))
    _, gW2, gb2 = _ce_grad(W1o, b1o, Xtr, ytr)
    _, hW2, hb2 = _ce_grad(W1o - alpha * gW2, b1o - alpha * gb2, Xte, yte)
    np.testing.assert_allclose(
        model.weight.detach().numpy(), W1o - lr * (mom * GW + gW2 + beta * hW2), rtol=0, atol=1e-14
    )
    np.testing.assert_allclose(
        model.bias.detach().numpy(), b1o - lr * (mom * Gb + gb2 + beta * hb2), atol=1e-14
    )


def test_mldg_only_moves_optimizer_params_and_keeps_bn_from_meta_train():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = MLDG(model, torch.optim.SGD(trainable, lr=0.1), inner_lr=0.5)
    x1, x2 = torch.randn(5, 3), torch.randn(5, 3) + 3
    y = torch.tensor([0, 1, 0, 1, 1])
    ref = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ref.load_state_dict(model.state_dict())
    ref(x1)  # running stats after the meta-train pass alone
    opt.step(
        lambda: nn.functional.cross_entropy(model(x1), y), lambda: nn.functional.cross_entropy(model(x2), y)
    )
    assert torch.equal(model[0].weight, frozen)
    assert torch.equal(model[1].running_mean, ref[1].running_mean)
    assert torch.equal(model[1].running_var, ref[1].running_var)


def _manifest():
    return pd.DataFrame(
        {
            "utt_id": [f"u{i}" for i in range(10)],
            "label": ["bonafide"] * 4 + ["spoof"] * 6,
            "attack": ["-", "-", "", None, "A01", "A01", "A02", "A03", "A03", "A02"],
        }
    )


def test_assign_domains_split_deals_bonafide_once():
    dom = assign_domains(_manifest(), "attack", "split", seed=3)
    assert sorted(dom) == ["A01", "A02", "A03"]
    bona = [r for n in dom for r in dom[n] if r < 4]
    assert sorted(bona) == [0, 1, 2, 3]  # each bona-fide row exactly once
    assert all(any(r < 4 for r in dom[n]) for n in dom)  # every domain holds both classes
    assert set(dom["A01"]) >= {4, 5} and set(dom["A02"]) >= {6, 9}
    assert {n: v.tolist() for n, v in dom.items()} == {
        n: v.tolist() for n, v in assign_domains(_manifest(), "attack", "split", seed=3).items()
    }


def test_assign_domains_shared_and_errors():
    dom = assign_domains(_manifest(), "attack", "shared")
    assert all({0, 1, 2, 3} <= set(v) for v in dom.values())
    with pytest.raises(SpecError, match="not a column"):
        assign_domains(_manifest(), "codec")
    df = _manifest()
    df.loc[5, "attack"] = "-"
    with pytest.raises(SpecError, match="row 6"):
        assign_domains(df)
    df = _manifest()
    df["attack"] = df["attack"].where(df["label"] == "bonafide", "A01")
    with pytest.raises(SpecError, match="at least 2"):
        assign_domains(df)


def test_split_and_sample_are_seeded():
    names = ["A01", "A02", "A03", "A04"]
    s1 = split_domains(names, 1, np.random.default_rng(5))
    assert s1 == split_domains(names, 1, np.random.default_rng(5))
    assert len(s1.meta_test) == 1 and set(s1.meta_train) | set(s1.meta_test) == set(names)
    with pytest.raises(SpecError):
        split_domains(names, 4, np.random.default_rng(0))
    dom = assign_domains(_manifest())
    rows = sample_rows(dom, ("A01", "A02"), 3, np.random.default_rng(0))
    assert len(set(rows)) == 3 and set(rows) <= set(dom["A01"]) | set(dom["A02"])
    assert len(sample_rows(dom, ("A01",), 100, np.random.default_rng(0))) == len(dom["A01"])
