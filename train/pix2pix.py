"""Pix2Pix training system and the paired-folder data module (Lightning, manual optimisation).

Isola et al. 2017: the U-Net generator is trained with a conditional GAN loss (the PatchGAN sees
condition and image concatenated) plus `l1_weight` times the L1 distance to the target. The
target may hold several heads (e.g. texture RGB + fog); L1 is logged per head. Validation
reports per-head L1 / PSNR / correlation on held-out pairs. Mixed precision comes from the
Trainer's `precision`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pilot.data.paired import PairedConfig, PairedImages
from pilot.models.pix2pix import PatchDiscriminator, PatchGANConfig, Pix2PixConfig, UNetGenerator
from train.loaders import make_loader
from train.losses import GANLoss, discriminator_loss, generator_loss
from train.metrics import head_metrics, split


def pix2pix_step(
    generator: UNetGenerator,
    discriminator: PatchDiscriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    a: Tensor,
    b: Tensor,
    *,
    loss: GANLoss,
    l1_weight: float,
    backward: Callable[[Tensor], None] = Tensor.backward,
) -> dict[str, Tensor]:
    """One Pix2Pix update: the discriminator on (a, b) vs (a, G(a)), then the generator on the
    adversarial loss plus `l1_weight` times L1 (Isola et al. 2017, eq. 4).

    Args:
        a: conditions (B, Ca, S, S) in [-1, 1].
        b: targets (B, Cb, S, S) in [-1, 1], heads concatenated.
        backward: how to backpropagate (Lightning's `manual_backward` applies AMP scaling).

    Returns:
        d_loss, g_adv, l1 and one `l1_<head>` per generator head (detached except the first 3).
    """
    fake = generator(a)  # (B, Cb, S, S)
    real_logits = discriminator(torch.cat([a, b], 1))
    fake_logits = discriminator(torch.cat([a, fake.detach()], 1))
    d_loss = discriminator_loss(loss, real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    backward(d_loss)
    opt_d.step()

    discriminator.requires_grad_(False)  # the generator step needs no discriminator gradients
    g_adv = generator_loss(loss, discriminator(torch.cat([a, fake], 1)))
    error = (fake.float() - b.float()).abs()
    l1 = error.mean()
    opt_g.zero_grad(set_to_none=True)
    backward(g_adv + l1_weight * l1)
    opt_g.step()
    discriminator.requires_grad_(True)

    cfg = generator.cfg
    heads = split(error.detach(), cfg.head_channels)
    per_head = {f"l1_{n}": h.mean() for n, h in zip(cfg.head_names, heads, strict=True)}
    return {"d_loss": d_loss, "g_adv": g_adv, "l1": l1, **per_head}


class PairedDataModule(L.LightningDataModule):
    """Paired folders (see `pilot.data.paired`) split into training and held-out pairs.

    Args:
        root: folder of the pairs.
        data: layout, sub-folders, channels and sizes.
        val_root: folder of held-out pairs; None holds out the last `val_count` names of `root`.
        val_count: how many pairs to hold out when there is no `val_root` (at least 1).
        batch_size: pairs per step.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        root: str,
        data: PairedConfig = PairedConfig(),  # noqa: B008 (frozen, immutable default)
        val_root: str | None = None,
        val_count: int = 16,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.root, self.cfg, self.val_root, self.val_count = root, data, val_root, val_count
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set: PairedImages | None = None
        self.val_set: PairedImages | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train = PairedImages(self.root, self.cfg, augment=True)
        if self.val_root is not None:
            self.val_set = PairedImages(self.val_root, self.cfg, augment=False)
            self.train_set = train
            return
        names = train.names
        if self.val_count < 1:
            raise ValueError(
                f"data.val_count={self.val_count} must be >= 1 (the held-out pairs of {self.root} "
                "for validation and the timelapse), or pass data.val_root"
            )
        if len(names) <= self.val_count:
            raise ValueError(
                f"{self.root}: {len(names)} pairs, not enough to hold out val_count="
                f"{self.val_count} and still train; lower val_count or pass val_root"
            )
        keep, held = names[: -self.val_count], names[-self.val_count :]
        self.train_set = PairedImages(self.root, self.cfg, augment=True, names=keep)
        self.val_set = PairedImages(self.root, self.cfg, augment=False, names=held)

    def _loader(self, dataset: PairedImages, train: bool) -> DataLoader:
        return make_loader(dataset, self.batch_size, self.num_workers, train=train)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)


