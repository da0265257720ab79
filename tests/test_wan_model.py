"""wan_model.py against independent implementations, with tiny random weights in the official file layouts.

Every check goes through a safetensors file written in the layout and dtype of the real download and read back
by gvcc's own loader; the reference (diffusers / transformers) gets the same tensors through the documented key
mappings (wan.md 5.3, 3.6, 1.8). Error measure: rel = max|gvcc - ref| / max|ref|.
"""
import hashlib
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import wan_model as wm  # noqa: E402

DIT_TOL = 1e-4      # max relative error, DiT vs diffusers, float32
T5_TOL = 1e-5       # max relative error, UMT5 vs transformers, float32
CLIP_TOL = 1e-5     # max relative error, CLIP vs transformers, float32


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def save(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)


# ==================================================================================================
# DiT: key/shape tables of the released models
# ==================================================================================================

def spec_table_t2v_1_3B():
    """The T2V-1.3B state dict written out from wan.md 1.6, independently of dit_param_shapes."""
    d, ff = 1536, 8960
    table = {
        "patch_embedding.weight": (d, 16, 1, 2, 2), "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, 4096), "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d), "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, 256), "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d), "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (9216, d), "time_projection.1.bias": (9216,),
        "head.modulation": (1, 2, d), "head.head.weight": (64, d), "head.head.bias": (64,),
    }
    block = {"modulation": (1, 6, d), "norm3.weight": (d,), "norm3.bias": (d,),
             "ffn.0.weight": (ff, d), "ffn.0.bias": (ff,), "ffn.2.weight": (d, ff), "ffn.2.bias": (d,)}
    for attn in ("self_attn", "cross_attn"):
        for proj in "qkvo":
            block[f"{attn}.{proj}.weight"] = (d, d)
            block[f"{attn}.{proj}.bias"] = (d,)
        block[f"{attn}.norm_q.weight"] = (d,)
        block[f"{attn}.norm_k.weight"] = (d,)
    assert len(block) == 27
    for i in range(30):
        table.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    return table


def test_t2v_1_3B_table_matches_spec():
    shapes = wm.dit_param_shapes(wm.DIT_CONFIGS["t2v-1.3B"])
    assert shapes == spec_table_t2v_1_3B()
    assert len(shapes) == 825
    assert sum(math.prod(s) for s in shapes.values()) == 1_418_996_800


@pytest.mark.parametrize("name, tensors, params", [
    ("t2v-14B", 1095, 14_288_491_584),
    ("i2v-14B-480P", 1303, 16_394_878_784),
    ("i2v-14B-720P", 1303, 16_394_878_784),
    ("flf2v-14B-720P", 1304, 16_395_536_704),
])
def test_14B_tables_match_spec_counts(name, tensors, params):
    shapes = wm.dit_param_shapes(wm.DIT_CONFIGS[name])
    assert len(shapes) == tensors
    assert sum(math.prod(s) for s in shapes.values()) == params
    if name.startswith(("i2v", "flf2v")):
        assert shapes["patch_embedding.weight"] == (5120, 36, 1, 2, 2)
        assert shapes["blocks.39.cross_attn.norm_k_img.weight"] == (5120,)
        assert shapes["img_emb.proj.3.weight"] == (5120, 1280)
    assert ("img_emb.emb_pos" in shapes) == name.startswith("flf2v")


def test_text_encoder_and_clip_tables():
    t5 = wm.t5_param_shapes(wm.T5_CONFIGS["umt5-xxl"])
    assert len(t5) == 242 and sum(math.prod(s) for s in t5.values()) == 5_680_910_336
    assert t5["encoder.block.23.layer.0.SelfAttention.relative_attention_bias.weight"] == (32, 64)
    clip = wm.clip_param_shapes(wm.CLIP_CONFIGS["vit-h-14"])
    assert clip["vision_model.embeddings.position_embedding.weight"] == (257, 1280)
    assert clip["vision_model.encoder.layers.31.mlp.fc1.weight"] == (5120, 1280)
    assert clip["visual_projection.weight"] == (1024, 1280)


