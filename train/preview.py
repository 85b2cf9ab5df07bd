"""Distil a VAE's decoder into a `pilot.models.preview.PreviewDecoder` (fast previews).

    python -m train.cli preview_decoder fit --config experiments/tiny_sd/preview.yaml

The teacher is a frozen diffusers `AutoencoderKL` folder (`teacher`: any SD VAE on disk, or the
tiny SD's own `runs/tiny_sd/export/vae`). Each step encodes a batch of renders, samples latents
from the posterior, and trains the student to give the teacher's decode of those latents: an
L1 in Y, Cb, Cr (`train.tiny_sd.recon_l1`, so colour is learned as well as luminance) plus an L2
on 4x-downsampled images (the overall colour of a region, which previews are mostly read for).
Validation logs `val/psnr_teacher` (student vs teacher decode of the posterior mean) and
`val/psnr_image` (student vs the render). The student is written to `export_dir` when `fit`
ends, also when a finished run is rerun. The teacher is loaded from its folder on every run and
kept out of the checkpoints (`train.frozen.FrozenModels`): resuming against a teacher that now
holds other weights is refused.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from pilot.models.preview import PreviewConfig, PreviewDecoder, vae_fingerprint
from pilot.weights.loaders import load_vae
from pilot.weights.save import save_preview_decoder
from train.frozen import FrozenModels
from train.metrics import psnr
from train.tiny_sd import held_out, recon_l1


class PreviewDecoderSystem(FrozenModels, L.LightningModule):
    """Student `PreviewDecoder` trained on a frozen teacher VAE's decodes (Adam).

    Args:
        teacher: Folder of the teacher `AutoencoderKL` (diffusers layout).
        decoder: The student's shape; its factor and latent channels must be the teacher's.
        lr: Adam learning rate.
        chroma_weight: Weight of Cb and Cr in the L1 (see `train.tiny_sd.recon_l1`).
        export_dir: Folder the student is written to when `fit` ends.
        timelapse_inputs: Held-out images the timelapse shows (render, teacher, student).
    """

    def __init__(
        self,
        teacher: str,
        decoder: PreviewConfig = PreviewConfig(),  # noqa: B008 (frozen)
        lr: float = 1e-3,
        chroma_weight: float = 1.0,
        export_dir: str | None = None,
        timelapse_inputs: int = 6,
    ) -> None:
        super().__init__()
        self.teacher = load_vae(teacher).eval().requires_grad_(False)
        self.teacher_source = teacher
        t = self.teacher.cfg
        if (decoder.downsample_factor, decoder.latent_channels) != (
            t.downsample_factor,
            t.latent_channels,
        ):
            raise ValueError(
                f"decoder: factor {decoder.downsample_factor} and {decoder.latent_channels} "
                f"latent channels, but the teacher {teacher} has factor {t.downsample_factor} "
                f"and {t.latent_channels}: set decoder.upsamples / decoder.latent_channels"
            )
        self.student = PreviewDecoder(decoder)
        self.student.teacher_vae = vae_fingerprint(self.teacher)  # recorded in its export
        self.lr, self.chroma_weight, self.export_dir = lr, chroma_weight, export_dir
        self.timelapse_inputs = timelapse_inputs
        self.fixed: dict | None = None

    def frozen_models(self) -> dict[str, torch.nn.Module]:
        return {"teacher": self.teacher}

    def frozen_source(self) -> str:
        return f"model.teacher={self.teacher_source}"

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.student.parameters(), lr=self.lr)

    @torch.no_grad()
    def targets(self, images: Tensor, sample: bool = True) -> tuple[Tensor, Tensor]:
        """Latents of `images` (posterior samples, or means) and the teacher's decode of them."""
        post = self.teacher.encode(images)
        z = post.sample() if sample else post.mode()
        return z, self.teacher.decode(z).clamp(-1, 1)

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        z, target = self.targets(batch["image"])
        out = self.student.decode(z)
        l1 = recon_l1(out, target, self.chroma_weight)
        coarse = F.mse_loss(F.avg_pool2d(out, 4), F.avg_pool2d(target, 4))
        loss = l1 + coarse
        self.log_dict({"loss": loss, "l1": l1, "coarse": coarse}, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        z, target = self.targets(images, sample=False)
        out = self.student.decode(z).clamp(-1, 1)
        n = len(images)
        self.log("val/psnr_teacher", psnr(out, target), batch_size=n, sync_dist=True)
        self.log("val/psnr_image", psnr(out, images), batch_size=n, sync_dist=True)

    def on_fit_start(self) -> None:
        self.fixed = held_out(self, self.timelapse_inputs)

    @torch.no_grad()
    def timelapse_panels(self) -> list[tuple[str, Tensor]]:
        """Held-out renders, the teacher's decodes and the student's."""
        if self.fixed is None:
            return []
        images = self.fixed["image"].to(self.device)
        z, target = self.targets(images, sample=False)
        return [("image", images), ("teacher", target), ("preview", self.student.decode(z))]

    def on_fit_end(self) -> None:
        """Write the export (in `on_fit_end`: see `train.tiny_sd.VAESystem.on_fit_end`)."""
        if self.export_dir is not None and self.trainer.is_global_zero:
            save_preview_decoder(self.student, Path(self.export_dir), overwrite=True)
