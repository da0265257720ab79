"""What the demo models do on real video: the codec's rate-distortion on the held-out clips, beside the VAE's ceiling,
the no-bits baseline and x264 / x265 / AV1 at the same rates.

    python bench/bench_demo.py [--out out/demo-bench] [--clips bigbuckbunny,bikes,carphone] [--modes t2v,i2v,flf2v]
                               [--Ms 1,2,4,8,16,32,64] [--anchors x264,x265,av1] [--no-loop]
    python bench/bench_demo.py --summary out/demo-bench/demo.csv     # the per-clip tables of a finished run

Every number is measured on the held-out part of each clip (bench/train_demo.py: never seen in training), at the
demo size (DEMO_SIZES there), 33 frames (the first 33 of the held-out part), coded through `gvcc.py encode` with
the demo models and their defaults (K = 1024, 20 steps of which 3 ODE, g_scale 3, seed 42) unless a row says
otherwise. Distortion is against the clip's 4:2:0 planes as every codec receives them (bench/rd_sweep.py's
reference), rate is the whole file against the clip's size. Rows:

    vae        encode-decode through the demo VAE alone (vae.encode / vae.decode): the ceiling of any latent codec
    no-bits    the sampler's ODE from x_T: a `-M 1` stream (i2v without its residual) rewritten with g_scale_q = 0,
               so that the symbols are multiplied by zero, then decoded (no_bits below; `encode` refuses g_scale
               0, the format does not). i2v and flf2v still send their stills, so its rate is the stills' and
               headers'
    gvcc       `encode -M M` for each M (K = 1024), and `--codebook shift` at the same (M, K): the same rate
    x264 / x265 / av1   bench/rd_sweep.run_anchor at gvcc t2v's rates (two-pass, one keyframe)
    i2v loop   the I2V closed loop over 4 GOPs of 17 frames on bikes' held-out part (63 frames): per-GOP PSNR

SSIM is single-scale SSIM (media.ssim): MS-SSIM needs 161 pixels on the short side, which these frames lack.
The decoder reproduces `encode --recon` bit for bit (tests/test_demo.py checks it), so the reconstruction is what a
decode gives. Writes OUT/demo.csv, prints the tables, and OUT/demo.png: per clip, a middle frame of the source,
the VAE's reconstruction, gvcc t2v at the default M, the no-bits baseline and x265 at gvcc's rate.
"""
import argparse
import csv
import dataclasses
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import bitstream  # noqa: E402
import gvcc  # noqa: E402
import media  # noqa: E402
import rd_sweep  # noqa: E402
import train_demo  # noqa: E402
import vae  # noqa: E402

CLIP_NAMES = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}
FIELDS = ("clip", "mode", "codec", "setting", "M", "K", "bits", "bpp", "psnr", "ssim", "seconds")


def ssim_mean(ref, dec):
    return float(np.mean(media.ssim(ref, dec)))


def psnr_mean(ref, dec):
    return float(np.mean([min(60.0, p) for p in media.psnr(ref, dec)]))


