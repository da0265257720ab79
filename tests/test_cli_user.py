"""The command line as a video engineer uses it (issue 11): no lost data, failures before the work, inputs
recognised by content, rate targets that tell the truth, no tracebacks, and summaries that say what happened.

Everything runs `python gvcc.py ...` in a subprocess on the tiny models, with a 5-frame 16x16 clip and two
sampler steps, so that each real encode takes seconds.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest

import bitstream
import gvcc
import media
from golden_cases import ROOT, gvcc_cli, synthetic_clip

FAST = ["--model", "tiny-t2v", "-K", "16", "--steps", "2", "--tail-steps", "1", "--gop", "5"]
TINY = [*FAST, "-M", "2", "--quiet"]


def run(*args, stdin=None):
    """`python gvcc.py ARGS` with optional bytes on stdin; never raises on a non-zero exit."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "gvcc.py"), *args], input=stdin, capture_output=True,
                          cwd=ROOT)


def clean_error(res, *words, status=None):
    """One `gvcc: error:` line on stderr, a non-zero exit, no traceback, and every word in the message."""
    err = res.stderr.decode() if isinstance(res.stderr, bytes) else res.stderr
    assert res.returncode != 0 and (status is None or res.returncode == status), err
    assert "Traceback" not in err and err.startswith("gvcc: error:") and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


def read_only_folder(tmp_path):
    # root writes through permission bits: use a folder of a virtual file system that takes no new files
    if os.geteuid() == 0:
        if not os.path.isdir("/sys") or os.access("/sys", os.W_OK) and _can_create("/sys"):
            pytest.skip("running as root and no read-only folder to try")
        return "/sys"
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder)


def _can_create(folder):
    try:
        open(os.path.join(folder, ".gvcc-test"), "wb").close()
    except OSError:
        return False
    os.remove(os.path.join(folder, ".gvcc-test"))
    return True


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("clip") / "clip.y4m")
    media.write_video(path, synthetic_clip(5, 16, 16), Fraction(16, 1))
    return path


@pytest.fixture(scope="module")
def encoded(clip, tiny_weights, tmp_path_factory):
    """An encode over an existing output with -y, and its reconstruction."""
    out = tmp_path_factory.mktemp("enc")
    stream, recon = str(out / "a.gvcc"), str(out / "recon.y4m")
    open(stream, "wb").write(b"an older file")
    res = gvcc_cli("encode", clip, stream, "--weights", tiny_weights, "--recon", recon, "-y", *TINY)
    return stream, recon, res.stderr


# ==================================================================================================
# No lost data
# ==================================================================================================

def test_encode_never_writes_over_its_input(clip, tmp_path):
    src = str(tmp_path / "src.y4m")
    data = open(clip, "rb").read()
    open(src, "wb").write(data)
    os.link(src, tmp_path / "hard.gvcc")
    os.symlink(src, tmp_path / "soft.gvcc")
    clean_error(run("encode", src, src, *TINY), "is also the input")
    clean_error(run("encode", src, str(tmp_path / "hard.gvcc"), "-y", *TINY), "is also the input")   # even with -y
    clean_error(run("encode", src, str(tmp_path / "o.gvcc"), "--recon", str(tmp_path / "soft.gvcc"), "-y", *TINY),
                "is also the input")
    assert open(src, "rb").read() == data


def test_existing_outputs_need_y(clip, encoded, tiny_weights, tmp_path):
    stream, recon, _ = encoded
    kept, video = str(tmp_path / "kept"), str(tmp_path / "kept.y4m")  # a video output without extension: PNG folder
    for path in (kept, video):
        open(path, "wb").write(b"precious")
    for args in (["encode", clip, kept, "-n", *TINY],
                 ["encode", clip, str(tmp_path / "x.gvcc"), "--recon", video, *TINY],
                 ["decode", stream, video, "--weights", tiny_weights], ["eval", clip, recon, "--json", kept]):
        clean_error(run(*args), "already exists", "-y")
    assert open(kept, "rb").read() == open(video, "rb").read() == b"precious"
    clean_error(run("decode", stream, stream, "-y", "--weights", tiny_weights), "is also the input")
    clean_error(run("eval", clip, recon, "--json", recon, "-y"), "is also the input")
    assert open(stream, "rb").read(4) == bitstream.MAGIC


def test_y_overwrites_and_the_summary_says_what_was_coded(encoded):
    stream, _, stderr = encoded
    data = open(stream, "rb").read()
    assert data.startswith(bitstream.MAGIC)                         # the older file was replaced with -y
    assert f"5 frames 16x16 at 16 fps, {len(data)} bytes, 1 GOPs" in stderr


