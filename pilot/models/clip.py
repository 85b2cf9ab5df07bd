"""CLIP text encoder (Radford et al. 2021) of Stable Diffusion 1.x and 2.x.

A pre-LayerNorm causal transformer over 77 token embeddings plus learned position embeddings.
SD 1.x uses OpenAI's CLIP ViT-L/14 text tower, SD 2.x OpenCLIP ViT-H/14's. Module names follow
transformers' ``CLIPTextModel`` with the leading ``text_model.`` removed, so its checkpoints (and
the diffusers ``text_encoder/`` folders) load with a prefix rule and no key table.

The tokenizer lives in :mod:`pilot.models.tokenizer` and is re-exported here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pilot.models.tokenizer import CLIPTokenizer

__all__ = ["CLIP_PRESETS", "CLIPTextConfig", "CLIPTextModel", "CLIPTokenizer"]

HiddenAct = Literal["quick_gelu", "gelu"]
_HIDDEN_ACTS = ("quick_gelu", "gelu")
# transformers' pooling quirk: configs written before its PR #24773 carry eos_token_id=2 (the SD
# repos do); for those the pooled token is the one with the largest id, which is EOS in CLIP's
# vocabulary. Newer configs name the real EOS id and the first position holding it is pooled.
_LEGACY_EOS_TOKEN_ID = 2

# transformers' CLIPTextConfig field -> ours, with transformers' defaults for absent keys.
_TRANSFORMERS_KEYS = {
    "vocab_size": ("vocab_size", 49408),
    "hidden_size": ("hidden_size", 512),
    "intermediate_size": ("intermediate_size", 2048),
    "num_hidden_layers": ("num_layers", 12),
    "num_attention_heads": ("num_heads", 8),
    "max_position_embeddings": ("max_position_embeddings", 77),
    "hidden_act": ("hidden_act", "quick_gelu"),
    "layer_norm_eps": ("layer_norm_eps", 1e-5),
    "pad_token_id": ("pad_token_id", 1),
    "bos_token_id": ("bos_token_id", 49406),
    "eos_token_id": ("eos_token_id", 49407),
}


@dataclass(frozen=True)
class CLIPTextConfig:
    """Shape of a CLIP text encoder. Defaults are SD 1.x's OpenAI CLIP ViT-L/14 text tower.

    The token ids are only used for pooling (see :meth:`CLIPTextModel.pool`); the tokenizer owns
    the ids that go into prompts.
    """

    vocab_size: int = 49408  # CLIP BPE: 256 bytes x 2 + 48894 merges + BOS + EOS
    hidden_size: int = 768  # width C
    intermediate_size: int = 3072  # MLP width, 4 C
    num_layers: int = 12  # transformer blocks
    num_heads: int = 12  # attention heads; head size is hidden_size / num_heads = 64
    max_position_embeddings: int = 77  # context length T
    hidden_act: HiddenAct = "quick_gelu"  # OpenAI CLIP: x * sigmoid(1.702 x); OpenCLIP: exact gelu
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1  # as stored in SD's config.json (legacy values, unused by the model)
    bos_token_id: int = 0  # idem
    eos_token_id: int = _LEGACY_EOS_TOKEN_ID  # 2: pool at argmax(ids), else at first eos_token_id

    def __post_init__(self) -> None:
        sizes = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "max_position_embeddings": self.max_position_embeddings,
        }
        bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v <= 0}
        if bad:
            raise ValueError(f"CLIPTextConfig sizes must be positive integers, got {bad}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.hidden_act not in _HIDDEN_ACTS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not one of {_HIDDEN_ACTS}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps} must be positive")

    @classmethod
    def from_transformers(cls, d: dict[str, Any]) -> CLIPTextConfig:
        """Read a transformers ``config.json`` dict: a ``CLIPTextConfig`` or a full ``CLIPConfig``.

        Absent keys take transformers' defaults; keys we do not model (dropout, projection_dim,
        initializer ranges) are ignored.

        Raises:
            ValueError: naming the key, for a value this model cannot reproduce.
        """
        if "text_config" in d:
            d = d["text_config"]
        model_type = d.get("model_type", "clip_text_model")
        if model_type not in ("clip_text_model", "clip"):
            raise ValueError(f"model_type={model_type!r} is not a CLIP text model")
        kwargs = {}
        for key, (field, default) in _TRANSFORMERS_KEYS.items():
            value = d.get(key, default)
            if key.endswith("token_id") and not isinstance(value, int):
                raise ValueError(f"{key}={value!r} must be a single integer")
            kwargs[field] = value
        return cls(**kwargs)

    def to_transformers(self) -> dict[str, Any]:
        """The transformers ``CLIPTextConfig`` keyword arguments of this config."""
        ours = asdict(self)
        return {key: ours[field] for key, (field, _) in _TRANSFORMERS_KEYS.items()}


CLIP_PRESETS: dict[str, CLIPTextConfig] = {
    # SD 1.x: OpenAI CLIP ViT-L/14 text tower (openai/clip-vit-large-patch14).
    "sd15": CLIPTextConfig(),
    # SD 2.x: OpenCLIP ViT-H/14 text tower as diffusers stores it. The original has 24 layers but
    # SD 2 conditions on the penultimate one (ldm's FrozenOpenCLIPEmbedder, layer="penultimate"),
    # followed by the final LayerNorm; diffusers' conversion drops the 24th layer, so skip=0 on
    # these 23 layers is SD 2's conditioning and skip=1 here is "clip skip 2" on top of that.
    "sd21": CLIPTextConfig(
        hidden_size=1024, intermediate_size=4096, num_layers=23, num_heads=16, hidden_act="gelu"
    ),
    # Small model for tests; real CLIP token ids would not fit the vocabulary.
    "tiny": CLIPTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        num_layers=3,
        num_heads=4,
        pad_token_id=999,
        bos_token_id=998,
        eos_token_id=999,
    ),
}


class CLIPTextEmbeddings(nn.Module):
    """Token embeddings plus learned absolute position embeddings."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed ``ids`` (B, T) into (B, T, C); position t gets position embedding t."""
        seq_len = ids.shape[1]
        return self.token_embedding(ids) + self.position_embedding.weight[:seq_len]


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with separate q/k/v projections."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend ``x`` (B, T, C) to itself, each token to itself and earlier ones."""
        q, k, v = (
            proj(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, heads, T, C/heads)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, C/heads)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, T, C)


