import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


@pytest.fixture(scope="session", autouse=True)
def digest_cache(tmp_path_factory):
    """The weight files' digest cache (wan_model.file_digests) in a folder of this session, also for the gvcc.py
    subprocesses the tests start, instead of the user's ~/.cache/gvcc."""
    os.environ["GVCC_CACHE"] = str(tmp_path_factory.mktemp("gvcc_cache"))
    return os.environ["GVCC_CACHE"]


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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread in a test module that asks for it and in its CLI subprocesses. The tensors are tiny,
    and when other processes share the 2 cores, a second OpenMP worker waits for a busy core on every op:
    3 i2v GOPs took 17-37 s with two threads against 0.7 s with one."""
    import torch
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = env
