"""Latent walks: slerp endpoints and norms, seeded points, looping paths; video writers."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pilot.animation.video import write_gif, write_mp4, write_video
from pilot.animation.walks import angle, latent_walk, lerp, seeded_points, slerp, walk


def test_slerp_endpoints_and_constant_angular_speed():
    a, b = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    a, b = a / a.norm(), b / b.norm()  # on the unit sphere the angular speed is constant
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a, atol=1e-6) and torch.allclose(path[-1], b, atol=1e-6)
    steps = [angle(path[i], path[i + 1]) for i in range(4)]
    assert max(steps) - min(steps) < 1e-6  # equal angles between neighbours
    assert abs(sum(steps) - angle(a, b)) < 1e-6  # along the great circle


def test_slerp_keeps_norm_of_orthonormal_ends_where_lerp_shrinks_it():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert slerp(a, b, 0.5).norm().item() == pytest.approx(1.0)
    assert lerp(a, b, 0.5).norm().item() == pytest.approx(math.sqrt(0.5))


def test_slerp_of_parallel_vectors_and_shapes():
    a = torch.randn(4, 8, 8)
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a, atol=1e-5)  # lerp fallback, no NaN
    assert slerp(a, a.flip(0), torch.tensor([0.25, 0.5])).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"equal shapes"):
        slerp(torch.zeros(3), torch.zeros(4), 0.5)


def test_seeded_points_do_not_depend_on_the_batch():
    all_points = seeded_points([5, 6, 7], (16,))
    assert torch.equal(all_points[1], seeded_points([6], (16,))[0])


def test_looping_walk_passes_through_points_and_returns():
    points = seeded_points([0, 1, 2], (8,))
    frames = walk(points, 6, loop=True)  # 2 frames per segment, 3 segments
    assert torch.allclose(frames[0], points[0]) and torch.allclose(frames[2], points[1])
    assert torch.allclose(frames[4], points[2])
    open_walk = walk(points, 5, loop=False, mode="lerp")
    assert torch.allclose(open_walk[-1], points[-1]) and torch.allclose(open_walk[2], points[1])


def test_latent_walk_is_reproducible():
    a = latent_walk((4,), 10, n_points=3, seed=7, ease=True)
    b = latent_walk((4,), 10, n_points=3, seed=7, ease=True)
    assert a.shape == (10, 4) and torch.equal(a, b)
    with pytest.raises(ValueError, match="mode="):
        walk(torch.zeros(2, 3), 4, mode="cubic")


def test_video_writers(tmp_path):
    frames = [np.full((9, 11, 3), i * 40, np.uint8) for i in range(4)]  # odd sides
    with Image.open(write_gif(frames, tmp_path / "a.gif", fps=10)) as gif:
        assert gif.n_frames == 4
    assert write_mp4(frames, tmp_path / "a.mp4").stat().st_size > 0
    with pytest.raises(ValueError, match="unknown video suffix"):
        write_video(frames, tmp_path / "a.avi")
    with pytest.raises(ValueError, match=r"frame 1 is uint8 \(5, 5, 3\)"):
        write_gif([frames[0], np.zeros((5, 5, 3), np.uint8)], tmp_path / "b.gif")
    for fps in (0, -3, float("nan")):
        with pytest.raises(ValueError, match=f"c.mp4: fps={fps} must be a positive"):
            write_video(frames, tmp_path / "c.mp4", fps=fps)
        with pytest.raises(ValueError, match="must be a positive"):
            write_gif(frames, tmp_path / "c.gif", fps=fps)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_remove_temp_files_clears_what_killed_writes_left(tmp_path):
    from pilot.animation.video import _temp_path, remove_temp_files

    frame = _temp_path(tmp_path / "00000026.png")  # as a write killed before os.replace leaves it
    video = _temp_path(tmp_path / "timelapse.gif")
    keep = [tmp_path / "00000026.png", tmp_path / ".hidden.png", tmp_path / ".a.toolong12.png"]
    for path in keep:
        path.touch()
    assert remove_temp_files(tmp_path) == [frame]
    assert remove_temp_files(tmp_path, "timelapse", (".gif", ".mp4")) == [video]
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert remove_temp_files(tmp_path / "missing") == []


def test_video_targets_and_sizes_are_checked_before_any_work(tmp_path):
    from pilot.animation.video import check_video_path

    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "file").touch()
    with pytest.raises(ValueError, match=r"folder.mp4: is a folder, not a video file"):
        check_video_path(tmp_path / "folder.mp4", 8)
    with pytest.raises(ValueError, match=r"file is a file, not a folder"):
        check_video_path(tmp_path / "file" / "sub" / "a.gif", 8)
    check_video_path(tmp_path / "new" / "a.gif", 8)  # folders to be made are fine
    wide = [np.zeros((2, 8192, 3), np.uint8)]  # OpenCV's mp4v writer refuses 8192 px
    for name in ("a.mp4", "a.gif"):
        with pytest.raises(ValueError, match=r"8192x2 px are too large \(at most 8190 px"):
            write_video(wide, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.mp4"]
