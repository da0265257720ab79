"""The command line as a user runs it: encode, decode, info, determinism, and clean failures."""
import os
import re
import subprocess
from fractions import Fraction

import numpy as np
import pytest

import golden_cases
import media
from golden_cases import COMMON, gvcc_cli, synthetic_clip

TINY = ["--model", "tiny-t2v", *COMMON]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("clip") / "clip.y4m")
    media.write_video(path, synthetic_clip(), Fraction(16, 1))
    return path


@pytest.fixture(scope="module")
def encoded(clip, tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc")
    stream, recon = str(out / "a.gvcc"), str(out / "recon.y4m")
    gvcc_cli("encode", clip, stream, "--weights", tiny_weights, "--recon", recon, *TINY)
    return stream, recon


def test_encode_twice_gives_identical_bytes(clip, tiny_weights, encoded, tmp_path):
    again = str(tmp_path / "b.gvcc")
    gvcc_cli("encode", clip, again, "--weights", tiny_weights, *TINY)
    assert open(encoded[0], "rb").read() == open(again, "rb").read()


def test_decoder_reproduces_the_encoders_reconstruction(encoded, tiny_weights, tmp_path):
    stream, recon = encoded
    out = str(tmp_path / "dec.y4m")
    gvcc_cli("decode", stream, out, "--weights", tiny_weights, "--quiet")
    dec, rec = media.read_video(out), media.read_video(recon)
    assert dec.frames.shape == (10, 24, 40, 3) and dec.fps == Fraction(16, 1)
    assert np.array_equal(dec.frames, rec.frames)


def test_verify_md5(encoded, tiny_weights, tmp_path):
    stream, _ = encoded
    png = str(tmp_path / "frames")
    gvcc_cli("decode", stream, png, "--weights", tiny_weights, "--quiet")
    want = media.frames_md5(media.read_video(png).frames)
    ok = gvcc_cli("decode", stream, str(tmp_path / "x.y4m"), "--weights", tiny_weights, "--quiet", "--verify", want)
    assert ok.stdout.strip() == f"OK {want}"
    bad = gvcc_cli("decode", stream, str(tmp_path / "y.y4m"), "--weights", tiny_weights, "--quiet",
                   "--verify", "0" * 32, check=False)
    assert bad.returncode == 1 and "md5" in bad.stderr and not os.path.exists(tmp_path / "y.y4m")


def test_info_reports_header_and_rates_that_add_up(encoded):
    stream, _ = encoded
    out = gvcc_cli("info", stream).stdout
    size = os.path.getsize(stream)
    assert f"{size} bytes" in out and "tiny-t2v" in out and "a red square" not in out
    assert "kbps at 16 fps" in out and "divide-by-3" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and "-" in line.split()[1]]
    assert len(rows) == 2                                   # 10 frames in GOPs of 9: 0-8, 9-9
    header = int(out.split("header ")[1].split()[0])
    assert header + sum(int(r[6]) for r in rows) == size


def test_rate_target_picks_m(clip, tiny_weights, tmp_path):
    out = gvcc_cli("encode", clip, str(tmp_path / "r.gvcc"), "--weights", tiny_weights, "--model", "tiny-t2v",
                   "-K", "64", "--steps", "5", "--tail-steps", "2", "--gop", "9", "--bpp", "0.2", "--quiet")
    assert "M = " in out.stderr
    m = int(re.search(r"M = (\d+)", out.stderr).group(1))
    assert 1 <= m <= 64


@pytest.mark.parametrize("args,message", [
    (["-M", "0"], "-M"),
    (["-M", "65"], "-M"),
    (["--gop", "10"], "4k+1"),
    (["--steps", "2", "--tail-steps", "3"], "tail"),
    (["--model", "nope"], "unknown model"),
    (["--mode", "i2v", "--model", "tiny-t2v"], "t2v model"),
])
def test_bad_parameters_fail_cleanly(clip, tiny_weights, tmp_path, args, message):
    out = str(tmp_path / "o.gvcc")
    base = ["--model", "tiny-t2v", "-K", "64", "-M", "4", "--steps", "5", "--tail-steps", "2", "--gop", "9"]
    res = gvcc_cli("encode", clip, out, "--weights", tiny_weights, *base, *args, check=False)
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith("gvcc: error:") and message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not os.path.exists(out)


