"""pilot's generation pipeline ends on the same latents as diffusers' StableDiffusionPipeline.

The same random tiny model (written by diffusers' `save_pretrained`, read by
`pilot.load_pipeline`), the same prompts and negative prompts (tokenized from the real CLIP
vocabulary), the same per-item seeds (initial latents and ancestral noise) and CFG scale: final
latents agree to a max relative error of 1e-4 for DDIM, Euler, Euler ancestral and DPM-Solver++
(2M), with the model's own and Karras sigmas, for eps and v models. Sigmas come from
`scheduler_cases.pilot_sigmas` where diffusers spaces them its own way (see
test_sampler_parity.py for those quirks); the cases here are the ones whose initial latents are
scaled by `sqrt(1 + sigma_max^2)`, the pipeline's convention.
"""

import pytest
import torch
from scheduler_cases import CASES, SD, pilot_sigmas
from sd_references import rel_err, tiny_diffusers_pipeline

import pilot
from pilot.diffusion import DiscreteSchedule, prior_std
from pilot.diffusion.pipeline import Request, SamplingSettings, generate_latents

TOL = 1e-4
STEPS = 8
CFG = 7.5
PROMPTS = ["a red brick corridor, thick blue fog", "hatched walls"]
NEGATIVE = ["blurry", ""]
SEEDS = [5, 6]
SIZE = 32  # pixels; the tiny VAE has f = 2, so 16 x 16 latents
CASE_NAMES = [
    "ddim_sd_config",
    "euler_leading",
    "euler_karras_leading",
    "euler_ancestral_leading",
    "dpmpp_2m",
    "dpmpp_2m_karras",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """Tiny eps and v pipelines saved by diffusers, with transformers' tokenizer."""
    root = tmp_path_factory.mktemp("pipelines")
    pipe = tiny_diffusers_pipeline(root)
    out = {}
    for prediction_type in ("epsilon", "v_prediction"):
        pipe.scheduler = pipe.scheduler.from_config(
            pipe.scheduler.config, prediction_type=prediction_type
        )
        out[prediction_type] = root / prediction_type
        pipe.save_pretrained(out[prediction_type])
    return {"pipe": pipe, **out}


def run_diffusers(pipe, case, prediction_type: str) -> torch.Tensor:
    pipe.scheduler = case.scheduler(**SD, **case.config, prediction_type=prediction_type)
    return pipe(
        prompt=PROMPTS,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        height=SIZE,
        width=SIZE,
        generator=[torch.Generator().manual_seed(s) for s in SEEDS],
        output_type="latent",
    ).images


def run_pilot(folder, case, scheduler) -> torch.Tensor:
    sd = pilot.load_pipeline(folder)
    sigmas = pilot_sigmas(case, scheduler, DiscreteSchedule.scaled_linear(), STEPS)
    settings = SamplingSettings(
        sampler=case.sampler,
        cfg=CFG,
        quantize=case.karras and case.sampler.startswith("dpmpp"),
        **case.sampler_kwargs,
    )
    request = Request(PROMPTS, NEGATIVE, seeds=SEEDS, width=SIZE, height=SIZE)
    x = generate_latents(sd, request, settings, sigmas=sigmas)
    return x / prior_std(sigmas[-1], data_std=1.0)  # to VP: a no-op when sigmas end on 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("case_name", CASE_NAMES)
@torch.no_grad()
def test_pipeline_matches_diffusers(folders, case_name, prediction_type):
    case = CASES[case_name]
    ref = run_diffusers(folders["pipe"], case, prediction_type)
    ours = run_pilot(folders[prediction_type], case, folders["pipe"].scheduler)
    err = rel_err(ours, ref)
    print(f"{case_name} {prediction_type}: max rel error {err:.2e}")
    assert torch.isfinite(ref).all() and ref.abs().max() > 0.1
    assert err <= TOL
