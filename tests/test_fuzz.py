"""The decoder's fuzz harness (issues 11 and 20): a deterministic corpus of damaged and forged streams derived from
valid t2v, i2v and flf2v streams of the tiny models, and of streams carrying index sets shaped against the
unranking, run in process through everything `gvcc.py decode` does besides its networks (bitstream.open_stream,
then gvcc.check_decode: ranks, model, limits, output, memory estimate, every still and residual; then, for an
accepted stream, every symbol unranked). Every input must be accepted or rejected with one line of gvcc's own
errors: no other exception, no file left behind, and at most 64 MiB above the baseline, measured both by
tracemalloc (Python and numpy allocations) and by the process's peak resident memory (libavif's allocations too).

    .venv/bin/python -m pytest -q -s tests/test_fuzz.py              # the in-process corpus (default run)
    .venv/bin/python -m pytest -q -s -m slow tests/test_fuzz.py      # + a few hundred `gvcc.py` runs
    .venv/bin/python bench/bench_fuzz.py                             # the numbers, timings and parse linearity

The CLI part runs each input as a user does, in a subprocess under a 4 GiB address-space limit; it is slow
(an interpreter and torch start-up per run), hence the `slow` marker."""
import argparse
import dataclasses
import os
import random
import resource
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections import Counter

import pytest

import bitstream
import gvcc
import media
from bitstream import BitstreamError
from media import MediaError
from test_bitstream import adversarial_index_sets, refix_crcs
from wan_model import WeightsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_LIMIT = 64 << 20                 # bytes above the baseline, for every input
CLEAN_ERRORS = (BitstreamError, gvcc.GvccError, MediaError, WeightsError)


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------

def forge_ispe(avif, width, height):
    at = avif.find(b"ispe")
    if at < 0:
        return avif
    return avif[:at + 8] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + avif[at + 16:]


def raw_t2v(header, rng, valid_ranks=True):
    """A t2v stream for a forged header, written without the writer (fast for huge GOPs): random codebook bits,
    with every rank kept below C(K, m) when valid_ranks (by clearing its top bit), and zero padding."""
    out = [bitstream.write_header(header)]
    for g in range(bitstream.num_gops(header)):
        info = bitstream.gop_info(header, g)
        n_rank, n_sign = bitstream.codebook_bits(header, info.latent_frames)
        n_bits = n_rank + n_sign
        bits = rng.getrandbits(n_bits) if n_bits else 0
        if valid_ranks and n_bits:
            pos = 0                                                       # clear the top bit of every rank
            for _ in range(bitstream.sde_steps(header)):
                for f in range(info.latent_frames):
                    m = bitstream.atoms_for_frame(header, f, info.latent_frames)
                    nb = bitstream.rank_bits(header.K, m)
                    if nb:
                        bits &= ~(1 << (n_bits - 1 - pos))
                    pos += nb + m
        n_bytes = (n_bits + 7) // 8
        body = (bits << (8 * n_bytes - n_bits)).to_bytes(n_bytes, "big") if n_bytes else b""
        gop = len(body).to_bytes(4, "big") + body
        out.append(gop + zlib.crc32(gop).to_bytes(4, "big"))
    return b"".join(out)


def forged_headers(t2v_header):
    """Legal but hostile t2v headers (section 8's limits), each a whole valid stream: the issue's cases."""
    h = dataclasses.replace(t2v_header, tail_frames=0)
    return {
        "4096x4096": dataclasses.replace(h, width=4096, height=4096, src_width=4096, src_height=4096),
        "2048x2048": dataclasses.replace(h, width=2048, height=2048),
        "262144 frames": dataclasses.replace(h, frames=1 << 18, gop_frames=257, steps=1, tail_steps=1),
        "K 65536 M 2 1000 steps": dataclasses.replace(h, K=65536, M=2, M_tail=2, steps=1000, tail_steps=0,
                                                       frames=5, gop_frames=5),
        "K 2 M 1 GOPs of 257, 1000 steps": dataclasses.replace(h, K=2, M=1, M_tail=1, gop_frames=257,
                                                                frames=257 * 3, steps=1000, tail_steps=0),
        "K 65536 M 4096": dataclasses.replace(h, K=65536, M=4096, M_tail=4096, steps=1, tail_steps=0, frames=1),
        "fps 1/4294967295": dataclasses.replace(h, fps_num=1, fps_den=0xFFFFFFFF),
        "fps 1001/1": dataclasses.replace(h, fps_num=1001, fps_den=1),
        "unknown model": dataclasses.replace(h, model="wan-99B"),
        "generator 2": dataclasses.replace(h, generator=2),
        "odd size": dataclasses.replace(h, width=41, height=23),
    }


