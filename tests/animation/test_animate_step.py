"""`pilot animate --frames START:END:STEP`: every STEP-th frame, made from frame k - STEP,
played at the source's fps / STEP; frames keep their source numbers (schedules, prompts and
seeds too), the step is a run setting, and a killed run resumes byte for byte."""

import json
import shutil

import cv2
import pytest
import torch

from pilot.animation.feedback import FeedbackSampler
from pilot.cli import main
from pilot.imageio import read_image, write_png


def animate(model, shot, out, *extra):
    """A 2-step feedback run (warped noise) over the shot folder `shot`."""
    return main(["animate", "--model", str(model), "--shot", str(shot), "--prompt",
                 "0: a corridor | 4: a cave", "--steps", "2", "--strength", "0.5", "--cfg", "2",
                 "--noise", "warped", "--seed", "3", "--out", str(out), *extra])  # fmt: skip


def frames_made(out):
    folder = out.with_suffix(".run") / "frames"
    return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []


def names(*ks):
    return [f"{k:06d}.png" for k in ks]


def test_frames_take_a_step_as_a_python_slice():
    from pilot.commands._animate_checks import frame_range

    assert frame_range("0:10:2", 24) == range(0, 10, 2)
    assert frame_range("::3", 24) == range(0, 24, 3)
    assert frame_range("1::2", 24) == range(1, 24, 2)
    assert frame_range("4:6", 24) == range(4, 6) and frame_range("4:6:", 24) == range(4, 6)
    assert frame_range(None, 24) == range(24)
    for text, message in [
        ("0:10:0", "--frames '0:10:0': STEP 0 must be >= 1"),
        ("0:10:-1", "--frames '0:10:-1': STEP -1 must be >= 1"),
        ("0:10:x", "--frames '0:10:x': expected START:END or START:END:STEP with integers"),
        ("0:1:2:3", "expected START:END or START:END:STEP"),
        ("5", "expected START:END or START:END:STEP"),
        ("0:30:2", "--frames '0:30:2' is outside the source's frames 0:24"),
    ]:
        with pytest.raises(ValueError, match=message):
            frame_range(text, 24)


def test_every_second_frame_keeps_source_numbers_and_plays_at_half_the_fps(
    model_folder, small_shot, tmp_path, capsys
):
    from pilot.animation.flow import GeometryFlow
    from pilot.animation.metrics import temporal_metrics

    out = tmp_path / "film.mp4"
    assert animate(model_folder, small_shot.root, out, "--frames", "0:6:2", "--json") == 0
    metrics = json.loads(capsys.readouterr().out)
    assert frames_made(out) == names(0, 2, 4)
    run = tmp_path / "film.run"
    assert json.loads((run / "settings.json").read_text())["frame_step"] == 2
    assert small_shot.fps == 24
    assert metrics["frames"] == 3 and metrics["frame_step"] == 2 and metrics["fps"] == 12
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS) == 12  # the clip keeps its length
    frames = torch.stack([read_image(run / "frames" / name) for name in names(0, 2, 4)])
    truth = temporal_metrics(frames, GeometryFlow(small_shot), first=0, step=2)
    assert metrics["warp_error"] == truth["warp_error"]  # each frame against frame k - 2
    assert len(metrics["warp_error_per_frame"]) == 2
    assert animate(model_folder, small_shot.root, out, "--frames", "0:6:2", "--fps", "30") == 0
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS) == 30  # --fps says
    one = tmp_path / "one.mp4"
    assert animate(model_folder, small_shot.root, one, "--frames", "0:1") == 0
    assert "frame_step" not in json.loads((tmp_path / "one.run" / "settings.json").read_text())


def test_a_killed_run_with_a_step_resumes_byte_for_byte_and_another_step_is_refused(
    model_folder, small_shot, tmp_path, monkeypatch, capsys
):
    shot = small_shot.root
    assert animate(model_folder, shot, tmp_path / "a.mp4", "--frames", "0:8:2") == 0
    render = FeedbackSampler.render

    def killed_at_4(self, k, flow=None):
        if k == 4:
            raise KeyboardInterrupt
        return render(self, k, flow)

    monkeypatch.setattr(FeedbackSampler, "render", killed_at_4)
    b = tmp_path / "b.mp4"
    assert animate(model_folder, shot, b, "--frames", "0:8:2") == 130
    monkeypatch.setattr(FeedbackSampler, "render", render)
    assert frames_made(b) == names(0, 2)
    capsys.readouterr()
    assert animate(model_folder, shot, b, "--frames", "0:8:2", "--json") == 0
    assert json.loads(capsys.readouterr().out)["rendered_now"] == 2
    for name in [*names(0, 2, 4, 6), *(f"state/{k:06d}.npy" for k in (0, 2, 4, 6))]:
        a_file = tmp_path / "a.run" / (name if "/" in name else f"frames/{name}")
        b_file = tmp_path / "b.run" / (name if "/" in name else f"frames/{name}")
        assert a_file.read_bytes() == b_file.read_bytes(), f"{name} differs after resume"
    for frames, message in [("0:8:3", "frame_step: 2 -> 3"), ("0:8", "frame_step: 2 -> 1")]:
        assert animate(model_folder, shot, b, "--frames", frames) == 2
        assert message in capsys.readouterr().err
    assert frames_made(b) == names(0, 2, 4, 6)
    assert animate(model_folder, shot, b, "--frames", "4:10:2") == 0  # a later range continues
    assert frames_made(b) == names(0, 2, 4, 6, 8)


