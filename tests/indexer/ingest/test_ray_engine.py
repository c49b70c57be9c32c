"""--engine ray on a real 2-node local Ray cluster (no mocks of Ray)."""

import csv
import shutil

import numpy as np
import pytest
import tifffile

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from indexer.core.config import BuildConfig, SourceConfig  # noqa: E402
from indexer.ingest.local import build_index  # noqa: E402
from indexer.ingest.ray_engine import RayConfig, run_ray_build  # noqa: E402
from indexer.ingest.ray_shards import SHARD_DIR  # noqa: E402
from indexer.stores.faiss.store import FaissStore, records_to_table  # noqa: E402
from indexer.stores.mirror import verify_stores  # noqa: E402
from tests.conftest import SYNTH_DIR  # noqa: E402

pytestmark = pytest.mark.ray
# One embedding actor per node of the 2-node cluster (the default, one per CPU, starts 4 on 2 cores).
TWO_ACTORS = RayConfig(concurrency=2)


def _config(data, idx, encoder, redis=None, batch_size=4):
    return BuildConfig(
        sources=SourceConfig(paths=(data,)),
        index_dir=idx,
        model=encoder.config,
        redis=redis,
        batch_size=batch_size,
    )


def _stores(idx, encoder, redis=None):
    stores = [FaissStore(idx, dim=encoder.dim)]
    if redis is not None:
        from indexer.stores.redis.store import RedisStore

        stores.append(RedisStore(redis, dim=encoder.dim))
    return stores


def test_ray_equals_local_in_both_stores_and_rejects_a_corrupt_file(
    cluster, encoder, real_images, tmp_path, redis_config
):
    data = tmp_path / "data" / "BBBC006_v1_images_z_16"
    shutil.copytree(real_images[0].parent, data)
    (data / "corrupt.tif").write_bytes(b"II*\x00 not really")
    # and the shipped synthetic look-alike: 10 images over three z-folders, both channels
    for folder in SYNTH_DIR.glob("BBBC006_v1_images_z_*"):
        shutil.copytree(folder, tmp_path / "data" / "synthetic" / folder.name)
    # Stacks: a task yields its planes in batches; one whose plane 7 holds NaN keeps planes 0-6 (as local).
    stack = np.random.default_rng(1).random((12, 32, 32)).astype(np.float32)
    tifffile.imwrite(tmp_path / "data" / "stack12.tif", stack, photometric="minisblack", metadata=None)
    stack[7, 0, 0] = np.nan
    tifffile.imwrite(tmp_path / "data" / "nan-at-7.tif", stack[:10], photometric="minisblack", metadata=None)
    local = _stores(tmp_path / "local", encoder)
    build_index(_config(data.parent, tmp_path / "local", encoder), local, encoder=encoder)
    local[0].close()
    stores = _stores(tmp_path / "ray", encoder, redis_config)
    s = run_ray_build(
        _config(data.parent, tmp_path / "ray", encoder, redis_config), TWO_ACTORS, stores, encoder
    )
    assert (s.indexed, len(s.rejected), s.index_count) == (30 + 12 + 7, 2, 49)
    assert {r.z for r in stores[0].get(stores[0].ids()) if "#" not in r.path} == {13, 16, 24}
    a, b = FaissStore(tmp_path / "local", read_only=True), FaissStore(tmp_path / "ray", read_only=True)
    assert np.array_equal(a.ids(), b.ids())
    np.testing.assert_allclose(b.get_vectors(b.ids()), a.get_vectors(a.ids()), atol=1e-5)
    assert a.get(a.ids()) == b.get(b.ids())
    with open(tmp_path / "ray" / "rejected.csv", newline="") as f:
        rows = {r["path"].rsplit("/", 1)[1]: r for r in csv.DictReader(f)}
    assert rows["corrupt.tif"]["stage"] == "decode"
    assert (
        "plane 7" in rows["nan-at-7.tif"]["reason"]
        and "the 7 planes before it" in rows["nan-at-7.tif"]["reason"]
    )
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
    # The killed run had written its manifest before Ray started (a folder holding images without one is
    # refused: its vectors' model would be unknown).
    shutil.copy(tmp_path / "probe" / "manifest.json", idx / "manifest.json")
    pq.write_table(
        records_to_table(probe.get_vectors(ids), probe.get(ids)), idx / SHARD_DIR / "part-killed.parquet"
    )
    (idx / SHARD_DIR / "part-half.parquet.tmp").write_bytes(b"half-written")  # never imported
    stores = _stores(idx, encoder)
    s = run_ray_build(_config(real_images[0].parent, idx, encoder), TWO_ACTORS, stores, encoder)
    assert s.recovered == 6
    assert set(s.stage_seconds) == {"read_decode_preprocess", "model", "write"}
    assert all(v > 0 for v in s.stage_seconds.values())
    assert (s.indexed, s.skipped_existing, s.index_count) == (14, 6, 20)
    final = FaissStore(idx, read_only=True)
    assert np.array_equal(final.ids(), probe.ids()) and len(set(final.ids().tolist())) == 20
    again = run_ray_build(
        _config(real_images[0].parent, idx, encoder), TWO_ACTORS, _stores(idx, encoder), encoder
    )
    assert (again.indexed, again.skipped_existing) == (0, 20)


