"""Inference speed-ups of the sampling models: channels_last, torch.compile, CUDA graphs.

    sd = pilot.load_pipeline(path, dtype=torch.float16, device="cuda")
    sd = optimize(sd, SpeedSettings(channels_last=True, compile=True, cuda_graphs=True))
    net = optimize_model(controlnet, SpeedSettings(...))   # ControlNets: the same per model
    images = generate(sd, request, settings)

- channels_last stores convolution weights NHWC; convolutions then produce NHWC activations,
  which tensor-core convolutions prefer, and the transformers' (B, H*W, C) token view of a
  feature map becomes a free view instead of a copy (`pilot.nn.attention.to_tokens`).
- `compile` runs `torch.compile` on the UNet / ControlNet in place with static shapes
  (`dynamic=False`): one graph per input shape, compiled on the first call with that shape
  (tens of seconds for SD on a GPU; minutes with `max-autotune-no-cudagraphs`).
- `prepack` (CPU) keeps the UNet's / ControlNet's convolution weights in oneDNN's layout, so no
  convolution reorders its weights per call (`pilot.nn.resnet.Conv2d`): SD 1.5 UNet step at
  256 px, 2 threads, 0.78x of diffusers' time against 0.87x in float32 (0.85x against 0.97x
  in bfloat16), for a second copy of the convolution weights (+2.1 GiB of memory in float32).
- `cuda_graphs` wraps the UNet / ControlNet in `CUDAGraphed`: each sampling step's model call is
  replayed as one CUDA graph, so the step costs no per-kernel launch time. It composes with
  `compile` (the compiled code is captured, as vLLM does), which is why the compile modes on
  offer are the ones without inductor's own CUDA graphs.

Precision is not set here: cast the models (`dtype=` on load, `sd.to(dtype=...)`); the VAE's
float32 rule is `decode_latents(..., upcast=...)`. channels_last goes where it pays. The UNet
and ControlNets get it off the CPU only: on an H100 (512 px fp16) it made the eager UNet step
0.75x of diffusers' against 0.79x NCHW, while on the CPU (SD 1.5, 256 px, float32, 2 threads)
it slowed it from 0.86x to 1.08x (`python -m experiments.bench.unet --size 256 --threads 2
--channels-last` before this rule). The VAE gets it on the CPU only: its decode runs once per
image, tiled at varying sizes. On the CPU channels_last speeds it up (SD 1.5, 256 px: 0.80x of
diffusers vs 0.92x NCHW); on a GPU it slows it down (H100, 512 px fp16: 1.24x vs 0.98x), as
CUDA's GroupNorm copies NHWC input to NCHW.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import Tensor, nn

from pilot.nn.resnet import Conv2d

if TYPE_CHECKING:  # annotations only: the loaders are not imported at run time
    from pilot.weights.loaders import StableDiffusion

MANY_GRAPHS = 16  # CUDAGraphed warns when it captures more graphs than this

CompileMode = Literal["default", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)


@dataclass(frozen=True)
class SpeedSettings:
    """Which inference speed-ups `optimize` applies (all off by default: eager PyTorch).

    Attributes:
        channels_last: NHWC memory format where it pays: the UNet and ControlNets off the
            CPU, the VAE on the CPU (see the module docstring).
        compile: `torch.compile` the UNet and ControlNets, static shapes.
        compile_mode: Inductor mode; "max-autotune-no-cudagraphs" benchmarks kernel choices
            (slow to compile, faster to run on GPUs).
        cuda_graphs: Replay the UNet / ControlNet calls as CUDA graphs (models on CUDA only).
        prepack: Keep the UNet's and ControlNets' convolution weights in oneDNN's layout too
            (models on the CPU; elsewhere nothing): faster, a second copy of those weights.
    """

    channels_last: bool = False
    compile: bool = False
    compile_mode: CompileMode = "default"
    cuda_graphs: bool = False
    prepack: bool = False

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"unknown compile mode {self.compile_mode!r}; valid: {', '.join(COMPILE_MODES)} "
                "(CUDA graphs are `cuda_graphs=True`, which also covers compiled models)"
            )

    def describe(self) -> str:
        """Short label of the settings on, e.g. "channels_last+compile", or "eager"."""
        names = ("channels_last", "compile", "cuda_graphs", "prepack")
        on = [name for name in names if getattr(self, name)]
        if self.compile and self.compile_mode != "default":
            on[on.index("compile")] = f"compile({self.compile_mode})"
        return "+".join(on) or "eager"

    def for_model(self, device: torch.device | str) -> SpeedSettings:
        """The settings `optimize_model` applies to a UNet or ControlNet on `device`:
        `channels_last` off the CPU only, `prepack` on the CPU only."""
        on_cpu = torch.device(device).type == "cpu"
        return replace(
            self, channels_last=self.channels_last and not on_cpu, prepack=self.prepack and on_cpu
        )


def optimize_model(model: nn.Module, settings: SpeedSettings) -> nn.Module:
    """Apply `settings` to a UNet or ControlNet: converted and compiled in place
    (`channels_last` off the CPU only, where it pays; `prepack` on the CPU only).

    Returns:
        `model` itself, or a `CUDAGraphed` wrapper of it with `settings.cuda_graphs`.

    Raises:
        ValueError: CUDA graphs asked for a model that is not on a CUDA device.
    """
    if settings.cuda_graphs:
        check_cuda(model)
    applied = settings.for_model(next(model.parameters()).device)
    if applied.channels_last:
        model.to(memory_format=torch.channels_last)
    if applied.prepack:
        for module in model.modules():
            if isinstance(module, Conv2d):
                module.prepack = True
    if settings.compile:
        model.compile(dynamic=False, mode=settings.compile_mode)
    return CUDAGraphed(model) if settings.cuda_graphs else model


def optimize(sd: StableDiffusion, settings: SpeedSettings) -> StableDiffusion:
    """Apply `settings` to a `pilot.StableDiffusion` bundle's UNet (and a CPU VAE's memory format).

    The models are converted and compiled in place; the returned bundle holds them, with the
    UNet wrapped in `CUDAGraphed` when `settings.cuda_graphs` (keep using the returned one).
    Apply `optimize_model` to the ControlNets of `pilot.diffusion.control.Control`s yourself.
    `channels_last` reaches the UNet off the CPU and the VAE on it (see the module docstring).
    """
    unet = optimize_model(sd.unet, settings)
    if settings.channels_last and next(sd.vae.parameters()).device.type == "cpu":
        sd.vae.to(memory_format=torch.channels_last)
    return replace(sd, unet=unet)


def check_cuda(model: nn.Module) -> None:
    """Raise a ValueError unless `model`'s parameters are on a CUDA device."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ValueError(
            f"CUDA graphs need the model on a CUDA device; {type(model).__name__} is on "
            f"{device} (move it with .to('cuda') first, or leave cuda_graphs off)"
        )


