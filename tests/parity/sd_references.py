"""Reference (diffusers / transformers) models with seeded weights, shared by parity tests."""

import json

import torch
from transformers import CLIPTokenizer as HFTokenizer

from pilot.models.tokenizer import CLIPTokenizer


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def fill(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random weights, exact in float16: U(+-1/sqrt(fan_in)) matrices, noisy norms/biases.

    Biases and norm scales are not their constant init, so a swapped key would show.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                bound = p[0].numel() ** -0.5
                value = torch.empty(p.shape).uniform_(-bound, bound, generator=g)
            else:
                value = torch.randn(p.shape, generator=g) * 0.05
                if "norm" in name and name.endswith("weight"):
                    value += 1
            p.copy_(value.half())  # values a float16 file holds exactly
    return model.eval()


def hf_tokenizer(folder, pad_token: str) -> HFTokenizer:
    """A transformers CLIPTokenizer over pilot's shipped CLIP vocabulary."""
    tok = CLIPTokenizer.default()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tok.vocab))
    merges = sorted(tok.ranks, key=tok.ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    return HFTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        pad_token=pad_token,
        model_max_length=77,
    )


def tiny_diffusers_pipeline(root):
    """A diffusers `StableDiffusionPipeline` of the `tiny` presets with seeded weights (VAE 1,
    text encoder 2, UNet 3), transformers' tokenizer over CLIP's real vocabulary (its vocab
    files under `root`) and the DDIM scheduler of SD's config; not saved."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from scheduler_cases import CASES, SD
    from transformers import CLIPTextConfig, CLIPTextModel

    from pilot.models.unet import UNET_PRESETS
    from pilot.models.vae import VAE_PRESETS

    tok = CLIPTokenizer.default()
    text_cfg = CLIPTextConfig(
        vocab_size=len(tok.vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return StableDiffusionPipeline(
        vae=fill(AutoencoderKL(**VAE_PRESETS["tiny"].to_diffusers()), 1),
        text_encoder=fill(CLIPTextModel(text_cfg), 2),
        tokenizer=hf_tokenizer(root / "vocab", pad_token="<|endoftext|>"),
        unet=fill(UNet2DConditionModel(**UNET_PRESETS["tiny"].to_diffusers()), 3),
        scheduler=CASES["ddim_sd_config"].scheduler(**SD, **CASES["ddim_sd_config"].config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
