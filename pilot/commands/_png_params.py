"""Generation parameters read back from a PNG, in `pilot generate`'s terms (`read_png_settings`),
for `pilot generate --from` and `pilot inspect`.

A PNG made by `pilot generate` holds pilot's JSON (`pilot` text chunk): the settings exactly as
given, paths included, so the image can be made again pixel for pixel. Any other (A1111's own, a
front end's, one whose JSON an image site dropped) holds A1111's `parameters` text, as A1111
writes it and shows it as "PNG info" (`parse_a1111`):

    a castle on a hill <lora:ink:0.8>
    Negative prompt: blurry, lowres
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768,
    Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: "ink: ..."

(the settings on one line: the last line, when it has at least three `Key: value` fields; a
value with a comma, colon or line break is JSON-quoted). Only names are in it, not files: the
LoRAs of `<lora:NAME:SCALE>`, the embeddings of `TI hashes`, the `VAE` and the `Model` (pilot's
packaged `tiny_sd` aside) are reported by name for the caller to ask for (`PngSettings`).
A1111's sampler names map to pilot's sampler and schedule (`a1111_sampler`); the keys pilot
cannot honour (Hires fix, ADetailer, variation seeds, a sampler pilot lacks...) are listed in
`PngSettings.ignored`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilot.commands._a1111_text import A1111_SAMPLERS as A1111_SAMPLERS
from pilot.commands._a1111_text import A1111_SCHEDULES as A1111_SCHEDULES
from pilot.commands._a1111_text import A1111Text, a1111_sampler, parse_a1111

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Fields that only name things (read where they are used) or say nothing about the pixels.
_QUIET = {"Version", "Template", "Negative Template", "Hashes", "Lora hashes", "VAE hash"}
_EXTRA_NETWORK = re.compile(r"<(lora|lyco|hypernet):([^>:]*)(?::([^>]*))?>")


@dataclass
class PngSettings:
    """What a PNG's parameters say, as `pilot generate` arguments (`read_png_settings`).

    Attributes:
        source: "pilot" (pilot's JSON: exact, files by path) or "a1111" (the A1111 text).
        values: Argument name (`args` attribute) -> value, for each setting the PNG records.
        img2img: Whether the image was made from an init image (not in the PNG).
        strength: Its img2img strength (None for txt2img).
        init: The init image as pilot recorded it (None: unknown or txt2img).
        mask: The inpainting mask as pilot recorded it.
        loras: `(NAME, scale)` of each `<lora:NAME:SCALE>` of an A1111 text: by name only.
        embeddings: Tokens of the embeddings an A1111 text's `TI hashes` lists: by name only.
        vae: The A1111 text's `VAE` name.
        model: The A1111 text's `Model` name (the file name without its suffix).
        model_hash: The A1111 text's `Model hash` (10 digits of the file's SHA-256).
        ignored: What pilot cannot honour, each as `Key` or `Key (why)`.
    """

    source: str
    values: dict[str, Any] = field(default_factory=dict)
    img2img: bool = False
    strength: float | None = None
    init: str | None = None
    mask: str | None = None
    loras: list[tuple[str, float]] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    vae: str | None = None
    model: str | None = None
    model_hash: str | None = None
    ignored: list[str] = field(default_factory=list)


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether `path` names an image (by suffix) or is a PNG (by its signature)."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(8) == PNG_SIGNATURE
    except OSError:
        return False


def read_png_chunks(path: str | os.PathLike) -> tuple[dict[str, str], tuple[int, int]]:
    """The text chunks of the PNG at `path` and its (width, height).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable image, or an image that is not a PNG (the message names it).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ValueError(
                    f"{path}: a {image.format} image, not a PNG: pilot reads generation "
                    "parameters from PNG text chunks only"
                )
            return dict(getattr(image, "text", {})), image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable PNG ({e})") from e


def read_png_settings(path: str | os.PathLike, text: dict[str, str] | None = None) -> PngSettings:
    """The settings of the PNG at `path`: from pilot's JSON where it has one, else from the A1111
    text; the A1111 text's `Model` and `Model hash` either way (module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file: not a readable PNG, no parameters, or a value that is not
            what its key says (a `Steps` that is no number...).
    """
    if text is None:  # else the chunks the caller read (`read_png_chunks`)
        text, _ = read_png_chunks(path)
    if "pilot" not in text and "parameters" not in text:
        raise ValueError(
            f"{path}: holds no generation parameters (no `parameters` or `pilot` text chunk)"
        )
    try:
        a1111 = parse_a1111(text["parameters"]) if "parameters" in text else None
        if "pilot" in text:
            settings = settings_from_pilot(_json_object(text["pilot"]))
        else:
            settings = settings_from_a1111(a1111)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if a1111 is not None:
        settings.model = a1111.fields.get("Model")
        settings.model_hash = a1111.fields.get("Model hash")
    return settings


def _json_object(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"pilot JSON: not JSON ({e})") from e


