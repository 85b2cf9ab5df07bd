import pytest
import torch
import torch.nn.functional as F

from pilot.models.unet import UNET_PRESETS, UNet
from pilot.models.vae import VAE_PRESETS, AutoencoderKL
from pilot.nn import norms
from pilot.nn.norms import GroupNorm, group_norm_by_passes


def random_norm(groups: int, channels: int, *, affine: bool = True, dtype=torch.float64):
    norm = GroupNorm(groups, channels, eps=1e-6, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            norm.weight.normal_(1, 0.5)
            norm.bias.normal_(0, 0.5)
    return norm


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("affine", [True, False])
@torch.no_grad()
def test_group_norm_by_passes_is_group_norm(layout, affine):
    """The passes compute GroupNorm exactly (float64), in the input's memory format."""
    torch.manual_seed(0)
    norm = random_norm(4, 12, affine=affine)
    x = (torch.randn(3, 12, 7, 5, dtype=torch.float64) * 3 + 2).to(memory_format=layout)
    out = group_norm_by_passes(x, norm)
    expected = F.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert out.is_contiguous(memory_format=layout)


@torch.no_grad()
def test_group_norm_by_passes_takes_tokens_and_volumes():
    torch.manual_seed(0)
    norm = random_norm(2, 6)
    for shape in [(2, 6, 11), (2, 6, 3, 4, 5)]:
        x = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(
            group_norm_by_passes(x, norm), F.group_norm(x, 2, norm.weight, norm.bias, 1e-6)
        )


@torch.no_grad()
def test_variance_is_two_pass_in_float32():
    """A mean 1000 standard deviations from zero: E[x^2] - E[x]^2 in float32 would lose the
    variance (relative error ~0.1); the centred second pass keeps it."""
    torch.manual_seed(0)
    norm = random_norm(2, 8, dtype=torch.float32)
    x = torch.randn(2, 8, 32, 32, dtype=torch.float64) + 1000
    expected = F.group_norm(x, 2, norm.weight.double(), norm.bias.double(), norm.eps)
    out = group_norm_by_passes(x.float(), norm).double()
    assert (out - expected).abs().max().item() < 1e-3


@torch.no_grad()
def test_half_input_keeps_its_dtype_and_float32_statistics():
    torch.manual_seed(0)
    norm = random_norm(4, 16, dtype=torch.float32)
    x = torch.randn(2, 16, 24, 24) * 4 + 10
    expected = norm(x)
    out = group_norm_by_passes(x.half(), norm.half())
    assert out.dtype == torch.float16
    assert ((out.float() - expected).abs().max() / expected.abs().max()).item() < 2e-3


def test_split_stats_switch_and_autograd(monkeypatch):
    """Off (the default): the module is `nn.GroupNorm`, bit for bit. On: no-grad calls with
    groups of the threshold's size or more take the passes; calls with autograd stay native
    (and differentiable)."""
    torch.manual_seed(0)
    norm = random_norm(4, 8, dtype=torch.float32)
    x = torch.randn(2, 8, 6, 6)
    native = F.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
    assert norms.SPLIT_MIN_ELEMENTS is None
    with torch.no_grad():
        assert torch.equal(norm(x), native)
    calls = []
    passes = norms.group_norm_by_passes
    monkeypatch.setattr(norms, "group_norm_by_passes", lambda x, n: calls.append(x) or passes(x, n))
    monkeypatch.setattr(norms, "SPLIT_MIN_ELEMENTS", 2 * 6 * 6 + 1)  # groups of 2 x 6 x 6
    with torch.no_grad():
        norm(x)
    assert not calls
    monkeypatch.setattr(norms, "SPLIT_MIN_ELEMENTS", 2 * 6 * 6)
    with torch.no_grad():
        torch.testing.assert_close(norm(x), native)
    assert len(calls) == 1
    y = norm(x.requires_grad_())  # autograd on: the native kernel
    assert torch.equal(y, native) and len(calls) == 1
    y.sum().backward()
    assert x.grad is not None


def test_split_stats_in_the_models(monkeypatch):
    """VAE decode and UNet call with every GroupNorm by passes equal the native ones."""
    torch.manual_seed(0)
    vae = AutoencoderKL(VAE_PRESETS["tiny"]).eval()
    unet = UNet(UNET_PRESETS["tiny"]).eval()
    z = torch.randn(1, vae.cfg.latent_channels, 8, 8)
    x = torch.randn(2, unet.cfg.in_channels, 8, 8)
    t, context = torch.tensor([10, 500]), torch.randn(2, 7, unet.cfg.cross_attention_dim)
    calls = []
    with torch.no_grad():
        native = vae.decode(z), unet(x, t, context)
        monkeypatch.setattr(norms, "SPLIT_MIN_ELEMENTS", 1)
        passes = norms.group_norm_by_passes
        monkeypatch.setattr(
            norms, "group_norm_by_passes", lambda x, n: calls.append(1) or passes(x, n)
        )
        split = vae.decode(z), unet(x, t, context)
    modules = [*vae.decoder.modules(), *unet.modules()]
    assert len(calls) == sum(isinstance(m, GroupNorm) for m in modules)
    for a, b in zip(split, native, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@torch.no_grad()
def test_split_stats_on_cuda_half():
    """On CUDA, float16, SD's 512 px decoder shape: the passes match the native kernel to
    float16 rounding, in both layouts."""
    torch.manual_seed(0)
    norm = random_norm(32, 128, dtype=torch.float16).cuda()
    x = (torch.randn(1, 128, 512, 512, device="cuda") * 3 + 1).half()
    for layout in (torch.contiguous_format, torch.channels_last):
        x = x.contiguous(memory_format=layout)
        expected = F.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), norm.eps)
        out = group_norm_by_passes(x, norm)
        assert out.is_contiguous(memory_format=layout)
        assert ((out.float() - expected).abs().max() / expected.abs().max()).item() < 2e-3
