"""The VAE with 16-bit weights against float32 weights (issue 20): how far apart the encoder's latents and the
decoded pixels are. weights_fetch.sh fetches the 16-bit VAE (Comfy-Org, bf16) by default; the authors ran the
official float32 one (`weights_fetch.sh --vae fp32`). Both compute in float32: only the weights differ.

    .venv/bin/python bench/bench_vae_weights.py             # random float32 weights and the same rounded to bf16:
                                                            # the tiny VAE, and the real dimensions on a small clip
    .venv/bin/python bench/bench_vae_weights.py --files FP32 BF16 --clip in.y4m --size 832x480 --frames 17

Per case: the latent's relative error (max |a - b| / max |b|, and rms / rms), and the decoded frames (from the
float32 encoder's latent, rounded to 8 bits as gvcc outputs them): PSNR and the largest difference in levels.
Random weights are untrained, so treat those numbers as the size of the rounding effect, not as its effect on
a real video. Prints a table; asserts nothing."""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import vae  # noqa: E402
from wan_model import random_weights  # noqa: E402


def to_bf16(weights):
    """Every tensor rounded to bfloat16 and back: what a 16-bit file loads as."""
    return {k: v.to(torch.bfloat16).float() for k, v in weights.items()}


def compare(cfg, a, b, video):
    """(latent max rel, latent rms rel, PSNR dB, max levels, seconds) of VAE weights a (reference) against b."""
    start = time.perf_counter()
    za, zb = vae.encode(a, cfg, video), vae.encode(b, cfg, video)
    ya, yb = vae.decode(a, cfg, za), vae.decode(b, cfg, za)
    pa = ((ya.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy().astype(np.int16)
    pb = ((yb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy().astype(np.int16)
    mse = float(np.mean((pa - pb) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    rel = float((za - zb).abs().max() / za.abs().max())
    rms = float((za - zb).pow(2).mean().sqrt() / za.pow(2).mean().sqrt())
    return rel, rms, psnr, int(np.abs(pa - pb).max()), time.perf_counter() - start


def synthetic(frames, height, width):
    import golden_cases
    clip = golden_cases.synthetic_clip(frames=frames, width=width, height=height)          # [N, H, W, 3] uint8
    return torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1                 # [3, N, H, W]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", nargs=2, metavar=("REFERENCE", "OTHER"), help="two VAE files (any layout)")
    p.add_argument("--clip", help="a video file for --files (default: a synthetic clip)")
    p.add_argument("--size", default="160x96", help="working size WxH (default 160x96)")
    p.add_argument("--frames", type=int, default=5, help="frames, 4k+1 (default 5)")
    args = p.parse_args()
    width, height = map(int, args.size.split("x"))
    print(f"{'case':>44} {'latent max rel':>15} {'latent rms rel':>15} {'PSNR dB':>8} {'max levels':>11} {'s':>6}")
    if args.files:
        cfg = vae.VAE_CONFIGS["wan2.1"]
        a, b = (vae.load_vae(f, cfg) for f in args.files)
        if args.clip:
            import media
            frames = media.read_video(args.clip).frames[:args.frames]                    # [N, H, W, 3]
            video = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(),
                                                    size=(height, width), mode="area")
            video = video.permute(1, 0, 2, 3) / 127.5 - 1                                 # [3, N, H, W]
        else:
            video = synthetic(args.frames, height, width)
        cases = [(f"{os.path.basename(args.files[1])} vs {os.path.basename(args.files[0])}", cfg, a, b, video)]
    else:
        cases = []
        for name, size in (("tiny", (9, 24, 40)), ("wan2.1", (args.frames, height, width))):
            cfg = vae.VAE_CONFIGS[name]
            w = random_weights(vae.vae_param_shapes(cfg), seed=6)
            cases.append((f"{name} random, bf16 vs fp32, {size[0]}x{size[1]}x{size[2]}", cfg, w, to_bf16(w),
                          synthetic(*size)))
    for name, cfg, a, b, video in cases:
        rel, rms, psnr, levels, seconds = compare(cfg, a, b, video)
        print(f"{name:>44} {rel:>15.2e} {rms:>15.2e} {psnr:>8.1f} {levels:>11} {seconds:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
