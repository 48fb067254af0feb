"""Encoders by name (stage channels, reductions, keys), masked pooling, guided attention."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import resnet18
from torch import nn

from cxrssl.errors import CxrsslError
from cxrssl.nets import ENCODERS, GuidedAttention, UNet, create_encoder
from cxrssl.nets.encoders import Encoder, masked_avg_pool

EXPECTED = {
    "unet": ((16, 32, 64, 128, 256), (1, 2, 4, 8, 16)),
    "resnet18": ((64, 64, 128, 256, 512), (4, 4, 8, 16, 32)),
    "resnet50": ((64, 256, 512, 1024, 2048), (4, 4, 8, 16, 32)),
    "densenet121": ((64, 256, 512, 1024, 1024), (4, 4, 8, 16, 32)),
}


def _image(b: int = 2, side: int = 64) -> torch.Tensor:
    return torch.rand(b, 1, side, side, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_stages_channels_reductions_and_stepwise_forward(name: str) -> None:
    enc = create_encoder(name).eval()
    assert isinstance(enc, Encoder)
    channels, reductions = EXPECTED[name]
    assert (enc.out_channels, enc.reductions) == (channels, reductions)
    x = _image()
    with torch.no_grad():
        feats = enc(x)
        assert len(feats) == len(enc.stages) == 5
        assert [tuple(f.shape) for f in feats] == [
            (2, c, 64 // r, 64 // r) for c, r in zip(channels, reductions, strict=True)
        ]
        y = enc.stem(x)
        for stage, f in zip(enc.stages, feats, strict=True):
            y = stage(y)
            torch.testing.assert_close(y, f, atol=0, rtol=0)
        # the stem is the parameter-free input norm: standardised content
        assert enc.stem(x).mean().abs().item() < 1e-4
    assert not any(True for _ in enc.input_norm.parameters())


def test_unet_encoder_keys_are_those_of_the_unet() -> None:
    for kw in ({}, {"features": (8, 16, 32), "norm": "instance"}):
        net_keys = [
            k.removeprefix("encoder.") for k in UNet(**kw).state_dict() if k.startswith("encoder.")
        ]
        assert list(create_encoder("unet", **kw).state_dict()) == net_keys
    enc = create_encoder("unet", in_channels=3, features=(8, 16, 32))
    assert enc.stages is enc.blocks and enc.reductions == (1, 2, 4)
    assert enc(torch.rand(1, 3, 16, 16))[-1].shape == (1, 32, 4, 4)


def test_resnet_state_dict_is_not_doubled() -> None:
    enc = create_encoder("resnet18")
    keys = list(enc.state_dict())
    assert all(k.startswith("stages.") for k in keys)
    assert "stages.0.conv1.weight" in keys and "stages.4.1.conv2.weight" in keys
    ref = resnet18(spatial_dims=2, n_input_channels=1, feed_forward=False)
    assert len(keys) == len(ref.state_dict())
    assert sum(p.numel() for p in enc.parameters()) == sum(p.numel() for p in ref.parameters())
    # MONAI's stride-1 first conv on request: reductions follow
    assert create_encoder("resnet18", conv1_t_stride=1).reductions == (2, 2, 4, 8, 16)


def test_create_encoder_errors() -> None:
    with pytest.raises(CxrsslError, match=r"unknown encoder 'vgg'; choose one of densenet121, "):
        create_encoder("vgg")
    with pytest.raises(CxrsslError, match=r"unknown keyword\(s\) depth; valid: features, norm"):
        create_encoder("unet", depth=3)
    with pytest.raises(CxrsslError, match=r"'resnet50': unknown keyword.*valid: input_norm"):
        create_encoder("resnet50", growth_rate=3)
    with pytest.raises(CxrsslError, match="pretrained weights are not available"):
        create_encoder("densenet121", pretrained=True)
    with pytest.raises(CxrsslError, match="unknown input_norm 'z'"):
        create_encoder("resnet18", input_norm="z")


def test_masked_avg_pool_quadrant_soft_weights_and_empty_masks() -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 3, 4, 4, generator=g)
    masks = torch.zeros(2, 2, 16, 16)
    masks[:, 0, :8, :8] = 1  # top-left quadrant at input resolution
    # mask 1 of sample 0 empty; of sample 1 a tiny speck (still non-empty)
    masks[1, 1, 15, 15] = 1
    pooled, sums = masked_avg_pool(feats, masks)
    assert pooled.shape == (2, 2, 3) and sums.shape == (2, 2)
    torch.testing.assert_close(pooled[:, 0], feats[:, :, :2, :2].mean(dim=(2, 3)))
    torch.testing.assert_close(sums[:, 0], torch.tensor([4.0, 4.0]))
    assert sums[0, 1].item() == 0.0  # empty: global average instead
    torch.testing.assert_close(pooled[0, 1], feats[0].mean(dim=(1, 2)))
    assert sums[1, 1].item() == pytest.approx(1 / 16)
    torch.testing.assert_close(pooled[1, 1], feats[1, :, 3, 3])
    # soft weights at the feature resolution: the direct formula
    w = torch.rand(2, 1, 4, 4, generator=g)
    got, s = masked_avg_pool(feats, w)
    direct = torch.stack(
        [
            torch.stack([(w[b, 0] * feats[b, c]).sum() / w[b, 0].sum() for c in range(3)])
            for b in range(2)
        ]
    )
    torch.testing.assert_close(got[:, 0], direct)
    torch.testing.assert_close(s[:, 0], w.sum(dim=(1, 2, 3)))
    with pytest.raises(CxrsslError, match="masked_avg_pool needs"):
        masked_avg_pool(feats, torch.ones(3, 1, 4, 4))


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = create_encoder("unet")
        self.guide = GuidedAttention.for_encoder(self.encoder)


def test_guided_attention_shapes_and_encoder_keys() -> None:
    model = _Model()
    feats, extras = model.guide(model.encoder, _image())
    assert [tuple(f.shape[1:]) for f in feats] == [
        (16, 64, 64),
        (32, 32, 32),
        (64, 16, 16),
        (128, 8, 8),
        (256, 4, 4),
    ]
    assert {k: tuple(v.shape) for k, v in extras.items()} == {
        "attention_8": (2, 1, 8, 8),
        "attention_16": (2, 1, 4, 4),
        "seg_logits": (2, 1, 8, 8),
    }
    assert ((extras["attention_8"] > 0) & (extras["attention_8"] < 1)).all()
    enc_keys = {"encoder." + k for k in create_encoder("unet").state_dict()}
    keys = set(model.state_dict())
    assert enc_keys <= keys
    assert all(k.startswith("guide.") for k in keys - enc_keys)
    feats[-1].mean().backward()  # gradients reach the encoder and both branches
    assert model.encoder.blocks[0].conv1.conv.weight.grad is not None
    assert model.guide.segmentation is not None
    assert model.guide.segmentation.out.weight.grad is not None
    assert model.guide.attention["16"].net[0].weight.grad is not None
    # a ResNet: attention and segmentation at its own reductions 8 and 16
    res = create_encoder("resnet18")
    _, extras = GuidedAttention.for_encoder(res)(res, _image())
    assert tuple(extras["seg_logits"].shape) == (2, 1, 8, 8)
    assert tuple(extras["attention_16"].shape) == (2, 1, 4, 4)


def _set_const(conv: nn.Conv2d, bias: float) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        assert conv.bias is not None
        conv.bias.fill_(bias)


def test_guided_attention_weights_the_features_as_documented() -> None:
    enc = create_encoder("unet").eval()
    x = _image()
    with torch.no_grad():
        plain = enc(x)
        seg_only = GuidedAttention.for_encoder(enc, attention_at=()).eval()
        assert seg_only.segmentation is not None
        _set_const(seg_only.segmentation.out, -1e4)  # sigmoid 0: weight 1, features unchanged
        feats, extras = seg_only(enc, x)
        assert set(extras) == {"seg_logits"}
        for f, p in zip(feats, plain, strict=True):
            torch.testing.assert_close(f, p)
        _set_const(seg_only.segmentation.out, 1e4)  # sigmoid 1: the r=8 stage doubled
        feats, _ = seg_only(enc, x)
        for f, p in zip(feats[:3], plain[:3], strict=True):
            torch.testing.assert_close(f, p)
        torch.testing.assert_close(feats[3], 2 * plain[3])
        # attention 0.5 at r=8 (and none at 16) with the segmentation weight 2: unchanged
        both = GuidedAttention.for_encoder(enc, attention_at=(8,)).eval()
        assert both.segmentation is not None
        _set_const(both.attention["8"].net[2], 0.0)
        _set_const(both.segmentation.out, 1e4)
        feats, extras = both(enc, x)
        torch.testing.assert_close(extras["attention_8"], torch.full((2, 1, 8, 8), 0.5))
        for f, p in zip(feats, plain, strict=True):
            torch.testing.assert_close(f, p)
        # the segmentation branch sees the stage output before attention
        fresh = GuidedAttention.for_encoder(enc, attention_at=(8,)).eval()
        assert fresh.segmentation is not None
        _set_const(fresh.attention["8"].net[2], -1e4)  # attention ~0
        _, extras = fresh(enc, x)
        torch.testing.assert_close(extras["seg_logits"], fresh.segmentation(plain[3]))
        none = GuidedAttention.for_encoder(enc, attention_at=(), seg_at=None)
        feats, extras = none(enc, x)
        assert extras == {} and none.segmentation is None
        for f, p in zip(feats, plain, strict=True):
            torch.testing.assert_close(f, p)


def test_guided_attention_errors() -> None:
    small = create_encoder("unet", features=(8, 16, 32))
    with pytest.raises(
        CxrsslError, match=r"no stage at reduction 8; its stages have reductions \(1, 2, 4\)"
    ):
        GuidedAttention.for_encoder(small)
    with pytest.raises(CxrsslError, match=r"no stage at reduction 32; .*\(1, 2, 4, 8, 16\)"):
        GuidedAttention((16, 32, 64, 128, 256), (1, 2, 4, 8, 16), attention_at=(32,))
    guide = GuidedAttention.for_encoder(small, attention_at=(4,), seg_at=2)
    with pytest.raises(CxrsslError, match=r"built for out_channels \(8, 16, 32\)"):
        guide(create_encoder("unet"), _image())
    with pytest.raises(CxrsslError, match=r"needs an encoder with stem, stages, .* got Linear"):
        GuidedAttention.for_encoder(nn.Linear(2, 2))
