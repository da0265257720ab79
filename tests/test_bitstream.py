"""bitstream.py: a hand-assembled byte vector that pins the format independently of the writer, round trips over
random and edge-case streams, the combinatorial rank against brute force, the GOP layout, the residual blob,
and a corruption fuzz test. Every damaged stream must be rejected with a one-line BitstreamError or parse
canonically, and tracemalloc must show bounded memory. The whole file runs in about 12 s on one core."""
import dataclasses
import itertools
import math
import random
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import pytest

import bitstream as bs
from bitstream import BitstreamError, Gop, Header

# A damaged stream of a few hundred bytes may make the reader allocate at most this much (tracemalloc peak).
FUZZ_MEMORY_LIMIT = 1 << 20


def make_header(**changes):
    base = Header(mode="t2v", model="tiny-t2v", model_fingerprint=0xDEADBEEF, generator=1, src_width=64,
                  src_height=48, width=64, height=48, frames=33, fps_num=16, fps_den=1, gop_frames=33, steps=4,
                  tail_steps=1, g_scale_q=3000, shift_q=3000, K=64, M=4, M_tail=4, tail_frames=0, seed=42,
                  still_quality=0, residual=0, prompt="")
    return dataclasses.replace(base, **changes)


def random_gops(header, rng, still_size=(1, 40), residual_size=(1, 40)):
    """Valid random GOPs for `header`: random index sets and signs, random bytes for stills and residuals."""
    gops = []
    for info in bs.gop_layout(header):
        symbols = []
        for _ in range(min(header.steps - header.tail_steps, header.steps - 1)):
            step = []
            for f in range(info.latent_frames):
                m = bs.atoms_for_frame(header, f, info.latent_frames)
                step.append((sorted(rng.sample(range(header.K), m)), [rng.randint(0, 1) for _ in range(m)]))
            symbols.append(step)
        stills = [rng.randbytes(rng.randint(*still_size)) for _ in range(info.n_stills)]
        residual = rng.randbytes(rng.randint(*residual_size)) if header.residual else b""
        gops.append(Gop(symbols, stills, residual))
    return gops


def same_gops(a, b):
    def norm(gop):
        return ([[(list(i), list(s)) for i, s in step] for step in gop.symbols], list(gop.stills), gop.residual)
    return len(a) == len(b) and all(norm(x) == norm(y) for x, y in zip(a, b))


def ceil_log2(n):
    """ceil(log2 n) for an integer n >= 1, from a float guess corrected exactly."""
    b = max(0, math.ceil(math.log2(n)))
    while 2 ** b < n:
        b += 1
    while b > 0 and 2 ** (b - 1) >= n:
        b -= 1
    return b


def check_round_trip(header, gops):
    data = bs.write_stream(header, gops)
    got_header, got_gops = bs.read_stream(data)
    assert got_header == header
    assert same_gops(got_gops, gops)
    assert bs.read_header(data) == header
    # The header alone is enough for read_header.
    report = bs.stream_report(data)
    assert bs.read_header(data[:report["header_bytes"]]) == header
    # Rate accounting: every byte of the file is in exactly one bucket.
    assert report["file_bytes"] == len(data)
    assert report["header_bytes"] + sum(row["total_bytes"] for row in report["gops"]) == len(data)
    for row, info in zip(report["gops"], bs.gop_layout(header)):
        assert row["total_bytes"] == (row["codebook_bytes"] + row["still_bytes"] + row["residual_bytes"]
                                      + row["overhead_bytes"])
        assert row["codebook_bits"] == row["rank_bits"] + row["sign_bits"]
        assert 8 * row["codebook_bytes"] == row["codebook_bits"] + row["padding_bits"] and row["padding_bits"] < 8
        expected = min(header.steps - header.tail_steps, header.steps - 1) * sum(
            ceil_log2(math.comb(header.K, m)) + m
            for m in (bs.atoms_for_frame(header, f, info.latent_frames) for f in range(info.latent_frames)))
        assert row["codebook_bits"] == expected
    return data


# --------------------------------------------------------------------------------------------------
# The format pinned byte by byte
# --------------------------------------------------------------------------------------------------
# An i2v stream: 6 frames in GOPs of 5 (stride 4), so GOP 0 holds frames 0..4 (2 latent frames, 1 still) and GOP 1
# holds frames 4..5 padded to 5 (2 latent frames, no still). Residual on. K = 5, M = 1, M_tail = 2 on the last
# latent frame, 2 steps with 1 tail step, so 1 SDE step.

TINY_HEADER = Header(mode="i2v", model="tiny-i2v", model_fingerprint=0x12345678, generator=1, src_width=64,
                     src_height=48, width=32, height=16, frames=6, fps_num=16, fps_den=1, gop_frames=5, steps=2,
                     tail_steps=1, g_scale_q=3000, shift_q=5000, K=5, M=1, M_tail=2, tail_frames=1, seed=42,
                     still_quality=50, residual=1, prompt="a\u00e9", text_len=226, residual_bits=8,
                     clip_crc=0xC0FFEE01)
TINY_GOPS = [
    Gop(symbols=[[([3], [1]), ([1, 3], [0, 1])]], stills=[b"AVIF"], residual=b"\x01\x02\x03"),
    Gop(symbols=[[([0], [0]), ([3, 4], [1, 1])]], stills=[], residual=b"\xff"),
]