def test_a_step_range_after_a_missing_frame_names_the_range_to_render(
    model_folder, small_shot, tmp_path, capsys
):
    out = tmp_path / "film.mp4"
    assert animate(model_folder, small_shot.root, out, "--frames", "4:8:2") == 2
    error = capsys.readouterr().err
    assert "--frames 4:8:2: frame 4 is made from frame 2, which is not in" in error
    assert "render --frames 0:8:2 (from the first missing frame)" in error
    assert frames_made(out) == []


def test_vector_flow_with_a_step_is_refused_naming_the_flow_to_pass(
    model_folder, small_shot, tmp_path, capsys
):
    out = tmp_path / "film.mp4"
    assert animate(model_folder, small_shot.root, out, "--frames", "0:6:2", "--flow", "vector") == 2
    error = capsys.readouterr().err
    assert (
        "--flow vector with --frames 0:6:2: the shot's motion pass links adjacent frames" in error
    )
    assert "pass --flow geometry" in error and frames_made(out) == []
    assert animate(model_folder, small_shot.root, out, "--frames", "0:2", "--flow", "vector") == 0


def test_a_colour_reference_off_the_step_is_refused(model_folder, small_shot, tmp_path, capsys):
    out = tmp_path / "film.mp4"
    assert animate(model_folder, small_shot.root, out, "--frames", "1:6:2") == 2
    error = capsys.readouterr().err
    assert "--color-reference 0 is not among the frames --frames 1:6:2 follows" in error
    assert "pass --color-reference 1" in error and frames_made(out) == []
    extra = ["--frames", "1:6:2", "--color-reference", "1"]
    assert animate(model_folder, small_shot.root, out, *extra) == 0
    assert frames_made(out) == names(1, 3, 5)  # frame 1 starts the odd frames' chain


def test_schedules_prompts_and_seeds_stay_keyed_by_source_frames(
    model_folder, small_shot, tmp_path, capsys
):
    # per-frame txt2img: frame k is its seed, prompt and CFG at k alone, so the same frames of
    # a step-1 and a step-2 run are the same bytes only if both read them at source frame k
    free = ["--strength", "1", "--occlusion", "ignore", "--noise", "fresh",
            "--cfg", "0:(1), 4:(4)"]  # fmt: skip
    shot = small_shot.root
    assert animate(model_folder, shot, tmp_path / "all.mp4", *free, "--frames", "0:5") == 0
    assert animate(model_folder, shot, tmp_path / "half.mp4", *free, "--frames", "0:5:2") == 0
    for name in names(0, 2, 4):
        a, b = (tmp_path / f"{run}.run" / "frames" / name for run in ("all", "half"))
        assert a.read_bytes() == b.read_bytes(), name
    # a schedule is checked at the source frames of the range: 0.3 * 4 at frame 4
    assert animate(model_folder, shot, tmp_path / "bad.mp4", "--frames", "0:6:2",
                   "--strength", "0:(0.3*t)") == 2  # fmt: skip
    assert "strength schedule '0:(0.3*t)' gives 1.2 at frame 4" in capsys.readouterr().err


def test_every_third_frame_of_a_video(model_folder, small_shot, tmp_path, capsys):
    video = tmp_path / "video"
    for k in range(7):
        write_png(video / f"{k:04d}.png", small_shot[k].image)
    out = tmp_path / "v.mp4"
    argv = ["animate", "--model", str(model_folder), "--video", str(video), "--prompt", "ink",
            "--steps", "2", "--cfg", "1", "--frames", "::3", "--out", str(out),
            "--json"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert frames_made(out) == names(0, 3, 6)
    assert metrics["fps"] == 8 and metrics["flow"] == "estimated"  # a folder plays at 24
    assert len(metrics["warp_error_per_frame"]) == 2
    shutil.rmtree(tmp_path / "v.run")
    assert main([*argv, "--fps", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["fps"] == 5
