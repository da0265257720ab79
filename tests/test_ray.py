"""bench/ray_gvcc.py on a local Ray cluster of 2 CPU workers: a clip's GOPs encoded as parts on the workers and
joined, and whole-clip jobs, give the bytes of a one-process encode. Skipped when ray is not installed."""
import os
import sys
from fractions import Fraction

import pytest
import torch

import gvcc
import media
from golden_cases import ROOT, synthetic_clip

ray = pytest.importorskip("ray")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import ray_gvcc  # noqa: E402

ARGS = ["--model", "tiny-t2v", "-K", "64", "-M", "4", "--steps", "2", "--tail-steps", "1", "--gop", "5",
        "--seed", "3"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    yield ray
    ray.shutdown()


def test_sharded_and_job_encodes_equal_one_process(cluster, tiny_weights, tmp_path):
    clip = str(tmp_path / "clip.y4m")
    media.write_video(clip, synthetic_clip(frames=15), Fraction(16, 1))          # 3 GOPs
    args = ARGS + ["--weights", tiny_weights]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                    # the workers' thread count (bench/ray_gvcc.py --threads)
    try:
        assert gvcc.main(["encode", clip, str(tmp_path / "one.gvcc"), *args, "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    one = open(tmp_path / "one.gvcc", "rb").read()

    ranges, size = ray_gvcc.encode_sharded(cluster, clip, str(tmp_path / "sharded.gvcc"), args, shards=2)
    assert ranges == [(0, 2), (2, 3)] and size == len(one)
    assert open(tmp_path / "sharded.gvcc", "rb").read() == one

    ray_gvcc.encode_jobs(cluster, [(clip, str(tmp_path / "job.gvcc"), args)])
    assert open(tmp_path / "job.gvcc", "rb").read() == one


def test_gop_ranges():
    assert ray_gvcc.gop_ranges(25, 4) == [(0, 6), (6, 12), (12, 19), (19, 25)]
    assert ray_gvcc.gop_ranges(2, 8) == [(0, 1), (1, 2)]
