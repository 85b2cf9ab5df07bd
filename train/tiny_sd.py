"""Tiny Stable Diffusion on captioned procedural renders, stage 1: the data and the VAE (issue 8).

The stages, run in order by `experiments/tiny_sd/train.sh`:

1. `VAESystem` (here): an AutoencoderKL (f = 8, 4 latent channels) trained on the renders with
   L1 reconstruction plus a small KL term (Rombach et al. 2022, sec. 3 and appendix G); exports a
   diffusers `vae/` folder whose `scaling_factor` is 1 / std of the held-out latents (as LDM
   picks it), so the UNet stage sees unit-variance latents.
2. `train.tiny_sd_diffusion.TextToImageSystem`: UNet + CLIP text encoder, trained jointly.
3. `train.tiny_sd_diffusion.DepthControlNetSystem`: a depth ControlNet seeded from the UNet.

Each stage is an ordinary LightningCLI system (`python -m train.cli tiny_sd_vae fit ...`):
resumable with `--ckpt_path last`, drawn by the `Timelapse` callback, and it writes its result in
the diffusers layout into `export_dir` at the end of `fit`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pilot.data.captioned import CaptionedRenders
from pilot.models.vae import AutoencoderKL, VAEConfig
from pilot.weights.io import WeightsError, read_checkpoint
from pilot.weights.loaders import load_vae
from pilot.weights.save import save_vae
from train.loaders import make_loader
from train.metrics import colour_spread, psnr

TINY_VAE = VAEConfig(  # f = 8 (4 blocks), 4 latent channels, 0.98 M parameters
    block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=4, sample_size=64
)  # narrow at full resolution, where a CPU spends its time: 3x faster than (32, 64, 64, 64)


class CaptionedDataModule(L.LightningDataModule):
    """`pilot.data.captioned.CaptionedRenders`: training items and held-out items after them.

    Args:
        size: Image side in pixels (multiple of 8).
        count: Training items `0 .. count - 1` of the data set `seed`.
        val_count: Held-out items `count .. count + val_count - 1` (never trained on).
        seed: Data set seed.
        batch_size: Items per step.
        num_workers: DataLoader worker processes (the items are already in memory).
    """

    def __init__(
        self,
        size: int = 64,
        count: int = 2000,
        val_count: int = 32,
        seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if count < 1 or val_count < 1 or batch_size < 1:
            raise ValueError(
                f"need count, val_count, batch_size >= 1; got {count}, {val_count}, {batch_size}"
            )
        self.size, self.count, self.val_count, self.seed = size, count, val_count, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set: CaptionedRenders | None = None
        self.val_set: CaptionedRenders | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = CaptionedRenders(self.count, self.size, self.seed)
            self.val_set = CaptionedRenders(self.val_count, self.size, self.seed, start=self.count)

    def _loader(self, dataset: CaptionedRenders, train: bool) -> DataLoader:
        return make_loader(dataset, self.batch_size, self.num_workers, train=train)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)


def held_out(module: L.LightningModule, n: int) -> dict[str, Tensor | list[str]] | None:
    """The first `n` held-out items of the attached data module, stacked (timelapse inputs)."""
    dm = getattr(module.trainer, "datamodule", None)
    val = getattr(dm, "val_set", None)
    if val is None or not len(val) or n < 1:
        return None
    items = [val[i] for i in range(min(n, len(val)))]
    out: dict[str, Tensor | list[str]] = {
        k: torch.stack([it[k] for it in items]) for k in ("image", "control")
    }
    out["caption"] = [it["caption"] for it in items]
    return out


# RGB -> (Y, Cb, Cr), BT.601 full range: luminance and two colour-difference channels.
YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)


def recon_l1(recon: Tensor, images: Tensor, chroma_weight: float | None = None) -> Tensor:
    """Mean L1 of (B, 3, H, W) `recon` against `images`: in R, G, B, or with `chroma_weight` in
    Y, Cb, Cr weighted (1, w, w) (see `vae_loss`)."""
    err = recon.float() - images.float()
    if chroma_weight is None:
        return err.abs().mean()
    m = torch.tensor(YCBCR, device=err.device)
    w = torch.tensor([1.0, chroma_weight, chroma_weight], device=err.device)
    return (torch.einsum("ij,bjhw->bihw", m, err).abs() * w[:, None, None]).mean()


def vae_loss(
    vae: AutoencoderKL, images: Tensor, kl_weight: float, chroma_weight: float | None = None
) -> dict[str, Tensor]:
    """L1 reconstruction plus `kl_weight` times the KL of the posterior to N(0, I).

    The KL is summed over latent dimensions and divided by the image's values (3 H W), so
    `kl_weight` has the meaning of LDM's (summed KL against summed reconstruction, 1e-6).

    With `chroma_weight` the L1 is taken in Y, Cb, Cr with weights (1, w, w) instead of R, G, B.
    An RGB L1 hardly teaches colour where luminance errors are larger than the colours are
    saturated: the three channels' errors then share one sign, so the gradient of
    |dR| + |dG| + |dB| moves R, G and B together and is zero along any change of colour at
    constant R + G + B. On the procedural renders (muted walls in coloured fog) a tiny VAE so
    learned luminance only and decoded every render grey (see README, tiny SD).

    Args:
        images: (B, 3, H, W) in [-1, 1].
        chroma_weight: Weight of the Cb and Cr errors (Y has weight 1); None: plain RGB L1.
    """
    posterior = vae.encode(images)
    recon = vae.decode(posterior.sample())  # (B, 3, H, W)
    l1 = recon_l1(recon, images, chroma_weight)
    kl = posterior.kl().mean() / images[0].numel()
    return {"loss": l1 + kl_weight * kl, "l1": l1, "kl": kl}


MIN_GROUP_WIDTH = 4  # channels per GroupNorm group; SD's own VAE has 4, its UNet 10


def check_group_norm(channels: Sequence[int], groups: int, what: str) -> None:
    """Refuse GroupNorm groups narrower than `MIN_GROUP_WIDTH` channels at any width.

    A group normalises away its channels' mean over the picture; with one or two channels per
    group nearly nothing of a picture's overall colour survives the decoder's last norm (a
    VAE trained so reconstructs every picture grey, at a PSNR that still looks fine).
    """
    narrow = [c for c in channels if c // groups < MIN_GROUP_WIDTH]
    if narrow:
        raise ValueError(
            f"{what}: norm_num_groups={groups} leaves fewer than {MIN_GROUP_WIDTH} channels per "
            f"group at widths {narrow}; GroupNorm then erases each picture's overall colour. "
            f"Use norm_num_groups <= {min(channels) // MIN_GROUP_WIDTH}"
        )


def initial_weights(path: str) -> dict[str, Tensor]:
    """VAE weights to start from: a checkpoint of `VAESystem` (.ckpt) or a diffusers folder."""
    source = Path(path)
    if source.is_dir():
        return load_vae(source).state_dict()
    if not source.is_file():
        raise FileNotFoundError(f"init_from={path}: no such checkpoint or VAE folder")
    return checkpoint_weights(source, "vae")["vae"]


def checkpoint_weights(path: str | Path, *prefixes: str) -> dict[str, dict[str, Tensor]]:
    """The weights of some models (`prefixes`, e.g. "unet") of a Lightning system checkpoint,
    read once: prefix -> state dict."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"init_from={path}: no such checkpoint")
    try:
        state = read_checkpoint(path).tensors  # the `state_dict` of a Lightning checkpoint
    except WeightsError as e:  # truncated, corrupt, not a torch file: one line naming it
        raise WeightsError(f"init_from={e}") from e
    out = {}
    for prefix in prefixes:
        out[prefix] = {
            k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")
        }
        if not out[prefix]:
            raise ValueError(f"init_from={path}: the checkpoint holds no '{prefix}.*' weights")
    return out


