"""Weight files: safetensors and tensors-only pickles, refusal of pickled code, load checks."""

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from pilot.weights.io import (
    WeightsError,
    build_on_meta,
    describe_state_dict,
    load_into,
    load_state_dict,
    read_checkpoint,
    save_state_dict,
)
from tests.conftest import plant_temps


@dataclass(frozen=True)
class ToyConfig:
    width: int = 4


class Toy(nn.Module):
    """A model with a persistent and a non-persistent buffer, built as `Model(cfg)`."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.norm = nn.LayerNorm(cfg.width)
        self.register_buffer("scale", torch.ones(cfg.width))
        self.register_buffer("steps", torch.arange(cfg.width), persistent=False)

    def forward(self, x):
        return self.norm(self.proj(x)) * self.scale + self.steps


def toy_state_dict(width: int = 4) -> dict[str, torch.Tensor]:
    return {k: v + 0.1 for k, v in Toy(ToyConfig(width)).state_dict().items()}


def test_safetensors_round_trip_is_atomic(tmp_path):
    sd = toy_state_dict()
    path = tmp_path / "sub" / "toy.safetensors"
    plant_temps(path.with_name("toy.safetensors.tmp"))  # a kill -9 cut the last export
    save_state_dict(sd, path, metadata={"global_step": "12"})
    assert sorted(os.listdir(path.parent)) == ["toy.safetensors"]  # no temporary file left
    ckpt = read_checkpoint(path)
    assert ckpt.metadata == {"global_step": "12"}
    assert all(torch.equal(ckpt.tensors[k], v) for k, v in sd.items())


def test_save_handles_shared_tensors(tmp_path):
    w = torch.randn(3, 3)
    save_state_dict({"a": w, "b": w, "c": w.t()}, tmp_path / "tied.safetensors")
    got = load_state_dict(tmp_path / "tied.safetensors")
    assert torch.equal(got["c"], w.t())


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(WeightsError, match="nothing.safetensors.*does not exist"):
        load_state_dict(tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_damaged_safetensors_names_file_and_problem(tmp_path, damage):
    good = tmp_path / "good.safetensors"
    save_state_dict({"w": torch.randn(64, 64)}, good)
    data = good.read_bytes()
    bad = tmp_path / f"{damage}.safetensors"
    payload = {"truncated": data[: len(data) // 2], "random": os.urandom(4096), "empty": b""}
    bad.write_bytes(payload[damage])
    with pytest.raises(WeightsError, match=rf"{damage}\.safetensors.*not a valid safetensors"):
        load_state_dict(bad)


def test_compvis_ckpt_is_unwrapped_with_its_metadata(tmp_path):
    sd = toy_state_dict()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 875000, "epoch": 3}, path)
    ckpt = read_checkpoint(path)
    assert set(ckpt.tensors) == set(sd)
    assert ckpt.metadata["global_step"] == 875000


def test_legacy_torch_format_loads_without_mmap(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"w": torch.arange(3.0)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_state_dict(path)["w"], torch.arange(3.0))


def test_random_bytes_ckpt_is_a_clear_error(tmp_path):
    path = tmp_path / "noise.ckpt"
    # Seeded: torch's unpickler fails on random bytes in several ways (seed 12: an IndexError,
    # rarely a MemoryError); pilot turns the catchable ones into this error.
    g = torch.Generator().manual_seed(12)
    path.write_bytes(
        torch.randint(0, 256, (2048,), generator=g, dtype=torch.uint8).numpy().tobytes()
    )
    with pytest.raises(WeightsError, match="noise.ckpt.*not a readable torch checkpoint"):
        load_state_dict(path)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"x")
    with pytest.raises(WeightsError, match="weights.npz.*unknown weights suffix"):
        load_state_dict(path)


_EVIL = """
import os, pickle, sys, torch

class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))

obj = {"state_dict": {"w": torch.zeros(2)}, "callback": Evil()}
if sys.argv[3] == "zip":
    torch.save(obj, sys.argv[1])
