"""The cache manifest itself is input: a malformed one, or one that leaves out a file the load reads, is a
CacheError naming the folder and the fix (then the usual rebuild or refusal), never a crash or a load
of unverified weights."""
from __future__ import annotations

import json

import pytest

import layerq_nb
from layerq_nb import models


@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    """As in test_reliability: a tiny model cached under a short name that ships no GGUF (so a bad entry
    is named, not rebuilt)."""
    monkeypatch.setenv("LAYERQ_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    model, tok = models._tiny_llama(n_layers=2, hidden_size=16, heads=2, kv_heads=1)
    folder = models.cached_folder("smollm2-360m")
    models._write_cache(model.eval(), tok, folder, "tiny test model")
    return folder


def _edit_files(folder, edit):
    manifest = folder / models.MANIFEST
    doc = json.loads(manifest.read_text())
    doc["files"] = edit(doc["files"])
    manifest.write_text(json.dumps(doc))


def _without(*names):
    return lambda files: {k: v for k, v in files.items() if k not in names}


def _flip_last_bit(path):
    """One flipped low mantissa bit: the weight stays finite, so only the CRC-32 can see it."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


MALFORMED = {
    "files null": (lambda files: None, "is corrupt"),
    "files a list": (lambda files: [], "is corrupt"),
    "entry an int": (lambda files: {**files, "model.safetensors": 3}, "is corrupt"),
    "entry without crc32": (lambda files: {**files, "config.json": {"bytes": files["config.json"]["bytes"]}},
                            "is corrupt"),
    "bytes a string": (lambda files: {**files, "config.json": {**files["config.json"], "bytes": "1"}}, "is corrupt"),
    "a path, not a name": (lambda files: {**files, "../x": files["SOURCE"]}, "is corrupt"),
    "files empty": (lambda files: {}, "does not list .*model.safetensors"),
    "weights left out": (_without("model.safetensors"), "does not list model.safetensors"),
    "config left out": (_without("config.json"), "does not list config.json"),
    "tokenizer left out": (_without("tokenizer.json"), "does not list tokenizer.json"),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_manifest_is_refused_naming_the_folder(tiny_cache, kind):
    folder = tiny_cache
    edit, fragment = MALFORMED[kind]
    _edit_files(folder, edit)
    with pytest.raises(models.CacheError, match=fragment):
        models.check_cache(folder, full=False)                 # what `layerq_nb doctor` runs
    with pytest.raises(models.CacheError, match=fragment) as info:
        layerq_nb.load_model("smollm2-360m", device="cpu")
    message = str(info.value)
    assert "\n" not in message and f"rm -r '{folder}'" in message
    with pytest.raises(models.CacheError, match=fragment) as info:
        layerq_nb.load_model(str(folder), device="cpu")        # the same entry, passed as a local folder
    assert f"rm -r '{folder}'" in str(info.value)


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_manifest_is_rebuilt_from_the_shipped_gguf(tiny_cache, kind, monkeypatch, capsys):
    folder = tiny_cache
    monkeypatch.setitem(models.SHIPPED_GGUF, "smollm2-360m", ("json", "fake.gguf"))   # json: an importable package
    monkeypatch.setattr(models, "_dequantise_gguf",
                        lambda short: models._tiny_llama(n_layers=2, hidden_size=16, heads=2, kv_heads=1))
    _edit_files(folder, MALFORMED[kind][0])
    layerq_nb.load_model("smollm2-360m", device="cpu")
    assert f"the cached model {folder} is corrupt" in capsys.readouterr().out
    assert models.check_cache(folder) is True


@pytest.mark.parametrize("where", ["short name", "local folder"])
def test_a_flipped_bit_in_weights_the_manifest_leaves_out_is_refused(tiny_cache, where):
    folder = tiny_cache
    _edit_files(folder, _without("model.safetensors"))
    _flip_last_bit(folder / "model.safetensors")
    with pytest.raises(models.CacheError, match="does not list model.safetensors") as info:
        layerq_nb.load_model("smollm2-360m" if where == "short name" else str(folder), device="cpu")
    assert f"rm -r '{folder}'" in str(info.value)


def test_a_crc_mismatch_in_a_local_folder_names_the_folder_and_the_fix(tiny_cache):
    folder = tiny_cache
    _flip_last_bit(folder / "model.safetensors")
    with pytest.raises(models.CacheError, match="CRC-32 mismatch") as info:
        layerq_nb.load_model(str(folder), device="cpu")
    message = str(info.value)
    assert "\n" not in message and str(folder) in message and f"rm -r '{folder}'" in message


def test_files_no_loader_reads_need_not_be_listed(tiny_cache):
    """Finder's .DS_Store, and the temporary manifest of a process upgrading the entry, are not refused."""
    folder = tiny_cache
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / f"{models.MANIFEST}.12345").write_text("{")
    assert models.check_cache(folder) is True
    layerq_nb.load_model(str(folder), device="cpu")
