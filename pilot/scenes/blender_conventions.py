"""Blender's conventions to a shot's (`pilot.scenes.shot`): cameras, units and Cycles' passes.

The Blender bridge (`pilot.scenes.blender`, which re-exports these names) renders each frame
into a multilayer EXR and converts it here. These functions read the bpy scene and camera
objects they are given and numpy arrays, and import only numpy and `pilot.scenes.exr`, so
Blender's own Python suffices:

* camera: Blender cameras look down -Z with +Y up; c2w = matrix_world @ diag(1, -1, -1, 1) gives
  OpenCV axes. K follows lens, sensor size and fit, shift, pixel aspect and the render
  resolution times its percentage, as Blender's view plane does; orthographic and panoramic
  cameras are refused (`camera_intrinsics`).
* units: shots are in metres; a scene's Blender units are `unit_settings.scale_length` metres
  each (1 unless the scene says otherwise; unit system "NONE" counts them as metres), so camera
  positions, depth and `far` are scaled by it.
* depth: Cycles' Z pass is already z-depth along the view axis; misses (1e10) and depths at or
  beyond the camera's clip end become `far`, the clip end (the largest, if animated) in metres
  as the float32 the depth pass holds (`background_depth`), so `depth >= shot.far` finds every
  background pixel (the sky, which `pilot.scenes.geometry` puts at infinity).
* normals: Cycles' Normal pass is world space; rotated into camera space, flipped to face the
  camera.
* motion: Cycles' Vector pass holds (prev - current, current - next) in pixels with y up; the
  motion pass stores (prev - current, next - current) with y down: (X, -Y, -Z, W). Cycles
  leaves the background at 0; there the motion pass holds the motion of points at infinity
  (the cameras' rotation only), as `pilot.scenes.geometry` has it, so the sky pans with the
  camera under `--flow vector` too.
* image: the render as Blender shows it, through the scene's view transform (AgX, Filmic,
  Standard...), look and exposure for an sRGB display (`pilot.scenes.blender.display_image`,
  which needs bpy); without it, the Combined pass encoded with the sRGB curve (Standard).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pilot.scenes.exr import read_exr

BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # camera axes: flip y and z


CAMERA_TYPES = {"ORTHO": "orthographic", "PANO": "panoramic"}


def render_size(scene) -> tuple[int, int]:
    """Width, height in pixels that Blender renders: the resolution times its percentage,
    rounded down as Blender does (`BKE_render_resolution`)."""
    r = scene.render
    pct = r.resolution_percentage
    return r.resolution_x * pct // 100, r.resolution_y * pct // 100


def camera_intrinsics(cam_obj, scene) -> tuple[np.ndarray, int, int]:
    """K (3, 3), width, height of a perspective Blender camera at the scene's render size.

    Follows Blender's view plane (`BKE_camera_params_compute_viewplane`): the sensor fits the
    width (HORIZONTAL, or AUTO on a wide frame) or the height; lens shifts are fractions of that
    fitted side; non-square pixels (pixel aspect x:y) give fy = fx * x / y.
    """
    r, cam = scene.render, cam_obj.data
    if cam.type != "PERSP":
        kind = CAMERA_TYPES.get(cam.type, cam.type)
        raise ValueError(
            f"camera {cam_obj.name!r} is {kind} ({cam.type}); a shot needs a pinhole camera: "
            "set its Lens > Type to Perspective"
        )
    W, H = render_size(scene)
    ycor = r.pixel_aspect_y / r.pixel_aspect_x  # a pixel's height over its width
    fit = cam.sensor_fit
    sensor = cam.sensor_height if fit == "VERTICAL" else cam.sensor_width
    if fit == "AUTO":
        fit = "HORIZONTAL" if W >= ycor * H else "VERTICAL"
    side = W if fit == "HORIZONTAL" else ycor * H  # the fitted side, in pixel widths
    fx = cam.lens / sensor * side
    cx = (W - 1) / 2 - cam.shift_x * side
    cy = (H - 1) / 2 + cam.shift_y * side / ycor
    return np.array([[fx, 0, cx], [0, fx / ycor, cy], [0, 0, 1]]), W, H


def camera_pose(cam_obj) -> np.ndarray:
    """OpenCV camera-to-world (4, 4) of a Blender camera object (scale removed)."""
    M = np.array(cam_obj.matrix_world, dtype=np.float64)
    M[:3, :3] /= np.linalg.norm(M[:3, :3], axis=0, keepdims=True)
    return M @ BLENDER_TO_OPENCV


def metres_per_unit(scene) -> float:
    """Metres per Blender unit: the scene's unit scale (1 with unit system "NONE")."""
    units = scene.unit_settings
    return 1.0 if units.system == "NONE" else float(units.scale_length)


