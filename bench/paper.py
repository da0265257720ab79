"""The GVCC paper's UVG protocol as one command: the authors' frame selection, ground truth, metrics,
aggregation and rate counts, printed in the layout of the paper's Table 2 next to the published numbers.

    python bench/paper.py UVG_DIR OUT_DIR --weights DIR [--protocol 1080p|720p] [--modes t2v,i2v,flf2v]
        [--models t2v=t2v-14B,i2v=i2v-14B-720P,flf2v=flf2v-14B-720P] [--sequences Beauty,Jockey]
        [--i2v-first lossless|avif] [--still-quality 60[,40,80]] [--residual-bits 8] [--t2v-text-len 226]
        [--gop 33] [--gops N] [--encode-args "-M 64"] [--no-lpips]

What it does, per sequence and mode (the authors' scripts: exp_t2v/, exp_i2v/, exp_flf2v/ of CCdydy/GVCC):
1. Sequences: every raw .yuv under UVG_DIR named as UVG names them, NAME_WxH_FPSfps_420_8bit_YUV.yuv (the
   7 1080p files a user downloads), in the paper's order. 8-bit I420.
2. Ground truth: the authors' RGB conversion, chroma upsampled by OpenCV's linear resize and OpenCV's
   COLOR_YUV2RGB (media.yuv420_to_rgb_opencv, bit-exact in numpy; not gvcc's BT.709 reading of .yuv).
3. Frame selection. 1080p (Table 2): every whole GOP at the source size: T2V floor(N / 33) GOPs of 33 frames;
   I2V and FLF2V floor((N - 1) / 32) GOPs that share their boundary frames, 32 k + 1 frames. 720p (the authors'
   per-sequence tables): Lanczos to 1280x720 (Pillow, as their PIL resize), the first 3 GOPs. (The authors' I2V
   codes [33 g, 33 g + 33) and conditions on frame 33 g - 1; gvcc's I2V GOPs share their boundary frame, see
   gvcc.py, so I2V takes the FLF2V frame count here.)
4. Coding: `gvcc.py encode` (in this process) of the ground truth, written losslessly as a PNG folder at the
   working size, with gvcc's defaults, which are the paper's settings (K 16384, M 64 up to 720p and 80 above,
   M_tail 128, 20 steps, 3 ODE tail steps, g_scale 3, shift by the authors' rule, seed 42), plus the authors'
   input conventions: T2V --text-len 226 (their diffusers T2V run); the I2V first frame a lossless still, so it
   equals the ground truth as theirs does (--i2v-first avif codes it like the other stills); FLF2V boundaries
   as AVIF stills at --still-quality, one run per value (the boundary-quality sweep: the paper used CompressAI
   cheng2020-attn at quality 4, which gvcc does not ship); the I2V tail residual at --residual-bits (0: off).
   The encoder's --recon is the decoder's output (gvcc guarantees it; tests/test_cli.py checks it).
5. Metrics per frame (media.evaluate): PSNR on RGB in [0, 1], MS-SSIM (pytorch-msssim's), LPIPS AlexNet on
   [-1, 1] when the lpips package and its weights are present. Aggregation as the authors: the mean of each
   GOP (a shared boundary frame counts in both GOPs; gvcc's output holds it once, decoded by the earlier GOP,
   where the authors score each GOP's own decode of it), the mean of the GOPs per sequence, the mean of the
   sequences (the authors round each GOP's PSNR to 0.01 dB and LPIPS to 1e-4 first; gvcc does not).
6. Rates in both conventions, per sequence and then averaged over the sequences: gvcc's (the whole file,
   headers and stills included, bits / (W H frames)) and the authors' (gvcc.paper_accounting: their codebook
   count with M, their residual and boundary bytes, first frame and headers free, their per-sequence
   aggregation); kbps at 16 fps (the authors' rate) for both.
7. Output: OUT_DIR/<mode>[_q<quality>]/<sequence>/ (ground truth PNGs, stream, reconstruction), OUT_DIR/
   summary.json, and on stdout one table per run with the paper's numbers beside gvcc's, then Table 2.

Memory: a 1080p sequence is held whole, ground truth and reconstruction (about 7 GiB for 577 frames). Each
sequence is one `gvcc.py encode`, which loads the model anew (about a minute for the 14B models, small next to
their several minutes per GOP).
"""
import argparse
import json
import os
import re
import shlex
import sys
from fractions import Fraction

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import bitstream  # noqa: E402
import gvcc  # noqa: E402
import media  # noqa: E402

