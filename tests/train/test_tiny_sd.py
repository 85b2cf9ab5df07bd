"""Smoke tests of the tiny SD stages: VAE, UNet + text encoder, depth ControlNet, each a step or
two at 32 px, exported in the diffusers layout and loaded back by `pilot` to generate."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

pytest.importorskip("lightning")

import pilot  # noqa: E402
from pilot.diffusion.control import Control  # noqa: E402
from pilot.diffusion.pipeline import Request, SamplingSettings, generate  # noqa: E402
from tests.train.helpers import write_yaml  # noqa: E402
from train.cli import run  # noqa: E402
from train.tiny_sd import YCBCR, recon_l1  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32


def stage_config(root, stage: str, model: dict, **trainer) -> dict:
    """A stage at 32 px on 4 training and 2 held-out renders, batch 2."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(root / stage),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **trainer,
        },
        "model": {"export_dir": str(root / "export" / stage), "timelapse_inputs": 2, **model},
        "data": {"size": SIZE, "count": 4, "val_count": 2, "batch_size": 2},
        "timelapse": {"every_n_steps": 1, "dirpath": str(root / stage / "timelapse")},
        "checkpoint": {"dirpath": str(root / stage / "ckpt"), "save_last": True},
        "wandb": "disabled",
    }


VAE = {"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 2}
UNET = {
    "block_out_channels": [16, 16],
    "cross_attention_dim": 16,
    "num_heads": 2,
    "norm_num_groups": 4,
    "sample_size": SIZE // 8,
}
TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2}
DIFFUSION = {"timelapse_steps": 2, "timelapse_cfg": 2.0}


def fit(root, system: str, cfg: dict, *extra: str):
    path = write_yaml(root / f"{system}.yaml", cfg)
    return run(system, ["fit", "--config", str(path), *extra])


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """The three stages run in order (VAE one step, UNet two steps, ControlNet one step; the
    VAE's last.ckpt is read by the anneal tests, so it is a real step, not a fast_dev_run)."""
    root = tmp_path_factory.mktemp("tiny_sd")
    vae = fit(root, "tiny_sd_vae", stage_config(root, "vae", {"vae": VAE}, max_steps=1))
    model = {
        "vae": str(root / "export" / "vae"),
        "unet": UNET,
        "text_encoder": TEXT,
        "prediction_type": "v_prediction",  # the tiny SD's; the ControlNet stage inherits it
        **DIFFUSION,
    }
    unet = fit(root, "tiny_sd_unet", stage_config(root, "unet", model, max_steps=2))
    model = {"pipeline": str(root / "export" / "unet"), "hint_channels": [8, 8, 8, 8], **DIFFUSION}
    cnet = fit(root, "tiny_sd_controlnet", stage_config(root, "cnet", model, fast_dev_run=True))
    return root, vae, unet, cnet


def test_vae_stage_exports_with_measured_latent_scale(stages):
    root, vae, _, _ = stages
    assert vae.trainer.global_step == 1
    loaded = pilot.load_vae(root / "export" / "vae")
    assert loaded.cfg.downsample_factor == 8 and loaded.cfg.latent_channels == 4
    assert loaded.cfg.scaling_factor == vae.model.vae.cfg.scaling_factor != 0.18215
    assert (root / "vae" / "timelapse" / "timelapse.gif").is_file()


def test_two_step_unet_export_loads_and_generates(stages):
    root, _, unet, _ = stages
    assert unet.trainer.global_step == 2
    frames = sorted((root / "unet" / "timelapse" / "frames").glob("*.png"))
    assert [p.stem for p in frames] == ["00000000", "00000001", "00000002"]
    assert len(unet.trainer.callbacks[0].history["mse"]) == 2  # drawn as a loss curve
    sd = pilot.load_pipeline(root / "export" / "unet")
    assert sd.prediction_type == "v_prediction"
    trained = unet.model.unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in sd.unet.state_dict().items())
    cap = "red brick corridor, thick blue fog"
    assert len(sd.tokenizer.encode(cap)) == 7  # the caption tokenizer came along
    request = Request(prompts=[cap], seeds=[0], width=SIZE, height=SIZE)
    image = generate(sd, request, SamplingSettings(sampler="euler", steps=2, cfg=2.0))
    assert image.shape == (1, 3, SIZE, SIZE) and torch.isfinite(image).all()
    again = generate(sd, request, SamplingSettings(sampler="euler", steps=2, cfg=2.0))
    assert torch.equal(image, again)


