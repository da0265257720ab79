"""gvcc as the GVCC of the paper (issue 10): the authors' behaviour where gvcc adopted it, and their protocol.

1. The five former divergences from the authors' runs (CCdydy/GVCC at 607d822), each pinned: latent padding,
   the I2V/FLF2V shift rule, the uint8 per-channel tail residual quantiser, the last sampler step always an
   ODE step, and the padded text context length from the header.
2. The authors' RGB conversion of UVG, bit-exact against opencv-python-headless (test-only requirement).
3. bench/paper.py end to end on a small synthetic UVG-like folder with the tiny models, then `gvcc.py eval`
   and `gvcc.py decode` on what it wrote (in this process). About 40 s on the loaded shared 2-core box.
"""
import dataclasses
import json
import os
import sys
import zlib
from fractions import Fraction

import numpy as np
import pytest
import torch

import bitstream
import gvcc
import media
import vae
import wan_model
from golden_cases import synthetic_clip

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import paper  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.one_thread


# ==================================================================================================
# 1. The authors' method
# ==================================================================================================

def test_sizes_pad_the_latent_not_the_pixels():
    # 1080p: the VAE sees the 1080 real rows (a multiple of 8); its 135 latent rows are padded to 136 for the
    # DiT's 2x2 patches (gvcc before: 1088 pixel rows, 8 of them invented).
    assert gvcc.pixel_size(1920, 1080) == (1920, 1080) and gvcc.latent_size(1920, 1080) == (136, 240)
    assert gvcc.latent_size(1280, 720) == (90, 160) and gvcc.latent_size(848, 480) == (60, 106)
    assert gvcc.pixel_size(40, 20) == (40, 24) and gvcc.latent_size(40, 20) == (4, 6)
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    p = gvcc.pad_latent(x, 4, 6)
    assert p.shape == (2, 4, 6) and torch.equal(p[:, :3, :5], x)
    assert torch.equal(p[:, 3, :5], x[:, 2]) and torch.equal(p[:, :3, 5], x[:, :, 4]) and p[0, 3, 5] == x[0, 2, 4]


@pytest.fixture(scope="module")
def tiny_t2v(tiny_weights):
    return gvcc.load_codec(gvcc.MODELS["tiny-t2v"], tiny_weights, "", "cpu", "fp32")


def t2v_header(n, width, height, **changes):
    hdr = bitstream.Header(
        mode="t2v", model="tiny-t2v", model_fingerprint=0, generator=gvcc.GENERATOR_IID, src_width=width,
        src_height=height, width=width, height=height, frames=n, fps_num=16, fps_den=1, gop_frames=5, steps=3,
        tail_steps=1, g_scale_q=3000, shift_q=3000, K=64, M=4, M_tail=4, tail_frames=0, seed=7,
        still_quality=0, residual=0, prompt="")
    return dataclasses.replace(hdr, **changes)


def test_code_clip_vae_sees_real_rows_dit_sees_even_latent(tiny_t2v, monkeypatch):
    """A 40x20 clip: the VAE encodes 24 rows (20 real + 4 replicated to its stride of 8, not 32), the DiT
    samples a 4x6 latent (3x5 replicate-padded), the VAE decodes the 3x5 latent, the output is 40x20."""
    seen = {"encode": [], "dit": [], "decode": []}
    encode, decode, dit = vae.encode, vae.decode, wan_model.dit_forward
    monkeypatch.setattr(vae, "encode", lambda p, c, v: seen["encode"].append(tuple(v.shape)) or encode(p, c, v))
    monkeypatch.setattr(vae, "decode", lambda p, c, z: seen["decode"].append(tuple(z.shape)) or decode(p, c, z))
    monkeypatch.setattr(wan_model, "dit_forward",
                        lambda p, c, x, *a: seen["dit"].append(tuple(x.shape)) or dit(p, c, x, *a))
    frames = synthetic_clip(5, 40, 20)
    hdr = t2v_header(5, 40, 20)
    gops, recon = gvcc.code_clip(tiny_t2v, hdr, frames)
    assert seen["encode"] == [(3, 5, 24, 40)]
    assert set(seen["dit"]) == {(16, 2, 4, 6)} and len(seen["dit"]) == 3
    assert seen["decode"] == [(16, 2, 3, 5)]
    assert recon.shape == (5, 20, 40, 3)
    assert len(gops[0].symbols) == 2 and all(len(idx) == 4 for idx, _ in gops[0].symbols[0])