UVG_ORDER = ("Beauty", "Bosphorus", "HoneyBee", "Jockey", "ReadySteadyGo", "ShakeNDry", "YachtRide")
UVG_NAME = re.compile(r"^([A-Za-z]+)_(\d+)x(\d+)_(\d+)fps_.*\.yuv$")
MODES = ("t2v", "i2v", "flf2v")
PAPER_MODELS = {"t2v": "t2v-14B", "i2v": "i2v-14B-720P", "flf2v": "flf2v-14B-720P"}

# The published numbers (arXiv 2603.26571; ../shared/spec/references.md). Table 2, UVG 1080p: method ->
# (PSNR, LPIPS) per bitrate tier (~0.003, ~0.006, ~0.05 bpp); GVCC's rows with the bpp they reached.
TIERS = ("~0.003 bpp", "~0.006 bpp", "~0.05 bpp")
TABLE2_BASELINES = {
    "HEVC": ((29.8, 0.385), (30.2, 0.360), (34.7, 0.115)),
    "VVC": ((31.5, 0.325), (31.8, 0.315), (36.0, 0.112)),
    "DCVC-FM": ((34.0, 0.286), (34.7, 0.265), (37.0, 0.110)),
    "DCVC-RT": ((34.1, 0.285), (34.6, 0.261), (39.7, 0.115)),
    "GLC-Video": ((27.5, 0.160), (29.5, 0.145), (32.0, 0.109)),
}
TABLE2_GVCC = {"t2v": (0, 29.7, 0.133, 0.0027), "flf2v": (1, 31.7, 0.117, 0.006), "i2v": (2, 32.2, 0.087, 0.050)}
# UVG 720p, 3 GOPs, 14B models, M 64: per sequence (PSNR, LPIPS) and the overall row.
PAPER_720P = {
    "t2v": {"Beauty": (31.79, 0.154), "Bosphorus": (30.32, 0.098), "HoneyBee": (30.78, 0.052),
            "Jockey": (31.28, 0.090), "ReadySteadyGo": (26.74, 0.086), "ShakeNDry": (25.55, 0.239),
            "YachtRide": (26.60, 0.103), "mean": (29.01, 0.117)},
    "i2v": {"Beauty": (32.90, 0.109), "Bosphorus": (33.63, 0.055), "HoneyBee": (36.21, 0.020),
            "Jockey": (33.27, 0.070), "ReadySteadyGo": (29.48, 0.053), "ShakeNDry": (30.11, 0.136),
            "YachtRide": (28.21, 0.075), "mean": (31.97, 0.074)},
    "flf2v": {"Beauty": (32.26, 0.158), "Bosphorus": (32.72, 0.086), "HoneyBee": (34.73, 0.033),
              "Jockey": (33.09, 0.080), "ReadySteadyGo": (29.44, 0.063), "ShakeNDry": (29.52, 0.166),
              "YachtRide": (28.02, 0.089), "mean": (31.40, 0.096)},
}


class PaperError(RuntimeError):
    """The folder, a sequence or a gvcc run is not usable; the message is one line."""


# ==================================================================================================
# Sequences, ground truth, frame selection
# ==================================================================================================

def find_sequences(folder):
    """[(name, path, width, height, fps)] of the UVG-named .yuv files under `folder`, in the paper's order."""
    found = {}
    for dirpath, _, names in os.walk(folder):
        for name in sorted(names):
            m = UVG_NAME.match(name)
            if m and m.group(1) not in found:
                found[m.group(1)] = (m.group(1), os.path.join(dirpath, name), int(m.group(2)), int(m.group(3)),
                                     Fraction(int(m.group(4))))
    order = [n for n in UVG_ORDER if n in found] + sorted(n for n in found if n not in UVG_ORDER)
    return [found[n] for n in order]


