"""The feedback sampler on a procedural fly-through: the acceptance figures, determinism,
the occlusion modes and the parts (schedules per frame, colour matching)."""

from dataclasses import replace

import pytest
import torch

from pilot.animation import feedback
from pilot.animation.color import lab_stats, match_color, rgb_to_lab
from pilot.animation.feedback import FeedbackConfig, FeedbackSampler, frame_params
from pilot.animation.inputs import FrameStore, ShotFrames
from pilot.animation.metrics import masked_mean, temporal_metrics
from pilot.animation.schedules import parse_prompt_schedule
from pilot.diffusion.pipeline import SamplingSettings
from pilot.scenes.geometry import warp

SETTINGS = SamplingSettings(sampler="euler", steps=4)  # CFG: the FeedbackConfig schedule


def render(sd, shot, root, n=None, write_behind=False, **config) -> torch.Tensor:
    frames = ShotFrames(shot)
    prompts = parse_prompt_schedule("0: a red corridor | 24: a blue cave")
    store = FrameStore(root, write_behind=write_behind)
    sampler = FeedbackSampler(
        sd, SETTINGS, FeedbackConfig(**{"cfg": "1", **config}), frames, prompts, store, base_seed=3
    )
    out = torch.cat([sampler.render(k) for k in range(n or len(frames))])
    store.flush()  # `render` leaves a write-behind store's last PNGs being written
    return out


