"""The A1111 `parameters` text of `pilot generate`'s PNGs (`a1111_parameters`): prompt, negative
prompt and a settings line, with each --control as A1111's ControlNet extension writes it, and
the LoRAs and textual inversion embeddings written as A1111 writes them so that image sites
(civitai) link the resources:

- each LoRA as `<lora:NAME:SCALE>` at the end of the prompt (where A1111 users write them; NAME
  is the file's stem, as A1111 names LoRAs) and in `Lora hashes: "NAME: HASH, ..."`;
- each embedding that the prompt or negative prompt uses (A1111 lists only those) in
  `TI hashes: "TOKEN: HASH, ..."`.

HASH is the 12-digit short hash A1111 shows (`pilot.weights.hashes`). The checkpoint and the
--vae are linked by `Model hash` / `VAE hash` (A1111's 10 digits, "AutoV2") where they are single
files; a diffusers folder (the packaged `tiny_sd` too, and a cached repo id) has no hash in
A1111, so none is written. Hashes are cached (`pilot.weights.hashes.hash_cache_path`), so a
multi-gigabyte checkpoint is hashed once. pilot's own JSON is not changed: it records the
`--model` / `--vae` / `--lora` / `--embedding` entries themselves.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilot.commands._controlnets import match_controlnets
from pilot.commands._lora import parse_lora

HASH_NOTE_BYTES = 256 << 20  # files from this size get a note before their first hash


@dataclass(frozen=True)
class ExtraNetworks:
    """What A1111 calls extra networks, hashed, and the checkpoint's and VAE's short hashes.

    Attributes:
        loras: `(name, scale, short hash)` per `--lora`, in order.
        embeddings: `(token, short hash)` per embedding the prompts use, in `--embedding` order.
        model_hash: the checkpoint's 10-digit hash; None for a folder (module docstring).
        vae_hash: the --vae file's 10-digit hash; None without one or for a folder.
    """

    loras: tuple[tuple[str, float, str], ...] = ()
    embeddings: tuple[tuple[str, str], ...] = ()
    model_hash: str | None = None
    vae_hash: str | None = None


def read_extra_networks(
    lora_entries: Sequence[str],
    embeddings: Iterable[tuple[str, Path]],
    model: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
) -> ExtraNetworks:
    """Hash the `--lora FILE[:SCALE]` files, the `(token, file)` embeddings (those the prompts
    use: `used_embeddings`), and the `--model` and `--vae` (as given: a file, folder, packaged
    name or cached repo id) where they are single files."""
    from pilot.weights.hashes import SHORT_HASH, embedding_hash, lora_hash

    loras = tuple(
        (Path(path).stem, scale, lora_hash(path)[:SHORT_HASH])
        for path, scale in map(parse_lora, lora_entries)
    )
    used = tuple((token, embedding_hash(path)[:SHORT_HASH]) for token, path in embeddings)
    return ExtraNetworks(loras, used, _short_checkpoint_hash(model), _short_checkpoint_hash(vae))


def _short_checkpoint_hash(model: str | os.PathLike | None) -> str | None:
    """The 10 digits A1111 shows of a checkpoint or VAE file's hash; None for none or a folder."""
    from pilot.weights.hashes import SHORT_MODEL_HASH, checkpoint_hash
    from pilot.weights.hub import resolve

    digest = None if model is None else checkpoint_hash(resolve(model), say_hashing)
    return None if digest is None else digest[:SHORT_MODEL_HASH]


def say_hashing(path: Path, size: int, purpose: str = "for the A1111 text's Model hash") -> None:
    """A `note:` before a large file is hashed (once: the hash is cached), so the wait has a
    reason: `purpose`."""
    if size >= HASH_NOTE_BYTES:
        print(
            f"note: hashing {path.name} ({size / 2**30:.1f} GiB) once {purpose}; it is cached",
            file=sys.stderr,
        )


def used_embeddings(
    tokenizer: Any, texts: Sequence[str], loaded: Iterable[tuple[str, Path]]
) -> list[tuple[str, Path]]:
    """The `(token, file)` of the loaded embeddings whose token is in one of `texts` (as the
    tokenizer finds it: any case, a whole word)."""
    from pilot.models.tokenizer import clean_text

    symbols = {s for text in texts for s in tokenizer.tokenize(text)}
    return [(token, path) for token, path in loaded if clean_text(token) in symbols]


def prompt_with_loras(prompt: str, networks: ExtraNetworks) -> str:
    """`prompt <lora:NAME:SCALE> ...`, as A1111 would have been given it."""
    tags = [f"<lora:{name}:{scale:g}>" for name, scale, _ in networks.loras]
    return " ".join([prompt, *tags]) if tags else prompt


