"""The model-call schedule (header dit_period, `encode --speed`): the decoder does exactly what the encoder did.

Every preset decodes to the encoder's reconstruction bit for bit in all three modes; the schedule travels in the
header and `info` prints it; a forged schedule field is refused with one line; the DiT runs exactly as often as
the schedule says; and a skipped step's velocity keeps the last call's clean estimate."""
import dataclasses
import os
import subprocess
import sys
import zlib
from fractions import Fraction

import numpy as np
import pytest
import torch

import bitstream
import gvcc
import media
from golden_cases import synthetic_clip

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["-K", "64", "-M", "4", "--gop", "9", "--seed", "5", "--quiet"]
MODE_ARGS = {"t2v": ["--model", "tiny-t2v"],
             "i2v": ["--model", "tiny-i2v", "--mode", "i2v", "--m-tail", "8", "--still-quality", "40"],
             "flf2v": ["--model", "tiny-flf2v", "--mode", "flf2v", "--still-quality", "40"]}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("clip") / "clip.y4m")
    media.write_video(path, synthetic_clip(13, 24, 16), Fraction(16, 1))
    return path


def count_calls(monkeypatch):
    calls = []
    real = gvcc.make_velocity

    def counting(codec, y=None, clip_fea=None):
        velocity = real(codec, y, clip_fea)

        def counted(x, t):
            calls.append(t)
            return velocity(x, t)
        return counted
    monkeypatch.setattr(gvcc, "make_velocity", counting)
    return calls


@pytest.mark.parametrize("speed", list(gvcc.SPEEDS))
@pytest.mark.parametrize("mode", ["t2v", "i2v", "flf2v"])
def test_every_preset_decodes_to_the_encoders_reconstruction(clip, tiny_weights, tmp_path, monkeypatch, mode, speed):
    stream, recon, out = (str(tmp_path / n) for n in ("s.gvcc", "recon.y4m", "dec.y4m"))
    calls = count_calls(monkeypatch)
    assert gvcc.main(["encode", clip, stream, "--weights", tiny_weights, "--recon", recon, "--speed", speed,
                      *COMMON, *MODE_ARGS[mode]]) == 0
    with open(stream, "rb") as fh:
        hdr = bitstream.read_header(fh.read())
    preset = gvcc.SPEEDS[speed]
    assert (hdr.dit_period, hdr.steps) == (preset["dit_period"], preset.get("steps", 20))
    settings = gvcc.settings_of(hdr)
    n_gops = bitstream.num_gops(hdr)
    assert len(calls) == n_gops * settings.model_calls          # the encoder calls the DiT as the schedule says
    calls.clear()
    assert gvcc.main(["decode", stream, out, "--weights", tiny_weights, "--quiet"]) == 0
    assert len(calls) == n_gops * settings.model_calls          # and so does the decoder
    assert np.array_equal(media.read_video(out).frames, media.read_video(recon).frames)


def test_the_presets_call_the_model_as_documented():
    def calls(speed):
        preset = gvcc.SPEEDS[speed]
        s = gvcc.SamplerSettings(steps=preset.get("steps", 20), tail_steps=preset.get("tail_steps", 3), g_scale=3.0,
                                 shift=3.0, K=64, seed=0, dit_period=preset["dit_period"])
        return [k for k in range(s.steps) if s.calls_model(k)]
    assert calls("paper") == list(range(20))
    assert calls("fast") == [0, 3, 6, 9, 12, 15, 17, 18, 19]
    assert calls("fastest") == [0, 2, 4, 6, 7]


def test_a_skipped_step_keeps_the_last_clean_estimate():
    # closed form: with the model called at step 0 only (period > SDE steps) every SDE step's x0_hat is step 0's
    settings = gvcc.SamplerSettings(steps=5, tail_steps=1, g_scale=3.0, shift=3.0, K=16, seed=1, dit_period=8)
    seen = []

    def velocity(x, t):
        return x * 0.5 + t

    def choose(j, f, x0_hat_f):
        seen.append(x0_hat_f.clone())
        return [1, 2], [0, 1]
    gvcc.run_gop(velocity, settings, (16, 1, 2, 2), choose)
    assert len(seen) == 4
    for x0_hat in seen[1:]:
        assert torch.allclose(x0_hat, seen[0], rtol=1e-5, atol=1e-5)


def test_info_prints_the_schedule_and_a_forged_schedule_is_refused(clip, tiny_weights, tmp_path):
    stream = str(tmp_path / "s.gvcc")
    assert gvcc.main(["encode", clip, stream, "--weights", tiny_weights, "--speed", "fast", *COMMON,
                      *MODE_ARGS["t2v"]]) == 0
    info = subprocess.run([sys.executable, os.path.join(ROOT, "gvcc.py"), "info", stream], capture_output=True,
                          text=True, check=True).stdout
    assert "dit_period         3" in info and "9 model calls per GOP of 20 steps" in info
    with open(stream, "rb") as fh:
        data = bytearray(fh.read())
    hdr = bitstream.read_header(bytes(data))
    for forged in (0, 9, 255):
        bad = bytearray(bitstream.write_header(dataclasses.replace(hdr, dit_period=1)))
        bad[67] = forged
        length = len(bad) - 4
        bad[length:] = zlib.crc32(bytes(bad[:length])).to_bytes(4, "big")
        path = tmp_path / f"forged{forged}.gvcc"
        path.write_bytes(bytes(bad) + bytes(data[len(bad):]))
        res = subprocess.run([sys.executable, os.path.join(ROOT, "gvcc.py"), "decode", str(path),
                              str(tmp_path / "x.y4m"), "--weights", tiny_weights], capture_output=True, text=True)
        assert res.returncode == 1 and res.stderr.count("\n") == 1
        assert "dit_period" in res.stderr and "Traceback" not in res.stderr
        assert not os.path.exists(tmp_path / "x.y4m")


def test_dit_period_overrides_the_preset_and_travels_in_the_header(clip, tiny_weights, tmp_path, monkeypatch):
    stream, recon, out = (str(tmp_path / n) for n in ("s.gvcc", "recon.y4m", "dec.y4m"))
    calls = count_calls(monkeypatch)
    assert gvcc.main(["encode", clip, stream, "--weights", tiny_weights, "--recon", recon, "--speed", "fast",
                      "--dit-period", "2", *COMMON, *MODE_ARGS["t2v"]]) == 0
    with open(stream, "rb") as fh:
        hdr = bitstream.read_header(fh.read())
    assert (hdr.dit_period, hdr.steps, hdr.tail_steps) == (2, 20, 3)
    assert len(calls) == bitstream.num_gops(hdr) * 12              # steps 0, 2, ..., 16 and 17, 18, 19
    calls.clear()
    assert gvcc.main(["decode", stream, out, "--weights", tiny_weights, "--quiet"]) == 0
    assert len(calls) == bitstream.num_gops(hdr) * 12
    assert np.array_equal(media.read_video(out).frames, media.read_video(recon).frames)
