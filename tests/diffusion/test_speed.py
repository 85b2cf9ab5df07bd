"""Speed-ups (`pilot.diffusion.speed`): channels_last, torch.compile, CUDA graphs on tiny models."""

import copy
import os

import pytest
import torch

from pilot.diffusion.pipeline import Request, SamplingSettings, generate
from pilot.diffusion.speed import CUDAGraphed, SpeedSettings, optimize, optimize_model
from pilot.models.controlnet import CONTROLNET_PRESETS, ControlNet
from pilot.models.unet import UNET_PRESETS, UNet
from tests.conftest import make_tiny_sd

# Measured on the shared 2-core CPU (torch 2.14.1, load ~3): the first call of the compiled
# tiny UNet took 105 s (inductor C++ codegen), then 13 ms.
COMPILE_TESTS = os.environ.get("PILOT_COMPILE_TESTS") == "1"


def unet_inputs(device="cpu", batch=2, size=8, seed=1) -> tuple:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    context = torch.randn(batch, 77, 32, generator=g)
    t = torch.tensor([500.0, 120.0][:batch])
    return x.to(device), t.to(device), context.to(device)


def controlnet() -> ControlNet:
    """A tiny ControlNet whose zero convolutions are not zero (so its residuals are)."""
    net = ControlNet(CONTROLNET_PRESETS["tiny"]).eval()
    with torch.no_grad():
        for p in [*net.controlnet_down_blocks.parameters(), *net.controlnet_mid_block.parameters()]:
            p.normal_(0, 0.02)
    return net


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).abs().max() / ref.abs().max()).item()


def test_settings_validate_and_describe():
    with pytest.raises(ValueError, match="unknown compile mode 'reduce-overhead'"):
        SpeedSettings(compile_mode="reduce-overhead")
    assert SpeedSettings().describe() == "eager"
    settings = SpeedSettings(
        channels_last=True, compile=True, compile_mode="max-autotune-no-cudagraphs"
    )
    assert settings.describe() == "channels_last+compile(max-autotune-no-cudagraphs)"
    both = SpeedSettings(channels_last=True, prepack=True)  # what reaches a UNet where
    assert both.for_model("cpu").describe() == "prepack"
    assert both.for_model(torch.device("cuda", 0)).describe() == "channels_last"


def test_cuda_graphs_refused_on_cpu():
    sd = make_tiny_sd()
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device.*cpu"):
        optimize(sd, SpeedSettings(channels_last=True, cuda_graphs=True))
    assert sd.unet.conv_in.weight.is_contiguous()  # refused before converting anything
    with pytest.raises(ValueError, match="CUDA device"):
        CUDAGraphed(sd.unet)


@torch.no_grad()
def test_channels_last_unet_controlnet_and_vae_match():
    """NHWC models compute what NCHW ones do; on the CPU `optimize` converts the VAE only
    (there channels_last slows the UNet down)."""
    sd = make_tiny_sd()
    x, t, context = unet_inputs()
    net = controlnet()
    image = torch.rand(2, 3, 64, 64)
    ref_unet, ref_net = sd.unet(x, t, context), net(x, t, context, image)
    ref_vae = sd.vae.decode(x)
    settings = SpeedSettings(channels_last=True)
    fast = optimize(sd, settings)
    assert fast.unet is sd.unet and fast.unet.conv_in.weight.is_contiguous()
    assert optimize_model(net, settings).conv_in.weight.is_contiguous()
    assert fast.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(fast.vae.decode(x), ref_vae) < 1e-5
    nhwc = torch.channels_last
    assert rel_err(sd.unet.to(memory_format=nhwc)(x, t, context), ref_unet) < 1e-5
    down, mid = net.to(memory_format=nhwc)(x, t, context, image)
    assert rel_err(mid, ref_net[1]) < 1e-5
    assert max(rel_err(a, b) for a, b in zip(down, ref_net[0], strict=True)) < 1e-5


@torch.no_grad()
def test_prepack_unet_and_controlnet_match():
    """`prepack` on CPU models: every pilot Conv2d runs on oneDNN-layout weights, and the UNet
    and ControlNet compute what they did; off the CPU nothing is set (no model there here)."""
    from pilot.nn.resnet import Conv2d

    unet, net = UNet(UNET_PRESETS["tiny"]).eval(), controlnet()
    x, t, context = unet_inputs()
    image = torch.rand(2, 3, 64, 64)
    ref_unet, (ref_down, ref_mid) = unet(x, t, context), net(x, t, context, image)
    settings = SpeedSettings(prepack=True)
    assert settings.describe() == "prepack"
    assert optimize_model(unet, settings) is unet and optimize_model(net, settings) is net
    assert all(m.prepack for m in [*unet.modules(), *net.modules()] if isinstance(m, Conv2d))
    assert rel_err(unet(x, t, context), ref_unet) < 1e-5
    down, mid = net(x, t, context, image)
    assert rel_err(mid, ref_mid) < 1e-5
    assert max(rel_err(a, b) for a, b in zip(down, ref_down, strict=True)) < 1e-5


