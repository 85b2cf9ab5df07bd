"""A guidance of your own in `generate` (`SamplingSettings(guidance=...)`): one equal to CFG
gives the built-in's latents bit for bit, with ControlNets too; a decaying CFG changes them; a
guidance off the contract is a one-line ValueError naming it."""

from dataclasses import replace

import pytest
import torch

from pilot.diffusion.control import Control
from pilot.diffusion.guidance import CFGDenoiser
from pilot.diffusion.pipeline import Request, SamplingSettings, generate_latents
from pilot.models.controlnet import ControlNet

SETTINGS = SamplingSettings(sampler="euler_ancestral", schedule="karras", steps=3, cfg=5.0)


def request(**kwargs) -> Request:
    args = dict(prompts=["a red wall", "(blue:1.2) fog"], seeds=[3, 4], width=32, height=24)
    return Request(**{**args, **kwargs})


def my_cfg(denoiser, cfg):
    """Classifier-free guidance written out: one model call on [uncond, cond] halves."""

    def guided(x, sigma, *, context, uncond_context, **kwargs):
        sigma = torch.as_tensor(sigma, device=x.device).expand(x.shape[0])
        out = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                       context=torch.cat([uncond_context, context]), **kwargs)  # fmt: skip
        uncond, cond = out.chunk(2)
        return uncond + cfg * (cond - uncond)

    return guided


def decaying_cfg(denoiser, cfg, *, sigmas):
    """CFG falling linearly in sigma, from `cfg` at the first step to 1 at sigma 0."""
    top = float(sigmas[0])

    def guided(x, sigma, **cond):
        return CFGDenoiser(denoiser, 1 + (cfg - 1) * sigma / top)(x, sigma, **cond)

    return guided


@pytest.fixture(scope="module")
def controls(tiny_sd):
    """Two ControlNets with non-zero residuals: one always on, one in guess mode for a window."""
    torch.manual_seed(7)
    net = ControlNet.from_unet(tiny_sd.unet, hint_channels=(16, 32)).eval()  # /2: the tiny VAE
    with torch.no_grad():
        for p in [*net.controlnet_down_blocks.parameters(), *net.controlnet_mid_block.parameters()]:
            p.normal_(0, 0.3)
    image = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(1))
    return [
        Control(net, image, scale=0.8),
        Control(net, image[:1], scale=0.5, start=0.3, end=0.9, guess_mode=True),
    ]


def test_a_guidance_equal_to_cfg_gives_the_built_in_latents(tiny_sd, controls):
    mask = (torch.arange(32) > 12).float().expand(1, 1, 24, 32)
    init = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    cases = [
        (request(), ()),
        (request(), controls),
        (request(init_images=init, strength=0.7, mask=mask), controls),
    ]
    for req, ctl in cases:
        built_in = generate_latents(tiny_sd, req, SETTINGS, controls=ctl)
        own = generate_latents(tiny_sd, req, replace(SETTINGS, guidance=my_cfg), controls=ctl)
        assert torch.equal(own, built_in)
    assert not torch.equal(built_in, generate_latents(tiny_sd, req, SETTINGS))  # controls act


def test_a_decaying_cfg_changes_the_image_and_gets_the_sigmas_run(tiny_sd, controls):
    seen = []

    def recording(denoiser, cfg, *, sigmas):
        seen.append(torch.as_tensor(sigmas).clone())
        return decaying_cfg(denoiser, cfg, sigmas=sigmas)

    settings = replace(SETTINGS, guidance=recording)
    built_in = generate_latents(tiny_sd, request(), SETTINGS, controls=controls)
    decayed = generate_latents(tiny_sd, request(), settings, controls=controls)
    assert torch.isfinite(decayed).all() and not torch.equal(decayed, built_in)
    init = torch.rand(2, 3, 24, 32)
    generate_latents(tiny_sd, request(init_images=init, strength=0.7), settings)
    assert [len(s) for s in seen] == [4, 3]  # img2img: the sliced grid the sampler runs
    assert torch.equal(seen[1], seen[0][1:])