def settings_from_a1111(text: A1111Text) -> PngSettings:
    """`PngSettings` of an A1111 text (module docstring).

    Raises:
        ValueError: a value that is not what its key says, naming both.
    """
    fields, taken = text.fields, set(_QUIET)
    settings = PngSettings("a1111")
    values = settings.values
    prompt, settings.loras, ignored_tags = _extra_networks(text.prompt)
    values.update(prompt=prompt, negative_prompt=text.negative_prompt)

    def take(key: str, convert: Any = str) -> Any:
        taken.add(key)
        if key not in fields:
            return None
        try:
            return convert(fields[key])
        except ValueError:
            raise ValueError(f"{key}: {fields[key]!r} is not {_KINDS[convert]}") from None

    for key, name, convert in (("Steps", "steps", int), ("CFG scale", "cfg", float),
                               ("Seed", "seed", int)):  # fmt: skip
        if (value := take(key, convert)) is not None:
            values[name] = value
    if (size := take("Size", _size)) is not None:
        values["width"], values["height"] = size
    if (clip_skip := take("Clip skip", int)) is not None:
        values["clip_skip"] = max(clip_skip - 1, 0)  # A1111 counts the last layer as 1
    for key in ("Eta", "Eta DDIM"):
        if (eta := take(key, float)) is not None:
            values["eta"] = eta
    _take_sampler(settings, take("Sampler"), take("Schedule type"))
    strength = take("Denoising strength", float)
    if strength is not None and not any(key.startswith("Hires ") for key in fields):
        settings.img2img, settings.strength = True, strength  # with Hires fix: the upscale's
    settings.vae, settings.model = take("VAE"), take("Model")
    settings.model_hash = take("Model hash")
    settings.embeddings = [name for name, _ in _hash_list(take("TI hashes") or "")]
    for key in fields:
        if key.startswith("ControlNet ") and key not in taken:
            taken.add(key)
            settings.ignored.append(f"{key} (its control image is not in the PNG: pass "
                                    "--control and --controlnet)")  # fmt: skip
    settings.ignored += [key for key in fields if key not in taken] + ignored_tags
    return settings


def _size(text: str) -> tuple[int, int]:
    """`512x768` -> (512, 768)."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
    if match is None:
        raise ValueError(text)
    return int(match.group(1)), int(match.group(2))


_KINDS = {int: "a whole number", float: "a number", str: "text", _size: "WIDTHxHEIGHT"}


def _take_sampler(settings: PngSettings, sampler: str | None, schedule: str | None) -> None:
    """Set pilot's sampler and schedule of A1111's, or list the ones pilot lacks as ignored."""
    if sampler is None:
        return
    name, grid = a1111_sampler(sampler, schedule)
    if name is None:
        settings.ignored.append(f"Sampler: {sampler} (pilot has no such sampler)")
    else:
        settings.values["sampler"] = name
    if grid is not None:
        settings.values["schedule"] = grid
    elif schedule is not None and schedule.strip().lower() != "automatic":
        settings.ignored.append(f"Schedule type: {schedule} (pilot has no such schedule)")


def _extra_networks(prompt: str) -> tuple[str, list[tuple[str, float]], list[str]]:
    """The prompt without A1111's `<lora:...>`, `<lyco:...>`, `<hypernet:...>` tags (A1111 takes
    them out before encoding it), the `(NAME, scale)` of each LoRA and the tags pilot cannot
    honour."""
    loras, ignored = [], []
    for match in _EXTRA_NETWORK.finditer(prompt):
        kind, name, rest = match.groups()
        parts = [] if rest is None else rest.split(":")
        try:
            scale = float(parts[0]) if parts else 1.0
        except ValueError:
            scale = None
        if kind != "lora" or scale is None or not name:
            ignored.append(f"{match.group(0)} (pilot merges LoRAs with one scale: --lora)")
            continue
        loras.append((name, scale))
        if len(parts) > 1:
            ignored.append(f"{match.group(0)} (its scales after the first)")
    return _EXTRA_NETWORK.sub("", prompt).strip(), loras, ignored


def _hash_list(text: str) -> list[tuple[str, str]]:
    """`NAME: HASH, NAME: HASH` (A1111's `Lora hashes`, `TI hashes`) -> [(NAME, HASH), ...]."""
    pairs = [item.rpartition(":") for item in text.split(",") if item.strip()]
    return [(name.strip(), digest.strip()) for name, _, digest in pairs if name.strip()]


# pilot's JSON key -> the type its value has (None allowed where the option's default is None)
_PILOT_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "prompt": (str,), "negative_prompt": (str,), "sampler": (str,),
    "schedule": (str,), "steps": (int,), "cfg": (int, float), "rescale": (int, float),
    "eta": (int, float, type(None)), "clip_skip": (int,), "lora": (list,), "seed": (int,),
    "width": (int,), "height": (int,), "control": (list,), "controlnet": (list,),
    "guess_mode": (bool,), "vae_upcast": (str,), "prediction_type": (str,),
    "vae_tile": (int,), "dtype": (str,), "preview_decoder": (str,), "vae": (str,),
    "embedding": (list,),
}  # fmt: skip
_PILOT_EXTRA = {"strength": (int, float), "init": (str,), "mask": (str,), "batch": (int,),
                "quantize": (bool,)}  # fmt: skip


def settings_from_pilot(params: dict) -> PngSettings:
    """`PngSettings` of pilot's JSON (`pilot generate`'s `parameters`).

    Raises:
        ValueError: not a JSON object, or a value of the wrong type, naming its key.
    """
    if not isinstance(params, dict):
        raise ValueError(f"pilot JSON: expected an object, got {type(params).__name__}")
    settings = PngSettings("pilot")
    for key, value in params.items():
        types = _PILOT_TYPES.get(key) or _PILOT_EXTRA.get(key)
        if types is None:
            settings.ignored.append(f"{key} (not a `pilot generate` option)")
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"pilot JSON: {key}: {value!r} is not {types[0].__name__}")
        if key in _PILOT_TYPES:
            settings.values[key] = value
    if params.get("quantize"):
        settings.ignored.append("quantize (pilot.diffusion.pipeline's, no option of the command)")
    for key in ("preview_decoder",):
        if key in settings.values:
            settings.values[key] = Path(settings.values[key])
    if "embedding" in settings.values:
        settings.values["embedding"] = [Path(p) for p in settings.values["embedding"]]
    if "strength" in params:
        settings.img2img, settings.strength = True, float(params["strength"])
        settings.init = params.get("init")
    settings.mask = params.get("mask")
    return settings
