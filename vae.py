"""The Wan2.1 causal 3D VAE as pure functions over the official weight dict, streamed with an explicit cache.

What it computes
----------------
encode: video [3, T, H, W] in [-1, 1], T = 4k+1, H and W multiples of 8
        -> normalised posterior mean [16, k+1, H/8, W/8]          (4x in time, 8x in space)
decode: normalised latent [16, F, h, w] -> video [3, 4(F-1)+1, 8h, 8w], clamped to [-1, 1]
Frame 0 is coded on its own (an image); every later latent frame stands for 4 video frames.

Shape letters: C channels, t frames of the current chunk, H W pixel height/width at the current level,
z latent channels (16), F latent frames, h w latent height/width.  Tensors carry no batch dimension.

Architecture (../shared/spec/wan.md section 2, keys in 2.7)
------------------------------------------------------------
Every 3x3x3 convolution is *causal* in time: it sees the current frame and the two before it, with zero
frames before the start.  Blocks: RMS norm (L2-normalise over channels, times sqrt(C) and a gain), SiLU,
ResidualBlock (norm, SiLU, conv, norm, SiLU, conv, plus a 1x1x1 shortcut when channels change), a single-head
AttentionBlock over the pixels of each frame (middle of encoder and decoder only), and Resample blocks that
halve (encoder) or double (decoder) H and W, some of them also time (`time_conv`).

Streaming and the cache (wan.md 2.5)
------------------------------------
The encoder takes frame 0 alone and then 4 frames at a time; the decoder takes one latent frame at a time.
Between chunks the only state is the cache: a plain dict, keyed by the name of the layer it feeds
(e.g. "decoder.upsamples.4.residual.2"), holding the last frames of that layer's input:
  * causal 3x3x3 conv and the decoder's `time_conv`: the last 2 frames of its input, zero frames in front
    of frame 0 included.  The conv runs on cat(cache, chunk); at the start (no cache) on cat(2 zeros, chunk).
  * encoder `time_conv` (stride 2 in time): the last frame of its input.  The first chunk has no cache and
    passes through unchanged (frame 0 is never merged with anything); later chunks run the conv on
    cat(cache, chunk): windows (0,1,2), (2,3,4), ...
  * decoder `time_conv`: the first chunk has no cache, skips the conv (1 latent frame -> 1 frame) and leaves
    zero frames as cache, so the next chunk's conv sees zeros where frame 0 was.
encode_chunk / decode_frame take the previous cache (None for the first chunk) and return the next one.
The cache passed in is used up: each entry is removed as it is read, so the old and the new cache are never
both alive (at 480p the decoder's cache is ~3.8 GB); a used-up cache is refused, never silently restarted.
Nothing else carries over, and the cache is bounded (at most 2 frames per conv), so the working memory of
encode and decode does not depend on the number of frames; only the input and the output grow with it.

Where gvcc departs from the upstream code, on purpose (same results up to float32 rounding)
-----------------------------------------------------------------------------------------------
* Upstream keeps a list of cache slots and a running slot counter; gvcc names slots by their conv.
* Upstream marks the decoder's first `time_conv` chunk with the string "Rep"; gvcc stores zero frames,
  which is exactly what the "Rep" branch computes with.
* A conv's first cache keeps its zero padding frame (2 frames instead of 1); the next chunk's conv input
  is the same frames either way.
* Norm and SiLU write straight into the conv's time-padded input buffer, the 2D resampling runs frame by
  frame, and activations are stored channels-last (C fastest, see new_frames): same values, fewer
  full-size temporaries and faster convs on CPU (bench/bench_vae.py, 33 frames 480x848, 2 threads: peak
  RSS 6.2 GiB encode / 7.6 GiB decode against diffusers' 7.2 / 9.2 GiB, about a third less CPU time).
* Spatial zero padding is passed to the conv (`padding=`) instead of a separate F.pad: same sums, one
  fewer copy of the largest tensors.
* The 1x1x1 `conv1` (encoder output) and `conv2` (decoder input) run per chunk instead of once over the
  whole sequence; they do not mix frames.
Checked against diffusers' AutoencoderKLWan (itself checked bit-exact against upstream) in tests/test_vae.py.

Precision: the reference path is float32 throughout (upstream runs the VAE in float32); 16-bit files are
upcast on load.  encode/decode compute in the dtype of the weights they are given (tests also use float64).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wan_model import WeightsError, load_weights, random_weights  # noqa: F401  (WeightsError: for callers)


# ==================================================================================================
# Configuration
# ==================================================================================================

@dataclass(frozen=True)
class VAEConfig:
    dim: int = 96                                 # channels of the first encoder level (and last decoder level)
    z_dim: int = 16                               # latent channels; the encoder head emits 2*z_dim (mean, log-variance)
    dim_mult: tuple = (1, 2, 4, 4)                # channel multiplier per level, encoder order
    num_res_blocks: int = 2                       # residual blocks per encoder level (decoder levels: one more)
    temporal_downsample: tuple = (False, True, True)  # per encoder downsampling: also halve time (decoder: reversed)


VAE_CONFIGS = {
    "wan2.1": VAEConfig(),
    "tiny": VAEConfig(dim=8),  # same key names; z_dim stays 16 so the per-channel normalisation applies
    "demo": VAEConfig(dim=16),  # gvcc's small trained VAE (bench/train_demo.py): levels 16, 32, 64, 64
}

# dtype of the real file gvcc fetches (Comfy-Org wan_2.1_vae.safetensors, 16-bit); tiny files use the same.
# bf16 is inferred, not read from that file's header: Comfy-Org's qwen_image_vae.safetensors (the same 194
# official keys and shapes) is BF16 with exactly the byte size of a BF16 file of these shapes, while the Wan
# file carries ~9 kB of extra header that hides the 194-byte BF16/F16 difference.  Nothing depends on it:
# the loader takes F32, F16 and BF16 alike and upcasts to float32.
VAE_FILE_DTYPE = torch.bfloat16

# Latent normalisation, per channel (wan.md 2.8; the same numbers as upstream WanVAE and diffusers' config).
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


# ==================================================================================================
# Layer layout: which block sits at which key prefix
# ==================================================================================================
# Kinds: "res" ResidualBlock, "attn" AttentionBlock, "down2d"/"down3d" encoder Resample (H, W halved; 3d also
# halves time), "up2d"/"up3d" decoder Resample (H, W doubled, channels halved; 3d also doubles time).
# Entries: (kind, key prefix, input channels, output channels).  For the real config:
#   encoder.downsamples.0-10: R(96,96) R(96,96) down2d | R(96,192) R(192,192) down3d | R(192,384) R(384,384)
#                             down3d | R(384,384) R(384,384);   encoder.middle.0-2: R, attn, R (384)
#   decoder.middle.0-2: R, attn, R (384);   decoder.upsamples.0-14: R(384,384) x3 up3d(384->192) |
#                             R(192,384) R(384,384) x2 up3d(384->192) | R(192,192) x3 up2d(192->96) | R(96,96) x3

def encoder_plan(cfg):
    """Encoder body in forward order (after encoder.conv1, before encoder.head)."""
    dims = [cfg.dim * m for m in (1,) + tuple(cfg.dim_mult)]  # [96, 96, 192, 384, 384]
    plan, i = [], 0
    for level, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(cfg.num_res_blocks):
            plan.append(("res", f"encoder.downsamples.{i}", c_in, c_out))
            c_in, i = c_out, i + 1
        if level < len(cfg.dim_mult) - 1:
            kind = "down3d" if cfg.temporal_downsample[level] else "down2d"
            plan.append((kind, f"encoder.downsamples.{i}", c_out, c_out))
            i += 1
    c = dims[-1]
    plan += [("res", "encoder.middle.0", c, c), ("attn", "encoder.middle.1", c, c), ("res", "encoder.middle.2", c, c)]
    return plan


def decoder_plan(cfg):
    """Decoder body in forward order (after decoder.conv1, before decoder.head)."""
    dims = [cfg.dim * cfg.dim_mult[-1]] + [cfg.dim * m for m in reversed(cfg.dim_mult)]  # [384, 384, 384, 192, 96]
    temporal_upsample = tuple(reversed(cfg.temporal_downsample))
    c = dims[0]
    plan = [("res", "decoder.middle.0", c, c), ("attn", "decoder.middle.1", c, c), ("res", "decoder.middle.2", c, c)]
    i = 0
    for level, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
        if level > 0:
            c_in //= 2  # every Resample before this level halved the channels
        for _ in range(cfg.num_res_blocks + 1):
            plan.append(("res", f"decoder.upsamples.{i}", c_in, c_out))
            c_in, i = c_out, i + 1
        if level < len(cfg.dim_mult) - 1:
            kind = "up3d" if temporal_upsample[level] else "up2d"
            plan.append((kind, f"decoder.upsamples.{i}", c_out, c_out // 2))
            i += 1
    return plan


# ==================================================================================================
# Weights
# ==================================================================================================

def _block_shapes(kind, prefix, c_in, c_out):
    P = prefix
    if kind == "res":
        # residual = Sequential(0 RMS_norm, 1 SiLU, 2 CausalConv3d, 3 RMS_norm, 4 SiLU, 5 Dropout, 6 CausalConv3d)
        shapes = {P + ".residual.0.gamma": (c_in, 1, 1, 1),
                  P + ".residual.2.weight": (c_out, c_in, 3, 3, 3), P + ".residual.2.bias": (c_out,),
                  P + ".residual.3.gamma": (c_out, 1, 1, 1),
                  P + ".residual.6.weight": (c_out, c_out, 3, 3, 3), P + ".residual.6.bias": (c_out,)}
        if c_in != c_out:
            shapes.update({P + ".shortcut.weight": (c_out, c_in, 1, 1, 1), P + ".shortcut.bias": (c_out,)})
        return shapes
    if kind == "attn":
        return {P + ".norm.gamma": (c_in, 1, 1),
                P + ".to_qkv.weight": (3 * c_in, c_in, 1, 1), P + ".to_qkv.bias": (3 * c_in,),
                P + ".proj.weight": (c_in, c_in, 1, 1), P + ".proj.bias": (c_in,)}
    # Resample: resample = Sequential(0 ZeroPad2d or Upsample, 1 Conv2d 3x3); 3d kinds add time_conv
    shapes = {P + ".resample.1.weight": (c_out, c_in, 3, 3), P + ".resample.1.bias": (c_out,)}
    if kind == "down3d":
        shapes.update({P + ".time_conv.weight": (c_in, c_in, 3, 1, 1), P + ".time_conv.bias": (c_in,)})
    if kind == "up3d":
        shapes.update({P + ".time_conv.weight": (2 * c_in, c_in, 3, 1, 1), P + ".time_conv.bias": (2 * c_in,)})
    return shapes


def vae_param_shapes(cfg):
    """{key: shape} of the VAE in the official layout (194 tensors for every config of this family)."""
    z, c_enc, c_dec = cfg.z_dim, cfg.dim * cfg.dim_mult[-1], cfg.dim
    shapes = {"encoder.conv1.weight": (cfg.dim, 3, 3, 3, 3), "encoder.conv1.bias": (cfg.dim,)}
    for kind, prefix, c_in, c_out in encoder_plan(cfg):
        shapes.update(_block_shapes(kind, prefix, c_in, c_out))
    # encoder.head = Sequential(0 RMS_norm, 1 SiLU, 2 CausalConv3d)
    shapes.update({"encoder.head.0.gamma": (c_enc, 1, 1, 1),
                   "encoder.head.2.weight": (2 * z, c_enc, 3, 3, 3), "encoder.head.2.bias": (2 * z,),
                   "conv1.weight": (2 * z, 2 * z, 1, 1, 1), "conv1.bias": (2 * z,),
                   "conv2.weight": (z, z, 1, 1, 1), "conv2.bias": (z,),
                   "decoder.conv1.weight": (c_enc, z, 3, 3, 3), "decoder.conv1.bias": (c_enc,)})
    for kind, prefix, c_in, c_out in decoder_plan(cfg):
        shapes.update(_block_shapes(kind, prefix, c_in, c_out))
    shapes.update({"decoder.head.0.gamma": (c_dec, 1, 1, 1),
                   "decoder.head.2.weight": (3, c_dec, 3, 3, 3), "decoder.head.2.bias": (3,)})
    return shapes


# The diffusers layout (AutoencoderKLWan, the vae/ folder of the Wan-AI/Wan2.1-*-Diffusers repositories) names the
# same 194 tensors by other module paths (wan.md 5.3, diffusers' scripts/convert_wan_to_diffusers.py). Its
# block paths -> the official ones, in the order of encoder_plan and decoder_plan; inside a block, attention
# and resampling keep their names and a residual block renames its layers (VAE_DIFFUSERS_RESIDUAL).
def _diffusers_blocks(cfg):
    """{diffusers block path: (official block path, kind)} for every block of a VAE of this family."""
    out = {"quant_conv": ("conv1", None), "post_quant_conv": ("conv2", None)}
    for side in ("encoder", "decoder"):
        out.update({f"{side}.conv_in": (f"{side}.conv1", None), f"{side}.norm_out": (f"{side}.head.0", None),
                    f"{side}.conv_out": (f"{side}.head.2", None),
                    f"{side}.mid_block.resnets.0": (f"{side}.middle.0", "res"),
                    f"{side}.mid_block.attentions.0": (f"{side}.middle.1", "attn"),
                    f"{side}.mid_block.resnets.1": (f"{side}.middle.2", "res")})
    for kind, prefix, _, _ in encoder_plan(cfg):                  # one flat list: down_blocks.i = downsamples.i
        out[prefix.replace("downsamples", "down_blocks")] = (prefix, kind)
    level, j = 0, 0                                               # up_blocks.{level}.resnets.{j}, then .upsamplers.0
    for kind, prefix, _, _ in decoder_plan(cfg):
        if prefix.startswith("decoder.upsamples."):
            if kind == "res":
                out[f"decoder.up_blocks.{level}.resnets.{j}"] = (prefix, kind)
                j += 1
            else:
                out[f"decoder.up_blocks.{level}.upsamplers.0"] = (prefix, kind)
                level, j = level + 1, 0
    return out


VAE_DIFFUSERS_BLOCKS = _diffusers_blocks(VAEConfig())        # block paths do not depend on the widths (dim)
VAE_DIFFUSERS_RESIDUAL = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
                          "conv_shortcut": "shortcut"}


def official_name(key):
    """The official name of a VAE tensor stored under `key`, in either layout (VAE_DIFFUSERS_BLOCKS). No official
    name starts with a diffusers block path, so official files pass through unchanged."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        block = ".".join(parts[:cut])
        if block in VAE_DIFFUSERS_BLOCKS:
            official, kind = VAE_DIFFUSERS_BLOCKS[block]
            inner = parts[cut:]
            if kind == "res" and inner[0] in VAE_DIFFUSERS_RESIDUAL:
                inner = [VAE_DIFFUSERS_RESIDUAL[inner[0]]] + inner[1:]
            return ".".join([official] + inner)
    return key