class CLIPMLP(nn.Module):
    """Two-layer feed-forward block with CLIP's activation."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.hidden_act = cfg.hidden_act
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        h = self.fc1(x)  # (B, T, intermediate_size)
        if self.hidden_act == "quick_gelu":
            h = h * torch.sigmoid(1.702 * h)  # OpenAI CLIP's sigmoid approximation of GELU
        else:
            h = F.gelu(h)  # exact (erf) GELU
        return self.fc2(h)


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    """The stack of transformer blocks (a module of its own for transformers' key names)."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_layers))


class CLIPTextModel(nn.Module):
    """CLIP text transformer (Radford et al. 2021): token ids to per-token hidden states.

    State-dict keys are transformers' ``CLIPTextModel`` keys without ``text_model.``; there is no
    ``position_ids`` buffer. Weights are PyTorch's default init: this model is meant to be loaded.

    Args:
        cfg: Architecture, e.g. ``CLIP_PRESETS["sd15"]``.

    Example:
        >>> model = CLIPTextModel(CLIP_PRESETS["tiny"])
        >>> model(torch.zeros(2, 77, dtype=torch.long)).shape
        torch.Size([2, 77, 32])
    """

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor, *, skip: int = 0) -> torch.Tensor:
        """Encode token ids, optionally stopping ``skip`` layers before the last ("clip skip").

        Args:
            ids: LongTensor (B, T) of token ids, T <= max_position_embeddings (77).
            skip: Number of final layers to leave out. 0 returns transformers'
                ``last_hidden_state``. k returns the hidden state after layer ``num_layers - k``
                (transformers' ``hidden_states[-1 - k]``) passed through ``final_layer_norm``, as
                A1111's "clip skip" k + 1 does (its "clip skip 2" is ``skip=1``). For SD 2, whose
                diffusers weights already stop at the penultimate layer, see ``CLIP_PRESETS``.

        Returns:
            Hidden states (B, T, hidden_size) in the parameters' dtype and device.
        """
        num_layers = len(self.encoder.layers)
        if not 0 <= skip < num_layers:
            raise ValueError(f"skip={skip} must be in [0, num_layers={num_layers})")
        if ids.ndim != 2 or ids.shape[1] > self.cfg.max_position_embeddings:
            raise ValueError(
                f"ids must be (B, T) with T <= {self.cfg.max_position_embeddings}, "
                f"got shape {tuple(ids.shape)}"
            )
        x = self.embeddings(ids)  # (B, T, C)
        for layer in self.encoder.layers[: num_layers - skip]:
            x = layer(x)
        return self.final_layer_norm(x)  # (B, T, C)

    @torch.no_grad()
    def add_token_embeddings(self, first_id: int, vectors: torch.Tensor) -> None:
        """Grow the token table: ids from ``first_id`` embed as ``vectors`` (textual inversion).

        Args:
            first_id: The id of the first vector, at least the table's size (``cfg.vocab_size``,
                updated here); rows between the old size and it are zero.
            vectors: (n, hidden_size) embeddings, converted to the table's dtype and device.
        """
        table = self.embeddings.token_embedding
        old = table.weight
        if first_id < old.shape[0] or vectors.ndim != 2 or vectors.shape[1] != old.shape[1]:
            raise ValueError(
                f"vectors {tuple(vectors.shape)} at id {first_id} do not extend a token table of "
                f"{tuple(old.shape)}"
            )
        gap = old.new_zeros(first_id - old.shape[0], old.shape[1])
        weight = torch.cat([old, gap, vectors.to(old)])  # (vocab_size + gap + n, C)
        table.weight = nn.Parameter(weight, requires_grad=old.requires_grad)
        table.num_embeddings = weight.shape[0]
        self.cfg = replace(self.cfg, vocab_size=weight.shape[0])

    def pool(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Pooled output: the hidden state at each prompt's EOS token, as transformers picks it.

        With the legacy ``eos_token_id == 2`` (SD 1.x/2.x configs) that is the position of the
        largest id (EOS is CLIP's largest); otherwise the first position holding ``eos_token_id``.

        Args:
            hidden: (B, T, C) from :meth:`forward`.
            ids: (B, T) the token ids that produced ``hidden``.

        Returns:
            (B, C) pooled states.
        """
        if self.cfg.eos_token_id == _LEGACY_EOS_TOKEN_ID:
            pos = ids.argmax(dim=-1)  # (B,), first maximum
        else:
            pos = (ids == self.cfg.eos_token_id).int().argmax(dim=-1)  # (B,), first EOS
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos.to(hidden.device)]
