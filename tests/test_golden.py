"""Golden vectors: the tiny synthetic clip coded with the tiny models must give the stored md5s.

A change here means the stream or the decoded pixels changed. If that is deliberate (a format version or a
method change), regenerate with `python tests/golden_cases.py` and say why in the commit.
"""
import json

import pytest

import golden_cases

GOLDEN = json.load(open(golden_cases.GOLDEN))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", sorted(golden_cases.CASES))
def test_golden_case(name, workdir, tiny_weights):
    got = golden_cases.run_case(name, workdir, tiny_weights)
    want = GOLDEN[name]
    assert got["args"] == want["args"], "the case's arguments changed: regenerate on purpose"
    assert got["stream_bytes"] == want["stream_bytes"]
    assert got["stream_md5"] == want["stream_md5"]
    assert got["recon_md5"] == got["decoded_md5"], "decoder differs from the encoder's reconstruction"
    assert got["frame_md5"] == want["frame_md5"]
    assert got["decoded_md5"] == want["decoded_md5"]


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
