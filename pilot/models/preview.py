"""A small decoder for previews: latents to images at a fraction of the VAE decoder's cost.

SD's VAE decoder spends ~2.5 TFLOP on one 512x512 image (GroupNorm, attention, 512-wide
convolutions at 64x64); a sampler's progress, an animation's draft pass or a timelapse only
need a picture of the latents. `PreviewDecoder` is a plain stack of 3x3 convolutions and ReLUs
with residual blocks and nearest-neighbour upsampling (no normalisation, no attention), trained
by distillation to reproduce one VAE's decoder (`train.preview.PreviewDecoderSystem`, the
project's own weights: `experiments/tiny_sd/preview.yaml`). It takes what `AutoencoderKL.decode`
takes, unscaled latents, and returns images nominally in [-1, 1]:

    preview = load_preview_decoder("runs/tiny_sd/export/preview")
    images = decode_latents(sd, latents, decoder=preview)    # pilot.diffusion.pipeline

A folder holds `config.json` (`"_class_name": "PreviewDecoder"`, the `PreviewConfig` fields and,
when known, `teacher_vae`: the `vae_fingerprint` of the VAE it was distilled from) and
`diffusion_pytorch_model.safetensors` (`pilot.weights.save.save_preview_decoder`). A decoder only
fits the VAE it learnt: `check_fits` refuses another shape, `check_teacher` warns about other
weights (`pilot generate` / `pilot animate --preview-decoder` run both).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from pilot.weights.io import load_state_dict
from pilot.weights.save import folder_or_previous

if TYPE_CHECKING:  # annotations only
    from pilot.models.vae import VAEConfig


@dataclass(frozen=True)
class PreviewConfig:
    """Shape of a `PreviewDecoder`.

    Attributes:
        latent_channels: Channels of the latents (4 for SD).
        out_channels: Image channels.
        channels: Width of every convolution.
        upsamples: Nearest-neighbour 2x upsamplings: the VAE's factor is 2 ** upsamples.
        blocks: Residual blocks before each upsampling (and at the end).
    """

    latent_channels: int = 4
    out_channels: int = 3
    channels: int = 64
    upsamples: int = 3
    blocks: int = 2

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < (0 if f.name in ("upsamples", "blocks") else 1):
                raise ValueError(f"PreviewConfig.{f.name}={getattr(self, f.name)} is too small")

    @property
    def downsample_factor(self) -> int:
        """Image pixels per latent pixel."""
        return 2**self.upsamples


class _Residual(nn.Module):
    """x + conv(relu(conv(x))), then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class PreviewDecoder(nn.Module):
    """Latents (B, latent_channels, h, w) -> images (B, out_channels, f*h, f*w) in [-1, 1].

    Args:
        cfg: The shape.

    Attributes:
        teacher_vae: `vae_fingerprint` of the VAE it was distilled from, or None (unknown);
            saved in and read from its folder's `config.json`.
    """

    def __init__(self, cfg: PreviewConfig = PreviewConfig()) -> None:  # noqa: B008 (frozen)
        super().__init__()
        self.cfg = cfg
        self.teacher_vae: str | None = None
        c = cfg.channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, c, 3, padding=1), nn.ReLU()]
        for _ in range(cfg.upsamples):
            layers += [_Residual(c) for _ in range(cfg.blocks)]
            layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        layers += [_Residual(c) for _ in range(cfg.blocks)]
        layers += [nn.Conv2d(c, cfg.out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def decode(self, latents: Tensor) -> Tensor:
        """Images nominally in [-1, 1] (tanh-bounded) from unscaled latents, as
        `AutoencoderKL.decode`."""
        if latents.ndim != 4 or latents.shape[1] != self.cfg.latent_channels:
            raise ValueError(
                f"latents of shape {tuple(latents.shape)}: expected (B, "
                f"{self.cfg.latent_channels}, h, w)"
            )
        return torch.tanh(self.layers(latents))

    forward = decode


def load_preview_decoder(
    folder: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PreviewDecoder:
    """Read a `PreviewDecoder` folder (see the module docstring), in eval mode; a folder that an
    interrupted export left missing reads, with a warning, as the previous version it left.

    Raises:
        FileNotFoundError: no such folder, or a file of it missing.
        ValueError: the config is not a `PreviewDecoder`'s, or the weights do not fit it.
    """
    folder = folder_or_previous(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such file (a preview decoder folder?)")
    config = json.loads(config_path.read_text())
    if config.get("_class_name") != "PreviewDecoder":
        raise ValueError(
            f"{config_path}: _class_name {config.get('_class_name')!r}, expected 'PreviewDecoder'"
        )
    known = {f.name for f in fields(PreviewConfig)}
    model = PreviewDecoder(PreviewConfig(**{k: v for k, v in config.items() if k in known}))
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such file")
    try:
        model.load_state_dict(load_state_dict(weights))
    except RuntimeError as e:
        raise ValueError(f"{weights}: weights do not fit {config_path}: {e}") from e
    model.teacher_vae = config.get("teacher_vae")  # None in folders written before it was
    return model.eval().to(device, dtype)


def preview_config_dict(cfg: PreviewConfig, teacher_vae: str | None = None) -> dict:
    """The `config.json` contents of a preview decoder of shape `cfg` distilled from the VAE
    with fingerprint `teacher_vae` (left out when None)."""
    config = {"_class_name": "PreviewDecoder", **asdict(cfg)}
    return config if teacher_vae is None else {**config, "teacher_vae": teacher_vae}


def vae_fingerprint(vae: nn.Module) -> str:
    """Short SHA-256 (16 hex digits) of a VAE's weights: the teacher a preview decoder records.

    Hashes pilot's parameter names, shapes and values rounded to float16, so one VAE gives one
    fingerprint from any file (diffusers folder, original single file, float16 copy) and loaded
    in float32 or float16; a bfloat16 copy, like a fine-tuned VAE, gives another.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


__all__ = [
    "PreviewConfig",
    "PreviewDecoder",
    "check_fits",
    "check_teacher",
    "load_preview_decoder",
    "preview_config_dict",
    "vae_fingerprint",
]


def check_fits(decoder: PreviewDecoder, vae_cfg: VAEConfig, where: str | os.PathLike) -> None:
    """Raise a `ValueError` naming `where` unless `decoder` decodes the latents of a VAE with
    config `vae_cfg` (its latent and image channels, its downsampling factor)."""
    pairs = (
        ("latent_channels", decoder.cfg.latent_channels, vae_cfg.latent_channels),
        ("out_channels", decoder.cfg.out_channels, vae_cfg.out_channels),
        ("downsample_factor", decoder.cfg.downsample_factor, vae_cfg.downsample_factor),
    )
    for name, ours, theirs in pairs:
        if ours != theirs:
            raise ValueError(
                f"{where}: preview decoder {name} {ours}, but the model's VAE has {theirs}"
            )


def check_teacher(decoder: PreviewDecoder, vae: nn.Module, where: str | os.PathLike) -> None:
    """Warn, naming `where` and both fingerprints, when `decoder` was distilled from another VAE
    than `vae` (its previews may then differ from the VAE's images; a fine-tuned VAE may stay
    close). Silent when the decoder does not record its teacher."""
    if decoder.teacher_vae is None:
        return
    fingerprint = vae_fingerprint(vae)
    if fingerprint != decoder.teacher_vae:
        warnings.warn(
            f"{where}: preview decoder distilled from the VAE with fingerprint "
            f"{decoder.teacher_vae}, but the model's VAE has {fingerprint} "
            "(pilot.models.preview.vae_fingerprint): previews may not match its images",
            stacklevel=2,
        )
