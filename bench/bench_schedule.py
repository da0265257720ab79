"""The model-call schedules (`encode --speed`): DiT work per GOP, and quality at equal rate on the demo models.

    python bench/bench_schedule.py cost [--layers 1] [--latent-frames 1] [--repeats 2]
    python bench/bench_schedule.py quality [--out out/schedule-bench] [--clips bigbuckbunny,bikes,carphone]
                                           [--Ms 4,8,16] [--modes t2v] [--schedules fast,s=10/2/1]

cost: per preset, DiT calls per GOP and FLOPs per GOP from the shapes of Wan2.1-T2V-1.3B (480x832 and 1280x720,
33 frames, text context 512), and the time of one GOP's sampler (gvcc.run_gop) at T2V-1.3B dims with random
weights, --layers blocks and --latent-frames latent frames of 480x832 (the full model's per-GOP time scales from it),
the presets run alternately, best of --repeats; the ratios against `paper` are what to read (a shared machine's
absolute times are noise). The codebook is left out (a fixed atom set, M = 64, K = 16384 regenerated per step as
the decoder does), so the ratio is the DiT's.
quality: the held-out clips (bench/train_demo.py) coded with the demo models under each preset. `paper` and
`fast` have the same steps, hence the same rate at the same M; `fastest` has fewer SDE steps, so it is coded with
`--bpp` set to `paper`'s rate at that M (gvcc picks its M; in i2v, paper's rate less its tail residual, which
--bpp does not count). PSNR (RGB) and SSIM of the reconstruction, which the
decoder reproduces bit for bit; the loss against `paper` at equal rate, per clip and on average.
"""
import argparse
import dataclasses
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import bitstream  # noqa: E402
import gvcc  # noqa: E402
import wan_model as wm  # noqa: E402


def preset_settings(speed, K=16384):
    preset = gvcc.SPEEDS[speed]
    return gvcc.SamplerSettings(steps=preset.get("steps", 20), tail_steps=preset.get("tail_steps", 3), g_scale=3.0,
                                shift=3.0, K=K, seed=42, dit_period=preset["dit_period"])


def dit_flops(cfg, tokens, text_len=512):
    """Multiply-adds x 2 of one DiT forward over `tokens` video tokens (matrix products only: the rest is
    linear in tokens and small). Per block: q, k, v, o (4 d^2 per token), self-attention scores and values
    (2 L d per token), cross-attention q, o (2 d^2 per token) and scores, values (2 text_len d), k and v of the
    text (2 text_len d^2, once), the FFN (2 d dff per token)."""
    d, f = cfg.dim, cfg.ffn_dim
    per_token = 4 * d * d + 2 * tokens * d + 2 * d * d + 2 * text_len * d + 2 * d * f
    per_block = tokens * per_token + 2 * text_len * d * d
    embed = tokens * (cfg.in_dim * 4 * d + d * cfg.out_dim * 4)
    return 2 * (cfg.num_layers * per_block + embed)


def cost(args):
    cfg13 = wm.DIT_CONFIGS["t2v-1.3B"]
    sizes = {"480x832": (30, 52), "1280x720": (45, 80)}          # DiT patch grid per latent frame (h/2, w/2)
    print("DiT work per 33-frame GOP (9 latent frames), Wan2.1-T2V-1.3B shapes")
    print(f"{'preset':>8} {'steps':>5} {'DiT calls':>9} {'x fewer':>7} " +
          " ".join(f"{'TFLOP ' + s:>15}" for s in sizes))
    paper_calls = preset_settings("paper").model_calls
    for speed in gvcc.SPEEDS:
        s = preset_settings(speed)
        flops = [s.model_calls * dit_flops(cfg13, 9 * h * w) / 1e12 for h, w in sizes.values()]
        print(f"{speed:>8} {s.steps:>5} {s.model_calls:>9} {paper_calls / s.model_calls:>7.2f} " +
              " ".join(f"{v:>15.1f}" for v in flops))

    torch.manual_seed(0)
    cfg = dataclasses.replace(cfg13, num_layers=args.layers)
    params = wm.random_weights(wm.dit_param_shapes(cfg), 1)
    context = torch.randn(16, cfg.text_dim) * 0.1
    shape = (16, args.latent_frames, 60, 104)

    def velocity(x, t):
        return wm.dit_forward(params, cfg, x, 1000.0 * t, context)

    def choose(j, f, x0_hat_f):
        return list(range(0, 64 * 256, 256)), [0] * 64

    times = {speed: float("inf") for speed in gvcc.SPEEDS}
    for _ in range(args.repeats):
        for speed in gvcc.SPEEDS:
            start = time.perf_counter()
            with torch.no_grad():
                gvcc.run_gop(velocity, preset_settings(speed), shape, choose)
            times[speed] = min(times[speed], time.perf_counter() - start)
    print(f"\nsampler time of one GOP at T2V-1.3B dims, {args.layers} block(s), {args.latent_frames} latent frame(s) of "
          f"480x832, random weights, best of {args.repeats}")
    print(f"{'preset':>8} {'seconds':>8} {'x faster':>8}")
    for speed, t in times.items():
        print(f"{speed:>8} {t:>8.1f} {times['paper'] / t:>8.2f}")


