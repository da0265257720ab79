"""Weights in the diffusers layout, and the model fingerprint (issue 20).

A diffusers pipeline folder is built from the tiny models' own tensors by diffusers' and transformers' classes
(WanTransformer3DModel, AutoencoderKLWan, UMT5EncoderModel, CLIPVisionModel, each `save_pretrained`, the DiT and
the text encoder sharded with an index), as the Wan-AI/Wan2.1-*-Diffusers repositories are. gvcc must load the
same tensors from it as from the official-layout files, give the same fingerprint and the same streams, and
refuse weights with any one float changed."""
import json
import os
import shutil
import struct
from fractions import Fraction

import numpy as np
import pytest
import torch

import gvcc
import media
import vae
import wan_model as wm
from golden_cases import synthetic_clip

PIPELINE_CLASS = {"t2v": "WanPipeline", "i2v": "WanImageToVideoPipeline", "flf2v": "WanImageToVideoPipeline"}


def stored_tensors(path, rename=None):
    """{name: tensor exactly as stored} of every tensor behind `path`."""
    out = {}
    for name, entry in wm.read_header(path, rename).items():
        with open(entry.file, "rb") as fh:
            out[name] = wm.read_tensor(fh, entry)
    return out


def make_pipeline(official, model, folder):
    """A diffusers pipeline folder with the tensors (values and dtypes) of the official-layout files of `model`."""
    from diffusers import AutoencoderKLWan
    from test_vae import to_diffusers_key
    from test_wan_model import diffusers_dit, hf_umt5
    from transformers import CLIPVisionConfig, CLIPVisionModel

    spec = gvcc.MODELS[model]
    paths = gvcc.model_paths(spec, official)
    os.makedirs(folder)
    with open(os.path.join(folder, "model_index.json"), "w") as fh:
        json.dump({"_class_name": PIPELINE_CLASS[spec.mode]}, fh)
    dit = stored_tensors(paths["dit"])
    net = diffusers_dit(wm.DIT_CONFIGS[spec.dit], {k: v.float() for k, v in dit.items()})
    net.to(next(iter(dit.values())).dtype).save_pretrained(os.path.join(folder, "transformer"), max_shard_size="60KB")

    cfg = vae.VAE_CONFIGS[spec.vae]
    weights = stored_tensors(paths["vae"])
    net = AutoencoderKLWan(base_dim=cfg.dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
                           num_res_blocks=cfg.num_res_blocks, attn_scales=[],
                           temperal_downsample=list(cfg.temporal_downsample), dropout=0.0)
    net.load_state_dict({to_diffusers_key(k): v.float() for k, v in weights.items()}, strict=True)
    net.to(next(iter(weights.values())).dtype).save_pretrained(os.path.join(folder, "vae"))

    t5 = stored_tensors(paths["t5"])
    os.makedirs(os.path.join(folder, "tokenizer"))
    with open(os.path.join(folder, "tokenizer", "spiece.model"), "wb") as fh:
        fh.write(t5.pop("spiece_model").numpy().tobytes())
    net = hf_umt5(wm.T5_CONFIGS[spec.t5], {k: v.float() for k, v in t5.items()})
    net.to(t5["shared.weight"].dtype).save_pretrained(os.path.join(folder, "text_encoder"), max_shard_size="20KB")

    if spec.clip:
        c = wm.CLIP_CONFIGS[spec.clip]
        clip = stored_tensors(paths["clip"])
        net = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=c.dim, intermediate_size=c.ffn_dim, num_hidden_layers=c.num_layers,
            num_attention_heads=c.num_heads, image_size=c.image_size, patch_size=c.patch_size, hidden_act="gelu",
            layer_norm_eps=c.eps, projection_dim=c.proj_dim))
        # transformers 5 keys the bare vision model without `vision_model.` and has no projection head
        net.load_state_dict({k[len("vision_model."):]: v.float() for k, v in clip.items()
                             if k.startswith("vision_model.")}, strict=True)
        net.to(clip["vision_model.pre_layrnorm.weight"].dtype).save_pretrained(os.path.join(folder, "image_encoder"))
    return folder


@pytest.fixture(scope="module")
def pipelines(tiny_weights, tmp_path_factory):
    """model -> its diffusers pipeline folder (tiny-t2v, tiny-i2v)."""
    root = tmp_path_factory.mktemp("diffusers")
    return {m: make_pipeline(tiny_weights, m, str(root / m)) for m in ("tiny-t2v", "tiny-i2v")}


