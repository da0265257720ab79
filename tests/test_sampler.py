"""The sampler's mathematics on data whose velocity is known in closed form (a 1-D Gaussian mixture).

Each latent "frame" holds D independent samples, so one sampler run draws D samples at once. This checks the
load-bearing claim of the method: the reverse SDE with g_t = g_scale t^2 has the marginals of the flow ODE, so
it samples the data distribution as well as the ODE does, also when its noise is a codebook innovation.
"""
import math

import torch

import gvcc

WEIGHTS, MEANS, STDS = (0.3, 0.7), (-2.0, 1.5), (0.3, 0.5)


def mixture_velocity(x, t):
    """u(x_t, t) = E[eps - x0 | x_t] for x0 ~ sum_i pi_i N(mu_i, s_i^2), eps ~ N(0, 1), x_t = (1-t) x0 + t eps."""
    x = x.double()
    logp, u_i = [], []
    for pi, mu, s in zip(WEIGHTS, MEANS, STDS):
        var = (1 - t) ** 2 * s * s + t * t
        dev = x - (1 - t) * mu
        logp.append(math.log(pi) - 0.5 * math.log(var) - 0.5 * dev * dev / var)
        e_eps = t / var * dev
        e_x0 = mu + (1 - t) * s * s / var * dev
        u_i.append(e_eps - e_x0)
    resp = torch.softmax(torch.stack(logp), dim=0)
    return (resp * torch.stack(u_i)).sum(0).float()


def sample_mixture(n, seed):
    gen = torch.Generator().manual_seed(seed)
    comp = (torch.rand(n, generator=gen) < WEIGHTS[0]).long()
    mu, s = torch.tensor(MEANS)[1 - comp], torch.tensor(STDS)[1 - comp]
    return mu + s * torch.randn(n, generator=gen)


def wasserstein1(a, b):
    return float((torch.sort(a.flatten()).values - torch.sort(b.flatten()).values).abs().mean())


def run_with_fresh_noise(g_scale, n, seed, steps=20, tail=3, shift=3.0):
    grid = gvcc.time_grid(steps, shift)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, 1, n, generator=gen)
    for k in range(steps):
        t, dt = grid[k], grid[k] - grid[k + 1]
        u = mixture_velocity(x, t)
        if k < steps - tail:
            x = gvcc.sde_step(x, u, t, dt, g_scale, torch.randn(x.shape, generator=gen))
        else:
            x = gvcc.ode_step(x, u, dt)
    return x


def test_time_grid_endpoints_and_published_values():
    g = gvcc.time_grid(20, 3.0)
    assert g[0] == 1.0 and g[-1] == 0.0 and all(a > b for a, b in zip(g, g[1:]))
    assert abs(g[4] - 0.9231) < 1e-4 and abs(g[16] - 0.4286) < 1e-4        # paper-notes table, shift 3
    g5 = gvcc.time_grid(20, 5.0)
    assert abs(g5[12] - 0.7692) < 1e-4 and abs(g5[19] - 0.2083) < 1e-4


def test_sde_samples_the_data_distribution_as_well_as_the_ode():
    n = 20000
    data = sample_mixture(n, 0)
    reference = sample_mixture(n, 1)
    floor = wasserstein1(data, reference)                                   # sampling noise alone
    ode = wasserstein1(run_with_fresh_noise(0.0, n, 2), data)
    sde = wasserstein1(run_with_fresh_noise(3.0, n, 3), data)
    assert ode < 0.08 and sde < 0.08, (floor, ode, sde)
    assert sde < 1.5 * ode + 2 * floor, (floor, ode, sde)
    # without the score correction the same noise would blow the variance up: the drift term matters
    grid = gvcc.time_grid(20, 3.0)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 1, 1, n, generator=gen)
    for k in range(20):
        t, dt = grid[k], grid[k] - grid[k + 1]
        u = mixture_velocity(x, t)
        g = 3.0 * t * t
        x = x - dt * u + (g * math.sqrt(dt) * torch.randn(x.shape, generator=gen) if k < 17 else 0)
    assert wasserstein1(x, data) > 3 * sde


