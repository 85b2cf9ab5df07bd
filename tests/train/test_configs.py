"""The shipped experiment configs parse: every key maps onto a system, data module or callback."""

from pathlib import Path

import pytest

pytest.importorskip("lightning")

from train.cli import run  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.mark.parametrize(
    "system, name",
    [
        ("dcgan", "triangles_dcgan.yaml"),
        ("pix2pix", "hatched_walls_pix2pix.yaml"),
        ("pix2pix", "own_pairs_pix2pix.yaml"),
    ],
)
def test_experiment_config_parses(system, name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(system, ["fit", "--config", str(EXPERIMENTS / name), "--print_config"])
    assert exit_info.value.code == 0
    assert "timelapse:" in capsys.readouterr().out


def test_readme_shot_as_pairs_recipe_trains(tmp_path):
    """README: a shot folder is a pairs folder, with these keys in a copy of own_pairs."""
    import yaml

    from pilot.cli import main

    recipe = {
        "data.root": str(tmp_path / "shot"),
        "data.data.inputs": ["hatched"],
        "data.data.input_channels": [1],
        "data.data.targets": ["image"],
        "model.generator.in_channels": 1,
        "model.discriminator.in_channels": 4,
    }
    readme = " ".join((EXPERIMENTS.parent / "README.md").read_text().split())
    paragraph = readme[readme.index("A shot folder is also a pairs folder") :][:600]
    shown = ["inputs: [hatched]", "input_channels: [1]", "targets: [image]"]
    shown += ["model.generator.in_channels: 1", "model.discriminator.in_channels: 4"]
    assert all(f"`{span}`" in paragraph for span in shown), paragraph
    assert main(["shot", "render", recipe["data.root"], "--frames", "6", "--size", "64", "64"]) == 0
    config = yaml.safe_load((EXPERIMENTS / "own_pairs_pix2pix.yaml").read_text())
    for key, value in recipe.items():
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node[last] = value
    small = {"image_size": 64, "base_channels": 4}
    config["model"]["generator"].update(small)
    config["model"]["discriminator"]["base_channels"] = 4
    config["data"].update(val_count=2, num_workers=0)
    config["data"]["data"].update(image_size=64, load_size=64)
    config["trainer"].update(default_root_dir=str(tmp_path / "run"), accelerator="cpu")
    for group in ("timelapse", "checkpoint"):
        config[group]["dirpath"] = str(tmp_path / "run" / group)
    config["wandb"] = "disabled"
    path = tmp_path / "shot_pairs.yaml"
    path.write_text(yaml.safe_dump(config))
    assert (
        main(["train", "pix2pix", "--config", str(path), "--fast-dev-run", "--threads", "1"]) == 0
    )
