"""Issue 31, item 13, through the commands: another index's shards copied into a folder fail ``verify``
(exit 1, naming the shard) and ``repair`` (exit 1, nothing moved), with or without a state file, and a
query serves the folder's own shards with a warning naming the foreign one. The index folders are built
from the shipped images with the tiny model; each shard carries its build's index uid."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from indexer.cli import main
from indexer.core.config import ModelConfig
from indexer.model.encoder import ViTMAEEncoder
from indexer.stores.faiss.shards import UID_KEY
from retriever.cli import main as search_main
from tests.support.small_builds import build_in_small_shards


@pytest.fixture(scope="module")
def two_indexes(tmp_path_factory, tiny_model_dir, real_images):
    """Two folders built from different images: ``ours`` (4 images, 2 shards) and ``theirs`` (2, 1)."""
    root = tmp_path_factory.mktemp("two")
    encoder = ViTMAEEncoder(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    for name, images in (("ours", real_images[:4]), ("theirs", real_images[10:12])):
        data = root / name / "data" / "BBBC006_v1_images_z_16"
        data.mkdir(parents=True)
        for p in images:
            shutil.copy(p, data / p.name)
        build_in_small_shards(encoder, data.parent, root / name / "idx")
    return root / "ours" / "idx", root / "theirs" / "idx"


def _uid(index):
    return json.loads((index / "manifest.json").read_text())["index_uid"]


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _listing(index):
    return sorted(str(p.relative_to(index)) for p in index.rglob("*"))


def test_a_build_writes_its_uid_into_every_shard(two_indexes):
    for index in two_indexes:
        shards = sorted((index / "shards").glob("part-*.parquet"))
        assert shards and {pq.read_schema(p).metadata[UID_KEY].decode() for p in shards} == {_uid(index)}


@pytest.mark.parametrize("copied", ["shards", "shards, state file and index.faiss"])
def test_another_indexs_shards_fail_verify_and_repair(two_indexes, tmp_path, copied, tiny_model_dir,
                                                      real_images, caplog):  # fmt: skip
    ours, theirs = two_indexes
    index = tmp_path / "idx"
    shutil.copytree(ours, index)
    # Their only shard, under the name our second one had: without our state file (deleted) nothing
    # vouches for it but the uid it carries.
    shutil.copy(theirs / "shards" / "part-000000.parquet", index / "shards" / "part-000001.parquet")
    (index / "index.state.json").unlink()
    if copied != "shards":
        for name in ("index.state.json", "index.faiss"):
            shutil.copy(theirs / name, index / name)
    foreign = (
        f"damaged: shard shards/part-000001.parquet belongs to another index (index uid {_uid(theirs)}; this "
        f"folder's manifest says {_uid(ours)})"
    )
    v = _cli("verify", "--index", index)
    # c59f047: "images: 4 ... OK", exit 0 (shards only); with all three only the state file was named
    assert v.exit_code == 1 and foreign in v.output and "DAMAGED" in v.output, v.output
    assert ("index.state.json belongs to another index" in v.output) == (copied != "shards")
    before = _listing(index)
    r = _cli("repair", "--index", index)
    first = "shard shards/part-000001.parquet" if copied == "shards" else "index.state.json"
    assert r.exit_code == 1 and f"not repaired: {first} belongs to another index" in r.output, r.output
    assert _listing(index) == before  # nothing moved to damaged/, nothing rewritten
    # A query serves the sound shards and names the one it left out: our own first shard (2 images), but
    # none where their state file came too (it records their part-000000's size, not ours).
    served = 2 if copied == "shards" else 0
    caplog.clear()
    q = CliRunner().invoke(search_main, ["query", str(real_images[0]), "--index", str(index), "--model",
                                         str(tiny_model_dir), "--device", "cpu", "--format", "json", "-k", "10"])  # fmt: skip
    assert q.exit_code == 0, q.output
    assert len(json.loads(q.stdout)) == served  # c59f047 (shards only): 4, two of them the other index's
    assert any("shards/part-000001.parquet belongs to another index" in m and f"Serving the {served} images" in m
               for m in caplog.messages)  # fmt: skip


def test_a_build_into_a_folder_that_lost_its_manifest_is_refused_before_any_work(
    two_indexes, tmp_path, tiny_model_dir
):
    """Before (c59f047): the build wrote a fresh manifest over the unknown vectors and exit 0 (after this
    item, the old shards then read as another index's: a damaged folder). Now: refused, nothing written."""
    ours, _ = two_indexes
    folder = tmp_path / "lost"
    shutil.copytree(ours, folder)
    (folder / "manifest.json").unlink()
    before = _listing(folder)
    data = ours.parent / "data"
    r = _cli("build", data, "--index", folder, "--model", tiny_model_dir, "--device", "cpu", "--no-progress")
    assert r.exit_code == 1 and "holds 4 images but no manifest" in r.output, r.output
    assert "Restore its manifest.json" in r.output
    assert _listing(folder) == before
