"""Contact sheet of the walls pair data: hatched / textured / fog / fogged image / depth / normals.

    python -m experiments.scenes.walls_sheet            # writes experiments/scenes/walls_sheet.png

One row per item of `render_pairs(6, 160, seed=0)`; depth is turbo-coloured inverse depth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pilot.animation.video import write_frame
from pilot.data.walls import render_pairs
from pilot.scenes.preview import colorize_depth, contact_sheet, normals_rgb

OUT = Path(__file__).with_name("walls_sheet.png")


def main(argv=None) -> None:
    """Render the items and write the labelled sheet."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    out = render_pairs(args.n, args.size, seed=args.seed)
    sheet = contact_sheet(
        {
            "hatched (input)": out["hatched"],
            "textured (target)": out["textured"],
            "fog (target)": out["fog"],
            "textured + fog": out["image"],
            "depth": colorize_depth(out["depth"], far=1000.0),
            "normals (camera)": normals_rgb(out["normals"]),
        }
    )
    write_frame(sheet, args.out)
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    main()
