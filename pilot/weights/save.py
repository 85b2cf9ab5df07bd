"""Write Stable Diffusion models as a diffusers pipeline folder.

The layout `pilot.load_pipeline`, diffusers' `StableDiffusionPipeline.from_pretrained` and
transformers read: `model_index.json`, `unet/` and `vae/` (`config.json` +
`diffusion_pytorch_model.safetensors`), `text_encoder/` (`config.json` + `model.safetensors`),
`tokenizer/` (`vocab.json`, `merges.txt`, special tokens) and `scheduler/` (the SD training
schedule and the prediction type). Used for the models the project trains itself.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pilot.locks import folder_lock
from pilot.weights.io import save_state_dict

if TYPE_CHECKING:  # annotations only: pilot.models.preview imports this module
    from pilot.models.controlnet import ControlNet
    from pilot.models.preview import PreviewDecoder
    from pilot.models.tokenizer import CLIPTokenizer
    from pilot.models.vae import AutoencoderKL
    from pilot.weights.loaders import StableDiffusion

DIFFUSERS_VERSION = "0.30.0"  # oldest diffusers whose config format we write
SD_SCHEDULER = {  # SD 1.x / 2.x training schedule, in DDIMScheduler's terms
    "_class_name": "DDIMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def save_pipeline(
    sd: StableDiffusion, folder: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write `sd` (a `pilot.StableDiffusion`) as a diffusers pipeline folder, atomically.

    The folder is assembled next to its final place and swapped onto it, so a crash or kill at
    any point leaves either the previous folder or the complete new one, and the next export
    (or load) copes with what it left (see `_write_folder`).

    Raises:
        FileExistsError: `folder` exists and `overwrite` is False.
    """
    return _write_folder(folder, lambda tmp: _write_components(sd, tmp), overwrite=overwrite)


