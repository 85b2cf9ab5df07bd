"""Sampling-step time with one ControlNet vs without, pilot vs diffusers, in one process.

    python -m experiments.bench.controlnet                    # SD 1.5 shapes, 256x256, CFG
    python -m experiments.bench.controlnet --preset tiny --size 128
    python -m experiments.bench.controlnet --device cuda --dtype fp16 --size 512
    python -m experiments.bench.controlnet --dtype fp16 --size 512 --compile --cuda-graphs

One step is one classifier-free-guided denoiser call (batch 2: [uncond, cond]) of one image.
Pilot: `CFGDenoiser(EpsDenoiser(unet))` vs `controlled_cfg(EpsDenoiser(unet), [Control(...)])`.
diffusers: the UNet call of StableDiffusionPipeline's loop vs the ControlNet + UNet calls of
StableDiffusionControlNetPipeline's loop (control image doubled for CFG). Stacks: diffusers
eager, diffusers compiled (`--compile`; channels_last and "reduce-overhead" when pilot gets
them), pilot eager, pilot with the speed-up flags that change the models on the device
(`pilot.diffusion.speed.optimize_model` on the UNet and the ControlNet; on the CPU
`--channels-last` does not). Prints each stack's times (every stack's steps interleaved in the
same rounds), its overhead (with / without), its controlled step against diffusers eager's, the
controlled step's peak memory above the resident weights and the max relative error of its
controlled step against diffusers' float32 one. Weights are random (zero convolutions too, so
the control acts); pilot memoises the control image's hint features across steps, diffusers
recomputes them.
`--own-process-memory` adds a column: each stack's controlled-step memory measured again in a
fresh process that runs only that stack (`common.own_process_mib`).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from experiments.bench.common import (
    DTYPES,
    add_own_process_arguments,
    add_speed_arguments,
    call_memory_mib,
    check_size,
    check_speed_arguments,
    compile_reference,
    controlnet_config,
    count,
    device_name,
    first_call,
    format_mib,
    format_table,
    graph_pool_bytes,
    held_label,
    mark_step,
    max_rel_error,
    memory_label,
    own_process_choice,
    own_process_mib,
    peak_memory_mib,
    speed_settings,
    time_many_ms,
)
from pilot.diffusion.control import Control, controlled_cfg
from pilot.diffusion.denoisers import EpsDenoiser
from pilot.diffusion.guidance import CFGDenoiser
from pilot.diffusion.schedules import DiscreteSchedule, get_sigmas_karras
from pilot.diffusion.speed import optimize_model
from pilot.models.controlnet import CONTROLNET_PRESETS, ControlNet
from pilot.models.unet import UNet

# Options `python -m experiments.bench` passes on to this benchmark.
SHARED_OPTIONS = ("preset", "size", "dtype", "device", "threads", "speed")
GUIDANCE = 7.5


def build_models(preset: str, seed: int, device, dtype):
    """Random diffusers UNet + ControlNet, and pilot's models holding the same weights."""
    cfg = controlnet_config(preset)  # its hint encoder as coarse as the VAE
    torch.manual_seed(seed)
    ref_unet = UNet2DConditionModel(**cfg.unet.to_diffusers()).eval()
    ref_net = ControlNetModel(**cfg.to_diffusers()).eval()
    with torch.no_grad():  # give the zero convolutions weights, so the control does something
        for p in [
            *ref_net.controlnet_down_blocks.parameters(),
            *ref_net.controlnet_mid_block.parameters(),
        ]:
            p.normal_(0, 0.02)
    unet, net = UNet(cfg.unet).eval(), ControlNet(cfg).eval()
    unet.load_state_dict(ref_unet.state_dict(), strict=True)
    net.load_state_dict(ref_net.state_dict(), strict=True)
    return [m.to(device, dtype) for m in (unet, net, ref_unet, ref_net)]


def draw_inputs(cfg, args, device, dtype) -> dict:
    """Latents, text embeddings, control image and sigmas of one step, shared by every stack."""
    g = torch.Generator().manual_seed(args.seed)
    h = args.size // cfg.downscale
    x = torch.randn(1, cfg.unet.in_channels, h, h, generator=g).to(device, dtype)
    cond, uncond = torch.randn(2, 1, 77, cfg.unet.cross_attention_dim, generator=g)
    image = torch.rand(1, 3, args.size, args.size, generator=g).to(device, dtype)
    schedule = DiscreteSchedule.scaled_linear()
    sigmas = get_sigmas_karras(20, schedule.sigma_min, schedule.sigma_max, device=device)
    cond, uncond = cond.to(device, dtype), uncond.to(device, dtype)
    return dict(x=x, cond=cond, uncond=uncond, image=image, sigmas=sigmas, schedule=schedule)


def pilot_steps(unet, net, inputs: dict) -> tuple:
    """Pilot's step without and with the ControlNet: CFG denoiser calls at sigma_5."""
    schedule, sigmas, x = inputs["schedule"], inputs["sigmas"], inputs["x"]
    plain = CFGDenoiser(EpsDenoiser(unet, schedule), GUIDANCE)
    control = Control(net, inputs["image"], 0.9)
    controlled = controlled_cfg(EpsDenoiser(unet, schedule), [control], sigmas, GUIDANCE)
    extra = {"context": inputs["cond"], "uncond_context": inputs["uncond"]}
    return (
        lambda: plain(x, sigmas[5], **extra),
        lambda: controlled(x, sigmas[5], **extra),
    )


