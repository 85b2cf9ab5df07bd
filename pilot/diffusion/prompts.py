"""Prompt text to CLIP embeddings: A1111 emphasis syntax and prompts longer than 77 tokens.

Emphasis (AUTOMATIC1111's stable-diffusion-webui syntax, which prompts shared online use):
`(word)` multiplies the attention weight of its tokens by 1.1, `[word]` divides it by 1.1,
`(word:1.3)` sets a factor of 1.3; brackets nest and multiply; `\\(`, `\\)`, `\\[`, `\\]` are
literal brackets; an unclosed bracket applies to the end of the prompt; the word `BREAK` ends
the current 75-token chunk.

Long prompts are cut into chunks of 75 tokens, each encoded alone as `[BOS, 75 ids, EOS]` padded
to 77, and the embeddings are concatenated along the sequence: (B, 77 * chunks, D). Cross
attention takes any sequence length, so the UNet sees the whole prompt.

Weighting, as A1111 does it: each token's embedding is multiplied by its weight, then the chunk
is rescaled so its mean equals the unweighted mean (unless that mean is about zero). Quirk:
A1111 takes that mean over the whole batch; we take it per prompt so a prompt's embedding does
not depend on its batch (identical for a batch of one). A prompt of at most 75 tokens without
emphasis encodes exactly as diffusers' `StableDiffusionPipeline` does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

CHUNK_TOKENS = 75  # ids per 77-token window, between BOS and EOS
ROUND_FACTOR = 1.1  # "(word)"
SQUARE_FACTOR = 1 / 1.1  # "[word]"
BREAK = "BREAK"

_PIECES = re.compile(
    r"""
    \\[()\[\]\\]              # escaped bracket or backslash
    | \(                      # open round
    | \[                      # open square
    | :\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)  # ":1.3)" closes a round bracket with a weight
    | \)                      # close round
    | \]                      # close square
    | \bBREAK\b               # chunk break
    | [^\\()\[\]:B]+          # plain text
    | [:\\B]                  # a lone colon, backslash or B that starts no other piece
    """,
    re.VERBOSE,
)


class PromptTokenizer(Protocol):
    """What prompt chunking needs of a tokenizer (`pilot.models.tokenizer.CLIPTokenizer` has it).

    Attributes:
        bos_token_id, eos_token_id, pad_token_id: Ids that open, close and pad a 77-token window.
    """

    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without BOS / EOS and without truncation."""


@dataclass(frozen=True)
class WeightedText:
    """One run of prompt text with its attention weight; `text is None` marks a BREAK."""

    text: str | None
    weight: float = 1.0


def parse_emphasis(prompt: str) -> list[WeightedText]:
    """Split a prompt into runs of text with A1111 emphasis weights.

    Returns:
        Runs in prompt order, adjacent runs of equal weight merged, BREAKs as `text=None`.
        An empty prompt gives `[WeightedText("", 1.0)]`.
    """
    runs: list[list] = []  # [text, weight] pairs, mutable while brackets close
    round_open: list[int] = []  # index into runs where each open bracket starts
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _PIECES.finditer(prompt):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            runs.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(runs))
        elif piece == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            scale_from(round_open.pop(), ROUND_FACTOR)
        elif piece == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_FACTOR)
        elif piece == BREAK:
            runs.append([None, 1.0])
        else:  # text, or a stray closing bracket / ":1.3)" kept as text
            runs.append([piece, 1.0])
    for start in round_open:  # unclosed brackets reach the end of the prompt
        scale_from(start, ROUND_FACTOR)
    for start in square_open:
        scale_from(start, SQUARE_FACTOR)
    return _merge(runs) or [WeightedText("", 1.0)]


def _merge(runs: list[list]) -> list[WeightedText]:
    merged: list[WeightedText] = []
    for text, weight in runs:
        last = merged[-1] if merged else None
        if text is not None and last and last.text is not None and last.weight == weight:
            merged[-1] = WeightedText(last.text + text, weight)
        elif text != "":
            merged.append(WeightedText(text, weight))
    return merged


