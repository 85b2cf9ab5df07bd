"""`pilot generate --from IMAGE.png`: the settings a PNG's parameters hold (`_png_params`) where
the command line gives none; every option given wins.

- A PNG `pilot generate` made is made again exactly: pilot's JSON records the model, the LoRA,
  VAE, embedding and ControlNet files and the control images by path.
- An A1111 PNG (or one whose JSON an image site dropped) names its model, LoRAs, embeddings and
  VAE without their files: `--model` is required (pilot's packaged `tiny_sd` aside), each
  `<lora:NAME:SCALE>` of its prompt needs a `--lora FILE` whose stem is NAME (it takes the tag's
  scale unless it gives its own), and `note:` lines say which embeddings and VAE it used.
- An img2img PNG needs `--init` (the init image is not in the PNG; an inpainted one `--mask` too).
- A `Model hash` that is not the given `--model`'s (or, where either has no hash, another model
  name) is a `note:`: parameters are often reused on another model.
- What pilot cannot honour (Hires fix, ADetailer, a sampler pilot lacks...) is listed in one
  `note:` line, and left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pilot.commands._png_params import PngSettings, read_png_settings


def add_from_argument(p: argparse.ArgumentParser) -> None:
    """Add `--from IMAGE.png` to `pilot generate`'s parser."""
    p.add_argument("--from", dest="from_png", type=Path, default=None, metavar="IMAGE.png",
                   help="take the settings from a PNG's parameters (pilot's or A1111's); "
                   "options given win")  # fmt: skip


