"""Two indexes that share one custom Ray shard URL (RayConfig.shard_url): each finds only its own shards.

The shards a run leaves for its re-run (finished shards a killed driver never imported, raw vectors a
first ``--normalize`` build staged before its fit) must neither reach another index nor be deleted by
it. Real 2-node local Ray cluster, real FAISS folders, real TIFFs (no mocks of Ray)."""

from dataclasses import replace

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from indexer.core.config import (  # noqa: E402
    BuildConfig,
    IntensityConfig,
    NormalizeSpec,
    PreprocessConfig,
    SourceConfig,
    parse_fit_on,
)
from indexer.core.errors import ConfigError  # noqa: E402
from indexer.ingest.local import build_index  # noqa: E402
from indexer.ingest.ray_engine import RayConfig, run_ray_build  # noqa: E402
from indexer.stores.faiss.store import FaissStore  # noqa: E402

pytestmark = pytest.mark.ray
# One embedding actor per node of the 2-node cluster (the default, one per CPU, starts 4 on 2 cores).
TWO_ACTORS = RayConfig(concurrency=2)
#: Index B's preprocessing: the same images give other vectors than index A's (the default).
OTHER_PRE = PreprocessConfig(intensity=IntensityConfig(low=5.0, high=95.0))


def _spec(kind=None, eps=None, fit_on=()):
    """The --normalize options as the CLI parses them."""
    return NormalizeSpec(kind=kind, eps=eps, fit_on=parse_fit_on(fit_on))


def _config(data, idx, encoder, preprocess=None, **normalize):
    return BuildConfig(sources=SourceConfig(paths=(data,)), index_dir=idx, model=encoder.config, batch_size=4,
                       preprocess=preprocess or PreprocessConfig(), normalize=_spec(**normalize))  # fmt: skip


def _local(data, idx, encoder, preprocess=None, **normalize):
    """What the local engine stores for this index: ids (sorted), their records and vectors."""
    store = FaissStore(idx, dim=encoder.dim)
    build_index(_config(data, idx, encoder, preprocess, **normalize), [store], encoder=encoder)
    state = _state(store)
    store.close()
    return state


def _state(store):
    ids = np.sort(store.ids())
    return {"ids": ids, "records": store.get(ids.tolist()), "vectors": store.get_vectors(ids)}


def _assert_holds(store, want):
    got = _state(store)
    assert np.array_equal(got["ids"], want["ids"]) and len(got["ids"]) == 20
    assert got["records"] == want["records"]
    np.testing.assert_allclose(got["vectors"], want["vectors"], atol=1e-5)


def _shards(root):
    """Every finished parquet shard under ``root``, wherever a run put it."""
    return sorted(root.rglob("*.parquet"))


def test_another_indexs_staged_raw_vectors_under_a_shared_shard_url_are_neither_used_nor_deleted(
    cluster, encoder, real_images, tmp_path
):
    folder = real_images[0].parent
    shared = tmp_path / "shared-shards"
    rc = replace(TWO_ACTORS, shard_url=str(shared))
    # Index A: a first --normalize build whose --fit-on matches no image stops after staging its raw vectors.
    a = tmp_path / "a"
    stores = [FaissStore(a, dim=encoder.dim)]
    with pytest.raises(ConfigError, match="--fit-on well=Z99 matches 0 of the 20"):
        run_ray_build(_config(folder, a, encoder, kind="center", fit_on=("well=Z99",)), rc, stores, encoder)
    stores[0].close()
    staged_by_a = _shards(shared)
    assert staged_by_a  # A's raw vectors wait under the shared URL for A's re-run
    # Index B: the same 20 images (the same content ids), other preprocessing, the same shard URL.
    want_b = _local(folder, tmp_path / "local-b", encoder, OTHER_PRE, kind="center")
    b = tmp_path / "b"
    stores = [FaissStore(b, dim=encoder.dim)]
    s = run_ray_build(_config(folder, b, encoder, OTHER_PRE, kind="center"), rc, stores, encoder)
    assert (s.indexed, s.recovered, s.skipped_existing) == (20, 0, 0)  # B embedded its own vectors
    _assert_holds(stores[0], want_b)
    stores[0].close()
    assert _shards(shared) == staged_by_a  # B left A's staged vectors where they were
    # A's re-run, with a subset that matches, fits on its own staged vectors and then deletes them.
    want_a = _local(folder, tmp_path / "local-a", encoder, kind="center", fit_on=("site=2",))
    stores = [FaissStore(a, dim=encoder.dim)]
    s = run_ray_build(_config(folder, a, encoder, kind="center", fit_on=("site=2",)), rc, stores, encoder)
    assert (s.indexed, s.recovered) == (20, 20)
    _assert_holds(stores[0], want_a)
    stores[0].close()
    assert not _shards(shared)


def test_another_indexs_unimported_shards_under_a_shared_shard_url_are_neither_imported_nor_deleted(
    cluster, encoder, real_images, tmp_path, monkeypatch
):
    folder = real_images[0].parent
    shared = tmp_path / "shared-shards"
    rc = replace(TWO_ACTORS, shard_url=f"file://{shared}")  # an fsspec URL, as s3:// would be
    # Index A: every shard is written, then the driver fails before adding them to A's FAISS mirror (as
    # a driver killed at that point would): the shards wait under the shared URL for A's re-run.
    a = tmp_path / "a"
    stores = [FaissStore(a, dim=encoder.dim)]

    def fail(self, vectors, records):
        raise RuntimeError("injected: the driver died before importing its shards")

    with monkeypatch.context() as m:
        m.setattr(FaissStore, "add", fail)
        with pytest.raises(RuntimeError, match="injected"):
            run_ray_build(_config(folder, a, encoder), rc, stores, encoder)
    stores[0].close()
    left_by_a = _shards(shared)
    assert left_by_a and FaissStore(a, read_only=True).count() == 0
    # Index B: the same 20 images (the same content ids), other preprocessing, the same shard URL.
    want_b = _local(folder, tmp_path / "local-b", encoder, OTHER_PRE)
    b = tmp_path / "b"
    stores = [FaissStore(b, dim=encoder.dim)]
    s = run_ray_build(_config(folder, b, encoder, OTHER_PRE), rc, stores, encoder)
    assert (s.indexed, s.recovered, s.skipped_existing) == (20, 0, 0)  # B embedded its own vectors
    _assert_holds(stores[0], want_b)
    stores[0].close()
    assert _shards(shared) == left_by_a  # B left A's shards where they were
    # A's re-run imports its own shards first, so it embeds nothing.
    want_a = _local(folder, tmp_path / "local-a", encoder)
    stores = [FaissStore(a, dim=encoder.dim)]
    s = run_ray_build(_config(folder, a, encoder), rc, stores, encoder)
    assert (s.indexed, s.recovered, s.skipped_existing) == (0, 20, 20)
    _assert_holds(stores[0], want_a)
    stores[0].close()
    assert not _shards(shared)
