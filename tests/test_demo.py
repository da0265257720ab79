"""The demo models: they load as real weights do, their training code stays alive, and the codec does what it is for
with them: on a held-out clip, quality rises with the rate, coding beats sampling without bits by a wide margin, and
the decoder reproduces the encoder's reconstruction in all three modes."""
import os
import sys
import tempfile

import numpy as np
import pytest
import torch

import gvcc
import media
import vae
import wan_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import bench_demo  # noqa: E402
import train_demo  # noqa: E402

DEMO = gvcc.DEMO_WEIGHTS


def demo_paths(mode):
    return gvcc.model_paths(gvcc.MODELS[f"demo-{mode}"], DEMO)


# --------------------------------------------------------------------------------------------------
# The files: official layout, the same loaders and fingerprint as real weights
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["t2v", "i2v", "flf2v"])
def test_demo_weights_are_wan_files_that_load_through_the_real_loaders(mode):
    paths = demo_paths(mode)
    dit_cfg = wan_model.DIT_CONFIGS[f"demo-{mode}"]
    stored = wan_model.read_header(paths["dit"])
    assert {k: tuple(v.shape) for k, v in stored.items()} == wan_model.dit_param_shapes(dit_cfg)
    assert {v.dtype for v in stored.values()} == {"F16"}
    stored = wan_model.read_header(paths["vae"])
    assert {k: tuple(v.shape) for k, v in stored.items()} == vae.vae_param_shapes(vae.VAE_CONFIGS["demo"])
    codec = gvcc.load_codec(gvcc.MODELS[f"demo-{mode}"], DEMO, "", "cpu", "fp32")
    assert codec.dit["blocks.5.ffn.2.weight"].dtype == torch.float32
    # a demo file is recognised as the preset it is, as a real file is
    with pytest.raises(wan_model.WeightsError, match=f"looks like DiT demo-{mode}"):
        other = "t2v" if mode != "t2v" else "i2v"
        wan_model.load_dit(paths["dit"], wan_model.DIT_CONFIGS[f"demo-{other}"])
    assert gvcc.model_fingerprint(paths) == gvcc.model_fingerprint(demo_paths(mode))


def test_demo_models_need_no_weights_folder(tmp_path, monkeypatch):
    # --model demo-* reads demo/ when --weights is not given, whatever $GVCC_WEIGHTS says
    monkeypatch.setenv("GVCC_WEIGHTS", str(tmp_path / "nothing-here"))
    assert gvcc.weights_folder(None, gvcc.MODELS["demo-t2v"]) == DEMO
    assert gvcc.weights_folder(None, gvcc.MODELS["t2v-1.3B"]) == str(tmp_path / "nothing-here")
    assert gvcc.weights_folder("mine", gvcc.MODELS["demo-t2v"]) == "mine"


# --------------------------------------------------------------------------------------------------
# The training code: its forward passes are gvcc's, and it learns
# --------------------------------------------------------------------------------------------------