TINY_HEADER_BYTES = bytes.fromhex(
    "47564343"      # magic "GVCC"
    "03"            # version 3
    "01"            # mode 1 = i2v
    "80"            # residual u(1) = 1, precision u(1) = 0, still_lossless u(1) = 0, reserved_zero f(5)
    "32"            # still_quality 50
    "12345678"      # model_fingerprint
    "0001"          # generator 1
    "0040" "0030"   # src_width 64, src_height 48
    "0020" "0010"   # width 32, height 16
    "0005"          # gop_frames 5
    "00000006"      # frames 6
    "00000010"      # fps_num 16
    "00000001"      # fps_den 1
    "0002" "0001"   # steps 2, tail_steps 1
    "00000bb8"      # g_scale_q 3000
    "00001388"      # shift_q 5000
    "00000005"      # K 5
    "0001" "0002"   # M 1, M_tail 2
    "01"            # tail_frames 1
    "08"            # model_len 8
    "0003"          # prompt_len 3
    "0000002a"      # seed 42
    "00e2"          # text_len 226
    "08"            # residual_bits 8
    "01"            # dit_period 1
    "00000000"      # first_gop 0
    "00000002"      # gop_count 2 (a complete stream)
    "c0ffee01"      # clip_crc
) + b"tiny-i2v" + b"a\xc3\xa9" + bytes.fromhex("bee4fb20")       # model, prompt (UTF-8), header_crc

# GOP 0 codebook, 10 bits: frame 0 (m = 1, C(5,1) = 5, 3 rank bits): {3} -> 011, sign - -> 1;
# frame 1 (m = 2, C(5,2) = 10, 4 rank bits): {1,3} -> rank 5 = 0101, signs +- -> 01. 0111 0101 01|00 0000 = 75 40.
TINY_GOP0_BYTES = bytes.fromhex(
    "00000011"      # gop_size 17
    "00000004"      # still_size 4
) + b"AVIF" + bytes.fromhex(
    "00000003"      # residual_size 3
    "010203"        # residual_data
    "7540"          # codebook
    "238aa6c9"      # gop_crc
)
# GOP 1 codebook: {0} -> 000, sign + -> 0; {3,4} -> rank 9 = 1001, signs -- -> 11. 0000 1001 11|00 0000 = 09 c0.
TINY_GOP1_BYTES = bytes.fromhex(
    "00000007"      # gop_size 7
    "00000001" "ff" # residual_size 1, residual_data
    "09c0"          # codebook
    "2dc09284"      # gop_crc
)
TINY_STREAM = TINY_HEADER_BYTES + TINY_GOP0_BYTES + TINY_GOP1_BYTES


def test_hand_assembled_stream():
    # The CRCs above are standard CRC-32s of the bytes before them.
    assert zlib.crc32(TINY_HEADER_BYTES[:-4]).to_bytes(4, "big") == TINY_HEADER_BYTES[-4:]
    assert zlib.crc32(TINY_GOP0_BYTES[:-4]).to_bytes(4, "big") == TINY_GOP0_BYTES[-4:]
    assert zlib.crc32(TINY_GOP1_BYTES[:-4]).to_bytes(4, "big") == TINY_GOP1_BYTES[-4:]
    assert bs.write_stream(TINY_HEADER, TINY_GOPS) == TINY_STREAM
    header, gops = bs.read_stream(TINY_STREAM)
    assert header == TINY_HEADER and same_gops(gops, TINY_GOPS)
    report = bs.stream_report(TINY_STREAM)
    assert report["header_bytes"] == len(TINY_HEADER_BYTES) == 80 + 8 + 3 + 4
    assert report["prompt_bytes"] == 3
    assert [row["total_bytes"] for row in report["gops"]] == [len(TINY_GOP0_BYTES), len(TINY_GOP1_BYTES)]
    assert [row["codebook_bits"] for row in report["gops"]] == [10, 10]
    assert [row["padding_bits"] for row in report["gops"]] == [6, 6]
    assert [row["overhead_bytes"] for row in report["gops"]] == [16, 12]


def test_spec_worked_example():
    subsets = list(itertools.combinations(range(5), 2))
    assert subsets.index((1, 3)) == bs.combination_rank([1, 3], 5) == 5
    assert bs.rank_bits(5, 2) == 4 and bs.rank_bits(5, 5) == 0 and bs.rank_bits(2, 1) == 1


# --------------------------------------------------------------------------------------------------
# Combinatorial rank
# --------------------------------------------------------------------------------------------------

def test_rank_exhaustive_small():
    # itertools.combinations yields the subsets in lexicographic order: rank = position, a bijection onto 0..C-1.
    for K in range(1, 12):
        for M in range(0, K + 1):
            count = 0
            for position, subset in enumerate(itertools.combinations(range(K), M)):
                assert bs.combination_rank(list(subset), K) == position
                assert bs.combination_unrank(position, K, M) == list(subset)
                count += 1
            assert count == math.comb(K, M)


def test_rank_random_large():
    rng = random.Random(1)
    K = 16384
    for M in (64, 128):
        total = math.comb(K, M)
        sets = [sorted(rng.sample(range(K), M)) for _ in range(30)]
        sets += [list(range(M)), list(range(K - M, K)), list(range(M - 1)) + [K - 1]]
        ranks = [bs.combination_rank(s, K) for s in sets]
        for s, r in zip(sets, ranks):
            assert 0 <= r < total
            assert bs.combination_unrank(r, K, M) == s
        # Lexicographic order of the sets is the numeric order of the ranks.
        assert sorted(range(len(sets)), key=lambda i: sets[i]) == sorted(range(len(sets)), key=lambda i: ranks[i])
        assert ranks[-3] == 0 and ranks[-2] == total - 1
        # A random rank unranks to a valid set.
        r = rng.randrange(total)
        s = bs.combination_unrank(r, K, M)
        assert len(s) == M and s == sorted(set(s)) and 0 <= s[0] and s[-1] < K
        assert bs.combination_rank(s, K) == r


