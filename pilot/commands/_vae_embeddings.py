"""`--vae` and `--embedding` of `pilot generate` and `pilot animate`: another VAE in place of the
model's (`pilot.load_pipeline(..., vae=)`) and textual inversion embeddings
(`pilot.load_embedding`), both settings recorded with the outputs (they change the pixels).

Kept in one module the two commands share, so each command adds a line or two for them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no torch
    from pilot.weights.loaders import StableDiffusion


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add --vae PATH and --embedding PATH (repeatable) to a command's parser."""
    p.add_argument("--vae", default=None, metavar="PATH",
                   help="another VAE for the model: an original-layout file "
                   "(vae-ft-mse-840000-ema-pruned.safetensors), a diffusers vae/ folder or a "
                   "cached repo id")  # fmt: skip
    p.add_argument("--embedding", action="append", type=Path, default=[], metavar="PATH",
                   help="textual inversion embedding (repeatable): A1111 .pt/.safetensors or "
                   "diffusers learned_embeds; write its file name (any case) in the prompt to "
                   "use it")  # fmt: skip


def check_paths(args: argparse.Namespace) -> None:
    """Fail before the slow model load on a --vae or --embedding that does not exist."""
    from pilot.weights.hub import resolve

    if args.vae is not None:
        resolve(args.vae)
    for path in args.embedding:
        if not path.exists():
            raise FileNotFoundError(f"--embedding {path}: no such file or folder")


def load_embeddings(sd: StableDiffusion, args: argparse.Namespace) -> list[str]:
    """Add each --embedding to the loaded model; the tokens, each named on stderr.

    Raises:
        ValueError: naming the flag and the file: unreadable, not an embedding, or not fitting.
    """
    import pilot

    tokens = []
    for path in args.embedding:
        try:
            tokens.append(pilot.load_embedding(sd, path))
        except ValueError as e:
            raise ValueError(f"--embedding {e}") from e
        print(f"--embedding {path}: write {tokens[-1]!r} in the prompt", file=sys.stderr)
    return tokens


def recorded(args: argparse.Namespace) -> dict:
    """The --vae / --embedding settings as JSON values, only those given (so outputs and run
    folders made without them read the same as before the options existed)."""
    out: dict = {}
    if args.vae is not None:
        out["vae"] = str(args.vae)
    if args.embedding:
        out["embedding"] = [str(p) for p in args.embedding]
    return out