def load_vae(path, cfg):
    """Weights from a safetensors file (official or diffusers names) as {official key: float32 tensor}
    (WeightsError on any mismatch)."""
    return load_weights(path, vae_param_shapes(cfg), dtype=torch.float32, rename=official_name)


def tiny_weights(seed=0):
    """Random weights of the tiny preset, official layout, in the dtype of the real file (VAE_FILE_DTYPE)."""
    return random_weights(vae_param_shapes(VAE_CONFIGS["tiny"]), seed, dtype=VAE_FILE_DTYPE)


# ==================================================================================================
# Latent normalisation
# ==================================================================================================
# Upstream stores (mean, 1/std) as float32 tensors and computes (mu - mean) * (1/std) and z / (1/std) + mean;
# gvcc keeps that exact arithmetic so its latents are bit-compatible with upstream's.

def _latent_scale(z_dim):
    if z_dim != len(LATENT_MEAN):
        raise ValueError(f"latent normalisation is defined for {len(LATENT_MEAN)} channels, not {z_dim}")
    mean = torch.tensor(LATENT_MEAN, dtype=torch.float32).view(-1, 1, 1, 1)       # [z, 1, 1, 1]
    inv_std = 1.0 / torch.tensor(LATENT_STD, dtype=torch.float32).view(-1, 1, 1, 1)  # [z, 1, 1, 1]
    return mean, inv_std


