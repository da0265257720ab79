"""media.py: video files, BT.709 colour, stills, metrics, BD-rate and eval.

Independent references: ffmpeg's swscale for RGB -> Y'CbCr, ffmpeg's trace_headers for the .mp4 VUI tags,
pytorch-msssim (test-only requirement) for MS-SSIM, scipy's PchipInterpolator (values stored below) for the
piecewise-cubic BD-rate. Named tolerances say how close each must be.
"""
import fractions
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import media  # noqa: E402
from media import MediaError  # noqa: E402

NTSC = fractions.Fraction(30000, 1001)

# Tolerances (measured values on the clip below in brackets)
TOL_LOSSLESS_420 = 44.0     # dB, RGB -> 4:2:0 -> RGB through .y4m / .yuv, full range [48.5]
TOL_LOSSLESS_420_LTD = 44.0  # dB, same in limited range [48.2]
TOL_MP4 = 38.0              # dB, through libx264 crf 12 [42.9 full range, 42.2 limited]
TOL_GRAY_LIMITED = 1        # code values: gray through limited range (219 levels for 256) may move by 1
TOL_SWSCALE = 1             # code values: our BT.709 RGB -> Y'CbCr 4:4:4 vs ffmpeg's swscale
TOL_SWSCALE_UPSAMPLING = 40.0  # dB, our linear chroma upsampling vs swscale's on a smooth clip
TOL_MSSSIM = 1e-6           # vs pytorch-msssim (its Gaussian window is float32: differences ~3e-7)


def smooth_clip(n=5, h=64, w=96, seed=0):
    """A deterministic, moving, smooth colour clip [n, h, w, 3]."""
    y, x = np.mgrid[0:h, 0:w]
    frames = []
    for t in range(n):
        r = 128 + 100 * np.sin(x / 9 + t / 3)
        g = 128 + 100 * np.cos(y / 7 - t / 4)
        b = 128 + 80 * np.sin((x + y) / 13 + t / 5 + seed)
        frames.append(np.stack([r, g, b], -1))
    return np.clip(np.array(frames), 0, 255).astype(np.uint8)


def ffmpeg():
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def no_leftovers(directory, keep):
    return sorted(os.listdir(directory)) == sorted(keep)


# ==================================================================================================
# Colour
# ==================================================================================================

def test_bt709_code_values_of_primaries():
    # Textbook BT.709 8-bit values: white, black, red (limited: 63, 102, 240)
    px = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], np.uint8)     # [1, 3, 3]
    y, u, v = media.rgb_to_yuv(px, limited=True, sub=(1, 1))
    assert y.tolist() == [[235, 16, 63]] and u.tolist() == [[128, 128, 102]] and v.tolist() == [[128, 128, 240]]
    y, u, v = media.rgb_to_yuv(px, limited=False, sub=(1, 1))
    assert y.tolist() == [[255, 0, 54]] and u.tolist() == [[128, 128, 99]] and v.tolist() == [[128, 128, 255]]


