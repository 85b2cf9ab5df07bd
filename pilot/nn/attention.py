"""Attention blocks: multi-head attention, GEGLU feed-forward, the Stable Diffusion transformer.

All attention goes through `F.scaled_dot_product_attention`, which picks a fused kernel (flash,
memory-efficient or CPU flash) for the inputs' device and dtype. Module and parameter names
(`to_q`, `to_out.0`, `ff.net.2`, `proj_in`, ...) equal diffusers' so checkpoints load by name.

Token tensors are (B, L, C). Feature maps enter and leave as (B, C, H, W); in between they are
(B, H*W, C) tokens: `permute(0, 2, 3, 1)` on the way in (one copy unless channels_last), and a
free view on the way out, folded into the residual add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pilot.nn.norms import GroupNorm


def to_tokens(x: Tensor) -> Tensor:
    """View a (B, C, H, W) feature map as (B, H*W, C) tokens (a copy unless channels_last)."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def to_feature_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """View (B, H*W, C) tokens as a (B, C, H, W) feature map with channels_last strides."""
    return tokens.unflatten(1, (height, width)).permute(0, 3, 1, 2)


def project(tokens: Tensor, layer: nn.Linear | nn.Conv2d) -> Tensor:
    """Apply a Linear or a 1x1 Conv2d to (B, L, C) tokens as the per-token linear map it is.

    The conv form exists only so that SD 1.x checkpoints (1x1 conv projections) and SD 2.x
    checkpoints (linear projections) load with their own weight shapes.
    """
    return F.linear(tokens, layer.weight.flatten(1), layer.bias)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017), self or cross.

    Args:
        query_dim: Channels of the queries (and of the output).
        heads: Number of heads.
        head_dim: Channels per head.
        context_dim: Channels of the keys/values source; None for self-attention.
        bias: Whether the q/k/v projections have biases (the output projection always does).
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        *,
        bias: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=bias)
        # A list so that the parameter names are `to_out.0.*`, as in every SD checkpoint.
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Attend from (B, L, query_dim) tokens to `context` (B, S, context_dim), or to `x`."""
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        # (B, L, heads * d) -> (B, heads, L, d): views, no copies.
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, d)
        return self.to_out[0](out.transpose(1, 2).flatten(2))  # (B, L, query_dim)


class SelfAttention2D(Attention):
    """Single-head spatial self-attention with GroupNorm and a residual: the VAE mid-block.

    Args:
        channels: Channels of the feature map (one head of this width).
        groups: GroupNorm groups.
        eps: GroupNorm epsilon.
    """

    def __init__(self, channels: int, *, groups: int = 32, eps: float = 1e-6) -> None:
        super().__init__(channels, 1, channels, bias=True)
        self.group_norm = GroupNorm(groups, channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, C, H, W) to (B, C, H, W)."""
        height, width = x.shape[-2:]
        h = super().forward(to_tokens(self.group_norm(x)))  # (B, H*W, C)
        # Input first: the sum takes the input's layout (NCHW unless the model is channels_last),
        # not the attention output's NHWC strides, which would make every later residual add and
        # upsampling of the decoder strided on a GPU.
        return x + to_feature_map(h, height, width)


# Without autograd, a feed-forward whose hidden activations (the GEGLU projection's output)
# would have `CHUNK_MIN_ELEMENTS` elements or more runs on equal chunks of tokens of at most
# `CHUNK_ELEMENTS` hidden elements each. The UNet's peak memory was the feed-forward at the
# highest resolution: SD 1.5 at 512 px, batch 2, has 8192 tokens of 2560 hidden channels.
CHUNK_MIN_ELEMENTS = 1 << 24
CHUNK_ELEMENTS = 1 << 23


def ff_chunk_rows(rows: int, hidden: int) -> int:
    """Tokens per feed-forward chunk, for `rows` tokens of `hidden` hidden channels each."""
    if rows * hidden < CHUNK_MIN_ELEMENTS:
        return rows
    chunks = -(-rows * hidden // CHUNK_ELEMENTS)
    return -(-rows // chunks)


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020): `a * gelu(b)` with `[a, b] = proj(x)`.

    Args:
        dim_in: Input channels.
        dim_out: Output channels (the projection has twice as many).
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        """Map (..., dim_in) to (..., dim_out)."""
        h, gate = self.proj(x).chunk(2, dim=-1)
        if torch.is_grad_enabled():
            return h * F.gelu(gate)
        return h.mul_(F.gelu(gate))  # no backward: the product takes the projection's memory


class FeedForward(nn.Module):
    """GEGLU feed-forward network of the SD transformer: dim -> 4 dim (gated) -> dim.

    Args:
        dim: Input and output channels.
        mult: Hidden width as a multiple of `dim`.
        dropout: Dropout probability after the gate.
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        # Index 1 is the dropout slot; keeping it makes the output layer `net.2` as in checkpoints.
        self.net = nn.Sequential(
            GEGLU(dim, mult * dim), nn.Dropout(dropout), nn.Linear(mult * dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map (..., dim) to (..., dim)."""
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention, GEGLU feed-forward.

    Args:
        dim: Token channels.
        heads: Attention heads.
        head_dim: Channels per head.
        context_dim: Channels of the cross-attention context (text embeddings).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """Map (B, L, dim) tokens, attending to (B, S, context_dim), to (B, L, dim)."""
        x = x + self.attn1(self.norm1(x))
        if torch.is_grad_enabled():
            x = x + self.attn2(self.norm2(x), context)
            return x + self.ff(self.norm3(x))
        # No backward: `x` is now this block's own tensor, so the other two residuals add into
        # it, and the feed-forward, which acts token by token, runs by chunks of tokens when its
        # hidden activations are large (`ff_chunk_rows`).
        x = x.contiguous()  # a no-op unless the block's input was strided
        x += self.attn2(self.norm2(x), context)
        tokens = x.view(-1, x.shape[-1])
        for chunk in tokens.split(ff_chunk_rows(len(tokens), self.ff.net[0].proj.out_features)):
            chunk += self.ff(self.norm3(chunk))
        return x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on a context (Rombach et al. 2022).

    GroupNorm, projection in, `depth` transformer blocks, projection out, residual. The
    projections are 1x1 convs in SD 1.x and Linear layers in SD 2.x (`linear_projection`);
    both act per token. Equivalent to diffusers' `Transformer2DModel` for continuous inputs.

    Args:
        channels: Channels of the feature map.
        heads: Attention heads; `channels` must be divisible by it.
        context_dim: Channels of the cross-attention context.
        depth: Number of transformer blocks.
        groups: GroupNorm groups.
        linear_projection: Use Linear instead of 1x1 Conv2d projections.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        context_dim: int,
        *,
        depth: int = 1,
        groups: int = 32,
        linear_projection: bool = False,
    ) -> None:
        super().__init__()
        head_dim = channels // heads
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        if linear_projection:
            self.proj_in = nn.Linear(channels, channels)
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, 1)
            self.proj_out = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, head_dim, context_dim) for _ in range(depth)
        )

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """Map (B, C, H, W), attending to (B, S, context_dim), to (B, C, H, W)."""
        height, width = x.shape[-2:]
        h = project(to_tokens(self.norm(x)), self.proj_in)  # (B, H*W, C)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = project(h, self.proj_out)
        return x + to_feature_map(h, height, width)
