"""Animation test models: a random tiny UNet over an analytic identity VAE, and small shots.

The feedback loop's consistency depends on the VAE round trip: a random VAE maps an image to an
unrelated one, so no loop can hold a frame steady through it. `identity_vae` sets the weights
of a real `AutoencoderKL` (factor 1, 4 latent channels) so that decode(encode(x)) = x up to
~1e-4: the residual branches (resnet conv2, attention out) are zero, and the one GroupNorm on
the main path sees each colour channel twice with opposite signs and a tiny scale, so its mean
is exactly 0 and its variance far below its epsilon: it becomes a fixed linear map, undone by
the next conv. The UNet stays random: the test measures the loop, not a trained model.
"""

from dataclasses import replace

import pytest
import torch

from pilot.models.clip import CLIPTextModel
from pilot.models.tokenizer import CLIPTokenizer
from pilot.models.unet import UNET_PRESETS, UNet
from pilot.models.vae import AutoencoderKL, VAEConfig
from pilot.weights.loaders import StableDiffusion

SCALE, SHIFT = 1e-5, 20.0  # channel scale before the GroupNorm; SiLU works at SHIFT +- 1


def _set_identity_path(conv_in, norm, conv_out, n_in: int, n_out: int) -> None:
    """conv_in: n_in channels -> (s x, -s x) pairs; norm + SiLU linear; conv_out: pairs -> n_out."""
    for conv in (conv_in, conv_out):
        conv.weight.zero_()
        conv.bias.zero_()
    for c in range(min(n_in, 3)):
        conv_in.weight[2 * c, c, 1, 1] = SCALE
        conv_in.weight[2 * c + 1, c, 1, 1] = -SCALE
    eps = norm.eps
    norm.weight.fill_(eps**0.5 / SCALE)  # undoes (s x) / sqrt(eps)
    norm.bias.fill_(SHIFT)
    for c in range(min(n_out, 3)):
        conv_out.weight[c, 2 * c, 1, 1] = 1.0
        conv_out.bias[c] = -SHIFT


@torch.no_grad()
def identity_vae() -> AutoencoderKL:
    """An `AutoencoderKL` with latents = images in [-1, 1] (channel 4 zero), factor 1."""
    cfg = VAEConfig(block_out_channels=(6,), layers_per_block=1, norm_num_groups=3,
                    scaling_factor=1.0, sample_size=64)  # fmt: skip
    vae = AutoencoderKL(cfg).eval()
    for name, p in vae.named_parameters():
        if "conv2" in name or "to_out" in name:
            p.zero_()
    enc, dec = vae.encoder, vae.decoder
    _set_identity_path(enc.conv_in, enc.conv_norm_out, enc.conv_out, 3, 8)  # mean, logvar 0
    _set_identity_path(dec.conv_in, dec.conv_norm_out, dec.conv_out, 4, 3)
    for conv in (vae.quant_conv, vae.post_quant_conv):
        conv.weight.copy_(torch.eye(conv.weight.shape[0])[:, :, None, None])
        conv.bias.zero_()
    return vae


def make_animation_sd(seed: int = 0) -> StableDiffusion:
    """Random tiny UNet (three levels, attention only at the lowest) over `identity_vae`."""
    from tests.conftest import tiny_text_config

    torch.manual_seed(seed)
    unet = replace(UNET_PRESETS["tiny"], block_out_channels=(16, 16, 32),
                   attention=(False, False, True), num_heads=4, norm_num_groups=8)  # fmt: skip
    return StableDiffusion(
        unet=UNet(unet).eval(),
        vae=identity_vae(),
        text_encoder=CLIPTextModel(tiny_text_config()).eval(),
        tokenizer=CLIPTokenizer.default(),
        prediction_type="epsilon",
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def animation_sd() -> StableDiffusion:
    return make_animation_sd()


@pytest.fixture(scope="session")
def small_shot(tmp_path_factory):
    """A 24-frame 32x32 procedural fly-through of hatched walls, as a shot folder."""
    from pilot.scenes.procedural import fly_through_shot
    from pilot.scenes.shot import Shot

    root = tmp_path_factory.mktemp("shots") / "fly"
    fly_through_shot(root, seed=1, n_frames=24, width=32, height=32)
    return Shot(root)


@pytest.fixture(scope="session")
def model_folder(animation_sd, tmp_path_factory):
    """`animation_sd` saved as a pipeline folder, for `pilot animate --model`."""
    from pilot.weights.save import save_pipeline

    return save_pipeline(animation_sd, tmp_path_factory.mktemp("models") / "anim-sd")


def make_controlnet(unet, folder, **unet_changes):
    """A tiny ControlNet for `unet` (hint encoder at full size: the test VAE has factor 1)."""
    from pilot.models.controlnet import ControlNet, ControlNetConfig
    from pilot.weights.save import save_controlnet

    cfg = ControlNetConfig(unet=replace(unet.cfg, **unet_changes), hint_channels=(16,))
    net = ControlNet(cfg).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "zero" in name or "controlnet_" in name or "conv_out" in name:
                p.copy_(torch.randn_like(p) * 0.2)
    return save_controlnet(net, folder)


@pytest.fixture(scope="session")
def controlnet_folder(animation_sd, tmp_path_factory):
    """A random tiny ControlNet folder for `animation_sd`."""
    return make_controlnet(animation_sd.unet, tmp_path_factory.mktemp("cn") / "depth")


def controlnet_with_residuals(sd: StableDiffusion):
    """A tiny ControlNet for `sd`'s UNet whose zero convolutions are not zero (seed 5), so
    control changes the frames (`test_frame_batching`, `test_feedback_guidance`)."""
    from pilot.models.controlnet import ControlNet, ControlNetConfig

    torch.manual_seed(5)
    net = ControlNet(ControlNetConfig(unet=sd.unet.cfg, hint_channels=(16,))).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "zero" in name or "controlnet_" in name or "conv_out" in name:
                p.copy_(torch.randn_like(p) * 0.2)
    return net
