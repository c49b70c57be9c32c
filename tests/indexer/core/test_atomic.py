"""Atomic writes honour the process umask, like any other file the user creates (issue 15, item 5)."""

import os
import stat

import pytest

from indexer.core.atomic import atomic_write_json, atomic_write_text


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_get_the_umask_mode(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "sub" / "b.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "sub" / "b.json").stat().st_mode) == mode


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    p = tmp_path / "a.txt"
    atomic_write_text(p, "x")
    p.chmod(0o640)
    atomic_write_text(p, "y")
    assert stat.S_IMODE(p.stat().st_mode) == 0o640 and p.read_text() == "y"


def test_index_files_follow_the_umask(tmp_path, umask):
    import numpy as np

    from indexer.core.records import ImageRecord
    from indexer.stores.faiss.store import FaissStore

    umask(0o022)
    store = FaissStore(tmp_path / "idx", dim=4)
    store.write_manifest({"dim": 4})
    store.add(np.eye(4, dtype=np.float32)[:2], [ImageRecord(id=1, path="a"), ImageRecord(id=2, path="b")])
    store.close()
    files = [p for p in (tmp_path / "idx").rglob("*") if p.is_file()]
    assert len(files) == 5  # manifest, shard, snapshot, state, the writers' lock
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}