def test_pipeline_folder_is_the_diffusers_layout(pipelines):
    folder = pipelines["tiny-i2v"]
    paths = gvcc.model_paths(gvcc.MODELS["tiny-i2v"], folder)
    assert paths["dit"].endswith(os.path.join("transformer", "diffusion_pytorch_model.safetensors.index.json"))
    assert paths["t5"].endswith(os.path.join("text_encoder", "model.safetensors.index.json"))
    assert paths["vae"].endswith(os.path.join("vae", "diffusion_pytorch_model.safetensors"))
    assert paths["clip"].endswith(os.path.join("image_encoder", "model.safetensors"))
    assert len(wm.weight_files(paths["dit"])) > 1 and len(wm.weight_files(paths["t5"])) > 1
    names = set(wm.read_header(paths["dit"]))
    assert "condition_embedder.time_proj.weight" in names and "blocks.0.attn2.add_k_proj.weight" in names
    assert "quant_conv.weight" in wm.read_header(paths["vae"])
    assert "embeddings.class_embedding" in wm.read_header(paths["clip"])       # no vision_model. prefix
    assert "visual_projection.weight" not in wm.read_header(paths["clip"])


def test_hugging_face_cache_entry_resolves_to_its_snapshot(pipelines, tmp_path):
    entry = tmp_path / "models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers"
    shutil.copytree(pipelines["tiny-t2v"], entry / "snapshots" / "abc123")
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123")
    assert wm.pipeline_folder(str(entry)) == str(entry / "snapshots" / "abc123")
    assert wm.pipeline_folder(str(tmp_path)) is None


@pytest.mark.parametrize("model", ["tiny-t2v", "tiny-i2v"])
def test_both_layouts_load_the_same_tensors(tiny_weights, pipelines, model):
    spec = gvcc.MODELS[model]
    official = gvcc.model_paths(spec, tiny_weights)
    diffusers = gvcc.model_paths(spec, pipelines[model])
    loads = {"dit": lambda p: wm.load_dit(p, wm.DIT_CONFIGS[spec.dit]),
             "vae": lambda p: vae.load_vae(p, vae.VAE_CONFIGS[spec.vae]),
             "t5": lambda p: wm.load_t5(p, wm.T5_CONFIGS[spec.t5]),
             "clip": lambda p: wm.load_clip(p, wm.CLIP_CONFIGS[spec.clip])}
    for part in official:
        a, b = loads[part](official[part]), loads[part](diffusers[part])
        if part == "t5":
            (a, tok_a), (b, tok_b) = a, b
            assert tok_a.serialized_model_proto() == tok_b.serialized_model_proto()
        assert a.keys() == b.keys(), part
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (part, key)
    # and as stored: the same bytes under the official names (what the fingerprint hashes)
    renames = {"dit": wm.dit_official_name, "vae": vae.official_name, "t5": None, "clip": wm.clip_official_name}
    for part in official:
        a, b = stored_tensors(official[part], renames[part]), stored_tensors(diffusers[part], renames[part])
        for name in gvcc.FINGERPRINT_SKIP.get(part, ()) + ("spiece_model",):
            a.pop(name, None)
        assert a.keys() == b.keys(), part
        assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a), part


@pytest.mark.parametrize("model", ["tiny-t2v", "tiny-i2v"])
def test_fingerprint_identifies_the_weights_not_the_layout(tiny_weights, pipelines, model):
    spec = gvcc.MODELS[model]
    official = gvcc.model_fingerprint(gvcc.model_paths(spec, tiny_weights))
    assert gvcc.model_fingerprint(gvcc.model_paths(spec, pipelines[model])) == official
    other = gvcc.MODELS["tiny-flf2v" if model == "tiny-i2v" else "tiny-i2v"]
    assert gvcc.model_fingerprint(gvcc.model_paths(other, tiny_weights)) != official


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("clip") / "clip.y4m")
    media.write_video(path, synthetic_clip(frames=9), Fraction(16, 1))
    return path


CODEC = ["-K", "64", "-M", "4", "--steps", "3", "--tail-steps", "1", "--gop", "5", "--seed", "5", "--quiet"]
MODES = {"tiny-t2v": ["--model", "tiny-t2v", "--prompt", "a fox"],
         "tiny-i2v": ["--model", "tiny-i2v", "--mode", "i2v", "--m-tail", "8", "--still-quality", "30"]}