def apply_png_settings(args: argparse.Namespace) -> None:
    """With `--from`, fill the options not given from the PNG's settings (module docstring) and
    print what is left out as `note:` lines; without, check --model and --prompt are given.

    Raises:
        ValueError, FileNotFoundError: naming the PNG (unreadable, no parameters, img2img
            without --init, a LoRA without its file...) or the missing option.
    """
    if args.from_png is None:
        for name in ("model", "prompt"):
            if getattr(args, name) is None:
                raise ValueError(
                    f"--{name} is required (or --from IMAGE.png to take it from a PNG)"
                )
        return
    png, settings = args.from_png, read_png_settings(args.from_png)
    given = given_options(args)
    for name, value in settings.values.items():
        if name not in given:
            setattr(args, name, value)
    notes = _take_model(args, png, settings, given)
    _take_init(args, png, settings, given)
    notes += _take_loras(args, png, settings, given)
    if settings.embeddings and "embedding" not in given:
        notes.append(f"{png} uses the textual inversion embeddings {', '.join(settings.embeddings)}"
                     " (TI hashes): pass --embedding FILE for each, or their words are read as "
                     "plain text")  # fmt: skip
    if settings.vae and "vae" not in given:
        notes.append(f"{png} was made with the VAE {settings.vae}: pass --vae FILE to use it (the "
                     "model's own VAE is used)")  # fmt: skip
    if args.prompt is None:
        args.prompt = ""
    ignored = settings.ignored + _drop_eta(args, given)
    if ignored:
        notes.insert(0, f"{png}: ignored, pilot cannot honour them: {', '.join(_grouped(ignored))}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def given_options(args: argparse.Namespace) -> set[str]:
    """The names of the options the command line gave (not their defaults): its `args.argv`
    (`pilot.cli.main`) parsed again with every default None, as a given option is never None;
    without `args.argv`, those that differ from the defaults."""
    from pilot.commands.generate import register

    root = argparse.ArgumentParser(add_help=False)
    register(sub := root.add_subparsers(dest="command"))
    parser = sub.choices["generate"]
    if getattr(args, "argv", None) is None:
        return {k for k, v in vars(args).items() if v != parser.get_default(k)}
    parser.set_defaults(**dict.fromkeys(vars(args)))
    again = root.parse_args(args.argv)
    return {k for k, v in vars(again).items() if v is not None} - {"command"}


def _take_init(args: argparse.Namespace, png: Path, settings: PngSettings, given: set[str]) -> None:
    """The img2img strength where --init is given; a ValueError where it is not (the init image
    is not in the PNG), or where the recorded mask is not given."""
    if not settings.img2img:
        return
    if args.init is None:
        made = f"from {settings.init}, " if settings.init else ""
        raise ValueError(
            f"{png} was made by img2img ({made}denoising strength {settings.strength:g}) and the "
            "init image is not in the PNG: pass --init IMAGE"
        )
    if "strength" not in given:
        args.strength = settings.strength
    if settings.mask is not None and args.mask is None:
        raise ValueError(
            f"{png} was inpainted (mask {settings.mask}) and the mask is not in the PNG: pass "
            "--mask IMAGE"
        )


def _take_loras(
    args: argparse.Namespace, png: Path, settings: PngSettings, given: set[str]
) -> list[str]:
    """--lora of the PNG's LoRAs: pilot's recorded files, or for A1111's `<lora:NAME:SCALE>`
    tags the given --lora files (by stem), each taking its tag's scale unless it gives one."""
    from pilot.commands._lora import parse_lora

    if "lora" not in given:
        if settings.loras:
            tags = " ".join(f"<lora:{name}:{scale:g}>" for name, scale in settings.loras)
            raise ValueError(
                f"{png}: its prompt uses {tags}, and a PNG names LoRAs, not their files: pass "
                "--lora FILE for each (it takes the tag's scale)"
            )
        for entry in args.lora:  # pilot's JSON: recorded files
            if not Path(parse_lora(entry)[0]).expanduser().exists():
                raise ValueError(f"{png} records --lora {entry}, which is not here: pass --lora")
        return []
    recorded = map(parse_lora, settings.values.get("lora", []))  # pilot's JSON: FILE:SCALE
    scales = {Path(path).stem: scale for path, scale in recorded} | dict(settings.loras)
    chosen, names = [], set()
    for entry in args.lora:
        path, scale = parse_lora(entry)
        stem = Path(path).stem
        names.add(stem)
        chosen.append(f"{path}:{scales[stem]!r}" if path == entry and stem in scales else entry)
    args.lora = chosen
    return [f"{png}: its LoRA {name} (scale {scale:g}) is left out: no --lora {name}.* given"
            for name, scale in scales.items() if name not in names]  # fmt: skip


def _take_model(
    args: argparse.Namespace, png: Path, settings: PngSettings, given: set[str]
) -> list[str]:
    """The model: pilot's recorded one (it must be here), A1111's packaged `tiny_sd`, else
    --model; a note where the given one is not the PNG's (by hash, else by name)."""
    from pilot.commands._a1111 import _model_name, _short_checkpoint_hash
    from pilot.weights.hub import PACKAGED, resolve
    from pilot.weights.io import WeightsError

    if "model" in given:
        recorded = settings.values.get("model")
        name = settings.model or (recorded and _model_name(recorded))
        if not name or args.model == recorded:
            return []
        try:
            ours = _short_checkpoint_hash(args.model)
        except (WeightsError, OSError):  # the loader names it
            return []
        theirs = settings.model_hash
        same_kind = ours and theirs and len(ours) == len(theirs)  # A1111 < 1.0: 8-digit hashes
        if (ours == theirs) if same_kind else (name == _model_name(args.model)):
            return []
        made = f"{name} (hash {theirs})" if theirs else name
        have = f"hash {ours}" if ours else "no A1111 hash (a folder)"
        return [f"{png} was made with the model {made}; --model {args.model} has {have}: the "
                "settings are used on another model"]  # fmt: skip
    if settings.source == "pilot" and args.model is not None:
        try:
            resolve(args.model)
        except WeightsError as e:
            raise ValueError(f"{png} records --model {args.model}, which is not here ({e}): "
                             "pass --model") from e  # fmt: skip
        return []
    if settings.model in PACKAGED:
        args.model = settings.model
        return []
    made = f" {settings.model}" if settings.model else ""
    made += f" (hash {settings.model_hash})" if settings.model_hash else ""
    raise ValueError(f"--model is required: {png} names its model{made}, not its file")


def _drop_eta(args: argparse.Namespace, given: set[str]) -> list[str]:
    """The PNG's eta left out (as ignored) where the sampler takes none."""
    from pilot.diffusion.samplers import get_sampler, takes

    if args.eta is None or "eta" in given or takes(get_sampler(args.sampler), "eta"):
        return []
    eta, args.eta = args.eta, None
    return [f"Eta {eta:g} (sampler {args.sampler} takes none)"]


def _grouped(ignored: list[str]) -> list[str]:
    """Ignored keys, a family of them (Hires fix, ADetailer) as one entry."""
    families = {"Hires": "Hires fix", "ADetailer": "ADetailer"}
    out: list[str] = []
    for key in ignored:
        family = families.get(key.split(" ", 1)[0], key)
        if family not in out:
            out.append(family)
    return out
