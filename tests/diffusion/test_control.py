"""ControlNet as a denoiser wrapper: exact no-ops, step windows, guess mode, every sampler,
img2img and inpainting. Parity with diffusers lives in tests/parity/test_controlnet_parity.py."""

import pytest
import torch

from pilot.diffusion.control import Control, ControlDenoiser, control_wrapper, controlled_cfg
from pilot.diffusion.denoisers import EpsDenoiser
from pilot.diffusion.guidance import CFGDenoiser, InpaintDenoiser
from pilot.diffusion.samplers import SAMPLERS, BatchedNoise
from pilot.diffusion.schedules import DiscreteSchedule, get_sigmas_karras
from pilot.models.controlnet import ControlNet
from pilot.models.unet import UNET_PRESETS, UNet

SCHEDULE = DiscreteSchedule.scaled_linear()
H = W = 8  # latents; control images are 64x64


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(UNET_PRESETS["tiny"]).eval()


@pytest.fixture(scope="module")
def controlnet(unet):
    """A ControlNet seeded from the UNet, then with non-zero zero convolutions."""
    torch.manual_seed(1)
    net = ControlNet.from_unet(unet).eval()
    with torch.no_grad():
        for p in [*net.controlnet_down_blocks.parameters(), *net.controlnet_mid_block.parameters()]:
            p.normal_(0, 0.3)
        net.controlnet_cond_embedding.conv_out.weight.normal_(0, 0.1)
    return net


def data(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, H, W, generator=g)
    cond, uncond = torch.randn(2, batch, 77, 32, generator=g)
    image = torch.rand(1, 3, 8 * H, 8 * W, generator=g)
    return x, cond, uncond, image


def sigmas(n: int = 10):
    return get_sigmas_karras(n, SCHEDULE.sigma_min, SCHEDULE.sigma_max)


def test_fresh_from_unet_controlnet_leaves_unet_unchanged(unet):
    fresh = ControlNet.from_unet(unet).eval()
    assert (
        fresh.down_blocks[0]
        .resnets[0]
        .conv1.weight.equal(unet.down_blocks[0].resnets[0].conv1.weight)
    )
    x, cond, _, image = data()
    t = torch.tensor([10.0, 700.0])
    with torch.no_grad():
        down, mid = fresh(x, t, cond, image.expand(2, -1, -1, -1))
        assert all(not r.any() for r in [*down, mid])
        assert torch.equal(
            unet(x, t, cond, down_residuals=down, mid_residual=mid), unet(x, t, cond)
        )


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_zero_scale_is_exact_and_control_steers(name, unet, controlnet):
    x, cond, uncond, image = data()
    s = sigmas(3)
    plain = CFGDenoiser(EpsDenoiser(unet, SCHEDULE), 5.0)

    def run(denoiser):
        noise = BatchedNoise([1, 2], x.shape)
        extra = {"context": cond, "uncond_context": uncond}
        with torch.no_grad():
            return SAMPLERS[name](denoiser, x * s[0], s, extra_args=extra, noise=noise)

    def controlled(scale):
        return controlled_cfg(
            EpsDenoiser(unet, SCHEDULE), [Control(controlnet, image, scale)], s, 5.0
        )

    reference = run(plain)
    assert torch.equal(run(controlled(0.0)), reference)
    steered = run(controlled(1.0))
    assert torch.isfinite(steered).all() and (steered - reference).abs().max() > 1e-3


def test_start_end_window_acts_on_the_right_steps(unet, controlnet):
    x, cond, _, image = data()
    s = sigmas(10)
    inner = EpsDenoiser(unet, SCHEDULE)
    denoiser = ControlDenoiser(inner, [Control(controlnet, image, 1.0, start=0.3, end=0.6)], s)
    active = []
    with torch.no_grad():
        for i in range(10):
            same = torch.equal(denoiser(x, s[i], context=cond), inner(x, s[i], context=cond))
            active.append(not same)
    assert [i for i, a in enumerate(active) if a] == [3, 4, 5]  # i/n >= 0.3, (i+1)/n <= 0.6
    listed = ControlDenoiser(inner, denoiser.controls, s.tolist())  # as the samplers take
    assert torch.equal(listed.step_index(s[:-1]), denoiser.step_index(s[:-1]))


def test_step_index_between_grid_points(unet, controlnet):
    s = sigmas(6)
    denoiser = ControlDenoiser(EpsDenoiser(unet, SCHEDULE), [], s)
    midpoints = (s[:-2] * s[1:-1]) ** 0.5  # DPM2 / DPM++ 2S / SDE evaluate here: earlier step
    churned = s[:-1] * 1.05  # Euler churn raises sigma slightly: same step
    assert denoiser.step_index(s[:-1]).tolist() == list(range(6))
    assert denoiser.step_index(midpoints).tolist() == list(range(5))
    assert denoiser.step_index(churned).tolist() == list(range(6))