@pytest.mark.parametrize("limited", [False, True])
def test_rgb_to_yuv_matches_ffmpeg(tmp_path, limited):
    rgb = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    rng = "tv" if limited else "pc"
    cmd = [ffmpeg(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "24x16", "-i", "-",
           "-vf", f"scale=out_color_matrix=bt709:out_range={rng}:flags=accurate_rnd+full_chroma_int",
           "-pix_fmt", "yuv444p", "-f", "rawvideo", "-"]
    out = subprocess.run(cmd, input=rgb.tobytes(), capture_output=True, check=True).stdout
    theirs = np.frombuffer(out, np.uint8).reshape(3, 16, 24).astype(int)
    ours = np.stack(media.rgb_to_yuv(rgb, limited=limited, sub=(1, 1))).astype(int)
    assert np.abs(ours - theirs).max() <= TOL_SWSCALE


def test_chroma_siting_interpolation():
    c = np.array([[0.0, 2.0]])                                      # [1, 2] chroma row
    centre = media._upsample_axis(c, 4, 2, cosited=False, axis=1)
    cosited = media._upsample_axis(c, 4, 2, cosited=True, axis=1)
    assert centre.tolist() == [[0.0, 0.5, 1.5, 2.0]]               # samples at luma 0.5 and 2.5
    assert cosited.tolist() == [[0.0, 1.0, 2.0, 2.0]]              # samples at luma 0 and 2


# ==================================================================================================
# Round trips
# ==================================================================================================

@pytest.mark.parametrize("ext", [".y4m", ".yuv"])
@pytest.mark.parametrize("limited", [False, True])
def test_raw_round_trip(tmp_path, ext, limited):
    clip = smooth_clip()
    path = str(tmp_path / ("clip" + ext))
    media.write_video(path, clip, NTSC, limited_range=limited)
    got = media.read_video(path, size=(96, 64), fps=NTSC if ext == ".yuv" else None, limited_range=limited)
    assert got.frames.shape == clip.shape and got.fps == NTSC
    assert media.psnr(clip, got.frames).min() > (TOL_LOSSLESS_420_LTD if limited else TOL_LOSSLESS_420)
    if ext == ".yuv":
        assert os.path.getsize(path) == 5 * 96 * 64 * 3 // 2
    else:
        with open(path, "rb") as fh:
            header = fh.readline().decode()
        assert "C420jpeg" in header and ("XCOLORRANGE=LIMITED" if limited else "XCOLORRANGE=FULL") in header
    # gray survives exactly in full range, within one code value in limited range
    gray = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1), 3, axis=3)
    media.write_video(path, gray, 25, limited_range=limited)
    back = media.read_video(path, size=(16, 16), fps=25, limited_range=limited).frames
    err = np.abs(back.astype(int) - gray).max()
    assert err == 0 if not limited else err <= TOL_GRAY_LIMITED


def test_y4m_range_tag_wins_over_flag(tmp_path):
    clip = smooth_clip(n=2)
    path = str(tmp_path / "a.y4m")
    media.write_video(path, clip, 25, limited_range=True)
    a = media.read_video(path, limited_range=True).frames
    b = media.read_video(path, limited_range=False).frames          # XCOLORRANGE=LIMITED in the file decides
    assert np.array_equal(a, b)


def test_png_dir_round_trip_is_exact(tmp_path):
    clip = smooth_clip()
    path = str(tmp_path / "frames")
    media.write_video(path, clip, NTSC)
    assert sorted(os.listdir(path)) == [f"{i:06d}.png" for i in range(5)]
    got = media.read_video(path)
    assert np.array_equal(got.frames, clip) and got.fps == NTSC
    media.write_video(path, clip[:2], 16)                          # replacing a frame directory
    assert len(os.listdir(path)) == 2 and media.read_video(path).fps == 16
    assert media.read_video(path, fps=10).fps == 10                # fps overrides
    assert no_leftovers(tmp_path, ["frames"])


def vui(path):
    """The H.264 VUI colour fields of a file, from ffmpeg's trace_headers bitstream filter."""
    cmd = [ffmpeg(), "-hide_banner", "-loglevel", "trace", "-i", path, "-c", "copy", "-bsf:v", "trace_headers",
           "-f", "null", "-"]
    text = subprocess.run(cmd, capture_output=True, text=True).stderr
    fields = {}
    for line in text.splitlines():
        parts = line.split()
        for name in ("video_full_range_flag", "colour_primaries", "transfer_characteristics",
                     "matrix_coefficients", "chroma_sample_loc_type_top_field"):
            if name in parts and "=" in parts:
                fields.setdefault(name, int(parts[-1]))
    return fields


@pytest.mark.parametrize("limited", [False, True])
def test_mp4_round_trip_and_bt709_tags(tmp_path, limited):
    clip = smooth_clip()
    path = str(tmp_path / "clip.mp4")
    media.write_video(path, clip, NTSC, limited_range=limited)
    got = media.read_video(path)                                   # range and siting come from the file's tags
    assert got.frames.shape == clip.shape and got.fps == NTSC
    assert media.psnr(clip, got.frames).min() > TOL_MP4
    tags = vui(path)
    assert tags == {"video_full_range_flag": 0 if limited else 1, "colour_primaries": 1,
                    "transfer_characteristics": 1, "matrix_coefficients": 1,
                    "chroma_sample_loc_type_top_field": 1}        # 1 = BT.709; chroma location 1 = centre
    assert no_leftovers(tmp_path, ["clip.mp4"])


