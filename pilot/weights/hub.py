"""Resolve what a user passes as a model: a local file or folder, a packaged model's name, or a
Hugging Face repo id.

Packaged names (`PACKAGED`) are the self-trained tiny SD shipped in `pilot/assets/tiny_sd`:
`tiny_sd` (the pipeline) and `tiny_sd_depth` (its depth ControlNet), so every command runs
with no weights of your own (`pilot generate --model tiny_sd`). A file or folder of that name in
the working directory wins.

Repo ids resolve through the local Hugging Face hub cache only (offline first: pilot never
downloads). The cache folder follows huggingface_hub's environment variables, read at call time:
`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pilot.weights.io import WeightsError
from pilot.weights.save import folder_or_previous

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
PACKAGED_ROOT = Path(__file__).resolve().parents[1] / "assets" / "tiny_sd"
PACKAGED = {"tiny_sd": "pipeline", "tiny_sd_depth": "controlnet_depth"}  # name -> folder


def hub_cache_dir() -> Path:
    """The huggingface_hub cache folder the current environment points at."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def looks_like_repo_id(name: str) -> bool:
    """Whether `name` has the `org/name` form of a Hugging Face repo id."""
    return bool(_REPO_ID.match(name)) and ".." not in name


def resolve(path_or_repo: str | os.PathLike, *, revision: str = "main") -> Path:
    """A local path for a model given as a path or a cached Hugging Face repo id.

    Args:
        path_or_repo: an existing file or folder, a `PACKAGED` name, or `org/name` of a repo
            in the local hub cache. A folder that an interrupted export left missing resolves,
            with a warning, to the previous version it left hidden (`save.folder_or_previous`).
        revision: branch, tag or commit of the cached repo.

    Returns:
        The file or folder (for a repo id, its snapshot folder in the cache).

    Raises:
        WeightsError: the path does not exist, or the repo is not in the local cache (the message
            names the cache folder searched and how to download the repo elsewhere).
    """
    path = Path(path_or_repo).expanduser()
    if path.exists():
        return path
    if (previous := folder_or_previous(path)) != path:
        return previous
    name = os.fspath(path_or_repo)
    if name in PACKAGED:
        packaged = PACKAGED_ROOT / PACKAGED[name]
        if not packaged.is_dir():
            raise WeightsError(f"{name}: this install has no packaged tiny SD ({packaged})")
        return packaged
    if not looks_like_repo_id(name):
        packaged = ", ".join(PACKAGED)
        raise WeightsError(f"{name}: no such file or folder (packaged models: {packaged})")
    return _from_cache(name, revision)


def _from_cache(repo_id: str, revision: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache, local_files_only=True
        )
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise WeightsError(
            f"{repo_id}: no such local path, and the Hugging Face repo {repo_id!r} "
            f"(revision {revision!r}) is not in the local hub cache {cache} "
            f"(set by HF_HUB_CACHE / HF_HOME). pilot never downloads; on a machine with internet "
            f"run `huggingface-cli download {repo_id}` (or `hf download {repo_id}`) and copy the "
            f"cache folder here, or pass a local path."
        ) from e
    return Path(folder)
