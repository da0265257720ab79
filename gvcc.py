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
The tail residual is defined the same way in every mode: a decoder applies it wherever the header's `residual`
is 1 (gvcc's encoder sends it in i2v only, as the authors do).
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
              sin(phi) = phi S(phi^2), cos(phi) = C(phi^2): S and C by Horner in q = phi^2 with coefficients
              (-1)^n / (2n+1)! and (-1)^n / (2n)!, n = 0..7 (the highest first: p = c_7; p = p q; p = p + c_6; ...)
              (c, s') = (cos phi, sin phi) if o is even else (sin phi, cos phi)
              quadrant o >> 1 rotates (c, s') to (c, s'), (-s', c), (-c, -s'), (s', -c)
      outputs: (r cos, r sin) -> elements of lanes (0, 1) from (a, b) = (x0, x1), and (2, 3) from (x2, x3).
    Every coefficient (1/(2n+1), (-1)^n/(2n+1)!, (-1)^n/(2n)!) is the float64 nearest the exact fraction, as
    python's 1.0 / (2 n + 1) and (-1) ** n / math.factorial(k) give it; Horner's rule is one multiplication and
    one addition per coefficient, each rounded once in float64, in the order written above.
Known answers are in tests/golden/ and tests/test_generator.py.
The same numbers come from three implementations, chosen per request by `gaussian`: the eager torch reference
(the code below, the spec) and two fast paths in kernels.py, which a port need not read: a torch.compile'd CPU
kernel (large requests; checked bit for bit against the reference before first use, eager fallback), and on
CUDA a Triton kernel that also scores atoms against a residual without writing them (FMA contraction off;
tested bit for bit under Triton's interpreter). The CPU encoder also computes the exact Philox words in int32
lanes to score atoms approximately (kernels.py, "Certified matching"); the atoms it finally chooses are always
generated by one of the three.

Codebooks (header field `generator`; `encode --codebook iid|shift`)
-------------------------------------------------------------------
A codebook (seed, j, f) holds K atoms of D = C h w elements, one per (SDE step j, latent frame f). Both sides
build the innovation of the chosen atoms S (ascending indices k_i, signs s_i = +-1) with the same function.
The encoder's choice (not normative): the M atoms of largest |<a_i, r>|, ties in |<a_i, r>| to the lower index,
and s_i = + where <a_i, r> >= 0 (a zero product counts as +). gvcc's encoder takes the products from float32
matrix products, whose rounding is not portable, so another encoder may break a near-tie the other way; the
decoder only reads the indices and signs.
Generator 1, `iid` (the paper's, the default): atom i is gaussian(seed, stream 1, j, f, atom i), elements 0..D-1.
    The encoder needs the M atoms of largest |<a_i, r>| (O(K D) Philox words per (step, frame)); the decoder
    regenerates only the M chosen atoms and sums them, exactly as generator 2 sums its shifts: y = 0 (float32,
    D elements); for i in ascending k_i: y = y + a_{k_i} if s_i = + else y - a_{k_i}, each element rounded once
    in float32; z = y.
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
Both: z = z / std(z), reshaped to [C, h, w], with the std defined exactly (so that the decoder's innovation is
the same on every machine): each z_e is taken exactly into float64; mean = (z_0 + z_1 + ... + z_{D-1}) / D with
the sum accumulated in float64 in index order (((z_0 + z_1) + z_2) + ...), one rounding per addition and one for
the division; v = the sum of (z_e - mean)^2 accumulated the same way (the difference and the square each rounded
once in float64); std = sqrt(v / (D - 1)) in float64, then rounded to float32; each element z_e / std is one
float32 division. If std <= 2^-12 max_e |z_e| (both float32, the scaling exact), z is constant up to rounding
(possible with generator 2 when K = M = D and all signs agree) and the innovation is z = 0, never a huge vector,
inf or NaN. A real innovation has std near max |z| / 4.

Model-call schedule (header `dit_period`; `encode --speed`)
----------------------------------------------------------
A GOP's cost is its DiT calls. The header's integer dit_period P (1..8) fixes which steps call the model:
step k calls it when k >= T_sde (every ODE tail step) or k % P == 0, so P = 1 is the paper's sampler. A step
that does not call it reuses the clean estimate of the last call, x0_cache = x_j - t_j u_j (j the last step
that called), and takes the velocity that keeps that estimate at its own state:
        u = (x - x0_cache) / t                   (float32 tensor ops, t the grid's float64 value)
after which the step is the same as any other: x0_hat = x - t u, the codebook symbols of that step (the encoder
matches against x0 - x0_hat, which is x0_cache up to rounding), the SDE or ODE update. Skipped steps carry their
symbols: the rate does not change, only the DiT work. The decision is a fixed function of k and the header, never
of a float value, so every decoder takes the same branch (a TeaCache-style threshold could not be decoded on
other hardware). This is the authors' "x0-cache" of GVCCTurbo (CCdydy/GVCCTurbo_ini), signalled in the stream.
    --speed paper     P = 1, T = 20, 3 tail steps: 20 DiT calls per GOP (the paper's)
    --speed fast      P = 3, T = 20, 3 tail steps: calls at steps 0, 3, 6, 9, 12, 15 and 17, 18, 19: 9 calls
    --speed fastest   P = 2, T = 8, 1 tail step: calls at steps 0, 2, 4, 6 and 7: 5 calls
`--dit-period`, `--steps` and `--tail-steps` override a preset's values; the header carries the result, so a
decoder needs no preset table. Fewer steps (fastest) also means fewer SDE steps, so fewer bits at the same M:
compare schedules at equal rate (bench/bench_schedule.py does; `--bpp` picks M for a rate).
"""
import argparse
import dataclasses
import functools
import hashlib
import math
import mmap
import os
import shutil
import signal
import sys
import time
import zlib
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save, save_file

import bitstream
import media
import vae as vae_mod
import wan_model
from bitstream import BitstreamError
from media import MediaError
from wan_model import WeightsError


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
    Philox and Box-Muller in cache. With fast=True, large CPU requests go through kernels.py's compiled kernel
    and CUDA requests through its Triton kernel (the same bits; `fast=False` forces the reference).
    """
    atoms = torch.as_tensor(atoms, dtype=torch.int64, device=device)
    n4 = (n + 3) // 4
    if fast:
        import kernels      # the fast paths check themselves against this function (no import cycle at load)
        if atoms.is_cuda and len(atoms) and kernels.triton_kernels() is not None:
            return kernels.gaussian_triton(seed, stream, step, frame, atoms, n, device)
        if not atoms.is_cuda and len(atoms) * n4 >= kernels.FUSED_MIN_COUNTERS and kernels.fused_cpu_available():
            return kernels.gaussian_fused_cpu(seed, stream, step, frame, atoms, n)
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
    dit_period: int = 1  # SDE steps k with k % dit_period != 0 reuse the last call's x0 estimate (header)

    @property
    def sde_steps(self):
        """Steps with a codebook innovation: all but the tail, and never the last step (it lands on t = 0)."""
        return min(self.steps - self.tail_steps, self.steps - 1)

    def calls_model(self, k):
        """Whether step k calls the DiT: every ODE tail step, and the SDE steps k with k % dit_period = 0."""
        return k >= self.sde_steps or k % self.dit_period == 0

    @property
    def model_calls(self):
        """DiT forwards per GOP."""
        return sum(self.calls_model(k) for k in range(self.steps))


def run_gop(velocity, settings, shape, choose, device="cpu", on_step=None):
    """The sampler shared by encoder and decoder: returns the final latent x_0 [C, F, h, w].

    velocity(x, t) -> u is the model. At SDE step j, choose(j, f, x0_hat_f) gives the (indices, signs) of
    latent frame f: the encoder matches against the true latent, the decoder reads them from the stream.
    Both then build the innovation with the same function, so both compute the same floats. A step that does
    not call the model (settings.calls_model) takes the velocity that keeps the last call's clean estimate:
    u = (x - x0_cache) / t (the docstring's "Model-call schedule").
    """
    grid = time_grid(settings.steps, settings.shift)
    x = initial_noise(settings.seed, shape, device)                            # [C, F, h, w]
    x0_cache = None
    for k in range(settings.steps):
        t, dt = grid[k], grid[k] - grid[k + 1]
        if settings.calls_model(k):
            u = velocity(x, t)                                                 # [C, F, h, w]
            x0_cache = x - t * u                                               # [C, F, h, w]
        else:                                   # reuse: the velocity that keeps the last clean estimate
            u = (x - x0_cache) / t                                             # [C, F, h, w]
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
    sorted ascending, signs with 0 = + and 1 = -). This is the encoder's choice, not normative: the fast paths
    of kernels.py make it. On CUDA with Triton one fused kernel scores all K atoms. On a CPU, large codebooks go
    through certified matching (kernels.certified_candidates) when its compiled scorer is usable and
    certified=True; otherwise every atom is scored exactly (match_exact, the reference).
    """
    import kernels
    if r.is_cuda and kernels.triton_kernels() is not None:     # one fused kernel scores all K atoms, writing none
        idx = torch.arange(K, dtype=torch.int64, device=r.device)                             # [K]
        best_idx, best_p = top_m(idx, kernels.scores_triton(r, seed, STREAM_CODEBOOK, step, frame, idx), M)
        return best_idx.tolist(), (best_p < 0).to(torch.int64).tolist()
    atoms = range(K)
    n4 = (r.numel() + 3) // 4
    if (certified and not r.is_cuda and chunk is None and 0 < M < K and K * n4 >= kernels.FUSED_MIN_COUNTERS
            and kernels.scorer_available()):
        atoms = kernels.certified_candidates(r, seed, step, frame, K, M).tolist()
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
    """z = sum_i s_i a_i over the selected atoms, scaled to unit std: [C, h, w] float32 (generator 1).

    The sum runs in float32 from zero over the atoms in ascending index order (the order of the stream), each
    atom added or subtracted once, as generator 2's; then unit_std. Exact on every machine.
    """
    d = frame_shape[0] * frame_shape[1] * frame_shape[2]
    atoms = gaussian(seed, STREAM_CODEBOOK, step, frame, indices, d, device)           # [M, D]
    z = torch.zeros(d, dtype=torch.float32, device=device)                             # [D]
    for atom, s in zip(atoms, signs):
        z = z - atom if s else z + atom
    return unit_std(z).reshape(frame_shape)                                             # [C, h, w]


def unit_std(z):
    """z / std(z), [D] float32, exactly as the docstring defines it ("Codebooks", both generators).

    The mean and the unbiased variance are accumulated in float64 in index order (np.add.accumulate: every
    partial sum is an output, so no vectorisation can reorder it), the std is rounded to float32 and each
    element divided by it in float32. A z that is constant up to rounding (std <= 2^-12 max |z|, e.g.
    generator 2 with K = M = D and equal signs) gives z = 0: no innovation rather than a huge one, inf or NaN.
    """
    z64 = z.detach().to("cpu", torch.float64).numpy()                                  # [D]
    mean = np.add.accumulate(z64)[-1] / z64.size
    dev = z64 - mean
    std = np.float32(np.sqrt(np.add.accumulate(dev * dev)[-1] / (z64.size - 1)))
    if std <= np.float32(np.abs(z64).max()) * np.float32(2.0 ** -12):
        return torch.zeros_like(z)
    return z / torch.tensor(std, device=z.device)                                       # [D]


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
    term added or subtracted once; then z[P[j]] = y[j] and unit_std. The same as innovation() for atoms
    P^T roll(g, k).
    """
    d = frame_shape[0] * frame_shape[1] * frame_shape[2]
    g = shift_vector(seed, step, frame, d, device)                                 # [D]
    y = torch.zeros(d, dtype=torch.float32, device=device)                         # [D]
    for k, s in zip(indices, signs):
        shifted = torch.roll(g, k)                                                 # [D]  g[(j - k) mod D]
        y = y - shifted if s else y + shifted
    z = torch.empty_like(y)
    z[shift_permutation(seed, d).to(device)] = y                                   # [D]  P^T y
    return unit_std(z).reshape(frame_shape)                                        # [C, h, w]


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
    K: int = 16384      # encode's default atoms per codebook (the paper's)
    M: int = None       # encode's default atoms per step and latent frame (None: the paper's 64, 80 above 720p)
    M_tail: int = None  # i2v's default atoms in the last 2 latent frames (None: the paper's 128)
    steps: int = 20     # encode's default sampler steps (the paper's)
    still_quality: int = 60     # encode's default AVIF quality of i2v / flf2v stills
    builtin: bool = False   # the files ship in the repository's demo/ folder (used when --weights is not given)


_REAL = dict(vae="wan2.1", vae_file="wan_2.1_vae.safetensors", t5="umt5-xxl", t5_file="umt5_xxl_fp16.safetensors")
_REAL_CLIP = dict(clip="vit-h-14", clip_file="clip_vision_h.safetensors")
_TINY = dict(vae="tiny", vae_file="tiny_vae.safetensors", t5="tiny", t5_file="tiny_umt5.safetensors")
_TINY_CLIP = dict(clip="tiny", clip_file="tiny_clip_vision.safetensors")
# gvcc's demo models (bench/train_demo.py; README, "The demo models"): a small trained VAE and DiTs with the tiny
# text and image encoders, and defaults for their working size (about 160x96): a codebook of 1024 atoms, 8 per
# step and latent frame, which puts a 33-frame GOP at about 0.02 bpp, the paper's range.
DEMO_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo")
_DEMO = dict(vae="demo", vae_file="demo_vae.safetensors", t5="tiny", t5_file="tiny_umt5.safetensors",
             K=1024, M=8, M_tail=16, still_quality=40, builtin=True)

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
    # Small trained models that ship with gvcc: real reconstructions on a CPU, without a download.
    "demo-t2v": ModelSpec("t2v", "demo-t2v", "demo_t2v.safetensors", **_DEMO),
    "demo-i2v": ModelSpec("i2v", "demo-i2v", "demo_i2v.safetensors", **_DEMO, **_TINY_CLIP),
    "demo-flf2v": ModelSpec("flf2v", "demo-flf2v", "demo_flf2v.safetensors", **_DEMO, **_TINY_CLIP),
}
DEFAULT_MODEL = {"t2v": "t2v-1.3B", "i2v": "i2v-14B-720P", "flf2v": "flf2v-14B-720P"}


def default_shift(mode, height):
    """The authors' time-grid shift: 3 for T2V; for I2V and FLF2V 3 at a working height <= 480, else 5."""
    return 3.0 if mode == "t2v" or height <= 480 else 5.0


class GvccError(Exception):
    """A user-facing error: bad parameters, a mismatched model, an unusable input (one-line message)."""


def weights_folder(weights, spec):
    """The folder a model's files are read from: --weights if given, else demo/ for the demo models, else
    $GVCC_WEIGHTS or ./weights."""
    if weights:
        return weights
    if spec is not None and spec.builtin:
        return DEMO_WEIGHTS
    return os.environ.get("GVCC_WEIGHTS", "weights")


def model_paths(spec, weights_dir):
    """{component: path} of the files a model needs, each checked to exist (a path is a safetensors file or a
    shard index). weights_dir is an official-layout folder, the files named as in MODELS (weights_fetch.sh
    fetches them), or a diffusers pipeline folder such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers (wan_model, "Weight
    folders"), recognised by its model_index.json."""
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
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def read_cached_context(path, key):
    """The cached context [Lt, D] for `key`, or None when there is no entry or it fails any check."""
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
    levels = (1 << bits) - 1
    scale = r.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-6)                          # [C, 1, 1]
    q = ((r / scale + 1.0) * levels / 2.0).round().clamp(0, levels)                          # [C, h, w]
    q = q.to(torch.int32).cpu().numpy().astype(np.uint8 if bits <= 8 else "<u2")              # [C, h, w]
    return bitstream.pack_residual(scale.flatten().tolist(), q.tobytes(), bits)


def dequantise_residual(blob, frame_shape, bits, device):
    """Blob -> residual [C, h, w] = ((q * 2) / (2^bits - 1) - 1) * m_c, float32; both sides add it."""
    c, h, w = frame_shape
    scales, raw = bitstream.unpack_residual(blob, c, c * h * w, bits)
    q = np.frombuffer(raw, np.uint8 if bits <= 8 else "<u2").astype(np.float32)
    q = torch.from_numpy(q).reshape(c, h, w).to(device)                                      # [C, h, w]
    m = torch.tensor(scales, dtype=torch.float32, device=device)[:, None, None]              # [C, 1, 1]
    return (q * 2.0 / ((1 << bits) - 1) - 1.0) * m


def decode_still(g, i, data, hdr):
    """Still i of GOP g -> uint8 [height, width, 3]; its declared size is checked before its pixels are decoded."""
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


# encode --speed: the model-call schedule (header dit_period) and the step counts it implies unless given
# (--dit-period, --steps and --tail-steps override them). Chosen by bench/bench_schedule.py quality on the demo
# models at equal rate (README, "Speed"): fast is over 2x fewer calls with every point within 0.3 dB of paper
# (P = 4 averages -0.24 dB but loses up to 0.33 on one clip); fastest ties with 9 steps, 1 tail, P = 2 as the best
# of the 4x (5-call) schedules measured.
SPEEDS = {
    "paper": dict(dit_period=1),
    "fast": dict(dit_period=3),
    "fastest": dict(dit_period=2, steps=8, tail_steps=1),
}


def settings_of(hdr):
    return SamplerSettings(steps=hdr.steps, tail_steps=hdr.tail_steps, g_scale=hdr.g_scale_q / 1000.0,
                           shift=hdr.shift_q / 1000.0, K=hdr.K, seed=hdr.seed, generator=hdr.generator,
                           dit_period=hdr.dit_period)


def code_clip(codec, hdr, frames=None, gops=None, on_step=None):
    """Encode (`frames` given: uint8 [N, height, width, 3]) or decode (`gops` given) a whole clip in memory.

    `gops` is a bitstream.Stream (symbols are unpacked one at a time, as the sampler asks for them) or a list
    of bitstream.Gop. Returns (gops, reconstruction uint8 [N, height, width, 3]): the coded GOPs when encoding.
    The CLI streams with code_gops instead.
    """
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
# Every command refuses bad input before any work, with one `gvcc: error:` line and exit status 1: each
# argument's domain as the command line is parsed (the argument types at the end of this section); every output
# name through one check, media.check_target (media.py, "Writing"); then what depends on the input: ranges against
# the clip or stream (pick_span), the decoder's resource limits against the header before a GOP is read
# (check_resources), and the stream's contents before a network loads (check_payload).

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


def clip_crc(video, hdr):
    """The clip_crc of bitstream.py section 11: CRC-32 of the source's key frames (first frame of each GOP),
    read from video (a media.VideoSource) at the source size."""

    crc = 0
    for g in range(bitstream.num_gops(hdr)):
        i = bitstream.gop_info(hdr, g).first_frame
        crc = zlib.crc32(np.ascontiguousarray(video.read(i, i + 1)[0]).tobytes(), crc)       # [H, W, 3]
    return crc


# --------------------------------------------------------------------------------------------------
# encode
# --------------------------------------------------------------------------------------------------

def cmd_encode(args):
    device = check_device(args.device)
    media.check_target(args.output, overwrite=args.overwrite, inputs=[args.input])
    if args.recon:
        media.check_target(args.recon, kind="video", overwrite=args.overwrite, inputs=[args.input],
                           outputs=[args.output])
    spec_name = args.model or DEFAULT_MODEL[args.mode or "t2v"]
    if spec_name not in MODELS:
        raise GvccError(f"unknown model '{spec_name}' (known: {', '.join(MODELS)})")
    spec = MODELS[spec_name]
    args.weights = weights_folder(args.weights, spec)
    mode = args.mode or spec.mode
    if mode != spec.mode:
        raise GvccError(f"{spec.mode} model {spec_name} cannot code --mode {mode}; use one of "
                        f"{', '.join(n for n, s in MODELS.items() if s.mode == mode)}")
    check_encode_options(args, spec, mode)
    # the input is read GOP by GOP: opening it counts its frames, and memory holds about one GOP of them
    with media.VideoSource(args.input, size=args.yuv_size, fps=args.fps, limited_range=args.limited_range,
                           frames=args.frames) as video:
        encode_video(args, video, spec_name, spec, mode, device)


def check_encode_options(args, spec, mode):
    """The defaults that come from the --speed preset and the model (K, steps, tail steps), then the checks of
    `encode`'s options against each other and the mode, before the input is opened. (Each option's own domain is
    checked as the command line is parsed: build_parser's types.)"""
    speed = SPEEDS[args.speed]
    args.K = spec.K if args.K is None else args.K
    args.steps = speed.get("steps", spec.steps) if args.steps is None else args.steps
    args.tail_steps = speed.get("tail_steps", 3) if args.tail_steps is None else args.tail_steps
    args.dit_period = speed["dit_period"] if args.dit_period is None else args.dit_period
    if (args.gop - 1) % 4:
        raise GvccError(f"--gop {args.gop}: a GOP must have 4k+1 frames, at least 5 (33, 17, 9, 5)")
    if min(args.steps - args.tail_steps, args.steps - 1) < 1:
        # SdeSteps = 0 (bitstream.py 5.2): a stream without one codebook symbol, which codes nothing of the source
        raise GvccError(f"--steps {args.steps} --tail-steps {args.tail_steps}: no SDE step would carry a symbol; "
                        f"need tail steps below steps (e.g. --tail-steps {args.steps - 1})" if args.steps > 1 else
                        f"--steps {args.steps}: its one step is the final ODE step, so no step would carry a "
                        f"symbol; need --steps 2 or more")
    if args.M is not None and args.M > args.K:
        raise GvccError(f"-M {args.M} must be between 1 and K = {args.K}")
    if args.m_tail is not None and mode != "i2v":
        raise GvccError("--m-tail applies to i2v only (the atoms of its last 2 latent frames)")
    if args.residual_bits is not None and mode != "i2v":
        raise GvccError("--residual-bits applies to i2v only (the tail latent residual of each GOP)")
    if args.still_quality == "lossless" and mode == "t2v":
        raise GvccError("--still-quality lossless applies to i2v and flf2v (t2v codes no still frames)")
    if args.gops is not None and mode == "i2v" and args.gops.start:
        raise GvccError(f"--gops {args.gops.text}: i2v GOP {args.gops.start} is conditioned on the decoded last "
                        f"frame of GOP {args.gops.start - 1}, so an i2v part must start at GOP 0 (shard t2v or "
                        f"flf2v)")


def encode_video(args, video, spec_name, spec, mode, device):
    """`encode` of an opened media.VideoSource: the header, the rate target, then the GOPs as they are read."""

    tell_reading(args, video)
    n, src_h, src_w = video.n, video.height, video.width
    width, height = args.size or (src_w, src_h)

    def working(start, stop):
        """Source frames start..stop-1 at the working size: uint8 [n, height, width, 3]."""
        if (width, height) == (src_w, src_h):
            return video.read(start, stop)
        out = np.empty((stop - start, height, width, 3), np.uint8)                     # [n, height, width, 3]
        for i in range(start, stop):        # one source-size frame at a time
            out[i - start] = media.resize(video.read(i, i + 1), width, height)[0]
        return out
    if args.frames is not None and n < args.frames:
        raise GvccError(f"--frames {args.frames}: {args.input} has {n} frames; give 1..{n}")
    if mode != "t2v" and n < 2:
        raise GvccError(f"{mode} needs a clip of at least 2 frames, {args.input} has {n}")
    rate_target = args.bpp is not None or args.kbps is not None
    default_m = spec.M or (64 if width * height <= 1280 * 720 else 80)
    m = args.M if args.M is not None else 1 if rate_target else default_m      # a rate target picks M below
    if not 1 <= m <= args.K:
        raise GvccError(f"-M {m} must be between 1 and K = {args.K}" if args.M is not None else
                        f"the default M = {m} is above K = {args.K}; give -M or a larger -K")
    tail_frames = 2 if mode == "i2v" else 0
    m_tail = args.m_tail if args.m_tail is not None else \
        (min(max(spec.M_tail or 128, m), max(m, args.K // 2)) if tail_frames else m)
    if not m <= m_tail <= args.K:
        raise GvccError(f"--m-tail {m_tail} must be between M = {m} and K = {args.K}")
    residual_bits = args.residual_bits if args.residual_bits is not None else 8
    lossless = args.still_quality == "lossless"
    still_quality = 0 if lossless or mode == "t2v" else \
        int(args.still_quality if args.still_quality is not None else spec.still_quality)
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
        text_len=args.text_len, dit_period=args.dit_period)
    bitstream.check_header(hdr)             # every field within the format's limits before any work
    check_codebook(hdr)
    indices = range(bitstream.num_gops(hdr))
    if args.gops is not None:
        indices = pick_span(args.gops, "--gops", indices, "the clip")
    if args.recon:
        media.check_output(args.recon, width, height)
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
    if args.gops is not None:
        hdr = dataclasses.replace(hdr, first_gop=indices.start, gop_count=len(indices))
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
    with media.AtomicFile(args.output) as out:
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


# --------------------------------------------------------------------------------------------------
# Reading a stream: what a decoder checks before any network runs (decode, concat, info)
# --------------------------------------------------------------------------------------------------

def map_stream_file(path):
    """A stream file's bytes, memory-mapped, not read: its pages come from the page cache as they are visited.
    Nothing is checked yet: bitstream.read_header reads the header alone, open_stream walks the GOPs."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as exc:
        raise GvccError(f"{path}: {exc.strerror}") from None
    except ValueError:      # not a regular file (a pipe, a device)
        raise GvccError(f"{path}: not a regular file") from None


def decode_span(hdr, gops=None, frames=None):
    """(GOP indices, output frame range) of `decode --gops A:B` / `--frames S:E` (Span arguments; neither: the
    whole stream), checked against what the stream holds."""
    held = bitstream.gop_range(hdr)

    def frames_of(indices):
        return range(bitstream.output_frames(hdr, indices.start).start,
                     bitstream.output_frames(hdr, indices.stop - 1).stop)
    if gops is not None:
        indices = pick_span(gops, "--gops", held, "the stream")
        out = frames_of(indices)
    elif frames is not None:
        out = pick_span(frames, "--frames", frames_of(held), "the stream")
        covering = [g for g in held if bitstream.output_frames(hdr, g).start < out.stop
                    and bitstream.output_frames(hdr, g).stop > out.start]
        indices = range(covering[0], covering[-1] + 1)
    else:
        indices, out = held, frames_of(held)
    if hdr.mode == "i2v" and indices.start > 0:
        raise GvccError(f"i2v GOP {indices.start} is conditioned on the decoded last frame of GOP "
                        f"{indices.start - 1} (the chain starts at GOP 0), so i2v has no random access: decode "
                        f"--gops 0:{indices.stop} and drop the frames before {out.start}")
    return indices, out


def check_model(hdr):
    """The model spec a stream names, checked to be one this gvcc has, of the stream's mode, with a codebook it
    can build (the checks of bitstream.py section 9 on the model and generator that need no weight file)."""
    if hdr.model not in MODELS:
        raise GvccError(f"stream needs model '{hdr.model}', which this gvcc does not know")
    check_codebook(hdr)
    spec = MODELS[hdr.model]
    if spec.mode != hdr.mode:
        raise GvccError(f"{hdr.mode} stream names the {spec.mode} model {hdr.model}")
    return spec


def check_payload(stream):
    """Every check of a decoder on a stream's contents that needs no network (bitstream.py section 9), one GOP at
    a time, nothing kept: every index_rank below its limit, the lead and every still decodable at the working
    size (its declared size checked first), every residual blob well formed."""
    hdr = stream.header
    stream.check_ranks()
    if stream.lead is not None:
        decode_still(stream.indices.start - 1, "lead", bytes(stream.lead), hdr)
    lh, lw = latent_size(hdr.width, hdr.height)
    for gop in stream:
        for i, still in enumerate(gop.stills):
            decode_still(gop.index, i, bytes(still), hdr)
        if hdr.residual:
            try:
                bitstream.unpack_residual(bytes(gop.residual), 16, 16 * lh * lw, hdr.residual_bits)
            except bitstream.BitstreamError as exc:
                raise GvccError(f"GOP {gop.index}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Decoder resource limits
# --------------------------------------------------------------------------------------------------
# dav1d-style: a valid stream may still ask for more than this machine should give. Every limit is compared
# with the header's declared sizes (check_resources) before the GOPs are walked or anything is allocated.

MAX_PIXELS = 1920 * 1088           # default --max-pixels: frame size (working width x height), 1080p
MAX_FRAMES = 16384                 # default --max-frames: frames a stream holds (~9 minutes at 30 fps)
VAE_BYTES_PER_PIXEL_DIM = 210      # VAE decode working set per padded pixel per unit of VAEConfig.dim: measured
                                   # 7.6 GiB at 480x848 with dim 96 (vae.py docstring, bench/bench_vae.py)


@functools.lru_cache(maxsize=32)
def _stored_elements(path, stamp):
    """Number of tensor elements in a weight file (from its header only); stamp = (size, mtime) keys the cache."""
    return sum(math.prod(t.shape) for t in wan_model.read_header(path).values())


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


def check_resources(hdr, args, memory=None):
    """Every resource limit, from the header alone, before the stream's GOPs are walked: the frame size against
    --max-pixels and the frame count against --max-frames (where the command has them: decode, info), and, with
    memory = (spec, weights folder, precision), decode's estimated peak memory against --max-memory or the memory
    available (host memory on a CPU; on CUDA the GPU's free memory for the networks and host memory for the
    decoded frames)."""
    max_pixels, max_frames = getattr(args, "max_pixels", None), getattr(args, "max_frames", None)
    if max_pixels is not None and hdr.width * hdr.height > max_pixels:
        raise GvccError(f"{args.input}: frames of {hdr.width}x{hdr.height} exceed --max-pixels {max_pixels} "
                        f"(raise it to decode this stream)")
    if max_frames is not None and hdr.frames > max_frames:
        raise GvccError(f"{args.input}: {hdr.frames} frames exceed --max-frames {max_frames} "
                        f"(raise it to {'decode' if memory else 'read'} this stream)")
    if memory is None:
        return
    spec, weights, precision = memory
    need, parts = decode_memory(spec, hdr, model_paths(spec, weights), precision)
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


# --------------------------------------------------------------------------------------------------
# decode, concat, info, eval, make-tiny
# --------------------------------------------------------------------------------------------------

def check_decode_header(hdr, args):
    """The checks of `decode` on a stream's header, before its GOPs are walked: (model spec, precision).
    The model and codebook, the resource limits (check_resources) and what the output's container can hold."""
    try:
        spec = check_model(hdr)
    except GvccError as exc:
        raise GvccError(f"{args.input}: {exc}") from None
    precision = args.precision or PRECISIONS[hdr.precision]
    check_resources(hdr, args, memory=(spec, args.weights, precision))
    media.check_output(args.output, hdr.width, hdr.height, Fraction(hdr.fps_num, hdr.fps_den), hdr.frames)
    return spec, precision


def check_decode(stream, args):
    """Every check of `decode` that needs no network, before any work: (model spec, precision). The header's
    (check_decode_header), then the contents' (check_payload). tests/test_fuzz.py runs this on damaged streams."""
    spec, precision = check_decode_header(stream.header, args)
    check_payload(stream)
    return spec, precision


def cmd_decode(args):

    device = check_device(args.device)
    media.check_target(args.output, kind="video", overwrite=args.overwrite, inputs=[args.input])
    data = map_stream_file(args.input)
    hdr = bitstream.read_header(data)
    args.weights = weights_folder(args.weights, MODELS.get(hdr.model))
    indices, frames = decode_span(hdr, args.gops, args.frames)
    spec, precision = check_decode_header(hdr, args)
    stream = bitstream.open_stream(data)        # walks every GOP's framing: after the limits
    check_payload(stream)
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
    """Join part streams (`encode --gops`) into the stream a one-process encode writes (bitstream.py section 11).

    Each part is first checked as a decoder checks it before any network loads (framing, model and codebook,
    ranks, lead and stills decodable at the working size, residuals), so that a joined stream is one a decoder
    accepts; only the model fingerprint, which needs the weight files, is left to the decoder.
    """
    media.check_target(args.output, overwrite=args.overwrite, inputs=args.parts)
    parts = []
    for i, path in enumerate(args.parts):
        try:
            with open(path, "rb") as fh:
                parts.append(fh.read())
        except OSError as exc:
            raise GvccError(f"{path}: {exc.strerror}") from None
        try:
            stream = bitstream.open_stream(parts[-1])
            check_model(stream.header)
            check_payload(stream)
        except (bitstream.BitstreamError, GvccError) as exc:
            raise GvccError(f"concat: part {i + 1} ({path}): {exc}") from None
    try:
        data = bitstream.concat(parts)
    except bitstream.BitstreamError as exc:
        raise GvccError(f"concat: {exc}") from None
    with media.AtomicFile(args.output) as out:
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
    data = map_stream_file(args.input)
    check_resources(bitstream.read_header(data), args)      # before the GOPs are walked
    stream = bitstream.open_stream(data)
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
    settings = settings_of(hdr)
    calls = [k for k in range(hdr.steps) if settings.calls_model(k)]
    print(f"  {'schedule':18s} {settings.model_calls} model calls per GOP of {hdr.steps} steps, at steps "
          f"{', '.join(map(str, calls))}; SDE steps 0..{settings.sde_steps - 1}, ODE tail "
          f"{settings.sde_steps}..{hdr.steps - 1}")
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
    media.eval_main(args.ref, args.decoded, bitstream=args.bitstream, json_out=args.json, gop=args.gop,
                    frames=args.frames, size=args.yuv_size, fps=args.fps, limited_range=args.limited_range,
                    resize_to=args.size, use_lpips=not args.no_lpips, overwrite=args.overwrite,
                    picture=args.picture, progress=lambda msg: print(msg, file=sys.stderr))


def cmd_make_tiny(args):
    """Write the tiny random-weight models (real key layout and dtypes) to a folder (made if missing; its
    other files are left alone)."""


    files = {
        "tiny_t2v.safetensors": lambda: wan_model.tiny_weights("dit", "tiny-t2v", seed=1),
        "tiny_i2v.safetensors": lambda: wan_model.tiny_weights("dit", "tiny-i2v", seed=2),
        "tiny_flf2v.safetensors": lambda: wan_model.tiny_weights("dit", "tiny-flf2v", seed=3),
        "tiny_umt5.safetensors": lambda: wan_model.tiny_weights("t5", "tiny", seed=4),
        "tiny_clip_vision.safetensors": lambda: wan_model.tiny_weights("clip", "tiny", seed=5),
        "tiny_vae.safetensors": lambda: vae_mod.tiny_weights(seed=6),
    }
    media.check_target(args.dir, kind="folder")
    made = not os.path.isdir(args.dir)
    if made:
        try:
            os.mkdir(args.dir)
        except OSError as exc:
            raise GvccError(f"{args.dir}: cannot make the folder ({exc.strerror})") from None
    else:
        for name in files:
            media.check_target(os.path.join(args.dir, name), overwrite=args.overwrite)
    try:
        for name, make in files.items():
            path = os.path.join(args.dir, name)
            media.atomic_write(path, save({k: v.contiguous() for k, v in make().items()}))
            print(f"gvcc: wrote {path}", file=sys.stderr)
    except BaseException:
        if made:                            # nothing left behind: the folder was ours
            shutil.rmtree(args.dir, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------
# Arguments: the domain of every value, checked as the command line is parsed
# --------------------------------------------------------------------------------------------------
# Every argument that takes a value has one of these types (or a list of choices), so that a value outside its
# domain is refused in one line before anything is opened. What depends on the input (a range against the
# stream's GOPs, M against K) is checked next, in the commands, still before any work. tests/test_arguments.py
# derives its hostile values from these objects, so an argument added with one of them is fuzzed unlisted.

class Int:
    """An integer from lo to hi (hi None: no upper bound), or one of `words` (returned as the word)."""

    def __init__(self, lo, hi=None, words=()):
        self.lo, self.hi, self.words = lo, hi, tuple(words)

    def describe(self):
        span = f"from {self.lo} to {self.hi}" if self.hi is not None else f"of at least {self.lo}"
        return f"an integer {span}" + "".join(f" or '{w}'" for w in self.words)

    def __call__(self, text):
        if text in self.words:
            return text
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < self.lo or (self.hi is not None and value > self.hi):
            raise argparse.ArgumentTypeError(f"'{text}' is not {self.describe()}")
        return value


class Float:
    """A finite number from lo (above lo when `above`) to hi (hi None: no upper bound); nan and inf are refused,
    and -0 reads as 0."""

    def __init__(self, lo, hi=None, above=False):
        self.lo, self.hi, self.above = lo, hi, above

    def describe(self):
        return (f"a finite number {'above' if self.above else 'of at least'} {self.lo:g}"
                + (f" and at most {self.hi:g}" if self.hi is not None else ""))

    def __call__(self, text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > self.lo if self.above else value >= self.lo)
                and (self.hi is None or value <= self.hi)):
            raise argparse.ArgumentTypeError(f"'{text}' is not {self.describe()}")
        return value + 0.0


@dataclass(frozen=True)
class SpanArg:
    text: str                   # as given, for messages
    unit: str                   # "GOPs" or "frames"
    start: int | None           # None: from the first one held
    stop: int | None            # None: through the last one held


class Span:
    """START:STOP of `unit` (GOPs, frames), Python-style: STOP excluded; an end left out means the first or past
    the last. Refused here when malformed, negative, reversed or empty (an empty selection is an error, as
    ffmpeg's is); pick_span then checks it against what the stream or clip holds."""

    def __init__(self, unit):
        self.unit = unit

    def __call__(self, text):
        parts = text.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            start, stop = (int(p) if p.strip() else None for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not START:STOP (Python-style: STOP excluded; e.g. "
                                             f"0:4, 2: or :8)") from None
        if (start is not None and start < 0) or (stop is not None and stop < 0):
            raise argparse.ArgumentTypeError(f"'{text}': START and STOP number {self.unit} from 0 (no negative "
                                             f"indices)")
        if stop is not None and (start or 0) >= stop:
            raise argparse.ArgumentTypeError(f"'{text}' selects no {self.unit}: START must be below STOP (an empty "
                                             f"range is an error)")
        return SpanArg(text, self.unit, start, stop)


def pick_span(arg, what, have, where):
    """The range of `have` (GOP or frame numbers) that a Span argument selects; GvccError stating the valid
    range when it reaches outside `have` or selects nothing there."""
    start = have.start if arg.start is None else arg.start
    stop = have.stop if arg.stop is None else arg.stop
    if not have.start <= start < stop <= have.stop:
        raise GvccError(f"{what} '{arg.text}': {where} holds {arg.unit} {have.start}:{have.stop}; give START:STOP "
                        f"within it (STOP excluded; an empty range is an error)")
    return range(start, stop)


class Size:
    """WIDTHxHEIGHT in pixels (media.parse_size: 1 to 16384 per side, or to `limit`), returned as (width, height)."""

    def __init__(self, limit=None):
        self.limit = limit

    def __call__(self, text):
        try:
            width, height = media.parse_size(text)
        except media.MediaError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if self.limit is not None and max(width, height) > self.limit:
            raise argparse.ArgumentTypeError(f"size {width}x{height} is out of range (1 to {self.limit} pixels per "
                                             f"side)")
        return width, height


class Rate:
    """A frame rate, 25 or 30000/1001 (media.parse_fps: above 0, at most 1000), returned as a Fraction."""

    def __call__(self, text):
        try:
            return media.parse_fps(text)
        except media.MediaError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


class Md5:
    """An md5 digest: 32 hexadecimal digits, returned in lower case."""

    def __call__(self, text):
        if len(text) != 32 or any(ch not in "0123456789abcdefABCDEF" for ch in text):
            raise argparse.ArgumentTypeError(f"'{text}' is not an md5 (32 hexadecimal digits)")
        return text.lower()


class Path:
    """A file or folder name, not empty. role: 'input', or the kind of output that media.check_target checks
    before any work ('file', 'video': a file or a PNG folder by its name, 'folder')."""

    def __init__(self, role):
        self.role = role

    def __call__(self, text):
        if not text:
            raise argparse.ArgumentTypeError("an empty name")
        return text


class Text:
    """Free text, any string (a prompt, a model or device name checked by the command)."""

    def __call__(self, text):
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse with gvcc's error format: one `gvcc: error:` line, exit status 1 as for any other refused input
    (dav1d's and ffmpeg's), no usage dump."""

    def error(self, message):
        self.exit(1, f"gvcc: error: {self.prog}: {message} (see {self.prog} --help)\n")


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so every partly written output is removed on the way out."""


def _terminate(signum, frame):
    raise Terminated()


def build_parser():
    p = ArgumentParser(prog="gvcc.py", description="GVCC: zero-shot generative video coding with Wan2.1.")
    p.add_argument("--version", action="version", version=f"gvcc {__version__} (bitstream format version "
                                                            f"{__import__('bitstream').VERSION})")
    sub = p.add_subparsers(dest="command", required=True)

    def add_input_flags(q):
        q.add_argument("--yuv-size", type=Size(), metavar="WxH",
                       help="frame size of a raw .yuv input (I420, 8-bit)")
        q.add_argument("--fps", type=Rate(), help="frame rate of inputs without one (.yuv; images: 25 as in ffmpeg), "
                                                  "or to override the file's (e.g. 30000/1001)")
        media.add_range_arguments(q)

    def add_runtime_flags(q):
        q.add_argument("--weights", type=Path("input"),
                       help="folder with the weight files (default: demo/ in gvcc's folder for the demo models, "
                            "else $GVCC_WEIGHTS or ./weights)")
        q.add_argument("--device", type=Text(), help="torch device (default: cuda if available, else cpu)")
        q.add_argument("--precision", choices=("fp32", "bf16"),
                       help="network precision (default: fp32 on cpu, bf16 on cuda; decode: the encoder's)")
        q.add_argument("--quiet", action="store_true", help="no progress or notes on stderr (warnings stay)")
        media.add_overwrite_arguments(q)

    def add_max_frames(q):
        q.add_argument("--max-frames", type=Int(1), default=MAX_FRAMES, metavar="N",
                       help=f"refuse streams of more frames, before reading their GOPs (default {MAX_FRAMES})")

    e = sub.add_parser("encode", help="video -> GVCC stream",
                       description="Inputs are recognised by content: a .y4m (also '-' for stdin), a raw .yuv "
                                   "(--yuv-size, --fps), a folder of PNGs, a printf pattern like frames/%06d.png "
                                   "or a single image, or any video file the bundled ffmpeg reads (.mp4, .mov, "
                                   ".mkv, .avi, ...). Outputs are never written over an input, nor over an "
                                   "existing file without -y.")
    e.add_argument("input", type=Path("input"),
                   help="video, y4m ('-' for stdin), raw .yuv, PNG folder, %%06d.png pattern or image")
    e.add_argument("output", type=Path("file"))
    e.add_argument("--mode", choices=("t2v", "i2v", "flf2v"), help="default: the model's mode (t2v)")
    e.add_argument("--model", type=Text(), help=f"one of {', '.join(MODELS)} (default per mode: {DEFAULT_MODEL})")
    rate = e.add_mutually_exclusive_group()
    rate.add_argument("-M", type=Int(1, bitstream.MAX_M),
                      help="atoms per step and latent frame (default 64, 80 above 720p; demo models 8)")
    e.add_argument("-K", type=Int(bitstream.MIN_K, bitstream.MAX_K),
                   help="atoms per codebook (default 16384; demo models 1024)")
    e.add_argument("--codebook", choices=tuple(CODEBOOKS), default="iid",
                   help="iid: the paper's i.i.d. Gaussian atoms (default); shift: circular shifts of one "
                        "Gaussian vector, matched by FFT (much faster to encode, K <= D)")
    e.add_argument("--m-tail", type=Int(1, bitstream.MAX_M),
                   help="i2v: atoms in the last 2 latent frames (default 128; demo models 16)")
    e.add_argument("--speed", choices=tuple(SPEEDS), default="paper",
                   help="model-call schedule, written into the stream: paper (the DiT at every step, 20 steps), "
                        "fast (the DiT at every third SDE step, the others reuse its clean estimate: 9 calls per "
                        "GOP), fastest (every other step of 8: 5 calls) (default paper)")
    e.add_argument("--dit-period", type=Int(1, bitstream.MAX_DIT_PERIOD),
                   help="SDE steps k with k %% P != 0 reuse the last clean estimate (default: the --speed preset's, "
                        "paper 1, fast 3, fastest 2)")
    e.add_argument("--steps", type=Int(1, bitstream.MAX_STEPS), help="sampler steps T (default 20; --speed fastest 8)")
    e.add_argument("--tail-steps", type=Int(0, bitstream.MAX_STEPS),
                   help="final ODE steps without bits, fewer than --steps (default 3; --speed fastest 1)")
    # both stored in thousandths (bitstream.py: g_scale_q, shift_q); g_scale 0 would make every symbol useless
    e.add_argument("--g-scale", type=Float(0.001, bitstream.MAX_Q / 1000), default=3.0,
                   help="SDE diffusion scale, g_t = g t^2 (default 3)")
    e.add_argument("--shift", type=Float(0.001, bitstream.MAX_Q / 1000),
                   help="time-grid shift (default 3; i2v/flf2v above 480 working rows: 5, the authors' rule)")
    e.add_argument("--gop", type=Int(bitstream.MIN_GOP_FRAMES, bitstream.MAX_GOP_FRAMES), default=33,
                   help="frames per GOP, 4k+1 (default 33)")
    e.add_argument("--prompt", type=Text(), default="", help="text prompt, stored in the stream (default empty)")
    e.add_argument("--size", type=Size(bitstream.MAX_SIZE), metavar="WxH",
                   help="resize (Lanczos) to this working size; decoder outputs it")
    e.add_argument("--seed", type=Int(0, 2 ** 32 - 1), default=42, help="generator seed, 0..2^32-1 (default 42)")
    e.add_argument("--still-quality", type=Int(0, 100, words=("lossless",)),
                   help="i2v/flf2v: AVIF quality of the still frames, 0..100, or 'lossless' (PNG stills: the I2V "
                        "first frame then equals the source, as in the authors' runs) (default 60; demo models 40)")
    e.add_argument("--residual-bits", type=int, choices=(0, 4, 8, 16),
                   help="i2v: bits of the tail latent residual quantiser, 0 = no residual (default 8)")
    e.add_argument("--text-len", type=Int(1, bitstream.MAX_TEXT_LEN), default=512,
                   help="rows of the padded text context (default 512 as upstream Wan; 226 reproduces the "
                        "authors' T2V runs); stored in the stream")
    e.add_argument("--frames", type=Int(1, bitstream.MAX_FRAMES), help="code only the first N frames (at most the "
                                                                        "clip's)")
    rate.add_argument("--bpp", type=Float(0, above=True),
                      help="target bits per source pixel of the whole file (header, stills, framing and codebook; "
                           "an i2v tail residual is known only after coding): picks M for you")
    rate.add_argument("--kbps", type=Float(0, above=True),
                      help="target kbit/s of the whole file at the source frame rate: picks M for you")
    e.add_argument("--recon", type=Path("video"), metavar="FILE",
                   help="also write the encoder's reconstruction (= the decoder's)")
    e.add_argument("--gops", type=Span("GOPs"), metavar="A:B",
                   help="encode only GOPs A..B-1 into a part stream, for `concat` (t2v, flf2v; i2v parts start at 0)")
    add_input_flags(e)
    add_runtime_flags(e)

    d = sub.add_parser("decode", help="GVCC stream -> video (.mp4, .y4m or a PNG folder)")
    d.add_argument("input", type=Path("input"))
    d.add_argument("output", type=Path("video"))
    d.add_argument("--verify", type=Md5(), metavar="MD5",
                   help="fail unless the md5 of the decoded RGB frames is MD5")
    d.add_argument("--max-pixels", type=Int(1), default=MAX_PIXELS, metavar="N",
                   help=f"refuse streams whose frames have more pixels (default {MAX_PIXELS}, 1920x1088)")
    add_max_frames(d)
    d.add_argument("--max-memory", type=Float(0, above=True), metavar="GIB",
                   help="refuse streams whose decode is estimated to need more memory (default: the memory "
                        "available now)")
    span = d.add_mutually_exclusive_group()
    span.add_argument("--gops", type=Span("GOPs"), metavar="A:B",
                      help="decode only GOPs A..B-1 (t2v, flf2v; `info` lists them)")
    span.add_argument("--frames", type=Span("frames"), metavar="S:E",
                      help="decode only frames S..E-1 (the GOPs that hold them)")
    add_runtime_flags(d)

    i = sub.add_parser("info", help="header and rate breakdown of a stream")
    i.add_argument("input", type=Path("input"))
    add_max_frames(i)

    v = sub.add_parser("eval", help="quality of a decoded video against its reference")
    v.add_argument("ref", type=Path("input"), help="reference video (.y4m, .yuv, .mp4/.mkv/.webm, PNG directory)")
    v.add_argument("decoded", type=Path("input"), help="decoded video, same kinds")
    v.add_argument("--bitstream", type=Path("input"), help="coded file: gives the rate (bpp, kbps) against the "
                                                           "source, and a gvcc stream its GOPs")
    v.add_argument("--json", type=Path("file"), help="also write the full report (per frame, per GOP, sequence) "
                                                     "as JSON")
    v.add_argument("--gop", type=Int(1), help="frames per GOP for the per-GOP means (default: the gvcc stream's "
                                              "own GOPs, shared boundary frames in both, else 33)")
    v.add_argument("--frames", type=Int(1), help="compare only the first N frames of both videos (at most theirs)")
    v.add_argument("--picture", type=Path("file"), metavar="PNG",
                   help="also write a PNG of the middle frame: the reference beside the decoded frame")
    v.add_argument("--size", type=Size(), metavar="WxH", help="compare at this working size (Lanczos-resize "
                                                              "whichever video is not at it, e.g. the reference to "
                                                              "the paper's 1280x720)")
    add_input_flags(v)
    media.add_overwrite_arguments(v)
    v.add_argument("--no-lpips", action="store_true", help="skip LPIPS even if it is available")

    c = sub.add_parser("concat", help="join part streams (encode --gops) into one stream")
    c.add_argument("parts", type=Path("input"), nargs="+", metavar="PART", help="part streams, in GOP order")
    c.add_argument("output", type=Path("file"))
    media.add_overwrite_arguments(c)

    t = sub.add_parser("make-tiny", help="write tiny random-weight models (real key layout) to a folder")
    t.add_argument("dir", type=Path("folder"), help="the folder (made if missing; other files in it stay)")
    media.add_overwrite_arguments(t)
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
    """Run one command line (sys.argv[1:] when argv is None); returns the exit status. Nothing is raised for a
    refused input: one `gvcc: error:` line on stderr and status 1."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:           # a refused argument (its line is printed), or --help / --version
        return exc.code if isinstance(exc.code, int) else 1
    if args.command in ("encode", "decode"):
        fixed_mmap_threshold()
    handlers = {"encode": cmd_encode, "decode": cmd_decode, "info": cmd_info, "eval": cmd_eval,
                "concat": cmd_concat, "make-tiny": cmd_make_tiny}
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
    sys.modules.setdefault("gvcc", sys.modules[__name__])     # kernels.py's `import gvcc` finds this module
    status = main()
    # Done, the output published (or the error reported). A Ctrl-C from now on would only break the
    # interpreter's exit hooks (a traceback from an atexit callback, with exit status 0), so it is ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(status)