def test_read_foreign_h264(tmp_path):
    # ffmpeg's own lossless H.264 of I420 planes, with ffmpeg's default tags (tv range, left chroma, no matrix):
    # gvcc must read exactly yuv_to_rgb(planes, limited, BT.709, left siting) ...
    clip = smooth_clip(n=3)
    planes = [media.rgb_to_yuv(f, limited=True) for f in clip]
    raw = b"".join(y.tobytes() + u.tobytes() + v.tobytes() for y, u, v in planes)
    path = str(tmp_path / "foreign.mkv")
    subprocess.run([ffmpeg(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", "96x64", "-framerate",
                    "24", "-i", "-", "-c:v", "libx264", "-qp", "0", path], input=raw, check=True)
    got = media.read_video(path)
    assert got.fps == 24 and got.frames.shape == clip.shape
    for frame, (y, u, v) in zip(got.frames, planes):
        assert np.array_equal(frame, media.yuv_to_rgb(y, u, v, limited=True, siting="left"))
    # ... which is what ffmpeg's swscale makes of it too, up to the chroma upsampling filter
    ref = subprocess.run([ffmpeg(), "-v", "error", "-i", path, "-vf",
                          "scale=in_color_matrix=bt709:in_range=tv:flags=accurate_rnd+full_chroma_int",
                          "-pix_fmt", "rgb24", "-f", "rawvideo", "-"], capture_output=True, check=True).stdout
    ref = np.frombuffer(ref, np.uint8).reshape(clip.shape)
    assert media.psnr(ref, got.frames).min() > TOL_SWSCALE_UPSAMPLING


def test_read_first_frames_only(tmp_path):
    clip = smooth_clip(n=6)
    for name in ("a.y4m", "a.yuv", "a.mp4", "dir"):
        path = str(tmp_path / name)
        media.write_video(path, clip, 25)
        assert media.read_video(path, size=(96, 64), fps=25, frames=2).frames.shape[0] == 2


def y4m_bytes(header, planes_per_frame):
    return header.encode() + b"\n" + b"".join(b"FRAME\n" + b"".join(p.tobytes() for p in f)
                                              for f in planes_per_frame)


@pytest.mark.parametrize("cs,shape", [("C444", (4, 6)), ("C420mpeg2", (2, 3)), ("C420paldv", (2, 3)),
                                      ("C420", (2, 3)), ("C422", (4, 3)), ("Cmono", None)])
def test_y4m_colorspaces(tmp_path, cs, shape):
    # flat chroma: every siting gives the same picture, so this checks the plane layout of each colorspace
    y = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    planes = [y] if shape is None else [y, np.full(shape, 100, np.uint8), np.full(shape, 150, np.uint8)]
    path = tmp_path / "a.y4m"
    path.write_bytes(y4m_bytes(f"YUV4MPEG2 W6 H4 F25:1 Ip A1:1 {cs} XCOLORRANGE=FULL", [planes, planes]))
    got = media.read_video(str(path)).frames
    exp = media.yuv_to_rgb(y, *(planes[1:] if shape else [np.full((4, 6), 128, np.uint8)] * 2))
    assert got.shape == (2, 4, 6, 3) and np.array_equal(got[0], exp) and np.array_equal(got[1], exp)


def test_odd_size_y4m_and_png(tmp_path):
    clip = smooth_clip(n=2, h=33, w=17)
    for name in ("odd.y4m", "odd"):
        media.write_video(str(tmp_path / name), clip, 25)
        got = media.read_video(str(tmp_path / name)).frames
        assert got.shape == clip.shape and media.psnr(clip, got).min() > 40


# ==================================================================================================
# Errors (one line each)
# ==================================================================================================

def raises_one_line(fn, *args, match, **kw):
    with pytest.raises(MediaError, match=match) as exc:
        fn(*args, **kw)
    assert "\n" not in str(exc.value)


def test_read_errors(tmp_path):
    raises_one_line(media.read_video, str(tmp_path / "nope.y4m"), match="no such file")
    (tmp_path / "a.txt").write_bytes(b"x")
    raises_one_line(media.read_video, str(tmp_path / "a.txt"), match="not a video or image gvcc reads")
    (tmp_path / "a.yuv").write_bytes(bytes(99))
    raises_one_line(media.read_video, str(tmp_path / "a.yuv"), size=(7, 4), fps=25, match="even width and height")
    raises_one_line(media.read_video, str(tmp_path / "a.yuv"), size=(8, 4), fps=25, match="not a multiple")
    raises_one_line(media.read_video, str(tmp_path / "a.yuv"), fps=25, match="needs its size")
    (tmp_path / "ok.yuv").write_bytes(bytes(48))
    raises_one_line(media.read_video, str(tmp_path / "ok.yuv"), size=(8, 4), match="no frame rate")
    (tmp_path / "empty.yuv").write_bytes(b"")
    raises_one_line(media.read_video, str(tmp_path / "empty.yuv"), size=(8, 4), fps=25, match="no frames")
    (tmp_path / "p10.y4m").write_bytes(b"YUV4MPEG2 W8 H4 F25:1 C420p10\nFRAME\n" + bytes(96))
    raises_one_line(media.read_video, str(tmp_path / "p10.y4m"), match="unsupported y4m colorspace C420p10")
    (tmp_path / "none.y4m").write_bytes(b"YUV4MPEG2 W8 H4 F25:1 C420jpeg\n")
    raises_one_line(media.read_video, str(tmp_path / "none.y4m"), match="no frames")
    (tmp_path / "short.y4m").write_bytes(b"YUV4MPEG2 W8 H4 F25:1 C420jpeg\nFRAME\n" + bytes(40))
    raises_one_line(media.read_video, str(tmp_path / "short.y4m"), match="truncated")
    (tmp_path / "bad.y4m").write_bytes(b"RIFF....")
    raises_one_line(media.read_video, str(tmp_path / "bad.y4m"), match="not a YUV4MPEG2")
    (tmp_path / "emptydir").mkdir()
    raises_one_line(media.read_video, str(tmp_path / "emptydir"), match="no .png frames")
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    raises_one_line(media.read_video, str(tmp_path / "bad.mp4"), match="bad.mp4")


def test_write_errors(tmp_path):
    clip = smooth_clip(n=2, h=33, w=17)
    for name in ("odd.mp4", "odd.mkv", "odd.yuv"):
        raises_one_line(media.write_video, str(tmp_path / name), clip, 25, match="even width and height")
    raises_one_line(media.write_video, str(tmp_path / "a.webm"), clip, 25, match="unsupported output extension")
    raises_one_line(media.write_video, str(tmp_path / "a.y4m"), clip[:0], 25, match="no frames")
    raises_one_line(media.write_video, str(tmp_path / "a.y4m"), clip.astype(np.float32), 25, match="uint8")
    raises_one_line(media.write_video, str(tmp_path / "no" / "a.y4m"), clip, 25, match="does not exist")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "notes.txt").write_text("mine")
    raises_one_line(media.write_video, str(tmp_path / "mixed"), clip, 25, match="refusing to replace")
    assert (tmp_path / "mixed" / "notes.txt").read_text() == "mine"
    raises_one_line(media.check_output, str(tmp_path / "x.mp4"), 17, 33, match="write .y4m or a PNG directory")
    assert media.check_output(str(tmp_path / "x.mp4"), 16, 32) == "mp4"