@pytest.mark.parametrize("model", ["tiny-t2v", "tiny-i2v"])
def test_streams_are_the_same_with_either_layout(tiny_weights, pipelines, clip_file, model, tmp_path, one_thread):
    out = {}
    for layout, weights in (("official", tiny_weights), ("diffusers", pipelines[model])):
        stream, recon = str(tmp_path / f"{layout}.gvcc"), str(tmp_path / f"{layout}_recon.y4m")
        assert gvcc.main(["encode", clip_file, stream, "--weights", weights, "--recon", recon,
                          *CODEC, *MODES[model]]) == 0
        out[layout] = open(stream, "rb").read(), media.read_video(recon).frames
    assert out["official"][0] == out["diffusers"][0]
    assert np.array_equal(out["official"][1], out["diffusers"][1])
    decoded = str(tmp_path / "decoded.y4m")          # the official layout's stream, decoded with the diffusers one
    assert gvcc.main(["decode", str(tmp_path / "official.gvcc"), decoded, "--weights", pipelines[model],
                      "--quiet"]) == 0
    assert np.array_equal(media.read_video(decoded).frames, out["official"][1])


def one_line_error(argv, capsys):
    capsys.readouterr()
    assert gvcc.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gvcc: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_missing_parts_of_a_pipeline_folder_are_named(pipelines, clip_file, tmp_path, capsys):
    encode = ["encode", clip_file, str(tmp_path / "o.gvcc"), *CODEC, *MODES["tiny-i2v"]]
    cases = {
        "image_encoder": lambda d: shutil.rmtree(d / "image_encoder"),
        "vae": lambda d: os.remove(d / "vae" / "diffusion_pytorch_model.safetensors"),
        "shard": lambda d: os.remove(sorted((d / "transformer").glob("*-00002-of-*.safetensors"))[0]),
        "tokenizer": lambda d: shutil.rmtree(d / "tokenizer"),
        "key": None,
    }
    for name, damage in cases.items():
        folder = tmp_path / name
        shutil.copytree(pipelines["tiny-i2v"], folder)
        if damage is not None:
            damage(folder)
        else:                                   # drop one tensor from the VAE file
            path = folder / "vae" / "diffusion_pytorch_model.safetensors"
            from safetensors.torch import load_file, save_file
            weights = load_file(str(path))
            del weights["decoder.up_blocks.1.resnets.0.conv_shortcut.bias"]
            save_file(weights, str(path))
        err = one_line_error([*encode, "--weights", str(folder)], capsys)
        want = {"image_encoder": "image_encoder: missing clip weights", "vae": "vae: missing vae weights",
                "shard": "-00002-of-", "tokenizer": "tokenizer/spiece.model",
                "key": "missing key 'decoder.upsamples.4.shortcut.bias'"}[name]
        assert want in err, (name, err)


# --------------------------------------------------------------------------------------------------
# The fingerprint covers every tensor
# --------------------------------------------------------------------------------------------------

def change_one_float(path, entry, index):
    """Flip the lowest mantissa bit of element `index` of a tensor, in place in its file (the file's length and
    every other byte unchanged)."""
    item = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1}[entry.dtype]
    with open(path, "r+b") as fh:
        fh.seek(entry.begin + index * item)
        byte = fh.read(1)[0]
        fh.seek(entry.begin + index * item)
        fh.write(bytes([byte ^ 1]))


def test_a_one_float_change_anywhere_changes_the_fingerprint(tiny_weights, tmp_path):
    """Every tensor of every file of tiny-i2v (DiT, VAE, UMT5 with its tokenizer, CLIP), one element each, at a
    position that moves from tensor to tensor: each changed file gives another fingerprint. The only tensors left
    out are the layout-dependent ones no network reads (FINGERPRINT_SKIP)."""
    spec = gvcc.MODELS["tiny-i2v"]
    folder = tmp_path / "w"
    shutil.copytree(tiny_weights, folder, ignore=shutil.ignore_patterns(".gvcc-*"))
    paths = gvcc.model_paths(spec, str(folder))
    original = gvcc.model_fingerprint(paths)
    changed = 0
    for part, path in paths.items():
        alone = gvcc.model_fingerprint({part: path})                # the other files' lines do not change
        for i, (name, entry) in enumerate(sorted(wm.read_header(path).items())):
            if name in gvcc.FINGERPRINT_SKIP.get(part, ()):
                continue
            n = int(np.prod(entry.shape))
            change_one_float(path, entry, (7919 * i) % n)
            assert gvcc.model_fingerprint({part: path}) != alone, (part, name)
            change_one_float(path, entry, (7919 * i) % n)            # and back
            changed += 1
    assert changed > 300 and gvcc.model_fingerprint(paths) == original


