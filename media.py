"""Video files, BT.709 colour, Lanczos resize, AVIF stills, quality metrics and `gvcc eval`.

Everything gvcc exchanges with the outside world as pixels goes through this file: the video it encodes, the
video it decodes, the still frames of the I2V / FLF2V modes, and the numbers a rate-distortion table is made of.
Inside gvcc a video is always uint8 RGB, frames [N, H, W, 3], with a rational frame rate (`Video`).

Shape letters: N frames, H height, W width (luma), h, w chroma plane size, 3 RGB or Y/Pb/Pr channels.

## Colour (H.273 / BT.709, 8 bits)
RGB -> YCbCr, with R, G, B in [0, 1] (uint8 / 255) and BT.709's K_R = 0.2126, K_B = 0.0722, K_G = 1 - K_R - K_B:
    E'Y = K_R R + K_G G + K_B B;   E'Pb = (B - E'Y) / (2 (1 - K_B));   E'Pr = (R - E'Y) / (2 (1 - K_R))
Code values (H.273 eq. for VideoFullRangeFlag; "round" is floor(x + 0.5), then clip to [0, 255]):
    full range (default):  Y = round(255 E'Y),      Cb = round(255 E'Pb + 128),  Cr likewise
    limited range:         Y = round(219 E'Y + 16), Cb = round(224 E'Pb + 128),  Cr likewise
YCbCr -> RGB is the exact inverse, rounded and clipped to uint8.
A range tag in the file always decides (XCOLORRANGE in .y4m, the range of a video file's stream). Where the file
says nothing, the caller's `limited_range` decides, and without one gvcc follows ffmpeg: a .y4m without
XCOLORRANGE and an untagged video file are limited range (the absent H.264/HEVC/AV1 flag), while a raw .yuv is
full range, as the learned-codec literature converts UVG's raw .yuv. The reader's notes say which was assumed.
Chroma 4:2:0: gvcc *writes* chroma as the mean of each 2x2 block (centre siting: C420jpeg in .y4m,
chroma_sample_location=center in .mp4; odd sizes repeat the last row/column). It *reads* chroma by linear
interpolation at the siting the input declares: centre for .yuv, C420 and C420jpeg; horizontally co-sited for
C420mpeg2, C422 and video files tagged `left` or untagged (the H.264 default); co-sited both ways for C420paldv
and `topleft` (paldv's distinct Cb/Cr lines are not modelled). Edges repeat the outermost chroma sample.
The GVCC authors' conversion of UVG (`yuv420_to_rgb_opencv`, for reproducing their ground truth, never a
default): chroma upsampled by OpenCV's `cv2.resize(INTER_LINEAR)` and `cv2.COLOR_YUV2RGB`, OpenCV's analog-YUV
matrix in 14-bit fixed point (R = Y + 1.140 V', G = Y - 0.395 U' - 0.581 V', B = Y + 2.032 U', U' = U - 128, no
range expansion), both bit-exact in integer numpy (checked against opencv-python-headless in the tests).

## File formats
Inputs are recognised by content (`input_kind`); outputs by extension.
| input | read | write |
|---|---|---|
| .y4m, or any file starting `YUV4MPEG2 `, or `-` (stdin) | C420, C420jpeg, C420mpeg2, C420paldv, C422, C444, Cmono; 8 bit; XCOLORRANGE honoured | .y4m: C420jpeg, XCOLORRANGE set |
| .yuv (by name: raw has no header) | raw I420 8 bit; size (W, H) and fps must be given; even W, H | I420, even W, H |
| any other video file (.mp4 .mov .mkv .webm .avi ...) | the bundled ffmpeg; 8-bit 4:2:0 / 4:4:4 with BT.709 or BT.601 matrix (or none: BT.709) is converted here, anything else (10 bit, BT.2020, RGB codecs) by ffmpeg to rgb24; a file that decodes to fewer frames than its container declares is read with a warning (truncated) | .mp4 / .mkv: libx264 yuv420p crf 12, BT.709 primaries, transfer and matrix, range, centre chroma in the VUI; even W, H only |
| directory | every *.png in name order (8-bit RGB, RGBA, L, LA, P; alpha dropped) | 000000.png ... with the frame rate in a `gvcc-fps` text chunk |
| `frames/%06d.png` pattern, or one image | as ffmpeg's image2: numbered files from the first of indexes 0..4 that exists, while they exist; one image is one frame; PNG, JPEG, BMP, TIFF, WebP, PPM, AVIF, GIF | - |
Images without a `gvcc-fps` chunk have no frame rate: read_video gives them 25 fps, ffmpeg's image2 default.
read_video reads a whole input into memory (eval, tests). The encoder reads through VideoSource instead: one pass
counts the frames without converting or keeping any (seeking past .y4m / .yuv pixels, image headers only), then
read(start, stop) converts the frames of one GOP at a time; stdin is spooled to a temporary file first.
A 4:2:0 .mp4 cannot hold an odd width or height (H.264 crops in 2-pixel units), and gvcc never resizes behind the
user's back: writing an odd size to .mp4 / .mkv / .yuv is a MediaError that names .y4m and PNG as the way out.
Writes are atomic: the data goes to a temporary name beside the target and is renamed over it at the end
(VideoWriter, AtomicFile). Before any work, the command line checks every output name with check_target: a file
or a folder of the kind expected, not an input, not existing without overwrite, in a writable folder.
Long outputs stream: VideoWriter appends frames as they come (the decoder writes each GOP as it is decoded);
write_video is its whole-array form, so both write the same bytes.

## Metrics (per frame, on uint8 RGB frames of equal size)
- psnr: 10 log10(1 / MSE) over the three RGB channels in [0, 1]; identical frames give +inf.
- psnr_y, psnr_u, psnr_v, psnr_yuv: the frames are converted to BT.709 full-range E'Y, E'Pb + 0.5, E'Pr + 0.5 in
  [0, 1] (no 8-bit rounding), chroma reduced to 4:2:0 by 2x2 means (as DCVC codes and measures YUV 4:2:0;
  `chroma="444"` keeps full-resolution chroma); psnr_yuv = (6 psnr_y + psnr_u + psnr_v) / 8 per frame.
- ms_ssim: Wang, Simoncelli and Bovik (2003), as pytorch-msssim computes it: 5 scales, 11x11 Gaussian window
  (sigma 1.5, 'valid' filtering), K1 = 0.01, K2 = 0.03, data range 1, weights (0.0448, 0.2856, 0.3001, 0.2363,
  0.1333), 2x2 average pooling with zero padding of odd sizes, contrast terms clipped at 0, per RGB channel then
  averaged. Needs at least 161 pixels on the short side.
- lpips: LPIPS v0.1 with AlexNet (Zhang et al. 2018) from the `lpips` package, inputs in [-1, 1], only when the
  package and torchvision's AlexNet weights are already on disk; gvcc never downloads them.
- Aggregation: per GOP (non-overlapping runs of `gop` frames, 33 by default) and per sequence, as the mean over
  frames ("mean") and as the mean of the GOP means ("gop_mean", the paper's order); PSNR is averaged in dB.
- bd_rate / bd_quality: Bjontegaard deltas between two R-D curves: log-rate as a cubic polynomial of quality
  (least squares, degree min(3, points - 1)) or as a monotone piecewise cubic (PCHIP), integrated over the
  overlapping quality interval; bd_quality swaps the axes.
"""
import fractions
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, PngImagePlugin


# ==================================================================================================
# Errors, the Video type, small parsers
# ==================================================================================================

class MediaError(Exception):
    """A video or image cannot be read or written as asked (one-line message naming the file)."""


@dataclass
class Video:
    frames: np.ndarray            # uint8 [N, H, W, 3] RGB
    fps: fractions.Fraction       # frames per second, exact (30000/1001, not 29.97)
    notes: list = field(default_factory=list)       # defaults the reader assumed (range, frame rate), to tell
    warnings: list = field(default_factory=list)    # what looked wrong in the file (truncation), to tell


def parse_size(text):
    """'1920x1080' -> (1920, 1080); a (W, H) pair passes through. MediaError on anything else."""
    if isinstance(text, (tuple, list)) and len(text) == 2:
        w, h = int(text[0]), int(text[1])
    else:
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
        if not m:
            raise MediaError(f"size '{text}' is not WIDTHxHEIGHT (e.g. 1920x1080)")
        w, h = int(m.group(1)), int(m.group(2))
    if not (0 < w <= 16384 and 0 < h <= 16384):
        raise MediaError(f"size {w}x{h} is out of range (1 to 16384 pixels per side)")
    return w, h


def parse_fps(value):
    """'30000/1001', '25', 29.97 or a Fraction -> positive Fraction. MediaError on anything else."""
    try:
        if isinstance(value, float):
            fps = _fraction_from_float(value)
        else:
            fps = fractions.Fraction(str(value).strip().replace(":", "/"))
    except (ValueError, ZeroDivisionError):
        raise MediaError(f"frame rate '{value}' is not a number or a ratio like 30000/1001") from None
    if not 0 < fps <= 1000:
        raise MediaError(f"frame rate {value} is out of range (0 to 1000 frames per second)")
    return fps


def _fraction_from_float(x):
    # ffmpeg prints rates rounded to 2 decimals: recover integers and the NTSC family n*1000/1001.
    if abs(x - round(x)) < 1e-3:
        return fractions.Fraction(round(x))
    ntsc = round(x * 1.001)
    if ntsc > 0 and abs(x - ntsc * 1000 / 1001) < 0.006:
        return fractions.Fraction(ntsc * 1000, 1001)
    return fractions.Fraction(x).limit_denominator(1001)


def _check_frames(frames, what="frames"):
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        desc = f"{frames.dtype} {list(frames.shape)}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise MediaError(f"{what} must be a uint8 array [N, H, W, 3], got {desc}")
    if frames.shape[0] == 0:
        raise MediaError(f"{what}: no frames")


# ==================================================================================================
# Colour: BT.709 RGB <-> Y'CbCr (H.273), chroma subsampling
# ==================================================================================================

# H.273 MatrixCoefficients -> (K_R, K_B). gvcc writes bt709; bt601 is only read (SD video files tagged so).
MATRICES = {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114)}

# chroma siting name -> (co-sited horizontally, co-sited vertically); False means centred between luma samples
SITINGS = {"center": (False, False), "left": (True, False), "topleft": (True, True)}


def rgb_to_ypbpr(rgb, matrix="bt709"):
    """uint8 RGB [H, W, 3] -> float64 [3, H, W]: E'Y in [0, 1], E'Pb and E'Pr in [-0.5, 0.5]."""
    kr, kb = MATRICES[matrix]
    kg = 1.0 - kr - kb
    x = rgb.astype(np.float64) / 255.0                             # [H, W, 3]
    r, g, b = x[..., 0], x[..., 1], x[..., 2]                      # [H, W] each
    y = kr * r + kg * g + kb * b                                   # [H, W]
    pb = (b - y) / (2.0 * (1.0 - kb))
    pr = (r - y) / (2.0 * (1.0 - kr))
    return np.stack([y, pb, pr])                                   # [3, H, W]


