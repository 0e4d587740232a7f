import itertools
import math

import pytest
import torch

from dream_policy.diffusion import DiffusionSchedule, ddim_timesteps, squared_cosine_betas

K = 100


def closed_form_abar(t: int) -> float:
    """alphas_cumprod[t] = f((t + 1) / K) / f(0), f(s) = cos²((s + 0.008) / 1.008 · π/2) (Nichol & Dhariwal)."""

    def f(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return f((t + 1) / K) / f(0)


def oracle(x0: torch.Tensor, schedule: DiffusionSchedule, calls: list | None = None):
    """A model_fn returning the exact noise that turns ``x0`` into its input x_t."""

    def model_fn(x_t, t, cond):
        if calls is not None:
            calls.append((int(t[0]), cond is None))
        abar = schedule.alphas_cumprod[t].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    return model_fn


def test_alphas_cumprod_monotone_in_unit_interval():
    s = DiffusionSchedule()
    a = s.alphas_cumprod
    assert a.shape == (K,) and a.dtype == torch.float64
    assert (a > 0).all() and (a <= 1).all()
    assert (a[1:] < a[:-1]).all()
    assert s.betas.max() == pytest.approx(0.999)  # the last beta is clipped


def test_alphas_cumprod_matches_closed_form():
    a = DiffusionSchedule().alphas_cumprod
    # every step except the last, whose beta the 0.999 cap clips
    for t in range(K - 1):
        assert float(a[t]) == pytest.approx(closed_form_abar(t), rel=1e-9, abs=1e-12)
    assert float(a[K - 1]) == pytest.approx(closed_form_abar(K - 2) * 0.001, rel=1e-9)


def test_betas_other_lengths():
    b = squared_cosine_betas(1000)
    assert b.shape == (1000,) and (b > 0).all() and b.max() <= 0.999


def test_add_noise_known_values():
    s = DiffusionSchedule()
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]])  # (B=2, 2)
    noise = torch.tensor([[0.0, 1.0], [-1.0, 2.0]])
    t = torch.tensor([0, 50])
    out = s.add_noise(x0, noise, t)
    for b in range(2):
        abar = closed_form_abar(int(t[b]))
        expected = math.sqrt(abar) * x0[b] + math.sqrt(1 - abar) * noise[b]
        assert torch.allclose(out[b], expected, atol=1e-6)
    # near-clean at t=0, near-pure-noise at the last step
    g = torch.Generator().manual_seed(0)
    x3, n3 = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    assert torch.allclose(s.add_noise(x3, n3, torch.tensor([0, 0])), x3, atol=0.1)
    assert torch.allclose(s.add_noise(x3, n3, torch.tensor([K - 1, K - 1])), n3, atol=5e-3)


def test_add_noise_errors():
    s = DiffusionSchedule()
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="noise shape"):
        s.add_noise(x, torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="t must have shape"):
        s.add_noise(x, x, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 100\)"):
        s.add_noise(x, x, torch.tensor([0, 100]))


def test_ddim_timesteps():
    assert ddim_timesteps(100, 10) == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert ddim_timesteps(100, 1) == [99]
    assert ddim_timesteps(100, 100) == list(range(99, -1, -1))
    ts = ddim_timesteps(100, 7)
    assert len(ts) == 7 and ts[0] == 99 and all(a > b >= 0 for a, b in itertools.pairwise(ts))
    for bad in (0, 101, 2.5):
        with pytest.raises(ValueError, match="steps must be an int"):
            ddim_timesteps(100, bad)


@pytest.mark.parametrize("guidance", [1.0, 1.5])
def test_ddim_oracle_recovers_x0(guidance):
    s = DiffusionSchedule()
    x0 = torch.randn(4, 3, 7, generator=torch.Generator().manual_seed(1))  # (B, chunk, action_dim)
    cond = torch.zeros(4, 3, 16)
    out = s.ddim_sample(oracle(x0, s), (4, 3, 7), cond, steps=10, guidance=guidance)
    assert out.shape == x0.shape
    assert (out - x0).abs().max() < 1e-4


def test_ddim_oracle_with_eta_recovers_x0():
    s = DiffusionSchedule()
    x0 = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    out = s.ddim_sample(oracle(x0, s), (2, 3, 7), None, guidance=1.0, eta=1.0, generator=g)
    assert (out - x0).abs().max() < 1e-4


def test_guidance_call_counts_and_step_hook():
    s = DiffusionSchedule()
    x0 = torch.zeros(2, 3, 7)
    cond = torch.ones(2, 1, 4)
    calls: list = []
    s.ddim_sample(oracle(x0, s, calls), (2, 3, 7), cond, steps=10, guidance=1.0)
    assert len(calls) == 10 and not any(is_none for _, is_none in calls)
    calls.clear()
    steps_seen: list = []
    s.ddim_sample(
        oracle(x0, s, calls),
        (2, 3, 7),
        cond,
        steps=10,
        guidance=1.5,
        on_step=lambda i, t: steps_seen.append((i, t)),
    )
    assert len(calls) == 20
    assert [is_none for _, is_none in calls] == [False, True] * 10
    assert steps_seen == list(enumerate(ddim_timesteps(K, 10)))
    assert [t for t, _ in calls[::2]] == ddim_timesteps(K, 10)


