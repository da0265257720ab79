"""weights_fetch.sh without network: the URL table, --dry-run, and fetch/resume/verify against file:// URLs."""
import hashlib
import os
import re
import subprocess

import pytest
import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SCRIPT = os.path.join(ROOT, "weights_fetch.sh")

# CONTRACT.md's weight-file table: the local names gvcc.py reads
EXPECTED_FILES = {
    "t2v-1.3B": ["wan2.1_t2v_1.3B_fp32.safetensors", "wan_2.1_vae.safetensors", "umt5_xxl_fp16.safetensors"],
    "t2v-14B": ["wan2.1_t2v_14B_fp16.safetensors", "wan_2.1_vae.safetensors", "umt5_xxl_fp16.safetensors"],
    "i2v-14B-480P": ["wan2.1_i2v_480p_14B_fp16.safetensors", "wan_2.1_vae.safetensors", "umt5_xxl_fp16.safetensors",
                     "clip_vision_h.safetensors"],
    "i2v-14B-720P": ["wan2.1_i2v_720p_14B_fp16.safetensors", "wan_2.1_vae.safetensors", "umt5_xxl_fp16.safetensors",
                     "clip_vision_h.safetensors"],
    "flf2v-14B-720P": ["wan2.1_flf2v_720p_14B_fp16.safetensors", "wan_2.1_vae.safetensors",
                       "umt5_xxl_fp16.safetensors", "clip_vision_h.safetensors"],
}


def run(*args, env=None, cwd=None):
    full_env = {k: v for k, v in os.environ.items() if k not in ("GVCC_WEIGHTS", "GVCC_FETCH_TABLE")}
    full_env.update(env or {})
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=full_env, cwd=cwd)


def dry_run_entries(model):
    """[(file name, url)] from the --dry-run listing."""
    out = run("--dry-run", model, "/nonexistent")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    entries = []
    for i, line in enumerate(lines):
        m = re.match(r"\s+(\S+\.safetensors)\s", line)
        if m:
            entries.append((m.group(1), lines[i + 1].strip()))
    return entries, out.stdout


@pytest.mark.parametrize("model", list(EXPECTED_FILES))
def test_dry_run_lists_contract_files_and_sources(model):
    entries, text = dry_run_entries(model)
    assert [name for name, _ in entries] == EXPECTED_FILES[model]
    for name, url in entries:
        assert url.startswith("https://huggingface.co/") and "/resolve/main/" in url and url.endswith(".safetensors")
        if name == "wan2.1_t2v_1.3B_fp32.safetensors":
            assert url == ("https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B/resolve/main/"
                           "diffusion_pytorch_model.safetensors")
        else:
            assert url.startswith("https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/"
                                  "split_files/") and url.endswith("/" + name)
    assert "total" in text and "GB" in text


def test_files_match_gvcc_models_table():
    """weights_fetch.sh and gvcc.py's MODELS agree on the file names of every real model."""
    gvcc = pytest.importorskip("gvcc")
    for model, names in EXPECTED_FILES.items():
        spec = gvcc.MODELS[model]
        assert {spec.dit_file, spec.vae_file, spec.t5_file} | ({spec.clip_file} if spec.clip_file else set()) \
            == set(names)


def test_aliases_and_bad_arguments():
    assert dry_run_entries("i2v-720P")[0] == dry_run_entries("i2v-14B-720P")[0]
    assert dry_run_entries("flf2v-720P")[0] == dry_run_entries("flf2v-14B-720P")[0]
    out = run("--dry-run", "t2v-2B")
    assert out.returncode == 1 and "unknown model 't2v-2B'" in out.stderr
    assert run("--bogus").returncode == 1


def test_default_model_and_dir(tmp_path):
    out = run("--dry-run", cwd=str(tmp_path))
    assert out.returncode == 0 and out.stdout.startswith("model t2v-1.3B -> weights")
    out = run("--dry-run", env={"GVCC_WEIGHTS": "/some/dir"})     # the same default as gvcc.py --weights
    assert out.stdout.startswith("model t2v-1.3B -> /some/dir")


# ---- fetching from file:// URLs with a stand-in table -------------------------------------------------------

def fake_sources(tmp_path):
    """Small safetensors files standing in for the three T2V-1.3B downloads, and a table pointing at them."""
    src = tmp_path / "hub"
    src.mkdir()
    rows, files = [], {}
    for i, name in enumerate(EXPECTED_FILES["t2v-1.3B"]):
        path = src / name
        save_file({"w": torch.full((1000 + 100 * i,), float(i))}, str(path))
        data = path.read_bytes()
        files[name] = data
        # the DiT row has an exact size, the VAE a payload bound ("N+"), the T5 a sha256 too
        size = {0: str(len(data)), 1: f"{4 * (1000 + 100 * i)}+", 2: str(len(data))}[i]
        sha = hashlib.sha256(data).hexdigest() if i == 2 else "-"
        rows.append(f"{name} {size} {sha} file://{path}")
    table = tmp_path / "table.txt"
    table.write_text("\n".join(rows) + "\n")
    return {"GVCC_FETCH_TABLE": str(table)}, files, table