def hash_fields(networks: ExtraNetworks) -> list[str]:
    """The `Lora hashes` and `TI hashes` entries of the settings line (none when empty; a LoRA
    given twice is listed once, as A1111 keys them by name)."""
    fields = []
    for key, items in (
        ("Lora hashes", list(dict.fromkeys((name, h) for name, _, h in networks.loras))),
        ("TI hashes", networks.embeddings),
    ):
        if items:  # A1111 drops ':' and ',' from the names, then quotes the value
            value = ", ".join(f"{_bare(name)}: {h}" for name, h in items)
            fields.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    return fields


def _bare(name: str) -> str:
    return name.replace(":", "").replace(",", "")


# pilot's sampler and schedule names -> A1111's labels (A1111 1.9+: `Schedule type` on its own).
A1111_SAMPLER_LABELS = {"euler_ancestral": "Euler a", "euler": "Euler", "heun": "Heun",
                        "dpmpp_2m": "DPM++ 2M", "dpmpp_sde": "DPM++ SDE",
                        "dpmpp_2m_sde": "DPM++ 2M SDE", "ddim": "DDIM", "lcm": "LCM"}  # fmt: skip
A1111_SCHEDULE_LABELS = {"linspace": "Uniform", "karras": "Karras", "exponential": "Exponential"}


def a1111_sampler_fields(sampler: str, schedule: str) -> list[str]:
    """`Sampler` and `Schedule type` as A1111 names them (`DPM++ 2M`, `Karras`), which image
    sites read; pilot's own names where A1111 has none, and for DDIM off `leading` (A1111's
    DDIM always steps as pilot's `leading`, so its label would read back as that).
    `pilot generate --from` reads both back (`_a1111_text.a1111_sampler`)."""
    if sampler == "ddim" and schedule != "leading":
        return [f"Sampler: {sampler}", f"Schedule type: {schedule}"]
    label = A1111_SAMPLER_LABELS.get(sampler, sampler)
    return [f"Sampler: {label}", f"Schedule type: {A1111_SCHEDULE_LABELS.get(schedule, schedule)}"]


def a1111_parameters(params: dict, seed: int, networks: ExtraNetworks | None = None) -> str:
    """The `parameters` text A1111 writes (prompt, negative prompt, then a settings line), with
    the LoRAs and used embeddings of `networks` as A1111 writes them (module docstring)."""
    networks = networks or ExtraNetworks()
    line = [
        f"Steps: {params['steps']}",
        *a1111_sampler_fields(params["sampler"], params["schedule"]),
        f"CFG scale: {params['cfg']}",
        f"Seed: {seed}",
        f"Size: {params['width']}x{params['height']}",
        *([f"Model hash: {networks.model_hash}"] if networks.model_hash else []),
        f"Model: {_model_name(params['model'])}",  # A1111's: the file name, no suffix
    ]
    if "strength" in params:
        line.append(f"Denoising strength: {params['strength']}")
    if params["clip_skip"]:
        line.append(f"Clip skip: {params['clip_skip'] + 1}")
    if networks.vae_hash:
        line.append(f"VAE hash: {networks.vae_hash}")
    if "vae" in params:
        line.append(f"VAE: {Path(params['vae']).name}")
    line += hash_fields(networks)
    line += a1111_controlnets(params)
    text = prompt_with_loras(params["prompt"], networks)
    if params["negative_prompt"]:
        text += f"\nNegative prompt: {params['negative_prompt']}"
    return text + "\n" + ", ".join(line)


def a1111_controlnets(params: dict) -> list[str]:
    """The `ControlNet N: "Module: ..., Model: ..., Weight: ..."` entries A1111's ControlNet
    extension writes, one per --control (Module: pilot's KIND[+invert]; Resize Mode: Just
    Resize, as pilot stretches the picture)."""
    from pilot.control.spec import parse_control_arg

    texts = params.get("control", [])
    specs = [parse_control_arg(text) for text in texts]
    paths = match_controlnets([s.kind for s in specs], params.get("controlnet", []))
    entries = []
    for i, (spec, path) in enumerate(zip(specs, paths, strict=True)):
        fields = {
            "Module": spec.kind + ("+invert" if spec.invert else ""),
            "Model": _model_name(path),
            "Weight": f"{spec.scale:g}",
            "Resize Mode": "Just Resize",
            "Guidance Start": f"{spec.start:g}",
            "Guidance End": f"{spec.end:g}",
        }
        if params.get("guess_mode"):
            fields["Guess Mode"] = "True"
        text = ", ".join(f"{k}: {v}" for k, v in fields.items()).replace('"', "'")
        entries.append(f'ControlNet {i}: "{text}"')
    return entries


def _model_name(path: str) -> str:
    """A checkpoint's or ControlNet's name as A1111 shows it: the file or folder name, without
    a weights suffix (`control_v11f1p_sd15_depth.pth` -> `control_v11f1p_sd15_depth`)."""
    name = Path(path).name
    for suffix in (".safetensors", ".pth", ".ckpt", ".bin", ".pt"):
        name = name.removesuffix(suffix)
    return name
