"""Noise schedules: SD's discrete sigmas, timestep spacings and sigma grids against diffusers."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from pilot.diffusion.schedules import (
    SCHEDULES,
    DiscreteSchedule,
    get_sigmas,
    get_sigmas_discrete,
    get_sigmas_exponential,
    get_sigmas_karras,
    prior_std,
    spaced_timesteps,
)

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
STEPS = (1, 7, 10, 25, 50, 999)


@pytest.fixture(scope="module")
def schedule() -> DiscreteSchedule:
    return DiscreteSchedule.scaled_linear()


def test_sd_schedule_matches_diffusers_bit_for_bit(schedule):
    ref = EulerDiscreteScheduler(**SD)
    assert torch.equal(schedule.sigmas, ref.sigmas[:-1].flip(0))
    torch.testing.assert_close(schedule.alphas_cumprod.float(), ref.alphas_cumprod)
    assert math.isclose(schedule.sigma_min, 0.0292, rel_tol=1e-2)
    assert math.isclose(schedule.sigma_max, 14.6146, rel_tol=1e-4)


def test_sigma_t_round_trip(schedule):
    t = torch.arange(1000)
    assert torch.equal(schedule.sigma_to_t(schedule.sigmas), t.float())  # trained levels: exact
    assert torch.equal(schedule.t_to_sigma(t), schedule.sigmas)
    frac = torch.tensor([0.25, 10.4, 500.75, 998.9], dtype=torch.float64)
    sigma = schedule.t_to_sigma(frac)
    torch.testing.assert_close(schedule.sigma_to_t(sigma).double(), frac, rtol=0, atol=1e-4)
    # log-linear between neighbours
    mid = schedule.t_to_sigma(torch.tensor([10.5]))
    torch.testing.assert_close(mid**2, schedule.sigmas[10:11] * schedule.sigmas[11:12])
    assert schedule.sigma_to_t(sigma, quantize=True).tolist() == [0, 10, 501, 999]
    # out of the trained range: clamped
    assert schedule.sigma_to_t(torch.tensor([1e-6, 0.0, 100.0])).tolist() == [0, 0, 999]
    assert schedule.sigma_to_t(torch.tensor(1.0)).shape == ()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_spacings_match_diffusers(schedule, spacing, steps_offset):
    for n in STEPS:
        cfg = dict(**SD, timestep_spacing=spacing, steps_offset=steps_offset)
        euler, ddim, dpm = (
            cls(**cfg)
            for cls in (EulerDiscreteScheduler, DDIMScheduler, DPMSolverMultistepScheduler)
        )
        for s in (euler, ddim, dpm):
            s.set_timesteps(n)
        t = spaced_timesteps(n, spacing, steps_offset=steps_offset)
        torch.testing.assert_close(t.float(), euler.timesteps)
        # DDIM: the same grid, rounded to integers for "linspace"
        assert torch.equal(t.round().long(), ddim.timesteps)
        t_dpm = spaced_timesteps(n, spacing, steps_offset=steps_offset, dpm_solver_grid=True)
        if n < 999 or steps_offset == 0:  # diffusers' DPM "leading" 999 + 1 passes t = 1000
            assert torch.equal(t_dpm.long(), dpm.timesteps)
        ours = get_sigmas_discrete(schedule, n, spacing, steps_offset=steps_offset)
        # Integer timesteps give diffusers' sigmas exactly; fractional "linspace" ones differ by
        # diffusers' interpolation linear in sigma vs ours linear in log-sigma.
        rtol = 1e-4 if spacing == "linspace" else 0
        torch.testing.assert_close(ours, euler.sigmas, rtol=rtol, atol=0)
        ours_dpm = get_sigmas_discrete(
            schedule, n, spacing, steps_offset=steps_offset, dpm_solver_grid=True
        )
        torch.testing.assert_close(ours_dpm, dpm.sigmas, rtol=0, atol=0)


def test_trailing_gives_n_distinct_steps_for_every_n():
    """numpy's float arange (diffusers) gives n + 1 trailing timesteps for 62 step counts, the
    last -1; we give exactly n, equal to its first n (diffusers' arithmetic, halves included)."""
    for n in range(1, 1001):
        t = spaced_timesteps(n, "trailing")
        assert t.shape == (n,) and t.unique().numel() == n and (t.diff() < 0).all(), n
        assert t[0] == 999 and t[-1] >= 0, n
        ref = np.round(np.arange(1000, 0, -1000 / n)) - 1  # diffusers' Euler / DPM-Solver
        assert np.array_equal(t.numpy(), ref[:n]), n


@pytest.mark.parametrize("n", [61, 998])
def test_trailing_steps_where_diffusers_runs_one_more(schedule, n):
    euler = EulerDiscreteScheduler(**SD, timestep_spacing="trailing")
    euler.set_timesteps(n)
    assert len(euler.timesteps) == n + 1 and euler.timesteps[-1] == -1  # its sigma: sigma(0)
    sigmas = get_sigmas("trailing", n, schedule)
    assert sigmas.shape == (n + 1,) and (sigmas.diff() < 0).all()
    assert torch.equal(sigmas[:-1], euler.sigmas[:n])


def test_discrete_sigmas_end_and_final(schedule):
    sigmas = get_sigmas_discrete(schedule, 50, "leading", steps_offset=1)
    assert sigmas.shape == (51,) and sigmas.dtype == torch.float32
    assert sigmas[-1] == 0 and (sigmas[:-1].diff() < 0).all()
    assert sigmas[0] == schedule.sigmas[981] and sigmas[-2] == schedule.sigmas[1]
    with_min = get_sigmas_discrete(schedule, 50, "leading", steps_offset=1, final="sigma_min")
    assert with_min[-1] == schedule.sigmas[0] and torch.equal(with_min[:-1], sigmas[:-1])
    assert get_sigmas_discrete(schedule, 10, "trailing")[0] == schedule.sigmas[-1]
    with pytest.raises(ValueError, match="'zero', 'sigma_min'"):
        get_sigmas_discrete(schedule, 10, final="last")
    with pytest.raises(ValueError, match="'leading', 'trailing', 'linspace'"):
        spaced_timesteps(10, "uniform")
    with pytest.raises(ValueError, match=r"steps must be in \[1, 1000\]"):
        spaced_timesteps(0)


def test_karras_sigmas(schedule):
    n, lo, hi = 12, schedule.sigma_min, schedule.sigma_max
    sigmas = get_sigmas_karras(n, lo, hi)
    assert sigmas.shape == (n + 1,) and sigmas.dtype == torch.float32 and sigmas[-1] == 0
    assert math.isclose(sigmas[0].item(), hi, rel_tol=1e-6)
    assert math.isclose(sigmas[-2].item(), lo, rel_tol=1e-6)
    root = sigmas[:-1].double() ** (1 / 7)  # linear in sigma^(1/rho)
    torch.testing.assert_close(root.diff(), root.diff()[:1].expand(n - 1), rtol=1e-5, atol=0)
    ref = EulerDiscreteScheduler(**SD, use_karras_sigmas=True)  # "linspace": the full range
    ref.set_timesteps(n)
    torch.testing.assert_close(sigmas, ref.sigmas, rtol=1e-6, atol=0)
    assert torch.equal(get_sigmas("karras", n, schedule), sigmas)


def test_exponential_sigmas(schedule):
    sigmas = get_sigmas_exponential(9, 0.1, 10.0)
    assert sigmas.shape == (10,) and sigmas[-1] == 0
    ratios = sigmas[1:-1] / sigmas[:-2]
    torch.testing.assert_close(ratios, ratios[:1].expand(8))
    torch.testing.assert_close(sigmas[[0, -2]], torch.tensor([10.0, 0.1]))
    ref = EulerDiscreteScheduler(**SD, use_exponential_sigmas=True)
    ref.set_timesteps(9)
    ours = get_sigmas("exponential", 9, schedule)
    torch.testing.assert_close(ours, ref.sigmas, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_registry_grids(name, schedule):
    for n in (1, 4, 30):
        sigmas = get_sigmas(name, n, schedule)
        assert sigmas.shape == (n + 1,) and sigmas.dtype == torch.float32
        assert sigmas[-1] == 0 and (sigmas.diff() < 0).all()
        assert sigmas[0] <= schedule.sigma_max * (1 + 1e-6)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("n", [0, -3])
def test_every_schedule_refuses_fewer_than_one_step(name, n, schedule):
    with pytest.raises(ValueError, match=rf"steps must be .*, got {n}$"):
        get_sigmas(name, n, schedule)


def test_unknown_schedule_lists_valid_names(schedule):
    with pytest.raises(ValueError, match="unknown schedule 'cosine'") as info:
        get_sigmas("cosine", 10, schedule)
    assert all(name in str(info.value) for name in SCHEDULES)


def test_prior_std():
    assert prior_std(14.6) == 14.6
    assert math.isclose(prior_std(14.6, data_std=1.0), (14.6**2 + 1) ** 0.5)
    ref = EulerDiscreteScheduler(**SD, timestep_spacing="leading", steps_offset=1)
    ref.set_timesteps(20)
    sigmas = get_sigmas("leading", 20, DiscreteSchedule.scaled_linear())
    torch.testing.assert_close(prior_std(sigmas[0], data_std=1.0), ref.init_noise_sigma)
