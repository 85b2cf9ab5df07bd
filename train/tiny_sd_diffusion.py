"""Tiny Stable Diffusion, stages 2 and 3: text-to-image UNet and depth ControlNet (issue 8).

Stage 2, `TextToImageSystem`: eps- or v-prediction on the VAE's scaled latents with SD's training
schedule (`DiscreteSchedule.scaled_linear()`, DDPM's loss ||eps - eps_theta(x_t, t, c)||^2, Ho et
al. 2020, or its v form, `diffusion_target`), captions dropped to "" with probability
`caption_dropout` for classifier-free guidance (Ho & Salimans 2022). The text encoder (CLIP
architecture, caption-word vocabulary from `pilot.data.captions.build_tokenizer`) is trained
jointly with the UNet through the same loss, as LDM trains its text transformer for text-to-image
from scratch (Rombach et al. 2022, sec. 4.3.1). Why not a separate objective: a contrastive CLIP
loss needs an image tower and large batches of distinct captions (our grammar has ~2k captions,
many repeats per batch), and a caption-reconstruction loss needs a decoder; both only train the
embedding the UNet needs indirectly, whereas the diffusion loss trains exactly that embedding.
Exports a full diffusers pipeline folder (`pilot.load_pipeline` loads it).

Stage 3, `DepthControlNetSystem`: a ControlNet seeded with `ControlNet.from_unet` from the stage
2 pipeline, trained on the same loss with the UNet, VAE and text encoder frozen and half the
captions dropped (Zhang et al. 2023, sec. 3.3), on near-bright depth control images. Exports a
diffusers `ControlNetModel` folder (`pilot.load_controlnet`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pilot.data.captions import build_tokenizer
from pilot.diffusion.control import Control
from pilot.diffusion.pipeline import Request, SamplingSettings, generate
from pilot.diffusion.schedules import DiscreteSchedule
from pilot.models.clip import CLIPTextConfig, CLIPTextModel
from pilot.models.controlnet import ControlNet
from pilot.models.tokenizer import CLIPTokenizer
from pilot.models.unet import UNet, UNetConfig
from pilot.weights.io import WeightsError
from pilot.weights.loaders import StableDiffusion, load_pipeline, load_vae
from pilot.weights.save import save_controlnet, save_pipeline
from train.frozen import FrozenModels
from train.tiny_sd import check_group_norm, checkpoint_weights, held_out, lr_scheduler

TINY_UNET = UNetConfig(  # 8 x 8 latents of 64 px images; 4.4 M parameters
    block_out_channels=(64, 128),
    cross_attention_dim=64,
    num_heads=4,
    norm_num_groups=8,  # 8+ channels per group (`train.tiny_sd.check_group_norm`)
    sample_size=8,
)


@dataclass(frozen=True)
class TextEncoderSize:
    """Width and depth of the tiny CLIP text encoder; its vocabulary comes from the tokenizer."""

    hidden_size: int = 64  # must equal the UNet's cross_attention_dim
    intermediate_size: int = 256  # MLP width, 4 x hidden
    num_layers: int = 2
    num_heads: int = 4


def text_config(size: TextEncoderSize, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """A `CLIPTextConfig` of `size` whose vocabulary and special ids are `tokenizer`'s."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer.vocab),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_layers=size.num_layers,
        num_heads=size.num_heads,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def noise_latents(latents: Tensor, alphas_cumprod: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """DDPM forward process at uniform random timesteps: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps.

    Args:
        latents: (B, 4, h, w) scaled latents x_0.
        alphas_cumprod: (T,) cumulative alpha products of the training schedule.

    Returns:
        x_t (B, 4, h, w), integer timesteps t (B,), the noise eps (B, 4, h, w).
    """
    t = torch.randint(0, len(alphas_cumprod), (len(latents),), device=latents.device)
    eps = torch.randn_like(latents)
    a = alphas_cumprod[t].view(-1, 1, 1, 1).to(latents.dtype)
    return a.sqrt() * latents + (1 - a).sqrt() * eps, t, eps


def diffusion_target(
    latents: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str
) -> Tensor:
    """What the UNet learns to output for x_t: the noise eps ("epsilon") or the velocity
    v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 ("v_prediction", Salimans & Ho 2022)."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type != "v_prediction":
        raise ValueError(f"prediction_type={prediction_type!r}; valid: epsilon, v_prediction")
    a = alphas_cumprod[t].view(-1, 1, 1, 1).to(latents.dtype)
    return a.sqrt() * eps - (1 - a).sqrt() * latents


def drop_captions(captions: list[str], p: float) -> list[str]:
    """Replace each caption by "" with probability `p` (classifier-free guidance training)."""
    keep = torch.rand(len(captions)) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist(), strict=True)]


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode (these models have no dropout or batch norm either way)."""
    return module.requires_grad_(False).eval()


def load_export(load: Callable[[str], Any], key: str, path: str, stage: str) -> Any:
    """`load(path)` of an earlier stage's export given as `model.<key>`: its errors name the
    key, and a missing path the stage that writes it."""
    try:
        return load(path)
    except WeightsError as e:
        if Path(path).exists():
            raise WeightsError(f"model.{key}: {e}") from e
        raise WeightsError(
            f"model.{key}: {e}; the {stage} stage exports it: train that first "
            f"(experiments/tiny_sd/train.sh runs the stages in order)"
        ) from e


class _DiffusionStage(FrozenModels, L.LightningModule):
    """What both diffusion stages share: the schedule, latents, text, timelapse and loss log."""

    sd: StableDiffusion

    def __init__(
        self,
        caption_dropout: float,
        lr: float,
        export_dir: str | None,
        timelapse_inputs: int,
        timelapse_steps: int,
        timelapse_cfg: float,
    ) -> None:
        super().__init__()
        if not 0 <= caption_dropout <= 1:
            raise ValueError(f"caption_dropout={caption_dropout} must be in [0, 1]")
        self.caption_dropout, self.lr, self.export_dir = caption_dropout, lr, export_dir
        self.timelapse_inputs, self.timelapse_steps = timelapse_inputs, timelapse_steps
        self.timelapse_cfg = timelapse_cfg
        schedule = DiscreteSchedule.scaled_linear()
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.float(), persistent=False)
        self.fixed: dict | None = None
        self.moments: dict[int, tuple[Tensor, Tensor]] = {}  # item index -> VAE posterior

    @torch.no_grad()
    def latents(self, images: Tensor, index: Tensor | None = None) -> Tensor:
        """Scaled posterior samples (B, 4, H/8, W/8) of images (B, 3, H, W) in [-1, 1].

        With the items' data set `index` (B,), the frozen VAE's posterior (mean, std) of each
        item is computed once and kept (the VAE encoder costs more than the tiny UNet's
        training step); a fresh sample is still drawn from it at every step.
        """
        if index is None:
            return self.sd.vae.encode(images).sample() * self.sd.scaling_factor
        keys = index.tolist()
        missing = [k for k, i in enumerate(keys) if i not in self.moments]
        if missing:
            post = self.sd.vae.encode(images[missing])
            for k, mean, std in zip(missing, post.mean, post.std, strict=True):
                self.moments[keys[k]] = (mean, std)
        mean = torch.stack([self.moments[i][0] for i in keys])
        std = torch.stack([self.moments[i][1] for i in keys])
        return (mean + std * torch.randn_like(mean)) * self.sd.scaling_factor

    def noised(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """A training batch's noised latents x_t, timesteps t and the UNet's target there."""
        latents = self.latents(batch["image"], batch["index"])
        x_t, t, eps = noise_latents(latents, self.alphas_cumprod)
        target = diffusion_target(latents, eps, t, self.alphas_cumprod, self.sd.prediction_type)
        return x_t, t, target

    def context(self, captions: list[str]) -> Tensor:
        """Text embeddings (B, 77, C) of the captions, some dropped to ""."""
        ids = self.sd.tokenizer(drop_captions(list(captions), self.caption_dropout))
        return self.sd.text_encoder(ids.to(self.device))

    def on_fit_start(self) -> None:
        self.fixed = held_out(self, self.timelapse_inputs)

    def sample(self, controls: list[Control] | None = None) -> Tensor:
        """Images of the fixed held-out captions, fixed seeds, in [-1, 1] (eval mode)."""
        images = self.fixed["image"]
        request = Request(
            prompts=self.fixed["caption"],
            seeds=list(range(len(images))),
            width=images.shape[-1],
            height=images.shape[-2],
        )
        settings = SamplingSettings(
            sampler="euler", steps=self.timelapse_steps, cfg=self.timelapse_cfg
        )
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = generate(self.sd, request, settings, controls=controls or ())
        self.train(was_training)
        return out * 2 - 1


class TextToImageSystem(_DiffusionStage):
    """Stage 2: UNet and text encoder from scratch on a trained VAE (automatic optimisation).

    Args:
        vae: Folder of the stage 1 export (a diffusers `AutoencoderKL`).
        unet: UNet architecture; `cross_attention_dim` must equal the text encoder's width.
        text_encoder: Text encoder size (vocabulary from the caption tokenizer).
        caption_dropout: Probability of training on the empty caption (CFG's unconditional).
        prediction_type: "epsilon" (SD 1.x) or "v_prediction" (SD 2.x). With SD's schedule the
            noisiest step keeps 7% of the image, so predicting eps there barely depends on the
            image: an eps-model learns what the caption says (the colour) only slowly, while
            v at high noise is mostly -x_0, which the caption decides.
        lr: AdamW learning rate of the UNet and the text encoder.
        lr_schedule: "constant", or "cosine": from `lr` down to 1% of it over the trainer's
            `max_steps` (an annealing stage after a constant one).
        init_from: A checkpoint of this stage (.ckpt) whose UNet and text encoder to start
            from instead of random weights (the optimizer starts afresh).
        export_dir: Pipeline folder written when `fit` ends.
        timelapse_inputs: Held-out captions sampled by the timelapse.
        timelapse_steps: Euler steps of the timelapse samples.
        timelapse_cfg: Guidance scale of the timelapse samples.
    """

    def __init__(
        self,
        vae: str,
        unet: UNetConfig = TINY_UNET,
        text_encoder: TextEncoderSize = TextEncoderSize(),  # noqa: B008 (frozen)
        caption_dropout: float = 0.1,
        prediction_type: str = "epsilon",
        lr: float = 2e-4,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        init_from: str | None = None,
        export_dir: str | None = None,
        timelapse_inputs: int = 6,
        timelapse_steps: int = 20,
        timelapse_cfg: float = 3.0,
    ) -> None:
        super().__init__(
            caption_dropout, lr, export_dir, timelapse_inputs, timelapse_steps, timelapse_cfg
        )
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule={lr_schedule!r}; valid: constant, cosine")
        self.lr_schedule = lr_schedule
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type={prediction_type!r}; valid: epsilon, v_prediction")
        if unet.cross_attention_dim != text_encoder.hidden_size:
            raise ValueError(
                f"unet.cross_attention_dim={unet.cross_attention_dim} must equal "
                f"text_encoder.hidden_size={text_encoder.hidden_size}"
            )
        if caption_dropout == 1:
            raise ValueError("caption_dropout=1 would never show the UNet a caption")
        check_group_norm(unet.block_out_channels, unet.norm_num_groups, "unet")
        tokenizer = build_tokenizer()
        self.unet = UNet(unet)
        self.text_encoder = CLIPTextModel(text_config(text_encoder, tokenizer))
        self.vae = freeze(load_export(load_vae, "vae", vae, "tiny_sd_vae"))
        self.vae_source = vae
        if init_from is not None:
            weights = checkpoint_weights(init_from, "unet", "text_encoder")
            self.unet.load_state_dict(weights["unet"])
            self.text_encoder.load_state_dict(weights["text_encoder"])
        self.sd = StableDiffusion(
            self.unet, self.vae, self.text_encoder, tokenizer, prediction_type
        )

    def frozen_models(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    def frozen_source(self) -> str:
        return f"model.vae={self.vae_source}"

    def configure_optimizers(self):
        params = [*self.unet.parameters(), *self.text_encoder.parameters()]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=1e-2)
        return lr_scheduler(opt, self.lr_schedule, self.trainer)

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        x_t, t, target = self.noised(batch)
        loss = F.mse_loss(self.unet(x_t, t, self.context(batch["caption"])).float(), target.float())
        self.log("loss", loss, prog_bar=True)
        return {"loss": loss, "mse": loss.detach()}  # the timelapse skips "loss"

    def timelapse_panels(self) -> list[tuple[str, Tensor]]:
        """Held-out renders and samples of their captions."""
        if self.fixed is None:
            return []
        return [("render", self.fixed["image"]), ("sample", self.sample())]

    def on_fit_end(self) -> None:
        """Write the export (in `on_fit_end`: see `VAESystem.on_fit_end`)."""
        if self.export_dir is not None and self.trainer.is_global_zero:
            save_pipeline(self.sd, Path(self.export_dir), overwrite=True)


class DepthControlNetSystem(_DiffusionStage):
    """Stage 3: depth ControlNet seeded from the stage 2 UNet, which stays frozen.

    Args:
        pipeline: Folder of the stage 2 export (a diffusers pipeline).
        hint_channels: Hint encoder widths (4 entries: the image is downsampled 8x).
        caption_dropout: Probability of the empty caption (the paper drops 50%).
        lr: AdamW learning rate of the ControlNet.
        export_dir: ControlNet folder written when `fit` ends.
        timelapse_inputs, timelapse_steps, timelapse_cfg: as for `TextToImageSystem`.
    """

    def __init__(
        self,
        pipeline: str,
        hint_channels: tuple[int, ...] = (16, 32, 64, 64),
        caption_dropout: float = 0.5,
        lr: float = 1e-4,
        export_dir: str | None = None,
        timelapse_inputs: int = 6,
        timelapse_steps: int = 20,
        timelapse_cfg: float = 3.0,
    ) -> None:
        super().__init__(
            caption_dropout, lr, export_dir, timelapse_inputs, timelapse_steps, timelapse_cfg
        )
        self.sd = load_export(load_pipeline, "pipeline", pipeline, "tiny_sd_unet")
        self.pipeline_source = pipeline
        for model in (self.sd.unet, self.sd.vae, self.sd.text_encoder):
            freeze(model)
        self.unet, self.vae, self.text_encoder = self.sd.unet, self.sd.vae, self.sd.text_encoder
        self.controlnet = ControlNet.from_unet(self.sd.unet, hint_channels=hint_channels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.controlnet.parameters(), lr=self.lr, weight_decay=1e-2)

    def frozen_models(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}

    def frozen_source(self) -> str:
        return f"model.pipeline={self.pipeline_source}"

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        x_t, t, target = self.noised(batch)
        with torch.no_grad():
            context = self.context(batch["caption"])
        down, mid = self.controlnet(x_t, t, context, batch["control"])
        pred = self.unet(x_t, t, context, down_residuals=down, mid_residual=mid)
        loss = F.mse_loss(pred.float(), target.float())
        self.log("loss", loss, prog_bar=True)
        return {"loss": loss, "mse": loss.detach()}  # the timelapse skips "loss"

    def timelapse_panels(self) -> list[tuple[str, Tensor]]:
        """Held-out depth controls, their renders and controlled samples of their captions."""
        if self.fixed is None:
            return []
        control = self.fixed["control"].to(self.device)
        sample = self.sample([Control(self.controlnet, control)])
        return [("depth", control * 2 - 1), ("render", self.fixed["image"]), ("sample", sample)]

    def on_fit_end(self) -> None:
        """Write the export (in `on_fit_end`: see `VAESystem.on_fit_end`)."""
        if self.export_dir is not None and self.trainer.is_global_zero:
            save_controlnet(self.controlnet, Path(self.export_dir), overwrite=True)
