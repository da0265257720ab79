"""Long clips: GOP-by-GOP streaming, part streams and `concat`, random access (`decode --gops / --frames`).

The CLI tests run the tiny models on a 10-frame clip in GOPs of 5 (t2v: 2 GOPs, flf2v: 3 GOPs sharing boundary
frames). The part-stream rules (bitstream.py section 11) are also checked on random streams without any model.
"""
import dataclasses
import os
import random
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest

import bitstream as bs
import gvcc
import media
from golden_cases import gvcc_cli, synthetic_clip
from test_bitstream import make_header, random_gops

FAST = ["-K", "64", "-M", "4", "--steps", "2", "--tail-steps", "1", "--gop", "5", "--seed", "7", "--quiet"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("clip") / "clip.y4m")
    media.write_video(path, synthetic_clip(), Fraction(16, 1))
    return path


def encode(clip, weights, out, mode, *extra):
    # In-process (gvcc.main, as the CLI runs it) to spare a torch import per call; concat runs as a subprocess.
    assert gvcc.main(["encode", clip, str(out), "--weights", weights, "--mode", mode, "--model", f"tiny-{mode}",
                      *FAST, *extra]) == 0
    return open(out, "rb").read()


def decode(stream, weights, out, *extra):
    assert gvcc.main(["decode", str(stream), str(out), "--weights", weights, "--quiet", *extra]) == 0
    return media.read_video(str(out)).frames


@pytest.mark.parametrize("mode,cuts", [("t2v", ["0:1", "1:2"]), ("flf2v", ["0:1", "1:"])])
def test_parts_concat_to_the_one_process_stream_and_decode_alone(mode, cuts, clip, tiny_weights, tmp_path):
    whole = encode(clip, tiny_weights, tmp_path / "whole.gvcc", mode, "--recon", str(tmp_path / "recon.y4m"))
    parts = [tmp_path / f"part{i}.gvcc" for i in range(len(cuts))]
    for part, cut in zip(parts, cuts):
        encode(clip, tiny_weights, part, mode, "--gops", cut)
    gvcc_cli("concat", *map(str, parts), str(tmp_path / "joined.gvcc"))
    assert open(tmp_path / "joined.gvcc", "rb").read() == whole

    full = media.read_video(str(tmp_path / "recon.y4m")).frames      # = a full decode (tests/test_cli.py)
    # GOP 1 on: from the whole stream by random access, and from the part stream on its own.
    hdr = bs.read_header(whole)
    start = bs.output_frames(hdr, 1).start
    assert start == 5
    n_gops = bs.num_gops(hdr)
    tail = decode(tmp_path / "whole.gvcc", tiny_weights, tmp_path / "tail.y4m", "--gops", f"1:{n_gops}")
    assert np.array_equal(tail, full[start:])
    assert np.array_equal(decode(parts[-1], tiny_weights, tmp_path / "part.y4m"), full[start:])
    # A frame range maps onto the GOPs that hold it.
    assert np.array_equal(decode(tmp_path / "whole.gvcc", tiny_weights, tmp_path / "f.y4m", "--frames", "3:7"),
                          full[3:7])
    if mode == "flf2v":     # a middle GOP needs the last still of the GOP before it (taken from that GOP)
        assert np.array_equal(decode(tmp_path / "whole.gvcc", tiny_weights, tmp_path / "g1.y4m", "--gops", "1:2"),
                              full[bs.output_frames(hdr, 1).start:bs.output_frames(hdr, 1).stop])