def normalize_latent(mu):
    """Posterior mean -> the latent the DiT works with: (mu - mean) * (1 / std), per channel."""
    mean, inv_std = _latent_scale(mu.shape[0])
    return (mu - mean) * inv_std  # [z, F, h, w]


def denormalize_latent(z):
    """Inverse of normalize_latent: z / (1 / std) + mean, per channel."""
    mean, inv_std = _latent_scale(z.shape[0])
    return z / inv_std + mean  # [z, F, h, w]


# ==================================================================================================
# Storage: channels-last frames, the cache
# ==================================================================================================

def new_frames(like, c, t, h, w):
    """Uninitialised [C, t, H, W] stored channels-last (C varies fastest in memory).

    oneDNN convolves that layout as it is; from the plain layout it makes blocked copies of the input and
    the output of every conv (about 1.4 GB more for a full-resolution 480p conv, and ~20% slower).
    """
    return torch.empty((1, c, t, h, w), dtype=like.dtype, device=like.device,
                       memory_format=torch.channels_last_3d)[0]


def as_batch(x):
    """x [C, ...] as a batch of one [1, C, ...] for torch's conv / pad / interpolate, keeping its layout.

    x[None] would give the new dimension the stride C; torch then no longer recognises a channels-last x as
    channels-last and converts it (a full-size copy in and out of every op).
    """
    return x.as_strided((1,) + tuple(x.shape), (x.numel(),) + tuple(x.stride()))


