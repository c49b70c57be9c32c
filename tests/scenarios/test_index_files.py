"""Issue 31, item 5: an index folder's files are untrusted. A planted ``.write.lock`` link is not followed
(b690aef truncated and wrote its target), a FIFO as ``index.faiss`` does not hang a query, and an
``index.state.json`` linked to ``/dev/zero`` is refused instead of read until memory runs out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from indexer.core.config import ModelConfig
from indexer.core.errors import StoreUnavailableError
from indexer.model.encoder import ViTMAEEncoder
from indexer.stores.lock import FolderLock
from tests.conftest import REPO
from tests.support.small_builds import build_in_small_shards

CAP = 4 * 2**30


def _run(args, timeout=120):
    code = (
        f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({CAP}, {CAP})); "
        "from indexer.cli import main as m; from retriever.cli import main as s; "
        "(s if sys.argv[1] == 'query' else m)()"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir, real_images):
    root = tmp_path_factory.mktemp("built")
    data = root / "data" / "BBBC006_v1_images_z_16"
    data.mkdir(parents=True)
    for p in real_images[:4]:
        shutil.copy(p, data / p.name)
    encoder = ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    build_in_small_shards(encoder, root / "data", root / "idx")
    return root / "idx", data


def _copy(built, tmp_path):
    index = tmp_path / "idx"
    shutil.copytree(built[0], index)
    return index


def test_a_planted_lock_link_is_refused_and_its_target_kept(tmp_path):
    index = tmp_path / "idx"
    index.mkdir()
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    (index / ".write.lock").symlink_to(victim)
    with pytest.raises(StoreUnavailableError, match="is a symbolic link; refused"):
        FolderLock(index).acquire(wait=False)
    assert victim.read_text() == "keep me\n"  # b690aef: "pid 1234 on host"
    (index / ".write.lock").unlink()
    os.mkfifo(index / ".write.lock")
    with pytest.raises(StoreUnavailableError, match="is a FIFO, not a regular file"):
        FolderLock(index).acquire(wait=False)
    # An ordinary lock is still taken, and closed on exec.
    (index / ".write.lock").unlink()
    with FolderLock(index) as lock:
        fd = __import__("indexer.stores.lock", fromlist=["_held"])._held[lock._key][0]
        assert os.get_inheritable(fd) is False


def test_a_fifo_as_index_faiss_does_not_hang_a_query(built, tmp_path, tiny_model_dir):
    index = _copy(built, tmp_path)
    (index / "index.faiss").unlink()
    os.mkfifo(index / "index.faiss")
    image = sorted(built[1].glob("*.tif"))[0]
    r = _run(
        [
            "query",
            image,
            "--index",
            index,
            "--model",
            tiny_model_dir,
            "--device",
            "cpu",
            "--format",
            "json",
            "-k",
            "2",
        ],
        timeout=90,
    )  # fmt: skip  (b690aef: hangs in open())
    assert r.returncode == 0, r.stderr
    rows = __import__("json").loads(r.stdout)
    assert len(rows) == 2 and rows[0]["path"] == str(image)


def test_a_state_file_linked_to_dev_zero_is_refused_not_read_to_oom(built, tmp_path):
    index = _copy(built, tmp_path)
    (index / "index.state.json").unlink()
    (index / "index.state.json").symlink_to("/dev/zero")
    r = _run(["info", "--index", index], timeout=90)
    assert "MemoryError" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "index.state.json" in r.stdout + r.stderr and "not a regular file" in r.stdout + r.stderr


# ------------------------------------------------------------------ item 12: a manifest without its checksum
def test_deleting_the_manifest_checksum_does_not_turn_the_edit_check_off(built, tmp_path):
    import json

    from click.testing import CliRunner

    from indexer.cli import main
    from indexer.core.errors import IndexDamagedError
    from indexer.stores.manifest import check_manifest

    index = _copy(built, tmp_path)
    path = index / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["checksum"]
    manifest["pooling"] = "cls"  # the edit the checksum would have caught
    path.write_text(json.dumps(manifest))
    i = CliRunner().invoke(main, ["info", "--index", str(index)])
    assert i.exit_code == 1 and "has no checksum" in i.output, i.output  # b690aef: 0, pooling cls
    del manifest["index_uid"]  # removing the uid too: the state file still names it
    path.write_text(json.dumps(manifest))
    i = CliRunner().invoke(main, ["info", "--index", str(index)])
    assert i.exit_code == 1 and "has no checksum" in i.output, i.output
    # A manifest from before checksums (no index_uid, no state file beside it) is still read.
    old = {k: v for k, v in manifest.items() if k != "index_uid"}
    assert check_manifest(old, "old.json")["pooling"] == "cls"
    with pytest.raises(IndexDamagedError, match="has no checksum"):
        check_manifest(old, "folder/manifest.json", sealed=True)


# ------------------------------------------------------------------ item 13: another index's files copied in
def test_another_indexs_shards_state_and_snapshot_fail_verify_and_repair(built, tmp_path, tiny_model_dir,
                                                                        real_images):  # fmt: skip
    from click.testing import CliRunner

    from indexer.cli import main

    other_data = tmp_path / "other" / "BBBC006_v1_images_z_16"
    other_data.mkdir(parents=True)
    for p in real_images[10:13]:
        shutil.copy(p, other_data / p.name)
    encoder = ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    build_in_small_shards(encoder, tmp_path / "other", tmp_path / "other-idx")
    index = _copy(built, tmp_path)
    shutil.rmtree(index / "shards")
    shutil.copytree(tmp_path / "other-idx" / "shards", index / "shards")
    for name in ("index.state.json", "index.faiss"):
        shutil.copy(tmp_path / "other-idx" / name, index / name)
    v = CliRunner().invoke(main, ["verify", "--index", str(index)])
    assert v.exit_code == 1 and "index.state.json belongs to another index" in v.output, v.output
    before = sorted(p.name for p in (index / "shards").iterdir())
    r = CliRunner().invoke(main, ["repair", "--index", str(index)])
    assert r.exit_code == 1 and "not repaired: index.state.json belongs to another index" in r.output
    assert sorted(p.name for p in (index / "shards").iterdir()) == before  # b690aef: "sound", exit 0