def test_per_item_sigmas_follow_each_items_window(unet, controlnet):
    x, cond, _, image = data()
    s = sigmas(10)
    denoiser = ControlDenoiser(
        EpsDenoiser(unet, SCHEDULE), [Control(controlnet, image, 0.8, end=0.5)], s
    )
    mixed_sigma = torch.stack([s[2], s[7]])  # item 0 controlled, item 1 not
    with torch.no_grad():
        mixed = denoiser(x, mixed_sigma, context=cond)
        for b in range(2):
            alone = denoiser(x[b : b + 1], mixed_sigma[b : b + 1], context=cond[b : b + 1])
            torch.testing.assert_close(mixed[b : b + 1], alone, rtol=1e-5, atol=1e-5)


def test_guess_mode_leaves_the_unconditional_half_alone(unet, controlnet):
    x, cond, uncond, image = data(1)
    s = sigmas(4)
    inner = EpsDenoiser(unet, SCHEDULE)
    control = Control(controlnet, image, 1.0, guess_mode=True)
    guess = ControlDenoiser(inner, [control], s, cfg_batch=True)
    batch, context = torch.cat([x, x]), torch.cat([uncond, cond])  # what CFG passes
    with torch.no_grad():
        out, plain = guess(batch, s[1], context=context), inner(batch, s[1], context=context)
    torch.testing.assert_close(out[0], plain[0], rtol=1e-6, atol=1e-6)
    assert (out[1] - plain[1]).abs().max() > 1e-3


def test_image_batch_broadcast_and_memoised_hints(unet, controlnet):
    x, cond, _, image = data()
    s = sigmas(4)
    inner = EpsDenoiser(unet, SCHEDULE)
    one = ControlDenoiser(inner, [Control(controlnet, image, 1.0)], s)
    two = ControlDenoiser(inner, [Control(controlnet, image.expand(2, -1, -1, -1), 1.0)], s)
    with torch.no_grad():
        first, again = one(x, s[0], context=cond), one(x, s[0], context=cond)
        torch.testing.assert_close(first, two(x, s[0], context=cond), rtol=0, atol=0)
    assert torch.equal(first, again) and len(one._hints) == 1


def test_img2img_window_counts_the_sliced_steps(unet, controlnet):
    x, cond, uncond, image = data()
    s = sigmas(10)[4:]  # img2img at strength 0.6: six of ten steps run
    inner = EpsDenoiser(unet, SCHEDULE)
    denoiser = ControlDenoiser(inner, [Control(controlnet, image, 1.0, start=0.5)], s)
    with torch.no_grad():
        off = [
            torch.equal(denoiser(x, sig, context=cond), inner(x, sig, context=cond))
            for sig in s[:-1]
        ]
    assert off == [True] * 3 + [False] * 3


def test_inpainting_outside_control_keeps_the_known_region(unet, controlnet):
    x, cond, uncond, image = data()
    s = sigmas(4)
    init, noise = torch.randn(2, 4, H, W), torch.randn(2, 4, H, W)
    mask = torch.zeros(1, 1, H, W)
    mask[..., 2:6, 2:6] = 1  # repaint the centre
    guided = controlled_cfg(EpsDenoiser(unet, SCHEDULE), [Control(controlnet, image, 1.0)], s, 5.0)
    denoiser = InpaintDenoiser(guided, init, mask, noise)
    extra = {"context": cond, "uncond_context": uncond}
    with torch.no_grad():
        out = SAMPLERS["euler"](denoiser, init + noise * s[0], s, extra_args=extra)
    keep = mask.expand_as(out) == 0
    torch.testing.assert_close(out[keep], init[keep], rtol=1e-5, atol=1e-5)


def test_bad_input_raises_clear_errors(unet, controlnet):
    x, cond, _, image = data()
    s = sigmas(4)
    inner = EpsDenoiser(unet, SCHEDULE)
    with pytest.raises(ValueError, match="start=0.7, end=0.2"):
        Control(controlnet, image, start=0.7, end=0.2)
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        Control(controlnet, image[:, :1])
    for scale in ("0.5", None):  # used to fail inside the first step, naming nothing
        with pytest.raises(ValueError, match=rf"control scale={scale!r}: expected a number"):
            Control(controlnet, image, scale=scale)
    with pytest.raises(TypeError, match="CFGDenoiser"):
        ControlDenoiser(CFGDenoiser(inner), [], s)
    small = ControlDenoiser(inner, [Control(controlnet, image[..., :32, :32])], s)
    with torch.no_grad(), pytest.raises(ValueError, match="8x the latents"):
        small(x, s[0], context=cond)
    with pytest.raises(ValueError, match="need positive noise levels"):
        ControlDenoiser(inner, [], torch.tensor([1.0, 0.0, 0.0]))
    odd = ControlDenoiser(inner, [Control(controlnet, torch.rand(2, 3, 64, 64))], s)
    with torch.no_grad(), pytest.raises(ValueError, match="batch 2: expected .* of 1 items$"):
        odd(x[:1], s[0], context=cond[:1])