# ==================================================================================================
# Atomic writes
# ==================================================================================================

def test_failing_y4m_write_leaves_nothing(tmp_path, monkeypatch):
    clip = smooth_clip()
    calls = []
    real = media.rgb_to_yuv

    def fail_on_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(*a, **kw)
    monkeypatch.setattr(media, "rgb_to_yuv", fail_on_third)
    with pytest.raises(RuntimeError):
        media.write_video(str(tmp_path / "a.y4m"), clip, 25)
    assert no_leftovers(tmp_path, [])
    # an existing file stays as it was
    (tmp_path / "a.y4m").write_bytes(b"old")
    calls.clear()
    with pytest.raises(RuntimeError):
        media.write_video(str(tmp_path / "a.y4m"), clip, 25)
    assert (tmp_path / "a.y4m").read_bytes() == b"old" and no_leftovers(tmp_path, ["a.y4m"])


def test_failing_mp4_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "MP4_CRF", "not-a-number")            # ffmpeg rejects the option
    raises_one_line(media.write_video, str(tmp_path / "a.mp4"), smooth_clip(), 25, match="ffmpeg")
    assert no_leftovers(tmp_path, [])


def test_failing_png_write_keeps_old_frames(tmp_path, monkeypatch):
    clip = smooth_clip()
    media.write_video(str(tmp_path / "d"), clip[:2], 25)
    real_save = media.Image.Image.save
    calls = []

    def fail_on_third(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(self, *a, **kw)
    monkeypatch.setattr(media.Image.Image, "save", fail_on_third)
    with pytest.raises(OSError):
        media.write_video(str(tmp_path / "d"), clip, 25)
    assert no_leftovers(tmp_path, ["d"]) and np.array_equal(media.read_video(str(tmp_path / "d")).frames, clip[:2])


# ==================================================================================================
# md5, resize, stills
# ==================================================================================================

def test_md5():
    clip = smooth_clip(n=3)
    assert media.frames_md5(clip) == hashlib.md5(clip.tobytes()).hexdigest()
    assert media.frame_md5s(clip) == [hashlib.md5(f.tobytes()).hexdigest() for f in clip]
    assert media.frames_md5(np.zeros((1, 1, 1, 3), np.uint8)) == hashlib.md5(bytes(3)).hexdigest()


def test_resize():
    clip = smooth_clip(n=2)
    small = media.resize(clip, 48, 32)
    assert small.shape == (2, 32, 48, 3) and small.dtype == np.uint8
    flat = np.full((1, 20, 30, 3), 77, np.uint8)
    assert np.all(media.resize(flat, 13, 9) == 77)                 # Lanczos keeps a constant
    assert np.array_equal(media.resize(clip, 96, 64), clip)


def test_avif_still_round_trip_and_determinism():
    frame = smooth_clip(n=1)[0]
    data = media.encode_still(frame, 60)
    assert data == media.encode_still(frame, 60)                   # same bytes twice
    back = media.decode_still(data)
    assert back.shape == frame.shape and media.psnr(frame, back) > 35
    assert len(media.encode_still(frame, 20)) < len(data) < len(media.encode_still(frame, 95))
    raises_one_line(media.decode_still, b"garbage", match="not a decodable AVIF")
    raises_one_line(media.encode_still, frame, 101, match="quality")


# ==================================================================================================
# Metrics
# ==================================================================================================

def test_psnr_known_values():
    a = smooth_clip(n=2, h=16, w=16) // 2 + 50                     # room for an offset
    assert media.psnr(a, a).tolist() == [math.inf, math.inf]
    for k in (1, 10):
        assert media.psnr(a, a + k) == pytest.approx([20 * math.log10(255 / k)] * 2, abs=1e-12)
    assert media.psnr(a[0], a[0] + 1) == pytest.approx(48.13080360867910, abs=1e-12)   # 20 log10(255)


def test_yuv_psnr_weighting():
    # +k on blue only: E'Y moves by K_B k/255, E'Pb by (1 - K_B) k / (2 (1 - K_B) 255), E'Pr by -K_B k / (2 (1 - K_R) 255)
    a = np.full((1, 8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[..., 2] += 17
    kr, kb = 0.2126, 0.0722
    d = 17 / 255
    exp_y, exp_u, exp_v = (-20 * math.log10(abs(s)) for s in (kb * d, d / 2, kb * d / (2 * (1 - kr))))
    y, u, v = media.yuv_psnrs(a, b)
    assert (y[0], u[0], v[0]) == pytest.approx((exp_y, exp_u, exp_v), abs=1e-9)
    assert media.psnr_yuv(a, b)[0] == pytest.approx((6 * exp_y + exp_u + exp_v) / 8, abs=1e-9)
    assert media.psnr_yuv(a[0], b[0], chroma="444") == pytest.approx((6 * exp_y + exp_u + exp_v) / 8, abs=1e-9)


def msssim_pair(h=181, w=203):
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([128 + 90 * np.sin(x / 7), 128 + 90 * np.cos(y / 5), 128 + 60 * np.sin((x + y) / 11)], -1)
    b = a + np.random.default_rng(1).normal(0, 12, a.shape)
    return np.clip(a, 0, 255).astype(np.uint8), np.clip(b, 0, 255).astype(np.uint8)


# pytorch-msssim 1.0.0, ms_ssim(X, Y, data_range=1.0) in float64 on msssim_pair() (odd size, padding exercised)
MSSSIM_REFERENCE = 0.9670621916892365


def test_ms_ssim_identical_and_reference_value():
    a, b = msssim_pair()
    assert media.ms_ssim(a, a) == 1.0
    assert media.ms_ssim(a, b) == pytest.approx(MSSSIM_REFERENCE, abs=TOL_MSSSIM)
    assert media.ms_ssim(a, np.clip(b.astype(int) + (b.astype(int) - a) , 0, 255).astype(np.uint8)) < \
        media.ms_ssim(a, b)                                        # more noise, lower score
    with pytest.raises(ValueError, match="at least 161"):
        media.ms_ssim(a[:160], b[:160])


def test_ms_ssim_against_pytorch_msssim():
    torch = pytest.importorskip("torch")
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    for h, w in ((181, 203), (176, 208)):
        a, b = msssim_pair(h, w)
        t = lambda z: torch.from_numpy(z).permute(2, 0, 1)[None].double() / 255.0    # [1, 3, H, W]
        ref = pytorch_msssim.ms_ssim(t(a), t(b), data_range=1.0).item()
        assert media.ms_ssim(a, b) == pytest.approx(ref, abs=TOL_MSSSIM)


def test_lpips_missing_gives_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)                # as if not installed
    assert "not installed" in media.lpips_unavailable()
    raises_one_line(media.lpips, smooth_clip(n=1), smooth_clip(n=1), match="LPIPS unavailable")
    res = media.evaluate(smooth_clip(n=2), smooth_clip(n=2, seed=1))
    assert any("LPIPS not computed" in n for n in res["notes"]) and res["sequence"]["lpips"] is None


def test_lpips_plumbing_with_a_stand_in_model(tmp_path, monkeypatch):
    # The real LPIPS needs torchvision's AlexNet weights, which tests never download: a stand-in `lpips` module
    # checks what media.lpips feeds it ([B, 3, H, W] float in [-1, 1]) and returns mean |a - b| per image.
    torch = pytest.importorskip("torch")
    import types
    seen = []

    class StandIn:
        def __init__(self, net, version, verbose):
            assert (net, version) == ("alex", "0.1")

        def eval(self):
            return self

        def __call__(self, a, b):
            seen.append((tuple(a.shape), float(a.min()), float(a.max())))
            return (a - b).abs().mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=StandIn))
    monkeypatch.setattr(media, "_LPIPS_MODEL", {})
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / media.ALEXNET_WEIGHTS).write_bytes(b"")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert media.lpips_unavailable() is None
    a = np.zeros((3, 4, 5, 3), np.uint8)
    b = np.full((3, 4, 5, 3), 255, np.uint8)
    assert media.lpips(a, b, batch=2).tolist() == [2.0, 2.0, 2.0]
    assert seen[0] == ((2, 3, 4, 5), -1.0, -1.0) and seen[1][0] == (1, 3, 4, 5)
    res = media.evaluate(a, b, gop=2)
    assert [r["lpips"] for r in res["per_frame"]] == [2.0, 2.0, 2.0] and res["sequence"]["lpips"] == 2.0


