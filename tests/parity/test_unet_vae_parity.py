"""Parity of pilot's UNet and VAE with diffusers' UNet2DConditionModel and AutoencoderKL.

The reference models get random weights (every parameter redrawn, norms and biases included, so
nothing is trivially zero or one); pilot's models load their state dicts with `strict=True`
(sharing storage via `assign=True`) and must match in float32 to a max relative error of 1e-5.
"""

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL as RefAutoencoderKL
from diffusers import UNet2DConditionModel

from pilot.models.unet import UNET_PRESETS, UNet, UNetConfig
from pilot.models.vae import VAE_PRESETS, AutoencoderKL, VAEConfig

TOL = 1e-5


def max_rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter: fan-in scaled weights, norm gains around 1, nonzero biases.

    Values come from one pool of uniform noise in [-1, 1), somewhat larger than the largest
    parameter, each parameter reading a window at its own random offset: as good as fresh draws
    for parity, and ~4x faster than drawing SD's 860M parameters one by one.
    """
    g = torch.Generator().manual_seed(seed)
    largest = max(p.numel() for p in module.parameters())
    pool = torch.rand(largest + 2**22, generator=g) * 2 - 1
    for name, p in module.named_parameters():
        offset = torch.randint(0, pool.numel() - p.numel() + 1, (), generator=g).item()
        noise = pool[offset : offset + p.numel()].view_as(p)
        if p.ndim > 1:
            torch.mul(noise, (3.0 / p[0].numel()) ** 0.5, out=p)  # unit variance per layer
        elif "norm" in name and name.endswith("weight"):
            torch.add(1.0, noise, alpha=0.2, out=p)
        else:
            torch.mul(noise, 0.2, out=p)


def build_pair(ref_cls, ours_cls, ref_kwargs: dict, cfg, seed: int = 0):
    """A randomized reference model and pilot's model holding the same tensors."""
    with torch.device("meta"):
        ref = ref_cls(**ref_kwargs)
        ours = ours_cls(cfg)
    ref.to_empty(device="cpu")
    randomize_(ref, seed)
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return ours.eval(), ref.eval()


def unet_pair(cfg: UNetConfig, seed: int = 0):
    return build_pair(UNet2DConditionModel, UNet, cfg.to_diffusers(), cfg, seed)


def vae_pair(cfg: VAEConfig, seed: int = 0):
    return build_pair(RefAutoencoderKL, AutoencoderKL, cfg.to_diffusers(), cfg, seed)


def skip_shapes(cfg: UNetConfig, batch: int, height: int, width: int) -> list[tuple]:
    """Shapes of the UNet's skip connections (ControlNet residuals) for an input size."""
    shapes = [(batch, cfg.block_out_channels[0], height, width)]
    n = len(cfg.block_out_channels)
    for i, ch in enumerate(cfg.block_out_channels):
        shapes += [(batch, ch, height, width)] * cfg.layers_per_block
        if i < n - 1:
            height, width = (height + 1) // 2, (width + 1) // 2
            shapes.append((batch, ch, height, width))
    assert [s[1] for s in shapes] == list(cfg.skip_channels())
    return shapes


def compare_unet(ours, ref, batch: int, height: int, width: int, residuals: bool) -> float:
    cfg = ours.cfg
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.in_channels, height, width, generator=g)
    context = torch.randn(batch, 77, cfg.cross_attention_dim, generator=g)
    t = torch.linspace(1, 999, batch).round().long()
    kwargs, ref_kwargs = {}, {}
    if residuals:
        shapes = skip_shapes(cfg, batch, height, width)
        down = [torch.randn(s, generator=g) for s in shapes]
        mid = torch.randn(shapes[-1], generator=g)
        kwargs = {"down_residuals": down, "mid_residual": mid}
        ref_kwargs = {
            "down_block_additional_residuals": tuple(down),
            "mid_block_additional_residual": mid,
        }
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=context, **ref_kwargs).sample
        out = ours(x, t, context, **kwargs)
    assert out.shape == expected.shape
    return max_rel_error(out, expected)


TINY = UNET_PRESETS["tiny"]
TINY_VARIANTS = {
    "tiny": TINY,
    # Attention only in the low-resolution block (diffusers' pipeline tests), linear proj.
    "tiny-late-attn-linear": dataclasses.replace(
        TINY, attention=(False, True), use_linear_projection=True
    ),
    # Three blocks, per-block heads, two transformer layers, no time-embedding shift.
    "tiny-3-blocks": dataclasses.replace(
        TINY,
        block_out_channels=(32, 32, 64),
        num_heads=(2, 4, 8),
        transformer_layers_per_block=2,
        layers_per_block=1,
        flip_sin_to_cos=False,
        freq_shift=1,
    ),
}


@pytest.mark.parametrize("preset", sorted(UNET_PRESETS))
def test_unet_state_dict_keys_and_shapes(preset):
    cfg = UNET_PRESETS[preset]
    with torch.device("meta"):
        ref = UNet2DConditionModel(**cfg.to_diffusers())
        ours = UNet(cfg)
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == ref_shapes
    assert UNetConfig.from_diffusers(dict(ref.config)) == cfg


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
@pytest.mark.parametrize(("height", "width"), [(32, 32), (17, 23)])
@pytest.mark.parametrize("residuals", [False, True], ids=["plain", "controlnet"])
def test_unet_parity_tiny(variant, height, width, residuals):
    ours, ref = unet_pair(TINY_VARIANTS[variant])
    assert compare_unet(ours, ref, 2, height, width, residuals) <= TOL


@pytest.mark.parametrize("preset", ["sd15", "sd21"])
def test_unet_parity_real_shapes(preset):
    """Full-size SD 1.5 (conv proj, 8 heads) / SD 2.1 (linear proj, 64-wide heads) UNets."""
    ours, ref = unet_pair(UNET_PRESETS[preset])
    assert compare_unet(ours, ref, 1, 8, 8, residuals=True) <= TOL


@pytest.mark.parametrize("preset", sorted(VAE_PRESETS))
def test_vae_state_dict_keys_and_shapes(preset):
    cfg = VAE_PRESETS[preset]
    with torch.device("meta"):
        ref = RefAutoencoderKL(**cfg.to_diffusers())
        ours = AutoencoderKL(cfg)
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == ref_shapes
    assert VAEConfig.from_diffusers(dict(ref.config)) == cfg


@pytest.mark.parametrize(("preset", "size"), [("tiny", 32), ("tiny", 30), ("sd15", 64)])
def test_vae_parity(preset, size):
    ours, ref = vae_pair(VAE_PRESETS[preset])
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    latents = torch.randn(2, 4, size // 8, size // 8, generator=g)
    with torch.no_grad():
        ref_dist = ref.encode(images).latent_dist
        dist = ours.encode(images)
        decoded, ref_decoded = ours.decode(latents), ref.decode(latents).sample
    assert max_rel_error(dist.mean, ref_dist.mean) <= TOL
    assert max_rel_error(dist.std, ref_dist.std) <= TOL
    assert max_rel_error(decoded, ref_decoded) <= TOL
