"""Wan2.1 model stack as pure functions over weight dicts: DiT, UMT5 text encoder, CLIP image encoder.

Every function here takes a flat dict of tensors keyed exactly as in the official-layout safetensors files
(official Wan names for the DiT, Hugging Face names for UMT5 and CLIP, see ../shared/spec/wan.md sections 1, 3
and 1.8; a diffusers-layout folder's names are mapped to these as they are read), plus a frozen config. There is
no nn.Module and no hidden state (the one cache, of the weight files' digests, is keyed by the files' identity).
Reading order:

    Weight files   load_weights (shared with vae.py), read_header, read_stored; weight folders (official and
                   diffusers layouts); content digests (the model fingerprint); random_weights
    Configs        DiTConfig / DIT_CONFIGS, T5Config / T5_CONFIGS, CLIPConfig / CLIP_CONFIGS
    Layers         linear, norms, GELUs, attention, timestep sinusoid, 3D RoPE
    DiT            dit_param_shapes, load_dit, dit_forward
    UMT5           t5_param_shapes, load_t5, clean_prompt, tokenize, t5_forward, encode_text
    CLIP           clip_param_shapes, load_clip, clip_encode
    Tiny weights   tiny_spiece_model, tiny_weights

Shape letters used in the comments:
    C channels, F latent frames, H W latent height and width, Hp Wp patch grid (H/2, W/2)
    L video tokens (F*Hp*Wp), D model width, N heads, E head width (D/N), P RoPE pairs (E/2)
    Lt text tokens (Lt' = text_len after padding), Lc context tokens (Li + text_len), Li image tokens,
    Dt text width, Dc CLIP width
    Dff FFN width, V vocabulary, n_img CLIP images

Precision policy. The parameters' dtype is the compute dtype of the big matrix products. float32 params give
the reference path. bfloat16 params (load_dit(dtype=torch.bfloat16)) follow upstream's autocast run: matmuls,
convs and attention in bf16, while the time embedding and projection, every modulation table, every norm and
the head keep float32 weights and compute in float32, and the DiT residual stream is float32 (upstream's fp32
islands, wan.md 1.5). Tables (timestep sinusoid, RoPE angles) are computed in float64 and cast to float32;
RoPE uses real cos/sin on interleaved pairs, not complex numbers.
"""
import html
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F


# ==================================================================================================
# Weight files
# ==================================================================================================

class WeightsError(Exception):
    """A weight file is missing, incomplete or does not match the model asked for (one-line message)."""


# Prefixes that repackaged checkpoints put in front of the official key names (Comfy-Org's 1.3B DiT).
KNOWN_PREFIXES = ("model.diffusion_model.",)