def test_i2v_has_no_random_access_and_says_why(clip, tiny_weights, tmp_path):
    bad = gvcc_cli("encode", clip, str(tmp_path / "p.gvcc"), "--weights", tiny_weights, "--mode", "i2v",
                   "--model", "tiny-i2v", *FAST, "--gops", "1:2", check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "conditioned on the decoded last frame of GOP 0" in bad.stderr and not os.path.exists(tmp_path / "p.gvcc")
    stream = tmp_path / "i2v.gvcc"        # any valid i2v stream: the span is refused before models load
    header = make_header(mode="i2v", model="tiny-i2v", frames=9, gop_frames=5, M_tail=8, tail_frames=1,
                         still_quality=50, residual=1)
    stream.write_bytes(bs.write_stream(header, random_gops(header, random.Random(5))))
    for flag in ("--gops", "--frames"):
        bad = gvcc_cli("decode", str(stream), str(tmp_path / "x.y4m"), "--weights", tiny_weights, "--quiet",
                       flag, "1:2" if flag == "--gops" else "5:6", check=False)
        assert bad.returncode == 1 and "gvcc: error: i2v GOP 1 is conditioned" in bad.stderr
        assert "decode --gops 0:2" in bad.stderr and not os.path.exists(tmp_path / "x.y4m")


def test_bad_spans_are_clean_errors(clip, tiny_weights, tmp_path, capsys):
    for span, words in (("2:1", "START must be below STOP"), ("0:9", "the clip holds GOPs 0:2"),
                        ("a:b", "START:STOP")):
        assert gvcc.main(["encode", clip, str(tmp_path / "p.gvcc"), "--weights", tiny_weights, *FAST,
                          "--model", "tiny-t2v", "--gops", span]) == 1
        err = capsys.readouterr().err
        assert words in err and err.startswith("gvcc: error: ") and err.count("\n") == 1


# --------------------------------------------------------------------------------------------------
# Memory: the decoder writes each GOP as it is done
# --------------------------------------------------------------------------------------------------

def test_decode_writes_each_gop_before_sampling_the_next(tiny_weights, tmp_path, monkeypatch):
    src = str(tmp_path / "c.y4m")
    media.write_video(src, synthetic_clip(frames=15), Fraction(16, 1))
    stream = str(tmp_path / "c.gvcc")
    assert gvcc.main(["encode", src, stream, "--weights", tiny_weights, "--model", "tiny-t2v", *FAST]) == 0
    events = []
    real_write, real_run = media.VideoWriter.write, gvcc.run_gop
    monkeypatch.setattr(media.VideoWriter, "write", lambda self, f: (events.append(("write", len(f))),
                                                                      real_write(self, f))[1])
    monkeypatch.setattr(gvcc, "run_gop", lambda *a, **k: (events.append(("sample",)), real_run(*a, **k))[1])
    assert gvcc.main(["decode", stream, str(tmp_path / "d.y4m"), "--weights", tiny_weights, "--quiet"]) == 0
    assert events == [("sample",), ("write", 5)] * 3


# --------------------------------------------------------------------------------------------------
# Reading GOP by GOP (media.VideoSource)
# --------------------------------------------------------------------------------------------------

def write_kinds(folder, frames):
    """The same frames as every input kind gvcc reads: {kind: (path, read arguments)}."""
    out = {}
    for kind, name in [("y4m", "c.y4m"), ("mp4", "c.mp4"), ("png", "pngs"), ("yuv", "c.yuv")]:
        path = os.path.join(folder, name)
        media.write_video(path, frames, Fraction(25, 1))
        out[kind] = (path, dict(size=(frames.shape[2], frames.shape[1]), fps=25) if kind == "yuv" else {})
    out["pattern"] = (os.path.join(folder, "pngs", "%06d.png"), dict(fps=25))
    return out


@pytest.mark.parametrize("kind", ["y4m", "mp4", "png", "yuv", "pattern", "stdin"])
def test_video_source_reads_gop_spans_as_read_video_reads_the_clip(kind, tmp_path, monkeypatch):
    frames = synthetic_clip(frames=23, width=24, height=16)                          # [N, H, W, 3]
    path, how = write_kinds(str(tmp_path), frames)["y4m" if kind == "stdin" else kind]
    whole = media.read_video(path, **how)
    with media.VideoSource(path, frames=10, **how) as video:
        assert video.n == 10
    if kind == "stdin":
        class Stdin:
            buffer = open(path, "rb")
        monkeypatch.setattr("sys.stdin", Stdin)
        monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "spool"))
        os.mkdir(tmp_path / "spool")
        path = "-"
    with media.VideoSource(path, **how) as video:
        assert (video.n, video.width, video.height, video.fps) == (23, 24, 16, whole.fps)
        assert video.notes == whole.notes and video.warnings == whole.warnings
        # GOPs of 9 sharing boundary frames (i2v, flf2v), then a step back (reopens), then one frame
        spans = [video.read(0, 9), video.read(8, 17), video.read(16, 23)]
        assert np.array_equal(np.concatenate([spans[0], spans[1][1:], spans[2][1:]]), whole.frames)
        assert np.array_equal(video.read(3, 5), whole.frames[3:5])
        assert np.array_equal(video.read(22, 23), whole.frames[22:])
        with pytest.raises(ValueError):
            video.read(20, 24)
    if kind == "stdin":
        assert os.listdir(tmp_path / "spool") == []                 # the copy of stdin is gone


