"""Control images for ControlNets: depth, normals, edges, line art and hatching.

Images are (B, 3, H, W) float tensors in [0, 1]; see each module for the conventions the public
ControlNets expect. `parse_control_arg` reads the CLI's `KIND:IMAGE[:SCALE[:START:END]]`.
"""

from pilot.control.depth import depth_to_control, normals_from_depth, normals_to_control
from pilot.control.edges import canny, line_art, soft_edges
from pilot.control.hatching import hatch
from pilot.control.spec import PREPROCESSORS, ControlSpec, parse_control_arg, read_image

__all__ = [
    "PREPROCESSORS",
    "ControlSpec",
    "canny",
    "depth_to_control",
    "hatch",
    "line_art",
    "normals_from_depth",
    "normals_to_control",
    "parse_control_arg",
    "read_image",
    "soft_edges",
]