def test_v_target_recovers_the_clean_latents():
    from train.tiny_sd_diffusion import diffusion_target, noise_latents

    torch.manual_seed(0)
    ac = torch.linspace(0.99, 0.01, 10)
    x0 = torch.randn(6, 4, 2, 2)
    x_t, t, eps = noise_latents(x0, ac)
    v = diffusion_target(x0, eps, t, ac, "v_prediction")
    a = ac[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(a.sqrt() * x_t - (1 - a).sqrt() * v, x0)  # x_0 from (x_t, v)
    torch.testing.assert_close(a.sqrt() * v + (1 - a).sqrt() * x_t, eps)  # eps from (x_t, v)
    assert diffusion_target(x0, eps, t, ac, "epsilon") is eps
    with pytest.raises(ValueError, match="sample"):
        diffusion_target(x0, eps, t, ac, "sample")


def test_unet_stage_encodes_each_item_once(stages):
    _, _, unet, _ = stages
    system = unet.model
    assert sorted(system.moments) == [0, 1, 2, 3]  # the 4 training items seen in 2 steps
    images = torch.zeros(2, 3, SIZE, SIZE)
    post = system.sd.vae.encode(images)
    mean, std = system.moments[0]
    assert not torch.equal(mean, post.mean[0])  # item 0 is a render, not zeros: kept, not redone
    torch.manual_seed(0)
    z = system.latents(images, torch.tensor([0, 0]))
    torch.manual_seed(0)
    expected = (mean + std * torch.randn(2, *mean.shape)) * system.sd.scaling_factor
    torch.testing.assert_close(z, expected)
    uncached = system.latents(images)  # no index: encoded now
    assert uncached.shape == z.shape


def test_controlnet_stage_exports_and_controls(stages):
    root, _, unet, cnet = stages
    assert cnet.trainer.global_step == 1
    sd = pilot.load_pipeline(root / "export" / "unet")
    controlnet = pilot.load_controlnet(root / "export" / "cnet")
    trained = cnet.model.controlnet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in controlnet.state_dict().items())
    # the frozen UNet was not touched by the ControlNet stage
    assert all(
        torch.equal(v, sd.unet.state_dict()[k]) for k, v in cnet.model.unet.state_dict().items()
    )
    control = cnet.datamodule.val_set[0]["control"][None]
    request = Request(
        prompts=["grey plaster room, thin white fog"], seeds=[0], width=SIZE, height=SIZE
    )
    settings = SamplingSettings(sampler="euler", steps=2, cfg=2.0)
    image = generate(sd, request, settings, controls=[Control(controlnet, control)])
    assert image.shape == (1, 3, SIZE, SIZE) and torch.isfinite(image).all()
    assert cnet.trainer.callbacks[0].last_frame is not None  # fast_dev_run: drawn, not written


def test_unet_stage_resumes_from_last_checkpoint(stages, tmp_path):
    root = stages[0]
    model = {
        "vae": str(root / "export" / "vae"),
        "unet": UNET,
        "text_encoder": TEXT,
        "prediction_type": "v_prediction",  # the tiny SD's; the ControlNet stage inherits it
        **DIFFUSION,
    }
    cfg = stage_config(tmp_path, "unet", model, max_steps=3)
    cfg["timelapse"]["every_n_steps"] = 10  # no sampling: this test is about resuming
    fit(tmp_path, "tiny_sd_unet", cfg)
    last = tmp_path / "unet" / "ckpt" / "last.ckpt"
    assert last.is_file()
    cli = fit(tmp_path, "tiny_sd_unet", cfg, "--trainer.max_steps", "4", "--ckpt_path", str(last))
    assert cli.trainer.global_step == 4


