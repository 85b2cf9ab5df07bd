"""VAE unit tests: shapes per preset (meta device), the posterior, dtypes, config handling."""

import dataclasses
import weakref

import pytest
import torch

from pilot.models.vae import VAE_PRESETS, AutoencoderKL, DiagonalGaussian, VAEConfig
from pilot.nn.resnet import Upsample2D

TINY = VAE_PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(TINY).eval()


@pytest.mark.parametrize("preset", sorted(VAE_PRESETS))
def test_shapes_per_preset_on_meta(preset):
    cfg = VAE_PRESETS[preset]
    f = cfg.downsample_factor
    with torch.device("meta"):
        vae = AutoencoderKL(cfg)
        dist = vae.encode(torch.randn(2, 3, 8 * f, 6 * f))
        images = vae.decode(torch.randn(2, cfg.latent_channels, 8, 6))
    assert dist.mean.shape == dist.std.shape == (2, cfg.latent_channels, 8, 6)
    assert images.shape == (2, cfg.out_channels, 8 * f, 6 * f)


def test_sd_downsample_factor():
    assert VAE_PRESETS["sd15"].downsample_factor == 8 and TINY.downsample_factor == 2


def test_tiny_round_trip_shapes_and_odd_sizes(tiny_vae):
    with torch.no_grad():
        dist = tiny_vae.encode(torch.rand(1, 3, 15, 20) * 2 - 1)  # odd sides round down
        assert dist.mean.shape == (1, 4, 7, 10)
        assert tiny_vae.decode(dist.sample()).shape == (1, 3, 14, 20)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_decoder_activations_keep_the_model_layout(layout):
    """The mid-block attention's sum takes its input's layout, not its NHWC token view's: an
    NCHW decoder stays NCHW (strided adds and NHWC upsampling cost a GPU ~10% of a decode)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(TINY).eval().to(memory_format=layout)
    seen = []
    for name, module in vae.decoder.named_modules():
        if name.count(".") <= 2 and name:  # blocks, resnets, attentions, upsamplers
            module.register_forward_hook(lambda m, a, out, name=name: seen.append((name, out)))
    with torch.no_grad():
        vae.decode(torch.randn(2, TINY.latent_channels, 6, 5).to(memory_format=layout))
    assert any("attentions" in name for name, _ in seen)
    wrong = [name for name, out in seen if not out.is_contiguous(memory_format=layout)]
    assert not wrong, wrong


@pytest.mark.parametrize("coder", ["encoder", "decoder"])
def test_a_block_input_is_freed_after_its_first_layer(tiny_vae, coder):
    """Each block's input dies once its first layer has returned: looping over blocks kept it
    referenced through the whole block (for SD's decoder, 256 channels at full resolution;
    with the resnets' in-place SiLUs the decode's tensor peak at 512 px, float32, fell from
    768 to 640 MiB)."""
    decoder = coder == "decoder"
    block = tiny_vae.decoder.up_blocks[-1] if decoder else tiny_vae.encoder.down_blocks[0]
    first, second = block.layers()[:2]
    inputs, alive = [], []
    hooks = [
        first.register_forward_pre_hook(lambda m, args: inputs.append(weakref.ref(args[0]))),
        second.register_forward_pre_hook(lambda m, args: alive.append(inputs[-1]() is not None)),
    ]
    with torch.no_grad():
        if decoder:
            tiny_vae.decode(torch.randn(1, TINY.latent_channels, 6, 5))
        else:
            tiny_vae.encode(torch.rand(1, 3, 12, 10))
    for hook in hooks:
        hook.remove()
    assert alive == [False]


def test_inference_runs_in_place_without_touching_the_input(tiny_vae):
    """Under no_grad the resnets apply SiLU in place on their norms' outputs; the input and the
    result are those of the autograd path, which still trains."""
    z = torch.randn(1, TINY.latent_channels, 6, 5)
    kept = z.clone()
    with torch.no_grad():
        fast = tiny_vae.decode(z)
    assert torch.equal(z, kept)
    z.requires_grad_(True)
    slow = tiny_vae.decode(z)
    slow.square().mean().backward()
    assert torch.equal(fast, slow.detach()) and z.grad is not None


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_upsampling_by_phases_is_upsample_then_conv(layout):
    """Four 2x2 convs of the input (`phases=True`, the decoder's) equal nearest 2x upsampling
    then the 3x3 conv, borders included, in value, gradient and layout, and never make the
    4x-size upsampled input: the call's tensors peak below the plain path's."""
    from experiments.bench.common import TensorMemory

    torch.manual_seed(0)
    up = Upsample2D(6, 5, phases=True).double()
    x = torch.randn(2, 6, 7, 4, dtype=torch.float64).to(memory_format=layout).requires_grad_()
    plain = up.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    out = up(x)
    torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)
    assert out.is_contiguous(memory_format=layout)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, up.conv.weight, up.conv.bias], g)
    expected = torch.autograd.grad(plain, [x, up.conv.weight, up.conv.bias], g)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)

    wide = torch.randn(1, 64, 32, 32).to(memory_format=layout)  # activations >> weights
    phased, direct = Upsample2D(64, phases=True), Upsample2D(64)
    direct.load_state_dict(phased.state_dict())
    peaks = []
    for module in (phased, direct):
        with torch.no_grad(), TensorMemory() as memory:
            module(wide)
        peaks.append(memory.peak)
    assert peaks[0] < 0.8 * peaks[1], peaks


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_large_upsamplings_by_phases_run_by_bands(monkeypatch, layout):
    """Without autograd, a large phased upsampling runs by bands of input rows: the plain
    upsample-then-conv result, borders included, in the input's layout, and less alive beside
    the output than with each phase made over the whole input."""
    from experiments.bench.common import TensorMemory
    from pilot.nn import resnet

    torch.manual_seed(0)
    up = Upsample2D(16, 8, phases=True).double()
    x = torch.randn(2, 16, 63, 12, dtype=torch.float64).to(memory_format=layout)
    with torch.no_grad():
        expected = up.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        monkeypatch.setattr(resnet, "BAND_MIN_ELEMENTS", 0)
        monkeypatch.setattr(resnet, "BAND_ELEMENTS", 5 * 16 * 12)  # bands of 5 rows, then 3
        with TensorMemory() as banded:
            out = up(x)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        assert out.is_contiguous(memory_format=layout)
        monkeypatch.setattr(resnet, "BAND_MIN_ELEMENTS", 1 << 62)
        with TensorMemory() as whole:
            up(x)
    beside = [m.peak - out.untyped_storage().nbytes() for m in (banded, whole)]
    assert beside[0] < 0.5 * beside[1], beside


@pytest.mark.parametrize("channels", [(6, 6), (8, 4)])  # without / with a shortcut conv
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_large_resnet_inputs_run_by_bands(monkeypatch, channels, layout):
    """Without autograd, a large input runs norm-SiLU-conv by bands of rows (statistics over
    the whole input): the plain block's result, borders included, in the input's layout, and
    fewer tensor bytes alive at once."""
    from experiments.bench.common import TensorMemory
    from pilot.nn import resnet

    torch.manual_seed(0)
    block = resnet.ResnetBlock2D(*channels, groups=2).double().eval()
    for p in block.parameters():  # non-trivial norm affines
        p.data.normal_(0, 0.5)
    x = (torch.randn(2, channels[0], 41, 6, dtype=torch.float64) * 3 + 1).to(memory_format=layout)
    expected = block(x)  # autograd on: the plain path
    monkeypatch.setattr(resnet, "BAND_MIN_ELEMENTS", 0)
    monkeypatch.setattr(resnet, "BAND_ELEMENTS", 4 * channels[0] * 6)  # bands of 4 rows, then 1
    with torch.no_grad(), TensorMemory() as banded:
        out = block(x)
    torch.testing.assert_close(out, expected.detach(), rtol=1e-12, atol=1e-12)
    assert out.is_contiguous(memory_format=layout)
    monkeypatch.setattr(resnet, "BAND_MIN_ELEMENTS", 1 << 62)
    with torch.no_grad(), TensorMemory() as plain:
        block(x)
    assert banded.peak < 0.85 * plain.peak, (banded.peak, plain.peak)


def test_band_size_follows_the_device_type(monkeypatch):
    """Bands are sized per device type (larger on CUDA: fewer, larger kernels), unless
    `BAND_ELEMENTS` sets one size for all."""
    from pilot.nn import resnet

    x = torch.empty(1, 64, 1024, 256, device="meta")  # 2^24 elements; "meta" sizes as the CPU
    assert resnet._bands(x) == [(r, r + 256) for r in range(0, 1024, 256)]  # 2^22 each
    monkeypatch.setitem(resnet.DEVICE_BAND_ELEMENTS, "meta", 1 << 24)
    assert resnet._bands(x) == [(0, 1024)]
    assert not resnet._runs_by_bands(x, x[0].numel())  # a single band would only add work
    monkeypatch.setattr(resnet, "BAND_ELEMENTS", 1 << 23)
    assert resnet._bands(x) == [(0, 512), (512, 1024)]


def test_banded_half_precision_statistics_stay_accurate(monkeypatch):
    """float16 bands combine float32 statistics: the result is the float32 block's, rounded."""
    from pilot.nn import resnet

    torch.manual_seed(0)
    block = resnet.ResnetBlock2D(64, 32, groups=32).eval()
    x = torch.randn(1, 64, 40, 16) * 4 + 10  # a large mean: naive E[x^2] - E[x]^2 would fail
    with torch.no_grad():
        expected = block(x)
        monkeypatch.setattr(resnet, "BAND_MIN_ELEMENTS", 0)
        monkeypatch.setattr(resnet, "BAND_ELEMENTS", 64 * 16 * 7)
        half = block.half()(x.half()).float()
    assert ((half - expected).abs().max() / expected.abs().max()).item() < 1e-2


@pytest.mark.gpu
@torch.no_grad()
def test_sd_decode_by_bands_and_phases_on_cuda(monkeypatch):
    """SD 1.5's float16 decode at 512 px on a GPU, by bands and phases (the default), is the
    plain decode's (whole-tensor resnets, upsample-then-conv) up to rounding, and needs less
    memory, convolution workspaces included."""
    from pilot.nn import resnet

    torch.manual_seed(0)
    vae = AutoencoderKL(VAE_PRESETS["sd15"]).eval().half().cuda()
    z = torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.float16)

    def decode() -> tuple[torch.Tensor, int]:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
        images = vae.decode(z).float()
        return images, torch.cuda.max_memory_allocated() - held

    vae.decode(z)  # the library handles' workspaces, made once, are nobody's peak
    fast, fast_peak = decode()
    monkeypatch.setattr(resnet, "BAND_MIN_ELEMENTS", 1 << 62)
    for module in vae.modules():
        if isinstance(module, Upsample2D):
            monkeypatch.setattr(module, "phases", False)
    plain, plain_peak = decode()
    assert torch.isfinite(fast).all()
    assert ((fast - plain).abs().max() / plain.abs().max()).item() < 1e-2
    assert fast_peak < plain_peak, (fast_peak >> 20, plain_peak >> 20)