def take(cache, key):
    """The previous chunk's cache entry for `key`, removed from `cache`; None on the first chunk (cache None).

    Removing it frees the old entry as soon as its replacement exists, so one cache is alive, not two.
    """
    if cache is None:
        return None
    if key not in cache:
        raise ValueError(f"cache has no entry {key!r}: pass None for the first chunk and never reuse a cache")
    return cache.pop(key)


# ==================================================================================================
# Layers (one function per kind; x is channel-first [C, t, H, W])
# ==================================================================================================

def rms_norm(x, gamma, out=None):
    """Wan's RMS_norm: L2-normalise over channels (dim 0), times sqrt(C) and the gain gamma [C, 1, 1, 1].

    (Not mean-square + eps: x / max(||x||, 1e-12) * sqrt(C), as F.normalize computes it.)  out: optional
    tensor to write the result into.
    """
    norm = torch.linalg.vector_norm(x, dim=0, keepdim=True).clamp_min_(1e-12)  # [1, t, H, W]
    y = torch.div(x, norm, out=out)  # [C, t, H, W]
    return y.mul_(x.shape[0] ** 0.5).mul_(gamma)


def causal_conv3d(x, weight, bias, past, gamma=None):
    """Conv with kernel 3 in time, causal (frame i sees frames i-2..i), same-padded in space.

    x [Ci, t, H, W]; past: None (start of the sequence: 2 zero frames instead) or the previous cache entry
    [Ci, 2, H, W].  gamma: if given, the conv reads silu(rms_norm(x, gamma)), as every residual branch and
    head does; it is written straight into the conv's input buffer (no separate full-size copy).
    Returns (y [Co, t, H, W], the new cache entry: the last 2 frames of the padded input).
    """
    c, t, hh, ww = x.shape
    inp = new_frames(x, c, 2 + t, hh, ww)  # [Ci, 2 + t, H, W]: 2 frames of history, then x
    if past is None:
        inp[:, :2].zero_()
    else:
        inp[:, :2] = past
    if gamma is None:
        inp[:, 2:] = x
    else:
        F.silu(rms_norm(x, gamma, out=inp[:, 2:]), inplace=True)
    pad = weight.shape[-1] // 2  # 1 for 3x3x3 kernels, 0 for the (3, 1, 1) time_conv
    y = F.conv3d(as_batch(inp), weight, bias, padding=(0, pad, pad))[0]  # [Co, t, H, W]
    return y, inp[:, -2:].clone()  # clone: do not keep the whole buffer alive through a view


