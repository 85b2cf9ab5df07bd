"""The preview decoder (`pilot.models.preview`): shapes, folders, errors, decode_latents."""

import copy
import json
import warnings

import pytest
import torch

import pilot
from pilot.diffusion.pipeline import decode_latents
from pilot.models.preview import (
    PreviewConfig,
    PreviewDecoder,
    check_teacher,
    load_preview_decoder,
    vae_fingerprint,
)
from pilot.weights.save import save_preview_decoder, save_vae
from tests.conftest import make_tiny_sd

SMALL = PreviewConfig(channels=8, upsamples=3, blocks=1)


def test_decodes_latents_to_bounded_images_at_the_factor():
    decoder = PreviewDecoder(SMALL)
    images = decoder.decode(torch.randn(2, 4, 5, 7) * 10)
    assert images.shape == (2, 3, 40, 56) and SMALL.downsample_factor == 8
    assert images.abs().max() <= 1
    with pytest.raises(ValueError, match=r"latents of shape \(2, 3, 5, 7\): expected \(B, 4"):
        decoder.decode(torch.randn(2, 3, 5, 7))
    with pytest.raises(ValueError, match="PreviewConfig.channels=0"):
        PreviewConfig(channels=0)


def test_folder_round_trip_and_errors(tmp_path):
    decoder = PreviewDecoder(SMALL)
    folder = save_preview_decoder(decoder, tmp_path / "preview")
    loaded = load_preview_decoder(folder)
    assert loaded.cfg == SMALL and not loaded.training
    z = torch.randn(1, 4, 4, 4)
    assert torch.equal(loaded.decode(z), decoder.decode(z))
    with pytest.raises(FileExistsError):
        save_preview_decoder(decoder, folder)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_preview_decoder(tmp_path / "nope")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="expected 'PreviewDecoder'"):
        load_preview_decoder(folder)
    (folder / "config.json").write_text(json.dumps({**config, "channels": 16}))
    with pytest.raises(ValueError, match="weights do not fit"):
        load_preview_decoder(folder)


def test_decode_latents_with_a_preview_decoder():
    sd = make_tiny_sd()  # its VAE's factor is 2: the decoder's must be too
    decoder = PreviewDecoder(PreviewConfig(channels=8, upsamples=1, blocks=1))
    latents = torch.randn(1, 4, 4, 4)
    images = decode_latents(sd, latents, decoder=decoder)
    expected = decoder.decode(latents / sd.scaling_factor) / 2 + 0.5
    assert images.shape == (1, 3, 8, 8)
    torch.testing.assert_close(images, expected.clamp(0, 1))
    tiled = decode_latents(sd, torch.randn(1, 4, 8, 8), decoder=decoder, tile=8)
    assert tiled.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="decoder downsample_factor 8, but the model's VAE has 2"):
        decode_latents(sd, latents, decoder=PreviewDecoder(SMALL))


def test_vae_fingerprint_names_the_weights_not_the_file_or_precision(tmp_path):
    vae = make_tiny_sd().vae
    fingerprint = vae_fingerprint(vae)
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert vae_fingerprint(copy.deepcopy(vae).half()) == fingerprint
    assert vae_fingerprint(pilot.load_vae(save_vae(vae, tmp_path / "vae"))) == fingerprint
    assert vae_fingerprint(make_tiny_sd(seed=1).vae) != fingerprint


def test_a_decoder_distilled_from_another_vae_warns_naming_both(tmp_path):
    """The folder records its teacher; pairing it with another VAE warns (a fine-tuned VAE may
    still be close), the teacher itself and folders without the record pass silently."""
    teacher, other = make_tiny_sd().vae, make_tiny_sd(seed=1).vae
    decoder = PreviewDecoder(SMALL)
    decoder.teacher_vae = vae_fingerprint(teacher)
    folder = save_preview_decoder(decoder, tmp_path / "preview")
    config = json.loads((folder / "config.json").read_text())
    assert config["teacher_vae"] == decoder.teacher_vae
    loaded = load_preview_decoder(folder)
    assert loaded.teacher_vae == decoder.teacher_vae
    expected = (
        rf"preview: preview decoder distilled from the VAE with fingerprint "
        rf"{decoder.teacher_vae}, but the model's VAE has {vae_fingerprint(other)} "
    )
    with pytest.warns(UserWarning, match=expected):
        check_teacher(loaded, other, folder)
    del config["teacher_vae"]  # as written before the field existed
    (folder / "config.json").write_text(json.dumps(config))
    older = load_preview_decoder(folder)
    assert older.teacher_vae is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_teacher(loaded, teacher, folder)
        check_teacher(older, other, folder)
