"""kernels: fast paths that compute the same numbers as gvcc.py's reference generator and codebook matching.

gvcc.py holds the method as readable reference code (its docstring is the specification); this module holds the
code that must equal it, faster, and nothing a port needs to read:

    Fast exact generator   gvcc.gaussian's numbers through torch.compile on a CPU: Philox in int32 lanes, the
                           reference's float64 Box-Muller. Checked bit for bit against gvcc.philox_gaussian before
                           first use (fused_cpu_available); gvcc falls back to the reference otherwise.
    Certified matching     the encoder's top-M atoms on a CPU from approximate scores of the exact Philox words
                           with a bounded error, then exact scores of the few candidates (certified_candidates):
                           gvcc.match_exact's selection. The compiled scorer is checked against exact scores
                           within its bound before first use (scorer_available).
    Triton kernels         on CUDA, gvcc.gaussian's numbers and fused scores that write no atom (triton_kernels,
                           gaussian_triton, scores_triton); tested bit for bit under Triton's interpreter.

gvcc.gaussian and gvcc.match_atoms choose among these per request. This module imports gvcc for the reference
(constants, the Box-Muller transform, the eager generator the checks compare with); gvcc imports it only inside
those two functions, so the import order has no cycle at load time.
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

from gvcc import (_ATANH_COEF, _COS_COEF, _SIN_COEF, LN2, MASK32, PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1,
                  PI_4, SQRT_HALF, STREAM_CODEBOOK, _box_muller, _horner, _mulhilo, gaussian, philox_gaussian)


# ==================================================================================================
# Fast exact generator: the same numbers through torch.compile on a CPU
# ==================================================================================================
# philox_gaussian is elementwise, so Inductor fuses its ~400 passes into a few loops in C++ over a block of
# counters that stays in cache. Philox runs there in int32 lanes, u32 bits in two's complement with wrapping
# products (Inductor multiplies 8 int32 lanes at once on AVX2, int64 lanes one at a time); the Box-Muller is the
# reference's float64 code. Inductor compiles with -ffp-contract=off and without unsafe-math (torch's default),
# so each + - * / sqrt is one IEEE operation as in eager; the kernel is nevertheless checked bit for bit against
# the eager reference on a full block of varied addresses before it is first used, and gvcc falls back to the
# reference path if compiling fails or a bit differs. Set GVCC_NO_COMPILE=1 to skip it.

_MASK16 = 0xFFFF


def _int32(v):
    """A u32 python int as the int32 value with the same bits."""
    v &= MASK32
    return v - (1 << 32) if v >= 1 << 31 else v


def _int32_lanes(words):
    """int64 tensor of u32 values -> int32 tensor with the same bits."""
    return (words - ((words >> 31) << 32)).to(torch.int32)


def _srl32(x, n):
    """Logical right shift of int32 lanes holding u32 bits (torch's >> on int32 is arithmetic)."""
    return (x >> n) & ((1 << (32 - n)) - 1)


def _mulhilo32(m, x):
    """(hi, lo) of m x for a constant u32 m and an int32 tensor x of u32 bits, in wrapping int32 arithmetic.

    16-bit halves: m x = xh mh 2^32 + (xh ml + xl mh) 2^16 + xl ml, each partial product < 2^32 (its u32 bits
    in an int32 lane); the middle terms are added in two steps so that no sum exceeds 2^32. When ml < 2^15
    (PHILOX_M0), t and t2 stay below 2^31, where the arithmetic shift is already the logical one.
    """
    ml, mh = m & _MASK16, m >> 16
    shift16 = (lambda v: v >> 16) if ml < 1 << 15 else (lambda v: _srl32(v, 16))      # noqa: E731
    xl, xh = x & _MASK16, _srl32(x, 16)
    t = xl * ml
    t2 = xh * ml + shift16(t)
    t3 = xl * mh + (t2 & _MASK16)
    hi = xh * mh + shift16(t2) + _srl32(t3, 16)
    return hi, x * _int32(m)


def _round_keys(seed, stream):
    """The 20 Philox round keys (k0, k1 of rounds 1..10) as an int32 tensor of u32 bits, and as python ints."""
    keys, k0, k1 = [], seed & MASK32, stream & MASK32
    for _ in range(10):
        keys += [k0, k1]
        k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return torch.tensor([_int32(k) for k in keys], dtype=torch.int32), keys


def _philox_rounds32(c, keys, first=0):
    """Philox rounds first+1..10 on int32 lanes (u32 bits) from state c; keys: _round_keys' tensor."""
    c0, c1, c2, c3 = c
    for i in range(first, 10):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ keys[2 * i], lo1, hi0 ^ c3 ^ keys[2 * i + 1], lo0
    return c0, c1, c2, c3


def _u32(x):
    """int32 lanes of u32 bits -> int64 tensors of the u32 values (what the reference arithmetic takes)."""
    return x.to(torch.int64) & MASK32


def _philox_gaussian32(c0, c1, c2, c3, keys):
    """philox_gaussian with Philox in int32 lanes (the compiled path; Box-Muller as the reference's).

    All four counter words are full tensors: Inductor would compute a 0-d word's products in scalar C++ int32,
    where overflow is undefined and the compiler may assume it away; vector lanes wrap.
    """
    x0, x1, x2, x3 = (_u32(x) for x in _philox_rounds32((c0, c1, c2, c3), keys))
    z0, z1 = _box_muller(x0, x1)
    z2, z3 = _box_muller(x2, x3)
    return torch.stack([z0, z1, z2, z3], dim=-1)


FUSED_BLOCK = 1 << 16           # counters per compiled call: one static shape, one compilation per process
FUSED_MIN_COUNTERS = 1 << 19    # smaller requests stay eager (the first compilation takes about a minute;
                                # from 2^19 counters, a demo model's codebook, compiling pays off in one GOP)
_fused_cpu = {}                 # "fn": the compiled philox_gaussian, "ok": whether it passed the check


def fused_cpu_available():
    """Compile philox_gaussian once per process and check it against the eager reference; True if usable."""
    if "ok" not in _fused_cpu:
        _fused_cpu["ok"] = False
        if os.environ.get("GVCC_NO_COMPILE"):
            return False
        try:
            fn = torch.compile(_philox_gaussian32, dynamic=False, fullgraph=True)
            i = torch.arange(FUSED_BLOCK, dtype=torch.int64)                              # [B]
            c0, c1 = i * 7919 % 25440, (i * 2654435761) & MASK32                          # varied counters
            args = [torch.tensor(v, dtype=torch.int64) for v in (16, 0xFFFFFFFF, 0xFFFFFFFF, 1)]   # step, frame, key
            want = philox_gaussian(c0, c1, *args)                                         # [B, 4]
            words = [torch.full((FUSED_BLOCK,), _int32(v), dtype=torch.int32) for v in (16, 0xFFFFFFFF)]
            got = fn(_int32_lanes(c0), _int32_lanes(c1), *words, _round_keys(0xFFFFFFFF, 1)[0])
            _fused_cpu["ok"] = torch.equal(got.view(torch.int32), want.view(torch.int32))
            _fused_cpu["fn"] = fn
            if not _fused_cpu["ok"]:
                print("gvcc: warning: the compiled generator differs from the reference here; using the "
                      "eager path", file=sys.stderr)
        except Exception as exc:            # no C++ compiler, an Inductor limitation: the eager path works
            _fused_cpu["compile_error"] = type(exc).__name__
            print(f"gvcc: warning: torch.compile of the generator failed ({type(exc).__name__}); using the "
                  f"eager path", file=sys.stderr)
    return _fused_cpu["ok"]


def gaussian_fused_cpu(seed, stream, step, frame, atoms, n):
    """gaussian() through the compiled kernel: the flattened [A, n4] counters in blocks of FUSED_BLOCK."""
    fn = _fused_cpu["fn"]
    a, n4 = len(atoms), (n + 3) // 4
    total = a * n4
    out = torch.empty(total, 4, dtype=torch.float32)                                  # [A n4, 4]
    words = [torch.full((FUSED_BLOCK,), _int32(v), dtype=torch.int32) for v in (step, frame)]          # [B]
    keys = _round_keys(seed, stream)[0]
    atoms = _int32_lanes(atoms)
    for start in range(0, total, FUSED_BLOCK):
        i = torch.arange(start, start + FUSED_BLOCK, dtype=torch.int64).clamp_(max=total - 1)   # [B] padded
        z = fn((i % n4).to(torch.int32), atoms[i // n4], *words, keys)                # [B, 4]
        stop = min(total, start + FUSED_BLOCK)
        out[start:stop] = z[:stop - start]
    return out.reshape(a, 4 * n4)[:, :n]


# --------------------------------------------------------------------------------------------------
# Certified matching on a CPU: approximate scores from the exact Philox words, then the exact top-M
# --------------------------------------------------------------------------------------------------
# Only the decoder needs the exact atoms; the encoder needs the M atoms of largest |<a_i, r>|. So every atom is
# scored with an approximate Gaussian transform of its EXACT Philox words, whose error against the exact float32
# atom is bounded per element (derived below, checked on extreme words in the tests). Then for every atom
# |approx_i - <a_i, r>| <= eps = CERTIFIED_DELTA ||r||_1, so each atom of the exact top-M has
# |approx| >= T - 2 eps, T the M-th largest |approx|. Those candidates (about M plus a few) are generated exactly
# and scored as the reference scores every atom, and top_m picks from them: the reference's selection. (Both
# take their scores from float32 matrix products whose rounding was never portable: an exact tie below that
# rounding may break either way, in either path.) A pathological residual only makes more candidates.
#
# Speed: Philox runs in int32 lanes as in the fast exact generator, and its first rounds are split: with counter
# (e, atom, step, frame), round 1 multiplies e and the constant step word, round 2 a word of the atom alone and
# one of e alone, and round 3's first product is one of e alone. Those are computed once per codebook
# (_philox_tables, in the int64 reference arithmetic), leaving 15 of the 20 products per counter. One compiled
# call scores SCORE_ATOMS atoms over all elements: Philox, transform and the inner product in one loop, no atom
# written to memory.
#
# The approximate transform (float32; u = 2^-24): words (a, b) -> R cos T, R sin T with
#   R = sqrt(-2 ln x), x = (a + 1/2) 2^-32 ; T = 2 pi (b + 1/2) 2^-32   (what the exact transform computes).
#   ln x = 2 atanh(s) + k ln2 : for x < 1/2, a + 1/2 = m 2^(k+32) with m in [1, 2) and s = (m - 1)/(m + 1); for
#   x >= 1/2, w = 1 - x = (~a + 1/2) 2^-32 exactly and s = -w / (2 - w), k = 0, which keeps ln x accurate near 0.
#   Either way |s| <= 1/3 and 2 atanh(s) = 2 s (1 + s^2/3 + ... + s^8/9), truncation <= 1e-6 absolute.
#   T = q pi/2 + phi, q the quadrant nearest, |phi| <= pi/4; sin phi to phi^7 (3.1e-7), cos phi to phi^8 (2.5e-8).
# Errors: R: k ln2 rounded (k <= 32: 4e-6 in ln x, hence 3.5e-6 in R >= 1.18) and the rest a few u; R < 6.8.
# cos/sin: phi to 4u relative, polynomials 1e-6. So |approx - exact| <= 3.5e-6 + 6.8 * 1.5e-6 + 4e-7 (the exact
# atom's rounding to float32) < 1.5e-5 per element (the tests measure under 2e-6, extreme words included). In
# the score, the float32 products and the float32 sum of a counter's four add 5u * 6.8 < 2.1e-6 per unit of
# |r|, the float64 sum over counters nothing measurable: < 1.8e-5 ||r||_1 in all. CERTIFIED_DELTA = 1e-4 is that
# bound with a safety factor of 5.

CERTIFIED_DELTA = 1e-4          # |approximate - exact score| <= CERTIFIED_DELTA ||r||_1 (see above)
SCORE_ATOMS = 4                 # atoms per compiled scoring call (unrolled: compile time grows with it)
_APPROX_ATANH = [2.0 / (2 * n + 1) for n in range(5)]                              # 2 atanh(s) / s in s^2
_APPROX_SIN = _SIN_COEF[:4]                                                        # to phi^7
_APPROX_COS = _COS_COEF[:5]                                                        # to phi^8


def _philox_tables(seed, stream, step, frame, atoms, n4):
    """Philox rounds 1 to 3 of counters (e, atom, step, frame), split into per-atom and per-element words.

    Returns int32 tensors (u32 bits): atom words xa, sa [A]; element words y, p, q, rr [n4]; and the 20 round keys.
    After round 3 the state of counter (e, atom) is (hi(M1 (xa ^ y)) ^ p, lo(M1 (xa ^ y)), q ^ sa, rr).
    """
    key_lanes, keys = _round_keys(seed, stream)
    e = torch.arange(n4, dtype=torch.int64)                                           # [n4]
    i = torch.as_tensor(atoms, dtype=torch.int64)                                     # [A]
    hi0, lo0 = _mulhilo(PHILOX_M0, e)                                                 # round 1
    hi1, lo1 = _mulhilo(PHILOX_M1, torch.tensor(step & MASK32))
    a1, c1, e2, e3 = hi1 ^ i ^ keys[0], lo1, hi0 ^ (frame & MASK32) ^ keys[1], lo0
    xa, a2 = _mulhilo(PHILOX_M0, a1)                                                  # round 2
    hi1, lo1 = _mulhilo(PHILOX_M1, e2)
    e0, e1, y = hi1 ^ c1 ^ keys[2], lo1, e3 ^ keys[3]          # state: (e0, e1, xa ^ y, a2)
    q, rr = _mulhilo(PHILOX_M0, e0)                                                   # round 3, e alone
    p, sa = e1 ^ keys[4], a2 ^ keys[5]
    return [_int32_lanes(w) for w in (xa, sa, y, p, q, rr)] + [key_lanes]


def _philox_after_tables(xa, sa, y, p, q, rr, keys):
    """Philox output words (int32 lanes) from _philox_tables' words: round 3's mixed product, then rounds 4-10."""
    hi1, lo1 = _mulhilo32(PHILOX_M1, xa ^ y)
    return _philox_rounds32((hi1 ^ p, lo1, q ^ sa, rr), keys, first=3)


def _approx_box_muller(a, b):
    """Approximately _box_muller of int32 words (u32 bits) in float32: within 1.5e-5 (see above)."""
    upper = a < 0                                                       # x >= 1/2
    v = (a ^ (a >> 31)).to(torch.float32) + 0.5                         # a + 1/2, or ~a + 1/2 = 2^32 (1 - x)
    bits = v.view(torch.int32)
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)            # v = m 2^(k + 32), m in [1, 2)
    k = ((bits >> 23) - (127 + 32)).to(torch.float32)
    w = v * 2.0 ** -32
    s = torch.where(upper, -w, m - 1.0) / torch.where(upper, 2.0 - w, m + 1.0)
    ln_x = s * _horner(_APPROX_ATANH, s * s) + torch.where(upper, 0.0, k) * LN2
    radius = torch.sqrt(ln_x * -2.0)
    bq = b + (1 << 29)                                                  # wraps: quadrant q = round(4 (b + 1/2) 2^-32)
    quadrant = _srl32(bq, 30)
    phi = ((bq & ((1 << 30) - 1)) - (1 << 29)).to(torch.float32) + 0.5
    phi = phi * (2.0 * math.pi / 2.0 ** 32)
    qq = phi * phi
    sin_phi, cos_phi = phi * _horner(_APPROX_SIN, qq), _horner(_APPROX_COS, qq)
    odd = (quadrant & 1) == 1                   # rotate (cos phi, sin phi) by q pi/2
    c, s_ = torch.where(odd, sin_phi, cos_phi), torch.where(odd, cos_phi, sin_phi)
    cos_t = torch.where(((quadrant + 1) & 2) == 2, -c, c)
    sin_t = torch.where((quadrant & 2) == 2, -s_, s_)
    return radius * cos_t, radius * sin_t


def approx_scores(xa, sa, y, p, q, rr, r4, keys):
    """[G] float64 approximate <a, r> of G atoms (a python loop: each atom is one fused loop over elements).

    xa, sa: [G] atom words; y, p, q, rr: [n4] element words; r4: [4, n4] float32, r4[l, c] = r[4 c + l] (zero
    beyond D); keys: [20]. Each counter's four products are summed in float32, the counters in float64.
    """
    out = []
    for g in range(xa.shape[0]):
        c0, c1, c2, c3 = _philox_after_tables(xa[g], sa[g], y, p, q, rr, keys)
        z0, z1 = _approx_box_muller(c0, c1)
        z2, z3 = _approx_box_muller(c2, c3)
        part = z0 * r4[0] + z1 * r4[1] + z2 * r4[2] + z3 * r4[3]                       # [n4]
        out.append(part.to(torch.float64).sum())
    return torch.stack(out)                                                             # [G]


_scorer = {}                    # "fn": the compiled approx_scores, "ok": whether it passed the check


def _score_args(r, seed, stream, step, frame, atoms):
    """approx_scores' arguments for all `atoms` ([A] atom words padded to SCORE_ATOMS) and a residual r."""
    d = r.numel()
    n4 = max(8, -(-d // 32) * 8)                # counters, a multiple of 8 (vector width), never 0 or 1
    xa, sa, y, p, q, rr, keys = _philox_tables(seed, stream, step, frame, atoms, n4)
    pad = -len(xa) % SCORE_ATOMS
    xa, sa = F.pad(xa, (0, pad)), F.pad(sa, (0, pad))
    r4 = F.pad(r.detach().float().cpu().flatten(), (0, 4 * n4 - d)).reshape(n4, 4).t().contiguous()   # [4, n4]
    return xa, sa, (y, p, q, rr, r4, keys)


def scorer_available():
    """Compile approx_scores once per process and check it against exact scores; True if usable.

    The element dimension is dynamic, so one compilation serves every frame size. The check scores atoms at
    extreme addresses against exact float64 inner products of reference atoms: every score within the bound.
    """
    if "ok" not in _scorer:
        _scorer["ok"] = False
        if os.environ.get("GVCC_NO_COMPILE"):
            return False
        try:
            # Inductor stops fusing after 64 nodes by default; the unrolled atoms need more to stay in one loop.
            fn = torch.compile(approx_scores, dynamic=False, fullgraph=True, options={"max_fusion_size": 4096})
            r = torch.randn(1000, generator=torch.Generator().manual_seed(0))                # [D]
            atoms = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 12345, 777, 16383]
            xa, sa, rest = _score_args(r, 0xFFFFFFFF, STREAM_CODEBOOK, 16, 8, atoms)
            for t in rest[:4]:
                torch._dynamo.mark_dynamic(t, 0)
            torch._dynamo.mark_dynamic(rest[4], 1)
            got = torch.cat([fn(xa[i:i + SCORE_ATOMS], sa[i:i + SCORE_ATOMS], *rest)
                             for i in range(0, len(xa), SCORE_ATOMS)])[:len(atoms)]
            want = gaussian(0xFFFFFFFF, STREAM_CODEBOOK, 16, 8, atoms, 1000, fast=False).double() @ r.double()
            bound = CERTIFIED_DELTA * float(r.double().abs().sum())
            _scorer["ok"] = bool(((got - want).abs() <= bound).all())
            _scorer["fn"] = fn
            if not _scorer["ok"]:
                print("gvcc: warning: the compiled scorer misses its error bound here; scoring every atom "
                      "exactly", file=sys.stderr)
        except Exception as exc:            # no C++ compiler, an Inductor limitation: exact scoring works
            _scorer["compile_error"] = type(exc).__name__
            print(f"gvcc: warning: torch.compile of the scorer failed ({type(exc).__name__}); scoring every "
                  f"atom exactly", file=sys.stderr)
    return _scorer["ok"]


def certified_candidates(r, seed, step, frame, K, M, score=None):
    """Atoms that may be in the exact top-M of codebook (seed, step, frame): [C] int64, ascending.

    score: approx_scores or its compiled version (default: the compiled one). All K atoms are scored
    approximately; the candidates are those with |approx| >= T - 2 eps (see the section's comment).
    """
    score = score or _scorer["fn"]
    xa, sa, rest = _score_args(r, seed, STREAM_CODEBOOK, step, frame, range(K))
    approx = torch.cat([score(xa[i:i + SCORE_ATOMS], sa[i:i + SCORE_ATOMS], *rest)
                        for i in range(0, len(xa), SCORE_ATOMS)])[:K].abs()            # [K]
    eps = CERTIFIED_DELTA * float(r.detach().double().abs().sum())
    threshold = float(torch.topk(approx, min(M, K)).values[-1])
    if not (math.isfinite(eps) and bool(approx.isfinite().all())):     # float32 overflow: no bound holds
        return torch.arange(K)
    return torch.nonzero(approx >= threshold - 2.0 * eps).flatten()


# --------------------------------------------------------------------------------------------------
# On GPUs: one fused Triton kernel (optional; torch path otherwise)
# --------------------------------------------------------------------------------------------------
# The kernels below are plain functions until triton_kernels() wraps them with triton.jit, so gvcc imports
# without Triton. Philox runs in u32 lanes (umulhi, wrapping *), Box-Muller in float64 with FMA contraction
# off at launch (enable_fp_fusion=False); float64 `/` and tl.sqrt compile to IEEE div.rn.f64 and
# sqrt.rn.f64 (PTX has no approximate float64 forms; tl.div_rn / tl.sqrt_rn take float32 only), so every
# number is the reference's. Float constants other than small integers come from _TL_CONSTANTS in memory,
# because Triton would round a python float literal to float32. TRITON_INTERPRET=1 runs them on a CPU.

_TL_CONSTANTS = [SQRT_HALF, LN2, PI_4] + _ATANH_COEF + _SIN_COEF + _COS_COEF     # float64 table, in this order
_TL_ATOMS, _TL_COUNTERS = 8, 128     # tile of one program: atoms x Philox counters (literals in the kernels)


def _tl_horner(cst, first, count, q):
    """Horner's rule over cst[first .. first + count - 1] (float64 table), one rounding per operation."""
    p = tl.load(cst + first + count - 1) + 0.0 * q
    for i in tl.static_range(count - 2, -1, -1):
        p = p * q
        p = p + tl.load(cst + first + i)
    return p


def _tl_box_muller(a, b, cst):
    """_box_muller on u32 lanes: two float32 normals."""
    v = 2.0 * a.to(tl.float64) + 1.0
    bits = v.to(tl.int64, bitcast=True)
    e = (bits >> 52) - 1022
    m = ((bits & 0xFFFFFFFFFFFFF) | 0x3FE0000000000000).to(tl.float64, bitcast=True)
    low = m < tl.load(cst + 0)
    m = tl.where(low, 2.0 * m, m)
    e = e.to(tl.float64) - low.to(tl.float64)
    s = (m - 1.0) / (m + 1.0)
    ln_u = 2.0 * s * _tl_horner(cst, 3, 9, s * s) + (e - 33.0) * tl.load(cst + 1)
    r = tl.sqrt(-2.0 * ln_u)
    octant = b >> 29
    t = ((b & 0x1FFFFFFF).to(tl.float64) + 0.5) / 536870912.0
    odd = (octant & 1) == 1
    phi = tl.load(cst + 2) * tl.where(odd, 1.0 - t, t)
    q = phi * phi
    sin_phi = phi * _tl_horner(cst, 12, 8, q)
    cos_phi = _tl_horner(cst, 20, 8, q)
    c = tl.where(odd, sin_phi, cos_phi)
    s_ = tl.where(odd, cos_phi, sin_phi)
    quadrant = octant >> 1
    cos_t = tl.where(quadrant == 0, c, tl.where(quadrant == 1, -s_, tl.where(quadrant == 2, -c, s_)))
    sin_t = tl.where(quadrant == 0, s_, tl.where(quadrant == 1, c, tl.where(quadrant == 2, -s_, -c)))
    return (r * cos_t).to(tl.float32), (r * sin_t).to(tl.float32)


def _tl_normals(c0, c1, c2, c3, k0, k1, cst):
    """philox_gaussian on u32 tensors: four float32 normals per counter."""
    for i in tl.static_range(10):
        if i > 0:
            k0 = k0 + 0x9E3779B9
            k1 = k1 + 0xBB67AE85
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    z0, z1 = _tl_box_muller(c0, c1, cst)
    z2, z3 = _tl_box_muller(c2, c3, cst)
    return z0, z1, z2, z3


def _tl_words(atoms_ptr, n_atoms, n4, key_ptr, start):
    """The tile's counter words (u32): counters start.., atoms of this program; and its key, step, frame."""
    row = tl.program_id(0) * 8 + tl.arange(0, 8)                                   # [8]
    col = start + tl.arange(0, 128)                                                # [128]
    atom = tl.load(atoms_ptr + row, mask=row < n_atoms, other=0)                   # [8]
    c0 = (col[None, :] + 0 * row[:, None]).to(tl.uint32)                           # [8, 128]
    c1 = (atom[:, None] + 0 * col[None, :]).to(tl.uint32)
    k0 = tl.load(key_ptr + 0).to(tl.uint32)                                        # seed
    k1 = tl.load(key_ptr + 1).to(tl.uint32)                                        # stream
    c2 = (tl.load(key_ptr + 2) + 0 * c0).to(tl.uint32)                             # step
    c3 = (tl.load(key_ptr + 3) + 0 * c0).to(tl.uint32)                             # frame
    return row, col, c0, c1, c2, c3, k0, k1


def _tl_gaussian_kernel(atoms_ptr, n_atoms, n, n4, key_ptr, cst, out_ptr):
    """gaussian(): out[a, e] for the program's 8 atoms, all elements e < n (row stride 4 n4)."""
    for start in range(0, n4, 128):
        row, col, c0, c1, c2, c3, k0, k1 = _tl_words(atoms_ptr, n_atoms, n4, key_ptr, start)
        z0, z1, z2, z3 = _tl_normals(c0, c1, c2, c3, k0, k1, cst)
        base = out_ptr + row[:, None].to(tl.int64) * (4 * n4) + 4 * col[None, :]
        ok = (row[:, None] < n_atoms) & (col[None, :] < n4)
        tl.store(base + 0, z0, mask=ok & (4 * col[None, :] + 0 < n))
        tl.store(base + 1, z1, mask=ok & (4 * col[None, :] + 1 < n))
        tl.store(base + 2, z2, mask=ok & (4 * col[None, :] + 2 < n))
        tl.store(base + 3, z3, mask=ok & (4 * col[None, :] + 3 < n))


def _tl_score_kernel(atoms_ptr, n_atoms, n, n4, key_ptr, cst, r_ptr, scores_ptr):
    """<a, r> for the program's 8 atoms without writing any atom: generate, multiply, sum (float32)."""
    acc = tl.zeros([8, 128], tl.float32)
    for start in range(0, n4, 128):
        row, col, c0, c1, c2, c3, k0, k1 = _tl_words(atoms_ptr, n_atoms, n4, key_ptr, start)
        z0, z1, z2, z3 = _tl_normals(c0, c1, c2, c3, k0, k1, cst)
        e = 4 * col                                                                # [128]
        r0 = tl.load(r_ptr + e + 0, mask=e + 0 < n, other=0.0)
        r1 = tl.load(r_ptr + e + 1, mask=e + 1 < n, other=0.0)
        r2 = tl.load(r_ptr + e + 2, mask=e + 2 < n, other=0.0)
        r3 = tl.load(r_ptr + e + 3, mask=e + 3 < n, other=0.0)
        acc += z0 * r0[None, :] + z1 * r1[None, :] + z2 * r2[None, :] + z3 * r3[None, :]
    row = tl.program_id(0) * 8 + tl.arange(0, 8)
    tl.store(scores_ptr + row, tl.sum(acc, axis=1), mask=row < n_atoms)


_triton_state = {}


def triton_kernels():
    """(gaussian kernel, score kernel) wrapped by triton.jit, or None without Triton. Loaded once per
    TRITON_INTERPRET setting (tests run the interpreter on a CPU)."""
    global tl, _tl_horner, _tl_box_muller, _tl_normals, _tl_words
    mode = os.environ.get("TRITON_INTERPRET", "0")
    if mode not in _triton_state:
        try:
            import triton
            import triton.language
        except ImportError:
            _triton_state[mode] = None
            return None
        tl = triton.language
        for name in ("_tl_horner", "_tl_box_muller", "_tl_normals", "_tl_words"):
            fn = globals()[name]
            globals()[name] = triton.jit(getattr(fn, "fn", fn))
        _triton_state[mode] = tuple(triton.jit(getattr(f, "fn", f)) for f in (_TL_PLAIN["gaussian"],
                                                                              _TL_PLAIN["score"]))
    return _triton_state[mode]


_TL_PLAIN = {"gaussian": _tl_gaussian_kernel, "score": _tl_score_kernel}
tl = None                   # triton.language once triton_kernels() has loaded it


def _triton_launch(kernel, atoms, n, seed, stream, step, frame, *tensors):
    device = tensors[0].device
    atoms = torch.as_tensor(atoms, dtype=torch.int64, device=device)
    key = torch.tensor([seed & MASK32, stream & MASK32, step & MASK32, frame & MASK32], dtype=torch.int64,
                       device=device)
    cst = torch.tensor(_TL_CONSTANTS, dtype=torch.float64, device=device)
    grid = (-(-len(atoms) // _TL_ATOMS),)
    kernel[grid](atoms, len(atoms), n, (n + 3) // 4, key, cst, *tensors, enable_fp_fusion=False)


def gaussian_triton(seed, stream, step, frame, atoms, n, device="cuda"):
    """gaussian() by the Triton kernel: [A, n] float32, the same bits."""
    n4 = (n + 3) // 4
    out = torch.zeros(len(atoms), 4 * n4, dtype=torch.float32, device=device)     # [A, 4 n4]
    _triton_launch(triton_kernels()[0], atoms, n, seed, stream, step, frame, out)
    return out[:, :n]


def scores_triton(r, seed, stream, step, frame, atoms):
    """[A] float32 inner products <a, r> of the given atoms, fused: no atom is written to memory."""
    p = torch.empty(len(atoms), dtype=torch.float32, device=r.device)              # [A]
    _triton_launch(triton_kernels()[1], atoms, r.numel(), seed, stream, step, frame, r.contiguous(), p)
    return p
