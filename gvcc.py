"""gvcc: GVCC, zero-shot generative video coding with a pretrained Wan2.1 model as the decoder.

This docstring is the specification of the method. bitstream.py's docstring is the specification of the file.

Idea
----
Encoder and decoder start from the same seeded Gaussian latent x_T and run the same sampler over a pretrained
rectified-flow video model. The deterministic flow ODE is replaced by a reverse-time SDE with the same marginals,
so every step has a noise injection point. At each of the first T_sde steps the encoder picks, for every latent
frame, the M seeded Gaussian codebook atoms (out of K) whose inner products with the residual between the true
latent and the current clean-latent estimate are largest in magnitude, and sends their indices and signs. The
decoder replays the same steps with the same atoms. Nothing is trained; the rate is set by M and K.

Shape letters (used in `# [...]` comments throughout)
-----------------------------------------------------
    C   latent channels (16)              F   latent frames in a GOP (F = (T_pix - 1) / 4 + 1)
    h,w latent height, width (H/8, W/8)   D   size of one latent frame, C * h * w
    T_pix  pixel frames in a GOP (4k+1)   H,W padded pixel height, width (multiples of 16)
    K   atoms in one codebook             M   atoms selected per (step, frame)
    A   atoms in one generated chunk      N   frames of a whole clip
    n4  Philox counters (4 outputs each)

Pipeline (one GOP, T2V)
-----------------------
    pixels [3, T_pix, H, W] in [-1, 1]  --VAE encode, normalise-->  x0 [C, F, h, w]
    x = x_T [C, F, h, w]                                       (portable generator, stream 0)
    for k in 0..T-1, t = t_k, dt = t_k - t_{k+1}:
        u      = DiT(x, 1000 t, text)                          velocity, u ~ eps - x0
        x0_hat = x - t u ;  eps_hat = x + (1 - t) u ;  score = -eps_hat / t
        if k < T_sde = T - N_tail:                             SDE step with a codebook innovation
            for every latent frame f:
                r      = x0[:, f] - x0_hat[:, f]               (encoder only)      [D]
                S, s   = top-M |<a_i, r>| over atoms a_0..a_{K-1} of codebook (seed, k, f)
                z_f    = sum_{i in S} s_i a_i ;  z_f = z_f / std(z_f)   (unbiased std)
            g = g_scale t^2 ;  f = u - (g^2 / 2) score
            x = x - f dt + g sqrt(dt) z
        else:                                                  ODE tail, no bits
            x = x - u dt
    pixels_hat = VAE decode(de-normalise(x)), clamped to [-1, 1]

Normative parts (what a port must reproduce exactly)
----------------------------------------------------
1. The portable generator (section "Portable generator"): Philox4x32-10 and the Gaussian transform below. Every
   number is addressable by (seed, stream, step, frame, atom, element) and identical whatever the chunking,
   device or framework: only integer operations and the IEEE-754 operations + - * / sqrt, each rounded once
   (no fused multiply-add), are used.
2. The time grid: s_i = 1 - i / T, t_i = shift s_i / (1 + (shift - 1) s_i), computed in float64 from the integer
   header fields, i = 0..T.
3. The symbol semantics: which atoms, which signs, at which (step, frame); the sampler equations above.
Floating-point model arithmetic (DiT, VAE) is *not* bit-exact across machines: a stream parses identically
everywhere, and on the same machine, device and precision the decoder reproduces the encoder's reconstruction
bit for bit, because both run the very same code path (`run_gop`). On other hardware the pixels may drift.

Portable generator
------------------
Philox4x32-10 (Salmon et al., SC'11; Random123): key (k0, k1), counter (c0, c1, c2, c3), all u32. One round:
    (hi0, lo0) = 0xD2511F53 * c0 ; (hi1, lo1) = 0xCD9E8D57 * c2        (64-bit products split in halves)
    (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
and between rounds k0 += 0x9E3779B9, k1 += 0xBB67AE85 (mod 2^32). Ten rounds give four u32 outputs.
gvcc's addressing: key = (seed, stream); counter = (e // 4, atom, step, frame); output lane e % 4 is element e.
    stream 0: the initial latent x_T, atom 0, step 0, frame f: element e of the flattened [C, h, w] frame f.
    stream 1: codebook atoms, step = SDE step index j, frame = latent frame f, atom = i in 0..K-1.
Gaussian transform (Box-Muller on lane pairs (0, 1) and (2, 3), all in float64, result rounded to float32):
    for a pair of u32 (a, b):
      radius: v = 2a + 1 (exact), (m, e) = frexp(v) with m in [0.5, 1); if m < 0.7071067811865476: m = 2m, e -= 1
              s = (m - 1) / (m + 1) ; q = s * s
              P = 1 + q (1/3 + q (1/5 + ... + q (1/17)))            Horner, coefficients 1/(2n+1), n = 0..8
              ln_u = 2 s P + (e - 33) ln2                           ln((a + 0.5) / 2^32), ln2 = 0.6931471805599453
              r = sqrt(-2 ln_u)
      angle:  o = b >> 29 (octant), t = ((b & (2^29 - 1)) + 0.5) / 2^29
              phi = (pi/4) t if o is even else (pi/4) (1 - t)       pi/4 = 0.7853981633974483
              sin(phi), cos(phi) by Horner in phi^2 with coefficients (-1)^n / (2n+1)! and (-1)^n / (2n)!, n = 0..7
              (c, s') = (cos phi, sin phi) if o is even else (sin phi, cos phi)
              quadrant o >> 1 rotates (c, s') to (c, s'), (-s', c), (-c, -s'), (s', -c)
      outputs: (r cos, r sin) -> elements of lanes (0, 1) from (a, b) = (x0, x1), and (2, 3) from (x2, x3).
Known answers are in tests/golden/ and tests/test_generator.py.
"""
import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

