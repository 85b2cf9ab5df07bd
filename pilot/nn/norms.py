"""Group normalisation (Wu & He 2018) with an inference path for few, large groups.

PyTorch's CUDA GroupNorm takes each (image, group)'s statistics in one thread block. SD's VAE
decoder at 512 px has 32 such rows of up to a million elements: 32 blocks on an H100's 132
multiprocessors, and the statistics kernel was half of the whole decode's time in a profile
(`experiments.bench.vae --profile`: 30 calls of ~360 us). With `SPLIT_MIN_ELEMENTS` set, no-grad
calls whose groups hold that many elements or more take the statistics with PyTorch's general
reductions instead, which spread one row over many blocks: the mean, then the variance of the
centred input written into the output buffer, then the affine map in place over it. That is
more passes over memory (about six tensor traversals against three, and more kernels: a loss
on small feature maps such as the UNet's) for more parallel ones, in any memory layout (CUDA's
GroupNorm copies a channels_last input to NCHW). Off until a GPU run measures it: `python -m
experiments.bench.vae --size 512 --dtype fp16 --channels-last --split-norms 1,131072`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Elements per (image, group) from which no-grad GroupNorm calls take their statistics by
# passes of general reductions (see the module docstring); None: never.
SPLIT_MIN_ELEMENTS: int | None = None


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` (same arguments, parameters and state dict) whose no-grad calls on
    feature maps with groups of `SPLIT_MIN_ELEMENTS` elements or more take the
    `group_norm_by_passes` path."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (B, C, *spatial) over each image's channel groups."""
        if (
            SPLIT_MIN_ELEMENTS is not None
            and not torch.is_grad_enabled()
            and x.ndim >= 3
            and x[0].numel() // self.num_groups >= SPLIT_MIN_ELEMENTS
        ):
            return group_norm_by_passes(x, self)
        return super().forward(x)


def group_norm_by_passes(x: Tensor, norm: nn.GroupNorm) -> Tensor:
    """`norm(x)` for (B, C, *spatial) `x` by whole-tensor passes, statistics in float32 or wider.

    The mean; the centred input, written into the output (in `x`'s layout and dtype); its
    variance, by a float32-accumulated norm of that (two passes: no cancellation of
    E[x^2] - E[x]^2); then scale and shift in place. On CUDA the half-precision input is read
    by the float32 reductions without a float32 copy. For calls without autograd (it writes
    through `out=` arguments).
    """
    b, c = x.shape[:2]
    groups = norm.num_groups
    acc = torch.promote_types(x.dtype, torch.float32)
    out = torch.empty_like(x)  # x's memory format
    grouped, centred = (t.unflatten(1, (groups, c // groups)) for t in (x, out))
    dims = tuple(range(2, grouped.ndim))  # (B, G, C/G, *spatial): all but image and group
    mean = grouped.mean(dims, keepdim=True, dtype=acc)
    torch.sub(grouped, mean, out=centred)
    count = grouped[0, 0].numel()
    var = torch.linalg.vector_norm(centred, 2, dims, dtype=acc).square_().div_(count)
    scale = channel_scale(var, norm).view(b, c, *[1] * (x.ndim - 2))
    if norm.bias is None:
        return out.mul_(scale)
    return torch.addcmul(norm.bias.to(acc).view(c, *[1] * (x.ndim - 2)), out, scale, out=out)


def channel_scale(var: Tensor, norm: nn.GroupNorm) -> Tensor:
    """Per-channel factor (B, C) of a GroupNorm whose groups have variances `var` (B, G):
    `weight / sqrt(var + eps)`, in `var`'s dtype."""
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(norm.num_channels // norm.num_groups, 1)
    return scale if norm.weight is None else scale * norm.weight.to(scale.dtype)
