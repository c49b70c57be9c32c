"""Issue 31, item 13, on the Ray engine: its workers stage shards under ``<shard_url>/<index_uid>/`` and
the driver imports them through the FAISS store, so the folder's shards carry its index uid as a local
build's do. Real 2-node local Ray cluster, real TIFFs, the tiny model."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from indexer.core.config import BuildConfig, SourceConfig  # noqa: E402
from indexer.ingest.ray_engine import RayConfig, run_ray_build  # noqa: E402
from indexer.stores.faiss.shards import UID_KEY  # noqa: E402
from indexer.stores.faiss.store import FaissStore  # noqa: E402

pytestmark = pytest.mark.ray


def test_a_ray_build_writes_the_folders_uid_into_its_shards(cluster, encoder, real_images, tmp_path):
    data = tmp_path / "data" / "BBBC006_v1_images_z_16"
    data.mkdir(parents=True)
    for p in real_images[:4]:
        shutil.copy(p, data / p.name)
    idx = tmp_path / "idx"
    stores = [FaissStore(idx, dim=encoder.dim)]  # a new folder: no manifest, no uid yet when it opens
    config = BuildConfig(sources=SourceConfig(paths=(data.parent,)), index_dir=idx, model=encoder.config,
                         batch_size=2)  # fmt: skip
    s = run_ray_build(config, RayConfig(concurrency=2), stores, encoder)
    stores[0].close()
    assert s.indexed == 4
    uid = json.loads((idx / "manifest.json").read_text())["index_uid"]
    shards = sorted((idx / "shards").glob("part-*.parquet"))
    assert shards and [pq.read_schema(p).metadata[UID_KEY].decode() for p in shards] == [uid] * len(shards)
    with FaissStore(idx, read_only=True) as store:
        assert store.damage == [] and store.count() == 4
