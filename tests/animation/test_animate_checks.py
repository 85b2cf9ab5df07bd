"""`pilot animate`'s checks before the first frame (`pilot.commands._animate_checks`): schedule
values over the whole range, a range starting after a missing frame, the source's fingerprint,
the resolved dtype, and clear errors for options that cannot work."""

import json
import re
import shutil

import pytest
import torch

from pilot.cli import main
from pilot.imageio import write_png
from pilot.scenes.procedural import fly_through_shot


def animate(model, shot, out, *extra):
    """A 2-step run over the shot folder `shot` (every frame unless `extra` says)."""
    return main(["animate", "--model", str(model), "--shot", str(shot), "--prompt", "a corridor",
                 "--steps", "2", "--cfg", "2", "--seed", "3", "--out", str(out),
                 *extra])  # fmt: skip


def frames_made(out):
    folder = out.with_suffix(".run") / "frames"
    return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []


@pytest.fixture
def shot(small_shot, tmp_path):
    """A copy of the 24-frame test shot that a test may change."""
    return shutil.copytree(small_shot.root, tmp_path / "shot")


def test_bad_schedule_values_fail_before_the_first_frame(
    model_folder, controlnet_folder, shot, tmp_path, capsys
):
    long_prompt = " ".join(["corridor"] * 90)  # two 77-token chunks
    control = ["--controlnet", f"depth={controlnet_folder}"]
    cases = [
        (["--strength", "0:(0.3*t)"], "strength schedule '0:(0.3*t)' gives 1.2 at frame 4"),
        (["--cfg", "0:(7), 3:(1/(t-4))"], "value '1/(t-4)' fails at t=4"),
        ([*control, "--control-scale", "0:(1), 5:(sqrt(4-t))"], "fails at t=5"),
        (["--seed-schedule", "0:(0), 4:(0), 5:(1e20)"], "00000 at frame 5, outside"),
        (["--seed", str(2**64)], "base seed 18446744073709551616 is outside"),
        (["--prompt", f"0: red | 3: {long_prompt}"], "encode to different lengths"),
    ]  # fmt: skip
    for extra, message in cases:
        out = tmp_path / "bad.mp4"
        assert animate(model_folder, shot, out, "--frames", "0:6", *extra) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert frames_made(out) == [], extra
        shutil.rmtree(out.with_suffix(".run"), ignore_errors=True)
    # nothing recorded: the corrected schedule starts the run
    out = tmp_path / "fixed.mp4"
    assert animate(model_folder, shot, out, "--frames", "0:6", "--strength", "0:(0.3*t)") == 2
    assert animate(model_folder, shot, out, "--frames", "0:2", "--strength", "0:(0.1*t)") == 0


