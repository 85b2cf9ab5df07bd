"""diffusers scheduler configurations and the pilot sigmas that reproduce them.

Shared by the sampler parity test (hand-written scheduler loops) and the pipeline parity test
(diffusers' StableDiffusionPipeline). See test_sampler_parity.py for the quirks reproduced.
"""

from dataclasses import dataclass, field

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from pilot.diffusion import DiscreteSchedule, get_sigmas_discrete, get_sigmas_karras

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@dataclass
class Case:
    sampler: str
    scheduler: type
    config: dict = field(default_factory=dict)  # scheduler config on top of SD's betas
    step_kwargs: dict = field(default_factory=dict)  # for scheduler.step
    sampler_kwargs: dict = field(default_factory=dict)
    karras: bool = False


CASES = {
    "ddim": Case("ddim", DDIMScheduler, dict(steps_offset=1, clip_sample=False)),
    "ddim_sd_config": Case(
        "ddim", DDIMScheduler, dict(steps_offset=1, clip_sample=False, set_alpha_to_one=False)
    ),
    "ddim_eta1_sd_config": Case(
        "ddim",
        DDIMScheduler,
        dict(steps_offset=1, clip_sample=False, set_alpha_to_one=False),
        step_kwargs=dict(eta=1.0),
        sampler_kwargs=dict(eta=1.0),
    ),
    "euler_leading": Case(
        "euler", EulerDiscreteScheduler, dict(timestep_spacing="leading", steps_offset=1)
    ),
    "euler_linspace": Case("euler", EulerDiscreteScheduler),
    "euler_trailing": Case("euler", EulerDiscreteScheduler, dict(timestep_spacing="trailing")),
    "euler_karras": Case(
        "euler", EulerDiscreteScheduler, dict(use_karras_sigmas=True), karras=True
    ),
    "euler_karras_leading": Case(
        "euler",
        EulerDiscreteScheduler,
        dict(use_karras_sigmas=True, timestep_spacing="leading", steps_offset=1),
        karras=True,
    ),
    "euler_ancestral_leading": Case(
        "euler_ancestral",
        EulerAncestralDiscreteScheduler,
        dict(timestep_spacing="leading", steps_offset=1),
    ),
    "euler_ancestral_linspace": Case("euler_ancestral", EulerAncestralDiscreteScheduler),
    "dpmpp_2m": Case("dpmpp_2m", DPMSolverMultistepScheduler),
    "dpmpp_2m_leading": Case(
        "dpmpp_2m", DPMSolverMultistepScheduler, dict(timestep_spacing="leading", steps_offset=1)
    ),
    "dpmpp_2m_karras": Case(
        "dpmpp_2m", DPMSolverMultistepScheduler, dict(use_karras_sigmas=True), karras=True
    ),
    "dpmpp_2m_sde_karras": Case(
        "dpmpp_2m_sde",
        DPMSolverMultistepScheduler,
        dict(use_karras_sigmas=True, algorithm_type="sde-dpmsolver++"),
        karras=True,
    ),
}


def pilot_sigmas(case: Case, scheduler, schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """The sigmas of `case` as diffusers' `scheduler` spaces them for `steps` steps."""
    cfg = scheduler.config
    if case.karras:
        if case.scheduler is DPMSolverMultistepScheduler:
            lo, hi = schedule.sigma_min, schedule.sigma_max  # the full trained range
        else:  # the end points of the spaced timesteps
            spaced = get_sigmas_discrete(
                schedule, steps, cfg.timestep_spacing, steps_offset=cfg.steps_offset
            )
            lo, hi = spaced[-2].item(), spaced[0].item()
        return get_sigmas_karras(steps, lo, hi)
    final = "zero"
    if case.scheduler is DDIMScheduler and not cfg.set_alpha_to_one:
        final = "sigma_min"
    return get_sigmas_discrete(
        schedule,
        steps,
        cfg.timestep_spacing,
        steps_offset=cfg.steps_offset,
        final=final,
        dpm_solver_grid=case.scheduler is DPMSolverMultistepScheduler,
    )