def cosine_factor(step: int, total: int, floor: float = 0.01) -> float:
    """Cosine decay (Loshchilov & Hutter 2017, no restarts) of a learning rate factor from 1 at
    step 0 to `floor` at step `total`, then `floor`."""
    t = min(step, total) / total
    return floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2


def lr_scheduler(opt: torch.optim.Optimizer, schedule: str, trainer: L.Trainer):
    """Lightning's `configure_optimizers` value: `opt` alone ("constant"), or with a per-step
    cosine decay from its learning rate to 1% of it over the trainer's `max_steps` ("cosine").

    The length is read from the trainer at every step, not stored in the scheduler's state: a
    run resumed with a larger `max_steps` anneals to the end of the new length (a restored
    `CosineAnnealingLR` kept the old `T_max` and climbed back to the full rate).
    """
    if schedule == "constant":
        return opt
    if trainer.max_steps is None or trainer.max_steps < 1:
        raise ValueError("lr_schedule='cosine' needs trainer.max_steps >= 1")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: cosine_factor(step, trainer.max_steps)
    )  # a function, so LambdaLR's state_dict leaves it out
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, images: Tensor, seed: int = 0) -> float:
    """1 / std of posterior samples of `images` (B, 3, H, W): LDM's latent scaling factor."""
    noise = torch.Generator(images.device).manual_seed(seed)
    z = vae.encode(images).sample(generator=noise)
    return 1.0 / z.float().std().clamp_min(1e-6).item()