def test_resumed_unet_stage_loads_the_vae_from_its_source_and_refuses_another(stages, tmp_path):
    import shutil

    from pilot.weights.save import save_vae
    from train.frozen import FROZEN_SHA256

    root = stages[0]
    vae_dir = tmp_path / "vae"
    shutil.copytree(root / "export" / "vae", vae_dir)
    model = {"vae": str(vae_dir), "unet": UNET, "text_encoder": TEXT, **DIFFUSION}
    cfg = stage_config(tmp_path, "unet", model, max_steps=1)
    cfg["timelapse"]["every_n_steps"] = 10  # no sampling: this test is about resuming
    fit(tmp_path, "tiny_sd_unet", cfg)
    last = tmp_path / "unet" / "ckpt" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert not [k for k in ckpt["state_dict"] if k.startswith("vae.")]  # loaded from vae_dir
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"unet", "text_encoder"}
    old = {**ckpt, "state_dict": {**ckpt["state_dict"]}}
    del old[FROZEN_SHA256]  # a checkpoint from before: the frozen VAE's weights inside
    vae = pilot.load_vae(vae_dir)
    old["state_dict"].update({f"vae.{k}": v for k, v in vae.state_dict().items()})
    torch.save(old, tmp_path / "old.ckpt")
    resumed = fit(tmp_path, "tiny_sd_unet", cfg, "--trainer.max_steps", "2",
                  "--ckpt_path", str(tmp_path / "old.ckpt"))  # fmt: skip
    assert resumed.trainer.global_step == 2
    with torch.no_grad():  # the VAE stage trained on and exported again
        vae.decoder.conv_out.bias.add_(0.1)
    save_vae(vae, vae_dir, overwrite=True)
    for path in (last, tmp_path / "old.ckpt"):
        with pytest.raises(ValueError, match=f"{path} was trained against other frozen weights "
                           f"than model.vae={vae_dir} holds now"):  # fmt: skip
            fit(tmp_path, "tiny_sd_unet", cfg, "--trainer.max_steps", "3", "--ckpt_path", str(path))


def test_controlnet_checkpoint_leaves_the_frozen_models_out(stages):
    from train.frozen import FROZEN_SHA256

    system = stages[3].model
    checkpoint = {"state_dict": system.state_dict()}
    system.on_save_checkpoint(checkpoint)
    assert {k.split(".")[0] for k in checkpoint["state_dict"]} == {"controlnet"}
    assert len(checkpoint[FROZEN_SHA256]) == 64


def test_rerunning_a_finished_stage_writes_its_export_again(tmp_path):
    import shutil

    cfg = stage_config(tmp_path, "vae", {"vae": VAE}, max_steps=1)
    cfg["timelapse"]["every_n_steps"] = 10  # no drawing: this test is about the export
    fit(tmp_path, "tiny_sd_vae", cfg)
    export = tmp_path / "export" / "vae"
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    shutil.rmtree(export)  # lost
    last = str(tmp_path / "vae" / "ckpt" / "last.ckpt")
    cli = fit(tmp_path, "tiny_sd_vae", cfg, "--ckpt_path", last)
    assert cli.trainer.global_step == 1  # nothing trained: the loop was skipped
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before