# ==================================================================================================
# DiT vs diffusers WanTransformer3DModel
# ==================================================================================================

# official -> diffusers (wan.md 5.3), applied to dot-separated key segments in this order
_DIFFUSERS_RENAMES = [
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("head.modulation", "scale_shift_table"),
    ("head.head.", "proj_out."),
    (".modulation", ".scale_shift_table"),
    (".ffn.0.", ".ffn.net.0.proj."),
    (".ffn.2.", ".ffn.net.2."),
    (".norm3.", ".norm2."),
    (".cross_attn.k_img.", ".attn2.add_k_proj."),
    (".cross_attn.v_img.", ".attn2.add_v_proj."),
    (".cross_attn.norm_k_img.", ".attn2.norm_added_k."),
    (".self_attn.o.", ".attn1.to_out.0."),
    (".cross_attn.o.", ".attn2.to_out.0."),
    (".self_attn.norm_", ".attn1.norm_"),
    (".cross_attn.norm_", ".attn2.norm_"),
    (".self_attn.", ".attn1.to_"),
    (".cross_attn.", ".attn2.to_"),
    ("img_emb.proj.0.", "condition_embedder.image_embedder.norm1."),
    ("img_emb.proj.1.", "condition_embedder.image_embedder.ff.net.0.proj."),
    ("img_emb.proj.3.", "condition_embedder.image_embedder.ff.net.2."),
    ("img_emb.proj.4.", "condition_embedder.image_embedder.norm2."),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
]


def to_diffusers(params):
    out = {}
    for key, value in params.items():
        new = key
        for old, rep in _DIFFUSERS_RENAMES:
            if old in new:
                new = new.replace(old, rep)
                if not old.startswith("."):
                    break
        out[new] = value
    return out


def diffusers_dit(cfg, params):
    from diffusers import WanTransformer3DModel

    image = cfg.model_type in ("i2v", "flf2v")
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.dim // cfg.num_heads,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps, image_dim=cfg.clip_dim if image else None, added_kv_proj_dim=cfg.dim if image else None,
        rope_max_seq_len=1024, pos_embed_seq_len=2 * cfg.clip_tokens if cfg.model_type == "flf2v" else None)
    model.load_state_dict(to_diffusers(params), strict=True)
    return model.eval()


def dit_inputs(cfg, seed=1, frames=3, h=8, w=12, text_tokens=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, frames, h, w, generator=g)
    context = torch.randn(text_tokens, cfg.text_dim, generator=g)
    y = clip = None
    if cfg.model_type != "t2v":
        y = torch.randn(cfg.in_dim - 16, frames, h, w, generator=g)
        clip = torch.randn(2 if cfg.model_type == "flf2v" else 1, cfg.clip_tokens, cfg.clip_dim, generator=g)
    return x, context, y, clip


@pytest.mark.parametrize("mode", ["t2v", "i2v", "flf2v"])
def test_dit_matches_diffusers(tmp_path, mode):
    name = f"tiny-{mode}"
    cfg = wm.DIT_CONFIGS[name]
    path = save(tmp_path / f"tiny_{mode}.safetensors", wm.tiny_weights("dit", name, seed=3))
    params = wm.load_dit(path, cfg)
    assert all(v.dtype == torch.float32 for v in params.values())
    model = diffusers_dit(cfg, params)
    x, context, y, clip = dit_inputs(cfg)
    t = 937.5
    out = wm.dit_forward(params, cfg, x, t, context, y=y, clip_fea=clip)
    assert out.shape == x.shape and out.dtype == torch.float32
    with torch.no_grad():
        hidden = x if y is None else torch.cat([x, y])
        padded = torch.cat([context, torch.zeros(cfg.text_len - context.shape[0], cfg.text_dim)])
        ref = model(hidden_states=hidden[None], timestep=torch.tensor([t]), encoder_hidden_states=padded[None],
                    encoder_hidden_states_image=clip, return_dict=False)[0][0]
    err = rel_err(out, ref)
    print(f"DiT {mode}: rel err {err:.2e} (tol {DIT_TOL:g})")
    assert err <= DIT_TOL