def test_at_cfg_1_a_guidance_sees_both_halves_and_a_cfg_subclass_one(tiny_sd, controls):
    """ControlNets are told the layout: [uncond, cond] halves at every step for a guidance of
    your own (cond + 1 * (cond - uncond): the built-in's cond-only call up to rounding), the
    built-in's for a subclass of `CFGDenoiser`."""

    class MyCFG(CFGDenoiser):
        """`CFGDenoiser` as a class of your own (not the built-in: checked as yours are)."""

    settings = replace(SETTINGS, cfg=1.0)
    built_in = generate_latents(tiny_sd, request(), settings, controls=controls)
    for guidance in (MyCFG, my_cfg, decaying_cfg):
        own = generate_latents(tiny_sd, request(), replace(settings, guidance=guidance),
                               controls=controls)  # fmt: skip
        if guidance is MyCFG:
            assert torch.equal(own, built_in)
        else:
            assert (own - built_in).abs().max() <= 1e-6 * built_in.abs().max()  # float32


def test_a_class_taking_rescale_gets_it(tiny_sd):
    class MyCFG(CFGDenoiser):
        """`CFGDenoiser` as a class of your own (not the built-in: checked as yours are)."""

    settings = replace(SETTINGS, rescale=0.7)
    built_in = generate_latents(tiny_sd, request(), settings)
    own = generate_latents(tiny_sd, request(), replace(settings, guidance=MyCFG))
    assert torch.equal(own, built_in)
    assert not torch.equal(built_in, generate_latents(tiny_sd, request(), SETTINGS))
    with pytest.raises(ValueError, match=r"^guidance my_cfg takes no rescale \(got rescale=0.7\)$"):
        replace(SETTINGS, guidance=my_cfg, rescale=0.7)


def bad_shape(denoiser, cfg):
    """Forgets to split the halves: returns (2B, ...)."""
    return lambda x, sigma, *, context, uncond_context: denoiser(
        torch.cat([x, x]), torch.cat([sigma, sigma]), context=torch.cat([uncond_context, context])
    )


def cond_only(denoiser, cfg):
    """Calls the model on the conditional items alone, at any cfg."""
    return lambda x, sigma, *, context, uncond_context: denoiser(x, sigma, context=context)


def no_uncond(denoiser, cfg):
    return lambda x, sigma, *, context: denoiser(x, sigma, context=context)


def one_argument(denoiser):
    return denoiser


@pytest.mark.parametrize(
    "guidance, cfg, match",
    [
        (bad_shape, 5.0, r"guidance bad_shape: its denoiser returned shape \(4, 4, 12, 16\) for "
         r"x of shape \(2, 4, 12, 16\): expected the guided estimate, shaped like x"),
        (cond_only, 5.0, "guidance cond_only called the model denoiser on 2 items for a batch of "
         r"2: with ControlNets it must call it on \[uncond, cond\] halves \(4 items\), the "
         "layout they were told$"),
        (cond_only, 1.0, "guidance cond_only called the model denoiser on 2 items for a batch of "
         r"2: with ControlNets it must call it on \[uncond, cond\] halves \(4 items\), the "
         "layout they were told$"),
        (no_uncond, 5.0, "guidance no_uncond returned function, not a denoiser guided"),
        (lambda denoiser, cfg: 3, 5.0, "guidance <lambda> returned int, not a denoiser"),
    ],
)  # fmt: skip
def test_a_guidance_off_the_contract_is_named_in_one_line(tiny_sd, controls, guidance, cfg, match):
    settings = replace(SETTINGS, guidance=guidance, cfg=cfg)
    with pytest.raises(ValueError, match=f"^{match}") as e:
        generate_latents(tiny_sd, request(), settings, controls=controls)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "guidance, match",
    [
        (one_argument, "guidance one_argument does not take the arguments of guidance.denoiser, "
         "cfg, ., rescale, sigmas. -> denoiser: too many positional arguments"),
        ("cfg", "guidance='cfg': expected a function or class guidance"),
    ],
)  # fmt: skip
def test_a_guidance_of_another_signature_is_refused_with_the_settings(guidance, match):
    with pytest.raises(ValueError, match=f"^{match}") as e:
        SamplingSettings(guidance=guidance)
    assert "\n" not in str(e.value)