def test_rank_extremes():
    for K, M in ((65536, 1), (65536, 4096), (4096, 4096), (2, 1), (2, 2)):
        rng = random.Random(K + M)
        s = sorted(rng.sample(range(K), M))
        assert bs.combination_unrank(bs.combination_rank(s, K), K, M) == s
    with pytest.raises(BitstreamError):
        bs.combination_unrank(math.comb(10, 3), 10, 3)
    with pytest.raises(BitstreamError):
        bs.combination_unrank(-1, 10, 3)
    for bad in ([3, 2], [1, 1], [0, 10], [-1, 2]):
        with pytest.raises(BitstreamError):
            bs.combination_rank(bad, 10)


def test_rank_speed():
    """K = 16384, M = 128: milliseconds per rank and per unrank (worst case: the walk reaches K - 1)."""
    K, M = 16384, 128
    s = sorted(random.Random(2).sample(range(K - 1), M - 1)) + [K - 1]
    best_rank = best_unrank = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        r = bs.combination_rank(s, K)
        best_rank = min(best_rank, time.perf_counter() - t)
        t = time.perf_counter()
        assert bs.combination_unrank(r, K, M) == s
        best_unrank = min(best_unrank, time.perf_counter() - t)
    print(f"\nK={K} M={M}: rank {1e3 * best_rank:.2f} ms, unrank {1e3 * best_unrank:.2f} ms")
    assert best_rank < 0.1 and best_unrank < 0.1


# --------------------------------------------------------------------------------------------------
# GOP layout
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["t2v", "i2v", "flf2v"])
@pytest.mark.parametrize("gop_frames", [5, 9, 33, 257])
def test_gop_layout(mode, gop_frames):
    for frames in list(range(1 if mode == "t2v" else 2, 300)) + [32 * 20 + 1, 33 * 20, 600, 1000]:
        header = make_header(mode=mode, gop_frames=gop_frames, frames=frames,
                             still_quality=0 if mode == "t2v" else 50)
        layout = bs.gop_layout(header)
        assert len(layout) == bs.num_gops(header)
        output = []
        for g, info in enumerate(layout):
            assert 1 <= info.n_frames <= gop_frames
            assert info.n_padded % 4 == 1 and info.n_frames <= info.n_padded < info.n_frames + 4
            assert info.latent_frames == (info.n_padded - 1) // 4 + 1
            if g < len(layout) - 1:
                assert info.n_frames == gop_frames
            frames_of_gop = list(range(info.first_frame, info.first_frame + info.n_frames))
            if mode == "t2v":
                assert info.n_stills == 0
                output += frames_of_gop
            else:
                assert info.n_frames >= 2
                if g > 0:   # shares its first frame with the previous GOP's last frame
                    prev = layout[g - 1]
                    assert info.first_frame == prev.first_frame + prev.n_frames - 1
                assert info.n_stills == ({"i2v": 1, "flf2v": 2}[mode] if g == 0 else {"i2v": 0, "flf2v": 1}[mode])
                output += frames_of_gop if g == 0 else frames_of_gop[1:]
        assert output == list(range(frames))   # the decoder outputs exactly the source frames
    # The paper's layouts: 33-frame GOPs, FLF2V on 32N+1 frames.
    assert [tuple(x) for x in bs.gop_layout(make_header(frames=99))] == [(0, 33, 33, 9, 0), (33, 33, 33, 9, 0),
                                                                         (66, 33, 33, 9, 0)]
    flf = bs.gop_layout(make_header(mode="flf2v", frames=97, still_quality=50))
    assert [tuple(x) for x in flf] == [(0, 33, 33, 9, 2), (32, 33, 33, 9, 1), (64, 33, 33, 9, 1)]
    short = bs.gop_layout(make_header(mode="i2v", frames=35, still_quality=50))
    assert [tuple(x) for x in short] == [(0, 33, 33, 9, 1), (32, 3, 5, 2, 0)]


def test_atoms_for_frame():
    header = make_header(M=64, M_tail=128, tail_frames=2, K=16384)
    assert [bs.atoms_for_frame(header, f, 9) for f in range(9)] == [64] * 7 + [128] * 2
    assert [bs.atoms_for_frame(header, f, 2) for f in range(2)] == [128, 128]
    assert [bs.atoms_for_frame(header, f, 1) for f in range(1)] == [128]
    plain = make_header(M=64, M_tail=64, tail_frames=0, K=16384)
    assert [bs.atoms_for_frame(plain, f, 9) for f in range(9)] == [64] * 9


# --------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------

