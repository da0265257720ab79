"""The GPU checks of issue 12 in one prepared run, for a session that is lent a CUDA device.

1. exact   The Triton generator against the CPU reference, bit for bit: gvcc.gaussian on the device and with
           fast=False on the CPU, for varied (seed, stream, step, frame, atoms, n), n not a multiple of 4 included.
           Then the fused Triton scores against float64 CPU inner products of the reference atoms, and the top-M
           match_atoms picks on the device against the CPU's.
2. dit     Per-GOP time of the DiT at T2V-1.3B dimensions with random weights in bf16 (float32 islands as
           upstream), 480x832, 33 frames: latent [16, 9, 60, 104], 512 text rows, one forward timed after a
           warm-up, times the sampler's 20 steps; peak device memory.
3. codebook  bench/bench_codebook.py --device cuda --atoms 16384 (K = 16384 atoms measured, no extrapolation),
           its table as it prints it.

    python bench/gpu_checks.py [--device cuda] [--quick] [--skip exact,dit,codebook]

--quick runs the same code at small sizes (a smoke test: on a CPU with TRITON_INTERPRET=1 it checks the script,
not a GPU). Prints one block per check; exit status 1 if a bit differs.
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import gvcc  # noqa: E402
import kernels  # noqa: E402
import wan_model as wm  # noqa: E402


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def check_exact(device, quick):
    """Bits that differ between the Triton generator and the CPU reference (must be 0), and the score check."""
    if kernels.triton_kernels() is None:
        print("exact: triton is not installed: skipped")
        return True
    cases = [(42, 1, 0, 0, 16, 101760), (7, 1, 16, 8, 8, 153600), (0xFFFFFFFF, 0, 0, 3, 1, 26013),
             (123456789, 2, 5, 1, 3, 999), (1, 1, 2 ** 31 + 5, 2 ** 32 - 1, 5, 4097)]
    if quick:
        cases = [(s, st, j, f, min(a, 3), min(n, 1001)) for s, st, j, f, a, n in cases]
    ok, total = True, 0
    for seed, stream, step, frame, a, n in cases:
        atoms = torch.arange(a, dtype=torch.int64) * 977 + 3                                  # [A]
        want = gvcc.gaussian(seed, stream, step, frame, atoms, n, "cpu", fast=False)          # [A, n]
        got = gvcc.gaussian(seed, stream, step, frame, atoms.to(device), n, device).cpu()    # [A, n]
        differ = int((got.view(torch.int32) != want.view(torch.int32)).sum())
        total += want.numel()
        ok &= differ == 0
        print(f"exact: gaussian seed {seed} stream {stream} step {step} frame {frame}, {a} atoms x {n}: "
              f"{differ} of {want.numel()} differ")
    d, k, m = (16 * 60 * 106, 1024, 64) if not quick else (1001, 64, 4)
    r = torch.randn(d, generator=torch.Generator().manual_seed(0))                            # [D]
    idx = torch.arange(k, dtype=torch.int64)
    ref = gvcc.gaussian(42, gvcc.STREAM_CODEBOOK, 3, 2, idx, d, "cpu", fast=False).double() @ r.double()   # [K]
    p = kernels.scores_triton(r.to(device), 42, gvcc.STREAM_CODEBOOK, 3, 2, idx.to(device)).cpu().double()
    err = float(((p - ref).abs() / ref.abs().max()).max())
    picks_cpu = gvcc.match_atoms(r, 42, 3, 2, k, m)
    picks_dev = gvcc.match_atoms(r.to(device), 42, 3, 2, k, m)
    same = picks_cpu == picks_dev
    ok &= same
    print(f"exact: {total} numbers compared; fused scores of {k} atoms x {d}: max error {err:.2e} of the largest "
          f"|score|; match_atoms picks on {device} {'equal' if same else 'DIFFER FROM'} the CPU's")
    return ok


def dit_per_gop(device, quick):
    """Seconds of one DiT forward and per 20-step GOP at T2V-1.3B dims, bf16, random weights; peak memory."""
    cfg = wm.DIT_CONFIGS["t2v-1.3B"]
    latent = (16, 9, 60, 104)                     # 480x832, 33 frames
    text_rows = 512
    if quick:
        cfg = wm.DIT_CONFIGS["tiny-t2v"]
        latent, text_rows = (16, 3, 8, 8), 16
    gen = torch.Generator(device=device).manual_seed(0)
    params = {}
    for key, shape in wm.dit_param_shapes(cfg).items():
        dtype = wm.dit_param_dtype(key, torch.bfloat16)
        w = torch.randn(tuple(shape), generator=gen, device=device, dtype=torch.float32)
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        params[key] = (w / fan_in ** 0.5 if len(shape) >= 2 else 1.0 + 0.1 * w).to(dtype)
    x = torch.randn(latent, generator=gen, device=device)                                  # [C, F, h, w]
    context = torch.randn(text_rows, cfg.text_dim, generator=gen, device=device)          # [Lt, Dt]
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        wm.dit_forward(params, cfg, x, 999.0, context)                                     # warm-up
        sync(device)
        start = time.perf_counter()
        wm.dit_forward(params, cfg, x, 500.0, context)
        sync(device)
        sec = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if str(device).startswith("cuda") else float("nan")
    tokens = latent[1] * latent[2] * latent[3] // 4
    print(f"dit: {'t2v-1.3B' if not quick else 'quick'} dims, bf16, latent {list(latent)} ({tokens} tokens), "
          f"{text_rows} text rows on {device}: {sec:.3f} s per forward, {20 * sec:.1f} s per 20-step GOP, "
          f"peak {peak:.1f} GiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the script")
    ap.add_argument("--skip", default="", help="comma-separated checks to skip: exact, dit, codebook")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"gpu_checks on {name}, torch {torch.__version__}")
    ok = True
    if "exact" not in skip:
        ok = check_exact(args.device, args.quick)
    if "dit" not in skip:
        dit_per_gop(args.device, args.quick)
    if "codebook" not in skip:
        atoms = "16" if args.quick else "16384"
        subprocess.run([sys.executable, os.path.join(HERE, "bench_codebook.py"), "--device", args.device,
                        "--atoms", atoms], check=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
