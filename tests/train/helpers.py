"""Tiny configs and data for the training smoke tests (seconds each on a CPU)."""

from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _trainer(root: Path, overrides: dict) -> dict:
    return {
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": str(root),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **overrides,
    }


def dcgan_config(root: Path, **trainer) -> dict:
    """DCGAN at 32 px with 4-channel layers: a step takes milliseconds."""
    return {
        "seed_everything": 0,
        "trainer": _trainer(root, trainer),
        "model": {
            "generator": {"image_size": 32, "latent_dim": 8, "g_channels": 4, "d_channels": 4},
            "timelapse_samples": 4,
        },
        "data": {"kind": "triangles", "data": {"image_size": 32, "length": 64}, "batch_size": 8},
        "timelapse": {"every_n_steps": 2, "dirpath": str(root / "timelapse")},
        "checkpoint": {"dirpath": str(root / "ckpt"), "every_n_train_steps": 4, "save_last": True},
        "wandb": "disabled",
    }


def write_pairs(root: Path, n: int = 6, size: int = 64) -> Path:
    """n random hatched/textured/fog triples, the layout of the walls data set."""
    rng = np.random.default_rng(0)
    for i in range(n):
        for folder, shape, mode in (
            ("hatched", (size, size), "L"),
            ("textured", (size, size, 3), "RGB"),
            ("fog", (size, size), "L"),
        ):
            (root / folder).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / folder / f"{i:03d}.png")
    return root


def pix2pix_config(root: Path, data_root: Path, **trainer) -> dict:
    """Pix2Pix at 64 px, hatched (1) -> texture (3) + fog (1), 4-channel layers."""
    return {
        "seed_everything": 0,
        "trainer": _trainer(root, trainer),
        "model": {
            "generator": {
                "image_size": 64,
                "in_channels": 1,
                "head_names": ["texture", "fog"],
                "head_channels": [3, 1],
                "base_channels": 4,
                "max_mult": 2,
            },
            "discriminator": {"in_channels": 5, "base_channels": 4, "n_layers": 2},
            "loss": "lsgan",
            "timelapse_inputs": 2,
        },
        "data": {
            "root": str(data_root),
            "val_count": 2,
            "batch_size": 2,
            "data": {
                "inputs": ["hatched"],
                "input_channels": [1],
                "targets": ["textured", "fog"],
                "target_channels": [3, 1],
                "image_size": 64,
                "load_size": 72,
            },
        },
        "timelapse": {"every_n_steps": 2, "dirpath": str(root / "timelapse")},
        "checkpoint": {"dirpath": str(root / "ckpt"), "save_last": True},
        "wandb": "disabled",
    }