# (K, M, which of test_bitstream.adversarial_index_sets): the index sets shaped against unranking (issue 20)
ADVERSARIAL_SETS = [(16384, 64, None), (65536, 512, None), (65536, 4096, ("random", "gaps j/8+24", "gaps K/M"))]


def adversarial_streams(t2v_header):
    """[(kind, bytes)]: valid t2v streams of one symbol each (one GOP of 1 frame, one SDE step), carrying the
    adversarial index sets of ADVERSARIAL_SETS."""
    out = []
    for K, M, names in ADVERSARIAL_SETS:
        header = dataclasses.replace(t2v_header, K=K, M=M, M_tail=M, tail_frames=0, frames=1, gop_frames=5,
                                     steps=2, tail_steps=1)
        for name, s in adversarial_index_sets(K, M).items():
            if names is None or name in names:
                gop = bitstream.Gop(symbols=[[(s, [i % 2 for i in range(M)])]])
                out.append((f"adversarial index set: K {K} M {M} {name}", bitstream.write_stream(header, [gop])))
    return out


def corpus(bases, seed=11):
    """[(kind, bytes)]: at least 10,000 damaged or forged streams from the valid streams `bases` (mode -> bytes),
    the same list for the same bases and seed."""
    rng = random.Random(seed)
    out = []
    for mode, base in bases.items():
        out += [(f"{mode} truncated", base[:n]) for n in range(len(base))]
        # single bit flips: every bit of the header and of a short stream, 1,500 random ones of a longer one
        head = len(bitstream.write_header(bitstream.read_header(base)))
        flips = range(8 * len(base)) if len(base) <= 200 else \
            sorted(set(range(8 * head)) | set(rng.sample(range(8 * head, 8 * len(base)), 1500)))
        for i in flips:
            b = bytearray(base)
            b[i // 8] ^= 0x80 >> (i % 8)
            out.append((f"{mode} bit flip", bytes(b)))
        for _ in range(600):                                                    # damage past the CRCs
            b = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            out.append((f"{mode} bytes, CRCs fixed", refix_crcs(b)))
        hdr, gops = bitstream.read_stream(base)
        head = len(bitstream.write_header(hdr)) - 4
        for offset in range(4, bitstream.FIXED_HEADER_BYTES):                   # every header byte forged
            for value in (0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)):
                b = bytearray(base)
                b[offset] = value
                out.append((f"{mode} header byte, CRCs fixed", refix_crcs(b)))
        out.append((f"{mode} prompt not UTF-8", refix_crcs(base[:head - 1] + b"\xff" + base[head:]))
                   if hdr.prompt else (f"{mode} trailing byte", base + b"\x00"))
        for g, gop in enumerate(gops):                                          # stills and residuals
            for i, still in enumerate(gop.stills):
                def with_still(s, g=g, i=i):
                    new = [dataclasses.replace(x) for x in gops]
                    new[g].stills = list(new[g].stills)
                    new[g].stills[i] = s
                    return bitstream.write_stream(hdr, new)
                for w, h in ((0, 0), (1, 1), (hdr.width + 1, hdr.height), (1024, 1024), (9460, 9460),
                             (12000, 12000), (13377, 13377), (16000, 16000), (65535, 1), (0xFFFFFFFF, 0xFFFFFFFF)):
                    out.append((f"{mode} still ispe forged", with_still(forge_ispe(still, w, h))))
                for _ in range(300):
                    s = bytearray(still)
                    for _ in range(rng.randint(1, 3)):
                        s[rng.randrange(len(s))] ^= 1 << rng.randrange(8)
                    out.append((f"{mode} still damaged", with_still(bytes(s))))
                for n in sorted(rng.sample(range(1, len(still)), 20)):
                    out.append((f"{mode} still truncated", with_still(still[:n])))
                out.append((f"{mode} still not AVIF", with_still(b"\x89PNG\r\n\x1a\n" + bytes(40))))
            if hdr.residual:
                def with_residual(r, g=g):
                    new = [dataclasses.replace(x) for x in gops]
                    new[g].residual = r
                    return bitstream.write_stream(hdr, new)
                for r in (zlib.compress(bytes(32 << 20), 9), zlib.compress(gop.residual)[:-3],
                          gop.residual[:-1], gop.residual + b"\x00", b"\x78\x9c" + bytes(20), b"\x00"):
                    out.append((f"{mode} residual damaged", with_residual(r)))
                for _ in range(40):
                    r = bytearray(gop.residual)
                    r[rng.randrange(len(r))] ^= 1 << rng.randrange(8)
                    out.append((f"{mode} residual damaged", with_residual(bytes(r))))
    t2v_header = bitstream.read_header(bases["t2v"])
    for name, header in forged_headers(t2v_header).items():
        out.append((f"forged header: {name}", raw_t2v(header, rng)))
    out += adversarial_streams(t2v_header)
    big = forged_headers(t2v_header)["K 65536 M 2 1000 steps"]
    out.append(("forged header: K 65536 M 2, rank out of range", raw_t2v(big, rng, valid_ranks=False)))
    out += [("empty", b""), ("magic only", b"GVCC"), ("other format", b"RIFF" + bytes(60)),
            ("version 2", bases["t2v"][:4] + b"\x02" + bases["t2v"][5:]), ("doubled", bases["t2v"] * 2)]
    return out


