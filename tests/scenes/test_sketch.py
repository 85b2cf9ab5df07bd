"""The hatched pass drawn from depth and normals: lines at the asked density, on the surfaces,
fixed in the world as the camera moves; `write_pass` and `pilot shot hatch`."""

import json

import numpy as np
import pytest
import torch

from pilot.cli import main
from pilot.scenes.camera import intrinsics
from pilot.scenes.geometry import frame_flow, warp
from pilot.scenes.procedural import fly_through_shot
from pilot.scenes.shot import Shot, write_pass
from pilot.scenes.sketch import hatched_pass


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    root = tmp_path_factory.mktemp("shot")
    fly_through_shot(root, seed=1, n_frames=24, width=96, height=96)
    return Shot(root)


def _draw(frame, c2w=None, **kw):
    c2w = frame.c2w if c2w is None else c2w
    return hatched_pass(frame.depth[None], frame.normals[None], frame.K[None], c2w[None], **kw)[0]


def _wall(shift_px: float = 0.0, **kw):
    """A wall 2 m ahead of a camera looking along world +x (OpenCV axes: x right = world -y,
    y down = world -z, z forward = world +x), the camera moved right by `shift_px` pixels'
    worth of wall; fx = 64 px, so the 128 px wide image spans 4 m of the wall."""
    K = intrinsics(90.0, 128, 96)
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    c2w[1, 3] = -shift_px * 2.0 / 64  # right = world -y
    depth = torch.full((1, 1, 96, 128), 2.0)
    normals = torch.tensor([0.0, 0, -1]).view(1, 3, 1, 1).expand(1, 3, 96, 128)
    return hatched_pass(depth, normals, K[None], c2w[None], **kw)[0, 0]


def test_a_wall_facing_the_camera_gets_vertical_lines_at_the_density():
    ink = 1 - _wall(density=2.0, width=0.25)
    assert torch.allclose(ink, ink[:1].expand_as(ink))  # vertical lines
    row = ink[0] > 0.5
    starts = int((row[1:] & ~row[:-1]).sum()) + int(row[0])
    assert starts in (8, 9)  # 4 m x 2 lines per metre (one may be cut at an edge)
    assert ink[0].mean().item() == pytest.approx(0.25, abs=0.04)  # width: a quarter inked


def test_lines_are_fixed_on_the_wall_not_on_the_camera():
    still, moved = _wall(density=3.0), _wall(5.0, density=3.0)
    assert (moved - still).abs().max() > 0.5  # the picture changed ...
    assert torch.allclose(moved[:, :-5], still[:, 5:], atol=1e-4)  # ... by 5 px to the left


def test_under_real_motion_lines_move_like_the_renderers(shot):
    """Warping frame k's drawing by the true flow gives frame k + 1's up to resampling, about
    as well as it does for the renderer's own hatching, which is fixed on the surfaces."""

    def warp_error(a, b, flow, visible):
        moved = warp(a[None], flow)[0]
        edges = (b[:, :, 1:] - b[:, :, :-1]).abs().mean() + (b[:, 1:] - b[:, :-1]).abs().mean()
        return ((moved - b).abs()[visible[0]].mean() / edges).item()  # per unit of line edges

    for k in (4, 14):
        a, b = shot[k], shot[k + 1]
        pair = frame_flow(b, a)  # b's pixels -> where they are in a
        flow, visible = pair["flow_ij"], pair["visible_ij"]
        assert visible.float().mean() > 0.5 and flow.norm(dim=1).mean() > 2  # real motion
        ours = warp_error(_draw(a), _draw(b), flow, visible)
        renderer = warp_error(a.hatched, b.hatched, flow, visible)
        assert ours < 1.8 * renderer, (ours, renderer)


def test_cross_and_background(shot):
    frame = shot[3]
    plain, crossed = _draw(frame), _draw(frame, cross=True)
    sky = ~(frame.normals != 0).any(0, keepdim=True)
    assert (crossed <= plain + 1e-6).all() and (crossed < plain - 0.5).any()  # lines added
    assert (plain[sky] == 1).all()  # paper where nothing was hit
    with pytest.raises(ValueError, match="width=1.5"):
        _draw(frame, width=1.5)


def test_write_pass_adds_a_pass_or_refuses_a_wrong_count(shot, tmp_path):
    import shutil

    root = tmp_path / "s"
    shutil.copytree(shot.root, root)
    meta = json.loads((root / "shot.json").read_text())
    meta["passes"].remove("image")
    (root / "shot.json").write_text(json.dumps(meta))
    copy = Shot(root)
    frames = [np.full((96, 96, 3), 7, np.uint8)] * len(copy)
    with pytest.raises(ValueError, match="3 image frames for a shot of 24"):
        write_pass(copy, "image", frames[:3])
    assert "image" not in Shot(root).passes  # shot.json untouched
    write_pass(copy, "image", frames)
    again = Shot(root)
    assert again.passes == ["depth", "normals", "motion", "image", "hatched"]
    assert again[5].image.mul(255).round().eq(7).all()
    with pytest.raises(ValueError, match="pass 'fog'"):
        write_pass(again, "fog", frames)


def test_pilot_shot_hatch(tmp_path, capsys):
    root = tmp_path / "shot"
    assert main(["shot", "render", str(root), "--frames", "3", "--size", "32", "24"]) == 0
    assert main(["shot", "hatch", str(root)]) == 2
    assert "has a hatched pass already (--force replaces it)" in capsys.readouterr().err
    assert main(["shot", "hatch", str(root), "--force", "--density", "4", "--cross"]) == 0
    frame = Shot(root)[1]
    drawn = _draw(frame, density=4.0, cross=True)
    assert (frame.hatched - drawn).abs().max() <= 0.5 / 255 + 1e-6
    meta = json.loads((root / "shot.json").read_text())
    meta["passes"].remove("normals")
    (root / "shot.json").write_text(json.dumps(meta))
    assert main(["shot", "hatch", str(root), "--force"]) == 2
    assert "needs normals" in capsys.readouterr().err


def test_replacing_a_pass_never_leaves_a_mix_of_old_and_new_frames(shot, tmp_path, capsys):
    import shutil

    root = tmp_path / "s"
    shutil.copytree(shot.root, root)
    old = Shot(root)[5].hatched.clone()
    assert main(["shot", "hatch", str(root), "--force", "--width", "2"]) == 2
    assert "--width 2.0" in capsys.readouterr().err
    assert torch.equal(Shot(root)[5].hatched, old)  # a bad argument changes nothing

    def crash_after_two():
        yield from [np.zeros((96, 96), np.uint8)] * 2
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_pass(Shot(root), "hatched", crash_after_two())
    assert "hatched" not in Shot(root).passes  # not listed: old and new frames never mix
    assert main(["shot", "hatch", str(root)]) == 0  # re-run: the pass is back
    assert Shot(root).passes[-1] == "hatched"
