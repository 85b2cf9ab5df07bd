"""The feedback sampler's dials: `FeedbackConfig`, each frame's `FrameParams` read off its
schedules, and the checks a run makes before its first frame.

- `FeedbackConfig`: strength, CFG, seed, noise, occlusion, colour and blending dials, the
  numeric ones keyframe schedules (`pilot.animation.schedules`);
- `frame_params` / `schedule_params`: frame k's strength, CFG, seed and ControlNet scales,
  with a ValueError naming a schedule that leaves its range;
- `check_schedules` / `check_prompts`: the errors a run would meet at some later frame (a
  schedule out of range, keyed prompts of different token lengths), raised up front;
- `independent_frame`: whether frame k depends on no other frame (frame batching).

The sampler itself is `pilot.animation.feedback.FeedbackSampler`, which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pilot.animation.inputs import ControlTrack
from pilot.animation.schedules import PromptSchedule, Schedule, parse_schedule, schedule_text
from pilot.deprecation import renamed_keywords
from pilot.diffusion.pipeline import SEED_RANGE
from pilot.diffusion.prompts import PromptTokenizer, count_chunks

OcclusionMode = Literal["ignore", "renoise", "inpaint"]
NoiseMode = Literal["fresh", "fixed", "warped"]
BlendSpace = Literal["latent", "pixel"]


@dataclass(frozen=True)
class FeedbackConfig:
    """Dials of the feedback loop; schedules are keyframe strings (`pilot.animation.schedules`).

    Attributes (the schedules take a number too, stored as its constant schedule string):
        strength: img2img strength per frame (share of the schedule re-run on the warped init).
        cfg: Classifier-free guidance scale per frame.
        seed: Seed per frame as a schedule of t; None = base seed + frame number.
        noise: Initial noise: "fresh" (per-frame seed), "fixed" (base seed's noise every frame)
            or "warped" (previous noise carried by the flow).
        occlusion: Disoccluded pixels: "ignore", "renoise" or "inpaint" (module docstring).
        fresh_strength: Strength where disoccluded ("renoise"/"inpaint"); a frame whose
            strength is higher uses its strength there too (disoccluded pixels start at
            least as noisy as the rest).
        dilate: Grow the disocclusion mask by this many pixels (flow edges are unreliable).
        hidden_share: A latent cell (f x f pixels) counts as disoccluded when more than this
            share of its pixels was not seen; 0 = any pixel. The visibility test also rejects
            stray pixels along creases and the image border, which at small sizes flags most
            cells; 0.25 keeps those cells carried over.
        color_reference: Frame whose colours the init is matched to in LAB; None = no matching.
        blend: Mix of the warped previous frame into the new one on visible pixels, in [0, 1].
        blend_space: Where that mix happens: "latent" (before decoding) or "pixel".
        source_mix: Video mode: share of the source frame in the init, in [0, 1].
        interpolation: Interpolation of all the numeric schedules.
    """

    strength: str | float = "0.5"
    cfg: str | float = "7.5"
    seed: str | int | None = None
    noise: NoiseMode = "fresh"
    occlusion: OcclusionMode = "renoise"
    fresh_strength: float = 1.0
    dilate: int = 0
    hidden_share: float = 0.0
    color_reference: int | None = 0
    blend: float = 0.0
    blend_space: BlendSpace = "pixel"
    source_mix: float = 0.0
    interpolation: Literal["linear", "step", "smooth"] = "linear"

    def __post_init__(self) -> None:
        for name in ("strength", "cfg", "seed"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, schedule_text(getattr(self, name), name))
        for name, allowed in [
            ("noise", NoiseMode.__args__),
            ("occlusion", OcclusionMode.__args__),
            ("blend_space", BlendSpace.__args__),
        ]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; valid: {', '.join(allowed)}")
        for name in ("fresh_strength", "blend", "source_mix"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not isinstance(self.dilate, int) or self.dilate < 0:
            raise ValueError(f"dilate must be an int >= 0 (pixels), got {self.dilate!r}")
        ref = self.color_reference
        if ref is not None and (not isinstance(ref, int) or ref < 0):
            raise ValueError(f"color_reference must be a frame number >= 0 or None, got {ref!r}")
        if not 0.0 <= self.hidden_share < 1.0:
            raise ValueError(f"hidden_share must be in [0, 1), got {self.hidden_share}")
        for name in ("strength", "cfg", "seed"):
            if getattr(self, name) is not None:
                parse_schedule(getattr(self, name), self.interpolation)  # ScheduleError early

    def schedule(self, name: str) -> Schedule:
        """The parsed schedule of field `name` ("strength", "cfg" or "seed")."""
        return parse_schedule(getattr(self, name), self.interpolation)


@dataclass(frozen=True)
class FrameParams:
    """The dials of one frame, read off the schedules."""

    strength: float
    cfg: float
    seed: int
    scales: tuple[float, ...]


def frame_params(
    config: FeedbackConfig, tracks: Sequence[ControlTrack], base_seed: int, k: int
) -> FrameParams:
    """`FrameParams` of frame k; ValueError naming a schedule that leaves its range."""
    return schedule_params(config, [track.scale for track in tracks], base_seed, k)


def schedule_params(
    config: FeedbackConfig, scales: Sequence[Schedule], base_seed: int, k: int
) -> FrameParams:
    """`frame_params` from the ControlNet scale schedules alone (no models needed)."""
    strength = config.schedule("strength")(k)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(
            f"strength schedule {config.strength!r} gives {strength} at frame {k}, outside [0, 1]"
        )
    seed = base_seed + k if config.seed is None else int(round(config.schedule("seed")(k)))
    if seed not in SEED_RANGE:
        origin = f"seed schedule {config.seed!r}" if config.seed else f"base seed {base_seed} + k"
        raise ValueError(f"{origin} gives seed {seed} at frame {k}, outside [-2**63, 2**64)")
    return FrameParams(strength, config.schedule("cfg")(k), seed, tuple(s(k) for s in scales))


def check_schedules(
    config: FeedbackConfig, scales: Sequence[Schedule], base_seed: int, ks: Sequence[int]
) -> None:
    """Evaluate every schedule at every frame of `ks` before the first frame is made: the
    ValueError `frame_params` would raise at the first bad frame, with nothing written yet."""
    if base_seed not in SEED_RANGE:
        raise ValueError(f"base seed {base_seed} is outside [-2**63, 2**64)")
    for k in ks:
        schedule_params(config, scales, base_seed, k)


@renamed_keywords(negative="negative_prompt")
def check_prompts(
    tokenizer: PromptTokenizer, prompts: PromptSchedule, negative_prompt: str, ks: Sequence[int]
) -> None:
    """Tokenise the keyed prompts of frames ks before the first frame: the ValueError
    `FeedbackSampler.context` would raise at a frame between prompts of different lengths
    (77-token chunks, at least the negative prompt's: `encode_text`)."""
    lengths: dict[str, int] = {}
    for k in ks:
        a, b, _ = prompts.at(k)
        for prompt in {a, b} - set(lengths):
            lengths[prompt] = count_chunks(tokenizer, [prompt, negative_prompt])
        if lengths[a] != lengths[b]:
            raise ValueError(_length_error(a, b))


def _length_error(a: str, b: str) -> str:
    return f"prompts {a!r} and {b!r} encode to different lengths; shorten one"


def independent_frame(config: FeedbackConfig, k: int, step: int = 1) -> bool:
    """Whether frame k's pixels depend on no other frame: a frame with no previous one (frame
    0; with every `step`-th frame, whose previous is frame k - step, frames 0 to step - 1), or
    a frame that ignores its previous one (strength 1, occlusion "ignore", no blend, noise not
    "warped")."""
    if k < step:
        return True
    ignores = config.noise != "warped" and config.occlusion == "ignore" and config.blend == 0
    return ignores and config.schedule("strength")(k) == 1.0