elif sys.argv[3] == "legacy":
    torch.save(obj, sys.argv[1], _use_new_zipfile_serialization=False)
else:
    with open(sys.argv[1], "wb") as f:
        pickle.dump(obj, f)
"""


@pytest.mark.parametrize("writer", ["zip", "legacy", "pickle"])
def test_pickled_code_is_refused_and_never_run(tmp_path, writer):
    path, sentinel = tmp_path / "evil.ckpt", tmp_path / "PWNED"
    # Written by a separate process so this test process never defines the malicious class.
    subprocess.run([sys.executable, "-c", _EVIL, str(path), str(sentinel), writer], check=True)
    assert not sentinel.exists()
    with pytest.raises(WeightsError, match="evil.ckpt.*pickled code or unsafe objects") as info:
        load_state_dict(path)
    assert "weights_only` set to `False" not in str(info.value)  # never torch's unsafe advice
    assert not sentinel.exists(), "loading the checkpoint executed pickled code"
    # The file is really malicious: an unsafe load in another process does run it.
    unsafe = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"
    subprocess.run([sys.executable, "-c", unsafe, str(path)], check=False, capture_output=True)
    assert sentinel.exists()


def test_load_into_meta_model_converts_and_rebuilds_buffers(tmp_path):
    sd = toy_state_dict()
    sd["text_model.embeddings.position_ids"] = torch.arange(4)  # ignorable extras
    sd["logit_scale"] = torch.tensor(4.6)
    sd["model_ema.decay"] = torch.tensor(0.999)
    model = build_on_meta(lambda: Toy(ToyConfig()))
    assert model.proj.weight.is_meta
    load_into(model, sd, path="toy.safetensors", dtype=torch.float64)
    assert model.proj.weight.dtype == torch.float64
    assert torch.equal(model.proj.weight, sd["proj.weight"].double())
    assert torch.equal(model.steps, torch.arange(4))  # non-persistent: rebuilt from cfg
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert not model.training


def test_unexpected_and_missing_keys_are_listed(tmp_path):
    sd = toy_state_dict()
    del sd["proj.bias"]
    sd.update({f"extra.{i}.weight": torch.zeros(1) for i in range(25)})
    model = build_on_meta(lambda: Toy(ToyConfig()))
    with pytest.raises(WeightsError) as info:
        load_into(model, sd, path="/some/toy.safetensors")
    message = str(info.value)
    assert "/some/toy.safetensors" in message and "does not fit Toy" in message
    assert "missing 1 keys: proj.bias" in message
    assert "unexpected 25 keys: extra.0.weight" in message and "and 15 more" in message


def test_shape_mismatch_names_key_and_shapes():
    sd = toy_state_dict(width=6)
    model = build_on_meta(lambda: Toy(ToyConfig(width=4)))
    with pytest.raises(WeightsError, match=r"proj.weight: expected \(4, 4\), found \(6, 6\)"):
        load_into(model, sd, path="wide.safetensors")


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        (["model.diffusion_model.input_blocks.0.0.weight"], "original CompVis"),
        (["add_embedding.linear_1.weight", "down_blocks.0.resnets.0.conv1.weight"], "SDXL"),
        (["encoder.down_blocks.0.resnets.0.conv1.weight", "post_quant_conv.weight"], "VAE"),
        (["conv_in.weight", "down_blocks.0.x", "time_embedding.linear_1.weight"], "diffusers UNet"),
        (["embeddings.token_embedding.weight", "encoder.layers.0.mlp.fc1.weight"], "CLIP"),
        (["encoder.down.0.block.0.conv1.weight", "post_quant_conv.weight"], "original-layout VAE"),
        (["emb_params"], "textual inversion embedding"),
        (["<cat-toy>"], "textual inversion embedding"),  # diffusers' learned_embeds
        (["foo.weight"], "unrecognised"),
    ],
)
def test_describe_state_dict(keys, words):
    assert words in describe_state_dict(dict.fromkeys(keys, torch.zeros(1)))
