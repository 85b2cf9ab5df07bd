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
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from scheduler_cases import CASES, SD, pilot_sigmas
from sd_references import fill, hf_tokenizer, rel_err
from transformers import CLIPTextConfig, CLIPTextModel

import pilot
from pilot.diffusion import DiscreteSchedule, prior_std
from pilot.diffusion.pipeline import Request, SamplingSettings, generate_latents
from pilot.models.tokenizer import CLIPTokenizer
from pilot.models.unet import UNET_PRESETS
from pilot.models.vae import VAE_PRESETS

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
    tok = CLIPTokenizer.default()
    text_cfg = CLIPTextConfig(
        vocab_size=len(tok.vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    root = tmp_path_factory.mktemp("pipelines")
    pipe = StableDiffusionPipeline(
        vae=fill(AutoencoderKL(**VAE_PRESETS["tiny"].to_diffusers()), 1),
        text_encoder=fill(CLIPTextModel(text_cfg), 2),
        tokenizer=hf_tokenizer(root / "vocab", pad_token="<|endoftext|>"),
        unet=fill(UNet2DConditionModel(**UNET_PRESETS["tiny"].to_diffusers()), 3),
        scheduler=CASES["ddim_sd_config"].scheduler(**SD, **CASES["ddim_sd_config"].config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
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
