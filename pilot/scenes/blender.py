"""Blender bridge: export the scene camera's animation as a pilot shot, with Cycles passes.

Two ways to run it, same code:

    blender -b scene.blend --python pilot/scenes/blender.py -- OUT [--frames 1 48] [--samples 4]
    python -c "import bpy; from pilot.scenes.blender import export_shot; export_shot('OUT')"
    pilot shot export scene.blend OUT          # uses the bpy module, else a `blender` executable

Each frame is rendered by Cycles on the CPU into an uncompressed multilayer EXR and converted
to our conventions (`pilot.scenes.shot`) by `pilot.scenes.blender_conventions` (numpy only, so
Blender's own Python suffices; its names import from here too): OpenCV camera axes and
intrinsics, metres, camera-space normals, the motion pass (the sky's too), `far` at the clip
end; the colour pass is the render as Blender shows it (the scene's view transform, e.g. AgX or
Filmic, its look and exposure) on an sRGB display (`display_image`). One perspective camera
films the whole range: orthographic and panoramic cameras, and a camera switch inside the range
(markers), are refused before anything renders.

The pixel filter is shrunk to 0.01 px so every pass samples pixel centres (no blending across
edges); motion blur is turned off (Cycles' Vector pass is 0 with it on, and depth is blurred),
and so are depth of field (it blends depth across edges), a render region, stereo views and the
Video Sequencer.
Only the active view layer (Blender's top bar) renders, at the export's samples: the others are
turned off (a script's render renders every layer in use) and its own sample count is cleared.
The open scene's render settings are changed (not saved).
Every frame of the range renders; a scene frame step other than 1 is refused (`check_frame_step`).

Exports resume (`pilot.scenes.shot.ShotWriter` with settings): each frame's passes and camera
are on disk as soon as it is rendered, and running the same export again over an unfinished
shot goes on at the first missing frame. The settings compared are the .blend file's SHA-256
and those of the files it uses (`bpy.utils.blend_paths`: textures, linked libraries...), the
Blender version, scene, camera, view layer, view transform, frame range, size, samples, fps,
units, clip end and every camera of the range; any difference is refused, naming it, until
`--force` starts over. Over a finished shot of the same settings there is nothing to render.
A scene never saved to a file cannot be compared: its exports start over only with `--force`.
Unsaved changes to a saved file are not seen (save before exporting), nor are unbaked
simulations, which a resumed export enters at a later frame (bake them). Each frame renders
into `.shot-resume/scratch/` inside the shot folder, emptied by the next run if a kill leaves
an EXR (or the colour pass's PNG) there.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
from collections.abc import Callable
from numbers import Integral
from pathlib import Path

import numpy as np

if not globals().get("__package__"):  # run by `blender --python`: make `pilot` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pilot.scenes.blender_conventions import BLENDER_TO_OPENCV as BLENDER_TO_OPENCV  # noqa: E402
from pilot.scenes.blender_conventions import CAMERA_TYPES as CAMERA_TYPES  # noqa: E402
from pilot.scenes.blender_conventions import (  # noqa: E402
    background_depth,
    camera_intrinsics,
    camera_pose,
    convert_passes,
    metres_per_unit,
    render_size,
)
from pilot.scenes.blender_conventions import depth_in_metres as depth_in_metres  # noqa: E402
from pilot.scenes.blender_conventions import sky_motion as sky_motion  # noqa: E402
from pilot.scenes.shot import check_camera, check_resolution  # noqa: E402
from pilot.scenes.shot_writer import START_OVER, ShotWriter, written_settings  # noqa: E402

FORCE_HELP = "render every frame again, replacing the shot in OUT (default: resume it)"


def configure(scene, samples: int, view_layer=None) -> None:
    """Cycles on the CPU, depth/normal/vector passes of `view_layer` (default: the scene's
    first) and no other, uncompressed multilayer EXR output, colour for an sRGB display; what
    would change the passes (motion blur, depth of field, a render region, stereo, the Video
    Sequencer, the layer's own sample count) is turned off."""
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.cycles.filter_width = 0.01  # sample pixel centres: passes are not blended at edges
    scene.render.use_motion_blur = False  # with it, Cycles' Vector pass is 0 and depth blurred
    for obj in scene.objects:  # depth of field blends depth, normals and vectors across edges
        if obj.type == "CAMERA":
            obj.data.dof.use_dof = False
    scene.render.use_border = False  # the whole frame (a render region crops the passes)
    scene.render.use_multiview = False  # one view (stereo writes a file per eye)
    scene.render.use_sequencer = False  # the render, not the Video Sequencer's strips
    # Render Single Layer holds for F12 in Blender's window only: a script's render renders
    # every view layer in use, so `view_layer` is left the only one in use.
    scene.render.use_single_layer = True
    view_layer = view_layer or scene.view_layers[0]
    for layer in scene.view_layers:
        layer.use = layer == view_layer
    view_layer.samples = 0  # the scene's samples (a layer's own count would override them)
    view_layer.use_pass_z = view_layer.use_pass_normal = view_layer.use_pass_vector = True
    view_layer.use_pass_combined = True
    view = scene.view_settings.view_transform  # AgX, Filmic, Standard...: the scene's
    scene.display_settings.display_device = "sRGB"  # a shot's colour pass is sRGB
    with contextlib.suppress(TypeError):  # a view transform this display lacks
        scene.view_settings.view_transform = view
    _exr_output(scene.render.image_settings)
    scene.render.use_file_extension = True
    scene.render.use_compositing = False


def _exr_output(fmt) -> None:
    """Render output settings `fmt`: uncompressed 32-bit multilayer EXR (every pass)."""
    fmt.file_format, fmt.color_depth, fmt.exr_codec = "OPEN_EXR_MULTILAYER", "32", "NONE"
    fmt.color_management = "FOLLOW_SCENE"


def open_blend(path: Path) -> None:
    """Open a .blend file in the bpy module; ValueError naming it if Blender cannot read it."""
    import bpy

    try:
        bpy.ops.wm.open_mainfile(filepath=str(Path(path).resolve()))
    except RuntimeError as e:  # bpy reports an unreadable file as "Error: ... not supported ..."
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "unknown error"
        raise ValueError(f"{path}: Blender cannot open it as a .blend file ({reason})") from e


def check_samples(samples: int, where: str) -> None:
    """ValueError naming `where` unless `samples` is a whole number >= 1 (Cycles would clamp
    0 to 1 without a word)."""
    if not (isinstance(samples, Integral) and samples >= 1):
        raise ValueError(f"{where} {samples!r}: Cycles renders at least 1 sample per pixel")


def check_frame_step(scene) -> None:
    """ValueError unless the scene's frame step is 1, saying how to export every Nth frame.

    With a step N a shot's neighbours would be N frames apart, but Blender's Vector pass (the
    motion pass) is the motion to the adjacent frame numbers. Time Stretching (frame_map_old N,
    frame_map_new 1) renders frame N * f at frame f instead, where the Vector pass follows.
    """
    step = scene.frame_step
    if step != 1:
        raise ValueError(
            f"scene {scene.name!r} has frame step {step}, but Blender's motion vectors point to "
            f"the adjacent frames: set the step to 1 and, for every {step}th frame, Time "
            f"Stretching (Output > Frame Range) to Old {step}, New 1 (frame f then shows frame "
            f"{step} * f: divide the range by {step})"
        )


def _camera_runs(cams: list[tuple[int, str]]) -> list[tuple[str, int, int]]:
    """(camera, first, last) for each run of frames that one camera films."""
    runs: list[tuple[str, int, int]] = []
    for f, name in cams:
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1], f)
        else:
            runs.append((name, f, f))
    return runs