def ypbpr_to_rgb(y, pb, pr, matrix="bt709"):
    """float E'Y, E'Pb, E'Pr [H, W] -> uint8 RGB [H, W, 3] (rounded, clipped)."""
    kr, kb = MATRICES[matrix]
    kg = 1.0 - kr - kb
    r = y + 2.0 * (1.0 - kr) * pr                                  # [H, W]
    b = y + 2.0 * (1.0 - kb) * pb
    g = (y - kr * r - kb * b) / kg
    rgb = np.stack([r, g, b], axis=-1) * 255.0                     # [H, W, 3]
    return np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8)


def _levels(limited):
    # (luma scale, luma offset, chroma scale) of H.273's 8-bit code values; chroma is centred on 128
    return (219.0, 16.0, 224.0) if limited else (255.0, 0.0, 255.0)


def chroma_downsample(p, sub_x, sub_y):
    """[H, W] -> [ceil(H / sub_y), ceil(W / sub_x)]: means of sub_y x sub_x blocks (centre siting).

    An odd last row or column is repeated, so its block is the mean of the one real sample with itself.
    """
    if sub_x == 2:
        if p.shape[1] % 2:
            p = np.concatenate([p, p[:, -1:]], axis=1)
        p = 0.5 * (p[:, 0::2] + p[:, 1::2])                        # [H, w]
    if sub_y == 2:
        if p.shape[0] % 2:
            p = np.concatenate([p, p[-1:]], axis=0)
        p = 0.5 * (p[0::2] + p[1::2])                              # [h, w]
    return p


def _upsample_axis(c, n, factor, cosited, axis):
    # Linear interpolation of chroma samples to n luma positions along one axis. Chroma sample i sits at luma
    # position factor*i (co-sited) or factor*i + (factor-1)/2 (centred); outside the outermost samples, repeat.
    if factor == 1:
        return c
    m = c.shape[axis]
    x = np.arange(n, dtype=np.float64)
    pos = x / factor if cosited else (x - (factor - 1) / 2) / factor   # [n] position in chroma samples
    pos = np.clip(pos, 0.0, m - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, m - 1)
    wt = pos - i0
    shape = [1, 1]
    shape[axis] = n
    wt = wt.reshape(shape)
    return np.take(c, i0, axis=axis) * (1.0 - wt) + np.take(c, i1, axis=axis) * wt


def yuv_to_rgb(y, u, v, *, limited=False, matrix="bt709", siting="center"):
    """8-bit planes Y [H, W], Cb / Cr [h, w] (h = H, ceil(H/2); w likewise) -> uint8 RGB [H, W, 3]."""
    ys, yo, cs = _levels(limited)
    hgt, wid = y.shape
    fx = 2 if u.shape[1] < wid else 1
    fy = 2 if u.shape[0] < hgt else 1
    co_x, co_y = SITINGS[siting]
    ey = (y.astype(np.float64) - yo) / ys                          # [H, W]
    planes = []
    for c in (u, v):
        p = (c.astype(np.float64) - 128.0) / cs                    # [h, w]
        p = _upsample_axis(p, wid, fx, co_x, axis=1)               # [h, W]
        p = _upsample_axis(p, hgt, fy, co_y, axis=0)               # [H, W]
        planes.append(p)
    return ypbpr_to_rgb(ey, planes[0], planes[1], matrix)


def rgb_to_yuv(rgb, *, limited=False, sub=(2, 2)):
    """uint8 RGB [H, W, 3] -> 8-bit BT.709 planes Y [H, W], Cb, Cr [ceil(H/sub_y), ceil(W/sub_x)]."""
    ys, yo, cs = _levels(limited)
    ey, pb, pr = rgb_to_ypbpr(rgb)                                 # [H, W] each
    q = lambda a: np.clip(np.floor(a + 0.5), 0, 255).astype(np.uint8)   # H.273 Round, then clip
    y = q(ey * ys + yo)
    u = q(chroma_downsample(pb, *sub) * cs + 128.0)
    v = q(chroma_downsample(pr, *sub) * cs + 128.0)
    return y, u, v


def _upsample2_opencv(c):
    """uint8 [h, w] -> [2h, 2w] as cv2.resize(c, (2w, 2h), interpolation=cv2.INTER_LINEAR) computes it.

    Source position (x + 0.5) / 2 - 0.5, i.e. weights 3/4, 1/4 in quarters. Horizontally the position is clamped
    to the edge samples; vertically OpenCV keeps the unclamped weights and clamps only the row index. Its
    fixed point: the horizontal pass gives S = 2048 * (a w0 + b w1) / 4 exactly; the vertical pass computes
    ((S0 >> 4) b0 >> 16) + ((S1 >> 4) b1 >> 16), rounded by (+2) >> 2, with b = 2048 * weight (its SIMD path).
    """
    h, w = c.shape
    c = c.astype(np.int64)
    x = np.arange(2 * w)
    p = np.clip(2 * x - 1, 0, 4 * (w - 1))                          # 4 * source column, clamped
    i0, f = p // 4, p % 4
    i1 = np.minimum(i0 + 1, w - 1)
    s = (c[:, i0] * (4 - f) + c[:, i1] * f) * 512                   # [h, 2w] S, weights scaled by 2048
    y = np.arange(2 * h)
    q = 2 * y - 1                                                   # 4 * source row, not clamped
    r0 = np.floor_divide(q, 4)
    g = q - 4 * r0
    b0, b1 = ((4 - g) * 512)[:, None], (g * 512)[:, None]            # [2h, 1]
    r1, r0 = np.clip(r0 + 1, 0, h - 1), np.clip(r0, 0, h - 1)
    t = (((s[r0] >> 4) * b0) >> 16) + (((s[r1] >> 4) * b1) >> 16)   # [2h, 2w]
    return np.clip((t + 2) >> 2, 0, 255)


