"""Parity of pilot's samplers + schedules + CFG with diffusers' scheduler loops.

A random tiny diffusers `UNet2DConditionModel` (behind an adapter with pilot's UNet contract
`unet(x, t, context)`) denoises the same per-item-seeded noise with the same random contexts and
CFG scale. diffusers runs its scheduler loop by hand (`set_timesteps`, `scale_model_input`, UNet,
CFG, `step(..., generator=[...])`); pilot runs `SAMPLERS[name]` over sigmas from
`pilot.diffusion.schedules` with `CFGDenoiser(EpsDenoiser | VDenoiser)` and `BatchedNoise` drawing
from the same seeds. Final latents must agree to a max relative error of 1e-4.

diffusers quirks reproduced here (each is commented where it lives in pilot):
- DDIM with SD's `set_alpha_to_one=False` ends on sigma(t=0), not 0, and returns a VP latent:
  pilot uses `final="sigma_min"` and we compare `x / sqrt(1 + sigma_min^2)`.
- Initial latents: diffusers' VP schedulers (DDIM, DPM-Solver) start from unit-variance VP
  noise, and its Euler schedulers scale by `sqrt(1 + sigma_max^2)` with "leading" spacing but by
  `sigma_max` otherwise (`prior_std(..., data_std=1.0)` vs `prior_std(...)`).
- DPM-Solver spaces `n + 1` timesteps and drops the lowest (`dpm_solver_grid=True`), and rounds
  the timesteps of Karras sigmas to integers (`EpsDenoiser(..., quantize=True)`).
- Karras sigmas span the end points of the scheduler's spaced timesteps (Euler) or the full
  trained range (DPM-Solver); with the default "linspace" spacing both are the full range.
"""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
)
from diffusers.utils.torch_utils import randn_tensor
from scheduler_cases import CASES, SD, Case, pilot_sigmas

from pilot.diffusion import (
    SAMPLERS,
    BatchedNoise,
    CFGDenoiser,
    DiscreteSchedule,
    make_denoiser,
    prior_std,
)

TOL = 1e-4
SEEDS = (11, 22)  # two items, each with its own generator
SHAPE = (len(SEEDS), 4, 8, 8)
STEPS = 10
CFG_SCALE = 7.5


pytestmark = pytest.mark.usefixtures("one_thread")


class UNetAdapter(torch.nn.Module):
    """diffusers' UNet behind pilot's contract `unet(x, t, context, *, down_residuals, ...)`."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x, t, context, *, down_residuals=None, mid_residual=None):
        return self.unet(
            x,
            t,
            encoder_hidden_states=context,
            down_block_additional_residuals=down_residuals,
            mid_block_additional_residual=mid_residual,
        ).sample


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    """A tiny UNet with every parameter redrawn (unit-variance layers, nonzero biases/norms)."""
    model = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    ).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
    return model


@pytest.fixture(scope="module")
def contexts() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, len(SEEDS), 8, 32, generator=g)  # (B, S, D) each
    return cond, uncond


def run_diffusers(case: Case, scheduler, unet, cond, uncond) -> torch.Tensor:
    """diffusers' StableDiffusionPipeline denoising loop, written out."""
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    scheduler.set_timesteps(STEPS)
    latents = randn_tensor(SHAPE, generator=generators) * scheduler.init_noise_sigma
    context = torch.cat([uncond, cond])
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        out = unet(model_in, t, encoder_hidden_states=context).sample
        out_uncond, out_cond = out.chunk(2)
        guided = out_uncond + CFG_SCALE * (out_cond - out_uncond)
        latents = scheduler.step(guided, t, latents, generator=generators, **case.step_kwargs)
        latents = latents.prev_sample
    return latents


def run_pilot(case: Case, scheduler, unet, cond, uncond, prediction_type: str) -> torch.Tensor:
    schedule = DiscreteSchedule.scaled_linear()
    sigmas = pilot_sigmas(case, scheduler, schedule, STEPS)
    vp_prior = case.scheduler in (DDIMScheduler, DPMSolverMultistepScheduler) or (
        scheduler.config.timestep_spacing == "leading"
    )
    noise = BatchedNoise(SEEDS, SHAPE)
    x = noise.draw() * prior_std(sigmas[0], data_std=1.0 if vp_prior else None)
    quantize = case.karras and case.scheduler is DPMSolverMultistepScheduler
    denoiser = make_denoiser(UNetAdapter(unet), prediction_type, schedule, quantize=quantize)
    x = SAMPLERS[case.sampler](
        CFGDenoiser(denoiser, CFG_SCALE),
        x,
        sigmas,
        extra_args={"context": cond, "uncond_context": uncond},
        noise=noise,
        **case.sampler_kwargs,
    )
    return x / prior_std(sigmas[-1], data_std=1.0)  # to VP: a no-op when sigmas end on 0


def max_rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("case_name", list(CASES))
@torch.no_grad()
def test_sampler_matches_diffusers(case_name, prediction_type, unet, contexts):
    case = CASES[case_name]
    scheduler = case.scheduler(**SD, **case.config, prediction_type=prediction_type)
    cond, uncond = contexts
    ref = run_diffusers(case, scheduler, unet, cond, uncond)
    ours = run_pilot(case, scheduler, unet, cond, uncond, prediction_type)
    err = max_rel_error(ours, ref)
    print(f"{case_name} {prediction_type}: max rel error {err:.2e}")
    assert ref.abs().max() > 0.1 and torch.isfinite(ref).all()
    assert err <= TOL
