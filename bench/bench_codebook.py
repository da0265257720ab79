"""Codebook generation plus top-M matching at real latent-frame sizes, gvcc against the authors' approach.

gvcc: atoms from the portable Philox generator, generated and scored in chunks with a running top-M
(gvcc.match_atoms). Authors: one torch.Generator seeded per (step, frame), one torch.randn(D) call per atom,
then the inner product, keeping all K scores (their sde_rf_wan/turbo_codebook.py). Each configuration runs in
its own subprocess so that its peak memory (ru_maxrss, whole process) is its own.

On a CPU, K = 16384 at D = 101,760 is 1.7 G numbers per (step, frame); the default measures --atoms atoms and
extrapolates linearly in K (both methods cost K times one atom). Use --atoms 16384 on a GPU for the full run.

    python bench/bench_codebook.py [--atoms 512] [--device cpu]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

SIZES = {"480x848": 16 * 60 * 106, "720p": 16 * 90 * 160}      # D = C h w of one latent frame
K_FULL, M = 16384, 64


def run_one(method, d, atoms, device):
    import torch

    import gvcc
    r = torch.randn(d, generator=torch.Generator().manual_seed(0)).to(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    if method == "gvcc":
        gvcc.match_atoms(r, 42, 0, 0, atoms, M)
    else:
        gen = torch.Generator(device=device).manual_seed(42 * 100003)
        scores = torch.empty(atoms, device=device)
        for i in range(atoms):
            scores[i] = torch.randn(d, generator=gen, device=device) @ r
        torch.topk(scores.abs(), M)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    return {"seconds": seconds, "peak_mib": peak}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--atoms", type=int, default=512, help="atoms measured per (step, frame)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)      # method, size: child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], SIZES[args.one[1]], args.atoms, args.device)))
        return
    rows = []
    for size in SIZES:
        for method in ("gvcc", "authors"):
            out = subprocess.run([sys.executable, __file__, "--atoms", str(args.atoms), "--device", args.device,
                                  "--one", method, size], capture_output=True, text=True, check=True)
            res = json.loads(out.stdout)
            per_atom = res["seconds"] / args.atoms
            rows.append((size, SIZES[size], method, per_atom * K_FULL, args.atoms / res["seconds"],
                         res["peak_mib"]))
    import torch
    print(f"codebook generation + top-{M} matching, K = {K_FULL} (measured on {args.atoms} atoms, extrapolated "
          f"linearly), device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'size':>8} {'D':>8} {'method':>8} {'s per (step, frame)':>20} {'atoms/s':>9} {'peak MiB':>9}")
    for size, d, method, sec, aps, peak in rows:
        print(f"{size:>8} {d:>8} {method:>8} {sec:>20.1f} {aps:>9.0f} {peak:>9.0f}")
    for size in SIZES:
        g = next(r for r in rows if r[0] == size and r[2] == "gvcc")
        a = next(r for r in rows if r[0] == size and r[2] == "authors")
        print(f"{size}: gvcc / authors time ratio {g[3] / a[3]:.1f}, per GOP (17 x 9 (step, frame)): "
              f"gvcc {g[3] * 153 / 60:.0f} min, authors {a[3] * 153 / 60:.1f} min")


if __name__ == "__main__":
    main()
