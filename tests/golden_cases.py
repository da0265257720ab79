"""Golden vectors and per-stage conformance data: a tiny synthetic clip coded with the tiny random-weight models.

    python tests/golden_cases.py            check this machine against tests/golden/: OK / NOT OK per item
    python tests/golden_cases.py --write    regenerate tests/golden/ on purpose (a format or method change)

gvcc's decoder contains floating point (the DiT and the VAE), so, as dav1d and libjxl do for such decoders, the
conformance data has three classes. tests/test_golden.py asserts each of them on every machine.

  exact, everywhere     What is integer-determined: the generator (Philox words, Gaussians, x_T), the time grid,
                        the parse of each committed golden stream (header fields, the md5 of its symbols), and the
                        bytes write_stream gives for those symbols (the committed file, byte for byte).
  tolerance             Pixels. Decoding a committed stream on any machine gives frames within DECODE_TOLERANCE
                        of the committed reference frames; networks' tensors within each stage's relative bound.
  same machine          Encoding twice gives the same bytes, and `decode` gives exactly the frames that
                        `encode --recon` wrote, also with a different thread count (OMP_NUM_THREADS=1).

The md5s of a fresh encode and of the decoded frames are also stored, with the platform that made them (torch
version, ATen CPU capability, oneDNN ISA limit, CPU model, threads). They are asserted only where the platform
matches and reported elsewhere: a stream's symbols follow float inner products, so an encoder on another CPU may
pick another atom where two scores tie within rounding (the I2V closed loop makes that likely in later GOPs).

Files in tests/golden/:
    {case}.gvcc             the golden stream of each mode
    {case}_decoded.png      its frames as decoded on the reference platform, stacked top to bottom (lossless RGB)
    golden.json             per case: arguments, stream size and md5, symbols md5, decoded md5s, platform
    conformance.safetensors per-stage tensors for ports; each tensor's metadata names its tolerance
"""
import argparse
import fractions
import hashlib
import json
import os
import platform as platform_mod
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(ROOT, "tests", "golden")
GOLDEN = os.path.join(GOLDEN_DIR, "golden.json")
CONFORMANCE = os.path.join(GOLDEN_DIR, "conformance.safetensors")

# Small enough to run in seconds on a CPU, big enough to cover: padding (40x24 -> 48x32), a short last GOP
# (10 frames with GOP 9), several SDE steps and an ODE tail.
COMMON = ["-K", "64", "-M", "4", "--steps", "5", "--tail-steps", "2", "--gop", "9", "--seed", "7", "--quiet"]
CASES = {
    "t2v": ["--model", "tiny-t2v", "--prompt", "a red square moves right"],
    "i2v": ["--model", "tiny-i2v", "--m-tail", "8", "--still-quality", "50"],
    "flf2v": ["--model", "tiny-flf2v", "--still-quality", "50"],
}

# Decoded pixels of a committed stream on any machine against the committed reference frames, per case: the
# largest absolute difference of any RGB sample, and the PSNR over the whole clip. Measured (bench/drift.py):
# another ATen capability (DEFAULT vs AVX2, oneDNN limited to AVX2) and a one-ulp perturbation of every DiT
# output move at most 1 level, PSNR above 86 dB, and even a 1 % error in every velocity stays within 4 levels,
# above 50 dB. The bound leaves room for CPUs and torch builds that round differently again, yet one wrong sign
# bit in the last SDE step already moves samples by 235 levels (16 dB; test_tolerance_catches_one_wrong_sign),
# so no decoder bug of that kind can pass.
DECODE_TOLERANCE = {"max_abs": 8, "psnr_db": 45.0}


