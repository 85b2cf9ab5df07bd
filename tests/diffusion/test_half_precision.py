"""Half-precision generation and the VAE's float32 rule (`decode_latents(upcast=...)`) on CPU."""

import warnings

import pytest
import torch

from pilot.diffusion.pipeline import Request, SamplingSettings, decode_latents, generate
from tests.conftest import make_tiny_sd

REQUEST = Request(["a red wall"], seeds=[3], width=32, height=32)
SETTINGS = SamplingSettings(sampler="euler", steps=2, cfg=5.0)


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return generate(make_tiny_sd(), REQUEST, SETTINGS)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_generate_is_close_to_float32(reference, dtype):
    sd = make_tiny_sd().to(dtype=dtype)
    images = generate(sd, REQUEST, SETTINGS)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert next(sd.vae.parameters()).dtype == dtype  # the decode left the VAE as it was
    assert (images - reference).abs().max() < 0.05  # pixels in [0, 1]


def overflowing_vae_sd():
    """A tiny SD whose float16 VAE decoder overflows: `conv_in` outputs ~1e5 (> 65504), which the
    next GroupNorm would bring back to unit scale in float32."""
    sd = make_tiny_sd()
    with torch.no_grad():
        sd.vae.decoder.conv_in.weight.mul_(3e4)
    return sd.to(dtype=torch.float16)


def test_float16_vae_overflow_is_caught_by_upcast():
    sd = overflowing_vae_sd()
    weights = {k: v.clone() for k, v in sd.vae.state_dict().items()}
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    assert not torch.isfinite(decode_latents(sd, latents, upcast="never")).all()
    with pytest.warns(UserWarning, match="overflowed"):
        auto = decode_latents(sd, latents)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        always = decode_latents(sd, latents, upcast="always")
    assert torch.isfinite(auto).all() and auto.std() > 0
    assert torch.equal(auto, always)
    expected = decode_latents(overflowing_vae_sd().to(dtype=torch.float32), latents)
    assert torch.allclose(always, expected, atol=1e-6)  # the same maths in float32
    for k, v in sd.vae.state_dict().items():  # cast back exactly
        assert v.dtype == torch.float16 and torch.equal(v, weights[k]), k


def test_auto_upcast_decodes_again_only_the_slices_that_overflowed():
    """With VAE slicing, a slice that stays finite keeps its float16 decode."""
    sd = overflowing_vae_sd()
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    latents[0] *= 1e-3  # conv_in stays below float16's range for this image only
    calm, wild = latents[:1], latents[1:]
    assert torch.isfinite(decode_latents(sd, calm, upcast="never")).all()
    with pytest.warns(UserWarning, match="overflowed") as caught:
        images = decode_latents(sd, latents, batch=1)
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert torch.equal(images[:1], decode_latents(sd, calm, upcast="never"))
    assert torch.equal(images[1:], decode_latents(sd, wild, upcast="always"))
    with pytest.warns(UserWarning, match="overflowed"):
        whole = decode_latents(sd, latents)  # one slice: both images decoded again
    assert not torch.equal(whole[:1], images[:1])


def test_upcast_rule_is_checked():
    sd = make_tiny_sd()
    with pytest.raises(ValueError, match="unknown VAE upcast rule 'sometimes'; valid: auto"):
        decode_latents(sd, torch.zeros(1, 4, 4, 4), upcast="sometimes")
