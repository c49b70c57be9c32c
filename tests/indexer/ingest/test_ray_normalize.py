"""--normalize on --engine ray: the same transform, vectors, records and manifest as the local engine,
on a real 2-node local Ray cluster, the FAISS folder and the real Redis fixture (no mocks of Ray)."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from indexer.core.config import BuildConfig, NormalizeSpec, SourceConfig, parse_fit_on  # noqa: E402
from indexer.core.errors import ConfigError  # noqa: E402
from indexer.ingest.local import build_index  # noqa: E402
from indexer.ingest.ray_engine import RayConfig, run_ray_build  # noqa: E402
from indexer.ingest.ray_shards import RAW_DIR, SHARD_DIR  # noqa: E402
from indexer.stores.faiss.store import FaissStore  # noqa: E402
from indexer.stores.mirror import verify_stores  # noqa: E402
from indexer.stores.redis.store import RedisStore  # noqa: E402
from indexer.vectors.normalize import fit_transform  # noqa: E402
from indexer.vectors.transform_file import decode_transform  # noqa: E402
from tests.fixtures_redis import _drop  # noqa: E402

pytestmark = pytest.mark.ray
# One embedding actor per node of the 2-node cluster (the default, one per CPU, starts 4 on 2 cores).
TWO_ACTORS = RayConfig(concurrency=2)


def _spec(kind=None, eps=None, fit_on=()):
    """The --normalize options as the CLI parses them."""
    return NormalizeSpec(kind=kind, eps=eps, fit_on=parse_fit_on(fit_on))


def _config(data, idx, encoder, redis=None, batch_size=4, **normalize):
    return BuildConfig(sources=SourceConfig(paths=(data,)), index_dir=idx, model=encoder.config, redis=redis,
                       batch_size=batch_size, normalize=_spec(**normalize))  # fmt: skip


def _stores(idx, encoder, redis=None):
    stores = [FaissStore(idx, dim=encoder.dim)]
    if redis is not None:
        stores.append(RedisStore(redis, dim=encoder.dim))
    return stores


def _close(stores):
    for store in stores:
        store.close()


def _state(store):
    """What a store holds: its ids (sorted), their records and vectors, its normalize record and transform."""
    ids = np.sort(store.ids())
    manifest = store.read_manifest() or {}
    return {
        "ids": ids,
        "records": store.get(ids.tolist()),
        "vectors": store.get_vectors(ids) if len(ids) else np.zeros((0, 0), np.float32),
        "normalize": manifest.get("normalize"),
        "transform": store.read_transform(),
    }


def _raw_shards(idx):
    return sorted((idx / SHARD_DIR / RAW_DIR).glob("*.parquet"))


@pytest.fixture
def other_redis(redis_config):
    """A second Redis index on the test server (for the local build beside the Ray one); dropped after."""
    other = replace(redis_config, index_name=redis_config.index_name + "local")
    yield other
    _drop(other.url, other.index_name)


@pytest.fixture
def data(tmp_path, real_images):
    """The 20 real images, and byte-identical copies of 3 of them listed first (23 files, 20 contents):
    the first-listed copy is the one indexed, by either engine."""
    root = tmp_path / "data"
    shutil.copytree(real_images[0].parent, root / "BBBC006_v1_images_z_16")
    (root / "00-first").mkdir()
    for p in real_images[:3]:
        shutil.copy(p, root / "00-first" / p.name)
    return root


@pytest.fixture(scope="module")
def raw(encoder, real_images, tmp_path_factory):
    """The raw (not normalised) vectors of the 20 real images, by file name, from a plain local build."""
    idx = tmp_path_factory.mktemp("raw")
    store = FaissStore(idx, dim=encoder.dim)
    build_index(_config(real_images[0].parent, idx, encoder), [store], encoder=encoder)
    ids = store.ids()
    by_name = {Path(r.path).name: v for r, v in zip(store.get(ids.tolist()), store.get_vectors(ids))}
    store.close()
    return by_name


def _raw_of(raw, records):
    return np.stack([raw[Path(r.path).name] for r in records])


@pytest.mark.parametrize(
    "normalize",
    [
        {"kind": "whiten"},
        {"kind": "whiten", "fit_on": ("site=1",)},
        {"kind": "center", "fit_on": ("site=2",)},
    ],
    ids=["whiten", "whiten-fit-on-site1", "center-fit-on-site2"],
)
def test_a_first_ray_build_fits_and_writes_what_the_local_engine_writes(
    cluster, encoder, data, real_images, tmp_path, redis_config, other_redis, normalize
):
    local = _stores(tmp_path / "local", encoder, other_redis)
    expected = build_index(_config(data, tmp_path / "local", encoder, other_redis, **normalize), local,
                           encoder=encoder)  # fmt: skip
    stores = _stores(tmp_path / "ray", encoder, redis_config)
    s = run_ray_build(_config(data, tmp_path / "ray", encoder, redis_config, **normalize), TWO_ACTORS, stores,
                      encoder)  # fmt: skip
    assert (expected.found, expected.indexed, len(expected.rejected), expected.index_count) == (23, 20, 3, 20)
    for key in ("found", "indexed", "skipped_existing", "rejected", "index_count", "complete"):
        assert s.to_dict()[key] == expected.to_dict()[key], key
    assert s.rejected == expected.rejected and s.recovered == 0
    want = [_state(store) for store in local]
    got = [_state(store) for store in stores]
    record = want[0]["normalize"]
    sites = [int(p.name.split("_")[2][1:]) for p in real_images]
    assert (sites.count(1), sites.count(2)) == (7, 13)
    site = {"site=1": 7, "site=2": 13}.get(" ".join(normalize.get("fit_on", ())), 20)
    assert record["kind"] == normalize["kind"] and record["n_fit"] == site and record["sha256"]
    assert record["fit_on"] == (" ".join(normalize["fit_on"]) if "fit_on" in normalize else None)
    for w, g in zip(want, got):  # the FAISS folder, then Redis
        assert g["normalize"] == w["normalize"] == record  # kind, eps, fit_on, n_fit and sha256
        assert g["transform"] == w["transform"] == want[0]["transform"]
        assert np.array_equal(g["ids"], w["ids"]) and len(g["ids"]) == 20
        assert g["records"] == w["records"]  # the first-listed copy's path and metadata
        np.testing.assert_allclose(g["vectors"], w["vectors"], atol=1e-5)
    assert sum("00-first" in r.path for r in got[0]["records"]) == 3
    # What is stored is the transform of the raw vectors, not the raw vectors.
    transform = decode_transform(got[0]["transform"])
    assert transform.fingerprint() == record["sha256"]
    np.testing.assert_allclose(np.linalg.norm(got[0]["vectors"], axis=1), 1.0, atol=1e-5)
    assert verify_stores(stores[1], stores[0]).ok
    assert not _raw_shards(tmp_path / "ray") and not list((tmp_path / "ray" / SHARD_DIR).glob("*.parquet"))
    _close(local + stores)


def test_a_ray_build_into_a_local_normalized_index_applies_its_stored_transform(
    cluster, encoder, real_images, tmp_path, redis_config, raw
):
    first = tmp_path / "first" / "BBBC006_v1_images_z_16"
    first.mkdir(parents=True)
    for p in real_images[:14]:
        shutil.copy(p, first / p.name)
    idx = tmp_path / "idx"
    local = _stores(idx, encoder, redis_config)
    assert build_index(_config(first.parent, idx, encoder, redis_config, kind="whiten"), local,
                       encoder=encoder).indexed == 14  # fmt: skip
    _close(local)
    data_before = (idx / "normalize.npz").read_bytes()
    record_before = json.loads((idx / "manifest.json").read_text())["normalize"]
    stores = _stores(idx, encoder, redis_config)
    # No --normalize: the index's own transform, applied by the Ray workers to the 6 new images.
    s = run_ray_build(_config(real_images[0].parent, idx, encoder, redis_config), TWO_ACTORS, stores, encoder)
    assert (s.indexed, s.skipped_existing, s.index_count) == (6, 14, 20)
    assert (idx / "normalize.npz").read_bytes() == data_before
    assert json.loads((idx / "manifest.json").read_text())["normalize"] == record_before
    assert record_before["n_fit"] == 14
    transform = decode_transform(data_before)
    for store in stores:
        state = _state(store)
        assert len(state["ids"]) == 20 and state["normalize"] == record_before
        assert state["transform"] == data_before
        expected = transform.apply(_raw_of(raw, state["records"]))
        np.testing.assert_allclose(state["vectors"], expected, atol=1e-5)
    assert verify_stores(stores[1], stores[0]).ok
    _close(stores)


def test_fit_on_too_few_images_is_the_local_error_and_a_rerun_reuses_the_staged_vectors(
    cluster, encoder, real_images, tmp_path, redis_config, raw
):
    folder = real_images[0].parent
    with pytest.raises(ConfigError) as local_error:
        build_index(_config(folder, tmp_path / "local", encoder, kind="center", fit_on=("well=Z99",)),
                    _stores(tmp_path / "local", encoder), encoder=encoder)  # fmt: skip
    idx = tmp_path / "ray"
    stores = _stores(idx, encoder, redis_config)
    with pytest.raises(ConfigError) as ray_error:
        run_ray_build(_config(folder, idx, encoder, redis_config, kind="center", fit_on=("well=Z99",)), TWO_ACTORS,
                      stores, encoder)  # fmt: skip
    assert str(ray_error.value) == str(local_error.value)
    assert "--fit-on well=Z99 matches 0 of the 20 images" in str(ray_error.value)
    for store in stores:  # nothing written but the not-yet-fitted record: no vector, no transform
        assert store.count() == 0 and store.read_transform() is None
        assert "sha256" not in store.read_manifest()["normalize"]
    assert _raw_shards(idx)  # the raw vectors wait, staged, for the re-run
    _close(stores)
    stores = _stores(idx, encoder, redis_config)
    s = run_ray_build(_config(folder, idx, encoder, redis_config, kind="center", fit_on=("site=2",)), TWO_ACTORS,
                      stores, encoder)  # fmt: skip
    assert (s.indexed, s.recovered, s.index_count) == (20, 20, 20)  # every vector came from the staged shards
    site2 = [name for name in raw if "_s2_" in name]
    transform = fit_transform(np.stack([raw[name] for name in site2]), "center")
    for store in stores:
        state = _state(store)
        assert state["normalize"]["fit_on"] == "site=2" and state["normalize"]["n_fit"] == len(site2) == 13
        expected = transform.apply(_raw_of(raw, state["records"]))
        np.testing.assert_allclose(state["vectors"], expected, atol=1e-5)
    assert verify_stores(stores[1], stores[0]).ok and not _raw_shards(idx)
    _close(stores)


def _local_whitened(data, tmp_path, encoder):
    store = FaissStore(tmp_path / "local", dim=encoder.dim)
    build_index(_config(data, tmp_path / "local", encoder, kind="whiten"), [store], encoder=encoder)
    return _state(store)


def _assert_finished(stores, want, idx, count=20):
    """Every image once in both stores, each the local build's vector and record; verify clean."""
    for store in stores:
        state = _state(store)
        assert np.array_equal(state["ids"], want["ids"]) and len(set(state["ids"].tolist())) == count
        assert state["records"] == want["records"] and state["normalize"] == want["normalize"]
        np.testing.assert_allclose(state["vectors"], want["vectors"], atol=1e-5)
    assert verify_stores(stores[1], stores[0]).ok
    assert not _raw_shards(idx)