def test_decode_refuses_weights_with_one_float_changed(tiny_weights, clip_file, tmp_path, capsys):
    """The issue's new user: one float of the DiT's last tensor changed (a fine-tune, a merge), decode of a stream
    made with the original weights. It must fail with one line naming both fingerprints."""
    folder = tmp_path / "w"
    shutil.copytree(tiny_weights, folder, ignore=shutil.ignore_patterns(".gvcc-*"))
    stream = str(tmp_path / "a.gvcc")
    assert gvcc.main(["encode", clip_file, stream, "--weights", str(folder), *CODEC, *MODES["tiny-t2v"]]) == 0
    path = str(folder / "tiny_t2v.safetensors")
    last = max(wm.read_header(path).values(), key=lambda e: e.begin)
    change_one_float(path, last, 0)
    err = one_line_error(["decode", stream, str(tmp_path / "o.y4m"), "--weights", str(folder)], capsys)
    assert "fingerprint" in err and not os.path.exists(tmp_path / "o.y4m")


# --------------------------------------------------------------------------------------------------
# The digest cache
# --------------------------------------------------------------------------------------------------

def test_digests_are_cached_by_file_identity(tiny_weights, tmp_path, monkeypatch):
    """A second run reads the digests back instead of hashing; a file replaced (another inode, size or times) is
    hashed again; a file written within DIGEST_RACY_NS of its hashing is never cached (its times may not move on
    the next write)."""
    monkeypatch.setenv("GVCC_CACHE", str(tmp_path / "cache"))
    hashed = []
    real_hash = wm._hash_tensors
    monkeypatch.setattr(wm, "_hash_tensors", lambda f: hashed.append(f) or real_hash(f))
    path = str(tmp_path / "tiny_vae.safetensors")
    shutil.copy(os.path.join(tiny_weights, "tiny_vae.safetensors"), path)

    wm.file_digests(path)
    wm.file_digests(path)
    assert len(hashed) == 2 and not os.path.exists(tmp_path / "cache")   # just written: hashed every time

    monkeypatch.setattr(wm, "DIGEST_RACY_NS", 0)                          # as if written long ago
    first = wm.file_digests(path)
    assert len(hashed) == 3 and len(os.listdir(tmp_path / "cache" / "weights")) == 1
    wm._DIGESTS.clear()                                                    # a new process: from the disk cache
    assert wm.file_digests(path) == first and len(hashed) == 3

    replaced = str(tmp_path / "other.safetensors")                         # same bytes but one, another inode
    shutil.copy(path, replaced)
    entry = max(wm.read_header(replaced).values(), key=lambda e: e.begin)
    change_one_float(replaced, entry, 0)
    os.replace(replaced, path)
    second = wm.file_digests(path)
    assert len(hashed) == 4 and second != first
    with open(next((tmp_path / "cache" / "weights").iterdir()), "w") as fh:
        fh.write("{damaged")
    wm._DIGESTS.clear()
    assert wm.file_digests(path) == second and len(hashed) == 5


def test_fingerprint_lines_are_the_documented_ones(tiny_weights):
    """The fingerprint as gvcc.py's docstring defines it, recomputed here from the files with hashlib alone."""
    import hashlib
    spec = gvcc.MODELS["tiny-t2v"]
    paths = gvcc.model_paths(spec, tiny_weights)
    lines = []
    for part in sorted(paths):
        with open(paths[part], "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            for name in sorted(header):
                begin, end = header[name]["data_offsets"]
                fh.seek(8 + n + begin)
                digest = hashlib.sha256(fh.read(end - begin)).hexdigest()
                shape = ",".join(str(s) for s in header[name]["shape"])
                lines.append(f"{part} {name} {header[name]['dtype']} {shape} {digest}\n")
    want = int.from_bytes(hashlib.sha256("".join(lines).encode()).digest()[:4], "big")
    assert gvcc.model_fingerprint(paths) == want
