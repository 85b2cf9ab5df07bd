"""`load_pipeline(..., vae=)`: another VAE in place of a checkpoint's own, refused unless its
latents fit the checkpoint (the UNet's channels, the own VAE's image size factor).

A VAE file holds no GroupNorm group count or latent scaling factor: one whose shapes fit no
preset takes those of the pipeline folder's own VAE when its shapes are that VAE's (as A1111
loads a VAE file into the model's own VAE), so a fine-tuned VAE of a model of no preset (the
packaged tiny SD) swaps in without a `vae_config`.

Split from `pilot.weights.loaders` (which imports these names) to keep that module to loading.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pilot.weights import sd_original
from pilot.weights.configs import _KINDS, _api, _config_from_json, fitting_preset, read_config_json
from pilot.weights.hub import resolve
from pilot.weights.io import WeightsError, read_checkpoint

PathLike = str | os.PathLike


def _swap_vae(
    vae: PathLike | nn.Module, source: Path, own_factor: int | None, unet: nn.Module, config, **kw
) -> nn.Module:
    """`load_pipeline(vae=)`: the VAE loaded (or moved), refused unless its latents have the
    UNet's channels and the image size factor of the checkpoint's own VAE (`own_factor`,
    None: the checkpoint has none). A file of no preset takes the config of the folder's own
    VAE where its shapes are that VAE's (module docstring)."""
    from pilot.weights.loaders import load_vae  # here: loaders imports this module

    def check(name: str, latents: tuple[int, int] | None) -> None:
        want = (unet.cfg.out_channels, own_factor)
        if latents is not None and latents != (want[0], want[1] or latents[1]):
            raise WeightsError(
                f"{name}: a VAE whose latents do not fit {source}: {latents[0]} channels at "
                f"1/{latents[1]} of the image size, where the model's are {want[0]} channels at "
                f"1/{want[1] or latents[1]}"
            )

    if isinstance(vae, nn.Module):
        check(f"vae={type(vae).__name__}", _latents(vars(vae.cfg)))
        return vae.to(**kw)
    try:
        model = load_vae(vae, config=config, **kw)
    except WeightsError:  # e.g. shapes of no preset: say first if they cannot fit anyway
        check(str(resolve(vae)), _vae_latents(resolve(vae)))
        own = None if config is not None else _own_config(source, resolve(vae))
        if own is None:
            raise
        model = load_vae(vae, config=own, **kw)
    check(str(resolve(vae)), _latents(vars(model.cfg)))
    return model


def _own_config(source: Path, path: Path) -> Any:
    """The config of pipeline folder `source`'s own VAE if the VAE file `path` has its shapes;
    None otherwise (a single-file checkpoint, a folder, other shapes, anything unreadable)."""
    own_json = source / "vae" / "config.json"
    if not (source.is_dir() and own_json.is_file() and path.is_file()):
        return None
    try:
        own = _config_from_json("vae", own_json)
        tensors = read_checkpoint(path).tensors
        derived = sd_original.detect_vae_config(tensors)
    except (WeightsError, ValueError, KeyError, TypeError):
        return None
    fits = fitting_preset(derived, {"own": own}, _api("vae").to_dict, _KINDS["vae"].structure)
    return own if fits else None


def _latents(config: Mapping[str, Any]) -> tuple[int, int]:
    """(latent channels, image side / latent side) of a VAE config (diffusers or ours)."""
    return config.get("latent_channels", 4), 2 ** (len(config["block_out_channels"]) - 1)


def _vae_latents(path: Path, tensors: Mapping[str, Tensor] | None = None) -> tuple | None:
    """`_latents` of a VAE read without loading it: a folder's (or pipeline folder's vae/)
    config.json, or an original file's shapes (`tensors`, else read); None where unreadable."""
    try:
        if path.is_dir():
            folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
            return _latents(read_config_json(folder / "config.json", "VAE"))
        tensors = read_checkpoint(path).tensors if tensors is None else tensors
        if sd_original.has_component(tensors, "vae"):
            return _latents(sd_original.detect_vae_config(tensors))
    except (WeightsError, ValueError, KeyError, TypeError):
        pass
    return None