def test_fetch_verifies_and_is_idempotent(tmp_path):
    env, files, _ = fake_sources(tmp_path)
    dest = tmp_path / "weights"
    out = run("t2v-1.3B", str(dest), env=env)
    assert out.returncode == 0, out.stderr
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
        assert not (dest / (name + ".part")).exists()
    mtimes = {name: os.stat(dest / name).st_mtime_ns for name in files}
    again = run("t2v-1.3B", str(dest), env=env)
    assert again.returncode == 0 and again.stdout.count("(already there)") == 3
    assert mtimes == {name: os.stat(dest / name).st_mtime_ns for name in files}
    assert "[present]" in run("--dry-run", "t2v-1.3B", str(dest), env=env).stdout
    assert run("--check", "t2v-1.3B", str(dest), env=env).returncode == 0


def test_fetch_resumes_a_partial_download(tmp_path):
    env, files, _ = fake_sources(tmp_path)
    dest = tmp_path / "weights"
    dest.mkdir()
    name = EXPECTED_FILES["t2v-1.3B"][1]
    (dest / (name + ".part")).write_bytes(files[name][:1500])
    assert "partial, 1500 bytes, will resume" in run("--dry-run", "t2v-1.3B", str(dest), env=env).stdout
    out = run("t2v-1.3B", str(dest), env=env)
    assert out.returncode == 0, out.stderr
    assert (dest / name).read_bytes() == files[name]


def test_fetch_rejects_wrong_size_and_wrong_hash(tmp_path):
    env, files, table = fake_sources(tmp_path)
    dit, vae, t5 = EXPECTED_FILES["t2v-1.3B"]
    dest = tmp_path / "weights"
    text = table.read_text()
    # an exact size one byte off
    table.write_text(text.replace(f"{dit} {len(files[dit])} ", f"{dit} {len(files[dit]) + 1} "))
    out = run("t2v-1.3B", str(dest), env=env)
    assert out.returncode == 1 and "expected exactly" in out.stderr and not (dest / dit).exists()
    # a sha256 that does not match
    (dest / (dit + ".part")).unlink()
    table.write_text(text.replace(hashlib.sha256(files[t5]).hexdigest(), "0" * 64))
    out = run("t2v-1.3B", str(dest), env=env)
    assert out.returncode == 1 and "sha256" in out.stderr and not (dest / t5).exists()
    # a payload bound the file is far above (another variant, say fp32 instead of 16-bit)
    table.write_text(text.replace(f"{vae} 4400+", f"{vae} 10+").replace("0" * 64, hashlib.sha256(files[t5]).hexdigest()))
    big = tmp_path / "hub" / vae
    save_file({"w": torch.zeros(5_000_000)}, str(big))
    (dest / vae).unlink()
    out = run("t2v-1.3B", str(dest), env=env)
    assert out.returncode == 1 and "another variant" in out.stderr


def test_check_reports_a_damaged_file(tmp_path):
    env, files, _ = fake_sources(tmp_path)
    dest = tmp_path / "weights"
    assert run("t2v-1.3B", str(dest), env=env).returncode == 0
    name = EXPECTED_FILES["t2v-1.3B"][0]
    with open(dest / name, "r+b") as fh:
        fh.truncate(len(files[name]) - 10)
    out = run("--check", "t2v-1.3B", str(dest), env=env)
    assert out.returncode == 1 and "incomplete or damaged" in out.stderr
    out = run("t2v-1.3B", str(dest), env=env)    # a final file that fails is reported, not overwritten
    assert out.returncode == 1 and "does not verify" in out.stderr
    assert os.path.getsize(dest / name) == len(files[name]) - 10


def test_vae_fp32_variant(tmp_path):
    """--vae fp32 fetches the official float32 VAE (the Diffusers repository's vae/, diffusers key names, which gvcc
    maps) under the same local name; the 16-bit file is the default and the two do not verify as each other."""
    out = run("--dry-run", "--vae", "fp32", "t2v-1.3B", "/nonexistent")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if "wan_2.1_vae.safetensors (fp32)" in line)
    assert "507.6 MB+" in lines[at]
    assert lines[at + 1].strip() == ("https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers/resolve/main/vae/"
                                     "diffusion_pytorch_model.safetensors")
    assert run("--vae", "fp64", "--dry-run").returncode == 1

    env, files, table = fake_sources(tmp_path)
    vae = EXPECTED_FILES["t2v-1.3B"][1]
    fp32 = tmp_path / "hub" / "vae_fp32.safetensors"
    # as the real pair, the float32 file is more than 16 MiB above the 16-bit payload (254 MB more there)
    save_file({"w": torch.zeros(4_400_000, dtype=torch.float32)}, str(fp32))
    table.write_text(table.read_text() + f"{vae}:fp32 17600000+ - file://{fp32}\n")
    dest = tmp_path / "weights"
    assert run("--vae", "fp32", "t2v-1.3B", str(dest), env=env).returncode == 0
    assert (dest / vae).read_bytes() == fp32.read_bytes()
    assert run("--check", "--vae", "fp32", "t2v-1.3B", str(dest), env=env).returncode == 0
    out = run("--check", "t2v-1.3B", str(dest), env=env)              # the default is the 16-bit one
    assert out.returncode == 1 and "another variant" in out.stderr
