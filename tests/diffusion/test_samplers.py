"""Analytic tests of the samplers on Gaussian data, and of the eps/v denoiser wrappers.

Data x0 ~ N(mu, s^2) independently per dimension has the exact denoiser
`D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)`, the marginal `N(mu, s^2 + sigma^2)` at
every sigma, and the probability-flow ODE solution `x(sigma') = mu + (x(sigma) - mu) *
sqrt((s^2 + sigma'^2) / (s^2 + sigma^2))`. Samplers start from the exact marginal at sigmas[0],
so what is measured is their discretisation error only.
"""

import inspect

import pytest
import torch

from pilot.diffusion.denoisers import EpsDenoiser, VDenoiser, make_denoiser
from pilot.diffusion.samplers import SAMPLERS, BatchedNoise, get_sampler
from pilot.diffusion.schedules import DiscreteSchedule, get_sigmas_karras

DIMS = 4096
BATCH = 32  # 131072 samples, ~43700 per third of the dims: z-score std errors 0.005 / 0.007
SIGMA_MIN, SIGMA_MAX = 0.0292, 14.6  # Stable Diffusion's range
FIRST_ORDER = {"ddim", "euler", "euler_ancestral", "dpmpp_2m_sde"}  # weak order 1 in practice


class Gaussian:
    """Per-dimension Gaussian data with its exact denoiser and ODE flow."""

    def __init__(self, dims: int = DIMS, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mu = torch.rand(dims, generator=g, dtype=torch.float64) * 2 - 1
        self.s = torch.rand(dims, generator=g, dtype=torch.float64) * 1.2 + 0.3

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma2 = sigma.reshape(-1, 1) ** 2
        return (self.s**2 * x + sigma2 * self.mu) / (self.s**2 + sigma2)

    def flow(self, x: torch.Tensor, sigma: torch.Tensor, sigma_to: float) -> torch.Tensor:
        """Exact probability-flow ODE solution from sigma to sigma_to."""
        s2 = self.s**2
        return (
            self.mu + (x - self.mu) * ((s2 + sigma_to**2) / (s2 + sigma.reshape(-1, 1) ** 2)) ** 0.5
        )

    def consistency(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The exact consistency function (ODE flow to sigma 0): what LCM models learn."""
        return self.flow(x, sigma, 0.0)

    def marginal(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.mu + (self.s**2 + sigma**2) ** 0.5 * z

    def zscores(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) / self.s


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> Gaussian:
    return Gaussian()


def karras(n: int) -> torch.Tensor:
    return get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX).double()


def sample(name: str, data: Gaussian, sigmas: torch.Tensor, seeds=range(BATCH), **kwargs):
    """Run sampler `name` from the exact marginal at sigmas[0], with per-item seeds."""
    noise = BatchedNoise(list(seeds), (len(seeds), DIMS), dtype=torch.float64)
    x = data.marginal(noise.draw(), sigmas[0].item())
    denoiser = data.consistency if name == "lcm" else data.denoise
    return SAMPLERS[name](denoiser, x, sigmas, noise=noise, **kwargs)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_list_of_sigmas_samples_as_its_tensor(name, data):
    """`generate(sigmas=)` takes a list; the samplers used to fail on one with an
    AttributeError ('list' object has no attribute 'tolist')."""
    grid = get_sigmas_karras(4, SIGMA_MIN, SIGMA_MAX)  # float32, as the schedules make them
    x = torch.randn(BATCH, DIMS, generator=torch.Generator().manual_seed(0))
    denoiser = data.consistency if name == "lcm" else data.denoise

    def run(sigmas):
        noise = BatchedNoise(list(range(BATCH)), (BATCH, DIMS))
        return SAMPLERS[name](lambda x, s: denoiser(x.double(), s).float(), x, sigmas, noise=noise)

    assert torch.equal(run(grid.tolist()), run(grid))


def moments_error(data: Gaussian, x: torch.Tensor) -> tuple[float, float]:
    """Worst |mean| and |var - 1| of the z-scores, pooled within thirds of the data std."""
    order = data.s.argsort()
    groups = [data.zscores(x)[:, idx] for idx in order.chunk(3)]
    return max(abs(g.mean().item()) for g in groups), max(abs(g.var().item() - 1) for g in groups)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_converges_to_data_distribution(name, data):
    if name == "lcm":
        # LCM jumps to a consistency model's *sample*, not the posterior mean (with the exact
        # denoiser it loses variance every step, to s^2 / 2 on fine grids); with the exact
        # consistency function it is exact at any number of steps.
        for n in (1, 2, 4, 8):
            mean_err, var_err = moments_error(data, sample(name, data, karras(n)))
            print(f"lcm {n} steps: |mean| {mean_err:.4f} |var-1| {var_err:.4f}")
            assert mean_err < 0.02 and var_err < 0.03, (n, mean_err, var_err)
        return
    coarse = moments_error(data, sample(name, data, karras(10)))
    fine = moments_error(data, sample(name, data, karras(1000 if name in FIRST_ORDER else 100)))
    print(f"{name}: |mean|, |var-1| at 10 steps {coarse}, fine {fine}")
    assert fine[0] < 0.02 and fine[1] < 0.03
    assert fine[1] < coarse[1]


def ode_errors(name: str, data: Gaussian, steps: tuple[int, ...]) -> list[float]:
    """RMS error against the exact ODE solution from SIGMA_MAX to 0."""
    z = torch.randn(4, DIMS, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_T = data.marginal(z, SIGMA_MAX)
    exact = data.flow(x_T, torch.tensor(SIGMA_MAX, dtype=torch.float64), 0.0)
    return [
        (SAMPLERS[name](data.denoise, x_T, karras(n)) - exact).pow(2).mean().sqrt().item()
        for n in steps
    ]


def fitted_order(steps: tuple[int, ...], errors: list[float]) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    logn = torch.tensor(steps, dtype=torch.float64).log()
    loge = torch.tensor(errors).log()
    logn, loge = logn - logn.mean(), loge - loge.mean()
    return -(logn * loge).sum().item() / (logn**2).sum().item()


def test_second_order_samplers_beat_euler(data):
    # 10/20/40 steps: at 5 steps DPM++(2M) is still in its pre-asymptotic regime on this range.
    steps = (10, 20, 40)
    errors = {name: ode_errors(name, data, steps) for name in ("euler", "heun", "dpmpp_2m")}
    orders = {name: fitted_order(steps, e) for name, e in errors.items()}
    print(
        {name: (f"order {orders[name]:.2f}", [f"{e:.1e}" for e in errors[name]]) for name in orders}
    )
    assert 0.8 < orders["euler"] < 1.2
    for name in ("heun", "dpmpp_2m"):
        assert orders[name] > 1.8
        assert errors[name][-1] < errors["euler"][-1] / 10
    # DDIM with eta 0 is the Euler step (up to rounding: it is written as denoised + eps * sigma)
    torch.testing.assert_close(ode_errors("ddim", data, steps), errors["euler"], rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "ddim"])
def test_per_item_seeds_reproduce_across_batches(name, data):
    kwargs = {"eta": 1.0} if name == "ddim" else {}
    sigmas = karras(8)
    batch = sample(name, data, sigmas, seeds=[5, 7, 9], **kwargs)
    alone = sample(name, data, sigmas, seeds=[7], **kwargs)
    reordered = sample(name, data, sigmas, seeds=[9, 7], **kwargs)
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(batch[1], reordered[1])
    assert not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_seed_is_bit_identical(name, data):
    sigmas = karras(6)
    assert torch.equal(sample(name, data, sigmas), sample(name, data, sigmas))


def test_batched_noise_matches_per_item_generators():
    noise = BatchedNoise([3, 4], (2, 5))
    for _ in range(2):
        draw = noise.draw()
        assert draw.shape == (2, 5) and draw.dtype == torch.float32
    g3, g4 = (torch.Generator().manual_seed(s) for s in (3, 4))
    expected = [torch.randn(1, 5, generator=g) for g in (g3, g3, g4, g4)]
    assert torch.equal(draw, torch.cat([expected[1], expected[3]]))
    with pytest.raises(ValueError, match="3 seeds for a batch of 2"):
        BatchedNoise([1, 2, 3], (2, 5))


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "euler_ancestral", "dpmpp_sde"])
def test_sliced_sigmas_continue_the_full_run(name, data):
    """No hidden state: sampling sigmas[k:] from the k-th latents reproduces the full run."""
    sigmas, k = karras(10), 4
    states = []
    full = sample(name, data, sigmas, callback=lambda p: states.append(p))
    assert [p["i"] for p in states] == list(range(10))
    assert set(states[0]) == {"i", "x", "sigma", "denoised"}
    assert states[k]["sigma"] == sigmas[k]
    noise = BatchedNoise(list(range(BATCH)), (BATCH, DIMS), dtype=torch.float64)
    for _ in range(1 + sum(noise_draws(name, sigmas[: k + 1]))):  # replay the draws used so far
        noise.draw()
    rest = SAMPLERS[name](data.denoise, states[k]["x"], sigmas[k:], noise=noise)
    assert torch.equal(rest, full)


def noise_draws(name: str, sigmas: torch.Tensor) -> list[int]:
    """Noise draws per step over `sigmas` (all steps go to a positive sigma here)."""
    per_step = {"euler_ancestral": 1, "dpmpp_sde": 2}.get(name, 0)
    return [per_step] * (len(sigmas) - 1)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_img2img_slices_converge(name, data):
    """img2img: noise a data sample to sigmas[k] and sample sigmas[k:]: still the data."""
    sigmas = karras(1000 if name in FIRST_ORDER else 100)
    k = len(sigmas) // 2
    g = torch.Generator().manual_seed(2)
    init = data.marginal(torch.randn(BATCH, DIMS, generator=g, dtype=torch.float64), 0.0)
    x = init + sigmas[k] * torch.randn(BATCH, DIMS, generator=g, dtype=torch.float64)
    noise = BatchedNoise(list(range(BATCH)), (BATCH, DIMS), dtype=torch.float64)
    denoiser = data.consistency if name == "lcm" else data.denoise
    out = SAMPLERS[name](denoiser, x, sigmas[k:], noise=noise)
    mean_err, var_err = moments_error(data, out)
    print(f"img2img {name}: |mean| {mean_err:.4f} |var-1| {var_err:.4f}")
    assert mean_err < 0.02 and var_err < 0.03
    # strength 0: only the final sigma 0 remains, nothing to do
    assert torch.equal(SAMPLERS[name](denoiser, init, sigmas[-1:]), init)


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(ValueError, match="unknown sampler 'plms'") as info:
        get_sampler("plms")
    assert all(name in str(info.value) for name in SAMPLERS)
    assert get_sampler("euler") is SAMPLERS["euler"]


# Denoiser wrappers: a fake UNet that predicts the exact eps / v of Gaussian data.


def exact_unet(data: Gaussian, schedule: DiscreteSchedule, prediction_type: str):
    """unet(x_vp, t, context) -> exact eps or v, for 2-d (B, D) latents."""

    def unet(x_vp, t, context, **kwargs):
        sigma = schedule.t_to_sigma(t).double().reshape(-1, 1)
        x = x_vp * (1 + sigma**2) ** 0.5
        x0 = data.denoise(x, sigma)
        eps = (x - x0) / sigma
        alpha, sigma_vp = 1 / (1 + sigma**2) ** 0.5, sigma / (1 + sigma**2) ** 0.5
        out = eps if prediction_type == "epsilon" else alpha * eps - sigma_vp * x0
        return (out + context).to(x_vp.dtype)  # context: a (B, 1) offset, checks it is passed

    return unet


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoisers_recover_exact_denoiser(prediction_type, data):
    schedule = DiscreteSchedule.scaled_linear()
    unet = exact_unet(data, schedule, prediction_type)
    denoiser = make_denoiser(unet, prediction_type, schedule)
    assert isinstance(denoiser, EpsDenoiser if prediction_type == "epsilon" else VDenoiser)
    x = data.marginal(torch.randn(3, DIMS, dtype=torch.float64), 2.0)
    sigma = schedule.sigmas[[100, 500, 900]].double()  # trained levels: t_to_sigma is exact
    out = denoiser(x, sigma, context=torch.zeros(3, 1, dtype=torch.float64))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, data.denoise(x, sigma), rtol=1e-5, atol=1e-5)
    # a scalar sigma broadcasts over the batch
    one = denoiser(x, sigma[1], context=torch.zeros(3, 1, dtype=torch.float64))
    torch.testing.assert_close(one, data.denoise(x, sigma[1].expand(3)), rtol=1e-5, atol=1e-5)


def test_denoiser_feeds_model_dtype_and_returns_input_dtype():
    seen = {}

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.bfloat16))

        def forward(self, x, t, context, *, down_residuals=None):
            seen.update(dtype=x.dtype, t=t, residuals=down_residuals)
            return x * self.scale

    denoiser = EpsDenoiser(Tiny())
    x = torch.randn(2, 4, 3, 3)
    sigma = denoiser.schedule.sigmas[[-1, 0]]  # sigma_max, sigma_min
    out = denoiser(x, sigma, context=None, down_residuals=["r"])
    assert out.dtype == torch.float32 and seen["dtype"] == torch.bfloat16
    assert seen["residuals"] == ["r"]
    assert seen["t"].shape == (2,) and seen["t"].tolist() == [999, 0]
    with pytest.raises(ValueError, match="valid: epsilon, v_prediction"):
        make_denoiser(Tiny(), "sample")


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("churn", [0.0, 0.5])
def test_sampling_never_reads_the_latents_device(name, churn):
    """Latents on the meta device, where reading a value raises (`.item()`, `if tensor`) as a
    GPU read would wait for the queued work: every branch of a step reads the host's sigmas,
    and an ordinary denoiser (EpsDenoiser) gets its timesteps without a read either."""
    schedule = DiscreteSchedule.scaled_linear()
    sigmas = get_sigmas_karras(5, schedule.sigma_min, schedule.sigma_max)  # on the CPU
    x = torch.randn(2, 4, 8, 8, device="meta")
    denoiser = EpsDenoiser(lambda x, t, context: x * t[:, None, None, None], schedule)
    sampler = SAMPLERS[name]
    kwargs = {"s_churn": churn} if "s_churn" in inspect.signature(sampler).parameters else {}
    out = sampler(denoiser, x * sigmas[0], sigmas, extra_args={"context": None}, **kwargs)
    assert out.shape == x.shape and out.device.type == "meta"