import torch


# ==================================================================================================
# Portable generator: Philox4x32-10 and the Gaussian transform
# ==================================================================================================

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57   # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85   # key schedule (golden ratio, sqrt(3) - 1)
MASK32 = 0xFFFFFFFF
STREAM_NOISE, STREAM_CODEBOOK = 0, 1            # key word k1: what the numbers are for
GENERATOR_ID = 1                                # bitstream id of this generator + Gaussian transform


def _mulhilo(m, x):
    """(hi, lo) 32-bit halves of the 64-bit product m * x, for a constant m and int64 tensor x < 2^32.

    int64 tensors hold the u32 values. m is split in 16-bit halves so no intermediate exceeds 2^49:
    m x = (x m_hi) 2^16 + x m_lo = B 2^16 + A ; with B = B_hi 2^16 + B_lo:  m x = B_hi 2^32 + (B_lo 2^16 + A).
    """
    a = x * (m & 0xFFFF)                        # < 2^48
    b = x * (m >> 16)                           # < 2^48
    s = ((b & 0xFFFF) << 16) + a                # < 2^49
    return (b >> 16) + (s >> 32), s & MASK32


def philox4x32(counter, key):
    """Philox4x32-10 on four int64 tensors of u32 counter words (broadcastable); key is two python ints."""
    c0, c1, c2, c3 = counter
    k0, k1 = key[0] & MASK32, key[1] & MASK32
    for i in range(10):
        if i:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


LN2 = 0.6931471805599453
PI_4 = 0.7853981633974483
SQRT_HALF = 0.7071067811865476
_ATANH_COEF = [1.0 / (2 * n + 1) for n in range(9)]                             # 1, 1/3, ..., 1/17
_SIN_COEF = [(-1) ** n / math.factorial(2 * n + 1) for n in range(8)]           # phi - phi^3/3! + ...
_COS_COEF = [(-1) ** n / math.factorial(2 * n) for n in range(8)]               # 1 - phi^2/2! + ...


def _horner(coefs, q):
    """coefs[0] + q (coefs[1] + q (coefs[2] + ...)), one rounding per operation (no fused multiply-add)."""
    p = torch.full_like(q, coefs[-1])
    for c in reversed(coefs[:-1]):
        p = p * q
        p = p + c
    return p


