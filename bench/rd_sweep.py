"""Rate-distortion sweep: gvcc over a grid of (M, K), and x264 / x265 / AV1 anchors at matched rates.

    python bench/rd_sweep.py SRC OUTDIR --weights DIR --model t2v-1.3B --grid 16:1024,32:4096,64:16384 \\
        [--gvcc-args "--steps 20"] [--frames 33] [--resize 848x480] [--yuv-size WxH --fps F --limited-range] \\
        [--anchors x264,x265,av1] [--anchor-bpp 0.005,0.01] [--bd-anchor x265] [--gop 33] [--no-lpips]
    python bench/rd_sweep.py SRC OUTDIR --anchor-bpp 0.01,0.02,0.05      # anchors only, no gvcc

What it does, in order:
1. Reference. SRC (any media.read_video input) is cut to --frames and resized to --resize (Lanczos) if asked,
   then written once as OUTDIR/ref.y4m and OUTDIR/ref.yuv: the same 8-bit BT.709 full-range I420 planes.
   Every codec codes exactly these planes, and every decoded video is measured against their RGB.
2. gvcc, one point per (M, K): `python gvcc.py encode ref.y4m gvcc_M{M}_K{K}.gvcc -M M -K K --weights DIR
   --model NAME [gvcc args]`, then `python gvcc.py decode ... gvcc_M{M}_K{K}.y4m --weights DIR`. Rate: the
   whole stream file against the source size (media.stream_rate).
3. Anchors, one point per target bpp (by default the rates gvcc reached, i.e. matched rates), through the
   ffmpeg binary that imageio-ffmpeg ships: libx264 and libx265 (preset medium) and libaom-av1 (cpu-used 6),
   two-pass at a target bitrate, one keyframe for the whole clip (long GOP), raw I420 input without colour tags
   (so no range conversion anywhere). Rate: the elementary stream (.264 Annex B with x264's informational SEI
   removed, .265 Annex B with x265's version SEI off, AV1 OBUs with temporal delimiters), all bits counted.
   Rate control on short clips misses its target, so the second pass is repeated (first-pass statistics reused)
   with a corrected bitrate (a bracketing search in log-log space) until the file is within 3 % of the target,
   at most 6 second passes; the try closest to the target is kept. Decoded with ffmpeg to raw I420 and converted like the reference.
4. Metrics per point (media.evaluate): PSNR (RGB), YUV PSNR 6:1:1, MS-SSIM, LPIPS when available; sequence
   means over frames.
5. Output: OUTDIR/rd.csv (one row per point), OUTDIR/rd.png (PSNR, MS-SSIM and LPIPS against bpp on a log
   axis; needs matplotlib, imported only here), OUTDIR/bd.csv (BD-rate and BD-quality of every curve against
   --bd-anchor over the overlapping range; piecewise-cubic fit by default, --bd-method cubic for VCEG-M33's
   polynomial), and the same tables on stdout.

The pieces are functions (prepare_reference, run_gvcc, run_anchor, measure, bd_table, write_csv, plot) so that
tests and other scripts can run one codec at a time.
"""
import argparse
import csv
import dataclasses
import math
import os
import re
import shlex
import subprocess
import sys
import time
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import media  # noqa: E402

GVCC_PY = os.path.join(ROOT, "gvcc.py")
KEYINT = 100000                   # "one keyframe for the clip": longer than any clip the sweep codes
RATE_TOLERANCE = 0.03             # second passes are repeated until the file is this close to the target
MAX_SECOND_PASSES = 6
MIN_BITRATE = 1000.0              # bits/s: never ask an encoder for less (0 would mean "no target" to some)
CSV_FIELDS = ("codec", "setting", "M", "K", "target_bpp", "bits", "bpp", "kbps", "psnr", "psnr_yuv", "ms_ssim",
              "lpips", "encode_s", "decode_s", "file")
QUALITY = {"psnr": 1.0, "psnr_yuv": 1.0, "ms_ssim": 1.0, "lpips": -1.0}   # sign that makes "higher is better"


# ==================================================================================================
# Reference
# ==================================================================================================

