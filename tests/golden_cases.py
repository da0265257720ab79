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


def main():
    sys.path.insert(0, ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_tiny_weights(os.path.join(tmp, "weights"))
        records = {name: run_case(name, tmp, weights) for name in CASES}
    with open(GOLDEN, "w") as fh:
        json.dump(records, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