def pointwise_conv3d(x, weight, bias):
    """1x1x1 conv (shortcut, conv1, conv2): mixes channels only, never looks at other frames."""
    return F.conv3d(as_batch(x), weight, bias)[0]  # [Co, t, H, W]


def residual_block(p, prefix, x, cache, new_cache):
    """ResidualBlock: x [Ci, t, H, W] -> [Co, t, H, W]; its two causal convs read and write the cache."""
    if prefix + ".shortcut.weight" in p:
        h = pointwise_conv3d(x, p[prefix + ".shortcut.weight"], p[prefix + ".shortcut.bias"])  # [Co, t, H, W]
    else:
        h = x
    # residual.0 RMS_norm, .1 SiLU, .2 CausalConv3d
    key = prefix + ".residual.2"
    y, new_cache[key] = causal_conv3d(x, p[key + ".weight"], p[key + ".bias"], take(cache, key),
                                      gamma=p[prefix + ".residual.0.gamma"])  # [Co, t, H, W]
    # residual.3 RMS_norm, .4 SiLU, .5 Dropout(0.0) (nothing at inference), .6 CausalConv3d
    key = prefix + ".residual.6"
    y, new_cache[key] = causal_conv3d(y, p[key + ".weight"], p[key + ".bias"], take(cache, key),
                                      gamma=p[prefix + ".residual.3.gamma"])  # [Co, t, H, W]
    return y.add_(h)


def attention_block(p, prefix, x):
    """AttentionBlock: single-head self-attention over the H*W pixels of each frame, plus the input.

    Frame-wise, so it needs no cache.  x [C, t, H, W] -> [C, t, H, W].
    """
    c, t, hh, ww = x.shape
    y = rms_norm(x, p[prefix + ".norm.gamma"].unsqueeze(-1))  # gamma [C, 1, 1] -> [C, 1, 1, 1]
    y = y.transpose(0, 1)  # [t, C, H, W]
    qkv = F.conv2d(y, p[prefix + ".to_qkv.weight"], p[prefix + ".to_qkv.bias"])  # [t, 3C, H, W]
    qkv = qkv.reshape(t, 1, 3 * c, hh * ww).transpose(2, 3).contiguous()  # [t, 1, H*W, 3C]
    q, k, v = qkv.chunk(3, dim=-1)  # [t, 1, H*W, C] each: channels [0:C], [C:2C], [2C:3C]
    o = F.scaled_dot_product_attention(q, k, v)  # [t, 1, H*W, C], scale 1/sqrt(C)
    o = o.squeeze(1).transpose(1, 2).reshape(t, c, hh, ww)  # [t, C, H, W]
    o = F.conv2d(o, p[prefix + ".proj.weight"], p[prefix + ".proj.bias"])  # [t, C, H, W]
    return o.transpose(0, 1) + x  # [C, t, H, W]