def test_compile_is_applied_in_place():
    """The cheap half: `compile` wraps the module's call in place (compiling happens lazily)."""
    unet = UNet(UNET_PRESETS["tiny"]).eval()
    assert optimize_model(unet, SpeedSettings(compile=True)) is unet
    assert unet._compiled_call_impl is not None


@pytest.mark.slow
@pytest.mark.skipif(
    not COMPILE_TESTS,
    reason="compiling the tiny UNet took 105 s on the 2-core CPU; set PILOT_COMPILE_TESTS=1",
)
@torch.inference_mode()
def test_compiled_unet_matches_eager(monkeypatch):
    """With the feed-forward chunks forced on (4 and 2 chunks) and the in-place residuals, as
    inference runs them (measured: 9.7e-07, 59 s to compile)."""
    from pilot.nn import attention

    monkeypatch.setattr(attention, "CHUNK_MIN_ELEMENTS", 1 << 10)
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 1 << 13)
    unet = UNet(UNET_PRESETS["tiny"]).eval()
    x, t, context = unet_inputs()
    ref = unet(x, t, context)
    optimize_model(unet, SpeedSettings(compile=True))
    assert rel_err(unet(x, t, context), ref) < 1e-4


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_graphed_unet_and_controlnet_match_eager():
    unet = UNet(UNET_PRESETS["tiny"]).eval().cuda()
    net = controlnet().cuda()
    graphed_unet, graphed_net = CUDAGraphed(unet), CUDAGraphed(net)
    assert graphed_net.cfg is net.cfg  # attributes come from the wrapped model
    assert graphed_unet.state_dict().keys() == unet.state_dict().keys()
    image = torch.rand(2, 3, 64, 64, device="cuda")
    for seed in (0, 1):  # the second call replays the first call's graph with new inputs
        x, t, context = unet_inputs("cuda")
        x = x + seed
        down, mid = net(x, t, context, image, scale=0.7)
        ref = unet(x, t, context, down_residuals=down, mid_residual=mid)
        g_down, g_mid = graphed_net(x, t, context, image, scale=0.7)
        out = graphed_unet(x, t, context, down_residuals=g_down, mid_residual=g_mid)
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-3)  # TF32 convolutions on GPUs
    graphed_unet(*unet_inputs("cuda", batch=1))  # another shape: another graph
    assert len(graphed_unet.graphs) == 2 and len(graphed_net.graphs) == 1


@pytest.mark.gpu
def test_optimized_generate_matches_eager_on_cuda():
    sd = make_tiny_sd().to("cuda")
    request = Request(["a red wall"], seeds=[3], width=32, height=32)
    settings = SamplingSettings(sampler="euler", steps=3, cfg=5.0)
    ref = generate(sd, request, settings)
    fast = optimize(sd, SpeedSettings(channels_last=True, cuda_graphs=True))
    assert isinstance(fast.unet, CUDAGraphed)
    assert (generate(fast, request, settings) - ref).abs().max() < 5e-3  # NHWC algorithms


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_graphed_controlnet_replays_one_graph_for_every_scale():
    from pilot.diffusion.control import Control, ControlDenoiser
    from pilot.diffusion.denoisers import EpsDenoiser

    unet, net = UNet(UNET_PRESETS["tiny"]).eval().cuda(), controlnet().cuda()
    graphed = CUDAGraphed(net)
    image = torch.rand(1, 3, 64, 64, device="cuda")
    x, _, context = unet_inputs("cuda")
    sigma, sigmas = torch.tensor(10.0, device="cuda"), torch.tensor([10.0, 1.0, 0.0])
    for scale in (1.0, 0.5, 0.25):  # a per-frame scale schedule
        ref = ControlDenoiser(EpsDenoiser(unet), [Control(net, image, scale)], sigmas)
        fast = ControlDenoiser(EpsDenoiser(unet), [Control(graphed, image, scale)], sigmas)
        out, expected = fast(x, sigma, context=context), ref(x, sigma, context=context)
        assert torch.allclose(out, expected, atol=1e-4, rtol=1e-3)
    assert len(graphed.graphs) == 1


@pytest.mark.gpu
@torch.no_grad()
def test_controlled_sampling_never_waits_for_the_gpu():
    """After the first step (schedules copied to the GPU once, hint features memoised), a
    controlled CFG sampling loop queues its work without a host sync: eager GPU sampling lets
    the CPU run ahead of the GPU."""
    from pilot.diffusion.control import Control, controlled_cfg
    from pilot.diffusion.denoisers import EpsDenoiser
    from pilot.diffusion.samplers import sample_euler
    from pilot.diffusion.schedules import DiscreteSchedule, get_sigmas_karras

    unet, net = UNet(UNET_PRESETS["tiny"]).eval().cuda(), controlnet().cuda()
    schedule = DiscreteSchedule.scaled_linear()
    sigmas = get_sigmas_karras(4, schedule.sigma_min, schedule.sigma_max)  # on the host
    x, _, context = unet_inputs("cuda", batch=1)
    image = torch.rand(1, 3, 64, 64, device="cuda")
    denoiser = controlled_cfg(EpsDenoiser(unet, schedule), [Control(net, image, 0.8)], sigmas, 5.0)
    extra = {"context": context, "uncond_context": torch.zeros_like(context)}
    denoiser(x, sigmas[0].cuda(), **extra)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sample_euler(denoiser, x * sigmas[0], sigmas, extra_args=extra)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.isfinite().all()