def test_posterior_clamps_logvar_and_samples():
    mean = torch.randn(2, 4, 3, 3)
    logvar = torch.full_like(mean, 50.0)
    logvar[0] = -100.0
    dist = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    assert dist.logvar[0].eq(-30).all() and dist.logvar[1].eq(20).all()
    torch.testing.assert_close(dist.std, torch.exp(0.5 * dist.logvar))
    assert dist.mode() is dist.mean
    noise = torch.randn_like(mean)
    torch.testing.assert_close(dist.sample(noise=noise), mean + dist.std * noise)
    a = dist.sample(torch.Generator().manual_seed(3))
    b = dist.sample(generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, dist.sample(torch.Generator().manual_seed(4)))


def test_kl_of_standard_normal_is_zero():
    dist = DiagonalGaussian(torch.zeros(2, 8, 4, 4))
    torch.testing.assert_close(dist.kl(), torch.zeros(2))
    assert (DiagonalGaussian(torch.ones(2, 8, 4, 4)).kl() > 0).all()


def test_dtype_follows_model():
    vae = AutoencoderKL(TINY).to(torch.bfloat16).eval()
    with torch.no_grad():
        dist = vae.encode(torch.rand(1, 3, 16, 16, dtype=torch.bfloat16))
        images = vae.decode(dist.sample(torch.Generator().manual_seed(0)))
    assert dist.mean.dtype == dist.std.dtype == images.dtype == torch.bfloat16
    assert torch.isfinite(images).all()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"block_out_channels": (32, 40)}, r"block_out_channels\[1\]=40 is not divisible"),
        ({"block_out_channels": ()}, r"block_out_channels=\(\)"),
        ({"layers_per_block": 0}, "layers_per_block=0"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **changes)