@pytest.mark.parametrize("items, images", [(3, 2), (2, 4), (4, 2)])
@pytest.mark.parametrize("guess_mode", [False, True])
def test_image_batch_must_be_one_or_the_items(unet, controlnet, items, images, guess_mode):
    """Under CFG the model batch is 2B: a control batch that divides it but is not 1 or B
    would pair images with the wrong items, so it is refused."""
    x, cond, uncond, _ = data(items)
    s = sigmas(4)
    control = Control(controlnet, torch.rand(images, 3, 64, 64), guess_mode=guess_mode)
    denoiser = controlled_cfg(EpsDenoiser(unet, SCHEDULE), [control], s, 5.0)
    match = rf"control image batch {images}: expected \(B or 1, C, H, W\) .*of {items} items"
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        denoiser(x, s[0], context=cond, uncond_context=uncond)


def test_image_batch_of_b_under_a_cfg_that_doubles_unannounced(unet, controlnet):
    """CFG built by hand around a ControlDenoiser without cfg_batch: the error says how."""
    x, cond, uncond, _ = data(2)
    s = sigmas(4)
    control = Control(controlnet, torch.rand(2, 3, 64, 64))
    denoiser = CFGDenoiser(ControlDenoiser(EpsDenoiser(unet, SCHEDULE), [control], s), 5.0)
    with torch.no_grad(), pytest.raises(ValueError, match="of 4 items .*controlled_cfg"):
        denoiser(x, s[0], context=cond, uncond_context=uncond)


def test_control_wrapper_knows_when_cfg_doubles_the_batch(unet, controlnet):
    _, _, _, image = data()
    controls, s, inner = [Control(controlnet, image)], sigmas(4), EpsDenoiser(unet, SCHEDULE)
    for scale, doubled in [(1.0, False), (1, False), (7.5, True), (torch.tensor([1.0, 2.0]), True)]:
        wrapped = control_wrapper(controls, s, cfg=scale)(inner)
        assert isinstance(wrapped, ControlDenoiser) and wrapped.cfg_batch is doubled


class CopiesToMeta(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the operators that copy a host tensor to the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.device.type == "meta":
            sources = [a for a in args if isinstance(a, torch.Tensor)]
            self.copies += any(a.device.type == "cpu" and a.numel() > 1 for a in sources)
        return out


@pytest.mark.parametrize("start", [0.0, 0.3])
def test_a_controlled_step_never_waits_for_the_device(unet, controlnet, start):
    """On the meta device, reading a value (`.item()`, `if tensor`) raises, as a host sync
    would stall a GPU; the schedule and the step grid reach the device once, not every step.
    A control with a start / end reads its window from the device: that one may wait."""
    import copy

    x, cond, uncond, image = (t.to("meta") for t in data(batch=1))
    grid = sigmas(4)
    nets = [copy.deepcopy(m).to("meta") for m in (unet, controlnet)]
    control = Control(nets[1], image, scale=0.7, start=start)
    denoiser = controlled_cfg(EpsDenoiser(nets[0], SCHEDULE), [control], grid, 5.0)
    meta_grid = grid.to("meta")
    with torch.inference_mode():
        if start:
            with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
                denoiser(x, meta_grid[0], context=cond, uncond_context=uncond)
            return
        denoiser(x, meta_grid[0], context=cond, uncond_context=uncond)  # the first copies
        with CopiesToMeta() as copies:
            out = denoiser(x, meta_grid[1], context=cond, uncond_context=uncond)
    assert out.shape == x.shape and copies.copies == 0


def test_the_guidance_scale_is_cfg_and_the_old_names_warn(unet, controlnet):
    """`cfg` as in `SamplingSettings(cfg=)`: `controlled_cfg(scale=)` and
    `control_wrapper(cfg_scale=)` still work, with a DeprecationWarning naming `cfg`."""
    from pilot.diffusion.control import cfg_doubles_batch

    _, _, _, image = data()
    controls, s, inner = [Control(controlnet, image)], sigmas(2), EpsDenoiser(unet, SCHEDULE)
    assert controlled_cfg(inner, controls, s, cfg=1.0).scale == 1.0
    assert control_wrapper(controls, s, cfg=3.0)(inner).cfg_batch is True
    assert not cfg_doubles_batch(cfg=1)
    with pytest.warns(DeprecationWarning, match=r"controlled_cfg\(scale=\.\.\.\).*pass cfg="):
        assert controlled_cfg(inner, controls, s, scale=1.0).scale == 1.0
    with pytest.warns(DeprecationWarning, match=r"control_wrapper\(cfg_scale=\.\.\.\).*pass cfg="):
        assert control_wrapper(controls, s, cfg_scale=1.0)(inner).cfg_batch is False
    with pytest.warns(DeprecationWarning, match="pass cfg="):
        assert cfg_doubles_batch(scale=3.0)