def read_ground_truth(path, width, height, n):
    """The first n frames of an 8-bit I420 file as the authors' RGB (uint8 [n, H, W, 3])."""
    luma, chroma = width * height, (width // 2) * (height // 2)
    size = luma + 2 * chroma
    available = os.path.getsize(path) // size
    if available < n:
        raise PaperError(f"{path}: {available} frames, the protocol needs {n}")
    out = np.empty((n, height, width, 3), np.uint8)                          # [n, H, W, 3]
    with open(path, "rb") as fh:
        for i in range(n):
            buf = np.frombuffer(fh.read(size), np.uint8)
            y = buf[:luma].reshape(height, width)
            u = buf[luma:luma + chroma].reshape(height // 2, width // 2)
            v = buf[luma + chroma:].reshape(height // 2, width // 2)
            out[i] = media.yuv420_to_rgb_opencv(y, u, v)
    return out


def frames_needed(mode, available, gop, gops=None):
    """Frames the protocol codes: `gops` GOPs (None: every whole GOP the sequence holds), T2V back to back,
    I2V and FLF2V sharing boundary frames."""
    stride = gop if mode == "t2v" else gop - 1
    whole = available // gop if mode == "t2v" else (available - 1) // stride
    n_gops = whole if gops is None else min(gops, whole)
    if n_gops < 1:
        raise PaperError(f"{available} frames do not hold one GOP of {gop}")
    return n_gops * stride + (0 if mode == "t2v" else 1)


# ==================================================================================================
# One run: code a sequence with gvcc, measure it
# ==================================================================================================

def encode_args(mode, args, quality):
    """The gvcc encode flags of the authors' conventions for this mode."""
    out = ["--mode", mode, "--model", args.models[mode], "--gop", str(args.gop)]
    if mode == "t2v":
        out += ["--text-len", str(args.t2v_text_len)]
    if mode == "i2v":
        out += ["--still-quality", "lossless" if args.i2v_first == "lossless" else str(quality),
                "--residual-bits", str(args.residual_bits)]
    if mode == "flf2v":
        out += ["--still-quality", str(quality)]
    return out + shlex.split(args.encode_args)


def run_sequence(seq, mode, quality, run_dir, args):
    """Code one sequence in one mode; returns its result row (metrics, both rates, per GOP)."""
    name, path, src_w, src_h, fps = seq
    scale = args.protocol == "720p"
    total = os.path.getsize(path) // (src_w * src_h + 2 * (src_w // 2) * (src_h // 2))
    n = frames_needed(mode, total, args.gop, 3 if scale and args.gops is None else args.gops)
    gt = read_ground_truth(path, src_w, src_h, n)                                   # [n, H, W, 3]
    if scale:
        gt = media.resize(gt, 1280, 720)
    seq_dir = os.path.join(run_dir, name)
    os.makedirs(seq_dir, exist_ok=True)
    gt_dir, stream, recon_dir = (os.path.join(seq_dir, x) for x in ("ground_truth", "stream.gvcc", "recon"))
    media.write_video(gt_dir, gt, fps)
    argv = ["encode", gt_dir, stream, "-y", "--weights", args.weights, "--recon", recon_dir,
            *(["--quiet"] if args.quiet else []), *encode_args(mode, args, quality)]
    if gvcc.main(argv) != 0:
        raise PaperError(f"{name} {mode}: gvcc.py {shlex.join(argv)} failed")
    recon = media.read_video(recon_dir).frames
    with open(stream, "rb") as fh:
        data = fh.read()
    hdr = bitstream.read_header(data)
    report = bitstream.stream_report(data)
    paper = gvcc.paper_accounting(hdr, report["gops"])
    layout = bitstream.gop_layout(hdr)
    res = media.evaluate(gt, recon, gop=[(i.first_frame, i.n_frames) for i in layout],
                         use_lpips=not args.no_lpips)
    pixels = hdr.src_width * hdr.src_height * hdr.frames
    bits = 8 * len(data)
    seq_means = res["sequence_gop_mean"]
    return {
        "sequence": name, "mode": mode, "frames": n, "width": hdr.width, "height": hdr.height,
        "psnr": seq_means["psnr"], "ms_ssim": seq_means["ms_ssim"], "lpips": seq_means["lpips"],
        "gvcc_bits": bits, "gvcc_bpp": bits / pixels, "gvcc_kbps16": bits / (hdr.frames / 16) / 1000,
        "paper_bits": paper["bits"], "paper_bpp": paper["bpp"], "paper_kbps16": paper["kbps16"],
        "per_gop": [{k: g[k] for k in ("first_frame", "frames", "psnr", "ms_ssim", "lpips")} | {
            "paper_bits": p["bits"], "file_bytes": r["total_bytes"]}
            for g, p, r in zip(res["per_gop"], paper["gops"], report["gops"])],
        "notes": res["notes"], "stream": stream,
    }


def mean_of(rows, key):
    vals = [r[key] for r in rows]
    return None if not vals or any(v is None for v in vals) else float(np.mean(vals))


# ==================================================================================================
# Tables
# ==================================================================================================

def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def run_table(label, mode, rows, protocol, out):
    """Per-sequence rows of one run, gvcc beside the paper (720p: the authors' per-sequence numbers)."""
    print(f"\n{label}: UVG, {protocol} protocol", file=out)
    print(f"{'sequence':<14}{'frames':>7}{'PSNR':>8}{'MS-SSIM':>9}{'LPIPS':>8}{'bpp file':>11}{'bpp paper':>11}"
          f"{'kbps16 file':>12}{'kbps16 paper':>13}{'paper PSNR':>11}{'paper LPIPS':>12}", file=out)
    published = PAPER_720P[mode] if protocol == "720p" else {"mean": TABLE2_GVCC[mode][1:3]}
    for r in rows + [dict(sequence="mean", frames=None, **{k: mean_of(rows, k) for k in (
            "psnr", "ms_ssim", "lpips", "gvcc_bpp", "paper_bpp", "gvcc_kbps16", "paper_kbps16")})]:
        p_psnr, p_lpips = published.get(r["sequence"], (None, None))
        print(f"{r['sequence']:<14}{fmt(r['frames'], 'd'):>7}{fmt(r['psnr'], '.2f'):>8}{fmt(r['ms_ssim'], '.4f'):>9}"
              f"{fmt(r['lpips'], '.4f'):>8}{fmt(r['gvcc_bpp'], '.5f'):>11}{fmt(r['paper_bpp'], '.5f'):>11}"
              f"{fmt(r['gvcc_kbps16'], '.2f'):>12}{fmt(r['paper_kbps16'], '.2f'):>13}"
              f"{fmt(p_psnr, '.2f'):>11}{fmt(p_lpips, '.3f'):>12}", file=out)


def table2(runs, out):
    """The paper's Table 2 (UVG 1080p, PSNR / LPIPS per tier), with this run's gvcc rows in their tiers."""
    print("\nTable 2 layout: UVG, PSNR / LPIPS per bitrate tier (baselines and GVCC as published; "
          "this run: bpp as gvcc's file / as the authors count)", file=out)
    width = 34
    print(f"{'method':<34}" + "".join(f"{t:>{width}}" for t in TIERS), file=out)
    for name, cells in TABLE2_BASELINES.items():
        print(f"{name:<34}" + "".join(f"{f'{p:.1f} / {l:.3f}':>{width}}" for p, l in cells), file=out)
    for mode in sorted(MODES, key=lambda m: TABLE2_GVCC[m][0]):
        tier, p, l, bpp = TABLE2_GVCC[mode]
        cells = [""] * 3
        cells[tier] = f"{p:.1f} / {l:.3f} at {bpp:g}"
        print(f"{'GVCC ' + mode.upper() + ' (paper)':<34}" + "".join(f"{c:>{width}}" for c in cells), file=out)
    for label, mode, rows in runs:
        tier = TABLE2_GVCC[mode][0]
        psnr, lpips, fb, pb = (mean_of(rows, k) for k in ("psnr", "lpips", "gvcc_bpp", "paper_bpp"))
        cells = [""] * 3
        cells[tier] = f"{fmt(psnr, '.1f')} / {fmt(lpips, '.3f')} at {fmt(fb, '.4f')}/{fmt(pb, '.4f')}"
        print(f"{label + ' (this run)':<34}" + "".join(f"{c:>{width}}" for c in cells), file=out)


# ==================================================================================================
# Command line
# ==================================================================================================

def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/paper.py", description=__doc__.split("\n")[0])
    p.add_argument("uvg_dir", help="folder with the UVG .yuv files (NAME_WxH_FPSfps_420_8bit_YUV.yuv)")
    p.add_argument("out_dir", help="folder for ground truth, streams, reconstructions and summary.json")
    p.add_argument("--weights", default=os.environ.get("GVCC_WEIGHTS", "weights"), help="gvcc weights folder")
    p.add_argument("--protocol", choices=("1080p", "720p"), default="1080p",
                   help="1080p: all whole GOPs at the source size (Table 2); 720p: 1280x720, the first 3 GOPs")
    p.add_argument("--modes", default="t2v,i2v,flf2v", help="comma list of t2v, i2v, flf2v")
    p.add_argument("--models", default="", help="mode=model pairs (default: the paper's 14B models)")
    p.add_argument("--sequences", default="", help="comma list of sequence names (default: all found)")
    p.add_argument("--i2v-first", choices=("lossless", "avif"), default="lossless",
                   help="I2V first frame: a lossless still equal to the ground truth (the authors'), or AVIF")
    p.add_argument("--still-quality", default="60",
                   help="AVIF quality of FLF2V boundaries (and of an AVIF I2V first frame); a comma list sweeps")
    p.add_argument("--residual-bits", type=int, choices=(0, 4, 8, 16), default=8,
                   help="I2V tail residual bits, 0 = off (default 8, the authors')")
    p.add_argument("--t2v-text-len", type=int, default=226,
                   help="T2V padded text context (default 226, the authors' T2V runs; 512 is upstream Wan)")
    p.add_argument("--gop", type=int, default=33, help="frames per GOP (default 33)")
    p.add_argument("--gops", type=int, help="GOPs per sequence (default: the protocol's)")
    p.add_argument("--encode-args", default="", help="more gvcc encode flags, one shell-quoted string")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS even when it is available")
    p.add_argument("--quiet", action="store_true", help="no gvcc progress on stderr")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error(f"--modes takes a comma list of {', '.join(MODES)}")
    models = dict(PAPER_MODELS)
    for pair in filter(None, args.models.split(",")):
        mode, _, name = pair.partition("=")
        if mode not in MODES or not name:
            p.error(f"--models: '{pair}' is not MODE=MODEL")
        models[mode] = name
    args.models = models
    try:
        args.qualities = [int(q) for q in args.still_quality.split(",")]
    except ValueError:
        p.error("--still-quality takes a comma list of integers 0..100")
    return args


def main(argv=None, out=sys.stdout):
    args = parse_args(argv)
    sequences = find_sequences(args.uvg_dir)
    wanted = [s for s in args.sequences.split(",") if s]
    if wanted:
        sequences = [s for s in sequences if s[0] in wanted]
    if not sequences:
        print(f"paper.py: error: no UVG-named .yuv files (NAME_WxH_FPSfps_...yuv) in {args.uvg_dir}", file=sys.stderr)
        return 1
    runs, summary = [], {"protocol": args.protocol, "runs": []}
    try:
        for mode in args.modes:
            sweep = args.qualities if mode == "flf2v" or (mode == "i2v" and args.i2v_first == "avif") else [None]
            for quality in sweep:
                label = mode.upper() + (f" q{quality}" if quality is not None and len(sweep) > 1 else "")
                run_dir = os.path.join(args.out_dir, mode + (f"_q{quality}" if quality is not None else ""))
                rows = [run_sequence(seq, mode, quality if quality is not None else args.qualities[0], run_dir,
                                     args) for seq in sequences]
                runs.append((label, mode, rows))
                summary["runs"].append({"label": label, "mode": mode, "still_quality": quality,
                                        "args": encode_args(mode, args, quality if quality is not None else
                                                            args.qualities[0]),
                                        "sequences": rows, "mean": {k: mean_of(rows, k) for k in (
                                            "psnr", "ms_ssim", "lpips", "gvcc_bpp", "paper_bpp", "gvcc_kbps16",
                                            "paper_kbps16")}})
                run_table(label, mode, rows, args.protocol, out)
    except (PaperError, media.MediaError, bitstream.BitstreamError) as exc:
        print(f"paper.py: error: {exc}", file=sys.stderr)
        return 1
    table2(runs, out)
    with open(os.path.join(args.out_dir, "summary.json"), "w") as fh:
        json.dump(media._json_safe(summary), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
