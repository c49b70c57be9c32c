"""Item 1 of issue 16: one writer at a time per index folder; concurrent builds lose nothing."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.core.records import ImageRecord
from indexer.images.decode import content_id
from indexer.stores.faiss.store import FaissStore

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from indexer.cli import main; main()", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _folder(tmp_path: Path, name: str, files: list[Path]) -> Path:
    d = tmp_path / name / "BBBC006_v1_images_z_16"
    d.mkdir(parents=True)
    for p in files:
        shutil.copy(p, d / p.name)
    return d.parent


def test_two_concurrent_builds_keep_every_image_exactly_once(tmp_path, real_images, tiny_model_dir):
    # Overlapping halves: images 6..13 are in both builds.
    a = _folder(tmp_path, "a", real_images[:14])
    b = _folder(tmp_path, "b", real_images[6:])
    expected = sorted(content_id(p.read_bytes()) for p in real_images)
    for round_no in range(3):
        index = tmp_path / f"idx{round_no}"
        common = ["--index", str(index), "--model", str(tiny_model_dir), "--batch-size", "2", "--workers", "1",
                  "--checkpoint-every", "2", "--no-progress", "--device", "cpu"]  # fmt: skip
        procs = [
            subprocess.Popen(_cli("build", str(d), *common), env=_env(), stderr=subprocess.PIPE, text=True)
            for d in (a, b)
        ]
        errs = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errs
        store = FaissStore(index, read_only=True)
        assert store.ids().tolist() == expected, f"round {round_no}: {store.count()} of 20"
        assert store.search_index.ntotal == 20
        # Every shard row is an image of the set, and no flushed shard was lost or overwritten.
        import pyarrow.parquet as pq

        rows = [i for p in sorted((index / "shards").glob("part-*.parquet"))
                for i in pq.read_table(p).column("id").to_pylist()]  # fmt: skip
        assert set(rows) == set(expected)


_HOLD = """
import sys, time
from indexer.stores.lock import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold_lock(folder: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), str(seconds)], env=_env(),
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_at_once_with_no_wait(tmp_path, tiny_model_dir, real_subset):
    from indexer.core.errors import IndexBusyError

    index = tmp_path / "idx"
    holder = _hold_lock(index, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(IndexBusyError, match="another writer is using the index"):
            FaissStore(index, wait=False)
        assert time.monotonic() - t0 < 2
        # The CLI flag: exit 1 with one line, before the model is even loaded.
        out = subprocess.run(_cli("build", str(real_subset), "--index", str(index), "--model",
                                  str(tiny_model_dir), "--no-wait", "--no-progress"),
                             env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 1
        assert "another writer is using the index" in out.stderr and "Traceback" not in out.stderr
    finally:
        holder.kill()
        holder.wait()


def test_second_writer_waits_with_a_message(tmp_path, caplog):
    index = tmp_path / "idx"
    holder = _hold_lock(index, 1.5)
    t0 = time.monotonic()
    with caplog.at_level("WARNING"):
        store = FaissStore(index, dim=4)
    waited = time.monotonic() - t0
    store.close()
    holder.wait()
    assert waited > 0.8
    assert any("waiting for another writer" in r.getMessage() for r in caplog.records)


def test_sweep_removes_only_dead_writers_temp_files(tmp_path):
    index = tmp_path / "idx"
    store = FaissStore(index, dim=4)
    store.add(np.eye(4, dtype=np.float32)[:1], [ImageRecord(id=1, path="a")])
    store.close()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        shards = index / "shards"
        live_tmp = shards / f".part-000001.parquet.{live.pid}-abcd1234.tmp"
        dead_tmp = shards / f".part-000001.parquet.{dead_pid}-abcd1234.tmp"
        old_style = index / ".index.faiss.k2j3h4.tmp"
        for p in (live_tmp, dead_tmp, old_style):
            p.write_bytes(b"partial")
        FaissStore(index).close()
        assert live_tmp.exists(), "a live writer's in-flight file was deleted"
        assert not dead_tmp.exists() and not old_style.exists()
    finally:
        live.kill()
        live.wait()