def test_random_valid_bitstreams_decode_to_samples_of_the_data():
    n, K, M = 8192, 256, 8
    settings = gvcc.SamplerSettings(steps=20, tail_steps=3, g_scale=3.0, shift=3.0, K=K, seed=42)
    gen = torch.Generator().manual_seed(5)

    def choose(j, f, x0_hat_f):
        idx = torch.randperm(K, generator=gen)[:M].sort().values.tolist()
        return idx, torch.randint(0, 2, (M,), generator=gen).tolist()

    x = gvcc.run_gop(mixture_velocity, settings, (1, 1, 1, n), choose)
    data = sample_mixture(n, 6)
    floor = wasserstein1(data[: n // 2], data[n // 2:])
    ode = wasserstein1(run_with_fresh_noise(0.0, n, 7), data)
    assert wasserstein1(x, data) < 1.5 * ode + 3 * floor


def test_distortion_falls_as_m_grows():
    n, K = 2048, 256
    target = sample_mixture(n, 8).reshape(1, 1, 1, n)
    settings = gvcc.SamplerSettings(steps=12, tail_steps=2, g_scale=3.0, shift=3.0, K=K, seed=9)
    mse = []
    for M in (1, 4, 16, 64):
        def choose(j, f, x0_hat_f, M=M):
            return gvcc.match_atoms((target[:, f] - x0_hat_f).flatten(), settings.seed, j, f, K, M)
        x = gvcc.run_gop(mixture_velocity, settings, (1, 1, 1, n), choose)
        mse.append(float(((x - target) ** 2).mean()))
    prior = float(target.var() * 2)                                        # two independent samples
    assert all(a > b for a, b in zip(mse, mse[1:])), mse
    assert mse[0] < prior and mse[-1] < 0.5 * mse[0], (prior, mse)


def closed_form_mse(generator, seed, n, K, M, target):
    """Distortion of one coded 'frame' of n samples on the closed-form model (steps 12, tail 2, g 3, shift 3)."""
    settings = gvcc.SamplerSettings(steps=12, tail_steps=2, g_scale=3.0, shift=3.0, K=K, seed=seed,
                                    generator=generator)

    def choose(j, f, x0_hat_f):
        return gvcc.MATCHERS[generator]((target[:, f] - x0_hat_f).flatten(), seed, j, f, K, M)
    x = gvcc.run_gop(mixture_velocity, settings, (1, 1, 1, n), choose)
    return float(((x - target) ** 2).mean())


def test_shift_codebook_matches_the_iid_rate_distortion():
    # Same rate (K, M) for both generators; two seeds each. Seen at n = 1024, K = 128: the two seeds of one
    # generator differ by up to ~5%, and the generators' means by ~2%. Distortion must also fall with M.
    n, K = 1024, 128
    target = sample_mixture(n, 8).reshape(1, 1, 1, n)
    for M in (4, 32):
        iid = [closed_form_mse(gvcc.GENERATOR_IID, seed, n, K, M, target) for seed in (9, 10)]
        shift = [closed_form_mse(gvcc.GENERATOR_SHIFT, seed, n, K, M, target) for seed in (9, 10)]
        assert abs(sum(shift) / sum(iid) - 1.0) < 0.1, (M, iid, shift)
        if M == 4:
            coarse = sum(shift)
    assert sum(shift) < 0.75 * coarse


def test_shift_codebook_up_to_k_equals_d():
    # More shifts to choose from at the same M: K = D (every shift of the frame) beats K = D / 16.
    n, M = 1024, 8
    target = sample_mixture(n, 12).reshape(1, 1, 1, n)
    few = closed_form_mse(gvcc.GENERATOR_SHIFT, 3, n, n // 16, M, target)
    every = closed_form_mse(gvcc.GENERATOR_SHIFT, 3, n, n, M, target)
    assert every < few, (few, every)
