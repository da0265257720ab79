"""Wan2.1 model stack as pure functions over weight dicts: DiT, UMT5 text encoder, CLIP image encoder.

(Work in progress: this first part holds the weight loader shared by wan_model.py and vae.py.)
"""
import json
import os

import torch
from safetensors import safe_open


# ==================================================================================================
# Weight files
# ==================================================================================================

class WeightsError(Exception):
    """A weight file is missing, incomplete or does not match the model asked for (one-line message)."""


# Prefixes that repackaged checkpoints put in front of the official key names (Comfy-Org's 1.3B DiT).
KNOWN_PREFIXES = ("model.diffusion_model.",)

_FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def weight_files(path):
    """The safetensors file(s) behind `path`: one file, or every shard listed by a `*.safetensors.index.json`."""
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such weight file")
    if path.endswith(".index.json"):
        with open(path) as fh:
            shard_names = sorted(set(json.load(fh)["weight_map"].values()))
        return [os.path.join(os.path.dirname(path), name) for name in shard_names]
    return [path]


def load_weights(path, expected, dtype=torch.float32, device="cpu", extra_ok=()):
    """Read the tensors named in `expected` ({key: shape}) from `path`, casting floating ones to `dtype`.

    The file is read lazily, one tensor at a time, so peak memory is the returned dict plus one tensor.
    An optional known prefix (KNOWN_PREFIXES) is stripped. Keys in `extra_ok` may be present and are
    returned as stored (e.g. the uint8 `spiece_model` tensor); any other key the file has beyond
    `expected`, any missing key, wrong shape or non-float dtype is a WeightsError naming key and file.
    """
    files = weight_files(path)
    # key as the model names it -> (file, key as stored)
    stored = {}
    for fname in files:
        if not os.path.exists(fname):
            raise WeightsError(f"{fname}: shard listed in {path} is missing")
        try:
            with safe_open(fname, framework="pt") as fh:
                for key in fh.keys():
                    name = key
                    for prefix in KNOWN_PREFIXES:
                        if name.startswith(prefix):
                            name = name[len(prefix):]
                    stored[name] = (fname, key)
        except Exception as exc:  # safetensors raises several types for damaged files
            raise WeightsError(f"{fname}: not a readable safetensors file ({exc})") from None
    for name in expected:
        if name not in stored:
            raise WeightsError(f"{path}: missing key '{name}' (expected shape {list(expected[name])})")
    unexpected = sorted(set(stored) - set(expected) - set(extra_ok))
    if unexpected:
        raise WeightsError(f"{path}: unexpected key '{unexpected[0]}' ({len(unexpected)} unexpected in all); "
                           f"is this the right model file?")
    out = {}
    handles = {}
    try:
        for name, (fname, key) in stored.items():
            if fname not in handles:
                handles[fname] = safe_open(fname, framework="pt", device="cpu")
            sl = handles[fname].get_slice(key)
            shape, sdtype = list(sl.get_shape()), sl.get_dtype()
            if name in expected:
                if shape != list(expected[name]):
                    raise WeightsError(f"{fname}: key '{name}' has shape {shape}, expected {list(expected[name])}")
                if sdtype not in _FLOAT_DTYPES:
                    raise WeightsError(f"{fname}: key '{name}' has dtype {sdtype}, expected F32, F16 or BF16")
                out[name] = handles[fname].get_tensor(key).to(device=device, dtype=dtype)
            else:
                out[name] = handles[fname].get_tensor(key)
    finally:
        handles.clear()
    return out


def random_weights(shapes, seed, dtype=torch.float32):
    """Deterministic random weights for tests and the tiny model, every tensor random (none left at zero).

    Each tensor comes from its own CPU generator seeded by (seed, position in `shapes`), so its values do
    not depend on which other tensors exist. Norm gains (keys ending in `gamma` or a norm's `.weight`) are
    1 + N(0, 0.1^2); other vectors N(0, 0.1^2); matrices and kernels N(0, 1/fan_in).
    """
    out = {}
    for i, (key, shape) in enumerate(shapes.items()):
        gen = torch.Generator().manual_seed(seed * 100003 + i)
        w = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
        leaf = key.rsplit(".", 2)
        is_norm_gain = key.endswith("gamma") or (key.endswith(".weight") and "norm" in leaf[-2])
        if is_norm_gain:
            w = 1.0 + 0.1 * w
        elif len(shape) >= 2:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            w = w / fan_in ** 0.5
        else:
            w = 0.1 * w
        out[key] = w.to(dtype)
    return out
