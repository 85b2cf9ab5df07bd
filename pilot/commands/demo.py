"""`pilot demo`: fly-through + tiny SD + depth ControlNet + feedback sampler, in one command.

See `pilot/demo.py` for the output folder and how a re-run resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add `pilot demo` to the subparsers `sub`."""
    from pilot.demo import DemoConfig

    d = DemoConfig()  # defaults for the help texts (pilot.demo imports torch only when run)
    p = sub.add_parser(
        "demo",
        help="animate a procedural fly-through with the tiny SD: independent vs feedback frames",
        description="Render a procedural corridor fly-through, animate it with the tiny Stable "
        "Diffusion and its depth ControlNet twice (independent frames, feedback sampler; same "
        "seeds), and write videos, a contact sheet and metrics.json (warp errors) to --out. "
        "Re-running into the same folder resumes; other settings there are refused.",
    )
    p.add_argument("--out", type=Path, default=Path("pilot-demo"), help="output folder")
    p.add_argument("--weights", type=Path, default=None,
                   help="folder with pipeline/ and controlnet_depth/ (default: the packaged "
                   "tiny SD, pilot/assets/tiny_sd)")  # fmt: skip
    p.add_argument("--frames", type=int, default=d.frames, help=f"frames (default {d.frames})")
    p.add_argument("--size", type=int, default=d.size, help=f"frame side px (default {d.size})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"sampling steps (default {d.steps})")
    p.add_argument("--strength", type=float, default=d.strength,
                   help=f"feedback img2img strength (default {d.strength})")  # fmt: skip
    p.add_argument("--fresh-strength", type=float, default=d.fresh_strength,
                   help="strength where the previous frame did not see the pixels (default "
                   f"{d.fresh_strength})")  # fmt: skip
    p.add_argument("--hidden-share", type=float, default=d.hidden_share,
                   help="share of a latent cell's pixels unseen before it counts as unseen "
                   f"(default {d.hidden_share}; 0: any pixel)")  # fmt: skip
    p.add_argument("--cfg", type=float, default=d.cfg, help=f"guidance scale (default {d.cfg})")
    p.add_argument("--control-scale", type=float, default=d.control_scale,
                   help=f"depth ControlNet scale (default {d.control_scale})")  # fmt: skip
    p.add_argument("--prompt", default=d.prompt, help=f'prompt (default "{d.prompt}")')
    p.add_argument("--sampler", default=d.sampler, help=f"sampler (default {d.sampler})")
    p.add_argument("--schedule", default=d.schedule, help=f"sigma schedule (default {d.schedule})")
    p.add_argument("--seed", type=int, default=d.seed, help="base seed (frame k: seed + k)")
    p.add_argument("--shot-seed", type=int, default=d.shot_seed, help="procedural corridor seed")
    p.add_argument("--rows", type=int, default=d.rows, help="frames in the contact sheet")
    p.add_argument("--batch", type=int, default=d.batch,
                   help=f"independent frames sampled at once (default {d.batch})")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="torch device (default cuda if present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print metrics.json instead of a summary")
    p.set_defaults(func=cmd_demo, resumes=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo into --out and print the warp-error figure (or the metrics as JSON)."""
    from pilot.demo import DemoConfig, run_demo

    config = DemoConfig(
        frames=args.frames, size=args.size, steps=args.steps, strength=args.strength,
        fresh_strength=args.fresh_strength, hidden_share=args.hidden_share, cfg=args.cfg,
        control_scale=args.control_scale,
        prompt=args.prompt, sampler=args.sampler, schedule=args.schedule, seed=args.seed,
        shot_seed=args.shot_seed, rows=args.rows, batch=args.batch,
    )  # fmt: skip
    metrics = run_demo(
        args.out, weights=args.weights, config=config, threads=args.threads, device=args.device,
        progress=not args.no_progress, log=None if args.json else print,
    )  # fmt: skip
    if args.json:
        print(json.dumps(metrics, indent=1))
    return 0
