"""I2V and FLF2V as a user runs them (issue 5): conditioning, GOP chaining, frame counts, rates, errors.

1. The conditioning tensors of one GOP against diffusers' WanImageToVideoPipeline (its own `prepare_latents` and
   `encode_image`) on the tiny VAE and CLIP weights: mask exact, y latent and CLIP features within named
   tolerances.
2. Chaining, watched from inside: `gvcc.conditioning`, `gvcc.run_gop` and `vae.decode` are wrapped to record
   what the encoder and the decoder condition on and decode; both sides must agree bit for bit, and the
   instrumented encoder must write the very bytes `gvcc.py encode` wrote. Output frame counts for clip lengths
   of the form 8N+1 (GOP 9, stride 8) and not, in all three modes.
3. `gvcc.py info`: header and per-GOP columns add up to the file size.
4. Clear one-line errors, exit code 1 and no output file for what a user can get wrong.

About 40 s on the shared 2-core box at load 4-5 (one torch thread, see `one_thread`); about half of it is the
13 `gvcc.py` subprocesses, ~6 s is importing diffusers.
"""
import dataclasses
import os
import re
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bitstream
import gvcc
import media
import vae
import wan_model
from golden_cases import gvcc_cli, synthetic_clip

REL_Y = 1e-5       # max |a - b| / max |b|: y latent vs diffusers' VAE (same math, other op order; measured ~4e-7)
REL_CLIP = 1e-5    # max |a - b| / max |b|: CLIP features vs transformers CLIPVisionModel (measured ~1e-7)
WIDTH, HEIGHT, FRAMES = 40, 24, 18      # latent 3x5, padded to 4x6; 18 frames = GOPs 0-8, 8-16, 16-17 (short, padded to 5)
COMMON = ["-K", "64", "-M", "4", "--steps", "4", "--tail-steps", "1", "--gop", "9", "--seed", "7", "--quiet"]
MODE_ARGS = {
    "i2v": ["--mode", "i2v", "--model", "tiny-i2v", "--m-tail", "8", "--still-quality", "50"],
    "flf2v": ["--mode", "flf2v", "--model", "tiny-flf2v", "--still-quality", "50"],
}


# ==================================================================================================
# Fixtures: a clip, the CLI's streams, the loaded tiny models
# ==================================================================================================

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("clip") / "clip.y4m")
    media.write_video(path, synthetic_clip(FRAMES, WIDTH, HEIGHT), Fraction(16, 1))
    return path


@pytest.fixture(scope="module")
def streams(clip, tiny_weights, tmp_path_factory):
    """mode -> (stream, the encoder's reconstruction as a PNG folder), written by `gvcc.py encode --recon`."""
    out = tmp_path_factory.mktemp("streams")
    made = {}
    for mode, args in MODE_ARGS.items():
        stream, recon = str(out / f"{mode}.gvcc"), str(out / f"{mode}_recon")
        gvcc_cli("encode", clip, stream, "--weights", tiny_weights, "--recon", recon, *COMMON, *args)
        made[mode] = stream, recon
    return made


@pytest.fixture(scope="module")
def codecs(tiny_weights):
    """mode -> the tiny model loaded as the CLI loads it (float32, CPU, empty prompt)."""
    return {mode: gvcc.load_codec(gvcc.MODELS[f"tiny-{mode}"], tiny_weights, "", "cpu", "fp32")
            for mode in ("t2v", "i2v", "flf2v")}


def read(path):
    with open(path, "rb") as fh:
        return fh.read()


def padded(frame):
    """uint8 [HEIGHT, WIDTH, 3] at gvcc.pixel_size: 40x24 are multiples of 8 already, so unchanged."""
    return gvcc.pad_frames(frame[None], 1, HEIGHT, WIDTH)[0]


# ==================================================================================================
# 1. Conditioning tensors vs diffusers' WanImageToVideoPipeline
# ==================================================================================================