def test_a_failure_after_staging_before_the_fit_leaves_no_vector_and_the_rerun_finishes(
    cluster, encoder, data, tmp_path, redis_config, monkeypatch
):
    want = _local_whitened(data, tmp_path, encoder)
    idx = tmp_path / "ray"
    stores = _stores(idx, encoder, redis_config)

    def fail(*args, **kwargs):
        raise RuntimeError("injected: the driver died before its fit")

    with monkeypatch.context() as m:
        m.setattr("indexer.vectors.normalize.fit_transform", fail)
        with pytest.raises(RuntimeError, match="injected"):
            run_ray_build(
                _config(data, idx, encoder, redis_config, kind="whiten"), TWO_ACTORS, stores, encoder
            )
    _close(stores)
    stores = _stores(idx, encoder, redis_config)
    for store in stores:
        assert store.count() == 0 and store.read_transform() is None
    assert _raw_shards(idx)
    s = run_ray_build(_config(data, idx, encoder, redis_config, kind="whiten"), TWO_ACTORS, stores, encoder)
    assert (s.indexed, s.recovered, s.skipped_existing, len(s.rejected)) == (20, 20, 0, 3)
    _assert_finished(stores, want, idx)
    _close(stores)
    v = _verify_cli(idx, redis_config)
    assert v.exit_code == 0, v.output


