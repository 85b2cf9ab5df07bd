"""save_pipeline writes a folder that pilot and diffusers load to the same models."""

import pytest
import torch

import pilot
from pilot.weights.save import save_pipeline


def test_round_trip_through_pilot(tiny_sd, tiny_sd_folder):
    sd = pilot.load_pipeline(tiny_sd_folder)
    assert sd.prediction_type == tiny_sd.prediction_type
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(sd, name).state_dict(), getattr(tiny_sd, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    prompts = ["a red brick corridor, thick blue fog", "hatched walls"]
    assert torch.equal(sd.tokenizer(prompts), tiny_sd.tokenizer(prompts))


def test_diffusers_reads_the_folder(tiny_sd, tiny_sd_folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    prompts = ["a red wall", "fog"]
    ids = tiny_sd.tokenizer(prompts)
    hf_ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True)
    assert hf_ids.input_ids == ids.tolist()
    with torch.no_grad():
        x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3, 900]), tiny_sd.text_encoder(ids)
        assert torch.equal(pipe.text_encoder(ids).last_hidden_state, context)
        ref = pipe.unet(x, t, encoder_hidden_states=context).sample
        assert torch.allclose(tiny_sd.unet(x, t, context), ref, atol=1e-5)


def test_refuses_to_overwrite_unless_asked(tiny_sd, tmp_path):
    folder = save_pipeline(tiny_sd, tmp_path / "m")
    with pytest.raises(FileExistsError, match="m: exists"):
        save_pipeline(tiny_sd, folder)
    save_pipeline(tiny_sd, folder, overwrite=True)
    assert pilot.load_pipeline(folder).prediction_type == "epsilon"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folders left


def test_saved_folders_and_weights_are_readable_by_others(tiny_sd, tiny_sd_folder):
    """Not the 0700 / 0600 modes of mkdtemp / mkstemp: a model is a shared output."""
    weights = tiny_sd_folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert tiny_sd_folder.stat().st_mode & 0o777 == 0o755
    assert weights.stat().st_mode & 0o777 == 0o644