# --------------------------------------------------------------------------------------------------
# Running the decoder's checks on one input
# --------------------------------------------------------------------------------------------------

def _rss(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field))


def _reset_rss_peak():
    try:
        with open("/proc/self/clear_refs", "w") as fh:      # Linux: resets VmHWM to the current RSS
            fh.write("5")
        return True
    except OSError:
        return False


def decode_args(weights, outdir):
    return gvcc.build_parser().parse_args(["decode", "fuzz.gvcc", os.path.join(outdir, "out.y4m"),
                                           "--weights", weights])


def run_input(data, args):
    """(outcome, tracemalloc peak above baseline, RSS peak above baseline or None, seconds, unranking) for one input.

    outcome: "accepted", "error: <first words>", or "TRACEBACK <type>: <message>" for anything else. An accepted
    stream then has every symbol unpacked and unranked, the decoder's integer work besides the checks; unranking
    is (seconds, codebook bytes) of that."""
    rss_ok = _reset_rss_peak()
    rss_before = _rss("VmRSS:") if rss_ok else 0
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    unranking = (0.0, 0)
    try:
        stream = bitstream.open_stream(data)
        gvcc.check_decode(stream, args)
        outcome = "accepted"
        began, codebook = time.perf_counter(), 0
        for gop in stream:
            for j in range(bitstream.sde_steps(stream.header)):
                for f in range(gop.info.latent_frames):
                    gop.symbol(j, f)
            codebook += len(gop.codebook)
        unranking = (time.perf_counter() - began, codebook)
    except CLEAN_ERRORS as exc:
        message = str(exc)
        outcome = "error: " + " ".join(message.split()[:4]) if message and "\n" not in message else \
            f"TRACEBACK multi-line message: {message!r}"
    except Exception as exc:                                        # noqa: BLE001 - that is what we look for
        outcome = f"TRACEBACK {type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] - before
    rss = _rss("VmHWM:") - rss_before if rss_ok else None
    return outcome, peak, rss, seconds, unranking