def quality(args):
    import numpy as np

    import media
    import rd_sweep
    import train_demo
    from bench_demo import CLIP_NAMES, psnr_mean, ssim_mean
    os.makedirs(args.out, exist_ok=True)
    speeds = ["paper"]
    for item in args.schedules.split(","):            # a preset's name, or NAME=STEPS/TAIL/PERIOD to try one
        name, _, spec = item.partition("=")
        if spec:
            steps, tail, period = (int(v) for v in spec.split("/"))
            gvcc.SPEEDS[name] = {"dit_period": period, "steps": steps, "tail_steps": tail}
        if name != "paper":
            speeds.append(name)
    rows = []
    for clip in args.clips.split(","):
        frames, fps = train_demo.held_out_frames(CLIP_NAMES[clip])
        folder = os.path.join(args.out, clip)
        os.makedirs(folder, exist_ok=True)
        media.write_video(os.path.join(folder, "src.y4m"), frames[:args.frames], fps)
        ref = rd_sweep.prepare_reference(os.path.join(folder, "src.y4m"), folder)
        for mode in args.modes.split(","):
            for m in [int(v) for v in args.Ms.split(",")]:
                target = None      # --bpp of the schedules with fewer SDE steps: set by paper's file
                for speed in speeds:
                    stream = os.path.join(folder, f"{mode}_M{m}_{speed}.gvcc")
                    recon = stream[:-5] + "_recon.y4m"
                    same_steps = preset_settings(speed).sde_steps == preset_settings("paper").sde_steps
                    rate = ["-M", str(m)] if speed == "paper" or same_steps else ["--bpp", f"{target:.6f}"]
                    argv = ["encode", ref.y4m, stream, "--model", f"demo-{mode}", "--speed", speed, "--recon",
                            recon, "-y", "--quiet", *rate]
                    start = time.time()
                    if gvcc.main(argv) != 0:
                        raise SystemExit(f"bench_schedule: gvcc {' '.join(argv)} failed")
                    took = time.time() - start
                    dec = media.read_video(recon).frames
                    pixels = ref.width * ref.height * ref.frames
                    bpp = 8 * os.path.getsize(stream) / pixels
                    if speed == "paper":
                        # --bpp targets the file before i2v's tail residual (gvcc.py), so aim at paper's rate
                        # less its residual: the rest matches, and each file then adds its own residual
                        with open(stream, "rb") as fh:
                            residual = sum(len(g.residual) for g in bitstream.read_stream(fh.read())[1])
                        target = bpp - 8 * residual / pixels
                    rows.append(dict(clip=clip, mode=mode, M=m, speed=speed, bpp=bpp, psnr=psnr_mean(ref.rgb, dec),
                                     ssim=ssim_mean(ref.rgb, dec), seconds=took))
                    print(f"{clip} {mode} M {m} {speed}: {bpp:.4f} bpp {rows[-1]['psnr']:.2f} dB ({took:.0f} s)",
                          file=sys.stderr, flush=True)
    print("| clip | mode | M (paper) | schedule | DiT calls | bpp | PSNR (dB) | SSIM | vs paper (dB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    losses = {speed: [] for speed in speeds}
    for r in rows:
        base = next(p for p in rows if (p["clip"], p["mode"], p["M"], p["speed"]) ==
                    (r["clip"], r["mode"], r["M"], "paper"))
        losses[r["speed"]].append(r["psnr"] - base["psnr"])
        print(f"| {r['clip']} | {r['mode']} | {r['M']} | {r['speed']} | {preset_settings(r['speed']).model_calls} | "
              f"{r['bpp']:.4f} | {r['psnr']:.2f} | "
              f"{r['ssim']:.3f} | {r['psnr'] - base['psnr']:+.2f} |")
    print("\nmean change against paper at equal rate: " +
          ", ".join(f"{s} {np.mean(v):+.2f} dB" for s, v in losses.items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("cost", "quality"))
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--latent-frames", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "out", "schedule-bench"))
    p.add_argument("--clips", default="bigbuckbunny,bikes,carphone")
    p.add_argument("--modes", default="t2v")
    p.add_argument("--Ms", default="4,8,16")
    p.add_argument("--schedules", default=",".join(gvcc.SPEEDS),
                   help="presets, or NAME=STEPS/TAIL/PERIOD for a schedule to try (quality; default every preset)")
    p.add_argument("--frames-per-clip", dest="frames", type=int, default=33)
    args = p.parse_args(argv)
    cost(args) if args.what == "cost" else quality(args)


if __name__ == "__main__":
    main()
