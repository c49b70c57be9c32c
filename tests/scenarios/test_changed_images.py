"""Issue 31, item 11: an indexed file replaced by another valid TIFF is named wherever its pixels are read
again (mae-eval's queries, /api/perturb, the explorer's pictures) instead of being used as if it were the
image indexed (b690aef: self@1 = 0 without a warning)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from eval.queries import read_queries
from indexer.core.config import ModelConfig
from indexer.core.errors import DecodeError
from indexer.images.sources import load_image
from indexer.model.encoder import ViTMAEEncoder
from indexer.stores.faiss.store import FaissStore
from tests.support.small_builds import build_in_small_shards


@pytest.fixture
def swapped(tmp_path, tiny_model_dir, real_images):
    data = tmp_path / "data" / "BBBC006_v1_images_z_16"
    data.mkdir(parents=True)
    for p in real_images[:4]:
        shutil.copy(p, data / p.name)
    encoder = ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    build_in_small_shards(encoder, tmp_path / "data", tmp_path / "idx")
    store = FaissStore(tmp_path / "idx", read_only=True)
    records = sorted(store.get(store.ids()), key=lambda r: r.path)
    shutil.copy(real_images[10], records[0].path)  # another valid BBBC006 image under the same name
    return store, records


def test_a_replaced_file_is_named_not_used(swapped):
    store, records = swapped
    with pytest.raises(DecodeError, match="changed since it was indexed"):
        load_image(records[0].path, records[0].id)
    assert load_image(records[1].path, records[1].id).shape == (520, 696)
    kept, raws, skipped = read_queries(records)  # what mae-eval reads its queries with
    assert [r.id for r in kept] == [r.id for r in records[1:]] and len(raws) == 3
    assert skipped == [{"path": records[0].path, "reason": skipped[0]["reason"]}]
    assert "changed since it was indexed" in skipped[0]["reason"]  # b690aef: nothing skipped


def test_perturb_answers_409_for_a_replaced_file(swapped):
    from eval.live import compare_one
    from retriever.search import Retriever

    store, records = swapped
    retriever = Retriever.open(store, device="cpu", index_dir=store.directory)
    with pytest.raises(DecodeError, match="changed since it was indexed"):
        compare_one(retriever, records[0], "gaussian_blur", 1, 1, 0, 0.9, {records[0].id}, len(records))
    out = compare_one(retriever, records[1], "gaussian_blur", 1, 1, 0, 0.9, {records[1].id}, len(records))
    assert np.isfinite(out["metrics"]["overlap_at_k"])
