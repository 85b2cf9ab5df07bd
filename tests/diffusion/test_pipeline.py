"""txt2img / img2img / inpainting behaviour of the pipeline on a tiny random model."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from pilot.diffusion.pipeline import (
    Request,
    SamplingSettings,
    decode_latents,
    encode_images,
    generate,
    generate_latents,
    img2img_sigmas,
)

SETTINGS = SamplingSettings(sampler="euler_ancestral", schedule="karras", steps=4, cfg=5.0)
SIZE = dict(width=32, height=24)


def request(**kwargs) -> Request:
    args = dict(prompts=["a red wall", "(blue:1.2) fog"], seeds=[3, 4], **SIZE)
    return Request(**{**args, **kwargs})


@pytest.fixture(scope="module")
def init_images() -> torch.Tensor:
    return torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))


def test_txt2img_shapes_range_and_callback(tiny_sd):
    steps = []
    images = generate(tiny_sd, request(), SETTINGS, callback=steps.append)
    assert images.shape == (2, 3, 24, 32) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0
    assert [s["i"] for s in steps] == [0, 1, 2, 3]
    assert set(steps[0]) == {"i", "x", "sigma", "denoised"}


@pytest.mark.parametrize("sampler", ["ddim", "euler", "heun", "dpmpp_2m_sde", "dpmpp_sde", "lcm"])
def test_every_sampler_runs(tiny_sd, sampler):
    settings = SamplingSettings(sampler=sampler, schedule="leading", steps=3, cfg=3.0)
    latents = generate_latents(tiny_sd, request(), settings)
    assert latents.shape == (2, 4, 12, 16) and torch.isfinite(latents).all()


def test_same_seed_is_bit_identical_and_items_reproduce_in_any_batch(tiny_sd):
    a = generate_latents(tiny_sd, request(), SETTINGS)
    b = generate_latents(tiny_sd, request(), SETTINGS)
    assert torch.equal(a, b)
    alone = generate_latents(tiny_sd, request(prompts=["(blue:1.2) fog"], seeds=[4]), SETTINGS)
    # Equal up to batch-size-dependent float rounding of the convolutions.
    assert (alone[0] - a[1]).abs().max() <= 1e-5 * a[1].abs().max()


def test_long_prompt_and_negative_prompt(tiny_sd):
    long = " ".join(["brick"] * 90)
    latents = generate_latents(
        tiny_sd, request(prompts=[long, "a cat"], negative_prompts=["blurry", ""]), SETTINGS
    )
    assert torch.isfinite(latents).all()


def test_img2img_strength_zero_is_the_vae_round_trip(tiny_sd, init_images):
    latents = generate_latents(tiny_sd, request(init_images=init_images, strength=0.0), SETTINGS)
    assert torch.equal(latents, encode_images(tiny_sd, init_images))
    images = generate(tiny_sd, request(init_images=init_images, strength=0.0), SETTINGS)
    assert torch.equal(images, decode_latents(tiny_sd, latents))


@pytest.mark.parametrize("strength", [0.0, 0.2])
def test_img2img_without_steps_is_the_round_trip_with_controls_too(tiny_sd, init_images, strength):
    """int(4 * 0.2) = 0 steps: nothing is sampled, so a ControlNet changes nothing."""
    from pilot.diffusion.control import Control

    controls = [Control(other_controlnet(tiny_sd), torch.rand(1, 3, 24, 32))]
    req = request(init_images=init_images, strength=strength)
    plain = generate(tiny_sd, req, SETTINGS)
    assert torch.equal(generate(tiny_sd, req, SETTINGS, controls=controls), plain)


def test_img2img_strength_one_equals_txt2img(tiny_sd, init_images):
    txt = generate_latents(tiny_sd, request(), SETTINGS)
    img = generate_latents(tiny_sd, request(init_images=init_images, strength=1.0), SETTINGS)
    assert torch.equal(txt, img)


def test_img2img_partial_strength_stays_near_the_init(tiny_sd, init_images):
    init = encode_images(tiny_sd, init_images)
    low = generate_latents(tiny_sd, request(init_images=init_images, strength=0.3), SETTINGS)
    high = generate_latents(tiny_sd, request(init_images=init_images, strength=0.9), SETTINGS)
    assert (low - init).abs().mean() < (high - init).abs().mean()


def test_img2img_sigmas_slice_the_tail():
    sigmas = torch.arange(10, -1, -1.0)  # 10 steps
    assert torch.equal(img2img_sigmas(sigmas, 0.5), sigmas[5:])
    assert torch.equal(img2img_sigmas(sigmas, 0.0), sigmas[-1:])
    assert torch.equal(img2img_sigmas(sigmas, 1.0), sigmas)


def test_inpainting_keeps_the_unmasked_region(tiny_sd, init_images):
    mask = torch.zeros(1, 1, 24, 32)
    mask[..., 8:16, 8:24] = 1
    req = request(init_images=init_images, strength=1.0, mask=mask)
    latents = generate_latents(tiny_sd, req, SETTINGS)
    init = encode_images(tiny_sd, init_images)
    keep = torch.ones(1, 1, 12, 16, dtype=torch.bool)
    keep[..., 3:9, 3:13] = False  # latent cells touched by the mask
    assert torch.allclose(latents.masked_select(keep), init.masked_select(keep), atol=1e-6)
    assert not torch.allclose(latents[..., 4:8, 4:12], init[..., 4:8, 4:12], atol=1e-2)


def test_vae_tiling_whole_tile_is_exact_and_small_tiles_are_close(tiny_sd):
    latents = torch.randn(1, 4, 24, 40, generator=torch.Generator().manual_seed(1))
    whole = decode_latents(tiny_sd, latents)
    assert torch.equal(decode_latents(tiny_sd, latents, tile=80), whole)
    tiled = decode_latents(tiny_sd, latents, tile=32)  # 16 latent px tiles with overlap
    assert (tiled - whole).abs().mean() < 0.05


@pytest.mark.parametrize("tile", [0, 1, 3, -2])
def test_vae_tiles_are_positive_multiples_of_the_vae_factor(tiny_sd, monkeypatch, tile):
    """The tiny VAE's factor is 2: tiles are whole latent pixels, never silently rounded."""
    assert tiny_sd.vae.cfg.downsample_factor == 2
    latents, images = torch.zeros(1, 4, 12, 16), torch.zeros(1, 3, 24, 32)
    match = f"VAE tile {tile}: must be a positive multiple of the VAE factor 2"
    with pytest.raises(ValueError, match=match):
        decode_latents(tiny_sd, latents, tile=tile)
    with pytest.raises(ValueError, match=match):
        encode_images(tiny_sd, images, tile=tile)
    monkeypatch.setattr(type(tiny_sd.text_encoder), "forward", lambda *a, **k: pytest.fail())
    with pytest.raises(ValueError, match=match):  # before any model runs
        generate(tiny_sd, request(), SETTINGS, vae_tile=tile)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vae_upcast": "bogus"}, "unknown VAE upcast rule 'bogus'"),
        ({"vae_batch": 0}, "VAE batch: decode >= 1 image per call .None: all at once., got 0"),
        ({"decoder": "f8"}, "decoder downsample_factor 8, but the model's VAE has 2"),
    ],
)
def test_decode_settings_are_checked_before_sampling(tiny_sd, monkeypatch, kwargs, match):
    """A bad decode setting fails before the first step, not after the whole sampling run; a
    preview decoder of another factor would return images of another size."""
    from pilot.models.preview import PreviewConfig, PreviewDecoder

    if kwargs.get("decoder") == "f8":
        kwargs = {"decoder": PreviewDecoder(PreviewConfig(channels=8, upsamples=3, blocks=1))}
        with pytest.raises(ValueError, match=match):
            decode_latents(tiny_sd, torch.zeros(1, 4, 4, 4), decoder=kwargs["decoder"])
    monkeypatch.setattr(type(tiny_sd.text_encoder), "forward", lambda *a, **k: pytest.fail())
    with pytest.raises(ValueError, match=match):
        generate(tiny_sd, request(), SETTINGS, **kwargs)