# ==================================================================================================
# BD-rate
# ==================================================================================================

RATES = [100.0, 200.0, 400.0, 800.0]
PSNRS = [30.0, 33.0, 35.5, 37.8]


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_bd_rate_identities(method):
    assert media.bd_rate(RATES, PSNRS, RATES, PSNRS, method=method) == pytest.approx(0.0, abs=1e-9)
    fewer = [0.9 * r for r in RATES]
    assert media.bd_rate(RATES, PSNRS, fewer, PSNRS, method=method) == pytest.approx(-10.0, abs=1e-9)
    assert media.bd_quality(RATES, PSNRS, RATES, [p + 0.5 for p in PSNRS], method=method) == \
        pytest.approx(0.5, abs=1e-9)
    # swapping the curves inverts the rate ratio
    other_r, other_p = [90.0, 190.0, 420.0, 700.0], [30.2, 33.5, 35.9, 37.5]
    ab = media.bd_rate(RATES, PSNRS, other_r, other_p, method=method)
    ba = media.bd_rate(other_r, other_p, RATES, PSNRS, method=method)
    assert (1 + ab / 100) * (1 + ba / 100) == pytest.approx(1.0, abs=1e-12)


# scipy 1.17.1: PchipInterpolator(psnr, log(rate)).integrate(lo, hi) for both curves over the PSNR overlap
SCIPY_PCHIP_BD = -12.594136400818101
# VCEG-M33's recipe written out separately (numpy polyfit of log-rate, degree 3, polyint over the overlap)
CUBIC_BD = -13.301235166903957