# ==================================================================================================
# Fail before the work
# ==================================================================================================

def test_output_folders_are_checked_before_any_model_loads(clip, encoded, tmp_path):
    # --weights names no folder at all: an error about weights would mean the work had started
    missing = str(tmp_path / "no" / "such")
    ro = read_only_folder(tmp_path)
    nowhere = ["--weights", str(tmp_path / "none")]
    for folder, words in ((missing, ("does not exist",)), (ro, ("cannot write in folder",))):
        clean_error(run("encode", clip, os.path.join(folder, "o.gvcc"), *TINY, *nowhere), folder, *words)
        clean_error(run("eval", clip, encoded[1], "--json", os.path.join(folder, "r.json")), folder, *words)
    clean_error(run("encode", clip, str(tmp_path / "o.gvcc"), "--recon", os.path.join(ro, "r.y4m"), *TINY, *nowhere),
                ro, "cannot write in folder")
    clean_error(run("decode", encoded[0], os.path.join(missing, "d.y4m"), *nowhere), missing, "does not exist")
    clean_error(run("make-tiny", os.path.join(ro, "w")), ro, "cannot write in folder")
    assert not os.path.exists(tmp_path / "o.gvcc")


def test_sigterm_while_writing_leaves_no_partial_file(tmp_path):
    """The write paths as gvcc's SIGTERM handler unwinds them: a signal after 3 frames leaves nothing behind."""

    class Signalling(np.ndarray):
        def __iter__(self):
            for i in range(len(self)):
                if i == 3:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield np.asarray(self[i])

    frames = synthetic_clip(6, 16, 16).view(Signalling)
    previous = signal.signal(signal.SIGTERM, gvcc._terminate)
    try:
        for name in ("out.y4m", "out.mp4", "frames"):
            with pytest.raises(gvcc.Terminated):
                media.write_video(str(tmp_path / name), frames, 16)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert os.listdir(tmp_path) == []


