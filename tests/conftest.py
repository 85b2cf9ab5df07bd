"""Shared test set-up: `gpu` marker skipped without CUDA, seeded torch, a tiny random SD."""

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pilot.models.clip import CLIP_PRESETS, CLIPTextModel
from pilot.models.tokenizer import CLIPTokenizer
from pilot.models.unet import UNET_PRESETS, UNet
from pilot.models.vae import VAE_PRESETS, AutoencoderKL
from pilot.weights.loaders import StableDiffusion


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _hash_cache(tmp_path_factory):
    """The weight-hash cache (`pilot.weights.hashes`) in a temporary folder, not the user's."""
    from pilot.weights.hashes import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("hash-cache") / "hashes.json")
    yield
    if before is None:
        del os.environ[CACHE_ENV]
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed torch; restore the thread count a test may change (CLI `--threads` options):
    float results of large models depend on it."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and elementwise work run fastest on one thread, and least disturbed by
    other jobs; use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory, tiny_sd):
    """`tiny_sd` written as a diffusers pipeline folder by `pilot.weights.save.save_pipeline`."""
    from pilot.weights.save import save_pipeline

    return save_pipeline(tiny_sd, tmp_path_factory.mktemp("models") / "tiny-sd")


def plant_temps(*targets, age: float = 3600.0) -> list[Path]:
    """The hidden temporary file a write of each target killed mid-way (kill -9) leaves,
    `.{stem}.{8 random}{suffix}` (`pilot.imageio.atomic_output`), changed `age` seconds ago."""
    paths = []
    for target in map(Path, targets):
        path = target.with_name(f".{target.stem}.k9x_2ab7{target.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"cut")
        os.utime(path, (time.time() - age,) * 2)
        paths.append(path)
    return paths
