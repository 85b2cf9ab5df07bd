"""Parity of pilot's ControlNet and ControlDenoiser with diffusers' ControlNetModel, the UNet it
controls, MultiControlNetModel and the ControlNet pipeline's guess mode, random weights, fp32.

Random weights (`randomize_`) redraw the zero convolutions too, so residuals are not zero.
"""

import dataclasses
import gc

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from test_unet_vae_parity import TINY_VARIANTS, build_pair, max_rel_error

from pilot.diffusion.control import Control, controlled_cfg
from pilot.diffusion.denoisers import EpsDenoiser
from pilot.diffusion.schedules import DiscreteSchedule, get_sigmas_karras
from pilot.models.controlnet import CONTROLNET_PRESETS, ControlNet, ControlNetConfig
from pilot.models.unet import UNet

TOL = 1e-5


def controlnet_pair(cfg: ControlNetConfig, seed: int = 0):
    return build_pair(ControlNetModel, ControlNet, cfg.to_diffusers(), cfg, seed)


def unet_pair(cfg: ControlNetConfig, seed: int = 0):
    return build_pair(UNet2DConditionModel, UNet, cfg.unet.to_diffusers(), cfg.unet, seed)


def inputs(cfg: ControlNetConfig, batch: int, h: int, w: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.unet.in_channels, h, w, generator=g)
    context = torch.randn(batch, 77, cfg.unet.cross_attention_dim, generator=g)
    image = torch.rand(batch, cfg.conditioning_channels, 8 * h, 8 * w, generator=g)
    t = torch.linspace(1, 999, batch).round().long()
    return x, t, context, image


def compare(cfg, ours, ref, unets, batch, h, w, guess_mode) -> tuple[float, float]:
    """Max rel errors of (residuals, controlled UNet output) against diffusers."""
    x, t, context, image = inputs(cfg, batch, h, w)
    with torch.no_grad():
        down, mid = ours(x, t, context, image, scale=0.8, guess_mode=guess_mode)
        ref_down, ref_mid = ref(
            x, t, context, image, conditioning_scale=0.8, guess_mode=guess_mode, return_dict=False
        )
        errors = [max_rel_error(a, b) for a, b in zip(down, ref_down, strict=True)]
        res_err = max(errors + [max_rel_error(mid, ref_mid)])
        if unets is None:
            return res_err, 0.0
    return res_err, controlled_unet_error(*unets, x, t, context, down, mid, ref_down, ref_mid)


@torch.no_grad()
def controlled_unet_error(unet, ref_unet, x, t, context, down, mid, ref_down, ref_mid) -> float:
    """Max rel error of pilot's UNet with our residuals against diffusers' with theirs."""
    out = unet(x, t, context, down_residuals=down, mid_residual=mid)
    expected = ref_unet(
        x,
        t,
        encoder_hidden_states=context,
        down_block_additional_residuals=ref_down,
        mid_block_additional_residual=ref_mid,
    ).sample
    return max_rel_error(out, expected)


TINY = {name: ControlNetConfig(unet=u) for name, u in TINY_VARIANTS.items()}
TINY["tiny-bgr-4ch-hint"] = ControlNetConfig(
    unet=TINY_VARIANTS["tiny"], conditioning_channels=4, hint_channels=(8, 16, 32, 64)
)
TINY["tiny-shuffle"] = ControlNetConfig(unet=TINY_VARIANTS["tiny"], global_pool=True)


@pytest.mark.parametrize("preset", sorted(CONTROLNET_PRESETS))
def test_state_dict_keys_shapes_and_config(preset):
    cfg = CONTROLNET_PRESETS[preset]
    with torch.device("meta"):
        ref, ours = ControlNetModel(**cfg.to_diffusers()), ControlNet(cfg)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    assert ControlNetConfig.from_diffusers(dict(ref.config)) == cfg


@pytest.mark.parametrize("variant", sorted(TINY))
@pytest.mark.parametrize("guess_mode", [False, True], ids=["normal", "guess"])
def test_controlnet_and_controlled_unet_parity_tiny(variant, guess_mode):
    cfg = TINY[variant]
    if variant == "tiny-bgr-4ch-hint":
        cfg = dataclasses.replace(cfg, channel_order="bgr")
    ours, ref = controlnet_pair(cfg)
    unets = unet_pair(cfg, seed=1) if variant != "tiny-bgr-4ch-hint" else None
    res_err, out_err = compare(cfg, ours, ref, unets, 2, 5, 7, guess_mode)
    assert res_err <= TOL and out_err <= TOL