def downsample_space(p, prefix, x):
    """resample.0 ZeroPad2d(right 1, bottom 1), resample.1 Conv2d 3x3 stride 2, frame by frame.

    x [C, t, H, W] -> [C, t, H/2, W/2]
    """
    w, b = p[prefix + ".resample.1.weight"], p[prefix + ".resample.1.bias"]
    out = new_frames(x, w.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2)  # [C, t, H/2, W/2]
    for i in range(x.shape[1]):  # one frame at a time: the padded copy is one frame, not the chunk
        out[:, i] = F.conv2d(F.pad(as_batch(x[:, i]), (0, 1, 0, 1)), w, b, stride=2)[0]  # [C, H/2, W/2]
    return out


def downsample_time(p, prefix, x, cache, new_cache):
    """Encoder time_conv: kernel 3, stride 2 over cat(last frame of the previous chunk, x).

    First chunk (no cache): x passes through, so frame 0 stays alone.  x [C, t, H, W] -> [C, t/2, H, W].
    """
    key = prefix + ".time_conv"
    past = take(cache, key)
    new_cache[key] = x[:, -1:].clone()  # [C, 1, H, W]
    if past is None:
        return x
    inp = new_frames(x, x.shape[0], 1 + x.shape[1], *x.shape[2:])  # [C, 1 + t, H, W]
    inp[:, :1], inp[:, 1:] = past, x
    return F.conv3d(as_batch(inp), p[key + ".weight"], p[key + ".bias"], stride=(2, 1, 1))[0]  # [C, t/2, H, W]


def upsample_time(p, prefix, x, cache, new_cache):
    """Decoder time_conv: causal conv C -> 2C, the two halves interleaved as frames a0 b0 a1 b1 ...

    First chunk (no cache): x passes through (1 latent frame -> 1 frame) and zero frames become the cache,
    standing in for frame 0 (upstream's "Rep" marker).  x [C, t, H, W] -> [C, 2t, H, W].
    """
    key = prefix + ".time_conv"
    past = take(cache, key)
    if past is None:
        new_cache[key] = x.new_zeros((x.shape[0], 2) + x.shape[2:])  # [C, 2, H, W]
        return x
    y, new_cache[key] = causal_conv3d(x, p[key + ".weight"], p[key + ".bias"], past)  # [2C, t, H, W]
    c, t = x.shape[:2]
    out = new_frames(x, c, 2 * t, *x.shape[2:])  # [C, 2t, H, W]
    out[:, 0::2], out[:, 1::2] = y[:c], y[c:]  # frames a0 b0 a1 b1 ...
    return out


def upsample_space(p, prefix, x):
    """resample.0 Upsample x2 "nearest-exact", resample.1 Conv2d 3x3 (halves channels), frame by frame.

    x [C, t, H, W] -> [C/2, t, 2H, 2W]
    """
    w, b = p[prefix + ".resample.1.weight"], p[prefix + ".resample.1.bias"]
    out = new_frames(x, w.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3])  # [C/2, t, 2H, 2W]
    for i in range(x.shape[1]):  # one frame at a time: the upsampled copy is one frame, not the chunk
        up = F.interpolate(as_batch(x[:, i]), scale_factor=2.0, mode="nearest-exact")  # [1, C, 2H, 2W]
        out[:, i] = F.conv2d(up, w, b, padding=1)[0]  # [C/2, 2H, 2W]
    return out


def apply_block(p, kind, prefix, x, cache, new_cache):
    """One entry of encoder_plan / decoder_plan."""
    if kind == "res":
        return residual_block(p, prefix, x, cache, new_cache)
    if kind == "attn":
        return attention_block(p, prefix, x)
    if kind == "down2d":
        return downsample_space(p, prefix, x)
    if kind == "down3d":
        return downsample_time(p, prefix, downsample_space(p, prefix, x), cache, new_cache)
    if kind == "up2d":
        return upsample_space(p, prefix, x)
    if kind == "up3d":
        return upsample_space(p, prefix, upsample_time(p, prefix, x, cache, new_cache))
    raise ValueError(f"unknown block kind {kind!r}")


# ==================================================================================================
# Streaming steps: one chunk in, the next cache out
# ==================================================================================================