def _write_folder(folder: str | os.PathLike, write, *, overwrite: bool) -> Path:
    """Run `write(tmp)` on a fresh folder beside `folder`, then swap it onto `folder`.

    `folder` is always a plain folder (never a link: diffusers and file tools see nothing
    special). Hidden siblings named after it hold the rest: `.NAME.tmp-XXXXXXXX` is the new
    folder being written, or, after the swap, the previous one being deleted; `.NAME.old-XXXXXXXX`
    is the previous folder between the two renames of the fallback swap. The swap is one atomic
    exchange of the two folders (Linux `renameat2(RENAME_EXCHANGE)`); where the platform or file
    system has none, two renames (folder -> `.NAME.old-*`, new -> folder), and a kill between them
    leaves `folder` missing: `previous_export` finds the old one, loaders read it and the next
    export renames it back first. Every export then deletes the leftovers of earlier interrupted
    exports of the same folder (also the `.NAME.old` that this function used to leave; not the
    `mkdtemp` folders `.NAME.XXXXXXXX` of that code, whose names a user's `.unet.original` or
    `.vae.backup01` would match). One export per folder at a time: each holds the lock
    `.NAME.lock` beside the folder (`pilot.locks.folder_lock`, released when the export ends or
    its process dies), and a second one, in another process, fails at once with
    `pilot.locks.FolderInUseError` (a ValueError) before touching anything.
    """
    folder = Path(folder)
    with folder_lock(folder, beside=True):  # `.NAME.lock` beside: the folder is swapped
        previous = previous_export(folder)
        if previous is not None:
            os.replace(previous, folder)
        if folder.exists() and not overwrite:
            raise FileExistsError(f"{folder}: exists (pass overwrite=True to replace it)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        for leftover in _leftovers(folder):
            _remove(leftover)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        tmp.chmod(0o755)  # mkdtemp makes 0700; model folders are ordinary shared outputs
        try:
            write(tmp)
            if not (folder.exists() or folder.is_symlink()):
                os.replace(tmp, folder)
            elif not _exchange(tmp, folder):
                old = folder.with_name(f".{folder.name}.old-{secrets.token_hex(4)}")
                os.replace(folder, old)
                try:
                    os.replace(tmp, folder)
                except BaseException:
                    os.replace(old, folder)
                    raise
                _remove(old)
        finally:
            _remove(tmp)  # the new folder after a failure, the previous one after an exchange
    return folder


def previous_export(folder: str | os.PathLike) -> Path | None:
    """The previous version of a missing `folder` that an export killed between the renames of
    its fallback swap left hidden beside it (`_write_folder`), or None."""
    folder = Path(folder)
    if folder.exists() or folder.is_symlink() or not folder.parent.is_dir():
        return None
    name = re.escape(folder.name)
    old = re.compile(rf"\.{name}\.old(-[0-9a-f]{{8}})?")
    found = [p for p in folder.parent.iterdir() if old.fullmatch(p.name) and p.is_dir()]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def folder_or_previous(folder: str | os.PathLike) -> Path:
    """`folder`, or, where an interrupted export left it missing, the previous version it left
    hidden (`previous_export`), with a warning."""
    folder = Path(folder)
    previous = previous_export(folder)
    if previous is None:
        return folder
    warnings.warn(
        f"{folder}: missing, an export into it was interrupted; reading the previous version it "
        f"left in {previous} (the next export into {folder} puts it back)",
        stacklevel=3,
    )
    return previous


def _leftovers(folder: Path) -> list[Path]:
    """Hidden siblings of `folder` that earlier interrupted exports of it left (`_write_folder`);
    `.NAME.old` is the name it used to give the previous folder."""
    name = re.escape(folder.name)
    ours = re.compile(rf"\.{name}\.(tmp-[a-z0-9_]{{8}}|old-[0-9a-f]{{8}}|old)")
    return [p for p in folder.parent.iterdir() if ours.fullmatch(p.name)]


def _remove(path: Path) -> None:
    """Delete a folder tree, a file or a link, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.is_symlink() or path.exists():
        path.unlink(missing_ok=True)


_RENAME_EXCHANGE = 2  # linux/fs.h


@functools.cache
def _renameat2():
    """libc's `renameat2` (Linux 3.15+, glibc 2.28+), or None."""
    if sys.platform != "linux":
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        function.argtypes += [ctypes.c_uint]
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_cwd = -100  # AT_FDCWD: relative paths are from the working directory
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # a file system without RENAME_EXCHANGE (NFS, some FUSE) or an old kernel
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def _write_components(sd, folder: Path) -> None:
    diffusers_class = {"_diffusers_version": DIFFUSERS_VERSION}
    _write_model(
        folder / "unet",
        sd.unet,
        {"_class_name": "UNet2DConditionModel", **diffusers_class, **sd.unet.cfg.to_diffusers()},
        "diffusion_pytorch_model",
    )
    _write_model(
        folder / "vae",
        sd.vae,
        {"_class_name": "AutoencoderKL", **diffusers_class, **sd.vae.cfg.to_diffusers()},
        "diffusion_pytorch_model",
    )
    text_config = {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        **sd.text_encoder.cfg.to_transformers(),
    }
    _write_model(folder / "text_encoder", sd.text_encoder, text_config, "model")
    write_tokenizer(sd.tokenizer, folder / "tokenizer")
    scheduler = {**SD_SCHEDULER, "prediction_type": sd.prediction_type}
    _write_json(folder / "scheduler" / "scheduler_config.json", scheduler)
    index = {
        "_class_name": "StableDiffusionPipeline",
        **diffusers_class,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    _write_json(folder / "model_index.json", index)


def save_controlnet(
    controlnet: ControlNet, folder: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write a `pilot.models.controlnet.ControlNet` as a diffusers `ControlNetModel` folder.

    Atomic like `save_pipeline`; `pilot.load_controlnet` and diffusers read it.

    Raises:
        FileExistsError: `folder` exists and `overwrite` is False.
    """
    return _save_diffusers_model(controlnet, "ControlNetModel", folder, overwrite=overwrite)


def save_vae(vae: AutoencoderKL, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a `pilot.models.vae.AutoencoderKL` as a diffusers `AutoencoderKL` folder.

    Atomic like `save_pipeline`; `pilot.load_vae` and diffusers read it (a pipeline's `vae/`).

    Raises:
        FileExistsError: `folder` exists and `overwrite` is False.
    """
    return _save_diffusers_model(vae, "AutoencoderKL", folder, overwrite=overwrite)


def save_preview_decoder(
    decoder: PreviewDecoder, folder: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write a `pilot.models.preview.PreviewDecoder` folder (config.json, with its `teacher_vae`
    when set, + safetensors), atomic; `pilot.models.preview.load_preview_decoder` reads it.

    Raises:
        FileExistsError: `folder` exists and `overwrite` is False.
    """
    from pilot.models.preview import preview_config_dict

    config = preview_config_dict(decoder.cfg, decoder.teacher_vae)
    return _write_folder(
        folder,
        lambda tmp: _write_model(tmp, decoder, config, "diffusion_pytorch_model"),
        overwrite=overwrite,
    )


def _save_diffusers_model(
    model, class_name: str, folder: str | os.PathLike, *, overwrite: bool
) -> Path:
    """One diffusers model folder (config.json + diffusion_pytorch_model.safetensors), atomic."""
    config = {
        "_class_name": class_name,
        "_diffusers_version": DIFFUSERS_VERSION,
        **model.cfg.to_diffusers(),
    }
    return _write_folder(
        folder,
        lambda tmp: _write_model(tmp, model, config, "diffusion_pytorch_model"),
        overwrite=overwrite,
    )


def _write_model(folder: Path, model, config: dict, stem: str) -> None:
    _write_json(folder / "config.json", config)
    save_state_dict(model.state_dict(), folder / f"{stem}.safetensors")


def write_tokenizer(tokenizer: CLIPTokenizer, folder: str | os.PathLike) -> None:
    """A `CLIPTokenizer` as a transformers tokenizer folder (vocab.json, merges.txt, tokens;
    textual inversion tokens in added_tokens.json, as transformers writes them)."""
    folder = Path(folder)
    added = {name: tokenizer.vocab[name] for v in tokenizer.added_tokens.values() for name in v}
    _write_json(folder / "vocab.json", {k: v for k, v in tokenizer.vocab.items() if k not in added})
    if added:
        _write_json(folder / "added_tokens.json", added)
    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.get)
    lines = ["#version: 0.2", *(" ".join(pair) for pair in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    names = {v: k for k, v in tokenizer.vocab.items()}
    special = {
        "bos_token": names[tokenizer.bos_token_id],
        "eos_token": names[tokenizer.eos_token_id],
        "unk_token": names[tokenizer.eos_token_id],
        "pad_token": tokenizer.pad_token,
    }
    _write_json(folder / "special_tokens_map.json", special)
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **special}
    _write_json(folder / "tokenizer_config.json", config)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
