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
    h,w latent height, width as the DiT sees them: H/8, W/8 rounded up to even (2x2 patches)
    h0,w0  the VAE's latent, H/8, W/8     D   size of one latent frame, C * h * w
    T_pix  pixel frames in a GOP (4k+1)   H,W pixel height, width the VAE sees (working size up to multiples of 8)
    K   atoms in one codebook             M   atoms selected per (step, frame)
    A   atoms in one generated chunk      N   frames of a whole clip
    n4  Philox counters (4 outputs each)

Pipeline (one GOP, T2V)
-----------------------
    pixels [3, T_pix, H, W] in [-1, 1]  --VAE encode, normalise-->  [C, F, h0, w0]  --replicate-pad-->  x0 [C, F, h, w]
    x = x_T [C, F, h, w]                                       (portable generator, stream 0)
    for k in 0..T-1, t = t_k, dt = t_k - t_{k+1}:
        u      = DiT(x, 1000 t, text)                          velocity, u ~ eps - x0
        x0_hat = x - t u ;  eps_hat = x + (1 - t) u ;  score = -eps_hat / t
        if k < T_sde = min(T - N_tail, T - 1):                 SDE step with a codebook innovation
            for every latent frame f:
                r      = x0[:, f] - x0_hat[:, f]               (encoder only)      [D]
                S, s   = top-M |<a_i, r>| over atoms a_0..a_{K-1} of codebook (seed, k, f)   (see Codebooks)
                z_f    = sum_{i in S} s_i a_i ;  z_f = z_f / std(z_f)   (unbiased std)
            g = g_scale t^2 ;  f = u - (g^2 / 2) score
            x = x - f dt + g sqrt(dt) z
        else:                                                  ODE tail, no bits; the last step always
            x = x - u dt
    pixels_hat = VAE decode(de-normalise(x[:, :, :h0, :w0])), clamped to [-1, 1], cropped to the working size
The text context is the UMT5 output of the prompt (cut to text_len - 1 tokens plus EOS), zero-padded to text_len
rows (a header field: 512 as upstream Wan, 226 as the authors' T2V runs); the DiT's cross-attention does not mask
the padding, so text_len changes every velocity. The shift is 3 for T2V; for I2V and FLF2V 3 when the working
height is at most 480 rows, else 5 (the authors' rule).

Modes
-----
    t2v    Text prompt only (default empty, carried in the header). GOPs do not overlap; each starts from the
           same x_T. Only codebook symbols are sent.
    i2v    Wan2.1 I2V. GOP g covers source frames [32g, 32g+32] (for 33-frame GOPs) and is conditioned on its
           frame 0: in GOP 0 the first source frame as decoded from a still sent in the stream (AVIF, or a
           lossless PNG with `--still-quality lossless`, the authors' ground-truth first frame), in later
           GOPs the previous GOP's decoded last frame (closed loop: the encoder conditions on exactly what the
           decoder will have). Conditioning: CLIP features of the reference and
               y [20, F, h, w] = concat(mask [4, F, h, w], VAE(reference, zero frames) [16, F, h, w])
           with the mask 1 on pixel frame 0 (repeated 4x, so it fills latent frame 0), computed at h0 x w0 and
           replicate-padded to h x w, mask and all. The DiT sees concat(x, y) [36, F, h, w]. The last 2 latent
           frames get M_tail atoms (128 by default). After sampling, the residual of the last latent frame,
           r = x0[:, F-1] - x[:, F-1] [C, h, w], is quantised per channel with the authors' quantiser:
           m_c = max(max |r_c|, 1e-6), q = round((r / m_c + 1) L / 2) with L = 2^b - 1, b = 8 (4 and 16 with
           `--residual-bits`; 0 sends none), zlib level 9; both sides add (2 q / L - 1) m_c before the crop
           and the VAE decode (bitstream.py section 6). The output keeps the shared frame once.
    flf2v  Wan2.1 FLF2V. Same GOP grid; GOP g is conditioned on its first and last frames, both decoded AVIF
           stills, and the boundary still is shared by the two GOPs that touch it (N GOPs send N+1 stills).
           y as above from VAE(first, zero frames, last), mask 1 on the first and last pixel frames; CLIP
           features of both frames.
The short last GOP of a clip is padded by repeating its last frame up to the next 4k+1 frames, and the decoder
drops the padding. Spatially, as the authors do it: the pixels are replicate-padded only to multiples of 8 where
the working size needs it (1080 rows stay 1080), the VAE latent is replicate-padded to even height and width for
the DiT (135 -> 136 rows), and the latent is cropped back before the VAE decodes.

The authors' runs, and where gvcc differs on purpose
---------------------------------------------------
gvcc follows the authors' released code (CCdydy/GVCC at 607d822, sde_rf_wan/ and exp_*/) in the latent padding,
the shift rule, the tail residual quantiser, the final ODE step and (with --text-len 226) the T2V text context.
What remains different, kept as gvcc decisions, and which of gvcc's outputs differ because of it:
- Rounding: gvcc rounds decoded pixels to nearest; the authors truncate ((x * 255).astype(uint8)), a -0.5 LSB
  bias. Different: decoded pixels (by one level where the fraction is >= 0.5; a few hundredths of a dB of PSNR
  at these rates) and, in I2V, the reference frame of every later GOP, so the chained GOPs' latents too.
- Colour of raw .yuv input: gvcc reads .yuv as BT.709 (full range by default); the authors convert UVG with
  OpenCV's linear chroma resize and COLOR_YUV2RGB (an analog-YUV matrix without range expansion). Different:
  the RGB frames gvcc codes from a .yuv, hence its streams, reconstructions and metrics against that RGB.
  bench/paper.py uses the authors' conversion (media.yuv420_to_rgb_opencv) to reproduce their ground truth.
- Counted first frame and headers: gvcc codes the I2V first frame as a still and counts every header and
  framing byte, and the tail residual's 16 float32 scales. Different: gvcc's file size and bpp (higher);
  `gvcc.py info` and bench/paper.py also print the authors' count (codebook with M, not M_tail; residual zlib
  bytes; boundary stills; first frame and headers free).
- Portable generator: x_T and the codebook atoms come from Philox4x32-10 (below), not torch's CUDA generator.
  Different: the atoms and noise, so every symbol, latent and pixel (statistically equivalent, not equal).
- Time grid in float64 from the header's integers, the timestep given to the DiT unrounded (the authors compute
  the grid in float32 with torch.linspace and round 1000 t to bf16). Different: the velocities slightly, hence
  the latents and pixels.
- I2V GOPs share their boundary frame as FLF2V's do ([32g, 32g+32]); the authors code [33g, 33g+33) while
  conditioning on frame 33g-1. Different: which frames each I2V GOP codes, and the I2V frame count per clip.
  The authors' rate count (paper_accounting) divides each GOP by the frames it adds, 33 for the first and 32
  for every later one, as on their grid each GOP divides by the 33 frames it adds (dividing by 33 here made the
  I2V rate 2.9 % low over 18 GOPs).