class VAESystem(L.LightningModule):
    """Stage 1: AutoencoderKL on the renders (automatic optimisation, Adam).

    Args:
        vae: Architecture; its `scaling_factor` is replaced at export by the measured one.
        kl_weight: Weight of the KL term (see `vae_loss`).
        lr: Adam learning rate.
        betas: Adam betas (LDM's (0.5, 0.9) are for its adversarial stage; with no
            discriminator Adam's defaults learn faster).
        lr_schedule: "constant", or "cosine": from `lr` down to 1% of it over the trainer's
            `max_steps` (per step).
        chroma_weight: Take the reconstruction L1 in Y, Cb, Cr with this weight on Cb and Cr (see
            `vae_loss`); None: in R, G, B.
        init_from: Start from these weights instead of random ones: a checkpoint of this stage
            (.ckpt) or a diffusers `AutoencoderKL` folder; the architecture must match.
        export_dir: Folder the diffusers `AutoencoderKL` is written to when `fit` ends.
        timelapse_inputs: Held-out images the timelapse reconstructs.
    """

    def __init__(
        self,
        vae: VAEConfig = TINY_VAE,
        kl_weight: float = 1e-6,
        lr: float = 4.5e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_schedule: Literal["constant", "cosine"] = "constant",
        chroma_weight: float | None = None,
        init_from: str | None = None,
        export_dir: str | None = None,
        timelapse_inputs: int = 6,
    ) -> None:
        super().__init__()
        if chroma_weight is not None and chroma_weight <= 0:
            raise ValueError(f"chroma_weight={chroma_weight} must be > 0 (or None: RGB L1)")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule={lr_schedule!r}; valid: constant, cosine")
        if vae.downsample_factor != 8 or vae.latent_channels != 4:
            raise ValueError(
                f"the tiny SD VAE must have f=8 and 4 latent channels (SD's layout), got "
                f"f={vae.downsample_factor} (block_out_channels={vae.block_out_channels}) and "
                f"latent_channels={vae.latent_channels}"
            )
        check_group_norm(vae.block_out_channels, vae.norm_num_groups, "vae")
        self.vae = AutoencoderKL(vae)
        if init_from is not None:
            self.vae.load_state_dict(initial_weights(init_from))
        self.kl_weight, self.lr, self.betas, self.export_dir = kl_weight, lr, betas, export_dir
        self.lr_schedule, self.chroma_weight = lr_schedule, chroma_weight
        self.timelapse_inputs = timelapse_inputs
        self.fixed: dict | None = None

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.vae.parameters(), lr=self.lr, betas=self.betas)
        return lr_scheduler(opt, self.lr_schedule, self.trainer)

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        losses = vae_loss(self.vae, batch["image"], self.kl_weight, self.chroma_weight)
        self.log_dict(losses, prog_bar=True)
        return losses

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        recon = self.vae.decode(self.vae.encode(images).mode()).clamp(-1, 1)
        self.log("val/psnr", psnr(recon, images), batch_size=len(images), sync_dist=True)
        # a VAE that drops colour decodes grey at a fine PSNR: log how saturated it decodes
        self.log_dict(
            {
                "val/colour_spread": colour_spread(recon),
                "val/colour_spread_true": colour_spread(images),
            },
            batch_size=len(images),
            sync_dist=True,
        )

    def on_fit_start(self) -> None:
        self.fixed = held_out(self, self.timelapse_inputs)

    @torch.no_grad()
    def timelapse_panels(self) -> list[tuple[str, Tensor]]:
        """Held-out images and their reconstructions (posterior mean, eval mode)."""
        if self.fixed is None:
            return []
        images = self.fixed["image"].to(self.device)
        was_training = self.vae.training
        self.vae.eval()
        recon = self.vae.decode(self.vae.encode(images).mode())
        self.vae.train(was_training)
        return [("image", images), ("recon", recon.clamp(-1, 1))]

    def on_fit_end(self) -> None:
        """Write the export (the latent scale measured on the held-out images).

        In `on_fit_end`, not `on_train_end`: a run resumed at its `max_steps` skips the training
        loop and `on_train_end` with it, and rerunning a finished stage must export again (so a
        lost export is rebuilt). The module is on the CPU by then (Lightning's teardown).
        """
        if self.export_dir is None or not self.trainer.is_global_zero:
            return
        dm = self.trainer.datamodule
        images = dm.val_set.images[: 4 * dm.batch_size].to(self.device)
        self.vae.eval()
        scale = latent_scale(self.vae, images)
        if not math.isfinite(scale):
            raise ValueError(f"latent scale {scale} of the held-out images is not finite")
        self.vae.cfg = replace(self.vae.cfg, scaling_factor=round(scale, 5))
        save_vae(self.vae, Path(self.export_dir), overwrite=True)