def test_video_source_skips_pixels_when_counting(tmp_path, monkeypatch):
    """Opening counts frames without converting any; reading a GOP converts only that GOP's frames."""
    path = str(tmp_path / "c.y4m")
    media.write_video(path, synthetic_clip(frames=30, width=24, height=16), Fraction(25, 1))
    converted = []
    real = media.yuv_to_rgb
    monkeypatch.setattr(media, "yuv_to_rgb", lambda *a, **k: (converted.append(1), real(*a, **k))[1])
    with media.VideoSource(path) as video:
        assert video.n == 30 and converted == []
        video.read(9, 18)
        assert len(converted) == 9


@pytest.mark.parametrize("mode", ["t2v", "flf2v"])
def test_encode_memory_does_not_grow_with_the_clip(mode, tiny_weights, tmp_path, monkeypatch):
    """At most two GOPs of source frames are alive at any time, and the peak of the arrays gvcc allocates
    (tracemalloc sees numpy's) is the same for a 20-frame and a 100-frame clip of 320x240 frames (GOPs of 9)."""
    import tracemalloc
    import weakref
    gop, frame_bytes = 9, 320 * 240 * 3
    alive, most = [0], [0]
    real_read = media.VideoSource.read

    def read(self, start, stop):
        frames = real_read(self, start, stop)                                         # [n, H, W, 3]
        alive[0] += len(frames)
        most[0] = max(most[0], alive[0])
        weakref.finalize(frames, lambda n=len(frames): alive.__setitem__(0, alive[0] - n))
        return frames
    monkeypatch.setattr(media.VideoSource, "read", read)
    peaks = {}
    for n in (20, 20, 100):                     # the first run warms up the allocations made once per process
        clip = str(tmp_path / f"c{n}.y4m")
        if not os.path.exists(clip):
            with media.VideoWriter(clip, 320, 240, Fraction(25, 1), n_frames=n) as out:
                for i in range(n):
                    out.write(np.full((1, 240, 320, 3), i * 7 % 256, np.uint8))
        tracemalloc.start()
        try:
            encode(clip, tiny_weights, tmp_path / "c.gvcc", mode, "--size", "16x16", "--gop", str(gop), "-y",
                   *(["--still-quality", "30"] if mode == "flf2v" else []))
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert 0 < most[0] <= 2 * gop
    assert peaks[100] - peaks[20] < gop * frame_bytes, (peaks, 80 * frame_bytes)     # the clip's growth: 80 frames


# --------------------------------------------------------------------------------------------------
# Part streams and concat without models (bitstream.py section 11)
# --------------------------------------------------------------------------------------------------

def split(header, gops, cuts, lead_of=lambda g, gops: gops[g - 1].stills[-1]):
    """Write the parts [a, b) of a complete stream's GOPs as an encoder would."""
    out = []
    for a, b in cuts:
        part = dataclasses.replace(header, first_gop=a, gop_count=b - a)
        lead = lead_of(a, gops) if bs.has_lead(part) else None
        out.append(bs.write_stream(part, gops[a:b], lead))
    return out


