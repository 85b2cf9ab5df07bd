"""Blender bridge against real Blender: the scene settings that decide what the render looks
like (view layers, their sample counts, colour management) give the shot the artist sees.

Needs the `bpy` module (pip install bpy==4.2.0, CPython 3.11); skipped when it cannot be
imported, as tests/scenes/test_blender.py is.
"""

import numpy as np
import pytest

bpy = pytest.importorskip(
    "bpy", reason="bpy (Blender as a module, `pip install bpy==4.2.0`, CPython 3.11) not importable"
)

from PIL import Image  # noqa: E402

from pilot.scenes.blender import main  # noqa: E402
from pilot.scenes.shot import Shot  # noqa: E402
from tests.scenes.test_blender import _build_scene  # noqa: E402

PASSES = ("depth", "normals", "motion", "image")


def _small_scene():
    """The flow test's scene at 32x24, lit: a sun and a sky-blue world."""
    _build_scene()
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 32, 24
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    scene.collection.objects.link(sun)
    sun.rotation_euler, sun.data.energy = (0.6, 0.2, 0.3), 4.0
    scene.world = bpy.data.worlds.new("sky")
    scene.world.color = (0.3, 0.45, 0.8)
    return scene


def test_only_the_active_view_layer_renders_at_the_exports_samples(tmp_path):
    """A script's render renders every view layer in use (Render Single Layer is for F12), and
    the bridge read the alphabetically first; a layer's own sample count overrode --samples.
    The export renders the active layer (Blender's top bar) alone, at --samples."""
    scene = _small_scene()
    args = ["--frames", "1", "2", "--samples", "1"]
    assert main([str(tmp_path / "one"), *args]) == 0
    boxes = bpy.data.collections.new("boxes")
    scene.collection.children.link(boxes)
    for obj in [o for o in scene.collection.objects if o.name.startswith("Cube")]:
        scene.collection.objects.unlink(obj)
        boxes.objects.link(obj)
    hidden = scene.view_layers.new("A: no boxes")  # sorts before "ViewLayer"
    hidden.layer_collection.children["boxes"].exclude = True
    hidden.use_pass_z = hidden.use_pass_normal = hidden.use_pass_vector = True
    scene.view_layers["ViewLayer"].samples = 16
    assert bpy.context.view_layer.name == "ViewLayer"
    assert main([str(tmp_path / "two"), *args]) == 0
    one, two = Shot(tmp_path / "one"), Shot(tmp_path / "two")
    for k in range(2):
        for p in PASSES:
            assert np.array_equal(getattr(one[k], p), getattr(two[k], p)), (k, p)
    assert two.meta["provenance"]["view_layer"] == "ViewLayer"
    bpy.context.window.view_layer = hidden  # the artist switches layers: that one renders
    assert main([str(tmp_path / "hidden"), *args]) == 0
    shot = Shot(tmp_path / "hidden")
    assert shot.meta["provenance"]["view_layer"] == "A: no boxes"
    assert (shot[0].depth > one[0].depth + 1).sum() > 20  # the boxes are gone (32 pixels)


def test_the_colour_pass_is_blenders_render_through_the_view_transform(tmp_path):
    """The colour pass is what Blender writes for a PNG render (F12, Save): through the scene's
    view transform (AgX here, Blender 4's default), look and exposure, for an sRGB display
    (a Display P3 setting is not written into an sRGB pass); not the Standard transform."""
    scene = _small_scene()
    view = scene.view_settings
    view.view_transform, view.look, view.exposure = "AgX", "AgX - Punchy", 0.5
    scene.display_settings.display_device = "Display P3"
    out = tmp_path / "shot"
    assert main([str(out), "--frames", "2", "2", "--samples", "1"]) == 0
    scene.display_settings.display_device = "sRGB"
    view.view_transform, view.look = "AgX", "AgX - Punchy"
    fmt = scene.render.image_settings
    fmt.file_format, fmt.color_mode, fmt.color_depth = "PNG", "RGB", "8"
    scene.render.filepath = str(tmp_path / "render")
    scene.frame_set(2)
    bpy.ops.render.render(write_still=True)  # the artist's own render of frame 2
    render = np.asarray(Image.open(tmp_path / "render.png"))
    ours = np.asarray(Image.open(out / "image" / "000000.png"))
    assert render.shape == ours.shape == (24, 32, 3)
    assert np.array_equal(ours, render), np.abs(ours.astype(int) - render).max()
    assert Shot(out).meta["provenance"]["view_transform"] == "AgX"


def test_a_transparent_film_leaves_a_black_background_in_the_colour_pass_only(tmp_path):
    """Film > Transparent: the colour pass's background is black (a PNG render's RGB), the
    surfaces keep their colour, and depth, normals and motion are those of an opaque film."""
    scene = _small_scene()
    args = ["--frames", "2", "2", "--samples", "1"]
    assert main([str(tmp_path / "opaque"), *args]) == 0
    scene.render.film_transparent = True
    assert main([str(tmp_path / "transparent"), *args]) == 0
    opaque, transparent = Shot(tmp_path / "opaque")[0], Shot(tmp_path / "transparent")[0]
    for p in PASSES[:3]:
        assert np.array_equal(getattr(opaque, p), getattr(transparent, p)), p
    sky = opaque.depth[0] >= Shot(tmp_path / "opaque").far
    assert sky.float().mean() > 0.05 and opaque.image[:, sky].min() > 0.2
    assert transparent.image[:, sky].max() <= 1 / 255  # black, give or take the dither
    assert np.array_equal(opaque.image[:, ~sky], transparent.image[:, ~sky])
