"""Peak memory of `gvcc.py encode` and `decode` against clip length: GOP-by-GOP streaming keeps it flat.

Makes a short and a long clip of the same frame size (.y4m, written frame by frame), encodes each with the tiny
models at a small working size, decodes the stream, and prints the peak RSS (ru_maxrss of the child process) of
every run: the median of --repeats runs (peak RSS varies by tens of MiB from run to run with thread timing and
the allocator's arenas, as the spread column shows). With --reference DIR it runs DIR's gvcc.py the same way (e.g. a checkout of an older commit, which held
the whole clip in memory) and prints the two side by side with their ratio.

    python bench/bench_stream.py                              # 40 and 800 frames of 768x576, --size 64x48
    python bench/bench_stream.py --reference /tmp/old-gvcc --frames 40 800 --repeats 3
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import media  # noqa: E402


def write_clip(path, n, width, height):
    """A moving colour gradient, written 40 frames at a time (the bench itself stays small)."""
    y, x = np.mgrid[0:height, 0:width]
    with media.VideoWriter(path, width, height, Fraction(25, 1), n_frames=n) as out:
        for start in range(0, n, 40):
            chunk = np.empty((min(40, n - start), height, width, 3), np.uint8)   # [n, H, W, 3]
            for i in range(len(chunk)):
                t = start + i
                chunk[i, ..., 0] = (x + 3 * t) % 256
                chunk[i, ..., 1] = (y + 2 * t) % 256
                chunk[i, ..., 2] = (x + y + t) % 256
            out.write(chunk)


def run(root, args, repeats):
    """(median peak RSS in MiB, max - min of the peaks, median wall seconds) of `python ROOT/gvcc.py ARGS -y`,
    each run in its own child process."""
    peaks, times = [], []
    for _ in range(repeats):
        start = time.time()
        proc = subprocess.Popen([sys.executable, os.path.join(root, "gvcc.py"), *args, "-y"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status:
            raise SystemExit(f"gvcc.py {' '.join(args)} failed:\n{err.decode()}")
        peaks.append(usage.ru_maxrss / 1024)
        times.append(time.time() - start)
    return statistics.median(peaks), max(peaks) - min(peaks), statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[40, 800], help="clip lengths (default 40 800)")
    p.add_argument("--source-size", default="768x576", help="frame size of the made clips (default 768x576)")
    p.add_argument("--size", default="64x48", help="working size (default 64x48)")
    p.add_argument("--reference", help="another gvcc checkout to run the same way, for the ratio")
    p.add_argument("--weights", help="tiny weights folder (default: made in a temporary folder)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each command; the median is shown (default 3)")
    p.add_argument("--work", help="folder for the clips and streams (default: a temporary folder)")
    args = p.parse_args()
    width, height = media.parse_size(args.source_size)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        weights = args.weights or os.path.join(work, "weights")
        if not os.path.exists(os.path.join(weights, "tiny_t2v.safetensors")):
            subprocess.run([sys.executable, os.path.join(ROOT, "gvcc.py"), "make-tiny", weights], check=True,
                           stderr=subprocess.DEVNULL)
        common = ["--model", "tiny-t2v", "--size", args.size, "-K", "256", "-M", "8", "--steps", "4",
                  "--tail-steps", "1", "--weights", weights, "--quiet"]
        roots = [("this", ROOT)] + ([("reference", args.reference)] if args.reference else [])
        rows = []
        for n in args.frames:
            clip = os.path.join(work, f"clip{n}.y4m")
            if not os.path.exists(clip):
                write_clip(clip, n, width, height)
            for name, root in roots:
                stream = os.path.join(work, f"{name}{n}.gvcc")
                enc = run(root, ["encode", clip, stream, *common], args.repeats)
                dec = run(root, ["decode", stream, os.path.join(work, f"{name}{n}.y4m"), "--weights", weights,
                                 "--quiet"], args.repeats)
                rows.append((n, name, enc, dec))
    print(f"source {args.source_size}, working size {args.size}, tiny t2v models, GOPs of 33 frames; peak RSS, "
          f"median of {args.repeats} runs (spread: max - min)")
    print(f"{'frames':>6} {'code':>10} {'encode MiB':>11} {'spread':>7} {'s':>6} {'decode MiB':>11} {'spread':>7} "
          f"{'s':>6}")
    for n, name, enc, dec in rows:
        print(f"{n:>6} {name:>10} {enc[0]:>11.0f} {enc[1]:>7.0f} {enc[2]:>6.1f} {dec[0]:>11.0f} {dec[1]:>7.0f} "
              f"{dec[2]:>6.1f}")
    for name, _ in roots:
        mine = [(n, e[0], d[0]) for n, nm, e, d in rows if nm == name]
        if len(mine) >= 2:
            (n0, e0, d0), (n1, e1, d1) = mine[0], mine[-1]
            print(f"{name}: {n1} vs {n0} frames: encode x{e1 / e0:.2f}, decode x{d1 / d0:.2f}")
    if args.reference:
        for n in args.frames:
            this = [r for r in rows if r[0] == n and r[1] == "this"][0]
            ref = [r for r in rows if r[0] == n and r[1] == "reference"][0]
            print(f"{n} frames, this / reference: encode x{this[2][0] / ref[2][0]:.2f}, "
                  f"decode x{this[3][0] / ref[3][0]:.2f}")


if __name__ == "__main__":
    main()
