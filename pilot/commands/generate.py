"""`pilot generate`: txt2img, img2img and inpainting from the command line.

Each image is written as a PNG whose text chunk holds the generation parameters, both in the
A1111 `parameters` format that image-sharing sites and front ends read and as pilot's own JSON
(`pilot` key) from which the same image can be made again.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pilot.commands import _vae_embeddings as vae_embeddings
from pilot.commands._a1111 import (
    ExtraNetworks,
    a1111_parameters,
    read_extra_networks,
    used_embeddings,
)
from pilot.commands._controlnets import fit_channels as fit_channels
from pilot.commands._controlnets import load_controls
from pilot.commands._controlnets import match_controlnets as match_controlnets
from pilot.commands._from_png import add_from_argument, apply_png_settings
from pilot.commands._lora import add_lora_argument, apply_loras, lora_settings, read_loras
from pilot.commands._speed_args import VAE_UPCASTS as VAE_UPCASTS
from pilot.commands._speed_args import add_speed_arguments, speed_settings

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no torch
    import torch
    from torch import Tensor

    from pilot.diffusion.pipeline import Request, SamplingSettings
    from pilot.models.preview import PreviewDecoder
    from pilot.weights.loaders import StableDiffusion

DTYPES = ("float32", "float16", "bfloat16")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `pilot generate` to the subparsers `sub`."""
    p = sub.add_parser(
        "generate",
        help="txt2img / img2img / inpainting with a Stable Diffusion model",
        description="Generate images; with --init, img2img; with --init and --mask, inpainting.",
    )
    p.add_argument("--model", help="diffusers folder, .safetensors/.ckpt, repo id (required "
                   "unless --from gives it)")  # fmt: skip
    p.add_argument("--prompt", help="prompt; A1111 emphasis like (fog:1.3) works (required "
                   "unless --from gives it)")  # fmt: skip
    add_from_argument(p)
    add_lora_argument(p)
    p.add_argument("--negative-prompt", default="", help="what to steer away from")
    p.add_argument("--sampler", default="dpmpp_2m", help="sampler name (default dpmpp_2m)")
    p.add_argument("--schedule", default="karras", help="sigma schedule name (default karras)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--cfg", type=float, default=7.5, help="guidance scale (default 7.5)")
    p.add_argument("--rescale", type=float, default=0.0, help="guidance rescale in [0, 1]")
    p.add_argument("--eta", type=float, default=None, help="noise of ddim, ancestral, SDE samplers")
    p.add_argument("--clip-skip", type=int, default=0,
                   help="final text encoder layers to skip (A1111's clip skip - 1)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the first image (then +1 each); -1 draws one (as A1111), "
                        "printed and kept in the PNGs and file names")  # fmt: skip
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--width", type=int, default=None,
                   help="pixels, a multiple of the model's VAE factor (8 in SD); default the "
                   "init's, else the model's own size (512 in SD 1.x, 64 in tiny_sd)")  # fmt: skip
    p.add_argument("--height", type=int, default=None,
                   help="pixels, a multiple of the model's VAE factor (8 in SD); default the "
                   "init's, else the model's own size")  # fmt: skip
    p.add_argument("--init", type=Path, default=None, help="init image for img2img")
    p.add_argument("--strength", type=float, default=None,
                   help="img2img strength in [0, 1] (default 0.75; needs --init)")  # fmt: skip
    p.add_argument("--mask", type=Path, default=None, help="inpainting mask, white = repaint")
    p.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="KIND[+invert]:IMAGE[:SCALE[:START:END]]",
        help="ControlNet input (repeatable); KIND: canny, softedge, lineart, depth (near = "
        "white; or a float depth .exr/.npy/.tif, near = small, e.g. Blender's Z pass), normal, "
        "hatch (from a depth as depth reads it), image (as it is); +invert takes 1 - the "
        "picture first (depth, hatch, image: a near-black depth, a black-on-white sketch; of a "
        "float depth file: it holds inverse depth); "
        "SCALE default 1 (0 = off), START:END the fraction of steps it acts on (default 0:1); "
        "the picture is stretched to the output size (`pilot control` previews it)",
    )
    p.add_argument(
        "--controlnet",
        action="append",
        default=[],
        metavar="[KIND=]PATH",
        help="ControlNet weights (repeatable): one for all controls, one per control in order, "
        "or KIND=PATH per kind",
    )
    p.add_argument("--guess-mode", action="store_true", help="ControlNet guess mode")
    p.add_argument("--vae-tile", type=int, default=None,
                   help="VAE tile size in pixels, a multiple of the VAE factor (8 in "
                   "SD)")  # fmt: skip
    p.add_argument("--preview-decoder", type=Path, default=None, metavar="FOLDER",
                   help="decode with this preview decoder instead of the VAE (fast drafts; "
                   "`pilot train preview_decoder`)")  # fmt: skip
    p.add_argument("--device", default=None, help="torch device (default cuda if present)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default fp16 on GPU, else fp32")
    p.add_argument("--prediction-type", default=None, help="override: epsilon or v_prediction")
    vae_embeddings.add_arguments(p)
    add_speed_arguments(p)
    p.add_argument("--out", type=Path, default=Path("outputs"), help="output folder")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=cmd_generate, argv=None)  # argv: `pilot.cli.main`'s, for --from