def test_errors_name_the_flag(model_folder, shot, tmp_path, capsys):
    cases = [
        (["--steps", "0"], "error: --steps must be >= 1, got 0"),
        (["--strength", "1.5"], "error: --strength: strength schedule '1.5' gives 1.5 at frame 0, "
                                "outside [0, 1]"),
        (["--frames", "0:99"], "error: --frames '0:99' is outside the source's frames 0:24"),
    ]  # fmt: skip
    for extra, message in cases:
        assert animate(model_folder, shot, tmp_path / "bad.mp4", *extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert frames_made(tmp_path / "bad.mp4") == []


def test_a_range_after_a_missing_frame_is_refused(model_folder, shot, tmp_path, capsys):
    out = tmp_path / "film.mp4"
    assert animate(model_folder, shot, out, "--frames", "0:2") == 0
    capsys.readouterr()
    assert animate(model_folder, shot, out, "--frames", "4:6") == 2
    error = capsys.readouterr().err
    assert "frame 4 is made from frame 3, which is not in" in error
    assert "render --frames 2:6" in error
    assert frames_made(out) == ["000000.png", "000001.png"]
    assert animate(model_folder, shot, out, "--frames", "2:3") == 0  # continues where it ends
    # frames that ignore their previous one may start anywhere
    free = ["--strength", "1", "--occlusion", "ignore", "--frames", "5:6"]
    assert animate(model_folder, shot, tmp_path / "free.mp4", *free) == 0


def test_fps_is_checked_before_any_frame(model_folder, shot, tmp_path, capsys):
    meta = json.loads((shot / "shot.json").read_text())
    (shot / "shot.json").write_text(json.dumps({**meta, "fps": 0}))
    out = tmp_path / "film.mp4"
    assert animate(model_folder, shot, out) == 2
    assert "fps=0" in capsys.readouterr().err
    assert frames_made(out) == []


def test_a_changed_source_is_refused_and_the_same_one_by_another_path_resumes(
    model_folder, shot, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "film.mp4"
    assert animate(model_folder, shot, out, "--frames", "0:1") == 0
    settings = json.loads((tmp_path / "film.run" / "settings.json").read_text())
    assert settings["shot"] == str(shot.resolve()) and "sha256" in settings["source_fingerprint"]
    monkeypatch.chdir(tmp_path)
    assert animate(model_folder, "shot", out, "--frames", "0:2") == 0  # relative path: resumes
    fly_through_shot(shot, seed=5, n_frames=24, width=32, height=32)  # the artist re-renders
    capsys.readouterr()
    assert animate(model_folder, shot, out, "--frames", "0:3") == 2
    assert "made with other settings (source_fingerprint: '24 frames 32x32" in (
        capsys.readouterr().err
    )
    assert frames_made(out) == ["000000.png", "000001.png"]


def test_settings_json_of_older_folders_still_resumes(
    model_folder, shot, tmp_path, capsys, monkeypatch
):
    """Made before the fingerprint and the resolved dtype: the path as given, dtype null."""
    out = tmp_path / "film.mp4"
    assert animate(model_folder, shot, out, "--frames", "0:1") == 0
    path = tmp_path / "film.run" / "settings.json"
    settings = json.loads(path.read_text())
    del settings["source_fingerprint"]
    settings.update(dtype=None, shot="shot")
    path.write_text(json.dumps(settings))
    monkeypatch.chdir(tmp_path)
    assert animate(model_folder, shot, out, "--frames", "0:2") == 0
    capsys.readouterr()
    assert animate(model_folder, shot, out, "--frames", "0:2", "--dtype", "float16") == 2
    assert "dtype: None -> 'float16'" in capsys.readouterr().err
    assert json.loads(path.read_text()) == settings  # left as it was


def test_frames_of_another_size_are_refused_before_any_video(model_folder, shot, tmp_path, capsys):
    out = tmp_path / "film.mp4"
    assert animate(model_folder, shot, out, "--frames", "0:2") == 0
    path = tmp_path / "film.run" / "settings.json"
    settings = json.loads(path.read_text())
    del settings["source_fingerprint"]  # an older folder: the source is not fingerprinted
    path.write_text(json.dumps(settings))
    before = out.read_bytes()
    shutil.rmtree(shot)
    fly_through_shot(shot, seed=1, n_frames=2, width=24, height=24)
    capsys.readouterr()
    assert animate(model_folder, shot, out, "--frames", "0:2") == 2
    assert "000000.png is 32x32, but" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_dtype_is_recorded_resolved(model_folder, shot, tmp_path, capsys):
    out = tmp_path / "film.mp4"
    assert animate(model_folder, shot, out, "--frames", "0:1", "--device", "cpu") == 0
    settings = json.loads((tmp_path / "film.run" / "settings.json").read_text())
    assert settings["dtype"] == "float32"
    assert animate(model_folder, shot, out, "--frames", "0:2", "--dtype", "float32") == 0
    capsys.readouterr()
    assert animate(model_folder, shot, out, "--frames", "0:2", "--dtype", "float16") == 2
    assert "dtype: 'float32' -> 'float16'" in capsys.readouterr().err


def test_depth_per_frame_is_a_run_setting(model_folder, controlnet_folder, shot, tmp_path):
    control = ["--controlnet", f"depth={controlnet_folder}", "--frames", "0:1"]
    assert animate(model_folder, shot, tmp_path / "a.mp4", *control) == 0
    assert animate(model_folder, shot, tmp_path / "b.mp4", *control, "--depth-per", "frame") == 0
    a, b = (json.loads((tmp_path / f"{n}.run" / "settings.json").read_text()) for n in "ab")
    assert "depth_per" not in a and b["depth_per"] == "frame"  # older folders resume
    png = "frames/000000.png"
    assert (tmp_path / "a.run" / png).read_bytes() != (tmp_path / "b.run" / png).read_bytes()


def test_settings_recorded_only_when_not_default_are_refused_naming_the_default(tmp_path):
    """A setting left out of settings.json at its default shows as that default (frame_step 1,
    not None) in the message refusing a rerun, whichever way it changed."""
    from pilot.animation.inputs import check_run_folder
    from pilot.cli import build_parser
    from pilot.commands._animate_checks import RECORDED_DEFAULTS, frame_range

    args = build_parser().parse_args(
        ["animate", "--model", "m", "--prompt", "p", "--out", "o", "--shot", "s"]
    )
    options = {k: getattr(args, k) for k in RECORDED_DEFAULTS if hasattr(args, k)}
    assert options == {k: v for k, v in RECORDED_DEFAULTS.items() if k in options}
    assert set(RECORDED_DEFAULTS) - set(options) == {"frame_step"}  # --frames' STEP
    assert frame_range("0:3", 3).step == RECORDED_DEFAULTS["frame_step"]
    given = {
        "seed": 1,
        "frame_step": 2,
        "lora": ["a.safetensors:1"],
        "vae_upcast": "always",
        "depth_per": "frame",
        "preview_decoder": "p",
        "vae": "v",
        "embedding": ["x.pt"],
    }
    shown = ("depth_per: 'frame' -> 'shot', embedding: ['x.pt'] -> [], frame_step: 2 -> 1, "
             "lora: ['a.safetensors:1'] -> [], preview_decoder: 'p' -> None, vae: 'v' -> None, "
             "vae_upcast: 'always' -> 'auto')")  # fmt: skip
    for run, first, second, message in [
        (tmp_path / "a", given, {"seed": 1}, shown),
        (tmp_path / "b", {"seed": 1}, {"seed": 1, "frame_step": 3}, "(frame_step: 1 -> 3)"),
    ]:
        check_run_folder(run, first, defaults=RECORDED_DEFAULTS)
        with pytest.raises(ValueError, match=re.escape(message)):
            check_run_folder(run, second, defaults=RECORDED_DEFAULTS)


def test_a_rerun_clears_what_killed_writes_left(model_folder, small_shot, tmp_path):
    from tests.conftest import plant_temps

    out, run = tmp_path / "film.mp4", tmp_path / "film.run"
    assert animate(model_folder, small_shot.root, out, "--frames", "0:2") == 0
    cut = plant_temps(run / "frames" / "000002.png", run / "state" / "000002.npy",
                      run / "metrics.json", out, out.with_suffix(".gif"))  # fmt: skip
    other = plant_temps(tmp_path / "other.mp4")  # another command's output, maybe being written
    assert animate(model_folder, small_shot.root, out, "--frames", "0:2") == 0
    assert not any(p.exists() for p in cut) and other[0].exists()


def test_metrics_are_scored_with_the_shot_geometry(model_folder, small_shot, tmp_path, capsys):
    from pilot.animation.flow import GeometryFlow
    from pilot.animation.metrics import temporal_metrics
    from pilot.imageio import read_image

    out = tmp_path / "film.mp4"
    capsys.readouterr()
    assert animate(model_folder, small_shot.root, out, "--frames", "0:3", "--flow", "estimated",
                   "--json") == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    frames = torch.cat([read_image(tmp_path / f"film.run/frames/{k:06d}.png")[None]
                        for k in range(3)])  # fmt: skip
    truth = temporal_metrics(frames, GeometryFlow(small_shot))
    assert metrics["warp_error"] == truth["warp_error"]
    assert metrics["flow"] == "estimated" and metrics["scored_with"] == "geometry"


def test_options_that_cannot_work_are_clear_errors(model_folder, shot, tmp_path, capsys):
    video = tmp_path / "video"
    for k in range(2):
        write_png(video / f"{k:04d}.png", torch.rand(3, 32, 32))
    on_video = ["--video", str(video)]
    cases = [
        ([*on_video, "--width", "-8", "--height", "64"], "--width -8 must be a positive"),
        ([*on_video, "--width", "0", "--height", "64"], "--width 0 must be a positive"),
        ([*on_video, "--width", "64"], "--width and --height go together"),
        ([*on_video, "--depth-per", "frame"], "--depth-per applies to a shot's depth"),
        (["--shot", str(shot), "--width", "64", "--height", "64"], "--width, --height: only for"),
        (["--shot", str(shot), "--source-mix", "0.5"], "--source-mix: only for --video"),
        (["--shot", str(shot), "--color-reference", "100"], "--color-reference 100 is not a frame"),
        (["--shot", str(shot), "--device", "foo"], "--device 'foo' is not a torch device"),
        (["--shot", str(shot), "--dilate", "-1"], "error: --dilate must be an int >= 0"),
        (["--shot", str(shot), "--blend", "2"], "error: --blend must be in [0, 1], got 2.0"),
        (["--shot", str(shot), "--hidden-share", "1"], "error: --hidden-share must be in [0, 1)"),
        (["--shot", str(shot), "--strength", "0.3*t+"], "error: --strength '0.3*t+': invalid"),
        (["--shot", str(shot), "--seed-schedule", "abc"], "--seed-schedule 'abc': unknown name"),
        (["--shot", str(shot), "--control-scale", "x"], "--control-scale 'x': unknown name"),
    ]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append((["--shot", str(shot), "--device", "cuda"], "no CUDA device here"))
    for extra, message in cases:
        out = tmp_path / "x.mp4"
        argv = ["animate", "--model", str(model_folder), "--prompt", "x", "--steps", "2",
                "--out", str(out), *extra]  # fmt: skip
        assert main(argv) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert frames_made(out) == [], extra


def test_corrupt_settings_json_is_named(model_folder, shot, tmp_path, capsys):
    out = tmp_path / "film.mp4"
    (tmp_path / "film.run").mkdir()
    (tmp_path / "film.run" / "settings.json").write_text('{"cfg": "2"\n"steps": 2}')
    assert animate(model_folder, shot, out) == 2
    assert f"{tmp_path / 'film.run' / 'settings.json'} is not valid JSON" in capsys.readouterr().err


def test_non_finite_latents_name_the_frame(model_folder, shot, tmp_path, capsys):
    out = tmp_path / "film.mp4"
    assert animate(model_folder, shot, out, "--frames", "0:3", "--cfg", "0:(2), 1:(1e38)") == 2
    assert "frame 1: sampling gave non-finite latents" in capsys.readouterr().err
    assert frames_made(out) == ["000000.png"]


def test_finish_reads_one_frame_at_a_time_and_scores_as_before(tmp_path, monkeypatch):
    """The videos and metrics of a run are made reading its frames one at a time (a 2000-frame
    512 px run held as floats took 6 GB), with the metrics the stacked frames gave."""
    import argparse
    import weakref

    from pilot.animation.inputs import FrameStore, VideoFrames
    from pilot.animation.metrics import flicker_indices, warp_errors
    from pilot.commands.animate import finish
    from pilot.imageio import read_image

    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, 8, 8, generator=g)
    source = tmp_path / "video"
    for k in range(10):  # smooth moving content for DIS
        write_png(source / f"{k:04d}.png", torch.roll(base, k, 2).repeat_interleave(4, 1)
                  .repeat_interleave(4, 2))  # fmt: skip
    frames = VideoFrames(source)
    run = tmp_path / "film.run"
    with FrameStore(run) as store:
        for k in range(10):
            store.write(k, torch.rand(1, 3, 32, 32, generator=g))
    alive, most = [0], [0]

    def counted(read):
        def read_counted(self, k):
            image = read(self, k)
            alive[0] += 1
            most[0] = max(most[0], alive[0])
            weakref.finalize(image, lambda: alive.__setitem__(0, alive[0] - 1))
            return image

        return read_counted

    monkeypatch.setattr(FrameStore, "read", counted(FrameStore.read))
    args = argparse.Namespace(out=tmp_path / "film.mp4", fps=None, flow="geometry", shot=None)
    metrics = finish(args, frames, FrameStore(run), range(1, 10), run, [])
    assert most[0] <= 3, f"{most[0]} frames in memory at once"
    assert (tmp_path / "film.mp4").stat().st_size > 0 and (tmp_path / "film.gif").is_file()
    stack = torch.stack([read_image(run / "frames" / f"{k:06d}.png") for k in range(1, 10)])
    fields = [frames.flow(k) for k in range(2, 10)]
    errors, flicker = warp_errors(stack, fields), flicker_indices(stack, fields)
    assert metrics["frames"] == 9 and metrics["warp_error"] == float(errors.nanmean())
    assert metrics["flicker"] == float(flicker.nanmean())
    assert metrics["warp_error_per_frame"] == [round(float(e), 6) for e in errors]
    assert json.loads((run / "metrics.json").read_text())["first_frame"] == 1
    write_png(run / "frames" / "000004.png", torch.rand(3, 16, 16))  # from another source
    with pytest.raises(ValueError, match=r"000004.png is 16x16, but .* is 32x32"):
        finish(args, frames, FrameStore(run), range(1, 10), run, [])


def test_keys_past_the_last_frame_are_noted(model_folder, shot, tmp_path, capsys):
    """Frames count from 0: a key at a Blender scene's frame 101 is never reached by the
    24-frame shot; each such flag gets a note, and the run goes on."""
    out = tmp_path / "late.mp4"
    extra = ["--frames", "0:1", "--cfg", "0:(2), 30:(4)", "--strength", "0:(0.5)"]
    prompt = ["--prompt", "0: a corridor | 101: a cave | 124: a sea"]
    assert animate(model_folder, shot, out, *extra, *prompt) == 0
    err = capsys.readouterr().err
    assert "note: --prompt keys frames 101, 124, past the last frame 23 (frames count" in err
    assert "note: --cfg keys frame 30, past the last frame 23" in err
    assert "--strength keys" not in err
