"""Forward time and peak memory of gvcc's DiT and UMT5 against diffusers' and transformers', float32 on the CPU.

    python bench/bench_dit.py [--layers 2] [--frames 3] [--t5-layers 2] [--repeats 2]

DiT: T2V-1.3B dims (1536 wide, 12 heads, FFN 8960) with fewer layers, one 480p latent frame is 60x104 (1560
tokens), so --frames 3 gives 4680 tokens; text context 512 rows (the DiT pads to 512 anyway).
UMT5: UMT5-XXL dims (4096 wide, 64 heads, FFN 10240, vocabulary 256384) with fewer layers; two inputs: 512 real
tokens in both (same work), and a 120-token prompt the way each pipeline runs it (gvcc: the 120 tokens;
transformers / upstream: padded to 512 with a mask).
Both implementations share the same weight tensors (loaded with assign=True), run alternately in one process,
and report the best of --repeats timed runs after one warm-up each (wall time, and process CPU time, which
other jobs on a shared machine disturb less). Memory is the peak resident-set growth
during one forward (VmHWM reset through /proc/self/clear_refs before the call), i.e. activations and workspace,
not weights; the script re-executes itself with glibc's mmap threshold at 64 KiB so freed blocks leave the RSS.
"""
import argparse
import dataclasses
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import wan_model as wm  # noqa: E402


def rss_kib(field):
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+)", fh.read()).group(1))


def measure(fn):
    """(wall seconds, process CPU seconds, peak RSS growth in MiB over the pre-call RSS, output) of one call."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")                           # reset VmHWM to the current RSS
    before = rss_kib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, (rss_kib("VmHWM") - before) / 1024, out


def compare(label, impls, repeats, rows):
    """Run the implementations alternately (so neither gets a quieter machine), keep each one's best."""
    best = {name: [float("inf"), float("inf"), 0.0, None] for name in impls}
    for fn in impls.values():
        measure(fn)                             # warm-up: one-time kernel and thread-pool setup
    for _ in range(repeats):
        for name, fn in impls.items():
            wall, cpu, mem, out = measure(fn)
            b = best[name]
            best[name] = [min(b[0], wall), min(b[1], cpu), max(b[2], mem), out]
    (gname, g), (rname, r) = best.items()
    rows.append((label, gname, *g[:3]))
    rows.append((label, rname, *r[:3]))
    rows.append((label, "ratio gvcc/ref", g[0] / r[0], g[1] / r[1], g[2] / max(r[2], 1e-9)))
    return rel_err(g[3], r[3])


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def bench_dit(args, rows):
    from diffusers import WanTransformer3DModel
    from test_wan_model import to_diffusers

    cfg = dataclasses.replace(wm.DIT_CONFIGS["t2v-1.3B"], num_layers=args.layers)
    params = wm.random_weights(wm.dit_param_shapes(cfg), seed=0)
    with torch.device("meta"):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.dim // cfg.num_heads,
            in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=cfg.ffn_dim,
            num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    model.load_state_dict(to_diffusers(params), strict=True, assign=True)   # same tensors, no second copy
    model.rope = type(model.rope)(cfg.dim // cfg.num_heads, (1, 2, 2), 1024)  # buffers were on "meta"
    model.eval()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, args.frames, 60, 104, generator=g)
    context = torch.randn(120, 4096, generator=g)
    padded = torch.cat([context, torch.zeros(512 - 120, 4096)])
    tokens = args.frames * 30 * 52

    def run_gvcc():
        return wm.dit_forward(params, cfg, x, 999.0, context)

    def run_diffusers():
        return model(hidden_states=x[None], timestep=torch.tensor([999.0]), encoder_hidden_states=padded[None],
                     return_dict=False)[0][0]

    label = f"DiT 1.3B dims, {cfg.num_layers} layers, {tokens} tokens"
    err = compare(label, {"gvcc": run_gvcc, "diffusers": run_diffusers}, args.repeats, rows)
    print(f"{label}: outputs agree to rel err {err:.1e}", file=sys.stderr)


def bench_t5(args, rows):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = dataclasses.replace(wm.T5_CONFIGS["umt5-xxl"], num_layers=args.t5_layers)
    params = wm.random_weights(wm.t5_param_shapes(cfg), seed=0)
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(
            vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.ffn_dim,
            num_layers=cfg.num_layers, num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.num_buckets,
            relative_attention_max_distance=cfg.max_distance, feed_forward_proj="gated-gelu", dropout_rate=0.0,
            layer_norm_epsilon=cfg.eps))
    state = dict(params, **{"encoder.embed_tokens.weight": params["shared.weight"]})
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    attn_impl = model.config._attn_implementation

    g = torch.Generator().manual_seed(0)
    ids512 = torch.randint(3, 256000, (512,), generator=g)
    ids120 = ids512[:120].clone()
    ids120[-1] = wm.T5_EOS
    padded = torch.cat([ids120, torch.zeros(392, dtype=torch.long)])
    mask = (torch.arange(512) < 120).long()
    cases = [
        (f"UMT5-XXL dims, {cfg.num_layers} layers, 512 tokens",
         lambda: wm.t5_forward(params, cfg, ids512),
         lambda: model(input_ids=ids512[None]).last_hidden_state[0]),
        (f"UMT5-XXL dims, {cfg.num_layers} layers, 120-token prompt (ref pads to 512)",
         lambda: wm.t5_forward(params, cfg, ids120),
         lambda: model(input_ids=padded[None], attention_mask=mask[None]).last_hidden_state[0, :120]),
    ]
    for label, run_gvcc, run_ref in cases:
        err = compare(label, {"gvcc": run_gvcc, "transformers": run_ref}, args.repeats, rows)
        print(f"{label}: outputs agree to rel err {err:.1e} (transformers attention: {attn_impl})", file=sys.stderr)


def main():
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # Large blocks straight from mmap, so that freed memory leaves the RSS at once: otherwise glibc keeps
        # what the first implementation freed and the second one's peak looks smaller than it is.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="DiT blocks (30 in T2V-1.3B)")
    ap.add_argument("--frames", type=int, default=3, help="latent frames of 60x104 (480p): 1560 tokens each")
    ap.add_argument("--t5-layers", type=int, default=2, help="UMT5 blocks (24 in UMT5-XXL)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per implementation (best is reported)")
    ap.add_argument("--skip-dit", action="store_true")
    ap.add_argument("--skip-t5", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU", file=sys.stderr)
    rows = []
    if not args.skip_dit:
        bench_dit(args, rows)
    if not args.skip_t5:
        bench_t5(args, rows)
    width = max(len(r[0]) for r in rows)
    print(f"| {'case':<{width}} | {'impl':<14} | {'wall s':>8} | {'CPU s':>8} | {'peak MiB':>9} |")
    print(f"|{'-' * (width + 2)}|{'-' * 16}|{'-' * 10}|{'-' * 10}|{'-' * 11}|")
    for label, impl, wall, cpu, mem in rows:
        if impl.startswith("ratio"):
            print(f"| {label:<{width}} | {impl:<14} | {wall:>7.2f}x | {cpu:>7.2f}x | {mem:>8.2f}x |")
        else:
            print(f"| {label:<{width}} | {impl:<14} | {wall:>8.2f} | {cpu:>8.2f} | {mem:>9.0f} |")


if __name__ == "__main__":
    main()