@pytest.mark.parametrize("mode", ["t2v", "flf2v"])
def test_concat_rules(mode):
    rng = random.Random(3)
    header = make_header(mode=mode, frames=30, gop_frames=5, still_quality=50 if mode == "flf2v" else 0,
                         clip_crc=0x1234)
    gops = random_gops(header, rng)
    whole = bs.write_stream(header, gops)
    n = bs.num_gops(header)
    parts = split(header, gops, [(0, 2), (2, 3), (3, n)])
    assert bs.concat(parts) == whole
    assert bs.concat([whole]) == whole
    # Each part is a valid stream of its own; a flf2v part after GOP 0 leads with the still its first GOP needs.
    for part, a in zip(parts, (0, 2, 3)):
        got, lead, got_gops = bs.read_part(part)
        assert got.first_gop == a and (lead is not None) == (mode == "flf2v" and a > 0)
        if lead is not None:
            assert lead == gops[a - 1].stills[-1]
    # Random access into the whole stream gives the same GOPs and the same lead.
    _, lead, some = bs.read_gops(whole, 3, 5)
    assert [bs.write_gop(header, 3 + i, g) for i, g in enumerate(some)] == \
        [bs.write_gop(header, 3 + i, g) for i, g in enumerate(gops[3:5])]
    assert lead == (gops[2].stills[-1] if mode == "flf2v" else None)

    def fails(pieces, words):
        with pytest.raises(bs.BitstreamError, match=words):
            bs.concat(pieces)
    fails([parts[0], parts[2]], "expected it to start at GOP 2")
    fails([parts[1], parts[0], parts[2]], "expected it to start at GOP 0")
    fails(parts[:2], f"the clip has {n} GOPs")
    fails([], "at least one part")
    wider = dataclasses.replace(header, M=5, M_tail=5)
    other = split(wider, random_gops(wider, rng), [(2, 3)])
    fails([parts[0], other[0], parts[2]], "differs in M")
    other = split(dataclasses.replace(header, clip_crc=0x1235), gops, [(2, 3)])
    fails([parts[0], other[0], parts[2]], "differs in clip_crc")
    damaged = bytearray(parts[1])
    damaged[-1] ^= 1
    fails([parts[0], bytes(damaged), parts[2]], "part 2: GOP 2: CRC mismatch")