@pytest.fixture(scope="module")
def pipeline(tiny_weights):
    """WanImageToVideoPipeline around diffusers' AutoencoderKLWan and transformers' CLIPVisionModel, built from
    the tiny weight files (VAE keys mapped per wan.md 5.3; CLIP keys are HF names already)."""
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from test_vae import to_diffusers_key
    cfg = vae.VAE_CONFIGS["tiny"]
    dvae = AutoencoderKLWan(base_dim=cfg.dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
                            num_res_blocks=cfg.num_res_blocks, attn_scales=[],
                            temperal_downsample=list(cfg.temporal_downsample), dropout=0.0).eval()
    weights = vae.load_vae(os.path.join(tiny_weights, "tiny_vae.safetensors"), cfg)
    dvae.load_state_dict({to_diffusers_key(k): v for k, v in weights.items()}, strict=True)
    ccfg = wan_model.CLIP_CONFIGS["tiny"]
    clip_model = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=ccfg.dim, intermediate_size=ccfg.ffn_dim, num_hidden_layers=ccfg.num_layers,
        num_attention_heads=ccfg.num_heads, image_size=ccfg.image_size, patch_size=ccfg.patch_size,
        hidden_act="gelu", layer_norm_eps=ccfg.eps, projection_dim=ccfg.proj_dim)).eval()
    # transformers 5 names the bare vision model's keys without `vision_model.` (wan.md 1.8)
    state = load_file(os.path.join(tiny_weights, "tiny_clip_vision.safetensors"))
    clip_model.load_state_dict({k[len("vision_model."):]: v.float() for k, v in state.items()
                                if k.startswith("vision_model.")}, strict=True)
    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=dvae, scheduler=None,
                                   image_encoder=clip_model, image_processor=official_clip_preprocess)


def official_clip_preprocess(images, return_tensors="pt"):
    """Official Wan CLIP preprocessing (wan.md 1.7) in the place of diffusers' CLIPImageProcessor (which resizes
    the shortest side and centre-crops, so is not what Wan runs): bicubic resize of the [-1, 1] image to
    image_size (align_corners=False), to [0, 1], OpenAI CLIP mean/std from transformers' constants."""
    from transformers import BatchFeature
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    size = wan_model.CLIP_CONFIGS["tiny"].image_size
    x = torch.stack(images) if isinstance(images, list) else images[None]                   # [n_img, 3, H0, W0]
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)           # [n_img, 3, S, S]
    mean = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]
    std = torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    return BatchFeature({"pixel_values": (x * 0.5 + 0.5 - mean) / std})


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("mode", ["i2v", "flf2v"])
@pytest.mark.parametrize("n_padded", [9, 5])                    # a whole GOP and a padded short last one
def test_conditioning_matches_diffusers_pipeline(codecs, pipeline, mode, n_padded):
    from PIL import Image
    frames = synthetic_clip(n_padded, WIDTH, HEIGHT)
    first, last = padded(frames[0]), padded(frames[-1]) if mode == "flf2v" else None
    y, clip_fea = gvcc.conditioning(codecs[mode], n_padded, first, last, crop=(WIDTH, HEIGHT))

    # The pipeline's own image preprocessing (PIL -> [-1, 1]) at the working size, then its prepare_latents:
    # VAE latent of [image, zeros] / [first, zeros, last], normalised with the VAE config's latents_mean/std,
    # behind the 4-channel mask. gvcc then replicate-pads y to even latent height and width (3x5 -> 4x6), mask
    # and all, as the authors' wrapper pads it for the DiT's 2x2 patches.
    def prep(frame):
        return pipeline.video_processor.preprocess(Image.fromarray(frame), height=HEIGHT, width=WIDTH)
    with torch.no_grad():
        _, ref = pipeline.prepare_latents(
            prep(first), 1, 16, HEIGHT, WIDTH, n_padded, torch.float32, "cpu", torch.Generator().manual_seed(0),
            last_image=prep(last) if last is not None else None)
    n_lat = (n_padded - 1) // 4 + 1
    assert ref.shape[1:] == (20, n_lat, 3, 5) and y.shape == (20, n_lat, 4, 6)
    assert torch.equal(y[:, :, 3], y[:, :, 2]) and torch.equal(y[..., 5], y[..., 4])     # replicated row, column
    ref = torch.nn.functional.pad(ref, (0, 1, 0, 1, 0, 0), mode="replicate")
    assert torch.equal(y[:4], ref[0, :4])                                  # mask: exact
    assert y[:4, 0].eq(1).all() and y[:4, 1:-1].eq(0).all()
    assert y[:4, -1, 0, 0].tolist() == ([0, 0, 0, 1] if mode == "flf2v" else [0, 0, 0, 0])
    err = rel_err(y[4:], ref[0, 4:])
    print(f"{mode} {n_padded} frames: y latent rel err {err:.2e} (tol {REL_Y:g})")
    assert err <= REL_Y

    # CLIP: the pipeline's encode_image (hidden_states[-2]) on the unpadded working-size frames; FLF2V as a batch
    given = [frames[0]] if last is None else [frames[0], frames[-1]]
    images = [gvcc.to_model(f[None])[:, 0] for f in given]                  # [3, HEIGHT, WIDTH] in [-1, 1]
    with torch.no_grad():
        ref_fea = pipeline.encode_image(images if len(images) > 1 else images[0], "cpu")
    assert clip_fea.shape == ref_fea.shape == (len(given), 17, 32)
    err = rel_err(clip_fea, ref_fea)
    print(f"{mode} {n_padded} frames: CLIP rel err {err:.2e} (tol {REL_CLIP:g})")
    assert err <= REL_CLIP
    assert not torch.equal(clip_fea[0], clip_fea[-1]) or mode == "i2v"      # two different images, two features


