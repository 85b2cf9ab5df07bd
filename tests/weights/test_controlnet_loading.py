"""ControlNet weights: original-layout key mapping and `pilot.load_controlnet` on every layout.

Original files are written by our `controlnet_original.to_original`; diffusers' own single-file
converter reads the same file back to the same weights, which checks the mapping independently.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel

import pilot
from pilot.models.controlnet import CONTROLNET_PRESETS, ControlNet, ControlNetConfig
from pilot.models.unet import UNetConfig
from pilot.weights import controlnet_original as original
from pilot.weights.controlnet_loader import _detect_config
from pilot.weights.io import WeightsError, save_state_dict
from pilot.weights.sd_original import UNetLayout

THREE_BLOCKS = ControlNetConfig(
    unet=UNetConfig(
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        num_heads=8,
        cross_attention_dim=32,
        attention=(False, True, True),
    ),
    hint_channels=(8, 16, 32, 64),
)


@pytest.mark.parametrize(
    "cfg", [CONTROLNET_PRESETS["sd15"], CONTROLNET_PRESETS["tiny"], THREE_BLOCKS]
)
def test_key_mapping_round_trips(cfg):
    with torch.device("meta"):
        keys = list(ControlNet(cfg).state_dict())
    layout = UNetLayout.from_config(cfg.unet)
    last = 2 * (2 * (len(cfg.hint_channels) - 1) + 1)
    names = [original.unmap_controlnet_key(k, layout, last) for k in keys]
    assert len(set(names)) == len(keys)
    assert [original.map_controlnet_key(n, layout, last) for n in names] == keys
    assert "input_hint_block.0.weight" in names and f"input_hint_block.{last}.bias" in names
    assert "middle_block_out.0.weight" in names and "zero_convs.0.0.weight" in names


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    model = ControlNetModel(**CONTROLNET_PRESETS["tiny"].to_diffusers())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def assert_same_weights(model, ref):
    expected = ref.state_dict()
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_original_file_reads_the_same_in_diffusers_and_pilot(ref, tmp_path):
    ref.save_pretrained(tmp_path / "folder")
    file = tmp_path / "control_v11p_tiny.safetensors"
    save_state_dict(original.to_original(ref.state_dict(), CONTROLNET_PRESETS["tiny"].unet), file)
    theirs = ControlNetModel.from_single_file(
        str(file), config=str(tmp_path / "folder"), local_files_only=True
    )
    assert_same_weights(theirs, ref)
    ours = pilot.load_controlnet(file)
    assert ours.cfg == CONTROLNET_PRESETS["tiny"]
    assert_same_weights(ours, ref)


def test_v10_full_checkpoint_and_bare_layouts(ref, tmp_path):
    unet_cfg = CONTROLNET_PRESETS["tiny"].unet
    control = original.to_original(ref.state_dict(), unet_cfg)
    full = {**control, "model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)}
    full["first_stage_model.quant_conv.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save({"state_dict": full, "global_step": 1}, tmp_path / "control_sd15_tiny.pth")
    assert original.detect_layout(full) == "v1.0" and original.detect_layout(control) == "v1.1"
    assert_same_weights(pilot.load_controlnet(tmp_path / "control_sd15_tiny.pth"), ref)
    bare = original.to_original(ref.state_dict(), unet_cfg, prefix="")
    assert original.detect_layout(bare) == "bare"
    torch.save(bare, tmp_path / "controlnet_bare.pth")
    assert_same_weights(pilot.load_controlnet(tmp_path / "controlnet_bare.pth"), ref)


def test_diffusers_folders_and_bare_file(ref, tmp_path):
    ref.save_pretrained(tmp_path / "pipe" / "controlnet")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    model = pilot.load_controlnet(tmp_path / "pipe", dtype=torch.float16)
    assert next(model.parameters()).dtype == torch.float16 and not model.training
    loaded = pilot.load_controlnet(tmp_path / "pipe" / "controlnet")
    assert_same_weights(loaded, ref)
    bare = tmp_path / "pipe" / "controlnet" / "diffusion_pytorch_model.safetensors"
    assert_same_weights(pilot.load_controlnet(bare), ref)


@pytest.mark.parametrize("preset", ["sd15", "sd21"])
def test_config_from_original_weights_is_the_preset(preset):
    cfg = CONTROLNET_PRESETS[preset]
    with torch.device("meta"):
        keys = ControlNet(cfg).state_dict()
    tensors = {k: torch.empty(v.shape, device="meta") for k, v in keys.items()}
    stripped = original.strip_prefix(original.to_original(tensors, cfg.unet, prefix=""), "bare")
    assert _detect_config(stripped, Path(f"control_{preset}.pth")) == cfg


def test_shuffle_name_and_explicit_config(ref, tmp_path):
    sd15 = CONTROLNET_PRESETS["sd15"]
    file = tmp_path / "control_v11e_sd15_shuffle.safetensors"
    save_state_dict(original.to_original(ref.state_dict(), sd15.unet), file)
    shuffle = pilot.load_controlnet(file)
    assert shuffle.cfg.global_pool and shuffle.cfg.unet == CONTROLNET_PRESETS["tiny"].unet
    explicit = pilot.load_controlnet(file, config="tiny")
    assert not explicit.cfg.global_pool


def test_bad_files_raise_weights_errors(ref, tmp_path):
    sd = original.to_original(ref.state_dict(), CONTROLNET_PRESETS["tiny"].unet)
    missing = tmp_path / "control_missing.safetensors"
    save_state_dict({k: v for k, v in sd.items() if "zero_convs.2." not in k}, missing)
    with pytest.raises(WeightsError, match=r"control_missing.*controlnet_down_blocks\.2"):
        pilot.load_controlnet(missing)
    unet_only = tmp_path / "unet.safetensors"
    save_state_dict({"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)}, unet_only)
    with pytest.raises(WeightsError, match="holds no ControlNet"):
        pilot.load_controlnet(unet_only)
    sdxl = tmp_path / "control_xl.safetensors"
    save_state_dict({**sd, "control_model.label_emb.0.0.weight": torch.zeros(2, 2)}, sdxl)
    with pytest.raises(WeightsError, match="SDXL"):
        pilot.load_controlnet(sdxl)
    code = tmp_path / "control_code.pth"
    torch.save({"control_model.zero_convs.0.0.weight": torch.zeros(1), "hook": print}, code)
    with pytest.raises(WeightsError, match="control_code.pth.*pickled code"):
        pilot.load_controlnet(code)
    folder = tmp_path / "wrong"
    ref.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text()) | {"_class_name": "UNet2DModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="not a ControlNetModel"):
        pilot.load_controlnet(folder)
    with pytest.raises(WeightsError, match="no such file"):
        pilot.load_controlnet(tmp_path / "nothing.safetensors")


def test_sd_pipeline_folder_is_not_a_controlnet(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(WeightsError, match="a Stable Diffusion pipeline folder .* not a Control"):
        pilot.load_controlnet(tmp_path)


def test_an_sdxl_controlnet_folder_is_named_as_one(ref, tmp_path):
    """SDXL's config.json (size / crop conditioning): one line saying so, as for single files."""
    ref.save_pretrained(tmp_path / "xl")
    config = json.loads((tmp_path / "xl" / "config.json").read_text())
    config |= {"addition_embed_type": "text_time", "cross_attention_dim": 2048}
    (tmp_path / "xl" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"xl/config.json: an SDXL ControlNet; pilot loads SD 1"):
        pilot.load_controlnet(tmp_path / "xl")