def cmd_generate(args: argparse.Namespace) -> int:
    """Load the model, generate `--batch` images, write PNGs, report."""
    import torch
    from tqdm import tqdm

    import pilot
    from pilot.commands import default_dtype, resolve_device
    from pilot.diffusion.pipeline import Request, SamplingSettings, generate
    from pilot.diffusion.speed import optimize

    apply_png_settings(args)  # --from IMAGE.png: its settings where no option is given
    settings = SamplingSettings(  # checks names before the (slow) model load
        sampler=args.sampler,
        schedule=args.schedule,
        steps=args.steps,
        cfg=args.cfg,
        rescale=args.rescale,
        eta=args.eta,
        clip_skip=args.clip_skip,
    )
    check_arguments(args)
    if args.seed == -1:
        args.seed = secrets.randbelow(2**32)
        print(f"--seed -1: drew seed {args.seed}", file=sys.stderr)
    device = resolve_device(args.device)
    speed = speed_settings(args, device)
    init, mask = load_inputs(args)
    vae_embeddings.check_paths(args)
    dtype = getattr(torch, args.dtype or default_dtype(device))
    start = time.perf_counter()
    preview = load_preview(args.preview_decoder, device, dtype)  # small: before the model
    loras = read_loras(args.lora)
    sd = pilot.load_pipeline(
        args.model, dtype=dtype, device=device, prediction_type=args.prediction_type, vae=args.vae
    )
    apply_loras(sd, loras)
    tokens = vae_embeddings.load_embeddings(sd, args)
    texts = [args.prompt, args.negative_prompt]
    used = used_embeddings(sd.tokenizer, texts, zip(tokens, args.embedding, strict=True))
    networks = read_extra_networks(args.lora, used, args.model, args.vae)  # for the A1111 text
    check_preview(preview, sd, args.preview_decoder)
    check_vae_tile(args.vae_tile, sd)
    side = native_size(sd)
    height = init.shape[-2] if init is not None else args.height or side  # checked: not 0
    width = init.shape[-1] if init is not None else args.width or side
    check_image_size(args, sd, width, height)
    check_clip_skip(args, sd)
    sd = optimize(sd, speed)
    seeds = [args.seed + i for i in range(args.batch)]
    controls = load_controls(args, (height, width), device, dtype, speed, sd)
    request = Request(
        prompts=[args.prompt] * args.batch,
        negative_prompts=[args.negative_prompt] * args.batch,
        seeds=seeds,
        width=width,
        height=height,
        init_images=None if init is None else init.expand(args.batch, -1, -1, -1),
        strength=1.0 if init is None else 0.75 if args.strength is None else args.strength,
        mask=mask,
    )
    steps = settings.steps if init is None else int(settings.steps * request.strength)
    with tqdm(total=steps, desc="sampling", unit="step") as bar:
        images = generate(
            sd,
            request,
            settings,
            controls=controls,
            vae_tile=args.vae_tile,
            vae_upcast=args.vae_upcast,
            vae_batch=args.vae_batch,
            decoder=preview,
            callback=lambda _: bar.update(),
        )
    paths = write_outputs(args, request, settings, images, seeds, networks)
    summary = {
        "images": [str(p) for p in paths],
        "seconds": round(time.perf_counter() - start, 3),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "speed": speed.describe(),
        "parameters": parameters(args, request, settings),
    }
    print(json.dumps(summary, indent=2) if args.json else "\n".join(summary["images"]))
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError for arguments that are wrong on their own, before anything loads: --batch,
    --width / --height and --vae-tile (positive; their multiple of the model's VAE factor is
    checked once the model is loaded, `check_image_size`, `check_vae_tile`) and --strength (in
    [0, 1], with --init)."""
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.vae_tile is not None and args.vae_tile <= 0:
        raise ValueError(f"--vae-tile: VAE tile {args.vae_tile}: must be positive")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be a positive number of pixels, got {value}")
    if args.strength is None:
        return
    if args.init is None:
        raise ValueError(
            f"--strength {args.strength} needs --init (img2img); txt2img runs the whole schedule"
        )
    if not 0.0 <= args.strength <= 1.0:
        raise ValueError(f"--strength must be in [0, 1], got {args.strength}")


def load_inputs(args: argparse.Namespace) -> tuple[Tensor | None, Tensor | None]:
    """Init image (1, 3, H, W) and mask (1, 1, H, W) in [0, 1], resized to --width/--height."""
    import torch.nn.functional as F

    from pilot.imageio import read_image

    if args.mask is not None and args.init is None:
        raise ValueError("--mask needs --init (the image to inpaint)")
    if args.init is None:
        return None, None
    init = read_image(args.init)[None]  # (1, 3, H, W)
    size = (args.height or init.shape[-2], args.width or init.shape[-1])
    if size != tuple(init.shape[-2:]):
        init = F.interpolate(init, size=size, mode="bicubic", antialias=True).clamp(0, 1)
    if args.mask is None:
        return init, None
    mask = read_image(args.mask, mode="L")[None]  # (1, 1, h, w)
    if mask.shape[-2:] != init.shape[-2:] and args.width is None and args.height is None:
        raise ValueError(
            f"{args.mask}: mask is {mask.shape[-1]}x{mask.shape[-2]} but {args.init} is "
            f"{init.shape[-1]}x{init.shape[-2]} (WxH); pass --width/--height to resize both"
        )
    return init, F.interpolate(mask, size=size, mode="bilinear", antialias=True)


def check_image_size(
    args: argparse.Namespace, sd: StableDiffusion, width: int, height: int
) -> None:
    """ValueError unless the output size is a multiple of the loaded model's VAE factor,
    naming --width / --height, or the --init image whose size it is."""
    from pilot.diffusion.pipeline import check_vae_multiple

    sizes, hint = {}, ""
    for name, value in (("width", width), ("height", height)):
        if getattr(args, name) is None and args.init is not None:
            sizes[f"--init {args.init} {name}"] = value
            hint = "; pass --width/--height to resize it"
        else:
            sizes[f"--{name}"] = value
    check_vae_multiple(sizes, sd.vae.cfg.downsample_factor, args.model, hint)


def native_size(sd: StableDiffusion) -> int:
    """The image side the model was trained at: the UNet's latent `sample_size` times the VAE
    factor (diffusers' default; 512 for SD 1.x), or 512 where the UNet config has none."""
    latent = sd.unet.cfg.sample_size
    return 512 if latent is None else latent * sd.vae.cfg.downsample_factor


def check_clip_skip(args: argparse.Namespace, sd: StableDiffusion) -> None:
    """ValueError unless --clip-skip leaves the loaded text encoder at least one layer."""
    layers = sd.text_encoder.cfg.num_layers
    if args.clip_skip >= layers:
        raise ValueError(
            f"--clip-skip {args.clip_skip}: the text encoder of {args.model} has {layers} "
            f"layers; skip at most {layers - 1}"
        )


def check_vae_tile(tile: int | None, sd: StableDiffusion) -> None:
    """ValueError unless `--vae-tile` is a multiple of the loaded model's VAE factor."""
    from pilot.diffusion.pipeline import check_tile

    try:
        check_tile(tile, sd.vae.cfg.downsample_factor)
    except ValueError as e:
        raise ValueError(f"--vae-tile: {e}") from e


def load_preview(
    folder: Path | None, device: torch.device, dtype: torch.dtype
) -> PreviewDecoder | None:
    """The `--preview-decoder` folder's `PreviewDecoder` (None without one)."""
    from pilot.models.preview import load_preview_decoder

    return None if folder is None else load_preview_decoder(folder, device=device, dtype=dtype)


def check_preview(preview: PreviewDecoder | None, sd: StableDiffusion, folder: Path | None) -> None:
    """Refuse a preview decoder that does not decode the model's latents, and warn about one
    distilled from another VAE, naming its folder."""
    from pilot.models.preview import check_fits, check_teacher

    if preview is not None:
        check_fits(preview, sd.vae.cfg, folder)
        check_teacher(preview, sd.vae, folder)


def parameters(args: argparse.Namespace, request: Request, settings: SamplingSettings) -> dict:
    """Everything needed to make the images again."""
    params = {
        "model": str(args.model),
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        **{k: v for k, v in vars(settings).items() if k != "guidance"},  # always CFG here
        **({"lora": lora_settings(args.lora)} if args.lora else {}),
        "seed": args.seed,
        "batch": args.batch,
        "width": request.width,
        "height": request.height,
    }
    if args.init is not None:
        params.update(init=str(args.init), strength=request.strength)
    if args.mask is not None:
        params["mask"] = str(args.mask)
    if args.control:
        params.update(control=args.control, controlnet=args.controlnet, guess_mode=args.guess_mode)
    if args.vae_upcast != "auto":  # can change float16 pixels; the default is left out
        params["vae_upcast"] = args.vae_upcast
    for name in ("prediction_type", "vae_tile", "dtype"):  # change pixels; None: the default
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.preview_decoder is not None:
        params["preview_decoder"] = str(args.preview_decoder)
    params.update(vae_embeddings.recorded(args))
    return params


def write_outputs(
    args: argparse.Namespace,
    request: Request,
    settings: SamplingSettings,
    images: Tensor,
    seeds: Sequence[int],
    networks: ExtraNetworks | None = None,
) -> list[Path]:
    """One PNG per image, `NNNNN-SEED.png`, numbered after what the folder already holds;
    `networks`: the LoRAs and embeddings for the A1111 text."""
    from pilot.animation.video import remove_temp_files
    from pilot.imageio import write_png

    # temporary files that killed runs' writes left (`.NNNNN-SEED.XXXXXXXX.png`); the folder is
    # not locked (runs may share it), so one written in the last minute may be another's
    remove_temp_files(args.out, "[0-9][0-9][0-9][0-9][0-9]*-*", min_age=60)
    params = parameters(args, request, settings)
    taken = [int(m.group(1)) for p in args.out.glob("*.png") if (m := _NAME.match(p.name))]
    first = max(taken, default=-1) + 1
    paths = []
    for i, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        text = {
            "parameters": a1111_parameters(params, seed, networks),
            "pilot": json.dumps({**params, "seed": seed, "batch": 1}),
        }
        paths.append(write_png(args.out / f"{first + i:05d}-{seed}.png", image, text))
    return paths


_NAME = re.compile(r"^(\d{5,})-")