def weight_files(path):
    """The safetensors file(s) behind `path`: one file, or every shard listed by a `*.safetensors.index.json`."""
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such weight file")
    if path.endswith(".index.json"):
        try:
            with open(path) as fh:
                shard_names = sorted(set(json.load(fh)["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"{path}: not a safetensors index ({exc})") from None
        return [os.path.join(os.path.dirname(path), name) for name in shard_names]
    return [path]


# safetensors layout: u64 little-endian header size N, N bytes of JSON {key: {dtype, shape, data_offsets:
# [begin, end)}, "__metadata__": {...}}, then the raw little-endian tensor data, offsets counted from byte 8 + N.
# gvcc reads it with plain seek/read rather than safetensors' whole-file mmap: the kernel refuses to map a file
# larger than RAM + swap (a 28.6 GB 14B DiT on a 24 GB machine), and one read per tensor is all a loader needs.
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_FLOAT_DTYPES = ("F32", "F16", "BF16")


class StoredTensor(NamedTuple):
    file: str                # the safetensors file holding it
    key: str                 # its key as stored (with any prefix)
    shape: tuple
    dtype: str               # safetensors dtype string: 'F32', 'F16', 'BF16', 'U8', ...
    begin: int               # absolute byte range in the file
    end: int


def _file_header(fname):
    """{key as stored: StoredTensor} of one safetensors file; WeightsError if damaged or truncated."""
    try:
        with open(fname, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n > size - 8:
                raise ValueError(f"header size {n} does not fit in {size} bytes")
            header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        out = {}
        for key, entry in header.items():
            begin, end = (8 + n + o for o in entry["data_offsets"])
            shape = tuple(int(s) for s in entry["shape"])
            if entry["dtype"] not in _ST_DTYPES or end < begin:
                raise ValueError(f"bad entry for '{key}'")
            out[key] = StoredTensor(fname, key, shape, entry["dtype"], begin, end)
    except OSError as exc:
        raise WeightsError(f"{fname}: cannot read ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{fname}: not a readable safetensors file ({exc})") from None
    last = max(out.values(), key=lambda t: t.end, default=None)
    if last is not None and last.end > size:
        raise WeightsError(f"{fname}: truncated: '{last.key}' ends at byte {last.end}, the file has {size} "
                           f"(incomplete download?)")
    return out


def read_header(path, rename=None):
    """{name: StoredTensor} for every tensor behind `path` (file or shard index), known prefix stripped.

    rename maps a stored name to the official one (dit_official_name, vae.official_name, ...: the diffusers
    layout's tables); two stored tensors that map to one name are a WeightsError. Reads only the headers (no
    tensor data), so it is cheap even for the 14B files.
    """
    stored = {}
    for fname in weight_files(path):
        if not os.path.exists(fname):
            raise WeightsError(f"{fname}: shard listed in {path} is missing")
        for key, entry in _file_header(fname).items():
            name = key
            for prefix in KNOWN_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
            if rename is not None:
                name = rename(name)
            if name in stored:
                raise WeightsError(f"{fname}: '{key}' and '{stored[name].key}' are both '{name}'")
            stored[name] = entry
    return stored


def read_tensor(fh, entry):
    """Read one tensor's bytes from an open file into a fresh CPU tensor of its stored dtype and shape."""
    buf = torch.empty(entry.end - entry.begin, dtype=torch.uint8)
    fh.seek(entry.begin)
    if fh.readinto(buf.numpy()) != buf.numel():
        raise WeightsError(f"{entry.file}: truncated while reading '{entry.key}'")
    return buf.view(_ST_DTYPES[entry.dtype]).reshape(entry.shape)


def read_stored(path, names):
    """{name: tensor exactly as stored} for a few keys of `path` (e.g. to fingerprint a checkpoint)."""
    stored = read_header(path)
    out = {}
    for name in names:
        if name not in stored:
            raise WeightsError(f"{path}: missing key '{name}'")
        with open(stored[name].file, "rb") as fh:
            out[name] = read_tensor(fh, stored[name])
    return out


def load_weights(path, expected, dtype=torch.float32, device="cpu", extra_ok=(), skip=(), rename=None):
    """Read the tensors named in `expected` ({key: shape}) from `path`, casting floating ones to `dtype`.

    `dtype` is a torch dtype, or a function key -> dtype (how load_dit keeps its fp32 islands).
    The file is read lazily, one tensor at a time, so peak memory is the returned dict plus one tensor.
    An optional known prefix (KNOWN_PREFIXES) is stripped and `rename` maps other layouts' names to the
    official ones (read_header). Keys in `extra_ok` may be present and are returned as stored (e.g. the uint8
    `spiece_model` tensor); keys in `skip` may be present and are not read (weights the model never uses).
    Any other key the file has beyond `expected`, any missing key, wrong shape or non-float dtype is a
    WeightsError naming key and file.
    """
    stored = read_header(path, rename)
    for name in expected:
        if name not in stored:
            raise WeightsError(f"{path}: missing key '{name}' (expected shape {list(expected[name])})")
    unexpected = sorted(set(stored) - set(expected) - set(extra_ok) - set(skip))
    if unexpected:
        raise WeightsError(f"{path}: unexpected key '{unexpected[0]}' ({len(unexpected)} unexpected in all); "
                           f"is this the right model file?")
    for name, shape in expected.items():
        entry = stored[name]
        if entry.shape != tuple(shape):
            raise WeightsError(f"{entry.file}: key '{name}' has shape {list(entry.shape)}, expected {list(shape)}")
        if entry.dtype not in _FLOAT_DTYPES:
            raise WeightsError(f"{entry.file}: key '{name}' has dtype {entry.dtype}, expected F32, F16 or BF16")
    out = {}
    handles = {}
    try:
        for name, entry in stored.items():
            if name not in expected and name in skip:
                continue
            if entry.file not in handles:
                handles[entry.file] = open(entry.file, "rb")
            tensor = read_tensor(handles[entry.file], entry)
            if name in expected:
                want = dtype(name) if callable(dtype) else dtype
                tensor = tensor.to(device=device, dtype=want)
            out[name] = tensor
    finally:
        for fh in handles.values():
            fh.close()
    return out


# --------------------------------------------------------------------------------------------------
# Weight folders: two layouts of the same networks (`gvcc.py --weights DIR`)
# --------------------------------------------------------------------------------------------------
# official:  one safetensors file per network, named as gvcc.py's MODELS table says (what weights_fetch.sh
#            fetches): official Wan names for the DiT and VAE, Hugging Face names for UMT5 and CLIP, the
#            tokenizer inside the UMT5 file as the uint8 tensor `spiece_model`.
# diffusers: a Wan-AI/Wan2.1-*-Diffusers pipeline folder, recognised by its model_index.json: one subfolder per
#            network, each one safetensors file or shards with an index, diffusers / transformers names, the
#            tokenizer in tokenizer/. The loaders map the names (dit_official_name, vae.official_name,
#            clip_official_name; UMT5's are the same in both layouts).
DIFFUSERS_FILES = {                     # network -> (subfolder, file name without .safetensors)
    "dit": ("transformer", "diffusion_pytorch_model"),
    "vae": ("vae", "diffusion_pytorch_model"),
    "t5": ("text_encoder", "model"),
    "clip": ("image_encoder", "model"),
}
DIFFUSERS_TOKENIZER = ("tokenizer", "spiece.model")


def pipeline_folder(weights_dir):
    """The diffusers pipeline folder that `weights_dir` names, or None when it is an official-layout folder.

    That is `weights_dir` itself when it holds model_index.json, or, for a Hugging Face cache entry
    (~/.cache/huggingface/hub/models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers), the snapshot its refs/main names.
    """
    if os.path.isfile(os.path.join(weights_dir, "model_index.json")):
        return weights_dir
    try:
        with open(os.path.join(weights_dir, "refs", "main")) as fh:
            snapshot = os.path.join(weights_dir, "snapshots", fh.read().strip())
    except OSError:
        return None
    return snapshot if os.path.isfile(os.path.join(snapshot, "model_index.json")) else None


def diffusers_file(folder, part):
    """The weights of network `part` in a pipeline folder: SUB/NAME.safetensors.index.json when sharded, else
    SUB/NAME.safetensors; None when neither exists."""
    sub, name = DIFFUSERS_FILES[part]
    for path in (os.path.join(folder, sub, name + ".safetensors.index.json"),
                 os.path.join(folder, sub, name + ".safetensors")):
        if os.path.exists(path):
            return path
    return None


def tokenizer_file(t5_path):
    """The SentencePiece model of a UMT5 file in a pipeline folder's text_encoder/: ../tokenizer/spiece.model,
    or None when there is none."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(t5_path))), *DIFFUSERS_TOKENIZER)
    return path if os.path.isfile(path) else None


# --------------------------------------------------------------------------------------------------
# Content digests (gvcc.py's model fingerprint): SHA-256 of every tensor's stored bytes
# --------------------------------------------------------------------------------------------------
# Hashing reads every byte of a file (SHA-256 runs at about 1.7 GB/s on one core here), so a file's digests are
# cached, in this process and on disk (one JSON file per weight file in $GVCC_CACHE, else $XDG_CACHE_HOME/gvcc,
# else ~/.cache/gvcc), under the file's identity: device, inode, size, modification and change times. An entry
# is kept only when the file had not changed for DIGEST_RACY_NS before it was hashed (git's rule for "racily
# clean" files): a write in the same clock tick as an earlier one may leave the times as they were.
DIGEST_CACHE_VERSION = 1
DIGEST_RACY_NS = 2 * 10 ** 9
DIGEST_CHUNK = 16 << 20                 # bytes read at a time
DIGEST_THREADS = 8                      # tensors hashed at once, at most (and at most the machine's cores)
_DIGESTS = {}                           # realpath -> (identity, {stored key: sha256 hex})


def digest_cache_folder():
    """Where digests are cached on disk: $GVCC_CACHE, else $XDG_CACHE_HOME/gvcc, else ~/.cache/gvcc."""
    if os.environ.get("GVCC_CACHE"):
        return os.environ["GVCC_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gvcc")


def _identity(st):
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _hash_tensors(fname):
    """{stored key: sha256 hex of its bytes} of every tensor of one safetensors file, read in DIGEST_CHUNK pieces.

    Tensors are hashed by up to DIGEST_THREADS threads (file reads and hashlib release the GIL), each with its
    own file handle and buffer, so a machine with a few cores hashes about as fast as its disk reads."""
    import hashlib
    import threading
    from concurrent.futures import ThreadPoolExecutor
    local = threading.local()

    def digest(entry):
        if not hasattr(local, "fh"):
            local.fh, local.buf = open(fname, "rb"), memoryview(bytearray(DIGEST_CHUNK))
            handles.append(local.fh)
        h, left = hashlib.sha256(), entry.end - entry.begin
        local.fh.seek(entry.begin)
        while left:
            n = local.fh.readinto(local.buf[:min(left, DIGEST_CHUNK)])
            if not n:
                raise WeightsError(f"{fname}: truncated while reading '{entry.key}'")
            h.update(local.buf[:n])
            left -= n
        return h.hexdigest()

    entries, handles = sorted(_file_header(fname).values(), key=lambda e: e.begin), []
    try:
        with ThreadPoolExecutor(min(DIGEST_THREADS, os.cpu_count() or 1)) as pool:
            return {e.key: d for e, d in zip(entries, pool.map(digest, entries))}
    finally:
        for fh in handles:
            fh.close()


def file_digests(fname, on_hash=None):
    """{stored key: sha256 hex} of every tensor of one safetensors file, from the cache when it holds an entry for
    the file as it is now, else hashed (on_hash(fname, size) is called first: hashing a 14B DiT takes a while)."""
    import hashlib
    real = os.path.realpath(fname)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise WeightsError(f"{fname}: cannot read ({exc.strerror})") from None
    ident = _identity(st)
    if real in _DIGESTS and _DIGESTS[real][0] == ident:
        return _DIGESTS[real][1]
    entry = os.path.join(digest_cache_folder(), "weights", hashlib.sha256(real.encode()).hexdigest()[:32] + ".json")
    try:
        with open(entry) as fh:
            cached = json.load(fh)
        if cached["version"] == DIGEST_CACHE_VERSION and cached["path"] == real and cached["identity"] == ident:
            _DIGESTS[real] = (ident, cached["tensors"])
            return cached["tensors"]
    except (OSError, ValueError, KeyError, TypeError):
        pass                            # no entry, or a damaged one: hash again
    if on_hash is not None:
        on_hash(fname, st.st_size)
    started = time.time_ns()
    digests = _hash_tensors(real)
    if _identity(os.stat(real)) != ident or max(st.st_mtime_ns, st.st_ctime_ns) + DIGEST_RACY_NS > started:
        return digests                  # changed during hashing, or too recently to trust its times
    _DIGESTS[real] = (ident, digests)
    tmp = f"{entry}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        with open(tmp, "w") as fh:
            json.dump({"version": DIGEST_CACHE_VERSION, "path": real, "identity": ident, "tensors": digests}, fh)
        os.replace(tmp, entry)
    except OSError:                     # an unwritable cache only costs the next run the hashing
        if os.path.exists(tmp):
            os.remove(tmp)
    return digests


def tensor_digests(path, rename=None, on_hash=None):
    """{name: (safetensors dtype, shape, sha256 hex)} of every tensor behind `path` (file or shard index), named
    as read_header names them."""
    stored = read_header(path, rename)
    digests = {fname: file_digests(fname, on_hash) for fname in sorted({e.file for e in stored.values()})}
    return {name: (e.dtype, e.shape, digests[e.file][e.key]) for name, e in stored.items()}


def random_weights(shapes, seed, dtype=torch.float32):
    """Deterministic random weights for tests and the tiny model, every tensor random (none left at zero).

    Each tensor comes from its own CPU generator seeded by (seed, position in `shapes`), so its values do
    not depend on which other tensors exist. Values are uniform with unit variance, u = sqrt(3) (2 (k + 0.5) /
    2^24 - 1) for integers k drawn in [0, 2^24), computed in float64 and rounded once to float32: integer draws
    and correctly rounded arithmetic give the same weights on every CPU (torch's normal_ does not: its AVX2
    and scalar kernels round differently, which changed the tiny models, and so their fingerprint, between
    machines). Norm gains (keys ending in `gamma` or a norm's `.weight`) are 1 + 0.1 u; other vectors 0.1 u;
    matrices and kernels u / sqrt(fan_in).
    """
    out = {}
    for i, (key, shape) in enumerate(shapes.items()):
        gen = torch.Generator().manual_seed(seed * 100003 + i)
        k = torch.randint(0, 1 << 24, tuple(shape), generator=gen, dtype=torch.int64)
        u = k.to(torch.float64)
        del k
        w = u.add_(0.5).mul_(2.0 / (1 << 24)).sub_(1.0).mul_(3.0 ** 0.5).to(torch.float32)       # in place
        del u
        leaf = key.rsplit(".", 2)
        is_norm_gain = key.endswith("gamma") or (key.endswith(".weight") and "norm" in leaf[-2])
        if is_norm_gain:
            w.mul_(0.1).add_(1.0)
        elif len(shape) >= 2:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            w.div_(fan_in ** 0.5)
        else:
            w.mul_(0.1)
        out[key] = w.to(dtype)
    return out


def _preset_names(cfg, presets):
    """Every preset name whose config equals `cfg` ('i2v-14B-480P / i2v-14B-720P' share one)."""
    names = [name for name, c in presets.items() if c == cfg]
    return " / ".join(names) if names else "the requested config"


def _check_model(path, header, cfg, presets, shapes_fn, optional=(), kind="model"):
    """Raise a WeightsError when the file holds another preset than `cfg` (recognised from its shapes).

    A file matches a preset when its keys, apart from `optional` ones, are exactly the preset's keys with
    the preset's shapes. When the file matches no preset at all, return and let load_weights name the
    first key that differs.
    """
    have = {name: entry.shape for name, entry in header.items() if name not in optional}
    want = {name: tuple(shape) for name, shape in shapes_fn(cfg).items()}
    if have == want:
        return
    matches = [name for name, c in presets.items()
               if {k: tuple(s) for k, s in shapes_fn(c).items()} == have]
    if matches:
        raise WeightsError(f"{path}: file looks like {kind} {' / '.join(matches)}, "
                           f"not {_preset_names(cfg, presets)}")


# ==================================================================================================
# Configs
# ==================================================================================================

PATCH = (1, 2, 2)        # DiT patch (frames, rows, cols) on the latent; the same in every released model
ROPE_THETA = 10000.0
ROPE_MAX_POS = 1024      # upstream's RoPE table length per axis: a latent grid side may not exceed it


@dataclass(frozen=True)
class DiTConfig:
    model_type: str          # 't2v' | 'i2v' | 'flf2v' (i2v/flf2v add the image cross-attention and img_emb)
    dim: int                 # D, model width
    ffn_dim: int             # Dff, FFN hidden width
    num_heads: int           # N (head width E = dim / num_heads, 128 in every released model)
    num_layers: int          # transformer blocks
    in_dim: int              # input channels: 16 latent (t2v), 16 latent + 4 mask + 16 condition (i2v/flf2v)
    out_dim: int = 16        # output channels (velocity of the 16-channel latent)
    freq_dim: int = 256      # width of the timestep sinusoid
    text_dim: int = 4096     # Dt, width of the text features (UMT5 d_model)
    text_len: int = 512      # text context is zero-padded to exactly this many rows
    clip_dim: int = 1280     # Dc, width of the CLIP features (i2v/flf2v)
    clip_tokens: int = 257   # CLIP tokens per image (CLS + 16x16 patches)
    eps: float = 1e-6        # LayerNorm / RMSNorm epsilon inside the blocks


_WAN14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
# tiny presets: same key names, sized so a forward on a 9x8x8 latent takes milliseconds on a CPU; text_dim and
# clip_dim are the widths of the tiny UMT5 and tiny CLIP presets below, clip_tokens = (56/14)^2 + 1.
_TINY = dict(dim=64, ffn_dim=96, num_heads=2, num_layers=2, freq_dim=32, text_dim=32, clip_dim=32, clip_tokens=17)
# demo presets: gvcc's own small trained DiTs (bench/train_demo.py), with the tiny text and image encoders
_DEMO = dict(dim=128, ffn_dim=384, num_heads=2, num_layers=6, text_dim=32, clip_dim=32, clip_tokens=17)
DIT_CONFIGS = {
    "t2v-1.3B": DiTConfig("t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16),
    "t2v-14B": DiTConfig("t2v", in_dim=16, **_WAN14B),
    "i2v-14B-480P": DiTConfig("i2v", in_dim=36, **_WAN14B),
    "i2v-14B-720P": DiTConfig("i2v", in_dim=36, **_WAN14B),      # same architecture as 480P, other weights
    "flf2v-14B-720P": DiTConfig("flf2v", in_dim=36, **_WAN14B),
    "tiny-t2v": DiTConfig("t2v", in_dim=16, **_TINY),
    "tiny-i2v": DiTConfig("i2v", in_dim=36, **_TINY),
    "tiny-flf2v": DiTConfig("flf2v", in_dim=36, **_TINY),
    "demo-t2v": DiTConfig("t2v", in_dim=16, **_DEMO),
    "demo-i2v": DiTConfig("i2v", in_dim=36, **_DEMO),
    "demo-flf2v": DiTConfig("flf2v", in_dim=36, **_DEMO),
}


@dataclass(frozen=True)
class T5Config:
    vocab_size: int          # V, rows of the token embedding `shared.weight`
    dim: int                 # D, model width (d_model)
    num_heads: int           # N
    head_dim: int            # E (d_kv); attention width N*E equals D in UMT5-XXL
    ffn_dim: int             # Dff of the gated-GELU FFN (d_ff)
    num_layers: int          # encoder blocks
    num_buckets: int = 32    # relative-position buckets (half for keys before, half for keys after the query)
    max_distance: int = 128  # distances >= this share the last bucket
    eps: float = 1e-6        # RMSNorm epsilon
    text_len: int = 512      # tokenizer truncation length, EOS included


T5_CONFIGS = {
    "umt5-xxl": T5Config(vocab_size=256384, dim=4096, num_heads=64, head_dim=64, ffn_dim=10240, num_layers=24),
    "tiny": T5Config(vocab_size=128, dim=32, num_heads=4, head_dim=8, ffn_dim=48, num_layers=2),
}


@dataclass(frozen=True)
class CLIPConfig:
    image_size: int          # input side the image is resized to (224)
    patch_size: int          # ViT patch (14): tokens = (image_size / patch_size)^2 + 1 CLS
    dim: int                 # Dc, width
    ffn_dim: int             # MLP hidden width
    num_heads: int           # N
    num_layers: int          # encoder layers in the file; Wan uses the output of layer num_layers - 2
    proj_dim: int            # rows of `visual_projection.weight` (in the file, unused by Wan)
    eps: float = 1e-5        # LayerNorm epsilon


CLIP_CONFIGS = {
    "vit-h-14": CLIPConfig(image_size=224, patch_size=14, dim=1280, ffn_dim=5120, num_heads=16, num_layers=32,
                           proj_dim=1024),
    "tiny": CLIPConfig(image_size=56, patch_size=14, dim=32, ffn_dim=64, num_heads=2, num_layers=3, proj_dim=16),
}

# CLIP input normalisation (OpenAI CLIP statistics, used by Wan's open-clip ViT-H)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ==================================================================================================
# Layers (shared by the three models)
# ==================================================================================================

def linear(x, w, b=None):
    """x @ w.T + b in the weight's dtype: the bf16 path casts activations down here, and only here."""
    return F.linear(x.to(w.dtype), w, b)


def layer_norm(x, w=None, b=None, eps=1e-6):
    """LayerNorm over the last axis, always computed in float32 (w, b may be None: no affine)."""
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps)


def rms_norm(x, w, eps):
    """Wan RMSNorm over the whole last axis (all heads together), in float32: x / sqrt(mean(x^2) + eps) * w."""
    return F.rms_norm(x.float(), x.shape[-1:], w.float(), eps)


def t5_rms_norm(x, w, eps):
    """T5 RMSNorm: mean square in float32, result cast to the weight's dtype when that is 16-bit (as HF/official)."""
    y = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    if w.dtype in (torch.float16, torch.bfloat16):
        y = y.to(w.dtype)
    return w * y


def gelu_tanh(x):
    """GELU, tanh approximation (DiT FFN and text MLP; HF 'gelu_new' in T5)."""
    return F.gelu(x, approximate="tanh")


# Below this many scores per head, a CPU attention takes the plain matmul-softmax-matmul path (see attention).
SMALL_ATTENTION = 1 << 16


def attention(q, k, v, mask=None, scale=None):
    """Multi-head attention: q [N, Lq, E], k, v [N, Lk, E] -> [Lq, N*E].

    `mask` is an additive float bias [N, Lq, Lk]; `scale` defaults to 1/sqrt(E).
    Large problems go through torch SDPA's fused kernel. The leading batch axis of 1 matters: torch's fused CPU
    kernel takes 4-D inputs (and masks) only, 3-D ones fall back to the math path, which materialises the scores
    (2.3 GB at 4680 tokens, twice the time).
    Small problems on a CPU (Lq Lk < SMALL_ATTENTION, or E < 16) are computed here as softmax(q k^T s + mask) v:
    torch 2.13's fused CPU kernel gives different bits with different thread counts for them (every length at
    E = 8, query lengths 1 and 2 at every E), this path gives the same bits for any thread count, and at these
    sizes it costs nothing. Both are the same attention up to float rounding.
    """
    n, lq, e = q.shape
    if q.device.type == "cpu" and (lq * k.shape[1] < SMALL_ATTENTION or e < 16):
        scores = torch.matmul(q, k.transpose(1, 2)) * (e ** -0.5 if scale is None else scale)   # [N, Lq, Lk]
        if mask is not None:
            scores = scores + mask                                                           # [N, Lq, Lk]
        out = torch.matmul(torch.softmax(scores, dim=-1), v)                                 # [N, Lq, E]
    else:
        mask = None if mask is None else mask[None]                                          # [1, N, Lq, Lk]
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=scale)[0]  # [N, Lq, E]
    return out.transpose(0, 1).reshape(lq, -1)                                               # [Lq, N*E]


def split_heads(x, num_heads):
    """[L, N*E] -> [N, L, E] (a view)."""
    return x.unflatten(-1, (num_heads, -1)).transpose(0, 1)


def timestep_sinusoid(t, freq_dim):
    """Sinusoidal timestep embedding [freq_dim], float64 then float32: [cos(t w_i), sin(t w_i)], w_i = 10000^(-i/half).

    Cosines first (upstream's order). `t` is used as given (gvcc feeds 1000*sigma, not truncated).
    """
    half = freq_dim // 2
    omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)      # [half]
    angle = float(t) * omega                                                          # [half]
    return torch.cat([torch.cos(angle), torch.sin(angle)]).float()                    # [freq_dim]


def rope_axis_dims(head_dim):
    """Real dims of the (frame, row, col) RoPE axes: E - 4*(E//6), 2*(E//6), 2*(E//6) (44/42/42 for E = 128)."""
    d_hw = 2 * (head_dim // 6)
    return head_dim - 2 * d_hw, d_hw, d_hw


def rope_tables(grid, head_dim):
    """cos, sin [L, P] float32 for the tokens of a (F, Hp, Wp) grid in (f, h, w) row-major order.

    Each axis has its own frequencies w_j = theta^(-2j/d) with d that axis's real dim; token (f, h, w) gets the
    angles [f*w_t (d_t/2), h*w_h (d_h/2), w*w_w (d_w/2)], shared by all heads. Angles in float64, then cast.
    """
    if max(grid) > ROPE_MAX_POS:
        raise ValueError(f"latent grid {tuple(grid)} exceeds the RoPE table length {ROPE_MAX_POS}")
    f, h, w = grid
    axes = []
    for n, d in zip(grid, rope_axis_dims(head_dim)):
        omega = 1.0 / torch.pow(ROPE_THETA, torch.arange(0, d, 2, dtype=torch.float64) / d)   # [d/2]
        axes.append(torch.outer(torch.arange(n, dtype=torch.float64), omega))                  # [n, d/2]
    angle = torch.cat([
        axes[0][:, None, None, :].expand(f, h, w, -1),
        axes[1][None, :, None, :].expand(f, h, w, -1),
        axes[2][None, None, :, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, -1)                                                          # [L, P]
    return torch.cos(angle).float(), torch.sin(angle).float()


def rope_apply(x, cos, sin):
    """Rotate interleaved pairs (x[2j], x[2j+1]) of x [L, N, E] by the angles of cos, sin [L, P]; float32 out.

    Upstream rotates in float64 (complex multiply) and returns float32; doing it in float32 differs by about one
    float32 ulp of the result, far inside the conformance tolerance.
    """
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)         # [L, N, P] each
    cos, sin = cos[:, None, :], sin[:, None, :]                  # [L, 1, P]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)   # [L, N, E]


# ==================================================================================================
# DiT (WanModel): parameters and loading
# ==================================================================================================

def dit_param_shapes(cfg):
    """{official key: shape} of a Wan2.1 DiT, in the official state-dict order, no prefix (wan.md 1.6)."""
    d, c = cfg.dim, cfg.clip_dim
    shapes = {
        "patch_embedding.weight": (d, cfg.in_dim, *PATCH),
        "patch_embedding.bias": (d,),
        # nn.Sequential(Linear, GELU(tanh), Linear): indices 0 and 2 hold weights
        "text_embedding.0.weight": (d, cfg.text_dim),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        # nn.Sequential(Linear, SiLU, Linear)
        "time_embedding.0.weight": (d, cfg.freq_dim),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        # nn.Sequential(SiLU, Linear): index 1 holds the weights
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
    }
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        shapes.update({
            b + "modulation": (1, 6, d),
            b + "self_attn.q.weight": (d, d), b + "self_attn.q.bias": (d,),
            b + "self_attn.k.weight": (d, d), b + "self_attn.k.bias": (d,),
            b + "self_attn.v.weight": (d, d), b + "self_attn.v.bias": (d,),
            b + "self_attn.o.weight": (d, d), b + "self_attn.o.bias": (d,),
            b + "self_attn.norm_q.weight": (d,),
            b + "self_attn.norm_k.weight": (d,),
            # norm3: the affine LayerNorm in front of the cross-attention (norm1, norm2 have no parameters)
            b + "norm3.weight": (d,), b + "norm3.bias": (d,),
            b + "cross_attn.q.weight": (d, d), b + "cross_attn.q.bias": (d,),
            b + "cross_attn.k.weight": (d, d), b + "cross_attn.k.bias": (d,),
            b + "cross_attn.v.weight": (d, d), b + "cross_attn.v.bias": (d,),
            b + "cross_attn.o.weight": (d, d), b + "cross_attn.o.bias": (d,),
            b + "cross_attn.norm_q.weight": (d,),
            b + "cross_attn.norm_k.weight": (d,),
        })
        if cfg.model_type in ("i2v", "flf2v"):
            shapes.update({
                b + "cross_attn.k_img.weight": (d, d), b + "cross_attn.k_img.bias": (d,),
                b + "cross_attn.v_img.weight": (d, d), b + "cross_attn.v_img.bias": (d,),
                b + "cross_attn.norm_k_img.weight": (d,),
            })
        shapes.update({
            # nn.Sequential(Linear, GELU(tanh), Linear)
            b + "ffn.0.weight": (cfg.ffn_dim, d), b + "ffn.0.bias": (cfg.ffn_dim,),
            b + "ffn.2.weight": (d, cfg.ffn_dim), b + "ffn.2.bias": (d,),
        })
    shapes["head.modulation"] = (1, 2, d)
    shapes["head.head.weight"] = (cfg.out_dim * math.prod(PATCH), d)
    shapes["head.head.bias"] = (cfg.out_dim * math.prod(PATCH),)
    if cfg.model_type in ("i2v", "flf2v"):
        # nn.Sequential(LayerNorm, Linear, GELU, Linear, LayerNorm): indices 0, 1, 3, 4 hold weights
        shapes["img_emb.proj.0.weight"] = (c,)
        shapes["img_emb.proj.0.bias"] = (c,)
        shapes["img_emb.proj.1.weight"] = (c, c)
        shapes["img_emb.proj.1.bias"] = (c,)
        shapes["img_emb.proj.3.weight"] = (d, c)
        shapes["img_emb.proj.3.bias"] = (d,)
        shapes["img_emb.proj.4.weight"] = (d,)
        shapes["img_emb.proj.4.bias"] = (d,)
        if cfg.model_type == "flf2v":
            shapes["img_emb.emb_pos"] = (1, 2 * cfg.clip_tokens, c)
    return shapes


# Parameters that stay float32 when the DiT is loaded in bf16 (upstream's fp32 islands, wan.md 1.5).
_DIT_FP32_PREFIXES = ("time_embedding.", "time_projection.", "head.", "img_emb.proj.0.", "img_emb.proj.4.",
                      "img_emb.emb_pos")


def dit_param_dtype(key, dtype):
    """The dtype a DiT parameter is held in when the model runs in `dtype`."""
    if key.startswith(_DIT_FP32_PREFIXES) or key.endswith("modulation") or ".norm" in key:
        return torch.float32
    return dtype


# The diffusers layout (WanTransformer3DModel, the Wan-AI/Wan2.1-*-Diffusers repositories' transformer/): its
# module paths -> the official ones, the inverse of diffusers' scripts/convert_wan_to_diffusers.py (wan.md 5.3).
# A key is a module path plus its parameter (.weight, .bias); scale_shift_table and pos_embed are parameters
# themselves. Every other key (patch_embedding.*) has the same name in both layouts, and no official name is a
# diffusers module path, so official files pass through dit_official_name unchanged.
DIT_DIFFUSERS_NAMES = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
    "scale_shift_table": "head.modulation",
    "proj_out": "head.head",
}
DIT_DIFFUSERS_BLOCK_NAMES = {           # inside blocks.{i}.
    "scale_shift_table": "modulation",
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img", "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",                   # the affine LayerNorm before the cross-attention (diffusers swaps 2 and 3)
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}


def _rename_module(key, table):
    """key with its module path (or, for a bare parameter, the whole key) replaced by table's entry, if any."""
    if key in table:
        return table[key]
    module, _, leaf = key.rpartition(".")
    return f"{table[module]}.{leaf}" if module in table else key


def dit_official_name(key):
    """The official name of a DiT tensor stored under `key`, in either layout (DIT_DIFFUSERS_NAMES)."""
    if key.startswith("blocks."):
        _, i, rest = key.split(".", 2)
        return f"blocks.{i}.{_rename_module(rest, DIT_DIFFUSERS_BLOCK_NAMES)}"
    return _rename_module(key, DIT_DIFFUSERS_NAMES)


def load_dit(path, cfg, dtype=torch.float32, device="cpu"):
    """Load a Wan2.1 DiT from safetensors (file or shard index, official or diffusers names) as {official key:
    tensor}.

    float32: every tensor float32 (16-bit files are upcast). bfloat16: big weights bf16, fp32 islands float32.
    A file that holds another released config than `cfg` is a WeightsError saying which one it looks like.
    """
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"DiT dtype must be float32 or bfloat16, not {dtype}")
    header = read_header(path, dit_official_name)
    _check_model(path, header, cfg, DIT_CONFIGS, dit_param_shapes, kind="DiT")
    return load_weights(path, dit_param_shapes(cfg), dtype=lambda key: dit_param_dtype(key, dtype), device=device,
                        rename=dit_official_name)


# ==================================================================================================
# DiT: forward
# ==================================================================================================

def dit_time_embedding(params, cfg, t, device):
    """e [D] (feeds the head) and e0 [6, D] (feeds every block's modulation), float32."""
    p = params
    s = timestep_sinusoid(t, cfg.freq_dim).to(device)                                          # [freq_dim]
    e = linear(s, p["time_embedding.0.weight"], p["time_embedding.0.bias"])                    # [D]
    e = linear(F.silu(e), p["time_embedding.2.weight"], p["time_embedding.2.bias"])            # [D]
    e0 = linear(F.silu(e), p["time_projection.1.weight"], p["time_projection.1.bias"])         # [6*D]
    return e.float(), e0.float().unflatten(0, (6, cfg.dim))                                    # [D], [6, D]


def dit_text_embedding(params, cfg, context):
    """Text features [Lt, Dt] -> [Lt' = text_len, D]: zero-pad to text_len rows first, then the MLP.

    Padded rows become MLP(0), which is not zero, and cross-attention does not mask them (as upstream).
    """
    p = params
    ctx = F.pad(context, (0, 0, 0, cfg.text_len - context.shape[0]))                           # [Lt', Dt]
    ctx = gelu_tanh(linear(ctx, p["text_embedding.0.weight"], p["text_embedding.0.bias"]))     # [Lt', D]
    return linear(ctx, p["text_embedding.2.weight"], p["text_embedding.2.bias"])               # [Lt', D]


def dit_image_embedding(params, cfg, clip_fea):
    """CLIP features [n_img, clip_tokens, Dc] -> image context [n_img*clip_tokens, D].

    FLF2V lays the two images' tokens end to end (514 rows) and adds `emb_pos` before the MLP.
    """
    p = params
    x = clip_fea.reshape(-1, cfg.clip_dim).float()                                             # [Li, Dc]
    if cfg.model_type == "flf2v":
        x = x + p["img_emb.emb_pos"][0].float()                                                # [Li, Dc]
    x = layer_norm(x, p["img_emb.proj.0.weight"], p["img_emb.proj.0.bias"], eps=1e-5)           # [Li, Dc]
    x = F.gelu(linear(x, p["img_emb.proj.1.weight"], p["img_emb.proj.1.bias"]))                 # [Li, Dc] exact GELU
    x = linear(x, p["img_emb.proj.3.weight"], p["img_emb.proj.3.bias"])                         # [Li, D]
    return layer_norm(x, p["img_emb.proj.4.weight"], p["img_emb.proj.4.bias"], eps=1e-5)        # [Li, D]


def dit_self_attention(params, pre, cfg, x, cos, sin):
    """Self-attention of block `pre` (prefix 'blocks.{i}.self_attn.'): x [L, D] -> [L, D]."""
    p, n = params, cfg.num_heads
    dt = p[pre + "o.weight"].dtype                                  # attention runs in the weights' dtype
    q = rms_norm(linear(x, p[pre + "q.weight"], p[pre + "q.bias"]), p[pre + "norm_q.weight"], cfg.eps)  # [L, D]
    k = rms_norm(linear(x, p[pre + "k.weight"], p[pre + "k.bias"]), p[pre + "norm_k.weight"], cfg.eps)  # [L, D]
    v = linear(x, p[pre + "v.weight"], p[pre + "v.bias"])                                               # [L, D]
    q = rope_apply(q.unflatten(-1, (n, -1)), cos, sin).transpose(0, 1)                                  # [N, L, E]
    k = rope_apply(k.unflatten(-1, (n, -1)), cos, sin).transpose(0, 1)                                  # [N, L, E]
    out = attention(q.to(dt), k.to(dt), split_heads(v, n).to(dt))                                       # [L, D]
    return linear(out, p[pre + "o.weight"], p[pre + "o.bias"])                                          # [L, D]


def dit_cross_attention(params, pre, cfg, x, ctx):
    """Cross-attention of block `pre` ('blocks.{i}.cross_attn.'): x [L, D], ctx [Lc, D] -> [L, D]. No mask, no RoPE.

    i2v/flf2v: the first Lc - text_len context rows are image tokens with their own k_img/v_img; both
    attentions share q and their outputs are summed before `o`.
    """
    p, n = params, cfg.num_heads
    dt = p[pre + "o.weight"].dtype
    q = rms_norm(linear(x, p[pre + "q.weight"], p[pre + "q.bias"]), p[pre + "norm_q.weight"], cfg.eps)   # [L, D]
    q = split_heads(q, n).to(dt)                                                                         # [N, L, E]
    n_img = ctx.shape[0] - cfg.text_len
    img, txt = ctx[:n_img], ctx[n_img:]                                            # [Li, D], [Lt', D]
    k = rms_norm(linear(txt, p[pre + "k.weight"], p[pre + "k.bias"]), p[pre + "norm_k.weight"], cfg.eps)  # [Lt', D]
    v = linear(txt, p[pre + "v.weight"], p[pre + "v.bias"])                                              # [Lt', D]
    out = attention(q, split_heads(k, n).to(dt), split_heads(v, n).to(dt))                               # [L, D]
    if n_img > 0:
        k_img = rms_norm(linear(img, p[pre + "k_img.weight"], p[pre + "k_img.bias"]),
                         p[pre + "norm_k_img.weight"], cfg.eps)                                          # [Li, D]
        v_img = linear(img, p[pre + "v_img.weight"], p[pre + "v_img.bias"])                              # [Li, D]
        out = out + attention(q, split_heads(k_img, n).to(dt), split_heads(v_img, n).to(dt))            # [L, D]
    return linear(out, p[pre + "o.weight"], p[pre + "o.bias"])                                          # [L, D]


def dit_block(params, i, cfg, x, e0, ctx, cos, sin):
    """One WanAttentionBlock: x [L, D] float32 residual stream -> [L, D] float32.

    modulation + e0 gives six rows: 0 shift, 1 scale, 2 gate of the self-attention; 3 shift, 4 scale, 5 gate
    of the FFN. The cross-attention is neither modulated nor gated; its LayerNorm is `norm3`, the only one
    with weights (`norm1`/`norm2` have no parameters; diffusers swaps the names norm2/norm3).
    """
    p, b = params, f"blocks.{i}."
    mod = p[b + "modulation"].float()[0] + e0                                                  # [6, D]
    shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(0)                   # [D] each
    h = layer_norm(x, eps=cfg.eps) * (1 + scale_sa) + shift_sa                                 # [L, D]
    x = x + dit_self_attention(p, b + "self_attn.", cfg, h, cos, sin) * gate_sa                # [L, D]
    h = layer_norm(x, p[b + "norm3.weight"].float(), p[b + "norm3.bias"].float(), cfg.eps)     # [L, D]
    x = x + dit_cross_attention(p, b + "cross_attn.", cfg, h, ctx)                             # [L, D]
    h = layer_norm(x, eps=cfg.eps) * (1 + scale_ff) + shift_ff                                 # [L, D]
    h = gelu_tanh(linear(h, p[b + "ffn.0.weight"], p[b + "ffn.0.bias"]))                       # [L, Dff]
    return x + linear(h, p[b + "ffn.2.weight"], p[b + "ffn.2.bias"]) * gate_ff                 # [L, D]


def dit_head(params, cfg, x, e):
    """Output head in float32: x [L, D], e [D] (the time embedding, not e0) -> [L, out_dim*4]."""
    p = params
    shift, scale = (p["head.modulation"].float()[0] + e).unbind(0)                             # [D] each
    x = layer_norm(x, eps=cfg.eps) * (1 + scale) + shift                                       # [L, D]
    return linear(x, p["head.head.weight"].float(), p["head.head.bias"].float())               # [L, 64]


def dit_forward(params, cfg, x, t, context, y=None, clip_fea=None):
    """Velocity of the flow at (x, t): the Wan2.1 DiT forward pass for one sample.

    x [16, F, H, W] noisy latent (H, W even); t timestep in [0, 1000] (python float, used as given);
    context [Lt, Dt] text features, un-padded (Lt <= text_len); y [in_dim-16, F, H, W] conditioning
    (i2v/flf2v: 4 mask + 16 latent channels); clip_fea [n_img, clip_tokens, Dc] (n_img 1 for i2v, 2 for
    flf2v). Returns the velocity eps - x0, [16, F, H, W] float32 on the params' device.
    """
    p = params
    device = p["patch_embedding.weight"].device
    _check_dit_inputs(cfg, x, context, y, clip_fea)
    if y is not None:
        x = torch.cat([x, y])                                                                  # [in_dim, F, H, W]
    x = x.to(device)

    # patch embedding: a (1, 2, 2)-strided conv, then tokens in (f, h, w) row-major order
    w = p["patch_embedding.weight"]
    x = F.conv3d(x[None].to(w.dtype), w, p["patch_embedding.bias"], stride=PATCH)[0]          # [D, F, Hp, Wp]
    grid = tuple(x.shape[1:])                                                                  # (F, Hp, Wp)
    # contiguous: elementwise ops keep their first input's layout, so a transposed view here would make the
    # whole residual stream column-major (every LayerNorm then copies; 15-20% slower on a CPU)
    x = x.flatten(1).T.float().contiguous()                                                    # [L, D] float32 residual

    e, e0 = dit_time_embedding(p, cfg, t, device)                                              # [D], [6, D]
    ctx = dit_text_embedding(p, cfg, context.to(device))                                       # [Lt', D]
    if cfg.model_type in ("i2v", "flf2v"):
        ctx = torch.cat([dit_image_embedding(p, cfg, clip_fea.to(device)).to(ctx.dtype), ctx])  # [Lc, D]
    cos, sin = (a.to(device) for a in rope_tables(grid, cfg.dim // cfg.num_heads))            # [L, P] each

    for i in range(cfg.num_layers):
        x = dit_block(p, i, cfg, x, e0, ctx, cos, sin)                                         # [L, D]
    x = dit_head(p, cfg, x, e)                                                                 # [L, 64]

    # unpatchify: each token's 64 outputs are (pt=1, ph=2, pw=2, c=16) with c fastest
    f, hp, wp = grid
    x = x.reshape(f, hp, wp, PATCH[0], PATCH[1], PATCH[2], cfg.out_dim)                # [F, Hp, Wp, 1, 2, 2, 16]
    x = x.permute(6, 0, 3, 1, 4, 2, 5)                                                 # [16, F, 1, Hp, 2, Wp, 2]
    return x.reshape(cfg.out_dim, f * PATCH[0], hp * PATCH[1], wp * PATCH[2]).float()         # [16, F, H, W]


def _check_dit_inputs(cfg, x, context, y, clip_fea):
    """ValueError for inputs the DiT cannot take (a wrong shape would otherwise fail deep inside)."""
    if x.dim() != 4 or x.shape[0] != cfg.out_dim or x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"latent must be [{cfg.out_dim}, F, H, W] with H, W even, got {list(x.shape)}")
    if context.dim() != 2 or context.shape[1] != cfg.text_dim or context.shape[0] > cfg.text_len:
        raise ValueError(f"context must be [Lt <= {cfg.text_len}, {cfg.text_dim}], got {list(context.shape)}")
    if cfg.model_type == "t2v":
        if y is not None or clip_fea is not None:
            raise ValueError("t2v DiT takes no y / clip_fea")
        return
    if y is None or tuple(y.shape) != (cfg.in_dim - cfg.out_dim, *x.shape[1:]):
        got = None if y is None else list(y.shape)
        raise ValueError(f"{cfg.model_type} DiT needs y of shape {[cfg.in_dim - cfg.out_dim, *x.shape[1:]]}, got {got}")
    n_img = 2 if cfg.model_type == "flf2v" else 1
    if clip_fea is None or tuple(clip_fea.shape) != (n_img, cfg.clip_tokens, cfg.clip_dim):
        got = None if clip_fea is None else list(clip_fea.shape)
        raise ValueError(f"{cfg.model_type} DiT needs clip_fea of shape {[n_img, cfg.clip_tokens, cfg.clip_dim]}, "
                         f"got {got}")


# ==================================================================================================
# UMT5 text encoder: parameters, loading, tokenizer
# ==================================================================================================

def t5_param_shapes(cfg):
    """{HF key: shape} of the UMT5 encoder as stored in umt5_xxl_fp16.safetensors (without `spiece_model`)."""
    d, inner = cfg.dim, cfg.num_heads * cfg.head_dim
    shapes = {"shared.weight": (cfg.vocab_size, d)}
    for i in range(cfg.num_layers):
        b = f"encoder.block.{i}."
        shapes.update({
            # layer.0: self-attention sub-layer (every UMT5 layer has its own relative-position bias table)
            b + "layer.0.SelfAttention.q.weight": (inner, d),
            b + "layer.0.SelfAttention.k.weight": (inner, d),
            b + "layer.0.SelfAttention.v.weight": (inner, d),
            b + "layer.0.SelfAttention.o.weight": (d, inner),
            b + "layer.0.SelfAttention.relative_attention_bias.weight": (cfg.num_buckets, cfg.num_heads),
            b + "layer.0.layer_norm.weight": (d,),
            # layer.1: gated-GELU FFN sub-layer; wi_0 is the GELU-activated gate, wi_1 the linear branch
            b + "layer.1.DenseReluDense.wi_0.weight": (cfg.ffn_dim, d),
            b + "layer.1.DenseReluDense.wi_1.weight": (cfg.ffn_dim, d),
            b + "layer.1.DenseReluDense.wo.weight": (d, cfg.ffn_dim),
            b + "layer.1.layer_norm.weight": (d,),
        })
    shapes["encoder.final_layer_norm.weight"] = (d,)
    return shapes


# Keys a UMT5 file may hold besides the weights: the tokenizer model (uint8 bytes, Comfy-Org files) and the
# tied copy of the embedding that some exports write next to `shared.weight`.
_T5_EXTRA = ("spiece_model",)
_T5_SKIP = ("encoder.embed_tokens.weight",)


def load_t5(path, cfg, dtype=torch.float32, spiece_path=None):
    """Load the UMT5 encoder as ({HF key: tensor}, sentencepiece.SentencePieceProcessor).

    The tokenizer comes from `spiece_path` when given, else from the file's uint8 `spiece_model` tensor, else
    (a diffusers text_encoder/ folder) from the pipeline's tokenizer/spiece.model (tokenizer_file).
    UMT5 overflows in float16, so float16 is refused; 16-bit files are upcast to `dtype`.
    """
    import sentencepiece

    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"UMT5 runs in float32 or bfloat16 (it overflows in float16), not {dtype}")
    header = read_header(path)
    _check_model(path, header, cfg, T5_CONFIGS, t5_param_shapes, optional=_T5_EXTRA + _T5_SKIP, kind="UMT5")
    params = load_weights(path, t5_param_shapes(cfg), dtype=dtype, extra_ok=_T5_EXTRA, skip=_T5_SKIP)
    blob = params.pop("spiece_model", None)
    if spiece_path is None and blob is None:
        spiece_path = tokenizer_file(path)
    if spiece_path is not None:
        with open(spiece_path, "rb") as fh:
            model_proto = fh.read()
    elif blob is not None:
        if blob.dtype != torch.uint8 or blob.dim() != 1:
            raise WeightsError(f"{path}: key 'spiece_model' must be 1-D uint8 bytes, "
                               f"got {blob.dtype} {list(blob.shape)}")
        model_proto = blob.numpy().tobytes()
    else:
        raise WeightsError(f"{path}: no 'spiece_model' tensor in the file and no tokenizer/spiece.model beside it")
    tokenizer = sentencepiece.SentencePieceProcessor()
    try:
        tokenizer.LoadFromSerializedProto(model_proto)
    except Exception as exc:
        raise WeightsError(f"{spiece_path or path}: not a SentencePiece model ({exc})") from None
    if tokenizer.pad_id() != 0 or tokenizer.eos_id() != 1 or tokenizer.get_piece_size() > cfg.vocab_size:
        raise WeightsError(f"{spiece_path or path}: SentencePiece model is not a T5 vocabulary "
                           f"(pad {tokenizer.pad_id()}, eos {tokenizer.eos_id()}, {tokenizer.get_piece_size()} pieces)")
    return params, tokenizer


def clean_prompt(text):
    """Upstream's "whitespace" cleaning: html-unescape twice, strip, collapse whitespace runs to one space.

    Upstream first runs ftfy.fix_text (mojibake repair). gvcc leaves it out on purpose: the prompt travels in the
    bitstream and must give the same tokens on every machine, with or without ftfy installed; it only changes
    text that is already broken.
    """
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


T5_EOS = 1   # </s>; pad is 0; there is no BOS


def tokenize(tokenizer, prompt, text_len=512):
    """Token ids of a prompt: SentencePiece pieces of the cleaned text, truncated to text_len - 1, then EOS.

    Same ids as upstream's T5TokenizerFast except for prompts that spell special tokens literally ('</s>',
    '<pad>', '<extra_id_0>'): the fast tokenizer turns those into special ids, SentencePiece reads them as text.
    """
    return tokenizer.encode(clean_prompt(prompt))[: text_len - 1] + [T5_EOS]


# ==================================================================================================
# UMT5 text encoder: forward
# ==================================================================================================

def t5_position_buckets(length, cfg, device="cpu"):
    """Relative-position bucket [Lt, Lt] of key j for query i (bidirectional, wan.md 3.2).

    Computed with the same float32 torch ops as upstream and transformers: it is an integer table, and a
    different float precision could move a distance that sits on a bucket boundary.
    """
    pos = torch.arange(length, dtype=torch.long, device=device)
    rel = pos[None, :] - pos[:, None]                                        # [Lt, Lt] key minus query
    half = cfg.num_buckets // 2
    bucket = (rel > 0).long() * half                                         # keys after the query: upper half
    rel = rel.abs()
    exact = half // 2
    log_ratio = torch.log(rel.float() / exact) / math.log(cfg.max_distance / exact) * (half - exact)
    large = torch.clamp(exact + log_ratio.long(), max=half - 1)              # log-spaced, clamped at max_distance
    return bucket + torch.where(rel < exact, rel, large)                     # [Lt, Lt]


def t5_self_attention(params, pre, cfg, x, bucket, key_bias):
    """Self-attention sub-layer of block `pre` ('encoder.block.{i}.'): x [Lt, D] -> [Lt, D] (before the residual).

    Logits are q.k without 1/sqrt(E) scaling, plus this layer's relative-position bias and the key mask.
    """
    p, att = params, pre + "layer.0.SelfAttention."
    bias = p[att + "relative_attention_bias.weight"].float().T[:, bucket]                # [N, Lt, Lt]
    if key_bias is not None:
        bias = bias + key_bias                                                           # [N, Lt, Lt]
    h = t5_rms_norm(x, p[pre + "layer.0.layer_norm.weight"], cfg.eps)                    # [Lt, D]
    q = split_heads(linear(h, p[att + "q.weight"]), cfg.num_heads)                       # [N, Lt, E]
    k = split_heads(linear(h, p[att + "k.weight"]), cfg.num_heads)                       # [N, Lt, E]
    v = split_heads(linear(h, p[att + "v.weight"]), cfg.num_heads)                       # [N, Lt, E]
    a = attention(q, k, v, mask=bias.to(q.dtype), scale=1.0)                             # [Lt, N*E]
    return linear(a, p[att + "o.weight"])                                                # [Lt, D]


def t5_ffn(params, pre, cfg, x):
    """Gated-GELU FFN sub-layer of block `pre`: x [Lt, D] -> [Lt, D]; wo( GELU_tanh(wi_0 h) * wi_1 h )."""
    p, ffn = params, pre + "layer.1.DenseReluDense."
    h = t5_rms_norm(x, p[pre + "layer.1.layer_norm.weight"], cfg.eps)                    # [Lt, D]
    h = gelu_tanh(linear(h, p[ffn + "wi_0.weight"])) * linear(h, p[ffn + "wi_1.weight"])  # [Lt, Dff]
    return linear(h, p[ffn + "wo.weight"])                                               # [Lt, D]


def t5_forward(params, cfg, ids, mask=None):
    """UMT5 encoder: token ids [Lt] (int64) -> hidden states [Lt, D] float32.

    `mask` [Lt] bool marks real tokens; padded keys are excluded from attention (padded rows' outputs are
    meaningless). Token embeddings are not scaled by sqrt(D).
    """
    p = params
    emb = p["shared.weight"]
    x = emb[ids.to(emb.device)]                                                          # [Lt, D]
    bucket = t5_position_buckets(ids.shape[0], cfg, emb.device)                          # [Lt, Lt]
    key_bias = None
    if mask is not None:
        key_bias = torch.zeros(ids.shape[0], device=emb.device).masked_fill(~mask.to(emb.device), float("-inf"))
    for i in range(cfg.num_layers):
        b = f"encoder.block.{i}."
        x = x + t5_self_attention(p, b, cfg, x, bucket, key_bias)                         # [Lt, D]
        x = x + t5_ffn(p, b, cfg, x)                                                      # [Lt, D]
    return t5_rms_norm(x, p["encoder.final_layer_norm.weight"], cfg.eps).float()         # [Lt, D]


def encode_text(params, cfg, tokenizer, prompt):
    """Text features of a prompt as the DiT takes them: [Lt, D] float32, Lt = true length incl. EOS (<= 512).

    Upstream pads the ids to 512, masks the padding, then keeps the first Lt rows; since padded keys are
    masked, encoding only the Lt real tokens gives the same rows (checked in the tests).
    """
    ids = torch.tensor(tokenize(tokenizer, prompt, cfg.text_len), dtype=torch.long)        # [Lt]
    return t5_forward(params, cfg, ids)                                                     # [Lt, D]


# ==================================================================================================
# CLIP ViT-H/14 image encoder
# ==================================================================================================

def clip_param_shapes(cfg):
    """{HF key: shape} of the CLIP vision tower as stored in clip_vision_h.safetensors."""
    d, v = cfg.dim, "vision_model."
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    shapes = {
        v + "embeddings.class_embedding": (d,),
        v + "embeddings.patch_embedding.weight": (d, 3, cfg.patch_size, cfg.patch_size),   # no bias
        v + "embeddings.position_embedding.weight": (tokens, d),
        v + "pre_layrnorm.weight": (d,),         # sic: HF's spelling
        v + "pre_layrnorm.bias": (d,),
    }
    for i in range(cfg.num_layers):
        b = f"{v}encoder.layers.{i}."
        shapes.update({
            b + "self_attn.k_proj.weight": (d, d), b + "self_attn.k_proj.bias": (d,),
            b + "self_attn.v_proj.weight": (d, d), b + "self_attn.v_proj.bias": (d,),
            b + "self_attn.q_proj.weight": (d, d), b + "self_attn.q_proj.bias": (d,),
            b + "self_attn.out_proj.weight": (d, d), b + "self_attn.out_proj.bias": (d,),
            b + "layer_norm1.weight": (d,), b + "layer_norm1.bias": (d,),
            b + "mlp.fc1.weight": (cfg.ffn_dim, d), b + "mlp.fc1.bias": (cfg.ffn_dim,),
            b + "mlp.fc2.weight": (d, cfg.ffn_dim), b + "mlp.fc2.bias": (d,),
            b + "layer_norm2.weight": (d,), b + "layer_norm2.bias": (d,),
        })
    shapes[v + "post_layernorm.weight"] = (d,)
    shapes[v + "post_layernorm.bias"] = (d,)
    shapes["visual_projection.weight"] = (cfg.proj_dim, d)
    return shapes


def _clip_unused(cfg):
    """Keys of the file Wan never reads: the last layer, the post-norm, the projection (and a stray position_ids)."""
    last = f"vision_model.encoder.layers.{cfg.num_layers - 1}."
    return tuple(k for k in clip_param_shapes(cfg)
                 if k.startswith(last) or "post_layernorm" in k or k == "visual_projection.weight"
                 ) + ("vision_model.embeddings.position_ids",)


def clip_official_name(key):
    """The name gvcc uses for a CLIP tensor stored under `key`: transformers 5 saves a bare CLIPVisionModel (a
    diffusers image_encoder/) without the `vision_model.` prefix that every other CLIP file has."""
    return key if key.startswith(("vision_model.", "visual_projection.")) else "vision_model." + key


def load_clip(path, cfg, dtype=torch.float32):
    """Load the CLIP vision tower as {HF key: tensor}, without the tensors Wan does not use."""
    unused = _clip_unused(cfg)
    header = read_header(path, clip_official_name)
    # recognition compares the full file layout; a file without the unused keys is fine too
    _check_model(path, header, cfg, CLIP_CONFIGS, clip_param_shapes, optional=("vision_model.embeddings.position_ids",),
                 kind="CLIP")
    used = {k: s for k, s in clip_param_shapes(cfg).items() if k not in unused}
    return load_weights(path, used, dtype=dtype, skip=unused, rename=clip_official_name)


def clip_encode(params, cfg, images):
    """Wan's image features: images [n_img, 3, H, W] in [-1, 1], any size -> [n_img, tokens, Dc] float32.

    Bicubic resize to image_size (align_corners=False, no antialias), map to [0, 1], normalise with the CLIP
    mean/std, then the ViT up to and including layer num_layers - 2: the penultimate layer's output, no
    post-norm, no projection (HF hidden_states[-2]).
    """
    p, v = params, "vision_model."
    w = p[v + "embeddings.patch_embedding.weight"]
    x = images.to(w.device).float()                                                           # [n_img, 3, H, W]
    if x.shape[-2:] != (cfg.image_size, cfg.image_size):
        x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(CLIP_STD, device=x.device)[:, None, None]
    x = (x * 0.5 + 0.5 - mean) / std                                                          # [n_img, 3, S, S]
    x = F.conv2d(x.to(w.dtype), w, stride=cfg.patch_size)                                     # [n_img, Dc, S/14, S/14]
    x = x.flatten(2).transpose(1, 2)                                                          # [n_img, 256, Dc]
    cls = p[v + "embeddings.class_embedding"].to(x.dtype).expand(x.shape[0], 1, -1)           # [n_img, 1, Dc]
    x = torch.cat([cls, x], dim=1) + p[v + "embeddings.position_embedding.weight"]            # [n_img, 257, Dc]
    x = layer_norm(x, p[v + "pre_layrnorm.weight"].float(), p[v + "pre_layrnorm.bias"].float(), cfg.eps)
    out = []
    for xi in x:                                                                              # [257, Dc] per image
        for i in range(cfg.num_layers - 1):
            xi = clip_layer(p, f"{v}encoder.layers.{i}.", cfg, xi)
        out.append(xi)
    return torch.stack(out).float()                                                           # [n_img, 257, Dc]


def clip_layer(params, b, cfg, x):
    """One pre-norm CLIP encoder layer: x [T, Dc] float32 -> [T, Dc] float32 (exact-erf GELU MLP)."""
    p, n = params, cfg.num_heads
    dt = p[b + "self_attn.q_proj.weight"].dtype
    h = layer_norm(x, p[b + "layer_norm1.weight"].float(), p[b + "layer_norm1.bias"].float(), cfg.eps)   # [T, Dc]
    q = split_heads(linear(h, p[b + "self_attn.q_proj.weight"], p[b + "self_attn.q_proj.bias"]), n)     # [N, T, E]
    k = split_heads(linear(h, p[b + "self_attn.k_proj.weight"], p[b + "self_attn.k_proj.bias"]), n)     # [N, T, E]
    v = split_heads(linear(h, p[b + "self_attn.v_proj.weight"], p[b + "self_attn.v_proj.bias"]), n)     # [N, T, E]
    a = attention(q.to(dt), k.to(dt), v.to(dt))                                                          # [T, Dc]
    x = x + linear(a, p[b + "self_attn.out_proj.weight"], p[b + "self_attn.out_proj.bias"]).float()     # [T, Dc]
    h = layer_norm(x, p[b + "layer_norm2.weight"].float(), p[b + "layer_norm2.bias"].float(), cfg.eps)   # [T, Dc]
    h = F.gelu(linear(h, p[b + "mlp.fc1.weight"], p[b + "mlp.fc1.bias"]))                               # [T, ffn]
    return x + linear(h, p[b + "mlp.fc2.weight"], p[b + "mlp.fc2.bias"]).float()                        # [T, Dc]


# ==================================================================================================
# Tiny weights (tests and `gvcc.py make-tiny`)
# ==================================================================================================

# Fixed training text of the tiny tokenizer. Changing it changes tiny_umt5.safetensors and every golden file.
_TINY_CORPUS = """A red fox runs through the snowy forest at dawn.
A small boat drifts on a calm lake under a pink sky.
Two cats play with a ball of yarn on a wooden floor.
A city street at night, cars pass and neon signs glow.
An old man reads a newspaper on a park bench.
Waves crash against dark rocks while seagulls fly above.
A chef slices vegetables quickly in a busy kitchen.
A child rides a bicycle down a quiet country road.
Rain falls on a window; drops slide slowly down the glass.
A hot air balloon rises over green hills and a river.
The camera pans left across a crowded market full of fruit.
Close-up of a dog's face, ears moving in the wind.
A dancer spins on a stage lit by a single spotlight.
Time-lapse of clouds moving over a mountain valley.
A train crosses a long bridge above a deep canyon.
Fireworks explode in bright colors over the harbor.
A woman walks her dog along the beach at sunset.
Leaves fall from tall trees in an autumn park.
A robot arm assembles small parts in a clean factory.
Snow covers the roofs of a quiet village in winter.
Slow motion: a drop of milk splashes into a cup of coffee.
Aerial view of a highway with trucks, buses and cars.
A butterfly lands on a yellow flower in the garden.
Kids build a sandcastle; the tide comes in behind them."""


def tiny_spiece_model():
    """Serialized SentencePiece unigram model (bytes) of the tiny UMT5: T5 ids (pad 0, eos 1, unk 2, no BOS).

    Trained on a fixed corpus with one thread and no sampling, so the bytes are the same on every run.
    """
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_TINY_CORPUS.splitlines()), model_writer=out,
        vocab_size=T5_CONFIGS["tiny"].vocab_size, model_type="unigram", character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, input_sentence_size=0,
        shuffle_input_sentence=False, minloglevel=2)
    return out.getvalue()


def tiny_weights(kind, cfg_name, seed=0):
    """Random weights in the layout and dtype of the real file gvcc fetches for that role.

    kind 'dit' (DIT_CONFIGS name; float32 like the official T2V-1.3B file for t2v-1.3B and tiny-t2v, float16
    like the Comfy-Org 14B files otherwise), 't5' (T5_CONFIGS name; float16 plus the uint8 'spiece_model' of
    tiny_spiece_model) or 'clip' (CLIP_CONFIGS name; float16).
    """
    if kind == "dit":
        dtype = torch.float32 if cfg_name in ("t2v-1.3B", "tiny-t2v") else torch.float16
        return random_weights(dit_param_shapes(DIT_CONFIGS[cfg_name]), seed, dtype)
    if kind == "t5":
        out = random_weights(t5_param_shapes(T5_CONFIGS[cfg_name]), seed, torch.float16)
        out["spiece_model"] = torch.frombuffer(bytearray(tiny_spiece_model()), dtype=torch.uint8)
        return out
    if kind == "clip":
        return random_weights(clip_param_shapes(CLIP_CONFIGS[cfg_name]), seed, torch.float16)
    raise ValueError(f"unknown weight kind {kind!r} (expected 'dit', 't5' or 'clip')")
