"""--engine ray on a real 2-node local Ray cluster (no mocks of Ray)."""

import csv
import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from indexer.config import BuildConfig, ModelConfig, SourceConfig  # noqa: E402
from indexer.encoder import ViTMAEEncoder  # noqa: E402
from indexer.mirror import verify_stores  # noqa: E402
from indexer.pipeline import build_index  # noqa: E402
from indexer.ray_build import SHARD_DIR, RayConfig, run_ray_build  # noqa: E402
from indexer.stores.faiss_store import FaissStore, records_to_table  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))


def _config(data, idx, encoder, redis=None):
    return BuildConfig(
        sources=SourceConfig(paths=(data,)), index_dir=idx, model=encoder.config, redis=redis, batch_size=4
    )


def _stores(idx, encoder, redis=None):
    stores = [FaissStore(idx, dim=encoder.dim)]
    if redis is not None:
        from indexer.stores.redis_store import RedisStore

        stores.append(RedisStore(redis, dim=encoder.dim))
    return stores


def test_ray_equals_local_in_both_stores_and_rejects_a_corrupt_file(
    cluster, encoder, real_images, tmp_path, redis_config
):
    data = tmp_path / "data" / "BBBC006_v1_images_z_16"
    shutil.copytree(real_images[0].parent, data)
    (data / "corrupt.tif").write_bytes(b"II*\x00 not really")
    local = _stores(tmp_path / "local", encoder)
    build_index(_config(data.parent, tmp_path / "local", encoder), local, encoder=encoder)
    local[0].close()
    stores = _stores(tmp_path / "ray", encoder, redis_config)
    s = run_ray_build(
        _config(data.parent, tmp_path / "ray", encoder, redis_config), RayConfig(), stores, encoder
    )
    assert (s.indexed, len(s.rejected), s.index_count) == (20, 1, 20)
    a, b = FaissStore(tmp_path / "local", read_only=True), FaissStore(tmp_path / "ray", read_only=True)
    assert np.array_equal(a.ids(), b.ids())
    np.testing.assert_allclose(b.get_vectors(b.ids()), a.get_vectors(a.ids()), atol=1e-5)
    assert a.get(a.ids()) == b.get(b.ids())
    with open(tmp_path / "ray" / "rejected.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["path"].endswith("corrupt.tif") and row["stage"] == "decode"
    assert verify_stores(stores[1], b).ok
    assert not list((tmp_path / "ray" / SHARD_DIR).glob("*.parquet"))


def test_resume_imports_shards_of_a_killed_run_and_embeds_only_the_rest(
    cluster, encoder, real_images, tmp_path
):
    # A killed run left finished shards that never reached the FAISS mirror: 6 images.
    idx = tmp_path / "idx"
    probe = FaissStore(tmp_path / "probe", dim=encoder.dim)
    build_index(_config(real_images[0].parent, tmp_path / "probe", encoder), [probe], encoder=encoder)
    ids = probe.ids()[:6]
    import pyarrow.parquet as pq

    (idx / SHARD_DIR).mkdir(parents=True)
    pq.write_table(
        records_to_table(probe.get_vectors(ids), probe.get(ids)), idx / SHARD_DIR / "part-killed.parquet"
    )
    (idx / SHARD_DIR / "part-half.parquet.tmp").write_bytes(b"half-written")  # never imported
    stores = _stores(idx, encoder)
    s = run_ray_build(_config(real_images[0].parent, idx, encoder), RayConfig(), stores, encoder)
    assert s.stage_seconds["recovered_from_killed_run"] == 6
    assert (s.indexed, s.skipped_existing, s.index_count) == (14, 6, 20)
    final = FaissStore(idx, read_only=True)
    assert np.array_equal(final.ids(), probe.ids()) and len(set(final.ids().tolist())) == 20
    again = run_ray_build(
        _config(real_images[0].parent, idx, encoder), RayConfig(), _stores(idx, encoder), encoder
    )
    assert (again.indexed, again.skipped_existing) == (0, 20)
