"""LoRA merging (`pilot.weights.lora`): analytic weights for both formats, kohya's ldm names,
re-weighting and removal, and one-line errors for LoRAs that do not fit."""

import json

import pytest
import torch

import pilot
from pilot.weights.io import WeightsError, save_state_dict
from pilot.weights.lora import apply_lora, read_lora
from tests.conftest import make_tiny_sd
from tests.weights.lora_files import expected_delta, file_name, random_lora

pytestmark = pytest.mark.usefixtures("one_thread")

# A linear layer, a 1x1 conv (SD 1.x proj_in), a 3x3 conv (LoCon), the text encoder.
LAYERS = [
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"),
    ("unet", "mid_block.attentions.0.proj_in"),
    ("unet", "up_blocks.1.resnets.0.conv1"),
    ("text_encoder", "encoder.layers.1.mlp.fc1"),
]
MODULES = [module for _, module in LAYERS]


@pytest.fixture
def sd():
    return make_tiny_sd()


def weights(sd) -> dict[str, torch.Tensor]:
    return {
        f"{c}.{k}": v.clone()
        for c in ("unet", "vae", "text_encoder")
        for k, v in getattr(sd, c).state_dict().items()
    }


def assert_merged(sd, before, state, fmt, factors: dict, scale: float) -> None:
    """Each layer of LAYERS is W + scale * factor * up @ down; every other weight unchanged."""
    after = weights(sd)
    changed = set()
    for component, module in LAYERS:
        key = f"{component}.{module}.weight"
        name = file_name(fmt, component, module)
        delta = expected_delta(state, name, factors[module], before[key].shape)
        torch.testing.assert_close(after[key], before[key] + scale * delta, atol=1e-6, rtol=1e-6)
        changed.add(key)
    assert all(torch.equal(after[k], before[k]) for k in before if k not in changed)


def test_kohya_lora_merges_analytically(sd):
    before = weights(sd)
    state = random_lora(sd, "kohya", LAYERS, rank=4, alpha=1.0)
    applied = apply_lora(sd, state, scale=0.7)
    assert_merged(sd, before, state, "kohya", dict.fromkeys(MODULES, 0.25), 0.7)
    assert sorted(applied.modules) == sorted(LAYERS) and applied.scale == 0.7


def test_peft_lora_alphas_come_from_diffusers_metadata(sd, tmp_path):
    before = weights(sd)
    state = random_lora(sd, "peft", LAYERS, rank=4)
    config = {"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {"attn2.to_k": 2}}
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_state_dict(state, path, metadata={"lora_adapter_metadata": json.dumps(config)})
    pilot.apply_lora(sd, path)
    # alpha_pattern, then lora_alpha; the text encoder has no entry: alpha = rank, as diffusers
    factors = [2 / 4, 8 / 4, 8 / 4, 1.0]
    assert_merged(sd, before, state, "peft", dict(zip(MODULES, factors, strict=True)), 1.0)


def test_peft_lora_without_metadata_and_rslora(sd):
    state = random_lora(sd, "peft", LAYERS, rank=4)
    before = weights(sd)
    apply_lora(sd, state, 0.5)
    assert_merged(sd, before, state, "peft", dict.fromkeys(MODULES, 1.0), 0.5)
    rs = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 4, "unet.use_rslora": True})}
    sd2 = make_tiny_sd()
    before = weights(sd2)
    apply_lora(sd2, read_lora(state, metadata=rs))
    factors = dict.fromkeys(MODULES, 4 / 4**0.5) | {LAYERS[3][1]: 1.0}
    assert_merged(sd2, before, state, "peft", factors, 1.0)