def test_sigterm_ends_the_cli_cleanly(clip, tiny_weights, tmp_path):
    """SIGTERM once gvcc has its handler (here while it waits for stdin): exit 143, one line, no files left."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "gvcc.py"), "encode", "-", str(tmp_path / "o.gvcc"),
                             "--recon", str(tmp_path / "r"), "--weights", tiny_weights, *TINY],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdin.write(open(clip, "rb").read()[:100])
    proc.stdin.flush()
    deadline = time.time() + 120
    while time.time() < deadline:           # the caught-signal mask shows when the handler is installed
        status = open(f"/proc/{proc.pid}/status").read()
        if int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16) & (1 << (signal.SIGTERM - 1)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("gvcc: terminated")
    assert os.listdir(tmp_path) == []


# ==================================================================================================
# Inputs by content
# ==================================================================================================

def _ffmpeg(frames, fps, path, *codec):
    import imageio_ffmpeg
    n, h, w, _ = frames.shape
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                    "-s", f"{w}x{h}", "-framerate", str(fps), "-i", "-", *codec, path],
                   input=frames.tobytes(), check=True)


def test_inputs_are_read_by_content(clip, tmp_path):
    ref = media.read_video(clip).frames
    _ffmpeg(ref, 16, str(tmp_path / "clip.avi"), "-c:v", "rawvideo", "-pix_fmt", "bgr24")
    _ffmpeg(ref, 16, str(tmp_path / "clip.mov"), "-c:v", "png")
    os.mkdir(tmp_path / "seq")
    for i, frame in enumerate(ref):                         # numbered from 1: the pattern finds its start
        media.Image.fromarray(frame).save(tmp_path / "seq" / f"{i + 1:06d}.png")
    for k, name in enumerate(("clip.avi", "clip.mov", os.path.join("seq", "%06d.png"))):
        res = gvcc_cli("eval", clip, str(tmp_path / name), "--json", str(tmp_path / f"{k}.json"))
        assert "5 frames" in res.stdout, res.stderr
        report = json.load(open(tmp_path / f"{k}.json"))
        assert [f["psnr"] for f in report["per_frame"]] == [None] * 5, name            # identical: inf -> null
    # one image is a one-frame video
    media.write_video(str(tmp_path / "first"), ref[:1], 16)
    res = gvcc_cli("eval", str(tmp_path / "first"), str(tmp_path / "seq" / "000001.png"))
    assert "1 frames" in res.stdout and re.search(r"\n\s+0\s+inf", res.stdout)
    # y4m on stdin
    res = run("eval", "-", clip, "--json", str(tmp_path / "stdin.json"), stdin=open(clip, "rb").read())
    assert res.returncode == 0, res.stderr
    assert [f["psnr"] for f in json.load(open(tmp_path / "stdin.json"))["per_frame"]] == [None] * 5
    clean_error(run("eval", "-", clip, stdin=b"not a y4m"), "stdin", "YUV4MPEG2")


def test_encode_from_stdin_and_a_pattern_gives_the_same_stream(clip, encoded, tiny_weights, tmp_path):
    os.mkdir(tmp_path / "seq")
    media.write_video(str(tmp_path / "seq"), media.read_video(clip).frames, 16)    # 000000.png ...
    res = run("encode", "-", str(tmp_path / "a.gvcc"), "--weights", tiny_weights, *TINY, stdin=open(clip, "rb").read())
    assert res.returncode == 0, res.stderr
    res = gvcc_cli("encode", str(tmp_path / "seq" / "%06d.png"), str(tmp_path / "b.gvcc"), "--weights", tiny_weights,
                   *TINY)
    want = open(encoded[0], "rb").read()
    assert open(tmp_path / "a.gvcc", "rb").read() == want and open(tmp_path / "b.gvcc", "rb").read() == want


def test_untagged_y4m_is_limited_range_as_ffmpeg_reads_it(clip, tmp_path):
    ref = media.read_video(clip).frames
    planes = b"".join(b"FRAME\n" + b"".join(p.tobytes() for p in media.rgb_to_yuv(f, limited=True)) for f in ref)
    head = b"YUV4MPEG2 W16 H16 F16:1 Ip A1:1 C420jpeg"
    (tmp_path / "untagged.y4m").write_bytes(head + b"\n" + planes)              # limited planes, no XCOLORRANGE
    (tmp_path / "tagged.y4m").write_bytes(head + b" XCOLORRANGE=LIMITED\n" + planes)

    def psnr(*args):
        res = gvcc_cli("eval", clip, *args, "--json", str(tmp_path / "r.json"), "-y")
        return json.load(open(tmp_path / "r.json"))["sequence"]["psnr"], res.stdout + res.stderr
    untagged, said = psnr(str(tmp_path / "untagged.y4m"))
    assert "no colour range tag, read as limited" in said and "--full-range if it is not" in said
    assert psnr(str(tmp_path / "tagged.y4m"), "--full-range")[0] == untagged           # the tag wins
    assert psnr(str(tmp_path / "untagged.y4m"), "--full-range")[0] < untagged - 5       # the 16-235 shift shows
    assert "XCOLORRANGE" in gvcc_cli("encode", "--help").stdout


def test_truncated_mp4_warns_and_says_how_many_frames_were_coded(tiny_weights, tmp_path):
    import imageio_ffmpeg
    full, cut = str(tmp_path / "full.mp4"), str(tmp_path / "cut.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc=size=16x16:rate=16,noise=alls=80:allf=t", "-frames:v", "40", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", full], check=True)                # the index first, as on the web
    data = open(full, "rb").read()
    open(cut, "wb").write(data[: len(data) * 6 // 10])
    res = gvcc_cli("encode", cut, str(tmp_path / "o.gvcc"), "--weights", tiny_weights, *TINY, "--gop", "33")
    n = bitstream.read_header(open(tmp_path / "o.gvcc", "rb").read()).frames
    assert 0 < n < 40 and "about 40 frames" in res.stderr
    assert "looks truncated" in res.stderr and f"coded the {n} frames that could be read" in res.stderr


# ==================================================================================================
# Rate targets
# ==================================================================================================

def file_bits(stream, **changes):
    """Bits of the file a stream's header makes with some fields changed (no stills, empty residuals)."""
    import dataclasses
    hdr = dataclasses.replace(bitstream.read_header(open(stream, "rb").read()), **changes)
    return 8 * gvcc.stream_bytes(hdr, [], [0] * len(bitstream.gop_layout(hdr)))


def test_bpp_targets_the_whole_file(clip, encoded, tiny_weights, tmp_path):
    out, pixels = str(tmp_path / "r.gvcc"), 16 * 16 * 5
    target = file_bits(encoded[0], K=64, M=10, M_tail=10) / pixels         # M = 10 of 64 fits exactly
    res = gvcc_cli("encode", clip, out, "--weights", tiny_weights, *FAST, "-K", "64", "--bpp", repr(target))
    data = open(out, "rb").read()
    hdr = bitstream.read_header(data)
    assert hdr.M >= 10 and 8 * len(data) <= target * pixels
    assert file_bits(out, M=hdr.M + 1, M_tail=hdr.M + 1) > target * pixels        # the largest M that fits
    assert f"M = {hdr.M}: file {8 * len(data) / pixels:.5f} bpp" in res.stderr       # predicted = written
    kbps = 8 * len(data) * 16 / 5 / 1000
    gvcc_cli("encode", clip, out, "--weights", tiny_weights, *FAST, "-K", "64", "--kbps", repr(kbps), "-y")
    assert open(out, "rb").read() == data                   # the same rate in kbit/s picks the same M


