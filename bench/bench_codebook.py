"""Codebook cost per (step, latent frame) at real latent-frame sizes: every gvcc path against the authors' approach.

Encoder rows (generate K atoms and pick the top-M against a residual), K = 16384, M = 64:
    reference  gvcc.match_atoms(certified=False) on the eager torch generator (GVCC_NO_COMPILE=1): every atom
               generated and scored exactly, the readable spec path.
    fused-cpu  the same on the torch.compile'd generator (same bits; compile time shown apart).
    certified  gvcc.match_atoms as an encode runs it on a CPU: every atom scored approximately from its exact
               Philox words by one compiled kernel, then the candidates (about M) generated and scored exactly;
               the same selection as the reference. Measured at the full K (compile time shown apart).
    triton     gvcc.match_atoms on CUDA with Triton: one fused kernel, no atom written (only with --device cuda).
    shift      generator 2 (gvcc.match_shifts): one Gaussian vector, all K shifts scored by one real FFT.
    authors    one torch.Generator seeded per (step, frame), one torch.randn(D) per atom, then the inner
               product, keeping all K scores (their sde_rf_wan/turbo_codebook.py).
Decoder rows (rebuild the innovation from M = 64 chosen atoms): gvcc.innovation on the reference and the fused
generator, gvcc.shift_innovation for generator 2.

Each configuration runs in its own subprocess, so that its peak memory (ru_maxrss, whole process) is its own,
with --threads torch threads (default 1: per-core cost). The per-atom methods (reference, fused-cpu, authors)
are measured on --atoms atoms and extrapolated linearly to K (each costs K times one atom); use --atoms 16384
on a GPU. certified is measured at the full K (its candidates depend on the whole codebook), and so is shift
(its cost hardly depends on K; its permutation P is computed once per clip and is not in the per-(step, frame)
time). Per GOP: 17 SDE steps x 9 latent frames = 153 (step, frame)
for a 33-frame GOP at the default 20 steps with 3 ODE tail steps.

    python bench/bench_codebook.py [--atoms 256] [--device cpu] [--threads 1]

--rd instead prints rate-distortion on the closed-form model of tests/test_sampler.py (a Gaussian mixture with
exact velocity, one coded frame of D samples, 12 steps, 2 ODE tail steps, g 3, shift 3, M = 16): generator 1
against generator 2 at the same K up to D = 16384, then generator 2 alone with K up to D = 65536. Bits are the
stream's index-rank coding, ceil(log2 C(K, M)) + M per (step, frame).

    python bench/bench_codebook.py --rd
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

SIZES = {"480x848": (16, 60, 106), "720p": (16, 90, 160)}      # [C, h, w] of one latent frame
K_FULL, M, PER_GOP = 16384, 64, 17 * 9
ENCODERS = ("reference", "fused-cpu", "certified", "triton", "shift", "authors")
DECODERS = ("dec-reference", "dec-fused-cpu", "dec-shift")


def sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_one(method, shape, atoms, device):
    """Seconds for `atoms` atoms (per-atom methods), for K_FULL (shift), or for one innovation (decoders)."""
    import torch

    import gvcc
    import kernels
    d = shape[0] * shape[1] * shape[2]
    r = torch.randn(d, generator=torch.Generator().manual_seed(0)).to(device)          # [D] residual
    compile_s = 0.0
    if method in ("fused-cpu", "dec-fused-cpu", "certified"):
        start = time.perf_counter()
        if not kernels.fused_cpu_available() or (method == "certified" and not kernels.scorer_available()):
            raise SystemExit("the compiled generator or scorer is not available here")
        compile_s = time.perf_counter() - start
    if method == "shift":
        gvcc.shift_permutation(42, d)                  # once per clip
    chosen = sorted(torch.randperm(K_FULL, generator=torch.Generator().manual_seed(1))[:M].tolist())
    signs = [i % 2 for i in range(M)]
    sync(device)
    start = time.perf_counter()
    if method in ("reference", "fused-cpu", "triton"):
        gvcc.match_atoms(r, 42, 0, 0, atoms, M, certified=False)
    elif method == "certified":
        gvcc.match_atoms(r, 42, 0, 0, K_FULL, M)
    elif method == "shift":
        gvcc.match_shifts(r, 42, 0, 0, K_FULL, M)
    elif method == "authors":
        gen = torch.Generator(device=device).manual_seed(42 * 100003)
        scores = torch.empty(atoms, device=device)
        for i in range(atoms):
            scores[i] = torch.randn(d, generator=gen, device=device) @ r
        torch.topk(scores.abs(), M)
    elif method in ("dec-reference", "dec-fused-cpu"):
        gvcc.innovation(42, 0, 0, chosen, signs, shape, device)
    elif method == "dec-shift":
        gvcc.shift_innovation(42, 0, 0, chosen, signs, shape, device)
    sync(device)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    return {"seconds": seconds, "peak_mib": peak, "compile_s": compile_s}


def rate_distortion():
    """Closed-form-model MSE of both generators over K (see the module docstring)."""
    import math

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    import gvcc
    from test_sampler import closed_form_mse, sample_mixture
    m = 16
    print(f"closed-form model R-D, M = {m}, steps 12 (tail 2), seed 9; mse against the coded target, lower is better")
    print(f"{'D':>6} {'K':>6} {'bits/(step,frame)':>18} {'mse gen 1 (iid)':>16} {'mse gen 2 (shift)':>18}")
    for d, ks, gens in ((16384, (1024, 4096, 16384), (1, 2)), (65536, (4096, 16384, 65536), (2,))):
        target = sample_mixture(d, 8).reshape(1, 1, 1, d)
        for k in ks:
            bits = (math.comb(k, m) - 1).bit_length() + m
            mse = {g: closed_form_mse(g, 9, d, k, m, target) for g in gens}
            cells = [f"{mse[g]:.4f}" if g in mse else "-" for g in (gvcc.GENERATOR_IID, gvcc.GENERATOR_SHIFT)]
            print(f"{d:>6} {k:>6} {bits:>18} {cells[0]:>16} {cells[1]:>18}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--atoms", type=int, default=256, help="atoms measured per (step, frame), per-atom methods")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each measured process")
    ap.add_argument("--rd", action="store_true", help="closed-form-model R-D of both generators over K instead")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)      # method, size: child process
    args = ap.parse_args()
    import torch
    if args.rd:
        return rate_distortion()
    if args.one:
        torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.one[0], SIZES[args.one[1]], args.atoms, args.device)))
        return
    try:
        import triton  # noqa: F401
        have_triton = args.device.startswith("cuda")
    except ImportError:
        have_triton = False
    methods = [m for m in ENCODERS + DECODERS
               if not (m == "triton" and not have_triton)
               and not (("fused-cpu" in m or m == "certified") and args.device != "cpu")]
    rows = {}
    for size in SIZES:
        for method in methods:
            env = dict(os.environ, GVCC_NO_COMPILE="1") if method in ("reference", "dec-reference") else None
            out = subprocess.run([sys.executable, __file__, "--atoms", str(args.atoms), "--device", args.device,
                                  "--threads", str(args.threads), "--one", method, size],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                print(f"{size} {method}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            res = json.loads(out.stdout)
            scale = K_FULL / args.atoms if method in ("reference", "fused-cpu", "triton", "authors") else 1.0
            rows[size, method] = (res["seconds"] * scale, res["peak_mib"], res["compile_s"])

    print(f"codebook per (step, latent frame), K = {K_FULL}, M = {M}; per-atom methods measured on {args.atoms} "
          f"atoms and extrapolated; device {args.device}, torch {torch.__version__}, {args.threads} thread(s), "
          f"one run")
    print(f"{'size':>8} {'D':>7} {'path':>14} {'s / (step, frame)':>18} {'s / GOP':>10} {'vs authors':>11} "
          f"{'vs reference':>13} {'peak MiB':>9} {'compile s':>10}")
    for size, shape in SIZES.items():
        d = shape[0] * shape[1] * shape[2]
        authors = rows.get((size, "authors"), (float("nan"),))[0]
        for method in methods:
            if (size, method) not in rows:
                continue
            sec, peak, comp = rows[size, method]
            ref = rows.get((size, "dec-reference" if method.startswith("dec-") else "reference"), (float("nan"),))[0]
            vs_authors = f"{authors / sec:11.2f}" if not method.startswith("dec-") else f"{'':>11}"
            print(f"{size:>8} {d:>7} {method:>14} {sec:>18.4f} {sec * PER_GOP:>10.1f} {vs_authors} "
                  f"{ref / sec:>13.1f} {peak:>9.0f} {comp:>10.1f}")
    print("vs authors / vs reference: speed-up factors (> 1 is faster); s / GOP: 153 (step, frame) of a 33-frame "
          "GOP; dec-*: the decoder's rebuild of one innovation from the M chosen atoms")


if __name__ == "__main__":
    main()