def test_ckpt_path_of_another_stage_or_an_export_is_a_one_line_error(stages, tmp_path):
    root = stages[0]
    model = {"vae": str(root / "export" / "vae"), "unet": UNET, "text_encoder": TEXT}
    cfg = stage_config(tmp_path, "unet", model, max_steps=1)
    vae_ckpt = root / "vae" / "ckpt" / "last.ckpt"
    with pytest.raises(ValueError, match=f"^ckpt_path={vae_ckpt} is a tiny_sd_vae checkpoint, "
                       "not tiny_sd_unet$"):  # fmt: skip
        fit(tmp_path, "tiny_sd_unet", cfg, "--ckpt_path", str(vae_ckpt))
    old = torch.load(vae_ckpt, weights_only=True)
    del old["pilot_system"]  # a checkpoint from before the name was recorded
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match="not a checkpoint of this system: it holds vae weights, "
                       "TextToImageSystem trains text_encoder, unet"):  # fmt: skip
        fit(tmp_path, "tiny_sd_unet", cfg, "--ckpt_path", str(tmp_path / "old.ckpt"))
    export = root / "export" / "vae" / "diffusion_pytorch_model.safetensors"
    vae_cfg = stage_config(tmp_path, "vae", {"vae": VAE})
    with pytest.raises(ValueError, match=f"ckpt_path={export}: not a Lightning training"):
        fit(tmp_path, "tiny_sd_vae", vae_cfg, "--ckpt_path", str(export))


def test_vae_anneal_starts_from_the_stage_weights_and_decays(stages, tmp_path):
    root, vae, _, _ = stages
    last = root / "vae" / "ckpt" / "last.ckpt"
    model = {"vae": VAE, "init_from": str(last), "lr_schedule": "cosine", "lr": 1e-3}
    cfg = stage_config(tmp_path, "vae_anneal", model, max_steps=2)
    cfg["model"]["export_dir"] = None
    cli = fit(tmp_path, "tiny_sd_vae", cfg)
    opt = cli.trainer.optimizers[0]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)  # cosine end: 1% of lr
    from train.tiny_sd import initial_weights

    start = initial_weights(str(last))
    assert all(torch.equal(v, vae.model.vae.state_dict()[k]) for k, v in start.items())
    assert set(start) == set(cli.model.vae.state_dict())
    assert initial_weights(str(root / "export" / "vae")).keys() == start.keys()
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        initial_weights(str(tmp_path / "nope.ckpt"))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(last.read_bytes()[:1000])  # truncated, as a full disk leaves it
    with pytest.raises(ValueError, match=f"^init_from={corrupt}: not a readable torch checkpoint"):
        initial_weights(str(corrupt))


def test_anneal_resumed_with_more_steps_ends_at_the_minimum(tmp_path):
    model = {"vae": VAE, "lr_schedule": "cosine", "lr": 1e-3, "export_dir": None}
    cfg = stage_config(tmp_path, "vae_anneal", model, max_steps=2)
    cfg["timelapse"]["every_n_steps"] = 10  # no drawing: this test is about the schedule
    first = fit(tmp_path, "tiny_sd_vae", cfg)
    assert first.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-5)
    last = str(tmp_path / "vae_anneal" / "ckpt" / "last.ckpt")
    cli = fit(tmp_path, "tiny_sd_vae", cfg, "--trainer.max_steps", "4", "--ckpt_path", last)
    assert cli.trainer.global_step == 4
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-5)


def test_unet_anneal_starts_from_the_stage_weights_and_decays(stages, tmp_path):
    root, _, unet, _ = stages
    last = root / "unet" / "ckpt" / "last.ckpt"
    model = {
        "vae": str(root / "export" / "vae"), "unet": UNET, "text_encoder": TEXT,
        "prediction_type": "v_prediction", **DIFFUSION,
        "init_from": str(last), "lr_schedule": "cosine", "lr": 1e-3, "export_dir": None,
    }  # fmt: skip
    cfg = stage_config(tmp_path, "unet_anneal", model, max_steps=2)
    cfg["timelapse"]["every_n_steps"] = 10  # no sampling
    from pilot.models.unet import UNetConfig
    from train.tiny_sd_diffusion import TextEncoderSize, TextToImageSystem

    def system(**changes):
        args = {**cfg["model"], "unet": UNetConfig(**UNET), "text_encoder": TextEncoderSize(**TEXT)}
        return TextToImageSystem(**{**args, **changes})

    start = system()
    for name in ("unet", "text_encoder"):  # the stage's trained weights, not a fresh init
        trained = getattr(unet.model, name).state_dict()
        assert all(torch.equal(v, trained[k]) for k, v in getattr(start, name).state_dict().items())
    cli = fit(tmp_path, "tiny_sd_unet", cfg)
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="no 'unet.\\*' weights"):
        system(init_from=str(root / "vae" / "ckpt" / "last.ckpt"))


