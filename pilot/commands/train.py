"""`pilot train SYSTEM --config ...`: the Lightning training systems of `train/`.

Systems: `dcgan`, `pix2pix`, the tiny Stable Diffusion stages `tiny_sd_vae`, `tiny_sd_unet`,
`tiny_sd_controlnet` (run in order by `experiments/tiny_sd/train.sh`), and `preview_decoder`
(a small decoder distilled from a VAE: `experiments/tiny_sd/preview.yaml`).

Everything after the system name that this command does not know goes to the LightningCLI
`fit` subcommand, e.g. `--trainer.max_steps 100 --ckpt_path last --data.batch_size 8`.
"""

from __future__ import annotations

import argparse


def _add_own_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config, e.g. experiments/triangles_dcgan.yaml")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--fast-dev-run", action="store_true", help="one batch, no logs/checkpoints")


def cmd_train(args: argparse.Namespace) -> int:
    """Run `fit` of the LightningCLI of one system; returns 0 when the training finished."""
    import torch

    # Options may come anywhere after the system name, mixed with LightningCLI's own.
    own = argparse.ArgumentParser(add_help=False)
    _add_own_options(own)
    args, rest = own.parse_known_args(args.lightning_args, namespace=args)

    try:
        from train.cli import run
    except ImportError as e:
        raise ValueError(f"training needs the train extra (pip install -e '.[train]'): {e}") from e
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads={args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    cli_args = ["fit"]
    if args.config is not None:
        cli_args += ["--config", args.config]
    if args.fast_dev_run:
        cli_args += ["--trainer.fast_dev_run", "true"]
    run(args.system, cli_args + rest)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` command to the `pilot` parser."""
    p = sub.add_parser(
        "train",
        help="train a DCGAN, a Pix2Pix conditioner, a tiny SD stage or a preview decoder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    systems = [
        "dcgan", "pix2pix", "tiny_sd_vae", "tiny_sd_unet", "tiny_sd_controlnet", "preview_decoder"
    ]  # fmt: skip
    p.add_argument("system", choices=systems, help="which training system")
    _add_own_options(p)
    p.add_argument("lightning_args", nargs=argparse.REMAINDER, help="passed to LightningCLI fit")
    p.set_defaults(func=cmd_train)