def yuv420_to_rgb_opencv(y, u, v):
    """8-bit I420 planes Y [H, W], U, V [H/2, W/2] -> uint8 RGB [H, W, 3], exactly as the GVCC authors convert
    UVG: cv2.resize of U and V (INTER_LINEAR) to [H, W], then cv2.cvtColor(COLOR_YUV2RGB). H and W must be even
    (UVG's are), as in OpenCV's I420 conversions: an odd size is a MediaError."""
    h, w = y.shape
    if h % 2 or w % 2 or u.shape != (h // 2, w // 2) or v.shape != (h // 2, w // 2):
        raise MediaError(f"the authors' YUV conversion needs an even frame size with chroma planes of half of it "
                         f"(4:2:0): Y {w}x{h}, U {u.shape[1]}x{u.shape[0]}, V {v.shape[1]}x{v.shape[0]}")
    yy = y.astype(np.int64)
    du, dv = _upsample2_opencv(u) - 128, _upsample2_opencv(v) - 128  # [H, W] each
    descale = lambda x: (x + (1 << 13)) >> 14                        # OpenCV's CV_DESCALE by yuv_shift 14
    r = yy + descale(dv * 18678)                                     # 1.140 * 2^14
    g = yy + descale(du * -6472 + dv * -9519)                        # -0.395, -0.581
    b = yy + descale(du * 33292)                                     # 2.032
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


# ==================================================================================================
# Reading
# ==================================================================================================

# y4m C tag -> (chroma sub_x, sub_y, siting); sub 0 is a luma-only (mono) file
Y4M_CHROMA = {
    "420jpeg": (2, 2, "center"), "420": (2, 2, "center"), "420mpeg2": (2, 2, "left"),
    "420paldv": (2, 2, "topleft"), "422": (2, 1, "left"), "444": (1, 1, "center"), "mono": (0, 0, "center"),
}

_PNG_FPS_KEY = "gvcc-fps"
IMAGE_FPS = fractions.Fraction(25)      # frame rate of images that carry none: ffmpeg's image2 default
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM", "AVIF", "GIF")   # single images and patterns
PATTERN_START_RANGE = 5                 # a %d pattern starts at the first existing index 0..4, as ffmpeg's image2
# the code-value range of inputs whose file says nothing, when the caller does not say either
UNTAGGED_RANGE = {"y4m": "limited (ffmpeg's reading of a .y4m without XCOLORRANGE)",
                  "ffmpeg": "limited (the H.264/HEVC/AV1 default of an absent range flag, as ffmpeg reads it)",
                  "yuv": "full (as the learned-codec literature converts UVG's raw .yuv)"}


def _pattern(path):
    # 'frames/%06d.png' -> a printf pattern with exactly one integer field (and '%%' escapes), else None
    fields = re.findall(r"%(%|0?\d*d)", path)
    if not fields or fields.count("%") == len(fields) or len(fields) - fields.count("%") != 1:
        return None
    if re.search(r"%(?!%|0?\d*d)", path.replace("%%", "")):
        return None
    return path


def input_kind(path):
    """What an input is, decided by its content where it has one; the one place gvcc decides how to read.

    '-'             y4m on stdin (a YUV4MPEG2 stream, as `ffmpeg ... -f yuv4mpegpipe -` writes it)
    a directory     'png': its *.png frames in name order (gvcc's own frame folders)
    'a/%06d.png'    'images': a printf pattern over numbered image files, as ffmpeg's image2 reads it
    'YUV4MPEG2 '    'y4m' (a file starting so, whatever its name; a .y4m name without it is a damaged y4m)
    .yuv            'yuv': raw I420, the one format known by its name only (it has no header)
    an image        'images': one still image Pillow reads (PNG, JPEG, ...): a 1-frame video
    anything else   'ffmpeg': any container and codec the bundled ffmpeg reads (.mp4, .mov, .mkv, .avi, ...)
    """
    if path == "-":
        return "y4m"
    if os.path.isdir(path):
        return "png"
    if not os.path.exists(path):
        if _pattern(path):
            return "images"
        raise MediaError(f"{path}: no such file or directory")
    try:
        with open(path, "rb") as fh:
            head = fh.read(10)
    except OSError as exc:
        raise MediaError(f"{path}: cannot read ({exc.strerror})") from None
    ext = os.path.splitext(path)[1].lower()
    if head == b"YUV4MPEG2 " or ext == ".y4m":
        return "y4m"
    if ext == ".yuv":
        return "yuv"
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            if getattr(im, "n_frames", 1) == 1:
                return "images"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        pass
    return "ffmpeg"


def read_video(path, *, size=None, fps=None, limited_range=None, frames=None):
    """Read a whole video into memory: uint8 RGB frames [N, H, W, 3] and its frame rate (input kinds: input_kind).

    size: (W, H) or 'WxH' of a raw .yuv (required there, ignored elsewhere).
    fps: frame rate for inputs that carry none (.yuv; images default to 25, ffmpeg's image2 rate); overrides the
    file's rate if given.
    limited_range: code-value range of inputs whose file carries no range tag (.yuv, .y4m without XCOLORRANGE,
    untagged video files); None: UNTAGGED_RANGE's per-kind default. A tag in the file always wins.
    frames: read only the first `frames` frames.
    The returned Video's notes say which of these defaults were used, its warnings what looked wrong.
    The encoder reads GOP by GOP through VideoSource instead, so that memory does not grow with the clip.
    """
    video = _read(path, size=size, fps=fps, limited_range=limited_range, frames=frames, image_fps=True)
    if video.fps is None:
        raise MediaError(f"{path}: the file has no frame rate; give one (fps)")
    return video


def _read(path, *, size=None, fps=None, limited_range=None, frames=None, image_fps=False):
    # read_video without the frame-rate requirement: eval takes a missing rate from the other file
    opened = _Opened(os.fspath(path), size=size, fps=fps, limited_range=limited_range, frames=frames,
                     image_fps=image_fps)
    try:
        out = [frame for frame in opened.frames(lambda i: True)]
    finally:
        opened.close()
    return Video(np.stack(out), opened.fps, opened.notes, opened.warnings)


class _Opened:
    """One pass over an input: what its header says (size (W, H), fps, notes, warnings) and frames(want), a
    generator of its frames in order, uint8 RGB [H, W, 3] for the frames i where want(i) is true and None for the
    others. A skipped frame is not converted to RGB, and not read at all where the format lets the reader seek
    past it (.y4m, .yuv; image files are opened for their header only). Errors are MediaError, raised as met;
    ffmpeg's truncation warning is added to `warnings` when the pass reaches the end."""

    def __init__(self, path, *, size=None, fps=None, limited_range=None, frames=None, image_fps=False):
        if frames is not None and frames < 1:
            raise MediaError(f"frames must be at least 1, got {frames}")
        self.path, self.limit = path, frames if frames is not None else sys.maxsize
        self.notes, self.warnings, self._fh, self._gen = [], [], None, None
        kind = input_kind(path)
        if kind == "y4m":
            self._fh = sys.stdin.buffer if path == "-" else open(path, "rb")
            try:
                self.size, self.fps, self._frames = _open_y4m(self._fh, "stdin" if path == "-" else path,
                                                              limited_range, self.notes)
            except BaseException:
                self.close()
                raise
        elif kind == "yuv":
            self.size, self.fps, self._frames = _open_yuv(path, size, limited_range, self.notes)
        elif kind == "png":
            names = sorted(n for n in os.listdir(path) if n.lower().endswith(".png"))
            if not names:
                raise MediaError(f"{path}: the directory holds no .png frames")
            files = [os.path.join(path, n) for n in names[:self.limit]]
            self.size, self.fps, self._frames = _open_images(files, ("PNG",))
        elif kind == "images":
            self.size, self.fps, self._frames = _open_images(_image_files(path, self.limit), IMAGE_FORMATS)
        else:
            self.size, self.fps, self._frames, self._gen = _open_ffmpeg(path, limited_range, self.notes,
                                                                        self.warnings)
        if fps is not None:
            self.fps = parse_fps(fps)
        elif self.fps is None and kind in ("png", "images") and image_fps:
            self.fps = IMAGE_FPS
            self.notes.append(f"{path}: images carry no frame rate: {IMAGE_FPS} fps, as ffmpeg assumes (give fps)")

    def frames(self, want):
        n = 0
        for frame in self._frames(self.limit, want):
            n += 1
            yield frame
        if n == 0:
            raise MediaError(f"{self.path}: the video has no frames")

    def close(self):
        if self._gen is not None:
            self._gen.close()
        if self._fh is not None and self._fh is not sys.stdin.buffer:
            self._fh.close()


class VideoSource:
    """An input read frame range by frame range, for the encoder: memory holds the frames asked for, not the clip.

    Opening makes one pass over the input to count its frames without keeping them (seeking past the pixels of
    .y4m and .yuv files, reading only the headers of image files, decoding a video file once without converting
    its colours), so the frame count, size and rate are known before the first GOP is coded. A y4m on stdin is
    first copied to a temporary file (removed by close()), because it is read more than once.
    read(start, stop) -> uint8 [stop - start, H, W, 3], frames start..stop-1. Reads in increasing order cost one
    pass over the input; the last frame read is kept, so GOPs that share their boundary frame read on without
    going back; any other step back reopens the input from its start.
    Attributes: n, width, height, fps (Fraction or None), notes and warnings (as Video's).
    Arguments as read_video's.
    """

    def __init__(self, path, *, size=None, fps=None, limited_range=None, frames=None):
        self.path, self._spool = os.fspath(path), None
        self._how = dict(size=size, fps=fps, limited_range=limited_range, frames=frames, image_fps=True)
        if self.path == "-":
            self._spool = _spool_stdin()
        try:
            opened = _Opened(self._name, **self._how)
            try:
                self.n = sum(1 for _ in opened.frames(lambda i: False))
            finally:
                opened.close()
        except BaseException:
            self.close()
            raise
        (self.width, self.height), self.fps = opened.size, opened.fps
        self.notes, self.warnings = opened.notes, opened.warnings
        if self.fps is None:
            self.close()
            raise MediaError(f"{path}: the file has no frame rate; give one (fps)")
        self._opened = self._iter = None
        self._span = (0, 0)
        self._next = 0              # index of the frame self._iter yields next
        self._last = None           # (index, frame) of the last frame read

    @property
    def _name(self):
        return self._spool or self.path

    def read(self, start, stop):
        if not 0 <= start < stop <= self.n:
            raise ValueError(f"frames {start}:{stop} of a {self.n}-frame video")
        out = np.empty((stop - start, self.height, self.width, 3), np.uint8)      # [n, H, W, 3]
        i = start
        if self._last is not None and self._last[0] == start:
            out[0] = self._last[1]
            i += 1
        if i < stop:
            if self._iter is None or i < self._next:
                self._reopen()
            self._span = (i, stop)          # what the pass converts; frames before it come back as None
            while self._next < stop:
                frame = next(self._iter, None)
                if self._next >= i:
                    if frame is None:
                        raise MediaError(f"{self.path}: frame {self._next} cannot be read again (the file "
                                         f"changed while gvcc was reading it)")
                    out[self._next - start] = frame
                self._next += 1
        self._last = (stop - 1, out[-1].copy())
        return out

    def _reopen(self):
        if self._opened is not None:
            self._opened.close()
        self._opened = _Opened(self._name, **self._how)
        self._iter = self._opened.frames(lambda i: self._span[0] <= i < self._span[1])
        self._next = 0

    def close(self):
        if getattr(self, "_opened", None) is not None:
            self._opened.close()
            self._opened = None
        if self._spool is not None and os.path.exists(self._spool):
            os.remove(self._spool)
            self._spool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _spool_stdin():
    """Copy stdin to a temporary file (for VideoSource, which reads its input more than once); its path."""
    fd, tmp = tempfile.mkstemp(prefix="gvcc-stdin-", suffix=".y4m")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


def _image_files(path, limit):
    # a single image, or the files of a %d pattern from its first existing index while they exist
    if os.path.exists(path) or not _pattern(path):
        return [path]
    start = next((i for i in range(PATTERN_START_RANGE) if os.path.isfile(path % i)), None)
    if start is None:
        raise MediaError(f"{path}: no file matches the pattern (looked for {path % 0} to "
                         f"{path % (PATTERN_START_RANGE - 1)})")
    files = []
    while len(files) < limit and os.path.isfile(path % (start + len(files))):
        files.append(path % (start + len(files)))
    return files


def _range_of(tag, limited, kind, name, notes):
    # tag: the file's own 'FULL' / 'LIMITED' (or None); limited: the caller's choice for untagged files (or None)
    if tag is not None:
        return tag == "LIMITED"
    if limited is None:
        limited = UNTAGGED_RANGE[kind].startswith("limited")
        notes.append(f"{name}: no colour range tag, read as {UNTAGGED_RANGE[kind]}; give "
                     f"--{'full' if limited else 'limited'}-range if it is not")
    return limited


def _open_y4m(fh, path, limited, notes):
    # -> ((W, H), rate or None, frames(limit, want)): the header is parsed now, the frames as they are asked for
    header = fh.readline(65536)
    if not header.startswith(b"YUV4MPEG2 ") or not header.endswith(b"\n"):
        raise MediaError(f"{path}: not a YUV4MPEG2 file (bad or overlong header line)")
    params = {}
    for tok in header[10:].decode("ascii", "replace").split():
        if tok[0] == "X":
            key, _, val = tok[1:].partition("=")
            params["X" + key.upper()] = val.upper()
        else:
            params[tok[0]] = tok[1:]
    try:
        wid, hgt = int(params["W"]), int(params["H"])
    except (KeyError, ValueError):
        raise MediaError(f"{path}: y4m header lacks a valid W or H") from None
    if not (0 < wid <= 16384 and 0 < hgt <= 16384):
        raise MediaError(f"{path}: y4m size {wid}x{hgt} is out of range")
    rate = None
    if "F" in params:
        try:
            num, den = (int(s) for s in params["F"].split(":"))
            rate = fractions.Fraction(num, den) if num > 0 and den > 0 else None
        except ValueError:
            raise MediaError(f"{path}: y4m frame rate 'F{params['F']}' is not num:den") from None
    cname = params.get("C", "420jpeg")
    if cname not in Y4M_CHROMA:
        raise MediaError(f"{path}: unsupported y4m colorspace C{cname} (supported: 8-bit "
                         + ", ".join("C" + k for k in Y4M_CHROMA) + ")")
    sub_x, sub_y, siting = Y4M_CHROMA[cname]
    rng = params.get("XCOLORRANGE")
    limited = _range_of(rng if rng in ("FULL", "LIMITED") else None, limited, "y4m", path, notes)
    luma = wid * hgt
    cw, ch = (-(-wid // sub_x), -(-hgt // sub_y)) if sub_x else (0, 0)
    size = luma + 2 * cw * ch
    try:
        end = os.fstat(fh.fileno()).st_size if fh.seekable() else None     # a file: skipped frames are seeked
    except (OSError, AttributeError, ValueError):
        end = None

    def frames(limit, want):
        for i in range(limit):
            line = fh.readline(4096)
            if not line:
                return
            if not line.startswith(b"FRAME") or not line.endswith(b"\n"):
                raise MediaError(f"{path}: frame {i} does not start with a FRAME line")
            if end is not None and not want(i):
                got = min(size, end - fh.tell())
                fh.seek(got, os.SEEK_CUR)
                data = None
            else:
                data = fh.read(size)
                got = len(data)
            if got < size:
                raise MediaError(f"{path}: frame {i} is truncated ({got} of {size} bytes)")
            if not want(i):
                yield None
                continue
            buf = np.frombuffer(data, np.uint8)
            y = buf[:luma].reshape(hgt, wid)                         # [H, W]
            if cw:
                u = buf[luma:luma + cw * ch].reshape(ch, cw)         # [h, w]
                v = buf[luma + cw * ch:].reshape(ch, cw)
            else:
                u = v = np.full((hgt, wid), 128, np.uint8)           # mono: zero chroma
            yield yuv_to_rgb(y, u, v, limited=limited, siting=siting)
    return (wid, hgt), rate, frames


def _open_yuv(path, size, limited, notes):
    if size is None:
        raise MediaError(f"{path}: a raw .yuv file needs its size (WxH) and frame rate given")
    wid, hgt = parse_size(size)
    if wid % 2 or hgt % 2:
        raise MediaError(f"{path}: I420 needs an even width and height, got {wid}x{hgt}")
    luma, chroma = wid * hgt, (wid // 2) * (hgt // 2)
    fsize = luma + 2 * chroma
    total = os.path.getsize(path)
    if total == 0:
        raise MediaError(f"{path}: the video has no frames (empty file)")
    if total % fsize:
        raise MediaError(f"{path}: file size {total} is not a multiple of the I420 frame size {fsize} "
                         f"for {wid}x{hgt}; wrong size?")
    limited = _range_of(None, limited, "yuv", path, notes)

    def frames(limit, want):
        with open(path, "rb") as fh:
            for i in range(min(total // fsize, limit)):
                if not want(i):
                    yield None
                    continue
                fh.seek(i * fsize)
                buf = np.frombuffer(fh.read(fsize), np.uint8)
                if len(buf) < fsize:
                    raise MediaError(f"{path}: frame {i} is truncated (the file shrank while gvcc read it)")
                y = buf[:luma].reshape(hgt, wid)                         # [H, W]
                u = buf[luma:luma + chroma].reshape(hgt // 2, wid // 2)  # [h, w]
                v = buf[luma + chroma:].reshape(hgt // 2, wid // 2)
                yield yuv_to_rgb(y, u, v, limited=limited, siting="center")
    return (wid, hgt), None, frames


def _open_images(files, formats):
    # still images as frames: 8-bit RGB, RGBA, L, LA or P (alpha dropped), all of one size; the frame rate from
    # the first image's gvcc-fps text chunk (the PNG frames gvcc writes), else None. A skipped image is opened for
    # its header only (its mode and size are still checked).
    kinds = " or ".join(formats)

    def open_one(fname, i, size, convert):
        try:
            with Image.open(fname, formats=formats) as im:
                if im.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                    raise MediaError(f"{fname}: unsupported {im.format} mode {im.mode} (8-bit RGB, RGBA, L, LA or P)")
                if size is not None and im.size != size:
                    raise MediaError(f"{fname}: size {im.size[0]}x{im.size[1]} differs from the first frame's "
                                     f"{size[0]}x{size[1]}")
                rate = parse_fps(im.text[_PNG_FPS_KEY]) if i == 0 and _PNG_FPS_KEY in getattr(im, "text", {}) \
                    else None
                return im.size, rate, (np.asarray(im.convert("RGB")) if convert else None)    # [H, W, 3]
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise MediaError(f"{fname}: not a readable {kinds} image ({exc})") from None

    size, rate, _ = open_one(files[0], 0, None, False)

    def frames(limit, want):
        for i, fname in enumerate(files[:limit]):
            yield open_one(fname, i, size, want(i))[2]
    return size, rate, frames


def _probe_pix_fmt(path):
    # The video stream's pixel format and colour tags from `ffmpeg -v verbose -i`, whose stream line reads e.g.
    # 'Video: h264 (High), 1 reference frame (avc1 / ...), yuvj420p(pc, bt709, progressive, center), 64x48, ...'
    # (the chroma siting is printed only at verbose level).
    import imageio_ffmpeg
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-v", "verbose", "-i", path],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    text = proc.stderr.decode("utf-8", "replace")
    lines = [l for l in text.splitlines() if l.lstrip().startswith("Stream #") and " Video: " in l]
    if not lines:
        last = [l for l in text.splitlines() if l.strip() and not l.startswith("Exiting with exit code")]
        raise MediaError(f"{path}: not a video or image gvcc reads (ffmpeg finds no video stream: "
                         f"{last[-1].strip() if last else 'no output'})")
    items = re.split(r",\s*(?![^()]*\))", lines[0].split(" Video: ", 1)[1])
    for item in items[1:]:
        m = re.fullmatch(r"([a-z][a-z0-9_]*)(?:\((.*)\))?", item.strip())
        if m:
            base, attrs = m.group(1), [a.strip() for a in (m.group(2) or "").split(",") if a.strip()]
            break
    else:
        raise MediaError(f"{path}: cannot find the pixel format in ffmpeg's stream line")
    tag = "FULL" if base.startswith("yuvj") or "pc" in attrs else "LIMITED" if "tv" in attrs else None
    matrix, siting = "unknown", "left"                               # untagged: H.264/HEVC defaults
    for a in attrs:
        name = a.split("/")[0]
        if name in ("bt709", "bt470bg", "smpte170m", "bt2020nc", "bt2020c", "fcc", "smpte240m", "gbr",
                    "ycgco", "ycgco-re", "ycgco-ro", "ictcp", "chroma-derived-nc", "chroma-derived-c", "unknown"):
            matrix = name
        elif a in ("left", "center", "topleft", "top", "bottomleft", "bottom"):
            siting = a if a in SITINGS else "left"
    return base, tag, matrix, siting


def _open_ffmpeg(path, limited, notes, warnings):
    # -> ((W, H), rate or None, frames(limit, want), the ffmpeg reader to close)
    import imageio_ffmpeg
    base, tag, matrix, siting = _probe_pix_fmt(path)
    ours = {"bt709": "bt709", "unknown": "bt709", "bt470bg": "bt601", "smpte170m": "bt601"}.get(matrix)
    if base in ("yuv420p", "yuvj420p") and ours:
        mode, pix_fmt, bits = "420", base, 12
    elif base in ("yuv444p", "yuvj444p") and ours:
        mode, pix_fmt, bits = "444", base, 24
    else:
        mode, pix_fmt, bits = "rgb", "rgb24", 24                     # ffmpeg's own conversion
    gen = imageio_ffmpeg.read_frames(path, pix_fmt=pix_fmt, bits_per_pixel=bits)
    try:
        meta = next(gen)
    except (OSError, RuntimeError, IndexError, StopIteration, ValueError) as exc:
        lines = [l for l in str(exc).splitlines() if l.strip()]
        raise MediaError(f"{path}: ffmpeg cannot read this file ({lines[-1] if lines else exc})") from None
    wid, hgt = meta["size"]
    if mode == "420" and (wid % 2 or hgt % 2):
        gen.close()                                                  # odd 4:2:0 frames: let ffmpeg convert
        mode, pix_fmt, bits = "rgb", "rgb24", 24
        gen = imageio_ffmpeg.read_frames(path, pix_fmt=pix_fmt, bits_per_pixel=bits)
        meta = next(gen)
    luma = wid * hgt
    chroma = luma // 4 if mode == "420" else luma
    if mode != "rgb":
        limited = _range_of(tag, limited, "ffmpeg", path, notes)
    fps = meta.get("fps") or 0

    def frames(limit, want):
        n = 0
        try:
            for data in gen:
                if not want(n):
                    frame = None
                elif mode == "rgb":
                    frame = np.frombuffer(data, np.uint8).reshape(hgt, wid, 3).copy()
                else:
                    buf = np.frombuffer(data, np.uint8)
                    cw, ch = (wid // 2, hgt // 2) if mode == "420" else (wid, hgt)
                    y = buf[:luma].reshape(hgt, wid)                         # [H, W]
                    u = buf[luma:luma + chroma].reshape(ch, cw)              # [h, w]
                    v = buf[luma + chroma:luma + 2 * chroma].reshape(ch, cw)
                    frame = yuv_to_rgb(y, u, v, limited=limited, matrix=ours, siting=siting)
                n += 1
                yield frame
                if n >= limit:
                    break
        except RuntimeError as exc:
            raise MediaError(f"{path}: ffmpeg failed after {n} frames ({str(exc).splitlines()[0]})") from None
        # A cut-off file (a copy or download that stopped early) decodes up to the cut without an error: compare
        # with the duration the container declares, so that nobody codes half a clip without knowing it.
        expected = round((meta.get("duration") or 0) * fps)
        if n < limit and n + 1 < expected:
            warnings.append(f"{path}: the container declares {meta['duration']:.2f} s at {fps:g} fps (about "
                            f"{expected} frames) but only {n} could be decoded: the file looks truncated")
    return (wid, hgt), (_fraction_from_float(fps) if fps > 0 else None), frames, gen


# ==================================================================================================
# Writing (atomic)
# ==================================================================================================

FILE_OUTPUTS = (".y4m", ".yuv", ".mp4", ".mkv")
MP4_CRF = 12          # libx264 constant-rate factor of .mp4 / .mkv output: visually lossless, not a codec anchor


def _output_kind(path):
    """What a video output name asks for: 'y4m', 'yuv', 'mp4', 'mkv' (a file, by its extension) or 'png' (a
    folder of frames: a name ending in a slash, a name without extension, or an existing folder whose name has
    no video extension). An existing folder named like a file (out.y4m) is refused by check_target."""
    path = os.fspath(path)
    ext = os.path.splitext(path.rstrip("/\\"))[1].lower()
    if path.endswith(("/", os.sep)) or ext == "" or (os.path.isdir(path) and ext not in FILE_OUTPUTS):
        return "png"
    if ext in FILE_OUTPUTS:
        return ext[1:]
    raise MediaError(f"{path}: unsupported output extension '{ext}' (write: {', '.join(FILE_OUTPUTS)} "
                     f"or a directory for PNG frames)")


def check_folder(path):
    """Raise MediaError unless a file or folder named `path` can be created: its folder exists and is writable.

    Writability is tried, not guessed from permission bits (root, ACLs, read-only mounts): a temporary file is
    made in the folder and removed.
    """
    parent = os.path.dirname(os.path.abspath(os.fspath(path).rstrip("/\\")))
    if not os.path.isdir(parent):
        raise MediaError(f"{path}: folder {parent} does not exist")
    _probe(path, parent)


def _probe(path, folder):
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".gvcc-probe-")
    except OSError as exc:
        raise MediaError(f"{path}: cannot write in folder {folder} ({exc.strerror})") from None
    os.close(fd)
    os.remove(probe)


def _same_file(a, b):
    # one file under two names: the same path once links are resolved, or the same device and inode (hard links)
    if os.path.realpath(a.rstrip("/\\") or a) == os.path.realpath(b.rstrip("/\\") or b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _foreign_files(folder):
    return [n for n in sorted(os.listdir(folder)) if not re.fullmatch(r"\d+\.png", n)]


OUTPUT_KINDS = ("file", "video", "folder")


def check_target(path, *, kind="file", overwrite=False, inputs=(), outputs=()):
    """Raise MediaError if writing the output `path` would lose data or fail for want of a folder: the one check
    every output of the command line goes through, before any work. It writes nothing (a probe file, removed).

    kind: 'file' (a stream, a JSON report, a weight file), 'video' (a file or a folder of PNG frames, by name:
    _output_kind) or 'folder' (a folder that receives files of its own names: make-tiny's). Refused, in one line:
    an empty name; one of `inputs` (the same file under any name: links are resolved, hard links compared by
    device and inode), even with overwrite, and one of `outputs` (the command's other outputs); a folder where a
    file is expected (also a file name ending in a slash) and a file where a folder is expected, even with
    overwrite; an existing output (a file, or a frames folder with entries) without overwrite (ffmpeg's -y); a
    frames folder holding other files than frames; a parent folder that does not exist or cannot be written.
    A 'folder' may exist with other files in it: its own files are checked by the caller, one by one.
    """
    path = os.fspath(path)
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {OUTPUT_KINDS}")
    if not path:
        raise MediaError("an output name is empty")
    for src in inputs:
        if src is not None and src != "-" and os.path.lexists(src) and _same_file(path, src):
            raise MediaError(f"{path}: is also the input {src}; refusing to write over it")
    for other in outputs:
        if other is not None and _same_file(path, other):
            raise MediaError(f"{path}: is also the output {other}; give each output its own name")
    frames = kind == "video" and _output_kind(path) == "png"
    wants_folder = kind == "folder" or frames
    if not wants_folder and path.endswith(("/", os.sep)):
        raise MediaError(f"{path}: names a folder (it ends in a slash); this output is a file")
    if os.path.isdir(path):
        if not wants_folder:
            raise MediaError(f"{path}: is a folder; this output is a file, give it a file name")
        if frames and os.listdir(path):
            if not overwrite:
                raise MediaError(f"{path}: already exists; give -y to overwrite it")
            foreign = _foreign_files(path)
            if foreign:
                raise MediaError(f"{path}: refusing to replace a folder that holds other files than frames "
                                 f"(e.g. {foreign[0]})")
        if kind == "folder":
            _probe(path, path)
    elif os.path.lexists(path):
        if wants_folder:
            raise MediaError(f"{path}: exists and is not a folder; this output is a folder")
        if not overwrite:
            raise MediaError(f"{path}: already exists; give -y to overwrite it")
    check_folder(path)


def check_output(path, width, height, fps=None, frames=1):
    """Raise MediaError now if write_video(path, ...) of a width x height video would fail later.

    For a CLI to call before a long decode, after check_target: supported kind, a parent folder that exists and
    is writable, even size where 4:2:0 needs it, and (when fps is given) a frame rate that the container can
    hold for `frames` frames.
    """
    kind = _output_kind(path)
    if fps is not None:
        _check_rate(path, kind, parse_fps(fps), frames)
    check_folder(path)
    if kind in ("mp4", "mkv", "yuv") and (width % 2 or height % 2):
        raise MediaError(f"{path}: .{kind} output is 4:2:0 and needs an even width and height, got "
                         f"{width}x{height}; write .y4m or a PNG directory instead (gvcc does not resize)")
    if kind == "png" and os.path.exists(path) and not os.path.isdir(path):
        raise MediaError(f"{path}: exists and is not a directory")
    if kind != "png" and os.path.isdir(path):
        raise MediaError(f"{path}: is a folder; a .{kind} output is a file")
    return kind


def _check_rate(path, kind, fps, frames):
    # ffmpeg keeps a rate as a ratio of C ints. The mp4 muxer's video timescale is fps_num doubled until it is
    # at least 10000, and the clip's duration in that timescale must fit 32 bits (longer clips fail in ffmpeg
    # with "Not yet implemented"); found by bisection against the bundled ffmpeg, tested in test_media.py.
    if kind not in ("mp4", "mkv"):
        return
    num, den = fps.numerator, fps.denominator
    fits = max(num, den) < 1 << 31
    if kind == "mp4" and fits:
        scale = 1
        while num * scale < 10000:
            scale *= 2
        fits = frames * den * scale < 1 << 32
    if not fits:
        raise MediaError(f"{path}: .{kind} cannot hold {frames} frames at {num}/{den} fps; write .y4m or a "
                         f"PNG directory instead")


def write_video(path, frames, fps, *, limited_range=False):
    """Write uint8 RGB frames [N, H, W, 3] to .y4m, .yuv, .mp4, .mkv or a PNG directory, atomically.

    The whole output appears under `path` only once it is complete; on any failure nothing is left behind
    and an existing file at `path` is untouched. limited_range selects the Y'CbCr code-value range (tagged in
    .y4m and .mp4; not stored in .yuv).
    """
    _check_frames(frames)
    n, hgt, wid, _ = frames.shape
    with VideoWriter(path, wid, hgt, fps, limited_range=limited_range, n_frames=n) as writer:
        writer.write(frames)


class VideoWriter:
    """write_video a few frames at a time: memory does not grow with the video's length.

    Frames go to a temporary file (or folder) beside `path` as write() receives them; close() renames it over
    `path`, and abort() (or an exception inside a `with` block) removes it, leaving `path` untouched.
    n_frames, when known, only sets the digits of PNG names (at least 6).
    """

    def __init__(self, path, width, height, fps, *, limited_range=False, n_frames=None):
        self.path = os.fspath(path)
        self.fps, self.limited, self.size = parse_fps(fps), limited_range, (width, height)
        self.kind = check_output(self.path, width, height, self.fps, n_frames or 1)
        self.count, self._proc = 0, None
        self.target = os.path.abspath(self.path.rstrip("/\\"))
        prefix, folder = "." + os.path.basename(self.target) + ".", os.path.dirname(self.target)
        if self.kind == "png":
            if os.path.isdir(self.target):
                foreign = _foreign_files(self.target)
                if foreign:
                    raise MediaError(f"{path}: refusing to replace a directory that holds other files "
                                     f"than frames (e.g. {foreign[0]})")
            self.tmp = tempfile.mkdtemp(dir=folder, prefix=prefix, suffix=".part")
            self._png_info = PngImagePlugin.PngInfo()
            self._png_info.add_text(_PNG_FPS_KEY, f"{self.fps.numerator}/{self.fps.denominator}")
            self._digits = max(6, len(str((n_frames or 1) - 1)))
            return
        fd, self.tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".part")
        os.close(fd)
        try:
            if self.kind == "y4m":
                rng = "LIMITED" if limited_range else "FULL"
                self._fh = open(self.tmp, "wb")
                self._fh.write(f"YUV4MPEG2 W{width} H{height} F{self.fps.numerator}:{self.fps.denominator} Ip "
                               f"A1:1 C420jpeg XYSCSS=420JPEG XCOLORRANGE={rng}\n".encode("ascii"))
            elif self.kind == "yuv":
                self._fh = open(self.tmp, "wb")
            else:
                self._start_ffmpeg("mp4" if self.kind == "mp4" else "matroska")
        except BaseException:
            self.abort()
            raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frames):
        """Append uint8 RGB frames [n, H, W, 3] of the writer's size."""
        _check_frames(frames)
        if frames.shape[1:3] != self.size[::-1]:
            raise MediaError(f"{self.path}: frames of {frames.shape[2]}x{frames.shape[1]} given to a "
                             f"{self.size[0]}x{self.size[1]} video")
        for frame in frames:
            if self.kind == "png":
                Image.fromarray(frame, "RGB").save(os.path.join(self.tmp, f"{self.count:0{self._digits}d}.png"),
                                                   pnginfo=self._png_info, compress_level=3)
            else:
                y, u, v = rgb_to_yuv(frame, limited=self.limited)
                data = y.tobytes() + u.tobytes() + v.tobytes()
                if self.kind == "y4m":
                    self._fh.write(b"FRAME\n" + data)
                elif self.kind == "yuv":
                    self._fh.write(data)
                else:
                    try:
                        self._proc.stdin.write(data)
                    except BrokenPipeError:
                        pass                    # ffmpeg stopped: close() reports its error
            self.count += 1

    def close(self):
        """Finish the file and rename it over `path`."""
        try:
            if self.count == 0:
                raise MediaError(f"{self.path}: no frames were written")
            if self.kind == "png":
                self._publish_dir()
                return
            if self._proc is not None:
                self._finish_ffmpeg()
            else:
                self._fh.close()
            _publish(self.tmp, self.target)
        except BaseException:
            self.abort()
            raise

    def abort(self):
        """Remove the temporary output; `path` stays as it was."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if getattr(self, "_fh", None) is not None:
            self._fh.close()
        if self.kind == "png":
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)

    def _publish_dir(self):
        target, old = self.target, None
        try:
            if os.path.isdir(target):
                # A directory cannot be renamed over a non-empty one: move the old frames aside first.
                old = self.tmp + ".old"
                os.replace(target, old)
            _publish(self.tmp, target, is_dir=True)
        except BaseException:
            if old is not None and not os.path.exists(target):
                os.replace(old, target)
                old = None
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _start_ffmpeg(self, container):
        import imageio_ffmpeg
        wid, hgt = self.size
        rng = "tv" if self.limited else "pc"
        # The tags go on the raw input too: ffmpeg passes the frames' own colour properties to the encoder's VUI.
        tags = ["-color_range", rng, "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
                "-chroma_sample_location", "center"]
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{wid}x{hgt}",
               "-framerate", f"{self.fps.numerator}/{self.fps.denominator}", *tags, "-i", "-",
               "-c:v", "libx264", "-preset", "medium", "-crf", str(MP4_CRF), "-pix_fmt", "yuv420p", *tags,
               "-map_metadata", "-1", "-fflags", "+bitexact", "-f", container, self.tmp]
        self._err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)

    def _finish_ffmpeg(self):
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = self._proc.wait()
        self._err.seek(0)
        lines = [l for l in self._err.read().decode("utf-8", "replace").splitlines() if l.strip()]
        self._err.close()
        if rc != 0:
            raise MediaError(f"{self.tmp}: ffmpeg (libx264) failed: {lines[-1] if lines else 'exit code %d' % rc}")


def _publish(tmp, target, is_dir=False):
    # mkstemp / mkdtemp create private (0600 / 0700) entries: give the result the permissions a plain open()
    # would have under the user's umask, then rename it into place
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~mask)
    os.replace(tmp, target)


class AtomicFile:
    """A file written in pieces under a hidden temporary name beside `path` and renamed over it when the `with`
    block ends without an error; removed otherwise, and when the rename fails. No half-written file is ever seen
    at `path`, and nothing is left behind. size: the bytes written so far."""

    def __init__(self, path):
        self.path, self.size = os.fspath(path), 0
        self.target = os.path.abspath(self.path)

    def __enter__(self):
        folder, name = os.path.split(self.target)
        try:
            fd, self.tmp = tempfile.mkstemp(dir=folder, prefix="." + name + ".", suffix=".part")
        except OSError as exc:
            raise MediaError(f"{self.path}: cannot write in folder {folder} ({exc.strerror})") from None
        self.fh = os.fdopen(fd, "wb")
        return self

    def write(self, data):
        self.fh.write(data)
        self.size += len(data)

    def __exit__(self, exc_type, exc, tb):
        try:
            self.fh.close()
            if exc_type is None:
                _publish(self.tmp, self.target)
        except OSError as failed:
            exc_type, exc = type(failed), failed
        if exc_type is not None and os.path.exists(self.tmp):
            os.remove(self.tmp)
        if isinstance(exc, OSError):
            raise MediaError(f"{self.path}: cannot write it ({exc.strerror or exc})") from None


def atomic_write(path, data):
    """Write bytes to `path` atomically (AtomicFile)."""
    with AtomicFile(path) as out:
        out.write(data)


# ==================================================================================================
# Checksums (dav1d style: md5 of the decoded pixels)
# ==================================================================================================

def frames_md5(frames):
    """md5 hex digest of all frames' uint8 RGB bytes in order (row-major [N, H, W, 3])."""
    _check_frames(frames)
    h = hashlib.md5()
    for frame in frames:
        h.update(np.ascontiguousarray(frame).tobytes())
    return h.hexdigest()


def frame_md5s(frames):
    """md5 hex digest of each frame's uint8 RGB bytes [H, W, 3]."""
    _check_frames(frames)
    return [hashlib.md5(np.ascontiguousarray(f).tobytes()).hexdigest() for f in frames]


# ==================================================================================================
# Resize (Lanczos)
# ==================================================================================================

def resize(frames, width, height):
    """uint8 RGB [N, H, W, 3] -> [N, height, width, 3] with Pillow's Lanczos-3 (antialiased when shrinking).

    Pillow filters 8-bit images in fixed point, so the result is the same on every machine with the same Pillow.
    """
    _check_frames(frames)
    width, height = parse_size((width, height))
    if frames.shape[1:3] == (height, width):
        return frames.copy()
    out = np.empty((frames.shape[0], height, width, 3), np.uint8)   # [N, height, width, 3]
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame, "RGB").resize((width, height), Image.Resampling.LANCZOS))
    return out


# ==================================================================================================
# Still frames (AVIF through Pillow)
# ==================================================================================================

# Fixed encoder settings, so that encoding the same frame twice gives the same bytes. Only the decoder is
# normative: AV1 decoding is exact, so any machine decodes a still to the same Y'CbCr samples.
AVIF_SPEED = 6          # libaom speed preset (0 slowest .. 10)
AVIF_SUBSAMPLING = "4:2:0"


def encode_still(rgb, quality, *, lossless=False):
    """uint8 RGB [H, W, 3] -> AVIF bytes at `quality` (0 worst .. 100 near-lossless), deterministic settings.

    lossless: a PNG file instead (8-bit RGB, exact; quality is ignored), for an I2V first frame that must equal
    the source, as the authors condition their GOP 0 on the ground truth.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise MediaError("a still frame must be a uint8 array [H, W, 3]")
    if lossless:
        buf = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=9)
        return buf.getvalue()
    if not (isinstance(quality, (int, np.integer)) and 0 <= quality <= 100):
        raise MediaError(f"AVIF quality must be an integer from 0 to 100, got {quality!r}")
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="AVIF", quality=int(quality), speed=AVIF_SPEED,
                                      subsampling=AVIF_SUBSAMPLING, range="full", max_threads=1)
    return buf.getvalue()


def decode_still(data, size=None, *, lossless=False):
    """AVIF bytes (PNG bytes if lossless) -> uint8 RGB [H, W, 3]. MediaError if they are not such an image.

    size (width, height): refuse an image that declares another size (an AVIF's ispe box, a PNG's IHDR, read by
    Image.open) before any pixel is decoded, so a forged size allocates nothing. A lossless still must be an
    8-bit RGB PNG (IHDR bit depth 8, colour type 2: no palette, grey, alpha or 16-bit samples). Any failure of
    the codec (Pillow raises OSError, ValueError, RuntimeError, DecompressionBombError, ...) is a one-line
    MediaError; no warning is printed.
    """
    kind = "PNG" if lossless else "AVIF"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)     # raised, caught below
            with Image.open(io.BytesIO(data), formats=[kind]) as im:
                if size is not None and im.size != tuple(size):
                    raise MediaError(f"still frame is {im.size[0]}x{im.size[1]}, not {size[0]}x{size[1]}")
                # IHDR's bit depth and colour type (bytes 24, 25): Pillow opens a 16-bit RGB PNG as mode RGB too
                if lossless and (im.mode != "RGB" or data[24:26] != b"\x08\x02"):
                    depth, colour = data[24], data[25]
                    raise MediaError(f"still frame: a PNG of bit depth {depth} and colour type {colour}; a "
                                     f"lossless still must be 8-bit RGB (bit depth 8, colour type 2)")
                rgb = np.asarray(im.convert("RGB")).copy()                    # [H, W, 3]
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MediaError("still frame declares an image too large to decode safely") from None
    except Exception as exc:                # whatever the codec reports, in one line
        reason = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", " ".join(str(exc).split()))[:200] or type(exc).__name__
        raise MediaError(f"still frame: {len(data)} bytes that are not a decodable {kind} image ({reason})") from None
    if size is not None and rgb.shape != (size[1], size[0], 3):
        raise MediaError(f"still frame decodes to {rgb.shape[1]}x{rgb.shape[0]}, not {size[0]}x{size[1]}")
    return rgb


# ==================================================================================================
# Metrics: PSNR, YUV PSNR, MS-SSIM, LPIPS
# ==================================================================================================

def _pair(ref, dec):
    ref, dec = np.asarray(ref), np.asarray(dec)
    if ref.shape != dec.shape:
        raise ValueError(f"frames differ in shape: {list(ref.shape)} vs {list(dec.shape)}")
    if ref.ndim not in (3, 4) or ref.shape[-1] != 3:
        raise ValueError(f"expected RGB frames [H, W, 3] or [N, H, W, 3], got {list(ref.shape)}")
    return ref, dec


def _per_frame(fn, ref, dec):
    # one frame [H, W, 3] -> float; frames [N, H, W, 3] -> float64 [N]
    ref, dec = _pair(ref, dec)
    if ref.ndim == 3:
        return fn(ref, dec)
    return np.array([fn(r, d) for r, d in zip(ref, dec)], np.float64)


def _psnr_from_mse(mse):
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def psnr(ref, dec):
    """PSNR in dB of uint8 RGB frames in [0, 1] (peak 1): per frame; +inf for identical frames."""
    def one(r, d):
        diff = (r.astype(np.float64) - d.astype(np.float64)) / 255.0
        return _psnr_from_mse(float(np.mean(diff * diff)))
    return _per_frame(one, ref, dec)


def yuv_psnrs(ref, dec, *, chroma="420"):
    """(psnr_y, psnr_u, psnr_v) of BT.709 full-range planes in [0, 1]; chroma '420' (2x2 means) or '444'."""
    if chroma not in ("420", "444"):
        raise ValueError(f"chroma must be '420' or '444', got {chroma!r}")
    sub = (2, 2) if chroma == "420" else (1, 1)

    def one(r, d):
        a, b = rgb_to_ypbpr(r), rgb_to_ypbpr(d)                    # [3, H, W]
        out = []
        for c in range(3):
            pa, pb = (a[c], b[c]) if c == 0 else (chroma_downsample(a[c], *sub), chroma_downsample(b[c], *sub))
            out.append(_psnr_from_mse(float(np.mean((pa - pb) ** 2))))
        return tuple(out)
    ref, dec = _pair(ref, dec)
    if ref.ndim == 3:
        return one(ref, dec)
    return np.array([one(r, d) for r, d in zip(ref, dec)], np.float64).reshape(-1, 3).T   # [3, N]


def psnr_yuv(ref, dec, *, chroma="420"):
    """(6 psnr_y + psnr_u + psnr_v) / 8 per frame, the weighting of the learned-codec literature (DCVC)."""
    y, u, v = yuv_psnrs(ref, dec, chroma=chroma)
    return (6.0 * np.asarray(y) + np.asarray(u) + np.asarray(v)) / 8.0


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)    # Wang et al. 2003, scales fine -> coarse
MS_SSIM_MIN_SIDE = (11 - 1) * 2 ** 4 + 1                         # 161: the window must fit the coarsest scale


def _gauss_1d(size=11, sigma=1.5):
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _blur_valid(x, g):
    # separable 'valid' filter by a symmetric kernel: [..., H, W] -> [..., W-10, H-10] (note: transposed).
    # Each pass filters along rows of a contiguous array, then transposes; taps of equal weight are added
    # first and everything accumulates in place. Callers only take means, so the transposition is harmless.
    k, c = g.size, g.size // 2
    for _ in range(2):
        n = x.shape[-2] - k + 1
        out = np.multiply(x[..., c:c + n, :], g[c])                   # [..., n, W]
        tmp = np.empty_like(out)
        for i in range(c):
            np.add(x[..., i:i + n, :], x[..., k - 1 - i:k - 1 - i + n, :], out=tmp)
            tmp *= g[i]
            out += tmp
        x = np.ascontiguousarray(np.swapaxes(out, -1, -2))          # [..., W, n]
    return x


def _ssim_terms(x, y, g, c1, c2):
    # one channel x, y [H, W] -> (mean SSIM, mean contrast-structure term)
    mu1, mu2, xx, yy, xy = _blur_valid(np.stack([x, y, x * x, y * y, x * y]), g)   # [5, W-10, H-10]
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = xx - mu1_sq, yy - mu2_sq, xy - mu12              # variances and covariance
    cs_map = (2.0 * s12 + c2) / (s1 + s2 + c2)
    ssim_map = (2.0 * mu12 + c1) / (mu1_sq + mu2_sq + c1) * cs_map
    return float(ssim_map.mean()), float(cs_map.mean())


def _avg_pool2(x):
    # 2x2 mean pooling, stride 2, with one zero row/column on *both* sides of an odd size counted in the mean
    # (torch's avg_pool2d(padding=size % 2, count_include_pad=True), as pytorch-msssim uses it)
    ph, pw = x.shape[0] % 2, x.shape[1] % 2
    if ph or pw:
        x = np.pad(x, [(ph, ph), (pw, pw)])
    hgt, wid = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:hgt, :wid]
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def ssim(ref, dec):
    """Single-scale SSIM of uint8 RGB frames: MS-SSIM's finest scale alone (the same 11-tap Gaussian window,
    constants and channel mean), per frame; defined for frames of at least 11 pixels per side, where MS-SSIM's
    five scales need 161 (gvcc's demo models work at 64-144 rows)."""
    g = _gauss_1d()
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2

    def one(r, d):
        if min(r.shape[:2]) < 11:
            raise ValueError(f"SSIM needs frames of at least 11 pixels per side, got {r.shape[1]}x{r.shape[0]}")
        return float(np.mean([_ssim_terms(r[..., ch].astype(np.float64) / 255.0, d[..., ch].astype(np.float64) / 255.0,
                                          g, c1, c2)[0] for ch in range(3)]))
    return _per_frame(one, ref, dec)


def ms_ssim(ref, dec):
    """MS-SSIM of uint8 RGB frames (see the module docstring): per frame, 1.0 for identical frames."""
    g = _gauss_1d()
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2                  # (K1 L)^2, (K2 L)^2 with data range L = 1
    levels = len(MS_SSIM_WEIGHTS)

    def one(r, d):
        hgt, wid = r.shape[:2]
        if min(hgt, wid) < MS_SSIM_MIN_SIDE:
            raise ValueError(f"MS-SSIM needs frames of at least {MS_SSIM_MIN_SIDE} pixels per side "
                             f"(5 scales of an 11-pixel window), got {wid}x{hgt}")
        per_channel = []
        for ch in range(3):
            x = r[..., ch].astype(np.float64) / 255.0               # [H, W]
            y = d[..., ch].astype(np.float64) / 255.0
            val = 1.0
            for level in range(levels):
                ssim_l, cs_l = _ssim_terms(x, y, g, c1, c2)
                if level < levels - 1:
                    val *= max(cs_l, 0.0) ** MS_SSIM_WEIGHTS[level]
                    x, y = _avg_pool2(x), _avg_pool2(y)             # [ceil(H/2), ceil(W/2)]
            per_channel.append(val * max(ssim_l, 0.0) ** MS_SSIM_WEIGHTS[-1])
        return float(np.mean(per_channel))
    return _per_frame(one, ref, dec)


ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"     # torchvision's file name in the torch hub cache
_LPIPS_MODEL = {}


def lpips_unavailable():
    """None when LPIPS can run without a download, else a one-line reason."""
    try:
        import lpips  # noqa: F401
    except ImportError as exc:
        if getattr(exc, "name", None) == "lpips" or "lpips" in str(exc):
            return "the lpips package is not installed (pip install lpips)"
        return f"the lpips package cannot be imported ({exc})"
    import torch
    ckpt = os.path.join(torch.hub.get_dir(), "checkpoints", ALEXNET_WEIGHTS)
    if not os.path.exists(ckpt):
        return f"torchvision's AlexNet weights are not at {ckpt} (gvcc does not download them)"
    return None


def lpips(ref, dec, *, batch=8):
    """LPIPS v0.1 (AlexNet) distance per frame of uint8 RGB frames [N, H, W, 3]; MediaError if unavailable."""
    reason = lpips_unavailable()
    if reason:
        raise MediaError(f"LPIPS unavailable: {reason}")
    import lpips as lpips_pkg
    import torch
    ref, dec = _pair(ref, dec)
    single = ref.ndim == 3
    if single:
        ref, dec = ref[None], dec[None]
    if "alex" not in _LPIPS_MODEL:
        _LPIPS_MODEL["alex"] = lpips_pkg.LPIPS(net="alex", version="0.1", verbose=False).eval()
    model = _LPIPS_MODEL["alex"]
    out = []
    with torch.no_grad():
        for i in range(0, len(ref), batch):
            a = torch.from_numpy(ref[i:i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1.0   # [B, 3, H, W]
            b = torch.from_numpy(dec[i:i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            out.extend(model(a, b).flatten().double().tolist())
    return out[0] if single else np.array(out)


# ==================================================================================================
# Bjontegaard deltas
# ==================================================================================================

def _pchip_slopes(x, y):
    # Fritsch-Carlson monotone slopes, with the three-point end formula (as scipy's PchipInterpolator)
    h, d = np.diff(x), np.diff(y) / np.diff(x)
    n = len(x)
    m = np.zeros(n)
    if n == 2:
        return np.array([d[0], d[0]])
    for k in range(1, n - 1):
        if d[k - 1] * d[k] > 0:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            m[k] = (w1 + w2) / (w1 / d[k - 1] + w2 / d[k])
    for end, (h0, h1, d0, d1) in ((0, (h[0], h[1], d[0], d[1])), (n - 1, (h[-1], h[-2], d[-1], d[-2]))):
        s = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if np.sign(s) != np.sign(d0):
            s = 0.0
        elif np.sign(d0) != np.sign(d1) and abs(s) > abs(3 * d0):
            s = 3 * d0
        m[end] = s
    return m


def _pchip_integral(x, y, lo, hi):
    # exact integral over [lo, hi] of the piecewise cubic Hermite interpolant through (x, y)
    m = _pchip_slopes(x, y)

    def antiderivative(t_abs):
        # integral from x[0] to t_abs
        total = 0.0
        for k in range(len(x) - 1):
            a, b = x[k], x[k + 1]
            if t_abs <= a:
                break
            h = b - a
            t = (min(t_abs, b) - a) / h
            # integrals over [0, t] of the Hermite basis h00, h10, h01, h11
            i00 = t ** 4 / 2 - t ** 3 + t
            i10 = t ** 4 / 4 - 2 * t ** 3 / 3 + t ** 2 / 2
            i01 = -t ** 4 / 2 + t ** 3
            i11 = t ** 4 / 4 - t ** 3 / 3
            total += h * (i00 * y[k] + i10 * h * m[k] + i01 * y[k + 1] + i11 * h * m[k + 1])
        return total
    return antiderivative(hi) - antiderivative(lo)


def _bd_integrals(xa, ya, xb, yb, method):
    # mean of y_b - y_a over the overlap of the x ranges, each y a function of x fitted per `method`
    for x in (xa, xb):
        if len(x) < 2:
            raise ValueError("a Bjontegaard delta needs at least 2 points per curve")
        if len(np.unique(x)) != len(x):
            raise ValueError("a Bjontegaard curve has two points at the same quality (or rate)")
    lo, hi = max(xa.min(), xb.min()), min(xa.max(), xb.max())
    if not hi > lo:
        raise ValueError("the two R-D curves do not overlap, so their Bjontegaard delta is undefined")
    ints = []
    for x, y in ((xa, ya), (xb, yb)):
        order = np.argsort(x)
        x, y = x[order], y[order]
        if method == "cubic":
            p = np.polyint(np.polyfit(x, y, min(3, len(x) - 1)))
            ints.append(np.polyval(p, hi) - np.polyval(p, lo))
        elif method == "pchip":
            ints.append(_pchip_integral(x, y, lo, hi))
        else:
            raise ValueError(f"method must be 'cubic' or 'pchip', got {method!r}")
    return (ints[1] - ints[0]) / (hi - lo)


def bd_rate(rate_a, quality_a, rate_b, quality_b, *, method="cubic"):
    """Bjontegaard delta rate of curve b against anchor a, in percent (negative: b needs fewer bits).

    Rates in any unit (bpp, kbps), qualities in dB (or any metric that grows with quality). log-rate is fitted
    as a function of quality and averaged over the overlapping quality interval.
    """
    qa, qb = np.asarray(quality_a, np.float64), np.asarray(quality_b, np.float64)
    la, lb = np.log(np.asarray(rate_a, np.float64)), np.log(np.asarray(rate_b, np.float64))
    return float((math.exp(_bd_integrals(qa, la, qb, lb, method)) - 1.0) * 100.0)


def bd_quality(rate_a, quality_a, rate_b, quality_b, *, method="cubic"):
    """Bjontegaard delta quality (BD-PSNR in dB for PSNR) of curve b against anchor a at equal rate."""
    la, lb = np.log(np.asarray(rate_a, np.float64)), np.log(np.asarray(rate_b, np.float64))
    qa, qb = np.asarray(quality_a, np.float64), np.asarray(quality_b, np.float64)
    return float(_bd_integrals(la, qa, lb, qb, method))


# ==================================================================================================
# Evaluation (`gvcc eval`)
# ==================================================================================================

METRICS = ("psnr", "psnr_yuv", "psnr_y", "psnr_u", "psnr_v", "ms_ssim", "lpips")
# Means count every PSNR at most this many dB (libvmaf's 8-bit cap, 6 * 8 + 12), so that one frame identical
# to the reference (infinite PSNR) does not turn a sequence's mean into inf and hide the frames that differ.
PSNR_CAP = 60.0

CONVENTIONS = {
    "psnr": "RGB in [0, 1], peak 1, per frame",
    "psnr_yuv": "(6 Y + U + V) / 8 of per-plane PSNRs; BT.709 full range, chroma 4:2:0 by 2x2 means, peak 1",
    "ms_ssim": "5 scales, 11x11 Gaussian sigma 1.5, weights of Wang et al. 2003, per RGB channel then mean",
    "lpips": "LPIPS v0.1 AlexNet, inputs in [-1, 1]",
    "aggregation": f"mean: over frames; gop_mean: over GOP means; PSNR averaged in dB, each frame's PSNR "
                   f"counted at most {PSNR_CAP:g} dB (identical frames are inf per frame)",
    "rate": "bpp = file bits / (source width x height x frames)",
}


def evaluate(ref, dec, *, gop=33, use_lpips=True, progress=None):
    """Metrics of decoded frames against reference frames, both uint8 RGB [N, H, W, 3] of the same shape.

    gop: frames per GOP (non-overlapping runs), or a list of (first_frame, n_frames) GOPs, which may share
    frames: a gvcc I2V / FLF2V stream's GOPs share their boundary frame, and each GOP's mean counts it, as the
    authors count it.

    Returns {"per_frame": [{metric: value}], "per_gop": [...], "sequence": {...}, "notes": [...]}; metrics that
    cannot be computed (MS-SSIM on small frames, LPIPS without its weights) are None with a note saying why.
    """
    ref, dec = _pair(ref, dec)
    if ref.ndim != 4:
        raise ValueError("evaluate takes frames [N, H, W, 3]")
    if isinstance(gop, int) and gop < 1:
        raise ValueError(f"gop must be at least 1, got {gop}")
    n, hgt, wid, _ = ref.shape
    notes = []
    do_msssim = min(hgt, wid) >= MS_SSIM_MIN_SIDE
    if not do_msssim:
        notes.append(f"MS-SSIM not computed: frames are {wid}x{hgt}, it needs at least {MS_SSIM_MIN_SIDE} "
                     f"pixels per side")
    reason = lpips_unavailable() if use_lpips else "disabled"
    if reason:
        notes.append(f"LPIPS not computed: {reason}")
    rows = []
    t_last = time.monotonic()
    for i in range(n):
        r, d = ref[i], dec[i]
        y, u, v = yuv_psnrs(r, d)
        rows.append({
            "frame": i, "psnr": psnr(r, d), "psnr_yuv": (6.0 * y + u + v) / 8.0, "psnr_y": y, "psnr_u": u,
            "psnr_v": v, "ms_ssim": ms_ssim(r, d) if do_msssim else None, "lpips": None,
        })
        if progress and time.monotonic() - t_last > 2.0:
            progress(f"eval: frame {i + 1}/{n}")
            t_last = time.monotonic()
    if not reason:
        if progress:
            progress("eval: LPIPS")
        for row, value in zip(rows, lpips(ref, dec)):
            row["lpips"] = float(value)

    def mean(rs, key):
        vals = [r[key] for r in rs]
        if any(v is None for v in vals):
            return None
        return float(np.mean([min(v, PSNR_CAP) for v in vals] if key.startswith("psnr") else vals))
    ranges = [(first, gop) for first in range(0, n, gop)] if isinstance(gop, int) else gop
    gops = []
    for g, (first, length) in enumerate(ranges):
        rs = rows[first:first + length]
        if not rs:
            break
        gops.append({"gop": g, "first_frame": first, "frames": len(rs), **{k: mean(rs, k) for k in METRICS}})
    seq = {"frames": n, **{k: mean(rows, k) for k in METRICS}}
    seq_gop = {k: (None if any(x[k] is None for x in gops) else float(np.mean([x[k] for x in gops])))
               for k in METRICS}
    return {"per_frame": rows, "per_gop": gops, "sequence": seq, "sequence_gop_mean": seq_gop, "notes": notes}


def stream_rate(bitstream_path, ref_width, ref_height, ref_frames, ref_fps):
    """Rate of a coded file: bits, bpp and kbps against the source, and where the numbers came from.

    A gvcc stream's header gives the source size, frame count and rate; any other file (an anchor's
    elementary stream) is measured against the reference video's size, frame count and rate.
    """
    path = os.fspath(bitstream_path)
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    with open(path, "rb") as fh:
        data = fh.read()
    bits = 8 * len(data)
    wid, hgt, frames, fps, basis = ref_width, ref_height, ref_frames, ref_fps, "file size; reference size and frames"
    try:
        import bitstream
    except ImportError:
        bitstream = None
    magic = getattr(bitstream, "MAGIC", None) if bitstream else None
    if bitstream is not None and (magic is None or data.startswith(magic)):
        try:
            hdr = bitstream.read_header(data)
        except Exception as exc:  # BitstreamError: a damaged gvcc stream must not be measured as something else
            if magic is not None:
                raise MediaError(f"{path}: {exc}") from None
        else:
            wid, hgt, frames = hdr.src_width, hdr.src_height, hdr.frames
            fps = fractions.Fraction(hdr.fps_num, hdr.fps_den)
            basis = "gvcc header: source size, frames and fps"
    out = {"bits": bits, "bpp": bits / (wid * hgt * frames), "width": wid, "height": hgt, "frames": frames,
           "fps": None if fps is None else str(fractions.Fraction(fps)), "basis": basis,
           "kbps": None if fps is None else bits / (frames / float(fps)) / 1000.0}
    return out


def stream_gops(path):
    """[(first_frame, n_frames)] of a gvcc stream's GOPs (bitstream.py section 7), or None for another file."""
    try:
        import bitstream
    except ImportError:
        return None
    with open(os.fspath(path), "rb") as fh:
        data = fh.read(1 << 20)
    if not data.startswith(bitstream.MAGIC):
        return None
    try:
        hdr = bitstream.read_header(data)
    except Exception as exc:  # BitstreamError: a damaged gvcc stream must not be measured as something else
        raise MediaError(f"{path}: {exc}") from None
    return [(info.first_frame, info.n_frames) for info in bitstream.gop_layout(hdr)]


def _json_safe(x):
    # JSON has no infinity: identical frames (infinite PSNR) are written as null, and a note says so
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def _fmt(v, digits):
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def format_table(result):
    """The stdout table of `gvcc eval`: a header block, one row per frame, per GOP, and the sequence means."""
    cols = [("psnr", 2), ("psnr_yuv", 2), ("psnr_y", 2), ("psnr_u", 2), ("psnr_v", 2), ("ms_ssim", 4),
            ("lpips", 4)]
    lines = []
    src = result["source"]
    lines.append(f"reference  {result['reference']}  ({src['width']}x{src['height']}, {src['frames']} frames, "
                 f"{src['fps'] or '?'} fps)")
    lines.append(f"decoded    {result['decoded']}")
    rate = result.get("rate")
    if rate:
        kbps = f", {rate['kbps']:.2f} kbps" if rate["kbps"] is not None else ""
        lines.append(f"rate       {rate['bits']} bits, {rate['bpp']:.6f} bpp{kbps}  ({rate['basis']}: "
                     f"{rate['width']}x{rate['height']}, {rate['frames']} frames)")
    for note in result["notes"]:
        lines.append(f"note       {note}")
    head = "".join(f"{name:>10}" for name, _ in cols)
    row = lambda label, values: f"{label:>13}" + "".join(f"{_fmt(values[k], d):>10}" for k, d in cols)
    lines += ["", f"{'frame':>13}" + head]
    lines += [row(str(r["frame"]), r) for r in result["per_frame"]]
    lines += ["", f"{'gop (frames)':>13}" + head]
    lines += [row(f"{g['gop']} ({g['first_frame']}-{g['first_frame'] + g['frames'] - 1})", g)
              for g in result["per_gop"]]
    lines += ["", row("mean", result["sequence"]), row("gop_mean", result["sequence_gop_mean"])]
    return "\n".join(lines)


def eval_main(ref, dec, *, bitstream=None, json_out=None, gop=None, frames=None, size=None, fps=None,
              limited_range=None, resize_to=None, use_lpips=True, out=None, progress=None, overwrite=False,
              picture=None):
    """`gvcc eval`: compare a decoded video with its reference, print the table, optionally write JSON.

    ref, dec: video paths (any read_video input). bitstream: the coded file, for the rate. json_out: path of
    the JSON report (written atomically). gop: frames per GOP for the per-GOP means. frames: evaluate only the
    first `frames` frames. gop: frames per GOP; by default the GOPs of the gvcc stream `bitstream` (shared
    boundary frames counted in both GOPs), else 33. size ('WxH'), fps, limited_range: how to read raw .yuv
    inputs (fps also fills in a
    rate that neither file carries). resize_to ('WxH'): compare at this working resolution, resizing (Lanczos)
    whichever video is not already at it; without it the sizes must match. overwrite: replace an existing
    json_out (never one of the inputs). picture: path of a PNG showing the middle frame of the reference beside
    the decoded one (at the compared size). Returns the report dict.
    """
    out = out or sys.stdout
    if json_out is not None:            # before reading anything: a bad target must not cost the whole eval
        check_target(json_out, overwrite=overwrite, inputs=(ref, dec, bitstream))
    if picture is not None:
        check_target(picture, overwrite=overwrite, inputs=(ref, dec, bitstream), outputs=(json_out,))
    if bitstream is not None and not os.path.isfile(bitstream):
        raise MediaError(f"{bitstream}: no such file")
    r = _read(ref, size=size, fps=fps, limited_range=limited_range, frames=frames)
    d = _read(dec, size=size, fps=fps, limited_range=limited_range, frames=frames)
    rate_fps = r.fps or d.fps
    n_ref, n_dec = len(r.frames), len(d.frames)
    if frames is not None and min(n_ref, n_dec) < frames:
        short, n = (ref, n_ref) if n_ref < frames else (dec, n_dec)
        raise MediaError(f"frames = {frames}: {short} has only {n}; compare 1..{min(n_ref, n_dec)} frames")
    if n_ref != n_dec:
        raise MediaError(f"frame counts differ: {ref} has {n_ref}, {dec} has {n_dec}; give frames to compare "
                         f"the first {min(n_ref, n_dec)}")
    reading = r.notes + r.warnings + d.notes + d.warnings         # what the readers assumed or found wrong
    src_h, src_w = r.frames.shape[1:3]
    ref_frames, dec_frames = r.frames, d.frames
    if resize_to is not None:
        tw, th = parse_size(resize_to)
        ref_frames, dec_frames = resize(ref_frames, tw, th), resize(dec_frames, tw, th)
    elif ref_frames.shape != dec_frames.shape:
        raise MediaError(f"sizes differ: {ref} is {src_w}x{src_h}, {dec} is {dec_frames.shape[2]}x"
                         f"{dec_frames.shape[1]}; give a working size (resize) to compare at one size")
    result = {
        "reference": os.fspath(ref), "decoded": os.fspath(dec),
        "source": {"width": int(src_w), "height": int(src_h), "frames": n_ref,
                   "fps": None if rate_fps is None else str(rate_fps)},
        "compared_at": {"width": int(ref_frames.shape[2]), "height": int(ref_frames.shape[1])},
        "gop": gop, "conventions": CONVENTIONS,
    }
    if bitstream is not None:
        result["rate"] = stream_rate(bitstream, src_w, src_h, n_ref, rate_fps)
    if gop is None:
        gop = stream_gops(bitstream) if bitstream is not None else None
        gop = gop if gop is not None else 33
        result["gop"] = gop
    metrics = evaluate(ref_frames, dec_frames, gop=gop, use_lpips=use_lpips, progress=progress)
    metrics["notes"][:0] = reading
    same = [row["frame"] for row in metrics["per_frame"] if row["psnr"] == math.inf]
    if same:
        metrics["notes"].append(f"{len(same)} frame(s) identical to the reference (first: {same[0]}): PSNR is "
                                f"inf there (null in JSON); the means count it as {PSNR_CAP:g} dB")
    result.update(metrics)
    print(format_table(result), file=out)
    if json_out is not None:
        text = json.dumps(_json_safe(result), indent=1, allow_nan=False)
        atomic_write(json_out, (text + "\n").encode())
    if picture is not None:
        atomic_write(picture, side_by_side(ref_frames[n_ref // 2], dec_frames[n_ref // 2]))
    return result


def side_by_side(left, right, gap=4):
    """PNG bytes of two uint8 RGB frames [H, W, 3] side by side, `gap` white columns between them."""
    sep = np.full((left.shape[0], gap, 3), 255, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.concatenate([left, sep, right], axis=1)).save(buf, format="PNG")
    return buf.getvalue()


def add_range_arguments(parser):
    """--limited-range / --full-range: the range of inputs whose file carries no range tag (dest limited_range)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--limited-range", dest="limited_range", action="store_true", default=None,
                       help="inputs without a range tag are limited range (16-235). Without either flag, as "
                            "ffmpeg: a .y4m without XCOLORRANGE and an untagged video file are limited range; a "
                            "raw .yuv is full range, as the learned-codec literature reads UVG. A tag in the file "
                            "always wins, and gvcc says on stderr which range it assumed")
    group.add_argument("--full-range", dest="limited_range", action="store_false",
                       help="inputs without a range tag are full range (0-255)")


def add_overwrite_arguments(parser):
    """-y / -n as in ffmpeg (dest overwrite): gvcc never asks, so without -y it behaves as -n."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-y", dest="overwrite", action="store_true", default=False,
                       help="overwrite existing outputs (never an input)")
    group.add_argument("-n", dest="overwrite", action="store_false",
                       help="never overwrite: stop if an output exists (the default)")
