"""Random LoRA state dicts for a pipeline, in the kohya-ss and diffusers / PEFT formats."""

import torch
from torch import Tensor, nn

# The kohya-ss / diffusers prefix of each component's module names.
KOHYA = {"unet": "lora_unet_", "text_encoder": "lora_te_text_model_"}
PEFT = {"unet": "unet.", "text_encoder": "text_encoder.text_model."}


def adapted_layers(sd, components=("unet", "text_encoder")) -> list[tuple[str, str]]:
    """(component, module name) of every linear and conv layer of the pipeline."""
    return [
        (c, n)
        for c in components
        for n, m in getattr(sd, c).named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]


def file_name(fmt: str, component: str, module: str) -> str:
    """The name a LoRA file of format `fmt` ("kohya" or "peft") gives our module."""
    if fmt == "kohya":
        return KOHYA[component] + module.replace(".", "_")
    return PEFT[component] + module


def random_factors(weight: Tensor, rank: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """down (r, in[, k, k]) and up (out, r[, 1, 1]) fitting `weight`; a conv gets a LoCon pair."""
    kernel = [1, 1] if weight.ndim == 4 else []
    down = torch.randn(rank, *weight.shape[1:], generator=g) * 0.1
    up = torch.randn(weight.shape[0], rank, *kernel, generator=g) * 0.1
    return down, up


def random_lora(
    sd, fmt: str, layers=None, *, rank: int = 2, alpha: float | None = None, seed: int = 0
) -> dict[str, Tensor]:
    """A LoRA of `layers` (default all) of `sd`: kohya keys get `.alpha` when `alpha` is given."""
    g = torch.Generator().manual_seed(seed)
    down_up = (".lora_down.weight", ".lora_up.weight")
    if fmt == "peft":
        down_up = (".lora_A.weight", ".lora_B.weight")
    state = {}
    for component, module in layers or adapted_layers(sd):
        weight = getattr(sd, component).get_submodule(module).weight
        name = file_name(fmt, component, module)
        for suffix, factor in zip(down_up, random_factors(weight, rank, g), strict=True):
            state[name + suffix] = factor
        if alpha is not None:
            state[name + ".alpha"] = torch.tensor(float(alpha))
    return state


def expected_delta(state: dict[str, Tensor], name: str, factor: float, shape) -> Tensor:
    """factor * up @ down of one layer, shaped like its weight."""
    suffixes = [(".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight")]
    down_key, up_key = next((name + d, name + u) for d, u in suffixes if name + d in state)
    down, up = state[down_key], state[up_key]
    return (factor * up.flatten(1) @ down.flatten(1)).reshape(shape)
