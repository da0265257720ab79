"""The decoder against hostile or damaged streams, through the command line (issue 11): forged and damaged
still frames, resource limits, frame rates the output cannot hold, `info` on any terminal, a late Ctrl-C.

Streams are valid streams of the tiny models rewritten with bitstream.write_stream, so their framing and CRCs
are right and only the forged part is wrong, as a hostile or buggy encoder writes them."""
import dataclasses
import os
import subprocess
import sys

import pytest

import bitstream
import gvcc
from golden_cases import ROOT, gvcc_cli


def rewrite(src, dst, header_changes=None, stills=None):
    """Copy stream src to dst with header fields changed and/or GOP 0's stills replaced."""
    with open(src, "rb") as fh:
        hdr, gops = bitstream.read_stream(fh.read())
    hdr = dataclasses.replace(hdr, **(header_changes or {}))
    if stills is not None:
        gops[0] = dataclasses.replace(gops[0], stills=stills)
    with open(dst, "wb") as fh:
        fh.write(bitstream.write_stream(hdr, gops))
    return dst


def still_of(path, i=0):
    with open(path, "rb") as fh:
        return bytes(bitstream.open_stream(fh.read())[0].stills[i])


def forge_ispe(avif, width, height):
    """The AVIF with the size in its ispe box (the image spatial extents property) replaced."""
    at = avif.index(b"ispe") + 8                       # after the box type and the version/flags word
    return avif[:at] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + avif[at + 8:]


def decode(stream, tmp_path, *extra):
    out = str(tmp_path / "out.y4m")
    return gvcc_cli("decode", stream, out, *extra, check=False), out


def assert_one_line_error(res, out, *words):
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gvcc: error:"), res.stderr      # no warnings, no traceback
    assert all(w in lines[0] for w in words), lines[0]
    assert not os.path.exists(out) and not [n for n in os.listdir(os.path.dirname(out)) if ".part" in n]


@pytest.mark.parametrize("size", [1024, 9460, 16000])
def test_forged_still_size_is_refused_before_decoding(tiny_streams, tiny_weights, tmp_path, size):
    """1024x1024 once decoded at 2.4 GB; 9460 printed two DecompressionBombWarnings; 16000 was a traceback."""
    forged = forge_ispe(still_of(tiny_streams["i2v"]), size, size)
    stream = rewrite(tiny_streams["i2v"], str(tmp_path / "s.gvcc"), stills=[forged])
    res, out = decode(stream, tmp_path, "--weights", tiny_weights)
    assert_one_line_error(res, out, "GOP 0, still 0")
    assert "decode step" not in res.stderr


def main(capsys, *args):
    """gvcc.main in process (the CLI's code without an interpreter start-up): (exit status, stderr)."""
    rc = gvcc.main(list(args))
    return rc, capsys.readouterr().err


