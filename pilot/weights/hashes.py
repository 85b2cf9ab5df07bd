"""Content hashes of weight files as A1111 writes them into image metadata.

Image sites (civitai) and front ends link the models named in a PNG's A1111 `parameters` text by
these hashes, so they must be computed exactly as A1111 does (`modules/hashes.py`,
`extensions-builtin/Lora/network.py`, `modules/textual_inversion/textual_inversion.py`):

- textual inversion (`TI hashes`): SHA-256 of the whole file;
- LoRA (`Lora hashes`): the kohya-ss safetensors hash that sd-scripts stores as the metadata
  `sshs_model_hash` (A1111 takes that value when present), else SHA-256 of the bytes after the
  safetensors header, i.e. of the tensor data alone (A1111's `addnet_hash_safetensors`: editing
  the metadata does not change it); SHA-256 of the whole file for a LoRA that is not safetensors.

- checkpoint (`Model hash`) and VAE (`VAE hash`) of a single file: SHA-256 of the whole file,
  of which A1111 shows the first `SHORT_MODEL_HASH` (10) hex digits (civitai's "AutoV2"). A
  diffusers folder has none (A1111 hashes only single files), so `checkpoint_hash` gives None.

The LoRA and TI entries show the first `SHORT_HASH` (12) hex digits.

Hashing a 2-7 GB checkpoint takes seconds, so each SHA-256 is cached as A1111 caches them, in a
small JSON file (`hash_cache_path`: `$PILOT_HASH_CACHE`, else `$XDG_CACHE_HOME/pilot/hashes.json`,
else `~/.cache/pilot/hashes.json`) keyed by the file's resolved path and holding its size and
modification time: a file changed in place is hashed again, and the entries of deleted files
are dropped whenever the cache is written. The cache is written atomically; one
that is unreadable or corrupt is ignored and rewritten, and one that cannot be written is
skipped (the hash is then computed each time): it is never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CACHE_ENV",
    "SHORT_HASH",
    "SHORT_MODEL_HASH",
    "cached_sha256",
    "checkpoint_hash",
    "embedding_hash",
    "file_sha256",
    "hash_cache_path",
    "lora_hash",
    "safetensors_data_sha256",
]

SHORT_HASH = 12  # hex digits of A1111's `Lora hashes` and `TI hashes` entries
SHORT_MODEL_HASH = 10  # hex digits of A1111's `Model hash` and `VAE hash` ("AutoV2")
CACHE_ENV = "PILOT_HASH_CACHE"  # the cache file, in place of the default (module docstring)
_BLOCK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
        return cached_sha256(path)
    if metadata is None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:  # the header only
            metadata = f.metadata() or {}
    stored = metadata.get("sshs_model_hash")
    return stored if stored else cached_sha256(path, data_only=True)


def embedding_hash(path: str | os.PathLike) -> str:
    """The hash A1111 gives a textual inversion file (of a diffusers concept folder: its
    `learned_embeds.*`), as 64 hex digits."""
    from pilot.weights.embeddings import _embedding_file

    return cached_sha256(_embedding_file(Path(path)))


def checkpoint_hash(
    path: str | os.PathLike, on_miss: Callable[[Path, int], None] | None = None
) -> str | None:
    """A1111's hash of a checkpoint or VAE file (`Model hash` / `VAE hash` show its first
    `SHORT_MODEL_HASH` digits): the whole file's SHA-256, as 64 hex digits; None for a folder
    (a diffusers model, which A1111 does not hash). `on_miss(path, size)` is called before a
    file the cache does not hold is read (seconds for a multi-GB checkpoint)."""
    return None if Path(path).is_dir() else cached_sha256(path, on_miss=on_miss)


def hash_cache_path() -> Path:
    """The hash cache file (module docstring), from the environment at call time."""
    if chosen := os.environ.get(CACHE_ENV):
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "pilot" / "hashes.json"


def cached_sha256(
    path: str | os.PathLike,
    *,
    data_only: bool = False,
    on_miss: Callable[[Path, int], None] | None = None,
) -> str:
    """`file_sha256(path)` (`safetensors_data_sha256` if `data_only`), from the cache while the
    file keeps its size and modification time, else computed and cached (module docstring);
    `on_miss(resolved path, size in bytes)` is called before computing."""
    path = Path(path).resolve()
    kind = "safetensors_data_sha256" if data_only else "sha256"
    compute: Callable[[Path], str] = safetensors_data_sha256 if data_only else file_sha256
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    entry = _read_cache().get(kind, {}).get(str(path))
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()):
        digest = entry.get("sha256")
        if isinstance(digest, str) and _SHA256.fullmatch(digest):
            return digest
    if on_miss is not None:
        on_miss(path, stat.st_size)
    digest = compute(path)
    _write_cache(kind, str(path), {**stamp, "sha256": digest})
    return digest


def _read_cache() -> dict[str, dict]:
    """The cache's `{kind: {resolved path: entry}}`; {} for a missing, unreadable or corrupt
    file, and each kind that is not a JSON object left out."""
    try:
        cache = json.loads(hash_cache_path().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(cache, dict):
        return {}
    return {k: v for k, v in cache.items() if isinstance(v, dict)}


def _write_cache(kind: str, key: str, entry: dict) -> None:
    """Add `entry` to the cache file, read again just before (another process may have added
    entries meanwhile), less the entries of files that no longer exist, written atomically;
    skipped where it cannot be written."""
    from pilot.imageio import atomic_output, remove_stale_temps

    path = hash_cache_path()
    cache = {
        name: {file: e for file, e in entries.items() if os.path.exists(file)}
        for name, entries in _read_cache().items()
    }
    cache.setdefault(kind, {})[key] = entry
    try:
        # the temporary files of cache writes a kill cut (one another process writes now goes
        # too: its rename fails, and that process only misses caching its entry)
        remove_stale_temps([path])
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
    except OSError:  # a read-only or missing home: hash again next time
        pass


def _sha256_rest(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(_BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()
