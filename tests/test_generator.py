"""The portable generator: Philox4x32-10 known answers, an independent numpy port that must agree bit for bit,
chunking and addressing invariance, and the Gaussian transform's statistics."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import gvcc
import kernels

# Random123 known-answer tests for philox4x32_10 (kat_vectors): counter, key, expected output.
PHILOX_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


# --------------------------------------------------------------------------------------------------
# An independent port in numpy (uint64 arithmetic, numpy's frexp), written from the docstring's spec.
# --------------------------------------------------------------------------------------------------

def np_philox(ctr, key):
    m = np.uint64(0xFFFFFFFF)
    c = [np.asarray(x, dtype=np.uint64) for x in ctr]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for i in range(10):
        if i:
            k0, k1 = (k0 + np.uint64(0x9E3779B9)) & m, (k1 + np.uint64(0xBB67AE85)) & m
        p0 = np.uint64(0xD2511F53) * c[0]          # < 2^64: exact in uint64
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [((p1 >> np.uint64(32)) ^ c[1] ^ k0) & m, p1 & m, ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & m, p0 & m]
    return c


def np_horner(coefs, q):
    p = np.full_like(q, coefs[-1])
    for c in reversed(coefs[:-1]):
        p = p * q
        p = p + c
    return p


def np_box_muller(a, b):
    m, e = np.frexp(2.0 * a.astype(np.float64) + 1.0)
    low = m < 0.7071067811865476
    m = np.where(low, 2.0 * m, m)
    e = e.astype(np.float64) - low
    s = (m - 1.0) / (m + 1.0)
    ln_u = 2.0 * s * np_horner([1.0 / (2 * n + 1) for n in range(9)], s * s) + (e - 33.0) * 0.6931471805599453
    r = np.sqrt(-2.0 * ln_u)
    octant = (b >> np.uint64(29)).astype(np.int64)
    t = ((b & np.uint64((1 << 29) - 1)).astype(np.float64) + 0.5) / float(1 << 29)
    odd = (octant & 1) == 1
    phi = 0.7853981633974483 * np.where(odd, 1.0 - t, t)
    q = phi * phi
    sin_phi = phi * np_horner([(-1) ** n / math.factorial(2 * n + 1) for n in range(8)], q)
    cos_phi = np_horner([(-1) ** n / math.factorial(2 * n) for n in range(8)], q)
    c, s_ = np.where(odd, sin_phi, cos_phi), np.where(odd, cos_phi, sin_phi)
    quad = octant >> 1
    cos_t = np.select([quad == 0, quad == 1, quad == 2], [c, -s_, -c], s_)
    sin_t = np.select([quad == 0, quad == 1, quad == 2], [s_, c, -s_], -c)
    return (r * cos_t).astype(np.float32), (r * sin_t).astype(np.float32)


def np_gaussian(seed, stream, step, frame, atoms, n):
    n4 = (n + 3) // 4
    c0 = np.broadcast_to(np.arange(n4, dtype=np.uint64)[None, :], (len(atoms), n4))
    c1 = np.broadcast_to(np.asarray(atoms, dtype=np.uint64)[:, None], (len(atoms), n4))
    x = np_philox((c0, c1, np.full_like(c0, step), np.full_like(c0, frame)), (seed, stream))
    z0, z1 = np_box_muller(x[0], x[1])
    z2, z3 = np_box_muller(x[2], x[3])
    return np.stack([z0, z1, z2, z3], axis=-1).reshape(len(atoms), 4 * n4)[:, :n]


# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ctr,key,want", PHILOX_KAT)
def test_philox_known_answers(ctr, key, want):
    got = gvcc.philox4x32([torch.tensor([c], dtype=torch.int64) for c in ctr], key)
    assert tuple(int(g[0]) for g in got) == want
    assert tuple(int(g[0]) for g in np_philox([[c] for c in ctr], key)) == want


def test_torch_generator_matches_numpy_port_bit_for_bit():
    for seed, stream, step, frame in [(42, 1, 0, 0), (42, 1, 16, 8), (0xFFFFFFFF, 0, 0, 3), (7, 1, 5, 2)]:
        atoms = [0, 1, 2, 1000, 16383, 65535, 2**31 + 5]
        got = gvcc.gaussian(seed, stream, step, frame, atoms, 1001).numpy()
        want = np_gaussian(seed, stream, step, frame, atoms, 1001)
        assert got.dtype == np.float32 and got.shape == (len(atoms), 1001)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_numbers_do_not_depend_on_chunking_or_order():
    whole = gvcc.gaussian(42, 1, 3, 2, list(range(64)), 515)
    parts = torch.cat([gvcc.gaussian(42, 1, 3, 2, list(range(i, i + 7)), 515) for i in range(0, 64, 7)])[:64]
    assert torch.equal(whole, parts)
    picked = gvcc.gaussian(42, 1, 3, 2, [63, 5, 17], 515)
    assert torch.equal(picked, whole[[63, 5, 17]])
    # a shorter atom is a prefix of a longer one: element e has its own address
    assert torch.equal(gvcc.gaussian(42, 1, 3, 2, [9], 13)[0], whole[9, :13])


def test_addresses_are_independent():
    a = gvcc.gaussian(42, 1, 0, 0, [0], 4096)
    for other in [gvcc.gaussian(43, 1, 0, 0, [0], 4096), gvcc.gaussian(42, 0, 0, 0, [0], 4096),
                  gvcc.gaussian(42, 1, 1, 0, [0], 4096), gvcc.gaussian(42, 1, 0, 1, [0], 4096),
                  gvcc.gaussian(42, 1, 0, 0, [1], 4096)]:
        corr = float((a * other).mean())
        assert abs(corr) < 0.06 and not torch.equal(a, other)


def test_gaussian_statistics():
    z = gvcc.gaussian(1, 1, 0, 0, list(range(256)), 4096).double().flatten()     # 1M samples
    assert abs(float(z.mean())) < 0.005
    assert abs(float(z.var()) - 1.0) < 0.005
    assert abs(float((z ** 4).mean()) - 3.0) < 0.03                              # kurtosis of a Gaussian
    # Kolmogorov-Smirnov distance to the normal CDF
    zs, _ = torch.sort(z)
    cdf = 0.5 * (1.0 + torch.erf(zs / math.sqrt(2.0)))
    emp = torch.arange(1, len(zs) + 1, dtype=torch.float64) / len(zs)
    assert float((cdf - emp).abs().max()) < 2.0 / math.sqrt(len(zs))
    # The transform is accurate: radius and angle against float64 libm on the same words.
    a = torch.randint(0, 2**32, (100000,), dtype=torch.int64, generator=torch.Generator().manual_seed(0))
    b = torch.randint(0, 2**32, (100000,), dtype=torch.int64, generator=torch.Generator().manual_seed(1))
    z0, z1 = gvcc._box_muller(a, b)
    u, th = (a.double() + 0.5) / 2**32, 2 * math.pi * (b.double() + 0.5) / 2**32
    r = torch.sqrt(-2 * torch.log(u))
    assert torch.allclose(z0.double(), r * torch.cos(th), atol=2e-6, rtol=1e-6)
    assert torch.allclose(z1.double(), r * torch.sin(th), atol=2e-6, rtol=1e-6)


def test_initial_noise_layout():
    x = gvcc.initial_noise(42, (16, 3, 4, 6))
    assert x.shape == (16, 3, 4, 6)
    assert torch.equal(x[:, 2].flatten(), gvcc.gaussian(42, gvcc.STREAM_NOISE, 0, 2, [0], 16 * 4 * 6)[0])


# --------------------------------------------------------------------------------------------------
# The fast paths give the reference's numbers bit for bit
# --------------------------------------------------------------------------------------------------

ADDRESSES = [  # seed, stream, step, frame, atoms, n: extreme words, odd lengths, atoms past 2^31
    (42, 1, 0, 0, [0, 1, 2, 1000, 16383, 65535, 2**31 + 5, 2**32 - 1], 1001),
    (0xFFFFFFFF, 0, 16, 8, [0, 3, 77], 515),
    (7, 1, 5, 2, list(range(40, 61)), 97),
    (0, 2, 0xFFFFFFFF, 0xFFFFFFFF, [12345678, 9], 4096),
    (2**31, 3, 1, 1, [2**31 - 1, 2**31], 7),
]


def test_compiled_cpu_generator_is_bit_identical(monkeypatch):
    # The first torch.compile in a fresh environment takes about a minute on a 2-core CPU (Inductor then
    # caches it on disk); the compiled kernel is what encodes at real sizes, so it is checked here.
    if not kernels.fused_cpu_available() and "compile_error" in kernels._fused_cpu:
        # e.g. Inductor's scalar C++ (ATEN_CPU_CAPABILITY=default) does not build: gvcc then uses the eager path
        pytest.skip(f"torch.compile cannot build the generator here ({kernels._fused_cpu['compile_error']})")
    assert kernels.fused_cpu_available(), "the compiled philox_gaussian differs from the reference"
    monkeypatch.setattr(kernels, "FUSED_MIN_COUNTERS", 0)        # small requests through the compiled kernel too
    for seed, stream, step, frame, atoms, n in ADDRESSES:
        want = gvcc.gaussian(seed, stream, step, frame, atoms, n, fast=False)
        got = gvcc.gaussian(seed, stream, step, frame, atoms, n)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), (seed, stream, step, frame)
    # blocks of FUSED_BLOCK counters: a request that spans several, with a ragged end
    want = gvcc.gaussian(3, 1, 2, 1, list(range(5)), 4 * kernels.FUSED_BLOCK // 3 + 1, fast=False)
    assert torch.equal(gvcc.gaussian(3, 1, 2, 1, list(range(5)), 4 * kernels.FUSED_BLOCK // 3 + 1), want)


TRITON_CHECK = """
import math, sys, torch
import gvcc
import kernels
from test_generator import ADDRESSES
for seed, stream, step, frame, atoms, n in ADDRESSES:
    want = gvcc.gaussian(seed, stream, step, frame, atoms, n, fast=False)
    got = kernels.gaussian_triton(seed, stream, step, frame, atoms, n, device="cpu")
    assert torch.equal(got.view(torch.int32), want.view(torch.int32)), (seed, stream, step, frame)
    # the fused scores: float32 sums in another order than the reference's matrix product
    r = torch.randn(n, generator=torch.Generator().manual_seed(n))
    p = kernels.scores_triton(r, seed, stream, step, frame, atoms)
    assert torch.allclose(p, (want.double() @ r.double()).float(), rtol=1e-5, atol=1e-4 * math.sqrt(n))
print("OK", len(ADDRESSES))
"""


def test_triton_kernels_are_bit_identical_in_the_interpreter():
    # Triton's interpreter runs the kernels on a CPU with numpy. TRITON_INTERPRET must be set before triton is
    # first imported (torch.compile imports it too), hence a fresh process.
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([root, os.path.join(root, "tests")]))
    res = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, env=env, cwd=root)
    assert res.returncode == 0 and res.stdout.split() == ["OK", str(len(ADDRESSES))], res.stderr[-3000:]
