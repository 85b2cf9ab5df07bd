"""LoRA (Hu et al. 2021, "Low-Rank Adaptation") merged into a Stable Diffusion 1.x / 2.x pipeline.

A LoRA stores, per adapted layer of weight W (out, in), a `down` (r, in) and an `up` (out, r)
factor and optionally an `alpha`; applying it at `scale` is

    W += scale * alpha / r * up @ down

Convolutions ("LoCon") have a `down` conv (r, in, k, k) and a 1x1 `up` (out, r, 1, 1), whose
product is the (out, in, k, k) delta. Two file formats are read:

- kohya-ss / A1111: `lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha` and
  `lora_te_<module>...`, the module's dotted name written with `_`: diffusers names
  (`down_blocks_0_attentions_0_proj_in`), for the UNet also the original ldm names
  (`input_blocks_1_1_proj_in`, mapped by `pilot.weights.sd_keys`). Without `.alpha`, alpha = r.
- diffusers / PEFT: `unet.<module>.lora_A.weight` (down), `.lora_B.weight` (up) and
  `text_encoder.text_model.<module>...`; alphas from the safetensors metadata
  `lora_adapter_metadata` that diffusers writes (`lora_alpha`, `alpha_pattern`, `use_rslora`),
  else alpha = r as diffusers assumes.

Design: the LoRA is merged into the weights in place, so sampling costs nothing extra.
`apply_lora` returns an `AppliedLoRA` holding the (small) factors, not a copy of the weights:
`set_scale` adds the difference of the two deltas and `remove` is `set_scale(0)`. In float32 that
restores the weights up to float rounding (~1e-7 relative); in float16 / bfloat16 each change
rounds the weights once more (at most one step of their precision). LoRAs stack in any order.
Apply LoRAs before `pilot.diffusion.speed.optimize` (a compiled model may hold copies of the
weights); a prepacked convolution's packed copy is dropped whenever its weights change here.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pilot.nn.resnet import Conv2d
from pilot.weights import sd_original
from pilot.weights.io import WeightsError, _listing, describe_state_dict, read_checkpoint
from pilot.weights.sd_keys import UNetLayout, unmap_unet_key

__all__ = ["LoRA", "AppliedLoRA", "LoRAFactors", "apply_lora", "read_lora"]

# Key suffix -> factor, for both formats.
_SUFFIXES = {
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".alpha": "alpha",
}
# Parts of other adapter kinds, refused by name (LyCORIS, DoRA, PEFT options pilot does not merge).
_OTHER_KINDS = {
    "hada_w": "LyCORIS LoHa",
    "lokr_w": "LyCORIS LoKr",
    "lora_mid": "LyCORIS LoCon with a Tucker (lora_mid) factor",
    "dora_scale": "DoRA",
    "lora_magnitude_vector": "DoRA",
    "lora_B.bias": "PEFT LoRA with bias (lora_bias)",
    "lora_embedding_": "PEFT LoRA of an embedding",
}
_SDXL_PREFIXES = ("lora_te1_", "lora_te2_", "text_encoder_2.", "lora_unet_label_emb")
# Width of the cross-attention context (attn2.to_k's input), the usual tell of a LoRA's base.
_BASES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
_COMPONENTS = ("unet", "text_encoder")
_METADATA_KEY = "lora_adapter_metadata"  # diffusers' JSON of the PEFT LoraConfig per component


@dataclass(frozen=True)
class LoRAFactors:
    """One adapted layer: `down` (r, in) or (r, in, k, k), `up` (out, r) or (out, r, 1, 1) and
    the multiplier `alpha / r` (or `alpha / sqrt(r)`, rsLoRA) as `factor`, with that `alpha`
    (None where not given)."""

    down: Tensor
    up: Tensor
    factor: float
    alpha: float | None = None

    def delta(self, device: torch.device | None = None) -> Tensor:
        """`factor * up @ down` in float32, shaped (out, in, *kernel)."""
        down = self.down.to(device=device, dtype=torch.float32)
        up = self.up.to(device=device, dtype=torch.float32)
        product = up.flatten(1) @ down.flatten(1)  # (out, in * k * k)
        return (self.factor * product).reshape(up.shape[0], *down.shape[1:])


@dataclass(frozen=True)
class LoRA:
    """A LoRA file read by `read_lora`: factors keyed by the file's module names.

    Attributes:
        source: the file (or "<state dict>"), named in messages.
        layers: module name in the file (key without its factor suffix) -> factors.
    """

    source: str
    layers: dict[str, LoRAFactors]


def read_lora(
    lora: str | os.PathLike | Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> LoRA:
    """Read a kohya-ss / A1111 or diffusers / PEFT LoRA (module docstring); no model needed.

    Args:
        lora: a `.safetensors` (or tensors-only `.ckpt` / `.pt`) file, or its state dict.
        metadata: the safetensors metadata of a state dict (a file's is read from it).

    Raises:
        WeightsError: naming the file: no LoRA weights, an SDXL LoRA, another adapter kind
            (LoHa, LoKr, DoRA), a module without its down or up factor, or unknown keys.
    """
    if isinstance(lora, Mapping):
        source, tensors, metadata = "<state dict>", dict(lora), dict(metadata or {})
    else:
        ckpt = read_checkpoint(lora)
        source, tensors, metadata = str(lora), ckpt.tensors, ckpt.metadata
    everything = tensors
    full = sd_original.is_original(tensors)
    if full:  # a full checkpoint with LoRA keys beside its components (`load_pipeline` warns)
        tensors = {k: tensors[k] for k in sd_original.unused_keys(tensors) if k.startswith("lora_")}
    _refuse_other_kinds(tensors, source)
    parts: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, value in tensors.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            unknown.append(key)
        else:
            parts.setdefault(key[: -len(suffix)], {})[_SUFFIXES[suffix]] = value
    if not parts:
        looks = describe_state_dict(everything)
        if sd_original.has_component(everything, "unet"):
            looks = "it is a full Stable Diffusion model: pass it as the model"
        elif "LoRA" in looks:  # LoRA-like names, but none of the factors read here
            looks = f"keys: {_listing(list(tensors), 3)}"
        raise WeightsError(
            f"{source}: holds no LoRA factors (.lora_down/.lora_up or .lora_A/.lora_B .weight; "
            f"{looks})"
        )
    if unknown:
        raise WeightsError(
            f"{source}: {len(unknown)} keys are not LoRA factors (lora_down/lora_up/alpha, "
            f"lora_A/lora_B): {_listing(unknown, 5)}"
        )
    peft = _peft_alphas(metadata, source)
    layers = {name: _factors(name, p, peft, source) for name, p in parts.items()}
    return LoRA(source, layers)


def _refuse_other_kinds(tensors: Mapping[str, Tensor], source: str) -> None:
    for key in tensors:
        if key.startswith(_SDXL_PREFIXES):
            raise WeightsError(
                f"{source}: an SDXL LoRA (key {key}); pilot runs SD 1.x / 2.x models only"
            )
        kind = next((v for k, v in _OTHER_KINDS.items() if k in key), None)
        if kind is not None:
            raise WeightsError(
                f"{source}: {kind} weights (key {key}); pilot applies LoRA and LoCon only"
            )


def _factors(
    name: str, parts: Mapping[str, Tensor], peft: Mapping[str, Any], source: str
) -> LoRAFactors:
    missing = [f for f in ("down", "up") if f not in parts]
    if missing:
        raise WeightsError(f"{source}: {name} has no {' or '.join(missing)} factor")
    down, up = parts["down"], parts["up"]
    if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
        raise WeightsError(
            f"{source}: {name}: down {tuple(down.shape)} and up {tuple(up.shape)} are not the "
            "factors of one LoRA layer (down (r, in[, k, k]), up (out, r[, 1, 1]))"
        )
    if up.ndim == 4 and tuple(up.shape[2:]) != (1, 1):
        raise WeightsError(
            f"{source}: {name}: up factor {tuple(up.shape)} has a {up.shape[2]}x{up.shape[3]} "
            "kernel; pilot merges LoCon with a 1x1 up factor only"
        )
    rank = down.shape[0]
    if "alpha" in parts:
        if parts["alpha"].numel() != 1:
            raise WeightsError(f"{source}: {name}.alpha has shape {tuple(parts['alpha'].shape)}")
        alpha, rs = float(parts["alpha"]), False
    else:
        alpha, rs = _peft_alpha(name, peft, rank)
    return LoRAFactors(down, up, alpha / (math.sqrt(rank) if rs else rank), alpha)


def _peft_alphas(metadata: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Per component, the PEFT LoraConfig fields diffusers stores in the safetensors metadata."""
    text = metadata.get(_METADATA_KEY)
    if not text:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{source}: metadata {_METADATA_KEY} is not JSON: {e}") from None
    out: dict[str, dict[str, Any]] = {}
    for key, value in config.items():
        component, _, field = key.partition(".")
        out.setdefault(component, {})[field] = value
    for component, fields in out.items():
        if fields.get("use_dora"):
            raise WeightsError(
                f"{source}: DoRA weights ({component}.use_dora); pilot applies LoRA and LoCon only"
            )
    return out


def _peft_alpha(name: str, peft: Mapping[str, Any], rank: int) -> tuple[float, bool]:
    """(alpha, rsLoRA) of a PEFT module: its `alpha_pattern` entry, `lora_alpha`, else rank."""
    component, _, module = name.partition(".")
    fields = peft.get(component)
    if not fields:
        return float(rank), False
    alpha = fields.get("lora_alpha", rank)
    for pattern, value in (fields.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):  # how PEFT matches its patterns
            alpha = value
            break
    return float(alpha), bool(fields.get("use_rslora"))


class AppliedLoRA:
    """A LoRA merged into a pipeline's weights (`apply_lora`); re-weight or remove it in place.

    Attributes:
        source: the LoRA file, as `read_lora` names it.
        scale: the scale now merged (0 once removed).
        modules: `(component, module name)` of every adapted layer.
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        targets: dict[tuple[str, str], LoRAFactors],
        source: str,
    ) -> None:
        self.source = source
        self.scale = 0.0
        self._models = dict(models)
        self._targets = targets

    @property
    def modules(self) -> list[tuple[str, str]]:
        return list(self._targets)

    @torch.no_grad()
    def set_scale(self, scale: float) -> None:
        """Merge the LoRA at `scale` instead of the current one: W += (new - old) * delta."""
        scale = _check_scale(scale, self.source)
        change = scale - self.scale
        if change == 0:
            return
        for (component, name), factors in self._targets.items():
            module = self._models[component].get_submodule(name)
            weight = module.weight
            delta = factors.delta(weight.device).reshape(weight.shape)
            weight.copy_((weight.float() + change * delta).to(weight.dtype))
            if isinstance(module, Conv2d):  # a prepacked copy may not see the change
                module.weights_changed()
        self.scale = scale

    def remove(self) -> None:
        """Take the LoRA out again (`set_scale(0)`)."""
        self.set_scale(0.0)

    def __repr__(self) -> str:
        return f"AppliedLoRA({self.source!r}, scale={self.scale}, {len(self._targets)} layers)"


def apply_lora(
    sd: Any, lora: LoRA | str | os.PathLike | Mapping[str, Tensor], scale: float = 1.0
) -> AppliedLoRA:
    """Merge a LoRA into a pipeline's UNet and text encoder weights, in place.

    Every layer of the LoRA is matched and checked before any weight changes: a LoRA that does
    not fit leaves the pipeline as it was.

    Args:
        sd: a `StableDiffusion` (anything with `unet` and `text_encoder` modules).
        lora: a LoRA file, its state dict, or a `LoRA` from `read_lora`.
        scale: strength; 1 is the LoRA as trained, 0 leaves the weights unchanged.

    Returns:
        An `AppliedLoRA`: `.set_scale(s)` re-weights it, `.remove()` takes it out.

    Raises:
        WeightsError: naming the file: unreadable (see `read_lora`), modules the pipeline does
            not have (a few listed, with the count), or shapes that differ (a LoRA for another
            base model, e.g. SD 2.x on SD 1.5).
    """
    if not isinstance(lora, LoRA):
        lora = read_lora(lora)
    scale = _check_scale(scale, lora.source)
    models = {c: getattr(sd, c) for c in _COMPONENTS}
    names = _module_names(models)
    unmatched = [name for name in lora.layers if name not in names]
    if unmatched:
        raise WeightsError(
            f"{lora.source}: {len(unmatched)} of its {len(lora.layers)} LoRA modules are not in "
            f"this pipeline: {_listing(unmatched, 3)} {_base_hint(lora, models)}".rstrip()
        )
    targets: dict[tuple[str, str], LoRAFactors] = {}
    named: dict[tuple[str, str], str] = {}
    for name, factors in lora.layers.items():
        target = names[name]
        if target in named:  # e.g. kohya's diffusers and ldm name of one layer
            raise WeightsError(
                f"{lora.source}: {named[target]} and {name} both adapt {'.'.join(target)}"
            )
        targets[target], named[target] = factors, name
    _check_shapes(lora, targets, models)
    applied = AppliedLoRA(models, targets, lora.source)
    applied.set_scale(scale)
    return applied


def _check_scale(scale: float, source: str) -> float:
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"{source}: LoRA scale {scale} must be a finite number")
    return scale


def _adapted(model: nn.Module) -> Iterable[str]:
    """Names of the layers a LoRA can adapt: linear and conv layers."""
    return (n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def _module_names(models: Mapping[str, nn.Module]) -> dict[str, tuple[str, str]]:
    """Every name a LoRA file may give a layer -> (component, our module name)."""
    names: dict[str, tuple[str, str]] = {}
    unet, text = models["unet"], models["text_encoder"]
    layout = UNetLayout.from_config(unet.cfg)
    for name in _adapted(unet):
        ours = ("unet", name)
        ldm = unmap_unet_key(f"{name}.weight", layout).removesuffix(".weight")
        names["unet." + name] = ours  # diffusers / PEFT
        names["lora_unet_" + name.replace(".", "_")] = ours  # kohya, diffusers names
        names["lora_unet_" + ldm.replace(".", "_")] = ours  # kohya, ldm names
    for name in _adapted(text):
        ours = ("text_encoder", name)
        names["text_encoder.text_model." + name] = ours
        names["text_encoder." + name] = ours
        names["lora_te_text_model_" + name.replace(".", "_")] = ours
    return names


def _check_shapes(
    lora: LoRA, targets: Mapping[tuple[str, str], LoRAFactors], models: Mapping[str, nn.Module]
) -> None:
    """WeightsError listing the layers whose delta does not have their weight's shape."""
    wrong = []
    for (component, name), factors in targets.items():
        shape = tuple(models[component].get_submodule(name).weight.shape)
        delta = (factors.up.shape[0], *factors.down.shape[1:])
        if _squeezed(delta) != _squeezed(shape):
            wrong.append(f"{component}.{name}: LoRA {delta}, model {shape}")
    if wrong:
        raise WeightsError(
            f"{lora.source}: does not fit this pipeline, {len(wrong)} layers of other shapes "
            f"{_base_hint(lora, models)}: {_listing(wrong, 3)}"
        )


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A 1x1 conv's (out, in, 1, 1) as the (out, in) of a linear layer: either takes the other."""
    return shape[:2] if shape[2:] == (1, 1) else shape


def _base_hint(lora: LoRA, models: Mapping[str, nn.Module]) -> str:
    """'(a LoRA for SD 2.x: cross-attention context 1024 wide, the model's 768)', or ''."""
    widths = {f.down.shape[1] for n, f in lora.layers.items() if "attn2" in n and "to_k" in n}
    ours = models["unet"].cfg.cross_attention_dim
    if len(widths) != 1 or (width := widths.pop()) == ours:
        return ""
    base = _BASES.get(width, "another model")
    return f"(a LoRA for {base}: cross-attention context {width} wide, the model's {ours})"