@pytest.mark.parametrize(
    ("ldm", "ours"),
    [  # tiny: 2 resnets per block, up block 0 without attention
        ("input_blocks_1_1_transformer_blocks_0_attn2_to_k",
         "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"),
        ("input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv"),
        ("input_blocks_4_0_skip_connection", "down_blocks.1.resnets.0.conv_shortcut"),
        ("middle_block_0_in_layers_2", "mid_block.resnets.0.conv1"),
        ("middle_block_1_proj_out", "mid_block.attentions.0.proj_out"),
        ("output_blocks_2_1_conv", "up_blocks.0.upsamplers.0.conv"),
        ("output_blocks_4_1_transformer_blocks_0_ff_net_2",
         "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2"),
        ("time_embed_0", "time_embedding.linear_1"),
        ("out_2", "conv_out"),
    ],
)  # fmt: skip
def test_kohya_ldm_names_adapt_the_same_layers(ldm, ours):
    sd = make_tiny_sd()
    state = random_lora(sd, "kohya", [("unet", ours)], alpha=1.0)
    state = {k.replace(ours.replace(".", "_"), ldm): v for k, v in state.items()}
    before = sd.unet.get_submodule(ours).weight.clone()
    assert apply_lora(sd, state).modules == [("unet", ours)]
    delta = expected_delta(state, f"lora_unet_{ldm}", 0.5, before.shape)
    torch.testing.assert_close(sd.unet.get_submodule(ours).weight, before + delta)


def test_set_scale_and_remove_in_any_order_restore_the_weights(sd):
    before = weights(sd)
    a = apply_lora(sd, random_lora(sd, "kohya", rank=3, alpha=2.0, seed=1))
    b = apply_lora(sd, random_lora(sd, "peft", seed=2), scale=0.5)
    a.set_scale(-1.5)
    fresh = make_tiny_sd()
    apply_lora(fresh, random_lora(fresh, "kohya", rank=3, alpha=2.0, seed=1), scale=-1.5)
    apply_lora(fresh, random_lora(fresh, "peft", seed=2), scale=0.5)
    for k, v in weights(fresh).items():  # re-weighted = applied at that scale
        torch.testing.assert_close(weights(sd)[k], v, atol=1e-6, rtol=1e-6)
    a.remove()
    b.remove()
    assert a.scale == b.scale == 0.0
    for k, v in weights(sd).items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=1e-6)


def test_a_full_checkpoint_with_lora_keys_gives_its_lora(sd):
    lora = random_lora(sd, "kohya", LAYERS[:1], alpha=1.0)
    full = {"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3), **lora}
    assert list(read_lora(full).layers) == [file_name("kohya", *LAYERS[0])]
    message = "it is a full Stable Diffusion model: pass it as the model"
    with pytest.raises(WeightsError, match=message):
        read_lora({"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)})


TO_Q = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"],
         "<state dict>: an SDXL LoRA (key lora_te2_text_model_encoder_layers_0_mlp_fc1."
         "lora_down.weight); pilot runs SD 1.x / 2.x models only"),
        ([f"{TO_Q}.hada_w1_a"], f"LyCORIS LoHa weights (key {TO_Q}.hada_w1_a); pilot applies "
         "LoRA and LoCon only"),
        ([f"{TO_Q}.dora_scale"], "DoRA weights"),
        ([f"{TO_Q}.lora_down.weight"], f"<state dict>: {TO_Q} has no up factor"),
        ([f"{TO_Q}.lora_down.weight", f"{TO_Q}.lora_up.weight", "extra.bias"],
         "1 keys are not LoRA factors (lora_down/lora_up/alpha, lora_A/lora_B): extra.bias"),
        (["model.embedding"], "holds no LoRA factors"),
    ],
)  # fmt: skip
def test_other_files_are_refused_by_name(keys, message):
    with pytest.raises(WeightsError) as e:
        read_lora(dict.fromkeys(keys, torch.zeros(2, 2)))
    assert message in str(e.value)


def test_a_locon_up_factor_with_a_kernel_is_refused():
    state = {f"{TO_Q}.lora_down.weight": torch.zeros(2, 8, 3, 3),
             f"{TO_Q}.lora_up.weight": torch.zeros(8, 2, 3, 3)}  # fmt: skip
    with pytest.raises(WeightsError, match=r"up factor \(8, 2, 3, 3\) has a 3x3 kernel"):
        read_lora(state)


