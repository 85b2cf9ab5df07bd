"""Classifier-free guidance and inpainting as denoiser wrappers."""

import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from pilot.diffusion.denoisers import VDenoiser
from pilot.diffusion.guidance import CFGDenoiser, InpaintDenoiser
from pilot.diffusion.samplers import SAMPLERS
from pilot.diffusion.schedules import DiscreteSchedule, get_sigmas_karras

B, SHAPE = 2, (2, 4, 6, 6)


class Recorder:
    """A denoiser `x * 0.5 + mean(context)` that records its calls."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, x, sigma, *, context, **kwargs):
        self.calls.append(dict(x=x, sigma=sigma, context=context, **kwargs))
        return x * 0.5 + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def contexts(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 5, 8, generator=g), torch.randn(B, 5, 8, generator=g)


def test_cfg_is_one_batched_call():
    inner, (cond, uncond) = Recorder(), contexts()
    x, sigma = torch.randn(SHAPE), torch.tensor([3.0, 1.0])
    out = CFGDenoiser(inner, 7.5)(x, sigma, context=cond, uncond_context=uncond, extra="kept")
    (call,) = inner.calls
    assert call["x"].shape[0] == 2 * B and call["extra"] == "kept"
    assert torch.equal(call["context"], torch.cat([uncond, cond]))  # diffusers' order
    assert call["sigma"].tolist() == [3.0, 1.0, 3.0, 1.0]
    d_cond, d_uncond = Recorder()(x, sigma, context=cond), Recorder()(x, sigma, context=uncond)
    torch.testing.assert_close(out, d_uncond + 7.5 * (d_cond - d_uncond))


def test_cfg_scale_one_and_per_item_scales():
    inner, (cond, uncond) = Recorder(), contexts()
    x, sigma = torch.randn(SHAPE), torch.tensor(2.0)
    out = CFGDenoiser(inner, 1.0)(x, sigma, context=cond, uncond_context=uncond)
    assert len(inner.calls) == 1 and inner.calls[0]["x"].shape[0] == B
    torch.testing.assert_close(out, Recorder()(x, sigma, context=cond))
    scales = torch.tensor([1.0, 5.0])
    mixed = CFGDenoiser(Recorder(), scales)(x, sigma, context=cond, uncond_context=uncond)
    for i, scale in enumerate(scales.tolist()):
        single = CFGDenoiser(Recorder(), scale)(x, sigma, context=cond, uncond_context=uncond)
        torch.testing.assert_close(mixed[i], single[i])


def test_guidance_rescale_matches_diffusers_on_v_models():
    """Lin et al. 2023 on v predictions: diffusers' `rescale_noise_cfg` applied to a v UNet."""
    schedule = DiscreteSchedule.scaled_linear()

    def unet(x, t, context):  # a nonlinear v "model" depending on x, t and the context
        return (
            torch.sin(x * 3) * context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
            + t.view(-1, 1, 1, 1) / 500
        )

    cond, uncond = contexts(1)
    x, sigma = (
        torch.randn(SHAPE, dtype=torch.float64) * 3,
        torch.tensor([5.0, 0.5], dtype=torch.float64),
    )
    scale, phi = 7.5, 0.7
    ours = CFGDenoiser(VDenoiser(unet, schedule), scale, rescale=phi)
    out = ours(x, sigma, context=cond.double(), uncond_context=uncond.double())

    s = sigma.view(-1, 1, 1, 1)
    x_vp, t = x / (1 + s**2) ** 0.5, schedule.sigma_to_t(sigma)
    v_cond, v_uncond = unet(x_vp, t, cond.double()), unet(x_vp, t, uncond.double())
    v = rescale_noise_cfg(v_uncond + scale * (v_cond - v_uncond), v_cond, guidance_rescale=phi)
    expected = x / (1 + s**2) - s * v / (1 + s**2) ** 0.5
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    plain = CFGDenoiser(VDenoiser(unet, schedule), scale)(
        x, sigma, context=cond.double(), uncond_context=uncond.double()
    )
    assert not torch.allclose(out, plain)
    no_rescale = CFGDenoiser(VDenoiser(unet, schedule), scale, rescale=0.0)
    assert torch.equal(
        no_rescale(x, sigma, context=cond.double(), uncond_context=uncond.double()), plain
    )


