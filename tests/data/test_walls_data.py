"""Walls pair data set: determinism by seed, item independence, writer manifest and reader."""

import json

import pytest
import torch

from pilot.data.paired import UNFINISHED, PairedConfig, PairedImages
from pilot.data.walls import (
    WallsFolder,
    check_write_args,
    fog_density_range,
    render_pairs,
    write_pairs,
)

WALLS = PairedConfig(inputs=("hatched",), input_channels=(1,), targets=("textured", "fog"),
                     target_channels=(3, 1), image_size=16, load_size=16)  # fmt: skip


def test_same_seed_same_pairs_and_item_independent_of_batch():
    a = render_pairs(4, 32, seed=7, batch=4)
    b = render_pairs(4, 32, seed=7, batch=4)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # item 2 rendered alone, in another batch composition
    c = render_pairs(1, 32, seed=7, start=2, batch=1)
    assert torch.equal(c["c2w"][0], a["c2w"][2]) and torch.equal(c["layout"][0], a["layout"][2])
    for k in ("hatched", "textured", "fog", "depth"):
        assert (c[k][0] - a[k][2]).abs().mean() < 1e-4, k
    d = render_pairs(4, 32, seed=8, batch=4)
    assert not torch.equal(a["textured"], d["textured"])


def test_shapes_and_ranges():
    out = render_pairs(3, 40, seed=0)
    assert out["hatched"].shape == (3, 1, 40, 40) and out["textured"].shape == (3, 3, 40, 40)
    assert out["fog"].shape == (3, 1, 40, 40) and out["K"].shape == (3, 3, 3)
    for k in ("hatched", "textured", "fog"):
        assert 0 <= out[k].min() and out[k].max() <= 1, k
    with pytest.raises(ValueError, match="unknown layouts"):
        render_pairs(1, 32, seed=0, layout_names=["cave"])


def test_writer_manifest_and_reader(tmp_path):
    manifest = write_pairs(tmp_path, 5, 32, seed=3, passes=("hatched", "textured", "fog", "depth"))
    meta = json.loads(manifest.read_text())
    assert meta["count"] == 5 and len(meta["items"]) == 5 and meta["seed"] == 3
    assert sorted(p.name for p in (tmp_path / "textured").iterdir())[0] == "000000.png"
    ds = WallsFolder(tmp_path, passes=("hatched", "textured", "fog", "depth"))
    item = ds[4]
    assert item["hatched"].shape == (1, 32, 32) and item["textured"].shape == (3, 32, 32)
    ref = render_pairs(1, 32, seed=3, start=4)
    assert ((item["textured"] + 1) / 2 - ref["textured"][0]).abs().max() <= 1 / 255 + 1e-6
    assert torch.allclose(item["depth"], ref["depth"][0], rtol=1e-5)
    assert -1 <= item["fog"].min() and item["fog"].max() <= 1


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        WallsFolder(tmp_path)
    write_pairs(tmp_path, 2, 16, seed=0)
    (tmp_path / "fog" / "000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="000001.png"):
        WallsFolder(tmp_path)[1]
    with pytest.raises(ValueError, match="depth"):
        WallsFolder(tmp_path, passes=("hatched", "depth"))


@pytest.mark.slow  # spawning two workers imports torch twice: ~5-20 s on a busy 2-core box
def test_worker_processes_write_identical_files(tmp_path):
    write_pairs(tmp_path / "one", 3, 16, seed=5)
    write_pairs(tmp_path / "two", 3, 16, seed=5, workers=2)
    a = json.loads((tmp_path / "one" / "manifest.json").read_text())
    b = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert a == b
    for p in ("hatched", "textured", "fog"):
        for i in range(3):
            name = f"{p}/{i:06d}.png"
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_rewriting_replaces_the_earlier_set(tmp_path):
    write_pairs(tmp_path, 4, 16, seed=0, passes=("hatched", "textured", "fog", "depth"))
    (tmp_path / "notes.txt").write_text("mine")
    write_pairs(tmp_path, 2, 24, seed=1)  # fewer pairs, other size, no depth
    for p in ("hatched", "textured", "fog"):
        assert sorted(f.name for f in (tmp_path / p).iterdir()) == ["000000.png", "000001.png"]
    assert not (tmp_path / "depth").exists() and (tmp_path / "notes.txt").is_file()
    assert len(PairedImages(tmp_path, WALLS)) == 2  # training reads the folders: 2, not 4
    assert not (tmp_path / UNFINISHED).exists()


def test_interrupted_rewrite_is_unfinished(tmp_path, monkeypatch):
    from pilot.data import walls

    write_pairs(tmp_path, 3, 16, seed=0)

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(walls, "_write_range", killed)
    with pytest.raises(KeyboardInterrupt):
        write_pairs(tmp_path, 3, 16, seed=1)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        WallsFolder(tmp_path)  # the old manifest does not vouch for the new files
    with pytest.raises(ValueError, match="unfinished pairs"):
        PairedImages(tmp_path, WALLS)
    monkeypatch.undo()
    write_pairs(tmp_path, 3, 16, seed=1)  # rerun: accepted, complete
    assert len(WallsFolder(tmp_path)) == 3


def test_a_folder_of_yours_is_refused(tmp_path):
    (tmp_path / "hatched").mkdir()
    (tmp_path / "hatched" / "000000.png").write_bytes(b"my sketch")
    with pytest.raises(ValueError, match="holds no pairs of write_pairs"):
        write_pairs(tmp_path, 1, 16, seed=0)
    assert (tmp_path / "hatched" / "000000.png").read_bytes() == b"my sketch"


def test_argument_checks():
    assert fog_density_range([0.1]) == (0.1, 0.1)
    assert fog_density_range([0.02, 0.25]) == (0.02, 0.25)
    for bad in ([0.3, 0.1], [0.1, 0.2, 0.3], [-0.1], []):
        with pytest.raises(ValueError, match="--fog-density takes D or LO HI"):
            fog_density_range(bad)
    with pytest.raises(ValueError, match="n=0"):
        check_write_args(0, 16)
