"""Sampling core: schedules (sigmas), denoisers (model wrappers), samplers, guidance wrappers."""

from pilot.diffusion.denoisers import DENOISERS, EpsDenoiser, VDenoiser, make_denoiser
from pilot.diffusion.guidance import CFGDenoiser, InpaintDenoiser
from pilot.diffusion.samplers import SAMPLERS, BatchedNoise, get_sampler
from pilot.diffusion.schedules import (
    SCHEDULES,
    DiscreteSchedule,
    get_sigmas,
    get_sigmas_discrete,
    get_sigmas_exponential,
    get_sigmas_karras,
    prior_std,
)

__all__ = [
    "DENOISERS",
    "SAMPLERS",
    "SCHEDULES",
    "BatchedNoise",
    "CFGDenoiser",
    "DiscreteSchedule",
    "EpsDenoiser",
    "InpaintDenoiser",
    "VDenoiser",
    "get_sampler",
    "get_sigmas",
    "get_sigmas_discrete",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "make_denoiser",
    "prior_std",
]