def test_shift_rule():
    """The authors' rule: T2V 3; I2V and FLF2V 3 at a working height of at most 480 rows, else 5."""
    assert gvcc.default_shift("t2v", 1080) == 3.0
    assert gvcc.default_shift("i2v", 480) == gvcc.default_shift("flf2v", 24) == 3.0
    assert gvcc.default_shift("i2v", 481) == gvcc.default_shift("flf2v", 720) == gvcc.default_shift("i2v", 1080) == 5.0


def test_last_sampler_step_is_always_an_ode_step():
    """With --tail-steps 0 the authors' sampler still takes a plain Euler step onto t = 0 (no innovation)."""
    settings = gvcc.SamplerSettings(steps=4, tail_steps=0, g_scale=3.0, shift=3.0, K=16, seed=1)
    assert settings.sde_steps == 3
    calls, states = [], []

    def velocity(x, t):
        states.append((x.clone(), t))
        return 0.5 * x + t

    def choose(j, f, x0_hat_f):
        calls.append((j, f))
        return [0, 3], [0, 1]

    shape = (2, 2, 2, 2)
    x = gvcc.run_gop(velocity, settings, shape, choose)
    assert calls == [(j, f) for j in range(3) for f in range(2)]
    grid = gvcc.time_grid(4, 3.0)
    x3, t3 = states[-1]
    assert torch.equal(x, gvcc.ode_step(x3, velocity(x3, t3), grid[3] - grid[4]))
    # tail_steps = 3 of 20, the paper's setting, is unchanged: 17 SDE steps
    assert gvcc.SamplerSettings(20, 3, 3.0, 3.0, 16, 1).sde_steps == 17


def authors_quantiser(r, bits):
    """The authors' compress_tail_residual / decompress_tail_residual restated (exp_i2v/run_uvg_chained_gop.py):
    r [C, 1, h, w]; per-channel max |r| clamped to 1e-6; uint8 (int16 at 16 bits) values; zlib level 9."""
    m = r.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    levels = 2 ** bits
    q = ((r / m + 1.0) * (levels - 1) / 2.0).round().clamp(0, levels - 1)
    raw = q.to(torch.uint8).numpy().tobytes() if bits <= 8 else q.to(torch.int32).numpy().astype("<i4").astype(
        "<u2").tobytes()                                   # the int16 bytes they write, read back unsigned
    return zlib.compress(raw, 9), m, q * 2.0 / (levels - 1) - 1.0


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_tail_residual_is_the_authors_quantiser(bits):
    gen = torch.Generator().manual_seed(bits)
    r = torch.randn(16, 4, 6, generator=gen) * torch.linspace(0.1, 3.0, 16)[:, None, None]    # [C, h, w]
    r[3] = 0.0                                                           # an all-zero channel: scale 1e-6
    blob = gvcc.quantise_residual(r, bits)
    theirs, m, r_norm = authors_quantiser(r[:, None], bits)
    assert blob[64:] == theirs                                           # their zlib bytes, exactly
    scales = np.frombuffer(blob[:64], "<f4")
    assert np.array_equal(scales, m.flatten().numpy()) and scales[3] == np.float32(1e-6)
    deq = gvcc.dequantise_residual(blob, (16, 4, 6), bits, "cpu")
    assert torch.equal(deq, (r_norm * m)[:, 0])                          # their dequantisation, bit for bit
    assert ((deq - r).abs() <= m[:, 0] / (2 ** bits - 1) * (1 + 1e-5) + 1e-8).all()      # half a step
    # known answers: r = (-2, 0, 1, 2) in one channel, m = 2: (r / m + 1) 255 / 2 = 0, 127.5, 191.25, 255,
    # and torch.round takes 127.5 to the even 128
    if bits == 8:
        one = torch.tensor([-2.0, 0.0, 1.0, 2.0]).reshape(1, 1, 4)
        q = zlib.decompress(gvcc.quantise_residual(one, 8)[4:])
        assert list(q) == [0, 128, 191, 255]