def test_preview_decoder_distils_the_stage_vae(stages, tmp_path):
    root = stages[0]
    teacher = str(root / "export" / "vae")
    model = {"teacher": teacher, "decoder": {"channels": 8, "blocks": 1}, "lr": 1e-3}
    cfg = stage_config(tmp_path, "preview", model, max_steps=2, val_check_interval=1)
    cli = fit(tmp_path, "preview_decoder", cfg)
    assert cli.trainer.global_step == 2
    assert "val/psnr_teacher" in cli.trainer.callback_metrics
    from pilot.models.preview import load_preview_decoder, vae_fingerprint

    preview = load_preview_decoder(tmp_path / "export" / "preview")
    assert preview.teacher_vae == vae_fingerprint(pilot.load_vae(teacher))
    trained = cli.model.student.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in preview.state_dict().items())
    assert (tmp_path / "preview" / "timelapse" / "frames").is_dir()
    from experiments.tiny_sd import evaluate_preview

    out = tmp_path / "preview.json"
    argv = [teacher, str(tmp_path / "export" / "preview"), "--count", "4", "--size", str(SIZE)]
    evaluate_preview.main([*argv, "--batch", "2", "--large", "64", "--out", str(out)])
    figures = json.loads(out.read_text())
    assert figures["items"] == [2064, 2067] and figures["ms_preview_large"] > 0
    assert 0 < figures["psnr_preview_vs_teacher"] < 100
    bad = {**model, "decoder": {"channels": 8, "upsamples": 2}}
    with pytest.raises(ValueError, match="factor 4 and 4 latent channels, but the teacher"):
        fit(tmp_path, "preview_decoder", stage_config(tmp_path, "preview", bad, fast_dev_run=True))


def test_preview_decoder_resumes_on_its_teacher_only_and_exports_again(stages, tmp_path):
    import shutil

    from pilot.weights.save import save_vae
    from train.frozen import FROZEN_SHA256

    teacher = tmp_path / "teacher"
    shutil.copytree(stages[0] / "export" / "vae", teacher)
    model = {"teacher": str(teacher), "decoder": {"channels": 8, "blocks": 1}}
    cfg = stage_config(tmp_path, "preview", model, max_steps=1)
    cfg["timelapse"]["every_n_steps"] = 10  # no drawing: this test is about resuming
    fit(tmp_path, "preview_decoder", cfg)
    last = tmp_path / "preview" / "ckpt" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"student"}  # teacher: from its folder
    assert len(ckpt[FROZEN_SHA256]) == 64
    export = tmp_path / "export" / "preview"
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    shutil.rmtree(export)  # lost: a finished run rerun writes it again
    assert fit(tmp_path, "preview_decoder", cfg, "--ckpt_path", str(last)).trainer.global_step == 1
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before
    vae = pilot.load_vae(teacher)
    with torch.no_grad():  # the teacher was trained on since
        vae.decoder.conv_out.bias.add_(0.1)
    save_vae(vae, teacher, overwrite=True)
    with pytest.raises(ValueError, match=f"than model.teacher={teacher} holds now"):
        fit(tmp_path, "preview_decoder", cfg, "--trainer.max_steps", "2", "--ckpt_path", str(last))


