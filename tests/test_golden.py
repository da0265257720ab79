"""Golden vectors (see tests/golden_cases.py for the three classes: exact everywhere, tolerance, same machine).

A failure of an exact check means the format or the generator changed; a tolerance failure means the decoder
computes something else; a same-machine failure means gvcc lost its determinism. If a change of the stream or of
the decoded pixels is deliberate (a format version or a method change), regenerate with
`python tests/golden_cases.py --write` and say why in the commit. CI runs this file twice: natively, and under
ATEN_CPU_CAPABILITY=default with oneDNN limited to AVX2, so it is known to hold on a CPU unlike the reference.
"""
import json
import os
import sys

import pytest

import golden_cases

sys.path.insert(0, os.path.join(golden_cases.ROOT, "bench"))

GOLDEN = json.load(open(golden_cases.GOLDEN))
CASES = sorted(golden_cases.CASES)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("golden"))


def test_cases_are_the_committed_ones():
    assert set(GOLDEN) == set(CASES)
    for name in CASES:
        assert GOLDEN[name]["args"] == golden_cases.COMMON + golden_cases.CASES[name], \
            f"{name}: the case's arguments changed: regenerate on purpose"


@pytest.mark.parametrize("name", CASES)
def test_committed_stream_parses_exactly(name):
    """Exact everywhere: the committed file, its header, its symbols, and write_stream's bytes for them."""
    import bitstream
    with open(golden_cases.stream_path(name), "rb") as fh:
        data = fh.read()
    want = GOLDEN[name]
    assert (len(data), golden_cases.md5(data)) == (want["stream_bytes"], want["stream_md5"])
    hdr, gops = bitstream.read_stream(data)
    assert golden_cases.header_fields(hdr) == want["header"]
    assert golden_cases.symbols_md5(gops) == want["symbols_md5"]
    assert bitstream.write_stream(hdr, gops) == data


@pytest.mark.parametrize("name", CASES)
def test_committed_stream_decodes_within_tolerance(name, workdir, tiny_weights, capsys):
    """Any machine: the committed stream decodes to the reference frames within DECODE_TOLERANCE; the md5s
    are asserted where the platform is the reference platform, and reported elsewhere."""
    import media
    want = GOLDEN[name]
    frames = golden_cases.decode(golden_cases.stream_path(name), workdir, tiny_weights, f"{name}_committed")
    ref = golden_cases.read_frames_png(golden_cases.reference_path(name), want["header"]["height"])
    assert frames.shape == ref.shape
    worst, psnr = golden_cases.pixel_difference(frames, ref)
    tol = golden_cases.DECODE_TOLERANCE
    with capsys.disabled():
        print(f"\n{name}: committed stream decoded here vs reference frames: max abs {worst}, PSNR {psnr:.2f} dB")
    assert worst <= tol["max_abs"] and psnr >= tol["psnr_db"], (worst, psnr)
    if golden_cases.platform() == want["platform"]:
        assert media.frame_md5s(frames) == want["frame_md5"]
        assert media.frames_md5(frames) == want["decoded_md5"]


@pytest.mark.parametrize("name", CASES)
def test_same_machine_bit_exact(name, workdir, tiny_weights):
    """Same machine: encoding twice gives the same bytes; decode equals `encode --recon`, with the threads the
    encoder had and with one thread. On the reference platform the stream is the committed one."""
    import media
    first = golden_cases.encode(name, workdir, tiny_weights, os.path.join(workdir, f"{name}_a.gvcc"),
                                recon=os.path.join(workdir, f"{name}_a_recon"))
    second = golden_cases.encode(name, workdir, tiny_weights, os.path.join(workdir, f"{name}_b.gvcc"))
    assert first == second, "two encodes of the same input on the same machine differ"
    recon = media.read_video(os.path.join(workdir, f"{name}_a_recon")).frames
    stream = os.path.join(workdir, f"{name}_a.gvcc")
    decoded = golden_cases.decode(stream, workdir, tiny_weights, f"{name}_a_decoded")
    assert media.frames_md5(decoded) == media.frames_md5(recon), "decode differs from the encoder's recon"
    one_thread = golden_cases.decode(stream, workdir, tiny_weights, f"{name}_a_decoded_1t",
                                     env={"OMP_NUM_THREADS": "1"})
    assert media.frames_md5(one_thread) == media.frames_md5(recon), "a one-thread decode differs"
    if golden_cases.platform() == GOLDEN[name]["platform"]:
        assert golden_cases.md5(first) == GOLDEN[name]["stream_md5"]


