"""A tiny random Stable Diffusion bundle with the real CLIP tokenizer, for pipeline tests."""

from dataclasses import replace

import pytest
import torch

from pilot.models.clip import CLIP_PRESETS, CLIPTextModel
from pilot.models.tokenizer import CLIPTokenizer
from pilot.models.unet import UNET_PRESETS, UNet
from pilot.models.vae import VAE_PRESETS, AutoencoderKL
from pilot.weights.loaders import StableDiffusion


def tiny_text_config():
    """The tiny CLIP preset widened to the real 49408-token vocabulary."""
    tok = CLIPTokenizer.default()
    return replace(
        CLIP_PRESETS["tiny"],
        vocab_size=len(tok.vocab),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def make_tiny_sd(seed: int = 0, prediction_type: str = "epsilon") -> StableDiffusion:
    torch.manual_seed(seed)
    return StableDiffusion(
        unet=UNet(UNET_PRESETS["tiny"]).eval(),
        vae=AutoencoderKL(VAE_PRESETS["tiny"]).eval(),
        text_encoder=CLIPTextModel(tiny_text_config()).eval(),
        tokenizer=CLIPTokenizer.default(),
        prediction_type=prediction_type,
    )


@pytest.fixture(scope="session")
def tiny_sd() -> StableDiffusion:
    return make_tiny_sd()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest (and least disturbed by other jobs) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
