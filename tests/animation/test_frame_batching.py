"""Frame batching in the feedback sampler: independent frames sampled B at a time equal the
one-by-one frames (per-frame seeds), resume skips frames on disk, dependent frames are refused."""

import pytest
import torch

from pilot.animation.compare import independent, render_video
from pilot.animation.feedback import FeedbackConfig, FeedbackSampler, frame_params
from pilot.animation.inputs import ControlTrack, FrameStore, ShotFrames
from pilot.animation.schedules import parse_prompt_schedule, parse_schedule
from pilot.diffusion.pipeline import SamplingSettings
from tests.animation.conftest import controlnet_with_residuals


@pytest.fixture(scope="module")
def track(animation_sd):
    """A tiny depth ControlNet with non-zero residuals (the batch carries B control images)."""
    net = controlnet_with_residuals(animation_sd)
    return ControlTrack(net, "depth", parse_schedule("0.8"))


def make_sampler(sd, shot, root, track, sampler="euler", **config):
    settings = SamplingSettings(sampler=sampler, steps=3, cfg=2.0)
    return FeedbackSampler(
        sd, settings, FeedbackConfig(**config), ShotFrames(shot),
        parse_prompt_schedule("0: a red corridor | 6: a blue cave"), FrameStore(root),
        tracks=[track], base_seed=3,
    )  # fmt: skip


INDEPENDENT = {"strength": "1.0", "occlusion": "ignore", "color_reference": None}


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_a_batch_equals_frames_one_by_one(animation_sd, small_shot, track, tmp_path, sampler):
    """Final latents of a batch of 4 vs each frame alone, and a frame's noise (initial and
    ancestral) whatever else is in its batch. Float rounding only: the random UNet's latents
    reach |64| after 3 steps, so the bound is relative (measured 4e-7; the UNet alone differs by
    1.2e-6 on outputs of size 1.6 between batch 4 and batch 1)."""
    s = make_sampler(animation_sd, small_shot, tmp_path, track, sampler, **INDEPENDENT)
    ks = [1, 2, 4, 5]
    params = [frame_params(s.config, s.tracks, s.base_seed, k) for k in ks]
    batch, _ = s.sample_latents(ks, params, None, None)
    alone = torch.cat(
        [s.sample_latents([k], [p], None, None)[0] for k, p in zip(ks, params, strict=True)]
    )
    scale = alone.abs().max()
    assert batch.shape == (4, 4, 32, 32)
    assert (batch - alone).abs().max() < 1e-5 * scale
    zero = frame_params(s.config, s.tracks, s.base_seed, 0)
    other, _ = s.sample_latents([5, 0], [params[3], zero], None, None)
    assert (other[0] - alone[3]).abs().max() < 1e-5 * scale
    assert (alone[0] - alone[1]).abs().max() > 0.1 * scale  # the frames do differ
    images = s.sample_frames(ks, params, None, None)
    assert (images - s.blend(alone, None, None, None)).abs().max() < 1e-4


def test_vae_batch_decodes_a_batch_of_frames_by_slices(
    animation_sd, small_shot, track, tmp_path, monkeypatch
):
    s = make_sampler(animation_sd, small_shot, tmp_path, track, **INDEPENDENT)
    ks = [1, 2, 4]
    params = [frame_params(s.config, s.tracks, s.base_seed, k) for k in ks]
    latents, _ = s.sample_latents(ks, params, None, None)
    whole = s.blend(latents, None, None, None)
    vae, calls = animation_sd.vae, []
    plain = type(vae).decode
    monkeypatch.setattr(vae, "decode", lambda z: calls.append(len(z)) or plain(vae, z))
    s.vae_batch = 2
    assert torch.allclose(s.blend(latents, None, None, None), whole, atol=1e-6)
    assert calls == [2, 1]
    with pytest.raises(ValueError, match="vae_batch must be >= 1 .*got 0"):
        FeedbackSampler(animation_sd, s.settings, s.config, s.frames, s.prompts, s.store,
                        vae_batch=0)  # fmt: skip
    # refused when built, not after frame 0 is sampled
    with pytest.raises(ValueError, match="unknown VAE upcast rule 'sometimes'"):
        FeedbackSampler(animation_sd, s.settings, s.config, s.frames, s.prompts, s.store,
                        vae_upcast="sometimes")  # fmt: skip
    with pytest.raises(ValueError, match="source_mix=0.3 mixes a video's own frames .*ShotFrames"):
        FeedbackSampler(animation_sd, s.settings, FeedbackConfig(source_mix=0.3), s.frames,
                        s.prompts, s.store)  # fmt: skip


def test_render_video_in_batches_equals_one_by_one_and_resumes(
    animation_sd, small_shot, track, tmp_path
):
    config = independent(FeedbackConfig(strength="0.4"))
    n = 6
    one = make_sampler(animation_sd, small_shot, tmp_path / "one", track, **vars(config))
    video_one, _ = render_video(one, n)
    many = make_sampler(animation_sd, small_shot, tmp_path / "many", track, **vars(config))
    assert many.batches(range(n), 4) == [[0, 1, 2, 3], [4, 5]]
    many.store.write(2, video_one[2:3])  # on disk already: skipped, kept
    kept = many.store.frame_path(2).read_bytes()
    video_many, seconds = render_video(many, n, batch=4)
    assert len(seconds) == n - 1 and many.store.frame_path(2).read_bytes() == kept
    assert (video_many - video_one).abs().max() <= 1 / 255 + 1e-6  # 8-bit PNGs


def test_dependent_frames_are_rendered_one_by_one(animation_sd, small_shot, track, tmp_path):
    s = make_sampler(animation_sd, small_shot, tmp_path, track, strength="0.5")
    assert s.independent(0) and not s.independent(1)
    assert s.batches(range(4), 4) == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match=r"frames \[1, 2\] depend on their previous frame"):
        s.render_batch([0, 1, 2])
    keyed = make_sampler(animation_sd, small_shot, tmp_path, track, strength="1.0",
                         occlusion="ignore", cfg="0:(2), 2:(3)", interpolation="step")  # fmt: skip
    assert keyed.batches(range(4), 4) == [[0, 1], [2, 3]]  # one CFG scale per batch
    with pytest.raises(ValueError, match=r"frames \[1, 2\] differ in \(strength, cfg"):
        keyed.render_batch([1, 2])
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        s.batches(range(4), 0)