def test_dit_bf16_path_keeps_fp32_islands(tmp_path):
    cfg = wm.DIT_CONFIGS["tiny-i2v"]
    path = save(tmp_path / "tiny_i2v.safetensors", wm.tiny_weights("dit", "tiny-i2v"))
    ref_params = wm.load_dit(path, cfg)
    params = wm.load_dit(path, cfg, dtype=torch.bfloat16)
    fp32 = {k for k, v in params.items() if v.dtype == torch.float32}
    assert {"time_embedding.0.weight", "time_projection.1.bias", "head.head.weight", "head.modulation",
            "blocks.0.modulation", "blocks.1.norm3.weight", "blocks.0.self_attn.norm_q.weight",
            "blocks.0.cross_attn.norm_k_img.weight", "img_emb.proj.0.weight", "img_emb.proj.4.bias"} <= fp32
    assert params["blocks.0.ffn.0.weight"].dtype == torch.bfloat16
    assert params["blocks.0.cross_attn.k_img.weight"].dtype == torch.bfloat16
    assert params["patch_embedding.weight"].dtype == torch.bfloat16
    x, context, y, clip = dit_inputs(cfg)
    out = wm.dit_forward(params, cfg, x, 500.0, context, y=y, clip_fea=clip)
    ref = wm.dit_forward(ref_params, cfg, x, 500.0, context, y=y, clip_fea=clip)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel_err(out, ref) < 3e-2


def test_dit_prefixed_16bit_file_is_upcast(tmp_path):
    cfg = wm.DIT_CONFIGS["tiny-t2v"]
    weights = wm.tiny_weights("dit", "tiny-t2v")
    path = save(tmp_path / "comfy.safetensors",
                {"model.diffusion_model." + k: v.to(torch.bfloat16) for k, v in weights.items()})
    params = wm.load_dit(path, cfg)
    assert set(params) == set(weights)
    for k, v in params.items():
        assert v.dtype == torch.float32
        assert torch.equal(v, weights[k].to(torch.bfloat16).float()), k