def test_bd_rate_matches_reference_values():
    other_r, other_p = [90.0, 190.0, 420.0, 700.0], [30.2, 33.5, 35.9, 37.5]
    assert media.bd_rate(RATES, PSNRS, other_r, other_p, method="pchip") == pytest.approx(SCIPY_PCHIP_BD, abs=1e-9)
    assert media.bd_rate(RATES, PSNRS, other_r, other_p, method="cubic") == pytest.approx(CUBIC_BD, abs=1e-9)


def test_bd_rate_errors():
    with pytest.raises(ValueError, match="do not overlap"):
        media.bd_rate(RATES, PSNRS, RATES, [p + 20 for p in PSNRS])
    with pytest.raises(ValueError, match="at least 2 points"):
        media.bd_rate(RATES[:1], PSNRS[:1], RATES, PSNRS)


# ==================================================================================================
# eval
# ==================================================================================================

def test_eval_main_table_and_json(tmp_path):
    media.write_video(str(tmp_path / "ref.yuv"), smooth_clip(n=7), 25)
    ref = media.read_video(str(tmp_path / "ref.yuv"), size=(96, 64), fps=25).frames
    dec = np.clip(ref.astype(int) + np.random.default_rng(0).integers(-6, 7, ref.shape), 0, 255).astype(np.uint8)
    dec[3] = ref[3]
    media.write_video(str(tmp_path / "dec"), dec, 16)
    (tmp_path / "anchor.264").write_bytes(bytes(1000))
    import io
    out = io.StringIO()
    res = media.eval_main(str(tmp_path / "ref.yuv"), str(tmp_path / "dec"), bitstream=str(tmp_path / "anchor.264"),
                          json_out=str(tmp_path / "r.json"), gop=3, size=(96, 64), out=out)
    text = out.getvalue()
    assert "8000 bits" in text and "gop (frames)" in text and "MS-SSIM not computed" in text
    data = json.loads((tmp_path / "r.json").read_text())
    assert [g["frames"] for g in data["per_gop"]] == [3, 3, 1] and len(data["per_frame"]) == 7
    assert data["per_frame"][3]["psnr"] is None                   # identical frame: inf -> null
    assert data["rate"]["bpp"] == pytest.approx(8000 / (96 * 64 * 7))
    assert data["rate"]["kbps"] == pytest.approx(8000 / (7 / 16) / 1000)   # the .yuv takes the PNGs' rate
    exp = media.psnr(ref[:3], dec[:3]).mean()
    assert data["per_gop"][0]["psnr"] == pytest.approx(exp, abs=1e-12)
    # the identical frame counts as PSNR_CAP in the means, so they stay finite and show the 6 differing frames
    capped = [min(r["psnr"], media.PSNR_CAP) for r in res["per_frame"]]
    assert res["per_frame"][3]["psnr"] == math.inf and max(capped[:3] + capped[4:]) < media.PSNR_CAP
    assert res["sequence"]["psnr"] == pytest.approx(np.mean(capped), abs=1e-12)
    assert data["sequence"]["psnr"] == pytest.approx(np.mean(capped), abs=1e-12)
    assert "inf" not in text.splitlines()[-2] and f"means count it as {media.PSNR_CAP:g} dB" in text


