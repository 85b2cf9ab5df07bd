"""Convolutional blocks shared by the UNet and the VAE: residual block, down- and upsampling."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pilot.nn.norms import GroupNorm, channel_scale

# Weight elements per output pixel from which a CPU float32 conv runs as im2col + GEMM.
GEMM_MIN_WEIGHTS_PER_PIXEL = 32_768


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` that runs weight-heavy, low-resolution convolutions as im2col + GEMM on CPU,
    or every CPU convolution on weights laid out for oneDNN once (`prepack`).

    PyTorch's CPU convolution (oneDNN) re-lays out the weights on every call. When the weights
    far outnumber the output pixels, as in SD's 1280-channel convs on 4x4 to 16x16 latents,
    that reorder costs about as much as the convolution, while a GEMM over unfolded patches
    reads the weights in place: the SD 1.5 UNet at 256x256 px runs ~15% faster on CPU. On other
    devices and dtypes, and at high resolution, this is `nn.Conv2d`. Parameters are the same.

    With `prepack` set (`pilot.diffusion.speed.SpeedSettings(prepack=True)`), no-grad float32
    and bfloat16 CPU calls keep a copy of the weights in oneDNN's layout for the input's shape
    and run oneDNN's convolution on it: no per-call reorder at all, at the price of a second
    copy of the weights in memory. Its output is channels_last whatever the input's layout.
    """

    prepack = False  # set per module by `pilot.diffusion.speed.optimize_model`

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, C_in, H, W) to (B, C_out, H_out, W_out)."""
        if self.prepack and _prepackable(self, x):
            return self._prepacked(x)
        out_size = self._gemm_output_size(x)
        if out_size is None:
            return super().forward(x)
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        out = torch.matmul(self.weight.flatten(1), cols)  # (B, C_out, H_out * W_out)
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.unflatten(-1, out_size)

    def _prepacked(self, x: Tensor) -> Tensor:
        """oneDNN's convolution on weights reordered once per input shape, dtype and weight
        version (an in-place weight update makes a new copy).

        Inference tensors (weights made or loaded under `torch.inference_mode()`) keep no
        version counter; they can only change in place inside inference mode, and a
        `load_state_dict` or `weights_changed` drops the copy. Other in-place edits of such
        weights are not seen: call `weights_changed`, or make the weights outside inference
        mode.
        """
        weight = self.weight
        version = None if weight.is_inference() else weight._version
        key = (tuple(x.shape), x.dtype, weight.data_ptr(), version)
        packed = _PACKED.get(self)
        args = [list(self.padding), list(self.stride), list(self.dilation), self.groups]
        if packed is None or packed[0] != key:
            reordered = torch.ops.mkldnn._reorder_convolution_weight(weight, *args, list(x.shape))
            packed = _PACKED[self] = (key, reordered)
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed[1], self.bias, *args, "none", [], ""
        )

    def weights_changed(self) -> None:
        """Drop the prepacked copy: call it after changing the weights in place where their
        version counter is not kept (inference tensors; `pilot.apply_lora` calls it)."""
        _PACKED.pop(self, None)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        """Load as `nn.Conv2d` does; new weights are packed again at the next prepacked call."""
        self.weights_changed()
        super()._load_from_state_dict(*args, **kwargs)

    def _gemm_output_size(self, x: Tensor) -> tuple[int, int] | None:
        """(H_out, W_out) when the GEMM path applies to `x`, else None."""
        if not (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and isinstance(self.padding, tuple)  # not "same" / "valid"
            and self.padding_mode == "zeros"
            and self.groups == 1
            and self.dilation == (1, 1)
        ):
            return None
        sizes = zip(x.shape[-2:], self.padding, self.kernel_size, self.stride, strict=True)
        out_h, out_w = ((size + 2 * p - k) // s + 1 for size, p, k, s in sizes)
        if self.weight.numel() < GEMM_MIN_WEIGHTS_PER_PIXEL * x.shape[0] * out_h * out_w:
            return None
        return out_h, out_w


# Conv2d -> (key, weights in oneDNN's layout): outside the module, so state dicts, copies and
# pickles never see the opaque tensor.
_PACKED: weakref.WeakKeyDictionary[Conv2d, tuple] = weakref.WeakKeyDictionary()


def _prepackable(conv: Conv2d, x: Tensor) -> bool:
    """Whether `conv(x)` can run on prepacked weights: a no-grad float32 / bfloat16 CPU call
    with numeric zero padding, in a PyTorch built with oneDNN, not being traced by
    `torch.compile` (whose CPU backend packs weights its own way)."""
    return (
        not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and conv.weight.dtype == x.dtype
        and isinstance(conv.padding, tuple)
        and conv.padding_mode == "zeros"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    )


class ResnetBlock2D(nn.Module):
    """Pre-activation residual block (GroupNorm, SiLU, conv) x 2, as in DDPM / Stable Diffusion.

    An optional time embedding is projected to `out_channels` and added between the two convs.
    A 1x1 `conv_shortcut` maps the input when the channel count changes. Without autograd
    (inference) each SiLU runs in place on its norm's fresh output, and a block without time
    embedding whose input has `BAND_MIN_ELEMENTS` elements per image or more (SD's VAE at full
    resolution, where its decode peaks) runs by bands of rows (`_by_bands`).

    Args:
        in_channels: Input channels.
        out_channels: Output channels (default: `in_channels`).
        temb_channels: Width of the time embedding, or None for a block without one (VAE).
        groups: GroupNorm groups of both norms.
        eps: GroupNorm epsilon.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_channels: int | None = None,
        groups: int = 32,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        """Map (B, in, H, W) and an optional (B, temb_channels) embedding to (B, out, H, W)."""
        if temb is None and _runs_by_bands(x, x[0].numel()):
            return self._by_bands(x)
        inplace = not torch.is_grad_enabled()  # no backward to keep a norm's output for
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h), inplace=inplace))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h

    def _by_bands(self, x: Tensor) -> Tensor:
        """The block, each norm-SiLU-conv one band of rows at a time (large inputs, no grad).

        A norm's statistics are taken over its whole input first; then each band of rows (with
        the one-row halo its 3x3 conv reads) is normalised, activated and convolved, and its
        rows are written out. The second conv writes over its own input (keeping the one row
        the next band still reads), and the shortcut is added band by band: alive at once are
        the input, one block-sized tensor and a band's temporaries, where the plain path holds
        four or five block-sized tensors; convolution workspaces scale with a band. At SD's
        VAE decoder's full resolution this is the decode's memory peak.
        """
        h = _banded_norm_conv(x, self.norm1, self.conv1)
        _banded_norm_conv(h, self.norm2, self.conv2, in_place=True)
        for r0, r1 in _bands(h):
            rows = x[:, :, r0:r1]
            h[:, :, r0:r1] += rows if self.conv_shortcut is None else self.conv_shortcut(rows)
        return h


