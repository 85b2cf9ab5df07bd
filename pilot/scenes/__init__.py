"""3D shots: procedural plane scenes, camera paths, shot folders, geometry and the Blender bridge.

camera      pinhole intrinsics, OpenCV look-at poses, Catmull-Rom camera paths
materials   hatching and colour texture shaders (bricks, tiles, panels, plaster, noise)
layouts     random rooms, corridors, free-standing walls, cameras and fly-through paths
render      vectorised ray casting of plane scenes: hatched, textured, fog, depth, normals
geometry    reprojection flow, visibility masks, forward-backward error, backward warp
shot        the shot folder format and its reader (numpy-only at import)
shot_writer writing shot folders: frame by frame, resumable (numpy-only at import)
shot_resume what a writer left in a shot folder, read back to resume or refuse (numpy-only)
procedural  procedural fly-through shots
exr         numpy reader for scanline EXR, uncompressed, ZIP, ZIPS or RLE (Blender's passes)
blender     export a Blender camera animation as a shot (bpy module or `blender --python`);
            blender_conventions: its cameras, units and Cycles passes in shot conventions
preview     colourised depth / normals / flow and labelled contact sheets
"""
