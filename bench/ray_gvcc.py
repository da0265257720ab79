"""Spread gvcc encoding over a Ray cluster: the GOP ranges of one clip, or whole (clip, mode, rate) jobs.

Ray is an optional extra (`pip install ray`); gvcc.py never imports it. Every worker runs the ordinary CLI
(`gvcc.main`), so a part is exactly what `gvcc.py encode --gops A:B` writes on that machine, and `concat` joins
the parts into the stream a single process writes (bitstream.py section 11). Workers read the input clip and
the weights by path: on a cluster they must see the same files (a shared file system), as with Slurm.

    # one clip, its GOPs in 8 ranges, one GPU per worker (ray start --head / --address on the nodes first)
    python bench/ray_gvcc.py shard clip.y4m clip.gvcc --shards 8 --gpus 1 -- --model t2v-1.3B -M 64
    # an R-D sweep: one job per line of JOBS ("INPUT OUTPUT ENCODE-ARGS..."), whole clips, one GPU each
    python bench/ray_gvcc.py sweep jobs.txt --gpus 1

Byte-identical parts need the workers to run the same code path as the one-process encoder: same device kind,
precision and, on a CPU, the same torch thread count (gvcc.py's "Precision" note); --threads sets it (default:
the CPUs each worker is given).
"""
import argparse
import contextlib
import io
import os
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _encode(root, argv, threads):
    """In a worker: `gvcc.py encode ARGV... OUT` into a temporary file; returns the stream's bytes."""
    sys.path.insert(0, root)
    import torch

    import gvcc
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "part.gvcc")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = gvcc.main(["encode", *argv, out, "--quiet"])
        if rc != 0:
            raise RuntimeError(f"gvcc encode {' '.join(argv)}: {err.getvalue().strip()}")
        with open(out, "rb") as fh:
            return fh.read()


def gop_ranges(n_gops, shards):
    """n_gops GOPs in `shards` contiguous ranges of nearly equal length: [(A, B), ...]."""
    shards = max(1, min(shards, n_gops))
    bounds = [round(i * n_gops / shards) for i in range(shards + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def count_gops(input_path, encode_args):
    """NumGops of a clip under these encode arguments (counts the input's frames, holds none, loads no model)."""
    import bitstream
    import gvcc
    import media
    args = gvcc.build_parser().parse_args(["encode", input_path, "unused.gvcc", *encode_args])
    with media.VideoSource(args.input, size=args.yuv_size, fps=args.fps, limited_range=args.limited_range,
                           frames=args.frames) as video:
        frames = video.n                # counted without keeping any frame
    mode = args.mode or gvcc.MODELS[args.model or gvcc.DEFAULT_MODEL["t2v"]].mode
    if mode == "i2v":
        raise SystemExit("ray_gvcc: i2v GOPs chain through decoded frames and cannot be sharded; use `sweep`")
    # num_gops reads only these three header fields
    return bitstream.num_gops(types.SimpleNamespace(mode=mode, frames=frames, gop_frames=args.gop))


def _remote(ray, gpus, cpus):
    if __name__ != "__main__":      # imported (bench/ is not on the workers' path): ship _encode by value
        from ray import cloudpickle
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray.remote(num_gpus=gpus, num_cpus=cpus)(_encode)


def encode_sharded(ray, input_path, output, encode_args, shards, gpus=0, cpus=1, threads=None):
    """Encode one clip as `shards` part streams on Ray workers and concatenate them into `output`."""
    import bitstream
    import media
    ranges = gop_ranges(count_gops(input_path, encode_args), shards)
    task = _remote(ray, gpus, cpus)
    futures = [task.remote(ROOT, [input_path, *encode_args, "--gops", f"{a}:{b}"], threads or cpus)
               for a, b in ranges]
    parts = ray.get(futures)
    data = bitstream.concat(parts)
    with media.AtomicFile(output) as out:
        out.write(data)
    return ranges, len(data)


def encode_jobs(ray, jobs, gpus=0, cpus=1, threads=None):
    """Whole-clip jobs [(input, output, encode args)], one per worker; each output written when all are done."""
    import media
    task = _remote(ray, gpus, cpus)
    futures = [task.remote(ROOT, [inp, *args], threads or cpus) for inp, _, args in jobs]
    for (_, output, _), data in zip(jobs, ray.get(futures)):
        with media.AtomicFile(output) as out:
            out.write(data)
    return [output for _, output, _ in jobs]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    encode_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, encode_args = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="ray_gvcc.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("shard", help="one clip's GOP ranges on several workers, joined into one stream")
    s.add_argument("input")
    s.add_argument("output")
    s.add_argument("--shards", type=int, required=True)
    w = sub.add_parser("sweep", help="whole-clip jobs from a file: one 'INPUT OUTPUT ARGS...' per line")
    w.add_argument("jobs")
    for q in (s, w):
        q.add_argument("--address", help="Ray cluster address (default: start a local one)")
        q.add_argument("--gpus", type=float, default=0, help="GPUs per worker (default 0: CPU workers)")
        q.add_argument("--cpus", type=float, default=1, help="CPUs per worker (default 1)")
        q.add_argument("--threads", type=int, help="torch threads per worker (default: --cpus)")
    args = p.parse_args(argv)
    import ray
    ray.init(address=args.address)
    threads = args.threads or max(1, int(args.cpus))
    if args.command == "shard":
        ranges, size = encode_sharded(ray, args.input, args.output, encode_args, args.shards, args.gpus, args.cpus,
                                      threads)
        print(f"ray_gvcc: {args.output}: {size} bytes from parts {' '.join(f'{a}:{b}' for a, b in ranges)}")
    else:
        jobs = []
        with open(args.jobs) as fh:
            for line in fh:
                words = line.split()
                if words and not words[0].startswith("#"):
                    jobs.append((words[0], words[1], words[2:] + encode_args))
        for out in encode_jobs(ray, jobs, args.gpus, args.cpus, threads):
            print(f"ray_gvcc: wrote {out}")


if __name__ == "__main__":
    main()