# Per-image elements from which a no-grad ResnetBlock2D without time embedding (of its input)
# or a phased Upsample2D (of its output) works by bands (SD's VAE at 512 px: the 256-channel
# blocks at 256 px, everything at 512 px and the two upsamplings to them).
BAND_MIN_ELEMENTS = 1 << 24
# The most elements of one band (of the input); None: `DEVICE_BAND_ELEMENTS` by device type.
# On an H100 (SD 1.5 decode, fp16, 512 px) bands of 2^22 took 1.18x diffusers' time (their many
# small kernels) at 234 MiB, bands of 2^24 0.90x at 353 MiB (diffusers 609); on the CPU 2^22
# beats 2^24 on both (float32, 2 threads: 0.85x of diffusers at 434 MiB, 2^24 0.89x at 577).
BAND_ELEMENTS: int | None = None
DEVICE_BAND_ELEMENTS = {"cuda": 1 << 24, "cpu": 1 << 22}


def _runs_by_bands(x: Tensor, per_image: int) -> bool:
    """Whether a layer whose largest tensor has `per_image` elements per image works on `x` by
    bands: without autograd, from `BAND_MIN_ELEMENTS` on, and when `x` makes more than one band
    (a single band would only add work)."""
    return not torch.is_grad_enabled() and per_image >= BAND_MIN_ELEMENTS and len(_bands(x)) > 1


