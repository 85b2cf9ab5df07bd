"""Smoke tests of the `pilot` command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pilot.cli import main

ROOT = Path(__file__).parents[1]


def test_help_runs_as_console_script():
    out = subprocess.run(
        [sys.executable, "-m", "pilot.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "inspect" in out.stdout


def test_info_prints_versions(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] and info["pilot"]


def test_inspect_missing_path_is_a_clear_error(capsys, tmp_path):
    missing = tmp_path / "nope.safetensors"
    assert main(["inspect", str(missing)]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_inspect_names_controlnets_and_gan_checkpoints(capsys, tmp_path):
    from pilot.models.dcgan import DCGAN_PRESETS, DCGANGenerator
    from pilot.weights.gan import export_generator
    from pilot.weights.hub import resolve

    assert main(["inspect", "tiny_sd_depth"]) == 0  # the packaged ControlNet
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "controlnet" and summary["controlnet"]["params"] > 0
    gan = tmp_path / "g.safetensors"
    export_generator("dcgan", DCGANGenerator(DCGAN_PRESETS["tiny"]), gan)
    assert main(["inspect", str(gan)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "dcgan" and summary["run_with"] == "pilot walk"
    assert summary["generator"]["config"]["latent_dim"] == DCGAN_PRESETS["tiny"].latent_dim
    unet = resolve("tiny_sd") / "unet"  # one model of a pipeline
    assert main(["inspect", str(unet)]) == 2
    err = capsys.readouterr().err
    assert "a diffusers UNet2DConditionModel folder (one model" in err
    assert f"pass the pipeline folder that holds it ({unet.parent})" in err


def test_load_pipeline_names_gan_checkpoints_and_controlnets(tmp_path):
    import pilot
    from pilot.models.dcgan import DCGAN_PRESETS, DCGANGenerator
    from pilot.weights.gan import export_generator
    from pilot.weights.io import WeightsError

    gan = tmp_path / "g.safetensors"
    export_generator("dcgan", DCGANGenerator(DCGAN_PRESETS["tiny"]), gan)
    with pytest.raises(WeightsError, match="a Diffusion Pilot dcgan exported generator, not a"):
        pilot.load_pipeline(gan)
    with pytest.raises(WeightsError, match="ControlNetModel folder .* pilot.load_controlnet"):
        pilot.load_pipeline("tiny_sd_depth")


def test_single_file_needs_a_tokenizer_that_fits(capsys, tmp_path):
    from pilot.models.clip import CLIP_PRESETS, CLIPTextModel
    from pilot.models.unet import UNET_PRESETS, UNet
    from pilot.models.vae import VAE_PRESETS, AutoencoderKL
    from pilot.weights import sd_original
    from pilot.weights.io import save_state_dict

    unet, vae = UNet(UNET_PRESETS["tiny"]), AutoencoderKL(VAE_PRESETS["tiny"])
    text_encoder = CLIPTextModel(CLIP_PRESETS["tiny"])
    state = sd_original.to_original(
        {
            "unet": unet.state_dict(),
            "vae": vae.state_dict(),
            "text_encoder": text_encoder.state_dict(),
        },
        unet_config=unet.cfg,
        vae_num_blocks=len(vae.cfg.block_out_channels),
    )
    path = tmp_path / "tiny.safetensors"
    save_state_dict(state, path)
    # the shipped CLIP tokenizer (49408 tokens) overflows the tiny text encoder's 1000
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the tokenizer has 49408 tokens but the text encoder embeds only 1000" in err
    assert "tokenizer=" in err
    import pilot
    from pilot.commands._inspect import describe_module
    from pilot.weights.hub import resolve

    sd = pilot.load_pipeline(path, tokenizer=resolve("tiny_sd"))  # its 578 tokens fit
    sd.text_encoder(sd.tokenizer(["a red wall"]))  # no IndexError in the embedding
    assert sd.prediction_type == "epsilon"
    summary = describe_module(sd.unet)
    assert summary["params"] == sum(p.numel() for p in unet.parameters())
    assert summary["config"]["block_out_channels"] == unet.cfg.block_out_channels


def test_an_error_in_a_dataloader_worker_is_one_line(capsys):
    import torch
    from torch._utils import ExceptionWrapper

    from pilot.cli import report_errors

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            try:
                raise OSError("image file is truncated")
            except OSError as e:
                raise ValueError("B/x.jpg: not a readable image (image file is truncated)") from e

    def train():
        try:
            Pairs()[0]
        except ValueError:  # what a worker sends and the loader re-raises in the main process
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()

    assert report_errors("pilot train", train) == 2
    err = capsys.readouterr().err
    assert err == "pilot train: error: B/x.jpg: not a readable image (image file is truncated)\n"


def test_ctrl_c_is_one_line_and_exit_status_130(tmp_path):
    """A real SIGINT while `pilot walk` writes: no traceback, no partial video or temp file."""
    import os
    import signal
    import time

    from pilot.models.dcgan import DCGAN_PRESETS, DCGANGenerator
    from pilot.weights.gan import export_generator

    export_generator("dcgan", DCGANGenerator(DCGAN_PRESETS["tiny"]), tmp_path / "g.safetensors")
    out = tmp_path / "walk.mp4"
    argv = ["walk", "--checkpoint", str(tmp_path / "g.safetensors"), "--frames", "20000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "pilot.cli", *argv, "--out", str(out)],
                               stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".walk.*.mp4")):  # the writer has started
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert err.strip() == "pilot walk: interrupted"  # one line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.safetensors"]  # nothing half-made


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["animate", "--model", "m", "--shot", "s", "--prompt", "p", "--out", "o.mp4"],
         "pilot animate: interrupted; rerun the same command to resume"),
        (["conditioner", "apply", "--checkpoint", "c", "--shot", "s", "--out", "folder"],
         "pilot conditioner: interrupted; rerun the same command to resume"),
        (["conditioner", "apply", "--checkpoint", "c", "--shot", "s", "--out", "o.mp4"],
         "pilot conditioner: interrupted"),
        (["demo"], "pilot demo: interrupted; rerun the same command to resume"),
        (["shot", "export", "a.blend", "shot"],
         "pilot shot: interrupted; rerun the same command to resume"),
        (["shot", "export", "a.blend", "shot", "--force"], "pilot shot: interrupted"),
        (["walk", "--checkpoint", "c"], "pilot walk: interrupted"),
    ],
)  # fmt: skip
def test_ctrl_c_says_whether_the_command_resumes(monkeypatch, capsys, argv, line):
    import argparse

    def interrupted(args):
        raise KeyboardInterrupt

    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_interrupt(self, *a, **k):  # the real command's arguments, then a Ctrl-C
        args = parse_args(self, *a, **k)
        if getattr(args, "func", None) is not None:
            args.func = interrupted
        return args

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_interrupt)
    assert main(argv) == 130
    assert capsys.readouterr().err == line + "\n"


def test_every_commands_help_renders(capsys):
    """`pilot X [Y] --help` for every command and subcommand: no argparse error in a help text."""
    import argparse

    from pilot.cli import build_parser

    def commands(parser, prefix=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield (*prefix, name)
                    yield from commands(sub, (*prefix, name))

    helps = {}
    for argv in commands(build_parser()):
        with pytest.raises(SystemExit) as info:
            main([*argv, "--help"])
        assert info.value.code == 0, argv
        helps[argv] = " ".join(capsys.readouterr().out.split())
    assert len(helps) >= 16 and "--frames START:END[:STEP]" in helps[("animate",)]
    assert "the shot's or the video's, else 12" in helps[("conditioner", "apply")]


def test_a_closed_stdout_pipe_ends_quietly(tmp_path):
    """`pilot info | head -0`: the reader is gone before pilot writes; exit 141 (SIGPIPE's) and
    no traceback, as for other command-line tools."""
    read, write = os.pipe()
    os.close(read)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pilot.cli", "info"], stdout=write, stderr=subprocess.PIPE,
            text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    finally:
        os.close(write)
    assert (run.returncode, run.stderr) == (141, "")