def plan_frames(scene, first: int, last: int) -> list[dict]:
    """Frame number, K, c2w (Blender units), camera object and clip end of frames first..last.

    Everything that would stop an export is found here, before anything renders: no camera, a
    camera that is not a rigid perspective one, and a camera switch (markers bound to cameras)
    inside the range, which a shot (one camera move, flow between neighbours) cannot hold.
    """
    plan = []
    for f in range(first, last + 1):
        scene.frame_set(f)
        cam = scene.camera
        if cam is None:
            cams = sorted(o.name for o in scene.objects if o.type == "CAMERA")
            have = f"its cameras: {', '.join(map(repr, cams))}" if cams else "it has none"
            raise ValueError(
                f"scene {scene.name!r} has no active camera at frame {f}: set one in Scene "
                f"Properties > Camera ({have})"
            )
        K, _, _ = camera_intrinsics(cam, scene)  # lens, shift may be animated
        c2w = camera_pose(cam)
        check_camera(K, c2w, f"frame {f}, camera {cam.name!r}")
        plan.append({"frame": f, "K": K, "c2w": c2w, "camera": cam, "clip_end": cam.data.clip_end})
    runs = _camera_runs([(p["frame"], p["camera"].name) for p in plan])
    if len(runs) > 1:
        spans = ", ".join(f"{name!r} at {a}..{b}" for name, a, b in runs)
        name, a, b = runs[0]
        raise ValueError(
            f"the scene's camera changes within frames {first}..{last} ({spans}; markers bind "
            f"cameras): export one shot per camera, e.g. --frames {a} {b}"
        )
    return plan