def test_vae_slicing_matches_the_whole_batch(tiny_sd, monkeypatch):
    """encode / decode with `batch=2` on 3 images: VAE calls of 2 and 1 images, the same
    latents and images as one call (float rounding), with and without tiles."""
    vae = tiny_sd.vae
    images = torch.rand(3, 3, 24, 32, generator=torch.Generator().manual_seed(2))
    latents = torch.randn(3, 4, 3, 4, generator=torch.Generator().manual_seed(3))
    whole_latents = encode_images(tiny_sd, images)
    whole_images = decode_latents(tiny_sd, latents)
    calls = []
    for name in ("encode", "decode"):
        plain = getattr(type(vae), name)
        monkeypatch.setattr(vae, name, lambda x, plain=plain: calls.append(len(x)) or plain(vae, x))
    assert torch.allclose(encode_images(tiny_sd, images, batch=2), whole_latents, atol=1e-5)
    assert torch.allclose(decode_latents(tiny_sd, latents, batch=2), whole_images, atol=1e-6)
    assert calls == [2, 1, 2, 1]
    calls.clear()
    tiled = decode_latents(tiny_sd, latents, tile=4)  # tiles of 2 latent px: 4 per image
    assert torch.allclose(decode_latents(tiny_sd, latents, tile=4, batch=1), tiled, atol=1e-6)
    assert calls == [3] * 4 + [1] * 12
    with pytest.raises(ValueError, match="got 0"):
        decode_latents(tiny_sd, latents, batch=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(width=0), r"image size 0x24 \(WxH\) must be positive"),
        (dict(strength=1.5), "strength must be in"),
        (dict(seeds=[1]), "1 seeds for 2 prompts"),
        (dict(prompts=[], seeds=[]), "at least one prompt"),
        (dict(mask=torch.ones(1, 1, 24, 32)), "mask needs init images"),
        (dict(init_images=torch.rand(2, 3, 24, 32), mask=torch.ones(1, 1, 16, 32)), "mask size"),
        (dict(init_images=torch.rand(2, 3, 0, 32)), "must be positive"),
        (dict(init_images=torch.rand(3, 3, 24, 32)), r"init images must be \(B=2"),
        (
            dict(init_images=torch.rand(2, 3, 24, 32), mask=torch.ones(3, 1, 24, 32)),
            r"mask must be \(B=2 or 1, 1, H, W\), got \(3, 1, 24, 32\)",
        ),
        (
            dict(init_images=torch.full((2, 3, 24, 32), 255, dtype=torch.uint8)),
            r"init images of dtype torch.uint8: expected float in \[0, 1\]",
        ),
        (
            dict(init_images=torch.rand(2, 3, 24, 32), mask=torch.ones(1, 1, 24, 32).bool()),
            r"mask of dtype torch.bool: expected float in \[0, 1\]",
        ),
        # mistakes that used to pass silently or fail with messages naming nothing
        (dict(prompts="a red wall", seeds=[1]), "prompts is a str: pass a list of strings"),
        (dict(negative_prompts="blurry"), "negative_prompts is a str: pass a list of strings"),
        (
            dict(prompts=["a"], seeds=0),
            r"seeds=0: pass a list, one seed per prompt \(seeds=\[0\]\)",
        ),
        (dict(seeds=np.int64(3)), r"seeds=(np.int64\()?3\)?: pass a list"),  # any numpy
        (dict(seeds=[1, 2**64]), r"seed 18446744073709551616: expected an int in \[-2\*\*63"),
        (dict(seeds=[1, 2.5]), "seed 2.5: expected an int"),
        (dict(strength=0.5), "strength 0.5 needs init images"),
        (
            dict(init_images=torch.rand(2, 3, 24, 32) * 2 - 1),
            r"init images hold values in .*: expected \[0, 1\] \(images in \[-1, 1\]: x / 2",
        ),
        (
            dict(init_images=torch.rand(2, 3, 24, 32) * 255),
            r"init images hold values in .*: expected \[0, 1\] \(8-bit values: x / 255\)",
        ),
        (
            dict(init_images=torch.rand(2, 3, 24, 32), mask=torch.full((1, 1, 24, 32), 255.0)),
            r"mask hold values in \[255, 255\]",
        ),
    ],
)
def test_bad_requests(kwargs, match):
    with pytest.raises(ValueError, match=match):
        request(**kwargs)


