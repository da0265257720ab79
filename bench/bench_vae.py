"""Benchmark: gvcc's VAE against diffusers' AutoencoderKLWan at real dimensions, and gvcc's memory vs frame count.

    python bench/bench_vae.py                                   # 33 x 480 x 848, scan 17, 33, 65 frames
    python bench/bench_vae.py --frames 9 --height 240 --width 424 --scan 9,17 --scan-height 240 --scan-width 424

Both implementations get the same random float32 weights (dim 96, z 16; diffusers' copy renamed with wan.md 5.3)
and the same random input.  Every (implementation, operation, size) runs in its own subprocess, so peak memory
(ru_maxrss) is that run's alone: "peak" is the whole process (Python, torch, weights, input, output included),
"work" is peak minus the resident size just before the operation started (weights and input already there).
Encode runs on a random video [3, T, H, W]; decode on a random normalised latent of the matching size.
Times: wall clock and the process's CPU time (user + system, all threads); on a shared machine the wall
clock depends on what else runs, so the load average is printed next to it.
Not run by pytest.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def to_diffusers_key(key):
    """Official VAE key -> diffusers AutoencoderKLWan key: the mapping the conformance tests use (wan.md 5.3)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    sys.path.insert(0, ROOT)
    from test_vae import to_diffusers_key as mapping
    return mapping(key)


def rss_gib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def worker(impl, op, t, h, w):
    """One measurement in this process; prints a JSON line."""
    sys.path.insert(0, ROOT)
    import torch
    import vae
    from wan_model import random_weights

    cfg = vae.VAE_CONFIGS["wan2.1"]
    params = random_weights(vae.vae_param_shapes(cfg), seed=0)
    g = torch.Generator().manual_seed(1)
    if op == "encode":
        x = torch.rand((3, t, h, w), generator=g) * 2 - 1  # [3, T, H, W]
    else:
        x = torch.randn((16, (t - 1) // 4 + 1, h // 8, w // 8), generator=g)  # [16, F, h, w] normalised
    if impl == "gvcc":
        run = (lambda: vae.encode(params, cfg, x)) if op == "encode" else (lambda: vae.decode(params, cfg, x))
    else:
        from diffusers import AutoencoderKLWan
        model = AutoencoderKLWan().eval()  # the released config: base_dim 96, z_dim 16
        model.load_state_dict({to_diffusers_key(k): v for k, v in params.items()}, strict=True)
        del params
        if op == "encode":
            def run():
                with torch.no_grad():
                    return vae.normalize_latent(model.encode(x[None]).latent_dist.mode()[0])
        else:
            def run():
                with torch.no_grad():
                    return model.decode(vae.denormalize_latent(x)[None]).sample[0]
    before = rss_gib()
    load0 = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    out = run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"impl": impl, "op": op, "frames": t, "height": h, "width": w, "seconds": seconds, "cpu_s": cpu,
                      "peak_gib": peak, "work_gib": peak - before, "out_gib": out.numel() * 4 / 2**30,
                      "load": (load0 + os.getloadavg()[0]) / 2}))


def measure(impl, op, t, h, w):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, op, str(t), str(h), str(w)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"bench_vae: {impl} {op} {t}x{h}x{w} failed:\n{res.stderr[-3000:]}")
    row = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"  {impl:9s} {op:6s} {t:3d}x{h}x{w}: {row['seconds']:7.1f} s (cpu {row['cpu_s']:7.1f} s)"
          f"  peak {row['peak_gib']:5.2f} GiB  work {row['work_gib']:5.2f} GiB  load {row['load']:.1f}",
          file=sys.stderr, flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--scan", default="17,33,65", help="frame counts for gvcc's memory scan ('' to skip)")
    ap.add_argument("--scan-height", type=int, help="default: --height")
    ap.add_argument("--scan-width", type=int, help="default: --width")
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--worker", nargs=5, metavar=("IMPL", "OP", "T", "H", "W"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, op, t, h, w = args.worker
        return worker(impl, op, int(t), int(h), int(w))

    t, h, w = args.frames, args.height, args.width
    print(f"bench_vae: {os.cpu_count()} CPUs, side by side at {t}x{h}x{w}", file=sys.stderr)
    rows = []
    for op in ("encode", "decode"):
        for impl in ("gvcc",) + (() if args.skip_diffusers else ("diffusers",)):
            rows.append(measure(impl, op, t, h, w))
    sh, sw = args.scan_height or h, args.scan_width or w
    scan = []
    for n in [int(s) for s in args.scan.split(",") if s]:
        for op in ("encode", "decode"):
            key = ("gvcc", op, n, sh, sw)
            same = [r for r in rows if (r["impl"], r["op"], r["frames"], r["height"], r["width"]) == key]
            scan.append(same[0] if same else measure("gvcc", op, n, sh, sw))

    print(f"\n### gvcc vs diffusers AutoencoderKLWan, {t} frames {w}x{h}, float32, {os.cpu_count()} CPU threads\n")
    print("| op | implementation | wall (s) | CPU (s) | peak RSS (GiB) | work = peak - RSS before (GiB) | load avg |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['op']} | {r['impl']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['peak_gib']:.2f} "
              f"| {r['work_gib']:.2f} | {r['load']:.1f} |")
    if scan:
        print(f"\n### gvcc peak memory vs frame count, {sw}x{sh}\n")
        print("| op | frames | wall (s) | CPU (s) | peak RSS (GiB) | work (GiB) | of which output (GiB) | load avg |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in scan:
            print(f"| {r['op']} | {r['frames']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['peak_gib']:.2f} "
                  f"| {r['work_gib']:.2f} "
                  f"| {r['out_gib']:.2f} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
