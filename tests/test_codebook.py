"""Codebook matching and the innovation: chunked running top-M equals brute force, ties, memory, unit variance."""
import math

import numpy as np
import pytest
import torch

import gvcc


def brute_force(r, seed, step, frame, K, M):
    atoms = gvcc.gaussian(seed, gvcc.STREAM_CODEBOOK, step, frame, torch.arange(K), r.numel())   # [K, D]
    p = atoms @ r
    order = sorted(range(K), key=lambda i: (-abs(float(p[i])), i))[:M]
    idx = sorted(order)
    return idx, [int(float(p[i]) < 0) for i in idx]


def test_chunked_matching_equals_brute_force_for_any_chunk():
    r = torch.randn(300, generator=torch.Generator().manual_seed(0))
    want = brute_force(r, 42, 3, 1, 200, 9)
    for chunk in (1, 7, 64, 200, 1000):
        assert gvcc.match_atoms(r, 42, 3, 1, 200, 9, chunk=chunk) == want


def test_ties_go_to_the_lower_index_and_zero_counts_as_plus():
    r = torch.zeros(64)
    assert gvcc.match_atoms(r, 1, 0, 0, 100, 5, chunk=13) == ([0, 1, 2, 3, 4], [0] * 5)


def test_memory_does_not_grow_with_k(monkeypatch):
    seen = []
    real = gvcc.gaussian

    def spy(seed, stream, step, frame, atoms, n, device="cpu"):
        seen.append(len(atoms))
        return real(seed, stream, step, frame, atoms, n, device)

    monkeypatch.setattr(gvcc, "gaussian", spy)
    r = torch.randn(64)
    for K in (100, 5000):
        seen.clear()
        gvcc.match_atoms(r, 0, 0, 0, K, 4, chunk=32)
        assert max(seen) == 32 and sum(seen) == K


def test_innovation_is_the_normalised_signed_sum():
    idx, signs = [3, 10, 17], [0, 1, 0]
    z = gvcc.innovation(5, 2, 1, idx, signs, (4, 3, 5))
    a = gvcc.gaussian(5, gvcc.STREAM_CODEBOOK, 2, 1, idx, 60)
    manual = a[0] - a[1] + a[2]
    assert z.shape == (4, 3, 5)
    assert torch.allclose(z.flatten(), manual / manual.std(), atol=1e-6)
    assert abs(float(z.std()) - 1.0) < 1e-6
    assert torch.equal(z, gvcc.innovation(5, 2, 1, idx, signs, (4, 3, 5)))


def test_selected_atoms_point_towards_the_residual():
    r = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    idx, signs = gvcc.match_atoms(r, 9, 0, 0, 512, 16)
    z = gvcc.innovation(9, 0, 0, idx, signs, (4096, 1, 1)).flatten()
    cos = float(z @ r / (z.norm() * r.norm()))
    # Each chosen atom has |<a, r>| / (|a| |r|) ~ 2.3 / sqrt(D) (a top-16 of 512 Gaussians); 16 nearly orthogonal
    # atoms add up to cos ~ 16 * 2.3 / 64 / 4 = 0.14. A random choice gives ~ 1 / sqrt(D) = 0.016.
    assert cos > 0.1
    rand = gvcc.innovation(9, 0, 0, list(range(0, 512, 32)), [0] * 16, (4096, 1, 1)).flatten()
    assert abs(float(rand @ r / (rand.norm() * r.norm()))) < 0.06


# --------------------------------------------------------------------------------------------------
# Generator 2: atoms P^T roll(g, k), matched by FFT
# --------------------------------------------------------------------------------------------------

def shift_atoms(seed, step, frame, K, d):
    """All K atoms of generator 2, built literally from the definition: a_k[P[j]] = g[(j - k) mod D]."""
    perm, g = gvcc.shift_permutation(seed, d), gvcc.shift_vector(seed, step, frame, d)
    return torch.stack([torch.empty(d).index_put_((perm,), torch.roll(g, k)) for k in range(K)])   # [K, D]