@dataclasses.dataclass(frozen=True)
class Reference:
    y4m: str               # the clip as .y4m (gvcc's input)
    yuv: str               # the same I420 planes, raw (the anchors' input)
    width: int
    height: int
    frames: int
    fps: Fraction
    rgb: object            # uint8 [N, H, W, 3]: the planes' RGB, what every decoded video is measured against


def prepare_reference(src, out_dir, *, yuv_size=None, fps=None, limited_range=None, frames=None, resize=None):
    """Cut and resize SRC, write OUTDIR/ref.y4m and OUTDIR/ref.yuv (identical full-range planes)."""
    os.makedirs(out_dir, exist_ok=True)
    video = media.read_video(src, size=yuv_size, fps=fps, limited_range=limited_range, frames=frames)
    rgb = video.frames
    if resize is not None:
        rgb = media.resize(rgb, *media.parse_size(resize))
    n, hgt, wid, _ = rgb.shape
    y4m, yuv = os.path.join(out_dir, "ref.y4m"), os.path.join(out_dir, "ref.yuv")
    media.write_video(yuv, rgb, video.fps)          # fails first (clearly) on odd sizes, which I420 cannot hold
    media.write_video(y4m, rgb, video.fps)
    rgb = media.read_video(y4m).frames                 # the 4:2:0 planes' RGB, the common reference
    return Reference(y4m, yuv, wid, hgt, n, video.fps, rgb)


def measure(ref, dec_frames, *, gop=33, use_lpips=True):
    """Sequence means of the metrics of decoded frames against the reference (None where not computable)."""
    if dec_frames.shape != ref.rgb.shape:
        raise RuntimeError(f"decoded video is {list(dec_frames.shape)}, reference {list(ref.rgb.shape)}")
    res = media.evaluate(ref.rgb, dec_frames, gop=gop, use_lpips=use_lpips)
    return {k: res["sequence"][k] for k in ("psnr", "psnr_yuv", "ms_ssim", "lpips")}


class ToolError(RuntimeError):
    """An encoder, decoder or gvcc run failed; .stderr holds what it said."""
    def __init__(self, message, stderr=""):
        super().__init__(message)
        self.stderr = stderr


def _run(cmd, what, cwd=None, quiet=True):
    # run a command, return its wall time in seconds; ToolError with its last stderr line if it fails
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE if quiet else None, text=True)
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr or "").splitlines() if l.strip()]
        reason = lines[-1] if lines else "no message" if proc.returncode > 0 else f"killed by signal {-proc.returncode}"
        raise ToolError(f"{what} failed (exit {proc.returncode}): {reason}", proc.stderr or "")
    return time.perf_counter() - start


# ==================================================================================================
# gvcc
# ==================================================================================================

def run_gvcc(ref, out_dir, M, K, *, weights, model, extra_args=(), gvcc_py=GVCC_PY, python=sys.executable,
             quiet=False):
    """Encode and decode the reference with gvcc at (M, K) through its CLI; returns the point (no metrics yet)."""
    stem = os.path.join(out_dir, f"gvcc_M{M}_K{K}")
    stream, decoded = stem + ".gvcc", stem + ".y4m"
    enc = [python, gvcc_py, "encode", ref.y4m, stream, "-y", "-M", str(M), "-K", str(K), "--weights", weights,
           "--model", model, *extra_args]
    dec = [python, gvcc_py, "decode", stream, decoded, "-y", "--weights", weights]
    dec += [a for a in extra_args if a in ("--quiet",)] + _runtime_args(extra_args)
    enc_s = _run(enc, f"gvcc encode M={M} K={K}", quiet=quiet)
    dec_s = _run(dec, f"gvcc decode M={M} K={K}", quiet=quiet)
    rate = media.stream_rate(stream, ref.width, ref.height, ref.frames, ref.fps)
    return {"codec": "gvcc", "setting": f"M{M} K{K}", "M": M, "K": K, "target_bpp": None, "bits": rate["bits"],
            "bpp": rate["bpp"], "kbps": rate["kbps"], "encode_s": enc_s, "decode_s": dec_s, "file": stream,
            "decoded": media.read_video(decoded).frames}


def _runtime_args(extra_args):
    # the encoder flags the decoder needs as well (device and precision must match the encoder's)
    out, args = [], list(extra_args)
    for i, a in enumerate(args):
        if a in ("--device", "--precision") and i + 1 < len(args):
            out += [a, args[i + 1]]
        elif a.startswith(("--device=", "--precision=")):
            out.append(a)
    return out