def _box_muller(a, b):
    """Two standard normals (float32) from two int64 tensors of u32 words; see the module docstring."""
    m, e = torch.frexp(2.0 * a.to(torch.float64) + 1.0)      # 2a + 1 < 2^33 is exact in float64
    low = m < SQRT_HALF
    m = torch.where(low, 2.0 * m, m)
    e = e.to(torch.float64) - low.to(torch.float64)
    s = (m - 1.0) / (m + 1.0)
    ln_u = 2.0 * s * _horner(_ATANH_COEF, s * s) + (e - 33.0) * LN2
    r = torch.sqrt(-2.0 * ln_u)

    octant = b >> 29
    t = ((b & ((1 << 29) - 1)).to(torch.float64) + 0.5) / float(1 << 29)
    odd = (octant & 1) == 1
    phi = PI_4 * torch.where(odd, 1.0 - t, t)
    q = phi * phi
    sin_phi, cos_phi = phi * _horner(_SIN_COEF, q), _horner(_COS_COEF, q)
    c, s_ = torch.where(odd, sin_phi, cos_phi), torch.where(odd, cos_phi, sin_phi)
    quadrant = octant >> 1
    cos_t = torch.where(quadrant == 0, c, torch.where(quadrant == 1, -s_, torch.where(quadrant == 2, -c, s_)))
    sin_t = torch.where(quadrant == 0, s_, torch.where(quadrant == 1, c, torch.where(quadrant == 2, -s_, -c)))
    return (r * cos_t).to(torch.float32), (r * sin_t).to(torch.float32)


def gaussian(seed, stream, step, frame, atoms, n, device="cpu"):
    """Standard normals of the given atoms: [A] int64 atom indices -> [A, n] float32 (elements 0..n-1)."""
    atoms = torch.as_tensor(atoms, dtype=torch.int64, device=device)
    n4 = (n + 3) // 4
    c0 = torch.arange(n4, dtype=torch.int64, device=device)[None, :]           # [1, n4]
    c1 = atoms[:, None]                                                         # [A, 1]
    c0, c1 = torch.broadcast_tensors(c0, c1)                                    # [A, n4]
    c2 = torch.full_like(c0, step)
    c3 = torch.full_like(c0, frame)
    x0, x1, x2, x3 = philox4x32((c0, c1, c2, c3), (seed, stream))
    z0, z1 = _box_muller(x0, x1)
    z2, z3 = _box_muller(x2, x3)
    z = torch.stack([z0, z1, z2, z3], dim=-1)                                   # [A, n4, 4]
    return z.reshape(len(atoms), 4 * n4)[:, :n]                                 # [A, n]


def initial_noise(seed, shape, device="cpu"):
    """x_T for a GOP latent of shape (C, F, h, w): frame f is stream 0, step 0, frame f, atom 0."""
    c, f, h, w = shape
    frames = [gaussian(seed, STREAM_NOISE, 0, i, [0], c * h * w, device)[0].reshape(c, h, w) for i in range(f)]
    return torch.stack(frames, dim=1)                                           # [C, F, h, w]


# ==================================================================================================
# Time grid and the SDE sampler
# ==================================================================================================

def time_grid(steps, shift):
    """t_0 = 1 > t_1 > ... > t_T = 0, the shifted rectified-flow grid, as float64 python floats."""
    grid = []
    for i in range(steps + 1):
        s = 1.0 - i / steps
        grid.append(shift * s / (1.0 + (shift - 1.0) * s))
    return grid


def sde_step(x, u, t, dt, g_scale, z):
    """One Euler-Maruyama step of the reverse-time SDE with the same marginals as the flow ODE.

    score = -eps_hat / t with eps_hat = x + (1 - t) u; drift f = u - (g^2 / 2) score; g = g_scale t^2.
    z is the unit-variance innovation [C, F, h, w]. g_scale = 0 gives the plain Euler ODE step.
    """
    g = g_scale * t * t
    eps_hat = x + (1.0 - t) * u
    score = -eps_hat / t
    drift = u - (0.5 * g * g) * score
    return x - dt * drift + (g * math.sqrt(dt)) * z


def ode_step(x, u, dt):
    """One Euler step of the flow ODE dx/dt = u, backwards in t."""
    return x - dt * u