def vae_ceiling(ref_rgb):
    """The demo VAE alone on the clip: encode, decode, uint8 frames (gvcc's padding and rounding)."""
    paths = gvcc.model_paths(gvcc.MODELS["demo-t2v"], gvcc.DEMO_WEIGHTS)
    cfg = vae.VAE_CONFIGS["demo"]
    params = vae.load_vae(paths["vae"], cfg)
    n, height, width = ref_rgb.shape[:3]
    pw, ph = gvcc.pixel_size(width, height)
    n_pad = 4 * ((n - 1 + 3) // 4) + 1
    src = gvcc.pad_frames(ref_rgb, n_pad, ph, pw)
    with torch.no_grad():
        out = gvcc.to_pixels(vae.decode(params, cfg, vae.encode(params, cfg, gvcc.to_model(src))))
    return out[:n, :height, :width]


def encode(ref, out_dir, tag, mode, args):
    """`gvcc.py encode` of the reference with the demo model of `mode`; (stream path, reconstruction, seconds)."""
    stream, recon = os.path.join(out_dir, tag + ".gvcc"), os.path.join(out_dir, tag + "_recon.y4m")
    argv = ["encode", ref.y4m, stream, "--model", f"demo-{mode}", "--recon", recon, "-y", "--quiet", *args]
    start = time.time()
    if gvcc.main(argv) != 0:
        raise SystemExit(f"bench_demo: gvcc {' '.join(argv)} failed")
    return stream, media.read_video(recon).frames, time.time() - start


# encode's arguments for the stream that no_bits rewrites: one atom, and no i2v tail residual (it carries bits)
NO_BITS_ARGS = {"t2v": ["-M", "1"], "i2v": ["-M", "1", "--residual-bits", "0"], "flf2v": ["-M", "1"]}


def write_without_bits(stream, out):
    """Write to `out` the gvcc stream `stream` with g_scale_q = 0 in its header: every SDE step's noise term
    g_t z vanishes, so its decode is the sampler's ODE from x_T, whatever the symbols say."""
    with open(stream, "rb") as fh:
        hdr, gops = bitstream.read_stream(fh.read())
    media.atomic_write(out, bitstream.write_stream(dataclasses.replace(hdr, g_scale_q=0), gops))


def no_bits(ref, out_dir, mode):
    """The no-bits baseline of `mode` on the reference: (stream, decoded frames, seconds). A `-M 1` stream (i2v
    without a residual) whose header says g_scale 0: every SDE step's noise term g_t z vanishes, so the decoder
    runs the sampler's ODE from x_T (Euler steps, the same grid and the same stills) and the symbols carry nothing."""
    stream, _, took = encode(ref, out_dir, f"{mode}_M1_for_nobits", mode, NO_BITS_ARGS[mode])
    out, dec = os.path.join(out_dir, f"{mode}_nobits.gvcc"), os.path.join(out_dir, f"{mode}_nobits.y4m")
    write_without_bits(stream, out)
    start = time.time()
    if gvcc.main(["decode", out, dec, "-y", "--quiet"]) != 0:
        raise SystemExit(f"bench_demo: gvcc decode {out} failed")
    return out, media.read_video(dec).frames, took + time.time() - start


def row(clip, mode, codec, setting, ref, frames, *, M=None, K=None, stream=None, bits=None, seconds=None):
    if stream is not None:
        bits = 8 * os.path.getsize(stream)
    pixels = ref.width * ref.height * ref.frames
    return {"clip": clip, "mode": mode, "codec": codec, "setting": setting, "M": M, "K": K, "bits": bits,
            "bpp": None if bits is None else bits / pixels, "psnr": psnr_mean(ref.rgb, frames),
            "ssim": ssim_mean(ref.rgb, frames), "seconds": seconds, "_frames": frames}


def bench_clip(clip, out_dir, args):
    name = CLIP_NAMES[clip]
    frames, fps = train_demo.held_out_frames(name)
    clip_dir = os.path.join(out_dir, clip)
    os.makedirs(clip_dir, exist_ok=True)
    src = os.path.join(clip_dir, "held_out.y4m")
    media.write_video(src, frames[:args.frames], fps)
    ref = rd_sweep.prepare_reference(src, clip_dir)
    rows = [row(clip, "-", "vae", "ceiling", ref, vae_ceiling(ref.rgb))]
    print(f"{clip}: {ref.width}x{ref.height}, {ref.frames} frames; VAE ceiling {rows[0]['psnr']:.2f} dB",
          file=sys.stderr, flush=True)
    for mode in args.modes:
        stream, rec, took = no_bits(ref, clip_dir, mode)
        codebook = gvcc_codebook_bits(stream)
        rows.append(row(clip, mode, "no-bits", "ODE from x_T", ref, rec, bits=8 * os.path.getsize(stream) - codebook,
                        seconds=took))
        for m in args.Ms:
            for book in args.codebooks:
                if book == "shift" and m not in args.shift_Ms:
                    continue
                stream, rec, took = encode(ref, clip_dir, f"{mode}_M{m}_{book}", mode,
                                           ["-M", str(m), "--codebook", book])
                rows.append(row(clip, mode, f"gvcc {book}", f"M {m} K {args.K}", ref, rec, M=m, K=args.K,
                                stream=stream, seconds=took))
                print(f"{clip} {mode} {book} M {m}: {rows[-1]['bpp']:.4f} bpp {rows[-1]['psnr']:.2f} dB "
                      f"({took:.0f} s)", file=sys.stderr, flush=True)
    rates = sorted({r["bpp"] for r in rows if r["codec"] == "gvcc iid" and r["mode"] == "t2v"})
    for codec in args.anchors:
        for bpp in rates:
            try:
                point = rd_sweep.run_anchor(ref, clip_dir, codec, bpp)
            except rd_sweep.ToolError as exc:
                print(f"{clip} {codec} at {bpp:.4f} bpp: {exc}", file=sys.stderr)
                continue
            rows.append(row(clip, "-", codec, f"target {bpp:.4f}", ref, point["decoded"], bits=point["bits"]))
    return rows


def gvcc_codebook_bits(stream):
    """Codebook bits of a stream (bitstream.py section 5.2), to count a no-bits run's rate without them."""
    with open(stream, "rb") as fh:
        hdr = bitstream.read_header(fh.read())
    return sum(sum(bitstream.codebook_bits(hdr, info.latent_frames)) for info in bitstream.gop_layout(hdr))


def i2v_loop(out_dir, args):
    """Per-GOP PSNR of the I2V closed loop over bikes' 63 held-out frames in GOPs of 17 (4 GOPs)."""
    frames, fps = train_demo.held_out_frames("bikes.mp4")
    folder = os.path.join(out_dir, "i2v_loop")
    os.makedirs(folder, exist_ok=True)
    src = os.path.join(folder, "held_out.y4m")
    media.write_video(src, frames, fps)
    ref = rd_sweep.prepare_reference(src, folder)
    _, rec, _ = encode(ref, folder, "i2v_gop17", "i2v", ["--gop", "17"])
    hdr_frames = [(16 * g, min(17, ref.frames - 16 * g)) for g in range((ref.frames - 1 + 15) // 16)]
    return [psnr_mean(ref.rgb[a:a + n], rec[a:a + n]) for a, n in hdr_frames]


def picture(rows, path, default_m):
    """Per clip a middle frame: source | VAE | gvcc t2v at the default M | no-bits t2v | x265 at gvcc's rate."""
    from PIL import Image, ImageDraw
    strips = []
    for clip in dict.fromkeys(r["clip"] for r in rows):
        mine = [r for r in rows if r["clip"] == clip]
        gv = next(r for r in mine if r["codec"] == "gvcc iid" and r["mode"] == "t2v" and r["M"] == default_m)
        x265 = [r for r in mine if r["codec"] == "x265"]
        x265 = min(x265, key=lambda r: abs(r["bpp"] - gv["bpp"])) if x265 else None
        picks = [("source", None), ("VAE", next(r for r in mine if r["codec"] == "vae")), (f"gvcc M={default_m}", gv),
                 ("no bits", next(r for r in mine if r["codec"] == "no-bits" and r["mode"] == "t2v"))]
        if x265 is not None:
            picks.append(("x265", x265))
        ref = mine[0]["_ref"]
        i = len(ref) // 2
        tiles = []
        for label, r in picks:
            img = Image.fromarray(ref[i] if r is None else r["_frames"][i])
            draw = ImageDraw.Draw(img)
            text = label if r is None else f"{label}: {r['psnr']:.1f} dB" + (
                f", {r['bpp']:.3f} bpp" if r["bpp"] is not None else "")
            draw.text((3, 2), text, fill=(255, 255, 0))
            tiles.append(np.asarray(img.resize((img.width * 2, img.height * 2), Image.Resampling.NEAREST)))
        strips.append(np.concatenate(tiles, axis=1))
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0))) for s in strips]
    Image.fromarray(np.concatenate(strips, axis=0)).save(path)


