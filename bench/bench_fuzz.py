"""The decoder against hostile streams, in numbers (issues 11 and 20): the fuzz corpus of tests/test_fuzz.py in
process and through the CLI, parse time against stream length, and unranking cost per byte on a random and on
adversarial index sets, against issue 11's algorithm.

    .venv/bin/python bench/bench_fuzz.py                 # corpus in process + parse linearity + unranking
    .venv/bin/python bench/bench_fuzz.py --cli 300       # also 300 `gvcc.py decode` / `info` runs (slow)

Prints tables; asserts nothing (the tests do). Weights: the tiny models, written to a temporary folder."""
import argparse
import math
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import bitstream  # noqa: E402
import test_bitstream  # noqa: E402
import test_fuzz  # noqa: E402


def issue11_unrank(rank, K, M):
    """The reference: combination_unrank as issue 11 left it, a walk of up to 4 k + 16 steps per position
    (k values after it) and then a galloping search over binomial sums."""
    indices, v, n, k = [], 0, K - 1, M - 1
    b = math.comb(n, k)
    for _ in range(M):
        budget = 4 * k + 16
        while rank >= b:
            if not budget:
                v, rank = _gallop(rank, K, v, k)
                n = K - 1 - v
                b = math.comb(n, k)
                break
            rank -= b
            b = b * (n - k) // n
            n, v, budget = n - 1, v + 1, budget - 1
        indices.append(v)
        if k:
            b = b * k // n
        n, k, v = n - 1, k - 1, v + 1
    return indices


def _gallop(rank, K, v, k):
    total = math.comb(K - v, k + 1)
    need = total - rank
    lo, step, top = v, 1, K - 1 - k
    hi = top
    while lo + step <= top:
        if math.comb(K - lo - step, k + 1) >= need:
            lo, step = lo + step, 2 * step
        else:
            hi = lo + step - 1
            break
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if math.comb(K - mid, k + 1) >= need:
            lo = mid
        else:
            hi = mid - 1
    return lo, rank - (total - math.comb(K - lo, k + 1))