def test_shift_permutation_from_an_independent_port():
    from test_generator import np_philox
    d = 1001
    c0 = np.arange((d + 3) // 4, dtype=np.uint64)
    zero = np.zeros_like(c0)
    words = np.stack(np_philox((c0, zero, zero, zero), (77, 3)), axis=-1).reshape(-1)[:d]
    assert np.array_equal(gvcc.shift_permutation(77, d).numpy(), np.argsort(words, kind="stable"))
    assert torch.equal(gvcc.shift_vector(77, 4, 2, d), gvcc.gaussian(77, 2, 4, 2, [0], d)[0])


@pytest.mark.parametrize("d,K,M", [(300, 200, 9), (300, 300, 12), (97, 97, 97)])
def test_fft_matching_equals_brute_force_up_to_k_equals_d(d, K, M):
    r = torch.randn(d, generator=torch.Generator().manual_seed(d + K))
    p = shift_atoms(5, 2, 1, K, d).double() @ r.double()
    order = sorted(range(K), key=lambda i: (-abs(float(p[i])), i))[:M]
    want = sorted(order), [int(float(p[i]) < 0) for i in sorted(order)]
    assert gvcc.match_shifts(r, 5, 2, 1, K, M) == want


def test_more_shifts_than_elements_is_an_error():
    with pytest.raises(gvcc.GvccError, match="K = 65"):
        gvcc.match_shifts(torch.randn(64), 0, 0, 0, 65, 4)


def test_shift_innovation_is_the_normalised_signed_sum():
    idx, signs = [3, 10, 17, 63], [0, 1, 0, 1]
    z = gvcc.shift_innovation(5, 2, 1, idx, signs, (4, 3, 5))
    a = shift_atoms(5, 2, 1, 64, 60)
    manual = a[3] - a[10] + a[17] - a[63]
    assert z.shape == (4, 3, 5) and abs(float(z.std()) - 1.0) < 1e-6
    assert torch.allclose(z.flatten(), manual / manual.std(), atol=1e-6)


def smooth_field(seed, c=4, h=32, w=32, rho=0.97):
    """[c, h, w] AR(1) field along h and w with lag-1 autocorrelation rho (a smooth latent-like residual)."""
    x = torch.randn(c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for axis in (1, 2):
        x = x.movedim(axis, 0)
        for i in range(1, x.shape[0]):
            x[i] = rho * x[i - 1] + math.sqrt(1 - rho * rho) * x[i]
        x = x.movedim(0, axis)
    return x.float().flatten()


def test_shifts_align_with_smooth_residuals_as_well_as_iid_atoms():
    # The statistic of the issue: cosine between the chosen innovation and the residual. On smooth fields,
    # unpermuted shifts of g would be nearly redundant for neighbouring lags; P makes P r white. Top-32 of
    # 512 in D = 4096 gives cos ~ 0.2 for i.i.d. atoms; a random choice ~ 1 / sqrt(D) = 0.016.
    K, M, shape = 512, 32, (4, 32, 32)
    for seed in (0, 1):
        r = smooth_field(seed)
        assert float(r[:-1] @ r[1:] / (r @ r)) > 0.9                        # smooth along w
        cos = {}
        for gen in (gvcc.GENERATOR_IID, gvcc.GENERATOR_SHIFT):
            idx, signs = gvcc.MATCHERS[gen](r, 11, 0, seed, K, M)
            z = gvcc.INNOVATIONS[gen](11, 0, seed, idx, signs, shape).flatten()
            cos[gen] = float(z @ r / (z.norm() * r.norm()))
        assert cos[gvcc.GENERATOR_IID] > 0.15
        assert cos[gvcc.GENERATOR_SHIFT] > 0.9 * cos[gvcc.GENERATOR_IID], cos