def test_ship_writes_float16_weights_and_a_model_card(stages, tmp_path):
    from experiments.tiny_sd import ship

    root, runs = stages[0], tmp_path / "runs"
    (runs / "export").mkdir(parents=True)
    (runs / "export" / "pipeline").symlink_to(root / "export" / "unet")
    (runs / "export" / "controlnet_depth").symlink_to(root / "export" / "cnet")
    logs = {  # stage: CSV rows as the CSV logger writes them (training and validation apart)
        "vae": "epoch,l1,step,val/psnr,val/colour_spread,val/colour_spread_true\n"
        "0,0.5,9,,,\n0,,9,24.5,0.14,0.15\n",
        "unet": "epoch,loss,step\n0,0.4,19\n0,0.3,39\n",
        "unet_anneal": "epoch,loss,step\n0,0.25,9\n",
        "controlnet": "epoch,loss,step\n0,0.2,4\n",
    }  # no vae_anneal: optional
    for stage, text in logs.items():
        (runs / stage / "csv" / "version_0").mkdir(parents=True)
        (runs / stage / "csv" / "version_0" / "metrics.csv").write_text(text)
    ship.main([str(runs), "--out", str(tmp_path / "out")])
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert "- vae: 10 steps, final l1 0.5000, held-out PSNR 24.50 dB" in card
    assert "- unet: 40 steps, final loss 0.3500" in card
    assert "- unet_anneal: 10 steps" in card and "vae_anneal" not in card
    pilot.load_pipeline(tmp_path / "out" / "pipeline")  # loads
    unet_file = tmp_path / "out" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(unet_file), "pt") as f:  # the shipped files hold float16
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    (runs / "unet" / "csv" / "version_0" / "metrics.csv").write_text("epoch,loss,step\n")
    with pytest.raises(FileNotFoundError, match=r"unet/csv/\*/metrics.csv: no 'loss' rows"):
        ship.main([str(runs), "--out", str(tmp_path / "out")])


def test_ship_on_a_run_without_logs_is_a_one_line_error(tmp_path):
    command = [sys.executable, "-m", "experiments.tiny_sd.ship", str(tmp_path), "--out", "x"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"ship: error: {tmp_path}/vae/csv/*/metrics.csv: no 'l1' rows")


def test_stage_configs_are_checked(tmp_path):
    model = {"vae": str(tmp_path), "unet": UNET, "text_encoder": {**TEXT, "hidden_size": 32}}
    with pytest.raises(ValueError, match="cross_attention_dim=16 must equal"):
        fit(tmp_path, "tiny_sd_unet", stage_config(tmp_path, "unet", model, fast_dev_run=True))
    grey = {"vae": {**VAE, "norm_num_groups": 8}}  # one channel per group: colour erased
    with pytest.raises(ValueError, match="overall colour"):
        fit(tmp_path, "tiny_sd_vae", stage_config(tmp_path, "vae", grey, fast_dev_run=True))
    with pytest.raises(ValueError, match="chroma_weight=0"):
        fit(tmp_path, "tiny_sd_vae", stage_config(tmp_path, "vae", {"chroma_weight": 0}))
    bad = {"vae": {**VAE, "block_out_channels": [8, 8, 8]}}
    with pytest.raises(ValueError, match="f=8 and 4 latent channels"):
        fit(tmp_path, "tiny_sd_vae", stage_config(tmp_path, "vae", bad, fast_dev_run=True))