def test_text_len_from_the_header_changes_every_t2v_velocity(tiny_weights, tiny_t2v):
    """Cross-attention is unmasked, so the padded rows matter: 226 rows (the authors' T2V) is another model
    input than 512 (upstream), and the decoder must use the stream's."""
    c226 = gvcc.load_codec(gvcc.MODELS["tiny-t2v"], tiny_weights, "", "cpu", "fp32", text_len=226)
    assert c226.dit_cfg.text_len == 226 and tiny_t2v.dit_cfg.text_len == 512
    x = torch.randn(16, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    u512 = gvcc.make_velocity(tiny_t2v)(x, 0.5)
    u226 = gvcc.make_velocity(c226)(x, 0.5)
    assert not torch.equal(u512, u226)
    with pytest.raises(bitstream.BitstreamError, match="text_len"):
        bitstream.write_header(t2v_header(5, 40, 24, text_len=0))


# ==================================================================================================
# 2. The authors' ground truth: OpenCV's YUV -> RGB, in numpy
# ==================================================================================================

@pytest.mark.parametrize("height,width", [(48, 64), (36, 52), (2, 2), (1080, 1920)])
def test_opencv_yuv_conversion_is_bit_exact(height, width):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is a test requirement")
    rng = np.random.RandomState(height)
    y = rng.randint(0, 256, (height, width)).astype(np.uint8)
    u, v = (rng.randint(0, 256, (height // 2, width // 2)).astype(np.uint8) for _ in range(2))
    up = [cv2.resize(c, (width, height), interpolation=cv2.INTER_LINEAR) for c in (u, v)]
    want = cv2.cvtColor(np.stack([y, *up], axis=-1), cv2.COLOR_YUV2RGB)
    assert np.array_equal(media.yuv420_to_rgb_opencv(y, u, v), want)


@pytest.mark.parametrize("height,width", [(47, 64), (48, 63), (1, 2)])
def test_opencv_yuv_conversion_refuses_odd_sizes(height, width):
    y = np.zeros((height, width), np.uint8)
    u = v = np.zeros((height // 2, width // 2), np.uint8)
    with pytest.raises(media.MediaError, match=f"even frame size.*Y {width}x{height}"):
        media.yuv420_to_rgb_opencv(y, u, v)
    with pytest.raises(media.MediaError, match="4:2:0"):                    # chroma planes of another size
        media.yuv420_to_rgb_opencv(np.zeros((4, 4), np.uint8), np.zeros((2, 3), np.uint8), np.zeros((2, 2), np.uint8))


def test_paper_accounting_counts_the_frames_each_gop_adds():
    """Issue 20: on gvcc's shared-boundary grid an I2V or FLF2V GOP after the first adds 32 new frames of its 33
    (dividing by 33 made the I2V rate 2.9 % low over 18 GOPs); T2V GOPs do not overlap."""
    rows = lambda hdr: [dict(index=g, residual_bytes=64 + 100, still_bytes=500)      # noqa: E731
                        for g in range(bitstream.num_gops(hdr))]
    for mode in ("t2v", "i2v", "flf2v"):
        hdr = t2v_header(1 + 32 * 18 if mode != "t2v" else 33 * 18, 64, 48, mode=mode, gop_frames=33,
                         model=f"tiny-{mode}", residual=int(mode == "i2v"), still_quality=0 if mode == "t2v" else 50)
        paper = gvcc.paper_accounting(hdr, rows(hdr))
        frames = [g["frames"] for g in paper["gops"]]
        assert frames == ([33] * 18 if mode == "t2v" else [33] + [32] * 17)
        for g in paper["gops"]:
            assert g["bpp"] == g["bits"] / (g["frames"] * 64 * 48)
            assert g["kbps16"] == g["bits"] / (g["frames"] / 16) / 1000
        if mode == "i2v":                       # the GOPs' mean, each over the frames it adds
            assert paper["bpp"] == pytest.approx(np.mean([g["bpp"] for g in paper["gops"]]))
            dividing_by_33 = np.mean([g["bits"] / (33 * 64 * 48) for g in paper["gops"]])
            assert paper["bpp"] / dividing_by_33 == pytest.approx(1 + 17 / 18 / 32, rel=1e-9)     # 2.95 % more
        if mode == "flf2v":                     # total bits over total frames
            assert paper["bpp"] == paper["bits"] / (sum(frames) * 64 * 48) and sum(frames) == hdr.frames


# ==================================================================================================
# 3. bench/paper.py end to end
# ==================================================================================================

W, H, N, GOP = 64, 48, 10, 5
SEQS = {"Jockey": 30, "Beauty": 120}            # name -> fps; found in the paper's order, Beauty first


@pytest.fixture(scope="module")
def uvg(tmp_path_factory):
    """Two raw I420 files in the UVG naming, with distinct content, and their I420 planes."""
    folder = tmp_path_factory.mktemp("uvg")
    planes = {}
    for k, (name, fps) in enumerate(SEQS.items()):
        clip = np.roll(synthetic_clip(N, W, H), 5 * k, axis=2)
        y, u, v = zip(*(media.rgb_to_yuv(f) for f in clip))
        sub = folder / f"{name}_RAW"
        sub.mkdir()
        with open(sub / f"{name}_{W}x{H}_{fps}fps_420_8bit_YUV.yuv", "wb") as fh:
            for i in range(N):
                fh.write(y[i].tobytes() + u[i].tobytes() + v[i].tobytes())
        planes[name] = (y, u, v)
    (folder / "notes.yuv").write_bytes(b"")                               # not UVG-named: ignored
    return str(folder), planes


@pytest.fixture(scope="module")
def run(uvg, tiny_weights, tmp_path_factory):
    folder, _ = uvg
    out_dir = str(tmp_path_factory.mktemp("paper"))
    printed = __import__("io").StringIO()
    models = "t2v=tiny-t2v,i2v=tiny-i2v,flf2v=tiny-flf2v"
    rc = paper.main([folder, out_dir, "--weights", tiny_weights, "--models", models, "--gop", str(GOP),
                     "--encode-args", "-K 64 -M 4 --steps 3 --tail-steps 1 --seed 7", "--no-lpips",
                     "--still-quality", "40,70", "--quiet"], out=printed)
    assert rc == 0
    with open(os.path.join(out_dir, "summary.json")) as fh:
        return out_dir, json.load(fh), printed.getvalue()


def test_runner_frame_selection_and_ground_truth(uvg, run):
    _, planes = uvg
    out_dir, summary, _ = run
    assert [r["label"] for r in summary["runs"]] == ["T2V", "I2V", "FLF2V q40", "FLF2V q70"]
    for r in summary["runs"]:
        assert [s["sequence"] for s in r["sequences"]] == ["Beauty", "Jockey"]         # UVG order
        # all whole GOPs: T2V 2 x 5 of 10 frames; I2V and FLF2V 2 GOPs sharing frame 4, 9 frames
        want = 10 if r["mode"] == "t2v" else 9
        assert all(s["frames"] == want for s in r["sequences"])
        firsts = [g["first_frame"] for g in r["sequences"][0]["per_gop"]]
        assert firsts == ([0, 5] if r["mode"] == "t2v" else [0, 4])
    # the ground truth gvcc coded is the authors' OpenCV conversion of the raw planes
    gt = media.read_video(os.path.join(out_dir, "t2v", "Jockey", "ground_truth")).frames
    y, u, v = planes["Jockey"]
    assert np.array_equal(gt, np.stack([media.yuv420_to_rgb_opencv(y[i], u[i], v[i]) for i in range(N)]))


def test_runner_rates_and_aggregation(run):
    _, summary, _ = run
    for r in summary["runs"]:
        for s in r["sequences"]:
            hdr = bitstream.read_header(open(s["stream"], "rb").read())
            assert s["gvcc_bpp"] == 8 * os.path.getsize(s["stream"]) / (W * H * s["frames"])
            assert s["psnr"] == pytest.approx(np.mean([g["psnr"] for g in s["per_gop"]]), rel=1e-12)
            # the authors' count: T_sde F_lat M (ceil(log2 64) + 1) = 2 * 2 * 4 * 7 codebook bits per GOP,
            # plus (I2V) the residual's zlib bytes or (FLF2V) the boundary stills the GOP brings
            for g in s["per_gop"]:
                extra = g["paper_bits"] - (112 if hdr.mode == "t2v" else 8 * (112 // 8))
                assert (extra == 0) == (hdr.mode == "t2v")
            assert s["paper_bits"] == sum(g["paper_bits"] for g in s["per_gop"])
            assert (hdr.text_len, hdr.shift_q) == ((226 if hdr.mode == "t2v" else 512), 3000)
        assert r["mean"]["psnr"] == pytest.approx(np.mean([s["psnr"] for s in r["sequences"]]))
        assert r["mean"]["paper_bpp"] == pytest.approx(np.mean([s["paper_bpp"] for s in r["sequences"]]))
    q40, q70 = (r for r in summary["runs"] if r["mode"] == "flf2v")
    assert q40["mean"]["gvcc_bpp"] < q70["mean"]["gvcc_bpp"]                         # the boundary sweep


def test_runner_i2v_first_frame_is_the_ground_truth(run):
    out_dir, summary, _ = run
    i2v = next(r for r in summary["runs"] if r["mode"] == "i2v")
    for s in i2v["sequences"]:
        hdr, gops = bitstream.read_stream(open(s["stream"], "rb").read())
        assert hdr.still_lossless == 1 and hdr.residual == 1 and hdr.residual_bits == 8
        gt = media.read_video(os.path.join(out_dir, "i2v", s["sequence"], "ground_truth"), frames=1).frames[0]
        assert np.array_equal(media.decode_still(gops[0].stills[0], lossless=True), gt)
        # the authors count no bytes for it: codebook + residual zlib bytes only
        assert s["paper_bits"] == sum(8 * (112 // 8 + len(g.residual) - 64) for g in gops)


def test_runner_prints_table2_with_the_papers_numbers(run):
    _, _, printed = run
    assert "T2V: UVG, 1080p protocol" in printed and "FLF2V q70: UVG, 1080p protocol" in printed
    assert "Table 2 layout" in printed
    for published in ("29.7 / 0.133 at 0.0027", "31.7 / 0.117 at 0.006", "32.2 / 0.087 at 0.05",
                      "34.1 / 0.285", "31.5 / 0.325"):
        assert published in printed
    assert printed.count("(this run)") == 4
    assert "bpp file" in printed and "bpp paper" in printed


def cli(capsys, *argv):
    """`gvcc.py ARGV` in this process (the CLI's own code path, without a second torch import): (rc, stdout, stderr)."""
    rc = gvcc.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_eval_and_decode_on_the_runners_output(run, tiny_weights, tmp_path, capsys):
    out_dir, summary, _ = run
    seq = os.path.join(out_dir, "i2v", "Beauty")
    stream, gt, recon = (os.path.join(seq, x) for x in ("stream.gvcc", "ground_truth", "recon"))
    report = str(tmp_path / "e.json")
    assert cli(capsys, "eval", gt, recon, "--bitstream", stream, "--json", report, "--no-lpips")[0] == 0
    res = json.load(open(report))
    assert [(g["first_frame"], g["frames"]) for g in res["per_gop"]] == [(0, 5), (4, 5)]   # shared frame 4
    i2v = next(r for r in summary["runs"] if r["mode"] == "i2v")
    assert res["sequence_gop_mean"]["psnr"] == pytest.approx(i2v["sequences"][0]["psnr"])
    assert cli(capsys, "eval", gt, recon, "--bitstream", stream, "--json", report, "--frames", "5",
               "--size", "32x24", "--no-lpips", "-y")[0] == 0
    res = json.load(open(report))
    assert len(res["per_frame"]) == 5 and [g["frames"] for g in res["per_gop"]] == [5, 1]
    assert res["compared_at"] == {"width": 32, "height": 24}
    # the decoder follows the header (text_len 226 of the T2V stream) and reproduces the reconstruction
    t2v = os.path.join(out_dir, "t2v", "Jockey")
    out = str(tmp_path / "dec")
    assert cli(capsys, "decode", os.path.join(t2v, "stream.gvcc"), out, "--weights", tiny_weights, "--quiet")[0] == 0
    assert np.array_equal(media.read_video(out).frames, media.read_video(os.path.join(t2v, "recon")).frames)


def test_info_prints_the_authors_count(run, capsys):
    _, summary, _ = run
    for r in summary["runs"][:3]:
        s = r["sequences"][0]
        out = cli(capsys, "info", s["stream"])[1]
        line = next(x for x in out.splitlines() if x.startswith("paper accounting"))
        assert f": {s['paper_bits']} bits = {s['paper_bpp']:.5f} bpp" in line
        rows = [x.split() for x in out.splitlines() if x.strip()[:1].isdigit() and "-" in x.split()[1]]
        assert [int(x[8]) for x in rows] == [g["paper_bits"] for g in s["per_gop"]]


@pytest.mark.parametrize("args,words", [
    (["--model", "tiny-t2v", "--residual-bits", "4"], "--residual-bits applies to i2v only"),
    (["--model", "tiny-t2v", "--still-quality", "lossless"], "applies to i2v and flf2v"),
    (["--model", "tiny-i2v", "--still-quality", "best"], "'best' is not an integer from 0 to 100 or 'lossless'"),
    (["--model", "tiny-t2v", "--text-len", "0"], "--text-len: '0' is not an integer from 1 to 4096"),
])
def test_encode_refuses_bad_conventions(tiny_weights, tmp_path, capsys, args, words):
    clip = str(tmp_path / "c.y4m")
    media.write_video(clip, synthetic_clip(5, 16, 8), Fraction(16, 1))
    out = str(tmp_path / "o.gvcc")
    rc, _, err = cli(capsys, "encode", clip, out, "--weights", tiny_weights, *args)
    assert rc == 1 and words in err and "Traceback" not in err
    assert not os.path.exists(out)