def test_modules_the_pipeline_lacks_are_listed_with_their_count(sd):
    before = weights(sd)
    state = random_lora(sd, "kohya", LAYERS, alpha=1.0)
    for i in range(5):  # an SD 1.5 UNet's third and fourth blocks
        state[f"lora_unet_down_blocks_3_resnets_{i}_conv1.lora_down.weight"] = torch.zeros(2, 8)
        state[f"lora_unet_down_blocks_3_resnets_{i}_conv1.lora_up.weight"] = torch.zeros(8, 2)
    with pytest.raises(WeightsError) as e:
        apply_lora(sd, state)
    assert str(e.value) == (
        "<state dict>: 5 of its 9 LoRA modules are not in this pipeline: "
        "lora_unet_down_blocks_3_resnets_0_conv1, lora_unet_down_blocks_3_resnets_1_conv1, "
        "lora_unet_down_blocks_3_resnets_2_conv1, ... and 2 more"
    )
    assert all(torch.equal(v, before[k]) for k, v in weights(sd).items())  # nothing merged


def test_a_lora_of_another_base_names_it_and_the_shapes(sd, tmp_path):
    before = weights(sd)
    state = random_lora(sd, "kohya", LAYERS, alpha=1.0)
    to_k = file_name("kohya", *LAYERS[0])
    state[to_k + ".lora_down.weight"] = torch.zeros(2, 1024)  # SD 2.x's OpenCLIP context
    save_state_dict(state, tmp_path / "sd2-style.safetensors")
    with pytest.raises(WeightsError) as e:
        apply_lora(sd, tmp_path / "sd2-style.safetensors")
    assert str(e.value) == (
        f"{tmp_path / 'sd2-style.safetensors'}: does not fit this pipeline, 1 layers of other "
        "shapes (a LoRA for SD 2.x: cross-attention context 1024 wide, the model's 32): "
        f"unet.{LAYERS[0][1]}: LoRA (32, 1024), model (32, 32)"
    )
    assert all(torch.equal(v, before[k]) for k, v in weights(sd).items())


def test_two_names_of_one_layer_are_refused(sd):
    state = random_lora(sd, "kohya", [("unet", "conv_in")], alpha=1.0)
    state.update({k.replace("conv_in", "input_blocks_0_0"): v for k, v in state.items()})
    with pytest.raises(WeightsError, match="lora_unet_conv_in and lora_unet_input_blocks_0_0 "
                       "both adapt unet.conv_in"):  # fmt: skip
        apply_lora(sd, state)


def test_scale_must_be_finite(sd):
    with pytest.raises(ValueError, match="LoRA scale nan must be a finite number"):
        apply_lora(sd, random_lora(sd, "kohya", LAYERS), float("nan"))


def test_set_scale_reaches_prepacked_convolutions_of_inference_weights():
    """Weights made in inference mode keep no version counter, so a prepacked conv would keep
    its packed copy of the old weights: `set_scale` drops it (`Conv2d.weights_changed`)."""
    from pilot.diffusion.speed import SpeedSettings, optimize

    with torch.inference_mode():
        sd, fresh = make_tiny_sd(), make_tiny_sd()
        lora = apply_lora(sd, random_lora(sd, "kohya", LAYERS, rank=2), 1.0)
    sd = optimize(sd, SpeedSettings(prepack=True))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500.0])
    context = torch.randn(1, 77, sd.text_encoder.cfg.hidden_size, generator=g)
    with torch.inference_mode():
        merged = sd.unet(x, t, context)  # packs the convs' merged weights
        lora.remove()
        removed, reference = sd.unet(x, t, context), fresh.unet(x, t, context)
    assert (merged - reference).abs().max() > 1e-3  # the LoRA changed the output
    torch.testing.assert_close(removed, reference, rtol=1e-5, atol=1e-5)