def png16(width, height):
    """A valid 16-bit RGB PNG (IHDR bit depth 16, colour type 2), which Pillow cannot write: mid-grey."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = b"".join(b"\x00" + b"\x80\x00" * 3 * width for _ in range(height))      # filter 0, then RGB samples
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def coded_parts(mode, lossless=False, residual=False):
    """A valid stream of the tiny model of `mode` (16x16, 13 frames in GOPs of 5: 3 GOPs) with real stills and
    residuals and random symbols, no network run: (header, GOPs, its parts [0, 1) and [1, 3))."""
    rng = random.Random(5)
    header = make_header(mode=mode, model=f"tiny-{mode}", width=16, height=16, src_width=16, src_height=16,
                         frames=13, gop_frames=5, steps=2, tail_steps=1, still_lossless=int(lossless),
                         still_quality=0 if lossless or mode == "t2v" else 30, residual=int(residual),
                         tail_frames=2 if mode == "i2v" else 0)
    gops = random_gops(header, rng)
    pixels = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)            # [H, W, 3]
    values = bytes(rng.randrange(256) for _ in range(16 * 2 * 2))      # 16 channels of the 2x2 latent
    for gop in gops:
        gop.stills[:] = [media.encode_still(pixels, 30, lossless=lossless) for _ in gop.stills]
    gops = [dataclasses.replace(g, residual=bs.pack_residual([1.0] * 16, values, 8) if residual else b"")
            for g in gops]
    return header, gops, split(header, gops, [(0, 1), (1, 3)] if mode != "i2v" else [(0, 3)])


def test_concat_checks_each_part_as_a_decoder_does(tmp_path, capsys):
    """bitstream.py section 11: concat joins valid parts; a part a decoder would refuse before loading any
    network (a still or the lead that does not decode at the working size, a broken residual, an unknown
    model) is refused in one line and nothing is written."""
    out = str(tmp_path / "joined.gvcc")

    def concat(parts):
        names = []
        for i, data in enumerate(parts):
            names.append(str(tmp_path / f"p{i}.gvcc"))
            open(names[-1], "wb").write(data)
        rc = gvcc.main(["concat", *names, out])
        return rc, capsys.readouterr().err

    header, gops, parts = coded_parts("flf2v")
    assert concat(parts)[0] == 0 and open(out, "rb").read() == bs.write_stream(header, gops)
    os.remove(out)
    garbage, small = b"\x00" * 64, media.encode_still(np.zeros((8, 8, 3), np.uint8), 30)
    cases = [
        ("a garbage still", split(header, [gops[0], dataclasses.replace(gops[1], stills=[garbage]), gops[2]],
                                  [(0, 1), (1, 3)]), "part 2", "GOP 1, still 0"),
        ("a still of another size", split(header, [gops[0], gops[1], dataclasses.replace(gops[2], stills=[small])],
                                          [(0, 1), (1, 3)]), "GOP 2, still 0", "8x8"),
        ("a garbage lead", split(header, gops, [(0, 1), (1, 3)], lead_of=lambda g, gops: garbage),
         "part 2", "GOP 0, still lead"),
        ("an unknown model", split(dataclasses.replace(header, model="tiny-none"), gops, [(0, 1), (1, 3)]),
         "part 1", "tiny-none"),
    ]
    i2v, i2v_gops, i2v_parts = coded_parts("i2v", residual=True)
    assert concat(i2v_parts)[0] == 0
    os.remove(out)
    broken = [dataclasses.replace(g, residual=g.residual[:-3]) if k == 1 else g for k, g in enumerate(i2v_gops)]
    cases.append(("a broken residual", [bs.write_stream(i2v, broken)], "part 1", "GOP 1: residual"))
    lossless, lossless_gops, lossless_parts = coded_parts("flf2v", lossless=True)
    assert concat(lossless_parts)[0] == 0
    os.remove(out)
    deep = [dataclasses.replace(lossless_gops[0], stills=[lossless_gops[0].stills[0], png16(16, 16)]),
            *lossless_gops[1:]]
    cases.append(("a 16-bit PNG still", split(lossless, deep, [(0, 1), (1, 3)]), "GOP 0, still 1", "bit depth 16"))
    for label, pieces, *words in cases:
        rc, err = concat(pieces)
        assert rc == 1 and err.startswith("gvcc: error: concat: ") and len(err.splitlines()) == 1, (label, err)
        assert all(w in err for w in words), (label, err)
        assert not os.path.exists(out) and sorted(os.listdir(tmp_path)) == [f"p{i}.gvcc" for i in range(len(pieces))]
        for name in os.listdir(tmp_path):
            os.remove(tmp_path / name)


def test_part_header_fields_and_limits():
    header = make_header(frames=30, gop_frames=5)
    part = dataclasses.replace(header, first_gop=2, gop_count=3)
    data = bs.write_stream(part, random_gops(header, random.Random(1))[2:5])
    assert data[68:80] == bytes.fromhex("00000002" "00000003" "00000000")
    # ClipKey ignores the GOP range: a part and the complete stream share it.
    assert bs.clip_key(data[:bs.stream_report(data)["header_bytes"]]) == bs.clip_key(bs.write_header(header))
    with pytest.raises(bs.BitstreamError, match="gop_count"):
        bs.check_header(dataclasses.replace(header, first_gop=5, gop_count=2))
    with pytest.raises(bs.BitstreamError, match="first_gop"):
        bs.check_header(make_header(mode="i2v", frames=30, gop_frames=5, first_gop=1, M_tail=4, still_quality=50,
                                    residual=1))
    flf = make_header(mode="flf2v", frames=30, gop_frames=5, still_quality=50, first_gop=1)
    with pytest.raises(bs.BitstreamError, match="lead still"):
        bs.write_stream(flf, random_gops(dataclasses.replace(flf, first_gop=0), random.Random(2))[1:])


def test_forged_part_of_a_huge_clip_stays_small():
    """A part header may claim 2^18 frames: reading it must not build anything that size."""
    import tracemalloc
    header = make_header(frames=1 << 18, gop_frames=5, first_gop=50000, gop_count=1)
    gops = random_gops(make_header(frames=5, gop_frames=5), random.Random(4))
    data = bs.write_stream(header, gops)
    tracemalloc.start()
    try:
        assert bs.read_header(data).first_gop == 50000
        bs.read_stream(data)
        bs.read_gops(data, 50000, 50001)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# --------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------

class FakeStream:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass


@pytest.mark.parametrize("tty", [False, True])
def test_progress_names_gop_phase_and_etas(tty):
    stream = FakeStream(tty)
    progress = gvcc.Progress(2, 4, "encode", stream=stream, every=0.0)
    for g in (7, 8):
        progress.begin_gop(g)
        for _ in range(4):
            progress()
        progress.set_phase("writing")
        progress.end_gop()
    progress.finish()
    text = stream.text
    assert "GOP 1/2 (#7) reading" in text and "GOP 2/2 (#8) step 3/4" in text and "writing" in text
    assert "GOP ETA" in text and ", ETA " in text
    if tty:     # one line redrawn in place, ended once
        assert text.count("\r") > 5 and text.count("\n") == 1 and "\x1b[K" in text
    else:       # plain lines for a log
        assert "\r" not in text and text.count("\n") > 5