def run_corpus(inputs, weights, outdir):
    """Run every input; returns a summary dict (the harness's numbers)."""
    args = decode_args(weights, outdir)
    run_input(inputs[0][1], args)                   # warm-up: imports and caches are not the input's cost
    outcomes, tracebacks, worst = Counter(), [], dict(peak=(0, ""), rss=(0, ""), unrank=(0.0, ""))
    leftovers = 0
    tracemalloc.start()
    start = time.perf_counter()
    try:
        for kind, data in inputs:
            outcome, peak, rss, _, (unrank_seconds, codebook) = run_input(data, args)
            outcomes["accepted" if outcome == "accepted" else "traceback" if outcome.startswith("TRACEBACK")
                     else "rejected"] += 1
            if outcome.startswith("TRACEBACK"):
                tracebacks.append((kind, outcome))
            worst["peak"] = max(worst["peak"], (peak, kind))
            if rss is not None:
                worst["rss"] = max(worst["rss"], (rss, kind))
            if codebook >= 64:                      # per byte, where there are bytes enough to time
                worst["unrank"] = max(worst["unrank"], (1e6 * unrank_seconds / codebook, kind))
            if os.listdir(outdir):
                leftovers += len(os.listdir(outdir))
                for name in os.listdir(outdir):
                    os.remove(os.path.join(outdir, name))
    finally:
        seconds = time.perf_counter() - start
        tracemalloc.stop()
    return dict(inputs=len(inputs), outcomes=outcomes, tracebacks=tracebacks, leftovers=leftovers,
                peak=worst["peak"], rss=worst["rss"], unrank=worst["unrank"], seconds=seconds)


def format_summary(s):
    return (f"{s['inputs']} inputs: {s['outcomes']['rejected']} rejected, {s['outcomes']['accepted']} accepted, "
            f"{len(s['tracebacks'])} tracebacks, {s['leftovers']} leftover files; worst tracemalloc peak "
            f"{s['peak'][0] / 2 ** 20:.2f} MiB ({s['peak'][1]}), worst RSS peak {s['rss'][0] / 2 ** 20:.2f} MiB "
            f"({s['rss'][1]}); slowest unranking {s['unrank'][0]:.1f} us per codebook byte ({s['unrank'][1]}); "
            f"{s['seconds']:.1f} s")


def read_bases(tiny_streams):
    out = {}
    for mode, path in tiny_streams.items():
        with open(path, "rb") as fh:
            out[mode] = fh.read()
    return out


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------

def test_corpus_is_deterministic_and_large(tiny_streams):
    bases = read_bases(tiny_streams)
    a, b = corpus(bases), corpus(bases)
    assert len(a) >= 10_000 and a == b


def test_adversarial_index_sets_are_accepted_and_unrank_exactly(tiny_streams, tiny_weights, tmp_path):
    streams = adversarial_streams(bitstream.read_header(read_bases(tiny_streams)["t2v"]))
    assert len(streams) == 9 + 9 + 3
    args = decode_args(tiny_weights, str(tmp_path))
    for kind, data in streams:
        outcome, *_, (seconds, codebook) = run_input(data, args)
        assert outcome == "accepted" and codebook > 0, (kind, outcome)
        K, M, name = int(kind.split()[4]), int(kind.split()[6]), kind.split(maxsplit=7)[7]
        assert next(iter(bitstream.open_stream(data))).symbol(0, 0)[0] == adversarial_index_sets(K, M)[name]


def test_fuzz_in_process(tiny_streams, tiny_weights, tmp_path):
    inputs = corpus(read_bases(tiny_streams))
    summary = run_corpus(inputs, tiny_weights, str(tmp_path))
    print("\n" + format_summary(summary))
    assert not summary["tracebacks"], summary["tracebacks"][:5]
    assert summary["leftovers"] == 0
    assert summary["peak"][0] < MEMORY_LIMIT and summary["rss"][0] < MEMORY_LIMIT, summary
    assert summary["outcomes"]["rejected"] > 0.9 * len(inputs)


# --------------------------------------------------------------------------------------------------
# The CLI, as a user runs it (slow: one interpreter per run)
# --------------------------------------------------------------------------------------------------

ADDRESS_SPACE = 4 << 30


def _limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_cli(argv, timeout=300):
    """(exit status, stderr, peak RSS in bytes) of `python gvcc.py ARGV` under a 4 GiB address-space limit."""
    import threading
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "gvcc.py"), *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=ROOT, preexec_fn=_limit_address_space)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    err = proc.stderr.read()
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)          # this child's own rusage: its peak RSS
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err.decode("utf-8", "replace"), usage.ru_maxrss * 1024