@pytest.mark.gpu
@torch.no_grad()
def test_graph_replays_survive_a_cublas_workspace_clear():
    """inductor's CUDA graph trees clear cuBLAS's workspaces around every warm-up and
    recording. A graph whose matrix products kept a workspace made before its capture would
    then write into freed memory: here, memory handed to other tensors, or unmapped."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024)
    )
    model = model.cuda().half().eval()
    graphed = CUDAGraphed(model)
    x = torch.randn(8192, 1024, device="cuda", dtype=torch.half)
    graphed(x)  # captured
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    fillers = [torch.full((2**22,), 7.0, device="cuda") for _ in range(64)]  # 1 GiB
    for _ in range(3):
        out = graphed(x)
    torch.cuda.synchronize()
    assert all(bool((f == 7).all()) for f in fillers)
    assert torch.allclose(out, model(x), atol=1e-2, rtol=1e-2)


class _Wide(torch.nn.Module):
    """Large temporaries (two 16 MiB tensors for a (4096, 1024) input), a small output."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        return ((x * self.scale).exp() * 2).sum(-1)


def _pool_bytes(pool) -> int:
    """Bytes of the CUDA memory segments of one graph pool."""
    segments = torch.cuda.memory_snapshot()
    return sum(s["total_size"] for s in segments if tuple(s["segment_pool_id"]) == tuple(pool))


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_graphed_models_share_one_memory_pool():
    import gc

    a, b = CUDAGraphed(_Wide(0.5).cuda()), CUDAGraphed(_Wide(-0.5).cuda())
    x = torch.rand(4096, 1024, device="cuda")
    a(x)  # capture
    [(graph_a, _, _)] = a.graphs.values()
    pool_size = _pool_bytes(graph_a.pool())
    b(x)
    [(graph_b, _, _)] = b.graphs.values()
    assert graph_b.pool() == graph_a.pool()
    assert pool_size >= 32 * 2**20  # a's working memory
    assert _pool_bytes(graph_a.pool()) - pool_size <= 2 * 2**20  # b reuses it
    for seed in range(3):  # interleaved replays, each output its own
        y = torch.rand(4096, 1024, device="cuda") + seed
        out_a, out_b = a(y), b(y)
        assert torch.allclose(out_a, a.module(y), rtol=1e-5)
        assert torch.allclose(out_b, b.module(y), rtol=1e-5)
    del a, graph_a
    gc.collect()
    torch.cuda.empty_cache()  # the pool lives on with b's graph
    assert torch.allclose(b(x), b.module(x), rtol=1e-5)


@pytest.mark.gpu
@torch.inference_mode()
def test_compiled_and_graphed_unet_replays_match_eager_with_chunks(monkeypatch):
    """`compile` + `cuda_graphs` as the benchmark runs them (inference mode, channels_last),
    with the feed-forward chunks and the in-place residuals on (constants made small enough for
    the tiny UNet): replays with new inputs match eager. A third H200 run of the SD 1.5
    benchmark failed with "unspecified launch failure" while timing this stack beside
    diffusers' "reduce-overhead" one; this separates pilot's part."""
    from pilot.nn import attention

    monkeypatch.setattr(attention, "CHUNK_MIN_ELEMENTS", 1 << 10)
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 1 << 13)  # 4 and 2 chunks
    unet = UNet(UNET_PRESETS["tiny"]).eval().cuda()
    fast = optimize_model(
        copy.deepcopy(unet),
        SpeedSettings(channels_last=True, compile=True, cuda_graphs=True),
    )
    for seed in range(3):
        x, t, context = (v.to("cuda") for v in unet_inputs(seed=seed))
        ref = unet(x, t, context)
        out = fast(x, t, context)
        torch.cuda.synchronize()
        assert rel_err(out, ref) < 5e-3  # TF32 convolutions


@pytest.mark.gpu
@torch.inference_mode()
def test_graphed_unet_beside_inductor_cudagraph_trees():
    """A `CUDAGraphed` UNet and a model compiled with "reduce-overhead" (inductor's CUDA graph
    trees, as the benchmark compiles diffusers) in one process, their calls interleaved and the
    cache emptied between them as the benchmark's memory columns do: every output stays right."""
    import gc

    unet = UNet(UNET_PRESETS["tiny"]).eval().cuda()
    other = copy.deepcopy(unet)
    trees = torch.compile(other, mode="reduce-overhead")
    graphed = CUDAGraphed(copy.deepcopy(unet))
    for seed in range(4):
        x, t, context = (v.to("cuda") for v in unet_inputs(seed=seed))
        ref = unet(x, t, context)
        results = [trees(x, t, context).clone(), graphed(x, t, context)]
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        assert max(rel_err(r, ref) for r in results) < 5e-3
