"""Textual inversion embeddings (Gal et al. 2022): new prompt words with learned CLIP vectors.

`load_embedding` reads the file formats artists share and adds the vectors as new tokens to a
loaded pipeline's tokenizer and text encoder, as diffusers' `load_textual_inversion` does:

- A1111 `.pt` (also `.bin`): a dict with `string_to_param: {"*": (n, C)}` (and `name`, `step`),
  read with `torch.load(weights_only=True)`; older files (the original textual_inversion repo,
  early A1111) pickle `string_to_param` as an `nn.ParameterDict`, which that load is allowed to
  rebuild (`pilot.weights.io.SAFE_GLOBALS`; any other class is refused, naming it);
- A1111 `.safetensors`: one tensor `emb_params` (n, C);
- diffusers `learned_embeds.safetensors` / `.bin`: `{token: (C,)}` (or (n, C)), alone or in a
  concept folder.

The token is the file's stem, as in A1111 (`EasyNegative.safetensors` -> `easynegative`; prompts
are lower-cased, so any case matches), except for diffusers' fixed name `learned_embeds`, whose
token is the one stored in the file (`<cat-toy>`). An embedding of n vectors adds `token`,
`token_1`, ... `token_{n-1}` (diffusers' names); writing `token` in a prompt puts all n there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pilot.weights.io import (
    PICKLE_SUFFIXES,
    WeightsError,
    _listing,
    _read_pickle,
    read_checkpoint,
)
from pilot.weights.kinds import describe_state_dict, guess_kind

__all__ = ["default_token", "load_embedding", "read_embedding"]

DIFFUSERS_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")
_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x"}  # CLIP width -> the models with that text encoder


def read_embedding(path: str | os.PathLike) -> tuple[Tensor, str | None]:
    """The vectors of a textual inversion file, and the token it stores (diffusers format).

    Args:
        path: an A1111 `.pt` / `.safetensors`, a diffusers `learned_embeds.*`, or the folder
            holding one.

    Returns:
        `(vectors, token)`: float vectors (n, C) on the CPU, and the diffusers format's token
        (None for the A1111 formats, which store none that is used).

    Raises:
        WeightsError: naming the file, for an unreadable file or one that holds no embedding
            (an SDXL embedding, with its `clip_l` / `clip_g` pair, included).
    """
    path = _embedding_file(Path(path))
    if path.suffix.lower() in PICKLE_SUFFIXES:
        data = _read_pickle(path, "cpu")
    else:
        data = read_checkpoint(path).tensors
    vectors, token = _find_vectors(data, path)
    if vectors.ndim == 1:
        vectors = vectors[None]  # (C,) -> (1, C)
    if vectors.ndim != 2 or 0 in vectors.shape or not vectors.is_floating_point():
        raise WeightsError(
            f"{path}: the embedding is a {vectors.dtype} tensor of shape {tuple(vectors.shape)}, "
            "not (vectors, width)"
        )
    return vectors.detach().float(), token


def _embedding_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    for name in DIFFUSERS_NAMES:
        if (path / name).is_file():
            return path / name
    raise WeightsError(f"{path}: a folder without {' or '.join(DIFFUSERS_NAMES)}")


def _find_vectors(data: Any, path: Path) -> tuple[Tensor, str | None]:
    """(vectors, stored token) in what a file holds; WeightsError if it is no embedding."""
    if isinstance(data, Tensor):  # a bare tensor, as some trainers save
        return data, None
    if not isinstance(data, Mapping):
        raise WeightsError(f"{path}: holds a {type(data).__name__}, not an embedding")
    params = data.get("string_to_param")
    if isinstance(params, nn.ParameterDict):  # older files; read without calling its methods
        params = vars(params).get("_parameters")
    if isinstance(params, Mapping) and params:  # A1111 .pt: {"*": (n, C)}
        vectors = params.get("*", next(iter(params.values())))
        if isinstance(vectors, Tensor):
            return vectors, None
    if isinstance(data.get("emb_params"), Tensor):  # A1111 .safetensors
        return data["emb_params"], None
    if "clip_l" in data or "clip_g" in data:
        raise WeightsError(f"{path}: an SDXL embedding (clip_l / clip_g); pilot loads SD 1.x / 2.x")
    tensors = {k: v for k, v in data.items() if isinstance(v, Tensor)}
    if len(data) == 1 and len(tensors) == 1:  # diffusers: {token: (C,)}
        token, vectors = next(iter(tensors.items()))
        return vectors, str(token)
    looks = describe_state_dict(tensors) if tensors and guess_kind(tensors) else ""
    looks = looks or f"keys: {_listing([str(k) for k in data], 5)}"
    raise WeightsError(
        f"{path}: not a textual inversion embedding (no string_to_param, emb_params or single "
        f"token; {looks})"
    )


def load_embedding(sd: Any, path: str | os.PathLike, token: str | None = None) -> str:
    """Add a textual inversion embedding to a loaded pipeline, in place (module docstring).

    Args:
        sd: a `StableDiffusion` (its tokenizer and text encoder are extended).
        path: the embedding file (or a diffusers concept folder).
        token: the prompt word; default the file's stem (diffusers' `learned_embeds`: the token
            it stores).

    Returns:
        The token, as prompts use it (the n vectors of a multi-vector embedding come with it).

    Raises:
        WeightsError: naming the file: unreadable, not an embedding, vectors of another width
            than the text encoder's (an SD 2.x embedding on SD 1.x), or a token already in
            the vocabulary (a word, or an embedding loaded before).
    """
    path = Path(path)
    vectors, stored = read_embedding(path)
    token = default_token(path, stored) if token is None else token
    width = sd.text_encoder.cfg.hidden_size
    if vectors.shape[1] != width:
        got, want = vectors.shape[1], width
        raise WeightsError(
            f"{path}: a {got}-d embedding{_family(got)}, but this model's text encoder takes "
            f"{want}-d vectors{_family(want)}"
        )
    first_id = max(max(sd.tokenizer.vocab.values()) + 1, sd.text_encoder.cfg.vocab_size)
    try:
        sd.tokenizer.add_token(token, len(vectors), first_id=first_id)
    except ValueError as e:
        raise WeightsError(
            f"{path}: {e}: pass another token (load_embedding(..., token=) or rename the file: "
            "its name is the token)"
        ) from e
    sd.text_encoder.add_token_embeddings(first_id, vectors)
    return token


def default_token(path: str | os.PathLike, stored: str | None) -> str:
    """The prompt word `load_embedding` gives an embedding file by default: its stem, or for
    diffusers' `learned_embeds.*` (and their folder) the token `stored` in it."""
    path = Path(path)
    if stored is not None and _embedding_file(path).stem == "learned_embeds":
        return stored
    return path.stem


def _family(width: int) -> str:
    return f" ({_FAMILIES[width]})" if width in _FAMILIES else ""
