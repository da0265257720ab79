"""The model fingerprint's cost (issue 20): the first run hashes every byte of every weight file, later runs read
the cached digests.

    .venv/bin/python bench/bench_fingerprint.py --weights weights --model t2v-1.3B    # real weights
    .venv/bin/python bench/bench_fingerprint.py --random-vae 1                        # no weights: a random file

With --random-vae N it writes N random-weight float32 VAEs of the real dimensions (508 MB each) into one file in
a temporary folder. Each case is timed three ways: cold (the file's pages dropped from the page cache with
posix_fadvise, where the kernel honours it: then the disk's speed counts), warm (in the page cache: SHA-256's
speed), and cached (the digests read back from the cache, as every run after the first)."""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import gvcc  # noqa: E402
import wan_model  # noqa: E402


def drop_from_page_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def files_of(paths):
    return sorted({f for p in paths.values() for f in wan_model.weight_files(p)})


def time_fingerprint(paths, cache):
    """(seconds cold, warm, cached) of model_fingerprint(paths), each from an empty digest cache but the last."""
    out = []
    for kind in ("cold", "warm", "cached"):
        if kind != "cached":
            wan_model._DIGESTS.clear()
            os.environ["GVCC_CACHE"] = tempfile.mkdtemp(dir=cache)
        if kind == "cold":
            for f in files_of(paths):
                drop_from_page_cache(f)
        start = time.perf_counter()
        gvcc.model_fingerprint(paths)
        out.append(time.perf_counter() - start)
        wan_model._DIGESTS.clear()              # the next run is a new process: digests come from the disk cache
    return out


def random_vae_file(folder, n):
    """A safetensors file of n random float32 VAEs of the real dimensions, keys prefixed by copy."""
    from safetensors.torch import save_file

    import vae
    shapes = vae.vae_param_shapes(vae.VAE_CONFIGS["wan2.1"])
    weights = {}
    for i in range(n):
        weights.update({f"copy{i}.{k}": v for k, v in wan_model.random_weights(shapes, seed=i).items()})
    path = os.path.join(folder, "random_vae.safetensors")
    save_file(weights, path)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="weights folder (official or diffusers layout)")
    p.add_argument("--model", default="t2v-1.3B")
    p.add_argument("--random-vae", type=int, default=0, metavar="N", help="hash N random fp32 VAEs (508 MB each)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.random_vae:
            print(f"writing {args.random_vae} random float32 VAE(s) ...", file=sys.stderr)
            paths = {"vae": random_vae_file(tmp, args.random_vae)}
        else:
            paths = gvcc.model_paths(gvcc.MODELS[args.model], args.weights)
        size = sum(os.path.getsize(f) for f in files_of(paths))
        time.sleep(wan_model.DIGEST_RACY_NS / 1e9)   # a file written just now is hashed, never cached
        cold, warm, cached = time_fingerprint(paths, tmp)
        print(f"{size / 1e6:.0f} MB in {len(files_of(paths))} file(s): cold {cold:.2f} s "
              f"({size / 1e6 / cold:.0f} MB/s), warm {warm:.2f} s ({size / 1e6 / warm:.0f} MB/s), "
              f"cached {1e3 * cached:.1f} ms")


if __name__ == "__main__":
    main()