- FLF2V boundary stills: AVIF (or lossless PNG), not CompressAI cheng2020-attn. Different: the boundary bytes
  and quality (bench/paper.py sweeps the AVIF quality to bracket the paper's).
- Weight files: weights_fetch.sh fetches Comfy-Org's 16-bit repackaging by default, the VAE in bf16, the 14B
  DiTs and UMT5 in fp16; the authors load the official checkpoints, the VAE in float32 (their I2V / FLF2V
  scripts the .pth files of Wan-AI/Wan2.1-*, their T2V the Wan-AI/Wan2.1-T2V-*-Diffusers folders, which
  `--weights` reads; `weights_fetch.sh --vae fp32` fetches that float32 VAE alone). The VAE computes in float32
  either way; only its weights are rounded. Different: the VAE's latents and pixels, measured with random
  weights, float32 against the same rounded to bf16 (bench/bench_vae_weights.py, 5 frames at 160x96, real
  dimensions): latents 0.46 % apart (rms over rms; 0.59 % max over max), decoded pixels 50.8 dB PSNR apart, at
  most 3 levels (the tiny VAE: 0.42 %, 51.7 dB, 3 levels). Random weights are untrained: this is the size of
  the rounding, not its effect on a real video. The model fingerprint tells the files apart, so a stream made
  with one VAE does not decode with the other.
- GPU precision (`--precision bf16`): the authors cast the whole I2V / FLF2V DiT to bf16 (model.to(bf16), its
  float32 islands too: time embedding, modulation, norms, head and residual stream), run T2V through diffusers'
  WanTransformer3DModel in bf16, which keeps the time embedder, modulation tables and norms in float32 but
  casts the residual stream back to bf16 after every block, and run CLIP in fp16 (UMT5 in bf16). gvcc's bf16
  keeps upstream Wan's float32 islands and a float32 residual stream (section "Precision"), and runs CLIP in
  bf16. Different: on a GPU, the velocities by bf16 rounding (2^-9 relative per cast), hence latents, symbols
  and pixels; CPU runs (float32) differ from the authors' bf16 anyway. gvcc offers no switch to the authors'
  casts.
- Score: gvcc computes score = -eps_hat / t, the linear interpolant's formula; the authors' velocity_to_score
  evaluates the general one (1 / sigma_t) (alpha_t u - alpha_t' x) / (alpha_t' sigma_t - alpha_t sigma_t')
  with sigma_t = max(t, 1e-6) (never active: every SDE step has t > 1e-6) and the denominator -1 + 1e-6, so
  their score is 1 / (1 - 1e-6) = 1 + 1.0e-6 times gvcc's. Different: the drift's score term by 1e-6 relative
  (8 to 17 float32 ulps), so the latents in their last bits, far below the time grid's difference above.
- Prompt cleaning: gvcc cleans every prompt as upstream Wan's tokenizer does with clean='whitespace'
  (wan_model.clean_prompt: HTML-unescape twice, strip, collapse whitespace runs to one space, without ftfy),
  as the authors' I2V and FLF2V runs do through Wan's T5 encoder; their T2V wrapper hands the raw prompt to
  transformers' tokenizer. Different: the T2V text context of a prompt with HTML entities or whitespace runs;
  their T2V runs use the empty prompt, where both agree.

Precision
---------
The reference path is float32 everywhere (`--precision fp32`, the default on a CPU). On a GPU the default is
bf16 for the DiT, text and image encoders, with upstream's float32 islands (time embedding, modulation, norms,
head, residual stream); the VAE, the sampler arithmetic and the codebook always run in float32. The encoder's
precision is recorded in the stream and the decoder uses it.

Weights and the model fingerprint
---------------------------------
`--weights DIR` is a folder in either of two layouts of the same networks (wan_model, "Weight folders"): the
official one, one safetensors file per network named as in MODELS (what weights_fetch.sh fetches), or a
diffusers pipeline folder (Wan-AI/Wan2.1-*-Diffusers, recognised by its model_index.json; also a Hugging Face
cache entry models--Wan-AI--...-Diffusers, through its refs/main snapshot), whose key names the loaders map to
the official ones with one table per network (wan_model.DIT_DIFFUSERS_NAMES, vae.VAE_DIFFUSERS_BLOCKS).
The header's model_fingerprint identifies the weights, whatever their layout, and the decoder refuses a stream
whose fingerprint its weights do not give. Over the weight files of the model's networks, in the order clip,
dit, t5, vae (those it has), and within a network over its tensors in ascending byte order of name, one line each,
ended by a newline (0x0A):
    {network} {name} {dtype} {shape} {sha256}          (fields separated by one space)
        name    the official name: the Wan names of the DiT and VAE, the Hugging Face names of UMT5 and CLIP
                (CLIP's with the `vision_model.` prefix), a repackaged file's `model.diffusion_model.` dropped
        dtype   the safetensors dtype as stored (F32, F16, BF16, U8): other precisions are other weights
        shape   the dimensions, comma-separated (empty for a scalar)
        sha256  the lowercase hex SHA-256 of the tensor's stored bytes
UMT5's SentencePiece model is the tensor "spiece_model" (U8, its length in bytes), whether the file embeds it
(Comfy-Org) or it lies in the pipeline's tokenizer/spiece.model. Left out are the few tensors that one layout's
files carry and the other's do not and that no network reads (FINGERPRINT_SKIP: CLIP's projection head and
position ids, UMT5's tied copy of its embedding). model_fingerprint is the first 4 bytes, big-endian, of the
SHA-256 of all the lines. So any change of any value the networks read (a fine-tune, a merge, another precision)
changes it, except with probability 2^-32; it detects the wrong weights, it does not authenticate them.
Hashing reads every byte once: 0.75 to 1.4 GB/s on a 2-core machine (bench/bench_fingerprint.py, 0.5 and 1.5 GB
files, out of and in the page cache; SHA-256 alone runs at 1.8 GB/s per core), so 12 to 25 s for the 17.3 GB of
T2V-1.3B and 35 to 60 s for the 45.7 GB of an I2V-14B model, once. Each file's tensor digests are then cached
by the file's identity (wan_model.file_digests) and a later run reads them back in milliseconds (1.4 to 5 ms).

Normative parts (what a port must reproduce exactly)
----------------------------------------------------
1. The portable generator (section "Portable generator"): Philox4x32-10 and the Gaussian transform below. Every
   number is addressable by (seed, stream, step, frame, atom, element) and identical whatever the chunking,
   device or framework: only integer operations and the IEEE-754 operations + - * / sqrt, each rounded once
   (no fused multiply-add), are used.
2. The time grid: s_i = 1 - i / T, t_i = shift s_i / (1 + (shift - 1) s_i), computed in float64 from the integer
   header fields, i = 0..T.
3. The symbol semantics: which atoms, which signs, at which (step, frame); the sampler equations above.
4. The model fingerprint (section "Weights and the model fingerprint"), so that a port accepts gvcc's streams.
Floating-point model arithmetic (DiT, VAE) is *not* bit-exact across machines: a stream parses identically
everywhere, and on the same machine, device and precision the decoder reproduces the encoder's reconstruction
bit for bit, because both run the very same code path (`run_gop`). On other hardware the pixels may drift
(bench/drift.py measures how far). The CPU thread count does not change the bits where gvcc controls it: small
attention problems, whose fused torch kernel does depend on it, take a plain path (wan_model.attention); the
fused kernel used for the large attention of real models was thread-count independent in a sweep of shapes, but
torch does not promise it, so encode and decode with the same OMP_NUM_THREADS to be certain.

Portable generator
------------------
Philox4x32-10 (Salmon et al., SC'11; Random123): key (k0, k1), counter (c0, c1, c2, c3), all u32. One round:
    (hi0, lo0) = 0xD2511F53 * c0 ; (hi1, lo1) = 0xCD9E8D57 * c2        (64-bit products split in halves)
    (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
and between rounds k0 += 0x9E3779B9, k1 += 0xBB67AE85 (mod 2^32). Ten rounds give four u32 outputs.
gvcc's addressing: key = (seed, stream); counter = (e // 4, atom, step, frame); output lane e % 4 is element e.
    stream 0: the initial latent x_T, atom 0, step 0, frame f: element e of the flattened [C, h, w] frame f.
    stream 1: codebook atoms, step = SDE step index j, frame = latent frame f, atom = i in 0..K-1 (generator 1).
    stream 2: generator 2's vector g of codebook (seed, j, f): atom 0, step j, frame f, elements 0..D-1.
    stream 3: generator 2's permutation words: raw Philox outputs (no Gaussian transform), see Codebooks.
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
The same numbers come from three implementations, chosen per request by `gaussian`: the eager torch reference
(the code below, the spec), a torch.compile'd CPU kernel (large requests; checked bit for bit against the
reference before first use, eager fallback), and on CUDA a Triton kernel that also scores atoms against a
residual without writing them (FMA contraction off; tested bit for bit under Triton's interpreter). The CPU
encoder also computes the exact Philox words in int32 lanes to score atoms approximately (Codebooks, below);
the atoms it finally chooses are always generated by one of the three.

Codebooks (header field `generator`; `encode --codebook iid|shift`)
-------------------------------------------------------------------
A codebook (seed, j, f) holds K atoms of D = C h w elements, one per (SDE step j, latent frame f). Both sides
build the innovation of the chosen atoms S (ascending indices k_i, signs s_i = +-1) with the same function.
Generator 1, `iid` (the paper's, the default): atom i is gaussian(seed, stream 1, j, f, atom i), elements 0..D-1.
    The encoder needs the M atoms of largest |<a_i, r>| (O(K D) Philox words per (step, frame)); the decoder
    regenerates only the M chosen atoms and sums them: z = sum_i s_i a_{k_i}.
    Encoder (not normative), on a CPU ("Certified matching"): every atom is scored from its exact Philox words
    through a cheaper float32 Gaussian transform whose error is bounded per element, so that each score is
    within eps = CERTIFIED_DELTA ||r||_1 (1e-4 ||r||_1); the atoms whose approximate |score| is within 2 eps of the
    M-th largest (about M plus a few) are generated exactly and scored as the reference scores every atom, and
    the top M of those is the reference's choice. The reference (`match_exact`) scores every atom exactly.
Generator 2, `shift` (structured): atom k of codebook (seed, j, f), k = 0..K-1 with K <= D, is
        a_k = P^T roll(g, k),  i.e.  a_k[P[m]] = g[(m - k) mod D]  for m = 0..D-1,
    g = gaussian(seed, stream 2, step j, frame f, atom 0) elements 0..D-1 (float32), and P a permutation of
    0..D-1 fixed per (seed, D): w_e = Philox output word e % 4 of counter (e // 4, 0, 0, 0) under key
    (seed, 3), e = 0..D-1, and P = the stable ascending argsort of w (equal words keep index order); (P r)_m =
    r[P[m]]. The shifts are s_k = k: K distinct shifts, the first K lags. The permutation decorrelates the
    elements so that neighbouring shifts are not redundant on spatially smooth residuals.
    Encoder (not normative): <a_k, r> = sum_m g_m (P r)_{(m + k) mod D}, the circular cross-correlation of g
    with P r, for all k at once by real FFTs in float64 (O(D log D)); top-M and signs as for generator 1.
    Decoder (what a port must reproduce bit for bit): y = 0 (float32, D elements); for i in ascending k_i:
    y = y + roll(g, k_i) if s_i = + else y - roll(g, k_i), each element rounded once in float32; then
    z[P[m]] = y[m]. One vector of D numbers, M shifted additions.
Both: z = z / std(z) (unbiased std over the D elements), reshaped to [C, h, w].
"""
import argparse
import functools
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F


__version__ = "0.1.0"

# ==================================================================================================
# Portable generator: Philox4x32-10 and the Gaussian transform
# ==================================================================================================

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57   # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85   # key schedule (golden ratio, sqrt(3) - 1)
MASK32 = 0xFFFFFFFF
STREAM_NOISE, STREAM_CODEBOOK = 0, 1            # key word k1: what the numbers are for
STREAM_SHIFT_VECTOR, STREAM_PERMUTATION = 2, 3  # generator 2: the vector g, the permutation P
GENERATOR_IID, GENERATOR_SHIFT = 1, 2           # header `generator`: i.i.d. atoms, shifted atoms (below)
CODEBOOKS = {"iid": GENERATOR_IID, "shift": GENERATOR_SHIFT}     # encode --codebook


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
    """Philox4x32-10 on four int64 tensors of u32 counter words (broadcastable).

    key: two u32 words, python ints or 0-d int64 tensors (tensors let a compiled caller vary the key).
    """
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


def _frexp(v):
    """frexp of positive normal float64 values, read off the bits: v = m 2^e with m in [0.5, 1).

    Same results as torch.frexp on these inputs, written with integer operations so that torch.compile's
    Inductor can fuse it (it has no frexp kernel).
    """
    bits = v.view(torch.int64)
    e = (bits >> 52) - 1022                                     # biased exponent 1023 is m in [1, 2)
    m = ((bits & ((1 << 52) - 1)) | (1022 << 52)).view(torch.float64)
    return m, e


def _box_muller(a, b):
    """Two standard normals (float32) from two int64 tensors of u32 words; see the module docstring."""
    m, e = _frexp(2.0 * a.to(torch.float64) + 1.0)           # 2a + 1 < 2^33 is exact in float64
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


def philox_gaussian(c0, c1, c2, c3, k0, k1):
    """Counters -> standard normals: [..., 4] float32, lane i from Philox output word i (see the docstring).

    All arguments are int64 tensors (broadcastable) of u32 words: the counter (c0, c1, c2, c3), the key (k0, k1).
    """
    x0, x1, x2, x3 = philox4x32((c0, c1, c2, c3), (k0, k1))
    z0, z1 = _box_muller(x0, x1)
    z2, z3 = _box_muller(x2, x3)
    return torch.stack([z0, z1, z2, z3], dim=-1)


def gaussian(seed, stream, step, frame, atoms, n, device="cpu", fast=True):
    """Standard normals of the given atoms: [A] int64 atom indices -> [A, n] float32 (elements 0..n-1).

    The result depends only on the addresses, so the work is split freely. The reference path (eager torch)
    works on a CPU in groups of atoms of about 2^17 counters each, which keeps the ~400 elementwise passes of
    Philox and Box-Muller in cache. With fast=True, large CPU requests go through the compiled kernel and CUDA
    requests through the Triton kernel of section "Fast exact generator" (the same bits; `fast=False` forces
    the reference).
    """
    atoms = torch.as_tensor(atoms, dtype=torch.int64, device=device)
    n4 = (n + 3) // 4
    if fast and atoms.is_cuda and len(atoms) and triton_kernels() is not None:
        return gaussian_triton(seed, stream, step, frame, atoms, n, device)
    if fast and not atoms.is_cuda and len(atoms) * n4 >= FUSED_MIN_COUNTERS and fused_cpu_available():
        return _gaussian_fused_cpu(seed, stream, step, frame, atoms, n)
    group = len(atoms) if atoms.is_cuda else max(1, (1 << 17) // n4)
    out = torch.empty(len(atoms), 4 * n4, dtype=torch.float32, device=device)      # [A, 4 n4]
    c0 = torch.arange(n4, dtype=torch.int64, device=device)[None, :]             # [1, n4]
    for start in range(0, len(atoms), group):
        c1 = atoms[start:start + group, None]                                      # [a, 1]
        w0, w1 = (w.contiguous() for w in torch.broadcast_tensors(c0, c1))       # [a, n4] each
        z = philox_gaussian(w0, w1, torch.full_like(w0, step), torch.full_like(w0, frame), seed, stream)
        out[start:start + group] = z.reshape(-1, 4 * n4)                          # [a, 4 n4]
    return out[:, :n]


def initial_noise(seed, shape, device="cpu"):
    """x_T for a GOP latent of shape (C, F, h, w): frame f is stream 0, step 0, frame f, atom 0."""
    c, f, h, w = shape
    frames = [gaussian(seed, STREAM_NOISE, 0, i, [0], c * h * w, device)[0].reshape(c, h, w) for i in range(f)]
    return torch.stack(frames, dim=1)                                           # [C, F, h, w]


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
FUSED_MIN_COUNTERS = 1 << 20    # smaller requests stay eager (the first compilation takes about a minute)
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


def _gaussian_fused_cpu(seed, stream, step, frame, atoms, n):
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
    generator: int = GENERATOR_IID   # codebook: 1 = i.i.d. atoms, 2 = shifts of one vector (header `generator`)

    @property
    def sde_steps(self):
        """Steps with a codebook innovation: all but the tail, and never the last step (it lands on t = 0)."""
        return min(self.steps - self.tail_steps, self.steps - 1)


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
            build = INNOVATIONS[settings.generator]
            z = torch.stack([
                build(settings.seed, k, f, *choose(k, f, x0_hat[:, f]), shape_of_frame(shape), x.device)
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

def top_m(idx, p, M):
    """The M entries of largest |p|, ties to the lower index: (indices ascending, their scores); idx ascending."""
    order = torch.sort(-p.abs(), stable=True).indices[:M]      # stable: lower index wins ties
    keep = torch.sort(idx[order]).indices
    return idx[order][keep], p[order][keep]


def match_atoms(r, seed, step, frame, K, M, chunk=None, certified=True):
    """The M atoms of codebook (seed, step, frame) with the largest |<a_i, r>|, and their signs (generator 1).

    r: [D] residual. Ties in |p| go to the lower index; a zero inner product counts as +. Returns (indices
    sorted ascending, signs with 0 = + and 1 = -). On CUDA with Triton one fused kernel scores all K atoms. On a
    CPU, large codebooks go through certified_candidates (section "Certified matching") when its compiled
    scorer is usable and certified=True; otherwise every atom is scored exactly (match_exact).
    """
    if r.is_cuda and triton_kernels() is not None:      # one fused kernel scores all K atoms, writing none
        idx = torch.arange(K, dtype=torch.int64, device=r.device)                             # [K]
        best_idx, best_p = top_m(idx, scores_triton(r, seed, STREAM_CODEBOOK, step, frame, idx), M)
        return best_idx.tolist(), (best_p < 0).to(torch.int64).tolist()
    atoms = range(K)
    n4 = (r.numel() + 3) // 4
    if (certified and not r.is_cuda and chunk is None and 0 < M < K and K * n4 >= FUSED_MIN_COUNTERS
            and scorer_available()):
        atoms = certified_candidates(r, seed, step, frame, K, M).tolist()
    return match_exact(r, seed, step, frame, atoms, M, chunk)


def match_exact(r, seed, step, frame, atoms, M, chunk=None):
    """match_atoms over the given atom indices (ascending), each generated and scored exactly.

    Atoms are generated and scored `chunk` at a time with a running top-M, so memory does not grow with K.
    """
    d = r.numel()
    chunk = chunk or max(16, min(1024, (64 << 20) // (4 * d)))    # about 64 MiB of atoms at a time
    atoms = torch.as_tensor(atoms, dtype=torch.int64)
    best_idx = torch.empty(0, dtype=torch.int64, device=r.device)   # kept in ascending index order
    best_p = torch.empty(0, dtype=torch.float32, device=r.device)
    for start in range(0, len(atoms), chunk):
        idx = atoms[start:start + chunk].to(r.device)                                           # [A]
        p = gaussian(seed, STREAM_CODEBOOK, step, frame, idx, d, r.device) @ r                 # [A]
        best_idx, best_p = top_m(torch.cat([best_idx, idx]), torch.cat([best_p, p]), M)
    signs = (best_p < 0).to(torch.int64)
    return best_idx.tolist(), signs.tolist()


def innovation(seed, step, frame, indices, signs, frame_shape, device="cpu"):
    """z = sum_i s_i a_i over the selected atoms, scaled to unit (unbiased) std: [C, h, w] float32 (generator 1)."""
    d = frame_shape[0] * frame_shape[1] * frame_shape[2]
    atoms = gaussian(seed, STREAM_CODEBOOK, step, frame, indices, d, device)           # [M, D]
    sign = 1.0 - 2.0 * torch.tensor(signs, dtype=torch.float32, device=device)         # [M]
    z = (sign[:, None] * atoms).sum(dim=0)                                              # [D]
    return (z / z.std()).reshape(frame_shape)                                           # [C, h, w]


# ==================================================================================================
# Structured codebook (generator 2): circular shifts of one Gaussian vector, matched by FFT
# ==================================================================================================
# Atom k of codebook (seed, step, frame) is a_k = P^T roll(g, k): g is one vector of D portable normals and P a
# permutation of the frame's D elements, fixed per (seed, D). All K inner products with a residual r are one
# circular cross-correlation of g with P r, O(D log D) by real FFTs instead of O(K D); that is encoder-only
# arithmetic, so its floating point need not be portable. The decoder adds M shifted copies of g and undoes
# P: exact wherever float32 addition is IEEE. See the docstring, "Structured codebook".

_permutations = {}          # (seed, D) -> P, small and reused by every (step, frame) of a clip


def shift_permutation(seed, d):
    """P of generator 2: [D] int64, the stable ascending argsort of the Philox words w_0..w_{D-1}.

    w_e is output word e % 4 of counter (e // 4, 0, 0, 0) under key (seed, STREAM_PERMUTATION); (P r)_j =
    r[P[j]], and equal words keep their index order.
    """
    if (seed, d) not in _permutations:
        if len(_permutations) >= 8:
            _permutations.clear()
        c0 = torch.arange((d + 3) // 4, dtype=torch.int64)                            # [n4]
        zero = torch.zeros_like(c0)
        words = torch.stack(philox4x32((c0, zero, zero, zero), (seed, STREAM_PERMUTATION)), dim=-1)   # [n4, 4]
        _permutations[(seed, d)] = torch.sort(words.reshape(-1)[:d], stable=True).indices             # [D]
    return _permutations[(seed, d)]


def shift_vector(seed, step, frame, d, device="cpu"):
    """g of codebook (seed, step, frame): [D] float32, atom 0 of stream STREAM_SHIFT_VECTOR at (step, frame)."""
    return gaussian(seed, STREAM_SHIFT_VECTOR, step, frame, [0], d, device)[0]


def match_shifts(r, seed, step, frame, K, M):
    """Generator 2's matching: the M shifts k < K with the largest |<P^T roll(g, k), r>|, and their signs.

    <P^T roll(g, k), r> = sum_i g_i (P r)_{(i + k) mod D}, the circular cross-correlation of g and P r at lag k,
    is computed for all lags at once in float64 by real FFTs. Same tie rules and return value as match_atoms.
    """
    d = r.numel()
    if K > d:
        raise GvccError(f"K = {K} shifts need latent frames of at least K elements, these have D = {d}")
    perm = shift_permutation(seed, d).to(r.device)
    g = shift_vector(seed, step, frame, d, r.device).double()                      # [D]
    y = r.double()[perm]                                                            # [D]  P r
    p = torch.fft.irfft(torch.fft.rfft(g).conj() * torch.fft.rfft(y), n=d)[:K]     # [K]
    idx, best = top_m(torch.arange(K, device=r.device), p, M)
    return idx.tolist(), (best < 0).to(torch.int64).tolist()


def shift_innovation(seed, step, frame, indices, signs, frame_shape, device="cpu"):
    """Generator 2's z = P^T sum_i s_i roll(g, k_i), scaled to unit (unbiased) std: [C, h, w] float32.

    The sum runs in float32 from zero over the atoms in ascending index order (the order of the stream), each
    term added or subtracted once; then z[P[j]] = y[j]. The same as innovation() for atoms P^T roll(g, k), up to
    the order of the float32 sum.
    """
    d = frame_shape[0] * frame_shape[1] * frame_shape[2]
    g = shift_vector(seed, step, frame, d, device)                                 # [D]
    y = torch.zeros(d, dtype=torch.float32, device=device)                         # [D]
    for k, s in zip(indices, signs):
        shifted = torch.roll(g, k)                                                 # [D]  g[(j - k) mod D]
        y = y - shifted if s else y + shifted
    z = torch.empty_like(y)
    z[shift_permutation(seed, d).to(device)] = y                                   # [D]  P^T y
    return (z / z.std()).reshape(frame_shape)                                      # [C, h, w]


MATCHERS = {GENERATOR_IID: match_atoms, GENERATOR_SHIFT: match_shifts}             # encoder, by header id
INNOVATIONS = {GENERATOR_IID: innovation, GENERATOR_SHIFT: shift_innovation}       # both sides, by header id


def check_codebook(hdr):
    """The header's generator is one gvcc has, and K fits it (generator 2: K <= D, the shifts of one frame)."""
    if hdr.generator not in INNOVATIONS:
        raise GvccError(f"codebook generator {hdr.generator} is not supported (this gvcc has generators "
                        f"{', '.join(map(str, INNOVATIONS))})")
    lh, lw = latent_size(hdr.width, hdr.height)
    d = LATENT_CHANNELS * lh * lw
    if hdr.generator == GENERATOR_SHIFT and hdr.K > d:
        raise GvccError(f"--codebook shift: K = {hdr.K} exceeds the shifts of one latent frame at "
                        f"{hdr.width}x{hdr.height}, D = 16 (H/8) (W/8) = {d}")


# ==================================================================================================
# Models and weight files
# ==================================================================================================

@dataclass(frozen=True)
class ModelSpec:
    """One usable model: the Wan2.1 configs it runs and the files (in the weights folder) it reads."""
    mode: str           # 't2v' | 'i2v' | 'flf2v'
    dit: str            # wan_model.DIT_CONFIGS name
    dit_file: str
    vae: str            # vae.VAE_CONFIGS name
    vae_file: str
    t5: str             # wan_model.T5_CONFIGS name
    t5_file: str
    clip: str = None    # wan_model.CLIP_CONFIGS name (i2v, flf2v)
    clip_file: str = None


_REAL = dict(vae="wan2.1", vae_file="wan_2.1_vae.safetensors", t5="umt5-xxl", t5_file="umt5_xxl_fp16.safetensors")
_REAL_CLIP = dict(clip="vit-h-14", clip_file="clip_vision_h.safetensors")
_TINY = dict(vae="tiny", vae_file="tiny_vae.safetensors", t5="tiny", t5_file="tiny_umt5.safetensors")
_TINY_CLIP = dict(clip="tiny", clip_file="tiny_clip_vision.safetensors")

MODELS = {
    "t2v-1.3B": ModelSpec("t2v", "t2v-1.3B", "wan2.1_t2v_1.3B_fp32.safetensors", **_REAL),
    "t2v-14B": ModelSpec("t2v", "t2v-14B", "wan2.1_t2v_14B_fp16.safetensors", **_REAL),
    "i2v-14B-480P": ModelSpec("i2v", "i2v-14B-480P", "wan2.1_i2v_480p_14B_fp16.safetensors", **_REAL, **_REAL_CLIP),
    "i2v-14B-720P": ModelSpec("i2v", "i2v-14B-720P", "wan2.1_i2v_720p_14B_fp16.safetensors", **_REAL, **_REAL_CLIP),
    "flf2v-14B-720P": ModelSpec("flf2v", "flf2v-14B-720P", "wan2.1_flf2v_720p_14B_fp16.safetensors",
                                **_REAL, **_REAL_CLIP),
    # Tiny random-weight models with the real key layout: the whole codec runs in seconds on a CPU.
    "tiny-t2v": ModelSpec("t2v", "tiny-t2v", "tiny_t2v.safetensors", **_TINY),
    "tiny-i2v": ModelSpec("i2v", "tiny-i2v", "tiny_i2v.safetensors", **_TINY, **_TINY_CLIP),
    "tiny-flf2v": ModelSpec("flf2v", "tiny-flf2v", "tiny_flf2v.safetensors", **_TINY, **_TINY_CLIP),
}
DEFAULT_MODEL = {"t2v": "t2v-1.3B", "i2v": "i2v-14B-720P", "flf2v": "flf2v-14B-720P"}


def default_shift(mode, height):
    """The authors' time-grid shift: 3 for T2V; for I2V and FLF2V 3 at a working height <= 480, else 5."""
    return 3.0 if mode == "t2v" or height <= 480 else 5.0


class GvccError(Exception):
    """A user-facing error: bad parameters, a mismatched model, an unusable input (one-line message)."""


def model_paths(spec, weights_dir):
    """{component: path} of the files a model needs, each checked to exist (a path is a safetensors file or a
    shard index). weights_dir is an official-layout folder, the files named as in MODELS (weights_fetch.sh
    fetches them), or a diffusers pipeline folder such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers (wan_model, "Weight
    folders"), recognised by its model_index.json."""
    import wan_model
    names = {"dit": spec.dit_file, "vae": spec.vae_file, "t5": spec.t5_file}
    if spec.clip_file:
        names["clip"] = spec.clip_file
    pipeline = wan_model.pipeline_folder(weights_dir)
    out = {}
    for part, name in names.items():
        if pipeline is not None:
            path = wan_model.diffusers_file(pipeline, part)
            if path is None:
                sub, stem = wan_model.DIFFUSERS_FILES[part]
                raise GvccError(f"{os.path.join(pipeline, sub)}: missing {part} weights for model {spec.dit} "
                                f"({stem}.safetensors or {stem}.safetensors.index.json; is this the diffusers "
                                f"folder of {spec.dit}?)")
        else:
            path = os.path.join(weights_dir, name)
            if not os.path.exists(path):
                raise GvccError(f"{path}: missing {part} weights for model {spec.dit} (fetch them with "
                                f"weights_fetch.sh, or run `gvcc.py make-tiny` for the tiny models)")
        out[part] = path
    return out


# Tensors that one layout's files carry and the other's do not, and that no network reads: left out of the
# fingerprint, so that the same weights give the same fingerprint in either layout (transformers'
# CLIPVisionModel has no projection head; a UMT5 file may hold its embedding a second time, tied).
FINGERPRINT_SKIP = {"clip": ("visual_projection.weight", "vision_model.embeddings.position_ids"),
                    "t5": ("encoder.embed_tokens.weight",)}


def _note_hashing(path, size):
    if size >= 1 << 30:
        print(f"gvcc: fingerprinting {path} ({size / 1e9:.1f} GB, once: the digests are cached)", file=sys.stderr)


def model_fingerprint(paths):
    """The header's model_fingerprint of the weight files `paths` ({component: path}): a SHA-256 over every
    tensor of every file under its official name, in a fixed order (the module docstring, "Weights and the model
    fingerprint"), so it identifies the weights, not their layout. The files' digests are cached
    (wan_model.file_digests)."""
    import hashlib

    import vae as vae_mod
    import wan_model
    rename = {"dit": wan_model.dit_official_name, "vae": vae_mod.official_name, "t5": None,
              "clip": wan_model.clip_official_name}
    h = hashlib.sha256()
    for part in sorted(paths):
        tensors = wan_model.tensor_digests(paths[part], rename[part], on_hash=_note_hashing)
        if part == "t5" and "spiece_model" not in tensors:          # the tokenizer in its own file
            tokenizer = wan_model.tokenizer_file(paths[part])
            if tokenizer is None:
                raise GvccError(f"{paths[part]}: no 'spiece_model' tensor in the file and no tokenizer/spiece.model "
                                f"beside it")
            with open(tokenizer, "rb") as fh:
                blob = fh.read()
            tensors["spiece_model"] = ("U8", (len(blob),), hashlib.sha256(blob).hexdigest())
        for name in sorted(tensors):
            if name not in FINGERPRINT_SKIP.get(part, ()):
                dtype, shape, digest = tensors[name]
                h.update(f"{part} {name} {dtype} {','.join(map(str, shape))} {digest}\n".encode())
    return int.from_bytes(h.digest()[:4], "big")


@dataclass
class Codec:
    """The loaded networks of one model on one device (plain data: weight dicts and their configs)."""
    spec: ModelSpec
    device: str
    dit_cfg: object
    dit: dict
    vae_cfg: object
    vae: dict
    context: torch.Tensor      # [L, text_dim] encoded prompt
    clip_cfg: object = None
    clip: dict = None


def load_codec(spec, weights_dir, prompt, device, precision, text_len=512):
    """Load everything a GOP needs. The prompt's context comes from the cache (text_context).

    text_len (the header's) is the padded length of the text context: the prompt's tokens are cut to
    text_len - 1 plus EOS, and the DiT zero-pads the features to text_len rows before its text MLP.
    """
    import dataclasses

    import vae as vae_mod
    import wan_model
    paths = model_paths(spec, weights_dir)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    context = text_context(spec, paths, prompt, device, precision, weights_dir, text_len)
    dit_cfg = dataclasses.replace(wan_model.DIT_CONFIGS[spec.dit], text_len=text_len)
    dit = wan_model.load_dit(paths["dit"], dit_cfg, dtype=dtype, device=device)
    vae_cfg = vae_mod.VAE_CONFIGS[spec.vae]
    vae = {k: v.to(device) for k, v in vae_mod.load_vae(paths["vae"], vae_cfg).items()}
    codec = Codec(spec, device, dit_cfg, dit, vae_cfg, vae, context)
    if spec.clip:
        codec.clip_cfg = wan_model.CLIP_CONFIGS[spec.clip]
        codec.clip = {k: v.to(device) for k, v in wan_model.load_clip(paths["clip"], codec.clip_cfg,
                                                                      dtype=dtype).items()}
    return codec


# The encoded prompt is cached next to the weights: UMT5-XXL is 11 GB in fp16 (23 GB in float32 on a CPU) and
# most streams carry the same (often empty) prompt. An entry is a safetensors file holding `context` [Lt, D] and,
# in its metadata, the full key and the sha256 of the tensor's bytes; a file whose key or checksum does not match
# (corrupt, truncated, a hash collision, another encoder) is recomputed and replaced, never used.
CONTEXT_CACHE = ".gvcc-context"         # folder inside the weights folder


def context_cache_key(spec, paths, prompt, precision, device, text_len=512):
    """What the encoded prompt depends on: the text encoder (fingerprint and config), the padded length text_len
    (it cuts the tokens), precision and device type (float results differ between them), and the prompt."""
    fingerprint = model_fingerprint({"t5": paths["t5"]})
    return f"gvcc-context v1|t5 {fingerprint:08x} {spec.t5}|text_len {text_len}|{precision}|" \
           f"{torch.device(device).type}|prompt {prompt}"


def text_context(spec, paths, prompt, device, precision, weights_dir, text_len=512):
    """The prompt encoded by UMT5, [Lt, D] float32 on `device`: from the cache when it holds a valid entry, else
    computed (loading the text encoder, then dropping it) and stored in the cache."""
    import dataclasses
    import hashlib

    import wan_model
    key = context_cache_key(spec, paths, prompt, precision, device, text_len)
    path = os.path.join(weights_dir, CONTEXT_CACHE, hashlib.sha256(key.encode()).hexdigest()[:32] + ".safetensors")
    cached = read_cached_context(path, key)
    if cached is not None:
        return cached.to(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    t5_cfg = dataclasses.replace(wan_model.T5_CONFIGS[spec.t5], text_len=text_len)
    t5, tokenizer = wan_model.load_t5(paths["t5"], t5_cfg, dtype=dtype)
    t5 = {k: v.to(device) for k, v in t5.items()}
    context = wan_model.encode_text(t5, t5_cfg, tokenizer, prompt).to(device)         # [Lt, D]
    del t5
    write_cached_context(path, key, context)
    return context


def _tensor_sha256(t):
    import hashlib
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def read_cached_context(path, key):
    """The cached context [Lt, D] for `key`, or None when there is no entry or it fails any check."""
    from safetensors import safe_open
    if not os.path.exists(path):
        return None
    try:
        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("key") != key or list(fh.keys()) != ["context"]:
                return None
            context = fh.get_tensor("context")
    except Exception:       # any damage safetensors reports (truncated, bad header): recompute
        return None
    if context.dim() != 2 or context.dtype != torch.float32 or _tensor_sha256(context) != meta.get("sha256"):
        return None
    return context


def write_cached_context(path, key, context):
    """Store an entry atomically; a weights folder we cannot write to just means no cache."""
    from safetensors.torch import save_file
    context = context.detach().to("cpu", torch.float32).contiguous()                   # [Lt, D]
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file({"context": context}, tmp, metadata={"key": key, "sha256": _tensor_sha256(context)})
        os.replace(tmp, path)
    except OSError as exc:
        print(f"gvcc: note: cannot cache the text context in {os.path.dirname(path)} ({exc.strerror})",
              file=sys.stderr)
        if os.path.exists(tmp):
            os.remove(tmp)


def make_velocity(codec, y=None, clip_fea=None):
    """u(x, t) of the DiT for this GOP's conditioning; the model sees the timestep 1000 t (float, untruncated)."""
    import wan_model

    def velocity(x, t):
        return wan_model.dit_forward(codec.dit, codec.dit_cfg, x, 1000.0 * t, codec.context, y, clip_fea)
    return velocity


# ==================================================================================================
# Pixels <-> model space
# ==================================================================================================

def to_model(frames, device="cpu"):
    """uint8 [N, H, W, 3] RGB -> float32 [3, N, H, W] in [-1, 1]."""
    x = torch.as_tensor(frames).to(device)
    return x.permute(3, 0, 1, 2).to(torch.float32) / 127.5 - 1.0


def to_pixels(video):
    """float [3, N, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (numpy), rounding to nearest."""
    x = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def pad_frames(frames, n_padded, height, width):
    """Replicate-pad uint8 [N, H0, W0, 3] to [n_padded, height, width, 3] (last frame, bottom row, right column)."""
    n, h0, w0, _ = frames.shape
    return np.pad(frames, ((0, n_padded - n), (0, height - h0), (0, width - w0), (0, 0)), mode="edge")


LATENT_CHANNELS = 16        # C of the Wan2.1 VAE latent (the tiny VAE keeps it)


def pixel_size(width, height):
    """(W, H): the working size rounded up to multiples of 8, the VAE's stride (1080 rows stay 1080)."""
    return -(-width // 8) * 8, -(-height // 8) * 8


def latent_size(width, height):
    """(h, w) of the DiT's latent: the VAE latent of the pixel_size frame, rounded up to even for the 2x2
    patches (1080p: 135 -> 136 rows). Equal to (2 ceil(height / 16), 2 ceil(width / 16))."""
    pw, ph = pixel_size(width, height)
    return ph // 8 + (ph // 8) % 2, pw // 8 + (pw // 8) % 2


def pad_latent(x, h, w):
    """Replicate-pad a latent [..., h0, w0] to [..., h, w] (bottom rows, right columns), as the authors' wrapper
    pads the VAE latent and y for the DiT; the VAE later decodes the first h0 x w0 only."""
    if x.shape[-2:] == (h, w):
        return x
    lead = x.shape[:-2]
    x = F.pad(x.reshape(1, -1, *x.shape[-2:]), (0, w - x.shape[-1], 0, h - x.shape[-2]), mode="replicate")
    return x.reshape(*lead, h, w)


# ==================================================================================================
# Modes: conditioning, tail residual, and coding a whole clip GOP by GOP
# ==================================================================================================

def conditioning(codec, n_padded, first, last=None, crop=None):
    """Wan2.1 I2V / FLF2V conditioning of one GOP: y [20, F, h, w] and CLIP features [n_img, L_img, D_img].

    first / last: uint8 [H, W, 3] frames at pixel_size (multiples of 8). The VAE sees [first, zero frames] (I2V)
    or [first, zero frames, last] (FLF2V); zero is mid-grey in [-1, 1]. The 4-channel mask is 1 on the given
    pixel frames, with frame 0 repeated four times so that it fills latent frame 0. y is then replicate-padded
    to the DiT's even latent size, mask and all, as the authors pad it. CLIP sees the frames cropped to the
    working size `crop` = (width, height).
    """
    import vae as vae_mod
    import wan_model
    h_pix, w_pix = first.shape[:2]
    given = [first] if last is None else [first, last]
    video = torch.zeros(3, n_padded, h_pix, w_pix, device=codec.device)          # [3, T_pix, H, W]
    video[:, 0] = to_model(first[None], codec.device)[:, 0]
    mask = torch.zeros(n_padded, device=codec.device)                             # [T_pix]
    mask[0] = 1.0
    if last is not None:
        video[:, -1] = to_model(last[None], codec.device)[:, 0]
        mask[-1] = 1.0
    latent = vae_mod.encode(codec.vae, codec.vae_cfg, video)                      # [16, F, h0, w0]
    n_lat, h, w = latent.shape[1:]
    mask = torch.cat([mask[:1].repeat(3), mask]).reshape(n_lat, 4).T             # [4, F]
    mask = mask[:, :, None, None].expand(4, n_lat, h, w)                          # [4, F, h0, w0]
    y = torch.cat([mask, latent], dim=0)                                          # [20, F, h0, w0]
    y = pad_latent(y, h + h % 2, w + w % 2)                                       # [20, F, h, w]
    width, height = crop
    images = to_model(np.stack([f[:height, :width] for f in given]), codec.device)      # [3, n_img, H0, W0]
    clip_fea = wan_model.clip_encode(codec.clip, codec.clip_cfg, images.permute(1, 0, 2, 3))   # [n_img, L, D]
    return y, clip_fea


def quantise_residual(r, bits):
    """Tail residual [C, h, w] -> blob, the authors' quantiser (encoder only; bitstream.py section 6).

    Per channel m = max(max |r_c|, 1e-6) and q = round((r / m + 1) (2^bits - 1) / 2), in float32 and in this
    order, as exp_i2v/run_uvg_chained_gop.py computes it; zlib level 9.
    """
    import bitstream
    levels = (1 << bits) - 1
    scale = r.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-6)                          # [C, 1, 1]
    q = ((r / scale + 1.0) * levels / 2.0).round().clamp(0, levels)                          # [C, h, w]
    q = q.to(torch.int32).cpu().numpy().astype(np.uint8 if bits <= 8 else "<u2")              # [C, h, w]
    return bitstream.pack_residual(scale.flatten().tolist(), q.tobytes(), bits)


def dequantise_residual(blob, frame_shape, bits, device):
    """Blob -> residual [C, h, w] = ((q * 2) / (2^bits - 1) - 1) * m_c, float32; both sides add it."""
    import bitstream
    c, h, w = frame_shape
    scales, raw = bitstream.unpack_residual(blob, c, c * h * w, bits)
    q = np.frombuffer(raw, np.uint8 if bits <= 8 else "<u2").astype(np.float32)
    q = torch.from_numpy(q).reshape(c, h, w).to(device)                                      # [C, h, w]
    m = torch.tensor(scales, dtype=torch.float32, device=device)[:, None, None]              # [C, 1, 1]
    return (q * 2.0 / ((1 << bits) - 1) - 1.0) * m


def decode_still(g, i, data, hdr):
    """Still i of GOP g -> uint8 [height, width, 3]; its declared size is checked before its pixels are decoded."""
    import media
    try:
        return media.decode_still(data, (hdr.width, hdr.height), lossless=hdr.still_lossless)
    except media.MediaError as exc:
        raise GvccError(f"GOP {g}, still {i}: {exc} (the stream's working size is {hdr.width}x{hdr.height})") from None


def still_frames(hdr, g, info):
    """Source frames whose stills GOP g introduces: I2V its first frame in GOP 0; FLF2V its first frame in GOP 0
    and its last frame in every GOP (the next GOP shares it)."""
    first = [info.first_frame] if g == 0 else []
    last = info.first_frame + info.n_frames - 1
    return {"t2v": [], "i2v": first, "flf2v": first + [last]}[hdr.mode]


def settings_of(hdr):
    return SamplerSettings(steps=hdr.steps, tail_steps=hdr.tail_steps, g_scale=hdr.g_scale_q / 1000.0,
                           shift=hdr.shift_q / 1000.0, K=hdr.K, seed=hdr.seed, generator=hdr.generator)


def code_clip(codec, hdr, frames=None, gops=None, on_step=None):
    """Encode (`frames` given: uint8 [N, height, width, 3]) or decode (`gops` given) a whole clip in memory.

    `gops` is a bitstream.Stream (symbols are unpacked one at a time, as the sampler asks for them) or a list
    of bitstream.Gop. Returns (gops, reconstruction uint8 [N, height, width, 3]): the coded GOPs when encoding.
    The CLI streams with code_gops instead.
    """
    import bitstream
    indices = range(bitstream.num_gops(hdr))
    if frames is not None:
        def source(g):
            info = bitstream.gop_info(hdr, g)
            return frames[info.first_frame:info.first_frame + info.n_frames]
        steps = code_gops(codec, hdr, indices, source=source, on_step=on_step)
    else:
        held = gops if isinstance(gops, bitstream.Stream) else dict(zip(indices, gops))
        steps = code_gops(codec, hdr, indices, gops=held, on_step=on_step)
    coded, out = [], []
    for _, gop, video in steps:
        coded.append(gop)
        out.append(video)
    return (coded if frames is not None else gops), np.concatenate(out)


def code_gops(codec, hdr, indices, source=None, gops=None, lead=None, on_step=None, on_gop=None):
    """Encode (`source` given) or decode (`gops` given) the GOPs `indices` (consecutive) of a clip, one at a time.

    source(g) -> uint8 [n_frames, height, width, 3]: the source frames of GOP g (bitstream.gop_info).
    gops: {g: bitstream.Gop} to decode. lead: flf2v only, the still bytes of the frame the first GOP starts on
    when that GOP is not GOP 0 (the encoder makes it from the source when not given). i2v must start at GOP 0.
    on_gop(g) is called as GOP g starts, on_step() after each sampler step.
    Yields (g, bitstream.Gop, uint8 [n_out, height, width, 3]): the GOP as coded and its output frames
    (bitstream.output_frames), so that a caller writes each GOP before the next one is computed and memory holds
    about one GOP of frames. Both directions walk the GOPs through this one function, so the decoder repeats the
    encoder's arithmetic exactly: same conditioning from the same decoded frames, same sampler, same
    innovations, same residual.
    """
    import bitstream
    import media
    import vae as vae_mod
    encoding = source is not None
    width, height = hdr.width, hdr.height
    pw, ph = pixel_size(width, height)          # what the VAE sees
    lh, lw = latent_size(width, height)         # what the DiT sees
    settings = settings_of(hdr)
    reference = None        # I2V: the previous GOP's decoded last frame; FLF2V: the shared boundary frame
    if indices and indices[0] > 0:
        if hdr.mode == "i2v":
            raise GvccError(f"i2v GOP {indices[0]} is conditioned on the decoded last frame of GOP "
                            f"{indices[0] - 1}, so i2v decodes and encodes from GOP 0 on")
        if hdr.mode == "flf2v":
            if lead is None and encoding:
                lead = media.encode_still(source(indices[0])[0], hdr.still_quality, lossless=hdr.still_lossless)
            reference = pad_frames(decode_still(indices[0] - 1, "lead", lead, hdr)[None], 1, ph, pw)[0]  # [H, W, 3]
    for g in indices:
        if on_gop is not None:
            on_gop(g)
        info = bitstream.gop_info(hdr, g)
        shape = (LATENT_CHANNELS, info.latent_frames, lh, lw)
        if encoding:
            frames = source(g)                                                                 # [n, height, width, 3]
            src = pad_frames(frames, info.n_padded, ph, pw)                                    # [T_pix, H, W, 3]
            x0 = vae_mod.encode(codec.vae, codec.vae_cfg, to_model(src, codec.device))        # [C, F, h0, w0]
            x0 = pad_latent(x0, lh, lw)                                                        # [C, F, h, w]
            stills = [media.encode_still(frames[i - info.first_frame], hdr.still_quality, lossless=hdr.still_lossless)
                      for i in still_frames(hdr, g, info)]
            del frames, src
        else:
            gop = gops[g]               # a bitstream.Gop or GopRecord: symbols are read as they are needed
            stills = [bytes(s) for s in gop.stills]
        decoded = [pad_frames(decode_still(g, i, b, hdr)[None], 1, ph, pw)[0]              # [H, W, 3] each
                   for i, b in enumerate(stills)]

        y = clip_fea = None
        if hdr.mode == "i2v":
            reference = decoded[0] if g == 0 else reference
            y, clip_fea = conditioning(codec, info.n_padded, reference, crop=(width, height))
        elif hdr.mode == "flf2v":
            first = decoded[0] if g == 0 else reference
            reference = decoded[-1]
            y, clip_fea = conditioning(codec, info.n_padded, first, reference, crop=(width, height))
        velocity = make_velocity(codec, y, clip_fea)

        symbols = [[None] * info.latent_frames for _ in range(settings.sde_steps)] if encoding else None

        def choose(j, f, x0_hat_f):
            if not encoding:
                return gop.symbol(j, f)
            m = bitstream.atoms_for_frame(hdr, f, info.latent_frames)
            match = MATCHERS[hdr.generator]
            symbols[j][f] = match((x0[:, f] - x0_hat_f).flatten(), hdr.seed, j, f, hdr.K, m)
            return symbols[j][f]

        latent = run_gop(velocity, settings, shape, choose, codec.device, on_step)          # [C, F, h, w]
        residual = b""
        if hdr.residual:
            bits = hdr.residual_bits
            residual = quantise_residual(x0[:, -1] - latent[:, -1], bits) if encoding else bytes(gop.residual)
            latent[:, -1] += dequantise_residual(residual, shape_of_frame(shape), bits, codec.device)
        latent = latent[:, :, :ph // 8, :pw // 8]                       # [C, F, h0, w0]: the DiT's padding off
        video = to_pixels(vae_mod.decode(codec.vae, codec.vae_cfg, latent))[:info.n_frames]  # [n, H, W, 3]
        if hdr.mode == "i2v":
            reference = video[-1]
        if g > 0 and hdr.mode != "t2v":
            video = video[1:]       # the shared boundary frame is the previous GOP's output
        coded = bitstream.Gop(symbols=symbols, stills=stills, residual=residual) if encoding else gop
        yield g, coded, video[:, :height, :width]


# ==================================================================================================
# Command line
# ==================================================================================================

class Progress:
    """What a long job is doing, on stderr: the GOP, its phase (reading the source or conditioning, sampling step k
    of T, writing), the time spent, and an ETA for the GOP and for the whole job.

    On a terminal one status line is redrawn in place; otherwise (a log file, a batch job) a plain line is printed
    when a GOP starts, changes phase and ends, and at most every `every` seconds in between. The clip's ETA counts
    sampler steps and spreads the reading and writing time over them, so it settles after the first GOP; the
    GOP's ETA is the current GOP's remaining steps at its own step rate.
    """

    def __init__(self, n_gops, steps, label, quiet=False, stream=None, every=None):
        self.n_gops, self.steps, self.label, self.quiet = n_gops, steps, label, quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every if every is not None else 1.0 if self.tty else 10.0     # seconds between lines
        self.start = self.last = time.time()
        self.gops_done, self.step_in_gop, self.gop, self.phase = 0, 0, None, "starting"
        self.gop_start = self.step_start = self.start

    def begin_gop(self, g):
        self.gop, self.step_in_gop, self.gop_start = g, 0, time.time()
        self.set_phase("reading" if self.label == "encode" else "conditioning")

    def set_phase(self, phase):
        self.phase = phase
        if phase == "sampling":
            self.step_start = time.time()
        self._show(force=phase != "sampling")

    def __call__(self):
        """One sampler step done (run_gop's on_step)."""
        if self.phase != "sampling":
            self.set_phase("sampling")
        self.step_in_gop += 1
        self._show()

    def end_gop(self):
        self.gops_done += 1
        self.phase = "done"
        self._show(force=True)

    def finish(self):
        if self.tty and not self.quiet:
            print(file=self.stream, flush=True)

    def _show(self, force=False):
        now = time.time()
        if self.quiet or (not force and now - self.last < self.every):
            return
        self.last = now
        elapsed = now - self.start
        done = self.gops_done * self.steps + (self.step_in_gop if self.phase != "done" else 0)
        total = self.n_gops * self.steps
        clip_eta = elapsed / done * (total - done) if done else None
        gop_eta = None
        if self.phase == "sampling" and self.step_in_gop:
            gop_eta = (now - self.step_start) / self.step_in_gop * (self.steps - self.step_in_gop)
        where = f"GOP {self.gops_done + (self.phase != 'done')}/{self.n_gops}"
        if self.gop is not None:
            where += f" (#{self.gop})"
        what = f"step {self.step_in_gop}/{self.steps}" if self.phase == "sampling" else self.phase
        line = (f"gvcc: {self.label} {where} {what}, {_duration(elapsed)}"
                + (f", GOP ETA {_duration(gop_eta)}" if gop_eta is not None else "")
                + (f", ETA {_duration(clip_eta)}" if clip_eta is not None else ""))
        if self.tty:
            print("\r" + line + "\x1b[K", end="", file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name):
    """The torch device a user named, checked to be usable here (GvccError otherwise); the default if None."""
    if name is None:
        return default_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise GvccError(f"--device {name}: not a torch device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GvccError(f"--device {name}: this torch build has no CUDA or sees no GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GvccError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        try:
            torch.zeros(1, device=dev)
        except Exception as exc:  # each backend fails in its own way (RuntimeError, AssertionError, ...)
            raise GvccError(f"--device {name}: not usable here ({str(exc).splitlines()[0]})") from None
    return name


PRECISIONS = ("fp32", "bf16")          # header field `precision`: index into this tuple


def default_precision(device):
    """float32 on the CPU (the reference path); bf16 with fp32 islands on GPUs, as upstream runs it."""
    return "bf16" if str(device).startswith("cuda") else "fp32"


def stream_bytes(hdr, still_sizes, residual_sizes):
    """Size of the stream a header makes, given the byte sizes of its stills (in order) and of its residuals.

    bitstream.py's layout: the header, then per GOP the framing (gop_size, gop_crc), a 4-byte length before every
    still and residual, and the codebook symbols padded to a whole byte. Only stills and residuals depend on the
    pictures; everything else follows from the header.
    """
    import bitstream
    total, stills = len(bitstream.write_header(hdr)), iter(still_sizes)
    for g, info in enumerate(bitstream.gop_layout(hdr)):
        total += bitstream.GOP_FRAMING_BYTES + sum(4 + next(stills) for _ in range(info.n_stills))
        if hdr.residual:
            total += 4 + residual_sizes[g]
        total += -(-sum(bitstream.codebook_bits(hdr, info.latent_frames)) // 8)
    return total


def pick_atoms(hdr, target_bits, still_sizes):
    """The largest M whose whole file stays within target_bits (M is the paper's rate knob).

    The file's size is exact before coding except the I2V tail residual, which is known only after coding and
    is counted here by its length field alone. Per latent frame M costs ceil(log2 C(K, M)) + M bits, which grows
    with M up to about 2K/3 and shrinks after it: the largest M that fits is the cap when the cap fits, else it
    is found by bisection below the peak. Returns (header with M and M_tail set, predicted file bits, note):
    note says why the target cannot be reached when M stopped at its cap. GvccError when even M = 1 is too much.
    """
    import dataclasses

    import bitstream
    residuals = [0] * len(bitstream.gop_layout(hdr))
    pixels = hdr.src_width * hdr.src_height * hdr.frames

    def with_m(m):
        return dataclasses.replace(hdr, M=m, M_tail=min(max(m, hdr.M_tail), hdr.K) if hdr.tail_frames else m)

    def bits(m):
        return 8 * stream_bytes(with_m(m), still_sizes, residuals)

    if bits(1) > target_bits:
        header = 8 * len(bitstream.write_header(with_m(1)))
        stills = 8 * sum(still_sizes)
        why = (f"the header alone is {header // 8} bytes = {header / pixels:.5f} bpp" if header > target_bits else
               f"the header, framing{', stills' if stills else ''} and M = 1 make {bits(1) // 8} bytes = "
               f"{bits(1) / pixels:.5f} bpp{f' ({stills // 8} bytes of stills)' if stills else ''}; fewer --steps, "
               f"a smaller -K or longer GOPs cost less")
        raise GvccError(f"the rate target ({target_bits / pixels:.5f} bpp) cannot be met: {why}")
    cap = min(hdr.K, bitstream.MAX_M)
    if bits(cap) <= target_bits:
        lo = cap
    else:
        lo, hi = 1, min(cap, (2 * hdr.K - 1) // 3)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if bits(mid) <= target_bits else (lo, mid - 1)
    note = None
    if lo == cap and bits(cap) < target_bits:
        limit = f"K = {hdr.K}" if cap == hdr.K else f"the format's limit {bitstream.MAX_M}"
        note = (f"M is capped at {limit}, which makes {bits(cap) / pixels:.5f} bpp; raise -K or --steps for more "
                f"bits")
    return with_m(lo), bits(lo), note


def finite_float(text):
    """argparse type: a finite float (nan and inf are refused with one clear line)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def positive_float(text):
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not above 0")
    return value


def say(args, text):
    """A line of what gvcc is doing or assumed, on stderr, unless --quiet."""
    if not getattr(args, "quiet", False):
        print(f"gvcc: {text}", file=sys.stderr, flush=True)


def tell_reading(args, video):
    # what the reader assumed (notes, unless --quiet) and what looked wrong (warnings, always)
    for note in video.notes:
        say(args, f"note: {note}")
    for warning in video.warnings:
        print(f"gvcc: warning: {warning}", file=sys.stderr, flush=True)


def parse_span(text, what):
    """'A:B' -> (A, B) with A < B (either may be empty: None); GvccError otherwise."""
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise GvccError(f"{what} {text}: expected START:STOP (Python-style, STOP excluded), e.g. 0:4") from None
    if (a is not None and a < 0) or (b is not None and b < 0) or (a is not None and b is not None and a >= b):
        raise GvccError(f"{what} {text}: need 0 <= START < STOP")
    return a, b


def gop_span(hdr, text):
    """--gops A:B of a clip with this header -> range(A, B) (B defaults to the last GOP + 1)."""
    import bitstream
    a, b = parse_span(text, "--gops")
    n = bitstream.num_gops(hdr)
    a, b = a or 0, n if b is None else b
    if b > n:
        raise GvccError(f"--gops {text}: the clip has {n} GOPs (0:{n})")
    return range(a, b)


def clip_crc(video, hdr):
    """The clip_crc of bitstream.py section 11: CRC-32 of the source's key frames (first frame of each GOP),
    read from video (a media.VideoSource) at the source size."""
    import zlib

    import bitstream
    crc = 0
    for g in range(bitstream.num_gops(hdr)):
        i = bitstream.gop_info(hdr, g).first_frame
        crc = zlib.crc32(np.ascontiguousarray(video.read(i, i + 1)[0]).tobytes(), crc)       # [H, W, 3]
    return crc


def cmd_encode(args):
    import media
    device = check_device(args.device)
    media.check_target(args.output, overwrite=args.overwrite, inputs=[args.input])
    if args.recon:
        if os.path.abspath(args.recon) == os.path.abspath(args.output):
            raise GvccError(f"--recon {args.recon} is the output stream's name too")
        media.check_target(args.recon, overwrite=args.overwrite, inputs=[args.input])
    spec_name = args.model or DEFAULT_MODEL[args.mode or "t2v"]
    if spec_name not in MODELS:
        raise GvccError(f"unknown model '{spec_name}' (known: {', '.join(MODELS)})")
    spec = MODELS[spec_name]
    mode = args.mode or spec.mode
    if mode != spec.mode:
        raise GvccError(f"{spec.mode} model {spec_name} cannot code --mode {mode}; use one of "
                        f"{', '.join(n for n, s in MODELS.items() if s.mode == mode)}")
    # the input is read GOP by GOP: opening it counts its frames, and memory holds about one GOP of them
    with media.VideoSource(args.input, size=media.parse_size(args.yuv_size) if args.yuv_size else None,
                           fps=args.fps, limited_range=args.limited_range, frames=args.frames) as video:
        encode_video(args, video, spec_name, spec, mode, device)


def encode_video(args, video, spec_name, spec, mode, device):
    """`encode` of an opened media.VideoSource: the header, the rate target, then the GOPs as they are read."""
    import dataclasses

    import bitstream
    import media
    tell_reading(args, video)
    n, src_h, src_w = video.n, video.height, video.width
    width, height = media.parse_size(args.size) if args.size else (src_w, src_h)

    def working(start, stop):
        """Source frames start..stop-1 at the working size: uint8 [n, height, width, 3]."""
        if (width, height) == (src_w, src_h):
            return video.read(start, stop)
        out = np.empty((stop - start, height, width, 3), np.uint8)                     # [n, height, width, 3]
        for i in range(start, stop):        # one source-size frame at a time
            out[i - start] = media.resize(video.read(i, i + 1), width, height)[0]
        return out
    if mode != "t2v" and n < 2:
        raise GvccError(f"{mode} needs a clip of at least 2 frames, {args.input} has {n}")
    if args.gop < 5 or (args.gop - 1) % 4:
        raise GvccError(f"--gop {args.gop}: a GOP must have 4k+1 frames, at least 5 (33, 17, 9, 5)")
    if not 0 <= args.tail_steps <= args.steps or args.steps < 1:
        raise GvccError(f"--steps {args.steps} --tail-steps {args.tail_steps}: need 0 <= tail <= steps, steps >= 1")
    rate_target = args.bpp is not None or args.kbps is not None
    default_m = 64 if width * height <= 1280 * 720 else 80
    m = args.M if args.M is not None else 1 if rate_target else default_m      # a rate target picks M below
    if not 1 <= m <= args.K:
        raise GvccError(f"-M {m} must be between 1 and K = {args.K}")
    tail_frames = 2 if mode == "i2v" else 0
    if args.m_tail is not None and not tail_frames:
        raise GvccError("--m-tail applies to i2v only (the atoms of its last 2 latent frames)")
    m_tail = args.m_tail if args.m_tail is not None else (min(max(128, m), max(m, args.K // 2)) if tail_frames else m)
    if not m <= m_tail <= args.K:
        raise GvccError(f"--m-tail {m_tail} must be between M = {m} and K = {args.K}")
    if args.residual_bits is not None and mode != "i2v":
        raise GvccError("--residual-bits applies to i2v only (the tail latent residual of each GOP)")
    residual_bits = args.residual_bits if args.residual_bits is not None else 8
    lossless = args.still_quality == "lossless"
    if lossless and mode == "t2v":
        raise GvccError("--still-quality lossless applies to i2v and flf2v (t2v codes no still frames)")
    still_quality = 0 if lossless or mode == "t2v" else int(args.still_quality)
    fps = video.fps
    precision = args.precision or default_precision(device)
    hdr = bitstream.Header(
        mode=mode, model=spec_name, model_fingerprint=0, generator=CODEBOOKS[args.codebook],
        src_width=src_w, src_height=src_h, width=width, height=height, frames=n,
        fps_num=fps.numerator, fps_den=fps.denominator, gop_frames=args.gop, steps=args.steps,
        tail_steps=args.tail_steps, g_scale_q=round(args.g_scale * 1000),
        shift_q=round((args.shift if args.shift is not None else default_shift(mode, height)) * 1000), K=args.K,
        M=m, M_tail=m_tail, tail_frames=tail_frames, seed=args.seed, still_quality=still_quality,
        still_lossless=int(lossless), residual=int(mode == "i2v" and residual_bits > 0),
        residual_bits=residual_bits or 8, prompt=args.prompt, precision=PRECISIONS.index(precision),
        text_len=args.text_len)
    bitstream.check_header(hdr)             # every field within the format's limits before any work
    check_codebook(hdr)
    pixels = src_w * src_h * n
    target_bits = None
    if rate_target:
        # the target is the whole file's rate: bits per source pixel, or kbit/s at the source frame rate
        target_bits = args.bpp * pixels if args.bpp is not None else args.kbps * 1000 * n / fps
        target = f"--bpp {args.bpp:g}" if args.bpp is not None else f"--kbps {args.kbps:g}"
        stills = [len(media.encode_still(working(i, i + 1)[0], hdr.still_quality, lossless=hdr.still_lossless))
                  for g, info in enumerate(bitstream.gop_layout(hdr)) for i in still_frames(hdr, g, info)]
        hdr, predicted, note = pick_atoms(hdr, target_bits, stills)
        print(f"gvcc: rate target {target} -> M = {hdr.M}{f', M_tail = {hdr.M_tail}' if hdr.tail_frames else ''}: "
              f"file {predicted / pixels:.5f} bpp{' before the tail residual' if hdr.residual else ''}",
              file=sys.stderr)
        if note:
            print(f"gvcc: warning: {target} cannot be met: {note}", file=sys.stderr)
    indices = range(bitstream.num_gops(hdr))
    if args.gops:
        indices = gop_span(hdr, args.gops)
        if mode == "i2v" and indices.start > 0:
            raise GvccError(f"--gops {args.gops}: i2v GOP {indices.start} is conditioned on the decoded last frame "
                            f"of GOP {indices.start - 1}, so an i2v part must start at GOP 0 (shard t2v or flf2v)")
        hdr = dataclasses.replace(hdr, first_gop=indices.start, gop_count=len(indices))
    if args.recon:
        media.check_output(args.recon, width, height)
    paths = model_paths(spec, args.weights)
    hdr = dataclasses.replace(hdr, model_fingerprint=model_fingerprint(paths), clip_crc=clip_crc(video, hdr))
    codec = load_codec(spec, args.weights, args.prompt, device, precision, hdr.text_len)
    progress = Progress(len(indices), hdr.steps, "encode", args.quiet)

    def source(g):
        info = bitstream.gop_info(hdr, g)
        return working(info.first_frame, info.first_frame + info.n_frames)            # [n, height, width, 3]
    start = time.time()
    size = residual = 0
    recon = media.VideoWriter(args.recon, width, height, fps) if args.recon else None
    with AtomicFile(args.output) as out:
        out.write(bitstream.write_header(hdr))
        if bitstream.has_lead(hdr):
            first = bitstream.gop_info(hdr, indices.start).first_frame
            lead = media.encode_still(working(first, first + 1)[0], hdr.still_quality, lossless=hdr.still_lossless)
            out.write(bitstream.write_lead(lead))
        else:
            lead = None
        try:
            for g, gop, decoded in code_gops(codec, hdr, indices, source=source, lead=lead, on_step=progress,
                                             on_gop=progress.begin_gop):
                progress.set_phase("writing")
                out.write(bitstream.write_gop(hdr, g, gop))
                residual += len(gop.residual)
                if recon:
                    recon.write(decoded)
                progress.end_gop()
            if recon:
                recon.close()
        except BaseException:
            if recon:
                recon.abort()
            raise
        size = out.size
    progress.finish()
    frames_out = sum(len(bitstream.output_frames(hdr, g)) for g in indices)
    bits = 8 * size
    print(f"gvcc: {args.output}: {frames_out} frames {src_w}x{src_h}"
          f"{f' (coded at {width}x{height})' if (width, height) != (src_w, src_h) else ''} "
          f"at {float(fps):g} fps, {size} bytes, {len(indices)} GOPs"
          f"{f' ({indices.start}:{indices.stop} of {bitstream.num_gops(hdr)})' if args.gops else ''}, "
          f"{bits / (src_w * src_h * frames_out):.5f} bpp, "
          f"{bits * fps.numerator / (frames_out * fps.denominator) / 1000:.2f} kbps, {time.time() - start:.1f} s",
          file=sys.stderr)
    if video.warnings:
        print(f"gvcc: warning: coded the {n} frames that could be read from {args.input}", file=sys.stderr)
    if target_bits is not None and bits > target_bits:
        print(f"gvcc: warning: the file is {bits / pixels:.5f} bpp, above the target {target_bits / pixels:.5f} bpp:"
              f" the tail residual ({residual} bytes) is known only after coding; give a lower target",
              file=sys.stderr)


def atomic_write(path, data):
    """Write bytes to `path` through a temporary file in the same folder, so no half-written file remains."""
    with AtomicFile(path) as out:
        out.write(data)


class AtomicFile:
    """A file written in pieces under a temporary name beside `path` and renamed over it when the `with` block
    ends without an error (removed otherwise), so that no half-written file is ever seen at `path`."""

    def __init__(self, path):
        self.path, self.tmp, self.size = path, f"{path}.tmp{os.getpid()}", 0

    def __enter__(self):
        try:
            self.fh = open(self.tmp, "wb")
        except OSError as exc:
            raise GvccError(f"{self.path}: {exc.strerror}") from None
        return self

    def write(self, data):
        self.fh.write(data)
        self.size += len(data)

    def __exit__(self, exc_type, exc, tb):
        self.fh.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


def read_stream_file(path):
    """Open a stream file: bitstream.Stream with the framing of every GOP checked, nothing unpacked.

    The file is memory-mapped, not read: its pages come from the page cache as GOPs are visited.
    """
    import mmap

    import bitstream
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as exc:
        raise GvccError(f"{path}: {exc.strerror}") from None
    except ValueError:      # not a regular file (a pipe, a device)
        raise GvccError(f"{path}: not a regular file") from None
    return bitstream.open_stream(data)


def decode_span(hdr, gops_text, frames_text):
    """(GOP indices, output frame range) of `decode --gops A:B` / `--frames S:E` (neither: the whole stream)."""
    import bitstream
    held = bitstream.gop_range(hdr)
    if gops_text:
        a, b = parse_span(gops_text, "--gops")
        indices = range(held.start if a is None else a, held.stop if b is None else b)
        if not held.start <= indices.start and indices.stop <= held.stop:
            raise GvccError(f"--gops {gops_text}: the stream holds GOPs {held.start}:{held.stop}")
        frames = range(bitstream.output_frames(hdr, indices.start).start,
                       bitstream.output_frames(hdr, indices.stop - 1).stop)
    elif frames_text:
        a, b = parse_span(frames_text, "--frames")
        have = range(bitstream.output_frames(hdr, held.start).start,
                     bitstream.output_frames(hdr, held.stop - 1).stop)
        frames = range(have.start if a is None else a, have.stop if b is None else b)
        if not have.start <= frames.start and frames.stop <= have.stop:
            raise GvccError(f"--frames {frames_text}: the stream holds frames {have.start}:{have.stop}")
        covering = [g for g in held if bitstream.output_frames(hdr, g).start < frames.stop
                    and bitstream.output_frames(hdr, g).stop > frames.start]
        indices = range(covering[0], covering[-1] + 1)
    else:
        indices = held
        frames = range(bitstream.output_frames(hdr, held.start).start,
                       bitstream.output_frames(hdr, held.stop - 1).stop)
    if hdr.mode == "i2v" and indices.start > 0:
        raise GvccError(f"i2v GOP {indices.start} is conditioned on the decoded last frame of GOP "
                        f"{indices.start - 1} (the chain starts at GOP 0), so i2v has no random access: decode "
                        f"--gops 0:{indices.stop} and drop the frames before {frames.start}")
    return indices, frames


# Decoder resource limits (dav1d-style): a valid stream may still ask for more than this machine should give.
MAX_PIXELS = 1920 * 1088           # default --max-pixels: frame size (working width x height), 1080p
MAX_FRAMES = 16384                 # default --max-frames: frames a decode outputs (~9 minutes at 30 fps)
VAE_BYTES_PER_PIXEL_DIM = 210      # VAE decode working set per padded pixel per unit of VAEConfig.dim: measured
                                   # 7.6 GiB at 480x848 with dim 96 (vae.py docstring, bench/bench_vae.py)


@functools.lru_cache(maxsize=32)
def _stored_elements(path, stamp):
    """Number of tensor elements in a weight file (from its header only); stamp = (size, mtime) keys the cache."""
    from wan_model import read_header
    return sum(math.prod(t.shape) for t in read_header(path).values())


def weight_bytes(paths, precision):
    """Bytes the loaded networks take: (text encoder, everything else); the text encoder is freed before the
    DiT loads. The DiT, text and image encoders are held in the compute precision, the VAE in float32."""
    sizes = {}
    for part, path in paths.items():
        item = 4 if part == "vae" or precision == "fp32" else 2
        st = os.stat(path)
        sizes[part] = _stored_elements(path, (st.st_size, st.st_mtime_ns)) * item
    return sizes.pop("t5"), sum(sizes.values())


def decode_memory(spec, hdr, paths, precision):
    """Estimated peak memory of decoding hdr's stream, in bytes, from the header and the weight files:
    (total, {part: bytes}). Weights, the largest GOP's DiT activations and VAE decode, and the output frames."""
    import bitstream
    import vae as vae_mod
    import wan_model
    t5, nets = weight_bytes(paths, precision)
    pw, ph = pixel_size(hdr.width, hdr.height)
    lh, lw = latent_size(hdr.width, hdr.height)
    cfg = wan_model.DIT_CONFIGS[spec.dit]
    tokens = bitstream.gop_info(hdr, 0).latent_frames * (lh // 2) * (lw // 2)        # GOP 0 is the longest
    dit = tokens * (6 * cfg.dim + 2 * cfg.ffn_dim) * 4                  # residual stream, q k v, FFN hidden
    vae = pw * ph * vae_mod.VAE_CONFIGS[spec.vae].dim * VAE_BYTES_PER_PIXEL_DIM
    output = 2 * hdr.gop_frames * hdr.width * hdr.height * 3            # one GOP's frames (each GOP is written out)
    parts = {"weights": max(t5, nets), "networks' activations": dit + vae, "output frames": output}
    return sum(parts.values()), parts


def available_memory():
    """Bytes this process may still allocate: MemAvailable, capped by an address-space limit; None if unknown."""
    import resource
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        used = 0
        try:
            with open("/proc/self/status") as fh:
                used = next((int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize:")), 0)
        except OSError:
            pass
        found.append(max(0, limit - used))
    return min(found) if found else None


def gpu_memory(device):
    """Free bytes on a CUDA device, or None if torch cannot tell."""
    try:
        return torch.cuda.mem_get_info(torch.device(device))[0]
    except (RuntimeError, ValueError, AssertionError):
        return None


def check_decode(stream, args):
    """Every check of `decode` that needs no network, in order, before any work: (model spec, precision).

    The stream's ranks, model, generator and mode; the resource limits (--max-pixels, --max-frames, estimated
    peak memory against --max-memory or the memory available: host memory on a CPU, the GPU's free memory for
    the networks and host memory for the decoded frames on CUDA); the output path and its container's frame rate;
    and every still frame and residual, unpacked once (a still's declared size first). tests/test_fuzz.py runs
    this on damaged streams.
    """
    import bitstream
    import media
    hdr = stream.header
    stream.check_ranks()
    if hdr.model not in MODELS:
        raise GvccError(f"{args.input}: stream needs model '{hdr.model}', which this gvcc does not know")
    try:
        check_codebook(hdr)
    except GvccError as exc:
        raise GvccError(f"{args.input}: {exc}") from None
    spec = MODELS[hdr.model]
    if spec.mode != hdr.mode:
        raise GvccError(f"{args.input}: {hdr.mode} stream names the {spec.mode} model {hdr.model}")
    if hdr.width * hdr.height > args.max_pixels:
        raise GvccError(f"{args.input}: frames of {hdr.width}x{hdr.height} exceed --max-pixels {args.max_pixels} "
                        f"(raise it to decode this stream)")
    if hdr.frames > args.max_frames:
        raise GvccError(f"{args.input}: {hdr.frames} frames exceed --max-frames {args.max_frames} "
                        f"(raise it to decode this stream)")
    media.check_output(args.output, hdr.width, hdr.height, Fraction(hdr.fps_num, hdr.fps_den), hdr.frames)
    precision = args.precision or PRECISIONS[hdr.precision]
    paths = model_paths(spec, args.weights)
    need, parts = decode_memory(spec, hdr, paths, precision)
    device = str(args.device or default_device())
    if args.max_memory is not None:
        budgets = [("--max-memory allows", parts, args.max_memory * 2 ** 30)]
    elif device.startswith("cuda"):         # networks on the GPU, decoded frames in host memory
        on_gpu = {k: v for k, v in parts.items() if k != "output frames"}
        budgets = [(f"{device} has", on_gpu, gpu_memory(device)),
                   ("this machine has", {"output frames": parts["output frames"]}, available_memory())]
    else:
        budgets = [("this machine has", parts, available_memory())]
    for where, what, have in budgets:
        if have is not None and sum(what.values()) > have:
            detail = ", ".join(f"{k} {v / 2 ** 30:.2f}" for k, v in what.items())
            raise GvccError(f"{args.input}: decoding needs about {sum(what.values()) / 2 ** 30:.2f} GiB ({detail}), "
                            f"{where} {have / 2 ** 30:.2f} GiB available")
    lh, lw = latent_size(hdr.width, hdr.height)
    for gop in stream:                      # one GOP at a time: nothing is kept
        for i, still in enumerate(gop.stills):
            decode_still(gop.index, i, bytes(still), hdr)
        if hdr.residual:
            try:
                bitstream.unpack_residual(bytes(gop.residual), 16, 16 * lh * lw, hdr.residual_bits)
            except bitstream.BitstreamError as exc:
                raise GvccError(f"GOP {gop.index}: {exc}") from None
    return spec, precision


def cmd_decode(args):
    import hashlib

    import bitstream
    import media
    device = check_device(args.device)
    media.check_target(args.output, overwrite=args.overwrite, inputs=[args.input])
    stream = read_stream_file(args.input)
    hdr = stream.header
    indices, frames = decode_span(hdr, args.gops, args.frames)
    spec, precision = check_decode(stream, args)
    paths = model_paths(spec, args.weights)
    fingerprint = model_fingerprint(paths)
    if fingerprint != hdr.model_fingerprint:
        raise GvccError(f"{args.input}: stream was encoded with {hdr.model} weights of fingerprint "
                        f"{hdr.model_fingerprint:08x}, the files in {args.weights} give {fingerprint:08x}")
    start = time.time()
    codec = load_codec(spec, args.weights, hdr.prompt, device, precision, hdr.text_len)
    progress = Progress(len(indices), hdr.steps, "decode", args.quiet)
    md5 = hashlib.md5()                 # = media.frames_md5 of all the output frames, computed as they go
    with media.VideoWriter(args.output, hdr.width, hdr.height, Fraction(hdr.fps_num, hdr.fps_den),
                           n_frames=len(frames)) as out:
        for g, _, video in code_gops(codec, hdr, indices, gops=stream, lead=stream.lead_for(indices.start),
                                     on_step=progress, on_gop=progress.begin_gop):
            progress.set_phase("writing")
            span = bitstream.output_frames(hdr, g)
            video = video[max(0, frames.start - span.start):len(video) - max(0, span.stop - frames.stop)]
            md5.update(np.ascontiguousarray(video).tobytes())
            out.write(video)
            progress.end_gop()
        progress.finish()
        if args.verify and md5.hexdigest() != args.verify.lower():
            raise GvccError(f"--verify: decoded frames have md5 {md5.hexdigest()}, expected {args.verify}")
    if args.verify:
        print(f"OK {md5.hexdigest()}")
    print(f"gvcc: {args.output}: {len(frames)} frames {hdr.width}x{hdr.height} at "
          f"{float(Fraction(hdr.fps_num, hdr.fps_den)):g} fps, {time.time() - start:.1f} s, "
          f"md5 {md5.hexdigest()} (of the RGB frames, for --verify)", file=sys.stderr)


def cmd_concat(args):
    """Join part streams (`encode --gops`) into the stream a one-process encode writes (bitstream.py section 11)."""
    import bitstream
    import media
    media.check_target(args.output, overwrite=args.overwrite, inputs=args.parts)
    parts = []
    for path in args.parts:
        try:
            with open(path, "rb") as fh:
                parts.append(fh.read())
        except OSError as exc:
            raise GvccError(f"{path}: {exc.strerror}") from None
    try:
        data = bitstream.concat(parts)
    except bitstream.BitstreamError as exc:
        raise GvccError(f"concat: {exc}") from None
    with AtomicFile(args.output) as out:
        out.write(data)
    print(f"gvcc: {args.output}: {len(data)} bytes from {len(parts)} parts", file=sys.stderr)


def paper_accounting(hdr, rows):
    """The authors' rate count of a stream, GOP by GOP, and its sequence figures (their scripts' aggregation).

    rows: bitstream.stream_report(data)["gops"]. Per GOP the authors count T_sde F_lat M (ceil(log2 K) + 1)
    codebook bits with T_sde = steps - tail_steps and M (not M_tail: their count ignores it), plus in I2V the
    zlib bytes of the tail residual (not its scales) and in FLF2V the boundary stills the GOP introduces (none
    when they are lossless: their `--ref_codec gt`); the I2V first frame and all headers are free. I2V and FLF2V
    round the codebook down to whole bytes. Pixels are at the working size. The frames of a GOP are the frames
    it adds: on gvcc's shared-boundary grid an I2V or FLF2V GOP after the first adds n_frames - 1 (32 of 33;
    the authors' own I2V grid has no shared frame, 33 new frames per GOP, so their per-frame count is this one).
    Sequence bpp and kbps (at 16 fps): T2V and I2V average the GOPs' figures, FLF2V divides the total bits by
    the total frames.
    Returns {"gops": [{"bits", "frames", "bpp", "kbps16"}], "bpp", "kbps16", "bits"}.
    """
    import bitstream
    per_step_frame = hdr.M * ((hdr.K - 1).bit_length() + 1)
    t_sde = hdr.steps - hdr.tail_steps
    out = []
    for row in rows:
        g = row["index"]
        info = bitstream.gop_info(hdr, g)
        cb = t_sde * info.latent_frames * per_step_frame
        frames = info.n_frames if g == 0 or hdr.mode == "t2v" else info.n_frames - 1     # the frames it adds
        if hdr.mode == "t2v":
            bits = cb
        elif hdr.mode == "i2v":
            zlib_bytes = row["residual_bytes"] - 4 * 16 if row["residual_bytes"] else 0
            bits = 8 * (cb // 8 + zlib_bytes)
        else:
            bits = 8 * (cb // 8 + (0 if hdr.still_lossless else row["still_bytes"]))
        out.append({"bits": bits, "frames": frames, "bpp": bits / (frames * hdr.width * hdr.height),
                    "kbps16": bits / (frames / 16) / 1000})
    total = sum(r["bits"] for r in out)
    if hdr.mode == "flf2v":
        frames = sum(r["frames"] for r in out)
        bpp, kbps = total / (frames * hdr.width * hdr.height), total / (frames / 16) / 1000
    else:
        bpp, kbps = (float(np.mean([r[k] for r in out])) for k in ("bpp", "kbps16"))
    return {"gops": out, "bits": total, "bpp": bpp, "kbps16": kbps}


def cmd_info(args):
    """Header and per-GOP rate breakdown of a stream, with the paper's accounting next to gvcc's."""
    import bitstream
    stream = read_stream_file(args.input)
    stream.check_ranks()                    # the whole stream is checked before anything is printed
    hdr = stream.header
    # A prompt in any language must not end in UnicodeEncodeError on a terminal or pipe that cannot show it.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    pixels = hdr.src_width * hdr.src_height * hdr.frames
    seconds = hdr.frames * hdr.fps_den / hdr.fps_num
    fields = [(k, getattr(hdr, k)) for k in hdr.__dataclass_fields__]
    fields = [(k, len(bitstream.gop_range(hdr)) if k == "gop_count" else v) for k, v in fields]
    held, n_gops = bitstream.gop_range(hdr), bitstream.num_gops(hdr)
    kind = "GVCC stream" if len(held) == n_gops else f"GVCC part stream: GOPs {held.start}:{held.stop} of {n_gops}"
    print(f"{args.input}: {len(stream.data)} bytes, {kind}")
    for key, value in fields:
        shown = f"0x{value:08x}" if key in ("model_fingerprint", "clip_crc") else \
            repr(value) if isinstance(value, str) else value
        print(f"  {key:18s} {shown}")
    print(f"  {'g_scale, shift':18s} {hdr.g_scale_q / 1000:g}, {hdr.shift_q / 1000:g}")
    print()
    print(f"{'GOP':>4} {'frames':>12} {'codebook B':>11} {'stills B':>9} {'residual B':>11} "
          f"{'framing B':>10} {'total B':>9} {'bpp':>9} {'paper bits':>11} {'paper bpp':>10}")
    rows = [gop.row() for gop in stream]    # one GOP at a time: sizes only, no symbols unpacked
    paper = paper_accounting(hdr, rows)
    for row, prow in zip(rows, paper["gops"]):
        info = bitstream.gop_info(hdr, row["index"])
        span = f"{info.first_frame}-{info.first_frame + info.n_frames - 1}"
        gop_pixels = hdr.src_width * hdr.src_height * info.n_frames
        print(f"{row['index']:>4} {span:>12} {row['codebook_bytes']:>11} {row['still_bytes']:>9} "
              f"{row['residual_bytes']:>11} {row['overhead_bytes']:>10} {row['total_bytes']:>9} "
              f"{8 * row['total_bytes'] / gop_pixels:>9.5f} {prow['bits']:>11} {prow['bpp']:>10.5f}")
    bits = 8 * len(stream.data)
    still_bits = 8 * sum(r["still_bytes"] for r in rows)
    print()
    print(f"file: {bits} bits = {bits / pixels:.5f} bpp against the {hdr.src_width}x{hdr.src_height} source, "
          f"header {stream.header_bytes} bytes")
    print(f"      {bits / seconds / 1000:.2f} kbps at the source {float(Fraction(hdr.fps_num, hdr.fps_den)):g} fps, "
          f"{bits / (hdr.frames / 16) / 1000:.2f} kbps at 16 fps (Wan's rate)")
    counted = {"t2v": "codebook", "i2v": "codebook + residual zlib bytes, first frame free",
               "flf2v": "codebook + boundary stills"}[hdr.mode]
    print(f"paper accounting ({counted}; T_sde F_lat M (ceil(log2 K) + 1) bits per GOP, headers free, "
          f"{hdr.width}x{hdr.height} pixels): {paper['bits']} bits = {paper['bpp']:.5f} bpp, "
          f"{paper['kbps16']:.2f} kbps at 16 fps, divide-by-3 convention {paper['bpp'] / 3:.5f}")
    if hdr.tail_steps == 0:
        print("      (the authors count T_sde = steps with --tail-steps 0, although their last step sends nothing)")
    if still_bits:
        print(f"without the coded still frames (the paper does not count its I2V first frame): "
              f"{(bits - still_bits) / pixels:.5f} bpp")


def cmd_eval(args):
    import media
    media.run_eval(args)


def cmd_make_tiny(args):
    """Write the tiny random-weight models (real key layout and dtypes) to a folder."""
    from safetensors.torch import save

    import media
    import vae as vae_mod
    import wan_model
    try:
        os.makedirs(args.dir, exist_ok=True)
    except OSError as exc:
        raise GvccError(f"{args.dir}: cannot make the folder ({exc.strerror})") from None
    media.check_folder(os.path.join(args.dir, "tiny_t2v.safetensors"))
    files = {
        "tiny_t2v.safetensors": lambda: wan_model.tiny_weights("dit", "tiny-t2v", seed=1),
        "tiny_i2v.safetensors": lambda: wan_model.tiny_weights("dit", "tiny-i2v", seed=2),
        "tiny_flf2v.safetensors": lambda: wan_model.tiny_weights("dit", "tiny-flf2v", seed=3),
        "tiny_umt5.safetensors": lambda: wan_model.tiny_weights("t5", "tiny", seed=4),
        "tiny_clip_vision.safetensors": lambda: wan_model.tiny_weights("clip", "tiny", seed=5),
        "tiny_vae.safetensors": lambda: vae_mod.tiny_weights(seed=6),
    }
    for name, make in files.items():
        path = os.path.join(args.dir, name)
        atomic_write(path, save({k: v.contiguous() for k, v in make().items()}))
        print(f"gvcc: wrote {path}", file=sys.stderr)


def still_quality_arg(text):
    """argparse type of --still-quality: an AVIF quality 0..100 or 'lossless'."""
    if text == "lossless":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"'{text}' is not a quality from 0 to 100 or 'lossless'")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse with gvcc's error format: one `gvcc: error:` line, exit status 2, no usage dump."""

    def error(self, message):
        self.exit(2, f"gvcc: error: {self.prog}: {message} (see {self.prog} --help)\n")


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so every partly written output is removed on the way out."""


def _terminate(signum, frame):
    raise Terminated()


def build_parser():
    import media
    p = ArgumentParser(prog="gvcc.py", description="GVCC: zero-shot generative video coding with Wan2.1.")
    p.add_argument("--version", action="version", version=f"gvcc {__version__} (bitstream format version "
                                                            f"{__import__('bitstream').VERSION})")
    sub = p.add_subparsers(dest="command", required=True)

    def add_input_flags(q):
        q.add_argument("--yuv-size", metavar="WxH", help="frame size of a raw .yuv input (I420, 8-bit)")
        q.add_argument("--fps", help="frame rate of inputs without one (.yuv; images: 25 as in ffmpeg), or to "
                                     "override the file's (e.g. 30000/1001)")
        media.add_range_arguments(q)

    def add_runtime_flags(q):
        q.add_argument("--weights", default=os.environ.get("GVCC_WEIGHTS", "weights"),
                       help="folder with the weight files (default $GVCC_WEIGHTS or ./weights)")
        q.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
        q.add_argument("--precision", choices=("fp32", "bf16"),
                       help="network precision (default: fp32 on cpu, bf16 on cuda; decode: the encoder's)")
        q.add_argument("--quiet", action="store_true", help="no progress or notes on stderr (warnings stay)")
        media.add_overwrite_arguments(q)

    e = sub.add_parser("encode", help="video -> GVCC stream",
                       description="Inputs are recognised by content: a .y4m (also '-' for stdin), a raw .yuv "
                                   "(--yuv-size, --fps), a folder of PNGs, a printf pattern like frames/%06d.png "
                                   "or a single image, or any video file the bundled ffmpeg reads (.mp4, .mov, "
                                   ".mkv, .avi, ...). Outputs are never written over an input, nor over an "
                                   "existing file without -y.")
    e.add_argument("input", help="video, y4m ('-' for stdin), raw .yuv, PNG folder, %%06d.png pattern or image")
    e.add_argument("output")
    e.add_argument("--mode", choices=("t2v", "i2v", "flf2v"), help="default: the model's mode (t2v)")
    e.add_argument("--model", help=f"one of {', '.join(MODELS)} (default per mode: {DEFAULT_MODEL})")
    rate = e.add_mutually_exclusive_group()
    rate.add_argument("-M", type=int, help="atoms per step and latent frame (default 64, 80 above 720p)")
    e.add_argument("-K", type=int, default=16384, help="atoms per codebook (default 16384)")
    e.add_argument("--codebook", choices=tuple(CODEBOOKS), default="iid",
                   help="iid: the paper's i.i.d. Gaussian atoms (default); shift: circular shifts of one "
                        "Gaussian vector, matched by FFT (much faster to encode, K <= D)")
    e.add_argument("--m-tail", type=int, help="i2v: atoms in the last 2 latent frames (default 128)")
    e.add_argument("--steps", type=int, default=20, help="sampler steps T (default 20)")
    e.add_argument("--tail-steps", type=int, default=3, help="final ODE steps without bits (default 3)")
    e.add_argument("--g-scale", type=finite_float, default=3.0, help="SDE diffusion scale, g_t = g t^2 (default 3)")
    e.add_argument("--shift", type=finite_float,
                   help="time-grid shift (default 3; i2v/flf2v above 480 working rows: 5, the authors' rule)")
    e.add_argument("--gop", type=int, default=33, help="frames per GOP, 4k+1 (default 33)")
    e.add_argument("--prompt", default="", help="text prompt, stored in the stream (default empty)")
    e.add_argument("--size", metavar="WxH", help="resize (Lanczos) to this working size; decoder outputs it")
    e.add_argument("--seed", type=int, default=42, help="generator seed, 0..2^32-1 (default 42)")
    e.add_argument("--still-quality", type=still_quality_arg, default=60,
                   help="i2v/flf2v: AVIF quality of the still frames, 0..100, or 'lossless' (PNG stills: the I2V "
                        "first frame then equals the source, as in the authors' runs) (default 60)")
    e.add_argument("--residual-bits", type=int, choices=(0, 4, 8, 16),
                   help="i2v: bits of the tail latent residual quantiser, 0 = no residual (default 8)")
    e.add_argument("--text-len", type=int, default=512,
                   help="rows of the padded text context (default 512 as upstream Wan; 226 reproduces the "
                        "authors' T2V runs); stored in the stream")
    e.add_argument("--frames", type=int, help="code only the first N frames")
    rate.add_argument("--bpp", type=positive_float,
                      help="target bits per source pixel of the whole file (header, stills, framing and codebook; "
                           "an i2v tail residual is known only after coding): picks M for you")
    rate.add_argument("--kbps", type=positive_float,
                      help="target kbit/s of the whole file at the source frame rate: picks M for you")
    e.add_argument("--recon", metavar="FILE", help="also write the encoder's reconstruction (= the decoder's)")
    e.add_argument("--gops", metavar="A:B", help="encode only GOPs A..B-1 into a part stream, for `concat` "
                                                 "(t2v, flf2v; i2v parts start at 0)")
    add_input_flags(e)
    add_runtime_flags(e)

    d = sub.add_parser("decode", help="GVCC stream -> video (.mp4, .y4m or a PNG folder)")
    d.add_argument("input")
    d.add_argument("output")
    d.add_argument("--verify", metavar="MD5", help="fail unless the md5 of the decoded RGB frames is MD5")
    d.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse streams whose frames have more pixels (default {MAX_PIXELS}, 1920x1088)")
    d.add_argument("--max-frames", type=int, default=MAX_FRAMES, metavar="N",
                   help=f"refuse streams of more frames (default {MAX_FRAMES})")
    d.add_argument("--max-memory", type=float, metavar="GIB",
                   help="refuse streams whose decode is estimated to need more memory (default: the memory "
                        "available now)")
    span = d.add_mutually_exclusive_group()
    span.add_argument("--gops", metavar="A:B", help="decode only GOPs A..B-1 (t2v, flf2v; `info` lists them)")
    span.add_argument("--frames", metavar="S:E", help="decode only frames S..E-1 (the GOPs that hold them)")
    add_runtime_flags(d)

    i = sub.add_parser("info", help="header and rate breakdown of a stream")
    i.add_argument("input")

    v = sub.add_parser("eval", help="quality of a decoded video against its reference")
    media.add_eval_arguments(v)

    c = sub.add_parser("concat", help="join part streams (encode --gops) into one stream")
    c.add_argument("parts", nargs="+", metavar="PART", help="part streams, in GOP order")
    c.add_argument("output")
    media.add_overwrite_arguments(c)

    t = sub.add_parser("make-tiny", help="write tiny random-weight models (real key layout) to a folder")
    t.add_argument("dir")
    return p


def fixed_mmap_threshold(size=128 << 10):
    """Keep glibc's mmap threshold fixed (Linux with glibc; elsewhere nothing happens).

    glibc raises the threshold to the size of each large block freed (up to 32 MiB), after which the per-frame
    temporaries of reading and converting a large source, and the per-GOP tensors, come from the heap and
    fragment it: an encode's peak memory then grows with the clip's length (+30 % from 40 to 800 frames of
    768x576 in bench/bench_stream.py). A fixed threshold keeps every block above `size` in its own mapping,
    returned to the system when freed, so the peak stays flat. mallopt(M_MMAP_THRESHOLD) is what the
    MALLOC_MMAP_THRESHOLD_ environment variable sets; an explicit one is left alone.
    """
    import ctypes
    import platform
    if platform.libc_ver()[0] != "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(-3, size)         # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in ("encode", "decode"):
        fixed_mmap_threshold()
    handlers = {"encode": cmd_encode, "decode": cmd_decode, "info": cmd_info, "eval": cmd_eval,
                "concat": cmd_concat, "make-tiny": cmd_make_tiny}
    from bitstream import BitstreamError
    from media import MediaError
    from wan_model import WeightsError
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:                  # not the main thread (an embedding program): leave signals to it
        previous = None
    try:
        handlers[args.command](args)
    except (GvccError, BitstreamError, MediaError, WeightsError) as exc:
        print(f"gvcc: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:                 # `gvcc.py info x | head`: the reader left, as with any Unix tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("gvcc: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("gvcc: terminated (SIGTERM); partial outputs removed", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    status = main()
    # Done, the output published (or the error reported). A Ctrl-C from now on would only break the
    # interpreter's exit hooks (a traceback from an atexit callback, with exit status 0), so it is ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(status)
