"""The temporal feedback sampler: img2img every frame from the previous result warped by flow.

Per frame k (Deforum / WarpFusion's loop, taken apart into small swappable parts):

1. dials from keyframe schedules (`FeedbackConfig`, `frame_params`: `feedback_config`, whose
   names import from here too): strength, CFG, seed, ControlNet scales, and the prompt
   embedding (interpolated between keyed prompts);
2. control images from the frame source's passes (`pilot.animation.frame_sources`);
3. init = frame k - 1 *as written to disk*, warped by the flow source onto frame k's camera,
   optionally colour-matched in LAB to a reference frame and mixed with a video's own frame;
4. pixels not seen in frame k - 1 (the flow source's `visible` mask, dilated) are handled by
   the occlusion mode: "ignore" (plain warping: smeared there), "renoise" (they start from a
   higher noise level, `fresh_strength`, while the rest waits at the img2img level and joins
   when sampling gets there: `pilot.diffusion.guidance.StagedInpaint`) or "inpaint" (only
   they are generated; the rest is kept);
5. initial noise "fresh" (a seed per frame), "fixed" (one noise for every frame) or "warped"
   (the previous frame's noise carried by the flow, fresh where disoccluded: noise that
   follows the scene);
6. sampling with any sampler of `pilot.diffusion.SAMPLERS` (or your own) under CFG (or your
   own guidance, `SamplingSettings.guidance`), each step reported to `callback`, VAE decode,
   then the blending rule (none, or a mix with the warped previous frame on visible pixels, in
   latent or pixel space).

Frame 0 (and any frame without a previous one) is txt2img, or img2img from the source frame in
video mode. Everything frame k needs is re-read from the run folder, and seeds derive from the
base seed and k, so a resumed run reproduces an uninterrupted one byte for byte.

Every step-th frame (`frame_step`, e.g. a 60 fps video at 30 fps, or a fast draft of a shot):
"the previous frame" of frame k is frame k - step, warped by the flow between those two source
frames; frames keep their source numbers, so schedules, prompts and seeds are read at the
source frame number, and frames 0 to step - 1 have no previous frame. The colour reference is
used by the frames it precedes by a multiple of the step (the others never see it made).

Frame batching: frames whose pixels depend on no other frame (frame 0, or any frame at
strength 1 with occlusion "ignore", no blend and no warped noise) can be sampled together, each
with its own seed (`render_batch`, `render_missing`: `pilot.animation.feedback_batches`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from pilot.animation.color import lab_stats, match_color
from pilot.animation.feedback_batches import FrameBatching
from pilot.animation.feedback_config import BlendSpace as BlendSpace
from pilot.animation.feedback_config import (
    FeedbackConfig,
    FrameParams,
    _length_error,
    frame_params,
)
from pilot.animation.feedback_config import NoiseMode as NoiseMode
from pilot.animation.feedback_config import OcclusionMode as OcclusionMode
from pilot.animation.feedback_config import check_prompts as check_prompts
from pilot.animation.feedback_config import check_schedules as check_schedules
from pilot.animation.feedback_config import independent_frame as independent_frame
from pilot.animation.feedback_config import schedule_params as schedule_params
from pilot.animation.flow import (
    FlowField,
    FlowSource,
    VectorFlow,
    backward_flow,
    check_flow_step,
    downsample_flow,
)
from pilot.animation.inputs import ControlTrack, FrameSource, FrameStore, VideoFrames
from pilot.animation.schedules import PromptSchedule
from pilot.deprecation import renamed_keywords
from pilot.diffusion.control import Control, control_wrapper
from pilot.diffusion.guidance import StagedInpaint
from pilot.diffusion.pipeline import (
    SamplingSettings,
    VAEUpcast,
    build_denoiser,
    check_decode,
    check_seed,
    check_sigmas,
    check_size,
    decode_latents,
    encode_images,
    encode_text,
    img2img_sigmas,
    sample,
    start_latents,
)
from pilot.diffusion.samplers import BatchedNoise, Callback
from pilot.diffusion.schedules import DiscreteSchedule, get_sigmas
from pilot.scenes.geometry import warp

if TYPE_CHECKING:  # annotations only: the loaders are not imported at run time
    from pilot.weights.loaders import StableDiffusion


class FeedbackSampler(FrameBatching):
    """The frame loop over a frame source, writing each frame to a `FrameStore`.

    Frames are made one by one (`render`) or, where independent, a batch at a time
    (`render_batch`, `render_missing`: `FrameBatching`, `pilot.animation.feedback_batches`).

    Args:
        sd: A `pilot.StableDiffusion`.
        settings: Sampler, schedule, steps (cfg is overridden per frame).
        config: The feedback dials.
        frames: A `ShotFrames` or `VideoFrames`.
        prompts: Keyed prompts.
        negative_prompt: The negative prompt of every frame (`negative=` is its deprecated
            name).
        tracks: ControlNets with their control kinds and scales.
        store: Where frames are read back from and written to.
        base_seed: Seed of frame 0 (frame k: base_seed + k unless `config.seed`).
        flow: Flow source, default the frame source's own (`frames.flow`); one of your own is
            a function `flow(k) -> FlowField` (`flow(k, step)` with a `frame_step`), its result
            checked each frame (`pilot.animation.flow.check_flow_field`).
        vae_upcast: float32 rule of a half-precision VAE decode (`decode_latents`).
        vae_batch: Frames per VAE call when a batch of frames is encoded or decoded (VAE
            slicing, `decode_latents(batch=)`); None: the whole batch at once.
        decoder: Decode the frames with this instead of the VAE (a `PreviewDecoder`: a fast
            draft; the next frame's init is still encoded by the VAE).
        frame_step: Render every frame_step-th frame: frame k is made from frame k - frame_step
            (module docstring); the flow source is called `flow(k, frame_step)` when above 1.
        callback: Called each sampling step of each frame with the samplers' payload `{"i",
            "x", "sigma", "denoised"}` (`generate`'s) plus `"frames"`, the frame numbers of the
            batch items (`(k,)` in `render(k)`); i counts the frame's own steps (img2img: from
            0 at its first sigma). An attribute: it may be swapped between frames.
    """

    @renamed_keywords(negative="negative_prompt")
    def __init__(
        self,
        sd: StableDiffusion,
        settings: SamplingSettings,
        config: FeedbackConfig,
        frames: FrameSource,
        prompts: PromptSchedule,
        store: FrameStore,
        *,
        negative_prompt: str = "",
        tracks: Sequence[ControlTrack] = (),
        base_seed: int = 0,
        flow: FlowSource | None = None,
        vae_upcast: VAEUpcast = "auto",
        vae_batch: int | None = None,
        decoder: torch.nn.Module | None = None,
        frame_step: int = 1,
        callback: Callback | None = None,
    ) -> None:
        self.sd, self.settings, self.config, self.frames = sd, settings, config, frames
        # the full sampling grid, once: on the host, where the sampler's and the ControlNets'
        # branches read it (no GPU wait); a schedule of your own may return anything
        schedule = DiscreteSchedule.scaled_linear()
        self.sigmas = check_sigmas(get_sigmas(settings.schedule, settings.steps, schedule))
        self.prompts, self.negative_prompt, self.tracks = prompts, negative_prompt, tuple(tracks)
        self.store, self.base_seed = store, base_seed
        try:
            check_seed(base_seed)
        except ValueError as e:
            raise ValueError(f"base_seed: {e}") from None
        self.flow = frames.flow if flow is None else flow
        if not isinstance(frame_step, int) or frame_step < 1:
            raise ValueError(f"frame_step must be an int >= 1, got {frame_step!r}")
        if frame_step > 1 and isinstance(self.flow, VectorFlow):  # not after frame 0
            raise ValueError(
                f"frame_step={frame_step}: {frames.name}'s motion pass (vector flow) links "
                "adjacent frames only; use geometry or estimated flow"
            )
        check_flow_step(self.flow, frame_step)  # a one-argument source of your own
        self.frame_step = frame_step
        if vae_batch is not None and vae_batch < 1:
            raise ValueError(f"vae_batch must be >= 1 (None: a batch at once), got {vae_batch}")
        check_decode(sd, None, vae_upcast, decoder, vae_batch)  # not after a frame's sampling
        if config.source_mix > 0 and not isinstance(frames, VideoFrames):
            raise ValueError(
                f"source_mix={config.source_mix} mixes a video's own frames into the init; "
                f"{type(frames).__name__} has none (as `pilot animate --source-mix` with a shot)"
            )
        self.vae_upcast, self.vae_batch, self.decoder = vae_upcast, vae_batch, decoder
        self.callback = callback
        for track in self.tracks:
            frames.check_kind(track.kind)
        self.device = next(sd.unet.parameters()).device
        self.factor = sd.vae.cfg.downsample_factor
        try:
            check_size(frames.height, frames.width, self.factor)
        except ValueError as e:
            raise ValueError(f"{frames.name}: {e}") from None
        self._embeddings: dict[str, tuple[Tensor, Tensor]] = {}
        self._color_stats: dict[int, tuple] = {}  # reference frame -> its `lab_stats`

    def context(self, k: int) -> tuple[Tensor, Tensor]:
        """Text embeddings of frame k: keyed prompts' embeddings, interpolated."""
        a, b, w = self.prompts.at(k)
        for prompt in {a, b} - set(self._embeddings):
            self._embeddings[prompt] = encode_text(
                self.sd, [prompt], [self.negative_prompt], clip_skip=self.settings.clip_skip
            )
        (ca, ua), (cb, _) = self._embeddings[a], self._embeddings[b]
        if ca.shape != cb.shape:
            raise ValueError(_length_error(a, b))
        return torch.lerp(ca, cb, w), ua

    def controls(self, ks: Sequence[int], params: FrameParams, sigmas: Tensor) -> Callable | None:
        """ControlNet wrapper of frames ks (one batch; None without ControlNets)."""
        if not self.tracks:
            return None
        dtype = next(self.sd.unet.parameters()).dtype
        controls = [
            Control(
                t.controlnet,
                torch.cat([self.frames.control_image(t.kind, k) for k in ks]).to(
                    self.device, dtype
                ),  # (B, 3, H, W)
                scale,
                t.start,
                t.end,
                guess_mode=t.guess_mode,
            )  # fmt: skip
            for t, scale in zip(self.tracks, params.scales, strict=True)
        ]
        return control_wrapper(controls, sigmas, cfg=params.cfg, guidance=self.settings.guidance)

    def render(self, k: int, flow: FlowField | None = None) -> Tensor:
        """Make frame k (its previous frame, k - `frame_step`, must be in the store unless frame
        k is `independent`); returns (1, 3, H, W) in [0, 1] after writing it (a write-behind
        store may still be writing the PNG: `store.flush()` waits; `render_missing` does).
        `flow`: frame k's flow back to its previous frame, default the flow source's."""
        params = frame_params(self.config, self.tracks, self.base_seed, k)
        # An independent frame ignores its previous one: no flow, no warp, no VAE encode of it.
        step = self.frame_step
        has_prev = not self.independent(k) and self.store.has(k - step)  # k - step >= 0
        if has_prev and flow is None:
            flow = backward_flow(self.flow, k, step, (self.frames.height, self.frames.width))
        init = self.init_image(k, flow if has_prev else None)
        image = self.sample_frames([k], [params], init, flow if has_prev else None)
        self.store.write(k, image)
        return self.store.read(k)

    def init_image(self, k: int, flow: FlowField | None) -> Tensor | None:
        """The img2img start of frame k (1, 3, H, W): the warped previous frame (k -
        `frame_step`) [colour-matched, mixed with the source frame in video mode], the source
        frame alone for a video's first frame, or None (txt2img)."""
        source = self.frames.source_image(k) if isinstance(self.frames, VideoFrames) else None
        if flow is None:
            return source
        step = self.frame_step
        init = warp(self.store.read(k - step), flow.flow)
        ref = self.config.color_reference
        # a reference off frame k's chain (k - step, k - 2 step...) is never made before it
        # in a run: used or not, it would depend on what else the folder holds
        if ref is not None and ref < k and (k - ref) % step == 0 and self.store.has(ref):
            # A frame once in the store never changes: its statistics are taken once per run,
            # instead of a copy of it (or a PNG decode) and a LAB conversion every frame.
            if ref not in self._color_stats:
                self._color_stats[ref] = lab_stats(self.store.read(ref))
            init = match_color(init, self._color_stats[ref])
        if source is not None and self.config.source_mix > 0:
            init = torch.lerp(init, source, self.config.source_mix)
        return init

    def noise(
        self,
        ks: Sequence[int],
        params: Sequence[FrameParams],
        shape: tuple[int, ...],
        flow: FlowField | None,
    ) -> tuple[BatchedNoise, Tensor]:
        """Noise sampler of frames ks (a generator per frame's seed) and its first draw (B, ...),
        replaced as the noise mode says (warped: one frame, carried along `flow`)."""
        noise = BatchedNoise([p.seed for p in params], shape, device=self.device)
        first = noise.draw()
        mode, before = self.config.noise, ks[0] - self.frame_step  # the previous frame
        if mode == "fixed":
            one = (1, *shape[1:])
            first = BatchedNoise([self.base_seed], one, device=self.device).draw()
            first = first.repeat(len(ks), 1, 1, 1)
        elif mode == "warped" and flow is not None and self.store.noise_path(before).is_file():
            lat = downsample_flow(flow, self.factor)
            prev = self.store.read_noise(before).to(self.device)
            carried = warp(prev, lat.flow.to(self.device), mode="nearest")
            first = torch.where(lat.visible.to(self.device), carried, first)
        if mode == "warped":
            for i, k in enumerate(ks):
                self.store.write_noise(k, first[i : i + 1])
        return noise, first

    def sample_frames(
        self,
        ks: Sequence[int],
        batch: Sequence[FrameParams],
        init: Tensor | None,
        flow: FlowField | None,
    ) -> Tensor:
        """Sample frames ks' latents from the init (B, 3, H, W) and decode them: (B, 3, H, W)
        in [0, 1]. Several frames only without `flow`, sharing strength, CFG and scales."""
        latents, init_latents = self.sample_latents(ks, batch, init, flow)
        if not torch.isfinite(latents).all():  # black frames otherwise, and every later one
            p, which = batch[0], f"frame {ks[0]}" if len(ks) == 1 else f"frames {list(ks)}"
            raise ValueError(
                f"{which}: sampling gave non-finite latents (strength {p.strength}, cfg "
                f"{p.cfg}, control scales {p.scales}); is a schedule value too large?"
            )
        return self.blend(latents, init_latents, init, flow)

    def sample_latents(
        self,
        ks: Sequence[int],
        batch: Sequence[FrameParams],
        init: Tensor | None,
        flow: FlowField | None,
    ) -> tuple[Tensor, Tensor | None]:
        """`sample_frames` before decoding: final latents (B, 4, h, w) and the init's latents."""
        if flow is not None and len(ks) > 1:
            raise ValueError("frames carried along a flow are sampled one at a time")
        params = batch[0]
        shape = (len(ks), self.sd.vae.cfg.latent_channels, self.frames.height // self.factor,
                 self.frames.width // self.factor)  # fmt: skip
        noise, first = self.noise(ks, batch, shape, flow)
        settings = replace(self.settings, cfg=params.cfg)
        full = self.sigmas
        init_latents = None if init is None else encode_images(self.sd, init, batch=self.vae_batch)
        strength = 1.0 if init is None else params.strength
        aware = flow is not None and self.config.occlusion != "ignore"
        mask = self.disocclusion(flow) if aware else None
        top = strength if mask is None else max(strength, self.config.fresh_strength)
        sigmas = img2img_sigmas(full, top)
        x = start_latents(first, sigmas, None if top == 1.0 else init_latents)
        # no step (strength below 1 / steps: the VAE round trip) has no ControlNet grid either
        wrap = self.controls(ks, params, sigmas) if len(sigmas) > 1 else None
        denoiser = build_denoiser(self.sd, settings, wrap_model=wrap, sigmas=sigmas)
        if mask is not None:  # carried pixels wait at their own noise level (StagedInpaint)
            x = torch.lerp(start_latents(first, sigmas, init_latents), x, mask)
            join = img2img_sigmas(full, strength)[0]
            join = join.new_zeros(()) if self.config.occlusion == "inpaint" else join
            denoiser = StagedInpaint(denoiser, init_latents, mask, first, join)
        if len(sigmas) == 1:
            latents = init_latents  # strength 0: nothing to sample
        else:
            pairs = [self.context(k) for k in ks]  # (1, S, D) each
            context, uncond = (torch.cat(c) for c in zip(*pairs, strict=True))
            latents = sample(denoiser, x, sigmas, settings, context=context,
                             uncond_context=uncond, noise=noise,
                             callback=self.step_callback(ks))  # fmt: skip
        return latents, init_latents

    def step_callback(self, ks: Sequence[int]) -> Callback | None:
        """`callback` for the sampler of frames ks: its payload with `"frames": (k, ...)`."""
        if self.callback is None:
            return None
        user, frames = self.callback, tuple(ks)
        return lambda payload: user({**payload, "frames": frames})

    def decode(self, latents: Tensor) -> Tensor:
        """Frames (B, 3, H, W) in [0, 1] on the CPU, by the sampler's VAE rules."""
        return decode_latents(
            self.sd, latents, upcast=self.vae_upcast, decoder=self.decoder, batch=self.vae_batch
        ).cpu()

    def disocclusion(self, flow: FlowField) -> Tensor:
        """Latent mask (1, 1, h, w), 1 where more than `hidden_share` of a cell's pixels (any,
        at 0) were not seen in the previous frame (after dilation)."""
        hidden = (~flow.visible).float()
        d = self.config.dilate
        if d:
            hidden = F.max_pool2d(hidden, 2 * d + 1, stride=1, padding=d)
        share = F.avg_pool2d(hidden, self.factor)  # (1, 1, H/f, W/f)
        return (share > self.config.hidden_share).float().to(self.device)

    def blend(
        self,
        latents: Tensor,
        init_latents: Tensor | None,
        init: Tensor | None,
        flow: FlowField | None,
    ) -> Tensor:
        """The blending rule: mix the warped previous frame in on visible pixels."""
        b = self.config.blend
        if b == 0 or flow is None or init is None:
            return self.decode(latents)
        if self.config.blend_space == "latent":
            keep = 1 - self.disocclusion(flow)
            return self.decode(torch.lerp(latents, init_latents, b * keep))
        image = self.decode(latents)
        return torch.lerp(image, init.cpu(), b * flow.visible.float())
