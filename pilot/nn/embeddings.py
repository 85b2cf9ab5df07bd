"""Timestep embeddings: sinusoidal features (DDPM / Transformer) and the MLP that follows them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(
    t: Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> Tensor:
    """Sinusoidal timestep features, as in DDPM (Ho et al. 2020) and "Attention Is All You Need".

    Frequency `i` is `max_period ** (-i / (dim // 2 - freq_shift))`. Stable Diffusion uses
    `flip_sin_to_cos=True, freq_shift=0` (cos first), which is what the original CompVis code
    computes; diffusers' defaults elsewhere are `False, 1`.

    Args:
        t: Timesteps, shape (B,), any real dtype; they may be fractional.
        dim: Number of output features.
        flip_sin_to_cos: Put the cosine half first.
        freq_shift: Shift of the frequency denominator (see above).
        max_period: Longest period of the sinusoids.

    Returns:
        Float32 features of shape (B, dim); an odd `dim` gets one trailing zero.
    """
    half = dim // 2
    # Same operation order as the reference implementations so float32 results match bitwise.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))  # (half,)
    args = t[:, None].float() * freqs[None]  # (B, half)
    halves = [args.cos(), args.sin()] if flip_sin_to_cos else [args.sin(), args.cos()]
    emb = torch.cat(halves, dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Two-layer SiLU MLP that lifts sinusoidal timestep features to the model's embedding width.

    Args:
        in_features: Width of the sinusoidal features.
        embed_dim: Width of the hidden layer and of the output.
    """

    def __init__(self, in_features: int, embed_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, features: Tensor) -> Tensor:
        """Map (B, in_features) features to a (B, embed_dim) embedding."""
        return self.linear_2(F.silu(self.linear_1(features)))
