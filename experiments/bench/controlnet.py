"""Sampling-step time with one ControlNet vs without, pilot vs diffusers, in one process.

    python -m experiments.bench.controlnet                    # SD 1.5 shapes, 256x256, CFG
    python -m experiments.bench.controlnet --preset tiny --size 128
    python -m experiments.bench.controlnet --device cuda --dtype fp16 --size 512

One step is one classifier-free-guided denoiser call (batch 2: [uncond, cond]) of one image.
Pilot: `CFGDenoiser(EpsDenoiser(unet))` vs `controlled_cfg(EpsDenoiser(unet), [Control(...)])`.
diffusers: the UNet call of StableDiffusionPipeline's loop vs the ControlNet + UNet calls of
StableDiffusionControlNetPipeline's loop (control image doubled for CFG). Prints each stack's
times, its overhead (with / without) and the max relative error of pilot's controlled step
against diffusers'. Weights are random (zero convolutions too, so the control acts); pilot
memoises the control image's hint features across steps, diffusers recomputes them.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from experiments.bench.common import device_name, format_table, max_rel_error, time_pair_ms
from pilot.diffusion.control import Control, controlled_cfg
from pilot.diffusion.denoisers import EpsDenoiser
from pilot.diffusion.guidance import CFGDenoiser
from pilot.diffusion.schedules import DiscreteSchedule, get_sigmas_karras
from pilot.models.controlnet import CONTROLNET_PRESETS, ControlNet
from pilot.models.unet import UNet

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GUIDANCE = 7.5


def build_models(preset: str, seed: int, device, dtype):
    """Random diffusers UNet + ControlNet, and pilot's models holding the same weights."""
    cfg = CONTROLNET_PRESETS[preset]
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


def steps(unet, net, ref_unet, ref_net, args, device, dtype):
    """The four step functions (pilot / diffusers, without / with control) on shared inputs."""
    cfg, schedule = net.cfg, DiscreteSchedule.scaled_linear()
    g = torch.Generator().manual_seed(args.seed)
    h = args.size // cfg.downscale
    x = torch.randn(1, cfg.unet.in_channels, h, h, generator=g).to(device, dtype)
    cond, uncond = torch.randn(2, 1, 77, cfg.unet.cross_attention_dim, generator=g).to(
        device, dtype
    )
    image = torch.rand(1, 3, args.size, args.size, generator=g).to(device, dtype)
    sigmas = get_sigmas_karras(20, schedule.sigma_min, schedule.sigma_max, device=device)
    sigma = sigmas[5]
    plain = CFGDenoiser(EpsDenoiser(unet, schedule), GUIDANCE)
    controlled = controlled_cfg(
        EpsDenoiser(unet, schedule), [Control(net, image, 0.9)], sigmas, GUIDANCE
    )
    extra = {"context": cond, "uncond_context": uncond}

    t = schedule.sigma_to_t(sigma.reshape(1))
    latent_in = (torch.cat([x, x]) / (sigma**2 + 1) ** 0.5).to(dtype)
    embeds, images = torch.cat([uncond, cond]), torch.cat([image, image])

    def diffusers_step(control: bool) -> torch.Tensor:
        kwargs = {}
        if control:
            down, mid = ref_net(
                latent_in, t, embeds, images, conditioning_scale=0.9, return_dict=False
            )
            kwargs = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        eps = ref_unet(latent_in, t, encoder_hidden_states=embeds, **kwargs).sample
        eps_uncond, eps_cond = eps.chunk(2)
        return x - sigma * (eps_uncond + GUIDANCE * (eps_cond - eps_uncond))

    return (
        lambda: plain(x, sigma, **extra),
        lambda: controlled(x, sigma, **extra),
        lambda: diffusers_step(False),
        lambda: diffusers_step(True),
    )


def main(argv=None) -> None:
    """Parse arguments, time both stacks with and without a ControlNet, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd15", choices=sorted(CONTROLNET_PRESETS))
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent /8)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    models = build_models(args.preset, args.seed, device, dtype)
    ours_off, ours_on, ref_off, ref_on = steps(*models, args, device, dtype)
    with torch.inference_mode():
        err = max_rel_error(ours_on(), ref_on())
        timing = dict(warmup=args.warmup, iters=args.iters)
        ours = time_pair_ms(ours_off, ours_on, device, **timing)
        ref = time_pair_ms(ref_off, ref_on, device, **timing)
    print(
        f"CFG step with / without one ControlNet, preset {args.preset}, {args.size}x{args.size} "
        f"px, {args.dtype}, {device_name(device)}, torch {torch.__version__}"
    )
    rows = [
        [name, f"{off:.1f}", f"{on:.1f}", f"{on / off:.2f}x"]
        for name, (off, on) in (("pilot", ours), ("diffusers", ref))
    ]
    print(format_table(["stack", "no control ms", "1 ControlNet ms", "overhead"], rows))
    print(f"pilot / diffusers with control: {ours[1] / ref[1]:.2f}x; max rel err {err:.1e}")


if __name__ == "__main__":
    main()
