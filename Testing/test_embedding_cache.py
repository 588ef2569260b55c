"""The embedding cache: LRU bound in bytes, disk persistence that makes reopening free."""

from __future__ import annotations

import numpy as np
import torch

from SAMFusionLib.sam.embedding_cache import Embedding, EmbeddingCache, image_key
from SAMFusionLib.sam.segmenter import Segmenter


def _embedding(value: float, size: int = 16) -> Embedding:
    return Embedding(torch.full((1, 4, size, size), value), (64, 64), (64, 64))


def test_lru_evicts_least_recently_used_within_the_byte_bound():
    one = _embedding(0).nbytes
    cache = EmbeddingCache(max_bytes=2 * one)
    cache.put("a", _embedding(1))
    cache.put("b", _embedding(2))
    assert cache.get("a", "cpu") is not None  # "a" is now the most recent
    cache.put("c", _embedding(3))
    assert len(cache) == 2 and cache.nbytes == 2 * one
    assert cache.get("b", "cpu") is None
    assert float(cache.get("a", "cpu").features[0, 0, 0, 0]) == 1.0
    assert float(cache.get("c", "cpu").features[0, 0, 0, 0]) == 3.0


def test_key_depends_on_content_and_model():
    image = np.zeros((8, 8, 3), np.uint8)
    changed = image.copy()
    changed[3, 4, 1] = 1
    assert image_key("m1", image) != image_key("m1", changed)
    assert image_key("m1", image) != image_key("m2", image)
    assert image_key("m1", image) == image_key("m1", image.copy())
    assert image_key("m1", image) != image_key("m1", np.zeros((4, 16, 3), np.uint8))


def test_disk_cache_survives_a_new_session_without_encoding(tiny_model, tmp_path, monkeypatch):
    rgb = (np.random.default_rng(3).random((100, 140, 3)) * 255).astype(np.uint8)
    first = Segmenter(tiny_model, cache=EmbeddingCache(disk_dir=tmp_path))
    first.set_image(rgb)
    expected = first.predict(points_xy=[[70, 50]], labels=[1]).all_low_res_logits
    assert len(list(tmp_path.rglob("*.pt"))) == 1

    def no_encoder(*_args, **_kwargs):
        raise AssertionError("the encoder ran although the embedding was on disk")

    second = Segmenter(tiny_model, cache=EmbeddingCache(disk_dir=tmp_path))
    monkeypatch.setattr(second, "_encode", no_encoder)
    second.set_image(rgb)
    assert second.cache.hits == 1
    np.testing.assert_array_equal(second.predict(points_xy=[[70, 50]], labels=[1]).all_low_res_logits, expected)


def test_damaged_disk_entry_is_a_miss(tmp_path):
    cache = EmbeddingCache(disk_dir=tmp_path)
    cache.put("abcd", _embedding(5))
    path = next(tmp_path.rglob("*.pt"))
    path.write_bytes(b"not a torch file")
    assert EmbeddingCache(disk_dir=tmp_path).get("abcd", "cpu") is None
    assert not path.exists()
