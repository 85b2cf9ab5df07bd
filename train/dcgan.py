"""DCGAN training system and the procedural shapes data module (Lightning, manual optimisation).

One training step updates the discriminator on a real batch and a generated one, then the
generator against the updated discriminator (Radford et al. 2016; the loop of Lightning's GAN
example). Losses: vanilla, lsgan or hinge (see `train.losses`). Mixed precision comes from the
Trainer's `precision` ("16-mixed" on GPU, "bf16-mixed" on CPU); nothing here changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pilot.data.triangles import ShapesConfig, ShapesDataset, TrianglesDataset
from pilot.models.dcgan import DCGANConfig, DCGANDiscriminator, DCGANGenerator
from train.loaders import make_loader
from train.losses import GANLoss, discriminator_loss, generator_loss


class ShapesDataModule(L.LightningDataModule):
    """Procedural triangles or random-shapes images (see `pilot.data.triangles`).

    Args:
        kind: "triangles" (one centred regular triangle) or "shapes" (random compositions).
        data: what is drawn (size, count, seed, background, radii).
        batch_size: images per step.
        num_workers: DataLoader worker processes (0 draws in the training process).
    """

    def __init__(
        self,
        kind: Literal["triangles", "shapes"] = "triangles",
        data: ShapesConfig = ShapesConfig(),  # noqa: B008 (frozen, immutable default)
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if kind not in ("triangles", "shapes"):
            raise ValueError(f"kind={kind!r} is not one of ('triangles', 'shapes')")
        self.kind, self.cfg = kind, data
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        dataset = (TrianglesDataset if self.kind == "triangles" else ShapesDataset)(self.cfg)
        return make_loader(dataset, self.batch_size, self.num_workers, train=True)


class DCGANSystem(L.LightningModule):
    """DCGAN training with manual optimisation of generator and discriminator (Adam, beta1=0.5).

    Args:
        generator: architecture of both networks (`pilot.models.dcgan.DCGANConfig`).
        loss: GAN loss, "vanilla", "lsgan" or "hinge".
        lr_g: generator learning rate.
        lr_d: discriminator learning rate.
        betas: Adam betas of both optimisers.
        timelapse_samples: how many fixed latents the timelapse draws.
        timelapse_seed: seed of those latents (the same samples across runs and resumes).
    """

    def __init__(
        self,
        generator: DCGANConfig = DCGANConfig(),  # noqa: B008 (frozen, immutable default)
        loss: GANLoss = "vanilla",
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        timelapse_samples: int = 16,
        timelapse_seed: int = 0,
    ) -> None:
        super().__init__()
        discriminator_loss(loss, torch.zeros(1), torch.zeros(1))  # ValueError on a bad name
        self.automatic_optimization = False
        self.cfg, self.loss_kind = generator, loss
        self.lr_g, self.lr_d, self.betas = lr_g, lr_d, tuple(betas)
        self.generator = DCGANGenerator(generator)
        self.discriminator = DCGANDiscriminator(generator)
        rng = torch.Generator().manual_seed(timelapse_seed)
        fixed = torch.randn(timelapse_samples, generator.latent_dim, generator=rng)
        self.register_buffer("fixed_latents", fixed)  # (N, latent_dim), saved in checkpoints

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr_g, betas=self.betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr_d, betas=self.betas)
        return [opt_g, opt_d]

    def training_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        real = batch  # (B, C, S, S) in [-1, 1]
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], self.cfg.latent_dim, device=real.device)
        fake = self.generator(z)

        self.toggle_optimizer(opt_d)
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake.detach())
        d_loss = discriminator_loss(self.loss_kind, real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        g_loss = generator_loss(self.loss_kind, self.discriminator(fake))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        d_real = (real_logits > 0).float().mean()  # discriminator accuracy on real images
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss, "d_real_acc": d_real}, prog_bar=True)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    def timelapse_panels(self) -> list[tuple[str, Tensor]]:
        """Samples of the fixed latents, generator in eval mode (BatchNorm running stats)."""
        was_training = self.generator.training
        self.generator.eval()
        samples = self.generator(self.fixed_latents)  # (N, C, S, S)
        self.generator.train(was_training)
        return [("samples", samples)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain strings next to the tensors, so `pilot walk` can rebuild the generator from a
        # weights_only load without importing lightning or this module.
        checkpoint["pilot_kind"] = "dcgan"
        checkpoint["pilot_config"] = json.dumps(asdict(self.cfg))
