"""Codebook matching and the innovation: chunked running top-M equals brute force, ties, memory, unit variance."""
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
