"""The weight-hash cache (`pilot.weights.hashes`): a file is hashed once while it keeps its size
and modification time; a corrupt or unwritable cache is never an error."""

import hashlib
import json
import os

import pytest

from pilot.weights import hashes
from pilot.weights.hashes import CACHE_ENV, cached_sha256, checkpoint_hash, hash_cache_path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "hashes.json"
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


def no_hashing(monkeypatch):
    def hashed(path):
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(hashes, "file_sha256", hashed)
    monkeypatch.setattr(hashes, "safetensors_data_sha256", hashed)


def test_a_file_is_hashed_once_while_unchanged(cache, tmp_path, monkeypatch):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights" * 1000)
    truth = hashlib.sha256(model.read_bytes()).hexdigest()
    assert checkpoint_hash(model) == truth
    entry = json.loads(cache.read_text())["sha256"][str(model.resolve())]
    assert entry == {"size": 7000, "mtime_ns": model.stat().st_mtime_ns, "sha256": truth}
    with monkeypatch.context() as m:
        no_hashing(m)
        assert cached_sha256(tmp_path / "." / "model.safetensors") == truth  # resolved key
    model.write_bytes(b"WEIGHTS" * 1000)  # same size, another modification time
    os.utime(model, ns=(entry["mtime_ns"] + 10**9,) * 2)
    assert checkpoint_hash(model) == hashlib.sha256(model.read_bytes()).hexdigest() != truth
    assert checkpoint_hash(tmp_path) is None  # a diffusers folder: A1111 has no hash for it
    assert list(cache.parent.iterdir()) == [cache]  # no temporary file left


@pytest.mark.parametrize(
    "text",
    [b"\x00\xffnot json", b"[1, 2]", b'{"sha256": [1]}', b'{"sha256": {"KEY": {"sha256": 5}}}'],
)
def test_a_corrupt_cache_is_ignored_and_rewritten(cache, tmp_path, text):
    model = tmp_path / "model.ckpt"
    model.write_bytes(b"pickle")
    cache.parent.mkdir()
    stat = model.stat()
    key = str(model.resolve())
    cache.write_bytes(text.replace(b"KEY", json.dumps(key)[1:-1].encode()))
    assert checkpoint_hash(model) == hashlib.sha256(b"pickle").hexdigest()
    entries = json.loads(cache.read_text())["sha256"]
    assert entries[key]["sha256"] == hashlib.sha256(b"pickle").hexdigest()
    assert entries[key]["size"] == stat.st_size


def test_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "hashes.json"))
    model = tmp_path / "model.ckpt"
    model.write_bytes(b"pickle")
    assert checkpoint_hash(model) == hashlib.sha256(b"pickle").hexdigest()


def test_the_cache_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hash_cache_path() == tmp_path / "xdg" / "pilot" / "hashes.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hash_cache_path() == tmp_path / "home" / ".cache" / "pilot" / "hashes.json"
    monkeypatch.setenv(CACHE_ENV, "~/elsewhere.json")
    assert hash_cache_path() == tmp_path / "home" / "elsewhere.json"


def test_lora_and_embedding_hashes_come_from_the_cache(cache, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.randn(2, 4)}, lora)
    embedding = tmp_path / "ink.pt"
    torch.save({"string_to_param": {"*": torch.randn(1, 8)}}, embedding)
    first = hashes.lora_hash(lora), hashes.embedding_hash(embedding)
    assert set(json.loads(cache.read_text())) == {"sha256", "safetensors_data_sha256"}
    no_hashing(monkeypatch)
    assert (hashes.lora_hash(lora), hashes.embedding_hash(embedding)) == first


def test_entries_of_deleted_files_are_dropped_when_the_cache_is_written(cache, tmp_path):
    kept, gone, new = (tmp_path / f"{n}.ckpt" for n in ("kept", "gone", "new"))
    for path in (kept, gone, new):
        path.write_bytes(path.name.encode())
    for path in (kept, gone):
        checkpoint_hash(path)
    gone.unlink()
    assert str(gone.resolve()) in json.loads(cache.read_text())["sha256"]  # until the next write
    checkpoint_hash(new)  # a write: pruned
    assert set(json.loads(cache.read_text())["sha256"]) == {str(kept.resolve()), str(new.resolve())}
    assert list(cache.parent.iterdir()) == [cache]  # written atomically: no temporary file left