EDGE_HEADERS = [
    dict(K=2, M=1, M_tail=1),
    dict(K=2, M=2, M_tail=2),                                          # C(2, 2) = 1: zero rank bits
    dict(K=2, M=1, M_tail=2, tail_frames=3),
    dict(K=65536, M=1, M_tail=1, frames=1, steps=2, tail_steps=0),    # 1-frame clip, 1 latent frame
    dict(K=65536, M=4096, M_tail=4096, frames=1, steps=1, tail_steps=0),
    dict(K=4096, M=4096, M_tail=4096, frames=1, steps=1, tail_steps=0),
    dict(K=16384, M=64, M_tail=128, tail_frames=2, steps=2, frames=34),
    dict(prompt="\u00e9\u4e2d\U0001F600x" * 1638 + "abcd"),           # 16384 UTF-8 bytes, the limit
    dict(prompt="a cat \u732b on a \u00e9t\u00e9 morning, 4K, HDR"),
    dict(steps=5, tail_steps=5),                                       # no SDE steps: no codebook bits
    dict(frames=1000, gop_frames=257, steps=2, K=3, M=1, M_tail=1),
    dict(frames=11, gop_frames=5, tail_frames=2, M_tail=7),            # short last GOPs with M_tail
    dict(model="m" * 64, model_fingerprint=0xFFFFFFFF, seed=0xFFFFFFFF, generator=0xFFFF, fps_num=0xFFFFFFFF,
         fps_den=0xFFFFFFFF, src_width=65535, src_height=65535, width=4096, height=4096, g_scale_q=10 ** 6,
         shift_q=10 ** 6),
    dict(model="x", model_fingerprint=0, seed=0, g_scale_q=0, shift_q=1, width=1, height=1, src_width=1,
         src_height=1),
    dict(frames=1 << 18, gop_frames=257, steps=1, tail_steps=1),       # the frame limit: 1021 GOPs of 8 bytes
    dict(mode="i2v", still_quality=100, residual=1, frames=2, gop_frames=5),
    dict(mode="i2v", still_quality=0, residual=1, frames=65, M_tail=9, tail_frames=9),
    dict(mode="flf2v", still_quality=70, frames=2, gop_frames=5),
    dict(mode="flf2v", still_quality=70, frames=97),
    dict(mode="flf2v", still_quality=70, frames=98, residual=1),
    dict(mode="flf2v", still_quality=70, frames=33 * 3),
    dict(precision=1),
    dict(mode="i2v", still_quality=60, residual=1, frames=40, M_tail=8, tail_frames=2, precision=1),
    dict(mode="i2v", still_quality=0, still_lossless=1, residual=1, residual_bits=16, frames=40),
    dict(mode="flf2v", still_quality=0, still_lossless=1, frames=40, residual_bits=4),
    dict(text_len=226), dict(text_len=1), dict(text_len=4096),
    dict(steps=3, tail_steps=0),                                       # the last step carries no bits anyway
]


@pytest.mark.parametrize("changes", EDGE_HEADERS, ids=range(len(EDGE_HEADERS)))
def test_round_trip_edge_cases(changes):
    header = make_header(**changes)
    check_round_trip(header, random_gops(header, random.Random(str(changes))))


def test_round_trip_random():
    rng = random.Random(3)
    for _ in range(60):
        mode = rng.choice(bs.MODES)
        K = rng.choice([2, 3, 5, 17, 100, 1000, 16384, 65536])
        M = rng.randint(1, min(K, 8))
        gop_frames = rng.choice([5, 9, 13, 33])
        tail_frames = min(rng.choice([0, 0, 1, 2, 3]), (gop_frames - 1) // 4 + 1)
        steps = rng.randint(1, 4)
        header = make_header(
            mode=mode, K=K, M=M, M_tail=rng.randint(1, min(K, 16)) if tail_frames else M, tail_frames=tail_frames,
            gop_frames=gop_frames, frames=rng.randint(1 if mode == "t2v" else 2, 3 * gop_frames + 3),
            steps=steps, tail_steps=rng.randint(0, steps), residual=rng.randint(0, 1),
            still_quality=0 if mode == "t2v" else rng.randint(0, 100), seed=rng.getrandbits(32),
            model_fingerprint=rng.getrandbits(32), width=rng.randint(1, 4096), height=rng.randint(1, 4096),
            prompt="".join(rng.choice("ab \u00e9\u4e2d\U0001F600") for _ in range(rng.randint(0, 50))))
        check_round_trip(header, random_gops(header, rng))


def test_last_step_never_carries_symbols():
    """SdeSteps = min(steps - tail_steps, steps - 1): with --tail-steps 0 the step onto t = 0 is still an ODE step."""
    for steps, tail, sde in [(4, 0, 3), (4, 1, 3), (4, 2, 2), (1, 0, 0), (20, 3, 17), (20, 0, 19)]:
        header = make_header(steps=steps, tail_steps=tail)
        assert bs.sde_steps(header) == sde
        assert bs.codebook_bits(header, 2)[1] == sde * 2 * header.M      # sign bits: one per atom and step
        gops = random_gops(header, random.Random(steps))
        assert all(len(g.symbols) == sde for g in gops)
        check_round_trip(header, gops)


def test_writer_rejects_invalid_input():
    header = make_header(mode="i2v", still_quality=50, residual=1, frames=40)
    good = random_gops(header, random.Random(4))
    bs.write_stream(header, good)

    def broken(g, **changes):
        gops = [dataclasses.replace(x) for x in good]
        gops[g] = dataclasses.replace(gops[g], **changes)
        return gops

    symbols = good[0].symbols
    bad_inputs = [
        good[:1],                                                             # too few GOPs
        broken(0, stills=[]),                                                 # GOP 0 of i2v needs its still
        broken(1, stills=[b"x"]),                                             # later i2v GOPs carry none
        broken(0, stills=[b""]),                                              # empty still
        broken(1, residual=b""),                                              # residual flag is 1
        broken(0, symbols=symbols[:-1]),                                      # one SDE step missing
        broken(0, symbols=[step[:-1] for step in symbols]),                   # one latent frame missing
        broken(0, symbols=[[([2, 1, 3, 4], [0] * 4)] + step[1:] for step in symbols]),    # not ascending
        broken(0, symbols=[[([1, 1, 3, 4], [0] * 4)] + step[1:] for step in symbols]),    # repeated index
        broken(0, symbols=[[([1, 2, 3, 64], [0] * 4)] + step[1:] for step in symbols]),   # index >= K
        broken(0, symbols=[[([1, 2, 3], [0] * 3)] + step[1:] for step in symbols]),       # M - 1 atoms
        broken(0, symbols=[[([1, 2, 3, 4], [0, 1, 2, 0])] + step[1:] for step in symbols]),  # sign 2
    ]
    for gops in bad_inputs:
        with pytest.raises(BitstreamError):
            bs.write_stream(header, gops)
    with pytest.raises(BitstreamError, match="residual flag is 0"):
        t2v = make_header()
        gops = random_gops(t2v, random.Random(5))
        bs.write_stream(t2v, [dataclasses.replace(gops[0], residual=b"x")])


@pytest.mark.parametrize("changes", [
    dict(mode="x2v"), dict(model=""), dict(model="a b"), dict(model="m" * 65), dict(model="\u00e9"),
    dict(prompt="x" * 16385), dict(prompt="\ud800"), dict(width=4097), dict(height=0), dict(src_width=65536),
    dict(frames=0), dict(frames=(1 << 18) + 1), dict(mode="i2v", frames=1, still_quality=50), dict(gop_frames=1),
    dict(gop_frames=31), dict(gop_frames=261), dict(steps=0), dict(steps=1001), dict(tail_steps=5),
    dict(K=1), dict(K=65537), dict(M=0), dict(M=65), dict(K=65536, M=4097, M_tail=4097), dict(M_tail=5),
    dict(tail_frames=10, M_tail=5), dict(generator=0), dict(fps_num=0), dict(fps_den=1 << 32),
    dict(seed=-1), dict(seed=1 << 32), dict(shift_q=0), dict(g_scale_q=10 ** 6 + 1), dict(still_quality=50),
    dict(mode="i2v", still_quality=101), dict(residual=2), dict(M=4.0), dict(model_fingerprint=1 << 32),
    dict(text_len=0), dict(text_len=4097), dict(residual_bits=0), dict(residual_bits=12), dict(still_lossless=1),
    dict(mode="i2v", still_quality=50, still_lossless=1), dict(mode="i2v", still_lossless=2),
])
def test_header_limits_on_write(changes):
    with pytest.raises(BitstreamError) as err:
        bs.write_header(make_header(**changes))
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# Tail residual blob
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [4, 8, 16])
def test_residual_round_trip(bits):
    rng = random.Random(6)
    scales = [rng.random() * 4 for _ in range(16)]
    n = 16 * 6 * 8
    width = bs.value_bytes(bits)
    q = bytes(rng.randrange(16 if bits == 4 else 256) for _ in range(n * width))
    blob = bs.pack_residual(scales, q, bits)
    got_scales, got_q = bs.unpack_residual(blob, 16, n, bits)
    assert got_q == q
    assert got_scales == list(struct.unpack("<16f", struct.pack("<16f", *scales)))   # float32-rounded
    # The layout of section 6: 16 little-endian float32 scales, then zlib (level 9) of the stored values.
    assert blob[:64] == struct.pack("<16f", *scales) and zlib.decompress(blob[64:]) == q
    assert blob[64:] == zlib.compress(q, 9)
    assert bs.unpack_residual(bs.pack_residual([0.0] * 16, b"", bits), 16, 0, bits) == ([0.0] * 16, b"")