def _bands(x: Tensor) -> list[tuple[int, int]]:
    """Row ranges of at most a band's elements per image (`BAND_ELEMENTS`, else the device
    type's), at least one row each."""
    height = x.shape[2]
    elements = BAND_ELEMENTS or DEVICE_BAND_ELEMENTS.get(x.device.type, DEVICE_BAND_ELEMENTS["cpu"])
    step = max(1, elements // (x.shape[1] * x.shape[3]))
    return [(r, min(r + step, height)) for r in range(0, height, step)]


def _banded_norm_conv(
    x: Tensor, norm: nn.GroupNorm, conv: nn.Module, *, in_place: bool = False
) -> Tensor:
    """`conv(silu(norm(x)))` (a 3x3 conv, padding 1, as many channels out as in when
    `in_place`) computed by bands of rows, into a new tensor or over `x`."""
    b, channels, height, width = x.shape
    bands = _bands(x)
    mean, var = _group_stats(x, norm.num_groups, bands)
    per_group = channels // norm.num_groups
    scale = channel_scale(var, norm)
    shift = -mean.repeat_interleave(per_group, 1) * scale
    if norm.bias is not None:
        shift = shift + norm.bias.to(shift.dtype)
    scale, shift = (t.to(x.dtype)[:, :, None, None] for t in (scale, shift))
    out = x if in_place else _empty_like_layout(x, (b, conv.out_channels, height, width))
    above = None  # in place: the input row above the band, saved before it was overwritten
    for r0, r1 in bands:
        a, z = max(r0 - 1, 0), min(r1 + 1, height)  # the input rows the band's conv reads
        if above is None:
            rows = torch.addcmul(shift, x[:, :, a:z], scale)
        else:
            rows = torch.cat([above, x[:, :, r0:z]], 2).mul_(scale).add_(shift)
        first = r0 - a  # the conv output row of input row r0
        y = conv(F.silu(rows, inplace=True))[:, :, first : first + r1 - r0]
        if in_place:
            above = x[:, :, r1 - 1 : r1].clone()
        out[:, :, r0:r1] = y
    return out


def _empty_like_layout(x: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
    """An uninitialised (B, C, H, W) tensor of `x`'s dtype, device and memory format."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.empty(
        shape,
        dtype=x.dtype,
        device=x.device,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )


def _group_stats(x: Tensor, groups: int, bands: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Per-(image, group) mean and biased variance of `x` (float32 or wider), from per-band
    statistics combined exactly (Chan et al.), so a half-precision input is never copied whole."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    mean = m2 = None
    count = 0
    for r0, r1 in bands:
        band = x[:, :, r0:r1].unflatten(1, (groups, -1)).to(dtype)
        var_b, mean_b = torch.var_mean(band, dim=(2, 3, 4), correction=0)
        n = band[0, 0].numel()
        if mean is None:
            mean, m2 = mean_b, var_b * n
        else:
            delta = mean_b - mean
            mean = mean + delta * (n / (count + n))
            m2 = m2 + var_b * n + delta.square() * (count * n / (count + n))
        count += n
    return mean, m2 / count


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution that halves height and width.

    `padding=0` reproduces the VAE encoder's asymmetric padding: one zero row and column are
    added at the bottom and right only, as in the original CompVis autoencoder.

    Args:
        channels: Input channels.
        out_channels: Output channels (default: `channels`).
        padding: Symmetric padding of the conv (1 in the UNet, 0 in the VAE).
    """

    def __init__(self, channels: int, out_channels: int | None = None, *, padding: int = 1) -> None:
        super().__init__()
        self.padding = padding
        self.conv = Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, C, H, W) to (B, out, ceil(H/2), ceil(W/2)); floor instead if `padding=0`."""
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution.

    With `phases=True` a 2x upsampling never makes the upsampled input: each of the four output
    phases (even or odd rows, even or odd columns) is a 2x2 convolution of the input, whose
    taps are the 3x3 kernel's taps summed over the input pixel they all read (a nearest
    upsampled pixel repeats its source), written into its strided view of the output. Equal up
    to rounding, with 16 instead of 36 multiply-adds per input pixel and channel pair, and the
    4x-size upsampled copy of the input never alive (in SD's VAE decoder on a GPU, the 512 px
    upsampling was the decode's memory peak: its output, its upsampled input and cuDNN's
    workspace). Without autograd a large output is made by bands of input rows, as the
    `ResnetBlock2D` does. Calls with `size` (odd skip shapes) take the plain path.

    Args:
        channels: Input channels.
        out_channels: Output channels (default: `channels`).
        phases: Compute a 2x upsampling as four 2x2 convolutions (the VAE decoder does).
    """

    def __init__(
        self, channels: int, out_channels: int | None = None, *, phases: bool = False
    ) -> None:
        super().__init__()
        self.conv = Conv2d(channels, out_channels or channels, 3, padding=1)
        self.phases = phases

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Map (B, C, H, W) to (B, out, 2H, 2W), or to `size` when given (odd skip shapes)."""
        if self.phases and size is None:
            return self._by_phases(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)

    def _by_phases(self, x: Tensor) -> Tensor:
        """The upsampled convolution, one output phase (a, b) at a time; without autograd, an
        output of `BAND_MIN_ELEMENTS` elements per image or more is made by bands of input rows
        (with the row above and below each that its phases read), so the phases' temporaries
        and convolution workspaces scale with a band, not with the input."""
        weight, (h, w) = self.conv.weight, x.shape[-2:]
        out = _empty_like_layout(x, (x.shape[0], weight.shape[0], 2 * h, 2 * w))
        summed = weight.to(torch.promote_types(weight.dtype, torch.float32))  # sum half in fp32
        kernels = {
            (a, b): _fold(_fold(summed, a, dim=2), b, dim=3).to(weight.dtype)
            for a in (0, 1)
            for b in (0, 1)
        }
        for r0, r1 in _bands(x) if _runs_by_bands(x, out[0].numel()) else [(0, h)]:
            top = max(r0 - 1, 0)
            rows = x[:, :, top : min(r1 + 1, h)]
            for (a, b), k in kernels.items():
                # row j of y is phase a's output row 2 (top + j - a) + a
                y = F.conv2d(rows, k, self.conv.bias, padding=1)
                j = r0 - top + a
                out[:, :, 2 * r0 + a : 2 * r1 : 2, b::2] = y[:, :, j : j + r1 - r0, b : b + w]
                del y  # before the next phase's is made
        return out


def _fold(kernel: Tensor, phase: int, *, dim: int) -> Tensor:
    """A 3-tap kernel dimension folded to the 2 taps of an upsampled phase.

    Output row 2i of a nearest 2x upsampling reads input rows i-1 (tap 0) and i (taps 1 and 2);
    row 2i+1 reads rows i (taps 0 and 1) and i+1 (tap 2). Columns alike.
    """
    t0, t1, t2 = kernel.unbind(dim)
    return torch.stack((t0, t1 + t2) if phase == 0 else (t0 + t1, t2), dim)
