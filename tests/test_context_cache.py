"""The text-context cache: the encoded prompt is stored next to the weights after first use, the text encoder is
not loaded when the cache holds the prompt, and a corrupt or mismatched entry is recomputed, never used."""
import os

import pytest
import torch

import gvcc
import wan_model

SPEC = gvcc.MODELS["tiny-t2v"]


@pytest.fixture
def weights(tiny_weights, tmp_path):
    """A private weights folder (links to the tiny files), so each test starts with an empty cache."""
    for name in os.listdir(tiny_weights):
        if name.endswith(".safetensors"):
            os.symlink(os.path.join(tiny_weights, name), tmp_path / name)
    return str(tmp_path)


def context(weights, prompt):
    return gvcc.text_context(SPEC, gvcc.model_paths(SPEC, weights), prompt, "cpu", "fp32", weights)


def entries(weights):
    folder = os.path.join(weights, gvcc.CONTEXT_CACHE)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)) if os.path.isdir(folder) else []


class CountLoads:
    def __init__(self, monkeypatch):
        self.n, self.real = 0, wan_model.load_t5
        monkeypatch.setattr(wan_model, "load_t5", self)

    def __call__(self, *args, **kwargs):
        self.n += 1
        return self.real(*args, **kwargs)


def test_second_use_skips_the_text_encoder_and_gives_the_same_context(weights, monkeypatch):
    loads = CountLoads(monkeypatch)
    first = context(weights, "a red square")
    assert loads.n == 1 and len(entries(weights)) == 1
    again = context(weights, "a red square")
    assert loads.n == 1 and torch.equal(again, first) and again.dtype == torch.float32
    other = context(weights, "")                    # another prompt: another entry
    assert loads.n == 2 and len(entries(weights)) == 2 and not torch.equal(other[:1], first[:1])
    assert torch.equal(context(weights, "")[:], other) and loads.n == 2


def test_corrupt_entry_is_recomputed_not_used(weights, monkeypatch):
    loads = CountLoads(monkeypatch)
    want = context(weights, "hello")
    (path,) = entries(weights)
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0x40                                # inside the tensor's bytes: only the checksum notices
    open(path, "wb").write(bytes(data))
    assert torch.equal(context(weights, "hello"), want) and loads.n == 2
    assert torch.equal(context(weights, "hello"), want) and loads.n == 2      # the entry was rewritten
    open(path, "wb").write(bytes(data[:40]))        # truncated
    assert torch.equal(context(weights, "hello"), want) and loads.n == 3


def test_entry_for_another_key_is_not_used(weights, monkeypatch):
    loads = CountLoads(monkeypatch)
    context(weights, "one")
    context(weights, "two")
    a, b = entries(weights)
    os.replace(a, b)                                # one prompt's entry under the other's name
    n = loads.n
    context(weights, "one")
    context(weights, "two")
    assert loads.n == n + 2                         # neither entry was taken for the other prompt


def test_key_names_what_the_context_depends_on(weights):
    paths = gvcc.model_paths(SPEC, weights)
    key = gvcc.context_cache_key(SPEC, paths, "p", "fp32", "cpu")
    fingerprint = gvcc.model_fingerprint({"t5": paths["t5"]})
    assert f"t5 {fingerprint:08x} tiny" in key and "text_len 512" in key and key.endswith("|prompt p")
    assert key != gvcc.context_cache_key(SPEC, paths, "p", "bf16", "cpu")
    assert key != gvcc.context_cache_key(SPEC, paths, "p", "fp32", "cuda")
    assert key != gvcc.context_cache_key(SPEC, paths, "p", "fp32", "cpu", text_len=226)
