"""Write the EXR fixtures of `tests/scenes/test_exr.py` and `tests/control/test_depth_files.py`.

Real writers, so the reader is checked against OpenEXR itself, not against our reading of the
spec: Blender (`bpy`, OpenEXR 3) and OpenCV (an OpenCV build with OpenEXR, e.g.
opencv-python-headless 4.10; the 5.x wheels have none). Run from the repository root:

    python tests/scenes/data/make_exr_fixtures.py blender   # needs bpy==4.2.0
    OPENCV_IO_ENABLE_OPENEXR=1 python tests/scenes/data/make_exr_fixtures.py opencv

Blender renders a 20x18 Cycles frame (a floor, a box, the sky) into multilayer EXRs, Combined
and Depth passes, with codecs NONE, ZIP (16 lines a chunk: one full chunk and a short one),
ZIPS and RLE; and the Depth pass alone through a compositor File Output node (single-layer EXR,
channel "V", ZIP). OpenCV writes `opencv_ramp()` as a one-channel ("Y") EXR in half floats with
RLE, ZIPS and ZIP.
"""

import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def opencv_ramp() -> np.ndarray:
    """(37, 29) float32 ramp, exact in half floats: 37 rows are 2 ZIP chunks and a short one."""
    y, x = np.mgrid[0:37, 0:29]
    return (1 + x / 8 + y / 4).astype(np.float32)


def write_opencv() -> None:
    import cv2

    for code, name in [(1, "rle"), (2, "zips"), (3, "zip")]:
        params = [
            cv2.IMWRITE_EXR_COMPRESSION,
            code,
            cv2.IMWRITE_EXR_TYPE,
            cv2.IMWRITE_EXR_TYPE_HALF,
        ]
        assert cv2.imwrite(str(HERE / f"opencv_ramp_{name}.exr"), opencv_ramp(), params)


def write_blender() -> None:
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, 0))
    bpy.ops.mesh.primitive_cube_add(size=1, location=(0.5, 4, 0.5))
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    scene.collection.objects.link(sun)
    sun.rotation_euler = (0.6, 0.2, 0.4)
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.location, cam.rotation_euler = (0, -2, 1.2), (math.radians(80), 0, 0)
    scene.render.engine, scene.cycles.samples, scene.cycles.use_denoising = "CYCLES", 1, False
    scene.render.resolution_x, scene.render.resolution_y = 20, 18
    scene.render.resolution_percentage = 100
    scene.view_layers[0].use_pass_z = True
    fmt = scene.render.image_settings
    fmt.file_format, fmt.color_depth = "OPEN_EXR_MULTILAYER", "32"
    for codec in ("NONE", "ZIP", "ZIPS", "RLE"):
        fmt.exr_codec = codec
        scene.render.filepath = str(HERE / f"blender_{codec.lower()}")
        bpy.ops.render.render(write_still=True)
    scene.use_nodes = True
    tree = scene.node_tree
    node = tree.nodes.new("CompositorNodeOutputFile")
    node.base_path = str(HERE)
    node.format.file_format, node.format.exr_codec = "OPEN_EXR", "ZIP"
    node.file_slots[0].path = "blender_file_output_depth_"
    tree.links.new(tree.nodes["Render Layers"].outputs["Depth"], node.inputs[0])
    bpy.ops.render.render(write_still=False)
    (HERE / "blender_file_output_depth_0001.exr").replace(HERE / "blender_file_output_depth.exr")


if __name__ == "__main__":
    {"blender": write_blender, "opencv": write_opencv}[sys.argv[1]]()