def _pass(channels: dict[str, np.ndarray], name: str, comps: str, path: Path) -> np.ndarray:
    """(H, W, len(comps)) array of pass `name` from the first view layer that has it."""
    out = []
    for c in comps:
        keys = [k for k in channels if k.endswith(f".{name}.{c}")]
        if not keys:
            raise ValueError(f"{path}: no {name}.{c} channel (have {sorted(channels)})")
        out.append(channels[sorted(keys)[0]])
    return np.stack(out, -1)


def background_depth(far: float, metres: float) -> float:
    """The shot's `far` and the depth of its background pixels: the clip end `far` (Blender
    units) in metres, rounded to float32 as the depth pass is (a float64 `far * metres` can
    lie above every float32 depth, e.g. 120 units of 1 cm)."""
    return float(np.float32(far) * np.float32(metres))


def depth_in_metres(z: np.ndarray, far: float, metres: float) -> np.ndarray:
    """Cycles' Z pass (H, W) in Blender units to shot depth in metres (float32): misses
    (1e10, inf) and depths at or beyond the clip end `far` are `background_depth`."""
    hit = np.isfinite(z) & (z < far)
    depth = z.astype(np.float32) * np.float32(metres)
    return np.where(hit, depth, np.float32(background_depth(far, metres))).astype(np.float32)


def sky_motion(
    K: np.ndarray, c2w: np.ndarray, neighbours: list[tuple[np.ndarray, np.ndarray]], shape
) -> np.ndarray:
    """(H, W, 4) motion of points at infinity (the sky) from camera (K, c2w) to the previous
    and the next camera, `neighbours` [(K, c2w)] * 2: only the rotation between the cameras
    moves them, as in `pilot.scenes.geometry.reproject`; directions behind the other camera go
    to -1e9 as there."""
    H, W = shape
    xs, ys = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    pixels = np.stack([xs, ys, np.ones_like(xs)], -1)  # (H, W, 3)
    rays = pixels @ np.linalg.inv(K).T @ np.asarray(c2w)[:3, :3].T  # world directions
    out = []
    for K_j, c2w_j in neighbours:
        q = rays @ np.asarray(c2w_j)[:3, :3] @ np.asarray(K_j).T  # K_j R_j^T d per pixel
        z = q[..., 2:]
        uv = np.where(z > 1e-9, q[..., :2] / np.maximum(z, 1e-9), -1e9)
        out.append(uv - pixels[..., :2])
    return np.concatenate(out, -1).astype(np.float32)


def convert_passes(
    path: Path,
    K: np.ndarray,
    c2w: np.ndarray,
    far: float,
    metres: float = 1.0,
    neighbours: list[tuple[np.ndarray, np.ndarray]] | None = None,
    image: np.ndarray | None = None,
) -> dict:
    """Read one frame's multilayer EXR and convert its passes to shot conventions (`far` in
    Blender units, `metres` per unit: depth comes out in metres). Cycles leaves the Vector
    pass 0 on the background: given the previous and next cameras (`neighbours`, (K, c2w) in
    Blender units), background pixels move as points at infinity do (`sky_motion`). `image`
    (H, W, 3) uint8 is the colour pass as Blender's colour management made it; without it the
    Combined pass is encoded with the sRGB curve (the Standard view transform, no look)."""
    ch = read_exr(path)
    depth = depth_in_metres(_pass(ch, "Depth", "Z", path)[..., 0], far, metres)
    n = _pass(ch, "Normal", "XYZ", path) @ c2w[:3, :3]  # world -> camera: R^T n per pixel
    H, W = depth.shape
    xs, ys = np.meshgrid(np.arange(W), np.arange(H))
    rays = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(depth)], -1)
    n = np.where(((n * rays).sum(-1) > 0)[..., None], -n, n)  # face the camera
    v = _pass(ch, "Vector", "XYZW", path)
    motion = np.stack([v[..., 0], -v[..., 1], -v[..., 2], v[..., 3]], -1)
    if neighbours is not None:
        sky = depth >= np.float32(background_depth(far, metres))
        motion = np.where(sky[..., None], sky_motion(K, c2w, neighbours, (H, W)), motion)
    if image is None:
        rgb = np.clip(_pass(ch, "Combined", "RGB", path), 0, 1)
        srgb = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * rgb ** (1 / 2.4) - 0.055)
        image = np.round(srgb * 255).astype(np.uint8)
    elif image.shape != (H, W, 3) or image.dtype != np.uint8:
        raise ValueError(f"image {image.shape} {image.dtype}: expected ({H}, {W}, 3) uint8")
    return {"depth": depth, "normals": n.astype(np.float32), "motion": motion, "image": image}