def _camera_at(scene, cam, f: int) -> tuple[np.ndarray, np.ndarray]:
    """K and c2w (Blender units) of camera object `cam` at frame f."""
    scene.frame_set(f)
    return camera_intrinsics(cam, scene)[0], camera_pose(cam)


def file_digest(path: Path) -> str | None:
    """SHA-256 (hex) of a file's bytes, read 1 MiB at a time; None if it is not a file."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def source_fingerprint() -> dict:
    """SHA-256 of the open .blend file (None if the scene was never saved) and of every file
    it uses (`bpy.utils.blend_paths`: images, linked libraries, caches...; None where missing).
    """
    import bpy

    blend = bpy.data.filepath
    used = sorted(set(bpy.utils.blend_paths(absolute=True)))
    return {
        "blend_sha256": file_digest(Path(blend)) if blend else None,
        "used_files_sha256": {f: file_digest(Path(f)) for f in used},
    }


def render_frame(scene, frame: int, exr: Path) -> None:
    """Render `frame` of `scene` with its current settings into the multilayer EXR `exr`."""
    import bpy

    scene.frame_set(frame)
    scene.render.filepath = str(exr.with_suffix(""))  # Blender adds the extension
    bpy.ops.render.render(write_still=True)


def display_image(scene, png: Path) -> np.ndarray:
    """The last render as Blender shows it: (H, W, 3) uint8 RGB through the scene's colour
    management (view transform such as AgX or Filmic, look, exposure, gamma, curves) for an
    sRGB display, as an 8-bit PNG render writes it. Saved to `png`, read back, removed."""
    import bpy

    fmt = scene.render.image_settings
    fmt.file_format, fmt.color_mode, fmt.color_depth = "PNG", "RGB", "8"
    fmt.compression, fmt.color_management = 0, "FOLLOW_SCENE"
    try:
        bpy.data.images["Render Result"].save_render(filepath=str(png), scene=scene)
    finally:
        _exr_output(fmt)
    image = bpy.data.images.load(str(png))
    try:
        (W, H), C = image.size, image.channels
        pixels = np.empty(W * H * C, np.float32)  # an 8-bit image's bytes / 255, bottom row first
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
        png.unlink()
    return np.round(pixels.reshape(H, W, C)[::-1, :, :3] * 255).astype(np.uint8)


def _cameras_digest(cams: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """SHA-256 of the cameras (K, c2w) a shot is made from, as float64 bytes."""
    data = [np.concatenate([np.ravel(K), np.ravel(c2w)]) for K, c2w in cams]
    return hashlib.sha256(np.asarray(data, np.float64).tobytes()).hexdigest()


def export_shot(
    out: str | Path,
    frames: tuple[int, int] | None = None,
    samples: int = 1,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Render the active scene's camera over `frames` (inclusive, default the scene range).

    Every frame of the range is rendered; a scene frame step other than 1 is refused
    (`check_frame_step`: Blender's vector pass is the motion to the adjacent frames). `size`
    (width, height, > 0) overrides the scene's render resolution. An unfinished export of the
    same settings in `out` is resumed at its first missing frame, a finished one left as it is
    (module docstring); `force` renders every frame again whatever `out` holds. `log` reports a
    resume, and ends with "wrote PATH" once frames were rendered, or says that a finished shot
    had nothing to render. Returns the path of the shot's shot.json.

    Raises:
        ValueError: bad arguments or scene, or `out` holds a shot of other settings.
    """
    import bpy

    if size is not None:  # checked here: Blender clamps a bad resolution to 4x4
        check_resolution(*size, "size")
    check_samples(samples, "samples")
    scene = bpy.context.scene
    check_frame_step(scene)
    first, last = frames or (scene.frame_start, scene.frame_end)
    if last < first:
        raise ValueError(f"frame range {first}..{last} is empty")
    layer = bpy.context.view_layer or scene.view_layers[0]  # the active one: Blender's top bar
    configure(scene, samples, layer)
    if size is not None:
        scene.render.resolution_x, scene.render.resolution_y = size
        scene.render.resolution_percentage = 100
    plan = plan_frames(scene, first, last)
    W, H = render_size(scene)
    cam = plan[0]["camera"]
    fps = fps or scene.render.fps / scene.render.fps_base
    metres = metres_per_unit(scene)
    far = max(float(p["clip_end"]) for p in plan)  # the clip end may be animated
    cams = [_camera_at(scene, cam, first - 1)] + [(p["K"], p["c2w"]) for p in plan]
    cams.append(_camera_at(scene, cam, last + 1))  # the frames Blender's vectors point to
    blend = bpy.data.filepath or "<unsaved>"
    view = scene.view_settings.view_transform
    provenance = {"source": "blender", "blender": bpy.app.version_string, "file": blend,
                  "camera": cam.name, "view_layer": layer.name, "engine": "CYCLES",
                  "samples": samples, "view_transform": view,
                  "metres_per_unit": metres}  # fmt: skip
    settings = {"source": "blender", "blender": bpy.app.version_string, **source_fingerprint(),
                "scene": scene.name, "camera": cam.name, "view_layer": layer.name,
                "frames": [first, last], "samples": samples, "view_transform": view,
                "metres_per_unit": metres, "cameras_sha256": _cameras_digest(cams)}  # fmt: skip
    if settings["blend_sha256"] is None and not force:
        _refuse_unsaved(Path(out))
    writer = ShotWriter(
        out, W, H, fps=fps, far=background_depth(far, metres), provenance=provenance,
        settings=settings, force=force,
    )  # fmt: skip
    with writer:  # the folder's lock until shot.json is written (`pilot.locks`)
        done = len(writer.frames)
        if writer.complete:
            log(
                f"{out}: finished shot of these settings, nothing to render (--force renders again)"
            )
        elif done:
            log(f"{out}: resuming at frame {plan[done]['frame']} ({done} of {len(plan)} kept)")
        for i in range(done, len(plan)):
            p = plan[i]
            exr = writer.scratch() / "frame.exr"  # one frame at a time: 48 B/pixel, 100 MB at 1080p
            render_frame(scene, p["frame"], exr)
            image = display_image(scene, exr.with_suffix(".png"))
            passes = convert_passes(
                exr, p["K"], p["c2w"], far, metres, [cams[i], cams[i + 2]], image=image
            )
            exr.unlink()
            c2w = p["c2w"].copy()
            c2w[:3, 3] *= metres  # the camera's position in metres
            writer.add(p["K"], c2w, source_frame=p["frame"], **passes)
        path = writer.close()
    if not writer.complete:  # a finished shot was logged above: nothing rendered or written
        log(f"wrote {path}")
    return path