def test_eval_picture_shows_the_middle_frames_side_by_side(tmp_path):
    ref = smooth_clip(n=5)
    dec = ref[:, ::-1].copy()                                       # every frame upside down: a visible change
    media.write_video(str(tmp_path / "ref"), ref, 25)
    media.write_video(str(tmp_path / "dec"), dec, 25)
    import io
    media.eval_main(str(tmp_path / "ref"), str(tmp_path / "dec"), picture=str(tmp_path / "pair.png"),
                    use_lpips=False, out=io.StringIO())
    pair = np.asarray(media.Image.open(tmp_path / "pair.png").convert("RGB"))
    h, w = ref.shape[1:3]
    assert pair.shape == (h, 2 * w + 4, 3)
    assert np.array_equal(pair[:, :w], ref[2]) and np.array_equal(pair[:, w + 4:], dec[2])
    assert (pair[:, w:w + 4] == 255).all()
    with pytest.raises(media.MediaError, match="exists"):          # never written over without -y
        media.eval_main(str(tmp_path / "ref"), str(tmp_path / "dec"), picture=str(tmp_path / "pair.png"),
                        use_lpips=False, out=io.StringIO())


def test_eval_rate_from_gvcc_header(tmp_path):
    bitstream = pytest.importorskip("bitstream")
    hdr = bitstream.Header(mode="t2v", model="tiny-t2v", model_fingerprint=1, generator=1, src_width=40,
                           src_height=30, width=48, height=32, frames=20, fps_num=30000, fps_den=1001,
                           gop_frames=33, steps=20, tail_steps=3, g_scale_q=3000, shift_q=3000, K=64, M=4,
                           M_tail=4, tail_frames=0, seed=0, still_quality=0, residual=0, prompt="")
    (tmp_path / "s.gvcc").write_bytes(bitstream.write_header(hdr) + bytes(10))
    rate = media.stream_rate(str(tmp_path / "s.gvcc"), 96, 64, 5, fractions.Fraction(25))
    bits = 8 * os.path.getsize(tmp_path / "s.gvcc")
    assert rate["basis"].startswith("gvcc header") and rate["bpp"] == pytest.approx(bits / (40 * 30 * 20))
    assert rate["kbps"] == pytest.approx(bits / (20 * 1001 / 30000) / 1000)
    (tmp_path / "bad.gvcc").write_bytes(bitstream.MAGIC + bytes(3))
    raises_one_line(media.stream_rate, str(tmp_path / "bad.gvcc"), 96, 64, 5, 25, match="bad.gvcc")