def encode_chunk(params, cfg, chunk, cache):
    """Encode one chunk: frame 0 alone (cache None), then 4 frames at a time.

    chunk [3, 1 or 4, H, W] -> (normalised latent frame [z, 1, H/8, W/8], cache for the next chunk).
    The cache passed in is used up (its entries are removed as they are read); keep a copy if you need it.
    """
    p, new_cache = params, {}
    want = 1 if cache is None else 4
    if chunk.shape[1] != want:
        raise ValueError(f"encode_chunk: expected a chunk of {want} frame(s), got {chunk.shape[1]}")
    x, new_cache["encoder.conv1"] = causal_conv3d(chunk, p["encoder.conv1.weight"], p["encoder.conv1.bias"],
                                                  take(cache, "encoder.conv1"))  # [96, t, H, W]
    for kind, prefix, _, _ in encoder_plan(cfg):
        x = apply_block(p, kind, prefix, x, cache, new_cache)  # ends at [384, 1, H/8, W/8]
    # encoder.head: 0 RMS_norm, 1 SiLU, 2 CausalConv3d
    x, new_cache["encoder.head.2"] = causal_conv3d(x, p["encoder.head.2.weight"], p["encoder.head.2.bias"],
                                                   take(cache, "encoder.head.2"),
                                                   gamma=p["encoder.head.0.gamma"])  # [2z, 1, h, w]
    x = pointwise_conv3d(x, p["conv1.weight"], p["conv1.bias"])  # [2z, 1, h, w]: mean, then log-variance
    return normalize_latent(x[:cfg.z_dim]), new_cache  # [z, 1, h, w]; the posterior's mode, no sampling


def decode_frame(params, cfg, latent, cache):
    """Decode one latent frame: the first (cache None) gives 1 video frame, every later one 4.

    latent [z, 1, h, w] normalised -> (video [3, 1 or 4, 8h, 8w] clamped to [-1, 1], cache for the next
    frame).  The cache passed in is used up (its entries are removed as they are read).
    """
    p, new_cache = params, {}
    x = pointwise_conv3d(denormalize_latent(latent), p["conv2.weight"], p["conv2.bias"])  # [z, 1, h, w]
    x, new_cache["decoder.conv1"] = causal_conv3d(x, p["decoder.conv1.weight"], p["decoder.conv1.bias"],
                                                  take(cache, "decoder.conv1"))  # [384, 1, h, w]
    for kind, prefix, _, _ in decoder_plan(cfg):
        x = apply_block(p, kind, prefix, x, cache, new_cache)  # ends at [96, 1 or 4, 8h, 8w]
    # decoder.head: 0 RMS_norm, 1 SiLU, 2 CausalConv3d
    x, new_cache["decoder.head.2"] = causal_conv3d(x, p["decoder.head.2.weight"], p["decoder.head.2.bias"],
                                                   take(cache, "decoder.head.2"),
                                                   gamma=p["decoder.head.0.gamma"])  # [3, 1 or 4, 8h, 8w]
    return x.clamp_(-1.0, 1.0), new_cache


# ==================================================================================================
# Whole clips, optionally in spatial tiles
# ==================================================================================================
# Tiling (optional, for frames whose working set does not fit): the frame is cut into overlapping tiles,
# each tile is streamed through all its frames with its own cache (tile outer, time inner, so only one
# tile's cache is alive), and the tiles are cross-faded into the output:
#   * tiles are `tile` pixels square (or (height, width)), consecutive tiles overlap by at least `overlap`
#     pixels, the last tile of a row/column is moved back to end at the frame edge (no thin leftovers);
#   * each tile is weighted by a ramp over the overlap on every side that has a neighbour (1 inside,
#     falling linearly towards the tile edge) and the output is sum(weight * tile) / sum(weight);
#     encode blends latents (ramp over overlap/8 latent pixels), decode blends pixels (clamped tiles).
# Exactness trade-off: tiling is an approximation.  Every convolution near a tile border sees zero padding
# instead of the neighbouring pixels, and the attention in the middle blocks sees only its tile, so tiled
# results differ from untiled ones everywhere a tile does not see the whole frame, most near the seams; the
# cross-fade hides the seams but does not make them exact.  When one tile covers the frame the result is
# bit-identical to the untiled path.  Use the largest tile that fits; gvcc's bitstreams never depend on it.

def _check_tiling(tile, overlap):
    th, tw = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if th % 8 or tw % 8 or overlap % 8 or th <= 0 or tw <= 0 or overlap < 0:
        raise ValueError(f"tile {tile} and overlap {overlap} must be positive multiples of 8")
    if overlap >= min(th, tw):
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    return th // 8, tw // 8, overlap // 8


def tile_spans(n, tile, overlap):
    """[(start, stop)] covering range(n) with windows of `tile`, consecutive ones overlapping >= overlap."""
    if tile >= n:
        return [(0, n)]
    starts = list(range(0, n - tile, tile - overlap)) + [n - tile]
    return [(s, s + tile) for s in starts]


