"""bench/rd_sweep.py: the anchors reach their target rates, and the whole sweep runs on the tiny weights."""
import csv
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import media  # noqa: E402
import rd_sweep  # noqa: E402

RATE_MISS = 0.20      # an anchor's file must be within 20 % of its target rate (the sweep aims for 3 %)


def textured_clip(n=25, h=96, w=128):
    """Moving colour waves with a moving random texture: a clip that needs real bits at 0.05-0.2 bpp."""
    y, x = np.mgrid[0:h, 0:w]
    tex = np.random.default_rng(0).integers(0, 60, (2 * h, 2 * w))
    frames = []
    for t in range(n):
        r = 98 + 90 * np.sin(x / 9 + t / 3) + tex[t:t + h, 2 * t:2 * t + w]
        g = 128 + 90 * np.cos(y / 7 - t / 4)
        b = 128 + 70 * np.sin((x + y) / 13 + t / 5)
        frames.append(np.stack([r, g, b], -1))
    return np.clip(np.array(frames), 0, 255).astype(np.uint8)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_anchors_reach_their_target_rates(tmp_path):
    src = str(tmp_path / "src.y4m")
    media.write_video(src, textured_clip(), 25)
    out = str(tmp_path / "sweep")
    targets = [0.05, 0.2]
    rows, bd_rows, failures = rd_sweep.sweep(src, out, anchors=["x264", "x265", "av1"], anchor_bpp=targets,
                                             bd_anchor="x265", log=lambda msg: None)
    assert failures == []
    assert [(r["codec"], r["target_bpp"]) for r in rows] == [(c, t) for c in ("x264", "x265", "av1") for t in targets]
    for r in rows:
        assert abs(r["bpp"] / r["target_bpp"] - 1) <= RATE_MISS, r
        assert r["bits"] == 8 * os.path.getsize(r["file"])
        assert r["psnr"] > 25 and r["ms_ssim"] is None             # 128x96 is below MS-SSIM's 161 pixels
    for codec in ("x264", "x265", "av1"):
        low, high = [r for r in rows if r["codec"] == codec]
        assert high["psnr"] > low["psnr"]
    table = read_csv(os.path.join(out, "rd.csv"))
    assert len(table) == 6 and table[0]["codec"] == "x264" and float(table[0]["bpp"]) == rows[0]["bpp"]
    bd = {(b["codec"], b["metric"]): b for b in bd_rows}
    assert set(bd) == {("x264", "psnr"), ("av1", "psnr")}
    for b in bd.values():
        assert b["bd_quality"] is not None and (b["bd_rate_pct"] is not None or "overlap" in b["note"])
    assert len(read_csv(os.path.join(out, "bd.csv"))) == 2
    try:
        import matplotlib  # noqa: F401
        assert os.path.getsize(os.path.join(out, "rd.png")) > 1000
    except ImportError:
        assert not os.path.exists(os.path.join(out, "rd.png"))
    leftovers = [n for n in os.listdir(out) if "stats" in n or n.endswith((".try", "_dec.yuv"))]
    assert leftovers == []


def test_sweep_end_to_end_on_tiny_weights(tmp_path, tiny_weights):
    import golden_cases
    if not os.path.exists(rd_sweep.GVCC_PY):
        pytest.fail("gvcc.py is missing")
    src = str(tmp_path / "clip.y4m")
    media.write_video(src, golden_cases.synthetic_clip(), 16)
    out = str(tmp_path / "sweep")
    gvcc_args = ["--steps", "5", "--tail-steps", "2", "--gop", "9", "--seed", "7", "--quiet"]
    rows, bd_rows, failures = rd_sweep.sweep(src, out, grid=[(2, 64), (4, 64)], weights=tiny_weights,
                                             model="tiny-t2v", gvcc_args=gvcc_args, anchors=["x264", "x265"],
                                             bd_anchor="x264", log=lambda msg: None)
    gv = [r for r in rows if r["codec"] == "gvcc"]
    assert [(r["M"], r["K"]) for r in gv] == [(2, 64), (4, 64)]
    for r in gv:
        assert r["bpp"] == 8 * os.path.getsize(r["file"]) / (40 * 24 * 10)
        assert r["psnr"] is not None and np.isfinite(r["psnr"])
    assert gv[1]["bpp"] > gv[0]["bpp"]                             # more atoms, more bits
    x264 = [r for r in rows if r["codec"] == "x264"]
    assert [r["target_bpp"] for r in x264] == sorted(r["bpp"] for r in gv)   # matched rates (as near as it gets)
    # the libx265 in imageio-ffmpeg 0.8.1 aborts on 40x24 frames: the sweep lists such failures and carries on
    x265 = [r for r in rows if r["codec"] == "x265"]
    assert all(f.startswith("x265") for f in failures) and len(x265) + len(failures) == 2
    assert len(read_csv(os.path.join(out, "rd.csv"))) == 4 + len(x265)
    assert {b["codec"] for b in bd_rows} == {"gvcc"}


def test_parse_grid_and_rate_search():
    assert rd_sweep.parse_grid("16:1024, 64:16384") == [(16, 1024), (64, 16384)]
    with pytest.raises(ValueError, match="not M:K"):
        rd_sweep.parse_grid("16x1024")
    # no bracket yet: scale by goal / obtained (in log space)
    assert rd_sweep._next_bitrate([(np.log(100.0), np.log(50.0))], np.log(100.0)) == pytest.approx(200.0)
    # a bracket: interpolate between the closest tries on each side
    tried = [(np.log(100.0), np.log(80.0)), (np.log(200.0), np.log(160.0))]
    assert rd_sweep._next_bitrate(tried, np.log(113.0)) == pytest.approx(100.0 * 113.0 / 80.0)


def test_bd_table_notes():
    rows = [{"codec": c, "bpp": b, "psnr": p, "ms_ssim": None, "lpips": None}
            for c, pts in (("a", [(0.01, 30.0), (0.02, 32.0)]), ("b", [(0.01, 40.0), (0.02, 41.0)]),
                           ("c", [(0.01, 31.0)]))
            for b, p in pts]
    bd = {r["codec"]: r for r in rd_sweep.bd_table(rows, "a")}
    assert bd["b"]["bd_rate_pct"] is None and "overlap" in bd["b"]["note"]
    assert bd["b"]["bd_quality"] == pytest.approx(9.5)   # +10 dB at 0.01, +9 dB at 0.02: mean 9.5
    assert bd["c"]["note"] == "fewer than 2 points"