def test_a_failure_while_writing_the_fitted_vectors_leaves_only_transformed_ones_and_the_rerun_finishes(
    cluster, encoder, data, tmp_path, redis_config, monkeypatch
):
    want = _local_whitened(data, tmp_path, encoder)
    idx = tmp_path / "ray"
    stores = _stores(idx, encoder, redis_config)
    calls = []
    bulk_load = RedisStore.bulk_load

    def second_call_fails(self, vectors, records, *args, **kwargs):
        calls.append(len(records))
        if len(calls) == 2:
            raise RuntimeError("injected: Redis went away mid-write")
        return bulk_load(self, vectors, records, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(RedisStore, "bulk_load", second_call_fails)
        with pytest.raises(RuntimeError, match="injected"):
            run_ray_build(
                _config(data, idx, encoder, redis_config, kind="whiten"), TWO_ACTORS, stores, encoder
            )
    _close(stores)  # a FAISS store flushes what it was given on close
    stores = _stores(idx, encoder, redis_config)
    by_id = {int(i): v for i, v in zip(want["ids"], want["vectors"])}
    counts = []
    for store in stores:  # the transform and its record first: any vector held is a transformed one
        state = _state(store)
        assert state["normalize"] == want["normalize"] and state["transform"] is not None
        counts.append(len(state["ids"]))
        for i, v in zip(state["ids"], state["vectors"]):
            np.testing.assert_allclose(v, by_id[int(i)], atol=1e-5)
    assert 0 < counts[1] < 20  # Redis holds the first batch only
    s = run_ray_build(_config(data, idx, encoder, redis_config), TWO_ACTORS, stores, encoder)
    # 23 files: the contents Redis and FAISS both hold (and their copies) are skipped, the rest come from the
    # staged raw vectors, transformed by the stored transform; nothing is embedded twice.
    assert s.indexed + s.skipped_existing + len(s.rejected) == 23 and s.recovered == s.indexed > 0
    _assert_finished(stores, want, idx)
    _close(stores)
    v = _verify_cli(idx, redis_config)
    assert v.exit_code == 0, v.output


def _verify_cli(idx, redis_config):
    from click.testing import CliRunner

    from indexer.cli import main as index_main

    args = ["verify", "--index", str(idx), "--redis-url", redis_config.url, "--format", "json"]
    return CliRunner().invoke(index_main, args)


def test_a_normalize_job_killed_while_staging_leaves_no_vector_and_its_rerun_finishes(
    cluster, encoder, tiny_model_dir, real_images, tmp_path, redis_config
):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.indexer.ingest.test_ray_engine import _copies

    data = _copies(real_images, tmp_path / "data", 4)  # 80 images, 40 batches of 2
    local = FaissStore(tmp_path / "local", dim=encoder.dim)
    build_index(
        _config(data, tmp_path / "local", encoder, batch_size=2, kind="whiten"), [local], encoder=encoder
    )
    want = _state(local)
    idx = tmp_path / "ray"
    cmd = [sys.executable, "-m", "indexer.cli", "build", str(data), "--index", str(idx), "--engine", "ray",
           "--ray-address", cluster.address, "--model", str(tiny_model_dir), "--batch-size", "2",
           "--concurrency", "1", "--threads-per-worker", "1", "--no-progress", "--format", "json",
           "--redis-url", redis_config.url, "--redis-index", redis_config.index_name]  # fmt: skip
    job = subprocess.Popen([*cmd, "--normalize", "whiten"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # a generous budget: the loop ends on the event, not the clock
    while time.monotonic() < deadline and len(_raw_shards(idx)) < 3:
        assert job.poll() is None, job.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)  # the whole job: driver gone, actors torn down by Ray
    job.wait(timeout=30)
    job.stderr.close()
    left = len(_raw_shards(idx))
    assert left >= 3, "the job was not killed mid-run"
    stores = _stores(idx, encoder, redis_config)
    for store in stores:  # raw vectors are staged only: no store holds a vector its manifest did not make
        assert store.count() == 0 and store.read_transform() is None
        assert store.read_manifest()["normalize"] == {
            "kind": "whiten",
            "eps": 1.0,
            "ridge": "relative",
            "fit_on": None,
        }
    _close(stores)
    # The re-run, without --normalize: the index's own (not yet fitted) record; the staged vectors are used.
    again = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    s = json.loads(again.stdout)
    assert (s["indexed"], s["rejected"], s["index_count"]) == (80, 0, 80)
    assert 2 * left <= s["recovered"] < 80  # at least the shards seen at the kill; the rest were embedded
    stores = _stores(idx, encoder, redis_config)
    _assert_finished(stores, want, idx, count=80)
    _close(stores)
    v = _verify_cli(idx, redis_config)
    assert v.exit_code == 0, v.output