def small_clip(n=9, height=32, width=48, seed=0):
    """A smooth moving pattern, uint8 [n, height, width, 3]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6, 3)
    frames = [np.stack([127 + 100 * np.sin(0.2 * (x + 2 * t) + 0.15 * y + phase[c]) for c in range(3)], -1)
              for t in range(n)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_training_vae_forward_is_vae_py():
    # the batched, differentiable VAE that trains is the streaming one gvcc runs, up to float32 rounding
    cfg = vae.VAE_CONFIGS["demo"]
    params = vae.load_vae(demo_paths("t2v")["vae"], cfg)
    x = gvcc.to_model(small_clip())                                                   # [3, 9, 32, 48]
    with torch.no_grad():
        want = vae.encode(params, cfg, x)
        got = vae.normalize_latent(train_demo.vae_encode_batch(params, cfg, x[None])[0][0])
        assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
        frames = vae.decode(params, cfg, want)
        again = train_demo.vae_decode_batch(params, cfg, vae.denormalize_latent(want)[None])[0].clamp(-1, 1)
        assert float((again - frames).abs().max()) <= 1e-4


def test_training_conditioning_is_gvccs():
    codec = gvcc.load_codec(gvcc.MODELS["demo-flf2v"], DEMO, "", "cpu", "fp32")
    frames = small_clip(n=9, height=32, width=48, seed=1)
    for mode in ("i2v", "flf2v"):
        last = frames[-1] if mode == "flf2v" else None
        want_y, want_clip = gvcc.conditioning(codec, 9, frames[0], last, crop=(48, 32))
        got_y, got_clip = train_demo.condition(codec.vae, codec.vae_cfg, codec.clip, codec.clip_cfg, frames, mode)
        assert got_y.shape == want_y.shape and float((got_y - want_y).abs().max()) <= 1e-4
        assert torch.allclose(got_clip, want_clip, rtol=1e-5, atol=1e-5)


def test_folding_the_normalisation_keeps_the_pixels():
    cfg = vae.VAE_CONFIGS["tiny"]
    params = train_demo.vae_init(cfg, 3)
    params = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(i))
              for i, (k, v) in enumerate(params.items())}          # no block at the identity
    x = gvcc.to_model(small_clip(n=5, height=16, width=16))[None]
    mean_n, std_n = torch.linspace(-0.5, 0.5, 16), torch.linspace(0.3, 2.0, 16)
    folded = train_demo.fold_normalisation(params, cfg, mean_n, std_n)
    with torch.no_grad():
        n_old = vae.normalize_latent(train_demo.vae_encode_batch(params, cfg, x)[0][0])
        n_new = vae.normalize_latent(train_demo.vae_encode_batch(folded, cfg, x)[0][0])
        want = (n_old - mean_n.view(-1, 1, 1, 1)) / std_n.view(-1, 1, 1, 1)
        assert torch.allclose(n_new, want, atol=1e-4)
        dec_old = train_demo.vae_decode_batch(params, cfg, vae.denormalize_latent(n_old)[None])
        dec_new = train_demo.vae_decode_batch(folded, cfg, vae.denormalize_latent(n_new)[None])
        assert torch.allclose(dec_old, dec_new, atol=1e-4)


def test_training_lowers_the_loss_and_resumes_where_it_stopped(tmp_path, monkeypatch):
    # the recipe's own loop and losses, a few steps on a fixed clip: the VAE's loss falls, and a run killed after
    # its step-6 checkpoint and started again ends exactly where an uninterrupted run ends
    cfg = vae.VAE_CONFIGS["tiny"]
    x = gvcc.to_model(small_clip(n=5, height=32, width=32))[None]
    monkeypatch.setattr(train_demo, "CHECKPOINT_EVERY", 3)
    seen, stop = [], [None]

    def loss_fn(p, gen):
        if len(seen) == stop[0]:
            raise KeyboardInterrupt
        loss, l1, kl = train_demo.vae_loss(p, cfg, x, gen, 1e-4)
        seen.append(l1)
        return loss, {"l1": l1}
    straight = train_demo.train("a", str(tmp_path), train_demo.vae_init(cfg, 0), loss_fn, 12, 3e-3, 1, log_every=100)
    assert np.mean(seen[-3:]) < 0.8 * np.mean(seen[:3])
    seen.clear()
    stop[0] = 7                 # killed during step 8, after the checkpoint of step 6
    with pytest.raises(KeyboardInterrupt):
        train_demo.train("b", str(tmp_path), train_demo.vae_init(cfg, 0), loss_fn, 12, 3e-3, 1, log_every=100)
    assert torch.load(tmp_path / "b.ckpt", weights_only=False)["step"] == 6
    stop[0] = None
    resumed = train_demo.train("b", str(tmp_path), train_demo.vae_init(cfg, 0), loss_fn, 12, 3e-3, 1, log_every=100)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_dit_training_lowers_the_rectified_flow_loss():
    cfg = wan_model.DIT_CONFIGS["tiny-t2v"]
    gen = torch.Generator().manual_seed(0)
    x0 = [torch.randn(16, 3, 4, 4, generator=gen) * 0.5 + torch.linspace(-1, 1, 16).view(-1, 1, 1, 1)
          for _ in range(2)]
    context = torch.zeros(1, cfg.text_dim)
    losses = []

    def loss_fn(p, gen):
        loss = train_demo.dit_loss(p, cfg, [(x, None, None) for x in x0], context, torch.Generator().manual_seed(1))
        losses.append(loss.item())
        return loss, {"mse": loss.item()}
    with tempfile.TemporaryDirectory() as work:
        train_demo.train("dit", work, train_demo.dit_init(cfg, 0), loss_fn, 15, 3e-3, 2, log_every=100)
    assert losses[-1] < 0.7 * losses[0]


# --------------------------------------------------------------------------------------------------
# The codec with the demo models, on held-out real video: what it is for
# --------------------------------------------------------------------------------------------------
# carphone's held-out part (bench/train_demo.py: frames training never saw), its first 17 frames at the demo size
# 128x104, one GOP of 17. The margins are a fraction of what this machine measured when the demo weights were
# committed; pixels follow from float arithmetic, so other CPUs land near, not on, these numbers.

@pytest.fixture(scope="module")
def carphone(tmp_path_factory):
    frames, fps = train_demo.held_out_frames("carphone_pristine.mp4")
    folder = tmp_path_factory.mktemp("demo_quality")
    src = str(folder / "carphone.y4m")
    media.write_video(src, frames[:17], fps)
    return src, media.read_video(src).frames, folder


# measured at commit (carphone, 17 frames): M 1 / 4 / 16 at 0.0077 / 0.0186 / 0.0531 bpp gave 16.5 / 18.9 / 21.7 dB,
# the no-bits ODE sample 10.8 dB; the defaults (M 8) gave t2v 20.4, i2v 21.7, flf2v 21.3 dB
MARGIN_M1_M4, MARGIN_M4_M16, MARGIN_NO_BITS = 1.0, 1.0, 6.0
DEFAULT_PSNR = {"t2v": 17.0, "i2v": 18.0, "flf2v": 18.0}


def psnr(ref, dec):
    return float(np.mean(media.psnr(ref, dec)))


ENCODED = {}     # file tag -> encode's result: the module codes each setting once


def encode(carphone, mode, *extra):
    """`gvcc.py encode` with the demo model (no --weights) and the options `extra`, once per setting in this module;
    (stream path, reconstruction, bits per pixel)."""
    tag = "_".join([mode, *(e.lstrip("-") for e in extra)])
    if tag not in ENCODED:
        src, ref, folder = carphone
        stream, recon = str(folder / f"{tag}.gvcc"), str(folder / f"{tag}_recon.y4m")
        assert gvcc.main(["encode", src, stream, "--model", f"demo-{mode}", "--gop", "17", "--recon", recon, "-y",
                          "--quiet", *extra]) == 0
        ENCODED[tag] = stream, media.read_video(recon).frames, 8 * os.path.getsize(stream) / ref.size * 3
    return ENCODED[tag]


def decode(stream, out):
    assert gvcc.main(["decode", stream, out, "-y", "--quiet"]) == 0
    return media.read_video(out).frames


def no_bits(carphone, mode):
    """The sampler's ODE from x_T (bench_demo.write_without_bits: an `-M 1` stream whose header says g_scale 0;
    the format allows it, encode does not): decoded frames."""
    stream, _, _ = encode(carphone, mode, *bench_demo.NO_BITS_ARGS[mode])
    out = stream[:-5] + "_g0.gvcc"
    bench_demo.write_without_bits(stream, out)
    return decode(out, out[:-5] + ".y4m")


def test_t2v_quality_rises_with_the_rate_and_beats_sampling_without_bits(carphone):
    ref = carphone[1]
    points = {m: encode(carphone, "t2v", "-M", str(m)) for m in (1, 4, 16)}
    rates = [points[m][2] for m in (1, 4, 16)]
    quality = [psnr(ref, points[m][1]) for m in (1, 4, 16)]
    base = psnr(ref, no_bits(carphone, "t2v"))
    assert rates[0] < rates[1] < rates[2] < 0.06      # ultra-low (0.05 and the header's share of 17 frames)
    assert quality[0] + MARGIN_M1_M4 < quality[1] and quality[1] + MARGIN_M4_M16 < quality[2], quality
    assert quality[2] > base + MARGIN_NO_BITS, (quality, base)


@pytest.mark.parametrize("mode", ["t2v", "i2v", "flf2v"])
def test_decode_equals_the_encoders_reconstruction_and_looks_like_the_source(carphone, mode):
    stream, recon, bpp = encode(carphone, mode)
    assert np.array_equal(decode(stream, stream[:-5] + "_dec.y4m"), recon)
    assert psnr(carphone[1], recon) > DEFAULT_PSNR[mode], psnr(carphone[1], recon)


# measured at commit (carphone, 17 frames, M 8): paper 20.40 dB, fast (9 DiT calls of 20) 20.16 dB; on the 33-frame
# held-out clips fast loses 0.16 dB on average (README, "Speed")
FAST_LOSS_LIMIT = 0.6


def test_the_fast_schedule_keeps_the_rate_and_nearly_the_quality(carphone):
    paper_stream, paper, _ = encode(carphone, "t2v")
    fast_stream, fast, _ = encode(carphone, "t2v", "--speed", "fast")
    assert os.path.getsize(fast_stream) == os.path.getsize(paper_stream)     # skipped calls keep their symbols
    assert np.array_equal(decode(fast_stream, fast_stream[:-5] + "_dec.y4m"), fast)
    loss = psnr(carphone[1], paper) - psnr(carphone[1], fast)
    assert loss < FAST_LOSS_LIMIT, loss
