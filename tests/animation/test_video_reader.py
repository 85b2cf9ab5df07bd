"""Video in: a video file read a frame at a time, and what the output cannot keep (an audio
track, a variable frame rate) said on the command line; --fps for a folder of frames."""

import json
import struct

import cv2
import numpy as np
import pytest

from pilot.animation.inputs import VideoFrames
from pilot.animation.video import write_mp4
from pilot.animation.video_reader import open_video, variable_rate
from pilot.cli import main
from pilot.imageio import write_png


def grey_video(path, n, size=(16, 24), fps=10):
    """An MP4 of n flat grey frames, frame k at level 8 k (mp4v: within 4)."""
    frames = [np.full((*size, 3), 8 * k, np.uint8) for k in range(n)]
    return write_mp4(frames, path, fps=fps)


def with_audio_track(path):
    """`path` (OpenCV's MP4: moov last) with a track whose handler is audio, as a phone's."""

    def box(kind, payload):
        return struct.pack(">I4s", 8 + len(payload), kind) + payload

    data, pos = path.read_bytes(), 0
    while struct.unpack(">I4s", data[pos : pos + 8])[1] != b"moov":
        pos += struct.unpack(">I", data[pos : pos + 4])[0]
    assert pos + struct.unpack(">I", data[pos : pos + 4])[0] == len(data)
    trak = box(b"trak", box(b"mdia", box(b"hdlr", bytes(8) + b"soun" + bytes(13))))
    moov = box(b"moov", data[pos + 8 :] + trak)
    path.write_bytes(data[:pos] + moov)
    return path


def test_a_video_file_is_read_a_frame_at_a_time(tmp_path):
    video = VideoFrames(grey_video(tmp_path / "v.mp4", 30), keep=3)
    assert (len(video), video.height, video.width, video.fps) == (30, 16, 24, 10.0)
    for k in [*range(30), 4, 29, 0]:  # forwards, then back (the file is opened again)
        level = video.source_image(k).mul(255).mean().item()
        assert abs(level - 8 * k) < 4, k
        assert len(video._recent) <= 3  # never the whole video in memory


def test_a_video_file_that_does_not_decode_is_named(tmp_path):
    path = grey_video(tmp_path / "v.mp4", 4)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut before its index
    with pytest.raises(ValueError, match=r"v\.mp4: .*\(not a video OpenCV reads, or a damaged"):
        VideoFrames(path)


def test_a_variable_frame_rate_is_found_but_not_gif_rounding():
    assert variable_rate([0, 130, 250, 380, 500, 630]) is None  # 8 fps in hundredths of a second
    assert variable_rate([0, 125, 250, 375, 500, 1000, 1500]) == (125, 500)
    assert variable_rate([0, 40]) is None


def animate_video(model, video, out, *extra):
    return main(["animate", "--model", str(model), "--video", str(video), "--prompt", "ink",
                 "--steps", "1", "--cfg", "1", "--out", str(out), *extra])  # fmt: skip


def test_an_audio_track_is_said_to_be_left_out(model_folder, tmp_path, capsys):
    plain = grey_video(tmp_path / "plain.mp4", 3)
    assert animate_video(model_folder, plain, tmp_path / "a.mp4") == 0
    assert "note:" not in capsys.readouterr().err
    phone = with_audio_track(grey_video(tmp_path / "phone.mp4", 3))
    out = tmp_path / "b.mp4"
    assert animate_video(model_folder, phone, out, "--frames", "0:3") == 0
    err = capsys.readouterr().err
    assert f"note: {phone} has an audio track; {out} has none" in err
    muxed = tmp_path / "b_audio.mp4"
    assert f"ffmpeg -i {out} -i {phone} -map 0:v -map 1:a -c copy -t 0.300 {muxed}" in err
    assert animate_video(model_folder, phone, out, "--frames", "0:3", "--fps", "20") == 0
    err = capsys.readouterr().err  # twice the source's speed: the audio re-timed to match
    assert f"{out} has none (frames only), and plays the source at 2x its speed (a 10 fps" in err
    assert f"-map 0:v -map 1:a -c:v copy -af atempo=2 -t 0.150 {muxed}" in err


def test_the_audio_command_keeps_the_frames_in_step_with_the_sound(tmp_path):
    """Output frame i is source frame todo[i], shown at i / fps s: the audio from the first
    frame's time, sped by fps * STEP / source fps (`atempo`, chained within [0.5, 2]), cut to
    the video's length. Checked by hand with ffmpeg 9 on a clip beeping each second."""
    video = open_video(with_audio_track(grey_video(tmp_path / "phone.mp4", 30)))  # 10 fps
    out = tmp_path / "o.mp4"
    head = f"ffmpeg -i {out} "
    tail = f"-i {video.path} -map 0:v -map 1:a"
    for todo, fps, command in [
        (range(30), 10, f"{tail} -c copy -t 3.000 "),
        (range(0, 30, 2), 5, f"{tail} -c copy -t 3.000 "),  # every 2nd frame at half the fps
        (range(0, 30, 2), 10, f"{tail} -c:v copy -af atempo=2 -t 1.500 "),
        (range(5, 30), 5, f"-ss 0.5 {tail} -c:v copy -af atempo=0.5 -t 5.000 "),
        (range(30), 2.5, f"{tail} -c:v copy -af atempo=0.5,atempo=0.5 -t 12.000 "),
        (range(0, 30, 3), 24, f"{tail} -c:v copy -af atempo=2,atempo=2,atempo=1.8 -t 0.417 "),
    ]:
        (note,) = video.notes(out, todo, fps)
        assert f"To add it: {head}{command}{tmp_path / 'o_audio.mp4'}" in note, note
        assert ("re-time it" in note) == ("atempo" in command)
    spaced = tmp_path / "my film.mp4"  # quoted for the shell
    (note,) = video.notes(spaced, range(30), 10)
    assert f"ffmpeg -i '{spaced}' -i" in note and f"-t 3.000 '{tmp_path}/my film_audio.mp4'" in note


def test_fps_sets_the_frame_rate_of_a_folder_of_frames(model_folder, tmp_path, capsys):
    folder = tmp_path / "frames"
    for k in range(3):
        write_png(folder / f"{k:03d}.png", np.full((16, 8, 3), 40 * k, np.uint8))
    out = tmp_path / "v.mp4"
    for fps in (12.0, 6.0):  # not a run setting: the second run only writes the videos again
        assert animate_video(model_folder, folder, out, "--fps", str(fps), "--json") == 0
        assert json.loads(capsys.readouterr().out)["rendered_now"] == (3 if fps == 12 else 0)
        assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS) == fps
    assert animate_video(model_folder, folder, out, "--fps", "0") == 2
    assert "error: --fps 0.0 must be a positive frame rate" in capsys.readouterr().err


def test_a_video_too_small_for_its_flow_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"is 11x8: estimating its flow needs a side of at least"):
        VideoFrames(grey_video(tmp_path / "v.mp4", 2, size=(16, 24)), width=11, height=8)