def _refuse_unsaved(out: Path) -> None:
    """ValueError if `out` holds an export an unsaved scene cannot be compared with."""
    state = written_settings(out) if out.is_dir() else None
    if state is not None and state[1] is not None:
        what = "a finished" if state[0] else "an unfinished"
        raise ValueError(
            f"{out} holds {what} export, and the scene was never saved to a .blend file, so "
            f"its content cannot be compared: save it and export again, or {START_OVER}"
        )


def main(argv: list[str] | None = None) -> int:
    """Command line inside Blender: arguments after `--`. Returns the exit status: 2, with the
    error on one line, when the export is refused."""
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="blender -b FILE --python blender.py --")
    parser.add_argument("out", help="shot folder to write")
    parser.add_argument("--frames", type=int, nargs=2, metavar=("FIRST", "LAST"))
    parser.add_argument("--samples", type=int, default=1, help="Cycles samples per pixel")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="resolution")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    args = parser.parse_args(argv)
    frames, size = (tuple(a) if a else None for a in (args.frames, args.size))
    try:  # export_shot prints the last line: "wrote PATH", or that there was nothing to render
        export_shot(args.out, frames, args.samples, size=size, force=args.force)
    except (FileNotFoundError, ValueError) as e:  # one line, and a failing exit status
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