def test_controlnet_and_controlled_unet_parity_sd15():
    """SD 1.5 shapes at an 8x8 latent; the two model pairs are built one after the other (the
    ControlNet pair is freed first) to keep peak memory near one UNet pair's 3.4 GB."""
    cfg = CONTROLNET_PRESETS["sd15"]
    ours, ref = controlnet_pair(cfg)
    res_err, _ = compare(cfg, ours, ref, None, 1, 8, 8, False)
    x, t, context, image = inputs(cfg, 1, 8, 8)
    with torch.no_grad():
        down, mid = ref(x, t, context, image, conditioning_scale=0.8, return_dict=False)
    del ours, ref
    gc.collect()
    unets = unet_pair(cfg, seed=1)
    out_err = controlled_unet_error(*unets, x, t, context, down, mid, down, mid)
    del unets
    gc.collect()
    assert res_err <= TOL and out_err <= TOL


def diffusers_cfg_step(unet, multi, x, sigma, cond, uncond, images, scales, guess_mode, schedule):
    """One CFG step as diffusers' StableDiffusionControlNetPipeline computes it (Euler scaling)."""
    c_in = 1 / (sigma**2 + 1) ** 0.5
    t = schedule.sigma_to_t(sigma.reshape(1))
    latent_in = torch.cat([x, x]) * c_in
    prompt_embeds = torch.cat([uncond, cond])
    if guess_mode:  # control the conditional batch only, zeros for the unconditional one
        control_in, control_embeds, cond_images = x * c_in, cond, images
    else:
        control_in, control_embeds = latent_in, prompt_embeds
        cond_images = [torch.cat([im, im]) for im in images]
    down, mid = multi(
        control_in,
        t,
        encoder_hidden_states=control_embeds,
        controlnet_cond=cond_images,
        conditioning_scale=scales,
        guess_mode=guess_mode,
        return_dict=False,
    )
    if guess_mode:
        down = [torch.cat([torch.zeros_like(d), d]) for d in down]
        mid = torch.cat([torch.zeros_like(mid), mid])
    eps = unet(
        latent_in,
        t,
        encoder_hidden_states=prompt_embeds,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample
    eps_uncond, eps_cond = eps.chunk(2)
    return x - sigma * (eps_uncond + 7.5 * (eps_cond - eps_uncond))


@pytest.mark.parametrize("guess_mode", [False, True], ids=["normal", "guess"])
def test_multi_controlnet_cfg_step_matches_diffusers(guess_mode):
    """Two ControlNets with their own images and scales under CFG = MultiControlNetModel."""
    cfg = TINY["tiny"]
    (ours_a, ref_a), (ours_b, ref_b) = controlnet_pair(cfg, 2), controlnet_pair(cfg, 3)
    unet, ref_unet = unet_pair(cfg, seed=4)
    schedule = DiscreteSchedule.scaled_linear()
    sigmas = get_sigmas_karras(4, schedule.sigma_min, schedule.sigma_max)
    x, _, cond, image_a = inputs(cfg, 1, 6, 6, seed=5)
    _, _, uncond, image_b = inputs(cfg, 1, 6, 6, seed=6)
    controls = [
        Control(ours_a, image_a, scale=0.7, guess_mode=guess_mode),
        Control(ours_b, image_b, scale=1.3, guess_mode=guess_mode),
    ]
    denoiser = controlled_cfg(EpsDenoiser(unet, schedule), controls, sigmas, 7.5)
    multi = MultiControlNetModel([ref_a, ref_b])
    for sigma in sigmas[:2]:
        with torch.no_grad():
            ours = denoiser(x, sigma, context=cond, uncond_context=uncond)
            expected = diffusers_cfg_step(
                ref_unet, multi, x, sigma, cond, uncond, [image_a, image_b], [0.7, 1.3],
                guess_mode, schedule,
            )  # fmt: skip
        assert max_rel_error(ours, expected) <= TOL