def _ramp(span, n, overlap, scale):
    """Cross-fade weight of one tile along one axis, at `scale` samples per latent pixel: [scale * len]."""
    (a, b), ramp = span, overlap * scale
    pos = torch.arange(scale * (b - a), dtype=torch.float64)  # [L]
    w = torch.ones_like(pos)
    if a > 0:
        w = torch.minimum(w, (pos + 1) / (ramp + 1))
    if b < n:
        w = torch.minimum(w, (scale * (b - a) - pos) / (ramp + 1))
    return w.to(torch.float32)


def _blend_tiles(n_h, n_w, tile, overlap, scale, out, run):
    """out += w * run(y0, y1, x0, x1) over all tiles (latent-unit spans), then out /= sum of w."""
    th, tw, ov = _check_tiling(tile, overlap)
    wsum = torch.zeros(out.shape[-2:])  # [H, W] at output resolution
    for ys in tile_spans(n_h, th, ov):
        for xs in tile_spans(n_w, tw, ov):
            w = _ramp(ys, n_h, ov, scale)[:, None] * _ramp(xs, n_w, ov, scale)[None, :]  # [th*s, tw*s]
            region = (Ellipsis, slice(scale * ys[0], scale * ys[1]), slice(scale * xs[0], scale * xs[1]))
            out[region] += run(*ys, *xs) * w
            wsum[region[1:]] += w
    return out.div_(wsum)


def _encode_stream(params, cfg, video):
    t = video.shape[1]
    latent = video.new_empty((cfg.z_dim, (t - 1) // 4 + 1, video.shape[2] // 8, video.shape[3] // 8))  # [z, F, h, w]
    cache = None
    for f in range(latent.shape[1]):
        chunk = video[:, :1] if f == 0 else video[:, 4 * f - 3:4 * f + 1]  # frames 0 | 1-4 | 5-8 | ...
        latent[:, f:f + 1], cache = encode_chunk(params, cfg, chunk, cache)
    return latent


def _decode_stream(params, cfg, latent):
    n = latent.shape[1]
    video = latent.new_empty((3, 4 * (n - 1) + 1, 8 * latent.shape[2], 8 * latent.shape[3]))  # [3, T, H, W]
    cache = None
    for f in range(n):
        frames, cache = decode_frame(params, cfg, latent[:, f:f + 1], cache)
        video[:, max(0, 4 * f - 3):4 * f + 1] = frames  # frame 0 | 1-4 | 5-8 | ...
    return video


def encode(params, cfg, video, tile=None, overlap=64):
    """Video [3, T, H, W] in [-1, 1] (T = 4k+1; H, W multiples of 8) -> normalised latent [z, k+1, H/8, W/8].

    tile: None (whole frames) or a tile size in pixels, int or (height, width), multiples of 8; see Tiling.
    """
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"encode: video must be [3, T, H, W], got {list(video.shape)}")
    t, hh, ww = video.shape[1:]
    if t % 4 != 1 or hh % 8 or ww % 8:
        raise ValueError(f"encode: need 4k+1 frames and H, W multiples of 8, got T={t}, H={hh}, W={ww}")
    video = video.to(params["encoder.conv1.weight"].dtype)  # compute in the weights' dtype (float32 reference)
    if tile is None:
        return _encode_stream(params, cfg, video)
    out = video.new_zeros((cfg.z_dim, (t - 1) // 4 + 1, hh // 8, ww // 8))  # [z, F, h, w]
    return _blend_tiles(hh // 8, ww // 8, tile, overlap, 1, out, lambda y0, y1, x0, x1: _encode_stream(
        params, cfg, video[:, :, 8 * y0:8 * y1, 8 * x0:8 * x1]))


def decode(params, cfg, latent, tile=None, overlap=64):
    """Normalised latent [z, F, h, w] -> video [3, 4(F-1)+1, 8h, 8w] clamped to [-1, 1].

    tile: None (whole frames) or a tile size in output pixels, int or (height, width), multiples of 8.
    """
    if latent.dim() != 4 or latent.shape[0] != cfg.z_dim or latent.shape[1] < 1:
        raise ValueError(f"decode: latent must be [{cfg.z_dim}, F, h, w], got {list(latent.shape)}")
    latent = latent.to(params["decoder.conv1.weight"].dtype)
    if tile is None:
        return _decode_stream(params, cfg, latent)
    n, h, w = latent.shape[1:]
    out = latent.new_zeros((3, 4 * (n - 1) + 1, 8 * h, 8 * w))  # [3, T, H, W]
    return _blend_tiles(h, w, tile, overlap, 8, out, lambda y0, y1, x0, x1: _decode_stream(
        params, cfg, latent[:, :, y0:y1, x0:x1]))
