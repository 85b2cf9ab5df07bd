"""`pilot generate --control KIND:IMAGE --controlnet [KIND=]PATH`: each control's ControlNet
(`match_controlnets`), loaded once, checked to fit the model, and its control image as that
ControlNet takes it (`fit_channels`), as `Control`s for the pipeline (`load_controls`).

Kept apart from `pilot.commands.generate` (the command's flow and outputs) so each stays a short
module; `pilot.commands._a1111` writes the same controls into the A1111 text.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no torch
    import torch
    from torch import Tensor

    from pilot.diffusion.control import Control
    from pilot.diffusion.speed import SpeedSettings
    from pilot.models.controlnet import ControlNet
    from pilot.weights.loaders import StableDiffusion


def load_controls(
    args: argparse.Namespace,
    size: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
    speed: SpeedSettings | None = None,
    sd: StableDiffusion | None = None,
) -> list[Control]:
    """`Control`s from --control specs and the --controlnet weights each one uses
    (each ControlNet sped up by `speed`, a `SpeedSettings`, if given, and checked to fit
    the pipeline `sd`, if given: a ValueError naming its path otherwise)."""
    import pilot
    from pilot.control.spec import parse_control_arg
    from pilot.diffusion.control import Control, check_controlnet_fits
    from pilot.diffusion.speed import SpeedSettings, optimize_model

    specs = [parse_control_arg(text) for text in args.control]
    if not specs:
        if args.controlnet:
            raise ValueError("--controlnet needs at least one --control KIND:IMAGE")
        return []
    paths = match_controlnets([s.kind for s in specs], args.controlnet)
    speed = speed or SpeedSettings()
    loaded = {}
    for path in dict.fromkeys(paths):  # each once, in order
        net = pilot.load_controlnet(path, dtype=dtype, device=device)
        if sd is not None:
            check_controlnet_fits(sd, net, path)
        loaded[path] = optimize_model(net, speed)
    controls = []
    for text, spec, path in zip(args.control, specs, paths, strict=True):
        if note := spec.stretch_note(size):
            print(f"note: --control {text}: {note}", file=sys.stderr)
        image = fit_channels(spec.control_image(size), loaded[path], text, path)
        controls.append(
            Control(
                loaded[path],
                image.to(device, dtype),
                spec.scale,
                spec.start,
                spec.end,
                guess_mode=args.guess_mode,
            )
        )
    return controls


def fit_channels(image: Tensor, net: ControlNet, text: str, path: str) -> Tensor:
    """The RGB control image (1, 3, H, W) of `--control text` as the ControlNet at `path`
    takes it: as it is, or grey for a 1-channel one; else a ValueError naming both."""
    from pilot.control.edges import luma

    channels = net.cfg.conditioning_channels
    if channels == 1:
        return luma(image)
    if channels != image.shape[1]:
        raise ValueError(
            f"--control {text}: ControlNet {path} takes {channels}-channel control images; "
            f"--control makes {image.shape[1]} (RGB)"
        )
    return image


def match_controlnets(kinds: list[str], entries: list[str]) -> list[str]:
    """The ControlNet path of each control: by KIND=PATH, by position, or one for all."""
    from pilot.control.spec import PREPROCESSORS

    by_kind = {}
    for entry in entries:
        kind, sep, path = entry.partition("=")
        if sep and kind in PREPROCESSORS:
            by_kind[kind] = path
    if by_kind and len(by_kind) != len(entries):
        raise ValueError("--controlnet: use KIND=PATH for all of them or for none")
    if by_kind:
        missing = sorted(set(kinds) - set(by_kind))
        if missing:
            raise ValueError(f"--control kinds {missing} have no --controlnet KIND=PATH")
        return [by_kind[k] for k in kinds]
    if len(entries) == 1:
        return entries * len(kinds)
    if len(entries) != len(kinds):
        raise ValueError(
            f"{len(kinds)} --control but {len(entries)} --controlnet: give one ControlNet for "
            "all, one per control in order, or KIND=PATH"
        )
    return list(entries)