def synthetic_clip(frames=10, width=40, height=24):
    """uint8 [N, H, W, 3]: a diagonal colour gradient with a bright square moving right (integer arithmetic)."""
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        out[t, ..., 0] = (x * 255 // (width - 1) + 8 * t) % 256
        out[t, ..., 1] = (y * 255 // (height - 1)) % 256
        out[t, ..., 2] = ((x + y) * 4 + 16 * t) % 256
        x0 = (2 + 3 * t) % (width - 8)
        out[t, 6:14, x0:x0 + 8] = (250, 240, 30)
    return out


def gvcc_cli(*args, check=True, env=None):
    """Run `python gvcc.py ARGS` in a subprocess, the way a user does (env: extra environment variables)."""
    full_env = None if env is None else {**os.environ, **env}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "gvcc.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env=full_env)
    if check and done.returncode:
        raise RuntimeError(f"gvcc.py {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def md5(data):
    return hashlib.md5(data).hexdigest()


def platform():
    """What decides the floating-point results of a CPU run: md5s are exact only between equal platforms."""
    import torch
    cpu = platform_mod.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"torch": torch.__version__, "machine": platform_mod.machine(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL"),
            "cpu": cpu, "threads": torch.get_num_threads()}


def stream_path(name):
    return os.path.join(GOLDEN_DIR, f"{name}.gvcc")


def reference_path(name):
    return os.path.join(GOLDEN_DIR, f"{name}_decoded.png")


def write_frames_png(path, frames):
    """uint8 [N, H, W, 3] -> one lossless RGB PNG of the frames stacked top to bottom."""
    from PIL import Image
    n, h, w, _ = frames.shape
    Image.fromarray(np.ascontiguousarray(frames.reshape(n * h, w, 3)), "RGB").save(path, optimize=True)


def read_frames_png(path, height):
    """The inverse of write_frames_png for frames of the given height: uint8 [N, H, W, 3]."""
    from PIL import Image
    with Image.open(path) as im:
        stacked = np.asarray(im.convert("RGB"))
    return stacked.reshape(-1, height, stacked.shape[1], 3)


def symbols_md5(gops):
    """md5 of every GOP's symbols as text: one line 'g j f: indices | signs' per (GOP, SDE step, latent frame)."""
    h = hashlib.md5()
    for g, gop in enumerate(gops):
        for j, step in enumerate(gop.symbols):
            for f, (indices, signs) in enumerate(step):
                h.update(f"{g} {j} {f}: {' '.join(map(str, indices))} | {''.join(map(str, signs))}\n".encode())
    return h.hexdigest()


def header_fields(hdr):
    return {k: getattr(hdr, k) for k in hdr.__dataclass_fields__}


def clip_file(workdir):
    """The synthetic clip as a .y4m file in workdir (written once)."""
    import media
    clip = os.path.join(workdir, "clip.y4m")
    if not os.path.exists(clip):
        media.write_video(clip, synthetic_clip(), fractions.Fraction(16, 1))
    return clip


def encode(name, workdir, weights, out, recon=None, env=None):
    extra = ["--recon", recon] if recon else []
    gvcc_cli("encode", clip_file(workdir), out, "--weights", weights, *extra, *COMMON, *CASES[name], env=env)
    with open(out, "rb") as fh:
        return fh.read()


def decode(stream, workdir, weights, tag, env=None):
    """Decode a stream with the CLI into a PNG folder; returns uint8 [N, H, W, 3]."""
    import media
    out = os.path.join(workdir, tag)
    gvcc_cli("decode", stream, out, "--weights", weights, "--quiet", env=env)
    return media.read_video(out).frames


def pixel_difference(got, want):
    """(largest absolute sample difference, PSNR in dB over the whole clip) of two uint8 clips."""
    d = got.astype(np.int64) - want.astype(np.int64)
    mse = float(np.mean(d * d))
    return int(np.abs(d).max()), (float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))


def run_case(name, workdir, weights):
    """Encode and decode one case on this machine; returns its golden record and the decoded frames."""
    import bitstream
    import media
    stream = os.path.join(workdir, f"{name}.gvcc")
    recon = os.path.join(workdir, f"{name}_recon")
    data = encode(name, workdir, weights, stream, recon)
    frames = decode(stream, workdir, weights, f"{name}_decoded")
    recon_frames = media.read_video(recon).frames
    if media.frames_md5(frames) != media.frames_md5(recon_frames):
        raise AssertionError(f"{name}: the decoder differs from the encoder's reconstruction")
    hdr, gops = bitstream.read_stream(data)
    record = {
        "args": COMMON + CASES[name],
        "stream_bytes": len(data),
        "stream_md5": md5(data),
        "symbols_md5": symbols_md5(gops),
        "header": header_fields(hdr),
        "decoded_md5": media.frames_md5(frames),
        "frame_md5": media.frame_md5s(frames),
    }
    return record, data, frames


def make_tiny_weights(folder):
    gvcc_cli("make-tiny", folder)
    return folder


# --------------------------------------------------------------------------------------------------
# Per-stage conformance data for ports (in the spirit of llm.c's debug state)
# --------------------------------------------------------------------------------------------------

# Stage name -> (what it is, tolerance). "exact": bit for bit on any platform (integers, the generator, what is
# parsed from the committed stream). "rel X": max |a - b| / max |b| <= X, what a float32 port on any machine
# meets. "pixels N": uint8, every sample within N levels. These are the bounds README's porting section promises.
STAGES = {
    "philox_out": ("Philox4x32-10 of counters (i, 0, 0, 0), i = 0..7, key (7, 1): [8, 4] int64", "exact"),
    "gaussian": ("gaussian(seed 7, stream 1, step 2, frame 1, atoms 0, 5, 63, 16 elements): [3, 16]", "exact"),
    "time_grid": ("time_grid(steps 5, shift 3): [6] float64", "exact"),
    "x_T": ("initial latent of the golden t2v GOP 0: [16, 3, 4, 6] float32", "exact"),
    "x0": ("VAE-encoded, normalised latent of GOP 0's frames, replicate-padded to even size: [16, 3, 4, 6]", "rel 1e-5"),
    "context": ("UMT5 output for the golden prompt, trimmed: [L, 32]", "rel 1e-5"),
    "velocity_0": ("DiT velocity at x_T, t = 1 (timestep 1000): [16, 3, 4, 6]", "rel 1e-4"),
    "symbols": ("GOP 0 symbols of tests/golden/t2v.gvcc: [SDE steps, latent frames, 2 planes (indices, signs), M]",
                "exact"),
    "innovation_0_0": ("innovation of SDE step 0, frame 0 from the stream's symbols: [16, 4, 6]", "rel 1e-5"),
    "final_latent": ("GOP 0 latent after the last sampler step, decoding the stream: [16, 3, 4, 6]", "rel 1e-3"),
    "decoded": ("GOP 0 decoded frames, uint8 RGB after the crop: [9, 24, 40, 3]", "pixels 8"),
}


def conformance_stages(weights, workdir):
    """Recompute every stage for the committed t2v golden stream (decoder path, with taps)."""
    import torch

    import bitstream
    import gvcc
    import media
    import vae as vae_mod
    import wan_model
    clip = clip_file(workdir)
    with open(stream_path("t2v"), "rb") as fh:
        hdr, gops = bitstream.read_stream(fh.read())
    out = {}
    counters = torch.arange(8, dtype=torch.int64)
    zero = torch.zeros_like(counters)
    out["philox_out"] = torch.stack(gvcc.philox4x32((counters, zero, zero, zero), (7, 1)), dim=1)
    out["gaussian"] = gvcc.gaussian(7, 1, 2, 1, [0, 5, 63], 16)
    out["time_grid"] = torch.tensor(gvcc.time_grid(5, 3.0), dtype=torch.float64)

    spec = gvcc.MODELS[hdr.model]
    codec = gvcc.load_codec(spec, weights, hdr.prompt, "cpu", "fp32", hdr.text_len)
    info = bitstream.gop_layout(hdr)[0]
    pw, ph = gvcc.pixel_size(hdr.width, hdr.height)
    lh, lw = gvcc.latent_size(hdr.width, hdr.height)
    shape = (16, info.latent_frames, lh, lw)
    frames = media.read_video(clip).frames
    src = gvcc.pad_frames(frames[:info.n_frames], info.n_padded, ph, pw)
    out["x0"] = gvcc.pad_latent(vae_mod.encode(codec.vae, codec.vae_cfg, gvcc.to_model(src)), lh, lw)
    out["context"] = codec.context
    out["x_T"] = gvcc.initial_noise(hdr.seed, shape)
    out["velocity_0"] = wan_model.dit_forward(codec.dit, codec.dit_cfg, out["x_T"], 1000.0, codec.context)
    sym = gops[0].symbols
    out["symbols"] = torch.tensor([[[list(i), list(s)] for i, s in step] for step in sym], dtype=torch.int64)
    out["innovation_0_0"] = gvcc.innovation(hdr.seed, 0, 0, *sym[0][0], (16, shape[2], shape[3]))
    velocity = gvcc.make_velocity(codec)
    latent = gvcc.run_gop(velocity, gvcc.settings_of(hdr), shape, lambda j, f, _: sym[j][f])
    out["final_latent"] = latent
    video = vae_mod.decode(codec.vae, codec.vae_cfg, latent[:, :, :ph // 8, :pw // 8])
    out["decoded"] = torch.from_numpy(gvcc.to_pixels(video)[:info.n_frames, :hdr.height, :hdr.width].copy())
    return out


def compare_stage(name, got, want):
    """(ok, detail) for one stage under its tolerance."""
    kind = STAGES[name][1]
    if got.shape != want.shape or got.dtype != want.dtype:
        return False, f"shape/dtype {tuple(got.shape)} {got.dtype} vs {tuple(want.shape)} {want.dtype}"
    if kind == "exact":
        diff = int((got != want).sum())
        return diff == 0, f"{diff} elements differ"
    if kind.startswith("pixels"):
        limit = int(kind.split()[1])
        worst = int((got.long() - want.long()).abs().max())
        return worst <= limit, f"{int((got != want).sum())} samples differ, by at most {worst} (tol {limit})"
    tol = float(kind.split()[1])
    err = float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30))
    return err <= tol, f"max rel err {err:.2e} (tol {tol:g})"


# --------------------------------------------------------------------------------------------------
# Checking and writing
# --------------------------------------------------------------------------------------------------

def check_case(name, record, weights, workdir):
    """The checks of one committed case on this machine: [(ok or None for a report, what, detail)]."""
    import bitstream
    import media
    lines = []
    with open(stream_path(name), "rb") as fh:
        data = fh.read()
    hdr, gops = bitstream.read_stream(data)
    lines.append((md5(data) == record["stream_md5"], "committed stream intact", md5(data)))
    lines.append((header_fields(hdr) == record["header"], "header fields parse exactly", ""))
    lines.append((symbols_md5(gops) == record["symbols_md5"], "symbols parse exactly", symbols_md5(gops)))
    lines.append((bitstream.write_stream(hdr, gops) == data, "write_stream gives the committed bytes", ""))
    frames = decode(stream_path(name), workdir, weights, f"{name}_committed")
    want = read_frames_png(reference_path(name), hdr.height)
    if frames.shape != want.shape:
        lines.append((False, "decode within tolerance", f"shape {frames.shape} vs {want.shape}"))
    else:
        worst, psnr = pixel_difference(frames, want)
        ok = worst <= DECODE_TOLERANCE["max_abs"] and psnr >= DECODE_TOLERANCE["psnr_db"]
        lines.append((ok, "decode within tolerance", f"max abs {worst} (<= {DECODE_TOLERANCE['max_abs']}), "
                      f"PSNR {psnr:.2f} dB (>= {DECODE_TOLERANCE['psnr_db']:g})"))
    same = platform() == record["platform"]
    decoded_md5 = media.frames_md5(frames)
    lines.append((decoded_md5 == record["decoded_md5"] if same else None,
                  "decoded md5" + ("" if same else " (other platform: reported, not asserted)"), decoded_md5))
    return lines


def write_all():
    """Regenerate tests/golden/ on this machine (the reference platform)."""
    from safetensors.torch import save_file
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_tiny_weights(os.path.join(tmp, "weights"))
        for name in CASES:
            record, data, frames = run_case(name, tmp, weights)
            record["platform"] = platform()
            records[name] = record
            with open(stream_path(name), "wb") as fh:
                fh.write(data)
            write_frames_png(reference_path(name), frames)
            print(f"wrote {stream_path(name)} ({len(data)} bytes) and {reference_path(name)}")
        stages = conformance_stages(weights, tmp)
    with open(GOLDEN, "w") as fh:
        json.dump(records, fh, indent=1, sort_keys=True)
        fh.write("\n")
    meta = {name: f"{desc} | tolerance: {tol}" for name, (desc, tol) in STAGES.items()}
    save_file({k: v.contiguous() for k, v in stages.items()}, CONFORMANCE, metadata=meta)
    os.chmod(CONFORMANCE, 0o644)
    print(f"wrote {GOLDEN} and {CONFORMANCE}")


def check_all():
    """Print OK / NOT OK per case check and per stage; returns the number of failures."""
    from safetensors.torch import load_file
    with open(GOLDEN) as fh:
        golden = json.load(fh)
    failed = 0
    print(f"platform here: {platform()}")
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_tiny_weights(os.path.join(tmp, "weights"))
        for name in CASES:
            print(f"{name} (reference platform: {golden[name]['platform']})")
            for ok, what, detail in check_case(name, golden[name], weights, tmp):
                failed += ok is False
                print(f"  {'REPORT' if ok is None else 'OK    ' if ok else 'NOT OK'} {what}: {detail}")
        want = load_file(CONFORMANCE)
        got = conformance_stages(weights, tmp)
    print("stages")
    for name in STAGES:
        ok, detail = compare_stage(name, got[name], want[name])
        failed += not ok
        print(f"  {'OK    ' if ok else 'NOT OK'} {name:16s} {detail}")
    return failed


def main():
    p = argparse.ArgumentParser(description="Check this machine against the golden vectors in tests/golden/, "
                                            "or regenerate them on purpose with --write.")
    p.add_argument("--write", action="store_true",
                   help="regenerate the golden streams, reference frames, golden.json and conformance data")
    args = p.parse_args()
    sys.path.insert(0, ROOT)
    if args.write:
        write_all()
        return 0
    failed = check_all()
    print("all OK" if not failed else f"{failed} NOT OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
