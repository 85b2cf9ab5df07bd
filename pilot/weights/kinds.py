"""What a state dict holds, guessed from its key names (and the shape of a lone tensor), so that
a file given to the wrong loader (a LoRA as the model, an embedding as the VAE...) is named in
the error, with the option or function that takes it.

Kept apart from `pilot.weights.io` (which re-exports `describe_state_dict`) to keep that module
to reading and loading.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

__all__ = ["KIND_LOOKS", "describe_state_dict", "guess_kind", "refuse_other_kind"]

_USE_VAE = "swap it in with --vae or load_pipeline(vae=)"
_USE_EMBEDDING = "add it with --embedding or pilot.load_embedding"

# kind -> the phrase error messages use ("... (it looks like ...)").
KIND_LOOKS = {
    "checkpoint": "it looks like an original CompVis/Stability single-file checkpoint",
    "sdxl": "it looks like an SDXL UNet or checkpoint, which pilot does not support",
    "controlnet": "it looks like a ControlNet",
    "lora": "it looks like a LoRA, not a full model (apply it with --lora or pilot.apply_lora)",
    "embedding": f"it looks like a textual inversion embedding ({_USE_EMBEDDING})",
    "unet": "it looks like a diffusers UNet",
    "original_vae": f"it looks like an original-layout VAE ({_USE_VAE})",
    "vae": f"it looks like a diffusers VAE (AutoencoderKL; {_USE_VAE})",
    "text_encoder": "it looks like a CLIP text encoder",
    "open_clip": "it looks like an OpenCLIP text encoder",
}


def guess_kind(state_dict: Mapping[str, Tensor]) -> str | None:
    """A key of `KIND_LOOKS` for what `state_dict` holds; None when no rule matches."""
    keys = list(state_dict)

    def has(fragment: str) -> bool:
        return any(fragment in k for k in keys)

    rules = (
        (
            "checkpoint",
            any(map(has, ("model.diffusion_model.", "first_stage_model.", "cond_stage_model."))),
        ),
        ("sdxl", has("add_embedding.") or has("conditioner.embedders.")),
        ("controlnet", has("controlnet_cond_embedding") or has("input_hint_block")),
        ("lora", has("lora_") or has(".alpha")),
        ("embedding", _is_embedding(state_dict)),
        ("unet", has("down_blocks.") and has("time_embedding.")),
        ("original_vae", has("encoder.down.") or has("decoder.up.")),  # before post_quant_conv
        ("vae", has("encoder.down_blocks.") or has("post_quant_conv.")),
        ("text_encoder", has("token_embedding") and has("encoder.layers.")),
        ("open_clip", has("resblocks.") and has("token_embedding")),
    )
    return next((kind for kind, matches in rules if matches), None)


def describe_state_dict(state_dict: Mapping[str, Tensor]) -> str:
    """A short guess of what a state dict holds, for error messages."""
    from pilot.weights.io import _listing

    if not state_dict:
        return "it is empty"
    kind = guess_kind(state_dict)
    if kind is None:
        return f"unrecognised layout, first keys: {_listing(list(state_dict), 3)}"
    return KIND_LOOKS[kind]


def refuse_other_kind(
    state_dict: Mapping[str, Tensor], source: object, label: str, own: tuple[str, ...]
) -> None:
    """WeightsError naming what a file is when it is plainly another kind than `own` (a LoRA
    or an embedding given as a VAE...), e.g. before asking for a config.json beside it.

    Args:
        state_dict: the file's tensors.
        source: the file, named in the message.
        label: what was wanted ("VAE").
        own: the `guess_kind` kinds that are it.
    """
    from pilot.weights.io import WeightsError

    kind = guess_kind(state_dict)
    if kind is not None and kind not in own:
        raise WeightsError(f"{source}: holds no {label} weights ({KIND_LOOKS[kind]})")


def _is_embedding(state_dict: Mapping[str, Tensor]) -> bool:
    """A1111 `.safetensors` (`emb_params`), SDXL (`clip_l` + `clip_g`) or diffusers (one token,
    a name without dots, of one or a few vectors)."""
    if "emb_params" in state_dict or {"clip_l", "clip_g"} <= set(state_dict):
        return True
    if len(state_dict) != 1:
        return False
    key, value = next(iter(state_dict.items()))
    return "." not in key and isinstance(value, Tensor) and value.ndim in (1, 2)
