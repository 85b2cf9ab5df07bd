"""save_pipeline writes a folder that pilot and diffusers load to the same models."""

import os
import shutil
from pathlib import Path

import pytest
import torch

import pilot
from pilot.models.vae import VAE_PRESETS, AutoencoderKL
from pilot.weights import save
from pilot.weights.save import save_pipeline, save_vae


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


class Killed(BaseException):
    """The export's process died here (kill -9): nothing after it runs."""


def tiny_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(VAE_PRESETS["tiny"]).eval()


def same_weights(model, other) -> bool:
    ours, theirs = model.state_dict(), other.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def export_killed(monkeypatch, vae, folder: Path, point: str, *, exchange: bool) -> None:
    """`save_vae(vae, folder, overwrite=True)` killed at `point`: while writing the new folder,
    between the two renames of the fallback swap (`exchange=False`), or while deleting the
    previous folder (one file gone). File operations after the kill do nothing, as in a dead
    process (the `finally` clean-up does not run either)."""
    dead = False
    real_replace, real_rmtree, real_write = os.replace, shutil.rmtree, save._write_model

    def die():
        nonlocal dead
        dead = True
        raise Killed(point)

    def replace(a, b):
        if dead:
            return
        if point == "between" and Path(a).name.startswith(f".{folder.name}.tmp-"):
            die()
        real_replace(a, b)

    def rmtree(path, *args, **kwargs):
        if dead:
            return
        previous = ".tmp-" if exchange else ".old-"  # where the swap put the previous folder
        if point == "deleting" and previous in Path(path).name:
            next(Path(path).glob("*.safetensors")).unlink()
            die()
        real_rmtree(path, *args, **kwargs)

    def write_model(tmp, model, config, stem):
        real_write(tmp, model, config, stem)
        if point == "writing":
            die()

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        m.setattr(shutil, "rmtree", rmtree)
        m.setattr(save, "_write_model", write_model)
        if not exchange:
            m.setattr(save, "_exchange", lambda a, b: False)
        with pytest.raises(Killed):
            save_vae(vae, folder, overwrite=True)


KILLS = [  # (swap by one exchange, killed at, the folder loads to the previous export)
    (True, "writing", True),
    (True, "deleting", False),
    (False, "writing", True),
    (False, "between", True),
    (False, "deleting", False),
]


@pytest.mark.parametrize(("exchange", "point", "keeps_previous"), KILLS)
def test_a_killed_export_leaves_a_loadable_folder_and_the_next_one_works(
    monkeypatch, tmp_path, exchange, point, keeps_previous
):
    first, second, third = tiny_vae(0), tiny_vae(1), tiny_vae(2)
    folder = save_vae(first, tmp_path / "vae")
    export_killed(monkeypatch, second, folder, point, exchange=exchange)
    assert len(list(tmp_path.iterdir())) > 1  # what the kill left beside the folder
    if point == "between":
        assert not folder.exists()
        with pytest.warns(UserWarning, match=r"vae: missing, an export into it was interrupted"):
            loaded = pilot.load_vae(folder)
    else:
        loaded = pilot.load_vae(folder)
    assert same_weights(loaded, first if keeps_previous else second)
    save_vae(third, folder, overwrite=True)
    assert same_weights(pilot.load_vae(folder), third)
    assert [p.name for p in tmp_path.iterdir()] == ["vae"]  # the kill's leftovers are gone


def test_a_missing_folder_is_put_back_before_an_export_that_may_not_overwrite(tmp_path):
    first = tiny_vae(0)
    folder = save_vae(first, tmp_path / "vae")
    folder.rename(tmp_path / ".vae.old-0123abcd")  # killed between the fallback's renames
    with pytest.raises(FileExistsError, match="vae: exists"):
        save_vae(tiny_vae(1), folder)
    assert same_weights(pilot.load_vae(folder), first)


def test_leftovers_of_the_old_naming_are_removed_and_nothing_else(tmp_path):
    """Before, a kill left `.vae.old` (which blocked every later export with `Directory not
    empty`). Its `mkdtemp` folders `.vae.XXXXXXXX` stay: a user's backup can have that shape."""
    folder = save_vae(tiny_vae(0), tmp_path / "vae")
    ours = [".vae.old", ".vae.tmp-ab_12xyz", ".vae.old-0123abcd"]
    others = [".vae.keep", ".vae.old-mine", ".unet.old", "vae.old", ".vae.tmp-a"]
    others += [".vae.original", ".vae.backup01", ".vae.mrw7a_y5"]
    for name in ours + others:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    save_vae(tiny_vae(1), folder, overwrite=True)
    assert same_weights(pilot.load_vae(folder), tiny_vae(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["vae", *others])


def test_an_old_style_kill_between_the_renames_reads_the_previous_folder(tmp_path):
    """The state the fixed `.vae.old` name left: no `vae/`, the previous one in `.vae.old`."""
    first = tiny_vae(0)
    folder = save_vae(first, tmp_path / "vae")
    folder.rename(tmp_path / ".vae.old")
    with pytest.warns(UserWarning, match=r"previous version it left in .*\.vae\.old \(the next"):
        assert same_weights(pilot.load_vae(folder), first)
    save_vae(tiny_vae(1), folder, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["vae"]


def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "x").mkdir(parents=True)
    (b / "y").mkdir(parents=True)
    if not save._exchange(a, b):
        pytest.skip("no atomic exchange on this system (the fallback is tested above)")
    assert [p.name for p in a.iterdir()] == ["y"] and [p.name for p in b.iterdir()] == ["x"]