def test_damaged_stills_are_one_line_errors(tiny_streams, tiny_weights, tmp_path, capsys):
    still = still_of(tiny_streams["flf2v"], 1)
    cases = {"truncated": still[:len(still) // 2], "garbage": b"\x00" * 64,
             "no primary item": still.replace(b"pitm", b"Pitm", 1)}        # the "Missing or empty image item"
    out = str(tmp_path / "o.y4m")
    for name, bad in cases.items():
        stream = rewrite(tiny_streams["flf2v"], str(tmp_path / f"{name}.gvcc"),
                         stills=[still_of(tiny_streams["flf2v"], 0), bad])
        rc, err = main(capsys, "decode", stream, out, "--weights", tiny_weights)
        assert rc == 1 and err.startswith("gvcc: error: GOP 0, still 1: ") and "AVIF" in err, err
        assert len(err.splitlines()) == 1 and " at 0x" not in err
        assert not os.path.exists(out)


def test_resource_limits(tiny_streams, tiny_weights, tmp_path, capsys):
    stream = tiny_streams["t2v"]
    cases = [(["--max-frames", "9"], ["10 frames exceed --max-frames 9"]),
             (["--max-pixels", "959"], ["40x24 exceed --max-pixels 959"]),
             (["--max-memory", "0.001"], ["decoding needs about", "GiB", "--max-memory allows 0.00 GiB"])]
    out = str(tmp_path / "o.y4m")
    for extra, words in cases:
        rc, err = main(capsys, "decode", stream, out, "--weights", tiny_weights, "--quiet", *extra)
        assert rc == 1 and err.startswith("gvcc: error:") and all(w in err for w in words), err
        assert not os.path.exists(out)
    # A forged but legal header: 4096x4096 frames (the format's limit), refused by default.
    big = rewrite(stream, str(tmp_path / "big.gvcc"), dict(width=4096, height=4096))
    assert gvcc.main(["decode", big, out, "--weights", tiny_weights]) == 1
    assert "--max-pixels 2088960" in capsys.readouterr().err
    # Raised limits let it through to the memory check (the tiny VAE at 4096x4096 still needs ~30 GiB).
    assert gvcc.main(["decode", big, out, "--weights", tiny_weights, "--max-pixels", str(4096 * 4096),
                      "--max-memory", "1"]) == 1
    assert "decoding needs about" in capsys.readouterr().err


def test_decode_memory_estimate_grows_with_the_header(tiny_weights):
    spec = gvcc.MODELS["tiny-t2v"]
    paths = gvcc.model_paths(spec, tiny_weights)
    hdr = bitstream.Header(mode="t2v", model="tiny-t2v", model_fingerprint=0, generator=1, src_width=40,
                           src_height=24, width=40, height=24, frames=10, fps_num=16, fps_den=1, gop_frames=9,
                           steps=4, tail_steps=1, g_scale_q=3000, shift_q=3000, K=64, M=4, M_tail=4, tail_frames=0,
                           seed=1, still_quality=0, residual=0, prompt="")
    small, parts = gvcc.decode_memory(spec, hdr, paths, "fp32")
    assert set(parts) == {"weights", "networks' activations", "output frames"} and small == sum(parts.values())
    assert parts["weights"] == max(gvcc.weight_bytes(paths, "fp32"))
    more_frames, _ = gvcc.decode_memory(spec, dataclasses.replace(hdr, frames=1000), paths, "fp32")
    assert more_frames == small             # decoded GOPs are written out one by one: clip length costs nothing
    bigger, _ = gvcc.decode_memory(spec, dataclasses.replace(hdr, width=400, height=240), paths, "fp32")
    assert bigger - small > 50 * (small - parts["weights"])      # 62 times the padded pixels


@pytest.mark.parametrize("fps,output,words", [
    ((1, 0xFFFFFFFF), "o.mp4", ".mp4 cannot hold 10 frames at 1/4294967295 fps"),
    ((1, 65536), "o.mp4", ".mp4 cannot hold"),
    ((1001, 1), "o.y4m", "frame rate 1001 is out of range"),
])
def test_frame_rate_the_output_cannot_hold_is_refused_before_the_decode(tiny_streams, tiny_weights, tmp_path, fps,
                                                                        output, words, capsys):
    stream = rewrite(tiny_streams["t2v"], str(tmp_path / "s.gvcc"), dict(fps_num=fps[0], fps_den=fps[1]))
    out = str(tmp_path / output)
    rc, err = main(capsys, "decode", stream, out, "--weights", tiny_weights)
    assert rc == 1 and err.startswith("gvcc: error:") and words in err and len(err.splitlines()) == 1, err
    assert "decode step" not in err and not os.path.exists(out)     # refused before the first sampler step


def test_info_prints_a_non_ascii_prompt_on_any_terminal(tiny_streams):
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "gvcc.py"), "info", tiny_streams["t2v"]],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert "'un chat \\u732b'" in res.stdout
    utf8 = gvcc_cli("info", tiny_streams["t2v"])
    assert "'un chat \u732b'" in utf8.stdout


def test_ctrl_c_after_the_output_is_published_leaves_no_traceback(tiny_streams):
    """An interrupt that lands while the interpreter runs its exit hooks (here, sent by one) is ignored."""
    script = os.path.join(ROOT, "gvcc.py")
    code = ("import atexit, os, runpy, signal, sys, time; "
            "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.5))); "
            "script = sys.argv[1]; sys.argv = [script, 'info', sys.argv[2]]; sys.path.insert(0, os.path.dirname(script)); "
            "runpy.run_path(script, run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code, script, tiny_streams["t2v"]], capture_output=True, text=True)
    assert res.returncode == 0 and "Traceback" not in res.stderr and "KeyboardInterrupt" not in res.stderr, \
        res.stderr