# ==================================================================================================
# Anchors (ffmpeg from imageio-ffmpeg)
# ==================================================================================================

# name -> (encoder, elementary stream extension, ffmpeg muxer / demuxer)
ANCHORS = {"x264": ("libx264", ".264", "h264"), "x265": ("libx265", ".265", "hevc"),
           "av1": ("libaom-av1", ".obu", "obu")}


def anchor_args(codec, bitrate, pass_no, stats, *, preset=None):
    """ffmpeg output options of one pass (1 or 2) of a two-pass encode at `bitrate` bits per second."""
    b = ["-b:v", str(int(round(bitrate)))]
    if codec == "x264":
        args = ["-c:v", "libx264", "-preset", preset or "medium", *b, "-g", str(KEYINT),
                "-pass", str(pass_no), "-passlogfile", stats]
        # x264 writes its option string as a ~700-byte SEI no decoder needs: drop it from the coded file
        return args + (["-bsf:v", "filter_units=remove_types=6"] if pass_no == 2 else [])
    if codec == "x265":
        params = f"pass={pass_no}:stats={stats}.log:keyint={KEYINT}:info=0:log-level=error"
        return ["-c:v", "libx265", "-preset", preset or "medium", *b, "-x265-params", params]
    if codec == "av1":
        return ["-c:v", "libaom-av1", "-cpu-used", preset or "6", "-row-mt", "1", *b, "-g", str(KEYINT),
                "-pass", str(pass_no), "-passlogfile", stats]
    raise ValueError(f"unknown anchor '{codec}' (known: {', '.join(ANCHORS)})")


def _next_bitrate(tried, goal):
    # Rate search in log-log space: [(log requested bitrate, log bits obtained)] -> the next bitrate to ask for.
    # Short clips make rate control jumpy, so keep a bracket (one try under the goal, one over) when there is
    # one and interpolate inside it (regula falsi); until then scale by goal / obtained.
    under = [t for t in tried if t[1] < goal]
    over = [t for t in tried if t[1] > goal]
    if under and over:
        (x0, y0), (x1, y1) = max(under, key=lambda t: t[1]), min(over, key=lambda t: t[1])
        x = x0 + (goal - y0) * (x1 - x0) / (y1 - y0) if y1 != y0 else 0.5 * (x0 + x1)
    else:
        x, y = tried[-1]
        x += goal - y
    return math.exp(x)


