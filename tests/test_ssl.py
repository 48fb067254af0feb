"""Pre-training methods: each loss against a direct formula on a tiny batch, maps that follow
the views, the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxrssl.augment import PRETRAIN_AUGMENT, View, augment_view, relative, warp_maps
from cxrssl.errors import CxrsslError
from cxrssl.losses import FocalTverskyLoss
from cxrssl.ssl import METHODS, create_method, parse_method
from cxrssl.ssl.attention import consistency
from cxrssl.ssl.regional import MIN_REGION_SHARE, region_weights

FEATURES = (4, 8, 8, 16, 16)  # reductions 1, 2, 4, 8, 16 at a 32 px input
SMALL = {"encoder_kwargs": {"features": FEATURES}, "hidden_dim": 16, "proj_dim": 8}


def nt_xent_direct(za: torch.Tensor, zb: torch.Tensor, t: float) -> torch.Tensor:
    """(2B,) per-anchor NT-Xent written out with loops."""
    z = F.normalize(torch.cat([za, zb]), dim=1)
    n = len(z)
    b = n // 2
    out = []
    for k in range(n):
        pos = (k + b) % n
        den = sum(math.exp(float(z[k] @ z[j]) / t) for j in range(n) if j != k)
        out.append(-(float(z[k] @ z[pos]) / t) + math.log(den))
    return torch.tensor(out)


def make_views(b: int = 3, size: int = 32, seed: int = 0) -> tuple[View, View]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 1, size, size, generator=g) * 0.8 + 0.1
    lungs = torch.zeros(b, 1, size, size, dtype=torch.uint8)
    lungs[:, :, 6:26, 4:14] = 1
    lungs[:, :, 6:26, 18:28] = 1
    lungs[1, :, :, :16] = 0  # one image shows less lung
    regions = torch.zeros(b, 1, size, size, dtype=torch.uint8)
    for i, (r0, r1) in enumerate([(6, 13), (13, 20), (20, 26)]):
        regions[:, :, r0:r1, 4:14] = 1 + i
        regions[:, :, r0:r1, 18:28] = 4 + i
    pathology = torch.zeros(b, 1, size, size)
    pathology[0, :, 8:12, 6:10] = 1.0
    maps = {
        "lungs": (lungs, "binary"),
        "regions": (regions, "label"),
        "pathology": (pathology, "soft"),
    }
    a = augment_view(images, maps, g, PRETRAIN_AUGMENT)
    c = augment_view(images, maps, g, PRETRAIN_AUGMENT)
    return a, c


def projections(method: torch.nn.Module, a: View, b: View) -> tuple[torch.Tensor, torch.Tensor]:
    feats, _ = method._both([a, b])
    return method.projector(method.pool(feats[0], a)), method.projector(method.pool(feats[1], b))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def test_registry_and_combinations() -> None:
    assert {
        "simclr",
        "mask-weighted",
        "mask-pooled",
        "regional",
        "pathology",
        "lung-crop",
        "attention",
        "medsass",
    } <= set(METHODS)
    assert parse_method("lung-crop+attention") == ("attention", True)
    assert parse_method("lung-crop") == ("lung-crop", True)
    assert create_method("lung-crop+attention", **SMALL).crop
    assert not create_method("simclr", **SMALL).crop
    with pytest.raises(CxrsslError, match="unknown pre-training method"):
        parse_method("byol")
    with pytest.raises(CxrsslError, match="unknown pre-training method"):
        parse_method("simclr+regional")
    with pytest.raises(CxrsslError, match="mask_wieght"):
        create_method("mask-weighted", mask_wieght=0.3, **SMALL)


def test_simclr_loss_is_nt_xent_plus_reconstruction() -> None:
    m = create_method("simclr", recon_weight=0.5, temperature=0.2, **SMALL).eval()
    a, b = make_views()
    with torch.no_grad():
        total, parts = m.loss([a, b])
        za, zb = projections(m, a, b)
        feats, _ = m._both([a, b])
        rec = (
            F.mse_loss(m.decoder(feats[0][-1], (32, 32)), a.image)
            + F.mse_loss(m.decoder(feats[1][-1], (32, 32)), b.image)
        ) / 2
    direct = nt_xent_direct(za, zb, 0.2).mean()
    assert parts["contrastive"] == pytest.approx(float(direct), rel=1e-5)
    assert float(total) == pytest.approx(float(direct + 0.5 * rec), rel=1e-5)


def test_mask_weighted_weights_pairs_by_lung_coverage() -> None:
    m = create_method("mask-weighted", **SMALL).eval()
    a, b = make_views()
    with torch.no_grad():
        total, _ = m.loss([a, b])
        za, zb = projections(m, a, b)
    cov = (a.maps["lungs"].float().mean((1, 2, 3)) + b.maps["lungs"].float().mean((1, 2, 3))) / 2
    w = torch.cat([1 + 0.3 * cov, 1 + 0.3 * cov])
    per = nt_xent_direct(za, zb, 0.1)
    assert float(total) == pytest.approx(float((w * per).sum() / w.sum()), rel=1e-5)
    assert cov[1] < cov[0]  # the test has a pair that shows less lung


def test_pathology_weights_pairs_by_candidate_share() -> None:
    m = create_method("pathology", pathology_weight=2.0, **SMALL).eval()
    a, b = make_views()
    with torch.no_grad():
        total, _ = m.loss([a, b])
        za, zb = projections(m, a, b)

    def share(v: View) -> torch.Tensor:
        lung = v.maps["lungs"].float()
        return (v.maps["pathology"] * lung).sum((1, 2, 3)) / lung.sum((1, 2, 3))

    s = (share(a) + share(b)) / 2
    assert s[0] > 0 and s[2] == 0
    w = torch.cat([1 + 2 * s, 1 + 2 * s])
    per = nt_xent_direct(za, zb, 0.1)
    assert float(total) == pytest.approx(float((w * per).sum() / w.sum()), rel=1e-5)


def test_mask_pooled_averages_inside_the_lungs() -> None:
    m = create_method("mask-pooled", **SMALL).eval()
    a, _ = make_views()
    with torch.no_grad():
        feats, _ = m.features(a.image)
        pooled = m.pool(feats, a)
    coarse = feats[-1]
    weight = F.adaptive_avg_pool2d(a.maps["lungs"].float(), coarse.shape[-2:])
    direct = (coarse * weight).sum((2, 3)) / weight.sum((2, 3))
    torch.testing.assert_close(pooled, direct, rtol=1e-4, atol=1e-5)
    empty = View(a.image, {"lungs": torch.zeros_like(a.maps["lungs"])}, a.theta)
    torch.testing.assert_close(m.pool(feats, empty), coarse.mean((2, 3)))


def test_regional_gathers_image_negatives_but_never_region_ones() -> None:
    # under DDP each process has its own number of valid region pairs, which all_gather
    # cannot take: only the image-level term gathers
    m = create_method("regional", gather=True, **SMALL)
    assert m.criterion.gather and not m.region_criterion.gather
    assert m.region_criterion.temperature == m.criterion.temperature


def test_regional_sums_region_means_of_nt_xent() -> None:
    m = create_method("regional", alpha=0.7, beta=0.4, **SMALL).eval()
    a, b = make_views()
    with torch.no_grad():
        total, parts = m.loss([a, b])
        za, zb = projections(m, a, b)
        feats, _ = m._both([a, b])
    wa, wb = region_weights(a), region_weights(b)
    valid = (wa.mean((2, 3)) >= MIN_REGION_SHARE) & (wb.mean((2, 3)) >= MIN_REGION_SHARE)
    ea, eb, ids = [], [], []
    for i in range(3):
        for r in range(6):
            if valid[i, r]:
                fa = F.adaptive_avg_pool2d(wa[i : i + 1, r : r + 1], feats[0][-1].shape[-2:])
                fb = F.adaptive_avg_pool2d(wb[i : i + 1, r : r + 1], feats[1][-1].shape[-2:])
                ea.append((feats[0][-1][i] * fa[0]).sum((1, 2)) / fa.sum())
                eb.append((feats[1][-1][i] * fb[0]).sum((1, 2)) / fb.sum())
                ids.append(r)
    assert len(ids) >= 6
    with torch.no_grad():
        per = nt_xent_direct(m.projector(torch.stack(ea)), m.projector(torch.stack(eb)), 0.1)
    ids2 = ids + ids
    regional = sum(
        per[[k for k, r in enumerate(ids2) if r == region]].mean() for region in set(ids)
    )
    glob = nt_xent_direct(za, zb, 0.1).mean()
    assert parts["regional"] == pytest.approx(float(regional), rel=1e-4)
    assert float(total) == pytest.approx(float(0.7 * glob + 0.4 * regional), rel=1e-4)


def test_regions_follow_the_views() -> None:
    """Region r of view A, warped into view B's frame, lands on region r of view B."""
    a, b = make_views(size=64)
    theta = relative(a.theta, b.theta)
    warped = warp_maps({"r": (a.maps["regions"], "label")}, theta)["r"]
    seen = warp_maps({"s": (torch.ones_like(a.maps["lungs"]), "binary")}, theta)["s"] > 0
    both = seen & (warped > 0) & (b.maps["regions"] > 0)
    agree = (warped == b.maps["regions"])[both].float().mean()
    assert both.sum() > 100 and agree > 0.9