def test_eval_mismatches_and_options(tmp_path):
    ref = smooth_clip(n=4)
    media.write_video(str(tmp_path / "ref.y4m"), ref, 25)
    media.write_video(str(tmp_path / "short.y4m"), ref[:2], 25)
    media.write_video(str(tmp_path / "half.y4m"), media.resize(ref, 48, 32), 25)
    import io
    raises_one_line(media.eval_main, str(tmp_path / "ref.y4m"), str(tmp_path / "short.y4m"), out=io.StringIO(),
                    match="frame counts differ")
    res = media.eval_main(str(tmp_path / "ref.y4m"), str(tmp_path / "short.y4m"), frames=2, out=io.StringIO())
    assert res["sequence"]["frames"] == 2
    raises_one_line(media.eval_main, str(tmp_path / "ref.y4m"), str(tmp_path / "half.y4m"), out=io.StringIO(),
                    match="sizes differ")
    res = media.eval_main(str(tmp_path / "ref.y4m"), str(tmp_path / "half.y4m"), resize_to="48x32",
                          out=io.StringIO())
    assert res["compared_at"] == {"width": 48, "height": 32} and res["sequence"]["psnr"] > 30


def test_written_files_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        media.write_video(str(tmp_path / "a.y4m"), smooth_clip(n=1), 25)
        media.write_video(str(tmp_path / "d"), smooth_clip(n=1), 25)
    finally:
        os.umask(mask)
    assert (tmp_path / "a.y4m").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