def test_guidance_combines_predictions():
    s = DiffusionSchedule()

    def const_model(x, t, cond):  # eps_cond = 1, eps_uncond = 0 -> guided eps = guidance
        return torch.ones_like(x) if cond is not None else torch.zeros_like(x)

    g = torch.Generator()
    a = s.ddim_sample(const_model, (1, 2), torch.ones(1), steps=1, guidance=2.0, generator=g.manual_seed(0))
    x_T = torch.randn((1, 2), generator=g.manual_seed(0))
    abar = float(s.alphas_cumprod[K - 1])
    expected = (x_T - math.sqrt(1 - abar) * 2.0) / math.sqrt(abar)  # one step lands on x0_pred
    assert torch.allclose(a, expected, rtol=1e-5)


def test_determinism_with_generator():
    s = DiffusionSchedule()

    def model_fn(x, t, cond):
        return 0.5 * x + 0.01 * t.view(-1, 1, 1).float()

    def sample(seed: int, eta: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return s.ddim_sample(model_fn, (2, 3, 7), None, steps=5, guidance=1.0, eta=eta, generator=g)

    for eta in (0.0, 1.0):
        assert torch.equal(sample(0, eta), sample(0, eta))
        assert not torch.equal(sample(0, eta), sample(1, eta))


def test_sample_errors():
    s = DiffusionSchedule()
    with pytest.raises(ValueError, match="needs a condition"):
        s.ddim_sample(lambda x, t, c: x, (1, 2), None, guidance=1.5)
    with pytest.raises(ValueError, match="guidance must be >= 1.0"):
        s.ddim_sample(lambda x, t, c: x, (1, 2), torch.ones(1), guidance=0.5)
    with pytest.raises(ValueError, match="train_steps must be a positive int"):
        DiffusionSchedule(train_steps=0)


def test_clip_sample_bounds_a_noisy_noise_model():
    """A network's eps has small errors and bounded outputs: its error is blown up at the first trailing
    step (alpha_bar ~ 0), the sample leaves the range the network can correct, unless the clean-sample
    estimate is clipped to the data range."""
    s = DiffusionSchedule()
    x0 = torch.rand(8, 3, 7, generator=torch.Generator().manual_seed(3)) * 2 - 1  # data in [-1, 1]
    exact = oracle(x0, s)

    def noisy(x_t, t, cond):
        error = 0.05 * torch.randn(x_t.shape, generator=torch.Generator().manual_seed(int(t[0])))
        return exact(x_t, t, cond).clamp(-4, 4) + error

    wild = s.ddim_sample(noisy, (8, 3, 7), None, guidance=1.0, generator=torch.Generator().manual_seed(0))
    clipped = s.ddim_sample(noisy, (8, 3, 7), None, guidance=1.0, generator=torch.Generator().manual_seed(0),
                            clip_sample=1.0)
    assert (wild - x0).abs().mean() > 1.0
    assert clipped.abs().max() <= 1.0 + 1e-6 and (clipped - x0).abs().mean() < 0.1
    exact_clipped = s.ddim_sample(exact, (8, 3, 7), None, guidance=1.0, clip_sample=1.0)
    assert (exact_clipped - x0).abs().max() < 1e-4  # clipping leaves an in-range sample unchanged
    with pytest.raises(ValueError, match="clip_sample"):
        s.ddim_sample(exact, (8, 3, 7), None, guidance=1.0, clip_sample=0.0)


def test_noise_scale_is_a_sampling_temperature():
    s = DiffusionSchedule()

    def model_fn(x, t, cond):
        return 0.5 * x + 0.01 * t.view(-1, 1, 1).float()

    def sample(seed: int, scale: float) -> torch.Tensor:
        return s.ddim_sample(model_fn, (2, 3, 7), None, steps=5, guidance=1.0, noise_scale=scale,
                             generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(0, 1.0), s.ddim_sample(model_fn, (2, 3, 7), None, steps=5, guidance=1.0,
                                                     generator=torch.Generator().manual_seed(0)))  # the default
    assert torch.equal(sample(0, 0.0), sample(1, 0.0))  # no starting noise, eta 0: the seed does not matter
    spread = {scale: (sample(0, scale) - sample(1, scale)).abs().mean() for scale in (0.25, 1.0)}
    assert 0 < spread[0.25] < spread[1.0]
    with pytest.raises(ValueError, match="noise_scale must be >= 0"):
        sample(0, -0.5)