class Pix2PixSystem(L.LightningModule):
    """Pix2Pix training: conditional PatchGAN loss plus weighted L1, manual optimisation.

    Args:
        generator: U-Net architecture (`pilot.models.pix2pix.Pix2PixConfig`).
        discriminator: PatchGAN architecture; its `in_channels` must equal the generator's
            `in_channels + out_channels`.
        loss: GAN loss, "vanilla", "lsgan" or "hinge".
        l1_weight: weight of the L1 term (the paper's lambda = 100).
        lr: learning rate of both Adam optimisers.
        betas: Adam betas.
        timelapse_inputs: how many held-out pairs the timelapse shows.
    """

    def __init__(
        self,
        generator: Pix2PixConfig = Pix2PixConfig(),  # noqa: B008 (frozen, immutable default)
        discriminator: PatchGANConfig = PatchGANConfig(),  # noqa: B008
        loss: GANLoss = "vanilla",
        l1_weight: float = 100.0,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        timelapse_inputs: int = 4,
    ) -> None:
        super().__init__()
        want = generator.in_channels + generator.out_channels
        if discriminator.in_channels != want:
            raise ValueError(
                f"discriminator.in_channels={discriminator.in_channels} must be generator "
                f"in_channels + out_channels = {generator.in_channels} + "
                f"{generator.out_channels} = {want}"
            )
        discriminator_loss(loss, torch.zeros(1), torch.zeros(1))  # ValueError on a bad name
        self.automatic_optimization = False
        self.cfg, self.loss_kind, self.l1_weight = generator, loss, l1_weight
        self.lr, self.betas, self.timelapse_inputs = lr, tuple(betas), timelapse_inputs
        self.generator = UNetGenerator(generator)
        self.discriminator = PatchDiscriminator(discriminator)
        self.fixed_pairs: dict[str, Tensor] | None = None  # set from held-out pairs at fit start
        self.input_names: tuple[str, ...] = ("input",)  # timelapse panels of the condition
        self.input_channels: tuple[int, ...] = (generator.in_channels,)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=self.betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas)
        return [opt_g, opt_d]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        opt_g, opt_d = self.optimizers()
        losses = pix2pix_step(
            self.generator,
            self.discriminator,
            opt_g,
            opt_d,
            batch["A"],
            batch["B"],
            loss=self.loss_kind,
            l1_weight=self.l1_weight,
            backward=self.manual_backward,
        )
        self.log_dict(losses, prog_bar=True)
        return {k: losses[k].detach() for k in ("d_loss", "g_adv", "l1")}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        pred = self.generator(batch["A"])
        names, channels = self.cfg.head_names, self.cfg.head_channels
        for name, p, t in zip(
            names, split(pred, channels), split(batch["B"], channels), strict=True
        ):
            metrics = head_metrics(p, t, prefix=f"val/{name}_")
            self.log_dict(metrics, batch_size=len(p), sync_dist=True)

    def check_data(self, data: PairedConfig) -> None:
        """ValueError naming the keys of the model and the data whose channels or sizes differ."""
        g = self.cfg
        checks = (  # model key, its value, its channel count, data key, its channels
            ("in_channels", g.in_channels, g.in_channels, "input_channels", data.input_channels),
            ("head_channels", list(g.head_channels), g.out_channels, "target_channels",
             data.target_channels),
        )  # fmt: skip
        for model_key, value, count, data_key, channels in checks:
            if count != sum(channels):
                raise ValueError(
                    f"model.generator.{model_key} {value} != data.data.{data_key} "
                    f"{list(channels)} (the channel counts must add up alike)"
                )
        if g.image_size != data.image_size:
            raise ValueError(
                f"model.generator.image_size {g.image_size} != data.data.image_size "
                f"{data.image_size} (the checkpoint records the model's, which `pilot "
                "conditioner apply` runs at)"
            )

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        val = getattr(dm, "val_set", None)
        data = getattr(dm, "cfg", None)
        if isinstance(data, PairedConfig):
            self.check_data(data)
        if isinstance(data, PairedConfig) and len(data.inputs) > 1:  # one panel per folder
            self.input_names, self.input_channels = data.inputs, data.input_channels
        if val is not None and len(val) and self.timelapse_inputs > 0:
            items = [val[i] for i in range(min(self.timelapse_inputs, len(val)))]
            self.fixed_pairs = {k: torch.stack([it[k] for it in items]) for k in ("A", "B")}

    def timelapse_panels(self) -> list[tuple[str, Tensor]]:
        """Fixed held-out inputs (a panel per input folder), each head's prediction (eval mode)
        and its target."""
        if self.fixed_pairs is None:
            return []
        a, b = (self.fixed_pairs[k].to(self.device) for k in ("A", "B"))
        was_training = self.generator.training
        self.generator.eval()
        pred = self.generator(a)
        self.generator.train(was_training)
        panels = list(zip(self.input_names, split(a, self.input_channels), strict=True))
        preds, targets = split(pred, self.cfg.head_channels), split(b, self.cfg.head_channels)
        for name, p, t in zip(self.cfg.head_names, preds, targets, strict=True):
            panels += [(name, p), (f"true {name}", t)]
        return panels

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain strings next to the tensors, read by `pilot conditioner apply` (weights_only).
        checkpoint["pilot_kind"] = "pix2pix"
        checkpoint["pilot_config"] = json.dumps(asdict(self.cfg))
