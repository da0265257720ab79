"""vae.py against independent references.

* diffusers' AutoencoderKLWan (checked bit-exact against upstream WanVAE_, wan.md header table), fed the same
  tiny random weights: written as a bf16 safetensors file in the official layout, read by gvcc's loader and
  renamed with wan.md 5.3's mapping.  Every tensor is random, including the attention `proj` that upstream
  initialises to zero.
* the whole-sequence closed form of wan.md 2.6, written here without any cache, against the streamed path.
* the numbers of wan.md 2.7 (layout, parameter count) and 2.8 (normalisation).
Tolerances: REL_DIFFUSERS is max|gvcc - ref| / max|ref| in float32 (measured: encode 3e-7, decode 3e-6);
in float64 the two agree to 1e-14, so the float32 differences are rounding, not a different computation.
"""
import inspect
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import vae
from wan_model import WeightsError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL_DIFFUSERS = 1e-5  # float32 re-implementation vs diffusers: same math, different op order/padding
REL_CLOSED_FORM = 1e-5  # streamed vs whole-sequence closed form
TINY = vae.VAE_CONFIGS["tiny"]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def frames(t, h, w, seed):
    """A random video in [-1, 1] from an explicit generator: [3, t, h, w]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((3, t, h, w), generator=g) * 2 - 1


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "tiny_vae.safetensors"
    save_file(vae.tiny_weights(seed=0), str(path))
    return str(path)


@pytest.fixture(scope="module")
def params(tiny_file):
    return vae.load_vae(tiny_file, TINY)


# ==================================================================================================
# Layout, dtype, loader
# ==================================================================================================

def test_official_layout_and_parameter_count():
    shapes = vae.vae_param_shapes(vae.VAE_CONFIGS["wan2.1"])
    assert len(shapes) == 194
    assert sum(math.prod(s) for s in shapes.values()) == 126_892_531  # wan.md 2.1
    spot = {  # wan.md 2.7
        "encoder.conv1.weight": (96, 3, 3, 3, 3),
        "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
        "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
        "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
        "encoder.downsamples.8.time_conv.bias": (384,),
        "encoder.middle.1.norm.gamma": (384, 1, 1),
        "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
        "encoder.head.2.weight": (32, 384, 3, 3, 3),
        "conv1.weight": (32, 32, 1, 1, 1),
        "conv2.weight": (16, 16, 1, 1, 1),
        "decoder.conv1.weight": (384, 16, 3, 3, 3),
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
        "decoder.upsamples.7.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
        "decoder.upsamples.14.residual.6.weight": (96, 96, 3, 3, 3),
        "decoder.head.0.gamma": (96, 1, 1, 1),
        "decoder.head.2.weight": (3, 96, 3, 3, 3),
    }
    for key, shape in spot.items():
        assert shapes[key] == shape, key
    assert "decoder.upsamples.11.time_conv.weight" not in shapes  # the last upsample is 2d only


def test_tiny_weights_layout_and_dtype():
    w = vae.tiny_weights(seed=0)
    assert {k: tuple(v.shape) for k, v in w.items()} == vae.vae_param_shapes(TINY)
    assert all(v.dtype == vae.VAE_FILE_DTYPE for v in w.values())
    assert all(v.float().abs().max() > 0 for v in w.values())  # nothing left at zero (attention proj included)
    assert torch.equal(w["decoder.middle.1.proj.weight"], vae.tiny_weights(seed=0)["decoder.middle.1.proj.weight"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_load_upcasts_to_float32(tmp_path, dtype):
    w = {k: v.to(dtype) for k, v in vae.tiny_weights(seed=1).items()}
    path = str(tmp_path / "v.safetensors")
    save_file(w, path)
    loaded = vae.load_vae(path, TINY)
    assert set(loaded) == set(w)
    for k, v in loaded.items():
        assert v.dtype == torch.float32 and torch.equal(v, w[k].float()), k


def test_loader_errors_name_the_key(tmp_path):
    w = {k: v for k, v in vae.tiny_weights(seed=0).items()}
    missing = dict(w)
    del missing["decoder.upsamples.7.time_conv.weight"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match=r"decoder\.upsamples\.7\.time_conv\.weight"):
        vae.load_vae(str(tmp_path / "missing.safetensors"), TINY)

    wrong = dict(w)
    wrong["encoder.middle.1.to_qkv.weight"] = torch.zeros(96, 16, 1, 1, dtype=vae.VAE_FILE_DTYPE)  # tiny C is 32
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(WeightsError, match=r"encoder\.middle\.1\.to_qkv\.weight.*\[96, 16, 1, 1\]"):
        vae.load_vae(str(tmp_path / "wrong.safetensors"), TINY)

    # a tiny file read as the real model: the first mismatching key is named, with both shapes
    save_file(w, str(tmp_path / "tiny.safetensors"))
    with pytest.raises(WeightsError, match=r"key '[\w.]+' has shape \[\d+(, \d+)*\], expected \[\d+"):
        vae.load_vae(str(tmp_path / "tiny.safetensors"), vae.VAE_CONFIGS["wan2.1"])


# ==================================================================================================
# Normalisation (wan.md 2.8)
# ==================================================================================================

def test_normalisation_constants():
    assert vae.LATENT_MEAN == (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
    assert vae.LATENT_STD == (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
    from diffusers import AutoencoderKLWan  # its defaults are the released config's numbers
    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert tuple(defaults["latents_mean"].default) == vae.LATENT_MEAN
    assert tuple(defaults["latents_std"].default) == vae.LATENT_STD
    mu = torch.randn(16, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(vae.LATENT_MEAN).view(-1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.LATENT_STD).view(-1, 1, 1, 1)
    assert torch.equal(vae.normalize_latent(mu), (mu - mean) * inv_std)  # upstream's arithmetic, bit for bit
    assert torch.equal(vae.denormalize_latent(mu), mu / inv_std + mean)


# ==================================================================================================
# Against diffusers' AutoencoderKLWan
# ==================================================================================================

def to_diffusers_key(key):
    """Official VAE key -> diffusers AutoencoderKLWan key (wan.md 5.3)."""
    parts = key.split(".")
    if parts[0] in ("conv1", "conv2"):  # top level 1x1x1 convs
        return ".".join([{"conv1": "quant_conv", "conv2": "post_quant_conv"}[parts[0]]] + parts[1:])
    side, name, rest = parts[0], parts[1], parts[2:]
    if name == "conv1":
        new = ["conv_in"]
    elif name == "head":
        new, rest = [{"0": "norm_out", "2": "conv_out"}[rest[0]]], rest[1:]
    elif name == "middle":
        new, rest = {"0": ["mid_block", "resnets", "0"], "1": ["mid_block", "attentions", "0"],
                     "2": ["mid_block", "resnets", "1"]}[rest[0]], rest[1:]
    elif name == "downsamples":
        new, rest = ["down_blocks", rest[0]], rest[1:]
    else:  # upsamples: 3 residual blocks then an upsampler per level
        level, j = divmod(int(rest[0]), 4)
        new, rest = ["up_blocks", str(level)] + (["resnets", str(j)] if j < 3 else ["upsamplers", "0"]), rest[1:]
    out = ".".join([side] + new + rest)
    for a, b in ((".residual.0.", ".norm1."), (".residual.2.", ".conv1."), (".residual.3.", ".norm2."),
                 (".residual.6.", ".conv2."), (".shortcut.", ".conv_shortcut.")):
        out = out.replace(a, b)
    return out


@pytest.fixture(scope="module")
def diffusers_vae(params):
    from diffusers import AutoencoderKLWan
    model = AutoencoderKLWan(base_dim=TINY.dim, z_dim=TINY.z_dim, dim_mult=list(TINY.dim_mult),
                             num_res_blocks=TINY.num_res_blocks, attn_scales=[],
                             temperal_downsample=list(TINY.temporal_downsample), dropout=0.0).eval()
    state = {to_diffusers_key(k): v for k, v in params.items()}
    model.load_state_dict(state, strict=True)
    return model


@pytest.mark.parametrize("t", [1, 5, 13])
def test_encode_matches_diffusers(params, diffusers_vae, t):
    x = frames(t, 32, 48, seed=t)
    with torch.no_grad():
        mu = diffusers_vae.encode(x[None]).latent_dist.mode()[0]  # [16, F, 4, 6], not normalised
    ours = vae.encode(params, TINY, x)
    assert ours.shape == (16, (t - 1) // 4 + 1, 4, 6)
    assert rel_err(ours, vae.normalize_latent(mu)) <= REL_DIFFUSERS


@pytest.mark.parametrize("n", [1, 2, 4])
def test_decode_matches_diffusers(params, diffusers_vae, n):
    z = torch.randn((16, n, 4, 6), generator=torch.Generator().manual_seed(10 + n))
    with torch.no_grad():
        ref = diffusers_vae.decode(vae.denormalize_latent(z)[None]).sample[0]  # [3, T, 32, 48], clamped
    ours = vae.decode(params, TINY, z)
    assert ours.shape == (3, 4 * (n - 1) + 1, 32, 48)
    assert (ours.abs() < 1).float().mean() > 0.5  # most values are not clamped, so the check means something
    assert rel_err(ours, ref) <= REL_DIFFUSERS


def test_float64_matches_diffusers_to_rounding(params, diffusers_vae, monkeypatch):
    """In float64 the two agree to rounding error, so the float32 differences above are rounding too.

    diffusers' WanUpsample runs in float32 whatever the input dtype (upstream's does too, for fp16/bf16
    runs); here it is made to stay in float64, as gvcc's does.
    """
    import copy
    from diffusers.models.autoencoders import autoencoder_kl_wan
    monkeypatch.setattr(autoencoder_kl_wan.WanUpsample, "forward", torch.nn.Upsample.forward)
    model = copy.deepcopy(diffusers_vae).double()
    p64 = {k: v.double() for k, v in params.items()}
    x = frames(13, 32, 48, seed=13).double()
    z = torch.randn((16, 4, 4, 6), generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    with torch.no_grad():
        mu = model.encode(x[None]).latent_dist.mode()[0]
        ref = model.decode(vae.denormalize_latent(z)[None]).sample[0]
    assert rel_err(vae.encode(p64, TINY, x), vae.normalize_latent(mu)) <= 1e-12
    assert rel_err(vae.decode(p64, TINY, z), ref) <= 1e-12


# ==================================================================================================
# Streaming vs the whole-sequence closed form (wan.md 2.6), no cache anywhere
# ==================================================================================================

def closed_conv(x, w, b):
    """Causal conv over the whole sequence: 2 zero frames in front, same padding in space."""
    pad = w.shape[-1] // 2
    return F.conv3d(F.pad(x, (pad, pad, pad, pad, 2, 0))[None], w, b)[0]


def closed_norm_silu(x, gamma):
    return F.silu(x / x.norm(dim=0, keepdim=True).clamp_min(1e-12) * x.shape[0] ** 0.5 * gamma)


def closed_norm_conv(p, x, norm, conv):
    """silu(rms_norm(x)) then the causal conv, over the whole sequence (norm, conv: key prefixes)."""
    return closed_conv(closed_norm_silu(x, p[norm + ".gamma"]), p[conv + ".weight"], p[conv + ".bias"])


def closed_res(p, P, x):
    h = x
    if P + ".shortcut.weight" in p:
        h = F.conv3d(x[None], p[P + ".shortcut.weight"], p[P + ".shortcut.bias"])[0]
    y = closed_norm_conv(p, x, P + ".residual.0", P + ".residual.2")
    return closed_norm_conv(p, y, P + ".residual.3", P + ".residual.6") + h


def closed_block(p, kind, P, x):
    if kind == "res":
        return closed_res(p, P, x)
    if kind == "attn":
        return vae.attention_block(p, P, x)  # frame-wise, no cache
    if kind in ("down2d", "down3d"):
        x = vae.downsample_space(p, P, x)
        if kind == "down3d":  # [frame 0] ++ windows (0,1,2), (2,3,4), ...
            x = torch.cat([x[:, :1], F.conv3d(x[None], p[P + ".time_conv.weight"], p[P + ".time_conv.bias"],
                                              stride=(2, 1, 1))[0]], dim=1)
        return x
    if kind == "up3d":  # frame 0 zeroed in a copy, causal time_conv, outputs of frames 1.. interleaved
        c = x.shape[0]
        z = x.clone()
        z[:, 0] = 0
        y = closed_conv(z, p[P + ".time_conv.weight"], p[P + ".time_conv.bias"])[:, 1:]  # [2C, T-1, H, W]
        y = torch.stack((y[:c], y[c:]), dim=2).reshape(c, -1, *x.shape[2:])  # [C, 2(T-1), H, W]
        x = torch.cat([x[:, :1], y], dim=1)
    return vae.upsample_space(p, P, x)


def closed_encode(p, cfg, video):
    x = closed_conv(video, p["encoder.conv1.weight"], p["encoder.conv1.bias"])
    for kind, P, _, _ in vae.encoder_plan(cfg):
        x = closed_block(p, kind, P, x)
    x = closed_norm_conv(p, x, "encoder.head.0", "encoder.head.2")
    x = F.conv3d(x[None], p["conv1.weight"], p["conv1.bias"])[0]
    return vae.normalize_latent(x[:cfg.z_dim])


def closed_decode(p, cfg, z):
    x = F.conv3d(vae.denormalize_latent(z)[None], p["conv2.weight"], p["conv2.bias"])[0]
    x = closed_conv(x, p["decoder.conv1.weight"], p["decoder.conv1.bias"])
    for kind, P, _, _ in vae.decoder_plan(cfg):
        x = closed_block(p, kind, P, x)
    x = closed_norm_conv(p, x, "decoder.head.0", "decoder.head.2")
    return x.clamp(-1, 1)


def test_streaming_equals_closed_form(params):
    x = frames(13, 32, 48, seed=3)
    assert rel_err(vae.encode(params, TINY, x), closed_encode(params, TINY, x)) <= REL_CLOSED_FORM
    z = torch.randn((16, 4, 4, 6), generator=torch.Generator().manual_seed(4))
    assert rel_err(vae.decode(params, TINY, z), closed_decode(params, TINY, z)) <= REL_CLOSED_FORM


# ==================================================================================================
# The streaming API: chunk by chunk, explicit cache
# ==================================================================================================

def cache_bytes(cache):
    return sum(v.numel() * v.element_size() for v in cache.values())


def test_stream_steps_and_cache(params):
    x = frames(17, 32, 48, seed=5)
    whole = vae.encode(params, TINY, x)
    cache, sizes, z = None, [], []
    for f in range(5):
        chunk = x[:, :1] if f == 0 else x[:, 4 * f - 3:4 * f + 1]
        given = cache
        latent, cache = vae.encode_chunk(params, TINY, chunk, cache)
        assert given is None or given == {}  # the old cache was used up, not kept alive
        z.append(latent)
        sizes.append((sorted(cache), cache_bytes(cache)))
    assert torch.equal(torch.cat(z, dim=1), whole)
    assert all(s == sizes[1] for s in sizes[1:])  # the state does not grow with the number of frames

    out, cache, sizes = [], None, []
    for f in range(whole.shape[1]):
        video, cache = vae.decode_frame(params, TINY, whole[:, f:f + 1], cache)
        assert video.shape[1] == (1 if f == 0 else 4)
        out.append(video)
        sizes.append((sorted(cache), cache_bytes(cache)))
    assert torch.equal(torch.cat(out, dim=1), vae.decode(params, TINY, whole))
    assert all(s == sizes[1] for s in sizes[1:])

    # a used-up cache is refused instead of silently restarting the sequence
    _, cache = vae.decode_frame(params, TINY, whole[:, :1], None)
    used = cache
    vae.decode_frame(params, TINY, whole[:, 1:2], used)
    with pytest.raises(ValueError, match="never reuse"):
        vae.decode_frame(params, TINY, whole[:, 1:2], used)
    with pytest.raises(ValueError, match="4 frame"):
        vae.encode_chunk(params, TINY, x[:, :1], vae.encode_chunk(params, TINY, x[:, :1], None)[1])


def test_input_checks(params):
    with pytest.raises(ValueError, match="4k\\+1"):
        vae.encode(params, TINY, frames(4, 32, 48, 0))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(params, TINY, frames(5, 36, 48, 0))
    with pytest.raises(ValueError, match=r"\[16, F, h, w\]"):
        vae.decode(params, TINY, torch.zeros(4, 2, 4, 6))


def test_tiny_33_frames_64x64(params):
    x = frames(33, 64, 64, seed=6)
    z = vae.encode(params, TINY, x)
    y = vae.decode(params, TINY, z)
    assert z.shape == (16, 9, 8, 8) and y.shape == (3, 33, 64, 64)
    assert y.min() >= -1 and y.max() <= 1 and torch.isfinite(z).all()


# ==================================================================================================
# Spatial tiling
# ==================================================================================================

def test_tile_spans_cover_and_overlap():
    assert vae.tile_spans(10, 16, 4) == [(0, 10)]
    assert vae.tile_spans(20, 8, 2) == [(0, 8), (6, 14), (12, 20)]
    for n, t, o in [(60, 32, 8), (106, 32, 8), (33, 16, 4)]:
        spans = vae.tile_spans(n, t, o)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(b - a == t for a, b in spans)
        assert all(s1[1] - s0[0] <= 2 * t and s1[0] <= s0[1] - o for s0, s1 in zip(spans, spans[1:]))


def test_tiling_arguments_checked(params):
    x = frames(1, 32, 48, seed=0)
    for tile, overlap in [(60, 16), (64, 12), (32, 32), ((32, 40), 40)]:
        with pytest.raises(ValueError, match="tile"):
            vae.encode(params, TINY, x, tile=tile, overlap=overlap)


def test_tiling_exact_when_one_tile_covers_the_frame(params):
    x = frames(5, 32, 48, seed=7)
    assert torch.equal(vae.encode(params, TINY, x, tile=(32, 48), overlap=16), vae.encode(params, TINY, x))
    assert torch.equal(vae.encode(params, TINY, x, tile=64, overlap=32), vae.encode(params, TINY, x))
    z = torch.randn((16, 2, 4, 6), generator=torch.Generator().manual_seed(8))
    assert torch.equal(vae.decode(params, TINY, z, tile=(32, 48), overlap=16), vae.decode(params, TINY, z))


def rms_rel(a, b):
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def test_tiling_close_to_untiled(params):
    """Tiled results approach the untiled ones as tiles and overlaps grow.

    A random-weight VAE is far less local than the trained one (and the tiny frame is only a few receptive
    fields wide), so the bounds are loose; what matters is that the error shrinks with the tile.
    Measured: 64/32 px -> encode 0.058, decode 0.18; 112/64 px -> encode 0.014, decode 0.048 (RMS, relative).
    """
    g = torch.Generator().manual_seed(9)
    x = F.interpolate(torch.rand((1, 3, 5, 12, 16), generator=g) * 2 - 1, size=(5, 96, 128), mode="trilinear")[0]
    z = vae.encode(params, TINY, x)  # a smooth clip, as video is
    y = vae.decode(params, TINY, z)
    err = {}
    for tile, overlap in [(64, 32), (112, 64)]:
        err[tile] = (rms_rel(vae.encode(params, TINY, x, tile=tile, overlap=overlap), z),
                     rms_rel(vae.decode(params, TINY, z, tile=tile, overlap=overlap), y))
    assert err[64][0] < 0.1 and err[64][1] < 0.3, err
    assert err[112][0] < err[64][0] / 2 and err[112][1] < err[64][1] / 2, err


# ==================================================================================================
# Real dimensions: memory
# ==================================================================================================

REAL_CLIP = (5, 240, 424)  # frames, height, width: half of 480p each way; 5x480x848 takes ~90 s on 2 cores


def test_real_dims_memory():
    """dim 96 / z 16 random weights: encode + decode a short clip in a fresh process; report peak RSS.

    Measured on 2 cores: 5x240x424 18 s, 2.5 GiB.  Full 480x848 (bench/bench_vae.py): 6.2 GiB encode,
    7.6 GiB decode, the same for 17, 33 and 65 frames apart from the clip itself.
    """
    t, h, w = REAL_CLIP
    code = textwrap.dedent(f"""
        import resource, time, torch, vae
        from wan_model import random_weights
        cfg = vae.VAE_CONFIGS["wan2.1"]
        p = random_weights(vae.vae_param_shapes(cfg), seed=0)
        x = torch.rand((3, {t}, {h}, {w}), generator=torch.Generator().manual_seed(0)) * 2 - 1
        start = time.perf_counter()
        z = vae.encode(p, cfg, x)
        y = vae.decode(p, cfg, z)
        assert z.shape == (16, {(t - 1) // 4 + 1}, {h // 8}, {w // 8}) and y.shape == x.shape
        assert torch.isfinite(y).all()
        print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr[-2000:]
    seconds, peak_gib = map(float, out.stdout.split())
    print(f"real dims {t}x{h}x{w}: encode+decode {seconds:.1f} s, peak RSS {peak_gib:.2f} GiB")
    assert peak_gib < 4.0