# ==================================================================================================
# 2. Chaining: what each side conditions on and decodes, recorded from inside code_clip
# ==================================================================================================

def instrument(monkeypatch):
    """Wrap the three places a GOP's result flows through; returns the log they append to."""
    log = {"cond": [], "sampled": [], "to_vae": []}
    conditioning, run_gop, decode = gvcc.conditioning, gvcc.run_gop, vae.decode

    def rec_conditioning(codec, n_padded, first, last=None, crop=None):
        log["cond"].append((first.copy(), None if last is None else last.copy()))
        return conditioning(codec, n_padded, first, last, crop)

    def rec_run_gop(*args, **kwargs):
        latent = run_gop(*args, **kwargs)
        log["sampled"].append(latent.clone())          # before the tail residual is added in place
        return latent

    def rec_decode(params, cfg, latent):
        log["to_vae"].append(latent.clone())
        return decode(params, cfg, latent)

    monkeypatch.setattr(gvcc, "conditioning", rec_conditioning)
    monkeypatch.setattr(gvcc, "run_gop", rec_run_gop)
    monkeypatch.setattr(vae, "decode", rec_decode)
    return log


def taken(log):
    """A copy of the log, which is then emptied for the other side."""
    out = {k: list(v) for k, v in log.items()}
    for v in log.values():
        v.clear()
    return out


