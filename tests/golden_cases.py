"""The golden-output cases: a tiny synthetic clip coded with the tiny random-weight models.

`python tests/golden_cases.py` regenerates tests/golden/golden.json on purpose (after a format version change
or a deliberate change of the method); tests/test_golden.py recomputes every case and compares. Like libaom's
and dav1d's test vectors: the md5 of the stream, of all decoded frames, and of each decoded frame.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden", "golden.json")

# Small enough to run in seconds on a CPU, big enough to cover: padding (40x24 -> 48x32), a short last GOP
# (10 frames with GOP 9), several SDE steps and an ODE tail.
COMMON = ["-K", "64", "-M", "4", "--steps", "5", "--tail-steps", "2", "--gop", "9", "--seed", "7", "--quiet"]
CASES = {
    "t2v": ["--model", "tiny-t2v", "--prompt", "a red square moves right"],
    "i2v": ["--model", "tiny-i2v", "--m-tail", "8", "--still-quality", "50"],
    "flf2v": ["--model", "tiny-flf2v", "--still-quality", "50"],
}


def synthetic_clip(frames=10, width=40, height=24):
    """uint8 [N, H, W, 3]: a diagonal colour gradient with a bright square moving right (integer arithmetic)."""
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        out[t, ..., 0] = (x * 255 // (width - 1) + 8 * t) % 256
        out[t, ..., 1] = (y * 255 // (height - 1)) % 256
        out[t, ..., 2] = ((x + y) * 4 + 16 * t) % 256
        x0 = 2 + 3 * t
        out[t, 6:14, x0:x0 + 8] = (250, 240, 30)
    return out


def gvcc_cli(*args, check=True):
    """Run `python gvcc.py ARGS` in a subprocess, the way a user does."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "gvcc.py"), *args], capture_output=True,
                          text=True, check=check, cwd=ROOT)


def md5(data):
    return hashlib.md5(data).hexdigest()


def run_case(name, workdir, weights):
    """Encode, decode and fingerprint one case; returns the golden record."""
    import media
    clip = os.path.join(workdir, "clip.y4m")
    if not os.path.exists(clip):
        media.write_video(clip, synthetic_clip(), __import__("fractions").Fraction(16, 1))
    stream = os.path.join(workdir, f"{name}.gvcc")
    recon = os.path.join(workdir, f"{name}_recon")
    decoded = os.path.join(workdir, f"{name}_decoded")
    gvcc_cli("encode", clip, stream, "--weights", weights, "--recon", recon, *COMMON, *CASES[name])
    gvcc_cli("decode", stream, decoded, "--weights", weights, "--quiet")
    frames = media.read_video(decoded).frames
    recon_frames = media.read_video(recon).frames
    with open(stream, "rb") as fh:
        data = fh.read()
    return {
        "args": COMMON + CASES[name],
        "stream_bytes": len(data),
        "stream_md5": md5(data),
        "decoded_md5": media.frames_md5(frames),
        "recon_md5": media.frames_md5(recon_frames),
        "frame_md5": media.frame_md5s(frames),
    }


def make_tiny_weights(folder):
    gvcc_cli("make-tiny", folder)
    return folder


def write_golden():
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_tiny_weights(os.path.join(tmp, "weights"))
        records = {name: run_case(name, tmp, weights) for name in CASES}
    with open(GOLDEN, "w") as fh:
        json.dump(records, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"wrote {GOLDEN}")


# --------------------------------------------------------------------------------------------------
# Per-stage conformance data for ports (in the spirit of llm.c's debug state)
# --------------------------------------------------------------------------------------------------
CONFORMANCE = os.path.join(ROOT, "tests", "golden", "conformance.safetensors")

# Stage name -> (what it is, tolerance). "exact": bit for bit, on any platform (integers and the generator);
# "rel X": max |a - b| / max |b| <= X for a port's float32 arithmetic; "platform": exact on the reference
# platform (x86-64 CPU, torch 2.13.0, float32), since it follows from float results a port may round differently.
STAGES = {
    "philox_out": ("Philox4x32-10 of counters (i, 0, 0, 0), i = 0..7, key (7, 1): [8, 4] int64", "exact"),
    "gaussian": ("gaussian(seed 7, stream 1, step 2, frame 1, atoms 0, 5, 63, 16 elements): [3, 16]", "exact"),
    "time_grid": ("time_grid(steps 5, shift 3): [6] float64", "exact"),
    "x_T": ("initial latent of the golden t2v GOP 0: [16, 3, 4, 6] float32", "exact"),
    "x0": ("VAE-encoded, normalised latent of GOP 0's frames, replicate-padded to even size: [16, 3, 4, 6]", "rel 1e-5"),
    "context": ("UMT5 output for the golden prompt, trimmed: [L, 32]", "rel 1e-5"),
    "velocity_0": ("DiT velocity at x_T, t = 1 (timestep 1000): [16, 3, 4, 6]", "rel 1e-4"),
    "symbols": ("GOP 0 symbols: [SDE steps, latent frames, M] atom indices and signs (2 planes)", "platform"),
    "innovation_0_0": ("innovation of SDE step 0, frame 0 from the stream's symbols: [16, 4, 6]", "rel 1e-5"),
    "final_latent": ("GOP 0 latent after the last sampler step: [16, 3, 4, 6]", "rel 1e-3"),
    "decoded": ("GOP 0 decoded frames, uint8 RGB after the crop: [9, 24, 40, 3]", "platform"),
}


def conformance_stages(weights, workdir):
    """Recompute every stage for the t2v golden case from its stream (decoder path, with taps)."""
    import torch

    import bitstream
    import gvcc
    import media
    import vae as vae_mod
    import wan_model
    clip = os.path.join(workdir, "clip.y4m")
    if not os.path.exists(clip):
        media.write_video(clip, synthetic_clip(), __import__("fractions").Fraction(16, 1))
    stream = os.path.join(workdir, "t2v.gvcc")
    if not os.path.exists(stream):
        gvcc_cli("encode", clip, stream, "--weights", weights, *COMMON, *CASES["t2v"])
    hdr, gops = bitstream.read_stream(open(stream, "rb").read())
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
    import torch
    kind = STAGES[name][1]
    if got.shape != want.shape or got.dtype != want.dtype:
        return False, f"shape/dtype {tuple(got.shape)} {got.dtype} vs {tuple(want.shape)} {want.dtype}"
    if kind in ("exact", "platform"):
        diff = int((got != want).sum())
        return diff == 0, f"{diff} elements differ"
    tol = float(kind.split()[1])
    err = float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30))
    return err <= tol, f"max rel err {err:.2e} (tol {tol:g})"


def write_conformance():
    from safetensors.torch import save_file
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_tiny_weights(os.path.join(tmp, "weights"))
        stages = conformance_stages(weights, tmp)
    meta = {name: f"{desc} | tolerance: {tol}" for name, (desc, tol) in STAGES.items()}
    save_file({k: v.contiguous() for k, v in stages.items()}, CONFORMANCE, metadata=meta)
    os.chmod(CONFORMANCE, 0o644)
    print(f"wrote {CONFORMANCE}")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    write_golden()
    write_conformance()