def test_attention_consistency_compares_in_the_same_frame() -> None:
    g = torch.Generator().manual_seed(1)
    prob = torch.rand(2, 1, 8, 8, generator=g)
    eye = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3)
    flip = torch.tensor([[-1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3)
    a = View(torch.zeros(2, 1, 8, 8), {}, eye)
    b = View(torch.zeros(2, 1, 8, 8), {}, flip)
    # B is A flipped: B's mask is A's flipped, so the warped comparison is exactly 0 ...
    assert float(consistency(a, b, prob, prob.flip(-1))) == pytest.approx(0.0, abs=1e-10)
    # ... and the seed's pixel-by-pixel comparison is not.
    naive = float(((prob - prob.flip(-1)) ** 2).mean())
    assert float(consistency(a, b, prob, prob)) == pytest.approx(naive, rel=1e-5)
    assert naive > 0.01


def test_attention_loss_has_its_three_parts() -> None:
    m = create_method("attention-lungs", **SMALL).eval()
    a, b = make_views()
    with torch.no_grad():
        total, parts = m.loss([a, b])
    assert {"contrastive", "reconstruction", "seg_consistency", "seg_lungs"} <= set(parts)
    expected = (
        parts["contrastive"]
        + 0.5 * parts["reconstruction"]
        + 0.2 * parts["seg_consistency"]
        + 0.2 * parts["seg_lungs"]
    )
    assert float(total) == pytest.approx(float(expected), rel=1e-5)
    shown = m.visuals(a)
    assert shown["segmentation"].shape == a.image.shape


def test_medsass_is_a_unet_fitting_pseudo_masks() -> None:
    m = create_method("medsass", encoder_kwargs={"features": FEATURES}).eval()
    a, _ = make_views()
    with torch.no_grad():
        total, _ = m.loss([a])
        direct = FocalTverskyLoss()(m(a.image), a.maps["lungs"].float())
    assert float(total) == pytest.approx(float(direct), rel=1e-6)
    assert m.views == 1
    from cxrssl.nets import UNet

    unet = UNet(features=FEATURES)
    assert set(unet.state_dict()) <= set(m.state_dict())
    with pytest.raises(CxrsslError, match="whole U-Net"):
        create_method("medsass", encoder="resnet18")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_a_step(name: str) -> None:
    kw = {"encoder_kwargs": {"features": FEATURES}}
    if name != "medsass":
        kw |= {"hidden_dim": 16, "proj_dim": 8}
    m = create_method(name, **kw)
    a, b = make_views(b=4)
    loss, _ = m.loss([a, b][: m.views])
    loss.backward()
    grads = [p.grad for p in m.encoder.parameters() if p.grad is not None]
    assert math.isfinite(float(loss.detach())) and grads and any(g.abs().sum() > 0 for g in grads)