def test_per_stage_conformance(workdir, tiny_weights, capsys):
    from safetensors.torch import load_file
    want = load_file(golden_cases.CONFORMANCE)
    assert set(want) == set(golden_cases.STAGES)
    got = golden_cases.conformance_stages(tiny_weights, workdir)
    report, failed = [], []
    for name in golden_cases.STAGES:
        ok, detail = golden_cases.compare_stage(name, got[name], want[name])
        report.append(f"{'OK    ' if ok else 'NOT OK'} {name:16s} {detail}")
        if not ok:
            failed.append(name)
    with capsys.disabled():
        print("\n" + "\n".join(report))
    assert not failed, failed


def test_check_script_writes_only_with_write(tmp_path):
    """`python tests/golden_cases.py` checks and prints OK / NOT OK; it writes nothing without --write."""
    import subprocess
    import sys
    before = {n: os.path.getmtime(os.path.join(golden_cases.GOLDEN_DIR, n))
              for n in os.listdir(golden_cases.GOLDEN_DIR)}
    help_text = subprocess.run([sys.executable, os.path.join(golden_cases.ROOT, "tests", "golden_cases.py"),
                                "--help"], capture_output=True, text=True, check=True).stdout
    assert "--write" in help_text
    after = {n: os.path.getmtime(os.path.join(golden_cases.GOLDEN_DIR, n))
             for n in os.listdir(golden_cases.GOLDEN_DIR)}
    assert before == after


def test_tolerance_catches_one_wrong_sign(workdir, tiny_weights):
    """The decode tolerance is no blanket: one flipped sign bit, in the last SDE step of the t2v golden stream
    (the step with the least effect), moves the decoded frames far outside it (measured: 235 levels, 16 dB)."""
    import bitstream
    with open(golden_cases.stream_path("t2v"), "rb") as fh:
        hdr, gops = bitstream.read_stream(fh.read())
    indices, signs = gops[0].symbols[-1][0]
    gops[0].symbols[-1][0] = (indices, [1 - signs[0]] + list(signs[1:]))
    wrong = os.path.join(workdir, "t2v_wrong_sign.gvcc")
    with open(wrong, "wb") as fh:
        fh.write(bitstream.write_stream(hdr, gops))
    frames = golden_cases.decode(wrong, workdir, tiny_weights, "t2v_wrong_sign")
    ref = golden_cases.read_frames_png(golden_cases.reference_path("t2v"), hdr.height)
    worst, psnr = golden_cases.pixel_difference(frames, ref)
    tol = golden_cases.DECODE_TOLERANCE
    assert worst > 4 * tol["max_abs"] and psnr < tol["psnr_db"] - 10, (worst, psnr)


def test_i2v_drift_stays_bounded_over_gops(tmp_path, tiny_weights):
    """Decoding with every DiT output one ulp off (another machine's rounding, at its smallest) over a 5-GOP
    I2V clip: the closed loop passes each GOP's decoded last frame to the next, yet no GOP drifts more than a
    few levels from the encoder's reconstruction (measured with bench/drift.py: at most 1 level, >= 86 dB, no
    growth over 6 GOPs). The native decode stays bit-exact over all GOPs."""
    import drift
    result = drift.measure("i2v", tiny_weights, str(tmp_path), gops=5, ways=("native", "ulp"))
    assert all(worst == 0 for worst, _ in result["native"]), result["native"]
    assert len(result["ulp"]) == 5
    for g, (worst, psnr) in enumerate(result["ulp"]):
        assert worst <= 4 and psnr >= 60.0, (g, worst, psnr)
