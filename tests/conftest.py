import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A folder with the tiny random-weight models, written by `gvcc.py make-tiny` as a user would."""
    import golden_cases
    return golden_cases.make_tiny_weights(str(tmp_path_factory.mktemp("weights")))


def make_tiny_streams(weights, folder):
    """mode -> path of a small valid stream of each tiny model (t2v, i2v, flf2v) in folder, made by
    `gvcc.py encode` (in process, to save the interpreter start-ups)."""
    from fractions import Fraction

    import golden_cases
    import gvcc
    import media
    clip = os.path.join(folder, "clip.y4m")
    media.write_video(clip, golden_cases.synthetic_clip(), Fraction(16, 1))
    common = ["-K", "64", "-M", "4", "--steps", "3", "--tail-steps", "1", "--gop", "5", "--seed", "3", "--quiet"]
    modes = {"t2v": ["--model", "tiny-t2v", "--prompt", "un chat \u732b"],
             "i2v": ["--model", "tiny-i2v", "--mode", "i2v", "--m-tail", "8", "--still-quality", "30"],
             "flf2v": ["--model", "tiny-flf2v", "--mode", "flf2v", "--still-quality", "30"]}
    out = {}
    for mode, args in modes.items():
        out[mode] = os.path.join(folder, f"{mode}.gvcc")
        assert gvcc.main(["encode", clip, out[mode], "--weights", weights, *common, *args]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_streams(tiny_weights, tmp_path_factory):
    """mode -> path of a small valid stream of each tiny model (make_tiny_streams)."""
    return make_tiny_streams(tiny_weights, str(tmp_path_factory.mktemp("tiny_streams")))
