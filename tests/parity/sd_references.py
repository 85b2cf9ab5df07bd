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