def test_train_cli_reports_errors_in_one_line_naming_the_stage_to_run_first(tmp_path, capsys):
    from train.cli import main

    missing = tmp_path / "export" / "vae"
    model = {"vae": str(missing), "unet": UNET, "text_encoder": TEXT}
    path = write_yaml(tmp_path / "c.yaml", stage_config(tmp_path, "unet", model, max_steps=1))
    assert main(["tiny_sd_unet", "fit", "--config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert not [line for line in lines if "Traceback" in line]
    err = lines[-1]
    assert err.startswith(f"train.cli tiny_sd_unet: error: model.vae: {missing}: no such")
    assert err.endswith("the tiny_sd_vae stage exports it: train that first "
                        "(experiments/tiny_sd/train.sh runs the stages in order)")  # fmt: skip


def test_a_stage_checkpoint_as_model_vae_is_named_as_such(stages, tmp_path):
    root = stages[0]
    last = root / "vae" / "ckpt" / "last.ckpt"
    model = {"vae": str(last), "unet": UNET, "text_encoder": TEXT}
    cfg = stage_config(tmp_path, "unet", model, fast_dev_run=True)
    with pytest.raises(ValueError, match=f"^model.vae: {last}: a training checkpoint, not "):
        fit(tmp_path, "tiny_sd_unet", cfg)


def test_chroma_l1_weighs_colour_apart_from_luminance():
    images = torch.rand(2, 3, 4, 4) * 2 - 1
    grey = torch.full((2, 3, 4, 4), 0.25)  # equal R, G, B error: luminance only
    for w in (None, 1.0, 4.0):
        assert recon_l1(images + grey, images, w).item() == pytest.approx(0.25 / (3 if w else 1))
    cb = torch.linalg.inv(torch.tensor(YCBCR))[:, 1]  # RGB of a unit Cb, no Y or Cr
    colour = 0.1 * cb[None, :, None, None].expand(2, 3, 4, 4)
    assert recon_l1(images + colour, images, 4.0) == pytest.approx(
        4 * recon_l1(images + colour, images, 1.0)
    )


def test_rgb_l1_has_no_colour_gradient_under_a_larger_luminance_error():
    """Why the tiny VAE decoded grey: while the luminance error is larger, the RGB L1 gives a
    change of colour at constant R + G + B no gradient; the Y Cb Cr L1 does."""
    target = torch.tensor([0.1, -0.1, 0.0])[None, :, None, None].expand(1, 3, 2, 2)  # coloured
    red_not_green = torch.tensor([1.0, -1.0, 0.0])
    for w, has_gradient in ((None, False), (1.0, True)):
        a = torch.zeros((), requires_grad=True)  # how much redder than green the output is
        recon = 0.5 + a * red_not_green[None, :, None, None]  # too bright by 0.5, grey
        recon_l1(recon, target, w).backward()
        assert (a.grad.abs() > 0.01) == has_gradient, (w, a.grad)


@pytest.mark.parametrize(
    "stage", ["vae", "vae_anneal", "unet", "unet_anneal", "controlnet", "preview"]
)
def test_experiment_configs_parse(stage, capsys):
    """experiments/tiny_sd/<stage>.yaml maps onto the system's dataclasses (unknown keys fail)."""
    config = f"experiments/tiny_sd/{stage}.yaml"
    system = "preview_decoder" if stage == "preview" else f"tiny_sd_{stage.removesuffix('_anneal')}"
    with pytest.raises(SystemExit) as done:
        run(
            system,
            ["fit", "--config", config, "--print_config"],
        )
    assert done.value.code in (0, None)
    assert "export_dir: runs/tiny_sd/export/" in capsys.readouterr().out


def test_unknown_config_key_is_rejected(tmp_path):
    cfg = stage_config(tmp_path, "vae", {"vae": {**VAE, "blocks": 3}}, fast_dev_run=True)
    with pytest.raises(ValueError, match="does not accept option 'model.vae.blocks'"):
        fit(tmp_path, "tiny_sd_vae", cfg)


def test_pilot_train_offers_every_system(capsys):
    from pilot.cli import main
    from train.cli import SYSTEMS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    usage = capsys.readouterr().out
    assert all(name in usage for name in SYSTEMS)


def test_evaluate_reports_the_acceptance_measures(stages):
    from experiments.tiny_sd.evaluate import evaluate

    root, _, _, _ = stages
    sd = pilot.load_pipeline(root / "export" / "unet")
    controlnet = pilot.load_controlnet(root / "export" / "cnet")
    settings = SamplingSettings(sampler="euler", steps=2, cfg=2.0)
    m = evaluate(sd, controlnet, count=3, size=SIZE, seed=0, start=10, settings=settings, batch=2)
    assert m["count"] == 3 and m["vae_psnr"] > 0
    assert 0 <= m["colour_match"] <= 1 and m["colour_match_renders"] == 1  # captions as seen
    assert 0 <= m["colour_match_non_grey"] <= 1 and 0 <= m["non_grey_count"] <= m["count"]
    assert -1 <= m["edge_corr"] <= 1 and -1 <= m["edge_corr_chance"] <= 1