def _processes(fragment: str) -> list[int]:
    """PIDs of this test session's own processes (descendants of this one: the cluster fixture starts
    its nodes, and they their workers) whose command line (Ray sets it to the actor's name) contains
    ``fragment``. Only descendants: on a shared machine another session's Ray workers carry the same name.
    """
    import os
    from pathlib import Path

    parent, cmdline = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                # The field after the parenthesised command name (which may hold spaces) is the state, then
                # the parent's pid.
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline[int(d.name)] = (d / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
    me = os.getpid()

    def ours(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            if pid == me:
                return True
            seen.add(pid)
            pid = parent.get(pid, 0)
        return False

    return [pid for pid, cmd in cmdline.items() if fragment in cmd and pid != me and ours(pid)]


def _copies(real_images, root, n):
    """``n`` copies of the real images with distinct bytes (a TIFF description), so distinct ids."""
    import tifffile

    for k in range(n):
        folder = root / f"copy{k}" / "BBBC006_v1_images_z_16"
        folder.mkdir(parents=True)
        for p in real_images:
            tifffile.imwrite(folder / p.name, tifffile.imread(p), description=f"copy {k}", compression="zlib")
    return root


def test_a_worker_killed_mid_run_is_retried_and_every_image_lands_exactly_once(
    cluster, encoder, real_images, tmp_path, redis_config
):
    import os
    import signal
    import threading
    import time

    data = _copies(real_images, tmp_path / "data", 4)  # 80 images, 40 batches of 2
    local = FaissStore(tmp_path / "local", dim=encoder.dim)
    config = BuildConfig(sources=SourceConfig(paths=(data,)), index_dir=tmp_path / "local", model=encoder.config,
                         batch_size=2)  # fmt: skip
    assert build_index(config, [local], encoder=encoder).indexed == 80
    idx = tmp_path / "ray"
    killed: list[int] = []

    def kill_the_embedding_worker_after_its_first_output() -> None:
        deadline = time.monotonic() + 600  # a generous budget: the loop ends on the event, not the clock
        while time.monotonic() < deadline and not killed:
            if list((idx / SHARD_DIR).glob("*.parquet")):
                for pid in _processes("_Embed)"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_embedding_worker_after_its_first_output, daemon=True)
    killer.start()
    stores = _stores(idx, encoder, redis_config)
    ray_config = RayConfig(concurrency=1, threads_per_worker=1)
    s = run_ray_build(_config(data, idx, encoder, redis_config, batch_size=2), ray_config, stores, encoder)
    killer.join()
    assert killed, "the embedding worker was never seen"
    assert (s.indexed, len(s.rejected)) == (80, 0)
    final = FaissStore(idx, read_only=True)
    ids = final.ids()
    assert len(ids) == 80 and np.array_equal(np.sort(ids), np.sort(local.ids()))
    assert stores[1].count() == 80 and verify_stores(stores[1], final).ok
    np.testing.assert_allclose(final.get_vectors(ids), local.get_vectors(ids), atol=1e-5)


def test_a_killed_ray_job_resumes_and_every_image_lands_exactly_once(
    cluster, encoder, tiny_model_dir, real_images, tmp_path, redis_config
):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = _copies(real_images, tmp_path / "data", 4)  # 80 images
    idx = tmp_path / "ray"
    cmd = [sys.executable, "-m", "indexer.cli", "build", str(data), "--index", str(idx), "--engine", "ray",
           "--ray-address", cluster.address, "--model", str(tiny_model_dir), "--batch-size", "2",
           "--concurrency", "1", "--threads-per-worker", "1", "--no-progress"]  # fmt: skip
    env = {**os.environ, "MAE_REDIS_URL": redis_config.url}
    job = subprocess.Popen([*cmd, "--redis-index", redis_config.index_name], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 600  # a generous budget: the loop ends on the event, not the clock
    while time.monotonic() < deadline and len(list((idx / SHARD_DIR).glob("*.parquet"))) < 3:
        assert job.poll() is None, job.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)  # the whole job: driver gone, actors torn down by Ray
    job.wait(timeout=30)
    job.stderr.close()
    left = len(list((idx / SHARD_DIR).glob("*.parquet")))
    assert left >= 3, "the job was not killed mid-run"

    stores = _stores(idx, encoder, redis_config)
    assert stores[0].count() == 0  # nothing reached the FAISS mirror: it only imports finished shards
    s = run_ray_build(_config(data, idx, encoder, redis_config, batch_size=2), TWO_ACTORS, stores, encoder)
    # every row of a finished shard is already in Redis (written first), so it is skipped, not re-embedded
    assert s.recovered >= left and s.skipped_existing >= s.recovered
    assert s.indexed + s.skipped_existing == 80 and s.indexed < 80
    final = FaissStore(idx, read_only=True)
    assert final.count() == 80 and len(set(final.ids().tolist())) == 80
    assert stores[1].count() == 80 and verify_stores(stores[1], final).ok
    assert not list((idx / SHARD_DIR).glob("*.parquet"))


def _rejected_rows(idx):
    with open(idx / "rejected.csv", newline="") as f:
        return [(r["path"], r["stage"], r["reason"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("batch_size", [16, 2], ids=["duplicates-in-one-batch", "duplicates-across-batches"])
def test_duplicate_files_give_the_local_summary_and_the_first_listed_record(
    cluster, encoder, real_images, tmp_path, batch_size
):
    # Byte-identical copies, listed before ("00-first") and after ("zz-later") the originals: the
    # duplicate rule keeps the first in listing order and rejects the rest as "dedupe".
    data = tmp_path / "data"
    shutil.copytree(real_images[0].parent, data / "BBBC006_v1_images_z_16")
    for name in ("00-first", "zz-later"):
        (data / name).mkdir()
        for p in real_images[:3]:
            shutil.copy(p, data / name / p.name)
    local = _stores(tmp_path / "local", encoder)
    expected = build_index(_config(data, tmp_path / "local", encoder, batch_size=batch_size), local,
                           encoder=encoder)  # fmt: skip
    local[0].close()
    stores = _stores(tmp_path / "ray", encoder)
    s = run_ray_build(
        _config(data, tmp_path / "ray", encoder, batch_size=batch_size), TWO_ACTORS, stores, encoder
    )
    stores[0].close()
    assert (expected.found, expected.indexed, len(expected.rejected), expected.index_count) == (26, 20, 6, 20)
    for key in ("found", "indexed", "skipped_existing", "rejected", "index_count", "complete"):
        assert s.to_dict()[key] == expected.to_dict()[key], key
    assert s.rejected == expected.rejected
    assert _rejected_rows(tmp_path / "ray") == _rejected_rows(tmp_path / "local")
    a, b = FaissStore(tmp_path / "local", read_only=True), FaissStore(tmp_path / "ray", read_only=True)
    assert a.get(a.ids()) == b.get(b.ids())  # the first-listed copy's path and metadata
    assert sum("00-first" in r.path for r in b.get(b.ids())) == 3
    # Ray records the precision the model ran at, as the local build does (not "auto")
    assert s.runtime == f"ray cpu {encoder.precision}" and encoder.precision in ("fp32", "bf16")
    again = run_ray_build(_config(data, tmp_path / "ray", encoder, batch_size=batch_size), TWO_ACTORS,
                          _stores(tmp_path / "ray", encoder), encoder)  # fmt: skip
    assert (again.indexed, again.skipped_existing, len(again.rejected)) == (0, 26, 0)  # all content is in


def test_strict_stops_on_a_listing_problem_before_ray_starts(cluster, encoder, real_subset, tmp_path):
    from indexer.core.errors import DecodeError

    (real_subset / "broken.zip").write_bytes(b"PK not a zip")
    config = BuildConfig(sources=SourceConfig(paths=(real_subset,)), index_dir=tmp_path / "idx",
                         model=encoder.config, strict=True)  # fmt: skip
    with pytest.raises(DecodeError, match="broken.zip.*strict mode"):
        build_index(config, _stores(tmp_path / "local", encoder), encoder=encoder)
    with pytest.raises(DecodeError, match="broken.zip.*strict mode"):
        run_ray_build(config, TWO_ACTORS, _stores(tmp_path / "idx", encoder), encoder)
    assert not (tmp_path / "idx" / SHARD_DIR).exists()  # refused before any Ray work