def test_cfg_bad_input():
    with pytest.raises(ValueError, match=r"guidance rescale must be in \[0, 1\], got 1.5"):
        CFGDenoiser(Recorder(), 7.5, rescale=1.5)
    cond, uncond = contexts()
    with pytest.raises(ValueError, match="77-token chunks"):
        CFGDenoiser(Recorder())(
            torch.randn(SHAPE), torch.tensor(1.0), context=cond, uncond_context=uncond[:, :3]
        )
    # a schedule string (FeedbackConfig's cfg) used to fail at the first step, naming nothing
    for cfg in ("3", None, True):
        with pytest.raises(ValueError, match=rf"cfg={cfg!r}: expected a number"):
            CFGDenoiser(Recorder(), cfg)


def inpaint_inputs():
    g = torch.Generator().manual_seed(3)
    init, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 2:5, 1:4] = 1  # 1 = repaint
    return init, mask, noise


def test_inpaint_blends_inputs_and_outputs():
    init, mask, noise = inpaint_inputs()
    inner, cond = Recorder(), contexts()[0]
    x, sigma = torch.randn(SHAPE), torch.tensor([2.0, 0.5])
    out = InpaintDenoiser(inner, init, mask, noise)(x, sigma, context=cond)
    seen = inner.calls[0]["x"]
    keep, paint = mask.expand(SHAPE) == 0, mask.expand(SHAPE) == 1
    known = init + noise * sigma.view(-1, 1, 1, 1)  # init re-noised to the current sigma
    assert torch.equal(seen[keep], known[keep]) and torch.equal(seen[paint], x[paint])
    assert torch.equal(out[keep], init[keep])
    assert torch.equal(out[paint], Recorder()(seen, sigma, context=cond)[paint])


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_inpaint_sampling_keeps_the_known_region(name):
    """Inpainting outside CFG: the kept region ends on the init latents."""
    init, mask, noise = inpaint_inputs()
    cond, uncond = contexts()
    sigmas = get_sigmas_karras(8, 0.03, 14.6)
    denoiser = InpaintDenoiser(CFGDenoiser(Recorder(), 5.0), init, mask, noise)
    x = init + noise * sigmas[0]
    out = SAMPLERS[name](
        denoiser, x, sigmas, extra_args={"context": cond, "uncond_context": uncond}
    )
    keep = mask.expand(SHAPE) == 0
    torch.testing.assert_close(out[keep], init[keep], rtol=0, atol=1e-5)
    assert not torch.allclose(out[~keep], init[~keep], atol=0.1)


def test_inpaint_bad_sizes():
    init, mask, noise = inpaint_inputs()
    with pytest.raises(ValueError, match="must have matching sizes"):
        InpaintDenoiser(Recorder(), init, mask[..., :4], noise)
    with pytest.raises(ValueError, match="must have matching sizes"):
        InpaintDenoiser(Recorder(), init, mask, noise[:1])


def test_the_guidance_scale_is_cfg_and_scale_is_its_deprecated_name():
    """`cfg` as in `SamplingSettings(cfg=)`; old scripts' `scale=` still works, with a warning."""
    assert CFGDenoiser(Recorder(), cfg=2.0).scale == 2.0
    with pytest.warns(DeprecationWarning, match=r"CFGDenoiser\(scale=\.\.\.\).*pass cfg=") as w:
        assert CFGDenoiser(Recorder(), scale=3.0).scale == 3.0
    assert w[0].filename == __file__  # points at the caller's line
    with pytest.raises(TypeError, match="scale= .* and cfg="):
        CFGDenoiser(Recorder(), scale=3.0, cfg=2.0)