@dataclass(frozen=True)
class SamplerSettings:
    """Everything that fixes the sampler and the codebooks of a GOP (all from integer header fields)."""
    steps: int          # T, sampler steps
    tail_steps: int     # N_tail, final ODE steps that carry no bits
    g_scale: float      # diffusion scale, g_t = g_scale t^2 (header: thousandths)
    shift: float        # time-grid shift (header: thousandths)
    K: int              # atoms per codebook
    seed: int           # generator seed (u32)

    @property
    def sde_steps(self):
        return self.steps - self.tail_steps


def run_gop(velocity, settings, shape, choose, device="cpu", on_step=None):
    """The sampler shared by encoder and decoder: returns the final latent x_0 [C, F, h, w].

    velocity(x, t) -> u is the model. At SDE step j, choose(j, f, x0_hat_f) gives the (indices, signs) of
    latent frame f: the encoder matches against the true latent, the decoder reads them from the stream.
    Both then build the innovation with the same function, so both compute the same floats.
    """
    grid = time_grid(settings.steps, settings.shift)
    x = initial_noise(settings.seed, shape, device)                            # [C, F, h, w]
    for k in range(settings.steps):
        t, dt = grid[k], grid[k] - grid[k + 1]
        u = velocity(x, t)                                                     # [C, F, h, w]
        if k < settings.sde_steps:
            x0_hat = x - t * u
            z = torch.stack([
                innovation(settings.seed, k, f, *choose(k, f, x0_hat[:, f]), shape_of_frame(shape), x.device)
                for f in range(shape[1])], dim=1)                              # [C, F, h, w]
            x = sde_step(x, u, t, dt, settings.g_scale, z)
        else:
            x = ode_step(x, u, dt)
        if on_step is not None:
            on_step()
    return x


def shape_of_frame(shape):
    c, _, h, w = shape
    return (c, h, w)


# ==================================================================================================
# Codebook: chunked matching with a running top-M, and the innovation
# ==================================================================================================

def match_atoms(r, seed, step, frame, K, M, chunk=None):
    """The M atoms of codebook (seed, step, frame) with the largest |<a_i, r>|, and their signs.

    r: [D] residual. Atoms are generated and scored `chunk` at a time with a running top-M, so memory does not
    grow with K. Ties in |p| go to the lower index; a zero inner product counts as +. Returns (indices sorted
    ascending, signs with 0 = + and 1 = -).
    """
    d = r.numel()
    chunk = chunk or max(16, min(1024, (64 << 20) // (4 * d)))    # about 64 MiB of atoms at a time
    best_idx = torch.empty(0, dtype=torch.int64, device=r.device)   # kept in ascending index order
    best_p = torch.empty(0, dtype=torch.float32, device=r.device)
    for start in range(0, K, chunk):
        idx = torch.arange(start, min(K, start + chunk), dtype=torch.int64, device=r.device)   # [A]
        p = gaussian(seed, STREAM_CODEBOOK, step, frame, idx, d, r.device) @ r                 # [A]
        cand_idx, cand_p = torch.cat([best_idx, idx]), torch.cat([best_p, p])   # ascending index
        order = torch.sort(-cand_p.abs(), stable=True).indices[:M]      # stable: lower index wins ties
        keep = torch.sort(cand_idx[order]).indices
        best_idx, best_p = cand_idx[order][keep], cand_p[order][keep]
    signs = (best_p < 0).to(torch.int64)
    return best_idx.tolist(), signs.tolist()


def innovation(seed, step, frame, indices, signs, frame_shape, device="cpu"):
    """z = sum_i s_i a_i over the selected atoms, scaled to unit (unbiased) std: [C, h, w] float32."""
    d = frame_shape[0] * frame_shape[1] * frame_shape[2]
    atoms = gaussian(seed, STREAM_CODEBOOK, step, frame, indices, d, device)           # [M, D]
    sign = 1.0 - 2.0 * torch.tensor(signs, dtype=torch.float32, device=device)         # [M]
    z = (sign[:, None] * atoms).sum(dim=0)                                              # [D]
    return (z / z.std()).reshape(frame_shape)                                           # [C, h, w]