def test_residual_rejections():
    q = bytes(range(64))
    blob = bs.pack_residual([1.0] * 4, q, 8)
    nan_blob = b"\x00\x00\xc0\x7f" + b"\x00" * 12 + zlib.compress(q)          # scale 0 is a float32 NaN
    neg_blob = b"\x00\x00\x80\xbf" + b"\x00" * 12 + zlib.compress(q)          # scale 0 is -1.0
    cases = [
        (blob, 4, 63, 8), (blob, 4, 65, 8), (blob, 3, 64, 8), (blob[:-1], 4, 64, 8), (blob + b"\x00", 4, 64, 8),
        (blob + blob[16:], 4, 64, 8), (b"\x00" * 16 + b"not zlib at all", 4, 64, 8), (b"", 4, 64, 8),
        (blob[:16], 4, 64, 8), (nan_blob, 4, 64, 8), (neg_blob, 4, 64, 8), (blob, 0, 64, 8), (blob, 65, 64, 8),
        (blob, 4, (1 << 22) + 1, 8), (b"\x00" * ((1 << 24) + 1), 4, 64, 8),
        (blob, 4, 64, 4),                                  # values 16..63 are not 4-bit values
        (blob, 4, 64, 16),                                 # 64 bytes are 32 16-bit values, not 64
        (blob, 4, 64, 12),                                 # not a residual_bits value
    ]
    for data, n_channels, n_values, bits in cases:
        with pytest.raises(BitstreamError) as err:
            bs.unpack_residual(data, n_channels, n_values, bits)
        assert "\n" not in str(err.value)
    assert bs.unpack_residual(blob, 4, 32, 16)[1] == q                  # the same bytes as 32 16-bit values
    for scales in ([float("nan")], [float("inf")], [-1.0], [1e39], []):
        with pytest.raises(BitstreamError):
            bs.pack_residual(scales, b"\x00" * len(scales), 8)
    with pytest.raises(BitstreamError, match="4-bit"):
        bs.pack_residual([1.0], b"\x10", 4)
    with pytest.raises(BitstreamError, match="whole"):
        bs.pack_residual([1.0], b"\x10", 16)