def cli_sample(inputs, n, seed=5):
    """n inputs spread over the corpus's kinds (every kind at least once), the same for the same corpus."""
    rng = random.Random(seed)
    by_kind = {}
    for kind, data in inputs:
        by_kind.setdefault(kind, []).append(data)
    picked = [(kind, rng.choice(items)) for kind, items in sorted(by_kind.items())]
    rest = [x for x in inputs if x not in picked]
    return picked + rng.sample(rest, max(0, n - len(picked)))


def run_cli_corpus(inputs, weights, workdir, jobs=2, timeout=300):
    """Run `decode` (and `info`) on each input in subprocesses; returns a summary dict. A run still going after
    `timeout` seconds is a valid stream decoding (quiet runs print nothing before their one result line)."""
    from concurrent.futures import ThreadPoolExecutor
    baseline = run_cli(["decode", os.path.join(workdir, "missing.gvcc"), os.path.join(workdir, "b.y4m"),
                        "--weights", weights])[2]

    def one(item):
        i, (kind, data) = item
        folder = os.path.join(workdir, f"run{i}")
        os.makedirs(folder)
        path = os.path.join(folder, "in.gvcc")
        with open(path, "wb") as fh:
            fh.write(data)
        command = ["info", path] if i % 4 == 3 else ["decode", path, os.path.join(folder, "out.y4m"),
                                                     "--weights", weights, "--quiet"]
        rc, err, rss = run_cli(command, timeout)
        left = sorted(set(os.listdir(folder)) - {"in.gvcc", "out.y4m" if rc == 0 else ""})
        errors = [line for line in err.strip().splitlines() if not line.startswith("gvcc: decode step")]
        # a valid stream that needs a long decode (legal headers: 1000 steps, 257-frame GOPs) may pass the timeout
        clean = rc == 0 and "Traceback" not in err or rc == 1 and len(errors) == 1 and \
            errors[0].startswith("gvcc: error:") or rc == -9 and not errors
        return kind, command[0], rc, clean, err, left, rss

    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(one, enumerate(inputs)))
    seconds = time.perf_counter() - start
    bad = [(k, c, rc, err[-300:]) for k, c, rc, ok, err, _, _ in results if not ok]
    left = [(k, names) for k, _, _, _, _, names, _ in results if names]
    # the limit is for rejected inputs: an accepted stream loads its networks and decodes
    worst = max([((rss or 0) - baseline, k) for k, _, rc, *_, rss in results if rc == 1] or [(0, "")])
    worst_any = max(((rss or 0) - baseline, k) for k, *_, rss in results)
    return dict(runs=len(results), rejected=sum(r[2] == 1 for r in results), accepted=sum(r[2] == 0 for r in results),
                timed_out=sum(r[2] == -9 for r in results), unclean=bad, leftovers=left, baseline=baseline,
                worst_rss=worst, worst_rss_any=worst_any, seconds=seconds)


@pytest.mark.slow
def test_fuzz_cli(tiny_streams, tiny_weights, tmp_path):
    inputs = [x for x in cli_sample(corpus(read_bases(tiny_streams)), 300)]
    summary = run_cli_corpus(inputs, tiny_weights, str(tmp_path))
    print(f"\n{summary['runs']} CLI runs: {summary['rejected']} rejected, {summary['accepted']} accepted, "
          f"{summary['timed_out']} valid streams still decoding at the timeout, "
          f"{len(summary['unclean'])} unclean, {len(summary['leftovers'])} with leftover files, worst peak RSS of a "
          f"rejected input {summary['worst_rss'][0] / 2 ** 20:.1f} MiB above the baseline "
          f"{summary['baseline'] / 2 ** 20:.0f} MiB "
          f"({summary['worst_rss'][1]}), {summary['seconds']:.0f} s")
    assert not summary["unclean"], summary["unclean"][:5]
    assert not summary["leftovers"]
    assert summary["worst_rss"][0] < MEMORY_LIMIT