class CUDAGraphed(nn.Module):
    """A module whose no-grad calls replay CUDA graphs, one per input signature.

    A signature is the call's structure: every tensor's shape, dtype and device, every other
    argument's value, and whether inference mode is on. Its first call runs the module `warmup`
    times on a side stream (cuDNN autotuning, torch.compile), then captures one call into a
    graph that reads static copies of the tensor inputs. Each call copies its tensors into
    those, replays the graph and returns clones of the graph's outputs (so a later replay cannot
    overwrite them). Calls with gradients enabled run eagerly.
    Memory: each graph keeps its static inputs and outputs allocated, and its working memory
    (the cuBLAS workspace of its matrix products included: `_clear_cublas_workspaces`)
    reserved in a graph pool. All the `CUDAGraphed` graphs on a device share one pool (as
    inductor's CUDA graph trees do), so a UNet, its ControlNets and every shape's graph need
    the working memory of the largest one, not the sum. Sharing is safe because no graph
    output is handed out (the clones are made in ordinary memory) and replays run one at a
    time; replaying graphs of one device from several threads or streams at once is not.
    Attributes other than `module` are the wrapped module's (`cfg`, `embed_hint`, ...), and so
    are the state dict's keys. Weights loaded in place (`load_state_dict` into `module`) reach
    the graphs; parameters replaced by new tensors do not.

    Args:
        module: The model, on a CUDA device; it must not synchronise with the host (no
            `.item()`, no data-dependent Python branches) in its forward.
        warmup: Eager calls before capture.
    """

    def __init__(self, module: nn.Module, *, warmup: int = 2) -> None:
        super().__init__()
        check_cuda(module)
        self.module = module
        self.warmup = warmup
        self.graphs: dict[str, tuple[torch.cuda.CUDAGraph, list[Tensor], Any]] = {}
        _GRAPHED.add(self)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not yet set (unpickling): no recursion
                raise
            return getattr(self.module, name)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The wrapped module's state dict (its own key names: saving works as unwrapped)."""
        return self.module.state_dict(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The module's output for these arguments, from a replayed graph when no grad."""
        if torch.is_grad_enabled():
            return self.module(*args, **kwargs)
        tensors: list[Tensor] = []
        spec = _flatten((args, kwargs), tensors)
        key = repr((spec, torch.is_inference_mode_enabled()))  # inference tensors differ
        if key not in self.graphs:
            if len(self.graphs) == MANY_GRAPHS:
                warnings.warn(
                    f"{type(self.module).__name__} under CUDA graphs: capturing graph "
                    f"{MANY_GRAPHS + 1}, each holding its own memory; a non-tensor argument "
                    f"that changes between calls (now {repr(spec):.300}) captures a new graph "
                    "each time: pass it as a tensor",
                    stacklevel=2,
                )
            self.graphs[key] = self._capture(spec, tensors)
        graph, static, out = self.graphs[key]
        for s, t in zip(static, tensors, strict=True):
            s.copy_(t)
        graph.replay()
        outputs: list[Tensor] = []
        out_spec = _flatten(out, outputs)
        return _fill(out_spec, [t.clone() for t in outputs])

    def _capture(self, spec: Any, tensors: list[Tensor]) -> tuple:
        """Warm up on a side stream, then capture one call on static input copies."""
        static = [t.clone() for t in tensors]
        args, kwargs = _fill(spec, static)
        device = _device(self.module)
        stream = _capture_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.module(*args, **kwargs)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        _clear_cublas_workspaces()  # the capture makes its own, in the pool
        try:
            with torch.cuda.graph(graph, pool=_shared_pool(device), stream=stream):
                out = self.module(*args, **kwargs)
        finally:
            _clear_cublas_workspaces()
        return graph, static, out


_GRAPHED: weakref.WeakSet[CUDAGraphed] = weakref.WeakSet()  # every live instance
_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _clear_cublas_workspaces() -> None:
    """Drop cuBLAS's workspaces (one per stream, 33 MiB on an H100), as inductor's CUDA graph
    trees do around each warm-up and recording.

    A captured matrix product keeps the address of its stream's workspace. Made before the
    capture, that workspace is ordinary memory, and the next clear frees it while the graph
    still writes there: inductor clears whenever a `torch.compile(mode="reduce-overhead")`
    model warms up or records anywhere in the process, and the replays then write into memory
    handed to other tensors or given back to the driver (the likely cause of the "unspecified
    launch failure" that ended a compile table on a GPU, beside diffusers' "reduce-overhead"
    model). Cleared before the capture, the workspace is made inside it, in the graph
    pool, which lives as long as the graphs; cleared after, later eager calls on the capture
    stream make their own and do not use the pool's.
    """
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The one side stream per device that every capture warms up and captures on (its
    eager warm-up workspace is cleared before each capture: `_clear_cublas_workspaces`)."""
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    return _STREAMS[device]


def _device(module: nn.Module) -> torch.device:
    """The CUDA device of a module's parameters, with its index."""
    device = next(module.parameters()).device
    return torch.device(
        "cuda", torch.cuda.current_device() if device.index is None else device.index
    )


def _shared_pool(device: torch.device) -> Any:
    """The memory pool of a live graph captured on `device` (None: none yet, a new pool).

    Borrowing a live graph's pool keeps the pool's lifetime the graphs': once every graph
    of a device is gone, its memory can be released (`torch.cuda.empty_cache`).
    """
    for graphed in list(_GRAPHED):
        if graphed.graphs and _device(graphed.module) == device:
            graph, _, _ = next(iter(graphed.graphs.values()))
            return graph.pool()
    return None


class _Slot:
    """Placeholder of the i-th tensor in a flattened argument structure."""

    def __init__(self, i: int, t: Tensor) -> None:
        self.i = i
        self.signature = (tuple(t.shape), t.dtype, t.device)

    def __repr__(self) -> str:
        return f"Slot{self.i}{self.signature}"


def _flatten(value: Any, tensors: list[Tensor]) -> Any:
    """`value` with every tensor (in lists, tuples, dicts) replaced by a `_Slot` into `tensors`."""
    if isinstance(value, Tensor):
        tensors.append(value)
        return _Slot(len(tensors) - 1, value)
    if isinstance(value, (list, tuple)):
        return type(value)(_flatten(v, tensors) for v in value)
    if isinstance(value, dict):
        return {k: _flatten(v, tensors) for k, v in value.items()}
    return value


def _fill(spec: Any, tensors: list[Tensor]) -> Any:
    """Inverse of `_flatten`: the structure with its slots filled from `tensors`."""
    if isinstance(spec, _Slot):
        return tensors[spec.i]
    if isinstance(spec, (list, tuple)):
        return type(spec)(_fill(v, tensors) for v in spec)
    if isinstance(spec, dict):
        return {k: _fill(v, tensors) for k, v in spec.items()}
    return spec


__all__ = [
    "COMPILE_MODES",
    "CUDAGraphed",
    "CompileMode",
    "SpeedSettings",
    "check_cuda",
    "optimize",
    "optimize_model",
]