def run_anchor(ref, out_dir, codec, target_bpp, *, preset=None):
    """Two-pass encode of the reference at target_bpp (bits / (W H frames)), decode; returns the point."""
    import imageio_ffmpeg
    if codec not in ANCHORS:
        raise ValueError(f"unknown anchor '{codec}' (known: {', '.join(ANCHORS)})")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    out_dir = os.path.abspath(out_dir)                 # ffmpeg runs inside it (for the statistics files)
    _, ext, fmt = ANCHORS[codec]
    tag = f"{codec}_{target_bpp:.6g}"
    stream = os.path.join(out_dir, tag + ext)
    pixels = ref.width * ref.height * ref.frames
    seconds = ref.frames / float(ref.fps)
    src = ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{ref.width}x{ref.height}",
           "-framerate", f"{ref.fps.numerator}/{ref.fps.denominator}", "-i", os.path.abspath(ref.yuv), "-an"]
    base = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *src]
    stats = tag + "_stats"                           # relative: x265's option syntax cannot hold every path
    target_bits = target_bpp * pixels
    floor = [MIN_BITRATE]

    def encode(pass_no, bitrate, output):
        # one pass at max(bitrate, floor); x264 refuses a target below its own estimate of the least it can
        # do (printed rounded down to whole kbps), so then raise the floor above that estimate and code there
        for _ in range(5):
            rate = max(bitrate, floor[0])
            try:
                return _run(base + anchor_args(codec, rate, pass_no, stats, preset=preset) + output,
                            f"{codec} pass {pass_no}", cwd=out_dir), rate
            except ToolError as exc:
                m = re.search(r"estimated minimum is (\d+) kbps", exc.stderr)
                if not m:
                    raise
                floor[0] = max(1000.0 * (int(m.group(1)) + 1), 1.25 * rate)
        raise ToolError(f"{codec} pass {pass_no}: no bitrate it accepts near {bitrate:.0f} bit/s")

    try:
        enc_s, _ = encode(1, target_bits / seconds, ["-f", "null", "-"])
        bitrate, best, tried = target_bits / seconds, None, []
        for _ in range(MAX_SECOND_PASSES):
            trial = stream + ".try"
            took, bitrate = encode(2, bitrate, ["-f", fmt, trial])
            bits = 8 * os.path.getsize(trial)
            miss = abs(bits / target_bits - 1.0)
            if best is None or miss < best[0]:
                os.replace(trial, stream)
                best = (miss, bits, took)
            if miss <= RATE_TOLERANCE:
                break
            tried.append((math.log(bitrate), math.log(bits)))
            if len(tried) >= 2 and tried[-1][1] == tried[-2][1] and bits > target_bits:
                break                                  # the encoder's floor: asking for less changes nothing
            bitrate = _next_bitrate(tried, math.log(target_bits))
    finally:
        for name in os.listdir(out_dir):               # first-pass statistics and discarded tries
            if name.startswith(stats) or name == os.path.basename(stream) + ".try":
                os.remove(os.path.join(out_dir, name))
    _, bits, took = best
    decoded = os.path.join(out_dir, tag + "_dec.yuv")
    dec_s = _run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", fmt, "-i", stream, "-fps_mode",
                  "passthrough", "-f", "rawvideo", "-pix_fmt", "yuv420p", decoded], f"{codec} decode")
    frames = media.read_video(decoded, size=(ref.width, ref.height), fps=ref.fps).frames
    os.remove(decoded)                                 # large, and the stream reproduces it
    return {"codec": codec, "setting": f"{target_bpp:.6g} bpp", "M": None, "K": None, "target_bpp": target_bpp,
            "bits": bits, "bpp": bits / pixels, "kbps": bits / seconds / 1000.0, "encode_s": enc_s + took,
            "decode_s": dec_s, "file": stream, "decoded": frames}


# ==================================================================================================
# Results: CSV, BD-rates, plot
# ==================================================================================================

def write_csv(rows, path):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in CSV_FIELDS})


def curves(rows):
    """{codec: rows sorted by bpp}."""
    out = {}
    for r in rows:
        out.setdefault(r["codec"], []).append(r)
    return {c: sorted(rs, key=lambda r: r["bpp"]) for c, rs in out.items()}


def bd_table(rows, anchor, metrics=("psnr", "ms_ssim", "lpips"), method="pchip"):
    """BD-rate (%) and BD-quality of every curve against `anchor`, per metric; 'note' says why one is missing.

    method 'pchip' (piecewise cubic, as JVET reports) by default: the cubic polynomial of VCEG-M33 swings wildly
    when a short clip's curve saturates, which the anchors' do on small test clips.
    """
    by_codec = curves(rows)
    out = []
    if anchor not in by_codec:
        return out
    for codec, rs in by_codec.items():
        if codec == anchor:
            continue
        for metric in metrics:
            row = {"codec": codec, "anchor": anchor, "metric": metric, "method": method, "bd_rate_pct": None,
                   "bd_quality": None, "note": ""}
            pts = [[(r["bpp"], QUALITY[metric] * r[metric]) for r in c if r.get(metric) is not None
                    and math.isfinite(r[metric])] for c in (by_codec[anchor], rs)]
            if any(len(p) < 2 for p in pts):
                if any(r.get(metric) is not None for r in rs + by_codec[anchor]):
                    row["note"] = "fewer than 2 points"
                    out.append(row)
                continue
            (ra, qa), (rb, qb) = (list(zip(*p)) for p in pts)
            try:
                row["bd_rate_pct"] = media.bd_rate(ra, qa, rb, qb, method=method)
            except ValueError as exc:
                row["note"] = str(exc)
            try:
                row["bd_quality"] = QUALITY[metric] * media.bd_quality(ra, qa, rb, qb, method=method)
            except ValueError as exc:
                row["note"] = row["note"] or str(exc)
            out.append(row)
    return out


