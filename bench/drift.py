"""Drift: what a user sees when a stream is decoded on other hardware than the encoder's.

A stream parses identically everywhere, but the decoder's DiT and VAE are floating point, so another CPU (or a
GPU) rounds them differently, and the sampler carries those differences through its steps; in I2V the decoded
last frame of a GOP conditions the next GOP, so they can also travel from GOP to GOP. This script encodes a
synthetic clip of several GOPs per mode with the tiny models and decodes it three ways:

    native     the same machine and settings: must equal the encoder's reconstruction bit for bit
    capability a subprocess under ATEN_CPU_CAPABILITY=default with oneDNN limited to AVX2 (another CPU's kernels)
    ulp        every DiT output moved by one ulp (torch.nextafter towards +inf) at every step: the smallest
               possible disagreement, at every network call, in process
    rel:E      every DiT output scaled by (1 + E), e.g. rel:1e-4: a larger disagreement, to see whether the
               sampler and the I2V chain damp or amplify it from GOP to GOP

and prints, per GOP, the PSNR (dB, RGB) and the largest absolute difference between the encoder's
reconstruction and that decode.

    python bench/drift.py [--weights DIR] [--gops 6] [--size 40x24] [--modes t2v,i2v,flf2v]
                          [--ways native,capability,ulp,rel:1e-4]
"""
import argparse
import contextlib
import fractions
import math
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import golden_cases  # noqa: E402

GOP = 9               # small GOPs (3 latent frames) so that a clip of many GOPs codes in seconds
OTHER_CAPABILITY = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def clip_frames(mode, gops):
    """Frames for `gops` GOPs of GOP frames: t2v GOPs are disjoint, i2v / flf2v GOPs share a boundary frame."""
    return gops * GOP if mode == "t2v" else gops * (GOP - 1) + 1


def encode(mode, workdir, weights, gops, size):
    """Encode the synthetic clip with the CLI; returns (stream path, the encoder's reconstruction)."""
    import media
    width, height = size
    clip = os.path.join(workdir, f"{mode}_clip.y4m")
    media.write_video(clip, golden_cases.synthetic_clip(clip_frames(mode, gops), width, height), fractions.Fraction(16))
    stream, recon = os.path.join(workdir, f"{mode}.gvcc"), os.path.join(workdir, f"{mode}_recon")
    model = {"t2v": ["--model", "tiny-t2v", "--prompt", "a red square moves right"],
             "i2v": ["--model", "tiny-i2v", "--m-tail", "8"], "flf2v": ["--model", "tiny-flf2v"]}[mode]
    golden_cases.gvcc_cli("encode", clip, stream, "--weights", weights, "--recon", recon, "-K", "64", "-M", "4",
                          "--steps", "5", "--tail-steps", "2", "--gop", str(GOP), "--seed", "7", "--quiet", *model)
    return stream, media.read_video(recon).frames


@contextlib.contextmanager
def perturbed_velocity(rel=None):
    """Within the block, every DiT velocity gvcc computes is moved by one ulp towards +inf (rel None), or
    scaled by 1 + rel."""
    import torch

    import gvcc
    make_velocity = gvcc.make_velocity

    def perturbed(codec, y=None, clip_fea=None):
        velocity = make_velocity(codec, y, clip_fea)

        def moved(x, t):
            u = velocity(x, t)
            return torch.nextafter(u, torch.full_like(u, math.inf)) if rel is None else u * (1.0 + rel)
        return moved

    gvcc.make_velocity = perturbed
    try:
        yield
    finally:
        gvcc.make_velocity = make_velocity


def decode_in_process(stream, weights):
    """Decode a stream in this process (so that a context such as perturbed_velocity applies): uint8 frames."""
    import bitstream
    import gvcc
    with open(stream, "rb") as fh:
        hdr, gops = bitstream.read_stream(fh.read())
    codec = gvcc.load_codec(gvcc.MODELS[hdr.model], weights, hdr.prompt, "cpu", "fp32")
    return gvcc.code_clip(codec, hdr, gops=gops)[1]


def gop_spans(stream):
    """(first, end) output frame range of every GOP: a later I2V / FLF2V GOP's shared frame 0 belongs to the
    GOP before it."""
    import bitstream
    with open(stream, "rb") as fh:
        hdr = bitstream.read_header(fh.read())
    spans = []
    for g, info in enumerate(bitstream.gop_layout(hdr)):
        shared = g > 0 and hdr.mode != "t2v"
        spans.append((info.first_frame + shared, info.first_frame + info.n_frames))
    return spans


def per_gop(reference, decoded, spans):
    """[(max abs difference, PSNR dB)] per GOP."""
    return [golden_cases.pixel_difference(decoded[a:b], reference[a:b]) for a, b in spans]


def measure(mode, weights, workdir, gops=6, size=(40, 24), ways=("native", "capability", "ulp")):
    """{way: [(max abs, PSNR dB)] per GOP} for one mode."""
    stream, recon = encode(mode, workdir, weights, gops, size)
    spans = gop_spans(stream)
    out = {}
    for way in ways:
        if way == "native":
            decoded = golden_cases.decode(stream, workdir, weights, f"{mode}_native")
        elif way == "capability":
            decoded = golden_cases.decode(stream, workdir, weights, f"{mode}_capability", env=OTHER_CAPABILITY)
        else:
            with perturbed_velocity(None if way == "ulp" else float(way.split(":")[1])):
                decoded = decode_in_process(stream, weights)
        out[way] = per_gop(recon, decoded, spans)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", help="folder with the tiny models (default: written to a temporary folder)")
    p.add_argument("--gops", type=int, default=6)
    p.add_argument("--size", default="40x24")
    p.add_argument("--modes", default="t2v,i2v,flf2v")
    p.add_argument("--ways", default="native,capability,ulp,rel:1e-4")
    args = p.parse_args()
    import media
    size = media.parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or golden_cases.make_tiny_weights(os.path.join(tmp, "weights"))
        print(f"platform: {golden_cases.platform()}")
        print(f"per GOP: PSNR dB / max abs difference against the encoder's reconstruction "
              f"({args.gops} GOPs of {GOP} frames at {args.size})")
        print(f"{'mode':6} {'decode':11} " + " ".join(f"{'GOP ' + str(g):>12}" for g in range(args.gops)))
        for mode in args.modes.split(","):
            for way, rows in measure(mode, weights, tmp, args.gops, size, args.ways.split(",")).items():
                cells = [f"{'inf' if math.isinf(psnr) else f'{psnr:.1f}'} / {worst}" for worst, psnr in rows]
                print(f"{mode:6} {way:11} " + " ".join(f"{c:>12}" for c in cells))


if __name__ == "__main__":
    main()