def diffusers_steps(ref_unet, ref_net, inputs: dict, dtype, begin=lambda: None) -> tuple:
    """The same steps as StableDiffusion(ControlNet)Pipeline's loop computes them; `begin()`
    starts each."""
    x, sigma = inputs["x"], inputs["sigmas"][5]
    t = inputs["schedule"].sigma_to_t(sigma.reshape(1))
    latent_in = (torch.cat([x, x]) / (sigma**2 + 1) ** 0.5).to(dtype)
    embeds = torch.cat([inputs["uncond"], inputs["cond"]])
    images = torch.cat([inputs["image"], inputs["image"]])

    def step(control: bool) -> torch.Tensor:
        begin()
        kwargs = {}
        if control:
            down, mid = ref_net(
                latent_in, t, embeds, images, conditioning_scale=0.9, return_dict=False
            )
            kwargs = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        eps = ref_unet(latent_in, t, encoder_hidden_states=embeds, **kwargs).sample
        eps_uncond, eps_cond = eps.chunk(2)
        return x - sigma * (eps_uncond + GUIDANCE * (eps_cond - eps_uncond))

    return lambda: step(False), lambda: step(True)


def stacks(models: list, args, inputs: dict, dtype) -> dict:
    """Stack name -> (step without control, step with control)."""
    unet, net, ref_unet, ref_net = models
    out = {"diffusers eager": diffusers_steps(ref_unet, ref_net, inputs, dtype)}
    if args.compile:
        compiled = [compile_reference(copy.deepcopy(m), args) for m in (ref_unet, ref_net)]
        begin = lambda: mark_step(args)  # noqa: E731
        out["diffusers compile"] = diffusers_steps(*compiled, inputs, dtype, begin)
    out["pilot eager"] = pilot_steps(unet, net, inputs)
    settings = speed_settings(args).for_model(inputs["x"].device)  # what changes the models there
    if settings.describe() != "eager":
        fast = [optimize_model(copy.deepcopy(m), settings) for m in (unet, net)]
        out[f"pilot {settings.describe()}"] = pilot_steps(*fast, inputs)
    return out


def main(argv=None) -> None:
    """Parse arguments, time both stacks with and without a ControlNet, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd15", choices=sorted(CONTROLNET_PRESETS))
    parser.add_argument(
        "--size", type=int, default=256, help="pixels, a multiple of the VAE's factor"
    )
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=count, default=3)
    parser.add_argument("--seed", type=int, default=0)
    add_own_process_arguments(parser, "stack")
    add_speed_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    check_size(parser, args.preset, args.size)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    check_speed_arguments(parser, args, device)
    if args.memory_of is not None:  # no float32 reference: it would run cuBLAS first
        print(json.dumps({"mib": stack_memory(args, device, dtype)}))
        return
    models = build_models(args.preset, args.seed, device, torch.float32)
    with torch.inference_mode():  # the float32 reference of the controlled step
        inputs = draw_inputs(models[1].cfg, args, device, torch.float32)
        expected = diffusers_steps(*models[2:], inputs, torch.float32)[1]()
    models = [m.to(dtype) for m in models]
    inputs = draw_inputs(models[1].cfg, args, device, dtype)
    timing = dict(warmup=args.warmup, iters=args.iters)
    rows, first = [], {}
    steps = stacks(models, args, inputs, dtype)  # copies made outside inference mode
    with torch.inference_mode():
        for name, (off, on) in steps.items():  # first calls: compile / capture
            consume = lambda out: max_rel_error(out, expected)  # noqa: E731
            pool_before = graph_pool_bytes(device)
            err, _, retained = first_call(on, device, consume)
            first[name] = err, retained, (graph_pool_bytes(device) - pool_before) / 2**20
            off()
        # every stack's steps with and without control in the same rounds: drift hits all alike
        ms = time_many_ms([fn for pair in steps.values() for fn in pair], device, **timing)
        times = {name: (ms[2 * i], ms[2 * i + 1]) for i, name in enumerate(steps)}
        for name, (_, on) in steps.items():
            err, retained, pool = first[name]
            memory = format_mib(peak_memory_mib(on, device), retained)
            rows.append([name, err, memory, held_label(retained, pool)])
    print(
        f"CFG step with / without one ControlNet, preset {args.preset}, {args.size}x{args.size} "
        f"px, {args.dtype}, {device_name(device)}, torch {torch.__version__}"
    )
    reference = times["diffusers eager"][1]
    table = [
        [
            name,
            f"{times[name][0]:.1f}",
            f"{times[name][1]:.1f}",
            f"{times[name][1] / times[name][0]:.2f}x",
            f"{times[name][1] / reference:.2f}x",
            memory,
            held,
            f"{err:.1e}",
        ]
        for name, err, memory, held in rows
    ]
    header = ["stack", "no control ms", "1 ControlNet ms", "overhead", "/ diffusers eager"]
    header += [memory_label(device) + ", controlled", "held after 1st call MiB (graph pool)"]
    header += ["max rel err vs fp32"]
    if args.own_process_memory:
        header += ["controlled peak MiB, own process"]
        for row in table:
            mib = own_process_mib("experiments.bench.controlnet", argv, row[0], args.dtype)
            row.append(f"{mib:.0f}")
    print(format_table(header, table))


def stack_memory(args, device, dtype) -> float:
    """Controlled-step memory of the stack named `args.memory_of`, the only one this process
    runs."""
    models = [m.to(dtype) for m in build_models(args.preset, args.seed, device, torch.float32)]
    inputs = draw_inputs(models[1].cfg, args, device, dtype)
    _, controlled = own_process_choice(stacks(models, args, inputs, dtype), args.memory_of, "stack")
    with torch.inference_mode():
        return call_memory_mib(controlled, device)


if __name__ == "__main__":
    main()
