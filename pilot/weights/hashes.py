"""Content hashes of weight files as A1111 writes them into image metadata.

Image sites (civitai) and front ends link the models named in a PNG's A1111 `parameters` text by
these hashes, so they must be computed exactly as A1111 does (`modules/hashes.py`,
`extensions-builtin/Lora/network.py`, `modules/textual_inversion/textual_inversion.py`):

- textual inversion (`TI hashes`): SHA-256 of the whole file;
- LoRA (`Lora hashes`): the kohya-ss safetensors hash that sd-scripts stores as the metadata
  `sshs_model_hash` (A1111 takes that value when present), else SHA-256 of the bytes after the
  safetensors header, i.e. of the tensor data alone (A1111's `addnet_hash_safetensors`: editing
  the metadata does not change it); SHA-256 of the whole file for a LoRA that is not safetensors.

Both entries show the first `SHORT_HASH` (12) hex digits. (The 10-digit "AutoV2" is the
`Model hash` of checkpoints, not these.)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

__all__ = ["SHORT_HASH", "embedding_hash", "file_sha256", "lora_hash", "safetensors_data_sha256"]

SHORT_HASH = 12  # hex digits of A1111's `Lora hashes` and `TI hashes` entries
_BLOCK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a whole file, as 64 hex digits."""
    with open(path, "rb") as f:
        return _sha256_rest(f)


def safetensors_data_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a safetensors file's tensor data, skipping the 8-byte header size and the JSON
    header (kohya-ss' model hash, A1111's `addnet_hash_safetensors`), as 64 hex digits."""
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
        f.seek(8 + header)
        return _sha256_rest(f)


def lora_hash(path: str | os.PathLike, metadata: dict[str, str] | None = None) -> str:
    """The hash A1111 gives a LoRA file (module docstring), as 64 hex digits.

    Args:
        path: the LoRA file.
        metadata: its safetensors metadata, if already read (else read from the file).
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return file_sha256(path)
    if metadata is None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:  # the header only
            metadata = f.metadata() or {}
    stored = metadata.get("sshs_model_hash")
    return stored if stored else safetensors_data_sha256(path)


def embedding_hash(path: str | os.PathLike) -> str:
    """The hash A1111 gives a textual inversion file (of a diffusers concept folder: its
    `learned_embeds.*`), as 64 hex digits."""
    from pilot.weights.embeddings import _embedding_file

    return file_sha256(_embedding_file(Path(path)))


def _sha256_rest(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(_BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()