def tokenize_chunks(
    tokenizer: PromptTokenizer, prompt: str
) -> tuple[list[list[int]], list[list[float]]]:
    """Token ids and weights of a prompt in 77-token windows `[BOS, <= 75 ids, EOS, PAD...]`.

    Args:
        tokenizer: A `pilot.models.tokenizer.CLIPTokenizer` (anything with `encode` and the
            `bos/eos/pad_token_id` attributes).
        prompt: Prompt text with optional emphasis syntax.

    Returns:
        `(ids, weights)`, one list of 77 per chunk; at least one chunk.
    """
    chunks: list[tuple[list[int], list[float]]] = [([], [])]
    for run in parse_emphasis(prompt):
        if run.text is None:
            if chunks[-1][0]:
                chunks.append(([], []))
            continue
        for token in tokenizer.encode(run.text):
            if len(chunks[-1][0]) == CHUNK_TOKENS:
                chunks.append(([], []))
            chunks[-1][0].append(token)
            chunks[-1][1].append(run.weight)
    ids = [_window(tokenizer, c[0]) for c in chunks]
    weights = [[1.0, *c[1], *[1.0] * (CHUNK_TOKENS + 1 - len(c[1]))] for c in chunks]
    return ids, weights


def _window(tokenizer: PromptTokenizer, ids: list[int]) -> list[int]:
    row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    return row + [tokenizer.pad_token_id] * (CHUNK_TOKENS + 2 - len(row))


@torch.no_grad()
def encode_prompts(
    text_encoder: nn.Module,
    tokenizer: PromptTokenizer,
    prompts: Sequence[str],
    *,
    min_chunks: int = 1,
    skip: int = 0,
) -> Tensor:
    """CLIP embeddings of weighted, chunked prompts.

    Args:
        text_encoder: `pilot.models.clip.CLIPTextModel` (or anything `text_encoder(ids, skip=)`).
        tokenizer: The model's CLIP tokenizer.
        prompts: B prompt strings.
        min_chunks: Pad every prompt with empty chunks up to this many (to match the length of
            the negative prompts for classifier-free guidance).
        skip: "Clip skip": final text encoder layers to leave out (see `CLIPTextModel`).

    Returns:
        (B, 77 * chunks, D) embeddings in the text encoder's dtype, on its device; chunks is the
        largest of `min_chunks` and the prompts' own chunk counts.
    """
    tokenized = [tokenize_chunks(tokenizer, p) for p in prompts]
    n = max(min_chunks, *(len(ids) for ids, _ in tokenized))
    empty_ids, empty_weights = tokenize_chunks(tokenizer, "")
    ids = [c[0] + empty_ids * (n - len(c[0])) for c in tokenized]
    weights = [c[1] + empty_weights * (n - len(c[1])) for c in tokenized]
    param = next(text_encoder.parameters())
    ids_t = torch.tensor(ids, device=param.device).flatten(0, 1)  # (B * n, 77)
    z = text_encoder(ids_t, skip=skip)  # (B * n, 77, D)
    w = torch.tensor(weights, device=param.device, dtype=z.dtype).flatten(0, 1)[..., None]
    if (w != 1).any():
        z = _weight(z, w)
    return z.reshape(len(prompts), n * z.shape[1], z.shape[2])


def _weight(z: Tensor, w: Tensor) -> Tensor:
    """A1111 weighting: `z * w`, rescaled to the chunk's unweighted mean.

    A chunk whose mean is near zero (a final layer norm without bias, as in random test models)
    keeps the plain `z * w`: dividing by a vanishing mean would blow it up.
    """
    dims = (1, 2)
    mean = z.float().mean(dim=dims, keepdim=True)
    weighted = z * w
    new_mean = weighted.float().mean(dim=dims, keepdim=True)
    usable = new_mean.abs() > 1e-3 * weighted.float().abs().mean(dim=dims, keepdim=True)
    ratio = torch.where(usable, mean / new_mean, torch.ones_like(mean))
    return weighted * ratio.to(z.dtype)


def count_chunks(tokenizer: PromptTokenizer, prompts: Sequence[str]) -> int:
    """Largest number of 77-token chunks among `prompts`."""
    return max(len(tokenize_chunks(tokenizer, p)[0]) for p in prompts)
