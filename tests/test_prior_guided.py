"""The prior-guided lesion network (seed 004), its loss, and how the lesion recipe's
parameter groups and prior channel reach the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cxrssl.augment import AugmentConfig
from cxrssl.errors import CxrsslError
from cxrssl.losses import LesionLoss, LossError, WeightedBCELoss, get_loss
from cxrssl.nets import create_net
from cxrssl.nets.prior_guided import PriorAttention, PriorGuidedNet, encoder_stage_prefixes
from cxrssl.tasks.seg_task import SegmentationTask
from cxrssl.train import Trainer, load_init, save_checkpoint


def _disc(n: int, size: int, cx: int, cy: int, r: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).float()
    return disc.expand(n, 1, size, size).clone()


@pytest.mark.parametrize("encoder", ["unet", "resnet18"])
@pytest.mark.parametrize("prior", [False, True])
def test_output_shape_for_both_backbones_with_and_without_a_prior(
    encoder: str, prior: bool
) -> None:
    net = create_net("prior_guided", in_channels=1 + prior, encoder=encoder).eval()
    assert isinstance(net, PriorGuidedNet) and net.prior is prior
    assert (net.attention is not None) is prior  # the ablation has no branch at all
    with torch.no_grad():
        for h, w in [(64, 64), (40, 56)]:
            assert net(torch.rand(2, 1 + prior, h, w)).shape == (2, 1, h, w)
    with pytest.raises(CxrsslError, match=rf"expects \(B, {1 + prior}, H, W\)"):
        net(torch.rand(2, 2 - prior, 64, 64))


def test_resnet_decoder_has_five_transposed_stages_and_skips_where_features_exist() -> None:
    net = PriorGuidedNet(2, encoder="resnet18")
    assert len(net.decoder) == 5
    ups = [s.up for s in net.decoder]
    assert all(isinstance(u, torch.nn.ConvTranspose2d) and u.stride == (2, 2) for u in ups)
    assert [u.out_channels for u in ups] == [256, 128, 64, 32, 16]
    assert net._skips == [3, 2, 1, None, None]  # layer3, layer2, layer1; no stride 2 or 1
    assert len(PriorGuidedNet(2, encoder="unet").decoder) == 4  # deepest stride 16


@pytest.mark.parametrize("encoder", ["unet", "resnet18"])
def test_attention_maps_have_the_resolutions_of_the_features_they_gate(encoder: str) -> None:
    net = PriorGuidedNet(2, encoder=encoder).eval()
    x = torch.rand(1, 2, 64, 64)
    with torch.no_grad():
        _, maps = net.forward_with_attention(x)
        feats = net.encoder(x[:, :1])
    assert sorted(maps) == ["attention_16", "attention_4", "attention_8"]
    reductions = net.encoder.reductions
    for stride in (4, 8, 16):
        stage = max(i for i, r in enumerate(reductions) if r == stride)
        assert maps[f"attention_{stride}"].shape[-2:] == feats[stage].shape[-2:]
        assert maps[f"attention_{stride}"].shape[-1] == 64 // stride
        m = maps[f"attention_{stride}"]
        assert float(m.min()) > 0 and float(m.max()) < 1


def test_the_branch_has_seven_residual_conv_layers_of_64_channels_from_full_resolution() -> None:
    branch = PriorAttention(1, 64, (4, 8, 16))
    assert len(branch.layers) == 7
    assert [layer.stride for layer in branch.layers] == [1, 2, 2, 1, 2, 2, 1]
    assert all(layer.conv.out_channels == 64 for layer in branch.layers)
    assert all(isinstance(layer.norm, torch.nn.BatchNorm2d) for layer in branch.layers)
    # The first layer runs at the prior's own resolution.
    seen: list[tuple[int, ...]] = []
    branch.layers[0].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    branch(torch.rand(1, 1, 64, 64))
    assert seen == [(64, 64)]


def test_the_prior_changes_the_output_and_the_ablation_ignores_nothing_else() -> None:
    torch.manual_seed(0)
    net = PriorGuidedNet(2, encoder="resnet18").eval()
    image = torch.rand(1, 1, 64, 64)
    here = torch.cat([image, _disc(1, 64, 16, 16, 6)], 1)
    there = torch.cat([image, _disc(1, 64, 48, 40, 6)], 1)
    with torch.no_grad():
        a, b = net(here), net(there)
    assert not torch.allclose(a, b)
    # The change is local to where the priors differ most, not a global offset.
    diff = (a - b).abs()[0, 0]
    assert diff.max() > 10 * diff.min()


def test_encoder_keys_match_a_pretrained_encoder_and_load_with_init(tmp_path: Path) -> None:
    from cxrssl.nets import create_encoder

    encoder = create_encoder("resnet18", 1)
    ckpt = tmp_path / "pre.pt"
    save_checkpoint(
        ckpt,
        {
            "encoder_state_dict": encoder.state_dict(),
            "extra": {"encoder": {"name": "resnet18", "kwargs": {}}},
        },
    )
    from cxrssl.tasks.lesion import LesionConfig, resolve_model

    config = resolve_model(LesionConfig(init=str(ckpt)), has_prior=True)
    assert config.model_kwargs == {"in_channels": 2, "encoder": "resnet18", "encoder_kwargs": {}}
    net = create_net(config.model, **config.model_kwargs)
    assert load_init(net, ckpt, encoder_only=True) == len(encoder.state_dict())
    torch.testing.assert_close(
        net.state_dict()["encoder.stages.1.0.conv1.weight"],
        encoder.state_dict()["stages.1.0.conv1.weight"],
    )


def test_per_group_learning_rates_and_partial_freezing_reach_the_optimiser(
    tmp_path: Path,
) -> None:
    from cxrssl.tasks.lesion import LesionConfig
    from cxrssl.tasks.segmentation import engine_config

    net = PriorGuidedNet(2, encoder="resnet18")
    config = LesionConfig(device="cpu", tensorboard=False, progress=False)
    task = config.make_task(prior_channels=1)
    trainer = Trainer(net, task, engine_config(config, net, True, 0, torch.device("cpu")), tmp_path)
    lrs = sorted(g["lr"] for g in trainer.optimizer.param_groups)
    assert lrs == pytest.approx([5e-6, 2e-5])
    encoder_ids = {id(p) for p in net.encoder.parameters()}
    for group in trainer.optimizer.param_groups:
        inside = {id(p) in encoder_ids for p in group["params"]}
        assert inside == {group["lr"] == pytest.approx(5e-6)}
    assert trainer.config.monitor == "dice_pooled"
    # From a pre-trained encoder the first stages are frozen (all but the last two).
    frozen = LesionConfig(init="pre.pt", device="cpu")
    lr_mult, freeze = frozen.param_settings(net)
    assert lr_mult == {"encoder.": 0.25}
    assert (
        freeze
        == tuple(encoder_stage_prefixes(net)[:3])
        == (
            "encoder.stages.0.",
            "encoder.stages.1.",
            "encoder.stages.2.",
        )
    )
    net = PriorGuidedNet(2, encoder="resnet18")
    trainer = Trainer(net, task, engine_config(frozen, net, True, 0, torch.device("cpu")), tmp_path)
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    stage = net.encoder.stages
    assert not any(id(p) in trained for p in stage[2].parameters())
    assert all(id(p) in trained for p in stage[3].parameters())
    assert not any(p.requires_grad for p in stage[0].parameters())
    assert LesionConfig(freeze_stages=0, init="pre.pt").param_settings(net)[1] == ()


def test_prior_channels_follow_the_geometry_but_get_no_photometric_change() -> None:
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach())
            return x[:, :1] * self.w

    photometric_only = AugmentConfig(rotation=0, scale=0, translate=0, brightness=0.2)
    task = SegmentationTask(get_loss("lesion"), photometric_only, prior_channels=1)
    image = torch.rand(2, 1, 32, 32) * 0.5 + 0.25
    prior = _disc(2, 32, 10, 12, 5) * 0.7
    batch = ((torch.cat([image, prior], 1) * 255).round().to(torch.uint8), _disc(2, 32, 10, 12, 4))
    _, parts = task.training_step(Spy(), batch, torch.Generator().manual_seed(0))
    x = seen[0]
    assert not torch.allclose(x[:, :1], batch[0][:, :1].float() / 255, atol=1e-3)
    torch.testing.assert_close(x[:, 1:], batch[0][:, 1:].float() / 255, atol=1e-5, rtol=0)
    assert set(parts) == {"tversky", "focal_tversky", "weighted_bce"}
    # A rotation moves the prior with the image and the mask.
    rotate = AugmentConfig(rotation=90, scale=0, translate=0, brightness=0, contrast=0, noise=0)
    task = SegmentationTask(get_loss("lesion"), rotate, prior_channels=1)
    seen.clear()
    task.training_step(Spy(), batch, torch.Generator().manual_seed(1))
    assert not torch.allclose(seen[0][:, 1:], batch[0][:, 1:].float() / 255, atol=0.1)


def _target() -> torch.Tensor:
    t = torch.zeros(2, 1, 16, 16)
    t[0, 0, 4:8, 4:8] = 1
    return t


def test_lesion_loss_is_near_zero_for_a_perfect_prediction() -> None:
    t = _target()
    loss = get_loss("lesion")
    assert isinstance(loss, LesionLoss)
    total = loss((t * 2 - 1) * 40, t)
    assert total.item() < 1e-6
    assert loss.last_components["tversky"].item() == pytest.approx(0.0, abs=1e-6)
    assert loss.last_components["focal_tversky"].item() == pytest.approx(0.0, abs=1e-6)


def test_lesion_loss_components_by_hand() -> None:
    t = _target()
    x = torch.zeros_like(t, requires_grad=True)  # every probability 0.5
    loss = LesionLoss()
    total = loss(x, t)
    parts = loss.last_components
    # Pooled over the batch: TP = 0.5 * 16, FP = 0.5 * 496, FN = 0.5 * 16.
    ti = 8 / (8 + 0.3 * 248 + 0.7 * 8)
    assert parts["tversky"].item() == pytest.approx(1 - ti, rel=1e-4)
    assert parts["focal_tversky"].item() == pytest.approx((1 - ti) ** 2, rel=1e-4)
    # pos_weight = 496 / 16 * 100 = 3100, capped at 1000.
    pos_weight = WeightedBCELoss(100, 1000).pos_weight(t)
    assert pos_weight.item() == 1000.0
    bce = F.binary_cross_entropy_with_logits(x, t, pos_weight=torch.tensor(1000.0))
    assert parts["weighted_bce"].item() == pytest.approx(bce.item(), rel=1e-5)
    expected = 0.4 * (1 - ti) + 0.3 * (1 - ti) ** 2 + 0.3 * bce.item()
    assert total.item() == pytest.approx(expected, rel=1e-4)
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # Under the cap the ratio stands: 10 % positive -> 9 * 100 = 900.
    t10 = torch.zeros(1, 1, 10, 10)
    t10[0, 0, 0] = 1
    assert WeightedBCELoss(100, 1000).pos_weight(t10).item() == pytest.approx(900.0)


def test_weights_zero_switch_components_off_and_a_batch_without_positives() -> None:
    t, x = _target(), torch.randn(2, 1, 16, 16)
    only_bce = get_loss("lesion", tversky_weight=0, focal_tversky_weight=0)
    value = only_bce(x, t)
    assert set(only_bce.last_components) == {"weighted_bce"}
    assert value.item() == pytest.approx(0.3 * only_bce.last_components["weighted_bce"].item())
    no_bce = get_loss("lesion", weighted_bce_weight=0.0)
    no_bce(x, t)
    assert set(no_bce.last_components) == {"tversky", "focal_tversky"}
    with pytest.raises(LossError, match="not all 0"):
        get_loss("lesion", tversky_weight=0, focal_tversky_weight=0, weighted_bce_weight=0)
    # No positive pixel: the Tversky terms are 0, the BCE is the plain BCE of the negatives.
    empty = torch.zeros_like(t)
    loss = LesionLoss()
    total = loss(x, empty)
    assert loss.last_components["tversky"].item() == 0.0
    assert loss.last_components["focal_tversky"].item() == 0.0
    plain = F.binary_cross_entropy_with_logits(x, empty)
    assert total.item() == pytest.approx(0.3 * plain.item(), rel=1e-5)