def test_dit_sharded_index(tmp_path):
    cfg = wm.DIT_CONFIGS["tiny-flf2v"]
    weights = wm.tiny_weights("dit", "tiny-flf2v")
    keys = list(weights)
    shards = {"dit-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "dit-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for fname, ks in shards.items():
        save(tmp_path / fname, {k: weights[k] for k in ks})
        weight_map.update({k: fname for k in ks})
    index = tmp_path / "dit.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    params = wm.load_dit(str(index), cfg)
    assert all(torch.equal(params[k], weights[k].float()) for k in keys)
    os.remove(tmp_path / "dit-00002-of-00002.safetensors")
    with pytest.raises(wm.WeightsError, match="shard listed in .* is missing"):
        wm.load_dit(str(index), cfg)


def one_line_error(fn):
    with pytest.raises(wm.WeightsError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_read_stored_returns_raw_tensors(tmp_path):
    weights = wm.tiny_weights("dit", "tiny-i2v")
    p = save(tmp_path / "i2v.safetensors", {"model.diffusion_model." + k: v for k, v in weights.items()})
    got = wm.read_stored(p, ["head.head.bias", "blocks.0.modulation"])
    assert got["head.head.bias"].dtype == torch.float16
    assert all(torch.equal(got[k], weights[k]) for k in got)
    assert "missing key 'nope'" in one_line_error(lambda: wm.read_stored(p, ["nope"]))


def test_loader_errors_name_key_file_and_shape(tmp_path):
    cfg = wm.DIT_CONFIGS["tiny-t2v"]
    weights = wm.tiny_weights("dit", "tiny-t2v")

    missing = dict(weights)
    del missing["blocks.1.ffn.2.bias"]
    p = save(tmp_path / "missing.safetensors", missing)
    msg = one_line_error(lambda: wm.load_dit(p, cfg))
    assert p in msg and "missing key 'blocks.1.ffn.2.bias'" in msg and "[64]" in msg

    extra = dict(weights, **{"blocks.0.alpha": torch.zeros(1)})
    p = save(tmp_path / "extra.safetensors", extra)
    assert "unexpected key 'blocks.0.alpha'" in one_line_error(lambda: wm.load_dit(p, cfg))

    wrong = dict(weights, **{"blocks.0.self_attn.q.weight": torch.zeros(64, 63)})
    p = save(tmp_path / "shape.safetensors", wrong)
    msg = one_line_error(lambda: wm.load_dit(p, cfg))
    assert "'blocks.0.self_attn.q.weight' has shape [64, 63], expected [64, 64]" in msg and p in msg

    int_weights = dict(weights, **{"head.head.bias": torch.zeros(64, dtype=torch.int32)})
    p = save(tmp_path / "dtype.safetensors", int_weights)
    assert "'head.head.bias' has dtype I32" in one_line_error(lambda: wm.load_dit(p, cfg))

    bad = tmp_path / "damaged.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    assert "not a readable safetensors file" in one_line_error(lambda: wm.load_dit(str(bad), cfg))
    full = save(tmp_path / "full.safetensors", weights)
    with open(full, "r+b") as fh:       # an interrupted download
        fh.truncate(os.path.getsize(full) - 100)
    assert "truncated" in one_line_error(lambda: wm.load_dit(full, cfg))
    assert "no such weight file" in one_line_error(lambda: wm.load_dit(str(tmp_path / "nope.safetensors"), cfg))


def test_load_dit_reports_the_model_the_file_holds(tmp_path):
    p = save(tmp_path / "i2v.safetensors", wm.tiny_weights("dit", "tiny-i2v"))
    msg = one_line_error(lambda: wm.load_dit(p, wm.DIT_CONFIGS["tiny-t2v"]))
    assert "looks like DiT tiny-i2v, not tiny-t2v" in msg
    msg = one_line_error(lambda: wm.load_dit(p, wm.DIT_CONFIGS["tiny-flf2v"]))
    assert "looks like DiT tiny-i2v, not tiny-flf2v" in msg


def write_sparse_safetensors(path, shapes, dtype="F16", prefix=""):
    """A safetensors file with the real header and a sparse (unwritten) data section: tests that read headers
    only, on the real 14B layouts, without 30 GB of disk."""
    size = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    for key, shape in shapes.items():
        n = math.prod(shape) * size
        header[prefix + key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        fh.truncate(8 + len(blob) + offset)
    return str(path)


def test_load_dit_recognises_real_configs(tmp_path):
    p = write_sparse_safetensors(tmp_path / "t2v14.safetensors", wm.dit_param_shapes(wm.DIT_CONFIGS["t2v-14B"]))
    msg = one_line_error(lambda: wm.load_dit(p, wm.DIT_CONFIGS["t2v-1.3B"]))
    assert "looks like DiT t2v-14B, not t2v-1.3B" in msg
    p = write_sparse_safetensors(tmp_path / "i2v.safetensors", wm.dit_param_shapes(wm.DIT_CONFIGS["i2v-14B-720P"]),
                                 prefix="model.diffusion_model.")
    msg = one_line_error(lambda: wm.load_dit(p, wm.DIT_CONFIGS["flf2v-14B-720P"]))
    assert "looks like DiT i2v-14B-480P / i2v-14B-720P, not flf2v-14B-720P" in msg


def test_dit_rejects_bad_inputs():
    cfg = wm.DIT_CONFIGS["tiny-i2v"]
    params = wm.tiny_weights("dit", "tiny-i2v")
    x, context, y, clip = dit_inputs(cfg)
    with pytest.raises(ValueError, match="H, W even"):
        wm.dit_forward(params, cfg, x[:, :, :7], 1.0, context, y=y[:, :, :7], clip_fea=clip)
    with pytest.raises(ValueError, match="needs y"):
        wm.dit_forward(params, cfg, x, 1.0, context, clip_fea=clip)
    with pytest.raises(ValueError, match="needs clip_fea"):
        wm.dit_forward(params, cfg, x, 1.0, context, y=y, clip_fea=clip.repeat(2, 1, 1))
    with pytest.raises(ValueError, match="context"):
        wm.dit_forward(params, cfg, x, 1.0, torch.zeros(513, cfg.text_dim), y=y, clip_fea=clip)


def test_random_1_3B_forward_is_finite():
    """Real T2V-1.3B dims, random weights, a 2x4x4 latent: about 6 GB and 15 s."""
    cfg = wm.DIT_CONFIGS["t2v-1.3B"]
    t0 = time.time()
    params = wm.random_weights(wm.dit_param_shapes(cfg), seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, 4, 4, generator=g)
    context = torch.randn(9, 4096, generator=g)
    out = wm.dit_forward(params, cfg, x, 999.0, context)
    print(f"1.3B random forward incl. weights: {time.time() - t0:.1f} s")
    assert out.shape == (16, 2, 4, 4) and torch.isfinite(out).all() and out.abs().max() > 0


# ==================================================================================================
# UMT5 vs transformers UMT5EncoderModel, tokenizer vs transformers T5Tokenizer
# ==================================================================================================

@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    path = save(tmp_path_factory.mktemp("t5") / "tiny_umt5.safetensors", wm.tiny_weights("t5", "tiny", seed=5))
    params, tokenizer = wm.load_t5(path, wm.T5_CONFIGS["tiny"])
    return path, params, tokenizer


def hf_umt5(cfg, params):
    from transformers import UMT5Config, UMT5EncoderModel

    model = UMT5EncoderModel(UMT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.ffn_dim, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        layer_norm_epsilon=cfg.eps))
    # the file stores the embedding once as `shared.weight`; HF ties encoder.embed_tokens to it
    model.load_state_dict(dict(params, **{"encoder.embed_tokens.weight": params["shared.weight"]}), strict=True)
    return model.eval()


def test_t5_matches_transformers_with_padding(tiny_t5):
    _, params, _ = tiny_t5
    cfg = wm.T5_CONFIGS["tiny"]
    assert all(v.dtype == torch.float32 for v in params.values())
    model = hf_umt5(cfg, params)
    g = torch.Generator().manual_seed(0)
    lengths = (160, 131)   # beyond max_distance 128: exact, log and clamped buckets all used
    ids = torch.zeros(2, 160, dtype=torch.long)
    mask = torch.zeros(2, 160, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(3, cfg.vocab_size, (n,), generator=g)
        ids[b, n - 1] = wm.T5_EOS
        mask[b, :n] = 1
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
    for b, n in enumerate(lengths):
        trimmed = wm.t5_forward(params, cfg, ids[b, :n])
        padded = wm.t5_forward(params, cfg, ids[b], mask=mask[b].bool())[:n]
        e1, e2 = rel_err(trimmed, ref[b, :n]), rel_err(padded, ref[b, :n])
        print(f"UMT5 len {n}: rel err trimmed {e1:.2e}, padded {e2:.2e} (tol {T5_TOL:g})")
        assert e1 <= T5_TOL and e2 <= T5_TOL


def test_t5_position_buckets_match_transformers(tiny_t5):
    _, params, _ = tiny_t5
    cfg = wm.T5_CONFIGS["tiny"]
    attn = hf_umt5(cfg, params).encoder.block[0].layer[0].SelfAttention
    pos = torch.arange(300)
    ref = attn._relative_position_bucket(pos[None, :] - pos[:, None])
    assert torch.equal(wm.t5_position_buckets(300, cfg), ref)


PROMPTS = [
    "A red fox runs through the snowy forest at dawn.",
    "  Two cats   play\twith a ball of yarn \n on a wooden floor.  ",
    "Close-up: a dog's face &amp; ears, moving in the wind!",
    "Über das Café fliegt ein Ballon, 12:30 Uhr; naïve façade.",
    "城市夜景，霓虹灯闪烁 and cars pass",
    "ﬁreworks ① explode — over the harbor…",
    "x" * 700,
    "",
]


def test_tokenizer_matches_transformers(tiny_t5, tmp_path):
    from transformers import T5Tokenizer

    _, _, tokenizer = tiny_t5
    (tmp_path / "spiece.model").write_bytes(wm.tiny_spiece_model())
    hf = T5Tokenizer.from_pretrained(str(tmp_path), extra_ids=0)
    for prompt in PROMPTS:
        # upstream: HF tokenizer on the cleaned prompt, max_length 512 with truncation, EOS added
        ref = hf(wm.clean_prompt(prompt), max_length=512, truncation=True).input_ids
        assert wm.tokenize(tokenizer, prompt) == ref, prompt
    assert len(wm.tokenize(tokenizer, "x" * 700)) == 512


def test_clean_prompt_whitespace_mode():
    assert wm.clean_prompt("  a\t b \n\n c  ") == "a b c"
    assert wm.clean_prompt("fish &amp;amp; chips") == "fish & chips"


def test_encode_text_is_trimmed_t5_output(tiny_t5):
    _, params, tokenizer = tiny_t5
    cfg = wm.T5_CONFIGS["tiny"]
    feats = wm.encode_text(params, cfg, tokenizer, PROMPTS[1])
    ids = wm.tokenize(tokenizer, PROMPTS[1])
    assert feats.shape == (len(ids), cfg.dim) and feats.dtype == torch.float32
    padded = torch.tensor(ids + [0] * (40 - len(ids)))
    mask = torch.arange(40) < len(ids)
    assert rel_err(feats, wm.t5_forward(params, cfg, padded, mask=mask)[: len(ids)]) < 1e-6


def test_load_t5_tokenizer_sources_and_dtypes(tiny_t5, tmp_path):
    path, params, tokenizer = tiny_t5
    cfg = wm.T5_CONFIGS["tiny"]
    assert "spiece_model" not in params
    with pytest.raises(ValueError, match="float16"):
        wm.load_t5(path, cfg, dtype=torch.float16)
    weights = wm.tiny_weights("t5", "tiny", seed=5)
    del weights["spiece_model"]
    bare = save(tmp_path / "bare.safetensors", weights)
    assert "no 'spiece_model'" in one_line_error(lambda: wm.load_t5(bare, cfg))
    spiece = tmp_path / "spiece.model"
    spiece.write_bytes(wm.tiny_spiece_model())
    _, tok2 = wm.load_t5(bare, cfg, spiece_path=str(spiece))
    assert tok2.encode(PROMPTS[0]) == tokenizer.encode(PROMPTS[0])
    bf16, _ = wm.load_t5(path, cfg, dtype=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in bf16.values())
    # bf16 is as close to float32 as transformers' own bf16 run (unscaled T5 logits make both a few % off)
    ids = torch.tensor(wm.tokenize(tokenizer, PROMPTS[0]))
    ref = wm.t5_forward(params, cfg, ids)
    with torch.no_grad():
        hf = hf_umt5(cfg, params).to(torch.bfloat16)(input_ids=ids[None]).last_hidden_state[0].float()
    assert rel_err(wm.t5_forward(bf16, cfg, ids), ref) <= 2 * rel_err(hf, ref)
    msg = one_line_error(lambda: wm.load_dit(path, wm.DIT_CONFIGS["tiny-t2v"]))
    assert "missing key" in msg


def test_tiny_spiece_model_is_deterministic():
    a, b = wm.tiny_spiece_model(), wm.tiny_spiece_model()
    assert a == b
    code = ("import sys, hashlib; sys.path.insert(0, '.'); import wan_model as wm; "
            "print(hashlib.sha256(wm.tiny_spiece_model()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], cwd=os.path.join(os.path.dirname(__file__), ".."),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == hashlib.sha256(a).hexdigest()


# ==================================================================================================
# CLIP vs transformers CLIPVisionModel hidden_states[-2]
# ==================================================================================================

def test_clip_matches_transformers(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = wm.CLIP_CONFIGS["tiny"]
    weights = wm.tiny_weights("clip", "tiny", seed=7)
    path = save(tmp_path / "tiny_clip_vision.safetensors", weights)
    params = wm.load_clip(path, cfg)
    assert "vision_model.encoder.layers.2.mlp.fc1.weight" not in params    # the last layer is never read
    model = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        hidden_act="gelu", layer_norm_eps=cfg.eps, projection_dim=cfg.proj_dim)).eval()
    # transformers 5 names the bare vision model's keys without `vision_model.`; the projection is not part of it
    state = {k[len("vision_model."):]: v.float() for k, v in weights.items() if k.startswith("vision_model.")}
    model.load_state_dict(state, strict=True)

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 56, 56, generator=g) * 2 - 1
    odd = torch.rand(1, 3, 70, 90, generator=g) * 2 - 1
    mean = torch.tensor(wm.CLIP_MEAN)[:, None, None]
    std = torch.tensor(wm.CLIP_STD)[:, None, None]
    for imgs in (images, odd):
        out = wm.clip_encode(params, cfg, imgs)
        resized = torch.nn.functional.interpolate(imgs, size=(56, 56), mode="bicubic", align_corners=False)
        with torch.no_grad():
            ref = model(pixel_values=(resized * 0.5 + 0.5 - mean) / std, output_hidden_states=True).hidden_states[-2]
        assert out.shape == (imgs.shape[0], 17, cfg.dim)
        err = rel_err(out, ref)
        print(f"CLIP {tuple(imgs.shape)}: rel err {err:.2e} (tol {CLIP_TOL:g})")
        assert err <= CLIP_TOL


def test_tiny_weights_layouts_and_dtypes():
    t5 = wm.tiny_weights("t5", "tiny")
    assert t5["spiece_model"].dtype == torch.uint8 and t5["shared.weight"].dtype == torch.float16
    assert wm.tiny_weights("dit", "tiny-t2v")["head.head.weight"].dtype == torch.float32
    assert wm.tiny_weights("dit", "tiny-flf2v")["img_emb.emb_pos"].shape == (1, 34, 32)
    assert wm.tiny_weights("clip", "tiny")["visual_projection.weight"].dtype == torch.float16
    a, b = wm.tiny_weights("dit", "tiny-t2v", seed=1), wm.tiny_weights("dit", "tiny-t2v", seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.abs().max() > 0 for v in a.values())    # nothing left at zero (upstream zero-inits the head)


@pytest.mark.parametrize("e,lq,lk,masked", [(8, 18, 512, False), (8, 15, 15, True), (64, 1, 77, False),
                                            (128, 2, 257, False), (64, 15, 15, True)])
def test_small_attention_is_thread_count_independent(e, lq, lk, masked):
    """Small CPU attention (the tiny models, short prompts) gives the same bits with 1, 2 and 3 threads, and
    equals torch's SDPA up to float rounding. (These shapes made the fused kernel round differently.)"""
    g = torch.Generator().manual_seed(e + lq + lk)
    q, k, v = (torch.randn(4, n, e, generator=g) for n in (lq, lk, lk))              # [N, L, E]
    mask = torch.randn(4, lq, lk, generator=g) if masked else None
    threads = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(wm.attention(q, k, v, mask))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)        # math reference
    assert torch.allclose(outs[0], ref.transpose(0, 1).reshape(lq, -1), rtol=1e-5, atol=1e-6)
