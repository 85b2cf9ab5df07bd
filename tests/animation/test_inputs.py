"""The run folder's frame store (frames kept in memory as written, PNGs written behind), and a
folder of frames as a video."""

import time

import pytest
import torch

from pilot.animation.inputs import FrameStore, VideoFrames
from pilot.imageio import read_image, write_png


@pytest.mark.parametrize("write_behind", [False, True])
def test_a_frame_reads_back_as_its_png(tmp_path, write_behind):
    store = FrameStore(tmp_path, write_behind=write_behind)
    image = torch.rand(1, 3, 9, 7)
    store.write(5, image)
    assert store.has(5) and not store.has(4)
    got = store.read(5)  # from memory
    store.flush()
    assert torch.equal(got, read_image(store.frame_path(5))[None])
    assert (got - image).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding
    got.zero_()  # a caller's copy: the store's frame is untouched
    assert torch.equal(store.read(5), read_image(store.frame_path(5))[None])


def test_only_the_last_frames_stay_in_memory(tmp_path):
    store = FrameStore(tmp_path, write_behind=True)
    images = torch.rand(store.keep + 3, 1, 3, 4, 4)
    for k, image in enumerate(images):
        store.write(k, image)
        store.read(0)  # read every frame (a colour reference): kept
    assert len(store._recent) == store.keep and 0 in store._recent
    assert torch.equal(store.read(1), FrameStore(tmp_path).read(1))  # from disk, after its write


@pytest.mark.parametrize("write_behind", [False, True])
def test_a_failed_write_is_raised(tmp_path, write_behind):
    (tmp_path / "frames").write_text("not a folder")
    store = FrameStore(tmp_path, write_behind=write_behind)
    with pytest.raises(OSError):
        store.write(0, torch.rand(1, 3, 4, 4))
        store.flush()  # write behind: the writer thread's error


def test_leaving_the_store_by_an_error_still_writes_its_frames(tmp_path, monkeypatch):
    import pilot.animation.inputs as inputs

    write_png = inputs.write_png

    def slow_write(path, array):
        time.sleep(0.3)  # still writing when the error leaves the block
        write_png(path, array)

    monkeypatch.setattr(inputs, "write_png", slow_write)
    with pytest.raises(RuntimeError, match="killed") as error:
        with FrameStore(tmp_path, write_behind=True) as store:
            store.write(0, torch.rand(1, 3, 4, 4))
            store.write(1, torch.rand(1, 3, 4, 4))
            raise RuntimeError("killed")
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["000000.png", "000001.png"]
    assert store._writer is None and not getattr(error.value, "__notes__", None)


def test_a_failed_write_is_noted_on_the_error_that_left_the_store(tmp_path):
    (tmp_path / "frames").write_text("not a folder")
    with pytest.raises(RuntimeError, match="killed") as error:
        with FrameStore(tmp_path, write_behind=True) as store:
            store.write(0, torch.rand(1, 3, 4, 4))
            raise RuntimeError("killed")
    assert "a frame write failed" in error.value.__notes__[0]


def _frame_folder(root, sizes):
    root.mkdir()
    for i, (h, w) in enumerate(sizes):
        write_png(root / f"{i:03d}.png", torch.rand(3, h, w))
    return root


def test_a_frame_folder_of_mixed_sizes_names_the_first_odd_frame(tmp_path):
    folder = _frame_folder(tmp_path / "mixed", [(16, 16), (16, 16), (16, 8), (8, 8)])
    with pytest.raises(ValueError, match=r"mixed: 002\.png is 8x16, but 000\.png is 16x16"):
        VideoFrames(folder)
    video = VideoFrames(folder, width=8, height=16)  # with a size each frame is resized
    assert (len(video), video.height, video.width) == (4, 16, 8)
    assert all(video.frame(k).shape == (3, 16, 8) for k in range(4))
    assert torch.equal(video.frame(2), read_image(folder / "002.png"))  # already that size


def test_a_video_is_resized_by_width_and_height_and_size_is_their_deprecated_spelling(
    tmp_path,
):
    """`width=` / `height=` as in `Request` and `--width/--height`; the old `size=(H, W)`
    still works, with a warning."""
    folder = _frame_folder(tmp_path / "frames", [(16, 16), (16, 16)])
    assert VideoFrames(folder, width=8, height=16).frame(1).shape == (3, 16, 8)
    with pytest.warns(DeprecationWarning, match=r"size=\(H, W\)\) is deprecated.*height=H"):
        assert VideoFrames(folder, size=(16, 8)).frame(1).shape == (3, 16, 8)
    with pytest.raises(ValueError, match="width=8, height=None: pass both, or neither"):
        VideoFrames(folder, width=8)