@pytest.mark.parametrize("mode", ["i2v", "flf2v"])
def test_chaining_encoder_and_decoder_agree(codecs, streams, clip, monkeypatch, mode):
    stream, recon_dir = streams[mode]
    data = read(stream)
    hdr, _ = bitstream.read_stream(data)
    frames = media.read_video(clip).frames
    codec = codecs[mode]
    vae_decode = vae.decode
    log = instrument(monkeypatch)

    gops, recon = gvcc.code_clip(codec, hdr, frames)
    enc = taken(log)
    assert bitstream.write_stream(hdr, gops) == data          # the instrumented run is the CLI's run
    assert np.array_equal(recon, media.read_video(recon_dir).frames)
    hdr2, gops2 = bitstream.read_stream(data)
    _, decoded = gvcc.code_clip(codec, hdr2, gops=gops2)
    dec = taken(log)
    assert decoded.shape == (FRAMES, HEIGHT, WIDTH, 3) and np.array_equal(decoded, recon)

    layout = bitstream.gop_layout(hdr)
    assert len(layout) == 3 and [i.n_frames for i in layout] == [9, 9, 2]
    for side in (enc, dec):
        assert all(len(v) == len(layout) for v in side.values())
    # the decoder's conditioning frames for GOP g are the encoder's, bit for bit
    for g in range(len(layout)):
        (ef, el), (df, dl) = enc["cond"][g], dec["cond"][g]
        assert np.array_equal(ef, df), f"GOP {g}: first/reference frame differs"
        assert (el is None and dl is None) or np.array_equal(el, dl), f"GOP {g}: last frame differs"
        assert torch.equal(enc["sampled"][g], dec["sampled"][g]) and torch.equal(enc["to_vae"][g], dec["to_vae"][g])

    # the VAE decodes the latent with the DiT's padding cropped off: 3x5, not 4x6
    assert all(latent.shape[2:] == (3, 5) for latent in dec["to_vae"])
    # the output keeps each shared boundary frame once: frame k comes from GOP max(0, (k - 1) // 8), so GOP g > 0
    # contributes its frames 1..n_frames-1 (bitstream.py section 7)
    gop_pixels = [gvcc.to_pixels(vae_decode(codec.vae, codec.vae_cfg, latent)) for latent in dec["to_vae"]]
    for k in range(FRAMES):
        g = max(0, (k - 1) // 8)
        assert np.array_equal(decoded[k], gop_pixels[g][k - 8 * g, :HEIGHT, :WIDTH]), f"output frame {k}"

    stills = [s for gop in gops2 for s in gop.stills]
    refs = dec["cond"]
    if mode == "i2v":
        assert [len(gop.stills) for gop in gops2] == [1, 0, 0]
        assert all(last is None for _, last in refs)
        assert np.array_equal(refs[0][0], padded(media.decode_still(stills[0])))     # GOP 0: the decoded still
        for g in (1, 2):    # later GOPs: the previous GOP's decoded last frame (= output frame 8g), closed loop
            assert np.array_equal(refs[g][0][:HEIGHT, :WIDTH], decoded[8 * g])
            assert not np.array_equal(refs[g][0][:HEIGHT, :WIDTH], frames[8 * g])
    else:
        # N GOPs carry N + 1 stills, each boundary frame once: 0, 8, 16 and the last frame 17
        assert [len(gop.stills) for gop in gops2] == [2, 1, 1] and len(stills) == len(layout) + 1
        boundary = [0, 8, 16, 17]
        for still, i in zip(stills, boundary):
            pixels = media.decode_still(still).astype(np.float64)
            mse = ((frames.astype(np.float64) - pixels) ** 2).mean(axis=(1, 2, 3))
            assert int(mse.argmin()) == i, f"still of frame {i} looks most like frame {int(mse.argmin())}"
        lasts = [padded(media.decode_still(s)) for s in stills]
        for g in range(len(layout)):
            first, last = refs[g]
            assert np.array_equal(first, lasts[g]) and np.array_equal(last, lasts[g + 1])
            if g > 0:
                assert np.array_equal(first, refs[g - 1][1])          # shared with the previous GOP

    # the tail residual: only the last latent frame changes, by the dequantised blob, on both sides alike
    for g, info in enumerate(layout):
        sampled, final = dec["sampled"][g], dec["to_vae"][g]                   # [16, F, 4, 6], [16, F, 3, 5]
        if mode == "flf2v":
            assert gops2[g].residual == b"" and torch.equal(sampled[..., :3, :5], final)
            continue
        dq = gvcc.dequantise_residual(gops2[g].residual, (16, 4, 6), 8, "cpu")   # over the padded latent frame
        assert torch.equal(final[:, :-1], sampled[:, :-1, :3, :5])
        assert torch.equal(final[:, -1], (sampled[:, -1] + dq)[:, :3, :5]) and dq.abs().max() > 0
        # and it brings that frame within half a quantisation step (m / 255) of the encoder's target latent
        src = gvcc.pad_frames(frames[info.first_frame:info.first_frame + info.n_frames], info.n_padded, 24, 40)
        x0 = gvcc.pad_latent(vae.encode(codec.vae, codec.vae_cfg, gvcc.to_model(src)), 4, 6)[:, -1]   # [16, 4, 6]
        scales, _ = bitstream.unpack_residual(gops2[g].residual, 16, 16 * 4 * 6, 8)
        half_step = torch.tensor(scales)[:, None, None] / 255
        err = (x0 - (sampled[:, -1] + dq)).abs()
        assert (err <= half_step * (1 + 1e-4) + 1e-6).all()
        assert (x0 - sampled[:, -1]).abs().max() > 10 * err.max()


def header(mode, n, width=16, height=8):
    """The header `gvcc.py encode ... --m-tail 8` writes (fingerprint left at 0: code_clip ignores it)."""
    i2v = mode == "i2v"
    return bitstream.Header(
        mode=mode, model=f"tiny-{mode}", model_fingerprint=0, generator=gvcc.GENERATOR_IID, src_width=width,
        src_height=height, width=width, height=height, frames=n, fps_num=16, fps_den=1, gop_frames=9, steps=4,
        tail_steps=1, g_scale_q=3000, shift_q=5000, K=64, M=4, M_tail=8 if i2v else 4, tail_frames=2 if i2v else 0,
        seed=7, still_quality=0 if mode == "t2v" else 50, residual=int(i2v), prompt="")


@pytest.mark.parametrize("mode,n", [(m, n) for m in ("t2v", "i2v", "flf2v")
                                    for n in ([1] if m == "t2v" else []) + [2, 9, 10, 17, 18, 20]])
def test_output_has_as_many_frames_as_the_input(codecs, mode, n):
    """16x8 clips (padded to 16x16) keep this quick; lengths 8N+1 and not, including short padded last GOPs."""
    frames = synthetic_clip(n, 16, 8)
    hdr = header(mode, n)
    gops, recon = gvcc.code_clip(codecs[mode], hdr, frames)
    data = bitstream.write_stream(hdr, gops)
    hdr2, gops2 = bitstream.read_stream(data)
    _, decoded = gvcc.code_clip(codecs[mode], hdr2, gops=gops2)
    assert recon.shape == decoded.shape == (n, 8, 16, 3)
    assert np.array_equal(decoded, recon)
    n_gops = len(gops2)
    assert sum(len(g.stills) for g in gops2) == {"t2v": 0, "i2v": 1, "flf2v": n_gops + 1}[mode]


@pytest.mark.parametrize("mode", ["t2v", "flf2v"])
def test_a_tail_residual_is_defined_in_every_mode(codecs, mode):
    # gvcc's encoder sends the residual in i2v only, but the format defines it in every mode (bitstream.py
    # section 6): a t2v or flf2v stream that carries one decodes to the encoder's reconstruction, corrected
    frames = synthetic_clip(9, 16, 8)
    hdr = dataclasses.replace(header(mode, 9), residual=1)
    gops, recon = gvcc.code_clip(codecs[mode], hdr, frames)
    hdr2, gops2 = bitstream.read_stream(bitstream.write_stream(hdr, gops))
    _, decoded = gvcc.code_clip(codecs[mode], hdr2, gops=gops2)
    assert np.array_equal(decoded, recon) and all(len(g.residual) > 64 for g in gops2)
    _, plain = gvcc.code_clip(codecs[mode], dataclasses.replace(hdr, residual=0), frames)
    assert not np.array_equal(plain, recon)


# ==================================================================================================
# 3. Rate accounting: what `gvcc.py info` prints adds up to the file
# ==================================================================================================

@pytest.mark.parametrize("mode", ["i2v", "flf2v"])
def test_info_columns_add_up_to_the_file_size(streams, mode):
    stream, _ = streams[mode]
    data = read(stream)
    hdr, gops = bitstream.read_stream(data)
    out = gvcc_cli("info", stream).stdout
    assert out.startswith(f"{stream}: {len(data)} bytes")
    rows = [[int(v) for v in line.split()[2:7]] for line in out.splitlines()
            if re.match(r"\s*\d+\s+\d+-\d+\s", line)]
    header_bytes = int(out.split("header ")[1].split()[0])
    layout = bitstream.gop_layout(hdr)
    assert len(rows) == len(layout) == 3
    assert header_bytes + sum(r[4] for r in rows) == len(data)
    for g, ((codebook, stills, residual, framing, total), info) in enumerate(zip(rows, layout)):
        assert codebook + stills + residual + framing == total, f"GOP {g}"
        assert codebook == -(-sum(bitstream.codebook_bits(hdr, info.latent_frames)) // 8) > 0
        assert stills == sum(len(s) for s in gops[g].stills) and residual == len(gops[g].residual)
        assert framing == 8 + 4 * info.n_stills + 4 * hdr.residual
        if mode == "i2v":
            assert (stills > 0) == (g == 0) and residual > 0
        else:
            assert stills > 0 and residual == 0
    still_bits = 8 * sum(r[1] for r in rows)
    pixels = WIDTH * HEIGHT * FRAMES
    without = [line for line in out.splitlines() if line.startswith("without the coded still frames")]
    assert len(without) == 1 and without[0].endswith(f": {(8 * len(data) - still_bits) / pixels:.5f} bpp")


# ==================================================================================================
# 4. Clear errors
# ==================================================================================================

def assert_clean_failure(res, out, *words):
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith("gvcc: error:") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert all(w in res.stderr for w in words), res.stderr
    assert not os.path.exists(out)


@pytest.fixture(scope="module")
def no_clip_weights(tiny_weights, tmp_path_factory):
    """A copy of the tiny weights folder without the image encoder."""
    folder = str(tmp_path_factory.mktemp("no_clip"))
    for name in os.listdir(tiny_weights):
        if name.endswith(".safetensors") and name != "tiny_clip_vision.safetensors":    # not the context cache
            shutil.copy(os.path.join(tiny_weights, name), folder)
    return folder


@pytest.mark.parametrize("mode", ["i2v", "flf2v"])
def test_one_frame_clip_is_refused(tiny_weights, tmp_path, mode):
    one = str(tmp_path / "one.y4m")
    media.write_video(one, synthetic_clip(1, WIDTH, HEIGHT), Fraction(16, 1))
    out = str(tmp_path / "o.gvcc")
    res = gvcc_cli("encode", one, out, "--weights", tiny_weights, *COMMON, *MODE_ARGS[mode], check=False)
    assert_clean_failure(res, out, f"{mode} needs a clip of at least 2 frames")


@pytest.mark.parametrize("args,words", [
    (["--mode", "i2v", "--model", "tiny-t2v"], ["tiny-t2v", "t2v model", "--mode i2v", "tiny-i2v"]),
    (["--mode", "flf2v", "--model", "tiny-i2v"], ["tiny-i2v", "i2v model", "--mode flf2v", "tiny-flf2v"]),
])
def test_mode_model_mismatch_is_refused(clip, tiny_weights, tmp_path, args, words):
    out = str(tmp_path / "o.gvcc")
    res = gvcc_cli("encode", clip, out, "--weights", tiny_weights, *COMMON, *args, check=False)
    assert_clean_failure(res, out, *words)


def test_missing_image_encoder_is_refused(clip, no_clip_weights, streams, tmp_path):
    out = str(tmp_path / "o.gvcc")
    for mode in ("i2v", "flf2v"):
        res = gvcc_cli("encode", clip, out, "--weights", no_clip_weights, *COMMON, *MODE_ARGS[mode], check=False)
        assert_clean_failure(res, out, "tiny_clip_vision.safetensors", "missing clip weights")
    out = str(tmp_path / "o.y4m")
    res = gvcc_cli("decode", streams["i2v"][0], out, "--weights", no_clip_weights, "--quiet", check=False)
    assert_clean_failure(res, out, "tiny_clip_vision.safetensors", "missing clip weights")


def test_decoder_refuses_a_stream_whose_mode_or_stills_do_not_fit(streams, tiny_weights, tmp_path):
    """Well-formed streams (valid CRCs) that no gvcc encoder writes: these used to end in a traceback."""
    hdr, gops = bitstream.read_stream(read(streams["i2v"][0]))
    paths = gvcc.model_paths(gvcc.MODELS["tiny-flf2v"], tiny_weights)
    wrong_model = dataclasses.replace(hdr, model="tiny-flf2v", model_fingerprint=gvcc.model_fingerprint(paths))
    big_still = media.encode_still(np.zeros((HEIGHT + 16, WIDTH + 16, 3), np.uint8), 50)
    cases = [
        ("model", bitstream.write_stream(wrong_model, gops), ["i2v stream", "tiny-flf2v", "flf2v model"]),
        ("still", bitstream.write_stream(hdr, [dataclasses.replace(gops[0], stills=[big_still])] + gops[1:]),
         ["GOP 0", f"not {WIDTH}x{HEIGHT}"]),
    ]
    for name, data, words in cases:
        path, out = str(tmp_path / f"{name}.gvcc"), str(tmp_path / f"{name}.y4m")
        with open(path, "wb") as fh:
            fh.write(data)
        res = gvcc_cli("decode", path, out, "--weights", tiny_weights, "--quiet", check=False)
        assert_clean_failure(res, out, *words)
