"""What the text-context cache saves per run: load time and peak memory of the prompt's context, UMT5 at real
dimensions (random weights).

Writes a UMT5 file with the real UMT5-XXL dimensions (vocabulary 256384, d_model 4096, 64 heads, FFN 10240) and
--layers encoder layers (24 is the real model: an 11.4 GB file; fewer layers fit a small machine, and the table
then extrapolates to 24 from the per-layer cost), then runs gvcc.text_context in fresh processes: once with an
empty cache (the text encoder is loaded and run: what every run paid before the cache) and --runs times with the
cache filled. Peak RSS is each child's VmHWM (the whole process: Python, torch and the context).

    python bench/bench_text_cache.py --layers 2                         # fits in ~8 GB of RAM in fp32
    python bench/bench_text_cache.py --layers 24 --precision bf16       # the real size (~12 GB of RAM)
"""
import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import gvcc  # noqa: E402
import wan_model  # noqa: E402

PROMPT = "A red square slides across a grey field, seen from above, soft daylight"


def register(layers):
    """A model spec whose text encoder is UMT5-XXL with `layers` layers (the other files are the tiny ones)."""
    name = f"umt5-xxl-{layers}l"
    wan_model.T5_CONFIGS[name] = dataclasses.replace(wan_model.T5_CONFIGS["umt5-xxl"], num_layers=layers)
    spec = dataclasses.replace(gvcc.MODELS["tiny-t2v"], t5=name, t5_file=f"{name}.safetensors")
    return spec


def child(weights, layers, precision, device):
    spec = register(layers)
    paths = gvcc.model_paths(spec, weights)
    start = time.time()
    context = gvcc.text_context(spec, paths, PROMPT, device, precision, weights)     # [Lt, D]
    seconds = time.time() - start
    with open("/proc/self/status") as fh:       # VmHWM: this process image's peak RSS (ru_maxrss would also count
        hwm = [int(line.split()[1]) for line in fh if line.startswith("VmHWM:")][0]    # the parent's, from fork)
    print(json.dumps({"seconds": seconds, "peak_kib": hwm, "shape": list(context.shape)}))


def timed(weights, layers, precision, device):
    """(seconds in text_context, peak RSS MiB) of one fresh process."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", "--weights", weights, "--layers", str(layers),
                             "--precision", precision, "--device", device],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"child failed:\n{err.decode()}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return result["seconds"], result["peak_kib"] / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2, help="UMT5 encoder layers (24 = the real model; default 2)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=2, help="warm runs (default 2)")
    p.add_argument("--weights", help="folder for the weights (default: a temporary folder)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.weights, args.layers, args.precision, args.device)
        return
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or tmp
        spec = register(args.layers)
        path = os.path.join(weights, spec.t5_file)
        if not os.path.exists(path):
            from safetensors.torch import save_file
            start = time.time()
            subprocess.run([sys.executable, os.path.join(ROOT, "gvcc.py"), "make-tiny", weights], check=True,
                           stderr=subprocess.DEVNULL)
            tensors = wan_model.random_weights(wan_model.t5_param_shapes(wan_model.T5_CONFIGS[spec.t5]), 4,
                                               wan_model.torch.float16)
            tensors["spiece_model"] = wan_model.torch.frombuffer(bytearray(wan_model.tiny_spiece_model()),
                                                                 dtype=wan_model.torch.uint8)
            save_file(tensors, path)
            del tensors
            print(f"wrote {path} ({os.path.getsize(path) / 2**30:.2f} GiB) in {time.time() - start:.0f} s")
        shutil.rmtree(os.path.join(weights, gvcc.CONTEXT_CACHE), ignore_errors=True)
        rows = [("cold: no cache (UMT5 loaded and run)",) + timed(weights, args.layers, args.precision, args.device)]
        for i in range(args.runs):
            rows.append((f"warm #{i + 1}: context from the cache",)
                        + timed(weights, args.layers, args.precision, args.device))
        size = os.path.getsize(path)
    cfg = wan_model.T5_CONFIGS[spec.t5]
    print(f"UMT5 at real dimensions, {args.layers} of 24 layers, file {size / 2**30:.2f} GiB (fp16), "
          f"{args.precision} on {args.device}, prompt of {len(PROMPT)} characters")
    print(f"{'run':<40} {'seconds':>8} {'peak RSS MiB':>13}")
    for label, sec, rss in rows:
        print(f"{label:<40} {sec:>8.2f} {rss:>13.0f}")
    cold, warm = rows[0], min(rows[1:], key=lambda r: r[1])
    print(f"saved per run: {cold[1] - warm[1]:.2f} s of {cold[1]:.2f} s, {cold[2] - warm[2]:.0f} MiB of peak RSS "
          f"(cold / warm peak x{cold[2] / warm[2]:.1f})")
    if args.layers < 24:
        emb = cfg.vocab_size * cfg.dim
        per_layer = (4 * cfg.dim * cfg.dim + 3 * cfg.dim * cfg.ffn_dim)
        scale = (emb + 24 * per_layer) / (emb + args.layers * per_layer)
        print(f"at 24 layers the weights are x{scale:.1f} these ({(emb + 24 * per_layer) / 1e9:.2f} G parameters): "
              f"the cold run's load time and memory grow about that much, the warm run's do not")


if __name__ == "__main__":
    main()