def plot(rows, path, title, bd_rows=()):
    """R-D plot (PSNR, MS-SSIM, LPIPS against bpp, log axis); False if matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return False
    metrics = [m for m in ("psnr", "ms_ssim", "lpips") if any(r.get(m) is not None for r in rows)] or ["psnr"]
    labels = {"psnr": "PSNR RGB (dB)", "ms_ssim": "MS-SSIM", "lpips": "LPIPS (lower is better)"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.5), squeeze=False)
    bd = {(b["codec"], b["metric"]): b["bd_rate_pct"] for b in bd_rows}
    for ax, metric in zip(axes[0], metrics):
        for codec, rs in curves(rows).items():
            pts = [(r["bpp"], r[metric]) for r in rs if r.get(metric) is not None and math.isfinite(r[metric])]
            if not pts:
                continue
            label = codec
            if bd.get((codec, metric)) is not None:
                label += f" (BD-rate {bd[(codec, metric)]:+.1f}%)"
            ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bits per pixel (log)")
        ax.set_ylabel(labels[metric])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if bd_rows:
        b = bd_rows[0]
        title += f"; BD-rate against {b['anchor']} ({b['method']})"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _fmt(v, spec):
    # format a number, or '-' at the same width for a missing one
    width = int(spec.split(".")[0] or 0)
    return f"{'-':>{width}}" if v is None else format(v, spec)


def print_tables(rows, bd_rows, out=sys.stdout):
    print(f"{'codec':>6} {'setting':>14} {'bpp':>10} {'kbps':>9} {'PSNR':>7} {'YUV':>7} {'MS-SSIM':>8} "
          f"{'LPIPS':>7} {'enc s':>7} {'dec s':>7}", file=out)
    for r in rows:
        print(f"{r['codec']:>6} {r['setting']:>14} {r['bpp']:>10.6f} {r['kbps']:>9.2f} {_fmt(r['psnr'], '7.2f')} "
              f"{_fmt(r['psnr_yuv'], '7.2f')} {_fmt(r['ms_ssim'], '8.4f')} {_fmt(r['lpips'], '7.4f')} "
              f"{r['encode_s']:>7.1f} {r['decode_s']:>7.1f}", file=out)
    if bd_rows:
        print("", file=out)
        print(f"{'codec':>6} {'vs':>6} {'metric':>8} {'BD-rate %':>10} {'BD-quality':>11}  note", file=out)
        for b in bd_rows:
            print(f"{b['codec']:>6} {b['anchor']:>6} {b['metric']:>8} {_fmt(b['bd_rate_pct'], '10.2f')} "
                  f"{_fmt(b['bd_quality'], '11.4f')}  {b['note']}", file=out)


# ==================================================================================================
# The sweep
# ==================================================================================================

def parse_grid(text):
    """'16:1024,64:16384' -> [(16, 1024), (64, 16384)]."""
    out = []
    for item in text.split(","):
        m, _, k = item.strip().partition(":")
        if not (m.isdigit() and k.isdigit()):
            raise ValueError(f"grid item '{item}' is not M:K")
        out.append((int(m), int(k)))
    return out


def sweep(src, out_dir, *, grid=(), weights=None, model=None, gvcc_args=(), anchors=("x264", "x265", "av1"),
          anchor_bpp=None, bd_anchor="x265", bd_method="pchip", gop=33, frames=None, resize=None, yuv_size=None, fps=None,
          limited_range=None, use_lpips=True, preset=None, log=lambda msg: print(msg, file=sys.stderr)):
    """Run the whole sweep; returns (rows, bd_rows, failures). Writes rd.csv, bd.csv and rd.png into out_dir.

    A gvcc failure stops the sweep; an anchor that fails at one rate is logged, listed in `failures` and skipped.
    """
    ref = prepare_reference(src, out_dir, yuv_size=yuv_size, fps=fps, limited_range=limited_range, frames=frames,
                            resize=resize)
    log(f"reference: {ref.width}x{ref.height}, {ref.frames} frames at {ref.fps} fps -> {ref.y4m}")
    rows, failures = [], []

    def add(point):
        point.update(measure(ref, point.pop("decoded"), gop=gop, use_lpips=use_lpips))
        rows.append(point)
        log(f"{point['codec']} {point['setting']}: {point['bpp']:.6f} bpp, PSNR {_fmt(point['psnr'], '.2f')} dB")
    if grid:
        if not (weights and model):
            raise ValueError("a gvcc grid needs --weights and --model")
        for M, K in grid:
            add(run_gvcc(ref, out_dir, M, K, weights=weights, model=model, extra_args=gvcc_args))
    targets = list(anchor_bpp) if anchor_bpp else sorted(r["bpp"] for r in rows if r["codec"] == "gvcc")
    if anchors and not targets:
        raise ValueError("anchors need target rates: give --anchor-bpp, or a gvcc grid to match")
    for codec in anchors:
        for bpp in targets:
            try:
                add(run_anchor(ref, out_dir, codec, bpp, preset=preset))
            except ToolError as exc:                   # one anchor failing (x265 aborts on some tiny sizes)
                log(f"{codec} at {bpp:.6g} bpp: no point: {exc}")   # must not cost the rest of the sweep
                failures.append(f"{codec} {bpp:.6g} bpp: {exc}")
    bd_rows = bd_table(rows, bd_anchor, method=bd_method)
    write_csv(rows, os.path.join(out_dir, "rd.csv"))
    with open(os.path.join(out_dir, "bd.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=("codec", "anchor", "metric", "method", "bd_rate_pct", "bd_quality",
                                           "note"))
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in b.items()} for b in bd_rows)
    title = f"{os.path.basename(os.path.normpath(src))}: {ref.width}x{ref.height}, {ref.frames} frames"
    if not plot(rows, os.path.join(out_dir, "rd.png"), title, bd_rows):
        log("rd.png not written: matplotlib is not installed (pip install matplotlib)")
    return rows, bd_rows, failures


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="source video (any input gvcc reads)")
    p.add_argument("out_dir", help="folder for the reference, streams, rd.csv, bd.csv and rd.png")
    p.add_argument("--grid", default="", help="gvcc points as M:K,M:K,... (e.g. 16:1024,32:4096,64:16384)")
    p.add_argument("--weights", help="gvcc weights folder")
    p.add_argument("--model", help="gvcc model name (e.g. t2v-1.3B, tiny-t2v)")
    p.add_argument("--gvcc-args", default="", help="more gvcc encode flags, one shell-quoted string")
    p.add_argument("--anchors", default="x264,x265,av1", help="comma list of x264, x265, av1, or '' for none")
    p.add_argument("--anchor-bpp", default="", help="anchor targets in bpp (default: the rates gvcc reached)")
    p.add_argument("--preset", help="anchor speed preset (x264/x265 preset name, libaom cpu-used number)")
    p.add_argument("--bd-anchor", default="x265", help="the curve BD-rates are quoted against (default x265)")
    p.add_argument("--bd-method", choices=("pchip", "cubic"), default="pchip",
                   help="Bjontegaard fit: piecewise cubic (default) or VCEG-M33's cubic polynomial")
    p.add_argument("--gop", type=int, default=33, help="frames per GOP for the metrics' per-GOP means")
    p.add_argument("--frames", type=int, help="use only the first N frames of SRC")
    p.add_argument("--resize", metavar="WxH", help="code and measure at this working size (Lanczos)")
    p.add_argument("--yuv-size", metavar="WxH", help="frame size of a raw .yuv SRC")
    p.add_argument("--fps", help="frame rate of a raw .yuv SRC")
    media.add_range_arguments(p)
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS even when it is available")
    a = p.parse_args(argv)
    rows, bd_rows, failures = sweep(
        a.src, a.out_dir, grid=parse_grid(a.grid) if a.grid else (), weights=a.weights, model=a.model,
        gvcc_args=shlex.split(a.gvcc_args), anchors=[c for c in a.anchors.split(",") if c],
        anchor_bpp=[float(x) for x in a.anchor_bpp.split(",") if x], bd_anchor=a.bd_anchor,
        bd_method=a.bd_method, gop=a.gop,
        frames=a.frames, resize=a.resize, yuv_size=a.yuv_size, fps=a.fps, limited_range=a.limited_range,
        use_lpips=not a.no_lpips, preset=a.preset)
    print_tables(rows, bd_rows)
    for f in failures:
        print(f"failed: {f}")


if __name__ == "__main__":
    main()