def test_sizes_are_checked_against_the_models_vae_factor(tiny_sd, init_images):
    # The tiny VAE downsamples 2x: 30x26 is a valid size for it (not a multiple of SD's 8).
    assert tiny_sd.vae.cfg.downsample_factor == 2
    settings = replace(SETTINGS, steps=1)
    images = generate(tiny_sd, request(prompts=["fog"], seeds=[0], width=30, height=26), settings)
    assert images.shape == (1, 3, 26, 30)
    odd = request(init_images=init_images[:, :, :, :31].contiguous())  # 31 px wide
    with pytest.raises(
        ValueError, match=r"image size 31x24 \(WxH\) must be multiples of the VAE factor 2"
    ):
        generate(tiny_sd, odd, settings)


def test_init_images_slightly_off_0_1_pass():
    """A bicubic resize overshoots [0, 1] a little: that is clamped, not refused."""
    images = torch.rand(2, 3, 24, 32) * 1.2 - 0.1
    assert request(init_images=images, strength=0.5).init_images is images


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampler="eulr"), "unknown sampler 'eulr'; valid: .*euler_ancestral"),
        (dict(schedule="cosine"), "unknown schedule 'cosine'; valid: .*karras"),
        (dict(steps=0), "steps must be"),
        (dict(steps=4.0), r"steps must be an int >= 1, got 4.0"),  # was a linspace error
        (dict(cfg="3"), r"cfg='3': expected a number"),  # was an error at the first step
        (
            dict(sampler="dpmpp_2m", eta=0.5),
            "'dpmpp_2m' takes no eta .*with eta: ddim, euler_ancestral, dpmpp_2m_sde, dpmpp_sde$",
        ),
        (dict(sampler="lcm", eta=0.0), "'lcm' takes no eta"),
        (dict(rescale=1.5), r"rescale must be in \[0, 1\], got 1.5"),
        (dict(clip_skip=-1), r"clip_skip must be >= 0 \(0: the last layer\), got -1"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingSettings(**kwargs)


def test_explicit_sigmas_are_checked_and_may_be_a_list(tiny_sd):
    """A grid that increases or repeats used to sample NaN or noise with no error."""
    settings = SamplingSettings(sampler="euler", steps=2, cfg=1.0)
    grid = [14.6, 1.0, 0.0]
    listed = generate_latents(tiny_sd, request(), settings, sigmas=grid)
    assert torch.equal(
        listed, generate_latents(tiny_sd, request(), settings, sigmas=torch.tensor(grid))
    )
    for bad, match in [
        ([0.0, 1.0, 14.6], "expected finite, decreasing"),
        ([14.6, 1.0, 1.0, 0.0], "expected finite, decreasing"),
        ([14.6, float("nan"), 0.0], "expected finite, decreasing"),
        ([1.0, -1.0], "expected finite, decreasing"),
        ([[14.6, 1.0, 0.0]], r"sigmas of shape \(1, 3\): expected \(steps \+ 1,\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            generate_latents(tiny_sd, request(), settings, sigmas=bad)


def test_eta_reaches_every_sampler_that_takes_it(tiny_sd):
    """`eta` is accepted exactly by the samplers with an eta parameter, and changes the image."""
    from pilot.diffusion.samplers import samplers_with

    assert samplers_with("eta") == ["ddim", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde"]
    for sampler in samplers_with("eta"):
        settings = SamplingSettings(sampler=sampler, steps=2, cfg=1.0)
        plain = generate_latents(tiny_sd, request(), settings)
        other = generate_latents(tiny_sd, request(), replace(settings, eta=0.5))
        assert not torch.equal(plain, other), sampler


def other_controlnet(tiny_sd, **changes):
    """A ControlNet for the tiny UNet with `changes` to its UNet config (another family)."""
    from pilot.models.controlnet import ControlNet
    from pilot.models.unet import UNet

    unet = UNet(replace(tiny_sd.unet.cfg, **changes)) if changes else tiny_sd.unet
    return ControlNet.from_unet(unet, hint_channels=(16, 32)).eval()  # /2 like the tiny VAE


@pytest.mark.parametrize(
    "net, images, match",
    [
        (
            dict(cross_attention_dim=64),
            1,
            "ControlNet controls.0. does not fit the model: cross_attention_dim: ControlNet 64 "
            "vs model 32",
        ),
        (dict(block_out_channels=(32, 32)), 1, "block_out_channels: ControlNet .32, 32. vs"),
        (dict(), 3, r"controls\[0\]: control image batch 3 for 2 prompts"),
    ],
)
def test_controls_that_do_not_fit_fail_before_any_model_runs(
    tiny_sd, monkeypatch, net, images, match
):
    from pilot.diffusion.control import Control

    monkeypatch.setattr(type(tiny_sd.text_encoder), "forward", lambda *a, **k: pytest.fail())
    control = Control(other_controlnet(tiny_sd, **net), torch.rand(images, 3, 24, 32))
    with pytest.raises(ValueError, match=match):
        generate(tiny_sd, request(), SETTINGS, controls=[control])


def test_control_images_off_0_1_are_refused_before_any_model_runs(tiny_sd, monkeypatch):
    """A 0..255 or uint8 control image used to steer with clamped (saturated) hint values."""
    from pilot.diffusion.control import Control

    monkeypatch.setattr(type(tiny_sd.text_encoder), "forward", lambda *a, **k: pytest.fail())
    net = other_controlnet(tiny_sd)
    for image, match in [
        (torch.rand(1, 3, 24, 32) * 255, r"controls\[0\]: control image hold values in .*255"),
        (torch.zeros(1, 3, 24, 32, dtype=torch.uint8), "dtype torch.uint8: expected float"),
    ]:
        with pytest.raises(ValueError, match=match):
            generate(tiny_sd, request(), SETTINGS, controls=[Control(net, image)])


def test_a_control_image_of_another_size_is_named(tiny_sd, monkeypatch):
    """23x31 used to pass: the hint encoder rounds it up to the latents and shifts the control."""
    from pilot.diffusion.control import Control

    monkeypatch.setattr(type(tiny_sd.text_encoder), "forward", lambda *a, **k: pytest.fail())
    net = other_controlnet(tiny_sd)
    for shape in [(23, 31), (48, 64)]:
        control = Control(net, torch.rand(1, 3, *shape))
        match = rf"controls\[0\]: control image of {shape[1]}x{shape[0]} \(WxH\) for a 32x24 image"
        with pytest.raises(ValueError, match=match):
            generate(tiny_sd, request(), SETTINGS, controls=[control])


def test_a_controlnet_with_another_downscale_is_named(tiny_sd):
    from pilot.diffusion.control import Control
    from pilot.models.controlnet import ControlNet

    control = Control(ControlNet.from_unet(tiny_sd.unet), torch.rand(1, 3, 24, 32))
    with pytest.raises(ValueError, match="controls.0. takes images 8x its latents, but the "):
        generate(tiny_sd, request(), SETTINGS, controls=[control])


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "euler_ancestral"])
@pytest.mark.parametrize(
    ("mode", "cfg"), [("txt2img", 1.0), ("txt2img", 5.0), ("img2img", 5.0), ("inpaint", 5.0)]
)
def test_sampling_never_reads_the_device(tiny_sd, init_images, monkeypatch, sampler, mode, cfg):
    """The models on the meta device, where reading a value raises as a GPU read would wait
    for the queued work: after the text and image encoders, the sampling loop only queues work
    (CFG, img2img's sliced grid, inpainting's blends included)."""
    import copy

    import pilot.diffusion.pipeline as pipeline

    meta = copy.deepcopy(tiny_sd).to("meta")
    width = meta.unet.cfg.cross_attention_dim
    context = torch.zeros(2, 77, width, device="meta")
    monkeypatch.setattr(pipeline, "encode_text", lambda *args, **kwargs: (context, context))
    latents = torch.zeros(2, 4, 12, 16, device="meta")
    monkeypatch.setattr(pipeline, "encode_images", lambda *args, **kwargs: latents)
    images = {} if mode == "txt2img" else {"init_images": init_images, "strength": 0.6}
    if mode == "inpaint":
        images["mask"] = (torch.arange(32) > 12).float().expand(1, 1, 24, 32)
    settings = SamplingSettings(sampler=sampler, steps=3, cfg=cfg)
    with torch.inference_mode():
        out = generate_latents(meta, request(**images), settings)
    assert out.device.type == "meta" and out.shape == (2, 4, 12, 16)


def test_a_sampler_and_a_schedule_of_your_own_plug_into_generate(tiny_sd):
    """Functions on the documented contracts go where the names go; a k-diffusion sampler
    (no `noise` keyword) works too."""
    from pilot.diffusion import DiscreteSchedule, get_sigmas_karras
    from pilot.diffusion.samplers import sample_euler

    def rho_3(n, schedule):
        return get_sigmas_karras(n, schedule.sigma_min, schedule.sigma_max, rho=3.0)

    def my_euler(denoiser, x, sigmas, *, extra_args=None, callback=None, noise=None):
        return sample_euler(denoiser, x, sigmas, extra_args=extra_args, callback=callback)

    def k_diffusion_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return sample_euler(model, x, sigmas, extra_args=extra_args, callback=callback)

    grid = rho_3(3, DiscreteSchedule.scaled_linear())
    named = generate_latents(tiny_sd, request(), SamplingSettings("euler", cfg=2.0), sigmas=grid)
    steps = []
    for sampler in (my_euler, k_diffusion_euler):
        settings = SamplingSettings(sampler, rho_3, steps=3, cfg=2.0)
        assert torch.equal(
            generate_latents(tiny_sd, request(), settings, callback=steps.append), named
        )
    assert len(steps) == 6
    with pytest.raises(ValueError, match="^sampler 'my_euler' takes no eta"):
        SamplingSettings(my_euler, eta=0.5)
    with pytest.raises(ValueError, match="expected finite, decreasing"):
        generate_latents(
            tiny_sd, request(), SamplingSettings("euler", lambda n, s: grid.flip(0), 3)
        )


def test_a_sampler_written_as_documented_runs_without_a_callback(tiny_sd, init_images):
    """`my_sampler(denoiser, x, sigmas, *, extra_args, callback, noise)`, keywords without
    defaults as the README writes it: `generate` used to leave `callback` out when none was
    given, a TypeError; txt2img, img2img (also at strength 0: no step) and with a callback."""
    from pilot.diffusion.samplers import sample_euler

    def my_euler(denoiser, x, sigmas, *, extra_args, callback, noise):
        return sample_euler(denoiser, x, sigmas, extra_args=extra_args, callback=callback)

    settings = SamplingSettings(my_euler, "karras", steps=3, cfg=2.0)
    named = generate_latents(tiny_sd, request(), replace(settings, sampler="euler"))
    assert torch.equal(generate_latents(tiny_sd, request(), settings), named)
    for strength in (0.5, 0.0):
        img2img = request(init_images=init_images, strength=strength)
        generate_latents(tiny_sd, img2img, settings)
    steps = []
    generate_latents(tiny_sd, request(), settings, callback=steps.append)
    assert [s["i"] for s in steps] == [0, 1, 2]


@pytest.mark.parametrize("returned", [4, 2])
def test_a_schedule_of_your_own_returning_another_length_is_named(tiny_sd, returned):
    """A schedule of 3 steps must return 4 sigmas; 2 used to run 1 step with no word (and 4
    for steps=2, 3 steps)."""

    def my_grid(n, schedule):
        return torch.linspace(schedule.sigma_max, 0, returned)

    settings = SamplingSettings("euler", my_grid, steps=3 if returned == 2 else 2, cfg=1.0)
    with pytest.raises(ValueError, match=r"^schedule my_grid returned sigmas of shape \(\d,\)"):
        generate_latents(tiny_sd, request(), settings)