def test_missing_weights_and_inputs_fail_cleanly(clip, tmp_path):
    out = str(tmp_path / "o.gvcc")
    res = gvcc_cli("encode", clip, out, "--weights", str(tmp_path / "none"), *TINY, check=False)
    assert res.returncode == 1 and "missing" in res.stderr and "Traceback" not in res.stderr
    res = gvcc_cli("encode", str(tmp_path / "nothere.mp4"), out, *TINY, check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert not os.path.exists(out)


def test_damaged_stream_is_rejected_without_output(encoded, tiny_weights, tmp_path):
    data = open(encoded[0], "rb").read()
    for name, damaged in [("trunc", data[: len(data) - 3]), ("flip", data[:-8] + bytes([data[-8] ^ 0x10]) + data[-7:]),
                          ("magic", b"XXXX" + data[4:])]:
        path, out = str(tmp_path / f"{name}.gvcc"), str(tmp_path / f"{name}.y4m")
        open(path, "wb").write(damaged)
        res = gvcc_cli("decode", path, out, "--weights", tiny_weights, check=False)
        assert res.returncode == 1 and res.stderr.startswith("gvcc: error:") and "Traceback" not in res.stderr
        assert not os.path.exists(out)


def test_other_weights_are_refused_by_fingerprint(encoded, tmp_path):
    other = str(tmp_path / "w")
    gvcc_cli("make-tiny", other)
    path = os.path.join(other, "tiny_t2v.safetensors")
    from safetensors.torch import load_file, save_file
    w = load_file(path)
    w["head.head.bias"] = w["head.head.bias"] + 1
    save_file(w, path)
    res = gvcc_cli("decode", encoded[0], str(tmp_path / "o.y4m"), "--weights", other, check=False)
    assert res.returncode == 1 and "fingerprint" in res.stderr


def test_eval_reports_quality_and_rate_per_stream_gop(clip, encoded, tmp_path):
    import json
    stream, recon = encoded
    report = str(tmp_path / "eval.json")
    out = gvcc_cli("eval", clip, recon, "--bitstream", stream, "--json", report).stdout
    assert "psnr" in out and "bpp" in out
    result = json.load(open(report))
    assert len(result["per_frame"]) == 10 and len(result["per_gop"]) == 2      # the stream's GOPs of 9
    assert abs(result["rate"]["bits"] - 8 * os.path.getsize(stream)) == 0


def test_shift_codebook_round_trip(clip, tiny_weights, encoded, tmp_path):
    # generator 2: header field 2, the decoder rebuilds the encoder's innovations exactly
    stream, recon, dec = (str(tmp_path / n) for n in ("s.gvcc", "recon.y4m", "dec.y4m"))
    gvcc_cli("encode", clip, stream, "--weights", tiny_weights, "--recon", recon, "--codebook", "shift", *TINY)
    assert "generator          2" in gvcc_cli("info", stream).stdout
    assert "generator          1" in gvcc_cli("info", encoded[0]).stdout
    gvcc_cli("decode", stream, dec, "--weights", tiny_weights, "--quiet")
    assert np.array_equal(media.read_video(dec).frames, media.read_video(recon).frames)
    # same rate as the i.i.d. codebook at the same K and M, different atoms
    assert os.path.getsize(stream) == os.path.getsize(encoded[0])
    assert not np.array_equal(media.read_video(recon).frames, media.read_video(encoded[1]).frames)


def test_shift_codebook_needs_k_at_most_d(clip, tiny_weights, tmp_path):
    # the tiny clip is 40x24, padded to 48x32: D = 16 * 4 * 6 = 384 shifts
    out = str(tmp_path / "o.gvcc")
    base = ["--model", "tiny-t2v", "-M", "4", "--steps", "5", "--tail-steps", "2", "--gop", "9", "--quiet"]
    res = gvcc_cli("encode", clip, out, "--weights", tiny_weights, *base, "--codebook", "shift", "-K", "385",
                   check=False)
    assert res.returncode == 1 and res.stderr.startswith("gvcc: error:") and "(W/8) = 384" in res.stderr
    assert not os.path.exists(out)
    gvcc_cli("encode", clip, out, "--weights", tiny_weights, *base, "--codebook", "shift", "-K", "384")