def test_rate_targets_that_cannot_be_met_say_why(clip, encoded, tiny_weights, tmp_path):
    out, pixels = str(tmp_path / "r.gvcc"), 16 * 16 * 5
    header = len(bitstream.write_header(bitstream.read_header(open(encoded[0], "rb").read())))
    smallest = file_bits(encoded[0], M=1, M_tail=1)
    enc = ["encode", clip, out, "--weights", tiny_weights, *FAST]
    clean_error(run(*enc, "--bpp", repr(0.9 * 8 * header / pixels)), "cannot be met",
                f"the header alone is {header} bytes = {8 * header / pixels:.5f} bpp")
    clean_error(run(*enc, "--bpp", repr((smallest - 1) / pixels)), "cannot be met",
                f"M = 1 make {smallest // 8} bytes = {smallest / pixels:.5f} bpp")
    clean_error(run(*enc, "-M", "8", "--bpp", "0.1"), "--bpp", "-M", status=1)
    res = gvcc_cli(*enc, "--bpp", "50", "--quiet")
    assert "--bpp 50 cannot be met: M is capped at K = 16" in res.stderr
    assert bitstream.read_header(open(out, "rb").read()).M == 16
    assert os.listdir(tmp_path) == ["r.gvcc"]


def test_nan_and_inf_are_refused_for_every_float_option(clip, tmp_path):
    for option, value in (("--g-scale", "nan"), ("--shift", "inf"), ("--bpp", "-inf"), ("--kbps", "NaN")):
        clean_error(run("encode", clip, str(tmp_path / "o.gvcc"), f"{option}={value}"), option, value, status=1)


# ==================================================================================================
# No traceback, and say what happened
# ==================================================================================================

@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a CPU-only torch")
def test_unusable_devices_are_one_line_errors(clip, encoded, tmp_path):
    clean_error(run("encode", clip, str(tmp_path / "o.gvcc"), *TINY, "--device", "cuda"), "--device cuda", "no CUDA")
    clean_error(run("decode", encoded[0], str(tmp_path / "o.y4m"), "--device", "cuda:1"), "cuda:1", "no CUDA")
    clean_error(run("decode", encoded[0], str(tmp_path / "o.y4m"), "--device", "bogus"), "not a torch device")


def test_decode_says_what_it_wrote_and_the_md5_verify_takes(encoded, tiny_weights, tmp_path):
    stream, recon, _ = encoded
    res = gvcc_cli("decode", stream, str(tmp_path / "d"), "--weights", tiny_weights, "--quiet")
    md5 = media.frames_md5(media.read_video(str(tmp_path / "d")).frames)             # PNG frames: lossless
    assert res.stdout == "" and f"5 frames 16x16 at 16 fps" in res.stderr and f"md5 {md5}" in res.stderr
    res = gvcc_cli("decode", stream, str(tmp_path / "e"), "--weights", tiny_weights, "--quiet", "--verify", md5)
    assert res.stdout == f"OK {md5}\n"


def test_version():
    res = gvcc_cli("--version")
    assert res.stdout.strip() == f"gvcc {gvcc.__version__} (bitstream format version {bitstream.VERSION})"


def test_eval_mean_is_not_inf_when_one_frame_is_identical(clip, tmp_path):
    ref = media.read_video(clip).frames
    dec = np.clip(ref.astype(int) + np.random.default_rng(1).integers(-9, 10, ref.shape), 0, 255).astype(np.uint8)
    dec[0] = ref[0]
    media.write_video(str(tmp_path / "dec"), dec, 16)                               # PNG frames: lossless
    res = gvcc_cli("eval", clip, str(tmp_path / "dec"), "--json", str(tmp_path / "r.json"))
    report = json.load(open(tmp_path / "r.json"))
    psnrs = [f["psnr"] for f in report["per_frame"]]
    assert psnrs[0] is None and all(20 < p < media.PSNR_CAP for p in psnrs[1:])
    mean = np.mean([media.PSNR_CAP] + psnrs[1:])
    assert report["sequence"]["psnr"] == pytest.approx(mean, abs=1e-9)
    row = next(line for line in res.stdout.splitlines() if line.split()[:1] == ["mean"])
    assert "inf" not in row and f"{mean:.2f}" in row
    assert f"the means count it as {media.PSNR_CAP:g} dB" in res.stdout
