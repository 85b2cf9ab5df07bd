"""`pilot.apply_lora` merges a LoRA as diffusers' `load_lora_weights` applies it.

One random tiny SD is saved by diffusers and loaded by both. Random LoRAs of every linear and
conv layer (LoCon 3x3 included, alpha != rank) in the kohya-ss format (diffusers and ldm module
names), and the diffusers / PEFT file diffusers' own `save_lora_weights` writes of them, are
loaded by both; UNet and text encoder outputs agree to 1e-5 (relative, float32). diffusers
needs `peft` to apply a LoRA; without it only its key conversion is checked against ours.
"""

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.state_dict_utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from sd_references import rel_err
from test_load_parity import TOL, inputs, reference_models, save_pipeline

import pilot
from pilot.weights.io import save_state_dict
from pilot.weights.lora import read_lora
from pilot.weights.sd_keys import UNetLayout, unmap_unet_key
from tests.weights.lora_files import KOHYA, adapted_layers, random_lora

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The reference models saved by diffusers as a pipeline folder, and what it computes."""
    models = reference_models("tiny")
    folder = tmp_path_factory.mktemp("lora") / "tiny-sd"
    save_pipeline(models, folder, prediction_type="epsilon", pad_token="!")
    return {"folder": folder, "x": inputs(models), "unet_config": models["unet"].config}


def kohya_ldm_names(state: dict, sd) -> dict:
    """`state` with kohya's names of the original (ldm) UNet layout (`input_blocks_1_1_...`).

    Without the upsampler of the up block without attention (`output_blocks_2_1_conv`):
    diffusers maps it onto `up_blocks.0.attentions`, which SD does not have (pilot maps it onto
    `up_blocks.0.upsamplers.0.conv`, see tests/weights/test_lora.py)."""
    layout = UNetLayout.from_config(sd.unet.cfg)
    renamed = {}
    for _, module in adapted_layers(sd, ["unet"]):
        ldm = unmap_unet_key(f"{module}.weight", layout).removesuffix(".weight")
        renamed[KOHYA["unet"] + module.replace(".", "_")] = KOHYA["unet"] + ldm.replace(".", "_")
    out = {}
    for key, value in state.items():
        name, _, suffix = key.partition(".")
        if "upsamplers" not in name:
            out[f"{renamed.get(name, name)}.{suffix}"] = value
    return out


def kohya_lora(sd, names: str) -> dict:
    """A LoRA of every layer: linear ones rank 4, alpha 3; convs rank 2, alpha 1 (diffusers
    then writes `rank_pattern` and `alpha_pattern` in its PEFT file)."""
    state = random_lora(sd, "kohya", rank=4, alpha=3.0)
    for key in [k for k in state if k.endswith(".lora_down.weight") and state[k].ndim == 4]:
        name = key.removesuffix(".lora_down.weight")
        state[key] = state[key][:2]
        state[f"{name}.lora_up.weight"] = state[f"{name}.lora_up.weight"][:, :2]
        state[f"{name}.alpha"] = torch.tensor(1.0)
    return kohya_ldm_names(state, sd) if names == "ldm" else state


def diffusers_modules(state: dict, unet_config) -> dict:
    """diffusers' (PEFT) module of each LoRA layer, keyed by its down factor's identity."""
    converted, _ = StableDiffusionPipeline.lora_state_dict(dict(state), unet_config=unet_config)
    parts = {c: {k.removeprefix(f"{c}."): v for k, v in converted.items() if k.startswith(f"{c}.")}
             for c in ("unet", "text_encoder")}  # fmt: skip
    unet = convert_unet_state_dict_to_peft(parts["unet"])
    text = convert_state_dict_to_peft(convert_state_dict_to_diffusers(parts["text_encoder"]))
    modules = {}
    for component, peft in (("unet", unet), ("text_encoder", text)):
        for key, value in peft.items():
            if key.endswith(".lora_A.weight"):
                module = key.removesuffix(".lora_A.weight").removeprefix("text_model.")
                modules[id(value)] = (component, module)
    return modules


@pytest.mark.parametrize("names", ["diffusers", "ldm"])
def test_kohya_names_map_as_diffusers_maps_them(tiny, names):
    sd = pilot.load_pipeline(tiny["folder"])
    state = kohya_lora(sd, names)
    lora = read_lora(state)
    applied = pilot.apply_lora(sd, lora, scale=0.0)  # matches every layer, changes nothing
    ours = {id(f.down): m for f, m in zip(lora.layers.values(), applied.modules, strict=True)}
    assert ours == diffusers_modules(state, tiny["unet_config"])
    assert len(ours) == len(adapted_layers(sd)) - (names == "ldm")


@torch.no_grad()
def outputs(unet, text_encoder, x: dict, diffusers: bool) -> dict:
    if diffusers:
        return {
            "unet": unet(x["x"], x["t"], encoder_hidden_states=x["context"]).sample,
            "text": text_encoder(x["ids"]).last_hidden_state,
        }
    return {"unet": unet(x["x"], x["t"], x["context"]), "text": text_encoder(x["ids"])}


def assert_parity(sd, pipe, x: dict, label: str) -> None:
    ours = outputs(sd.unet, sd.text_encoder, x, diffusers=False)
    theirs = outputs(pipe.unet, pipe.text_encoder, x, diffusers=True)
    errors = {k: rel_err(v, theirs[k]) for k, v in ours.items()}
    print(f"\n{label}: " + ", ".join(f"{k} {e:.2e}" for k, e in errors.items()))
    assert all(e <= TOL for e in errors.values()), errors


@pytest.mark.parametrize("names", ["diffusers", "ldm"])
def test_kohya_and_peft_loras_compute_what_diffusers_computes(tiny, tmp_path, names):
    pytest.importorskip("peft", reason="diffusers' load_lora_weights needs peft")
    from peft import get_peft_model_state_dict

    sd = pilot.load_pipeline(tiny["folder"])
    pipe = StableDiffusionPipeline.from_pretrained(tiny["folder"])
    save_state_dict(kohya_lora(sd, names), tmp_path / "kohya.safetensors")
    # unet_config: diffusers maps ldm names only with it (its SDXL pipeline passes it, SD's not)
    pipe.load_lora_weights(
        str(tmp_path / "kohya.safetensors"), adapter_name="style", unet_config=pipe.unet.config
    )
    applied = pilot.apply_lora(sd, tmp_path / "kohya.safetensors")
    base = outputs(pipe.unet, pipe.text_encoder, tiny["x"], diffusers=True)
    assert_parity(sd, pipe, tiny["x"], f"kohya ({names} names)")
    pipe.set_adapters(["style"], adapter_weights=[0.5])
    applied.set_scale(0.5)
    assert_parity(sd, pipe, tiny["x"], f"kohya ({names} names) at 0.5")
    assert rel_err(outputs(sd.unet, sd.text_encoder, tiny["x"], False)["unet"], base["unet"]) > 0.01

    # diffusers writes the same LoRA in its PEFT format, alphas in the file's metadata
    layers = {c: get_peft_model_state_dict(getattr(pipe, c), adapter_name="style")
              for c in ("unet", "text_encoder")}  # fmt: skip
    config = {c: getattr(pipe, c).peft_config["style"].to_dict() for c in layers}
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "peft",
        unet_lora_layers=layers["unet"],
        text_encoder_lora_layers=layers["text_encoder"],
        unet_lora_adapter_metadata=config["unet"],
        text_encoder_lora_adapter_metadata=config["text_encoder"],
    )
    assert config["unet"]["alpha_pattern"] and config["unet"]["rank_pattern"]
    applied.remove()
    pilot.apply_lora(sd, tmp_path / "peft" / "pytorch_lora_weights.safetensors", scale=0.5)
    assert_parity(sd, pipe, tiny["x"], "diffusers' PEFT file at 0.5")
