"""Flow sources (shot geometry, motion pass, DIS), consistency masks and temporal metrics."""

import math

import pytest
import torch
import torch.nn.functional as F

from pilot.animation.compare import DisoccludedDistance, disoccluded_distance
from pilot.animation.flow import (
    EstimatedFlow,
    FlowField,
    GeometryFlow,
    VectorFlow,
    backward_flow,
    check_flow_step,
    consistency_mask,
    dis_flow,
    downsample_flow,
)
from pilot.animation.metrics import (
    TemporalMetrics,
    flicker_indices,
    masked_mean,
    temporal_metrics,
    warp_errors,
)
from pilot.scenes.geometry import warp


def texture(h=48, w=64, seed=0):
    """A smooth random colour texture (3, H, W) in [0, 1] with detail for DIS to track."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 4, w // 4, generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def shifted(image, dx, dy):
    """Frame whose pixel p shows `image` at p - (dx, dy): content moved by (dx, dy)."""
    return torch.roll(image, shifts=(dy, dx), dims=(1, 2))


def test_integer_shift_is_found_by_dis_and_masked_at_the_border():
    prev = texture()
    cur = shifted(prev, 3, 2)
    field = EstimatedFlow(lambda k: [prev, cur][k], 2)(1)
    interior = field.flow[..., 8:-8, 8:-8]  # the content moved +3, +2: flow back is -3, -2
    assert interior[:, 0].median() == pytest.approx(-3, abs=0.15)
    assert interior[:, 1].median() == pytest.approx(-2, abs=0.15)
    assert field.visible[..., 8:-8, 8:-8].float().mean() > 0.9
    assert not field.visible[..., :, :2].any()  # p - 3 leaves the frame on the left edge


def test_zero_flow_is_identity_and_consistent():
    image = texture()[None]
    zero = torch.zeros(1, 2, 48, 64)
    assert torch.allclose(warp(image, zero), image, atol=1e-6)
    assert consistency_mask(zero, zero).all()
    half = downsample_flow(FlowField(torch.full((1, 2, 48, 64), 4.0), zero[:, :1] == 0), 2)
    assert half.flow.shape == (1, 2, 24, 32) and torch.all(half.flow == 2.0)


def test_shot_flow_sources_agree(small_shot):
    from pilot.scenes.geometry import frame_flow

    geometry, vector = GeometryFlow(small_shot), VectorFlow(small_shot)
    for k in (1, 12, 23):
        g, v = geometry(k), vector(k)
        pair = frame_flow(small_shot[k], small_shot[k - 1])  # both directions, all passes read
        assert torch.equal(g.flow, pair["flow_ij"]) and torch.equal(g.visible, pair["visible_ij"])
        both = g.visible & v.visible
        assert both.float().mean() > 0.5
        assert (g.flow - v.flow).abs().amax(1, keepdim=True)[both].max() < 1e-3
        assert 0.5 < g.visible.float().mean() < 1.0  # some pixels are disoccluded
    with pytest.raises(IndexError, match="needs 1 <= k < 24, got 24"):
        geometry(24)


def test_dis_follows_the_true_flow_on_a_shot(small_shot):
    estimated = EstimatedFlow(lambda k: small_shot[k].image, len(small_shot))
    k = 5
    true, est = GeometryFlow(small_shot)(k), estimated(k)
    both = true.visible & est.visible
    epe = (true.flow - est.flow).norm(dim=1, keepdim=True)[both]
    moving = true.flow.norm(dim=1, keepdim=True)[both].median()
    assert epe.median() < 0.5 * moving  # DIS on 32 px hatching is rough, but it tracks


def test_dis_preset_is_checked():
    with pytest.raises(ValueError, match="DIS preset 'slow'"):
        dis_flow(texture(), texture(), "slow")


def test_metrics_are_zero_for_exact_motion_and_see_brightness_flicker():
    prev = texture()
    frames = torch.stack([prev, shifted(prev, 2, 1)])
    flow = torch.zeros(1, 2, 48, 64)
    flow[:, 0], flow[:, 1] = -2.0, -1.0
    visible = torch.zeros(1, 1, 48, 64, dtype=torch.bool)
    visible[..., 4:, 4:] = True  # away from the wrapped-around border
    field = FlowField(flow, visible)
    assert warp_errors(frames, [field]).item() < 1e-5
    brighter = torch.stack([prev, (shifted(prev, 2, 1) + 0.1)])
    assert flicker_indices(brighter, [field]).item() == pytest.approx(0.1, abs=1e-5)
    assert warp_errors(brighter, [field]).item() == pytest.approx(0.1, abs=1e-5)
    summary = temporal_metrics(brighter, lambda k: field)
    assert summary["frames"] == 2 and summary["flicker"] == pytest.approx(0.1, abs=1e-5)
    with pytest.raises(ValueError, match="2 flow fields for 2 frames"):
        warp_errors(frames, [field, field])


def test_missing_passes_are_named(tmp_path, small_shot):
    import numpy as np

    from pilot.animation.inputs import ShotFrames
    from pilot.scenes.shot import Shot, ShotWriter

    writer = ShotWriter(tmp_path / "bare", 8, 8)
    for _ in range(2):
        writer.add(small_shot.frames[0]["K"], np.eye(4), np.ones((8, 8), np.float32))
    bare = Shot(writer.close().parent)
    with pytest.raises(ValueError, match="no motion pass"):
        VectorFlow(bare)
    frames = ShotFrames(bare)
    with pytest.raises(ValueError, match=r"hatch control needs the normals pass, but shot .*bare"):
        frames.check_kind("hatch")
    with pytest.raises(ValueError, match="canny control needs the image pass"):
        frames.check_kind("canny")
    with pytest.raises(ValueError, match="hatched control needs the hatched pass"):
        frames.check_kind("hatched")
    assert frames.control_image("depth", 1).shape == (1, 3, 8, 8)
    assert ShotFrames(small_shot).control_image("hatch", 3).shape == (1, 3, 32, 32)
    lines = ShotFrames(small_shot).control_image("hatched", 3)  # white lines on black
    assert lines.shape == (1, 3, 32, 32) and torch.equal(lines[:, 0], 1 - small_shot[3].hatched)


def test_geometry_flow_sees_the_sky_that_stays_sky(tmp_path):
    """A shot of sky only (depth = the shot's `far`, here Blender's default clip end of 100 m)
    whose camera steps 2 m and turns 4 degrees: the sky is at infinity, so it moves by the
    rotation alone and every pixel that lands inside the previous frame was seen there."""
    import math

    import numpy as np

    from pilot.scenes.camera import intrinsics
    from pilot.scenes.geometry import pixel_grid
    from pilot.scenes.shot import Shot, ShotWriter

    H, W, far = 24, 32, 100.0
    K = intrinsics(90.0, W, H).numpy()
    c, s = math.cos(math.radians(4)), math.sin(math.radians(4))
    turned = np.eye(4)
    turned[:3, :3], turned[:3, 3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]], [2.0, 0.0, 0.5]
    writer = ShotWriter(tmp_path / "sky", W, H, far=far)
    for c2w in (np.eye(4), turned):
        writer.add(K, c2w, np.full((H, W), far, np.float32))
    field = GeometryFlow(Shot(writer.close().parent))(1)
    R = torch.from_numpy(turned[:3, :3]).float()  # camera 1 -> camera 0 (camera 0: identity)
    p = torch.cat([pixel_grid(H, W, field.flow), torch.ones(1, 1, H, W)], 1).view(3, -1)
    q = torch.from_numpy(K).float() @ R @ torch.linalg.inv(torch.from_numpy(K).float()) @ p
    expected = (q[:2] / q[2:] - p[:2]).view(1, 2, H, W)  # the homography K R K^-1
    assert torch.allclose(field.flow, expected, atol=1e-3)
    uv = (q[:2] / q[2:]).view(2, H, W)
    inside = (uv[0] >= 0) & (uv[0] <= W - 1) & (uv[1] >= 0) & (uv[1] <= H - 1)
    assert inside.float().mean() > 0.8
    assert torch.equal(field.visible[0, 0], inside)


def test_metrics_of_frames_one_at_a_time_are_those_of_the_stack_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(6, 3, 24, 32, generator=g)

    def flow(k):  # random flow and visibility; frame 3 sees nothing of frame 2 (a NaN pair)
        visible = torch.rand(1, 1, 24, 32, generator=g) > (1.0 if k == 5 else 0.3)
        return FlowField(torch.randn(1, 2, 24, 32, generator=g) * 3, visible)

    fields = {k: flow(k) for k in range(3, 8)}  # frames[0] is shot frame 2
    errors = warp_errors(frames, [fields[k] for k in range(3, 8)])
    flicker = flicker_indices(frames, [fields[k] for k in range(3, 8)])
    before = {  # what `temporal_metrics` computed before it took frames one at a time
        "frames": 6,
        "warp_error": float(errors.nanmean()),
        "flicker": float(flicker.nanmean()),
        "warp_error_per_frame": [round(float(e), 6) for e in errors],
        "flicker_per_frame": [round(float(e), 6) for e in flicker],
    }
    assert torch.isnan(errors[2]) and not torch.isnan(errors).all()
    streamed = TemporalMetrics(fields.__getitem__, first=2)
    for frame in frames:
        streamed.add(frame)
    after = streamed.result()
    assert str(after) == str(before)  # NaN per-pair values compare equal as text
    assert str(temporal_metrics(frames, fields.__getitem__, first=2)) == str(before)
    assert TemporalMetrics(fields.__getitem__).result()["warp_error"] is None
    with pytest.raises(ValueError, match=r"frame of shape \(1, 3, 24, 32\)"):
        streamed.add(frames[:1])


def test_disoccluded_distance_one_frame_at_a_time_is_that_of_the_stack_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    video, reference = torch.rand(2, 5, 3, 16, 20, generator=g)
    fields = {  # frame 2 sees all of frame 1: nothing disoccluded there (a NaN frame)
        k: FlowField(
            torch.zeros(1, 2, 16, 20),
            torch.rand(1, 1, 16, 20, generator=g) > (0.0 if k == 2 else 0.6),
        )
        for k in range(1, 5)
    }
    before = torch.stack(  # what `disoccluded_distance` computed before it took frame pairs
        [
            masked_mean((video[k] - reference[k]).abs()[None], ~fields[k].visible)
            for k in range(1, 5)
        ]
    ).nanmean()
    streamed = DisoccludedDistance(fields.__getitem__)
    for frame, reference_frame in zip(video, reference, strict=True):
        streamed.add(frame, reference_frame)
    assert streamed.result() == float(before)  # bit for bit
    assert disoccluded_distance(video, reference, fields.__getitem__) == float(before)
    assert math.isnan(streamed.distances[1])  # the NaN frame: left out by nanmean
    one = DisoccludedDistance(fields.__getitem__)
    one.add(video[0], reference[0])
    assert math.isnan(one.result())  # no pair yet


def test_flow_sources_take_a_step_back_to_frame_k_minus_step(small_shot):
    """Every STEP-th frame: the flow from frame k back to frame k - step, between those two
    frames (an integer shift is exact for DIS; the shot's geometry for any two frames)."""
    base = texture()
    video = [shifted(base, 2 * k, k) for k in range(5)]  # content moves (+2, +1) a frame
    field = EstimatedFlow(video.__getitem__, 5)(4, 2)
    interior = field.flow[..., 8:-8, 8:-8]  # two frames: (-4, -2) back to frame 2
    assert interior[:, 0].median() == pytest.approx(-4, abs=0.15)
    assert interior[:, 1].median() == pytest.approx(-2, abs=0.15)
    with pytest.raises(IndexError, match="flow to frame k - 2 needs 2 <= k < 5, got 1"):
        EstimatedFlow(video.__getitem__, 5)(1, 2)

    from pilot.scenes.geometry import frame_flow

    geometry, k = GeometryFlow(small_shot), 12
    for step in (2, 3):
        field, pair = geometry(k, step), frame_flow(small_shot[k], small_shot[k - step])
        assert torch.equal(field.flow, pair["flow_ij"])
        assert torch.equal(field.visible, pair["visible_ij"])
        assert not torch.equal(field.flow, geometry(k).flow)
    assert torch.equal(geometry(k, 1).flow, geometry(k).flow)
    with pytest.raises(ValueError, match="links adjacent frames only, not frames 2 apart"):
        VectorFlow(small_shot)(12, 2)


def test_metrics_with_a_step_score_each_frame_against_frame_k_minus_step():
    asked = []

    def flow(k, step=1):
        asked.append((k, step))
        return FlowField(torch.zeros(1, 2, 4, 4), torch.ones(1, 1, 4, 4, dtype=torch.bool))

    frames = torch.rand(3, 3, 4, 4)  # shot frames 1, 3, 5
    metrics = temporal_metrics(frames, flow, first=1, step=2)
    assert asked == [(3, 2), (5, 2)] and metrics["frames"] == 3
    assert metrics["warp_error"] == pytest.approx((frames[1:] - frames[:-1]).abs().mean().item())
    asked.clear()
    temporal_metrics(frames, lambda k: flow(k), first=1)  # step 1: one-argument sources work
    assert asked == [(2, 1), (3, 1)]
    with pytest.raises(ValueError, match="step must be an int >= 1, got 0"):
        TemporalMetrics(flow, step=0)


def test_a_flow_source_of_your_own_is_checked_naming_it():
    """A tuple, a field without its batch dimension or of another size, or a float mask used to
    fail inside `warp` or at `~visible`, naming neither the source nor the frame."""
    flow, visible = torch.zeros(1, 2, 8, 12), torch.ones(1, 1, 8, 12, dtype=torch.bool)
    good = FlowField(flow, visible)
    assert backward_flow(lambda k: good, 3, size=(8, 12)) is good
    bad = [
        ((flow, visible), "returned a tuple: expected a FlowField"),
        (FlowField(flow[0], visible[0]), r"gave flow \(2, 8, 12\) torch.float32"),
        (FlowField(flow[..., :4, :6], visible[..., :4, :6]), r"gave flow \(1, 2, 4, 6\)"),
        (FlowField(flow, visible.float()), r"gave .* and visible \(1, 1, 8, 12\) torch.float32"),
    ]
    for field, match in bad:

        def my_flow(k, *, field=field):
            return field

        with pytest.raises(ValueError, match=f"^flow source my_flow at frame 3 {match}"):
            backward_flow(my_flow, 3, size=(8, 12))
    check_flow_step(lambda k, step: good, 2)
    check_flow_step(GeometryFlow.__call__.__get__(object()), 2)  # (k, step=1): a bound method
    check_flow_step(lambda k: good, 1)
    with pytest.raises(ValueError, match="frame step 2: flow source <lambda> takes one argument"):
        check_flow_step(lambda k: good, 2)


def test_another_flow_estimator_in_place_of_dis():
    """`EstimatedFlow(..., estimator=)`: a function of your own runs both ways and gets the
    consistency mask (here the exact flow of an integer shift); a wrong shape is named."""
    prev = texture()
    frames = [prev, shifted(prev, 3, 2)]
    calls = []

    def exact(image_i, image_j):  # content moved (+3, +2) from frame 0 to frame 1
        calls.append(1)
        forward = torch.equal(image_i, frames[0])
        return (
            torch.tensor([3.0, 2.0] if forward else [-3.0, -2.0])
            .view(1, 2, 1, 1)
            .expand(1, 2, 48, 64)
        )

    field = EstimatedFlow(frames.__getitem__, 2, estimator=exact)(1)
    assert len(calls) == 2 and torch.equal(field.flow, exact(frames[1], frames[0]))
    assert field.visible[..., 8:-8, 8:-8].all() and not field.visible[..., :, :3].any()
    dis = EstimatedFlow(frames.__getitem__, 2, estimator=dis_flow)(1)
    assert torch.equal(dis.flow, EstimatedFlow(frames.__getitem__, 2)(1).flow)

    def my_raft(image_i, image_j):
        return torch.zeros(2, 48, 64)

    with pytest.raises(ValueError, match=r"^flow estimator my_raft returned \(2, 48, 64\)"):
        EstimatedFlow(frames.__getitem__, 2, estimator=my_raft)(1)