@pytest.fixture(scope="module")
def runs(animation_sd, small_shot, tmp_path_factory):
    """Independent frames, occlusion-aware feedback and plain warping, same seeds/settings."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "independent": render(animation_sd, small_shot, root / "ind", strength="1.0",
                              occlusion="ignore", color_reference=None),
        "aware": render(animation_sd, small_shot, root / "aware", strength="0.3"),
        "plain": render(animation_sd, small_shot, root / "plain", strength="0.3",
                        occlusion="ignore"),
    }  # fmt: skip


def test_feedback_halves_the_warp_error(runs, small_shot):
    flow = ShotFrames(small_shot).flow
    error = {name: temporal_metrics(v, flow)["warp_error"] for name, v in runs.items()}
    assert len(runs["aware"]) == 24
    assert error["aware"] <= 0.5 * error["independent"], error
    assert error["plain"] <= 0.5 * error["independent"], error


def test_occlusion_aware_mode_dreams_disoccluded_pixels_fresh(runs, small_shot):
    """On pixels not seen in the previous frame, the occlusion-aware frame is close to what the
    model makes from scratch there (the independent frame, same seed); plain warping smears."""
    flow = ShotFrames(small_shot).flow

    def distance_to_fresh(name):
        d = [masked_mean((runs[name][k] - runs["independent"][k]).abs()[None], ~flow(k).visible)
             for k in range(1, 24)]  # fmt: skip
        return torch.stack(d).nanmean().item()

    aware, plain = distance_to_fresh("aware"), distance_to_fresh("plain")
    assert aware < 0.5 * plain, (aware, plain)


def test_loop_is_deterministic(animation_sd, small_shot, runs, tmp_path):
    """Also with PNGs written behind (the CLI's way): the loop reads its previous frame from
    memory, as the 8-bit values a resumed run reads from disk."""
    again = render(
        animation_sd, small_shot, tmp_path / "again", n=4, strength="0.3", write_behind=True
    )
    assert torch.equal(again, runs["aware"][:4])
    store = FrameStore(tmp_path / "again")  # a fresh store reads the files
    assert torch.equal(torch.cat([store.read(k) for k in range(4)]), again)


def test_inpaint_mode_keeps_the_visible_pixels(animation_sd, small_shot, tmp_path):
    """occlusion="inpaint": only disoccluded pixels are sampled; the rest is the warped previous
    frame, to 8-bit rounding (the identity VAE is exact to 1e-4)."""
    out = render(animation_sd, small_shot, tmp_path, n=3, strength="0.5", occlusion="inpaint",
                 color_reference=None)  # fmt: skip
    field = ShotFrames(small_shot).flow(2)
    warped = warp(out[1:2], field.flow)
    keep = field.visible  # the test model's VAE has factor 1: latent mask = pixel mask
    assert masked_mean((out[2:3] - warped).abs(), keep) < 1.5 / 255
    assert masked_mean((out[2:3] - warped).abs(), ~keep) > 0.05


def test_schedules_set_each_frames_dials():
    config = FeedbackConfig(strength="0:(0.6), 10:(0.4)", cfg="3 + t", seed="0:(100), 5:(200)",
                            interpolation="step")  # fmt: skip
    p = frame_params(config, (), base_seed=7, k=6)
    assert (p.strength, p.cfg, p.seed) == (0.6, 9.0, 200)
    assert frame_params(FeedbackConfig(), (), base_seed=7, k=6).seed == 13
    with pytest.raises(ValueError, match="gives 1.5 at frame 15"):
        frame_params(FeedbackConfig(strength="0.1 * t"), (), base_seed=0, k=15)
    with pytest.raises(ValueError, match="occlusion='smear'; valid: ignore, renoise, inpaint"):
        FeedbackConfig(occlusion="smear")


def test_dials_take_numbers_and_dicts_as_well_as_schedule_strings():
    """`strength=0.5`, a track's `scale=0.8` and a prompt dict used to fail deep inside with
    "'float' object has no attribute 'strip'" or "'float' object is not callable"."""
    from pilot.animation.inputs import ControlTrack
    from pilot.animation.schedules import parse_schedule

    config = FeedbackConfig(strength=0.5, cfg=3, seed=11)
    assert (config.strength, config.cfg, config.seed) == ("0.5", "3", "11")
    assert config == FeedbackConfig(strength="0.5", cfg="3", seed="11")
    track = ControlTrack(None, "depth", 0.8)
    assert frame_params(config, [track], base_seed=0, k=2) == frame_params(
        config, [ControlTrack(None, "depth", parse_schedule("0.8"))], base_seed=0, k=2
    )
    assert frame_params(config, [track], 0, 2).scales == (0.8,)
    assert parse_prompt_schedule({0: "red", 4: "blue"}) == parse_prompt_schedule("0: red | 4: blue")
    with pytest.raises(
        TypeError, match=r"strength \[0.5\]: expected a schedule string or a number"
    ):
        FeedbackConfig(strength=[0.5])
    with pytest.raises(ValueError, match="prompt of keyframe '4' must be a string"):
        parse_prompt_schedule({0: "red", 4: 5})
    with pytest.raises(ValueError, match="control track start=0.9, end=0.1"):
        ControlTrack(None, "depth", 1.0, start=0.9, end=0.1)
    with pytest.raises(ValueError, match="color_reference must be a frame number >= 0 .*got -1"):
        FeedbackConfig(color_reference=-1)  # was silently no colour matching
    with pytest.raises(ValueError, match="dilate must be an int >= 0 .*got 1.5"):
        FeedbackConfig(dilate=1.5)


def test_every_frame_is_checked_before_the_first_one(animation_sd):
    from pilot.animation.schedules import parse_schedule

    scale = parse_schedule("0:(1), 5:(log(5 - t))")
    feedback.check_schedules(FeedbackConfig(strength="0.1 * t"), [scale], 0, range(5))
    with pytest.raises(ValueError, match="gives 1.1 at frame 11"):
        feedback.check_schedules(FeedbackConfig(strength="0.1 * t"), [], 0, range(12))
    with pytest.raises(ValueError, match="log\\(5 - t\\)' fails at t=5"):
        feedback.check_schedules(FeedbackConfig(), [scale], 0, range(6))
    with pytest.raises(ValueError, match="gives seed 18446744073709551616 at frame 1"):
        feedback.check_schedules(FeedbackConfig(), [], 2**64 - 1, range(2))
    prompts = parse_prompt_schedule("0: red | 4: " + " ".join(["blue"] * 90))
    feedback.check_prompts(animation_sd.tokenizer, prompts, "", [0])
    with pytest.raises(ValueError, match="encode to different lengths"):
        feedback.check_prompts(animation_sd.tokenizer, prompts, "", range(4))


def test_independent_frames_follow_the_strength_schedule():
    free = FeedbackConfig(strength="0:(1), 3:(0.5)", occlusion="ignore", interpolation="step")
    assert [feedback.independent_frame(free, k) for k in range(5)] == [True] * 3 + [False] * 2
    assert not feedback.independent_frame(FeedbackConfig(strength="1"), 1)  # renoise: tied


def test_color_match_moves_lab_statistics_to_the_reference():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 16, 16, generator=g) * 0.3 + 0.1  # dark
    reference = torch.rand(1, 3, 16, 16, generator=g) * 0.4 + 0.5  # light
    matched = rgb_to_lab(match_color(image, reference))
    target = rgb_to_lab(reference)
    assert abs(matched[..., 0].mean() - target[..., 0].mean()) < 1.0  # L in [0, 100]
    assert abs(matched[..., 0].std() - target[..., 0].std()) < 1.0


def test_color_match_to_a_reference_or_to_its_statistics_is_the_same():
    g = torch.Generator().manual_seed(1)
    image, reference = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 8, 8, generator=g)
    assert torch.equal(match_color(image, reference), match_color(image, lab_stats(reference)))


def test_feedback_takes_the_colour_reference_statistics_once(
    animation_sd, small_shot, tmp_path, monkeypatch
):
    """Frames 2 and 3 match to frame 0 as frame 1 did, without reading it again."""
    calls = []

    def counted(image):
        calls.append(image)
        return lab_stats(image)

    monkeypatch.setattr(feedback, "lab_stats", counted)
    render(animation_sd, small_shot, tmp_path, n=4, strength="0.5")
    assert len(calls) == 1


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_full_blend_returns_the_warped_previous_frame_on_visible_pixels(
    animation_sd, small_shot, tmp_path, space
):
    out = render(animation_sd, small_shot, tmp_path, n=2, strength="0.5", blend=1.0,
                 blend_space=space, color_reference=None)  # fmt: skip
    field = ShotFrames(small_shot).flow(1)
    difference = (out[1:2] - warp(out[0:1], field.flow)).abs()
    assert masked_mean(difference, field.visible) < 1.5 / 255
    assert masked_mean(difference, ~field.visible) > 0.05  # disoccluded: sampled


@pytest.mark.parametrize(("share", "cells"), [(0.0, 2.0), (0.1, 1.0), (0.5, 0.0)])
def test_a_latent_cell_is_disoccluded_by_its_share_of_unseen_pixels(
    animation_sd, small_shot, tmp_path, share, cells
):
    from pilot.animation.flow import FlowField

    frames = ShotFrames(small_shot)
    sampler = FeedbackSampler(
        animation_sd, SETTINGS, FeedbackConfig(hidden_share=share), frames,
        parse_prompt_schedule("0: a wall"), FrameStore(tmp_path),
    )  # fmt: skip
    sampler.factor = f = 4  # the test VAE is the identity (f = 1); 4x4-pixel cells here
    visible = torch.ones(1, 1, 2 * f, 2 * f, dtype=torch.bool)
    visible[0, 0, 0, 0] = False  # one stray pixel in cell (0, 0)
    visible[0, 0, f : f + f // 2, f : f + f // 2] = False  # a quarter of cell (1, 1)
    mask = sampler.disocclusion(FlowField(torch.zeros(1, 2, 2 * f, 2 * f), visible))
    assert mask.shape == (1, 1, 2, 2) and mask.sum().item() == cells
    assert mask[0, 0, 1, 1] == (share < 0.25)


def test_frames_off_the_vae_factor_are_refused_naming_the_source(small_shot, tmp_path):
    from tests.conftest import make_tiny_sd

    sd = make_tiny_sd()  # VAE factor 2
    frames = ShotFrames(small_shot)  # 32x32
    frames.width = 31  # as if the shot were 31 px wide
    with pytest.raises(ValueError, match=rf"{small_shot.root}: image size 31x32 \(WxH\) must be"):
        FeedbackSampler(sd, SETTINGS, FeedbackConfig(), frames,
                        parse_prompt_schedule("0: a wall"), FrameStore(tmp_path))  # fmt: skip


@pytest.mark.parametrize("seed", [1.5, 2**64, "3"])
def test_a_base_seed_torch_cannot_take_is_refused_when_created(small_shot, tmp_path, seed):
    from tests.conftest import make_tiny_sd

    with pytest.raises(ValueError, match=r"base_seed: seed .* expected an int in"):
        FeedbackSampler(make_tiny_sd(), SETTINGS, FeedbackConfig(), ShotFrames(small_shot),
                        parse_prompt_schedule("0: a wall"), FrameStore(tmp_path),
                        base_seed=seed)  # fmt: skip


def test_hidden_share_must_be_a_share():
    with pytest.raises(ValueError, match="hidden_share must be in"):
        FeedbackConfig(hidden_share=1.0)


def test_staged_inpaint_holds_above_the_join_and_is_free_below_it():
    """Held: the inpainting call; free: the inner denoiser's output exactly. The choice is
    made on the device (meta: a read of sigma would raise)."""
    from pilot.diffusion.guidance import InpaintDenoiser

    g = torch.Generator().manual_seed(0)
    init, noise, x = torch.randn(3, 2, 4, 6, 6, generator=g)
    mask = (torch.rand(1, 1, 6, 6, generator=g) > 0.5).float()

    def inner(x, sigma, context):
        return torch.tanh(x) * context + sigma[:, None, None, None]

    staged = feedback.StagedInpaint(inner, init, mask, noise, torch.tensor(2.0))
    held = InpaintDenoiser(inner, init, mask, noise)
    for sigma in (5.0, 2.0 * (1 + 1e-5)):
        sigma = torch.full((2,), sigma)
        assert torch.equal(staged(x, sigma, context=0.5), held(x, sigma, context=0.5))
    for sigma in (2.0, 0.3):
        sigma = torch.full((2,), sigma)
        assert torch.equal(staged(x, sigma, context=0.5), inner(x, sigma, 0.5))
    pure = feedback.StagedInpaint(inner, init, mask, noise, torch.tensor(0.0))  # "inpaint"
    assert torch.equal(pure(x, sigma, context=0.5), held(x, sigma, context=0.5))
    meta = feedback.StagedInpaint(inner, *(t.to("meta") for t in (init, mask, noise)), 2.0)
    out = meta(x.to("meta"), torch.full((2,), 3.0, device="meta"), context=0.5)
    assert out.device.type == "meta" and out.shape == x.shape


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["euler", "euler_ancestral"])
def test_feedback_frame_waits_for_the_gpu_a_fixed_number_of_times(small_shot, tmp_path, name):
    """Host syncs per frame (frames to and from the host) do not grow with the steps: the
    sampling loop itself queues its work without waiting (`torch.cuda.set_sync_debug_mode`),
    ancestral noise drawn on the CPU included."""
    import warnings

    from tests.animation.conftest import make_animation_sd

    sd = make_animation_sd().to("cuda")

    def syncs(steps: int) -> int:
        store = FrameStore(tmp_path / f"steps{steps}")
        sampler = FeedbackSampler(
            sd, SamplingSettings(sampler=name, steps=steps, cfg=5.0),
            FeedbackConfig(strength="0.5"), ShotFrames(small_shot),
            parse_prompt_schedule("a wall"), store, base_seed=3,
        )  # fmt: skip
        sampler.render(0)
        sampler.context(1)  # the text encoder reads the device once per prompt: not a step
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                sampler.render(1)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(4) == syncs(16)


def test_the_negative_prompt_is_negative_prompt_and_negative_is_its_deprecated_name(
    animation_sd, small_shot, tmp_path
):
    """As `--negative-prompt`; old scripts' `negative=` still works, with a warning."""
    args = (animation_sd, SETTINGS, FeedbackConfig(), ShotFrames(small_shot),
            parse_prompt_schedule("0: a wall"), FrameStore(tmp_path))  # fmt: skip
    assert FeedbackSampler(*args, negative_prompt="blurry").negative_prompt == "blurry"
    with pytest.warns(DeprecationWarning, match=r"FeedbackSampler\(negative=.*negative_prompt="):
        assert FeedbackSampler(*args, negative="fog").negative_prompt == "fog"
    with pytest.raises(TypeError, match="negative= .* and negative_prompt="):
        FeedbackSampler(*args, negative="fog", negative_prompt="blurry")
    prompts, tokenizer = parse_prompt_schedule("0: red"), animation_sd.tokenizer
    feedback.check_prompts(tokenizer, prompts, negative_prompt="blurry", ks=[0])
    with pytest.warns(DeprecationWarning, match=r"check_prompts\(negative=.*negative_prompt="):
        feedback.check_prompts(tokenizer, prompts, negative="blurry", ks=[0])


def test_with_a_frame_step_frame_k_is_made_from_frame_k_minus_step(
    animation_sd, small_shot, tmp_path
):
    """frame_step 2: frame 4 is frame 2 warped by the flow from 4 back to 2 (strength 0: the
    warped init through the identity VAE); frame 1 has no previous frame (txt2img)."""
    frames, asked = ShotFrames(small_shot), []
    geometry = frames.flow

    def flow(k, step=1):
        asked.append((k, step))
        return geometry(k, step)

    config = FeedbackConfig(strength="0", occlusion="ignore", color_reference=None, cfg="1")
    sampler = FeedbackSampler(
        animation_sd, SETTINGS, config, frames, parse_prompt_schedule("0: a wall"),
        FrameStore(tmp_path), flow=flow, frame_step=2,
    )  # fmt: skip
    first, second = sampler.render(0), sampler.render(2)
    assert asked == [(2, 2)]
    expected = warp(first, geometry(2, 2).flow)
    assert (second - expected).abs().max() < 2 / 255  # 8-bit PNG rounding, the VAE's ~1e-4
    assert (second - warp(first, geometry(2).flow)).abs().max() > 0.1  # not the 1-frame flow
    assert sampler.independent(1) and not sampler.independent(2)
    assert not torch.equal(sampler.render(1), first)  # its own txt2img, frame 0 on disk or not
    assert asked == [(2, 2)]
    with pytest.raises(ValueError, match="motion pass .vector flow. links adjacent frames only"):
        FeedbackSampler(animation_sd, SETTINGS, config, ShotFrames(small_shot, flow="vector"),
                        parse_prompt_schedule("0: a wall"), FrameStore(tmp_path),
                        frame_step=2)  # fmt: skip


def test_with_a_frame_step_the_colour_reference_serves_its_own_chain(
    animation_sd, small_shot, tmp_path, monkeypatch
):
    """frame_step 2, reference 0: frame 2 is matched to it, frame 3 (made from frame 1) is not,
    whether frame 0 happens to be in the folder or not."""
    matched = []
    monkeypatch.setattr(feedback, "match_color", lambda init, stats: matched.append(1) or init)
    config = FeedbackConfig(strength="0", occlusion="ignore", color_reference=0, cfg="1")
    sampler = FeedbackSampler(
        animation_sd, SETTINGS, config, ShotFrames(small_shot),
        parse_prompt_schedule("0: a wall"), FrameStore(tmp_path), frame_step=2,
    )  # fmt: skip
    for k, calls in [(0, 0), (1, 0), (3, 0), (2, 1)]:
        sampler.render(k)
        assert len(matched) == calls, k


def test_a_flow_source_and_a_sampler_of_your_own(animation_sd, small_shot, tmp_path):
    """`flow=` takes a function `flow(k) -> FlowField` and `SamplingSettings` a sampler written
    with the README's signature (keywords without defaults): the frames equal the built-in
    ones'. A source returning something else is named at the frame, a one-argument source
    with a frame step when the sampler is made (both used to fail deep inside, naming
    neither)."""
    from pilot.diffusion.samplers import sample_euler

    frames = ShotFrames(small_shot)

    def my_flow(k):
        return frames.flow(k)

    def my_euler(denoiser, x, sigmas, *, extra_args, callback, noise):
        return sample_euler(denoiser, x, sigmas, extra_args=extra_args, callback=callback)

    def sampler(name, flow, settings=SETTINGS, **kwargs):
        return FeedbackSampler(
            animation_sd, settings, FeedbackConfig(strength="0.3", cfg="1"), frames,
            parse_prompt_schedule("a red corridor"), FrameStore(tmp_path / name), base_seed=3,
            flow=flow, **kwargs,
        )  # fmt: skip

    built_in = sampler("built_in", None)
    own = sampler("own", my_flow, replace(SETTINGS, sampler=my_euler))
    for k in range(2):
        assert torch.equal(own.render(k), built_in.render(k))

    def my_tuple_flow(k):
        field = frames.flow(k)
        return field.flow, field.visible

    tupled = sampler("tuple", my_tuple_flow)
    tupled.render(0)
    with pytest.raises(ValueError, match="^flow source my_tuple_flow at frame 1 returned a tuple"):
        tupled.render(1)
    with pytest.raises(ValueError, match="frame step 2: flow source my_flow takes one argument"):
        sampler("step", my_flow, frame_step=2)
