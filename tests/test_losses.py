"""Losses: perfect vs wrong logits, hand-computed values, pos_weight, components, NT-Xent."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from monai.losses import ContrastiveLoss

from cxrssl.errors import CxrsslError
from cxrssl.losses import (
    LOSSES,
    CombinedLoss,
    FocalTverskyLoss,
    LossError,
    NTXentLoss,
    ProjectionHead,
    WeightedBCELoss,
    get_loss,
)

SEG_LOSSES = [k for k in LOSSES if k != "ntxent"]


def _target() -> torch.Tensor:
    """(3, 1, 8, 8) masks, each with some foreground."""
    t = torch.zeros(3, 1, 8, 8)
    t[0, 0, 2:5, 2:5] = 1
    t[1, 0, 0:2, :] = 1
    t[2, 0, 6, 6] = 1
    return t


@pytest.mark.parametrize("name", SEG_LOSSES)
def test_perfect_logits_near_zero_wrong_logits_large(name: str) -> None:
    loss = get_loss(name)
    t = _target()
    perfect = (2 * t - 1) * 30
    assert loss(perfect, t).item() < 1e-3
    assert loss(-perfect, t).item() > 0.5
    assert loss(torch.zeros_like(t), t).item() > loss(perfect, t).item()


@pytest.mark.parametrize("name", SEG_LOSSES)
def test_gradients_flow(name: str) -> None:
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    get_loss(name)(x, _target()).backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_focal_tversky_hand_computed() -> None:
    # logits 0 -> p = 0.5 everywhere. Sample 0: 2 of 4 pixels true -> TP 1, FP 1, FN 1,
    # TI = 1 / (1 + 0.3 + 0.7). Sample 1: 1 true -> TP 0.5, FP 1.5, FN 0.5,
    # TI = 0.5 / (0.5 + 0.45 + 0.35). Loss = mean((1 - TI) ** 0.75).
    t = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[1.0, 0.0], [0.0, 0.0]]]])
    expected = ((1 - 1 / 2.0) ** 0.75 + (1 - 0.5 / 1.3) ** 0.75) / 2
    got = FocalTverskyLoss(alpha=0.3, beta=0.7, gamma=4 / 3)(torch.zeros_like(t), t)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    assert FocalTverskyLoss(gamma=1.0)(torch.zeros_like(t), t).item() == pytest.approx(
        ((1 - 1 / 2.0) + (1 - 0.5 / 1.3)) / 2, abs=1e-5
    )


def test_focal_tversky_gradient_finite_at_perfect_prediction() -> None:
    t = _target()
    x = ((2 * t - 1) * 50).requires_grad_()
    FocalTverskyLoss()(x, t).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_weighted_bce_pos_weight_ratio_cap_and_floor() -> None:
    t = torch.zeros(2, 1, 5, 10)
    t[0, 0, 0, :] = 1  # 10 positives of 100 -> ratio 9
    assert WeightedBCELoss().pos_weight(t).item() == pytest.approx(9.0)
    assert WeightedBCELoss(factor=2.0).pos_weight(t).item() == pytest.approx(18.0)
    assert WeightedBCELoss(factor=2.0, max_pos_weight=5.0).pos_weight(t).item() == 5.0
    assert WeightedBCELoss(max_pos_weight=50.0).pos_weight(torch.zeros_like(t)).item() == 50.0
    assert WeightedBCELoss().pos_weight(torch.ones_like(t)).item() == 1.0  # floor at 1


def test_weighted_bce_value() -> None:
    t = torch.zeros(2, 1, 5, 10)
    t[0, 0, 0, :] = 1
    x = torch.randn(2, 1, 5, 10, generator=torch.Generator().manual_seed(0))
    ref = F.binary_cross_entropy_with_logits(x, t, pos_weight=torch.tensor(9.0))
    assert WeightedBCELoss()(x, t).item() == pytest.approx(ref.item(), rel=1e-6)


def test_combined_reports_components_and_sums_them() -> None:
    loss = get_loss("combined")
    assert isinstance(loss, CombinedLoss)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    total = loss(x, _target())
    parts = loss.last_components
    assert list(parts) == ["tversky", "focal_tversky", "weighted_bce"]
    assert all(not v.requires_grad for v in parts.values())
    weights = {"tversky": 0.4, "focal_tversky": 0.3, "weighted_bce": 0.3}
    assert total.item() == pytest.approx(sum(weights[k] * v.item() for k, v in parts.items()))
    assert parts["weighted_bce"].item() == pytest.approx(WeightedBCELoss()(x, _target()).item())


def test_custom_combined_weights() -> None:
    t = _target()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    loss = CombinedLoss({"dice": (get_loss("dice"), 2.0), "focal": (get_loss("focal"), 0.5)})
    expected = 2.0 * get_loss("dice")(x, t) + 0.5 * get_loss("focal")(x, t)
    assert loss(x, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_get_loss_errors() -> None:
    with pytest.raises(CxrsslError, match=r"unknown loss 'dicee'; choose one of bce_dice, "):
        get_loss("dicee")
    with pytest.raises(LossError, match=r"loss 'tversky': .*unexpected keyword argument 'gama'"):
        get_loss("tversky", gama=2)
    with pytest.raises(LossError, match=r"temperature must be positive, got 0"):
        get_loss("ntxent", temperature=0)
    assert get_loss("tversky", alpha=0.5, beta=0.5).alpha == 0.5


def _ntxent_naive(v0: torch.Tensor, v1: torch.Tensor, t: float) -> list[float]:
    """Per-anchor NT-Xent losses, written as the formula with two loops."""
    z = torch.cat([v0, v1])
    n, b = z.shape[0], v0.shape[0]
    out = []
    for k in range(n):
        sims = [float(F.cosine_similarity(z[k], z[j], dim=0)) for j in range(n)]
        p = (k + b) % n
        den = sum(math.exp(sims[j] / t) for j in range(n) if j != k)
        out.append(-math.log(math.exp(sims[p] / t) / den))
    return out


@pytest.mark.parametrize(("b", "d", "t"), [(2, 3, 0.1), (5, 8, 0.5), (4, 16, 1.0)])
def test_ntxent_equals_naive_formula(b: int, d: int, t: float) -> None:
    g = torch.Generator().manual_seed(b * d)
    v0 = torch.randn(b, d, generator=g, dtype=torch.float64)
    v1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    per_anchor = _ntxent_naive(v0, v1, t)
    got = NTXentLoss(temperature=t)(v0, v1)
    assert got.item() == pytest.approx(sum(per_anchor) / (2 * b), abs=1e-5)
    # MONAI's ContrastiveLoss states the same formula
    assert got.item() == pytest.approx(ContrastiveLoss(temperature=t)(v0, v1).item(), abs=1e-5)
    # weights: both anchors of sample i weigh w[i]
    w = torch.arange(1, b + 1, dtype=torch.float64)
    w2 = torch.cat([w, w])
    ref = float(sum(wi * li for wi, li in zip(w2.tolist(), per_anchor, strict=True)) / w2.sum())
    assert NTXentLoss(temperature=t)(v0, v1, weight=w).item() == pytest.approx(ref, abs=1e-5)


def test_ntxent_properties() -> None:
    eye = torch.eye(4, 8)  # 4 orthogonal samples, identical views
    low = NTXentLoss(0.1)(eye, eye)
    assert low.item() == pytest.approx(math.log(1 + 6 * math.exp(-10)), abs=1e-6)
    assert NTXentLoss(1.0)(eye, eye).item() > low.item()  # softer at higher temperature
    shuffled = NTXentLoss(0.1)(eye, eye.roll(1, dims=0))  # positives mismatched
    assert shuffled.item() > 5.0
    x = torch.randn(4, 8, requires_grad=True)
    NTXentLoss()(x, x.detach() + 0.1).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(
        LossError, match=r"two \(B, D\) views with B >= 2, got \(4, 8\) and \(3, 8\)"
    ):
        NTXentLoss()(eye, eye[:3])
    with pytest.raises(LossError, match=r"weight must be \(4,\), got \(3,\)"):
        NTXentLoss()(eye, eye, weight=torch.ones(3))


def _ntxent_loops(v0: torch.Tensor, v1: torch.Tensor, t: float) -> list[float]:
    """Per-anchor NT-Xent with explicit loops and no library similarity: anchors are
    view0[0..B-1] then view1[0..B-1]; the positive of view0[i] is view1[i] and vice versa."""
    z = [[float(x) for x in row] for row in torch.cat([v0, v1])]
    b, n = v0.shape[0], 2 * v0.shape[0]

    def cos(p: list[float], q: list[float]) -> float:
        dot = sum(a * c for a, c in zip(p, q, strict=True))
        return dot / (math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(c * c for c in q)))

    out = []
    for k in range(n):
        p = k + b if k < b else k - b
        den = 0.0
        for j in range(n):
            if j != k:
                den += math.exp(cos(z[k], z[j]) / t)
        out.append(-(cos(z[k], z[p]) / t) + math.log(den))
    return out


def test_ntxent_mean_weighted_and_none_against_loops() -> None:
    g = torch.Generator().manual_seed(7)
    v0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    v1 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = 0.3
    ref = _ntxent_loops(v0, v1, t)
    loss = NTXentLoss(temperature=t)
    assert loss(v0, v1).item() == pytest.approx(sum(ref) / 6, abs=1e-9)
    none = loss(v0, v1, reduction="none")
    assert none.shape == (6,)
    assert none.tolist() == pytest.approx(ref, abs=1e-9)
    w = torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)
    w2 = [0.5, 2.0, 0.0, 0.5, 2.0, 0.0]
    weighted = sum(wi * li for wi, li in zip(w2, ref, strict=True)) / sum(w2)
    assert loss(v0, v1, weight=w).item() == pytest.approx(weighted, abs=1e-9)
    assert loss(v0, v1, weight=w, reduction="none").tolist() == pytest.approx(
        [wi * li for wi, li in zip(w2, ref, strict=True)], abs=1e-9
    )
    # gather without a process group is the plain loss
    assert not dist.is_initialized()
    assert NTXentLoss(t, gather=True)(v0, v1).item() == loss(v0, v1).item()
    with pytest.raises(LossError, match=r"reduction must be one of \('mean', 'none'\), got 'sum'"):
        loss(v0, v1, reduction="sum")
    assert get_loss("ntxent", gather=True).gather is True


def test_projection_head_shapes_and_layers() -> None:
    head = ProjectionHead(256)
    assert head(torch.randn(4, 256)).shape == (4, 128)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 512), (512, 128)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) == 1
    three = ProjectionHead(8, hidden_dim=16, out_dim=4, layers=3)
    assert three(torch.randn(5, 8)).shape == (5, 4)
    assert sum(isinstance(m, torch.nn.Linear) for m in three.modules()) == 3
    one = ProjectionHead(8, out_dim=4, layers=1)
    assert [type(m) for m in one.net] == [torch.nn.Linear]
    with pytest.raises(LossError, match="layers >= 1"):
        ProjectionHead(8, layers=0)
    with pytest.raises(LossError, match=r"\(B, D\) features, got \(2, 8, 1\)"):
        head(torch.randn(2, 8, 1))


WORLD, LOCAL_B, DIM, TEMP = 2, 3, 5, 0.2


def _global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    n = WORLD * LOCAL_B
    v0 = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    v1 = v0 + 0.5 * torch.randn(n, DIM, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, 0.2, 3.0, 0.5, 0.5, 2.0], dtype=torch.float64)  # unequal per rank
    return v0, v1, w


def _gather_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        v0, v1, w = _global_batch()
        sl = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        out: dict[str, torch.Tensor] = {}
        for name, weight in (("plain", None), ("weighted", w[sl])):
            a0, a1 = v0[sl].clone().requires_grad_(), v1[sl].clone().requires_grad_()
            loss = NTXentLoss(TEMP, gather=True)(a0, a1, weight=weight)
            loss.backward()
            assert a0.grad is not None and a1.grad is not None
            out[f"{name}_loss"] = loss.detach()
            out[f"{name}_grad0"], out[f"{name}_grad1"] = a0.grad, a1.grad
        out["none"] = NTXentLoss(TEMP, gather=True)(v0[sl], v1[sl], reduction="none")
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch without gloo"
)
def test_ntxent_gather_two_gloo_processes_match_the_global_batch(tmp_path: Path) -> None:
    # fork (where there is one) skips re-importing torch and MONAI in each worker (seconds)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _gather_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, start_method=method
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    v0, v1, w = _global_batch()
    n = WORLD * LOCAL_B
    for name, weight in (("plain", None), ("weighted", w)):
        a0, a1 = v0.clone().requires_grad_(), v1.clone().requires_grad_()
        loss = NTXentLoss(TEMP)(a0, a1, weight=weight)
        loss.backward()
        assert a0.grad is not None and a1.grad is not None
        # The ranks' losses average to the global loss.
        mean = sum(r[f"{name}_loss"] for r in ranks) / WORLD
        assert mean.item() == pytest.approx(loss.item(), abs=1e-6)
        # DDP averages gradients over ranks: rank r's embedding gradient / WORLD is exactly
        # its slice of the single-process gradient (so no rescaling of the loss is needed).
        for r, got in enumerate(ranks):
            sl = slice(r * LOCAL_B, (r + 1) * LOCAL_B)
            torch.testing.assert_close(got[f"{name}_grad0"] / WORLD, a0.grad[sl], atol=1e-6, rtol=0)
            torch.testing.assert_close(got[f"{name}_grad1"] / WORLD, a1.grad[sl], atol=1e-6, rtol=0)
    # Per-anchor losses: rank r's view0 anchors then its view1 anchors, global negatives.
    full = NTXentLoss(TEMP)(v0, v1, reduction="none")
    for r, got in enumerate(ranks):
        sl = slice(r * LOCAL_B, (r + 1) * LOCAL_B)
        expected = torch.cat([full[sl], full[n:][sl]])
        torch.testing.assert_close(got["none"], expected, atol=1e-6, rtol=0)