def random_controlnet(cfg: ControlNetConfig) -> ControlNet:
    torch.manual_seed(0)
    model = ControlNet(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def test_shapes_of_no_preset_need_a_config(tmp_path):
    """Head counts and norm groups are not in a single file: no fitting preset, no guess."""
    ref = random_controlnet(THREE_BLOCKS)
    file = tmp_path / "control_odd.safetensors"
    save_state_dict(original.to_original(ref.state_dict(), THREE_BLOCKS.unet), file)
    unstored = r"attention heads \(num_heads\) and GroupNorm groups \(norm_num_groups\)"
    with pytest.raises(
        WeightsError, match=rf"control_odd.safetensors: .* fit no preset.*{unstored}"
    ):
        pilot.load_controlnet(file)
    with pytest.raises(WeightsError, match=r"load_controlnet\(path, config=\.\.\.\)"):
        pilot.load_controlnet(file)
    loaded = pilot.load_controlnet(file, config=THREE_BLOCKS)
    assert loaded.cfg == THREE_BLOCKS
    assert_same_weights(loaded, ref)
    with pytest.raises(WeightsError, match=r"save it once as a folder.*pilot.save_controlnet"):
        pilot.load_controlnet(file)
    folder = pilot.save_controlnet(loaded, tmp_path / "control_odd")  # what the commands load
    assert pilot.load_controlnet(folder).cfg == THREE_BLOCKS


def test_other_hint_encoder_takes_the_preset_heads(tmp_path):
    """The hint encoder has no heads or norms: a preset's UNet with other hint convs fits it."""
    cfg = replace(
        CONTROLNET_PRESETS["tiny"], hint_channels=(8, 16, 32, 64), conditioning_channels=1
    )
    ref = random_controlnet(cfg)
    file = tmp_path / "control_hint.safetensors"
    save_state_dict(original.to_original(ref.state_dict(), cfg.unet), file)
    loaded = pilot.load_controlnet(file)
    assert loaded.cfg == cfg
    assert_same_weights(loaded, ref)