def print_table(rows, loop):
    print("| clip | mode | codec | setting | bpp | PSNR (dB) | SSIM |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        bpp = "-" if r["bpp"] is None else f"{r['bpp']:.4f}"
        print(f"| {r['clip']} | {r['mode']} | {r['codec']} | {r['setting']} | {bpp} | {r['psnr']:.2f} | "
              f"{r['ssim']:.3f} |")
    if loop:
        print("\nI2V closed loop, bikes held-out, GOPs of 17: PSNR per GOP " + ", ".join(f"{p:.2f}" for p in loop))


def print_summary(rows):
    """Per clip and mode, one line per M: gvcc's rate and quality, shift at the same rate where coded, and each
    anchor's point nearest that rate (its own rate, since a two-pass target is met only approximately)."""
    def num(v):
        return None if v in (None, "") else float(v)
    for clip in dict.fromkeys(r["clip"] for r in rows):
        mine = [r for r in rows if r["clip"] == clip]
        vae_row = next(r for r in mine if r["codec"] == "vae")
        anchors = list(dict.fromkeys(r["codec"] for r in mine if r["mode"] == "-" and r["codec"] != "vae"))
        for mode in dict.fromkeys(r["mode"] for r in mine if r["mode"] != "-"):
            nob = next(r for r in mine if r["mode"] == mode and r["codec"] == "no-bits")
            print(f"\n{clip} {mode}: VAE ceiling {num(vae_row['psnr']):.2f} dB / SSIM {num(vae_row['ssim']):.3f}; "
                  f"no-bits {num(nob['psnr']):.2f} dB / {num(nob['ssim']):.3f} at {num(nob['bpp']):.4f} bpp")
            print("| M | bpp | PSNR | SSIM | shift PSNR | " + " | ".join(f"{a} bpp / PSNR" for a in anchors) + " |")
            print("|---" * (5 + len(anchors)) + "|")
            for r in sorted((r for r in mine if r["mode"] == mode and r["codec"] == "gvcc iid"),
                            key=lambda r: num(r["M"])):
                bpp = num(r["bpp"])
                shift = next((s for s in mine if s["mode"] == mode and s["codec"] == "gvcc shift"
                              and s["M"] == r["M"]), None)
                cells = [f"{int(num(r['M']))}", f"{bpp:.4f}", f"{num(r['psnr']):.2f}", f"{num(r['ssim']):.3f}",
                         "-" if shift is None else f"{num(shift['psnr']):.2f}"]
                for a in anchors:
                    pts = [x for x in mine if x["codec"] == a]
                    near = min(pts, key=lambda x: abs(num(x["bpp"]) - bpp)) if pts else None
                    ok = near is not None and abs(num(near["bpp"]) - bpp) <= 0.25 * bpp
                    cells.append(f"{num(near['bpp']):.4f} / {num(near['psnr']):.2f}" if ok else "-")
                print("| " + " | ".join(cells) + " |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "out", "demo-bench"))
    p.add_argument("--clips", default="bigbuckbunny,bikes,carphone")
    p.add_argument("--modes", default="t2v,i2v,flf2v")
    p.add_argument("--Ms", default="1,2,4,8,16,32,64")
    p.add_argument("--shift-Ms", default="4,16", help="M values also coded with --codebook shift")
    p.add_argument("--anchors", default="x264,x265,av1")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--no-loop", action="store_true", help="skip the I2V closed-loop run")
    p.add_argument("--summary", metavar="CSV", help="print the per-clip summary of a finished run's demo.csv; "
                                                     "codes nothing")
    args = p.parse_args(argv)
    if args.summary:
        with open(args.summary, newline="") as fh:
            print_summary(list(csv.DictReader(fh)))
        return
    args.modes = args.modes.split(",")
    args.Ms = [int(m) for m in args.Ms.split(",")]
    args.shift_Ms = [int(m) for m in args.shift_Ms.split(",") if m]
    args.codebooks = ["iid", "shift"] if args.shift_Ms else ["iid"]
    args.anchors = [a for a in args.anchors.split(",") if a]
    args.K = gvcc.MODELS["demo-t2v"].K
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for clip in args.clips.split(","):
        clip_rows = bench_clip(clip, args.out, args)
        ref = rd_sweep.prepare_reference(os.path.join(args.out, clip, "held_out.y4m"), os.path.join(args.out, clip))
        for r in clip_rows:
            r["_ref"] = ref.rgb
        rows += clip_rows
    loop = [] if args.no_loop else i2v_loop(args.out, args)
    with open(os.path.join(args.out, "demo.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print_table(rows, loop)
    print_summary([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    default_m = gvcc.MODELS["demo-t2v"].M
    if any(r["codec"] == "gvcc iid" and r["M"] == default_m for r in rows):
        picture(rows, os.path.join(args.out, "demo.png"), default_m)


if __name__ == "__main__":
    main()
