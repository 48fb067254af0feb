"""The network registry: forward shapes of every entry, errors, encoder initialisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrssl.errors import CxrsslError
from cxrssl.nets import NETS, InputNorm, UNet, create_net
from cxrssl.train import CheckpointError, load_init, save_checkpoint

SMALL = {"features": (4, 8, 16)}


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_every_net_maps_any_size_to_logits_of_the_same_size(name: str, in_channels: int) -> None:
    net = create_net(name, in_channels=in_channels, out_channels=2, **SMALL).eval()
    for h, w in [(32, 32), (30, 45)]:
        with torch.no_grad():
            out = net(torch.rand(2, in_channels, h, w))
        assert out.shape == (2, 2, h, w)


def test_deep_supervision_returns_stacked_heads_in_training_only() -> None:
    net = create_net("unet_ds", **SMALL)
    out = net.train()(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 2, 1, 32, 32)  # main + 1 head (capped at levels - 2)
    out.sum().backward()
    assert net.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)


def test_attention_gates_are_present_only_in_attention_unet() -> None:
    plain, gated = create_net("unet", **SMALL), create_net("attention_unet", **SMALL)
    assert not any("gate" in k for k in plain.state_dict())
    assert any(".gate." in k for k in gated.state_dict())


def test_encoder_gives_a_feature_pyramid() -> None:
    net = UNet(features=(4, 8, 16))
    feats = net.encoder(torch.rand(1, 1, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(4, 32, 32), (8, 16, 16), (16, 8, 8)]
    assert net.encoder.reduction == 4


def test_input_norm_makes_the_net_blind_to_exposure() -> None:
    net = create_net("unet", **SMALL).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), net(0.5 * x + 0.2), atol=1e-4)


def test_input_norm_ignores_the_letterbox_padding() -> None:
    # The same radiograph letterboxed into squares of different padding: its content pixels
    # get the same normalised values (statistics over the non-zero pixels only).
    content = torch.rand(100, 60, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    wide, narrow = torch.zeros(1, 1, 100, 100), torch.zeros(1, 1, 100, 80)
    wide[..., 20:80], narrow[..., 10:70] = content, content
    norm = InputNorm("image")
    a, b = norm(wide)[..., 20:80], norm(narrow)[..., 10:70]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert abs(a.mean().item()) < 1e-5 and abs(a.std().item() - 1) < 1e-4
    # A pixel is padding only when it is 0 in every channel.
    two = torch.cat([wide, torch.zeros_like(wide)], 1)
    torch.testing.assert_close(norm(two)[:, :1, :, 20:80], a, rtol=0, atol=1e-5)
    # Too little content (here 1 pixel, and an all-zero image): every pixel counts, finitely.
    dot = torch.zeros(2, 1, 10, 10)
    dot[0, 0, 5, 5] = 1
    out = norm(dot)
    assert torch.isfinite(out).all() and torch.all(out[1] == 0)
    torch.testing.assert_close(out[0].mean(), torch.tensor(0.0), rtol=0, atol=1e-6)


def test_bad_names_and_arguments_are_reported() -> None:
    with pytest.raises(
        CxrsslError,
        match=r"unknown model 'vnet'; choose one of attention_unet, prior_guided, unet, unet_ds",
    ):
        create_net("vnet")
    with pytest.raises(CxrsslError, match=r"model 'unet': .*unexpected keyword argument 'depth'"):
        create_net("unet", depth=3)
    with pytest.raises(CxrsslError, match=r"deep_supervision must be in \[0, 1\], got 3"):
        create_net("unet", features=(4, 8, 16), deep_supervision=3)


def test_encoder_only_init_loads_the_encoder_and_nothing_else(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_net("unet", **SMALL)
    save_checkpoint(tmp_path / "ssl.pt", {"state_dict": source.state_dict()})
    target = create_net("attention_unet", **SMALL)
    n = load_init(target, tmp_path / "ssl.pt", encoder_only=True)
    src, tgt = source.state_dict(), target.state_dict()
    enc = [k for k in tgt if k.startswith("encoder.")]
    assert n == len(enc)
    assert all(torch.equal(src[k], tgt[k]) for k in enc)
    assert not torch.equal(src["head.conv.conv.weight"], tgt["head.conv.conv.weight"])


def test_encoder_state_dict_checkpoints_and_mismatches(tmp_path: Path) -> None:
    source = create_net("unet", **SMALL)
    enc = {
        k.removeprefix("encoder."): v
        for k, v in source.state_dict().items()
        if k.startswith("encoder.")
    }
    save_checkpoint(tmp_path / "enc.pt", {"encoder_state_dict": enc})
    assert load_init(create_net("unet", **SMALL), tmp_path / "enc.pt", encoder_only=True) == len(
        enc
    )
    with pytest.raises(CheckpointError, match=r"enc\.pt: \d+ model weights missing .*encoder_only"):
        load_init(create_net("unet", **SMALL), tmp_path / "enc.pt")
    with pytest.raises(
        CheckpointError, match=r"encoder\.blocks\.0\.conv1\.conv\.weight has shape .*in_channels"
    ):
        load_init(
            create_net("unet", in_channels=3, **SMALL), tmp_path / "enc.pt", encoder_only=True
        )