def test_residual_bomb_is_bounded():
    bomb = zlib.compress(bytes(32 << 20), 9)           # 32 MiB of zeros in about 32 KiB
    tracemalloc.start()
    try:
        with pytest.raises(BitstreamError):
            bs.unpack_residual(b"\x00" * 64 + bomb, 16, 16 * 64 * 64, 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(bomb) + 16 * 64 * 64 + FUZZ_MEMORY_LIMIT


# --------------------------------------------------------------------------------------------------
# Damaged streams
# --------------------------------------------------------------------------------------------------

def refix_crcs(data):
    """Recompute header_crc and every gop_crc that the (possibly damaged) framing lets us find."""
    b = bytearray(data)
    if len(b) < bs.FIXED_HEADER_BYTES:
        return bytes(b)
    end = bs.FIXED_HEADER_BYTES + b[57] + int.from_bytes(b[58:60], "big")   # model_len, prompt_len (section 4)
    if len(b) < end + 4:
        return bytes(b)
    b[end:end + 4] = zlib.crc32(b[:end]).to_bytes(4, "big")
    pos = end + 4
    while pos + 4 <= len(b):
        end = pos + 4 + int.from_bytes(b[pos:pos + 4], "big")
        if end + 4 > len(b):
            break
        b[end:end + 4] = zlib.crc32(b[pos:end]).to_bytes(4, "big")
        pos = end + 4
    return bytes(b)


def parse_bounded(data):
    """read_stream and stream_report on damaged data: ('ok' | error message, tracemalloc peak in bytes)."""
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        header, gops = bs.read_stream(data)
        report = bs.stream_report(data)
        assert report["header_bytes"] + sum(row["total_bytes"] for row in report["gops"]) == len(data)
        # What parses is canonical: writing it back gives the same bytes.
        assert bs.write_stream(header, gops) == data
        outcome = "ok"
    except BitstreamError as exc:
        outcome = str(exc)
        assert outcome and "\n" not in outcome
        with pytest.raises(BitstreamError):
            bs.stream_report(data)
    return outcome, tracemalloc.get_traced_memory()[1] - before


def fuzz_base_streams():
    flf = make_header(mode="flf2v", still_quality=40, residual=1, frames=12, gop_frames=5, K=40, M=3,
                      M_tail=6, tail_frames=1, steps=3, tail_steps=1, prompt="fuzz \u00e9")
    # Small K: under tracemalloc the big-integer rank walk is ~50 times slower (large K is covered above).
    t2v = make_header(frames=9, gop_frames=5, K=300, M=2, M_tail=5, tail_frames=1, steps=2, tail_steps=0)
    return [TINY_STREAM, bs.write_stream(flf, random_gops(flf, random.Random(7), (1, 9), (1, 9))),
            bs.write_stream(t2v, random_gops(t2v, random.Random(8)))]


def test_corruption_fuzz():
    rng = random.Random(9)
    outcomes = []
    tracemalloc.start()
    try:
        for base in fuzz_base_streams():
            damaged = [base[:n] for n in range(len(base))]                        # every truncation
            for i in range(8 * len(base)):                                       # every single bit flip
                b = bytearray(base)
                b[i // 8] ^= 0x80 >> (i % 8)
                damaged.append(bytes(b))
            for _ in range(1000):                                                # random multi-byte damage
                b = bytearray(base)
                for _ in range(rng.randint(1, 4)):
                    b[rng.randrange(len(b))] = rng.randrange(256)
                damaged.append(bytes(b))
                damaged.append(refix_crcs(b))                                    # ... past the CRCs
            damaged += [base + b"\x00", base + base, b"", b"GVC", b"RIFF" + base[4:], base[:4] + b"\x01" + base[5:]]
            for data in damaged:
                outcome, peak = parse_bounded(data)
                assert peak < FUZZ_MEMORY_LIMIT, (outcome, peak)
                outcomes.append(outcome)
            # Every truncation and every single bit flip is detected.
            assert all(o != "ok" for o in outcomes[-len(damaged):-len(damaged) + 9 * len(base)])
    finally:
        tracemalloc.stop()
    # The fuzzing reached the checks behind the CRCs too, not just the CRCs.
    kinds = ["truncated", "CRC mismatch", "magic", "version", "index_rank", "outside", "does not match",
             "unexpected bytes"]
    for kind in kinds:
        assert any(kind in o for o in outcomes), kind


# Forged fields with a valid header_crc: (offset, size, value, expected words in the error).
FORGED_HEADER_FIELDS = [
    (5, 1, 3, "unknown mode"), (6, 1, 0x81, "reserved"), (6, 1, 0x01, "reserved"), (6, 1, 0x10, "reserved"), (6, 1, 0xA0, "still_quality"), (7, 1, 101, "still_quality"),
    (12, 2, 0, "generator"), (18, 2, 0xFFFF, "width"), (20, 2, 0, "height"), (22, 2, 0xFFFF, "gop_frames"),
    (24, 4, 0xFFFFFFFF, "frames"), (36, 2, 0xFFFF, "steps"),
    (38, 2, 3, "tail_steps"), (48, 4, 0xFFFFFFFF, "K"), (52, 2, 0xFFFF, "M"), (54, 2, 0, "M_tail"),
    (56, 1, 0xFF, "tail_frames"), (57, 1, 0xFF, "model_len"), (58, 2, 0xFFFF, "prompt_len"),
    (58, 2, 16384, "truncated"), (64, 2, 0, "text_len"), (64, 2, 4097, "text_len"), (66, 1, 7, "residual_bits"),
    (66, 1, 0, "residual_bits"), (67, 1, 0, "dit_period"), (67, 1, 9, "dit_period"), (68, 4, 1, "first_gop"), (72, 4, 0, "gop_count"),
    (72, 4, 3, "gop_count"), (80, 1, 0x20, "model name"), (88, 2, 0xC328, "UTF-8"),
]


@pytest.mark.parametrize("offset,size,value,words", FORGED_HEADER_FIELDS)
def test_forged_header_fields(offset, size, value, words):
    b = bytearray(TINY_STREAM)
    b[offset:offset + size] = value.to_bytes(size, "big")
    data = refix_crcs(b) if offset < 57 or offset >= 60 else bytes(b)     # forged lengths move the CRC itself
    tracemalloc.start()
    try:
        with pytest.raises(BitstreamError, match=words) as err:
            bs.read_stream(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < FUZZ_MEMORY_LIMIT
    assert "\n" not in str(err.value)


def test_forged_gop_fields():
    gop0 = len(TINY_HEADER_BYTES)                  # offset of GOP 0's gop_size
    cases = [
        (gop0, 4, 0xFFFFFFFF, "exceeds the limit"),          # gop_size beyond 1 GiB
        (gop0, 4, (1 << 30), "truncated"),                   # gop_size within the limit, data missing
        (gop0 + 4, 4, 0xFFFFFFFF, "still_size"),             # still_size beyond 16 MiB
        (gop0 + 4, 4, 1 << 20, "runs past the end"),         # still_size within the limit, beyond gop_size
        (gop0 + 4, 4, 0, "still_size"),
        (gop0 + 12, 4, 0xFFFFFFFF, "residual_size"),
        (gop0 + 12, 4, 0, "residual_size"),
        (gop0 + 12, 4, 2, "does not match"),                 # residual shorter: gop_size no longer adds up
        (gop0 + 19, 1, 0xE0, "index_rank"),                  # frame 0 rank 111 = 7 >= C(5, 1)
        (gop0 + 20, 1, 0x41, "padding"),                     # a padding bit set
    ]
    for offset, size, value, words in cases:
        b = bytearray(TINY_STREAM)
        b[offset:offset + size] = value.to_bytes(size, "big")
        with pytest.raises(BitstreamError, match=words):
            bs.read_stream(refix_crcs(b))


def test_error_messages():
    def error(data):
        with pytest.raises(BitstreamError) as err:
            bs.read_stream(data)
        message = str(err.value)
        assert "\n" not in message
        return message

    assert "bad magic" in error(b"\x1aE\xdf\xa3" + TINY_STREAM[4:])
    assert "version 4" in error(TINY_STREAM[:4] + b"\x04" + TINY_STREAM[5:])
    for old in (1, 2):
        message = error(TINY_STREAM[:4] + bytes([old]) + TINY_STREAM[5:])
        assert f"version {old}" in message and "older gvcc" in message and "re-encode" in message
    assert "truncated" in error(TINY_STREAM[:40]) and "offset 0" in error(TINY_STREAM[:40])
    last = bytearray(TINY_STREAM)
    last[-6] ^= 0x01                                   # inside GOP 1's codebook
    assert error(bytes(last)).startswith("GOP 1: CRC mismatch")
    head = bytearray(TINY_STREAM)
    head[30] ^= 0x01
    assert "header CRC mismatch" in error(bytes(head))
    assert "unexpected bytes" in error(TINY_STREAM + b"\x00")
    assert "expected bytes" in error("GVCC")
    cut = error(TINY_STREAM[:len(TINY_HEADER_BYTES) + 10])
    assert "truncated" in cut and "GOP" in cut


def test_no_torch_stdlib_only():
    """bitstream.py must import nothing beyond the standard library (no torch, no numpy)."""
    code = ("import sys; before = set(sys.modules); import bitstream; "
            "extra = {m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names); "
            "assert extra == {'bitstream'}, extra")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=bs.__file__.rsplit("/", 1)[0])


# --------------------------------------------------------------------------------------------------
# Lazy reading: per-GOP records, bounded memory, no unranking until asked
# --------------------------------------------------------------------------------------------------

def test_open_stream_gives_each_gop_on_demand():
    header = make_header(mode="flf2v", still_quality=40, residual=1, frames=30, gop_frames=9, K=1000, M=3,
                         M_tail=5, tail_frames=1, steps=3, tail_steps=1)
    gops = random_gops(header, random.Random(11))
    data = bs.write_stream(header, gops)
    stream = bs.open_stream(data)
    assert stream.header == header and len(stream) == len(gops) == bs.num_gops(header)
    report = bs.stream_report(data)
    for g in (3, 0, len(gops) - 1, 1):                           # any order, any GOP alone
        rec = stream[g]
        assert rec.index == g and rec.info == bs.gop_layout(header)[g] == bs.gop_info(header, g)
        assert [bytes(s) for s in rec.stills] == gops[g].stills and bytes(rec.residual) == gops[g].residual
        assert rec.symbol(1, 2) == gops[g].symbols[1][2]
        assert rec.symbols() == [[(list(i), list(s)) for i, s in step] for step in gops[g].symbols]
        assert rec.row() == report["gops"][g]
    assert stream[-1].index == len(gops) - 1
    with pytest.raises(IndexError):
        stream[len(gops)]
    with pytest.raises(IndexError):
        stream[0].symbol(2, 0)                                   # only steps - tail_steps = 2 SDE steps


def test_rank_check_without_unranking():
    b = bytearray(TINY_STREAM)
    gop0 = len(TINY_HEADER_BYTES)
    b[gop0 + 19] = 0xE0                                          # GOP 0, frame 0: rank 7 >= C(5, 1)
    data = refix_crcs(b)
    stream = bs.open_stream(data)                                # the framing is fine
    stream[1].check_ranks()
    with pytest.raises(BitstreamError, match="GOP 0 step 0 frame 0: index_rank"):
        stream.check_ranks()
    with pytest.raises(BitstreamError, match="index_rank"):
        stream[0].symbol(0, 0)
    with pytest.raises(BitstreamError, match="index_rank"):
        bs.stream_report(data)


def raw_stream(header, codebook_byte=0x5A):
    """A valid stream for a t2v header with no residual, written without the writer (fast for huge GOPs):
    every codebook byte is codebook_byte, which must be a valid pattern of ranks and signs for the header."""
    out = [bs.write_header(header)]
    for info in bs.gop_layout(header):
        n_rank, n_sign = bs.codebook_bits(header, info.latent_frames)
        n_bytes, pad = (n_rank + n_sign + 7) // 8, (-(n_rank + n_sign)) % 8
        body = bytes([codebook_byte]) * (n_bytes - 1) + bytes([codebook_byte & (0xFF << pad) & 0xFF])
        gop = n_bytes.to_bytes(4, "big") + body
        out.append(gop + zlib.crc32(gop).to_bytes(4, "big"))
    return b"".join(out)


def test_memory_does_not_grow_with_the_symbols():
    """The issue's stream: K 2, M 1, GOPs of 257 frames, 1000 steps. read_stream once took ~1,000 bytes of Python
    objects per stream byte (180 MB for 195 KB); open_stream, check_ranks and stream_report keep 8 bytes per GOP
    (plus the per-GOP report rows) and unpack one symbol at a time."""
    header = make_header(K=2, M=1, M_tail=1, gop_frames=257, frames=257 * 12, steps=1000, tail_steps=0)
    data = raw_stream(header)
    assert len(data) > 190_000
    tracemalloc.start()
    try:
        stream = bs.open_stream(data)
        stream.check_ranks()
        report = bs.stream_report(data)
        # 0x5A = 01 01 10 10: symbols (rank, sign) (0, 1) (0, 1) (1, 0) (1, 0); symbol 998 * 65 + 64 is the 3rd
        assert stream[11].symbol(998, 64) == ([1], [0]) and stream[11].symbol(998, 62) == ([0], [1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(report["gops"]) == 12
    assert peak < 64 * 1024, peak


def adversarial_index_sets(K, M, seed=1):
    """{name: sorted M-subset of 0..K-1}: index sets shaped against unranking (issues 11 and 20), and a random one.

    Contiguous runs and one long gap; then every position's gap set to where a walk hands over to a search: issue
    11's walk took 4 k + 16 steps (k values after the position) before galloping, today's takes 16 + j / 8 + 8
    (j values left, this one included) before one binomial. Gaps stop growing where the set would leave 0..K-1.
    """
    def gaps(length):
        out, c = [], -1
        for i in range(M):
            c = min(c + 1 + length(M - i), K - (M - i))
            out.append(c)
        return out
    return {
        "random": sorted(random.Random(seed).sample(range(K), M)),
        "last M values": list(range(K - M, K)),
        "0 then the last": [0] + list(range(K - M + 1, K)),
        "gap at position M/2": list(range(M // 2)) + list(range(K - M + M // 2, K)),
        "gaps 4k+15": gaps(lambda j: 4 * (j - 1) + 15),
        "gaps 4k+16": gaps(lambda j: 4 * (j - 1) + 16),
        "gaps j/8+24": gaps(lambda j: j // 8 + 24),
        "gaps j/8+25": gaps(lambda j: j // 8 + 25),
        "gaps K/M": gaps(lambda j: K // M - 1),
    }


def test_unrank_long_gaps_jump_instead_of_walking():
    # Gaps longer than the walk (16 steps, then up to j / 8 + 8 more) take the jump: every rank of these sizes.
    for K, M in ((100, 1), (100, 2), (60, 3)):
        for position, subset in enumerate(itertools.combinations(range(K), M)):
            assert bs.combination_unrank(position, K, M) == list(subset)
    # The forged maximal ranks of issue 11: a 31-bit rank that once walked 65536 values per symbol.
    for K, M in ((65536, 1), (65536, 2), (65536, 17), (16384, 128)):
        for s in (list(range(K - M, K)), [0] + list(range(K - M + 1, K)), list(range(K // 2, K // 2 + M))):
            assert bs.combination_unrank(bs.combination_rank(s, K), K, M) == s


class CountingMath:
    """The math module, counting math.comb calls (what bounds unranking's work)."""
    def __init__(self):
        self.combs = 0

    def comb(self, n, k):
        self.combs += 1
        return math.comb(n, k)

    def __getattr__(self, name):
        return getattr(math, name)


@pytest.mark.parametrize("K, M", [(16384, 64), (65536, 17), (65536, 512)])
def test_unranking_costs_at_most_one_binomial_per_position(K, M, monkeypatch):
    """Issue 20: index sets shaped to defeat issue 11's galloping search (up to 271 us per codebook byte). Now
    every position takes at most one binomial (plus a bounded walk), whatever the set: no search over K."""
    for name, s in adversarial_index_sets(K, M).items():
        rank = bs.combination_rank(s, K)
        bs._num_subsets(K, M)                   # cached before counting
        counting = CountingMath()
        monkeypatch.setattr(bs, "math", counting)
        assert bs.combination_unrank(rank, K, M) == s, name
        monkeypatch.setattr(bs, "math", math)
        assert counting.combs <= M + 1, (name, counting.combs)


def test_unranking_is_exact_when_the_float_estimate_is_wrong(monkeypatch):
    """The floats only choose where to look: with estimates far off, the exact bisection still finds every set."""
    rng = random.Random(4)
    cases = [(K, M, list(s)) for K, M in ((40, 1), (40, 2), (30, 3)) for s in itertools.combinations(range(K), M)]
    cases += [(K, M, s) for K, M in ((16384, 64), (65536, 17))
              for s in adversarial_index_sets(K, M).values()]
    for wrong in (lambda left, hi, j: j - 1, lambda left, hi, j: hi - 1,
                  lambda left, hi, j: rng.randrange(j - 1, hi)):
        monkeypatch.setattr(bs, "_estimate", wrong)
        for K, M, s in cases:
            assert bs.combination_unrank(bs.combination_rank(s, K), K, M) == s