SD15_CONFIG = {  # runwayml/stable-diffusion-v1-5 vae/config.json
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def test_from_diffusers_reads_real_configs():
    assert VAEConfig.from_diffusers(SD15_CONFIG) == VAE_PRESETS["sd15"]
    sd21 = {**SD15_CONFIG, "_diffusers_version": "0.8.0", "sample_size": 768}
    assert VAEConfig.from_diffusers(sd21) == VAE_PRESETS["sd21"]
    sdxl = {**SD15_CONFIG, "scaling_factor": 0.13025, "force_upcast": True, "sample_size": 1024}
    assert VAEConfig.from_diffusers(sdxl).scaling_factor == 0.13025


@pytest.mark.parametrize("preset", sorted(VAE_PRESETS))
def test_diffusers_config_round_trip(preset):
    assert VAEConfig.from_diffusers(VAE_PRESETS[preset].to_diffusers()) == VAE_PRESETS[preset]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shift_factor": 0.0609}, "shift_factor=0.0609"),
        ({"latent_channels": 16, "use_quant_conv": False}, "use_quant_conv=False"),
        ({"latents_mean": [0.1] * 4}, "latents_mean="),
        ({"mid_block_add_attention": False}, "mid_block_add_attention=False"),
        ({"act_fn": "gelu"}, "act_fn='gelu'"),
        ({"down_block_types": ["AttnDownEncoderBlock2D"] * 4}, "down_block_types="),
        ({"up_block_types": ["UpDecoderBlock2D"] * 3}, "up_block_types="),
        ({"tile_overlap": 0.5}, "tile_overlap"),
    ],
)
def test_from_diffusers_rejects_unsupported(changes, message):
    with pytest.raises(ValueError, match=message):
        VAEConfig.from_diffusers({**SD15_CONFIG, **changes})