def best_time(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def unranking_table():
    print("\nUnranking per byte of symbol (rank + signs), microseconds: a random index set, and the worst of the "
          "adversarial sets\n(tests/test_bitstream.py adversarial_index_sets); before = issue 11's walk and "
          "galloping search")
    print(f"{'K':>6} {'M':>5} {'bytes':>6} {'random':>7} {'before':>7} {'worst':>7} {'worst set':>20} "
          f"{'before':>7} {'worst set (before)':>20} {'worst/random':>13}")
    for K, M in ((65536, 1), (65536, 2), (65536, 17), (16384, 64), (16384, 128), (65536, 512), (65536, 4096)):
        nbytes = (bitstream.rank_bits(K, M) + M) / 8
        repeat = 1 if M >= 4096 else 3
        now, before = {}, {}
        for name, s in test_bitstream.adversarial_index_sets(K, M).items():
            rank = bitstream.combination_rank(s, K)
            assert bitstream.combination_unrank(rank, K, M) == s and issue11_unrank(rank, K, M) == s
            now[name] = 1e6 * best_time(lambda: bitstream.combination_unrank(rank, K, M), repeat) / nbytes
            before[name] = 1e6 * best_time(lambda: issue11_unrank(rank, K, M), repeat) / nbytes
        worst, worst_before = max(now, key=now.get), max(before, key=before.get)
        print(f"{K:>6} {M:>5} {nbytes:>6.0f} {now['random']:>7.1f} {before['random']:>7.1f} {now[worst]:>7.1f} "
              f"{worst:>20} {before[worst_before]:>7.1f} {worst_before:>20} {now[worst] / now['random']:>12.2f}x",
              flush=True)


def parse_table():
    print("\nParse time against stream length (open_stream + check_ranks, no unranking): microseconds per byte")
    rng = random.Random(1)
    import dataclasses
    base = bitstream.Header(mode="t2v", model="tiny-t2v", model_fingerprint=0, generator=1, src_width=40,
                            src_height=24, width=40, height=24, frames=5, fps_num=16, fps_den=1, gop_frames=5,
                            steps=4, tail_steps=1, g_scale_q=3000, shift_q=3000, K=64, M=4, M_tail=4,
                            tail_frames=0, seed=1, still_quality=0, residual=0, prompt="")
    families = {
        "K 2, M 1, GOPs of 257, 1000 steps": lambda n: dataclasses.replace(
            base, K=2, M=1, M_tail=1, gop_frames=257, frames=257 * n, steps=1000, tail_steps=0),
        "K 3, M 1 (a rank check per 3 bits)": lambda n: dataclasses.replace(
            base, K=3, M=1, M_tail=1, gop_frames=257, frames=257 * n, steps=1000, tail_steps=0),
        "K 65536, M 2, 1000 steps": lambda n: dataclasses.replace(
            base, K=65536, M=2, M_tail=2, gop_frames=5, frames=5 * n, steps=1000, tail_steps=0),
        "empty GOPs (8 bytes each)": lambda n: dataclasses.replace(
            base, gop_frames=5, frames=5 * 64 * n, steps=1, tail_steps=1),
    }
    print(f"{'stream':>36} {'x1 bytes':>9} {'us/B x1':>8} {'us/B x8':>8} {'us/B x64':>9} {'x64 / x1':>9}")
    for name, make in families.items():
        per_byte, sizes = [], []
        for n in (1, 8, 64):
            data = test_fuzz.raw_t2v(make(n), rng)
            t = best_time(lambda: bitstream.open_stream(data).check_ranks())
            per_byte.append(1e6 * t / len(data))
            sizes.append(len(data))
        print(f"{name:>36} {sizes[0]:>9} {per_byte[0]:>8.3f} {per_byte[1]:>8.3f} {per_byte[2]:>9.3f} "
              f"{per_byte[2] / per_byte[0]:>8.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cli", type=int, default=0, metavar="N", help="also run N inputs through gvcc.py")
    p.add_argument("--jobs", type=int, default=2, help="parallel CLI runs (default 2)")
    p.add_argument("--no-corpus", action="store_true", help="only the parse and unranking tables")
    args = p.parse_args()
    if args.no_corpus:
        parse_table()
        unranking_table()
        return
    import gvcc
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights")
        assert gvcc.main(["make-tiny", weights]) == 0
        streams = make_streams(tmp, weights)
        inputs = test_fuzz.corpus(test_fuzz.read_bases(streams))
        out = os.path.join(tmp, "out")
        os.makedirs(out)
        summary = test_fuzz.run_corpus(inputs, weights, out)
        print("\nIn process (open_stream + check_decode, tracemalloc and RSS per input):")
        print("  " + test_fuzz.format_summary(summary))
        for kind, outcome in summary["tracebacks"][:20]:
            print(f"  {kind}: {outcome}")
        parse_table()
        unranking_table()
        if args.cli:
            work = os.path.join(tmp, "cli")
            os.makedirs(work)
            s = test_fuzz.run_cli_corpus(test_fuzz.cli_sample(inputs, args.cli), weights, work, jobs=args.jobs)
            print(f"\nCLI ({args.jobs} at a time, 4 GiB address-space limit): {s['runs']} runs, {s['rejected']} "
                  f"rejected, {s['accepted']} accepted, {s['timed_out']} still decoding at the timeout, "
                  f"{len(s['unclean'])} unclean, {len(s['leftovers'])} with "
                  f"leftover files, worst peak RSS of a rejected input {s['worst_rss'][0] / 2 ** 20:.1f} MiB (of any run "
                  f"{s['worst_rss_any'][0] / 2 ** 20:.1f} MiB) above the baseline "
                  f"{s['baseline'] / 2 ** 20:.0f} MiB ({s['worst_rss'][1]}), {s['seconds']:.0f} s")
            for item in s["unclean"][:20] + s["leftovers"][:20]:
                print("  ", item)


def make_streams(tmp, weights):
    """The streams of the tests' tiny_streams fixture (same clip and settings)."""
    import conftest
    folder = os.path.join(tmp, "streams")
    os.makedirs(folder)
    return conftest.make_tiny_streams(weights, folder)


if __name__ == "__main__":
    main()
