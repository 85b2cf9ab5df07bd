"""The feedback sampler's swappable guidance (`SamplingSettings(guidance=...)`) and its step
callback (`FeedbackSampler(callback=...)`), with a ControlNet on every frame."""

from dataclasses import replace

import pytest
import torch

from pilot.animation.feedback import FeedbackConfig, FeedbackSampler
from pilot.animation.inputs import ControlTrack, FrameStore, ShotFrames
from pilot.animation.schedules import parse_prompt_schedule, parse_schedule
from pilot.diffusion.pipeline import SamplingSettings
from tests.animation.conftest import controlnet_with_residuals
from tests.diffusion.test_guidance_of_your_own import bad_shape, decaying_cfg, my_cfg

SETTINGS = SamplingSettings(sampler="euler_ancestral", steps=4)  # CFG: the FeedbackConfig's


@pytest.fixture(scope="module")
def track(animation_sd):
    """A tiny depth ControlNet with non-zero residuals, in guess mode for a window of steps."""
    net = controlnet_with_residuals(animation_sd)
    return ControlTrack(net, "depth", parse_schedule("0.8"), start=0.2, guess_mode=True)


def make_sampler(sd, shot, root, track, settings=SETTINGS, **kwargs):
    config = FeedbackConfig(strength="0.5", cfg="0: (3), 2: (1)")  # cfg 1 at frame 2
    return FeedbackSampler(
        sd, settings, config, ShotFrames(shot), parse_prompt_schedule("a red corridor"),
        FrameStore(root), tracks=[track], base_seed=3, **kwargs,
    )  # fmt: skip


def test_a_guidance_equal_to_cfg_gives_the_built_in_frames(
    animation_sd, small_shot, track, tmp_path
):
    """Frame 0 txt2img, frames 1-2 fed back with disoccluded pixels renoised, cfg 3 -> 1."""
    built_in = make_sampler(animation_sd, small_shot, tmp_path / "built_in", track)
    own = make_sampler(
        animation_sd, small_shot, tmp_path / "own", track, replace(SETTINGS, guidance=my_cfg)
    )
    decayed = make_sampler(animation_sd, small_shot, tmp_path / "decayed", track,
                           replace(SETTINGS, guidance=decaying_cfg))  # fmt: skip
    for k in range(3):
        frame = built_in.render(k)
        if k < 2:
            assert torch.equal(own.render(k), frame), k
        else:  # cfg 1: the built-in calls the cond half alone, my_cfg cond + 1 * (cond - uncond)
            torch.testing.assert_close(own.render(k), frame, rtol=1e-6, atol=1e-6)
        assert not torch.equal(decayed.render(k), frame), k


def test_a_guidance_off_the_contract_is_named_at_the_frame(
    animation_sd, small_shot, track, tmp_path
):
    bad = make_sampler(
        animation_sd, small_shot, tmp_path, track, replace(SETTINGS, guidance=bad_shape)
    )
    with pytest.raises(ValueError, match=r"^guidance bad_shape: its denoiser returned shape \(2,"):
        bad.render(0)
    assert not bad.store.has(0)


def test_the_step_callback_reports_each_step_of_each_frame(
    animation_sd, small_shot, track, tmp_path
):
    """`generate`'s payload plus the frames of the batch; the frames are unchanged."""
    steps = []
    sampler = make_sampler(animation_sd, small_shot, tmp_path / "cb", track, callback=steps.append)
    plain = make_sampler(animation_sd, small_shot, tmp_path / "plain", track)
    for k in range(2):
        assert torch.equal(sampler.render(k), plain.render(k))
    assert all(set(s) == {"i", "x", "sigma", "denoised", "frames"} for s in steps)
    assert [(s["frames"], s["i"]) for s in steps] == [
        *[((0,), i) for i in range(4)],  # txt2img: the whole grid
        *[((1,), i) for i in range(4)],  # renoised disoccluded pixels: from sigma_max too
    ]
    assert all(s["x"].shape == s["denoised"].shape == (1, 4, 32, 32) for s in steps)
    assert float(steps[4]["sigma"]) == float(sampler.sigmas[0])

    batched = []
    sampler.callback = batched.append  # an attribute: swapped between frames
    independent = FeedbackConfig(strength="1.0", occlusion="ignore", color_reference=None)
    sampler.config = independent
    sampler.render_batch([3, 4])
    assert [(s["frames"], s["i"], s["x"].shape[0]) for s in batched] == [
        ((3, 4), i, 2) for i in range(4)
    ]


def test_a_callback_is_not_called_without_steps(animation_sd, small_shot, track, tmp_path):
    """Strength 0 (no step) is the VAE round trip: nothing to report."""
    steps = []
    sampler = make_sampler(animation_sd, small_shot, tmp_path, track, callback=steps.append)
    sampler.config = FeedbackConfig(strength="0", occlusion="ignore")
    sampler.render(0)
    n = len(steps)
    sampler.render(1)
    assert len(steps) == n == 4
